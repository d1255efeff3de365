//! Starting and stopping one worker process: its channels (through [`super::transport`]:
//! the FastCGI listener and the control channel), its stdout/stderr captured into the log
//! line by line, and the guarantees that it never outlives the host (the control channel's
//! EOF; plus `PR_SET_PDEATHSIG` on Linux, a kill-on-close job object on Windows). Stopping
//! is [`terminate`] (SIGTERM on Unix, the control command `stop` on Windows: the worker
//! finishes its request and exits) and [`kill`] (SIGKILL, TerminateProcess).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::control::Control;
use super::transport::{self, ControlRead, WorkerAddr, WriteHalf};

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
    /// Where the host opens FastCGI connections to it.
    pub addr: WorkerAddr,
    /// Control events from the worker (closed when the worker exits).
    pub events: mpsc::Receiver<ControlEvent>,
    /// The host's end for commands to the worker.
    pub control: Option<WriteHalf>,
}

/// Host environment variables that carry the debug secret. Workers do not inherit them:
/// whatever runs there (the app, a crash reporter dumping `os.environ`, debugpy's adapter)
/// would otherwise hold the key to the debugger.
const SECRET_VARIABLES: [&str; 2] = ["WSGI_PTVSD_SECRET", "FCGIHOST_DEBUG_SECRET"];

/// Starts worker `id`; on Unix its FastCGI socket is `socket_path` (on Windows the worker
/// picks a loopback port and reports it, which this waits for).
pub async fn spawn(spec: &WorkerSpec, id: usize, socket_path: PathBuf) -> std::io::Result<Spawned> {
    let mut cmd = Command::new(&spec.program);
    for name in SECRET_VARIABLES {
        cmd.env_remove(name);
    }
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("FCGIHOST_WORKER_ID", id.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let pending = transport::prepare(&mut cmd, socket_path, spec.speaks_control)?;
    contain(&mut cmd);
    let mut child = cmd.spawn()?;
    if let Err(err) = adopt(&child) {
        // A worker that could outlive the host is not started at all.
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(err);
    }
    let pid = child.id().unwrap_or(0);

    if let Some(out) = child.stdout.take() {
        tokio::spawn(capture_lines(out, id, pid, "stdout"));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(capture_lines(err, id, pid, "stderr"));
    }

    let established = pending.establish(&mut child).await?;
    let (events_tx, events) = mpsc::channel(16);
    let control = match established.control {
        Some((read, write)) => {
            tokio::spawn(read_control(read, events_tx, id, pid));
            Some(write)
        }
        None => {
            drop(events_tx);
            None
        }
    };
    Ok(Spawned {
        child,
        pid,
        addr: established.addr,
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
                super::app_output::log_line(worker, pid, None, which, text);
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
    read: ControlRead,
    events: mpsc::Sender<ControlEvent>,
    worker: usize,
    pid: u32,
) {
    let mut lines = read.lines();
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

/// Asks a worker to leave: SIGTERM on Unix (the shipped worker exits at once when idle,
/// else right after its request); on Windows the control command `stop`, which means the
/// same, or TerminateProcess for a worker without a control channel. `control` is the
/// worker's channel when the caller has it (only Windows uses it).
pub async fn terminate(pid: u32, control: Option<&Control>) {
    #[cfg(unix)]
    {
        let _ = control;
        signal(pid, libc::SIGTERM);
    }
    #[cfg(windows)]
    {
        const STOP: &[u8] = b"{\"cmd\":\"stop\"}\n";
        let stopped = match control {
            Some(control) => control.send(STOP).await,
            None => false,
        };
        if !stopped {
            kill(pid);
        }
    }
}

/// Kills a worker process at once (no-op if it is already gone).
pub fn kill(pid: u32) {
    #[cfg(unix)]
    signal(pid, libc::SIGKILL);
    #[cfg(windows)]
    windows::kill(pid);
}

/// True while a process with this pid exists and has not exited (on Unix: is not a zombie
/// of ours; read from /proc, so always false where there is none).
pub fn alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }
    #[cfg(windows)]
    {
        windows::alive(pid)
    }
}

/// Resident memory of a process (Linux: /proc/<pid>/statm; Windows: its working set);
/// None where unknown.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    #[cfg(unix)]
    {
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Some(pages * u64::try_from(page).unwrap_or(4096))
    }
    #[cfg(windows)]
    {
        windows::resident_bytes(pid)
    }
}

/// The interpreter command for a configured `python`: itself, except on Windows where a
/// bare `python`/`python3` that is not on PATH falls back to the launcher, `py -3`, when
/// that is installed.
pub fn interpreter(python: &str) -> (OsString, Vec<OsString>) {
    let name = python.to_ascii_lowercase();
    let bare = matches!(name.trim_end_matches(".exe"), "python" | "python3");
    if cfg!(windows) && bare && !on_path(python) && on_path("py") {
        return ("py".into(), vec!["-3".into()]);
    }
    (python.into(), Vec::new())
}

/// True when `name` (or `name.exe`) is a file in a directory of PATH.
fn on_path(name: &str) -> bool {
    let exe = if name.to_ascii_lowercase().ends_with(".exe") {
        name.to_owned()
    } else {
        format!("{name}.exe")
    };
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join(&exe).is_file() || dir.join(name).is_file())
    })
}

/// Keeps a worker out of the operator's reach: on Unix its own process group (a Ctrl-C
/// at the terminal goes to the host only, which drains) and, on Linux, SIGKILL when the
/// host dies; on Windows no console (no Ctrl-C/Ctrl-Break events) in a group of its own.
fn contain(cmd: &mut Command) {
    #[cfg(unix)]
    {
        cmd.process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl,
        // which is async-signal-safe.
        #[cfg(target_os = "linux")]
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    #[cfg(windows)]
    {
        use windows_sys::Win32::System::Threading::{CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW};
        cmd.creation_flags(CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW);
    }
}

/// Ties a started worker's life to the host's: on Windows it joins the host's job object,
/// which kills it when the host exits however that happens (Unix: see [`contain`]). An
/// error means the worker could outlive the host; the caller then stops it.
fn adopt(child: &Child) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let _ = child;
        Ok(())
    }
    #[cfg(windows)]
    {
        windows::adopt(child)
    }
}

/// Sends a signal to a worker process (no-op if it is already gone). Unix only: portable
/// code uses [`terminate`] and [`kill`].
#[cfg(unix)]
pub fn signal(pid: u32, signal: i32) {
    if pid > 0 {
        // SAFETY: kill(2) with a pid we spawned; a stale pid at worst gets ESRCH.
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    }
}

/// Process control through the Win32 API.
#[cfg(windows)]
mod windows {
    use std::sync::OnceLock;

    use tokio::process::Child;
    use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, WAIT_TIMEOUT};
    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation,
        SetInformationJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
        JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    };
    use windows_sys::Win32::System::ProcessStatus::{
        K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS,
    };
    use windows_sys::Win32::System::Threading::{
        OpenProcess, TerminateProcess, WaitForSingleObject, PROCESS_ACCESS_RIGHTS,
        PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_SYNCHRONIZE, PROCESS_TERMINATE,
    };

    /// An open process handle, closed on drop.
    struct Process(HANDLE);

    impl Process {
        fn open(pid: u32, access: PROCESS_ACCESS_RIGHTS) -> Option<Self> {
            if pid == 0 {
                return None;
            }
            // SAFETY: OpenProcess has no preconditions; a null result means failure.
            let handle = unsafe { OpenProcess(access, 0, pid) };
            (!handle.is_null()).then_some(Self(handle))
        }
    }

    impl Drop for Process {
        fn drop(&mut self) {
            // SAFETY: the handle came from OpenProcess and is closed exactly once.
            unsafe { CloseHandle(self.0) };
        }
    }

    pub fn kill(pid: u32) {
        if let Some(process) = Process::open(pid, PROCESS_TERMINATE) {
            // SAFETY: a valid handle with PROCESS_TERMINATE access.
            unsafe { TerminateProcess(process.0, 1) };
        }
    }

    pub fn alive(pid: u32) -> bool {
        Process::open(pid, PROCESS_SYNCHRONIZE).is_some_and(|process| {
            // SAFETY: a valid handle with SYNCHRONIZE access; a zero timeout only polls.
            unsafe { WaitForSingleObject(process.0, 0) == WAIT_TIMEOUT }
        })
    }

    pub fn resident_bytes(pid: u32) -> Option<u64> {
        let process = Process::open(pid, PROCESS_QUERY_LIMITED_INFORMATION)?;
        let mut counters = PROCESS_MEMORY_COUNTERS {
            cb: std::mem::size_of::<PROCESS_MEMORY_COUNTERS>() as u32,
            ..Default::default()
        };
        // SAFETY: a valid handle with query access, and a counters struct of the size given.
        let ok = unsafe { K32GetProcessMemoryInfo(process.0, &mut counters, counters.cb) };
        (ok != 0).then(|| counters.WorkingSetSize as u64)
    }

    /// The host's job object (kill on close), made on first use; its handle is never
    /// closed, so the system closes it when the host exits and the workers go with it.
    fn job() -> std::io::Result<HANDLE> {
        static JOB: OnceLock<Result<usize, String>> = OnceLock::new();
        let job = JOB.get_or_init(|| {
            // SAFETY: no security attributes, no name: a fresh anonymous job object.
            let job = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
            if job.is_null() {
                return Err(format!(
                    "cannot create the host's job object: {}",
                    std::io::Error::last_os_error()
                ));
            }
            let mut info = JOBOBJECT_EXTENDED_LIMIT_INFORMATION::default();
            info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
            // SAFETY: a valid job handle and an info struct of the size given.
            let ok = unsafe {
                SetInformationJobObject(
                    job,
                    JobObjectExtendedLimitInformation,
                    (&info as *const JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast(),
                    std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
                )
            };
            if ok == 0 {
                let err = std::io::Error::last_os_error();
                // SAFETY: the handle came from CreateJobObjectW and is not used again.
                unsafe { CloseHandle(job) };
                return Err(format!("cannot set up the host's job object: {err}"));
            }
            Ok(job as usize)
        });
        match job {
            Ok(job) => Ok(*job as HANDLE),
            Err(message) => Err(std::io::Error::other(format!(
                "{message}; workers are not started, since they could outlive the host"
            ))),
        }
    }

    /// Puts a started worker into the host's job object; an error when it cannot be.
    pub fn adopt(child: &Child) -> std::io::Result<()> {
        let job = job()?;
        let handle = child.raw_handle().ok_or_else(|| {
            std::io::Error::other("the started worker has no process handle (it exited at once?)")
        })?;
        // SAFETY: both handles are valid: the job lives as long as the host, and the
        // child's handle as long as `child`.
        if unsafe { AssignProcessToJobObject(job, handle as HANDLE) } == 0 {
            return Err(std::io::Error::other(format!(
                "cannot put the worker (pid {}) into the host's job object, so it could \
                 outlive the host; not starting it: {}",
                child.id().unwrap_or(0),
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }
}
