//! Remote debugging end to end: the real `fcgihost` binary, real workers running real debugpy,
//! and a real DAP client (tests/common/dap.rs) speaking through the `/ptvsd` WebSocket proxy
//! or through `fcgihost attach`'s local port. Covers breakpoints holding a request past its
//! pause-aware timeout, Visual Studio's client (no `continued` events), stepping, a client
//! vanishing while paused, the 504 without a debugger, the secret check, the info page,
//! debug mode off, debugpy missing, `debug.max_pause` and `debug.wait_for_attach`.
//!
//! The app is tests/apps/debugapp/debugapp.py; breakpoints go on its `# BP:<name>` lines.
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use std::time::{Duration, Instant};

use common::dap::{basic_auth, debugapp_file, marker_line, AttachProcess, DapClient};
use common::{app_dir, bin, python, request, run_cli, Host, HostOpts, Resp};
use serde_json::json;
use tokio::task::JoinHandle;

/// The secret the tests configure (long enough not to draw the short-secret warning).
const SECRET: &str = "dbg-Secret_0123456789xyz";
/// How long a test waits for a log line.
const LOG_WAIT: Duration = Duration::from_secs(30);

/// `serve` of the debug app with `workers` workers, `request_timeout = 2s`, without a secret.
fn app_opts(workers: usize) -> HostOpts {
    HostOpts::debugapp()
        .workers(workers)
        .arg("--request-timeout")
        .arg("2s")
}

/// The same with debug mode on (wfastcgi's `WSGI_PTVSD_SECRET`).
fn debug_opts(workers: usize) -> HostOpts {
    app_opts(workers).env("WSGI_PTVSD_SECRET", SECRET)
}

fn ws_url(host: &Host, path: &str) -> String {
    format!("ws://{}{}", host.addr(), path)
}

/// GET on a blocking thread (the request may be held at a breakpoint for a while).
fn spawn_get(url: String, headers: Vec<(String, String)>) -> JoinHandle<Resp> {
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        request("GET", &url, &headers, b"")
    })
}

async fn get(url: String) -> Resp {
    spawn_get(url, Vec::new()).await.unwrap()
}

async fn get_with_secret(url: String) -> Resp {
    spawn_get(url, vec![("Authorization".into(), basic_auth(SECRET))])
        .await
        .unwrap()
}

async fn info_page(host: &Host) -> String {
    let resp = get_with_secret(host.url("/ptvsd")).await;
    assert_eq!(resp.status, 200, "info page: {}", resp.text());
    resp.text()
}

/// The state cell of worker `id` in the info page's table.
fn worker_row(page: &str, id: usize) -> String {
    let start = page
        .find(&format!("<tr><td>{id}</td>"))
        .unwrap_or_else(|| panic!("no row for worker {id} in {page}"));
    let end = page[start..].find("</tr>").unwrap() + start;
    page[start..end].to_string()
}

/// The pid column of worker `id` in the info page.
fn worker_pid(page: &str, id: usize) -> String {
    let row = worker_row(page, id);
    row.split("<td>")
        .nth(2)
        .unwrap()
        .split("</td>")
        .next()
        .unwrap()
        .to_string()
}

/// Attaches a client through the proxy with breakpoints on the named markers.
async fn attach_ws(host: &Host, path: &str, client_id: &str, markers: &[&str]) -> DapClient {
    let mut dap = DapClient::connect_ws(&ws_url(host, path), Some(SECRET))
        .await
        .unwrap_or_else(|e| panic!("WebSocket to {path}: {e}\n--- log ---\n{}", host.log()));
    let file = debugapp_file();
    let lines: Vec<u32> = markers.iter().map(|m| marker_line(&file, m)).collect();
    dap.attach(client_id, &[(file.as_path(), lines)]).await;
    dap
}

/// Breakpoint → stopped; the request stays paused `hold` past its 2 s timeout; continue →
/// 200 from the same worker process. Returns the client for further checks.
async fn breakpoint_round(host: &Host, client_id: &str, hold: Duration) -> DapClient {
    let pid = get(host.url("/pid")).await.text();
    let mut dap = attach_ws(host, "/ptvsd", client_id, &["first"]).await;
    let req = spawn_get(host.url("/debugme"), Vec::new());
    let (thread, reason) = dap.stopped().await;
    assert_eq!(reason, "breakpoint");
    assert!(dap.threads().await.contains(&thread));
    let (line, function) = dap.top_frame(thread).await;
    assert_eq!(
        (line, function.as_str()),
        (marker_line(&debugapp_file(), "first"), "debugme")
    );
    host.wait_for_log("request clock stopped", LOG_WAIT);
    let page = info_page(host).await;
    assert!(
        worker_row(&page, 0).contains("paused at a breakpoint: GET /debugme"),
        "{page}"
    );

    // Held well past request_timeout = 2s: the clock is stopped.
    tokio::time::sleep(hold).await;
    assert!(!req.is_finished(), "the paused request finished early");
    assert!(!host.log().contains("request timed out"), "{}", host.log());

    let resp = dap.resume_held(thread, req).await;
    assert_eq!(resp.text(), format!("pid={pid} total=6"));
    assert_eq!(
        get(host.url("/pid")).await.text(),
        pid,
        "the worker was replaced"
    );
    host.wait_for_log("request clock running", LOG_WAIT);
    let page = info_page(host).await;
    let row = worker_row(&page, 0);
    assert!(row.contains("idle") && !row.contains("paused"), "{row}");
    dap
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breakpoint_holds_the_request_past_its_timeout_then_continue_completes() {
    let host = Host::start(debug_opts(1));
    let mut dap = breakpoint_round(&host, "vscode", Duration::from_secs(6)).await;
    // VS Code clients get a continued event (Visual Studio ones do not: next test).
    dap.event("continued").await;
    dap.disconnect().await;
    host.wait_for_log("debugger detached", LOG_WAIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn visual_studio_client_resumes_on_the_continue_response() {
    let host = Host::start(debug_opts(1));
    let mut dap = breakpoint_round(&host, "visualstudio", Duration::from_secs(3)).await;
    dap.threads().await;
    assert!(
        !dap.saw_event("continued"),
        "debugpy sends no continued events to Visual Studio; the proxy must not need them"
    );
    // The clock really runs again: a slow request on the same worker now times out.
    let started = Instant::now();
    let resp = get(host.url("/sleep?s=5")).await;
    assert_eq!(resp.status, 504);
    assert!(started.elapsed() < Duration::from_millis(4500));
    dap.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_threads_an_all_threads_stop_pauses_every_request_on_the_worker() {
    let host = Host::start(debug_opts(1).arg("--threads").arg("2"));
    let mut dap = attach_ws(&host, "/ptvsd", "vscode", &["first"]).await;
    // A neighbour that would outlive the 2 s request_timeout by a second if its clock ran
    // while the debugger holds the worker.
    let neighbour = spawn_get(host.url("/sleep?s=3"), Vec::new());
    let deadline = Instant::now() + LOG_WAIT;
    while !worker_row(&info_page(&host).await, 0).contains("GET /sleep") {
        assert!(Instant::now() < deadline, "the neighbour never ran");
    }
    let req = spawn_get(host.url("/debugme"), Vec::new());
    let (thread, reason) = dap.stopped().await;
    assert_eq!(reason, "breakpoint");
    host.wait_for_log("request clock stopped", LOG_WAIT);
    let page = info_page(&host).await;
    let row = worker_row(&page, 0);
    assert!(
        row.contains("paused at a breakpoint")
            && row.contains("GET /sleep")
            && row.contains("GET /debugme"),
        "{row}"
    );
    // Held past both requests' 2 s: debugpy stopped every thread, so both clocks stand.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!host.log().contains("request timed out"), "{}", host.log());
    dap.resume_held(thread, req).await;
    let n = neighbour.await.unwrap();
    assert_eq!(n.status, 200, "neighbour: {}", n.text());
    assert_eq!(n.text(), "slept");
    dap.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stepping_and_a_second_breakpoint_in_the_same_request() {
    let host = Host::start(debug_opts(1));
    let file = debugapp_file();
    let mut dap = attach_ws(&host, "/ptvsd", "vscode", &["first", "second"]).await;
    let req = spawn_get(host.url("/debugme"), Vec::new());

    let (thread, reason) = dap.stopped().await;
    assert_eq!(reason, "breakpoint");
    assert_eq!(dap.top_frame(thread).await.0, marker_line(&file, "first"));

    dap.call("next", json!({"threadId": thread})).await;
    let (thread, reason) = dap.stopped().await;
    assert_eq!(reason, "step");
    assert_eq!(dap.top_frame(thread).await.0, marker_line(&file, "step"));
    // The step's response and its stopped event may arrive in one chunk (no net change) or
    // apart (resume, then pause): either way the worker is paused now.
    let page = info_page(&host).await;
    assert!(
        worker_row(&page, 0).contains("paused at a breakpoint"),
        "{page}"
    );

    dap.call("continue", json!({"threadId": thread})).await;
    let (thread, reason) = dap.stopped().await;
    assert_eq!(reason, "breakpoint");
    assert_eq!(dap.top_frame(thread).await.0, marker_line(&file, "second"));
    assert!(!req.is_finished());

    let resp = dap.resume_held(thread, req).await;
    assert!(resp.text().ends_with("total=6"));
    dap.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_vanishing_while_paused_releases_the_request_and_a_new_client_can_attach() {
    let host = Host::start(debug_opts(1));
    let pid = get(host.url("/pid")).await.text();
    let mut dap = attach_ws(&host, "/ptvsd", "vscode", &["first"]).await;
    let req = spawn_get(host.url("/debugme"), Vec::new());
    dap.stopped().await;
    host.wait_for_log("request clock stopped", LOG_WAIT);

    // No DAP disconnect, no close frame: the TCP connection just goes.
    dap.vanish();
    let resp = req.await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), format!("pid={pid} total=6"));
    host.wait_for_log("debugger detached", LOG_WAIT);
    host.wait_for_log("request clock running", LOG_WAIT);

    // A new client attaches to the same worker at once and stops at a breakpoint again
    // (the proxy lets debugpy wind the vanished client down first).
    let mut dap = attach_ws(&host, "/ptvsd", "vscode", &["second"]).await;
    let req = spawn_get(host.url("/debugme"), Vec::new());
    let (thread, _) = dap.stopped().await;
    assert_eq!(
        dap.top_frame(thread).await.0,
        marker_line(&debugapp_file(), "second")
    );
    let resp = dap.resume_held(thread, req).await;
    assert_eq!(resp.text(), format!("pid={pid} total=6"));
    dap.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_debugger_a_slow_request_gets_504_and_a_new_worker() {
    let host = Host::start(debug_opts(1));
    let pid = get(host.url("/pid")).await.text();
    let started = Instant::now();
    let resp = get(host.url("/sleep?s=5")).await;
    let took = started.elapsed();
    assert_eq!(resp.status, 504, "{}", resp.text());
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(4500),
        "504 after {took:?}, expected about 2 s"
    );
    let log = host.wait_for_log("request timed out", LOG_WAIT);
    assert!(log.contains("/sleep"), "the log names the request:\n{log}");
    let new_pid = get(host.url("/pid")).await.text();
    assert_ne!(new_pid, pid, "the timed-out worker must be replaced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_pause_caps_one_pause() {
    let host = Host::start(debug_opts(1).env("FCGIHOST_DEBUG_MAX_PAUSE", "1s"));
    let mut dap = attach_ws(&host, "/ptvsd", "vscode", &["first"]).await;
    let started = Instant::now();
    let req = spawn_get(host.url("/debugme"), Vec::new());
    dap.stopped().await;
    // Still paused, but after 1 s of pause the clock runs again and 2 s later it expires.
    let resp = req.await.unwrap();
    assert_eq!(resp.status, 504, "{}", resp.text());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    host.wait_for_log("debug.max_pause", LOG_WAIT);
    dap.vanish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wait_for_attach_holds_the_first_request_for_the_debugger() {
    let host = Host::start(debug_opts(1).env("FCGIHOST_DEBUG_WAIT_FOR_ATTACH", "60s"));
    let req = spawn_get(host.url("/debugme"), Vec::new());
    host.wait_for_log("holding the request until a debugger attaches", LOG_WAIT);
    assert!(!req.is_finished());
    let mut dap = attach_ws(&host, "/ptvsd", "vscode", &["first"]).await;
    let (thread, _) = dap.stopped().await;
    assert_eq!(
        dap.top_frame(thread).await.0,
        marker_line(&debugapp_file(), "first")
    );
    dap.resume_held(thread, req).await;
    dap.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_or_missing_secret_is_refused() {
    let host = Host::start(debug_opts(1));
    let url = host.url("/ptvsd");

    let resp = get(url.clone()).await;
    assert_eq!(resp.status, 401);
    assert_eq!(
        resp.header("www-authenticate"),
        Some("Basic realm=\"fcgihost debug\"")
    );
    let resp = spawn_get(
        url.clone(),
        vec![("Authorization".into(), basic_auth("wrong"))],
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 401);
    assert!(
        !resp.text().to_lowercase().contains("wrong"),
        "401 must not say why"
    );
    for bad in [None, Some("not-the-secret")] {
        match DapClient::connect_ws(&ws_url(&host, "/ptvsd"), bad).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401)
            }
            Err(other) => panic!("expected 401, got {other}"),
            Ok(_) => panic!("the WebSocket was accepted with secret {bad:?}"),
        }
    }
    // The right secret in each accepted form.
    let bearer = spawn_get(
        url.clone(),
        vec![("Authorization".into(), format!("Bearer {SECRET}"))],
    );
    assert_eq!(bearer.await.unwrap().status, 200);
    assert_eq!(get(format!("{url}?secret={SECRET}")).await.status, 200);
    assert_eq!(get_with_secret(url.clone()).await.status, 200);

    let log = host.wait_for_log_count("wrong or missing secret", 4, LOG_WAIT);
    assert!(
        log.contains("remote=127.0.0.1:"),
        "failures are logged with the address:\n{log}"
    );
    assert!(
        !log.contains(SECRET),
        "the secret leaked into the log:\n{log}"
    );

    // Ten failures within a minute (the successes above reset the count): the address is
    // refused for a while, right secret or not.
    for _ in 0..10 {
        assert_eq!(get(url.clone()).await.status, 401);
    }
    let resp = get_with_secret(url.clone()).await;
    assert_eq!(resp.status, 429);
    assert!(resp.header("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_debug_mode_off_the_path_belongs_to_the_app() {
    let host = Host::start(app_opts(1));
    let resp = get(host.url("/ptvsd")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "app saw /ptvsd");
    let resp = get(host.url("/ptvsd/0")).await;
    assert_eq!(resp.text(), "app saw /ptvsd/0");

    // `fcgihost attach` says what is wrong.
    let url = format!("ws://{SECRET}@{}/ptvsd", host.addr());
    let mut attach = AttachProcess::start(bin(), &[&url, "--listen", "127.0.0.1:0"]);
    let (code, output) = attach.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("debugging is off on the server"),
        "{output}"
    );
    assert!(output.contains("WSGI_PTVSD_SECRET"), "{output}");
    assert!(!output.contains(SECRET), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn info_page_shows_worker_states_and_never_the_secret() {
    let host = Host::start(debug_opts(2));
    // Both workers up.
    host.wait_for_log_count("debugpy listening", 2, LOG_WAIT);
    host.wait_for_log_count("worker ready", 2, LOG_WAIT);

    let dap = attach_ws(&host, "/ptvsd/1", "vscode", &[]).await;
    let page = info_page(&host).await;
    assert!(!page.contains(SECRET));
    assert!(page.contains("Remote debugging is on"));
    assert!(page.contains(&format!("wss://&lt;secret&gt;@{}/ptvsd", host.addr())));
    assert!(page.contains("fcgihost attach wss://&lt;secret&gt;@"));
    assert!(page.contains("&quot;request&quot;: &quot;attach&quot;"));
    assert!(page.contains("&quot;port&quot;: 5678"));
    assert!(page.contains("pathMappings"));
    assert!(page.contains("Python remote (debugpy)"));
    assert!(page.contains("tcp://127.0.0.1:5678"));
    let row0 = worker_row(&page, 0);
    let row1 = worker_row(&page, 1);
    assert!(row0.contains("idle") && row0.contains("none"), "{row0}");
    assert!(
        row1.contains("idle") && row1.contains("debugger attached"),
        "{row1}"
    );

    // Requests go to the worker with the debugger first.
    let pid1 = worker_pid(&page, 1);
    for _ in 0..3 {
        assert_eq!(get(host.url("/pid")).await.text(), pid1);
    }

    // A busy worker shows its request.
    let slow = spawn_get(host.url("/sleep?s=1"), Vec::new());
    let page_url = host.url("/ptvsd");
    let busy = tokio::task::spawn_blocking(move || {
        let auth = basic_auth(SECRET);
        common::wait_until_every(LOG_WAIT, Duration::from_millis(20), || {
            let page = request("GET", &page_url, &[("Authorization", &auth)], b"").text();
            worker_row(&page, 1).contains("busy: GET /sleep")
        })
    });
    assert!(
        busy.await.unwrap(),
        "the info page never showed worker 1 busy"
    );
    assert_eq!(slow.await.unwrap().status, 200);
    dap.disconnect().await;
    assert!(!host.log().contains(SECRET));

    // Unknown worker ids are refused.
    match DapClient::connect_ws(&ws_url(&host, "/ptvsd/7"), Some(SECRET)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 404),
        Err(other) => panic!("expected 404, got {other}"),
        Ok(_) => panic!("attached to a worker that does not exist"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn debug_mode_without_debugpy_fails_at_start_with_the_pip_command() {
    let dir = tempfile::tempdir().unwrap();
    // An interpreter that cannot import debugpy: python3 itself if it lacks it, else a bare venv.
    let lacks = |py: &str| {
        std::process::Command::new(py)
            .args(["-c", "import debugpy"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| !s.success())
    };
    let bare = if lacks("python3") {
        "python3".to_string()
    } else {
        let venv = dir.path().join("bare-venv");
        let ok = std::process::Command::new(python())
            .args(["-m", "venv", "--without-pip"])
            .arg(&venv)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot create a bare venv");
        let py = venv.join("bin/python").to_string_lossy().into_owned();
        assert!(lacks(&py), "{py} can import debugpy");
        py
    };
    let opts = app_opts(1)
        .env("WSGI_PTVSD_SECRET", SECRET)
        .no_python_flag()
        .arg("--python")
        .arg(&bare);
    let out = run_cli(opts, dir.path(), Duration::from_secs(60));
    assert_ne!(out.code, Some(0), "{out:#?}");
    let all = out.all();
    assert!(all.contains("pip install debugpy"), "{all}");
    assert!(
        all.contains(&bare),
        "the message names the interpreter: {all}"
    );
    assert!(!all.contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breakpoint_session_through_fcgihost_attach() {
    let host = Host::start(debug_opts(1));
    let pid = get(host.url("/pid")).await.text();
    let url = format!("ws://{SECRET}@{}/ptvsd", host.addr());
    let mut attach = AttachProcess::start(bin(), &[&url, "--listen", "127.0.0.1:0"]);
    let Some(local) = attach.addr else {
        panic!("fcgihost attach did not start:\n{}", attach.output_now());
    };
    let printed = attach
        .wait_output("Press Ctrl+C", Duration::from_secs(10))
        .unwrap_or_else(|out| panic!("fcgihost attach printed no instructions:\n{out}"));
    assert!(
        printed.contains(&format!("\"port\": {}", local.port())),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("tcp://127.0.0.1:{}", local.port())),
        "{printed}"
    );
    assert!(
        printed.contains(&app_dir("debugapp").display().to_string()),
        "{printed}"
    );
    assert!(!printed.contains(SECRET), "{printed}");

    let mut dap = DapClient::connect_tcp(local).await.unwrap();
    let file = debugapp_file();
    dap.attach(
        "vscode",
        &[(file.as_path(), vec![marker_line(&file, "first")])],
    )
    .await;
    let req = spawn_get(host.url("/debugme"), Vec::new());
    let (thread, reason) = dap.stopped().await;
    assert_eq!(reason, "breakpoint");
    assert_eq!(
        dap.top_frame(thread).await,
        (marker_line(&file, "first"), "debugme".to_string())
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !req.is_finished(),
        "the request ran past its 2 s timeout while paused"
    );
    let resp = dap.resume_held(thread, req).await;
    assert_eq!(resp.text(), format!("pid={pid} total=6"));
    dap.disconnect().await;
    host.wait_for_log("debugger detached", LOG_WAIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fcgihost_attach_reports_wrong_secret_and_unreachable_hosts() {
    let host = Host::start(debug_opts(1));
    let url = format!("ws://not-the-secret@{}/ptvsd", host.addr());
    let mut attach = AttachProcess::start(bin(), &[&url, "--listen", "127.0.0.1:0"]);
    let (code, output) = attach.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("wrong secret"), "{output}");
    assert!(
        !output.contains("not-the-secret"),
        "the secret is never printed: {output}"
    );

    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("ws://{SECRET}@{closed}/ptvsd");
    let mut attach = AttachProcess::start(bin(), &[&url, "--listen", "127.0.0.1:0"]);
    let (code, output) = attach.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains(&format!("cannot reach {closed}")),
        "{output}"
    );
}
