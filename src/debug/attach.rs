//! `fcgihost attach URL`: the developer's end of the debug tunnel. It listens on a local TCP
//! port (127.0.0.1:5678 by default) and, for every connection VS Code or Visual Studio opens
//! there, opens a WebSocket to the server's `/ptvsd` proxy and relays bytes both ways.
//!
//! Neither IDE speaks WebSocket to debugpy, so this small client is what makes
//! `wss://SECRET@site/ptvsd` usable. The secret comes from the URL's user-info and travels as
//! HTTP Basic (never printed: URLs are shown with `<secret>`). Before it prints the settings to
//! use, it checks URL and secret once with a probe that the proxy answers without touching
//! debugpy, so a wrong secret (401), a server with debugging off (404) or an unreachable host
//! is reported at once and clearly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::info;
use super::proxy::{APP_DIR_HEADER, INSTANCE_HEADER, PROBE_HEADER};

/// Longest wait for the server to accept the WebSocket (TCP, TLS and the upgrade).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Time given to the WebSocket closing handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Read size on the local side.
const READ_CHUNK: usize = 64 * 1024;

type ServerWs = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What `fcgihost attach` was asked to do.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    /// The server's debug endpoint, `wss://SECRET@host/ptvsd` (ws, wss, http or https).
    pub url: String,
    /// The local address the IDE connects to.
    pub listen: SocketAddr,
    /// Skip TLS certificate verification (self-signed certificates on test servers).
    pub insecure: bool,
    /// The instance to reach behind a balancer (`--instance`): sent as App Service's
    /// affinity cookies and as [`INSTANCE_HEADER`]; another instance answers 421.
    pub instance: Option<String>,
}

/// Why `fcgihost attach` cannot tunnel; each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The URL cannot be used.
    #[error("invalid URL {url}: {reason}")]
    BadUrl {
        /// The URL with the secret replaced by `<secret>`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The local port could not be bound.
    #[error("cannot listen on {addr}: {source} (pick another port with --listen 127.0.0.1:PORT)")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server refused the secret.
    #[error("wrong secret: {url} answered 401 Unauthorized (the secret is the URL's user-info: wss://SECRET@host/ptvsd)")]
    WrongSecret {
        /// The URL with the secret replaced by `<secret>`.
        url: String,
    },
    /// Nothing at the URL switches to WebSocket: debugging is off (or the path is wrong).
    #[error("debugging is off on the server: set WSGI_PTVSD_SECRET / debug.secret ({url} answered {status}; the path is debug.path, /ptvsd by default)")]
    DebugOff {
        /// The URL with the secret replaced by `<secret>`.
        url: String,
        /// The status the server answered instead of 101.
        status: u16,
    },
    /// Too many wrong secrets from this address.
    #[error(
        "the server refuses this address after too many wrong secrets; try again in {retry_after}"
    )]
    Throttled {
        /// The server's Retry-After, as text.
        retry_after: String,
    },
    /// The proxy answered but could not attach (no worker ready, debugpy unreachable).
    #[error("{url} answered {status}: {message}")]
    Refused {
        /// The URL with the secret replaced by `<secret>`.
        url: String,
        /// The status.
        status: u16,
        /// The server's explanation.
        message: String,
    },
    /// The host cannot be reached (DNS, refused, timed out).
    #[error("cannot reach {host}: {reason}")]
    Unreachable {
        /// `host:port`.
        host: String,
        /// The underlying error.
        reason: String,
    },
    /// The balancer sent the connection to another instance than `--instance` asked for.
    #[error("asked for instance {wanted}, but {url} reached instance {reached}: the balancer in front does not route by the ARRAffinity cookie, so --instance cannot choose the instance there (App Service's balancer does; for others see docs/remote-debugging.md, \"One instance of many\")")]
    WrongInstance {
        /// The URL with the secret replaced by `<secret>`.
        url: String,
        /// The id asked for.
        wanted: String,
        /// The id of the instance that answered.
        reached: String,
    },
    /// `--instance` holds characters a cookie value cannot.
    #[error("invalid --instance {0:?}: use the instance id as the server shows it (letters, digits, `-`, `_`, `.`, `:`)")]
    BadInstance(String),
    /// The TLS handshake failed.
    #[error("TLS with {host} failed: {reason} (for a self-signed certificate add --insecure)")]
    Tls {
        /// `host:port`.
        host: String,
        /// The underlying error.
        reason: String,
    },
}

/// A parsed attach URL.
#[derive(Debug, Clone)]
struct Target {
    /// `ws://host:port/path` or `wss://…`, without user-info.
    url: String,
    /// The URL for people: user-info replaced by `<secret>`.
    shown: String,
    /// `host[:port]` as written.
    host: String,
    /// TLS (`wss`/`https`).
    tls: bool,
    /// The `Authorization` header value built from the user-info.
    authorization: Option<HeaderValue>,
    /// `--instance`: the instance id asked for.
    instance: Option<String>,
}

/// Splits `url` into what the connection needs. The user-info is kept as written (percent
/// escapes included; the proxy decodes them) and sent as Basic `userinfo` or `user:password`.
fn parse_target(url: &str) -> Result<Target, AttachError> {
    let bad = |shown: &str, reason: &str| AttachError::BadUrl {
        url: shown.to_owned(),
        reason: reason.to_owned(),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad(
            "(not shown)",
            "expected wss://SECRET@host/ptvsd (or ws:// for plain HTTP)",
        ));
    };
    let (scheme, tls) = match scheme.to_ascii_lowercase().as_str() {
        "wss" | "https" => ("wss", true),
        "ws" | "http" => ("ws", false),
        _ => {
            return Err(bad(
                "(not shown)",
                "the scheme must be wss:// or ws:// (https:// and http:// are taken as those)",
            ))
        }
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => (Some(userinfo), host),
        None => (None, authority),
    };
    let path = path.split('#').next().unwrap_or("");
    let path = if path.is_empty() || path == "/" {
        "/ptvsd"
    } else {
        path
    };
    let shown = match userinfo {
        Some(_) => format!("{scheme}://<secret>@{host}{path}"),
        None => format!("{scheme}://{host}{path}"),
    };
    if host.is_empty() {
        return Err(bad(&shown, "no host"));
    }
    let authorization = match userinfo {
        Some(info) if !info.is_empty() => {
            let pair = if info.contains(':') {
                info.to_owned()
            } else {
                format!("{info}:")
            };
            let value = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            );
            Some(
                HeaderValue::from_str(&value)
                    .map_err(|_| bad(&shown, "the secret cannot be sent"))?,
            )
        }
        _ => None,
    };
    let url = format!("{scheme}://{host}{path}");
    url.as_str()
        .into_client_request()
        .map_err(|e| bad(&shown, &e.to_string()))?;
    Ok(Target {
        url,
        shown,
        host: host.to_owned(),
        tls,
        authorization,
        instance: None,
    })
}

/// Accepts any server certificate (`--insecure`), still checking the handshake signatures.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS connector: `None` lets tokio-tungstenite verify against the system's roots.
fn connector(target: &Target, insecure: bool) -> Result<Option<Connector>, AttachError> {
    if !(target.tls && insecure) {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| AttachError::Tls {
            host: target.host.clone(),
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        .with_no_client_auth();
    Ok(Some(Connector::Rustls(Arc::new(config))))
}

/// An open WebSocket to the proxy and what its answer said.
struct Opened {
    ws: ServerWs,
    /// The app directory on the server (probes only).
    app_dir: Option<String>,
    /// The instance id of the host that answered.
    instance: Option<String>,
}

/// The affinity cookies of App Service's balancer (ARR) for one instance: `ARRAffinity`
/// and, since 2020, `ARRAffinitySameSite` with the same value.
fn affinity_cookies(instance: &str) -> String {
    format!("ARRAffinity={instance}; ARRAffinitySameSite={instance}")
}

/// Opens a WebSocket to the proxy (`probe`: only check URL and secret).
async fn open(
    target: &Target,
    connector: &Option<Connector>,
    probe: bool,
) -> Result<Opened, AttachError> {
    let mut request =
        target
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| AttachError::BadUrl {
                url: target.shown.clone(),
                reason: e.to_string(),
            })?;
    if let Some(auth) = &target.authorization {
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, auth.clone());
    }
    if probe {
        request
            .headers_mut()
            .insert(PROBE_HEADER, HeaderValue::from_static("1"));
    }
    if let Some(instance) = &target.instance {
        let bad = |_| AttachError::BadUrl {
            url: target.shown.clone(),
            reason: format!("the instance id {instance:?} cannot be sent in a header"),
        };
        let headers = request.headers_mut();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&affinity_cookies(instance)).map_err(bad)?,
        );
        headers.insert(
            INSTANCE_HEADER,
            HeaderValue::from_str(instance).map_err(bad)?,
        );
    }
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector.clone());
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok((ws, response))) => {
            let header_text = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            Ok(Opened {
                app_dir: header_text(APP_DIR_HEADER),
                instance: header_text(INSTANCE_HEADER),
                ws,
            })
        }
        Ok(Err(err)) => Err(explain(target, err)),
        Err(_) => Err(AttachError::Unreachable {
            host: target.host.clone(),
            reason: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
        }),
    }
}

/// Turns a handshake failure into the message the user needs.
fn explain(target: &Target, err: tungstenite::Error) -> AttachError {
    match err {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            let message = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .filter(|m| !m.is_empty() && m.len() < 500 && !m.contains('<'))
                .unwrap_or_else(|| {
                    response
                        .status()
                        .canonical_reason()
                        .unwrap_or("")
                        .to_owned()
                });
            match status {
                401 | 403 => AttachError::WrongSecret {
                    url: target.shown.clone(),
                },
                421 => AttachError::WrongInstance {
                    url: target.shown.clone(),
                    wanted: target.instance.clone().unwrap_or_default(),
                    reached: response
                        .headers()
                        .get(INSTANCE_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("(not named)")
                        .to_owned(),
                },
                429 => AttachError::Throttled {
                    retry_after: response
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .map(|s| format!("{s} s"))
                        .unwrap_or_else(|| "a minute".to_owned()),
                },
                500..=599 => AttachError::Refused {
                    url: target.shown.clone(),
                    status,
                    message,
                },
                _ => AttachError::DebugOff {
                    url: target.shown.clone(),
                    status,
                },
            }
        }
        tungstenite::Error::Io(io) => {
            let is_tls = io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
            if is_tls {
                AttachError::Tls {
                    host: target.host.clone(),
                    reason: io.to_string(),
                }
            } else {
                AttachError::Unreachable {
                    host: target.host.clone(),
                    reason: io.to_string(),
                }
            }
        }
        tungstenite::Error::Tls(tls) => AttachError::Tls {
            host: target.host.clone(),
            reason: tls.to_string(),
        },
        tungstenite::Error::Url(url) => AttachError::BadUrl {
            url: target.shown.clone(),
            reason: url.to_string(),
        },
        other => AttachError::Unreachable {
            host: target.host.clone(),
            reason: format!("the WebSocket handshake failed: {other}"),
        },
    }
}

/// Which instance the probe reached, for the first lines `attach` prints.
fn reached_line(target: &Target, reached: Option<&str>) -> String {
    match (reached, &target.instance) {
        (Some(id), Some(_)) => format!(
            "fcgihost attach: reached instance {id}, the one asked for (the balancer routes by the ARRAffinity cookie)\n"
        ),
        (Some(id), None) => format!(
            "fcgihost attach: reached instance {id} (behind a balancer, --instance ID asks for a particular one)\n"
        ),
        (None, _) => String::new(),
    }
}

/// What to paste into the IDEs, for the bound local port.
fn instructions(local: SocketAddr, target: &Target, app_dir: Option<&str>) -> String {
    let remote_root = app_dir.unwrap_or("<the app directory on the server>");
    let steps: String = info::visual_studio_steps(local.port())
        .iter()
        .enumerate()
        .map(|(i, s)| format!("  {}. {s}\n", i + 1))
        .collect();
    format!(
        "fcgihost attach: listening on {local}; each connection is tunnelled to {shown}\n\
\n\
VS Code: add this to .vscode/launch.json and start \"Attach to fcgihost\":\n\
{launch}\n\
\n\
Visual Studio:\n\
{steps}\n\
Press Ctrl+C to stop.",
        shown = target.shown,
        launch = info::vscode_launch_json(local.port(), remote_root),
    )
}

/// Runs `fcgihost attach` until Ctrl-C: binds the local port, checks URL and secret, prints
/// the IDE settings, then tunnels every local connection to the server.
pub async fn run(options: AttachOptions) -> Result<(), AttachError> {
    // One crypto provider for the whole process (tokio-tungstenite's default TLS config
    // uses the process default); an error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut target = parse_target(&options.url)?;
    if let Some(id) = &options.instance {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
        if id.is_empty() || !id.chars().all(allowed) {
            return Err(AttachError::BadInstance(id.clone()));
        }
    }
    target.instance = options.instance.clone();
    let target = Arc::new(target);
    let connector = connector(&target, options.insecure)?;
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|source| AttachError::Bind {
            addr: options.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| AttachError::Bind {
        addr: options.listen,
        source,
    })?;
    let mut probe = open(&target, &connector, true).await?;
    let _ = tokio::time::timeout(CLOSE_GRACE, probe.ws.close(None)).await;
    print!("{}", reached_line(&target, probe.instance.as_deref()));
    println!("{}", instructions(local, &target, probe.app_dir.as_deref()));

    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(tunnel(stream, peer, target.clone(), connector.clone()));
            }
            _ = &mut interrupted => {
                tracing::info!("stopped");
                return Ok(());
            }
        }
    }
}

/// Which side ended a tunnel.
enum End {
    Server(String),
    Local(String),
}

/// Tunnels one local connection through a new WebSocket.
async fn tunnel(
    local: TcpStream,
    peer: SocketAddr,
    target: Arc<Target>,
    connector: Option<Connector>,
) {
    tracing::info!(peer = %peer, url = target.shown, "debugger connected; opening the tunnel");
    let ws = match open(&target, &connector, false).await {
        Ok(opened) => opened.ws,
        Err(err) => {
            tracing::error!(peer = %peer, "{err}");
            return;
        }
    };
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut local_rx, mut local_tx) = local.into_split();
    let end = {
        let down = async {
            loop {
                let data = match ws_rx.next().await {
                    Some(Ok(Message::Binary(data))) => data,
                    Some(Ok(Message::Text(text))) => text.into(),
                    Some(Ok(Message::Close(frame))) => {
                        return End::Server(match frame {
                            Some(f) if !f.reason.is_empty() => f.reason.to_string(),
                            _ => "closed".to_owned(),
                        })
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(err)) => return End::Server(err.to_string()),
                    None => return End::Server("connection closed".to_owned()),
                };
                if let Err(err) = local_tx.write_all(&data).await {
                    return End::Local(err.to_string());
                }
            }
        };
        let up = async {
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            loop {
                match local_rx.read_buf(&mut buf).await {
                    Ok(0) => return End::Local("connection closed".to_owned()),
                    Ok(_) => {}
                    Err(err) => return End::Local(err.to_string()),
                }
                let chunk = buf.split().freeze();
                buf.reserve(READ_CHUNK);
                if let Err(err) = ws_tx.send(Message::Binary(chunk)).await {
                    return End::Server(err.to_string());
                }
            }
        };
        tokio::select! {
            end = down => end,
            end = up => end,
        }
    };
    let reason = match end {
        End::Server(reason) => {
            let _ = local_tx.shutdown().await;
            let _ = tokio::time::timeout(CLOSE_GRACE, ws_tx.close()).await;
            format!("server side: {reason}")
        }
        End::Local(reason) => {
            drop(local_tx);
            let close = Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "the debugger disconnected".into(),
            }));
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                if ws_tx.send(close).await.is_ok() {
                    while let Some(Ok(msg)) = ws_rx.next().await {
                        if msg.is_close() {
                            break;
                        }
                    }
                }
            })
            .await;
            format!("debugger side: {reason}")
        }
    };
    tracing::info!(peer = %peer, reason, "tunnel closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_cookies_name_the_instance_twice() {
        assert_eq!(
            affinity_cookies("B"),
            "ARRAffinity=B; ARRAffinitySameSite=B"
        );
    }

    #[test]
    fn parses_secret_and_hides_it() {
        let t = parse_target("wss://s3cr%40t@example.com/ptvsd").unwrap();
        assert_eq!(t.url, "wss://example.com/ptvsd");
        assert_eq!(t.shown, "wss://<secret>@example.com/ptvsd");
        assert!(t.tls);
        let auth = t.authorization.unwrap();
        let b64 = auth.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(decoded, b"s3cr%40t:");
    }

    #[test]
    fn user_and_password_and_defaults() {
        let t = parse_target("http://user:pw@127.0.0.1:8000").unwrap();
        assert_eq!(t.url, "ws://127.0.0.1:8000/ptvsd");
        assert!(!t.tls);
        assert_eq!(t.host, "127.0.0.1:8000");
        let t = parse_target("ws://127.0.0.1:8000/ptvsd/1?x=1").unwrap();
        assert_eq!(t.url, "ws://127.0.0.1:8000/ptvsd/1?x=1");
        assert!(t.authorization.is_none());
    }

    #[test]
    fn bad_urls_never_show_the_secret() {
        for url in ["ftp://XYZZY@h/x", "XYZZY@host/ptvsd", "wss://XYZZY@/ptvsd"] {
            let err = parse_target(url).unwrap_err().to_string();
            assert!(!err.contains("XYZZY"), "{err}");
        }
    }

    #[test]
    fn instructions_name_the_port() {
        let t = parse_target("wss://k@h.example/ptvsd").unwrap();
        let text = instructions("127.0.0.1:6001".parse().unwrap(), &t, Some("/srv/app"));
        assert!(text.contains("listening on 127.0.0.1:6001"));
        assert!(text.contains("\"port\": 6001"));
        assert!(text.contains("tcp://127.0.0.1:6001"));
        assert!(text.contains("\"/srv/app\""));
        assert!(!text.contains("k@"));
    }
}
