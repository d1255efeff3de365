//! Watches the app directory (recursively) and asks the pool for a rolling restart when a
//! file whose path matches `restart_file_regex` changes — wfastcgi's
//! `WSGI_RESTART_FILE_REGEX`, default `.*((\.py)|(\.config))$`. Bursts of events (an
//! editor's save, a deploy copying many files) are debounced into one restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use regex::Regex;
use tokio::sync::mpsc;

use super::Pool;

/// Quiet time after the last matching change before restarting.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Why the watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("restart_file_regex {pattern:?} is not a valid regular expression: {source}")]
    Regex {
        pattern: String,
        source: regex::Error,
    },
    #[error("cannot watch {dir} for changes: {source}")]
    Watch { dir: PathBuf, source: notify::Error },
}

/// Keeps the watch alive; dropping it stops watching.
pub struct AppWatcher {
    _watcher: notify::RecommendedWatcher,
}

/// Compiles the pattern (errors name it) before anything starts.
pub fn compile(pattern: &str) -> Result<Regex, WatchError> {
    Regex::new(pattern).map_err(|source| WatchError::Regex {
        pattern: pattern.to_owned(),
        source,
    })
}

/// Starts watching `dir`; matching changes restart `pool`'s workers one by one.
pub fn watch(dir: &Path, pattern: Regex, pool: Pool) -> Result<AppWatcher, WatchError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        for path in event.paths {
            if is_relevant(&path, &pattern) {
                let _ = tx.send(path);
            }
        }
    })
    .map_err(|source| WatchError::Watch {
        dir: dir.to_owned(),
        source,
    })?;
    watcher
        .watch(dir, RecursiveMode::Recursive)
        .map_err(|source| WatchError::Watch {
            dir: dir.to_owned(),
            source,
        })?;
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut changed = 1;
            while let Ok(Some(_)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                changed += 1;
            }
            tracing::info!(path = %first.display(), changed, "app files changed");
            pool.restart_all("app files changed");
        }
    });
    Ok(AppWatcher { _watcher: watcher })
}

/// True for a changed path that should restart workers (bytecode caches never do).
fn is_relevant(path: &Path, pattern: &Regex) -> bool {
    if path.components().any(|c| c.as_os_str() == "__pycache__") {
        return false;
    }
    pattern.is_match(&path.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pattern_matches_python_and_config_but_not_bytecode() {
        let pattern = compile(r".*((\.py)|(\.config))$").expect("valid");
        assert!(is_relevant(Path::new("/srv/app/views.py"), &pattern));
        assert!(is_relevant(Path::new("/srv/app/web.config"), &pattern));
        assert!(!is_relevant(Path::new("/srv/app/views.pyc"), &pattern));
        assert!(!is_relevant(
            Path::new("/srv/app/__pycache__/views.cpython-311.py"),
            &pattern
        ));
        assert!(!is_relevant(
            Path::new("/srv/app/static/site.css"),
            &pattern
        ));
    }

    #[test]
    fn a_bad_pattern_is_an_error_that_names_it() {
        let err = compile("(unclosed").expect_err("invalid");
        assert!(err.to_string().contains("(unclosed"), "{err}");
    }
}
