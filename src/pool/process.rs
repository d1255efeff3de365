//! Starting one worker process: its private listening socket on fd 0 (the FastCGI
//! standard's FCGI_LISTENSOCK_FILENO), the control channel on fd 3, its stdout/stderr
//! captured into the log line by line, and the guarantees that it never outlives the host
//! (the control channel's EOF, plus `PR_SET_PDEATHSIG` on Linux).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How every worker of the pool is started (derived once from the config).
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The program to run (the interpreter for the shipped worker).
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment for the worker.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// True for the shipped worker, which speaks the control protocol; a custom
    /// `worker.command` is taken as ready as soon as it runs.
    pub speaks_control: bool,
}

/// What the shipped worker reports on its control channel.
#[derive(Debug, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ControlEvent {
    /// debugpy listens on this loopback port.
    DebugListening { port: u16 },
    /// The app is imported; requests may come.
    Ready {
        #[serde(default)]
        python: String,
        #[serde(default)]
        version: String,
    },
    /// The app failed to load; the worker exits with code 3.
    AppError { traceback: String },
    /// Debug mode is on but debugpy cannot be imported; the worker exits with code 4.
    DebugpyMissing { python: String, install: String },
    /// All threads' Python stacks, answering `dump_stacks`.
    Stacks { text: String },
}

/// A started worker process.
pub struct Spawned {
    pub child: Child,
    pub pid: u32,
    pub socket_path: PathBuf,
    /// Control events from the worker (closed when the worker exits).
    pub events: mpsc::Receiver<ControlEvent>,
    /// The host's end for commands to the worker.
    pub control: Option<tokio::net::unix::OwnedWriteHalf>,
}

/// Starts worker `id` (incarnation `generation`) listening on `socket_path`.
pub fn spawn(spec: &WorkerSpec, id: usize, socket_path: PathBuf) -> std::io::Result<Spawned> {
    let _ = std::fs::remove_file(&socket_path);
    let listener = std::os::unix::net::UnixListener::bind(&socket_path)?;
    let (host_end, worker_end) = std::os::unix::net::UnixStream::pair()?;

    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("FCGIHOST_WORKER_ID", id.to_string())
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    if spec.speaks_control {
        cmd.env("FCGIHOST_CONTROL_FD", "3");
    }
    let control_fd = std::os::fd::AsRawFd::as_raw_fd(&worker_end);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (dup2, prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(control_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            #[cfg(target_os = "linux")]
            {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop(worker_end);
    let pid = child.id().unwrap_or(0);

    if let Some(out) = child.stdout.take() {
        tokio::spawn(capture_lines(out, id, pid, "stdout"));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(capture_lines(err, id, pid, "stderr"));
    }

    host_end.set_nonblocking(true)?;
    let (events_tx, events) = mpsc::channel(16);
    let control = if spec.speaks_control {
        let stream = UnixStream::from_std(host_end)?;
        let (read, write) = stream.into_split();
        tokio::spawn(read_control(read, events_tx, id, pid));
        Some(write)
    } else {
        drop(events_tx);
        None
    };
    Ok(Spawned {
        child,
        pid,
        socket_path,
        events,
        control,
    })
}

/// Longest line kept from a worker's output; longer lines are split.
const MAX_LINE: usize = 16 * 1024;

/// Logs a worker's output line by line with its id, never blocking the worker for long.
async fn capture_lines(stream: impl AsyncRead + Unpin, worker: usize, pid: u32, which: &str) {
    let mut reader = BufReader::with_capacity(MAX_LINE, stream);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        match read_line_capped(&mut reader, &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\r', '\n']);
                tracing::info!(target: "fcgihost::worker", worker, pid, stream = which, "{text}");
            }
        }
    }
}

/// Reads up to and including a newline, or `MAX_LINE` bytes, whichever comes first.
async fn read_line_capped(
    reader: &mut BufReader<impl AsyncRead + Unpin>,
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(line.len());
        }
        let room = MAX_LINE - line.len();
        let take = buf.len().min(room);
        match buf[..take].iter().position(|&b| b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&buf[..=i]);
                reader.consume(i + 1);
                return Ok(line.len());
            }
            None => {
                line.extend_from_slice(&buf[..take]);
                reader.consume(take);
                if line.len() >= MAX_LINE {
                    return Ok(line.len());
                }
            }
        }
    }
}

/// Parses the worker's control messages (JSON lines) into events.
async fn read_control(
    read: tokio::net::unix::OwnedReadHalf,
    events: mpsc::Sender<ControlEvent>,
    worker: usize,
    pid: u32,
) {
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match serde_json::from_str::<ControlEvent>(&line) {
            Ok(event) => {
                if events.send(event).await.is_err() {
                    return;
                }
            }
            Err(err) => {
                tracing::warn!(worker, pid, error = %err, "unreadable control message from worker")
            }
        }
    }
}

/// Sends a signal to a worker process (no-op if it is already gone).
pub fn signal(pid: u32, signal: i32) {
    if pid > 0 {
        // SAFETY: kill(2) with a pid we spawned; a stale pid at worst gets ESRCH.
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    }
}
