//! The host's own HTML responses (502, 503, 504, errors at the door), with the app's
//! traceback shown only where it is safe: in debug mode or to loopback clients.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::gateway::response::ResponseBody;

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A full body from bytes, boxed as the front door's body type.
pub fn full_body(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An HTML page with a title, a paragraph, and optional preformatted detail.
pub fn html(
    status: StatusCode,
    title: &str,
    message: &str,
    detail: Option<&str>,
) -> Response<ResponseBody> {
    let detail = detail
        .map(|d| format!("<pre>{}</pre>", escape_html(d)))
        .unwrap_or_default();
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{status} {title}</title>\
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:60em}}pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style>\
</head><body><h1>{code} {title}</h1><p>{message}</p>{detail}<hr><small>fcgihost</small></body></html>",
        status = status.as_u16(),
        code = status.as_u16(),
        title = escape_html(title),
        message = escape_html(message),
    );
    let mut response = Response::new(full_body(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// 502: the worker died or broke the protocol mid-request.
pub fn bad_gateway() -> Response<ResponseBody> {
    html(
        StatusCode::BAD_GATEWAY,
        "Bad Gateway",
        "The worker handling this request stopped before it answered. It has been restarted; the log has the details.",
        None,
    )
}

/// 502: the worker ended the request without a response (it was not restarted).
pub fn no_response() -> Response<ResponseBody> {
    html(
        StatusCode::BAD_GATEWAY,
        "Bad Gateway",
        "The application ended the request without sending a response; the log has the details.",
        None,
    )
}

/// A refusal of a malformed request (400, or 414/431/501 as `status` says) naming what
/// was wrong; the connection closes after it (what follows cannot be framed reliably).
pub fn refused(status: StatusCode, reason: &str) -> Response<ResponseBody> {
    let mut response = html(
        status,
        status.canonical_reason().unwrap_or("Bad Request"),
        &format!("The request was refused: {reason}."),
        None,
    );
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// 504: the pause-aware request clock ran out.
pub fn gateway_timeout() -> Response<ResponseBody> {
    html(
        StatusCode::GATEWAY_TIMEOUT,
        "Gateway Timeout",
        "The request ran longer than request_timeout. Its worker was stopped and replaced; the log names the request.",
        None,
    )
}

/// 503 with Retry-After: no worker was free in time.
pub fn busy(reason: &str) -> Response<ResponseBody> {
    let mut response = html(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        reason,
        None,
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// 503: the app cannot be loaded. The traceback is shown only when `show_detail`.
pub fn app_broken(traceback: &str, gave_up: bool, show_detail: bool) -> Response<ResponseBody> {
    let mut message = String::from("The application failed to load.");
    if gave_up {
        message.push_str(
            " It failed too often within a minute (rapid_fails_per_minute), so fcgihost stopped restarting it until the app changes or the host restarts.",
        );
    } else {
        message.push_str(" fcgihost keeps retrying.");
    }
    if !show_detail {
        message.push_str(" The host's log has the traceback.");
    }
    let mut response = html(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        &message,
        show_detail.then_some(traceback),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}
