//! Fuzzes the FastCGI wire format (`gateway::fcgi`): the incremental `RecordDecoder` used on
//! worker output and at the FastCGI front door, fed the same bytes whole and in arbitrary
//! chunks; `parse_name_values`, `BeginRequest::parse` and `EndRequest::parse` on what it
//! decodes; and the round trip of every record back through the `put_*` encoders.
//!
//! Input: byte 0 = `k | flags` (k = low 4 bits: how many chunk sizes follow; bit 4: decoder
//! limit of 255 content bytes instead of 65535; bit 5: also encode the stream's first
//! name-value pairs grown past one record), then k chunk sizes (each byte + 1, used in turn),
//! then the byte stream. k = 0 feeds the stream one byte at a time.
#![no_main]

use bytes::BytesMut;
use fcgihost::gateway::fcgi::{
    parse_name_values, put_abort_request, put_begin_request, put_end_request, put_get_values,
    put_get_values_result, put_name_value, put_stream, put_unknown_type, BeginRequest, EndRequest,
    FcgiError, ParamsWriter, Record, RecordDecoder, RecordType, Role, HEADER_LEN, MAX_CONTENT,
    NULL_REQUEST_ID,
};
use libfuzzer_sys::fuzz_target;

/// What decoding a whole stream gave: the records, the error that stopped it (if any), and
/// the bytes left undecoded.
#[derive(Debug)]
struct Decoded {
    records: Vec<Record>,
    error: Option<FcgiError>,
    rest: Vec<u8>,
}

/// Feeds `chunks` in order, decoding all it can after each, as a socket reader does.
fn decode_chunked<'a>(max_content: usize, chunks: impl Iterator<Item = &'a [u8]>) -> Decoded {
    let mut dec = RecordDecoder::with_max_content(max_content);
    let mut buf = BytesMut::new();
    let mut records = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(r)) => records.push(r),
                Ok(None) => break,
                Err(e) => {
                    return Decoded {
                        records,
                        error: Some(e),
                        rest: buf.to_vec(),
                    }
                }
            }
        }
    }
    Decoded {
        records,
        error: None,
        rest: buf.to_vec(),
    }
}

/// Decodes bytes the crate's own encoders wrote; they must all decode, leaving nothing.
fn decode_own(buf: &[u8]) -> Vec<Record> {
    let d = decode_chunked(MAX_CONTENT, std::iter::once(buf));
    assert_eq!(d.error, None, "own encoding refused: {buf:?}");
    assert!(
        d.rest.is_empty(),
        "own encoding left {} bytes",
        d.rest.len()
    );
    d.records
}

/// Checks one decoded record against the spec's per-type rules.
fn check_record(r: &Record, max_content: usize) {
    assert!(r.content.len() <= max_content);
    assert_eq!(r.kind.is_management(), r.request_id == NULL_REQUEST_ID);
    let fixed = match r.kind {
        RecordType::BeginRequest | RecordType::EndRequest | RecordType::UnknownType => Some(8),
        RecordType::AbortRequest => Some(0),
        _ => None,
    };
    if let Some(len) = fixed {
        assert_eq!(
            r.content.len(),
            len,
            "{} with {} bytes",
            r.kind,
            r.content.len()
        );
    }
    assert_eq!(RecordType::from_u8(r.kind as u8), Some(r.kind));
}

/// Name-value parsing: pairs borrow from the content, in order, and re-encode to content that
/// parses back to the same pairs, also when written through `ParamsWriter` records.
fn check_name_values(content: &[u8]) {
    let pairs = match parse_name_values(content) {
        Ok(pairs) => pairs,
        Err(FcgiError::TruncatedNameValue { offset }) => {
            assert!(offset < content.len());
            return;
        }
        Err(e) => panic!("unexpected name-value error {e:?}"),
    };
    let payload: usize = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
    assert!(payload + 2 * pairs.len() <= content.len());

    let mut plain = Vec::new();
    for (n, v) in &pairs {
        put_name_value(&mut plain, n, v);
    }
    assert_eq!(parse_name_values(&plain).as_ref(), Ok(&pairs));

    let owned: Vec<(Vec<u8>, Vec<u8>)> = pairs
        .iter()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    check_params_writer(&owned);
}

/// Writes `pairs` as a PARAMS stream through `ParamsWriter`, each pair in one of three ways
/// (`push`; `push_with` fed by `put`, `put_mapped` and `put_iter` in different orders), and
/// checks the records decode to the pairs (name bytes upper-cased where `put_mapped` did so).
fn check_params_writer(pairs: &[(Vec<u8>, Vec<u8>)]) {
    let mut buf = BytesMut::new();
    let mut w = ParamsWriter::new(&mut buf, 7);
    let mut expected = Vec::new();
    for (i, (n, v)) in pairs.iter().enumerate() {
        match i % 3 {
            0 => {
                w.push(n, v);
                expected.push((n.clone(), v.clone()));
            }
            1 => {
                let (a, b) = n.split_at(n.len() / 2);
                w.push_with(n.len(), v.len(), |sink| {
                    sink.put(a);
                    sink.put_mapped(b, |x| x.to_ascii_uppercase());
                    sink.put_iter(v.iter().copied());
                });
                let name = [a, &b.to_ascii_uppercase()].concat();
                expected.push((name, v.clone()));
            }
            _ => {
                w.push_with(n.len(), v.len(), |sink| {
                    sink.put_iter(n.iter().copied());
                    for piece in v.chunks(1000) {
                        sink.put_mapped(piece, |x| x);
                    }
                });
                expected.push((n.clone(), v.clone()));
            }
        }
    }
    w.finish();
    let records = decode_own(&buf);
    let stream = stream_of(&records, RecordType::Params, 7);
    let got: Vec<(Vec<u8>, Vec<u8>)> = parse_name_values(&stream)
        .expect("own PARAMS parse")
        .iter()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    assert_eq!(got, expected);
}

/// Pairs and streams larger than one record (the splitting paths of the encoders), built by
/// repeating the first few pairs of `stream` past `MAX_CONTENT`.
fn check_large(stream: &[u8]) {
    let Ok(pairs) = parse_name_values(stream) else {
        return;
    };
    let grow = |b: &[u8], times: usize| -> Vec<u8> {
        if b.is_empty() {
            return Vec::new();
        }
        b.repeat((MAX_CONTENT + 1).div_ceil(b.len()) + times)
    };
    let big: Vec<(Vec<u8>, Vec<u8>)> = pairs
        .iter()
        .take(4)
        .enumerate()
        .map(|(i, (n, v))| {
            // Every other pair gets a large name, and every value but the third is large.
            let name = if i % 2 == 1 { grow(n, i) } else { n.to_vec() };
            let value = if i == 2 { v.to_vec() } else { grow(v, i) };
            (name, value)
        })
        .collect();
    check_params_writer(&big);

    let Some((_, data)) = big.first().filter(|(_, v)| !v.is_empty()) else {
        return;
    };
    let mut buf = BytesMut::new();
    put_stream(&mut buf, RecordType::Stdin, 9, data);
    put_stream(&mut buf, RecordType::Stdin, 9, b"");
    let records = decode_own(&buf);
    assert!(records.iter().all(|r| r.content.len() <= MAX_CONTENT));
    assert_eq!(stream_of(&records, RecordType::Stdin, 9), *data);
}

/// The content of one stream, checking its framing: same id, non-empty records, one empty
/// terminator at the end.
fn stream_of(records: &[Record], kind: RecordType, id: u16) -> Vec<u8> {
    let (last, body) = records.split_last().expect("no records");
    assert!(last.content.is_empty() && last.kind == kind && last.request_id == id);
    let mut out = Vec::new();
    for r in body {
        assert!(r.kind == kind && r.request_id == id && !r.content.is_empty());
        out.extend_from_slice(&r.content);
    }
    out
}

/// Re-encodes a decoded record with the matching `put_*` function and checks that what it
/// wrote decodes back to the same meaning.
fn round_trip(r: &Record) {
    let mut buf = BytesMut::new();
    match r.kind {
        RecordType::BeginRequest => {
            let begin = BeginRequest::parse(&r.content).expect("checked length");
            let Some(role) = Role::from_u16(begin.role) else {
                return;
            };
            put_begin_request(&mut buf, r.request_id, role, begin.keep_conn);
            let back = decode_own(&buf);
            assert_eq!(back.len(), 1);
            assert_eq!(back[0].request_id, r.request_id);
            assert_eq!(BeginRequest::parse(&back[0].content), Ok(begin));
        }
        RecordType::EndRequest => {
            let end = EndRequest::parse(&r.content).expect("checked length");
            let Some(status) = end.protocol_status() else {
                return;
            };
            assert_eq!(status as u8, end.protocol_status);
            put_end_request(&mut buf, r.request_id, end.app_status, status);
            let back = decode_own(&buf);
            assert_eq!(back.len(), 1);
            assert_eq!(back[0].request_id, r.request_id);
            assert_eq!(EndRequest::parse(&back[0].content), Ok(end));
        }
        RecordType::AbortRequest => {
            put_abort_request(&mut buf, r.request_id);
            assert_eq!(decode_own(&buf), vec![r.clone()]);
        }
        RecordType::UnknownType => {
            put_unknown_type(&mut buf, r.content[0]);
            let back = decode_own(&buf);
            assert_eq!(back.len(), 1);
            assert_eq!(back[0].content[0], r.content[0]);
        }
        RecordType::Params
        | RecordType::Stdin
        | RecordType::Stdout
        | RecordType::Stderr
        | RecordType::Data => {
            put_stream(&mut buf, r.kind, r.request_id, &r.content);
            let back = decode_own(&buf);
            if r.content.is_empty() {
                assert_eq!(back, vec![r.clone()]);
            } else {
                assert_eq!(back.len(), 1);
                assert_eq!(back[0], *r);
            }
            if r.kind == RecordType::Params {
                check_name_values(&r.content);
            }
        }
        RecordType::GetValues | RecordType::GetValuesResult => {
            check_name_values(&r.content);
            let Ok(pairs) = parse_name_values(&r.content) else {
                return;
            };
            let Ok(text) = pairs
                .iter()
                .map(|(n, v)| Ok((std::str::from_utf8(n)?, std::str::from_utf8(v)?)))
                .collect::<Result<Vec<(&str, &str)>, std::str::Utf8Error>>()
            else {
                return;
            };
            if r.kind == RecordType::GetValues {
                if text.iter().any(|(_, v)| !v.is_empty()) {
                    return;
                }
                let names: Vec<&str> = text.iter().map(|(n, _)| *n).collect();
                put_get_values(&mut buf, &names);
            } else {
                put_get_values_result(&mut buf, &text);
            }
            let mut again = Vec::new();
            for back in decode_own(&buf) {
                assert_eq!((back.kind, back.request_id), (r.kind, NULL_REQUEST_ID));
                let parsed = parse_name_values(&back.content).expect("own pairs");
                again.extend(parsed.iter().map(|(n, v)| (n.to_vec(), v.to_vec())));
            }
            let want: Vec<(Vec<u8>, Vec<u8>)> = pairs
                .iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect();
            assert_eq!(again, want);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let k = usize::from(control & 0x0f).min(rest.len());
    let max_content = if control & 0x10 != 0 {
        255
    } else {
        MAX_CONTENT
    };
    let (sizes, stream) = rest.split_at(k);

    let whole = decode_chunked(max_content, std::iter::once(stream));
    let chunked = if sizes.is_empty() {
        decode_chunked(max_content, stream.chunks(1))
    } else {
        let mut pieces = Vec::new();
        let mut left = stream;
        for &s in sizes.iter().cycle() {
            if left.is_empty() {
                break;
            }
            let (a, b) = left.split_at((usize::from(s) + 1).min(left.len()));
            pieces.push(a);
            left = b;
        }
        decode_chunked(max_content, pieces.into_iter())
    };
    assert_eq!(
        whole.records, chunked.records,
        "chunking changed the records"
    );
    assert_eq!(whole.error, chunked.error, "chunking changed the error");
    if whole.error.is_none() {
        assert_eq!(whole.rest, chunked.rest);
    } else {
        // A chunked reader stops at the error, before later chunks arrive.
        assert!(whole.rest.starts_with(&chunked.rest));
    }

    // The records are exactly the stream's bytes: header, content, padding, one after another.
    let consumed = stream.len() - whole.rest.len();
    let mut pos = 0;
    for r in &whole.records {
        let h = &stream[pos..pos + HEADER_LEN];
        let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
        assert_eq!((h[0], h[1]), (1, r.kind as u8));
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), r.request_id);
        assert_eq!(
            &stream[pos + HEADER_LEN..pos + HEADER_LEN + len],
            &r.content[..]
        );
        pos += HEADER_LEN + len + usize::from(h[6]);
    }
    assert_eq!(pos, consumed);
    assert_eq!(&stream[consumed..], &whole.rest[..]);
    if whole.error.is_none() {
        // Stopped for want of bytes: less than a whole record is left.
        assert!(whole.rest.len() < HEADER_LEN + max_content + 255);
    }

    for r in &whole.records {
        check_record(r, max_content);
        round_trip(r);
    }

    // The fixed-size bodies and the name-value parser on raw input, not only on records.
    assert_eq!(BeginRequest::parse(stream).is_ok(), stream.len() == 8);
    assert_eq!(EndRequest::parse(stream).is_ok(), stream.len() == 8);
    if let Ok(end) = EndRequest::parse(stream) {
        assert_eq!(end.protocol_status().is_some(), end.protocol_status < 4);
    }
    check_name_values(stream);
    if control & 0x20 != 0 {
        check_large(stream);
    }
});
