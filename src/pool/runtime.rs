//! The host's private runtime directory: mode 0700 (on Unix), holds the embedded worker
//! script and, on Unix, one listening socket per worker; removed when the host exits.
//! A host killed with SIGKILL cannot remove its own, so each host removes, at start, the
//! runtime directories of dead hosts ([`remove_stale`]).

use std::path::{Path, PathBuf};

use crate::Error;

/// The shipped FastCGI worker, embedded so that the binary is all a user deploys.
pub const WORKER_SCRIPT: &str = include_str!("../worker/fcgihost_worker.py");

/// The prefix of every runtime directory's name: `fcgihost-<pid>-<nanos>`.
const PREFIX: &str = "fcgihost-";

/// The pid in a runtime directory's name, if the name is one of ours.
fn pid_of(name: &str) -> Option<u32> {
    let (pid, nanos) = name.strip_prefix(PREFIX)?.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(nanos)).then(|| pid.parse().ok())?
}

/// Removes the runtime directories under `temp` left by hosts that are gone: the name is
/// ours, the directory (not a link) belongs to this user, and no process has its pid.
/// Returns the directories removed. A pid reused by another process keeps its directory
/// (the safe side); the next start after that process ends removes it.
pub fn remove_stale(temp: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(temp) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(pid_of) else {
            continue;
        };
        if pid == std::process::id() || process_exists(pid) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() || !owned_by_me(&meta) {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), pid, "removed the runtime directory of a host that is gone");
                removed.push(path);
            }
            Err(err) => {
                tracing::debug!(path = %path.display(), error = %err, "cannot remove a stale runtime directory")
            }
        }
    }
    removed
}

/// Whether the directory belongs to the user this host runs as.
#[cfg(unix)]
fn owned_by_me(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    meta.uid() == unsafe { libc::geteuid() }
}

/// On Windows the temp directory is the user's own (`%LOCALAPPDATA%\Temp`).
#[cfg(not(unix))]
fn owned_by_me(_meta: &std::fs::Metadata) -> bool {
    true
}

/// Whether a process with this pid exists (another user's counts: it cannot be signalled,
/// but it is there).
#[cfg(unix)]
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether a process with this pid exists and has not exited: OpenProcess, then
/// GetExitCodeProcess still answering STILL_ACTIVE; a process we may not open
/// (access denied) exists.
#[cfg(windows)]
fn process_exists(pid: u32) -> bool {
    use windows_sys::Win32::Foundation::{
        CloseHandle, GetLastError, ERROR_ACCESS_DENIED, STILL_ACTIVE,
    };
    use windows_sys::Win32::System::Threading::{
        GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    };
    if pid == 0 {
        return true;
    }
    // SAFETY: OpenProcess has no preconditions; a null result means failure.
    let handle = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if handle.is_null() {
        // SAFETY: GetLastError has no preconditions.
        return unsafe { GetLastError() } == ERROR_ACCESS_DENIED;
    }
    let mut code: u32 = 0;
    // SAFETY: a valid handle with query access, and a place for the code.
    let ok = unsafe { GetExitCodeProcess(handle, &mut code) };
    // SAFETY: the handle came from OpenProcess and is closed exactly once.
    unsafe { CloseHandle(handle) };
    // An exit code that cannot be read keeps the directory (the safe side).
    ok == 0 || code == STILL_ACTIVE as u32
}

/// A private directory that lives as long as the host.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
    worker_script: PathBuf,
}

impl RuntimeDir {
    /// Creates `fcgihost-<pid>-<nanos>` under the system temp dir (0700) and writes the
    /// worker script into it.
    pub fn create() -> Result<Self, Error> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("{PREFIX}{}-{nanos}", std::process::id()));
        let err = |source| Error::RuntimeDir {
            path: path.clone(),
            source,
        };
        #[cfg_attr(not(unix), allow(unused_mut))]
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        remove_stale(&std::env::temp_dir());
        builder.create(&path).map_err(err)?;
        let worker_script = path.join("fcgihost_worker.py");
        std::fs::write(&worker_script, WORKER_SCRIPT).map_err(err)?;
        Ok(Self {
            path,
            worker_script,
        })
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the shipped worker script was written.
    pub fn worker_script(&self) -> &Path {
        &self.worker_script
    }

    /// The socket path for one incarnation of one worker (a fresh path per spawn, so a
    /// late connection can never reach the wrong process). Unused on Windows, where
    /// workers listen on loopback ports.
    pub fn socket_path(&self, worker: usize, generation: u64) -> PathBuf {
        self.path.join(format!("w{worker}-{generation}.sock"))
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_names_carry_a_pid() {
        assert_eq!(pid_of("fcgihost-123-456"), Some(123));
        assert_eq!(pid_of("fcgihost-123-"), None);
        assert_eq!(pid_of("fcgihost-abc-456"), None);
        assert_eq!(pid_of("fcgihost-123-456-x"), None);
        assert_eq!(pid_of("other-123-456"), None);
    }
}
