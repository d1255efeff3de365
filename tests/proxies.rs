//! The front-end recipes of docs/nginx.md, docs/apache.md and docs/lighttpd.md, tested as
//! written: each test copies a configuration block out of the Markdown (changing only
//! addresses: the proxy on a free loopback port that is not 80, fcgihost on its own ports),
//! starts Debian's real nginx, Apache or lighttpd with it in front of fcgihost serving a
//! Django site (tests/apps/djangoproj, `settings_site`, with the admin and a superuser in the
//! test's own SQLite database), and checks what a user of that recipe would: HTTP_HOST with
//! the port, SERVER_PORT, REMOTE_ADDR, a PATH_INFO with `%2F` and UTF-8, response header
//! names as the app wrote them, a 20 MiB upload, a streamed 50 MiB download, an admin login
//! with the browser's `Origin` header, and the `/ptvsd` debugger WebSocket where the recipe
//! carries it.
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use std::process::Command;

use common::dap::DapClient;
use common::fronts::{adapt, doc_block, doc_line, fastcgi_addr, Apache, Lighttpd, Nginx};
use common::{
    agent, app_dir, cookie_header, form_encode, pattern_buf, python, raw_request, request,
    request_with, require_python_module, Host, HostOpts, PATTERN_PERIOD,
};
use serde_json::json;

const SECRET: &str = "proxy-Secret_0123456789xyz";
const ADMIN_PASSWORD: &str = "admin-pw-0123456789";
const UPLOAD_BYTES: usize = 20 * 1024 * 1024;
const DOWNLOAD_BYTES: usize = 50 * 1024 * 1024;

/// fcgihost serving the Django site (admin, sessions, auth) with a FastCGI door and, when
/// `debug`, remote debugging on; the database is migrated and has a superuser `admin`.
fn django_site(debug: bool) -> Host {
    require_python_module("django");
    let dir = tempfile::Builder::new()
        .prefix("fcgihost-proxies-")
        .tempdir()
        .unwrap();
    let db = dir.path().join("db.sqlite3");
    let manage = |args: &[&str]| {
        let out = Command::new(python())
            .args(["-m", "django"])
            .args(args)
            .env("PYTHONPATH", app_dir("djangoproj"))
            .env("DJANGO_SETTINGS_MODULE", "djangoproj.settings_site")
            .env("FCGIHOST_TEST_DJANGO_DB", &db)
            .env("DJANGO_SUPERUSER_PASSWORD", ADMIN_PASSWORD)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "django {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    manage(&["migrate", "--noinput", "-v0"]);
    manage(&[
        "createsuperuser",
        "--noinput",
        "--username",
        "admin",
        "--email",
        "admin@example.com",
    ]);
    let mut opts = HostOpts::new()
        .app("djangoproj.wsgi:application")
        .app_dir(app_dir("djangoproj"))
        .workers(2)
        .arg("--fastcgi-listen")
        .arg("127.0.0.1:0")
        .env("DJANGO_SETTINGS_MODULE", "djangoproj.settings_site")
        .env("FCGIHOST_TEST_DJANGO_DB", &db);
    if debug {
        opts = opts.env("WSGI_PTVSD_SECRET", SECRET);
    }
    Host::start_in(opts, dir)
}

/// What every recipe must deliver, through the proxy on `port`.
fn check_recipe(port: u16, ptvsd: bool) {
    let base = format!("http://127.0.0.1:{port}");

    // The request as the app sees it: the Host the browser sent (port included), the
    // proxy's port, the client's address, and the path decoded as gunicorn decodes it.
    let resp = request("GET", &format!("{base}/env/caf%C3%A9/a%2Fb?x=1"), &[], b"");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let env = resp.json();
    assert_eq!(
        env["meta"]["HTTP_HOST"],
        format!("127.0.0.1:{port}"),
        "{env}"
    );
    assert_eq!(env["meta"]["SERVER_PORT"], port.to_string(), "{env}");
    assert_eq!(env["meta"]["REMOTE_ADDR"], "127.0.0.1", "{env}");
    assert_eq!(env["path_info"], "/env/café/a/b", "{env}");
    assert_eq!(env["meta"]["QUERY_STRING"], "x=1", "{env}");
    assert_eq!(
        env["absolute_uri"],
        format!("http://127.0.0.1:{port}/env/caf%C3%A9/a/b?x=1"),
        "{env}"
    );

    // Header names as Django wrote them (a raw client: ureq lower-cases names).
    let raw = raw_request(
        ([127, 0, 0, 1], port).into(),
        format!(
            "GET /admin/login/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
        false,
    );
    assert_eq!(raw.status, 200);
    let names: Vec<&str> = raw.headers.iter().map(|(k, _)| k.as_str()).collect();
    for name in [
        "Content-Type",
        "X-Frame-Options",
        "Set-Cookie",
        "X-Content-Type-Options",
    ] {
        assert!(names.contains(&name), "no {name:?} among {names:?}");
    }

    // A 20 MiB upload arrives whole.
    let body: Vec<u8> = (0..UPLOAD_BYTES)
        .map(|i| (i % PATTERN_PERIOD) as u8)
        .collect();
    let resp = request(
        "POST",
        &format!("{base}/upload/"),
        &[("Content-Type", "application/octet-stream")],
        &body,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json(),
        json!({"bytes": UPLOAD_BYTES, "pattern_mismatch_at": null})
    );

    // A streamed 50 MiB download (no Content-Length: the app yields chunks) arrives whole.
    let resp = request(
        "GET",
        &format!("{base}/download/?size={DOWNLOAD_BYTES}"),
        &[],
        b"",
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), None, "{:?}", resp.headers);
    assert_eq!(resp.body.len(), DOWNLOAD_BYTES);
    let pattern = pattern_buf();
    for (i, chunk) in resp.body.chunks(64 * 1024).enumerate() {
        let start = (i * 64 * 1024) % PATTERN_PERIOD;
        assert!(
            chunk == &pattern[start..start + chunk.len()],
            "download differs in chunk {i}"
        );
    }

    admin_login(&base);

    if ptvsd {
        debugger_round_trip(port);
    }
}

/// Django's admin login as a browser does it: GET the form (CSRF cookie and token), POST
/// it with an `Origin` header, follow to the admin index with the session cookie.
fn admin_login(base: &str) {
    let a = agent();
    let form = request_with(
        &a,
        "GET",
        &format!("{base}/admin/login/?next=/admin/"),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(form.status, 200, "{}", form.text());
    let page = form.text();
    let token = page
        .split("name=\"csrfmiddlewaretoken\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token in the login form:\n{page}"))
        .to_string();
    let cookies = cookie_header(&form);
    let body = form_encode(&[
        ("csrfmiddlewaretoken", &token),
        ("username", "admin"),
        ("password", ADMIN_PASSWORD),
        ("next", "/admin/"),
    ]);
    let login = request_with(
        &a,
        "POST",
        &format!("{base}/admin/login/?next=/admin/"),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &cookies),
            ("Origin", base),
            ("Referer", &format!("{base}/admin/login/?next=/admin/")),
        ],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(login.status, 302, "admin login refused:\n{}", login.text());
    assert_eq!(login.header("location"), Some("/admin/"));
    let session = cookie_header(&login);
    assert!(session.contains("sessionid="), "{:?}", login.headers);
    let index = request_with(
        &a,
        "GET",
        &format!("{base}/admin/"),
        &[("Cookie", &session)],
        b"",
    )
    .unwrap();
    assert_eq!(index.status, 200);
    assert!(
        index.text().contains("Site administration"),
        "{}",
        index.text()
    );
}

/// A DAP `initialize` answered by the worker's debugpy over `ws://…/ptvsd` through the proxy.
fn debugger_round_trip(port: u16) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let url = format!("ws://127.0.0.1:{port}/ptvsd");
        let mut dap = DapClient::connect_ws(&url, Some(SECRET))
            .await
            .unwrap_or_else(|e| panic!("WebSocket to {url} through the proxy: {e}"));
        let resp = dap
            .call(
                "initialize",
                json!({"clientID": "vscode", "adapterID": "debugpy", "pathFormat": "path",
                       "linesStartAt1": true, "columnsStartAt1": true}),
            )
            .await;
        assert_eq!(resp["success"], true, "{resp}");
        assert_eq!(
            resp["body"]["supportsConfigurationDoneRequest"], true,
            "{resp}"
        );
        dap.disconnect().await;
    });
}

#[test]
fn nginx_fastcgi_pass_recipe_as_documented() {
    let host = django_site(false);
    let door = fastcgi_addr(&host);
    let block = doc_block("nginx.md", "## Setup 1", "nginx");
    let nginx = Nginx::start(|port| {
        let conf = adapt(
            &block,
            "server 127.0.0.1:9001;",
            &format!("server {door};"),
            1,
        );
        adapt(&conf, "listen 80;", &format!("listen 127.0.0.1:{port};"), 1)
    });
    check_recipe(nginx.port, false);
}

#[test]
fn nginx_proxy_pass_recipe_as_documented() {
    let host = django_site(true);
    let block = doc_block("nginx.md", "## Setup 2", "nginx");
    let upstream = host.addr();
    let nginx = Nginx::start(|port| {
        let conf = adapt(
            &block,
            "server 127.0.0.1:8000;",
            &format!("server {upstream};"),
            1,
        );
        // No certificate in a test: plain HTTP on the test port instead of 443 with TLS.
        adapt(
            &conf,
            "listen 443 ssl;",
            &format!("listen 127.0.0.1:{port};"),
            1,
        )
    });
    check_recipe(nginx.port, true);
}

#[test]
fn nginx_fastcgi_with_ptvsd_over_http_recipe_as_documented() {
    let host = django_site(true);
    let door = fastcgi_addr(&host);
    let block = doc_block("nginx.md", "### Both", "nginx");
    let upstream = host.addr();
    let nginx = Nginx::start(|port| {
        let conf = adapt(
            &block,
            "fastcgi_pass 127.0.0.1:9001;",
            &format!("fastcgi_pass {door};"),
            1,
        );
        let conf = adapt(
            &conf,
            "proxy_pass http://127.0.0.1:8000;",
            &format!("proxy_pass http://{upstream};"),
            1,
        );
        adapt(&conf, "listen 80;", &format!("listen 127.0.0.1:{port};"), 1)
    });
    check_recipe(nginx.port, true);
}

/// Apache with the block and the `a2enmod` modules of docs/apache.md's section `heading`,
/// its VirtualHost on the test port and each `(documented, actual)` address swapped in.
fn apache_recipe(heading: &str, addresses: &[(&str, String)]) -> common::fronts::Front {
    let block = doc_block("apache.md", heading, "apache");
    let enable = doc_line("apache.md", heading, "a2enmod ");
    let modules: Vec<&str> = enable.split_whitespace().collect();
    Apache::start(&modules, |port| {
        let vhost = format!("<VirtualHost 127.0.0.1:{port}>");
        addresses.iter().fold(
            adapt(&block, "<VirtualHost *:80>", &vhost, 1),
            |conf, (from, to)| adapt(&conf, from, to, 1),
        )
    })
}

#[test]
fn apache_proxy_fcgi_recipe_as_documented() {
    let host = django_site(true);
    let door = fastcgi_addr(&host);
    let upstream = host.addr();
    let apache = apache_recipe(
        "## `mod_proxy_fcgi`",
        &[
            ("fcgi://127.0.0.1:9001/", format!("fcgi://{door}/")),
            (
                "http://127.0.0.1:8000/ptvsd",
                format!("http://{upstream}/ptvsd"),
            ),
        ],
    );
    check_recipe(apache.port, true);
}

#[test]
fn apache_proxy_http_recipe_as_documented() {
    let host = django_site(true);
    let upstream = host.addr();
    let apache = apache_recipe(
        "## `mod_proxy_http` only",
        &[("http://127.0.0.1:8000/", format!("http://{upstream}/"))],
    );
    check_recipe(apache.port, true);
}

#[test]
fn lighttpd_mod_fastcgi_recipe_as_documented() {
    let host = django_site(true);
    let door = fastcgi_addr(&host);
    let (door_host, door_port) = door.rsplit_once(':').unwrap();
    let block = doc_block("lighttpd.md", "## `mod_fastcgi`", "lighttpd");
    let upstream = host.addr();
    let conf = adapt(
        &block,
        r#""host" => "127.0.0.1", "port" => 8000"#,
        &format!(
            r#""host" => "{}", "port" => {}"#,
            upstream.ip(),
            upstream.port()
        ),
        1,
    );
    let conf = adapt(
        &conf,
        "\"host\" => \"127.0.0.1\",\n        \"port\" => 9001,",
        &format!("\"host\" => \"{door_host}\",\n        \"port\" => {door_port},"),
        1,
    );
    let lighttpd = Lighttpd::start(&conf);
    check_recipe(lighttpd.port, true);
}
