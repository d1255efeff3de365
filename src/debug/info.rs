//! The `/ptvsd` info page (a plain GET of the debug endpoint) and the client settings that
//! both it and `fcgihost attach` print: the VS Code `launch.json` snippet and the Visual
//! Studio steps.
//!
//! The page tells a developer that debugging is on, how to attach, and what every worker is
//! doing. It is served only to requests that present the secret (it reveals internals), and it
//! never contains the secret itself: the URL form shows the literal placeholder `<secret>`.
//! Everything that comes from outside (the Host header, request paths) is HTML-escaped.

use std::time::{Duration, Instant};

use crate::pages::escape_html;
use crate::pool::{Phase, WorkerSnapshot};

/// Default local port of `fcgihost attach` (debugpy's customary port), used in the snippets.
pub const DEFAULT_ATTACH_PORT: u16 = 5678;

/// What the info page shows besides the workers.
#[derive(Debug, Clone)]
pub struct InfoPage<'a> {
    /// The `Host` the browser used (shown in the URL form and the attach command).
    pub host: &'a str,
    /// The debug endpoint path (`/ptvsd`).
    pub path: &'a str,
    /// The app directory on the server, the `remoteRoot` of VS Code's path mappings.
    pub app_dir: &'a str,
    /// The configured pause-aware request timeout, if any.
    pub request_timeout: Option<Duration>,
    /// `debug.wait_for_attach`, if set.
    pub wait_for_attach: Option<Duration>,
    /// `debug.max_pause`, if set.
    pub max_pause: Option<Duration>,
    /// This host's instance id (`WEBSITE_INSTANCE_ID`, `instance_id`, or the host name).
    pub instance: &'a str,
}

/// The VS Code `launch.json` configuration that attaches to `fcgihost attach` on `port`.
///
/// `remote_root` is the app directory on the server; VS Code maps it to the workspace folder
/// so breakpoints set in local files bind in the server's copies.
pub fn vscode_launch_json(port: u16, remote_root: &str) -> String {
    let remote_root = serde_json::Value::String(remote_root.to_owned()).to_string();
    format!(
        r#"{{
  "name": "Attach to fcgihost",
  "type": "debugpy",
  "request": "attach",
  "connect": {{ "host": "127.0.0.1", "port": {port} }},
  "pathMappings": [
    {{ "localRoot": "${{workspaceFolder}}", "remoteRoot": {remote_root} }}
  ],
  "justMyCode": true
}}"#
    )
}

/// The Visual Studio steps that attach to `fcgihost attach` on `port`, one per line.
pub fn visual_studio_steps(port: u16) -> Vec<String> {
    vec![
        "Debug > Attach to Process (Ctrl+Alt+P)".to_owned(),
        "Connection type: Python remote (debugpy)".to_owned(),
        format!("Connection target: tcp://127.0.0.1:{port} (press Enter, then Attach)"),
    ]
}

/// A worker's state in words: starting, idle, busy with `METHOD /path` (and for how long;
/// every running request with `threads`),
/// paused at a breakpoint, stopped.
pub fn worker_state(worker: &WorkerSnapshot, now: Instant) -> String {
    // Every running request (several with `threads`), oldest first.
    let request = (!worker.running.is_empty()).then(|| {
        worker
            .running
            .iter()
            .map(|r| {
                format!(
                    "{} {} ({} s)",
                    r.method,
                    r.path,
                    now.saturating_duration_since(r.started).as_secs()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    });
    match (worker.phase, worker.paused) {
        (Phase::Busy, true) => match request {
            Some(r) => format!("paused at a breakpoint: {r}"),
            None => "paused at a breakpoint".to_owned(),
        },
        (Phase::Busy, false) => match request {
            Some(r) => format!("busy: {r}"),
            None => "busy".to_owned(),
        },
        (Phase::Idle, true) => "idle, paused at a breakpoint".to_owned(),
        (Phase::Idle, false) => "idle".to_owned(),
        (Phase::Starting, _) => "starting".to_owned(),
        (Phase::Stopped, _) => "stopped".to_owned(),
    }
}

/// Whether debugger connections are open to the worker, in words.
pub fn debugger_state(worker: &WorkerSnapshot) -> String {
    match worker.debuggers {
        0 => "none".to_owned(),
        1 => "debugger attached".to_owned(),
        n => format!("debugger attached ({n} connections)"),
    }
}

/// Renders the whole page for `workers` (HTML, UTF-8).
pub fn render(page: &InfoPage<'_>, workers: &[WorkerSnapshot], now: Instant) -> String {
    let host = if page.host.is_empty() {
        "HOST"
    } else {
        page.host
    };
    let url = format!("wss://<secret>@{host}{}", page.path);
    let attach = format!("fcgihost attach {url}");
    let launch = vscode_launch_json(DEFAULT_ATTACH_PORT, page.app_dir);
    let steps: String = visual_studio_steps(DEFAULT_ATTACH_PORT)
        .iter()
        .map(|step| format!("<li>{}</li>", escape_html(step)))
        .collect();
    let rows: String = workers
        .iter()
        .map(|w| {
            format!(
                "<tr><td>{id}</td><td>{pid}</td><td class=\"state\">{state}</td>\
<td>{debugger}</td><td>{requests}</td><td>{respawns}</td></tr>",
                id = w.id,
                pid = w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                state = escape_html(&worker_state(w, now)),
                debugger = escape_html(&debugger_state(w)),
                requests = w.requests,
                respawns = w.respawns,
            )
        })
        .collect();
    let mut settings = Vec::new();
    settings.push(match page.request_timeout {
        Some(t) => format!(
            "request_timeout is {}: only time in which the worker is not paused counts.",
            human(t)
        ),
        None => "request_timeout is off.".to_owned(),
    });
    if let Some(w) = page.wait_for_attach {
        settings.push(format!(
            "Requests wait up to {} for a debugger to attach (debug.wait_for_attach).",
            human(w)
        ));
    }
    if let Some(m) = page.max_pause {
        settings.push(format!(
            "One pause stops the request clock for at most {} (debug.max_pause).",
            human(m)
        ));
    }
    let settings: String = settings
        .iter()
        .map(|s| format!("<li>{}</li>", escape_html(s)))
        .collect();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>fcgihost remote debugging</title>\
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:60em}}\
pre,code{{background:#f4f4f4}}pre{{padding:1em;overflow:auto}}\
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}</style>\
</head><body>\
<h1>Remote debugging is on</h1>\
<p>This is instance <code class=\"instance\">{instance}</code>. Behind a balancer that routes by \
the <code>ARRAffinity</code> cookie (App Service), <code>fcgihost attach URL --instance {instance}</code> \
reaches this one.</p>\
<p>This server runs its Python workers under debugpy. Attach a debugger through the \
WebSocket endpoint <code>{url}</code> (use <code>ws://</code> when the site is served over plain HTTP); \
<code>&lt;secret&gt;</code> stands for the configured debug secret (WSGI_PTVSD_SECRET or debug.secret).</p>\
<h2>1. Open a local tunnel</h2>\
<pre>{attach}</pre>\
<p>It listens on 127.0.0.1:{port}; <code>--listen 127.0.0.1:PORT</code> picks another port, \
<code>--insecure</code> skips TLS certificate checks. <code>{path}/&lt;worker-id&gt;</code> attaches to one \
particular worker.</p>\
<h2>2a. VS Code</h2>\
<p>Add this configuration to <code>.vscode/launch.json</code> (the path mapping points your \
workspace at the app directory on the server) and start it:</p>\
<pre>{launch}</pre>\
<h2>2b. Visual Studio</h2>\
<ol>{steps}</ol>\
<h2>Settings</h2><ul>{settings}</ul>\
<h2>Workers</h2>\
<p>While a debugger is attached to a worker, new requests go to that worker first.</p>\
<table><tr><th>Worker</th><th>PID</th><th>State</th><th>Debugger</th><th>Requests</th><th>Restarts</th></tr>{rows}</table>\
<hr><small>fcgihost</small></body></html>",
        url = escape_html(&url),
        instance = escape_html(page.instance),
        attach = escape_html(&attach),
        port = DEFAULT_ATTACH_PORT,
        path = escape_html(page.path),
        launch = escape_html(&launch),
    )
}

/// A duration as people write it in the config (`90s`, `2m`, `1500ms`).
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::CurrentRequest;

    fn worker(id: usize, phase: Phase, paused: bool, debuggers: u32) -> WorkerSnapshot {
        let current = (phase == Phase::Busy).then(|| CurrentRequest {
            request_id: 7,
            method: "GET".into(),
            path: "/view/<script>".into(),
            started: Instant::now(),
        });
        WorkerSnapshot {
            id,
            pid: Some(1000 + id as u32),
            phase,
            paused,
            debug_port: Some(40000),
            debuggers,
            requests: 3,
            respawns: 0,
            running: current.iter().cloned().collect(),
            busy_threads: usize::from(current.is_some()),
            threads: 1,
            current,
            pipelined: 0,
        }
    }

    #[test]
    fn states_in_words() {
        let now = Instant::now();
        assert_eq!(worker_state(&worker(0, Phase::Idle, false, 0), now), "idle");
        assert_eq!(
            worker_state(&worker(0, Phase::Starting, false, 0), now),
            "starting"
        );
        assert!(worker_state(&worker(0, Phase::Busy, false, 0), now)
            .starts_with("busy: GET /view/<script>"));
        assert!(worker_state(&worker(0, Phase::Busy, true, 1), now)
            .starts_with("paused at a breakpoint: GET"));
        assert_eq!(
            debugger_state(&worker(0, Phase::Idle, false, 1)),
            "debugger attached"
        );
        assert_eq!(debugger_state(&worker(0, Phase::Idle, false, 0)), "none");
    }

    #[test]
    fn page_escapes_everything_and_shows_no_secret() {
        let page = InfoPage {
            host: "example.com\"><script>",
            path: "/ptvsd",
            app_dir: "C:\\inetpub\\app",
            request_timeout: Some(Duration::from_secs(90)),
            wait_for_attach: Some(Duration::from_secs(60)),
            max_pause: None,
            instance: "web-1<b>",
        };
        let workers = [
            worker(0, Phase::Busy, true, 1),
            worker(1, Phase::Idle, false, 0),
        ];
        let html = render(&page, &workers, Instant::now());
        assert!(!html.contains("<script>"));
        assert!(html.contains("wss://&lt;secret&gt;@example.com&quot;&gt;&lt;script&gt;/ptvsd"));
        assert!(html.contains("paused at a breakpoint: GET /view/&lt;script&gt;"));
        assert!(html.contains("debugger attached"));
        assert!(html.contains("Python remote (debugpy)"));
        assert!(html.contains("tcp://127.0.0.1:5678"));
        assert!(html.contains("C:\\\\inetpub\\\\app"));
        assert!(html.contains("request_timeout is 90s"));
        assert!(html.contains("wait up to 1m for a debugger"));
        assert!(html.contains("This is instance <code class=\"instance\">web-1&lt;b&gt;</code>"));
    }

    #[test]
    fn launch_json_is_valid_json() {
        let text = vscode_launch_json(6000, "/srv/app \"x\"");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["connect"]["port"], 6000);
        assert_eq!(value["request"], "attach");
        assert_eq!(value["pathMappings"][0]["remoteRoot"], "/srv/app \"x\"");
    }
}
