//! Shared pieces of fcgihost's Windows test programs: FastCGI records (the stand-in
//! worker answers them, the suite's IIS stand-in sends them), a small HTTP/1.1 client, and
//! the Win32 calls the suite needs (process list, TerminateProcess, console control events,
//! named pipes).

pub mod fcgi;
pub mod http;
#[cfg(windows)]
pub mod win;
