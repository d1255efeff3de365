//! The Win32 calls the suite makes: the process list, TerminateProcess, waiting for a
//! process to end, console control events, and the named pipe IIS's FastCGI module
//! hands its processes.

use std::ffi::OsStr;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::{FromRawHandle, OwnedHandle};
use std::time::Duration;

use windows_sys::Win32::Foundation::{
    CloseHandle, GetLastError, ERROR_PIPE_BUSY, GENERIC_READ, GENERIC_WRITE, HANDLE,
    INVALID_HANDLE_VALUE, WAIT_OBJECT_0,
};
use windows_sys::Win32::Security::SECURITY_ATTRIBUTES;
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_FLAG_OVERLAPPED, OPEN_EXISTING, PIPE_ACCESS_DUPLEX,
};
use windows_sys::Win32::System::Console::{
    AllocConsole, GenerateConsoleCtrlEvent, GetConsoleCP, SetConsoleCtrlHandler,
};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, Process32FirstW, Process32NextW, PROCESSENTRY32W, TH32CS_SNAPPROCESS,
};
use windows_sys::Win32::System::Pipes::{
    CreateNamedPipeW, WaitNamedPipeW, PIPE_READMODE_BYTE, PIPE_TYPE_BYTE, PIPE_WAIT,
};
use windows_sys::Win32::System::Threading::{
    CreateEventW, OpenProcess, SetEvent, TerminateProcess, WaitForSingleObject,
    PROCESS_SYNCHRONIZE, PROCESS_TERMINATE,
};

fn wide(s: &str) -> Vec<u16> {
    OsStr::new(s).encode_wide().chain(Some(0)).collect()
}

/// A running process as the process list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessEntry {
    pub pid: u32,
    pub parent: u32,
    pub exe: String,
}

/// Every process on the system (CreateToolhelp32Snapshot).
pub fn processes() -> Vec<ProcessEntry> {
    let mut out = Vec::new();
    // SAFETY: a process snapshot; closed below.
    let snap = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0) };
    if snap == INVALID_HANDLE_VALUE {
        return out;
    }
    let mut entry = PROCESSENTRY32W {
        dwSize: std::mem::size_of::<PROCESSENTRY32W>() as u32,
        ..unsafe { std::mem::zeroed() }
    };
    // SAFETY: a valid snapshot and an entry of the size given.
    let mut ok = unsafe { Process32FirstW(snap, &mut entry) };
    while ok != 0 {
        let len = entry
            .szExeFile
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(entry.szExeFile.len());
        out.push(ProcessEntry {
            pid: entry.th32ProcessID,
            parent: entry.th32ParentProcessID,
            exe: String::from_utf16_lossy(&entry.szExeFile[..len]),
        });
        // SAFETY: as above.
        ok = unsafe { Process32NextW(snap, &mut entry) };
    }
    // SAFETY: the snapshot handle is closed once.
    unsafe { CloseHandle(snap) };
    out
}

/// The pids of processes named `exe` (case-insensitive) whose parent is `parent`.
pub fn children_named(parent: u32, exe: &str) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| p.parent == parent && p.exe.eq_ignore_ascii_case(exe))
        .map(|p| p.pid)
        .collect()
}

/// True while a process with this pid runs.
pub fn alive(pid: u32) -> bool {
    // SAFETY: OpenProcess has no preconditions; the handle is closed below.
    let handle = unsafe { OpenProcess(PROCESS_SYNCHRONIZE, 0, pid) };
    if handle.is_null() {
        return false;
    }
    // SAFETY: a valid handle with SYNCHRONIZE access.
    let running = unsafe { WaitForSingleObject(handle, 0) } != WAIT_OBJECT_0;
    // SAFETY: closed once.
    unsafe { CloseHandle(handle) };
    running
}

/// Waits until the process ends (true) or `timeout` passes (false).
pub fn wait_exit(pid: u32, timeout: Duration) -> bool {
    // SAFETY: OpenProcess has no preconditions; the handle is closed below.
    let handle = unsafe { OpenProcess(PROCESS_SYNCHRONIZE, 0, pid) };
    if handle.is_null() {
        return true;
    }
    let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: a valid handle with SYNCHRONIZE access.
    let ended = unsafe { WaitForSingleObject(handle, ms) } == WAIT_OBJECT_0;
    // SAFETY: closed once.
    unsafe { CloseHandle(handle) };
    ended
}

/// Ends a process the way Task Manager's "End task" does (TerminateProcess).
pub fn terminate(pid: u32) -> bool {
    // SAFETY: OpenProcess has no preconditions; the handle is closed below.
    let handle = unsafe { OpenProcess(PROCESS_TERMINATE, 0, pid) };
    if handle.is_null() {
        return false;
    }
    // SAFETY: a valid handle with TERMINATE access.
    let ok = unsafe { TerminateProcess(handle, 1) } != 0;
    // SAFETY: closed once.
    unsafe { CloseHandle(handle) };
    ok
}

/// Gives the suite a console of its own when it has none (Wine started without a
/// terminal): Ctrl-C and Ctrl-Break events travel through a console, and the hosts the
/// suite starts inherit it.
pub fn ensure_console() {
    // SAFETY: no preconditions; AllocConsole fails harmlessly when there is a console.
    unsafe {
        if GetConsoleCP() == 0 {
            AllocConsole();
        }
    }
}

/// Makes this process survive Ctrl-C and Ctrl-Break sent to the whole console (they are
/// meant for the host). A handler, not `SetConsoleCtrlHandler(NULL, TRUE)`: that flag is
/// inherited, and the hosts the suite starts would ignore Ctrl-C too.
pub fn ignore_ctrl_c() {
    unsafe extern "system" fn swallow(_event: u32) -> i32 {
        1
    }
    // SAFETY: registers a handler function that lives as long as the process.
    unsafe { SetConsoleCtrlHandler(Some(swallow), 1) };
}

/// Sends CTRL_C_EVENT (0) or CTRL_BREAK_EVENT (1) to a process group (0: the whole console).
pub fn console_event(event: u32, group: u32) -> Result<(), String> {
    // SAFETY: GenerateConsoleCtrlEvent has no memory preconditions.
    if unsafe { GenerateConsoleCtrlEvent(event, group) } == 0 {
        return Err(format!(
            "GenerateConsoleCtrlEvent failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The server end of a fresh named pipe, inheritable and overlapped, as IIS's FastCGI
/// module creates it for a process it starts (and passes as that process's stdin).
pub fn create_pipe_server(name: &str) -> std::io::Result<OwnedHandle> {
    let attrs = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: std::ptr::null_mut(),
        bInheritHandle: 1,
    };
    let wname = wide(name);
    // SAFETY: a NUL-terminated name and valid attributes.
    let handle = unsafe {
        CreateNamedPipeW(
            wname.as_ptr(),
            PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED,
            PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT,
            1,
            64 * 1024,
            64 * 1024,
            0,
            &attrs,
        )
    };
    if handle == INVALID_HANDLE_VALUE {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh handle owned by nothing else.
    Ok(unsafe { OwnedHandle::from_raw_handle(handle as _) })
}

/// Connects to the pipe as its client (what IIS does once the process runs), waiting up
/// to `timeout` for the server end to be ready for a connection.
pub fn connect_pipe(name: &str, timeout: Duration) -> std::io::Result<std::fs::File> {
    let wname = wide(name);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // SAFETY: a NUL-terminated name; no security attributes or template.
        let handle: HANDLE = unsafe {
            CreateFileW(
                wname.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                0,
                std::ptr::null(),
                OPEN_EXISTING,
                0,
                std::ptr::null_mut(),
            )
        };
        if handle != INVALID_HANDLE_VALUE {
            // SAFETY: a fresh handle owned by nothing else.
            return Ok(std::fs::File::from(unsafe {
                OwnedHandle::from_raw_handle(handle as _)
            }));
        }
        // SAFETY: no preconditions.
        let err = unsafe { GetLastError() };
        let now = std::time::Instant::now();
        if now >= deadline {
            return Err(std::io::Error::from_raw_os_error(err as i32));
        }
        if err == ERROR_PIPE_BUSY {
            let left = u32::try_from((deadline - now).as_millis()).unwrap_or(u32::MAX);
            // SAFETY: a NUL-terminated name.
            unsafe { WaitNamedPipeW(wname.as_ptr(), left.min(1000)) };
        } else {
            // The server end exists but nobody waits in ConnectNamedPipe yet, or the
            // pipe is between two connections: try again shortly.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A manual-reset event whose handle child processes inherit (IIS passes such a handle
/// number as `_FCGI_SHUTDOWN_EVENT_`).
pub struct Event(OwnedHandle);

impl Event {
    pub fn inheritable() -> std::io::Result<Event> {
        let attrs = SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: std::ptr::null_mut(),
            bInheritHandle: 1,
        };
        // SAFETY: valid attributes, no name; manual reset, not signalled.
        let handle = unsafe { CreateEventW(&attrs, 1, 0, std::ptr::null()) };
        if handle.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh handle owned by nothing else.
        Ok(Event(unsafe { OwnedHandle::from_raw_handle(handle as _) }))
    }

    /// The handle's number, as a child that inherits it sees it.
    pub fn number(&self) -> usize {
        use std::os::windows::io::AsRawHandle;
        self.0.as_raw_handle() as usize
    }

    pub fn set(&self) -> std::io::Result<()> {
        use std::os::windows::io::AsRawHandle;
        // SAFETY: a valid event handle.
        if unsafe { SetEvent(self.0.as_raw_handle() as HANDLE) } == 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
