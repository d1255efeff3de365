//! The front door: the HTTP/1.1 listener (keep-alive, chunked bodies, 100-continue,
//! WebSocket upgrades) with its limits against hostile clients, the routing of each request
//! to the debug proxy, the status page or a worker, and the access log; and the optional
//! FastCGI listener for web servers that speak FastCGI ([`fastcgi`]), IIS's FastCGI module
//! included (its named pipe on stdin, Windows: `iis_pipe`).

pub mod access_log;
pub mod fastcgi;
pub mod framing;
pub mod health;
pub mod http;
#[cfg(windows)]
pub mod iis_pipe;
pub mod limits;
pub mod status;

pub use crate::gateway::response::ResponseBody;
