//! The host's private runtime directory: mode 0700 (on Unix), holds the embedded worker
//! script and, on Unix, one listening socket per worker; removed when the host exits.

use std::path::{Path, PathBuf};

use crate::Error;

/// The shipped FastCGI worker, embedded so that the binary is all a user deploys.
pub const WORKER_SCRIPT: &str = include_str!("../worker/fcgihost_worker.py");

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
        let path = std::env::temp_dir().join(format!("fcgihost-{}-{nanos}", std::process::id()));
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
