//! Fuzzes the front door's edge checker (`front::framing`): the raw-stream scanner that
//! follows a connection's request heads and bodies, the head rules applied to what hyper
//! parses, the trailer rules, and the same rules for FastCGI parameters.
//!
//! Input: one control byte (the piece size for the split feed, 1..=64), then the client's
//! byte stream.
#![no_main]

use fcgihost::front::framing::{
    check_cgi_params, check_head, check_trailers, is_content_length, is_host, is_token,
    target_form, Routing, StreamScanner, TargetForm,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};
use libfuzzer_sys::fuzz_target;

fn scan(stream: &[u8], piece: usize) -> (Vec<fcgihost::front::framing::RawVerdict>, bool) {
    let mut scanner = StreamScanner::new(16 * 1024, 32);
    for chunk in stream.chunks(piece) {
        scanner.feed(chunk);
    }
    let stopped = scanner.stopped();
    (
        std::iter::from_fn(|| scanner.next_verdict()).collect(),
        stopped,
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(control % 64) + 1;

    // The scanner's verdicts do not depend on how the stream is split into reads.
    let whole = scan(stream, stream.len().max(1));
    let split = scan(stream, piece);
    assert_eq!(
        whole, split,
        "verdicts differ when fed in {piece}-byte pieces"
    );
    let bytewise = scan(stream, 1);
    assert_eq!(whole, bytewise, "verdicts differ when fed byte by byte");
    // A refused head is the last verdict: the scanner stops at it.
    if let Some(i) = whole.0.iter().position(|v| v.violation.is_some()) {
        assert_eq!(i + 1, whole.0.len(), "verdicts after a refused head");
        assert!(whole.1, "a refused head did not stop the scanner");
    }

    // The first head, parsed as hyper does, through the head rules.
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut fields);
    let Ok(httparse::Status::Complete(_)) = request.parse(stream) else {
        return;
    };
    let raw_lengths = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .count();
    let raw_te = request
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    if let Some(first) = whole.0.first() {
        assert_eq!(Some(first.method.as_str()), request.method);
        if raw_lengths > 1 || (raw_lengths == 1 && raw_te) {
            assert!(
                first.violation.is_some(),
                "raw framing conflict let through"
            );
        }
    }
    let (Some(method), Some(path), Some(minor)) = (request.method, request.path, request.version)
    else {
        return;
    };
    let (Ok(method), Ok(uri)) = (Method::from_bytes(method.as_bytes()), Uri::try_from(path)) else {
        return;
    };
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let mut headers = HeaderMap::new();
    for field in request.headers.iter() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(field.name.as_bytes()),
            HeaderValue::from_bytes(field.value),
        ) {
            headers.append(name, value);
        }
    }
    if let Ok(routing) = check_head(&method, &uri, version, &headers) {
        assert!(is_token(method.as_str().as_bytes()));
        let hosts = headers.get_all("host").iter().count();
        assert!(hosts <= 1, "{hosts} Host fields accepted");
        if version == Version::HTTP_11 {
            assert_eq!(hosts, 1, "HTTP/1.1 without Host accepted");
        }
        if let Some(host) = headers.get("host") {
            assert!(is_host(host.as_bytes()));
        }
        let lengths: Vec<_> = headers.get_all("content-length").iter().collect();
        assert!(lengths.len() <= 1, "several Content-Length accepted");
        assert!(lengths.iter().all(|v| is_content_length(v.as_bytes())));
        let codings: Vec<String> = headers
            .get_all("transfer-encoding")
            .iter()
            .flat_map(|v| {
                v.as_bytes()
                    .split(|&b| b == b',')
                    .map(|c| String::from_utf8_lossy(c).trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
            .filter(|c| !c.is_empty())
            .collect();
        if !codings.is_empty() {
            assert!(
                lengths.is_empty(),
                "Content-Length with Transfer-Encoding accepted"
            );
            assert_eq!(codings, ["chunked"], "codings {codings:?} accepted");
            assert_eq!(version, Version::HTTP_11);
        }
        let form = target_form(&uri);
        match routing {
            Routing::ServerOptions => {
                assert!(method == Method::OPTIONS && form == TargetForm::Asterisk)
            }
            Routing::Connect => assert!(method == Method::CONNECT && form == TargetForm::Authority),
            Routing::App => assert!(
                matches!(form, TargetForm::Origin | TargetForm::Absolute)
                    && method != Method::CONNECT
            ),
        }
    }
    // The same fields as a trailer section, and as FastCGI parameters.
    if check_trailers(&headers).is_ok() {
        for name in [
            "content-length",
            "transfer-encoding",
            "host",
            "authorization",
        ] {
            assert!(!headers.contains_key(name), "trailer {name} accepted");
        }
    }
    let params: Vec<(Vec<u8>, Vec<u8>)> = request
        .headers
        .iter()
        .map(|h| {
            let name = format!("HTTP_{}", h.name.to_ascii_uppercase().replace('-', "_"));
            (name.into_bytes(), h.value.to_vec())
        })
        .chain([(
            b"REQUEST_METHOD".to_vec(),
            request.method.unwrap_or_default().as_bytes().to_vec(),
        )])
        .collect();
    if check_cgi_params(params.iter().map(|(n, v)| (&n[..], &v[..]))).is_ok() {
        for (name, value) in &params {
            if name.starts_with(b"HTTP_") {
                assert!(!value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f));
            }
        }
    }
});
