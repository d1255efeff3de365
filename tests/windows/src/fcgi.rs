//! FastCGI 1.0 records: the 8-byte header, name-value pairs, and the few record bodies
//! the test programs send and answer.

use std::io::{self, Read, Write};

pub const BEGIN_REQUEST: u8 = 1;
pub const ABORT_REQUEST: u8 = 2;
pub const END_REQUEST: u8 = 3;
pub const PARAMS: u8 = 4;
pub const STDIN: u8 = 5;
pub const STDOUT: u8 = 6;
pub const STDERR: u8 = 7;
pub const GET_VALUES: u8 = 9;
pub const GET_VALUES_RESULT: u8 = 10;
pub const UNKNOWN_TYPE: u8 = 11;

pub const RESPONDER: u16 = 1;
pub const KEEP_CONN: u8 = 1;
pub const MAX_CONTENT: usize = 0xFFFF;

/// One record.
#[derive(Debug, Clone)]
pub struct Record {
    pub kind: u8,
    pub id: u16,
    pub content: Vec<u8>,
}

/// Reads one record; `None` at a clean end of stream.
pub fn read_record(r: &mut impl Read) -> io::Result<Option<Record>> {
    let mut header = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        let n = r.read(&mut header[got..])?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    if header[0] != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not FastCGI version 1",
        ));
    }
    let id = u16::from_be_bytes([header[2], header[3]]);
    let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let padding = usize::from(header[6]);
    let mut content = vec![0u8; len + padding];
    r.read_exact(&mut content)?;
    content.truncate(len);
    Ok(Some(Record {
        kind: header[1],
        id,
        content,
    }))
}

/// Appends one record (content of at most [`MAX_CONTENT`] bytes) to `out`.
pub fn put_record(out: &mut Vec<u8>, kind: u8, id: u16, content: &[u8]) {
    let len = u16::try_from(content.len()).expect("record content fits");
    out.extend_from_slice(&[1, kind]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(content);
}

/// Appends a stream (STDIN, STDOUT) as records of at most [`MAX_CONTENT`] bytes, without
/// the empty record that closes it.
pub fn put_stream(out: &mut Vec<u8>, kind: u8, id: u16, data: &[u8]) {
    for chunk in data.chunks(MAX_CONTENT) {
        put_record(out, kind, id, chunk);
    }
}

/// Appends one name-value pair in FastCGI's length encoding.
pub fn put_pair(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    for len in [name.len(), value.len()] {
        if len < 128 {
            out.push(len as u8);
        } else {
            out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
        }
    }
    out.extend_from_slice(name);
    out.extend_from_slice(value);
}

/// Decodes name-value pairs (a PARAMS stream or a GET_VALUES body).
pub fn pairs(mut data: &[u8]) -> Vec<(String, String)> {
    fn len(data: &mut &[u8]) -> Option<usize> {
        let first = *data.first()?;
        if first < 128 {
            *data = &data[1..];
            Some(usize::from(first))
        } else {
            let bytes: [u8; 4] = data.get(..4)?.try_into().ok()?;
            *data = &data[4..];
            Some((u32::from_be_bytes(bytes) & 0x7FFF_FFFF) as usize)
        }
    }
    let mut out = Vec::new();
    while !data.is_empty() {
        let (Some(n), Some(v)) = (len(&mut data), len(&mut data)) else {
            break;
        };
        if data.len() < n + v {
            break;
        }
        out.push((
            String::from_utf8_lossy(&data[..n]).into_owned(),
            String::from_utf8_lossy(&data[n..n + v]).into_owned(),
        ));
        data = &data[n + v..];
    }
    out
}

/// An END_REQUEST body.
pub fn end_body(app_status: u32, protocol_status: u8) -> Vec<u8> {
    let mut body = app_status.to_be_bytes().to_vec();
    body.extend_from_slice(&[protocol_status, 0, 0, 0]);
    body
}

/// A BEGIN_REQUEST body for the responder role.
pub fn begin_body(flags: u8) -> Vec<u8> {
    let mut body = RESPONDER.to_be_bytes().to_vec();
    body.extend_from_slice(&[flags, 0, 0, 0, 0, 0]);
    body
}

/// What a web server gets back for one request: the CGI response (head and body) from the
/// STDOUT records, and the END_REQUEST app status.
#[derive(Debug)]
pub struct Answer {
    pub stdout: Vec<u8>,
    pub app_status: u32,
}

impl Answer {
    /// The `Status:` of the CGI head (200 when absent).
    pub fn status(&self) -> u16 {
        let head = self.head();
        head.lines()
            .find_map(|l| l.strip_prefix("Status:").map(str::trim))
            .and_then(|s| s.split(' ').next()?.parse().ok())
            .unwrap_or(200)
    }

    /// The CGI head as text.
    pub fn head(&self) -> String {
        let end = find(&self.stdout, b"\r\n\r\n").unwrap_or(self.stdout.len());
        String::from_utf8_lossy(&self.stdout[..end]).into_owned()
    }

    /// The body after the CGI head.
    pub fn body(&self) -> &[u8] {
        match find(&self.stdout, b"\r\n\r\n") {
            Some(at) => &self.stdout[at + 4..],
            None => &[],
        }
    }
}

/// Sends one responder request (as a web server does) and reads its answer.
pub fn request(
    conn: &mut (impl Read + Write),
    id: u16,
    keep_conn: bool,
    params: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Answer> {
    let mut out = Vec::new();
    put_record(
        &mut out,
        BEGIN_REQUEST,
        id,
        &begin_body(if keep_conn { KEEP_CONN } else { 0 }),
    );
    let mut encoded = Vec::new();
    for (name, value) in params {
        put_pair(&mut encoded, name.as_bytes(), value.as_bytes());
    }
    put_stream(&mut out, PARAMS, id, &encoded);
    put_record(&mut out, PARAMS, id, &[]);
    put_stream(&mut out, STDIN, id, body);
    put_record(&mut out, STDIN, id, &[]);
    conn.write_all(&out)?;
    conn.flush()?;
    let mut stdout = Vec::new();
    loop {
        let Some(record) = read_record(conn)? else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed before END_REQUEST",
            ));
        };
        if record.id != id {
            continue;
        }
        match record.kind {
            STDOUT => stdout.extend_from_slice(&record.content),
            END_REQUEST => {
                let app_status = record
                    .content
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(u32::MAX);
                return Ok(Answer { stdout, app_status });
            }
            _ => {}
        }
    }
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let mut out = Vec::new();
        put_pair(&mut out, b"A", &[b'x'; 300]);
        put_pair(&mut out, b"REQUEST_METHOD", b"GET");
        let decoded = pairs(&out);
        assert_eq!(decoded[0].1.len(), 300);
        assert_eq!(decoded[1], ("REQUEST_METHOD".into(), "GET".into()));
    }
}
