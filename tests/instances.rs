//! Debugging one instance of many (issue 13): two real hosts with different instance ids
//! (one from App Service's `WEBSITE_INSTANCE_ID`, one from `instance_id`) behind real nginx
//! routing by the `ARRAffinity` cookie (a `map`, as App Service's balancer does);
//! `fcgihost attach --instance B` reaches B, a breakpoint set through it stops B's requests
//! (real debugpy) while A keeps serving, and a wrong id fails with a message that names the
//! instance reached and says the balancer does not route by the cookie.
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::dap::{debugapp_file, marker_line, AttachProcess, DapClient};
use common::fronts::{Front, Nginx};
use common::*;

const SECRET: &str = "inst-Secret_0123456789xyz";
const T: Duration = Duration::from_secs(30);

/// The debug app in debug mode with one worker and a 2 s request timeout.
fn debug_host(opts: HostOpts) -> Host {
    Host::start(
        opts.workers(1)
            .arg("--request-timeout")
            .arg("2s")
            .env("WSGI_PTVSD_SECRET", SECRET),
    )
}

/// nginx sending requests with `ARRAffinity=B` to B, everything else to A (the WebSocket
/// upgrade of /ptvsd passes through).
fn balancer(a: &Host, b: &Host) -> Front {
    let (a, b) = (a.addr(), b.addr());
    Nginx::start(move |port| {
        format!(
            r#"    map $cookie_ARRAffinity $instance {{
        default {a};
        B       {b};
    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://$instance;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 1h;
        }}
    }}"#
        )
    })
}

/// GET through the balancer on a blocking thread (it may be held at a breakpoint).
fn spawn_get(url: String, cookie: Option<&'static str>) -> tokio::task::JoinHandle<Resp> {
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", *c)).collect();
        request("GET", &url, &headers, b"")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attach_instance_b_through_a_cookie_balancer_stops_only_bs_requests() {
    let a = debug_host(HostOpts::debugapp().env("WEBSITE_INSTANCE_ID", "A"));
    let b = debug_host(HostOpts::debugapp().arg("--set").arg("instance_id=B"));
    let nginx = balancer(&a, &b);
    let pid_a = spawn_get(nginx.url("/pid"), None).await.unwrap().text();
    let pid_b = spawn_get(nginx.url("/pid"), Some("ARRAffinity=B"))
        .await
        .unwrap()
        .text();
    assert_ne!(pid_a, pid_b, "nginx did not route by the cookie");

    // Each host's info page names its instance.
    let info = request(
        "GET",
        &nginx.url("/ptvsd"),
        &[
            ("Cookie", "ARRAffinity=B"),
            ("Authorization", &common::dap::basic_auth(SECRET)),
        ],
        b"",
    );
    assert_eq!(info.status, 200, "{}", info.text());
    assert!(
        info.text()
            .contains("This is instance <code class=\"instance\">B</code>"),
        "{}",
        info.text()
    );

    let url = format!("ws://{SECRET}@127.0.0.1:{}/ptvsd", nginx.port);
    let mut attach =
        AttachProcess::start(bin(), &[&url, "--instance", "B", "--listen", "127.0.0.1:0"]);
    let Some(local) = attach.addr else {
        panic!("fcgihost attach did not start:\n{}", attach.output_now());
    };
    let printed = attach
        .wait_output("Press Ctrl+C", T)
        .unwrap_or_else(|out| panic!("fcgihost attach printed no instructions:\n{out}"));
    assert!(
        printed.contains("reached instance B, the one asked for"),
        "{printed}"
    );

    let mut dap = DapClient::connect_tcp(local).await.unwrap();
    let file = debugapp_file();
    dap.attach(
        "vscode",
        &[(file.as_path(), vec![marker_line(&file, "first")])],
    )
    .await;
    b.wait_for_log("debugger attached", T);
    assert!(
        !a.log().contains("debugger attached"),
        "the tunnel reached A:\n{}",
        a.log()
    );

    let held = spawn_get(nginx.url("/debugme"), Some("ARRAffinity=B"));
    let (thread, reason) = dap.stopped().await;
    assert_eq!(reason, "breakpoint");
    assert_eq!(
        dap.top_frame(thread).await,
        (marker_line(&file, "first"), "debugme".to_string())
    );
    // A serves the same view meanwhile: the breakpoint is B's alone.
    let on_a = spawn_get(nginx.url("/debugme"), None).await.unwrap();
    assert_eq!(on_a.status, 200, "{}", on_a.text());
    assert_eq!(on_a.text(), format!("pid={pid_a} total=6"));
    assert!(!held.is_finished(), "B's request was not held");

    let resp = dap.resume_held(thread, held).await;
    assert_eq!(resp.text(), format!("pid={pid_b} total=6"));
    dap.disconnect().await;
    b.wait_for_log("debugger detached", T);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attach_to_an_instance_the_balancer_does_not_route_to_fails_plainly() {
    let a = debug_host(HostOpts::debugapp().env("WEBSITE_INSTANCE_ID", "A"));
    let b = debug_host(HostOpts::debugapp().arg("--set").arg("instance_id=B"));
    let nginx = balancer(&a, &b);
    let url = format!("ws://{SECRET}@127.0.0.1:{}/ptvsd", nginx.port);
    let mut attach =
        AttachProcess::start(bin(), &[&url, "--instance", "C", "--listen", "127.0.0.1:0"]);
    let (code, output) = attach.wait_exit(T);
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains(&format!(
            "asked for instance C, but ws://<secret>@127.0.0.1:{}/ptvsd reached instance A: \
             the balancer in front does not route by the ARRAffinity cookie",
            nginx.port
        )),
        "{output}"
    );
    assert!(!output.contains(SECRET), "{output}");
    a.wait_for_log("debug connection for another instance refused (421)", T);
}
