//! One keep-alive FastCGI connection from the host to a worker: the socket halves and the
//! buffers reused across requests, so a request costs no allocation for its framing.

use bytes::BytesMut;

use super::transport::{ReadHalf, WorkerAddr, WriteHalf};

/// A connection to a worker's socket, reused request after request.
#[derive(Debug)]
pub struct WorkerConn {
    pub read: ReadHalf,
    pub write: WriteHalf,
    /// Bytes read from the worker not yet decoded.
    pub read_buf: BytesMut,
    /// Records being assembled for the worker.
    pub write_buf: BytesMut,
}

impl WorkerConn {
    /// Connects to a worker's FastCGI listener. It already listens when the worker is in
    /// service, so this succeeds at once even while the app is still importing.
    pub fn connect(addr: &WorkerAddr) -> std::io::Result<Self> {
        let (read, write) = addr.connect()?;
        Ok(Self {
            read,
            write,
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::with_capacity(16 * 1024),
        })
    }
}
