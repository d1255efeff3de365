//! Logging set-up: `tracing` to stderr (and to a file when configured), filtered by the
//! configured level or `RUST_LOG`.

use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
use tracing_subscriber::EnvFilter;

/// Log targets held at `debug` when anything is logged at `trace`: tungstenite's client
/// handshake logs the whole upgrade request at trace, `Authorization` header (the debug
/// secret of `fcgihost attach`) included.
const NEVER_TRACE: &[&str] = &["tungstenite::handshake=debug"];

/// Installs the global subscriber. Safe to call once; later calls are ignored.
pub fn init(level: &str, file: Option<&Path>) -> std::io::Result<()> {
    let mut filter = EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let traces = filter
        .max_level_hint()
        .is_none_or(|max| max == tracing_subscriber::filter::LevelFilter::TRACE);
    for directive in NEVER_TRACE.iter().filter(|_| traces) {
        if let Ok(directive) = directive.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let writer = match file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            BoxMakeWriter::new(std::io::stderr.and(Mutex::new(file)))
        }
        None => BoxMakeWriter::new(std::io::stderr),
    };
    // Access lines in the `json` and atom formats are printed bare (one per line).
    let format = crate::front::access_log::AccessLineFormat(
        tracing_subscriber::fmt::format().with_ansi(false),
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .event_format(format)
        .try_init();
    Ok(())
}
