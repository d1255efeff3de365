//! The host's end of one worker's control channel (fd 3 of the shipped worker; a loopback
//! connection on Windows), shared by the supervisor (which reads the worker's events and
//! logs them) and the requests and pages that want the worker's Python stacks: the
//! slow-request log (`slow_request_threshold`), the dump right before a timeout kill, and
//! [`super::Pool::dump_stacks`]. On Windows it also carries the `stop` command that stands
//! in for SIGTERM ([`super::process::terminate`]).

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, Notify};

use super::transport::WriteHalf;

/// The command line that asks the shipped worker for every thread's Python stack.
const DUMP_STACKS: &[u8] = b"{\"cmd\":\"dump_stacks\"}\n";

/// Longest time a command may take to write (the worker reads its control channel on a
/// thread of its own, so this only trips on a wedged process).
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Commands to one worker process, and word back when its stacks were logged.
///
/// It exists so that code holding a request (the exchange) can ask the worker where it is
/// stuck without owning the channel, which the supervisor keeps for the worker's lifetime.
#[derive(Debug)]
pub struct Control {
    write: Mutex<WriteHalf>,
    /// Signalled by the supervisor each time it has logged a `stacks` event of this worker.
    logged: Notify,
}

impl Control {
    /// Wraps the host's write half of a worker's control channel.
    pub fn new(write: WriteHalf) -> Self {
        Self {
            write: Mutex::new(write),
            logged: Notify::new(),
        }
    }

    /// Asks the worker for its stacks (with `request`, only the thread that runs that
    /// request, on a worker with several threads); the supervisor logs the answer as
    /// "Python stacks of the worker". Returns false when the command could not be sent.
    pub async fn request_stacks(&self, request: Option<u64>) -> bool {
        match request {
            None => self.send(DUMP_STACKS).await,
            Some(id) => {
                let line = format!("{{\"cmd\":\"dump_stacks\",\"request\":\"{id}\"}}\n");
                self.send(line.as_bytes()).await
            }
        }
    }

    /// Writes one command line (JSON and '\n'). Returns false when it could not be
    /// written within [`WRITE_TIMEOUT`].
    pub async fn send(&self, line: &[u8]) -> bool {
        let send = async {
            let mut write = self.write.lock().await;
            write.write_all(line).await?;
            write.flush().await
        };
        matches!(tokio::time::timeout(WRITE_TIMEOUT, send).await, Ok(Ok(())))
    }

    /// Asks for the stacks and waits up to `wait` until they are in the log (for the dump
    /// right before a kill). Returns true when they were logged in time.
    pub async fn dump_and_wait(&self, wait: Duration, request: Option<u64>) -> bool {
        let logged = self.logged.notified();
        tokio::pin!(logged);
        logged.as_mut().enable();
        if !self.request_stacks(request).await {
            return false;
        }
        tokio::time::timeout(wait, logged).await.is_ok()
    }

    /// Called by the supervisor after it logged a `stacks` event from this worker.
    pub fn stacks_logged(&self) {
        self.logged.notify_waiters();
    }
}
