//! A small Debug Adapter Protocol client for the remote-debugging tests: it speaks DAP
//! (Content-Length framing, requests, responses, events) over a WebSocket to the host's
//! `/ptvsd` proxy, or over plain TCP to `fcgihost attach`'s local port, the way VS Code and
//! Visual Studio do. Plus a guard for a running `fcgihost attach`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long one DAP exchange (a response, an expected event) may take.
pub const DAP_TIMEOUT: Duration = Duration::from_secs(30);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

enum Writer {
    Ws(SplitSink<Ws, Message>),
    Tcp(OwnedWriteHalf),
}

/// One DAP session. Messages from the adapter are collected by a reader task; the methods
/// below pick the ones they wait for and keep the rest.
pub struct DapClient {
    writer: Writer,
    inbox: mpsc::UnboundedReceiver<Value>,
    kept: VecDeque<Value>,
    /// Every message received so far (for assertions such as "no continued event").
    pub seen: Vec<Value>,
    seq: i64,
    reader: tokio::task::JoinHandle<()>,
}

/// Frames DAP messages out of a byte stream.
#[derive(Default)]
struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    fn push(&mut self, data: &[u8], out: &mpsc::UnboundedSender<Value>) {
        self.buf.extend_from_slice(data);
        loop {
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("DAP header without Content-Length");
            if self.buf.len() < end + 4 + len {
                return;
            }
            let body: Vec<u8> = self.buf[end + 4..end + 4 + len].to_vec();
            self.buf.drain(..end + 4 + len);
            let msg: Value = serde_json::from_slice(&body).expect("DAP body is not JSON");
            let _ = out.send(msg);
        }
    }
}

/// `Authorization: Basic` for a secret given as URL user-info.
pub fn basic_auth(secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{secret}:"))
    )
}

impl DapClient {
    /// Opens a WebSocket to `url` (e.g. `ws://127.0.0.1:PORT/ptvsd`) presenting `secret` as
    /// HTTP Basic (what a client sends for `wss://SECRET@host/ptvsd`).
    pub async fn connect_ws(
        url: &str,
        secret: Option<&str>,
    ) -> Result<DapClient, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request()?;
        if let Some(secret) = secret {
            request
                .headers_mut()
                .insert("authorization", basic_auth(secret).parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        let (sink, mut stream) = ws.split();
        let (tx, inbox) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut framer = Framer::default();
            while let Some(Ok(msg)) = stream.next().await {
                match msg {
                    Message::Binary(b) => framer.push(&b, &tx),
                    Message::Text(t) => framer.push(t.as_bytes(), &tx),
                    Message::Close(_) => break,
                    _ => {}
                }
            }
        });
        Ok(DapClient {
            writer: Writer::Ws(sink),
            inbox,
            kept: VecDeque::new(),
            seen: Vec::new(),
            seq: 0,
            reader,
        })
    }

    /// Connects over plain TCP (to `fcgihost attach`'s local port), as an IDE does.
    pub async fn connect_tcp(addr: SocketAddr) -> std::io::Result<DapClient> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut rd, wr) = stream.into_split();
        let (tx, inbox) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut framer = Framer::default();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => framer.push(&buf[..n], &tx),
                }
            }
        });
        Ok(DapClient {
            writer: Writer::Tcp(wr),
            inbox,
            kept: VecDeque::new(),
            seen: Vec::new(),
            seq: 0,
            reader,
        })
    }

    /// Sends raw bytes (for garbage tests).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        match &mut self.writer {
            Writer::Ws(sink) => sink
                .send(Message::Binary(bytes.to_vec().into()))
                .await
                .expect("send to proxy"),
            Writer::Tcp(w) => w.write_all(bytes).await.expect("send to attach"),
        }
    }

    /// Sends a request; returns its `seq`.
    pub async fn request(&mut self, command: &str, arguments: Value) -> i64 {
        self.seq += 1;
        let msg =
            json!({"seq": self.seq, "type": "request", "command": command, "arguments": arguments});
        let body = serde_json::to_vec(&msg).unwrap();
        let mut bytes = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
        bytes.extend_from_slice(&body);
        self.send_raw(&bytes).await;
        self.seq
    }

    /// Waits for the next message matching `pred` (earlier non-matching ones are kept).
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.kept.iter().position(&pred) {
            return self.kept.remove(i).unwrap();
        }
        let deadline = tokio::time::Instant::now() + DAP_TIMEOUT;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.inbox.recv()).await {
                Ok(Some(msg)) => msg,
                Ok(None) => panic!(
                    "DAP connection closed while waiting for {what}; seen: {:#?}",
                    self.seen
                ),
                Err(_) => panic!("no {what} within {DAP_TIMEOUT:?}; seen: {:#?}", self.seen),
            };
            self.seen.push(msg.clone());
            if pred(&msg) {
                return msg;
            }
            self.kept.push_back(msg);
        }
    }

    /// Waits for the response to request `seq`.
    pub async fn response(&mut self, seq: i64) -> Value {
        self.wait_for(&format!("response to request {seq}"), |m| {
            m["type"] == "response" && m["request_seq"] == seq
        })
        .await
    }

    /// Waits for event `name`.
    pub async fn event(&mut self, name: &str) -> Value {
        self.wait_for(&format!("event {name:?}"), |m| {
            m["type"] == "event" && m["event"] == name
        })
        .await
    }

    /// Sends a request and waits for its successful response.
    pub async fn call(&mut self, command: &str, arguments: Value) -> Value {
        let seq = self.request(command, arguments).await;
        let resp = self.response(seq).await;
        assert_eq!(resp["success"], true, "{command} failed: {resp}");
        resp
    }

    /// The attach sequence debugpy requires: `initialize` → `attach` (response held back) →
    /// `initialized` → `setBreakpoints` per file → `configurationDone` → `attach` response.
    /// `breakpoints` lists (file, lines).
    pub async fn attach(&mut self, client_id: &str, breakpoints: &[(&Path, Vec<u32>)]) {
        if let Err(message) = self.try_attach(client_id, breakpoints).await {
            panic!("attach failed: {message}");
        }
    }

    /// [`DapClient::attach`], returning debugpy's message when it refuses the `attach` (e.g.
    /// "already being debugged" while it still winds down a previous client).
    pub async fn try_attach(
        &mut self,
        client_id: &str,
        breakpoints: &[(&Path, Vec<u32>)],
    ) -> Result<(), String> {
        self.call(
            "initialize",
            json!({
                "clientID": client_id, "clientName": client_id, "adapterID": "debugpy",
                "pathFormat": "path", "linesStartAt1": true, "columnsStartAt1": true,
                "supportsVariableType": true, "supportsRunInTerminalRequest": false,
            }),
        )
        .await;
        let attach = self
            .request("attach", json!({"justMyCode": true, "subProcess": false}))
            .await;
        let first = self
            .wait_for("initialized event or attach response", |m| {
                (m["type"] == "event" && m["event"] == "initialized")
                    || (m["type"] == "response" && m["request_seq"] == attach)
            })
            .await;
        if first["type"] == "response" {
            return Err(first["message"]
                .as_str()
                .unwrap_or("attach refused")
                .to_string());
        }
        for (file, lines) in breakpoints {
            let resp = self.set_breakpoints(file, lines).await;
            for bp in resp["body"]["breakpoints"].as_array().unwrap() {
                assert_eq!(bp["verified"], true, "breakpoint not verified: {resp}");
            }
        }
        self.call("configurationDone", json!({})).await;
        let resp = self.response(attach).await;
        if resp["success"] != true {
            return Err(resp.to_string());
        }
        Ok(())
    }

    /// Replaces the breakpoints of `file`.
    pub async fn set_breakpoints(&mut self, file: &Path, lines: &[u32]) -> Value {
        let bps: Vec<Value> = lines.iter().map(|l| json!({"line": l})).collect();
        self.call(
            "setBreakpoints",
            json!({"source": {"path": file.to_string_lossy()}, "breakpoints": bps, "lines": lines}),
        )
        .await
    }

    /// Waits for a `stopped` event; returns (thread id, reason).
    /// Resumes the stopped `thread` and waits for the request its breakpoint held, which
    /// must then answer 200.
    pub async fn resume_held(
        &mut self,
        thread: i64,
        held: tokio::task::JoinHandle<super::Resp>,
    ) -> super::Resp {
        self.call("continue", json!({ "threadId": thread })).await;
        let resp = held.await.expect("the held request's task");
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp
    }

    pub async fn stopped(&mut self) -> (i64, String) {
        let ev = self.event("stopped").await;
        let thread = ev["body"]["threadId"]
            .as_i64()
            .expect("stopped without threadId");
        (
            thread,
            ev["body"]["reason"].as_str().unwrap_or("").to_string(),
        )
    }

    /// The line and function of the top frame of `thread`.
    pub async fn top_frame(&mut self, thread: i64) -> (u32, String) {
        let resp = self
            .call(
                "stackTrace",
                json!({"threadId": thread, "startFrame": 0, "levels": 1}),
            )
            .await;
        let frame = &resp["body"]["stackFrames"][0];
        (
            frame["line"].as_u64().unwrap() as u32,
            frame["name"].as_str().unwrap_or("").to_string(),
        )
    }

    /// The thread ids the adapter reports.
    pub async fn threads(&mut self) -> Vec<i64> {
        let resp = self.call("threads", json!({})).await;
        resp["body"]["threads"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["id"].as_i64())
            .collect()
    }

    /// Whether any message seen so far is the event `name`.
    pub fn saw_event(&self, name: &str) -> bool {
        self.seen
            .iter()
            .any(|m| m["type"] == "event" && m["event"] == name)
    }

    /// Polite end: `disconnect` (debuggee keeps running), then closes the connection.
    pub async fn disconnect(mut self) {
        let seq = self
            .request(
                "disconnect",
                json!({"restart": false, "terminateDebuggee": false}),
            )
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.response(seq)).await;
        self.close().await;
    }

    /// Closes the connection (a WebSocket close frame, or the TCP FIN) without a DAP goodbye.
    pub async fn close(mut self) {
        match &mut self.writer {
            Writer::Ws(sink) => {
                let _ = sink.close().await;
            }
            Writer::Tcp(w) => {
                let _ = w.shutdown().await;
            }
        }
        self.reader.abort();
    }

    /// Drops the connection abruptly, as a crashed IDE or a lost network would: no close
    /// frame, no DAP `disconnect`.
    pub fn vanish(self) {
        self.reader.abort();
        drop(self.writer);
    }
}

/// tests/apps/debugapp/debugapp.py, whose `# BP:<name>` lines the breakpoints go on.
pub fn debugapp_file() -> PathBuf {
    super::app_dir("debugapp").join("debugapp.py")
}

/// The line of `# BP:<name>` in `file` (1-based).
pub fn marker_line(file: &Path, name: &str) -> u32 {
    let text = std::fs::read_to_string(file).unwrap();
    let needle = format!("# BP:{name}");
    let idx = text
        .lines()
        .position(|l| l.trim_end().ends_with(&needle))
        .unwrap_or_else(|| panic!("no {needle} in {}", file.display()));
    idx as u32 + 1
}

/// A running `fcgihost attach`; killed on drop.
pub struct AttachProcess {
    child: Child,
    lines: std_mpsc::Receiver<String>,
    /// Everything it printed so far (stdout and stderr).
    pub output: String,
    /// The local address it listens on.
    pub addr: Option<SocketAddr>,
}

impl AttachProcess {
    /// Starts `fcgihost attach ARGS` and waits until it listens (Some address) or exits.
    pub fn start(bin: &str, args: &[&str]) -> AttachProcess {
        let mut child = Command::new(bin)
            .arg("attach")
            .args(args)
            .env_remove("FCGIHOST_ATTACH_URL")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fcgihost attach");
        let (tx, lines) = std_mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut me = AttachProcess {
            child,
            lines,
            output: String::new(),
            addr: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while me.addr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match me.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let addr = rest.split(';').next().unwrap_or("").trim();
                        me.addr = addr.parse().ok();
                    }
                    me.output.push_str(&line);
                    me.output.push('\n');
                }
                Err(_) => break, // exited (both pipes closed) or timed out
            }
        }
        me
    }

    /// Waits for the process to exit (after it failed); its exit code (None if it is still
    /// running after `timeout`) and full output.
    pub fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    self.output.push_str(&line);
                    self.output.push('\n');
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std_mpsc::RecvTimeoutError::Timeout) => return (None, self.output.clone()),
            }
        }
        let code = self.child.wait().ok().and_then(|s| s.code());
        (code, self.output.clone())
    }

    /// Waits until the output contains `needle`; the output so far, or `Err` with it when
    /// `timeout` passes (or the process ends) first.
    pub fn wait_output(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        while !self.output.contains(needle) {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    self.output.push_str(&line);
                    self.output.push('\n');
                }
                Err(_) => return Err(self.output.clone()),
            }
        }
        Ok(self.output.clone())
    }

    /// Output printed since start (drains what is pending).
    pub fn output_now(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.output.push_str(&line);
            self.output.push('\n');
        }
        self.output.clone()
    }
}

impl Drop for AttachProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
