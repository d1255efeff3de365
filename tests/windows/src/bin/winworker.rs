//! winworker.exe: the stand-in for `python.exe fcgihost_worker.py` on Windows, where CI
//! has no Python. It speaks the worker protocol of docs/worker-protocol.md exactly as the
//! shipped Python worker does on Windows (the control connection and its token, the
//! `listening`/`debug_listening`/`ready`/`app_error` events, the `stop` and `dump_stacks`
//! commands, the token line on every FastCGI connection, FastCGI responder records) and
//! answers like a tiny WSGI app:
//!
//! * `/` — `hello from winworker <pid>`; `/pid` — the pid alone;
//! * `/echo` — the request body back, with its Content-Type;
//! * `/sleep?ms=N[&pidfile=PATH]` — writes its pid to PATH (when given), sleeps N ms, answers `slept <pid>`;
//! * `/exit?code=N` — the process ends at once, unanswered (a crashing app);
//! * `/stream?n=N&ms=M` — N lines, each its own STDOUT record, M ms apart, no Content-Length;
//! * `/error` — prints a Python-style traceback to stderr and answers 500;
//! * `/print?text=T` — prints T to stdout;
//! * `/env` — the CGI parameters it got, one `NAME=value` a line.
//!
//! `FCGIHOST_APP=broken` makes the app "fail to import": an `app_error` event with a
//! traceback, then exit 3, as the Python worker does. `-c CODE` (the host's `import debugpy`
//! probe) exits 0.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fcgihost_wintest::fcgi::{self, Record};

const EXIT_HOST_GONE: i32 = 1;
const EXIT_BAD_INVOCATION: i32 = 2;
const EXIT_APP_ERROR: i32 = 3;

/// The control connection: events out (serialised), commands in on a thread.
struct Control {
    out: Mutex<TcpStream>,
    busy: AtomicBool,
    stopping: AtomicBool,
}

impl Control {
    fn send(&self, json: &str) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.write_all(format!("{json}\n").as_bytes());
    }

    fn read_commands(self: Arc<Self>, read: TcpStream) {
        let reader = BufReader::new(read);
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if line.contains("\"stop\"") {
                self.stopping.store(true, Ordering::SeqCst);
                if !self.busy.load(Ordering::SeqCst) {
                    std::process::exit(0);
                }
            } else if line.contains("\"dump_stacks\"") {
                self.send(&format!(
                    "{{\"event\":\"stacks\",\"text\":{}}}",
                    json_string("Thread 1 (most recent call first):\n  File \"winworker.rs\", line 1, in serve\n")
                ));
            }
        }
        // EOF: the host is gone; never outlive it.
        std::process::exit(EXIT_HOST_GONE);
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

const IMPORT_TRACEBACK: &str = "Traceback (most recent call last):\n  File \"fcgihost_worker.py\", line 1, in load_app\n  File \"broken.py\", line 3, in <module>\n    import missing_module\nModuleNotFoundError: No module named 'missing_module'\n";

const REQUEST_TRACEBACK: &str = "Traceback (most recent call last):\n  File \"fcgihost_worker.py\", line 1, in run_app\n  File \"app.py\", line 7, in application\n    return 1 / 0\nZeroDivisionError: division by zero\n";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "-c") {
        return;
    }
    let (Ok(addr), Ok(token)) = (
        std::env::var("FCGIHOST_CONTROL_ADDR"),
        std::env::var("FCGIHOST_CONTROL_TOKEN"),
    ) else {
        eprintln!("winworker: FCGIHOST_CONTROL_ADDR and FCGIHOST_CONTROL_TOKEN must be set (run by fcgihost)");
        std::process::exit(EXIT_BAD_INVOCATION);
    };
    let (control_stream, listener) = match TcpStream::connect(&addr).and_then(|mut s| {
        s.write_all(format!("{token}\n").as_bytes())?;
        Ok((s, TcpListener::bind("127.0.0.1:0")?))
    }) {
        Ok(pair) => pair,
        Err(err) => {
            eprintln!("winworker: cannot connect to the host at {addr} ({err})");
            std::process::exit(EXIT_BAD_INVOCATION);
        }
    };
    let read_half = control_stream.try_clone().unwrap_or_else(|err| {
        eprintln!("winworker: {err}");
        std::process::exit(EXIT_BAD_INVOCATION)
    });
    let control = Arc::new(Control {
        out: Mutex::new(control_stream),
        busy: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
    });
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    control.send(&format!("{{\"event\":\"listening\",\"port\":{port}}}"));
    {
        let control = control.clone();
        std::thread::spawn(move || control.read_commands(read_half));
    }

    let app = std::env::var("FCGIHOST_APP").unwrap_or_else(|_| "(welcome)".into());
    if std::env::var("FCGIHOST_DEBUG").as_deref() == Ok("1") {
        // debugpy's stand-in: a loopback port that accepts and says nothing.
        if let Ok(debug) = TcpListener::bind("127.0.0.1:0") {
            let port = debug.local_addr().map(|a| a.port()).unwrap_or(0);
            std::thread::spawn(move || for _ in debug.incoming() {});
            control.send(&format!(
                "{{\"event\":\"debug_listening\",\"port\":{port}}}"
            ));
        }
    }
    if app == "broken" {
        control.send(&format!(
            "{{\"event\":\"app_error\",\"traceback\":{}}}",
            json_string(IMPORT_TRACEBACK)
        ));
        eprint!("fcgihost worker: cannot load app 'broken'\n{IMPORT_TRACEBACK}");
        std::process::exit(EXIT_APP_ERROR);
    }
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    control.send(&format!(
        "{{\"event\":\"ready\",\"pid\":{},\"app\":{},\"python\":{},\"version\":\"0.0.0-winworker\"}}",
        std::process::id(),
        json_string(&app),
        json_string(&exe)
    ));

    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        if !presents_token(&mut conn, &token) {
            continue;
        }
        let _ = conn.set_nodelay(true);
        serve(conn, &control);
    }
}

/// True when the connection starts with the token line (read exactly).
fn presents_token(conn: &mut TcpStream, token: &str) -> bool {
    let expected = format!("{token}\n");
    let mut got = vec![0u8; expected.len()];
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let ok = conn.read_exact(&mut got).is_ok();
    let _ = conn.set_read_timeout(None);
    let diff = got
        .iter()
        .zip(expected.as_bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    ok && diff == 0
}

/// A request being read.
#[derive(Default)]
struct Pending {
    keep_conn: bool,
    params: Vec<u8>,
    params_done: bool,
    body: Vec<u8>,
    body_done: bool,
}

/// Serves one FastCGI connection: requests in the order they began, each once its body is
/// complete (records of a pipelined request are kept until then).
fn serve(conn: TcpStream, control: &Control) {
    let Ok(write) = conn.try_clone() else { return };
    let mut write = write;
    let mut read = BufReader::with_capacity(256 * 1024, conn);
    let mut pending: HashMap<u16, Pending> = HashMap::new();
    let mut order: Vec<u16> = Vec::new();
    loop {
        let record = match fcgi::read_record(&mut read) {
            Ok(Some(record)) => record,
            _ => return,
        };
        match on_record(record, &mut pending, &mut order, &mut write) {
            Ok(()) => {}
            Err(()) => return,
        }
        while let Some(&id) = order.first() {
            let ready = pending
                .get(&id)
                .is_some_and(|p| p.params_done && p.body_done);
            if !ready {
                break;
            }
            order.remove(0);
            let Some(request) = pending.remove(&id) else {
                continue;
            };
            control.busy.store(true, Ordering::SeqCst);
            let written = respond(&mut write, id, &request);
            control.busy.store(false, Ordering::SeqCst);
            if control.stopping.load(Ordering::SeqCst) {
                std::process::exit(0);
            }
            if written.is_err() || !request.keep_conn {
                return;
            }
        }
    }
}

fn on_record(
    record: Record,
    pending: &mut HashMap<u16, Pending>,
    order: &mut Vec<u16>,
    write: &mut TcpStream,
) -> Result<(), ()> {
    match record.kind {
        fcgi::GET_VALUES => {
            let mut body = Vec::new();
            for (name, _) in fcgi::pairs(&record.content) {
                let value = match name.as_str() {
                    "FCGI_MAX_CONNS" | "FCGI_MAX_REQS" => "1",
                    "FCGI_MPXS_CONNS" => "0",
                    _ => continue,
                };
                fcgi::put_pair(&mut body, name.as_bytes(), value.as_bytes());
            }
            let mut out = Vec::new();
            fcgi::put_record(&mut out, fcgi::GET_VALUES_RESULT, 0, &body);
            write.write_all(&out).map_err(|_| ())
        }
        fcgi::BEGIN_REQUEST => {
            let role = u16::from_be_bytes([record.content[0], record.content[1]]);
            if role != fcgi::RESPONDER {
                let mut out = Vec::new();
                fcgi::put_record(
                    &mut out,
                    fcgi::END_REQUEST,
                    record.id,
                    &fcgi::end_body(0, 3),
                );
                return write.write_all(&out).map_err(|_| ());
            }
            let keep_conn = record
                .content
                .get(2)
                .is_some_and(|f| f & fcgi::KEEP_CONN != 0);
            pending.insert(
                record.id,
                Pending {
                    keep_conn,
                    ..Pending::default()
                },
            );
            order.push(record.id);
            Ok(())
        }
        fcgi::PARAMS => {
            if let Some(p) = pending.get_mut(&record.id) {
                if record.content.is_empty() {
                    p.params_done = true;
                } else {
                    p.params.extend_from_slice(&record.content);
                }
            }
            Ok(())
        }
        fcgi::STDIN => {
            if let Some(p) = pending.get_mut(&record.id) {
                if record.content.is_empty() {
                    p.body_done = true;
                } else {
                    p.body.extend_from_slice(&record.content);
                }
            }
            Ok(())
        }
        fcgi::ABORT_REQUEST => {
            if pending.remove(&record.id).is_some() {
                order.retain(|&id| id != record.id);
                let mut out = Vec::new();
                fcgi::put_record(
                    &mut out,
                    fcgi::END_REQUEST,
                    record.id,
                    &fcgi::end_body(0, 0),
                );
                return write.write_all(&out).map_err(|_| ());
            }
            Ok(())
        }
        fcgi::STDOUT | fcgi::STDERR | fcgi::END_REQUEST => Err(()),
        other => {
            let mut out = Vec::new();
            fcgi::put_record(
                &mut out,
                fcgi::UNKNOWN_TYPE,
                0,
                &[other, 0, 0, 0, 0, 0, 0, 0],
            );
            write.write_all(&out).map_err(|_| ())
        }
    }
}

/// `?a=1&b=2` as a map (no percent-decoding but `%3A` and `%5C`, enough for paths).
fn query(text: &str) -> HashMap<String, String> {
    text.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = v
                .replace("%3A", ":")
                .replace("%3a", ":")
                .replace("%5C", "\\")
                .replace("%5c", "\\")
                .replace("%20", " ")
                .replace('+', " ");
            (k.to_owned(), v)
        })
        .collect()
}

/// Runs the "app" for one request and writes its whole answer.
fn respond(write: &mut TcpStream, id: u16, request: &Pending) -> std::io::Result<()> {
    let params: HashMap<String, String> = fcgi::pairs(&request.params).into_iter().collect();
    let path = params.get("PATH_INFO").cloned().unwrap_or_default();
    let q = query(params.get("QUERY_STRING").map(String::as_str).unwrap_or(""));
    let pid = std::process::id();
    let send = |write: &mut TcpStream, status: &str, ctype: &str, body: &[u8]| {
        let mut out = Vec::new();
        let head = format!(
            "Status: {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut stdout = head.into_bytes();
        stdout.extend_from_slice(body);
        fcgi::put_stream(&mut out, fcgi::STDOUT, id, &stdout);
        fcgi::put_record(&mut out, fcgi::STDOUT, id, &[]);
        fcgi::put_record(&mut out, fcgi::END_REQUEST, id, &fcgi::end_body(0, 0));
        write.write_all(&out)
    };
    match path.as_str() {
        "/echo" => {
            let ctype = params
                .get("CONTENT_TYPE")
                .cloned()
                .unwrap_or_else(|| "application/octet-stream".into());
            send(write, "200 OK", &ctype, &request.body)
        }
        "/pid" => send(write, "200 OK", "text/plain", pid.to_string().as_bytes()),
        "/sleep" => {
            if let Some(file) = q.get("pidfile") {
                let tmp = format!("{file}.tmp");
                std::fs::write(&tmp, pid.to_string())?;
                std::fs::rename(&tmp, file)?;
            }
            let ms = q.get("ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
            std::thread::sleep(Duration::from_millis(ms));
            send(
                write,
                "200 OK",
                "text/plain",
                format!("slept {pid}").as_bytes(),
            )
        }
        "/exit" => {
            let code = q.get("code").and_then(|v| v.parse().ok()).unwrap_or(1);
            std::process::exit(code);
        }
        "/stream" => {
            let n: usize = q.get("n").and_then(|v| v.parse().ok()).unwrap_or(3);
            let ms = q.get("ms").and_then(|v| v.parse().ok()).unwrap_or(10);
            let mut out = Vec::new();
            fcgi::put_record(
                &mut out,
                fcgi::STDOUT,
                id,
                b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n",
            );
            write.write_all(&out)?;
            for i in 0..n {
                out.clear();
                fcgi::put_record(&mut out, fcgi::STDOUT, id, format!("line {i}\n").as_bytes());
                write.write_all(&out)?;
                std::thread::sleep(Duration::from_millis(ms));
            }
            out.clear();
            fcgi::put_record(&mut out, fcgi::STDOUT, id, &[]);
            fcgi::put_record(&mut out, fcgi::END_REQUEST, id, &fcgi::end_body(0, 0));
            write.write_all(&out)
        }
        "/error" => {
            // Logged at ERROR, as the Python worker marks an app's traceback.
            for line in REQUEST_TRACEBACK.lines() {
                eprintln!("\x1f40\x1f{line}");
            }
            send(
                write,
                "500 Internal Server Error",
                "text/plain",
                b"Internal Server Error",
            )
        }
        "/print" => {
            let text = q.get("text").cloned().unwrap_or_default();
            println!("{text}");
            let _ = std::io::stdout().flush();
            send(write, "200 OK", "text/plain", b"printed")
        }
        "/env" => {
            let mut names: Vec<_> = params.iter().collect();
            names.sort();
            let text: String = names.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            send(write, "200 OK", "text/plain", text.as_bytes())
        }
        _ => send(
            write,
            "200 OK",
            "text/plain",
            format!("hello from winworker {pid}").as_bytes(),
        ),
    }
}
