//! What fcgihost writes on the app's behalf: the app's own output in the host's log (target
//! `fcgihost::app`, shown whatever `--log-level` says for the host, Python logging records at
//! their own level), and response header names as the app wrote them on the HTTP port.
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::{app_dir, get, raw_request, require_python_module, Host, HostOpts};

const WAIT: Duration = Duration::from_secs(30);

/// The one log line holding `needle` (panics with the log if there is not exactly one).
fn line_with(log: &str, needle: &str) -> String {
    let found: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
    assert_eq!(
        found.len(),
        1,
        "{needle:?} in {found:?}\n--- log ---\n{log}"
    );
    found[0].to_string()
}

/// `--log-level LEVEL`, with fcgihost's `listening on` line kept (the harness waits for it).
fn log_level(opts: HostOpts, level: &str) -> HostOpts {
    opts.arg("--log-level")
        .arg(format!("{level},fcgihost::front::http=info"))
}

#[test]
fn app_output_is_shown_at_log_level_warn_with_errors_as_errors() {
    let host = Host::start(log_level(HostOpts::plain().workers(1), "warn"));

    assert_eq!(get(&host.url("/log?msg=hello")).status, 200);
    let resp = get(&host.url("/error-before"));
    assert_eq!(resp.status, 500);
    host.wait_for_log("RuntimeError: boom-before", WAIT);
    let log = host.wait_for_log("stdout says hello", WAIT);

    // The app's prints and wsgi.errors lines: INFO, shown although the host logs at warn.
    for needle in ["wsgi.errors says hello", "stdout says hello"] {
        let line = line_with(&log, needle);
        assert!(line.contains(" INFO fcgihost::app:"), "{line}");
        assert!(line.contains("worker=0"), "{line}");
    }
    // The worker's report of the app's exception: every line of it an ERROR.
    for needle in [
        "fcgihost worker: error in GET /error-before",
        "Traceback (most recent call last):",
        "RuntimeError: boom-before",
    ] {
        let line = line_with(&log, needle);
        assert!(line.contains(" ERROR fcgihost::app:"), "{line}");
    }
    // The host's own INFO lines (access lines included) stay hidden at warn.
    assert!(!log.contains("fcgihost::access"), "{log}");
    assert!(!log.contains("INFO fcgihost::pool"), "{log}");
}

#[test]
fn python_logging_records_keep_their_level() {
    require_python_module("django");
    let host = Host::start(log_level(
        HostOpts::new()
            .app("djangoproj.wsgi:application")
            .app_dir(app_dir("djangoproj"))
            .workers(1)
            .env("DJANGO_SETTINGS_MODULE", "djangoproj.settings_site"),
        "error",
    ));

    assert_eq!(get(&host.url("/log/")).status, 200);
    assert_eq!(get(&host.url("/boom/")).status, 500);
    host.wait_for_log("RuntimeError: boom-marker", WAIT);
    let log = host.wait_for_log("site-print-marker", WAIT);

    let level_of = |needle: &str| {
        let line = line_with(&log, needle);
        ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
            .into_iter()
            .find(|level| line.contains(&format!(" {level} fcgihost::app:")))
            .unwrap_or_else(|| panic!("no fcgihost::app level in {line}"))
    };
    assert_eq!(level_of("site-debug-marker"), "DEBUG");
    assert_eq!(level_of("site-info-marker"), "INFO");
    assert_eq!(level_of("site-warning-marker"), "WARN");
    assert_eq!(level_of("site-print-marker"), "INFO");
    // Django's `Internal Server Error` report through its logging config: all ERROR.
    assert_eq!(level_of("Internal Server Error: /boom/"), "ERROR");
    assert_eq!(level_of("RuntimeError: boom-marker"), "ERROR");
    let traceback = log
        .lines()
        .filter(|l| l.contains("Traceback (most recent call last):"))
        .collect::<Vec<_>>();
    assert!(!traceback.is_empty(), "{log}");
    assert!(
        traceback
            .iter()
            .all(|l| l.contains(" ERROR fcgihost::app:")),
        "{traceback:?}"
    );
}

#[test]
fn app_output_follows_a_level_given_for_its_own_target() {
    let host = Host::start(log_level(
        HostOpts::plain().workers(1),
        "warn,fcgihost::app=warn",
    ));
    assert_eq!(get(&host.url("/log?msg=quiet")).status, 200);
    assert_eq!(get(&host.url("/error-before")).status, 500);
    // Written to the same stderr pipe after the /log lines, so those were read first.
    let log = host.wait_for_log("RuntimeError: boom-before", WAIT);
    assert!(!log.contains("wsgi.errors says quiet"), "{log}");
}

#[test]
fn response_header_names_reach_the_client_as_the_app_wrote_them() {
    let host = Host::start(HostOpts::plain());
    let resp = raw_request(
        host.addr(),
        b"GET /cookies HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        false,
    );
    assert_eq!(resp.status, 200);
    let names: Vec<&str> = resp.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names.iter().filter(|n| **n == "Set-Cookie").count(),
        2,
        "{names:?}"
    );
    assert!(names.contains(&"Content-Type"), "{names:?}");
    assert!(names.contains(&"Content-Length"), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.chars().next().is_some_and(|c| c.is_ascii_uppercase())),
        "{names:?}"
    );
}
