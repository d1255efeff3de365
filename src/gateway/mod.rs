//! The gateway maps HTTP ⇄ CGI/FastCGI: it turns an HTTP request head into CGI/1.1
//! meta-variables in FastCGI PARAMS records ([`cgi`]), encodes and decodes FastCGI 1.0 records
//! ([`fcgi`]), works out the real client behind trusted proxies ([`forwarded`]), and turns
//! the CGI response head a worker writes on STDOUT back into an HTTP status and headers
//! ([`response`]).
//!
//! It owns no I/O: everything works on in-memory buffers, so the FastCGI client (pool), the
//! HTTP front door and the optional FastCGI front door share one tested codec.

pub mod cgi;
pub mod fcgi;
pub mod forwarded;
pub mod response;
