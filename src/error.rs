//! The library's error type: what can stop `serve`, `check` or `attach` before or while
//! they run. Per-request failures never surface here; they become HTTP status codes.

use std::path::PathBuf;

/// Why a fcgihost command could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid; the message names file, line and key.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// The private runtime directory (worker sockets, the worker script) could not be made.
    #[error("cannot create the runtime directory {path}: {source}")]
    RuntimeDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The `pid_file` could not be written.
    #[error("cannot write the pid file {path}: {source}")]
    PidFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A worker process could not be started at all (interpreter missing, ...).
    #[error("cannot start worker: {0}")]
    Spawn(String),
    /// Debug mode is on but the interpreter cannot import debugpy.
    #[error(
        "debug mode needs debugpy, which {python} cannot import; install it with:\n    {install}"
    )]
    DebugpyMissing { python: String, install: String },
    /// The app could not be loaded (`fcgihost check`).
    #[error("the app failed to load:\n{0}")]
    AppLoad(String),
    /// The app directory cannot be watched, or the restart pattern is invalid.
    #[error(transparent)]
    Watch(#[from] crate::pool::watcher::WatchError),
    /// `fcgihost reload` could not reach or convince the running host.
    #[error("{0}")]
    Control(String),
    /// Any other I/O failure at start-up.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
