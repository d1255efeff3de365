//! The front door: the HTTP/1.1 listener (keep-alive, chunked bodies, 100-continue,
//! WebSocket upgrades) and the routing of each request to the debug proxy or a worker.

pub mod http;

use bytes::Bytes;

/// The body type of every response the host sends.
pub type ResponseBody =
    http_body_util::combinators::BoxBody<Bytes, crate::pool::exchange::BodyError>;
