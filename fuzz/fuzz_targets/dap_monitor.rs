//! Fuzzes the DAP framing monitor (`debug::dap`) that watches both directions of a /ptvsd
//! connection: it never panics, framing does not depend on how the bytes are chunked, the
//! pause edges it reports agree with its state, and its memory stays bounded however long
//! the stream (a counting allocator measures what it holds).
//!
//! Input: segments of `ctrl, len (1 byte, or 2 big-endian if ctrl bit 1), bytes[len]`.
//! ctrl bit 0: direction (0 = client → adapter); bits 2-3: the segment is sent 1, 2, 16 or
//! 64 times; bits 4-7: piece size for the chunked copy (see `PIECES`). A reference monitor
//! gets each segment whole, the one under test gets it in pieces (sent at most 16 times, to
//! keep the fuzzer fast); then a fresh monitor gets the whole stream, every repeat, alone,
//! while the allocator measures what it holds.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use fcgihost::debug::dap::{
    DapFramer, DapMonitor, Direction, PauseChange, PauseTracker, MAX_BODY, MAX_HEADER,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Piece sizes for the chunked copy, chosen by ctrl bits 4-7.
const PIECES: [usize; 16] = [
    1, 2, 3, 4, 5, 7, 8, 13, 16, 23, 64, 100, 255, 1024, 4096, 65536,
];

/// Times a segment is sent, chosen by ctrl bits 2-3: long streams from short inputs.
const REPEATS: [usize; 4] = [1, 2, 16, 64];

/// Most bytes one monitor may hold between chunks: each of its two framers keeps a header of
/// at most `MAX_HEADER` (a Vec may have twice that capacity) and a body of at most `MAX_BODY`;
/// the tracker a bounded set of threads and requests, the message scratch list a few
/// hundred entries (an allowance for both, far below the stream lengths the input reaches).
const LIMIT: usize = 2 * (2 * MAX_HEADER + MAX_BODY) + 64 * 1024;

/// One segment of the input.
struct Segment<'a> {
    dir: Direction,
    bytes: &'a [u8],
    repeat: usize,
    piece: usize,
}

/// Splits the input into segments (a truncated last header ends the input).
fn segments(mut input: &[u8]) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    while let Some((&ctrl, rest)) = input.split_first() {
        let (len, rest) = if ctrl & 2 != 0 {
            match rest {
                [a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), rest),
                _ => break,
            }
        } else {
            match rest.split_first() {
                Some((&n, rest)) => (usize::from(n), rest),
                None => break,
            }
        };
        let (bytes, rest) = rest.split_at(len.min(rest.len()));
        input = rest;
        let repeat = REPEATS[usize::from((ctrl >> 2) & 3)];
        // At most ~4096 feed calls per segment, so long streams stay fast.
        let piece = PIECES[usize::from(ctrl >> 4)]
            .max(bytes.len() * repeat.min(16) / 4096)
            .max(1);
        let dir = if ctrl & 1 == 0 {
            Direction::ClientToAdapter
        } else {
            Direction::AdapterToClient
        };
        out.push(Segment {
            dir,
            bytes,
            repeat,
            piece,
        });
    }
    out
}

fn index(dir: Direction) -> usize {
    match dir {
        Direction::ClientToAdapter => 0,
        Direction::AdapterToClient => 1,
    }
}

/// Feeds `chunk` to the monitor and checks the edge it reports against its state.
fn feed_checked(m: &mut DapMonitor, dir: Direction, chunk: &[u8]) {
    let before = m.is_paused();
    let change = m.feed(dir, chunk);
    let after = m.is_paused();
    assert_eq!(
        change,
        edge(before, after),
        "edge does not match the pause state"
    );
}

/// Gives one framed message to a bare tracker and checks the DAP rules the monitor documents:
/// only a `stopped` event pauses; a `continued` event for all threads, `terminated`, `exited`
/// and a client's `disconnect` leave the worker running; the edge matches the state.
fn observe_checked(t: &mut PauseTracker, dir: Direction, msg: &Value) {
    let before = t.is_paused();
    let change = t.observe(dir, msg);
    let after = t.is_paused();
    assert_eq!(
        change,
        edge(before, after),
        "tracker edge does not match its state"
    );
    let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let kind = field(msg, "type");
    let event = field(msg, "event");
    let is_event = |name: &str| {
        dir == Direction::AdapterToClient
            && kind.as_deref() == Some("event")
            && event.as_deref() == Some(name)
    };
    if !before && after {
        assert!(
            is_event("stopped"),
            "paused by something else than a stopped event: {msg}"
        );
    }
    if is_event("stopped") {
        assert!(after, "still running after {msg}");
    }
    let body = msg.get("body");
    let all_continued = body
        .and_then(|b| b.get("allThreadsContinued"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let has_thread = body
        .and_then(|b| b.get("threadId"))
        .and_then(Value::as_i64)
        .is_some();
    let disconnect = dir == Direction::ClientToAdapter
        && kind.as_deref() == Some("request")
        && field(msg, "command").as_deref() == Some("disconnect");
    if (is_event("continued") && (all_continued || !has_thread))
        || is_event("terminated")
        || is_event("exited")
        || disconnect
    {
        assert!(!after, "still paused after {msg}");
    }
}

fn edge(before: bool, after: bool) -> Option<PauseChange> {
    match (before, after) {
        (false, true) => Some(PauseChange::Paused),
        (true, false) => Some(PauseChange::Resumed),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let segments = segments(data);

    // Chunking: a monitor fed pieces agrees with one fed whole segments, after every segment.
    let mut reference = DapMonitor::new();
    let mut tested = DapMonitor::new();
    let mut ref_framers = [DapFramer::new(), DapFramer::new()];
    let mut test_framers = [DapFramer::new(), DapFramer::new()];
    // The monitor is framers plus a tracker: a bare tracker given the framed messages agrees.
    let mut model = PauseTracker::new();
    for seg in &segments {
        let i = index(seg.dir);
        let mut ref_msgs = Vec::new();
        let mut test_msgs = Vec::new();
        for _ in 0..seg.repeat.min(16) {
            feed_checked(&mut reference, seg.dir, seg.bytes);
            ref_framers[i].push(seg.bytes, &mut ref_msgs);
            for p in seg.bytes.chunks(seg.piece) {
                feed_checked(&mut tested, seg.dir, p);
                test_framers[i].push(p, &mut test_msgs);
            }
        }
        assert_eq!(ref_msgs, test_msgs, "chunking changed the messages");
        for msg in &ref_msgs {
            observe_checked(&mut model, seg.dir, msg);
        }
        assert_eq!(
            model.is_paused(),
            reference.is_paused(),
            "monitor and tracker disagree"
        );
        assert_eq!(model.client_id(), reference.client_id());

        assert_eq!(
            reference.is_paused(),
            tested.is_paused(),
            "chunking changed the pause state"
        );
        assert_eq!(reference.client_id(), tested.client_id());
        for d in [Direction::ClientToAdapter, Direction::AdapterToClient] {
            let (r, t) = (reference.framer(d), tested.framer(d));
            assert_eq!(r.resyncs(), t.resyncs(), "chunking changed resyncs");
            assert_eq!(
                r.skipped_bodies(),
                t.skipped_bodies(),
                "chunking changed skips"
            );
            assert_eq!(r.resyncs(), ref_framers[index(d)].resyncs());
            assert_eq!(r.skipped_bodies(), ref_framers[index(d)].skipped_bodies());
        }
        if let Some(id) = tested.client_id() {
            assert!(id.chars().count() <= 128);
        }
    }

    // Closing the connection resumes a paused worker, exactly once.
    let was_paused = tested.is_paused();
    let change = tested.connection_closed();
    assert_eq!(change, was_paused.then_some(PauseChange::Resumed));
    assert!(!tested.is_paused());
    assert_eq!(tested.connection_closed(), None);
    drop((reference, tested, ref_framers, test_framers));

    // Memory: a lone monitor holds at most LIMIT bytes after any chunk, however long the stream.
    let baseline = LIVE.load(Ordering::Relaxed);
    let mut monitor = DapMonitor::new();
    for seg in &segments {
        for _ in 0..seg.repeat {
            feed_checked(&mut monitor, seg.dir, seg.bytes);
            let held = LIVE.load(Ordering::Relaxed).saturating_sub(baseline);
            assert!(
                held <= LIMIT,
                "a monitor holds {held} bytes (limit {LIMIT})"
            );
        }
    }
});
