//! Configuration (issue 2): bad config files, environment overrides and flags exit with code 2
//! and a message naming file:line:key; `fcgihost check` prints the effective config with the
//! source of each value and imports the app once; env overrides config, flags override env.
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const RUN: Duration = Duration::from_secs(30);
const T: Duration = Duration::from_secs(30);

fn temp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fcgihost-config-")
        .tempdir()
        .unwrap()
}

/// Runs `fcgihost serve` with `toml` as fcgihost.toml and expects exit code 2.
fn serve_fails_with(toml: &str) -> CliOutput {
    let dir = temp();
    let out = run_cli(HostOpts::plain().config(toml), dir.path(), RUN);
    assert_eq!(
        out.code,
        Some(2),
        "bad config must exit with code 2: {out:#?}"
    );
    out
}

fn plain_dir() -> String {
    toml_escape(&app_dir("plain").to_string_lossy())
}

/// The first line of `text` containing every one of `all` and at least one of `any`
/// (case-insensitive).
fn line_with<'a>(text: &'a str, all: &[&str], any: &[&str]) -> Option<&'a str> {
    text.lines().find(|l| {
        let low = l.to_lowercase();
        all.iter().all(|n| low.contains(&n.to_lowercase()))
            && (any.is_empty() || any.iter().any(|n| low.contains(&n.to_lowercase())))
    })
}

#[test]
fn unknown_top_level_key_names_file_line_key_and_a_suggestion() {
    let out = serve_fails_with("# fcgihost test config\napp = \"plainapp.app\"\nwrokers = 4\n");
    let err = out.stderr;
    assert!(
        err.contains("fcgihost.toml:3"),
        "message should name file:line (fcgihost.toml:3): {err}"
    );
    assert!(
        err.contains("wrokers"),
        "message should name the key: {err}"
    );
    assert!(
        err.contains("workers"),
        "message should suggest `workers`: {err}"
    );
}

#[test]
fn unknown_key_in_a_section_names_file_line_key() {
    let out = serve_fails_with("workers = 1\n\n[log]\nlevel = \"info\"\nlevle2 = \"debug\"\n");
    let err = out.stderr;
    assert!(err.contains("fcgihost.toml:5"), "{err}");
    assert!(err.contains("levle2"), "{err}");
}

#[test]
fn wrong_value_type_names_file_line_key() {
    let out = serve_fails_with("app = \"plainapp.app\"\nworkers = \"four\"\n");
    let err = out.stderr;
    assert!(err.contains("fcgihost.toml:2"), "{err}");
    assert!(err.contains("workers"), "{err}");
}

#[test]
fn bad_duration_names_file_line_key() {
    let out = serve_fails_with("workers = 1\nmax_queue = 10\nqueue_timeout = \"30 parsecs\"\n");
    let err = out.stderr;
    assert!(err.contains("fcgihost.toml:3"), "{err}");
    assert!(err.contains("queue_timeout"), "{err}");
}

#[test]
fn toml_syntax_error_names_file_and_line() {
    let out = serve_fails_with("workers = 2\nmax_queue = = 3\n");
    assert!(out.stderr.contains("fcgihost.toml:2"), "{}", out.stderr);
}

#[test]
fn missing_config_file_is_exit_2() {
    let dir = temp();
    let out = run_cli(
        HostOpts::plain().arg("--config").arg("does-not-exist.toml"),
        dir.path(),
        RUN,
    );
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stderr.contains("does-not-exist.toml"), "{}", out.stderr);
}

#[test]
fn bad_environment_override_names_the_variable() {
    let dir = temp();
    let out = run_cli(
        HostOpts::plain().env("FCGIHOST_WORKERS", "lots"),
        dir.path(),
        RUN,
    );
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stderr.contains("FCGIHOST_WORKERS"), "{}", out.stderr);
}

#[test]
fn bad_flag_is_exit_2() {
    let dir = temp();
    let out = run_cli(HostOpts::plain().arg("--wrokers").arg("3"), dir.path(), RUN);
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stderr.contains("--wrokers"), "{}", out.stderr);
}

#[test]
fn check_rejects_a_bad_config_the_same_way() {
    let dir = temp();
    let out = run_cli(
        HostOpts::plain()
            .subcommand("check")
            .no_listen_flag()
            .config("wrokers = 2\n"),
        dir.path(),
        RUN,
    );
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(
        out.stderr.contains("fcgihost.toml:1") && out.stderr.contains("wrokers"),
        "{}",
        out.stderr
    );
}

fn python_version() -> String {
    let out = std::process::Command::new(python())
        .args(["-c", "import platform; print(platform.python_version())"])
        .output()
        .expect("run python");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn check_prints_the_effective_config_with_sources_and_imports_the_app() {
    let dir = temp();
    let toml = format!(
        "app = \"plainapp.app\"\napp_dir = \"{}\"\npython = \"{{python}}\"\nworkers = 3\n",
        plain_dir()
    );
    let opts = HostOpts::new()
        .subcommand("check")
        .no_listen_flag()
        .no_python_flag()
        .config(&toml)
        .arg("--log-level")
        .arg("debug")
        .env("FCGIHOST_MAX_QUEUE", "7");
    let out = run_cli(opts, dir.path(), RUN);
    assert_eq!(
        out.code,
        Some(0),
        "check of a good config should succeed: {out:#?}"
    );
    let all = out.all();
    assert!(
        line_with(&all, &["workers", "3", "fcgihost.toml"], &[]).is_some(),
        "a line should show workers = 3 from fcgihost.toml:\n{all}"
    );
    assert!(
        line_with(&all, &["max_queue", "7"], &["FCGIHOST_MAX_QUEUE", "env"]).is_some(),
        "a line should show max_queue = 7 from the environment:\n{all}"
    );
    assert!(
        line_with(
            &all,
            &["debug"],
            &["--log-level", "cli", "command line", "flag"]
        )
        .is_some(),
        "a line should show log level debug from the command line:\n{all}"
    );
    assert!(
        line_with(&all, &["request_timeout", "default"], &["90s", "1m30s"]).is_some(),
        "a line should show request_timeout = 90s (default):\n{all}"
    );
    assert!(
        all.contains("plainapp.app"),
        "check should name the app it imported:\n{all}"
    );
    let version = python_version();
    assert!(
        all.contains(&version),
        "check should say which Python ({version}) it found:\n{all}"
    );
}

#[test]
fn check_reports_an_app_that_fails_to_import() {
    let dir = temp();
    let opts = HostOpts::new()
        .subcommand("check")
        .no_listen_flag()
        .app("brokenapp.app")
        .app_dir(app_dir("broken"));
    let out = run_cli(opts, dir.path(), RUN);
    assert_ne!(
        out.code,
        Some(0),
        "check must fail when the app cannot be imported: {out:#?}"
    );
    assert!(
        out.all().contains("does_not_exist_xyz"),
        "check should show the import error:\n{}",
        out.all()
    );
}

#[test]
fn environment_overrides_the_file_and_flags_override_the_environment() {
    let toml = "workers = 1\n";
    let host = Host::start(HostOpts::plain().config(toml).env("FCGIHOST_WORKERS", "2"));
    host.wait_workers(2, T);
    drop(host);

    let host = Host::start(
        HostOpts::plain()
            .config(toml)
            .env("FCGIHOST_WORKERS", "2")
            .workers(3),
    );
    host.wait_workers(3, T);
}

#[test]
fn a_full_config_file_is_accepted_and_the_log_file_is_written() {
    let dir = temp();
    let log_file = dir.path().join("logs").join("fcgihost.log");
    std::fs::create_dir_all(log_file.parent().unwrap()).unwrap();
    let toml = format!(
        r#"app = "plainapp.app"
app_dir = "{app_dir}"
python = "{{python}}"
workers = 2
max_queue = 50
queue_timeout = "30s"
request_timeout = "90s"
graceful_timeout = "5s"
rapid_fails_per_minute = 10

[log]
level = "info"
file = "{log}"
"#,
        app_dir = plain_dir(),
        log = toml_escape(&log_file.to_string_lossy()),
    );
    let host = Host::start_in(HostOpts::new().no_python_flag().config(&toml), dir);
    host.wait_workers(2, T);
    assert_eq!(get(&host.url("/")).text(), "Hello, world!");
    let path: &Path = &log_file;
    assert!(
        wait_until(T, || std::fs::read_to_string(path)
            .is_ok_and(|t| t.contains("listening on"))),
        "the log file {} should receive the log",
        path.display()
    );
}
