//! Runs one HTTP request on one leased worker: streams the request body as FCGI_STDIN
//! while reading FCGI_STDOUT (full duplex, so an app that answers before it has read its
//! body cannot deadlock the host), parses the CGI head, streams the body back with
//! backpressure, and enforces the pause-aware request clock (504 and a killed worker when
//! it runs out; the clock stops while a debugger holds the worker). A request whose active
//! time passes `slow_request_threshold` gets its worker's Python stacks logged, and so does
//! one about to be killed for the timeout; a paused request is neither (its clock stands).
//! A request body longer than `max_body_size` is cut off (413 while the head is unsent).
//! A request written behind another one (pipelining) waits for the connection, starts
//! its clock when it gets it, and goes back to the dispatcher if its worker is lost first;
//! whichever exchange holds the connection writes the records of the requests behind it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::observer::Outcome as Reported;
pub use super::observer::RequestMeta;
use super::transport::WriteHalf as OwnedWriteHalf;
use super::Lease;
use crate::deadline::RequestClock;
use crate::gateway::fcgi::{self, EndRequest, RecordDecoder, RecordType};
use crate::gateway::response::{parse_cgi_head, CgiHead, HeadParse, MAX_HEAD};

/// FastCGI request id records are built with; the connection may assign another one to a
/// request written behind a running one ([`super::Lease::fcgi_id`]).
pub const REQUEST_ID: u16 = 1;

/// How long a worker about to be killed for the timeout gets to report its stacks.
const DUMP_BEFORE_KILL: Duration = Duration::from_millis(500);

pub use crate::gateway::response::BodyError;

/// A request body the exchange streams to a worker as STDIN records: hyper's for the HTTP
/// front door, the web server's STDIN records for the FastCGI front door.
pub trait RequestBody:
    Body<Data = Bytes, Error: std::fmt::Display + Send> + Send + Unpin + 'static
{
}

impl<B> RequestBody for B where
    B: Body<Data = Bytes, Error: std::fmt::Display + Send> + Send + Unpin + 'static
{
}

/// What the client learns when the exchange fails before the response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The worker died or broke the protocol: 502.
    BadGateway,
    /// The request clock ran out: 504.
    Timeout,
    /// The request body passed `max_body_size`: 413.
    BodyTooLarge,
    /// The worker was lost before the request started and no other worker took it: 503.
    Unavailable,
    /// The worker ended the request without a response head (it is still running): 502.
    NoResponse,
    /// The client's request body was malformed or cut short: 400. The worker's request is
    /// aborted and its connection kept.
    BadRequest,
}

/// The start of a response, sent to the HTTP side as soon as the CGI head is parsed.
pub struct ResponseStart {
    pub head: CgiHead,
    pub body: ChannelBody,
}

/// A response body fed by the exchange task (bounded, so a slow client slows the worker
/// instead of filling the host's memory).
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BodyError>>,
    /// Data was handed to hyper since the last `Pending`: it may still sit in hyper's
    /// write buffer.
    unflushed: bool,
    /// An error held back for one poll so that hyper flushes what the app already sent
    /// (PEP 3333: a server must not hold back a block the app produced) before it aborts
    /// the connection.
    deferred: Option<BodyError>,
}

impl ChannelBody {
    fn new(rx: mpsc::Receiver<Result<Bytes, BodyError>>) -> Self {
        Self {
            rx,
            unflushed: false,
            deferred: None,
        }
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(err) = self.deferred.take() {
            return Poll::Ready(Some(Err(err)));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(data))) => {
                self.unflushed = true;
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(err))) if self.unflushed => {
                // Returning Pending makes hyper flush its buffer; the wake brings it back.
                self.unflushed = false;
                self.deferred = Some(err);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                self.unflushed = false;
                Poll::Pending
            }
        }
    }
}

/// Starts the exchange on `lease` and returns once the response head is known.
/// `records` already holds BEGIN_REQUEST and PARAMS (and the empty STDIN when there is no
/// body), with request id [`REQUEST_ID`].
pub async fn start<B: RequestBody>(
    lease: Lease,
    records: Bytes,
    body: Option<B>,
    meta: RequestMeta,
    limit: Option<Duration>,
    body_limit: Option<u64>,
) -> Result<ResponseStart, Failure> {
    let (head_tx, head_rx) = oneshot::channel();
    let (body_tx, rx) = mpsc::channel(8);
    let body = body.map(|body| (body, body_limit));
    tokio::spawn(drive(lease, records, body, meta, limit, head_tx, body_tx));
    match head_rx.await {
        Ok(Ok(head)) => Ok(ResponseStart {
            head,
            body: ChannelBody::new(rx),
        }),
        Ok(Err(failure)) => Err(failure),
        Err(_) => Err(Failure::BadGateway),
    }
}

/// Why the exchange loop ended.
enum Outcome {
    Ended(EndRequest),
    WorkerLost(String),
    Malformed(String),
    TimedOut,
    BodyTooLarge,
}

/// Why streaming the request body to the worker stopped early.
enum PumpError {
    /// The client's body failed (malformed framing, or the client left mid-body).
    Client(String),
    /// The worker connection broke.
    Broken(String),
    /// The body passed `max_body_size`.
    TooLarge,
}

type Pump = Pin<Box<dyn Future<Output = (OwnedWriteHalf, BytesMut, Result<(), PumpError>)> + Send>>;

/// The write side of the worker connection: idle, or owned by the STDIN pump.
enum WriteSide {
    Idle(OwnedWriteHalf, BytesMut),
    Pumping(Pump),
    Lost,
}

async fn drive<B: RequestBody>(
    mut lease: Lease,
    records: Bytes,
    body: Option<(B, Option<u64>)>,
    meta: RequestMeta,
    limit: Option<Duration>,
    head_tx: oneshot::Sender<Result<CgiHead, Failure>>,
    body_tx: mpsc::Sender<Result<Bytes, BodyError>>,
) {
    let request_id = meta.request_id;
    let conn = loop {
        if let Some(conn) = lease.take_conn().await {
            break conn;
        }
        if !lease.written_behind() {
            let _ = head_tx.send(Err(Failure::BadGateway));
            return;
        }
        // Written behind a request whose worker was lost: this one never ran.
        tracing::debug!(
            worker = lease.worker(),
            pid = lease.pid(),
            request_id,
            "worker lost before the request started; dispatching it again"
        );
        match lease.requeue(meta.current(), &records).await {
            Ok(next) => lease = next,
            Err(refusal) => {
                tracing::warn!(
                    request_id,
                    ?refusal,
                    "no worker for a request sent back to the queue"
                );
                let _ = head_tx.send(Err(Failure::Unavailable));
                meta.finish(None, 503, 0);
                return;
            }
        }
    };
    let worker = lease.worker();
    let pid = lease.pid();
    let fcgi_id = lease.fcgi_id();
    let mut pause = lease.pause_signal();
    let settings = lease.shared.settings();
    let max_pause = settings.max_pause;
    let slow_threshold = settings.slow_request_threshold;
    let graceful_timeout = settings.graceful_timeout;
    drop(settings);
    let mut slow_logged = false;
    let mut clock = RequestClock::start(Instant::now(), limit);
    if *pause.borrow_and_update() {
        clock.pause(Instant::now());
    }
    lease.publish_clock(&clock);
    let super::conn::WorkerConn {
        mut read,
        mut write,
        mut read_buf,
        write_buf,
    } = conn;

    let mut head_tx = Some(head_tx);
    // On a worker with several threads the request carries the host's request id, so the
    // worker names the thread that runs it and can report that thread's stack alone.
    let stacks_of = lease.shares_worker().then_some(request_id);
    let own = (!lease.written_behind()).then(|| {
        let records = match stacks_of {
            Some(id) => with_request_tag(&records, id),
            None => records,
        };
        with_request_id(records, fcgi_id)
    });
    let behind = lease.take_outbox();
    for chunk in [own, behind].into_iter().flatten() {
        if let Err(err) = write.write_all(&chunk).await {
            tracing::warn!(worker, pid, request_id, error = %err, "worker connection failed");
            let _ = head_tx.take().map(|tx| tx.send(Err(Failure::BadGateway)));
            meta.finish(Some((worker, pid)), 502, 0);
            return;
        }
    }
    let mut write_side = match body {
        Some((body, body_limit)) => WriteSide::Pumping(Box::pin(pump_stdin(
            body, body_limit, fcgi_id, write, write_buf,
        ))),
        None => WriteSide::Idle(write, write_buf),
    };

    let mut decoder = RecordDecoder::default();
    let mut head_buf = BytesMut::new();
    let mut status: u16 = 0;
    let mut pending: Option<Bytes> = None;
    let mut client_gone = false;
    let mut abort_sent = false;
    let mut body_cut = false;
    let mut sent: u64 = 0;

    let outcome = 'exchange: loop {
        while pending.is_none() {
            let record = match decoder.decode(&mut read_buf) {
                Ok(Some(record)) => record,
                Ok(None) => break,
                Err(err) => break 'exchange Outcome::Malformed(err.to_string()),
            };
            if record.request_id != fcgi_id {
                break 'exchange Outcome::Malformed(format!(
                    "record for request id {} while request id {fcgi_id} runs",
                    record.request_id
                ));
            }
            match record.kind {
                RecordType::Stdout if head_tx.is_some() => {
                    head_buf.extend_from_slice(&record.content);
                    match parse_cgi_head(&head_buf) {
                        Ok(HeadParse::Incomplete) if head_buf.len() <= MAX_HEAD => {}
                        Ok(HeadParse::Incomplete) => {
                            break 'exchange Outcome::Malformed("response head too long".into())
                        }
                        Ok(HeadParse::Complete { head, body_offset }) => {
                            status = head.status.as_u16();
                            let rest = head_buf.split_off(body_offset).freeze();
                            if !rest.is_empty() {
                                pending = Some(rest);
                            }
                            if let Some(tx) = head_tx.take() {
                                if tx.send(Ok(head)).is_err() {
                                    client_gone = true;
                                    pending = None;
                                }
                            }
                        }
                        Err(err) => {
                            break 'exchange Outcome::Malformed(format!("bad response head: {err}"))
                        }
                    }
                }
                RecordType::Stdout => {
                    if !client_gone && !record.content.is_empty() {
                        pending = Some(record.content);
                    }
                }
                RecordType::Stderr => log_stderr(worker, pid, request_id, &record.content),
                RecordType::EndRequest => match EndRequest::parse(&record.content) {
                    Ok(end) => break 'exchange Outcome::Ended(end),
                    Err(err) => break 'exchange Outcome::Malformed(err.to_string()),
                },
                other => {
                    break 'exchange Outcome::Malformed(format!(
                        "unexpected {other:?} record from worker"
                    ))
                }
            }
        }
        if client_gone && !abort_sent && head_tx.is_none() && pending.is_none() {
            if let WriteSide::Idle(write, buf) = &mut write_side {
                abort_sent = true;
                buf.clear();
                fcgi::put_abort_request(buf, fcgi_id);
                let _ = write.write_all(buf).await;
                buf.clear();
            }
        }
        let now = Instant::now();
        // debug.max_pause: while paused, also wake when the pause reaches the cap.
        let pause_cap = match (max_pause, clock.current_pause(now)) {
            (Some(max), Some(paused)) => now.checked_add(max.saturating_sub(paused)),
            _ => None,
        };
        // slow_request_threshold: wake when the active time reaches it (never while paused).
        let slow_at = match slow_threshold {
            Some(threshold) if !slow_logged && !clock.is_paused() => {
                now.checked_add(threshold.saturating_sub(clock.active(now)))
            }
            _ => None,
        };
        let wake = [clock.next_check(now), pause_cap, slow_at]
            .into_iter()
            .flatten()
            .min()
            .map(tokio::time::Instant::from_std);
        let pumping = matches!(write_side, WriteSide::Pumping(_));
        let writable = matches!(write_side, WriteSide::Idle(..));
        tokio::select! {
            biased;
            _ = async { match wake { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                let now = Instant::now();
                if clock.expired(now) {
                    break 'exchange Outcome::TimedOut;
                }
                if let Some(threshold) = slow_threshold {
                    let active = clock.active(now);
                    if !slow_logged && !clock.is_paused() && active >= threshold {
                        slow_logged = true;
                        meta.observer.slow(&meta);
                        tracing::warn!(
                            worker,
                            pid,
                            request_id,
                            method = meta.method,
                            path = meta.path,
                            active_ms = active.as_millis() as u64,
                            "slow request (slow_request_threshold); asking the worker for its Python stacks"
                        );
                        match lease.control() {
                            Some(control) => {
                                tokio::spawn(async move { control.request_stacks(stacks_of).await });
                            }
                            None => tracing::info!(worker, pid, "this worker has no control channel: no stacks to log"),
                        }
                    }
                }
                // A pause longer than debug.max_pause stops holding the clock: it runs
                // again (until the debugger resumes and pauses anew).
                if let (Some(max), Some(paused)) = (max_pause, clock.current_pause(now)) {
                    if paused >= max {
                        tracing::warn!(worker, pid, request_id, paused_s = paused.as_secs(), "debugger pause exceeded debug.max_pause; the request clock runs again");
                        clock.resume(now);
                        lease.publish_clock(&clock);
                    }
                }
            }
            () = lease.outbox_filled(), if writable => {
                if let (Some(records), WriteSide::Idle(write, _)) = (lease.take_outbox(), &mut write_side) {
                    if let Err(err) = write.write_all(&records).await {
                        break 'exchange Outcome::WorkerLost(err.to_string());
                    }
                }
            }
            changed = pause.changed() => {
                if changed.is_ok() {
                    let now = Instant::now();
                    if *pause.borrow_and_update() { clock.pause(now) } else { clock.resume(now) }
                    lease.publish_clock(&clock);
                }
            }
            done = async { match &mut write_side { WriteSide::Pumping(p) => p.await, _ => std::future::pending().await } }, if pumping => {
                let (write, buf, result) = done;
                write_side = match result {
                    Ok(()) => WriteSide::Idle(write, buf),
                    Err(PumpError::TooLarge) => break 'exchange Outcome::BodyTooLarge,
                    Err(PumpError::Client(err)) => {
                        // The worker is fine: answer 400 (unless the response has started,
                        // which is then cut), abort the request on the worker and keep the
                        // connection once it ends the request.
                        tracing::debug!(worker, pid, request_id, error = %err, "the client's request body failed; aborting the request");
                        match head_tx.take() {
                            Some(tx) => {
                                status = 400;
                                let _ = tx.send(Err(Failure::BadRequest));
                            }
                            None => body_cut = true,
                        }
                        client_gone = true;
                        pending = None;
                        WriteSide::Idle(write, buf)
                    }
                    Err(PumpError::Broken(err)) => {
                        tracing::debug!(worker, pid, request_id, error = %err, "request body ended early");
                        client_gone = true;
                        WriteSide::Lost
                    }
                };
            }
            permit = body_tx.reserve(), if pending.is_some() => {
                match (permit, pending.take()) {
                    (Ok(permit), Some(chunk)) => {
                        sent += chunk.len() as u64;
                        permit.send(Ok(chunk));
                    }
                    _ => client_gone = true,
                }
            }
            read_result = read.read_buf(&mut read_buf), if pending.is_none() => {
                match read_result {
                    Ok(0) => break 'exchange Outcome::WorkerLost("worker closed the connection".into()),
                    Ok(_) => {}
                    Err(err) => break 'exchange Outcome::WorkerLost(err.to_string()),
                }
            }
        }
        if client_gone && matches!(write_side, WriteSide::Lost) && head_tx.is_none() {
            // The client is gone and the connection's STDIN is half-sent: the
            // connection cannot be reused; dropping it lets the worker move on.
            break 'exchange Outcome::WorkerLost("client went away mid-request".into());
        }
    };

    let elapsed = meta.received.elapsed();
    match outcome {
        Outcome::Ended(end) => {
            if let Some(tx) = head_tx.take() {
                tracing::warn!(
                    worker,
                    pid,
                    request_id,
                    "worker ended the request without a response head"
                );
                let _ = tx.send(Err(Failure::NoResponse));
                status = 502;
            } else if body_cut {
                let _ = body_tx
                    .send(Err("the request body was malformed".into()))
                    .await;
            } else if end.app_status != 0 {
                tracing::warn!(
                    worker,
                    pid,
                    request_id,
                    app_status = end.app_status,
                    "app failed after the response started; cutting the response"
                );
                let _ = body_tx
                    .send(Err("the app failed mid-response".into()))
                    .await;
            }
            if let WriteSide::Idle(write, write_buf) = write_side {
                lease.restore_conn(super::conn::WorkerConn {
                    read,
                    write,
                    read_buf,
                    write_buf,
                });
            }
        }
        Outcome::WorkerLost(reason) => {
            if !client_gone {
                tracing::warn!(worker, pid, request_id, reason, "worker lost mid-request");
                lease.kill_worker();
            }
            fail(&mut head_tx, &body_tx, Failure::BadGateway, &mut status).await;
        }
        Outcome::Malformed(reason) => {
            tracing::error!(
                worker,
                pid,
                request_id,
                reason,
                "worker broke the FastCGI protocol; restarting it"
            );
            lease.kill_worker();
            fail(&mut head_tx, &body_tx, Failure::BadGateway, &mut status).await;
        }
        Outcome::TimedOut => {
            let now = Instant::now();
            meta.observer.timed_out(&meta);
            tracing::error!(
                worker,
                pid,
                request_id,
                method = meta.method,
                path = meta.path,
                ran_ms = elapsed.as_millis() as u64,
                paused_ms = clock.paused_total(now).as_millis() as u64,
                "request timed out (request_timeout); logging the worker's Python stacks, then killing it"
            );
            // The client learns at once; the stacks and the kill follow.
            fail(&mut head_tx, &body_tx, Failure::Timeout, &mut status).await;
            if let Some(control) = lease.control() {
                if !control.dump_and_wait(DUMP_BEFORE_KILL, stacks_of).await {
                    tracing::warn!(
                        worker,
                        pid,
                        request_id,
                        "the worker did not report its stacks in time"
                    );
                }
            }
            if lease.shares_worker() {
                // Other requests run on this worker's other threads: they may finish
                // (up to graceful_timeout) before it is killed.
                lease.drain_then_kill(graceful_timeout);
            } else {
                lease.kill_worker();
            }
        }
        Outcome::BodyTooLarge => {
            tracing::warn!(
                worker,
                pid,
                request_id,
                method = meta.method,
                path = meta.path,
                "request body passed max_body_size; cutting it off"
            );
            fail(&mut head_tx, &body_tx, Failure::BodyTooLarge, &mut status).await;
        }
    }
    drop(lease);
    meta.finish_with(Reported {
        worker: Some((worker, pid)),
        status,
        bytes: sent,
        client_aborted: client_gone,
    });
}

/// Tells the HTTP side the exchange failed: a status page before the head, a cut body after.
async fn fail(
    head_tx: &mut Option<oneshot::Sender<Result<CgiHead, Failure>>>,
    body_tx: &mpsc::Sender<Result<Bytes, BodyError>>,
    failure: Failure,
    status: &mut u16,
) {
    match head_tx.take() {
        Some(tx) => {
            *status = match failure {
                Failure::BadGateway => 502,
                Failure::Timeout => 504,
                Failure::BodyTooLarge => 413,
                Failure::Unavailable => 503,
                Failure::NoResponse => 502,
                Failure::BadRequest => 400,
            };
            let _ = tx.send(Err(failure));
        }
        None => {
            let _ = body_tx.send(Err("the response was cut short".into())).await;
        }
    }
}

/// Streams the client's body to the worker as STDIN records, then the empty record;
/// stops with [`PumpError::TooLarge`] before forwarding a byte past `limit`.
async fn pump_stdin<B: RequestBody>(
    mut body: B,
    limit: Option<u64>,
    fcgi_id: u16,
    mut write: OwnedWriteHalf,
    mut buf: BytesMut,
) -> (OwnedWriteHalf, BytesMut, Result<(), PumpError>) {
    let broken = |e: &dyn std::fmt::Display| PumpError::Broken(e.to_string());
    let result = async {
        let mut total: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| PumpError::Client(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if data.is_empty() {
                    continue;
                }
                total = total.saturating_add(data.len() as u64);
                if limit.is_some_and(|limit| total > limit) {
                    return Err(PumpError::TooLarge);
                }
                buf.clear();
                fcgi::put_stream(&mut buf, RecordType::Stdin, fcgi_id, &data);
                write.write_all(&buf).await.map_err(|e| broken(&e))?;
            }
        }
        buf.clear();
        fcgi::put_stream(&mut buf, RecordType::Stdin, fcgi_id, &[]);
        write.write_all(&buf).await.map_err(|e| broken(&e))?;
        buf.clear();
        Ok(())
    }
    .await;
    (write, buf, result)
}

/// The CGI variable that carries the host's request id to a threaded worker (which removes
/// it from `environ` and names the serving thread after it).
const REQUEST_TAG_PARAM: &[u8] = b"FCGIHOST_REQUEST_ID";

/// Length of a BEGIN_REQUEST record (header and body), the first of `records`.
const BEGIN_RECORD_LEN: usize = 16;

/// `records` with one more PARAMS record, right after BEGIN_REQUEST, carrying
/// [`REQUEST_TAG_PARAM`] (a worker joins every PARAMS record before the empty one).
fn with_request_tag(records: &Bytes, request_id: u64) -> Bytes {
    if records.len() < BEGIN_RECORD_LEN {
        return records.clone();
    }
    let mut pair = BytesMut::new();
    fcgi::put_name_value(
        &mut pair,
        REQUEST_TAG_PARAM,
        request_id.to_string().as_bytes(),
    );
    let mut out = BytesMut::with_capacity(records.len() + pair.len() + 8);
    out.extend_from_slice(&records[..BEGIN_RECORD_LEN]);
    fcgi::put_stream(&mut out, RecordType::Params, REQUEST_ID, &pair);
    out.extend_from_slice(&records[BEGIN_RECORD_LEN..]);
    out.freeze()
}

/// `records` (built with [`REQUEST_ID`]) as request `fcgi_id`.
fn with_request_id(records: Bytes, fcgi_id: u16) -> Bytes {
    if fcgi_id == REQUEST_ID {
        return records;
    }
    let mut patched = BytesMut::from(&records[..]);
    fcgi::set_request_id(&mut patched, fcgi_id);
    patched.freeze()
}

fn log_stderr(worker: usize, pid: u32, request_id: u64, content: &[u8]) {
    let text = String::from_utf8_lossy(content);
    for line in text.lines().filter(|l| !l.is_empty()) {
        super::app_output::log_line(worker, pid, Some(request_id), "fcgi-stderr", line);
    }
}
