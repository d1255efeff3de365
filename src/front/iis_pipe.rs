//! IIS's FastCGI module as a front (Windows): the wfastcgi one-line swap,
//! `scriptProcessor="C:\fcgihost\fcgihost.exe|serve"`. IIS starts the process with the
//! server end of a named pipe it created as standard input, connects to that pipe and speaks
//! FastCGI over it, one request at a time. fcgihost serves that connection with the same
//! door as any FastCGI web server ([`super::fastcgi`]), so its own worker pool, pause-aware
//! clock and debugger tracking stay in charge behind IIS.
//!
//! What the pipe protocol takes, as php-cgi's `main/fastcgi.c` and wfastcgi.py do it:
//!
//! * The pipe is recognised by what it is (a named pipe's server end on stdin), not by the
//!   missing stdout and stderr php-cgi also checks for: fcgihost may log there.
//! * It is put into byte mode, taken over (a private, non-inheritable handle: no worker
//!   inherits the pipe) and stdin is closed.
//! * Each connection is awaited with `ConnectNamedPipe` (IIS may have connected first);
//!   when one ends — IIS closes it, or a request without `FCGI_KEEP_CONN` was answered —
//!   the pipe is flushed (IIS has read the whole answer), disconnected, and waits for the
//!   next.
//! * IIS puts the whole URL path into `PATH_INFO` (wfastcgi clears `SCRIPT_NAME` for that
//!   reason); the door takes the path from `PATH_INFO` on this connection.
//! * `_FCGI_SHUTDOWN_EVENT_` (a handle number in the environment) is the event IIS sets
//!   when it wants the process gone (recycling, idle timeout): [`shutdown_event`] turns it
//!   into a graceful drain, like Ctrl-C.

use std::future::Future;
use std::io;
use std::os::windows::io::{FromRawHandle, RawHandle};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::windows::named_pipe::NamedPipeServer;
use tokio::sync::{oneshot, watch};
use windows_sys::Win32::Foundation::{
    CloseHandle, DuplicateHandle, DUPLICATE_SAME_ACCESS, HANDLE, INVALID_HANDLE_VALUE,
    WAIT_OBJECT_0,
};
use windows_sys::Win32::Storage::FileSystem::{FlushFileBuffers, GetFileType, FILE_TYPE_PIPE};
use windows_sys::Win32::System::Console::{GetStdHandle, SetStdHandle, STD_INPUT_HANDLE};
use windows_sys::Win32::System::Pipes::{
    GetNamedPipeInfo, SetNamedPipeHandleState, PIPE_READMODE_BYTE, PIPE_SERVER_END, PIPE_WAIT,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, WaitForSingleObject, INFINITE};

use super::fastcgi::FastcgiOptions;
use super::http::Front;

/// Windows errors that mean "the client end is gone" on a read.
const ERROR_BROKEN_PIPE: i32 = 109;
const ERROR_NO_DATA: i32 = 232;
const ERROR_PIPE_NOT_CONNECTED: i32 = 233;

/// The named pipe IIS's FastCGI module passed as stdin.
pub struct IisPipe(Arc<NamedPipeServer>);

impl IisPipe {
    /// Takes stdin over when it is a named pipe's server end; `None` otherwise.
    pub fn from_stdin() -> io::Result<Option<IisPipe>> {
        // SAFETY: GetStdHandle has no preconditions.
        let stdin = unsafe { GetStdHandle(STD_INPUT_HANDLE) };
        if stdin.is_null() || stdin == INVALID_HANDLE_VALUE {
            return Ok(None);
        }
        // SAFETY: any handle value may be asked for its type.
        if unsafe { GetFileType(stdin) } != FILE_TYPE_PIPE {
            return Ok(None);
        }
        let mut flags = 0u32;
        // SAFETY: a pipe handle; only `flags` is written.
        let info = unsafe {
            GetNamedPipeInfo(
                stdin,
                &mut flags,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if info == 0 || flags & PIPE_SERVER_END == 0 {
            // An anonymous pipe or a client end (a shell's `|`): not IIS.
            return Ok(None);
        }
        let mode = PIPE_READMODE_BYTE | PIPE_WAIT;
        // SAFETY: a named pipe handle and a mode value that lives across the call.
        unsafe { SetNamedPipeHandleState(stdin, &mode, std::ptr::null(), std::ptr::null()) };
        let mut own: HANDLE = std::ptr::null_mut();
        // SAFETY: duplicates a valid handle of this process into this process, not
        // inheritable; `own` receives the new handle.
        let duplicated = unsafe {
            DuplicateHandle(
                GetCurrentProcess(),
                stdin,
                GetCurrentProcess(),
                &mut own,
                0,
                0,
                DUPLICATE_SAME_ACCESS,
            )
        };
        if duplicated == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the inherited original is closed once and stdin no longer names it, so
        // no worker started later inherits the pipe.
        unsafe {
            SetStdHandle(STD_INPUT_HANDLE, std::ptr::null_mut());
            CloseHandle(stdin);
        }
        // SAFETY: `own` is a fresh handle owned by nothing else. IIS creates the pipe for
        // overlapped I/O, which the runtime's completion port needs.
        let server =
            unsafe { NamedPipeServer::from_raw_handle(own as RawHandle) }.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("stdin is a named pipe, but not one fcgihost can serve: {e}"),
                )
            })?;
        tracing::info!("FastCGI front door on the named pipe IIS passed as stdin");
        Ok(Some(IisPipe(Arc::new(server))))
    }
}

/// Serves IIS's connections on the pipe, one after another, until `shutdown` turns true;
/// the connection open then finishes its requests (up to `grace`).
pub async fn run(
    pipe: IisPipe,
    front: Arc<Front>,
    options: FastcgiOptions,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            connected = pipe.0.connect() => {
                if let Err(err) = connected {
                    tracing::warn!(error = %err, "waiting for IIS on the named pipe failed");
                    let _ = pipe.0.disconnect();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
            _ = async { let _ = stop.wait_for(|stop| *stop).await; } => return,
        }
        let served = super::fastcgi::serve_iis_connection(
            front.clone(),
            options,
            PipeHalf(pipe.0.clone()),
            PipeHalf(pipe.0.clone()),
            shutdown.clone(),
        );
        let draining = *shutdown.borrow();
        if draining {
            if tokio::time::timeout(grace, served).await.is_err() {
                tracing::warn!("the IIS connection was still open after graceful_timeout");
            }
        } else {
            served.await;
        }
        flush(&pipe.0).await;
        let _ = pipe.0.disconnect();
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Longest wait for IIS to read the rest of an answer before the pipe is disconnected.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until IIS has read everything written (FlushFileBuffers; a disconnect discards
/// unread data), at most [`FLUSH_TIMEOUT`].
async fn flush(pipe: &Arc<NamedPipeServer>) {
    use std::os::windows::io::AsRawHandle;
    let handle = pipe.as_raw_handle() as usize;
    let keep_open = pipe.clone();
    let flushed = tokio::task::spawn_blocking(move || {
        // SAFETY: the handle stays open while `keep_open` lives, i.e. for this call.
        unsafe { FlushFileBuffers(handle as HANDLE) };
        drop(keep_open);
    });
    if tokio::time::timeout(FLUSH_TIMEOUT, flushed).await.is_err() {
        tracing::warn!("IIS did not read the end of an answer within 30 s; disconnecting");
    }
}

/// One direction of the shared pipe (the door reads and writes from two tasks).
struct PipeHalf(Arc<NamedPipeServer>);

impl AsyncRead for PipeHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(ERROR_BROKEN_PIPE | ERROR_NO_DATA | ERROR_PIPE_NOT_CONNECTED)
                    ) =>
                {
                    return Poll::Ready(Ok(()));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for PipeHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Completes once IIS sets its shutdown event.
pub type ShutdownEvent = Pin<Box<dyn Future<Output = ()> + Send>>;

/// When IIS passed `_FCGI_SHUTDOWN_EVENT_` (the number of an inherited event handle): a
/// future that completes once IIS sets the event, i.e. wants the process to stop (never,
/// when the handle cannot be waited on).
pub fn shutdown_event() -> Option<ShutdownEvent> {
    let value = std::env::var("_FCGI_SHUTDOWN_EVENT_").ok()?;
    let Ok(number) = value.trim().parse::<usize>() else {
        tracing::warn!(
            value,
            "_FCGI_SHUTDOWN_EVENT_ is not a handle number; ignored"
        );
        return None;
    };
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("iis-shutdown-event".into())
        .spawn(move || {
            let event = number as HANDLE;
            // SAFETY: waits on the handle IIS passed; an invalid one fails at once.
            if unsafe { WaitForSingleObject(event, INFINITE) } == WAIT_OBJECT_0 {
                let _ = tx.send(());
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot watch IIS's shutdown event");
        return None;
    }
    Some(Box::pin(async move {
        if rx.await.is_err() {
            tracing::warn!("cannot wait on IIS's shutdown event (_FCGI_SHUTDOWN_EVENT_)");
            std::future::pending::<()>().await;
        }
    }))
}
