//! gunicorn's spellings for `fcgihost serve` and `--set key=value` (issue 13), with the real
//! binary and real workers: a command line a gunicorn user would type runs the app with
//! each flag in effect; `--set` and those flags are checked with the very messages the
//! config file gets and `check` shows them as coming from the command line.
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use std::fs;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

#[test]
fn a_gunicorn_command_line_runs_the_app_with_every_flag_in_effect() {
    // fcgihost serve faultapp:app --chdir DIR -b 127.0.0.1:0 -w 1 -t 30 -e ... (the shape
    // of `gunicorn faultapp:app --chdir DIR -b ... -w 1 -t 30 -e ...`).
    let opts = HostOpts::new()
        .no_listen_flag()
        .arg("faultapp:app")
        .arg("--chdir")
        .arg(app_dir("faults"))
        .arg("-b")
        .arg("127.0.0.1:0")
        .arg("-w")
        .arg("1")
        .arg("-t")
        .arg("30")
        .arg("--graceful-timeout")
        .arg("5")
        .arg("-e")
        .arg("GUNI_FLAG=from-the-env-flag")
        .arg("--env")
        .arg("GUNI_OTHER=1")
        .arg("--max-requests")
        .arg("2")
        .arg("--pid")
        .arg("host.pid")
        .arg("--access-logfile")
        .arg("access.log");
    let mut host = Host::start(opts);
    host.wait_workers(1, T);

    let pid_file = host.dir().join("host.pid");
    let written = fs::read_to_string(&pid_file).expect("--pid writes the pid file");
    assert_eq!(written.trim(), host.pid().to_string());

    let env = request(
        "GET",
        &host.url("/env?names=GUNI_FLAG,GUNI_OTHER"),
        &[("X-Probe-Value", "from-the-env-flag")],
        b"",
    );
    assert_eq!(env.status, 200, "{}", env.text());
    let seen = env.json();
    assert_eq!(
        seen["present"],
        serde_json::json!(["GUNI_FLAG", "GUNI_OTHER"])
    );
    assert_eq!(seen["value_seen"], true);

    // --max-requests 2: the worker that served two requests is replaced.
    let first = get(&host.url("/pid")).text();
    let replaced = wait_until(T, || get(&host.url("/pid")).text() != first);
    assert!(replaced, "--max-requests 2 never recycled worker {first}");

    // --access-logfile FILE: access lines go there, not into the main log.
    assert!(
        wait_until(T, || fs::read_to_string(host.dir().join("access.log"))
            .is_ok_and(|t| t.contains("path=\"/env\""))),
        "no access line in access.log"
    );
    assert!(
        !host.log().contains("path=\"/env\""),
        "access lines still in the main log:\n{}",
        host.log()
    );

    host.signal(libc::SIGTERM);
    assert_eq!(host.wait_exit(T).and_then(|s| s.code()), Some(0));
    assert!(!pid_file.exists(), "the pid file outlived the host");
}

#[test]
fn check_shows_flags_and_set_values_as_coming_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(
        HostOpts::plain()
            .subcommand("check")
            .arg("--set")
            .arg("max_queue=7")
            .arg("--set")
            .arg("debug.path=/dbg")
            .arg("--set")
            .arg("worker.env.FROM_SET=yes")
            .arg("--max-requests-jitter")
            .arg("9")
            .arg("--limit-request-fields")
            .arg("50")
            .arg("--forwarded-allow-ips")
            .arg("10.0.0.1,127.0.0.1"),
        dir.path(),
        T,
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    let line = |key: &str| {
        out.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no `{key}` line in check output:\n{}", out.stdout))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("max_queue"), "max_queue = 7 (command line)");
    assert_eq!(line("debug.path"), "debug.path = /dbg (command line)");
    assert_eq!(
        line("worker.env.FROM_SET"),
        "worker.env.FROM_SET = yes (command line)"
    );
    assert_eq!(
        line("max_requests_jitter"),
        "max_requests_jitter = 9 (command line)"
    );
    assert_eq!(line("max_headers"), "max_headers = 50 (command line)");
    assert_eq!(
        line("trusted_proxies"),
        "trusted_proxies = [\"10.0.0.1\", \"127.0.0.1\"] (command line)"
    );
}

/// The message after `fcgihost: <where>: ` for a failed `check`.
fn message_after(out: &CliOutput, prefix: &str) -> String {
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?}:\n{}", out.all()));
    line[prefix.len()..].to_string()
}

#[test]
fn a_bad_set_or_flag_gets_the_same_message_as_the_same_key_in_the_file() {
    for (key, value) in [
        ("workers", "0"),
        ("wokers", "4"),
        ("request_timeout", "\"9x\""),
        ("debug.max_paws", "\"1m\""),
        ("log.access", "\"maybe\""),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (table, leaf) = key.split_once('.').map_or(("", key), |(t, k)| (t, k));
        let toml = if table.is_empty() {
            format!("{leaf} = {value}\n")
        } else {
            format!("[{table}]\n{leaf} = {value}\n")
        };
        let from_file = run_cli(
            HostOpts::plain().subcommand("check").config(&toml),
            dir.path(),
            T,
        );
        assert_eq!(from_file.code, Some(2), "{}", from_file.all());
        let line = if table.is_empty() { 1 } else { 2 };
        let file_msg = message_after(&from_file, &format!("fcgihost: fcgihost.toml:{line}: "));

        let dir = tempfile::tempdir().unwrap();
        let arg = format!("{key}={}", value.trim_matches('"'));
        let from_set = run_cli(
            HostOpts::plain().subcommand("check").arg("--set").arg(&arg),
            dir.path(),
            T,
        );
        assert_eq!(from_set.code, Some(2), "{}", from_set.all());
        let set_msg = message_after(&from_set, &format!("fcgihost: command line --set {arg}: "));
        assert_eq!(
            set_msg, file_msg,
            "--set {arg} and `{key} = {value}` differ"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let bad_flag = run_cli(
        HostOpts::plain()
            .subcommand("check")
            .arg("--max-requests")
            .arg("many"),
        dir.path(),
        T,
    );
    assert_eq!(bad_flag.code, Some(2), "{}", bad_flag.all());
    assert_eq!(
        message_after(&bad_flag, "fcgihost: command line --max-requests: "),
        "key `max_requests`: expected a whole number, found string \"many\""
    );
}

#[test]
fn limit_request_line_and_field_size_answer_414_and_431() {
    let host = Host::start(
        HostOpts::plain()
            .workers(1)
            .arg("--limit-request-line")
            .arg("64")
            .arg("--limit-request-field_size")
            .arg("100"),
    );
    let long_path = format!("/echo/{}", "a".repeat(80));
    assert_eq!(get(&host.url(&long_path)).status, 414);
    let big = "b".repeat(120);
    let r = request("GET", &host.url("/echo"), &[("X-Big", &big)], b"");
    assert_eq!(r.status, 431, "{}", r.text());
    // Within both limits the app answers.
    let ok = request("GET", &host.url("/echo/short"), &[("X-Small", "c")], b"");
    assert_eq!(ok.status, 200, "{}", ok.text());
}
