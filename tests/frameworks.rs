//! Real frameworks behind `fcgihost serve` (issue 2): the Flask app in tests/apps/flaskapp
//! and the Django project in tests/apps/djangoproj, both installed into .venv-test by
//! scripts/test. Each serves forms, cookies, redirects and JSON the way a browser or an API
//! client would use them.
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use common::*;

fn flask() -> Host {
    require_python_module("flask");
    Host::start(
        HostOpts::new()
            .app("flaskapp.app")
            .app_dir(app_dir("flaskapp"))
            .workers(1),
    )
}

fn django() -> Host {
    require_python_module("django");
    Host::start(
        HostOpts::new()
            .app("djangoproj.wsgi.application")
            .app_dir(app_dir("djangoproj"))
            .workers(1),
    )
}

fn is_json(r: &Resp) -> bool {
    r.header("content-type")
        .is_some_and(|v| v.starts_with("application/json"))
}

// ---------------------------------------------------------------------------------------------
// Flask

#[test]
fn flask_renders_jinja_templates_with_escaping() {
    let host = flask();
    let r = get(&host.url("/?name=%3Cb%3EAnn%3C%2Fb%3E"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("text/html")),
        "{:?}",
        r.headers
    );
    let t = r.text();
    assert!(t.contains("<h1>Flask on fcgihost</h1>"), "{t}");
    assert!(t.contains("<li>alpha</li><li>beta</li>"), "{t}");
    assert!(
        t.contains("Hello, &lt;b&gt;Ann&lt;/b&gt;!"),
        "user input must be escaped: {t}"
    );
}

#[test]
fn flask_form_get_and_post() {
    let host = flask();
    let r = get(&host.url("/form"));
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("<form method=\"post\" action=\"/form\">"),
        "{}",
        r.text()
    );

    let body = form_encode(&[("name", "Zoë & co"), ("tag", "red"), ("tag", "blue")]);
    let r = post(
        &host.url("/form"),
        "application/x-www-form-urlencoded",
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.text();
    assert!(t.contains("Thanks, Zoë &amp; co"), "{t}");
    assert!(t.contains("<li>red</li><li>blue</li>"), "{t}");
}

#[test]
fn flask_multipart_file_upload() {
    let host = flask();
    let file: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let boundary = "----fcgihost-test-boundary-7d93";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello note\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"data.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let r = post(
        &host.url("/upload"),
        &format!("multipart/form-data; boundary={boundary}"),
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["filename"], "data.bin");
    assert_eq!(j["size"], file.len());
    assert_eq!(j["note"], "hello note");
}

#[test]
fn flask_cookies_and_signed_session() {
    let host = flask();
    let r = get(&host.url("/cookie/set?value=mint"));
    assert_eq!(r.status, 200);
    let set = r.header_all("set-cookie");
    assert_eq!(set.len(), 1, "{set:?}");
    assert!(
        set[0].starts_with("flavor=mint") && set[0].contains("HttpOnly"),
        "{set:?}"
    );

    let r = request(
        "GET",
        &host.url("/cookie/get"),
        &[("Cookie", &cookie_header(&r))],
        b"",
    );
    assert_eq!(r.json()["flavor"], "mint");

    // The session cookie round-trips through the browser-side jar.
    let first = get(&host.url("/session/incr"));
    assert_eq!(first.json()["count"], 1);
    let jar = cookie_header(&first);
    assert!(jar.starts_with("session="), "{jar}");
    let second = request("GET", &host.url("/session/incr"), &[("Cookie", &jar)], b"");
    assert_eq!(second.json()["count"], 2);
}

#[test]
fn flask_redirect_leads_to_the_page() {
    let host = flask();
    let r = get(&host.url("/redirect"));
    assert_eq!(r.status, 302, "{}", r.text());
    let location = r.header("location").expect("Location header").to_string();
    assert!(location.ends_with("/?name=redirected"), "{location}");
    let target = if location.starts_with("http") {
        location
    } else {
        host.url(&location)
    };
    let r = get(&target);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("Hello, redirected!"), "{}", r.text());
}

#[test]
fn flask_json_api() {
    let host = flask();
    let r = post(
        &host.url("/api/items"),
        "application/json",
        r#"{"items": ["a", "b", "c"], "owner": "Zoë"}"#.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(is_json(&r), "{:?}", r.headers);
    let j = r.json();
    assert_eq!(j["count"], 3);
    assert_eq!(j["received"]["owner"], "Zoë");
    assert_eq!(j["method"], "POST");

    for method in ["PUT", "DELETE", "GET"] {
        let body: &[u8] = if method == "PUT" {
            br#"{"name": "seven"}"#
        } else {
            b""
        };
        let r = request(
            method,
            &host.url("/api/items/7"),
            &[("Content-Type", "application/json")],
            body,
        );
        assert_eq!(r.status, 200, "{method}: {}", r.text());
        let j = r.json();
        assert_eq!(j["id"], 7);
        assert_eq!(j["method"], method);
        if method == "PUT" {
            assert_eq!(j["json"]["name"], "seven");
        }
    }

    let r = post(
        &host.url("/api/items"),
        "application/json",
        br#"{"nope": 1}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().is_some());
}

// ---------------------------------------------------------------------------------------------
// Django

#[test]
fn django_renders_templates_with_escaping() {
    let host = django();
    let r = get(&host.url("/?name=%3Ci%3Ex%3C%2Fi%3E"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("text/html")),
        "{:?}",
        r.headers
    );
    let t = r.text();
    assert!(t.contains("<h1>Django on fcgihost</h1>"), "{t}");
    assert!(
        t.contains("Hello, &lt;i&gt;x&lt;/i&gt;!"),
        "user input must be escaped: {t}"
    );
}

#[test]
fn django_form_post_and_csrf_protection() {
    let host = django();
    let body = form_encode(&[("name", "Zoë"), ("tag", "a"), ("tag", "b")]);
    let r = post(
        &host.url("/form/"),
        "application/x-www-form-urlencoded",
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.text();
    assert!(t.contains("Thanks, Zoë"), "{t}");
    assert!(t.contains("<li>a</li><li>b</li>"), "{t}");

    // Without csrf_exempt, Django's CSRF middleware refuses a token-less POST.
    let r = post(
        &host.url("/protected/"),
        "application/x-www-form-urlencoded",
        b"x=1",
    );
    assert_eq!(r.status, 403, "{}", r.text());
}

#[test]
fn django_cookies_signed_and_plain() {
    let host = django();
    let r = get(&host.url("/cookie/set/?value=mint"));
    assert_eq!(r.status, 200, "{}", r.text());
    let set = r.header_all("set-cookie");
    assert_eq!(
        set.len(),
        2,
        "two Set-Cookie headers must stay apart: {set:?}"
    );
    assert!(set.iter().any(|c| c.starts_with("flavor=mint:")), "{set:?}");
    assert!(set.iter().any(|c| c.starts_with("plain=yes")), "{set:?}");

    let r = request(
        "GET",
        &host.url("/cookie/get/"),
        &[("Cookie", &cookie_header(&r))],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["flavor"], "mint", "the signed cookie should verify");
    assert_eq!(j["plain"], "yes");

    // A tampered signed cookie is rejected.
    let r = request(
        "GET",
        &host.url("/cookie/get/"),
        &[("Cookie", "flavor=mint:forged:sig")],
        b"",
    );
    assert_eq!(r.json()["flavor"], serde_json::Value::Null);
}

#[test]
fn django_redirects() {
    let host = django();
    let r = get(&host.url("/redirect/"));
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(r.header("location"), Some("/?name=redirected"));
    let r = get(&host.url("/?name=redirected"));
    assert!(r.text().contains("Hello, redirected!"));

    // CommonMiddleware's APPEND_SLASH.
    let r = get(&host.url("/form"));
    assert_eq!(r.status, 301, "{}", r.text());
    assert_eq!(r.header("location"), Some("/form/"));
}

#[test]
fn django_json_views() {
    let host = django();
    let r = post(
        &host.url("/api/echo/"),
        "application/json",
        r#"{"items": [1, 2, 3], "who": "Zoë"}"#.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(is_json(&r), "{:?}", r.headers);
    let j = r.json();
    assert_eq!(j["received"]["items"], serde_json::json!([1, 2, 3]));
    assert_eq!(j["received"]["who"], "Zoë");
    assert_eq!(j["content_type"], "application/json");
    assert_eq!(j["path"], "/api/echo/");

    let r = request(
        "PUT",
        &host.url("/api/echo/"),
        &[("Content-Type", "application/json")],
        b"[true]",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["method"], "PUT");

    let r = get(&host.url("/search/?q=a&q=b%20c"));
    assert_eq!(r.json()["q"], serde_json::json!(["a", "b c"]));

    let r = post(&host.url("/api/echo/"), "application/json", b"{not json");
    assert_eq!(r.status, 400);

    assert_eq!(get(&host.url("/no/such/page/")).status, 404);
}
