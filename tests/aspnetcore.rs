//! The ASP.NET Core Module (out-of-process) as IIS's front: it starts fcgihost with
//! `ASPNETCORE_PORT` and `ASPNETCORE_TOKEN` and sends the token in `MS-ASPNETCORE-TOKEN`
//! with every request. fcgihost listens on that port and, like Kestrel, answers only
//! requests that carry the token; the app never sees it and the log never shows it.

mod common;

use common::{request, Host, HostOpts};
use std::time::Duration;

const TOKEN: &str = "4c2f7a9e-0b1d-4e8a-9f3c-5d6e7f8a9b0c";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

#[test]
fn answers_only_requests_with_the_pairing_token() {
    let port = free_port();
    let host = Host::start(
        HostOpts::plain()
            .no_listen_flag()
            .env("ASPNETCORE_PORT", port.to_string())
            .env("ASPNETCORE_TOKEN", TOKEN),
    );
    assert_eq!(host.addr().port(), port, "listens on %ASPNETCORE_PORT%");
    let url = host.url("/echo");

    let paired = request("GET", &url, &[("MS-ASPNETCORE-TOKEN", TOKEN)], b"");
    assert_eq!(paired.status, 200, "{}", paired.text());
    let seen = paired.json();
    assert!(
        seen["headers"].get("HTTP_MS_ASPNETCORE_TOKEN").is_none(),
        "the app saw the token: {seen}"
    );

    let missing = request("GET", &url, &[], b"");
    assert_eq!(missing.status, 400);
    assert!(
        missing.text().contains("MS-ASPNETCORE-TOKEN"),
        "{}",
        missing.text()
    );
    let wrong = request(
        "GET",
        &url,
        &[("MS-ASPNETCORE-TOKEN", "not-the-token")],
        b"",
    );
    assert_eq!(wrong.status, 400);
    let almost = &TOKEN[..TOKEN.len() - 1];
    let prefix = request("GET", &url, &[("MS-ASPNETCORE-TOKEN", almost)], b"");
    assert_eq!(prefix.status, 400, "a prefix of the token is not the token");

    let log = host.wait_for_log_count("pairing token refused", 3, Duration::from_secs(10));
    assert!(!log.contains(TOKEN), "the token is in the log:\n{log}");
    assert!(
        !log.contains("not-the-token"),
        "a presented value is in the log:\n{log}"
    );
}

#[test]
fn without_a_token_every_request_is_answered() {
    let port = free_port();
    let host = Host::start(
        HostOpts::plain()
            .no_listen_flag()
            .env("ASPNETCORE_PORT", port.to_string()),
    );
    let r = request("GET", &host.url("/"), &[], b"");
    assert_eq!(r.status, 200);
}
