//! The application's own output in the host's log: every line a worker writes to stdout or
//! stderr (and every FastCGI stderr record) becomes one event of target [`TARGET`], which
//! `logging` keeps enabled whatever `log.level` says, so `--log-level warn` never hides an
//! app's traceback.
//!
//! A line's level: the shipped worker starts every line that a Python `logging` record (or
//! a `warnings` warning, or the worker's own error report) produced with
//! [`LEVEL_MARK`]`<levelno>`[`LEVEL_MARK`], e.g. `\x1f40\x1f` for ERROR, and the record
//! keeps its level here (CRITICAL and ERROR → ERROR, WARNING → WARN, INFO → INFO, DEBUG →
//! DEBUG, below → TRACE). A line without the mark (a bare `print`, or any other FastCGI
//! program's output) is INFO.

use tracing::Level;

/// The tracing target of the app's output.
pub const TARGET: &str = "fcgihost::app";

/// Encloses the Python level number that starts a line the worker tagged.
pub const LEVEL_MARK: char = '\x1f';

/// Logs one line of worker `worker` (process `pid`) from `stream` (`stdout`, `stderr` or
/// `fcgi-stderr`), at the level its mark names (INFO without one).
pub fn log_line(worker: usize, pid: u32, request_id: Option<u64>, stream: &str, line: &str) {
    let (level, text) = split_level(line);
    macro_rules! emit {
        ($level:expr) => {
            match request_id {
                Some(request_id) => tracing::event!(
                    target: TARGET, $level, worker, pid, request_id, stream, "{text}"
                ),
                None => tracing::event!(target: TARGET, $level, worker, pid, stream, "{text}"),
            }
        };
    }
    match level {
        Level::ERROR => emit!(Level::ERROR),
        Level::WARN => emit!(Level::WARN),
        Level::INFO => emit!(Level::INFO),
        Level::DEBUG => emit!(Level::DEBUG),
        _ => emit!(Level::TRACE),
    }
}

/// The level a line's mark names (INFO when it has none) and the line without the mark.
pub fn split_level(line: &str) -> (Level, &str) {
    let tagged = line.strip_prefix(LEVEL_MARK).and_then(|rest| {
        let (number, text) = rest.split_once(LEVEL_MARK)?;
        Some((number.parse::<u32>().ok()?, text))
    });
    match tagged {
        Some((levelno, text)) => (python_level(levelno), text),
        None => (Level::INFO, line),
    }
}

/// Python's `logging` level numbers in tracing's terms.
fn python_level(levelno: u32) -> Level {
    match levelno {
        40.. => Level::ERROR,
        30..=39 => Level::WARN,
        20..=29 => Level::INFO,
        10..=19 => Level::DEBUG,
        _ => Level::TRACE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_lines_keep_their_python_level() {
        assert_eq!(
            split_level("\x1f50\x1fdisk full"),
            (Level::ERROR, "disk full")
        );
        assert_eq!(
            split_level("\x1f40\x1fTraceback (most recent call last):"),
            (Level::ERROR, "Traceback (most recent call last):")
        );
        assert_eq!(split_level("\x1f30\x1fslow"), (Level::WARN, "slow"));
        assert_eq!(split_level("\x1f20\x1fstarted"), (Level::INFO, "started"));
        assert_eq!(split_level("\x1f10\x1fquery"), (Level::DEBUG, "query"));
        assert_eq!(split_level("\x1f5\x1fdetail"), (Level::TRACE, "detail"));
        assert_eq!(split_level("\x1f40\x1f"), (Level::ERROR, ""));
    }

    #[test]
    fn unmarked_or_malformed_lines_are_info_and_unchanged() {
        assert_eq!(split_level("hello"), (Level::INFO, "hello"));
        assert_eq!(
            split_level("ERROR: looks bad"),
            (Level::INFO, "ERROR: looks bad")
        );
        assert_eq!(split_level("\x1fxx\x1fno"), (Level::INFO, "\x1fxx\x1fno"));
        assert_eq!(
            split_level("\x1f40 unterminated"),
            (Level::INFO, "\x1f40 unterminated")
        );
        assert_eq!(split_level(""), (Level::INFO, ""));
    }
}
