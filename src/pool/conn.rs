//! One keep-alive FastCGI connection from the host to a worker: the socket halves and the
//! buffers reused across requests, so a request costs no allocation for its framing.

use std::path::Path;

use bytes::BytesMut;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// A connection to a worker's socket, reused request after request.
#[derive(Debug)]
pub struct WorkerConn {
    pub read: OwnedReadHalf,
    pub write: OwnedWriteHalf,
    /// Bytes read from the worker not yet decoded.
    pub read_buf: BytesMut,
    /// Records being assembled for the worker.
    pub write_buf: BytesMut,
}

impl WorkerConn {
    /// Connects to a worker's listening socket. The socket already listens when the worker
    /// is spawned, so this succeeds at once even while the app is still importing.
    pub fn connect(path: &Path) -> std::io::Result<Self> {
        let std_stream = std::os::unix::net::UnixStream::connect(path)?;
        std_stream.set_nonblocking(true)?;
        let (read, write) = UnixStream::from_std(std_stream)?.into_split();
        Ok(Self {
            read,
            write,
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::with_capacity(16 * 1024),
        })
    }
}
