//! FastCGI 1.0 wire format: record encoding (BEGIN_REQUEST, PARAMS, STDIN, ...), the
//! name-value pair encoding, and an incremental, zero-copy record decoder.
//!
//! Everything here works on in-memory buffers (`BytesMut`); sockets belong to the caller.
//! Emitted records carry no padding (the spec makes it optional; every reader must skip it).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;

/// The only protocol version FastCGI defines (`FCGI_VERSION_1`).
pub const VERSION_1: u8 = 1;

/// Size of every record header (`FCGI_HEADER_LEN`).
pub const HEADER_LEN: usize = 8;

/// Largest content a single record can carry (its length field is a `u16`).
pub const MAX_CONTENT: usize = 65535;

/// Largest name or value length the name-value encoding can express (31 bits).
pub const MAX_NAME_VALUE_LEN: usize = 0x7FFF_FFFF;

/// `FCGI_KEEP_CONN`: the application must keep the connection open after the request.
pub const FLAG_KEEP_CONN: u8 = 1;

/// The record request id reserved for management records (GET_VALUES & co).
pub const NULL_REQUEST_ID: u16 = 0;

/// A record's `type` byte; tells the receiver how to interpret the content.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    /// Starts a request (web server → application).
    BeginRequest = 1,
    /// Asks the application to abort a request.
    AbortRequest = 2,
    /// Ends a request (application → web server) with its status.
    EndRequest = 3,
    /// Stream of CGI meta-variables as name-value pairs.
    Params = 4,
    /// Stream of the request body.
    Stdin = 5,
    /// Stream of the CGI response.
    Stdout = 6,
    /// Stream of error output.
    Stderr = 7,
    /// Stream of the Filter role's extra data.
    Data = 8,
    /// Management query for application variables.
    GetValues = 9,
    /// Answer to `GetValues`.
    GetValuesResult = 10,
    /// Answer to a management record of a type the receiver does not know.
    UnknownType = 11,
}

impl RecordType {
    /// Maps a wire `type` byte back to the enum; `None` for types FastCGI 1.0 does not define.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::BeginRequest,
            2 => Self::AbortRequest,
            3 => Self::EndRequest,
            4 => Self::Params,
            5 => Self::Stdin,
            6 => Self::Stdout,
            7 => Self::Stderr,
            8 => Self::Data,
            9 => Self::GetValues,
            10 => Self::GetValuesResult,
            11 => Self::UnknownType,
            _ => return None,
        })
    }

    /// The spec's name for the type (`FCGI_` prefix dropped), for logs and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::BeginRequest => "BEGIN_REQUEST",
            Self::AbortRequest => "ABORT_REQUEST",
            Self::EndRequest => "END_REQUEST",
            Self::Params => "PARAMS",
            Self::Stdin => "STDIN",
            Self::Stdout => "STDOUT",
            Self::Stderr => "STDERR",
            Self::Data => "DATA",
            Self::GetValues => "GET_VALUES",
            Self::GetValuesResult => "GET_VALUES_RESULT",
            Self::UnknownType => "UNKNOWN_TYPE",
        }
    }

    /// Management records use request id 0; all others belong to a request.
    pub fn is_management(self) -> bool {
        matches!(
            self,
            Self::GetValues | Self::GetValuesResult | Self::UnknownType
        )
    }

    /// The content length the spec fixes for this type, if it fixes one.
    fn fixed_content_len(self) -> Option<usize> {
        match self {
            Self::BeginRequest | Self::EndRequest | Self::UnknownType => Some(8),
            Self::AbortRequest => Some(0),
            _ => None,
        }
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The role a BEGIN_REQUEST asks the application to play.
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Produce the HTTP response (what CGI programs do); the only role fcgihost uses.
    Responder = 1,
    /// Decide whether a request is allowed.
    Authorizer = 2,
    /// Transform the DATA stream (a file) into the response.
    Filter = 3,
}

impl Role {
    /// Maps a wire role number back to the enum; `None` for unknown roles.
    pub fn from_u16(value: u16) -> Option<Self> {
        match value {
            1 => Some(Self::Responder),
            2 => Some(Self::Authorizer),
            3 => Some(Self::Filter),
            _ => None,
        }
    }
}

/// The protocol-level outcome an END_REQUEST reports.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolStatus {
    /// Normal end of request.
    RequestComplete = 0,
    /// The application refuses a second concurrent request on one connection.
    CantMpxConn = 1,
    /// The application is out of some resource (e.g. database connections).
    Overloaded = 2,
    /// The application does not implement the requested role.
    UnknownRole = 3,
}

impl ProtocolStatus {
    /// Maps a wire status byte back to the enum; `None` for values the spec does not define.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::RequestComplete),
            1 => Some(Self::CantMpxConn),
            2 => Some(Self::Overloaded),
            3 => Some(Self::UnknownRole),
            _ => None,
        }
    }
}

/// Why FastCGI input could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FcgiError {
    /// The header's version byte is not 1 (often: the peer does not speak FastCGI at all).
    #[error(
        "unsupported FastCGI record version {0} (expected 1; is the peer a FastCGI application?)"
    )]
    UnsupportedVersion(u8),
    /// The header's type byte is not one FastCGI 1.0 defines.
    #[error("unknown FastCGI record type {0}")]
    UnknownRecordType(u8),
    /// A record's content exceeds the decoder's configured limit.
    #[error("FastCGI {kind} record content of {len} bytes exceeds the limit of {max} bytes")]
    ContentTooLong {
        /// The record's type.
        kind: RecordType,
        /// Its declared content length.
        len: usize,
        /// The decoder's limit.
        max: usize,
    },
    /// A record whose type fixes the content length has a different one.
    #[error("malformed FastCGI {kind} record: content is {got} bytes, expected {expected}")]
    BadContentLength {
        /// The record's type.
        kind: RecordType,
        /// The length the spec requires.
        expected: usize,
        /// The length received.
        got: usize,
    },
    /// A management record (GET_VALUES & co) with a request id other than 0.
    #[error(
        "malformed FastCGI {kind} record: management records use request id 0, got {request_id}"
    )]
    ManagementRequestId {
        /// The record's type.
        kind: RecordType,
        /// The non-zero id received.
        request_id: u16,
    },
    /// An application record (BEGIN_REQUEST, STDOUT, ...) with the reserved request id 0.
    #[error("malformed FastCGI {kind} record: request id 0 is reserved for management records")]
    NullRequestId {
        /// The record's type.
        kind: RecordType,
    },
    /// Name-value pair data that ends inside a length or a name/value.
    #[error("malformed FastCGI name-value pairs: truncated pair at byte {offset}")]
    TruncatedNameValue {
        /// Offset of the pair that is cut short.
        offset: usize,
    },
}

/// Writes one record header.
#[inline]
fn put_header(buf: &mut BytesMut, kind: RecordType, request_id: u16, content_len: u16) {
    let id = request_id.to_be_bytes();
    let len = content_len.to_be_bytes();
    buf.put_slice(&[VERSION_1, kind as u8, id[0], id[1], len[0], len[1], 0, 0]);
}

/// Writes a record whose content is known to fit (`content.len() <= MAX_CONTENT`).
#[inline]
fn put_small_record(buf: &mut BytesMut, kind: RecordType, request_id: u16, content: &[u8]) {
    debug_assert!(content.len() <= MAX_CONTENT);
    buf.reserve(HEADER_LEN + content.len());
    put_header(buf, kind, request_id, content.len() as u16);
    buf.put_slice(content);
}

/// Starts a request: BEGIN_REQUEST with the role and the keep-connection flag.
pub fn put_begin_request(buf: &mut BytesMut, request_id: u16, role: Role, keep_conn: bool) {
    let role = (role as u16).to_be_bytes();
    let flags = if keep_conn { FLAG_KEEP_CONN } else { 0 };
    put_small_record(
        buf,
        RecordType::BeginRequest,
        request_id,
        &[role[0], role[1], flags, 0, 0, 0, 0, 0],
    );
}

/// Writes `data` as records of a stream type (PARAMS, STDIN, STDOUT, ...), split into records
/// of at most `MAX_CONTENT` bytes. Empty `data` writes the single empty record that ends the stream.
pub fn put_stream(buf: &mut BytesMut, kind: RecordType, request_id: u16, data: &[u8]) {
    if data.is_empty() {
        put_small_record(buf, kind, request_id, &[]);
        return;
    }
    let records = data.len().div_ceil(MAX_CONTENT);
    buf.reserve(data.len() + records * HEADER_LEN);
    for chunk in data.chunks(MAX_CONTENT) {
        put_header(buf, kind, request_id, chunk.len() as u16);
        buf.put_slice(chunk);
    }
}

/// Asks the application to abort a request: ABORT_REQUEST (no content).
pub fn put_abort_request(buf: &mut BytesMut, request_id: u16) {
    put_small_record(buf, RecordType::AbortRequest, request_id, &[]);
}

/// Rewrites the request id of every record in `records` (whole records, as the `put_*`
/// functions write them), so a request's records can be built before its connection
/// assigns the id. A trailing partial header is left alone.
pub fn set_request_id(records: &mut [u8], request_id: u16) {
    let id = request_id.to_be_bytes();
    let mut at = 0;
    while let Some(header) = records.get_mut(at..at + HEADER_LEN) {
        header[2..4].copy_from_slice(&id);
        let content = usize::from(u16::from_be_bytes([header[4], header[5]]));
        at += HEADER_LEN + content + usize::from(header[6]);
    }
}

/// Ends a request (application side, for tests and the FastCGI front door): END_REQUEST.
pub fn put_end_request(
    buf: &mut BytesMut,
    request_id: u16,
    app_status: u32,
    protocol_status: ProtocolStatus,
) {
    let s = app_status.to_be_bytes();
    put_small_record(
        buf,
        RecordType::EndRequest,
        request_id,
        &[s[0], s[1], s[2], s[3], protocol_status as u8, 0, 0, 0],
    );
}

/// Answers a management record of an unknown type: UNKNOWN_TYPE naming that type byte.
pub fn put_unknown_type(buf: &mut BytesMut, unknown: u8) {
    put_small_record(
        buf,
        RecordType::UnknownType,
        NULL_REQUEST_ID,
        &[unknown, 0, 0, 0, 0, 0, 0, 0],
    );
}

/// Queries application variables (e.g. `FCGI_MAX_CONNS`): GET_VALUES with empty values.
/// A list too long for one record is split over several GET_VALUES records.
pub fn put_get_values(buf: &mut BytesMut, names: &[&str]) {
    put_pairs_record(
        buf,
        RecordType::GetValues,
        names.iter().map(|n| (n.as_bytes(), &b""[..])),
    );
}

/// Answers GET_VALUES (application side, for tests and the FastCGI front door).
pub fn put_get_values_result(buf: &mut BytesMut, pairs: &[(&str, &str)]) {
    put_pairs_record(
        buf,
        RecordType::GetValuesResult,
        pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
    );
}

/// Writes management records holding whole name-value pairs, starting a new record whenever
/// the next pair would not fit. (A single pair over `MAX_CONTENT` cannot be expressed in a
/// non-stream record and is dropped; no real variable name comes close.)
fn put_pairs_record<'p>(
    buf: &mut BytesMut,
    kind: RecordType,
    pairs: impl Iterator<Item = (&'p [u8], &'p [u8])>,
) {
    let mut header_at = buf.len();
    put_header(buf, kind, NULL_REQUEST_ID, 0);
    for (name, value) in pairs {
        let pair_len = name_value_len(name, value);
        if pair_len > MAX_CONTENT {
            continue;
        }
        let used = buf.len() - header_at - HEADER_LEN;
        if used + pair_len > MAX_CONTENT {
            patch_len(buf, header_at, used);
            header_at = buf.len();
            put_header(buf, kind, NULL_REQUEST_ID, 0);
        }
        put_name_value(buf, name, value);
    }
    let used = buf.len() - header_at - HEADER_LEN;
    patch_len(buf, header_at, used);
}

/// Overwrites the content length of the record header at `header_at`.
#[inline]
fn patch_len(buf: &mut BytesMut, header_at: usize, len: usize) {
    debug_assert!(len <= MAX_CONTENT);
    let len = (len as u16).to_be_bytes();
    buf[header_at + 4] = len[0];
    buf[header_at + 5] = len[1];
}

/// Encodes a name or value length: 1 byte below 128, else 4 bytes with the top bit set.
/// Returns the bytes and how many of them to use. Lengths are clamped to `MAX_NAME_VALUE_LEN`.
#[inline]
fn encode_len(len: usize) -> ([u8; 4], usize) {
    if len < 0x80 {
        ([len as u8, 0, 0, 0], 1)
    } else {
        let len = len.min(MAX_NAME_VALUE_LEN) as u32 | 0x8000_0000;
        (len.to_be_bytes(), 4)
    }
}

/// Encoded size of a name-value pair (lengths + bytes).
#[inline]
pub fn name_value_len(name: &[u8], value: &[u8]) -> usize {
    let len_of = |n: usize| if n < 0x80 { 1 } else { 4 };
    len_of(name.len()) + len_of(value.len()) + name.len() + value.len()
}

/// Appends one name-value pair (FastCGI section 3.4) to any buffer: lengths of 1 byte below
/// 128, 4 bytes otherwise. Names and values longer than `MAX_NAME_VALUE_LEN` (2 GiB) cannot be
/// expressed and are truncated to it.
pub fn put_name_value<B: BufMut>(out: &mut B, name: &[u8], value: &[u8]) {
    let name = &name[..name.len().min(MAX_NAME_VALUE_LEN)];
    let value = &value[..value.len().min(MAX_NAME_VALUE_LEN)];
    let (n, nl) = encode_len(name.len());
    let (v, vl) = encode_len(value.len());
    out.put_slice(&n[..nl]);
    out.put_slice(&v[..vl]);
    out.put_slice(name);
    out.put_slice(value);
}

/// Writes the PARAMS stream of one request straight into the output buffer.
///
/// It keeps one PARAMS record open, writes pairs into it and back-patches its length when it
/// closes, so no intermediate buffer is needed. A pair that does not fit in the open record
/// starts a new one (readers such as PHP-FPM parse pairs per record); only a pair larger than
/// `MAX_CONTENT` itself is split across records. Call [`ParamsWriter::finish`] to end the
/// stream; dropping the writer without it leaves a truncated, unterminated stream.
#[must_use = "call finish() to terminate the PARAMS stream"]
#[derive(Debug)]
pub struct ParamsWriter<'a> {
    buf: &'a mut BytesMut,
    request_id: u16,
    /// Offset in `buf` of the open record's header.
    header_at: usize,
}

impl<'a> ParamsWriter<'a> {
    /// Starts the PARAMS stream of `request_id` at the end of `buf`.
    pub fn new(buf: &'a mut BytesMut, request_id: u16) -> Self {
        let header_at = buf.len();
        put_header(buf, RecordType::Params, request_id, 0);
        Self {
            buf,
            request_id,
            header_at,
        }
    }

    /// Bytes already written into the open record.
    #[inline]
    fn open_len(&self) -> usize {
        self.buf.len() - self.header_at - HEADER_LEN
    }

    /// Closes the open record (patching its length) and opens a new, empty one.
    fn next_record(&mut self) {
        let used = self.open_len();
        patch_len(self.buf, self.header_at, used);
        self.header_at = self.buf.len();
        put_header(self.buf, RecordType::Params, self.request_id, 0);
    }

    /// Appends raw stream bytes, opening new records at the `MAX_CONTENT` boundary.
    #[inline]
    fn write(&mut self, data: &[u8]) {
        if data.len() <= MAX_CONTENT - self.open_len() {
            self.buf.extend_from_slice(data);
        } else {
            self.write_split(data);
        }
    }

    /// `write` for data that crosses the end of the open record.
    #[cold]
    fn write_split(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = MAX_CONTENT - self.open_len();
            if room == 0 {
                self.next_record();
                continue;
            }
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
    }

    /// Prepares for a pair of `pair_len` encoded bytes: starts a new record when the pair
    /// would not fit in the open one, and reserves room.
    #[inline]
    fn begin_pair(&mut self, pair_len: usize) {
        let used = self.open_len();
        if used > 0 && used + pair_len > MAX_CONTENT {
            self.next_record();
        }
        let records = pair_len / MAX_CONTENT;
        self.buf.reserve(pair_len + records * HEADER_LEN);
    }

    /// Reserves room for about `additional` more bytes of pairs (record headers included), so
    /// a caller that can estimate the stream's size gets a single allocation.
    pub fn reserve(&mut self, additional: usize) {
        self.buf
            .reserve(additional + (additional / MAX_CONTENT + 1) * HEADER_LEN);
    }

    /// Adds one name-value pair (e.g. `REQUEST_METHOD` = `GET`).
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        let name = &name[..name.len().min(MAX_NAME_VALUE_LEN)];
        let value = &value[..value.len().min(MAX_NAME_VALUE_LEN)];
        let (n, nl) = encode_len(name.len());
        let (v, vl) = encode_len(value.len());
        self.begin_pair(nl + vl + name.len() + value.len());
        let mut lens = [0u8; 8];
        lens[..nl].copy_from_slice(&n[..nl]);
        lens[nl..nl + vl].copy_from_slice(&v[..vl]);
        self.write(&lens[..nl + vl]);
        self.write(name);
        self.write(value);
    }

    /// Adds one pair whose name and value are produced piecewise, so callers can build them
    /// (prefix + transformed header name, joined header values, decoded paths) directly in the
    /// output buffer. `name_len` and `value_len` must be the exact byte counts `fill` writes
    /// through the [`PairSink`]; excess bytes are ignored and a shortfall is zero-filled, so a
    /// miscount garbles that one pair but never the record framing.
    pub fn push_with(
        &mut self,
        name_len: usize,
        value_len: usize,
        fill: impl FnOnce(&mut PairSink<'_, 'a>),
    ) {
        let name_len = name_len.min(MAX_NAME_VALUE_LEN);
        let value_len = value_len.min(MAX_NAME_VALUE_LEN);
        let (n, nl) = encode_len(name_len);
        let (v, vl) = encode_len(value_len);
        self.begin_pair(nl + vl + name_len + value_len);
        let mut lens = [0u8; 8];
        lens[..nl].copy_from_slice(&n[..nl]);
        lens[nl..nl + vl].copy_from_slice(&v[..vl]);
        self.write(&lens[..nl + vl]);
        let mut sink = PairSink {
            writer: self,
            left: name_len + value_len,
        };
        fill(&mut sink);
        let left = sink.left;
        debug_assert_eq!(
            left, 0,
            "push_with: declared lengths exceed the bytes written"
        );
        const ZEROS: [u8; 64] = [0; 64];
        let mut left = left;
        while left > 0 {
            let n = left.min(ZEROS.len());
            self.write(&ZEROS[..n]);
            left -= n;
        }
    }

    /// Ends the stream: closes the open record and writes the empty PARAMS record.
    pub fn finish(self) {
        let used = self.open_len();
        if used > 0 {
            patch_len(self.buf, self.header_at, used);
            put_header(self.buf, RecordType::Params, self.request_id, 0);
        }
        // An open record with no content is already the empty terminator.
    }
}

/// Receives the bytes of one pair for [`ParamsWriter::push_with`]: name bytes first, then value
/// bytes, in any number of pieces. Writes beyond the declared total are ignored.
#[derive(Debug)]
pub struct PairSink<'w, 'a> {
    writer: &'w mut ParamsWriter<'a>,
    left: usize,
}

impl PairSink<'_, '_> {
    /// Appends bytes as they are.
    #[inline]
    pub fn put(&mut self, bytes: &[u8]) {
        let bytes = &bytes[..bytes.len().min(self.left)];
        self.left -= bytes.len();
        self.writer.write(bytes);
    }

    /// Appends bytes passed through `map` (e.g. ASCII upper-casing), transformed in place in
    /// the output buffer.
    #[inline]
    pub fn put_mapped(&mut self, bytes: &[u8], map: impl Fn(u8) -> u8) {
        let mut bytes = &bytes[..bytes.len().min(self.left)];
        self.left -= bytes.len();
        while !bytes.is_empty() {
            let room = MAX_CONTENT - self.writer.open_len();
            if room == 0 {
                self.writer.next_record();
                continue;
            }
            let n = room.min(bytes.len());
            let start = self.writer.buf.len();
            self.writer.buf.extend_from_slice(&bytes[..n]);
            for b in &mut self.writer.buf[start..] {
                *b = map(*b);
            }
            bytes = &bytes[n..];
        }
    }

    /// Appends the bytes an iterator yields (e.g. a percent-decoder), up to the declared total.
    pub fn put_iter(&mut self, iter: impl Iterator<Item = u8>) {
        let mut iter = iter.fuse();
        while self.left > 0 {
            let room = MAX_CONTENT - self.writer.open_len();
            if room == 0 {
                self.writer.next_record();
                continue;
            }
            let want = room.min(self.left);
            let before = self.writer.buf.len();
            self.writer.buf.extend(iter.by_ref().take(want));
            let got = self.writer.buf.len() - before;
            self.left -= got;
            if got < want {
                return;
            }
        }
    }
}

/// One decoded record; `content` excludes header and padding and shares the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record type.
    pub kind: RecordType,
    /// The request it belongs to (0 for management records).
    pub request_id: u16,
    /// The content bytes.
    pub content: Bytes,
}

/// Content of an END_REQUEST record: how the application finished a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndRequest {
    /// The application's exit status (the CGI program's exit code).
    pub app_status: u32,
    /// The raw protocol status; see [`ProtocolStatus`] / [`EndRequest::protocol_status`].
    pub protocol_status: u8,
}

impl EndRequest {
    /// Parses END_REQUEST content (exactly 8 bytes).
    pub fn parse(content: &[u8]) -> Result<EndRequest, FcgiError> {
        let body = fixed_body(RecordType::EndRequest, content)?;
        Ok(EndRequest {
            app_status: u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            protocol_status: body[4],
        })
    }

    /// The protocol status as an enum; `None` for values the spec does not define.
    pub fn protocol_status(&self) -> Option<ProtocolStatus> {
        ProtocolStatus::from_u8(self.protocol_status)
    }
}

/// Content of a BEGIN_REQUEST record, as a FastCGI application (the front door) receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeginRequest {
    /// The raw role number; see [`Role::from_u16`] (unknown roles get END_REQUEST UnknownRole).
    pub role: u16,
    /// Whether the web server keeps the connection open after this request.
    pub keep_conn: bool,
}

impl BeginRequest {
    /// Parses BEGIN_REQUEST content (exactly 8 bytes).
    pub fn parse(content: &[u8]) -> Result<BeginRequest, FcgiError> {
        let body = fixed_body(RecordType::BeginRequest, content)?;
        Ok(BeginRequest {
            role: u16::from_be_bytes([body[0], body[1]]),
            keep_conn: body[2] & FLAG_KEEP_CONN != 0,
        })
    }
}

/// Checks that `content` is exactly 8 bytes, as the fixed-size bodies are.
fn fixed_body(kind: RecordType, content: &[u8]) -> Result<&[u8; 8], FcgiError> {
    content.try_into().map_err(|_| FcgiError::BadContentLength {
        kind,
        expected: 8,
        got: content.len(),
    })
}

/// Cuts whole records off the front of a receive buffer, without copying their content.
#[derive(Debug, Clone)]
pub struct RecordDecoder {
    max_content: usize,
}

impl Default for RecordDecoder {
    fn default() -> Self {
        Self {
            max_content: MAX_CONTENT,
        }
    }
}

impl RecordDecoder {
    /// A decoder that rejects records whose content exceeds `max_content` bytes.
    pub fn with_max_content(max_content: usize) -> Self {
        Self { max_content }
    }

    /// Takes one whole record (header, content, padding) off the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold a whole record (after reserving room for
    /// it); errors on a version other than 1, an unknown type, content over the limit, or a
    /// record malformed for its type (wrong fixed length, wrong use of request id 0). A header
    /// error is reported as soon as the header bytes are there, and `buf` is left untouched.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Record>, FcgiError> {
        if let Some(&version) = buf.first() {
            if version != VERSION_1 {
                return Err(FcgiError::UnsupportedVersion(version));
            }
        }
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = RecordType::from_u8(buf[1]).ok_or(FcgiError::UnknownRecordType(buf[1]))?;
        let request_id = u16::from_be_bytes([buf[2], buf[3]]);
        let content_len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
        let padding_len = usize::from(buf[6]);
        self.check_header(kind, request_id, content_len)?;
        let total = HEADER_LEN + content_len + padding_len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let mut record = buf.split_to(total);
        record.advance(HEADER_LEN);
        record.truncate(content_len);
        Ok(Some(Record {
            kind,
            request_id,
            content: record.freeze(),
        }))
    }

    /// Validates a header against the decoder limit and the per-type rules of the spec.
    fn check_header(
        &self,
        kind: RecordType,
        request_id: u16,
        content_len: usize,
    ) -> Result<(), FcgiError> {
        if content_len > self.max_content {
            return Err(FcgiError::ContentTooLong {
                kind,
                len: content_len,
                max: self.max_content,
            });
        }
        if let Some(expected) = kind.fixed_content_len() {
            if content_len != expected {
                return Err(FcgiError::BadContentLength {
                    kind,
                    expected,
                    got: content_len,
                });
            }
        }
        match (kind.is_management(), request_id == NULL_REQUEST_ID) {
            (true, false) => Err(FcgiError::ManagementRequestId { kind, request_id }),
            (false, true) => Err(FcgiError::NullRequestId { kind }),
            _ => Ok(()),
        }
    }
}

/// Iterates the name-value pairs of PARAMS / GET_VALUES content, borrowing from it.
#[derive(Debug, Clone)]
pub struct NameValues<'c> {
    content: &'c [u8],
    pos: usize,
}

impl<'c> NameValues<'c> {
    /// Iterates the pairs in `content` (a whole PARAMS stream or GET_VALUES body).
    pub fn new(content: &'c [u8]) -> Self {
        Self { content, pos: 0 }
    }

    /// Reads one length at `self.pos`, advancing past it.
    fn read_len(&mut self) -> Option<usize> {
        let rest = self.content.get(self.pos..)?;
        let first = *rest.first()?;
        if first < 0x80 {
            self.pos += 1;
            Some(usize::from(first))
        } else {
            let b = rest.get(..4)?;
            self.pos += 4;
            Some((u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7FFF_FFFF) as usize)
        }
    }

    /// Reads one whole pair, or `None` if the content ends inside it.
    fn read_pair(&mut self) -> Option<NameValue<'c>> {
        let name_len = self.read_len()?;
        let value_len = self.read_len()?;
        let name_end = self.pos.checked_add(name_len)?;
        let value_end = name_end.checked_add(value_len)?;
        let name = self.content.get(self.pos..name_end)?;
        let value = self.content.get(name_end..value_end)?;
        self.pos = value_end;
        Some((name, value))
    }
}

impl<'c> Iterator for NameValues<'c> {
    type Item = Result<NameValue<'c>, FcgiError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.content.len() {
            return None;
        }
        let offset = self.pos;
        match self.read_pair() {
            Some(pair) => Some(Ok(pair)),
            None => {
                self.pos = self.content.len();
                Some(Err(FcgiError::TruncatedNameValue { offset }))
            }
        }
    }
}

/// One name-value pair borrowed from record content: `(name, value)`.
pub type NameValue<'c> = (&'c [u8], &'c [u8]);

/// Parses all name-value pairs of PARAMS / GET_VALUES content.
pub fn parse_name_values(content: &[u8]) -> Result<Vec<NameValue<'_>>, FcgiError> {
    NameValues::new(content).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn set_request_id_rewrites_every_record_and_keeps_the_content() {
        let mut buf = BytesMut::new();
        put_begin_request(&mut buf, 1, Role::Responder, true);
        put_stream(&mut buf, RecordType::Params, 1, &[0x80; 300]);
        put_stream(&mut buf, RecordType::Params, 1, &[]);
        put_stream(&mut buf, RecordType::Stdin, 1, &[]);
        let before = buf.clone();
        set_request_id(&mut buf, 7);
        let mut decoder = RecordDecoder::default();
        let mut kinds = Vec::new();
        let mut original = before.clone();
        while let Some(record) = decoder.decode(&mut buf).expect("valid records") {
            let old = decoder
                .decode(&mut original)
                .expect("valid")
                .expect("same count");
            assert_eq!(record.request_id, 7);
            assert_eq!(record.content, old.content);
            kinds.push(record.kind);
        }
        assert!(original.is_empty());
        assert_eq!(
            kinds,
            [
                RecordType::BeginRequest,
                RecordType::Params,
                RecordType::Params,
                RecordType::Stdin
            ]
        );
    }

    fn decode_all(buf: &mut BytesMut) -> Vec<Record> {
        let mut dec = RecordDecoder::default();
        let mut out = Vec::new();
        while let Some(r) = dec.decode(buf).unwrap() {
            out.push(r);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        out
    }

    /// Concatenated content of the records of one stream, checking the terminator.
    fn stream_content(records: &[Record], kind: RecordType, id: u16) -> Vec<u8> {
        let mine: Vec<_> = records.iter().filter(|r| r.kind == kind).collect();
        assert!(mine.iter().all(|r| r.request_id == id));
        assert!(mine.last().unwrap().content.is_empty(), "no terminator");
        assert!(mine[..mine.len() - 1].iter().all(|r| !r.content.is_empty()));
        mine.iter()
            .flat_map(|r| r.content.iter().copied())
            .collect()
    }

    #[test]
    fn record_type_round_trips() {
        for v in 1..=11u8 {
            let t = RecordType::from_u8(v).unwrap();
            assert_eq!(t as u8, v);
        }
        assert_eq!(RecordType::from_u8(0), None);
        assert_eq!(RecordType::from_u8(12), None);
        assert_eq!(RecordType::EndRequest.to_string(), "END_REQUEST");
        assert_eq!(Role::from_u16(1), Some(Role::Responder));
        assert_eq!(Role::from_u16(4), None);
        assert_eq!(ProtocolStatus::from_u8(2), Some(ProtocolStatus::Overloaded));
        assert_eq!(ProtocolStatus::from_u8(4), None);
    }

    #[test]
    fn begin_request_bytes_and_round_trip() {
        let mut buf = BytesMut::new();
        put_begin_request(&mut buf, 0x0102, Role::Responder, true);
        assert_eq!(
            &buf[..],
            &[1, 1, 1, 2, 0, 8, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0][..]
        );
        let recs = decode_all(&mut buf);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].kind, RecordType::BeginRequest);
        assert_eq!(recs[0].request_id, 0x0102);
        let b = BeginRequest::parse(&recs[0].content).unwrap();
        assert_eq!(
            b,
            BeginRequest {
                role: 1,
                keep_conn: true
            }
        );
        put_begin_request(&mut buf, 7, Role::Filter, false);
        let recs = decode_all(&mut buf);
        let b = BeginRequest::parse(&recs[0].content).unwrap();
        assert_eq!((b.role, b.keep_conn), (3, false));
    }

    #[test]
    fn end_request_round_trip() {
        let mut buf = BytesMut::new();
        put_end_request(&mut buf, 9, 0xDEAD_BEEF, ProtocolStatus::Overloaded);
        let recs = decode_all(&mut buf);
        assert_eq!(recs[0].kind, RecordType::EndRequest);
        assert_eq!(recs[0].request_id, 9);
        let e = EndRequest::parse(&recs[0].content).unwrap();
        assert_eq!(e.app_status, 0xDEAD_BEEF);
        assert_eq!(e.protocol_status(), Some(ProtocolStatus::Overloaded));
        assert!(matches!(
            EndRequest::parse(&[0; 7]),
            Err(FcgiError::BadContentLength {
                expected: 8,
                got: 7,
                ..
            })
        ));
        assert!(BeginRequest::parse(&[0; 9]).is_err());
    }

    #[test]
    fn abort_and_unknown_type_round_trip() {
        let mut buf = BytesMut::new();
        put_abort_request(&mut buf, 3);
        put_unknown_type(&mut buf, 42);
        let recs = decode_all(&mut buf);
        assert_eq!(recs[0].kind, RecordType::AbortRequest);
        assert_eq!(recs[0].request_id, 3);
        assert!(recs[0].content.is_empty());
        assert_eq!(recs[1].kind, RecordType::UnknownType);
        assert_eq!(recs[1].request_id, 0);
        assert_eq!(recs[1].content[0], 42);
    }

    #[test]
    fn stream_splits_and_terminates() {
        let data: Vec<u8> = (0..MAX_CONTENT * 2 + 10).map(|i| i as u8).collect();
        let mut buf = BytesMut::new();
        put_stream(&mut buf, RecordType::Stdin, 1, &data);
        put_stream(&mut buf, RecordType::Stdin, 1, b"");
        let recs = decode_all(&mut buf);
        let lens: Vec<_> = recs.iter().map(|r| r.content.len()).collect();
        assert_eq!(lens, vec![MAX_CONTENT, MAX_CONTENT, 10, 0]);
        assert_eq!(stream_content(&recs, RecordType::Stdin, 1), data);

        let mut buf = BytesMut::new();
        put_stream(&mut buf, RecordType::Stdout, 2, &data[..MAX_CONTENT]);
        assert_eq!(buf.len(), HEADER_LEN + MAX_CONTENT);
        put_stream(&mut buf, RecordType::Stdout, 2, b"");
        assert_eq!(&buf[HEADER_LEN + MAX_CONTENT..], &[1, 6, 0, 2, 0, 0, 0, 0]);
    }

    #[test]
    fn get_values_round_trip() {
        let mut buf = BytesMut::new();
        put_get_values(
            &mut buf,
            &["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"],
        );
        put_get_values_result(
            &mut buf,
            &[("FCGI_MAX_CONNS", "1"), ("FCGI_MPXS_CONNS", "0")],
        );
        let recs = decode_all(&mut buf);
        assert_eq!(recs[0].kind, RecordType::GetValues);
        assert_eq!(recs[0].request_id, 0);
        let pairs = parse_name_values(&recs[0].content).unwrap();
        assert_eq!(
            pairs,
            vec![
                (&b"FCGI_MAX_CONNS"[..], &b""[..]),
                (b"FCGI_MAX_REQS", b""),
                (b"FCGI_MPXS_CONNS", b"")
            ]
        );
        assert_eq!(recs[1].kind, RecordType::GetValuesResult);
        let pairs = parse_name_values(&recs[1].content).unwrap();
        assert_eq!(pairs[1], (&b"FCGI_MPXS_CONNS"[..], &b"0"[..]));
    }

    #[test]
    fn get_values_split_into_whole_pair_records() {
        let names: Vec<String> = (0..1000).map(|i| format!("NAME_{i:0>100}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut buf = BytesMut::new();
        put_get_values(&mut buf, &refs);
        let recs = decode_all(&mut buf);
        assert!(recs.len() > 1);
        let mut all = Vec::new();
        for r in &recs {
            assert_eq!(r.kind, RecordType::GetValues);
            all.extend(
                parse_name_values(&r.content)
                    .unwrap()
                    .into_iter()
                    .map(|(n, _)| n.to_vec()),
            );
        }
        assert_eq!(all.len(), 1000);
        assert_eq!(all[999], names[999].as_bytes());
    }

    #[test]
    fn name_value_length_boundaries() {
        for (len, width) in [(0usize, 1usize), (127, 1), (128, 4), (300, 4), (70_000, 4)] {
            let value = vec![b'v'; len];
            let mut out = Vec::new();
            put_name_value(&mut out, b"N", &value);
            assert_eq!(out.len(), 1 + width + 1 + len, "len {len}");
            assert_eq!(out.len(), name_value_len(b"N", &value));
            if width == 1 {
                assert_eq!(out[1], len as u8);
            } else {
                assert_eq!(out[1] & 0x80, 0x80);
                let n = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) & 0x7FFF_FFFF;
                assert_eq!(n as usize, len);
            }
            let pairs = parse_name_values(&out).unwrap();
            assert_eq!(pairs, vec![(&b"N"[..], &value[..])]);
        }
        // 128-byte name: 4-byte name length, 1-byte value length.
        let name = vec![b'n'; 128];
        let mut out = BytesMut::new();
        put_name_value(&mut out, &name, b"x");
        assert_eq!(&out[..5], &[0x80, 0, 0, 128, 1]);
        assert_eq!(
            parse_name_values(&out).unwrap(),
            vec![(&name[..], &b"x"[..])]
        );
    }

    #[test]
    fn truncated_name_values_rejected() {
        let mut out = Vec::new();
        put_name_value(&mut out, b"NAME", b"value");
        put_name_value(&mut out, b"LONG", &[b'x'; 200]);
        for cut in 1..out.len() {
            let r = parse_name_values(&out[..cut]);
            if cut == 11 {
                assert_eq!(r.unwrap().len(), 1);
            } else {
                let err = r.unwrap_err();
                let want = if cut < 11 { 0 } else { 11 };
                assert_eq!(err, FcgiError::TruncatedNameValue { offset: want });
            }
        }
        assert!(parse_name_values(&[]).unwrap().is_empty());
    }

    #[test]
    fn params_writer_small() {
        let mut buf = BytesMut::from(&b"prefix"[..]);
        let mut w = ParamsWriter::new(&mut buf, 5);
        w.push(b"REQUEST_METHOD", b"GET");
        w.push(b"EMPTY", b"");
        w.push_with(6, 11, |s| {
            s.put(b"HTTP_");
            s.put_mapped(b"x", |b| b.to_ascii_uppercase());
            s.put(b"a, ");
            s.put_iter(b"b%20c".iter().copied());
            s.put(b"def");
        });
        w.finish();
        assert_eq!(&buf[..6], b"prefix");
        let _ = buf.split_to(6);
        let recs = decode_all(&mut buf);
        assert_eq!(recs.len(), 2);
        let content = stream_content(&recs, RecordType::Params, 5);
        assert_eq!(
            parse_name_values(&content).unwrap(),
            vec![
                (&b"REQUEST_METHOD"[..], &b"GET"[..]),
                (b"EMPTY", b""),
                (b"HTTP_X", b"a, b%20cdef"),
            ]
        );
    }

    #[test]
    fn params_writer_empty_stream_is_one_terminator() {
        let mut buf = BytesMut::new();
        ParamsWriter::new(&mut buf, 1).finish();
        assert_eq!(&buf[..], &[1, 4, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn params_writer_splits_large_values() {
        let big = vec![b'a'; 100 * 1024];
        let mut buf = BytesMut::new();
        let mut w = ParamsWriter::new(&mut buf, 1);
        w.push(b"A", b"1");
        w.push(b"HTTP_BIG", &big);
        w.push(b"B", b"2");
        w.push_with(8, big.len(), |s| {
            s.put(b"HTTP_BIG");
            s.put_mapped(&big, |b| b.to_ascii_uppercase());
        });
        w.push_with(4, big.len(), |s| {
            s.put(b"ITER");
            s.put_iter(big.iter().map(|_| b'i'));
        });
        w.finish();
        let recs = decode_all(&mut buf);
        assert!(recs.iter().all(|r| r.content.len() <= MAX_CONTENT));
        // The first small pair sits alone: the big pair starts a new record.
        assert_eq!(recs[0].content.len(), 4);
        let content = stream_content(&recs, RecordType::Params, 1);
        let upper = vec![b'A'; big.len()];
        let iter = vec![b'i'; big.len()];
        assert_eq!(
            parse_name_values(&content).unwrap(),
            vec![
                (&b"A"[..], &b"1"[..]),
                (b"HTTP_BIG", &big[..]),
                (b"B", b"2"),
                (b"HTTP_BIG", &upper[..]),
                (b"ITER", &iter[..]),
            ]
        );
    }

    #[test]
    fn params_writer_keeps_pairs_whole_within_records() {
        let value = vec![b'v'; 1000];
        let mut buf = BytesMut::new();
        let mut w = ParamsWriter::new(&mut buf, 2);
        for _ in 0..200 {
            w.push(b"HTTP_X_SOMETHING", &value);
        }
        w.finish();
        let recs = decode_all(&mut buf);
        assert!(recs.len() > 2);
        let mut count = 0;
        for r in &recs {
            // Each record parses on its own: no pair straddles a boundary.
            count += parse_name_values(&r.content).unwrap().len();
        }
        assert_eq!(count, 200);
    }

    #[test]
    fn push_with_miscount_keeps_framing() {
        let mut buf = BytesMut::new();
        let mut w = ParamsWriter::new(&mut buf, 1);
        w.push_with(1, 2, |s| {
            s.put(b"N");
            s.put(b"toolong");
        });
        w.finish();
        let recs = decode_all(&mut buf);
        let content = stream_content(&recs, RecordType::Params, 1);
        assert_eq!(
            parse_name_values(&content).unwrap(),
            vec![(&b"N"[..], &b"to"[..])]
        );
    }

    #[test]
    fn decoder_byte_by_byte_with_padding() {
        let mut wire = BytesMut::new();
        put_begin_request(&mut wire, 1, Role::Responder, true);
        // STDOUT "hello" with 3 bytes of padding, written by hand.
        wire.put_slice(&[1, 6, 0, 1, 0, 5, 3, 0]);
        wire.put_slice(b"hello\0\0\0");
        put_stream(&mut wire, RecordType::Stdout, 1, b"");
        put_end_request(&mut wire, 1, 0, ProtocolStatus::RequestComplete);

        let mut dec = RecordDecoder::default();
        let mut buf = BytesMut::new();
        let mut recs = Vec::new();
        for &b in wire.iter() {
            buf.put_u8(b);
            while let Some(r) = dec.decode(&mut buf).unwrap() {
                recs.push(r);
            }
        }
        assert!(buf.is_empty());
        let kinds: Vec<_> = recs.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            vec![
                RecordType::BeginRequest,
                RecordType::Stdout,
                RecordType::Stdout,
                RecordType::EndRequest
            ]
        );
        assert_eq!(&recs[1].content[..], b"hello");
        let e = EndRequest::parse(&recs[3].content).unwrap();
        assert_eq!(e.protocol_status(), Some(ProtocolStatus::RequestComplete));
    }

    #[test]
    fn decoder_leaves_following_bytes() {
        let mut buf = BytesMut::new();
        put_stream(&mut buf, RecordType::Stdout, 1, b"abc");
        buf.put_slice(&[1, 6]);
        let mut dec = RecordDecoder::default();
        let r = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(&r.content[..], b"abc");
        assert_eq!(&buf[..], &[1, 6]);
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn decoder_rejects_malformed() {
        let cases: &[(&[u8], FcgiError)] = &[
            (b"H", FcgiError::UnsupportedVersion(b'H')),
            (b"HTTP/1.1 200 OK\r\n", FcgiError::UnsupportedVersion(b'H')),
            (&[2, 6, 0, 1, 0, 0, 0, 0], FcgiError::UnsupportedVersion(2)),
            (&[1, 0, 0, 1, 0, 0, 0, 0], FcgiError::UnknownRecordType(0)),
            (&[1, 12, 0, 1, 0, 0, 0, 0], FcgiError::UnknownRecordType(12)),
            (
                &[1, 3, 0, 1, 0, 7, 0, 0],
                FcgiError::BadContentLength {
                    kind: RecordType::EndRequest,
                    expected: 8,
                    got: 7,
                },
            ),
            (
                &[1, 1, 0, 1, 0, 9, 0, 0],
                FcgiError::BadContentLength {
                    kind: RecordType::BeginRequest,
                    expected: 8,
                    got: 9,
                },
            ),
            (
                &[1, 2, 0, 1, 0, 1, 0, 0],
                FcgiError::BadContentLength {
                    kind: RecordType::AbortRequest,
                    expected: 0,
                    got: 1,
                },
            ),
            (
                &[1, 11, 0, 0, 0, 1, 0, 0],
                FcgiError::BadContentLength {
                    kind: RecordType::UnknownType,
                    expected: 8,
                    got: 1,
                },
            ),
            (
                &[1, 9, 0, 3, 0, 0, 0, 0],
                FcgiError::ManagementRequestId {
                    kind: RecordType::GetValues,
                    request_id: 3,
                },
            ),
            (
                &[1, 6, 0, 0, 0, 0, 0, 0],
                FcgiError::NullRequestId {
                    kind: RecordType::Stdout,
                },
            ),
        ];
        for (bytes, want) in cases {
            let mut buf = BytesMut::from(*bytes);
            let got = RecordDecoder::default().decode(&mut buf).unwrap_err();
            assert_eq!(&got, want, "input {bytes:?}");
            assert_eq!(&buf[..], *bytes, "input consumed on error");
            assert!(!got.to_string().is_empty());
        }
    }

    #[test]
    fn decoder_enforces_max_content() {
        let mut buf = BytesMut::new();
        put_stream(&mut buf, RecordType::Stdout, 1, &[0; 100]);
        let err = RecordDecoder::with_max_content(64)
            .decode(&mut buf)
            .unwrap_err();
        assert_eq!(
            err,
            FcgiError::ContentTooLong {
                kind: RecordType::Stdout,
                len: 100,
                max: 64
            }
        );
        assert_eq!(
            err.to_string(),
            "FastCGI STDOUT record content of 100 bytes exceeds the limit of 64 bytes"
        );
    }

    #[test]
    fn decoded_content_shares_the_buffer() {
        let mut buf = BytesMut::new();
        put_stream(&mut buf, RecordType::Stdout, 1, b"zero-copy");
        let base = buf.as_ptr() as usize;
        let r = RecordDecoder::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(r.content.as_ptr() as usize, base + HEADER_LEN);
    }
}
