//! Where users run fcgihost (issue 13), end to end with the real binary and real workers:
//! the health endpoint as a balancer or a Kubernetes probe sees it (503 while starting,
//! 200 once a worker is ready, 503 when every worker is down and from the first moment of a
//! SIGTERM drain, while in-flight requests still finish), and the runtime directories a
//! SIGKILLed host leaves behind, removed by the next host that starts.
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use std::fs;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);
const HEALTH: &str = "/_fcgihost/health";

/// An app whose import waits while `hold` exists in the app dir (the test's dir), and
/// whose `/die` ends the worker.
const HELD_APP: &str = r#"
import os, time
while os.path.exists("hold"):
    time.sleep(0.01)

def app(environ, start_response):
    if environ.get("PATH_INFO") == "/die":
        os._exit(3)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"up"]
"#;

fn health(host: &Host) -> (u16, serde_json::Value) {
    let r = get(&host.url(HEALTH));
    assert_eq!(r.header("content-type"), Some("application/json"));
    (r.status, r.json())
}

#[test]
fn health_is_503_while_starting_200_when_ready_503_when_every_worker_is_down() {
    let host = Host::start(
        HostOpts::new()
            .app("heldapp:app")
            .workers(1)
            .file("heldapp.py", HELD_APP)
            .file("hold", ""),
    );
    // The worker is importing the app (held): not ready yet.
    let (status, body) = health(&host);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "starting");
    assert_eq!(body["ready_workers"], 0);

    fs::remove_file(host.dir().join("hold")).unwrap();
    assert!(
        wait_until(T, || health(&host).0 == 200),
        "health never turned 200"
    );
    let (_, body) = health(&host);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["ready_workers"], 1);
    assert_eq!(body["workers"], 1);

    // The worker dies; its replacement hangs in the import: no worker is ready.
    fs::write(host.dir().join("hold"), "").unwrap();
    let _ = get(&host.url("/die"));
    host.wait_for_log("worker exited", T);
    let (status, body) = health(&host);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "down");

    fs::remove_file(host.dir().join("hold")).unwrap();
    assert!(
        wait_until(T, || health(&host).0 == 200),
        "health did not come back once a worker was ready again"
    );
}

#[test]
fn health_turns_503_on_sigterm_before_in_flight_requests_finish() {
    let mut host = Host::start(HostOpts::plain().workers(2));
    host.wait_workers(2, T);
    assert!(wait_until(T, || health(&host).0 == 200));

    // One request in flight that finishes only when the test says so.
    let release = host.dir().join("release");
    let url = host.url(&format!(
        "/sleep?s=120&until={}&tag=k8s-drain",
        release.display()
    ));
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(request_with(&agent(), "GET", &url, &[], b""));
    });
    host.wait_for_log("sleep-start k8s-drain", T);

    host.signal(libc::SIGTERM);
    host.wait_for_log("shutting down", T);
    let (status, body) = health(&host);
    assert_eq!(status, 503, "health during the drain: {body}");
    assert_eq!(body["status"], "draining");
    assert!(
        rx.try_recv().is_err(),
        "the in-flight request finished before health turned 503"
    );
    // New app requests during the drain are refused with 503, not dropped.
    assert_eq!(get(&host.url("/hello")).status, 503);

    fs::write(&release, "").unwrap();
    let finished = rx
        .recv_timeout(T)
        .expect("the in-flight request never finished")
        .expect("the in-flight request failed");
    assert_eq!(finished.status, 200, "{}", finished.text());
    assert_eq!(finished.text(), "slept 120 k8s-drain");
    assert_eq!(host.wait_exit(T).and_then(|s| s.code()), Some(0));
}

#[test]
fn health_path_can_be_moved_and_turned_off() {
    let moved = Host::start(
        HostOpts::plain()
            .workers(1)
            .arg("--set")
            .arg("health_path=/hz"),
    );
    assert!(wait_until(T, || get(&moved.url("/hz")).status == 200));
    // The default path now belongs to the app.
    assert_eq!(get(&moved.url(HEALTH)).status, 404);

    let off = Host::start(HostOpts::plain().workers(1).config("health_path = \"\"\n"));
    off.wait_workers(1, T);
    let r = get(&off.url(HEALTH));
    assert_eq!(
        r.status,
        404,
        "health_path = \"\" still answered: {}",
        r.text()
    );
}

/// `fcgihost-<pid>-<n>` directories in `tmp`.
fn runtime_dirs(tmp: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(tmp)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("fcgihost-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_new_host_removes_the_runtime_directory_a_killed_host_left() {
    let tmp = tempfile::tempdir().unwrap();
    let with_tmp = || HostOpts::plain().workers(1).env("TMPDIR", tmp.path());

    let mut killed = Host::start(with_tmp());
    killed.wait_workers(1, T);
    let killed_prefix = format!("fcgihost-{}-", killed.pid());
    killed.signal(libc::SIGKILL);
    killed.wait_exit(T).expect("SIGKILL ends the host");
    let left = runtime_dirs(tmp.path());
    assert!(
        left.iter().any(|n| n.starts_with(&killed_prefix)),
        "the killed host left no runtime directory to clean: {left:?}"
    );
    // A directory of a live process (this test) and a file with a dead pid's name stay.
    let live = format!("fcgihost-{}-1", std::process::id());
    fs::create_dir(tmp.path().join(&live)).unwrap();
    fs::write(tmp.path().join("fcgihost-999999999-1"), "not a directory").unwrap();

    let next = Host::start(with_tmp());
    let now = runtime_dirs(tmp.path());
    assert!(
        !now.iter().any(|n| n.starts_with(&killed_prefix)),
        "the dead host's runtime directory is still there: {now:?}"
    );
    assert!(
        now.contains(&live),
        "a live pid's directory was removed: {now:?}"
    );
    assert!(now.contains(&"fcgihost-999999999-1".to_string()));
    assert!(
        now.iter()
            .any(|n| n.starts_with(&format!("fcgihost-{}-", next.pid()))),
        "the new host has no runtime directory: {now:?}"
    );
    next.wait_for_log("removed the runtime directory of a host that is gone", T);
}
