//! Logging set-up: `tracing` to stderr (and to a file when configured), filtered by the
//! configured level or `RUST_LOG`.

use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call once; later calls are ignored.
pub fn init(level: &str, file: Option<&Path>) -> std::io::Result<()> {
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
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
