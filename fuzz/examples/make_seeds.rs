//! Writes the seed inputs of every fuzz target into `fuzz/corpus/<target>/seed-*`: real CGI
//! response heads as the shipped worker writes them, FastCGI record streams encoded with the
//! crate's own `put_*` functions, a debugpy session's DAP messages, and real config files.
//!
//! Run from `fuzz/`: `cargo run --example make_seeds`. Seeds are overwritten, nothing else in
//! the corpus is touched; the input formats are those documented atop each target.

use std::fs;
use std::path::Path;

use bytes::BytesMut;
use fcgihost::gateway::fcgi::{
    put_abort_request, put_begin_request, put_end_request, put_get_values, put_get_values_result,
    put_name_value, put_stream, put_unknown_type, ParamsWriter, ProtocolStatus, RecordType, Role,
};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).expect("create corpus dir");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn cgi_heads() {
    let heads: &[(&str, &[u8])] = &[
        (
            "flask-html",
            b"Status: 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 13\r\n\r\n<h1>Hi</h1>\r\n",
        ),
        (
            "django-redirect-cookies",
            b"Status: 302 Found\r\nContent-Type: text/html; charset=utf-8\r\nLocation: /accounts/login/?next=/\r\n\
              Vary: Cookie\r\nSet-Cookie: csrftoken=abc; expires=Tue, 01 Jun 2027 10:00:00 GMT; Max-Age=31449600; Path=/; SameSite=Lax\r\n\
              Set-Cookie: sessionid=xyz; HttpOnly; Path=/\r\nX-Frame-Options: DENY\r\n\r\n",
        ),
        (
            "django-404",
            b"Status: 404 Not Found\r\nContent-Type: text/html; charset=utf-8\r\nX-Frame-Options: DENY\r\n\
              Content-Length: 179\r\nX-Content-Type-Options: nosniff\r\nReferrer-Policy: same-origin\r\n\
              Cross-Origin-Opener-Policy: same-origin\r\n\r\n<!doctype html>",
        ),
        ("lf-only-location", b"Location: https://example.com/next\n\nbody\n\n"),
        (
            "worker-500",
            b"Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nTraceback",
        ),
        (
            "hop-by-hop",
            b"Status: 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nX-Accel: 1\r\n\r\n",
        ),
        ("incomplete", b"Status: 200 OK\r\nContent-Ty"),
        ("obs-fold", b"Status: 200 OK\r\nX-A: 1\r\n  folded\r\n\r\n"),
    ];
    for (name, head) in heads {
        write("cgi_head", name, head);
    }
}

/// The PARAMS of a typical proxied request, as the gateway writes them.
fn request_params(buf: &mut BytesMut, id: u16) {
    let mut w = ParamsWriter::new(buf, id);
    for (n, v) in [
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "fcgihost/0.1.0"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_METHOD", "POST"),
        ("SCRIPT_NAME", "/myproj"),
        ("PATH_INFO", "/api/items/42"),
        ("QUERY_STRING", "q=caf%C3%A9&page=2"),
        ("REQUEST_URI", "/myproj/api/items/42?q=caf%C3%A9&page=2"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "8000"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "53122"),
        ("CONTENT_TYPE", "application/x-www-form-urlencoded"),
        ("CONTENT_LENGTH", "7"),
        ("HTTP_HOST", "localhost:8000"),
        (
            "HTTP_USER_AGENT",
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
        ),
        (
            "HTTP_ACCEPT",
            "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8",
        ),
        ("HTTP_COOKIE", "sessionid=xyz; csrftoken=abc"),
    ] {
        w.push(n.as_bytes(), v.as_bytes());
    }
    // A value over 127 bytes takes the 4-byte length form.
    w.push(b"HTTP_X_LONG", &[b'v'; 300]);
    w.finish();
}

fn fcgi_streams() {
    // Control byte 0: the stream is decoded whole; 0x03 + sizes: in chunks of 1, 7, 201.
    let with = |control: &[u8], buf: &BytesMut| [control, &buf[..]].concat();

    let mut request = BytesMut::new();
    put_begin_request(&mut request, 1, Role::Responder, true);
    request_params(&mut request, 1);
    put_stream(&mut request, RecordType::Stdin, 1, b"a=1&b=2");
    put_stream(&mut request, RecordType::Stdin, 1, b"");
    write("fcgi_records", "request", &with(&[0], &request));
    write(
        "fcgi_records",
        "request-chunked",
        &with(&[3, 0, 6, 200], &request),
    );

    let mut response = BytesMut::new();
    put_stream(
        &mut response,
        RecordType::Stdout,
        1,
        b"Status: 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello, world!\n",
    );
    put_stream(&mut response, RecordType::Stderr, 1, b"app: a warning\n");
    put_stream(&mut response, RecordType::Stderr, 1, b"");
    put_stream(&mut response, RecordType::Stdout, 1, b"");
    put_end_request(&mut response, 1, 0, ProtocolStatus::RequestComplete);
    write("fcgi_records", "response", &with(&[0], &response));
    write(
        "fcgi_records",
        "response-small-limit",
        &with(&[0x12, 3, 9], &response),
    );

    let mut management = BytesMut::new();
    put_get_values(
        &mut management,
        &["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"],
    );
    put_get_values_result(
        &mut management,
        &[
            ("FCGI_MAX_CONNS", "1"),
            ("FCGI_MAX_REQS", "1"),
            ("FCGI_MPXS_CONNS", "0"),
        ],
    );
    put_unknown_type(&mut management, 200);
    write("fcgi_records", "management", &with(&[0], &management));

    let mut abort = BytesMut::new();
    put_begin_request(&mut abort, 2, Role::Responder, false);
    request_params(&mut abort, 2);
    put_abort_request(&mut abort, 2);
    put_end_request(&mut abort, 2, 1, ProtocolStatus::Overloaded);
    put_end_request(&mut abort, 3, 0, ProtocolStatus::CantMpxConn);
    put_end_request(&mut abort, 4, 0, ProtocolStatus::UnknownRole);
    put_stream(&mut abort, RecordType::Data, 4, b"filter data");
    write("fcgi_records", "abort-and-statuses", &with(&[1, 4], &abort));

    // Padding, which other FastCGI libraries (flup, PHP-FPM) add to 8-byte alignment.
    let padded: &[u8] = &[
        0, 1, 6, 0, 1, 0, 5, 3, 0, b'h', b'e', b'l', b'l', b'o', 0, 0, 0, 1, 3, 0, 1, 0, 8, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0,
    ];
    write("fcgi_records", "padded", padded);
    // Bare name-value pairs, with bit 5 set: the target grows them past one record.
    let mut pairs = vec![0x20];
    for (n, v) in [
        ("HTTP_COOKIE", "sessionid=xyz; csrftoken=abc"),
        ("PATH_INFO", "/api/items/42"),
        ("QUERY_STRING", ""),
        ("HTTP_X_FORWARDED_FOR", "203.0.113.7, 10.0.0.1"),
    ] {
        put_name_value(&mut pairs, n.as_bytes(), v.as_bytes());
    }
    write("fcgi_records", "pairs-large", &pairs);
    // Not FastCGI at all: an HTTP request sent to the FastCGI port.
    write(
        "fcgi_records",
        "http",
        b"\0GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    );
}

/// A DAP message and which way it goes (`true`: adapter to client).
type Message = (bool, Vec<u8>);

/// One DAP message with its `Content-Length` header.
fn dap(json: &str) -> Vec<u8> {
    format!("Content-Length: {}\r\n\r\n{json}", json.len()).into_bytes()
}

/// One segment of the dap_monitor input format: `ctrl, len (u16 BE), bytes`.
fn segment(out: &mut Vec<u8>, adapter: bool, piece_index: u8, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("segment under 64 KiB");
    out.push(u8::from(adapter) | 2 | (piece_index << 4));
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn dap_sessions() {
    let c = |json: &str| (false, dap(json));
    let a = |json: &str| (true, dap(json));
    let handshake = [
        c(
            r#"{"command":"initialize","arguments":{"clientID":"vscode","clientName":"Visual Studio Code","adapterID":"debugpy","pathFormat":"path","linesStartAt1":true,"columnsStartAt1":true,"supportsVariableType":true,"supportsRunInTerminalRequest":true,"locale":"en"},"type":"request","seq":1}"#,
        ),
        a(
            r#"{"seq":1,"type":"response","request_seq":1,"success":true,"command":"initialize","body":{"supportsConfigurationDoneRequest":true,"supportsConditionalBreakpoints":true,"supportsSetVariable":true,"supportsTerminateRequest":true}}"#,
        ),
        c(
            r#"{"command":"attach","arguments":{"name":"Attach to fcgihost","type":"debugpy","request":"attach","connect":{"host":"localhost","port":8000},"justMyCode":true},"type":"request","seq":2}"#,
        ),
        a(r#"{"seq":2,"type":"event","event":"initialized"}"#),
        c(
            r#"{"command":"setBreakpoints","arguments":{"source":{"name":"views.py","path":"/srv/app/views.py"},"lines":[12],"breakpoints":[{"line":12}],"sourceModified":false},"type":"request","seq":3}"#,
        ),
        a(
            r#"{"seq":3,"type":"response","request_seq":3,"success":true,"command":"setBreakpoints","body":{"breakpoints":[{"verified":true,"id":0,"line":12}]}}"#,
        ),
        c(r#"{"command":"configurationDone","type":"request","seq":4}"#),
        a(
            r#"{"seq":4,"type":"response","request_seq":4,"success":true,"command":"configurationDone"}"#,
        ),
    ];
    let stop = [
        a(
            r#"{"seq":5,"type":"event","event":"stopped","body":{"reason":"breakpoint","threadId":1,"preserveFocusHint":false,"allThreadsStopped":true}}"#,
        ),
        c(r#"{"command":"threads","type":"request","seq":5}"#),
        a(
            r#"{"seq":6,"type":"response","request_seq":5,"success":true,"command":"threads","body":{"threads":[{"id":1,"name":"MainThread"}]}}"#,
        ),
        c(
            r#"{"command":"stackTrace","arguments":{"threadId":1,"startFrame":0,"levels":20},"type":"request","seq":6}"#,
        ),
    ];
    let resume_vscode = [
        c(r#"{"command":"continue","arguments":{"threadId":1},"type":"request","seq":7}"#),
        a(
            r#"{"seq":7,"type":"response","request_seq":7,"success":true,"command":"continue","body":{"allThreadsContinued":true}}"#,
        ),
        a(
            r#"{"seq":8,"type":"event","event":"continued","body":{"threadId":1,"allThreadsContinued":true}}"#,
        ),
    ];
    let step = [
        c(r#"{"command":"next","arguments":{"threadId":1},"type":"request","seq":8}"#),
        a(
            r#"{"seq":9,"type":"event","event":"stopped","body":{"reason":"step","threadId":1,"allThreadsStopped":true}}"#,
        ),
        a(r#"{"seq":10,"type":"response","request_seq":8,"success":true,"command":"next"}"#),
    ];
    let end = [
        c(
            r#"{"command":"disconnect","arguments":{"restart":false,"terminateDebuggee":false},"type":"request","seq":9}"#,
        ),
        a(r#"{"seq":11,"type":"response","request_seq":9,"success":true,"command":"disconnect"}"#),
    ];
    let thread_stop = [
        a(r#"{"seq":12,"type":"event","event":"stopped","body":{"reason":"pause","threadId":7}}"#),
        c(
            r#"{"command":"continue","arguments":{"threadId":7,"singleThread":true},"type":"request","seq":10}"#,
        ),
        a(
            r#"{"seq":13,"type":"response","request_seq":10,"success":true,"command":"continue","body":{"allThreadsContinued":false}}"#,
        ),
        a(r#"{"seq":14,"type":"event","event":"terminated"}"#),
    ];

    let sessions: Vec<(&str, Vec<&Message>)> = vec![
        (
            "vscode-breakpoint-continue",
            handshake
                .iter()
                .chain(&stop)
                .chain(&resume_vscode)
                .chain(&end)
                .collect(),
        ),
        (
            "step-overtaken",
            stop.iter().chain(&step).chain(&thread_stop).collect(),
        ),
    ];
    for (i, (name, messages)) in sessions.iter().enumerate() {
        let mut out = Vec::new();
        for (j, (adapter, bytes)) in messages.iter().enumerate() {
            // Whole messages in one seed, byte-by-byte and odd pieces in the other.
            let piece = if i == 0 { 14 } else { (j % 8) as u8 };
            segment(&mut out, *adapter, piece, bytes);
        }
        write("dap_monitor", name, &out);
    }

    // Visual Studio: no `continued` event, the `continue` response alone resumes; and a
    // response and the next stop arriving in one chunk.
    let mut out = Vec::new();
    let vs_init = c(
        r#"{"command":"initialize","arguments":{"clientID":"visualstudio","adapterID":"debugpy"},"type":"request","seq":1}"#,
    );
    segment(&mut out, false, 3, &vs_init.1);
    segment(&mut out, true, 14, &stop[0].1);
    segment(&mut out, false, 14, &resume_vscode[0].1);
    let both = [resume_vscode[1].1.clone(), stop[0].1.clone()].concat();
    segment(&mut out, true, 1, &both);
    write("dap_monitor", "visualstudio", &out);

    // Garbage, an oversized body (skipped) and extra headers, repeated 16 times.
    let mut out = Vec::new();
    let mut noisy = b"garbage\r\n\r\nContent-Length: 70000\r\n\r\n".to_vec();
    noisy.extend_from_slice(&[b'x'; 300]);
    segment(&mut out, true, 6, &noisy);
    let extra = format!(
        "Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n{}",
        String::from_utf8_lossy(&stop[0].1)
    );
    out.push(1 | 2 | (2 << 2) | (9 << 4));
    out.extend_from_slice(&u16::try_from(extra.len()).expect("small").to_be_bytes());
    out.extend_from_slice(extra.as_bytes());
    write("dap_monitor", "noise", &out);

    // 4000 bytes without a header end, sent 64 times: the framer must resynchronise and not
    // buffer the 256 KB (the memory check catches a framer that does).
    let mut out = vec![1 | 2 | (3 << 2) | (10 << 4)];
    out.extend_from_slice(&4000u16.to_be_bytes());
    out.extend(b"Content-Type: x\r\n".iter().cycle().take(4000));
    write("dap_monitor", "long-garbage", &out);
}

fn configs() {
    write(
        "config_toml",
        "getting-started",
        br#"app = "myproj.wsgi:application"
workers = 4
listen = "127.0.0.1:9000"
request_timeout = "90s"
"#,
    );
    write(
        "config_toml",
        "full",
        br#"# fcgihost.toml for a Django site behind IIS's successor
app = "myproj.wsgi:application"
app_dir = "."
python = ".venv/bin/python"
pythonpath = ["lib", "vendor"]
listen = "0.0.0.0:8000"
workers = 4
max_queue = 200
queue_timeout = "30s"
request_timeout = "00:02:00"
graceful_timeout = "1m30s"
startup_timeout = 60
rapid_fails_per_minute = 10
max_requests = 10000
max_requests_jitter = 500
max_worker_rss = "512MiB"
max_worker_lifetime = "1d"
script_name = "/myproj"
restart_file_regex = '.*((\.py)|(\.config))$'
status_path = "/_status"
slow_request_threshold = "5s"
max_header_size = "64KiB"
max_headers = 100
max_body_size = "100MB"
header_read_timeout = "30s"
keep_alive_timeout = "75s"
max_connections = 1000

[worker.env]
DJANGO_SETTINGS_MODULE = "myproj.settings"
PORT = 5

[log]
level = "info"
file = "logs/fcgihost.log"
access = true
access_format = '%(h)s "%(r)s" %(s)s %(b)s %(L)s'

[debug]
secret = "correct-horse-battery-staple-42"
path = "/ptvsd"
wait_for_attach = "0"
max_pause = "30m"
"#,
    );
    write(
        "config_toml",
        "typo-and-command",
        b"wokers = 4\n[worker]\ncommand = [\"python3\", \"my_fcgi.py\"]\n",
    );

    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/wfastcgi.web.config");
    let wfastcgi = fs::read(&fixture).expect("tests/fixtures/wfastcgi.web.config");
    write("config_web_config", "wfastcgi", &wfastcgi);
    write(
        "config_web_config",
        "minimal",
        br#"<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <appSettings>
    <add key="WSGI_HANDLER" value="app.web" />
  </appSettings>
</configuration>
"#,
    );
    write(
        "config_web_config",
        "virtualenv-proxy-location",
        br#"<configuration>
  <location path=".">
    <appSettings file="secrets.config">
      <clear />
      <add key="WSGI_HANDLER" value="ptvs_virtualenv_proxy.get_virtualenv_handler()" />
      <add key="WSGI_ALT_VIRTUALENV_HANDLER" value="app.wsgi_app" />
      <add key="WSGI_ALT_VIRTUALENV_ACTIVATE_THIS" value="D:\home\site\wwwroot\env\Scripts\activate_this.py" />
      <add key="PYTHONPATH" value="%HOME%\site\wwwroot;%EMPTY%" />
      <remove key="WSGI_LOG" />
      <add key="bad name" value="x" />
    </appSettings>
  </location>
</configuration>
"#,
    );
    // UTF-16 LE with BOM, as Visual Studio may save it.
    let text = "<configuration><appSettings><add key=\"WSGI_HANDLER\" value=\"app.web\"/><add key=\"SCRIPT_NAME\" value=\"/app\"/></appSettings></configuration>";
    let mut utf16 = vec![0xFF, 0xFE];
    for unit in text.encode_utf16() {
        utf16.extend_from_slice(&unit.to_le_bytes());
    }
    write("config_web_config", "utf16", &utf16);
}

fn main() {
    cgi_heads();
    fcgi_streams();
    dap_sessions();
    configs();
}
