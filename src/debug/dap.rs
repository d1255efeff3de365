//! The DAP monitor: watches a copy of both directions of one debug connection and tells
//! whether the debugger holds the worker paused.
//!
//! The /ptvsd proxy relays bytes untouched; it feeds a copy of every chunk to a [`DapMonitor`],
//! which frames Debug Adapter Protocol messages ([`DapFramer`]) and follows the pause state
//! ([`PauseTracker`]) so the request clock can stop while a breakpoint holds the worker.
//! Everything here is pure and bounded: no I/O, no panics on any input, and memory that does
//! not grow with message sizes (large bodies such as `variables` responses are skipped).
//!
//! Rules (debugpy 1.8.22, see DESIGN.md "Pause tracking from the DAP stream"):
//! - paused on any `stopped` event; per-thread stops (`allThreadsStopped` false or absent with
//!   a `threadId`) are kept in a set; a second `stopped` while paused is no new edge;
//! - running again on a `continued` event, on a successful response to a client's
//!   `continue`/`next`/`stepIn`/`stepOut`/`stepBack`/`reverseContinue`/`goto` request (debugpy
//!   sends no `continued` to Visual Studio clients), on `terminated` (and `exited`: the
//!   debuggee is gone), on a client `disconnect` request and when the connection closes;
//! - a resuming response only ends stops seen before its request was sent, so a `stopped`
//!   event that overtakes the response of the step that caused it keeps the worker paused;
//! - `singleThread: true`, or a `continue` response with `allThreadsContinued: false`,
//!   resumes only the request's `threadId`; after an all-threads stop the worker then stays
//!   paused until an all-threads resume (the clock errs on the side of not killing).

use std::collections::{BTreeMap, VecDeque};

use serde_json::Value;

/// Largest body the framer buffers and parses; larger bodies are skipped unread. Pause-relevant
/// messages (`stopped`, `continued`, `continue` responses) are a few hundred bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// Largest header section (all header lines and the blank line) the framer buffers before it
/// declares the stream garbage and resynchronises.
pub const MAX_HEADER: usize = 1024;

/// Largest `Content-Length` believed; debugpy caps bodies at 0xFFFFFF, so anything this big
/// is garbage and triggers a resynchronisation rather than a skip of gigabytes.
pub const MAX_DECLARED_LENGTH: u64 = 1 << 30;

/// Most client requests whose resuming response is awaited at once; the oldest is forgotten
/// beyond this (a client has only a handful in flight).
const MAX_OUTSTANDING: usize = 64;

/// Most individually stopped threads remembered; beyond this the tracker treats every thread as
/// stopped, which keeps it paused until an all-threads resume.
const MAX_STOPPED_THREADS: usize = 4096;

/// Longest `clientID` kept for logging.
const MAX_CLIENT_ID: usize = 128;

const HEADER_END: &[u8] = b"\r\n\r\n";
const CONTENT_LENGTH: &[u8] = b"content-length:";

/// Which way a chunk of the debug connection travelled.
///
/// Sequence numbers are per sender, so the tracker must know who sent each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the IDE (VS Code, Visual Studio) towards debugpy's adapter.
    ClientToAdapter,
    /// From debugpy's adapter towards the IDE.
    AdapterToClient,
}

#[derive(Debug)]
enum FrameState {
    /// Collecting the header section into `DapFramer::header`.
    Header,
    /// Collecting a body of the given length (at most [`MAX_BODY`]).
    Body { body: Vec<u8>, len: usize },
    /// Discarding this many more bytes of an oversized body.
    Skip { left: u64 },
}

/// Incremental framing of one direction of a DAP stream (`Content-Length: N\r\n\r\n` + N
/// bytes of JSON), across chunks split anywhere and chunks holding several messages.
///
/// It exists because the proxy sees WebSocket frames and TCP reads, not messages. Memory is
/// bounded by [`MAX_HEADER`] + [`MAX_BODY`]; garbage is skipped by scanning for the next
/// `Content-Length:`.
#[derive(Debug)]
pub struct DapFramer {
    header: Vec<u8>,
    state: FrameState,
    skipped_bodies: u64,
    resyncs: u64,
}

impl Default for DapFramer {
    fn default() -> Self {
        Self::new()
    }
}

impl DapFramer {
    /// A framer at the start of a stream.
    pub fn new() -> Self {
        DapFramer {
            header: Vec::new(),
            state: FrameState::Header,
            skipped_bodies: 0,
            resyncs: 0,
        }
    }

    /// How many bodies were larger than [`MAX_BODY`] and skipped unparsed (for diagnostics).
    pub fn skipped_bodies(&self) -> u64 {
        self.skipped_bodies
    }

    /// How many times garbage forced a search for the next `Content-Length:` (for diagnostics).
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// Feeds the next bytes of the stream; every complete message whose body parses as JSON is
    /// appended to `out`. Bodies that are not JSON are dropped silently.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Value>) {
        let mut rest = chunk;
        loop {
            match &mut self.state {
                FrameState::Header => {
                    // Invariant: `header` holds at most one terminator, and only at its end.
                    if self.header.ends_with(HEADER_END) {
                        self.finish_header();
                        continue;
                    }
                    if self.header.len() >= MAX_HEADER {
                        self.resync();
                        continue;
                    }
                    if rest.is_empty() {
                        return;
                    }
                    let old = self.header.len();
                    let take = rest.len().min(MAX_HEADER - old);
                    self.header.extend_from_slice(&rest[..take]);
                    let from = old.saturating_sub(HEADER_END.len() - 1);
                    match find(&self.header[from..], HEADER_END) {
                        Some(pos) => {
                            let end = from + pos + HEADER_END.len();
                            self.header.truncate(end);
                            rest = &rest[end - old..];
                        }
                        None => rest = &rest[take..],
                    }
                }
                FrameState::Body { body, len } => {
                    if rest.is_empty() {
                        return;
                    }
                    let take = rest.len().min(*len - body.len());
                    body.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if body.len() == *len {
                        if let Ok(msg) = serde_json::from_slice::<Value>(body) {
                            out.push(msg);
                        }
                        self.state = FrameState::Header;
                    }
                }
                FrameState::Skip { left } => {
                    if rest.is_empty() {
                        return;
                    }
                    let take = usize::try_from(*left).map_or(rest.len(), |l| l.min(rest.len()));
                    // `take` <= `left`, so this cannot underflow.
                    *left -= take as u64;
                    rest = &rest[take..];
                    if *left == 0 {
                        self.state = FrameState::Header;
                    }
                }
            }
        }
    }

    /// Acts on a complete header section (terminator included) in `self.header`.
    fn finish_header(&mut self) {
        let section = &self.header[..self.header.len() - HEADER_END.len()];
        match parse_content_length(section) {
            Some(0) => {
                self.header.clear();
            }
            Some(len) if len <= MAX_BODY as u64 => {
                self.header.clear();
                // `len` <= MAX_BODY, so it fits in usize.
                let len = len as usize;
                self.state = FrameState::Body {
                    body: Vec::with_capacity(len),
                    len,
                };
            }
            Some(len) => {
                self.header.clear();
                self.skipped_bodies += 1;
                self.state = FrameState::Skip { left: len };
            }
            None => self.resync(),
        }
    }

    /// Drops garbage from the front of `self.header`: up to the next `Content-Length:` after
    /// its first byte, or, when there is none, all but a tail that could begin one. Always
    /// makes progress, as it is only called on a full buffer or one ending in a terminator.
    fn resync(&mut self) {
        self.resyncs += 1;
        let tail = self.header.get(1..).unwrap_or_default();
        match find_ascii_ci(tail, CONTENT_LENGTH) {
            Some(pos) => {
                self.header.drain(..pos + 1);
            }
            None => {
                let keep = partial_prefix_suffix(&self.header, CONTENT_LENGTH);
                let cut = self.header.len() - keep;
                self.header.drain(..cut);
            }
        }
    }
}

/// The `Content-Length` of a header section (lines separated by CRLF), or `None` if the
/// section is not well-formed: a line that is not ASCII `name: value`, a missing or
/// non-numeric length, conflicting lengths, or a length above [`MAX_DECLARED_LENGTH`].
/// Other header fields are allowed and ignored, as the base protocol permits.
fn parse_content_length(section: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(section).ok()?;
    if !text.is_ascii() {
        return None;
    }
    let mut length = None;
    for line in text.split("\r\n") {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        if name.eq_ignore_ascii_case("content-length") {
            let value = value.trim();
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = value.parse().ok()?;
            if n > MAX_DECLARED_LENGTH || length.is_some_and(|prev| prev != n) {
                return None;
            }
            length = Some(n);
        }
    }
    length
}

/// Position of the first occurrence of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Position of the first ASCII-case-insensitive occurrence of the lowercase `needle`.
fn find_ascii_ci(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// Length of the longest proper suffix of `buf` that is a case-insensitive prefix of `needle`.
fn partial_prefix_suffix(buf: &[u8], needle: &[u8]) -> usize {
    let longest = needle.len().saturating_sub(1).min(buf.len());
    (1..=longest)
        .rev()
        .find(|&n| buf[buf.len() - n..].eq_ignore_ascii_case(&needle[..n]))
        .unwrap_or(0)
}

/// An edge of the pause state: the worker just became paused, or just runs again.
///
/// Only edges are reported so the caller can pause or resume the request clock exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseChange {
    /// The debugger now holds the worker (a `stopped` event).
    Paused,
    /// The worker runs again (continue, step, terminate, disconnect, connection closed).
    Resumed,
}

/// A client request that resumes execution when it succeeds, awaiting its response.
#[derive(Debug, Clone)]
struct PendingResume {
    seq: i64,
    thread_id: Option<i64>,
    single_thread: bool,
    /// The tracker's stop generation when the request was sent: its success only resumes
    /// stops seen before it, not a `stopped` event that overtook its response.
    stop_gen: u64,
}

/// Commands whose successful response means the debuggee runs again.
const RESUMING_COMMANDS: &[&str] = &[
    "continue",
    "next",
    "stepIn",
    "stepOut",
    "stepBack",
    "reverseContinue",
    "goto",
];

/// Follows the pause state of one debug connection from its DAP messages.
///
/// One per connection: debugpy refuses a second concurrent client, but subprocess debugging
/// opens further connections, each with its own tracker.
#[derive(Debug, Default)]
pub struct PauseTracker {
    /// Every thread is stopped (an `allThreadsStopped` or thread-less `stopped` event), since
    /// the stop of this generation.
    all_stopped: Option<u64>,
    /// Threads stopped individually, each with the generation of its latest stop.
    threads: BTreeMap<i64, u64>,
    /// Counts `stopped` events, to order them against resuming requests.
    stop_gen: u64,
    /// Resuming client requests not yet answered, oldest first.
    outstanding: VecDeque<PendingResume>,
    client_id: Option<String>,
}

impl PauseTracker {
    /// A tracker for a fresh connection: running, no client known.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the debugger currently holds the worker (any thread stopped).
    pub fn is_paused(&self) -> bool {
        self.all_stopped.is_some() || !self.threads.is_empty()
    }

    /// The `clientID` from the client's `initialize` request (e.g. `vscode`, `visualstudio`),
    /// for log lines; at most 128 characters.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// Takes in one message that travelled in `dir`; returns the edge it caused, if any.
    pub fn observe(&mut self, dir: Direction, msg: &Value) -> Option<PauseChange> {
        let before = self.is_paused();
        match (dir, msg.get("type").and_then(Value::as_str)) {
            (Direction::ClientToAdapter, Some("request")) => self.client_request(msg),
            (Direction::AdapterToClient, Some("event")) => self.adapter_event(msg),
            (Direction::AdapterToClient, Some("response")) => self.adapter_response(msg),
            _ => {}
        }
        edge(before, self.is_paused())
    }

    /// The connection is gone (WebSocket or TCP side closed, worker exited): debugpy resumes
    /// the debuggee, so this reports `Resumed` if it was paused and forgets all state but the
    /// client id.
    pub fn connection_closed(&mut self) -> Option<PauseChange> {
        let before = self.is_paused();
        self.run_all(u64::MAX);
        self.outstanding.clear();
        edge(before, self.is_paused())
    }

    fn client_request(&mut self, msg: &Value) {
        let args = msg.get("arguments");
        match msg.get("command").and_then(Value::as_str) {
            Some("initialize") => {
                if let Some(id) = args.and_then(|a| a.get("clientID")).and_then(Value::as_str) {
                    self.client_id = Some(id.chars().take(MAX_CLIENT_ID).collect());
                }
            }
            Some("disconnect") => {
                self.run_all(u64::MAX);
                self.outstanding.clear();
            }
            Some(command) if RESUMING_COMMANDS.contains(&command) => {
                let Some(seq) = msg.get("seq").and_then(Value::as_i64) else {
                    return;
                };
                self.outstanding.retain(|p| p.seq != seq);
                if self.outstanding.len() >= MAX_OUTSTANDING {
                    self.outstanding.pop_front();
                }
                self.outstanding.push_back(PendingResume {
                    seq,
                    thread_id: args.and_then(|a| a.get("threadId")).and_then(Value::as_i64),
                    single_thread: args
                        .and_then(|a| a.get("singleThread"))
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                    stop_gen: self.stop_gen,
                });
            }
            _ => {}
        }
    }

    fn adapter_event(&mut self, msg: &Value) {
        let body = msg.get("body");
        let thread_id = body.and_then(|b| b.get("threadId")).and_then(Value::as_i64);
        match msg.get("event").and_then(Value::as_str) {
            Some("stopped") => {
                let all = body
                    .and_then(|b| b.get("allThreadsStopped"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                self.stop_gen = self.stop_gen.saturating_add(1);
                match thread_id {
                    Some(id) if !all => self.stop_thread(id),
                    _ => self.all_stopped = Some(self.stop_gen),
                }
            }
            Some("continued") => {
                let all = body
                    .and_then(|b| b.get("allThreadsContinued"))
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                match thread_id {
                    Some(id) if !all => self.run_thread(id, u64::MAX),
                    _ => self.run_all(u64::MAX),
                }
            }
            Some("terminated") | Some("exited") => {
                self.run_all(u64::MAX);
                self.outstanding.clear();
            }
            _ => {}
        }
    }

    fn adapter_response(&mut self, msg: &Value) {
        let Some(request_seq) = msg.get("request_seq").and_then(Value::as_i64) else {
            return;
        };
        let Some(index) = self.outstanding.iter().position(|p| p.seq == request_seq) else {
            return;
        };
        let Some(pending) = self.outstanding.remove(index) else {
            return;
        };
        if msg.get("success").and_then(Value::as_bool) != Some(true) {
            return;
        }
        // A `continue` response may say only the requested thread was resumed.
        let only_requested = pending.single_thread
            || msg
                .get("body")
                .and_then(|b| b.get("allThreadsContinued"))
                .and_then(Value::as_bool)
                == Some(false);
        match pending.thread_id {
            Some(id) if only_requested => self.run_thread(id, pending.stop_gen),
            _ => self.run_all(pending.stop_gen),
        }
    }

    fn stop_thread(&mut self, id: i64) {
        if self.threads.len() >= MAX_STOPPED_THREADS && !self.threads.contains_key(&id) {
            self.all_stopped = Some(self.stop_gen);
        } else {
            self.threads.insert(id, self.stop_gen);
        }
    }

    /// Thread `id` runs again if its stop is from generation `upto` or earlier. When every
    /// thread was stopped we do not know the others, so the worker stays paused until an
    /// all-threads resume (the clock errs on the side of not killing).
    fn run_thread(&mut self, id: i64, upto: u64) {
        if self.threads.get(&id).is_some_and(|&g| g <= upto) {
            self.threads.remove(&id);
        }
    }

    /// Every stop from generation `upto` or earlier is over.
    fn run_all(&mut self, upto: u64) {
        if self.all_stopped.is_some_and(|g| g <= upto) {
            self.all_stopped = None;
        }
        self.threads.retain(|_, g| *g > upto);
    }
}

/// The edge between two pause states, if they differ.
fn edge(before: bool, after: bool) -> Option<PauseChange> {
    match (before, after) {
        (false, true) => Some(PauseChange::Paused),
        (true, false) => Some(PauseChange::Resumed),
        _ => None,
    }
}

/// Framers for both directions of one debug connection plus its [`PauseTracker`]: what the
/// /ptvsd relay feeds with a copy of every chunk it forwards.
#[derive(Debug, Default)]
pub struct DapMonitor {
    from_client: DapFramer,
    from_adapter: DapFramer,
    tracker: PauseTracker,
    scratch: Vec<Value>,
}

impl DapMonitor {
    /// A monitor for a fresh connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk that travelled in `dir` and returns the **net** change of the pause state
    /// across the whole chunk: if one chunk holds both a resume and a new stop (a step's
    /// response and its `stopped` event), the state before and after is the same and nothing
    /// is reported, which is what a clock wants as no measurable time passed in between.
    pub fn feed(&mut self, dir: Direction, chunk: &[u8]) -> Option<PauseChange> {
        let before = self.tracker.is_paused();
        let framer = match dir {
            Direction::ClientToAdapter => &mut self.from_client,
            Direction::AdapterToClient => &mut self.from_adapter,
        };
        self.scratch.clear();
        framer.push(chunk, &mut self.scratch);
        for msg in &self.scratch {
            self.tracker.observe(dir, msg);
        }
        self.scratch.clear();
        edge(before, self.tracker.is_paused())
    }

    /// The connection closed: `Resumed` if the worker was paused (see
    /// [`PauseTracker::connection_closed`]).
    pub fn connection_closed(&mut self) -> Option<PauseChange> {
        self.tracker.connection_closed()
    }

    /// Whether the debugger currently holds the worker.
    pub fn is_paused(&self) -> bool {
        self.tracker.is_paused()
    }

    /// The client's `initialize` `clientID`, for log lines.
    pub fn client_id(&self) -> Option<&str> {
        self.tracker.client_id()
    }

    /// The pause tracker, for finer inspection.
    pub fn tracker(&self) -> &PauseTracker {
        &self.tracker
    }

    /// The framer of one direction, for its diagnostic counters.
    pub fn framer(&self, dir: Direction) -> &DapFramer {
        match dir {
            Direction::ClientToAdapter => &self.from_client,
            Direction::AdapterToClient => &self.from_adapter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn frame(msg: &Value) -> Vec<u8> {
        let body = serde_json::to_vec(msg).unwrap();
        let mut out = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
        out.extend_from_slice(&body);
        out
    }

    fn request(seq: i64, command: &str, arguments: Value) -> Value {
        json!({"seq": seq, "type": "request", "command": command, "arguments": arguments})
    }

    fn response(seq: i64, request_seq: i64, command: &str, success: bool) -> Value {
        json!({"seq": seq, "type": "response", "request_seq": request_seq,
               "command": command, "success": success})
    }

    fn event(seq: i64, name: &str, body: Value) -> Value {
        json!({"seq": seq, "type": "event", "event": name, "body": body})
    }

    fn stopped(seq: i64, thread: i64, all: bool) -> Value {
        event(
            seq,
            "stopped",
            json!({"reason": "breakpoint", "threadId": thread, "allThreadsStopped": all}),
        )
    }

    fn push_all(framer: &mut DapFramer, bytes: &[u8]) -> Vec<Value> {
        let mut out = Vec::new();
        framer.push(bytes, &mut out);
        out
    }

    // ---- framing ----

    #[test]
    fn header_split_byte_by_byte() {
        let a = request(1, "initialize", json!({"clientID": "vscode"}));
        let b = stopped(7, 1, true);
        let mut bytes = frame(&a);
        bytes.extend(frame(&b));
        let mut framer = DapFramer::new();
        let mut out = Vec::new();
        for byte in &bytes {
            framer.push(std::slice::from_ref(byte), &mut out);
        }
        assert_eq!(out, vec![a, b]);
        assert_eq!(framer.resyncs(), 0);
    }

    #[test]
    fn split_at_every_position() {
        let a = stopped(3, 1, true);
        let b = event(4, "continued", json!({"threadId": 1}));
        let mut bytes = frame(&a);
        bytes.extend(frame(&b));
        for cut in 0..=bytes.len() {
            let mut framer = DapFramer::new();
            let mut out = Vec::new();
            framer.push(&bytes[..cut], &mut out);
            framer.push(&bytes[cut..], &mut out);
            assert_eq!(out, vec![a.clone(), b.clone()], "cut at {cut}");
        }
    }

    #[test]
    fn coalesced_messages_in_one_chunk() {
        let msgs: Vec<Value> = (0..10)
            .map(|i| event(i, "output", json!({"output": format!("line {i}\n")})))
            .collect();
        let bytes: Vec<u8> = msgs.iter().flat_map(frame).collect();
        let mut framer = DapFramer::new();
        assert_eq!(push_all(&mut framer, &bytes), msgs);
    }

    #[test]
    fn extra_header_fields_and_case_are_accepted() {
        let body = br#"{"seq":1,"type":"event","event":"initialized"}"#;
        let mut bytes = format!(
            "content-length:{}\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        let mut framer = DapFramer::new();
        let out = push_all(&mut framer, &bytes);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["event"], "initialized");
    }

    #[test]
    fn huge_body_is_skipped_and_framing_stays_in_sync() {
        // A 5 MB `variables` response, fed in 64 KiB chunks like a WebSocket relay would.
        let big = "x".repeat(5 * 1024 * 1024);
        let huge = json!({"seq": 10, "type": "response", "request_seq": 9, "success": true,
                          "command": "variables",
                          "body": {"variables": [{"name": "s", "value": big}]}});
        let after = stopped(11, 1, true);
        let mut bytes = frame(&huge);
        bytes.extend(frame(&after));
        let mut framer = DapFramer::new();
        let mut out = Vec::new();
        for chunk in bytes.chunks(64 * 1024) {
            framer.push(chunk, &mut out);
            let buffered = match &framer.state {
                FrameState::Body { body, .. } => body.capacity(),
                _ => 0,
            };
            assert!(buffered <= MAX_BODY);
            assert!(framer.header.capacity() <= 2 * MAX_HEADER);
        }
        assert_eq!(out, vec![after]);
        assert_eq!(framer.skipped_bodies(), 1);
        assert_eq!(framer.resyncs(), 0);
    }

    #[test]
    fn garbage_then_valid_message() {
        let msg = stopped(1, 1, true);
        let mut bytes = b"\x00\xffnot a header at all\r\n\r\nmore junk Content-Len".to_vec();
        bytes.extend(frame(&msg));
        let mut framer = DapFramer::new();
        assert_eq!(push_all(&mut framer, &bytes), vec![msg.clone()]);
        assert!(framer.resyncs() >= 1);

        // The same garbage byte by byte.
        let mut framer = DapFramer::new();
        let mut out = Vec::new();
        for byte in &bytes {
            framer.push(std::slice::from_ref(byte), &mut out);
        }
        assert_eq!(out, vec![msg]);
    }

    #[test]
    fn long_garbage_without_terminator_is_bounded() {
        let msg = stopped(2, 5, false);
        let mut bytes = vec![b'z'; 100_000];
        bytes.extend(frame(&msg));
        let mut framer = DapFramer::new();
        let mut out = Vec::new();
        for chunk in bytes.chunks(333) {
            framer.push(chunk, &mut out);
            assert!(framer.header.len() <= MAX_HEADER);
        }
        assert_eq!(out, vec![msg]);
    }

    #[test]
    fn bad_lengths_resynchronise() {
        let msg = event(3, "terminated", json!({}));
        for bad in [
            "Content-Length: abc\r\n\r\n",
            "Content-Length: -5\r\n\r\n",
            "Content-Length: 99999999999999\r\n\r\n",
            "Content-Type: x\r\n\r\n",
            "\r\n\r\n",
        ] {
            let mut bytes = bad.as_bytes().to_vec();
            bytes.extend(frame(&msg));
            let mut framer = DapFramer::new();
            assert_eq!(push_all(&mut framer, &bytes), vec![msg.clone()], "{bad:?}");
        }
        assert_eq!(parse_content_length(b"Content-Length: 3"), Some(3));
        assert_eq!(
            parse_content_length(b"Content-Length: 3\r\ncontent-length: 3"),
            Some(3)
        );
        assert_eq!(
            parse_content_length(b"Content-Length: 3\r\nContent-Length: 4"),
            None
        );
        assert_eq!(parse_content_length(b"Content-Length: 3\r\ngarbage"), None);
        assert_eq!(parse_content_length(b"Content-Length: +3"), None);
    }

    #[test]
    fn invalid_json_and_empty_bodies_are_ignored() {
        let msg = stopped(4, 1, true);
        let mut bytes = b"Content-Length: 5\r\n\r\n{nope".to_vec();
        bytes.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        bytes.extend(frame(&msg));
        let mut framer = DapFramer::new();
        assert_eq!(push_all(&mut framer, &bytes), vec![msg]);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A deterministic pseudo-random stream salted with header fragments.
        let mut state: u32 = 0x1234_5678;
        let mut bytes = Vec::new();
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            match state % 50 {
                0 => bytes.extend_from_slice(b"Content-Length: "),
                1 => bytes.extend_from_slice(b"\r\n\r\n"),
                2 => bytes.extend_from_slice(b"12"),
                _ => bytes.push(state as u8),
            }
        }
        let mut framer = DapFramer::new();
        let mut out = Vec::new();
        for chunk in bytes.chunks(97) {
            framer.push(chunk, &mut out);
            assert!(framer.header.len() <= MAX_HEADER);
        }
        assert!(framer.resyncs() > 0);
    }

    // ---- pause tracking ----

    fn client(mon: &mut DapMonitor, msg: Value) -> Option<PauseChange> {
        mon.feed(Direction::ClientToAdapter, &frame(&msg))
    }

    fn adapter(mon: &mut DapMonitor, msg: Value) -> Option<PauseChange> {
        mon.feed(Direction::AdapterToClient, &frame(&msg))
    }

    fn attached(client_id: &str) -> DapMonitor {
        let mut mon = DapMonitor::new();
        let init = request(
            1,
            "initialize",
            json!({"clientID": client_id, "adapterID": "python"}),
        );
        assert_eq!(client(&mut mon, init), None);
        assert_eq!(client_id_of(&mon), Some(client_id.to_string()));
        mon
    }

    fn client_id_of(mon: &DapMonitor) -> Option<String> {
        mon.client_id().map(str::to_string)
    }

    #[test]
    fn vscode_stop_and_continued_event() {
        let mut mon = attached("vscode");
        assert_eq!(
            adapter(&mut mon, stopped(20, 1, true)),
            Some(PauseChange::Paused)
        );
        assert!(mon.is_paused());
        assert_eq!(
            client(&mut mon, request(5, "continue", json!({"threadId": 1}))),
            None
        );
        // The continued event and the response; whichever comes first resumes.
        assert_eq!(
            adapter(
                &mut mon,
                event(
                    21,
                    "continued",
                    json!({"threadId": 1, "allThreadsContinued": true})
                )
            ),
            Some(PauseChange::Resumed)
        );
        assert_eq!(adapter(&mut mon, response(22, 5, "continue", true)), None);
        assert!(!mon.is_paused());
    }

    #[test]
    fn visualstudio_resumes_on_continue_response() {
        let mut mon = attached("visualstudio");
        assert_eq!(client_id_of(&mon).as_deref(), Some("visualstudio"));
        assert_eq!(
            adapter(&mut mon, stopped(20, 1, true)),
            Some(PauseChange::Paused)
        );
        client(&mut mon, request(9, "continue", json!({"threadId": 1})));
        assert!(mon.is_paused());
        let mut resp = response(21, 9, "continue", true);
        resp["body"] = json!({"allThreadsContinued": true});
        assert_eq!(adapter(&mut mon, resp), Some(PauseChange::Resumed));
    }

    #[test]
    fn response_to_unknown_or_other_request_does_not_resume() {
        let mut mon = attached("visualstudio");
        adapter(&mut mon, stopped(20, 1, true));
        client(&mut mon, request(9, "continue", json!({"threadId": 1})));
        assert_eq!(adapter(&mut mon, response(21, 8, "continue", true)), None);
        client(&mut mon, request(10, "stackTrace", json!({"threadId": 1})));
        assert_eq!(
            adapter(&mut mon, response(22, 10, "stackTrace", true)),
            None
        );
        assert!(mon.is_paused());
    }

    #[test]
    fn step_next_resumes_then_stops_again() {
        let mut mon = attached("visualstudio");
        assert_eq!(
            adapter(&mut mon, stopped(20, 1, true)),
            Some(PauseChange::Paused)
        );
        client(&mut mon, request(11, "next", json!({"threadId": 1})));
        assert_eq!(
            adapter(&mut mon, response(21, 11, "next", true)),
            Some(PauseChange::Resumed)
        );
        let mut step = stopped(22, 1, true);
        step["body"]["reason"] = json!("step");
        assert_eq!(adapter(&mut mon, step.clone()), Some(PauseChange::Paused));

        // Response and stopped event coalesced in one chunk: no net change.
        client(&mut mon, request(12, "stepIn", json!({"threadId": 1})));
        let mut chunk = frame(&response(23, 12, "stepIn", true));
        chunk.extend(frame(&step));
        assert_eq!(mon.feed(Direction::AdapterToClient, &chunk), None);
        assert!(mon.is_paused());
    }

    #[test]
    fn stop_overtaking_the_step_response_keeps_paused() {
        let mut mon = attached("visualstudio");
        adapter(&mut mon, stopped(20, 1, true));
        client(&mut mon, request(11, "next", json!({"threadId": 1})));
        assert_eq!(adapter(&mut mon, stopped(21, 1, true)), None);
        assert_eq!(adapter(&mut mon, response(22, 11, "next", true)), None);
        assert!(mon.is_paused());
        // Per thread: only the stops seen before the request are resumed.
        let mut mon = attached("vscode");
        adapter(&mut mon, stopped(20, 1, false));
        adapter(&mut mon, stopped(21, 2, false));
        client(&mut mon, request(12, "continue", json!({"threadId": 1})));
        adapter(&mut mon, stopped(22, 3, false));
        assert_eq!(adapter(&mut mon, response(23, 12, "continue", true)), None);
        assert_eq!(
            mon.tracker().threads.keys().copied().collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(
            adapter(&mut mon, event(24, "continued", json!({"threadId": 3}))),
            Some(PauseChange::Resumed)
        );
    }

    #[test]
    fn pause_while_already_stopped_is_idempotent() {
        let mut mon = attached("vscode");
        assert_eq!(
            adapter(&mut mon, stopped(20, 1, true)),
            Some(PauseChange::Paused)
        );
        client(&mut mon, request(6, "pause", json!({"threadId": 1})));
        let mut again = stopped(21, 1, true);
        again["body"]["reason"] = json!("pause");
        assert_eq!(adapter(&mut mon, again), None);
        assert!(mon.is_paused());
        assert_eq!(
            adapter(&mut mon, event(22, "continued", json!({"threadId": 1}))),
            Some(PauseChange::Resumed)
        );
    }

    #[test]
    fn per_thread_stops_and_continues() {
        let mut mon = attached("vscode");
        assert_eq!(
            adapter(&mut mon, stopped(20, 1, false)),
            Some(PauseChange::Paused)
        );
        assert_eq!(adapter(&mut mon, stopped(21, 2, false)), None);
        // allThreadsStopped absent counts as false.
        assert_eq!(
            adapter(
                &mut mon,
                event(
                    22,
                    "stopped",
                    json!({"reason": "breakpoint", "threadId": 3})
                )
            ),
            None
        );
        let cont = |seq, thread| {
            event(
                seq,
                "continued",
                json!({"threadId": thread, "allThreadsContinued": false}),
            )
        };
        assert_eq!(adapter(&mut mon, cont(23, 1)), None);
        assert_eq!(adapter(&mut mon, cont(24, 3)), None);
        assert!(mon.is_paused());
        assert_eq!(adapter(&mut mon, cont(25, 2)), Some(PauseChange::Resumed));

        // A single-thread step only resumes its thread.
        adapter(&mut mon, stopped(26, 1, false));
        adapter(&mut mon, stopped(27, 2, false));
        client(
            &mut mon,
            request(30, "next", json!({"threadId": 1, "singleThread": true})),
        );
        assert_eq!(adapter(&mut mon, response(28, 30, "next", true)), None);
        client(&mut mon, request(31, "continue", json!({"threadId": 2})));
        let mut resp = response(29, 31, "continue", true);
        resp["body"] = json!({"allThreadsContinued": false});
        assert_eq!(adapter(&mut mon, resp), Some(PauseChange::Resumed));
    }

    #[test]
    fn single_thread_continue_keeps_all_stopped_paused() {
        let mut mon = attached("vscode");
        adapter(&mut mon, stopped(20, 1, true));
        let single = event(
            21,
            "continued",
            json!({"threadId": 1, "allThreadsContinued": false}),
        );
        assert_eq!(adapter(&mut mon, single), None);
        assert!(mon.is_paused());
    }

    #[test]
    fn failed_continue_does_not_resume() {
        let mut mon = attached("visualstudio");
        adapter(&mut mon, stopped(20, 1, true));
        client(&mut mon, request(9, "continue", json!({"threadId": 1})));
        assert_eq!(adapter(&mut mon, response(21, 9, "continue", false)), None);
        assert!(mon.is_paused());
        // The failed request is forgotten; a duplicate response does nothing either.
        assert_eq!(adapter(&mut mon, response(22, 9, "continue", true)), None);
        assert!(mon.is_paused());
    }

    #[test]
    fn terminated_event_resumes() {
        let mut mon = attached("vscode");
        adapter(&mut mon, stopped(20, 1, true));
        assert_eq!(
            adapter(&mut mon, event(21, "terminated", json!({}))),
            Some(PauseChange::Resumed)
        );
    }

    #[test]
    fn disconnect_request_resumes() {
        let mut mon = attached("vscode");
        adapter(&mut mon, stopped(20, 1, true));
        assert_eq!(
            client(
                &mut mon,
                request(40, "disconnect", json!({"terminateDebuggee": false}))
            ),
            Some(PauseChange::Resumed)
        );
        assert!(!mon.is_paused());
    }

    #[test]
    fn connection_closed_resumes_once() {
        let mut mon = attached("vscode");
        assert_eq!(mon.connection_closed(), None);
        adapter(&mut mon, stopped(20, 1, false));
        assert_eq!(mon.connection_closed(), Some(PauseChange::Resumed));
        assert_eq!(mon.connection_closed(), None);
        assert_eq!(client_id_of(&mon).as_deref(), Some("vscode"));
    }

    #[test]
    fn events_from_the_client_are_ignored() {
        let mut mon = attached("vscode");
        assert_eq!(client(&mut mon, stopped(2, 1, true)), None);
        assert!(!mon.is_paused());
        // A client "response" cannot resume either (seq spaces are per sender).
        adapter(&mut mon, stopped(20, 1, true));
        client(&mut mon, request(3, "continue", json!({"threadId": 1})));
        assert_eq!(client(&mut mon, response(4, 3, "continue", true)), None);
        assert!(mon.is_paused());
    }

    #[test]
    fn outstanding_requests_are_bounded() {
        let mut tracker = PauseTracker::new();
        tracker.observe(Direction::AdapterToClient, &stopped(1, 1, true));
        for seq in 0..1000 {
            tracker.observe(
                Direction::ClientToAdapter,
                &request(seq, "continue", json!({"threadId": 1})),
            );
        }
        assert_eq!(tracker.outstanding.len(), MAX_OUTSTANDING);
        // The oldest were forgotten, the newest are still matched.
        assert_eq!(
            tracker.observe(
                Direction::AdapterToClient,
                &response(2, 0, "continue", true)
            ),
            None
        );
        assert_eq!(
            tracker.observe(
                Direction::AdapterToClient,
                &response(2, 999, "continue", true)
            ),
            Some(PauseChange::Resumed)
        );
    }

    #[test]
    fn stopped_thread_set_is_bounded() {
        let mut tracker = PauseTracker::new();
        for id in 0..(MAX_STOPPED_THREADS as i64 + 10) {
            tracker.observe(Direction::AdapterToClient, &stopped(id, id, false));
        }
        assert_eq!(tracker.threads.len(), MAX_STOPPED_THREADS);
        assert!(tracker.all_stopped.is_some());
        assert!(tracker.is_paused());
        assert_eq!(
            tracker.observe(
                Direction::AdapterToClient,
                &event(1, "continued", json!({"threadId": 1}))
            ),
            Some(PauseChange::Resumed)
        );
    }

    #[test]
    fn client_id_is_truncated_and_malformed_messages_ignored() {
        let mut tracker = PauseTracker::new();
        let long = "v".repeat(1000);
        tracker.observe(
            Direction::ClientToAdapter,
            &request(1, "initialize", json!({"clientID": long})),
        );
        assert_eq!(tracker.client_id().map(str::len), Some(MAX_CLIENT_ID));
        for junk in [
            json!(null),
            json!([1, 2]),
            json!({"type": "event"}),
            json!({"type": "event", "event": "stopped", "body": "x"}),
            json!({"type": "response", "request_seq": "1"}),
            json!({"type": "request", "command": "continue"}),
        ] {
            tracker.observe(Direction::AdapterToClient, &junk);
            tracker.observe(Direction::ClientToAdapter, &junk);
        }
        // A stopped event with an odd body still pauses (conservatively: all threads).
        assert!(tracker.is_paused());
    }
}
