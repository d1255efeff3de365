//! Fuzzes the CGI response head parser (`gateway::response::parse_cgi_head`), which reads
//! the first bytes a worker writes to STDOUT: never panics, and its answer is that of an
//! all-or-nothing parser that callers retry with a longer buffer after `Incomplete`.
#![no_main]

use fcgihost::gateway::response::{parse_cgi_head, CgiHeadError, HeadParse, MAX_HEAD};
use libfuzzer_sys::fuzz_target;

/// Headers the parser must drop (hyper owns framing and the connection).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

fuzz_target!(|data: &[u8]| {
    let result = parse_cgi_head(data);
    match &result {
        Ok(HeadParse::Complete { head, body_offset }) => {
            let off = *body_offset;
            assert!(off <= data.len(), "body_offset {off} past the input");
            assert!(off <= MAX_HEAD, "head of {off} bytes accepted");
            // The head ends with an empty line: "\n" or "\r\n" just before the body.
            assert_eq!(data[off - 1], b'\n');
            let last_line = data[..off - 1]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            assert!(matches!(&data[last_line..off - 1], b"" | b"\r"));
            let status = head.status.as_u16();
            assert!((200..=999).contains(&status), "status {status}");
            for name in HOP_BY_HOP {
                assert!(!head.headers.contains_key(*name), "hop-by-hop {name} kept");
            }
            let lines = data[..off].iter().filter(|&&b| b == b'\n').count();
            assert!(head.headers.len() < lines, "more headers than lines");
            // The body plays no part: the head alone, or with other body bytes, parses the same.
            assert_eq!(parse_cgi_head(&data[..off]), result);
            let mut other = data[..off].to_vec();
            other.extend_from_slice(b"\r\n\r\nStatus: 500\r\n\r\n");
            assert_eq!(parse_cgi_head(&other), result);
            // One byte short of the empty line, the same head was not complete yet.
            assert_eq!(parse_cgi_head(&data[..off - 1]), Ok(HeadParse::Incomplete));
        }
        Ok(HeadParse::Incomplete) => {
            assert!(
                data.len() < MAX_HEAD,
                "{} bytes still Incomplete",
                data.len()
            );
            // Every shorter buffer (what the caller saw before) was Incomplete too.
            for cut in [0, data.len() / 2, data.len().saturating_sub(1)] {
                assert_eq!(parse_cgi_head(&data[..cut]), Ok(HeadParse::Incomplete));
            }
        }
        Err(err) => {
            if let CgiHeadError::TooLarge { max } = err {
                assert_eq!(*max, MAX_HEAD);
                assert!(data.len() >= MAX_HEAD);
            }
            // Errors are final: more bytes never turn a refused head into an accepted one.
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"\r\n\r\n");
            assert_eq!(parse_cgi_head(&longer), result);
            // Messages quote at most 200 input bytes, each escaped to at most 4 characters.
            let message = err.to_string();
            assert!(message.len() < 1200, "message of {} bytes", message.len());
            assert!(message.starts_with("CGI response head"), "{message}");
        }
    }
});
