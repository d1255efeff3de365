//! Logging set-up: `tracing` to stderr (and to a file when configured), filtered by the
//! configured level or `RUST_LOG`; access lines to their own target (`log.access_file`,
//! gunicorn's `--access-logfile`: `-` is stdout) when one is configured.

use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogTarget;
use crate::front::access_log::TARGET as ACCESS_TARGET;

/// Log targets held at `debug` when anything is logged at `trace`: tungstenite's client
/// handshake logs the whole upgrade request at trace, `Authorization` header (the debug
/// secret of `fcgihost attach`) included.
const NEVER_TRACE: &[&str] = &["tungstenite::handshake=debug"];

/// The target of the app's output (worker stdout/stderr), never filtered by the host's level.
pub use crate::pool::app_output::TARGET as APP_TARGET;

/// Installs the global subscriber. Safe to call once; later calls are ignored.
pub fn init(level: &str, file: Option<&Path>) -> std::io::Result<()> {
    init_with_access(level, file, None)
}

/// [`init`], with access lines going only to `access` when it is set.
///
/// The app's own output (target [`APP_TARGET`]) is shown at every level, whatever `level`
/// or `RUST_LOG` says for the host, unless they name that target themselves (e.g.
/// `warn,fcgihost::app=off`).
pub fn init_with_access(
    level: &str,
    file: Option<&Path>,
    access: Option<&LogTarget>,
) -> std::io::Result<()> {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| EnvFilter::try_new(v).is_ok());
    let spec = from_env.as_deref().unwrap_or(level);
    let mut filter = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"));
    let traces = filter
        .max_level_hint()
        .is_none_or(|max| max == tracing_subscriber::filter::LevelFilter::TRACE);
    for directive in NEVER_TRACE.iter().filter(|_| traces) {
        if let Ok(directive) = directive.parse() {
            filter = filter.add_directive(directive);
        }
    }
    if !spec.contains(APP_TARGET) {
        if let Ok(directive) = format!("{APP_TARGET}=trace").parse() {
            filter = filter.add_directive(directive);
        }
    }
    let writer = match file {
        Some(path) => BoxMakeWriter::new(std::io::stderr.and(Mutex::new(append(path)?))),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    // Access lines in the `json` and atom formats are printed bare (one per line).
    let format = || {
        crate::front::access_log::AccessLineFormat(
            tracing_subscriber::fmt::format().with_ansi(false),
        )
    };
    let access_writer = match access {
        None => None,
        Some(LogTarget::Stdout) => Some(BoxMakeWriter::new(std::io::stdout)),
        Some(LogTarget::File(path)) => Some(BoxMakeWriter::new(Mutex::new(append(path)?))),
    };
    let separate = access_writer.is_some();
    let main = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .event_format(format())
        .with_filter(filter_fn(move |meta| {
            !separate || meta.target() != ACCESS_TARGET
        }));
    let access_layer = access_writer.map(|writer| {
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(false)
            .event_format(format())
            .with_filter(filter_fn(|meta| meta.target() == ACCESS_TARGET))
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(main)
        .with(access_layer)
        .try_init();
    Ok(())
}

/// Opens a log file for appending (created if missing).
fn append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}
