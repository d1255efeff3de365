//! `fcgihost web-config`: renders the repository's `web.config.template`, `Web.Debug.config`
//! and `Web.Release.config` (embedded in the binary) with the user's app, interpreter and a
//! fresh debug secret filled in. The templates stay valid, usable files themselves; rendering
//! splices values into their attributes, so their comments come along unchanged.

use roxmltree::{Document, Node};

use super::xml::{self, escape_attr, Edits};
use super::IisError;

/// The top-level `web.config.template`: HttpPlatformHandler starting fcgihost.
pub const WEB_CONFIG_TEMPLATE: &str = include_str!("../../web.config.template");
/// The top-level `Web.Debug.config`: the XDT transform that turns remote debugging on.
pub const WEB_DEBUG_CONFIG_TEMPLATE: &str = include_str!("../../Web.Debug.config");
/// The top-level `Web.Release.config`: the XDT transform that turns it off again.
pub const WEB_RELEASE_CONFIG_TEMPLATE: &str = include_str!("../../Web.Release.config");

/// The appSettings key of the remote-debugging secret (wfastcgi's name).
pub const SECRET_KEY: &str = "WSGI_PTVSD_SECRET";
/// The appSettings key of the WSGI app (wfastcgi's name).
pub const HANDLER_KEY: &str = "WSGI_HANDLER";
/// Length of the secrets `web-config` generates: letters and digits, about 190 bits.
pub const SECRET_LEN: usize = 32;

/// What `fcgihost web-config` was asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebConfigOptions {
    /// The WSGI app (`WSGI_HANDLER`); `None` leaves the template's empty value (welcome page).
    pub app: Option<String>,
    /// The interpreter, passed to fcgihost as `--python` in `<httpPlatform arguments>`.
    pub python: Option<String>,
    /// Also put the secret (and the Debug transform's IIS request timeout) into web.config
    /// itself, so remote debugging is on without a publish transform.
    pub debug: bool,
}

/// The three rendered files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// `web.config`.
    pub web_config: String,
    /// `Web.Debug.config`, carrying `secret`.
    pub web_debug_config: String,
    /// `Web.Release.config`.
    pub web_release_config: String,
    /// The debug secret written into `Web.Debug.config` (and with `debug`, into web.config).
    pub secret: String,
}

/// Renders the three files with `secret` as the debug secret.
pub fn render(opts: &WebConfigOptions, secret: &str) -> Result<Rendered, IisError> {
    let debug_timeout = debug_request_timeout()?;
    Ok(Rendered {
        web_config: render_web_config(opts, secret, &debug_timeout)?,
        web_debug_config: render_debug_config(secret)?,
        web_release_config: WEB_RELEASE_CONFIG_TEMPLATE.to_string(),
        secret: secret.to_string(),
    })
}

/// The `arguments` of `<httpPlatform>`: `serve`, plus `--python PATH` (quoted for the Windows
/// command line when needed).
pub fn platform_arguments(python: Option<&str>) -> Result<String, IisError> {
    let mut args = "serve".to_string();
    if let Some(python) = python {
        let python = python.trim();
        if python.is_empty() {
            return Err(IisError::Arg {
                flag: "--python",
                message: "must not be empty".into(),
            });
        }
        if python.contains(['"', '\n', '\r']) {
            return Err(IisError::Arg {
                flag: "--python",
                message: format!("{python:?} is not a usable Windows path"),
            });
        }
        args.push_str(" --python ");
        args.push_str(&windows_quote(python));
    }
    Ok(args)
}

/// Quotes one argument the way the Windows C runtime (and Rust's std) splits command lines:
/// unchanged when it has no blank, else in double quotes with backslashes before the closing
/// quote doubled.
fn windows_quote(arg: &str) -> String {
    if !arg.is_empty() && !arg.contains([' ', '\t']) {
        return arg.to_string();
    }
    let mut out = String::from("\"");
    let trailing = arg.len() - arg.trim_end_matches('\\').len();
    out.push_str(arg);
    out.push_str(&"\\".repeat(trailing));
    out.push('"');
    out
}

/// Parses one of the embedded templates (a failure is a bug in the template).
fn parse_template<'a>(name: &str, text: &'a str) -> Result<Document<'a>, IisError> {
    Document::parse(text).map_err(|e| IisError::Template(format!("{name}: {e}")))
}

/// The first element named `name` in document order.
fn find<'a, 'i>(doc: &'a Document<'i>, name: &str) -> Option<Node<'a, 'i>> {
    doc.descendants().find(|n| n.has_tag_name(name))
}

/// The `<add key="KEY">` elements of the document's `<appSettings>`.
fn settings<'a, 'i: 'a>(doc: &'a Document<'i>, key: &'a str) -> impl Iterator<Item = Node<'a, 'i>> {
    doc.descendants().filter(move |n| {
        n.has_tag_name("add")
            && n.parent().is_some_and(|p| p.has_tag_name("appSettings"))
            && n.attribute("key") == Some(key)
    })
}

/// Replaces the value of attribute `attr` of `node`.
fn set_attr(edits: &mut Edits, node: Node, attr: &str, value: &str) -> Result<(), IisError> {
    let a = node
        .attributes()
        .find(|a| a.name() == attr)
        .ok_or_else(|| IisError::Template(format!("<{}> has no {attr}", node.tag_name().name())))?;
    edits.replace(a.range_value(), escape_attr(value));
    Ok(())
}

/// The IIS request timeout `Web.Debug.config` sets for debugging.
fn debug_request_timeout() -> Result<String, IisError> {
    let doc = parse_template("Web.Debug.config", WEB_DEBUG_CONFIG_TEMPLATE)?;
    find(&doc, "httpPlatform")
        .and_then(|n| n.attribute("requestTimeout"))
        .map(str::to_string)
        .ok_or_else(|| {
            IisError::Template("Web.Debug.config: no httpPlatform requestTimeout".into())
        })
}

/// `web.config`: the app, the interpreter, and with `debug` the secret and the long timeout.
fn render_web_config(
    opts: &WebConfigOptions,
    secret: &str,
    debug_timeout: &str,
) -> Result<String, IisError> {
    let text = WEB_CONFIG_TEMPLATE;
    let doc = parse_template("web.config.template", text)?;
    let mut edits = Edits::default();
    let handler = settings(&doc, HANDLER_KEY)
        .next()
        .ok_or_else(|| IisError::Template("web.config.template: no WSGI_HANDLER".into()))?;
    if let Some(app) = opts.app.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
        set_attr(&mut edits, handler, "value", app)?;
    }
    let platform = find(&doc, "httpPlatform")
        .ok_or_else(|| IisError::Template("web.config.template: no httpPlatform".into()))?;
    set_attr(
        &mut edits,
        platform,
        "arguments",
        &platform_arguments(opts.python.as_deref())?,
    )?;
    if opts.debug {
        let indent = xml::indent_of(text, handler);
        edits.insert(
            handler.range().end,
            format!(
                "{}{indent}<add key=\"{SECRET_KEY}\" value=\"{}\" />",
                xml::newline(text),
                escape_attr(secret)
            ),
        );
        set_attr(&mut edits, platform, "requestTimeout", debug_timeout)?;
    }
    edits.apply(text).map_err(IisError::Template)
}

/// `Web.Debug.config` with the secret in every `WSGI_PTVSD_SECRET` element.
fn render_debug_config(secret: &str) -> Result<String, IisError> {
    let text = WEB_DEBUG_CONFIG_TEMPLATE;
    let doc = parse_template("Web.Debug.config", text)?;
    let mut edits = Edits::default();
    for node in settings(&doc, SECRET_KEY) {
        set_attr(&mut edits, node, "value", secret)?;
    }
    if edits.is_empty() {
        return Err(IisError::Template(
            "Web.Debug.config: no WSGI_PTVSD_SECRET".into(),
        ));
    }
    edits.apply(text).map_err(IisError::Template)
}

/// A fresh random secret of [`SECRET_LEN`] letters and digits (safe in a URL's user part,
/// as `fcgihost attach wss://SECRET@site/ptvsd` uses it), from the operating system's
/// cryptographic random source.
pub fn generate_secret() -> Result<String, IisError> {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut secret = String::with_capacity(SECRET_LEN);
    while secret.len() < SECRET_LEN {
        let mut buf = [0u8; 64];
        random_bytes(&mut buf)?;
        // Rejection sampling: 248 = 4 × 62, so the kept bytes map onto the alphabet evenly.
        for b in buf.into_iter().filter(|b| *b < 248) {
            if secret.len() < SECRET_LEN {
                secret.push(char::from(ALPHABET[usize::from(b % 62)]));
            }
        }
    }
    Ok(secret)
}

/// Fills `buf` from `/dev/urandom`.
#[cfg(unix)]
fn random_bytes(buf: &mut [u8]) -> Result<(), IisError> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| IisError::Random(e.to_string()))
}

/// Fills `buf` from the system's random source (through rustls' ring provider, which the
/// crate already links for `fcgihost attach`).
#[cfg(not(unix))]
fn random_bytes(buf: &mut [u8]) -> Result<(), IisError> {
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(buf)
        .map_err(|_| IisError::Random("the system random source failed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "AbCdEfGhIjKlMnOpQrStUvWxYz012345";

    fn app_setting(text: &str, key: &str) -> Vec<String> {
        let doc = Document::parse(text).unwrap();
        let values: Vec<String> = settings(&doc, key)
            .map(|n| n.attribute("value").unwrap_or("").to_string())
            .collect();
        values
    }

    fn platform_attr(text: &str, attr: &str) -> Option<String> {
        let doc = Document::parse(text).unwrap();
        let value = find(&doc, "httpPlatform")?
            .attribute(attr)
            .map(str::to_string);
        value
    }

    #[test]
    fn templates_are_well_formed_and_have_what_rendering_needs() {
        let r = render(&WebConfigOptions::default(), SECRET).unwrap();
        assert_eq!(app_setting(&r.web_config, HANDLER_KEY), [""]);
        assert!(app_setting(&r.web_config, SECRET_KEY).is_empty());
        assert_eq!(
            platform_attr(&r.web_config, "arguments").as_deref(),
            Some("serve")
        );
        assert_eq!(
            platform_attr(&r.web_config, "requestTimeout").as_deref(),
            Some("00:30:00")
        );
        assert_eq!(
            app_setting(&r.web_debug_config, SECRET_KEY),
            [SECRET, SECRET]
        );
        assert_eq!(r.web_release_config, WEB_RELEASE_CONFIG_TEMPLATE);
        // The templates themselves leave debugging off.
        assert_eq!(app_setting(WEB_DEBUG_CONFIG_TEMPLATE, SECRET_KEY), ["", ""]);
        Document::parse(WEB_RELEASE_CONFIG_TEMPLATE).unwrap();
    }

    #[test]
    fn fills_app_python_and_debug_secret() {
        let opts = WebConfigOptions {
            app: Some("my<app>.create_app()".into()),
            python: Some(r"C:\Program Files\Python312\python.exe".into()),
            debug: true,
        };
        let r = render(&opts, SECRET).unwrap();
        assert_eq!(
            app_setting(&r.web_config, HANDLER_KEY),
            ["my<app>.create_app()"]
        );
        assert_eq!(app_setting(&r.web_config, SECRET_KEY), [SECRET]);
        assert_eq!(
            platform_attr(&r.web_config, "arguments").as_deref(),
            Some(r#"serve --python "C:\Program Files\Python312\python.exe""#)
        );
        assert_eq!(
            platform_attr(&r.web_config, "requestTimeout").as_deref(),
            Some("08:00:00")
        );
        assert!(r.web_config.contains("    <add key=\"WSGI_PTVSD_SECRET\""));
    }

    #[test]
    fn quotes_windows_arguments() {
        assert_eq!(
            windows_quote(r"C:\Python312\python.exe"),
            r"C:\Python312\python.exe"
        );
        assert_eq!(windows_quote(r"C:\My Python\"), r#""C:\My Python\\""#);
        assert_eq!(
            platform_arguments(Some(r"D:\py 3\python.exe")).unwrap(),
            r#"serve --python "D:\py 3\python.exe""#
        );
        assert!(platform_arguments(Some("  ")).is_err());
        assert!(platform_arguments(Some("a\"b")).is_err());
    }

    #[test]
    fn secrets_are_fresh_letters_and_digits() {
        let a = generate_secret().unwrap();
        let b = generate_secret().unwrap();
        assert_eq!(a.len(), SECRET_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b);
    }
}
