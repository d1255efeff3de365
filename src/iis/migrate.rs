//! `fcgihost migrate`: turns a wfastcgi-era web.config (a FastCGI handler whose
//! `scriptProcessor` is `python.exe|...\wfastcgi.py`) into the fcgihost one: that handler
//! becomes `httpPlatformHandler`, an `<httpPlatform>` starting fcgihost (with the old
//! interpreter as `--python`) and `<webSocket enabled="true"/>` are added, and everything
//! else — every appSetting, every other element, comments, formatting — stays byte for byte.
//! The rewrite splices text at roxmltree's node ranges; the report says what changed, which
//! settings no longer apply, and what to do next.

use std::path::Path;

use roxmltree::{Document, Node};

use super::render::{platform_arguments, SECRET_KEY, WEB_CONFIG_TEMPLATE};
use super::xml::{self, escape_attr, Edits};
use super::IisError;

/// The name of the handler mapping fcgihost's web.config uses.
pub const HANDLER_NAME: &str = "httpPlatformHandler";

/// The handler mapping that sends every request to HttpPlatformHandler.
const HANDLER_ADD: &str = r#"<add name="httpPlatformHandler" path="*" verb="*" modules="httpPlatformHandler" resourceType="Unspecified" />"#;

/// The HttpPlatformHandler mapping for the requests `path` and `verb` select.
fn handler_add(path: &str, verb: &str) -> String {
    format!(
        r#"<add name="{HANDLER_NAME}" path="{}" verb="{}" modules="httpPlatformHandler" resourceType="Unspecified" />"#,
        escape_attr(path),
        escape_attr(verb)
    )
}

/// The comment put above the added `<httpPlatform>` (two-space indented block).
const PLATFORM_COMMENT: &str = "<!--
  fcgihost replaces wfastcgi here (converted by \"fcgihost migrate\"; see docs/iis.md).
  IIS starts fcgihost.exe in the site's folder; it listens on %HTTP_PLATFORM_PORT% and runs
  the Python workers itself. requestTimeout stays far above fcgihost's own pause-aware
  request_timeout (default 90 s), so IIS does not cut a request paused in the debugger.
-->";

/// The WebSocket switch with its comment (two-space indented block).
const WEBSOCKET_BLOCK: &str =
    "<!-- Lets the /ptvsd WebSocket through (needs the IIS feature \"WebSocket Protocol\"). -->
<webSocket enabled=\"true\" />";

/// The result of [`migrate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The new web.config text (the input itself when nothing needed changing).
    pub text: String,
    /// Whether `text` differs from the input.
    pub changed: bool,
    /// The interpreter passed as `--python` in the new `<httpPlatform>`, if any.
    pub python: Option<String>,
    /// The human-readable report: what changed, what was kept, what no longer applies, and
    /// the next steps.
    pub report: String,
}

/// One `<add>` of `<appSettings>`.
struct Setting {
    key: String,
    value: String,
}

/// Converts the web.config `text` (read from `path`, used in messages).
pub fn migrate(text: &str, path: &Path) -> Result<Migration, IisError> {
    let doc = Document::parse(text).map_err(|e| IisError::xml(path, &e))?;
    let root = doc.root_element();
    if !root.has_tag_name("configuration") {
        return Err(IisError::NotWebConfig {
            path: path.to_path_buf(),
            message: format!(
                "the root element is <{}>, not <configuration>",
                root.tag_name().name()
            ),
        });
    }
    let line = |n: Node| xml::line_of(text, n.range().start);
    let settings = app_settings(root);
    let get = |key: &str| {
        settings
            .iter()
            .rev()
            .find(|s| s.key.eq_ignore_ascii_case(key))
            .map(|s| s.value.trim())
            .filter(|v| !v.is_empty())
    };

    let handler_adds: Vec<Node> = doc
        .descendants()
        .filter(|n| n.has_tag_name("add") && n.parent().is_some_and(|p| p.has_tag_name("handlers")))
        .collect();
    let wfastcgi: Vec<Node> = handler_adds
        .iter()
        .copied()
        .filter(|n| is_wfastcgi(*n))
        .collect();
    let other_fastcgi: Vec<Node> = handler_adds
        .iter()
        .copied()
        .filter(|n| uses_fastcgi(*n) && !is_wfastcgi(*n))
        .collect();
    let existing = handler_adds.iter().copied().find(|n| {
        n.attribute("modules")
            .is_some_and(|m| m.trim().eq_ignore_ascii_case(HANDLER_NAME))
    });

    let mut changed: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    if wfastcgi.is_empty() {
        if let Some(h) = existing {
            let report = format!(
                "{}: already uses HttpPlatformHandler (handler {:?}, line {}) and has no wfastcgi \
                 handler; nothing to change.\n",
                path.display(),
                h.attribute("name").unwrap_or(""),
                line(h)
            );
            return Ok(Migration {
                text: text.to_string(),
                changed: false,
                python: None,
                report,
            });
        }
        notes.push(
            "no wfastcgi handler in this file: it was probably mapped for the whole server \
             (applicationHost.config). This file's httpPlatformHandler mapping takes precedence \
             over it; remove the old mapping in IIS Manager > Handler Mappings when convenient"
                .into(),
        );
    }

    // The interpreter: the old scriptProcessor's part before '|', or the virtualenv that
    // wfastcgi's ptvs_virtualenv_proxy activated.
    let primary = wfastcgi
        .iter()
        .copied()
        .find(|h| {
            h.parent()
                .and_then(|p| p.parent())
                .is_some_and(is_app_level)
        })
        .or_else(|| wfastcgi.first().copied());
    let mut python = primary
        .and_then(|h| h.attribute("scriptProcessor"))
        .and_then(script_python);
    if let Some(activate) = get("WSGI_ALT_VIRTUALENV_ACTIVATE_THIS") {
        let venv_python = venv_python(activate);
        notes.push(format!(
            "WSGI_ALT_VIRTUALENV_ACTIVATE_THIS: fcgihost runs the virtualenv's interpreter \
             directly, so --python is {venv_python} (check that it exists)"
        ));
        python = Some(venv_python);
    }
    let arguments = platform_arguments(python.as_deref())?;

    let nl = xml::newline(text);
    let unit = xml::indent_unit(text, root);
    let new_name = existing
        .and_then(|h| h.attribute("name"))
        .unwrap_or(HANDLER_NAME)
        .to_string();
    let mut edits = Edits::default();

    // The wfastcgi handlers: the primary one becomes httpPlatformHandler, the rest go.
    for h in &wfastcgi {
        let what = format!(
            "handler {:?} (line {}: modules=\"{}\" scriptProcessor=\"{}\")",
            h.attribute("name").unwrap_or(""),
            line(*h),
            h.attribute("modules").unwrap_or(""),
            h.attribute("scriptProcessor").unwrap_or("")
        );
        if Some(*h) == primary && existing.is_none() {
            let path_attr = h.attribute("path").map_or("*", str::trim);
            let verb_attr = h.attribute("verb").map_or("*", str::trim);
            edits.replace(h.range(), handler_add(path_attr, verb_attr));
            changed.push(format!("replaced {what} with {HANDLER_NAME:?}"));
            if path_attr != "*" {
                notes.push(format!(
                    "the new handler keeps the old mapping's path=\"{path_attr}\": only requests \
                     for it (usually those your URL Rewrite rules rewrite there) reach fcgihost, \
                     which takes the original URL from X-Original-URL as wfastcgi did; use \
                     path=\"*\" to send every request to fcgihost"
                ));
            }
        } else {
            edits.replace(xml::removal_range(text, *h), "");
            changed.push(format!("removed {what}"));
        }
    }
    let old_names: Vec<&str> = wfastcgi
        .iter()
        .filter_map(|h| h.attribute("name"))
        .collect();
    for r in doc.descendants().filter(|n| {
        n.has_tag_name("remove")
            && n.parent().is_some_and(|p| p.has_tag_name("handlers"))
            && n.attribute("name")
                .is_some_and(|v| old_names.iter().any(|o| o.eq_ignore_ascii_case(v.trim())))
    }) {
        if let Some(attr) = r.attributes().find(|a| a.name() == "name") {
            edits.replace(attr.range_value(), escape_attr(&new_name));
            changed.push(format!(
                "<remove name=\"{}\"/> (line {}) now removes {new_name:?}",
                attr.value(),
                line(r)
            ));
        }
    }

    // Where the handler lives, and so where <httpPlatform> and <webSocket> go.
    let handlers = match (primary, existing) {
        (_, Some(h)) | (Some(h), None) => h.parent(),
        (None, None) => None,
    };
    let web_server = handlers.and_then(|h| h.parent()).or_else(|| {
        root.descendants()
            .find(|n| n.has_tag_name("system.webServer") && is_app_level(*n))
    });
    let handlers = handlers
        .or_else(|| web_server.and_then(|s| s.children().find(|n| n.has_tag_name("handlers"))));

    let mut blocks: Vec<String> = Vec::new();
    match web_server.and_then(|s| s.children().find(|n| n.has_tag_name("httpPlatform"))) {
        Some(p) => notes.push(format!(
            "kept the existing <httpPlatform> (line {}): check that it starts fcgihost.exe with \
             arguments=\"{}\"",
            line(p),
            arguments
        )),
        None => {
            blocks.push(platform_block(&arguments)?);
            changed.push(format!(
                "added <httpPlatform processPath=\".\\fcgihost.exe\" arguments=\"{}\"> with \
                 requestTimeout far above fcgihost's own",
                arguments
            ));
        }
    }
    match web_server.and_then(|s| s.children().find(|n| n.has_tag_name("webSocket"))) {
        Some(ws) => {
            let off = ws
                .attributes()
                .find(|a| a.name() == "enabled")
                .filter(|a| a.value().trim().eq_ignore_ascii_case("false"));
            if let Some(attr) = off {
                edits.replace(attr.range_value(), "true");
                changed.push(format!(
                    "<webSocket> (line {}) enabled=\"false\" → \"true\" (for /ptvsd)",
                    line(ws)
                ));
            }
        }
        None => {
            blocks.push(WEBSOCKET_BLOCK.to_string());
            changed.push("added <webSocket enabled=\"true\"/> (for /ptvsd)".into());
        }
    }
    let after_handlers = blocks.join("\n");

    let handler_in_place = primary.is_some() || existing.is_some();
    match (web_server, handlers) {
        (Some(_), Some(h)) => {
            if !handler_in_place {
                append_children(&mut edits, text, h, HANDLER_ADD, &unit, nl);
                changed.push(format!("added the {HANDLER_NAME:?} handler mapping"));
            }
            if !after_handlers.is_empty() {
                let indent = xml::indent_of(text, h);
                edits.insert(
                    h.range().end,
                    xml::reindent(&after_handlers, indent, &unit, nl),
                );
            }
        }
        (Some(s), None) => {
            let block = format!("<handlers>\n  {HANDLER_ADD}\n</handlers>\n{after_handlers}");
            append_children(&mut edits, text, s, block.trim_end(), &unit, nl);
            changed.push(format!("added the {HANDLER_NAME:?} handler mapping"));
        }
        (None, _) => {
            let inner = format!("<handlers>\n  {HANDLER_ADD}\n</handlers>\n{after_handlers}");
            let block = format!(
                "<system.webServer>\n{}\n</system.webServer>",
                indent_block(inner.trim_end())
            );
            append_children(&mut edits, text, root, &block, &unit, nl);
            changed.push(format!(
                "added <system.webServer> with the {HANDLER_NAME:?} handler mapping"
            ));
        }
    }

    for h in &other_fastcgi {
        notes.push(format!(
            "left FastCGI handler {:?} (line {}) alone: it does not run wfastcgi",
            h.attribute("name").unwrap_or(""),
            line(*h)
        ));
    }
    if let Some(f) = root.descendants().find(|n| n.has_tag_name("fastCgi")) {
        notes.push(format!(
            "<fastCgi> (line {}) is kept but no longer used by this site",
            line(f)
        ));
    }

    let new_text = edits.apply(text).map_err(IisError::Template)?;
    let report = report(path, &changed, &notes, &settings, &old_names, &new_name);
    Ok(Migration {
        changed: new_text != text,
        text: new_text,
        python,
        report,
    })
}

/// An element directly under `<configuration>`, or under a `<location>` that applies to the
/// site itself (no path, `""` or `"."`).
fn is_app_level(n: Node) -> bool {
    match n.parent() {
        Some(p) if p.has_tag_name("configuration") => p.parent().is_some_and(|d| d.is_root()),
        Some(p) if p.has_tag_name("location") => {
            matches!(p.attribute("path").map(str::trim), None | Some("" | "."))
                && p.parent().is_some_and(|c| c.has_tag_name("configuration"))
        }
        _ => false,
    }
}

/// A handler mapping served by IIS's FastCGI module.
fn uses_fastcgi(n: Node) -> bool {
    n.attribute("modules")
        .is_some_and(|m| m.to_ascii_lowercase().contains("fastcgimodule"))
}

/// A FastCGI handler mapping that runs wfastcgi: its scriptProcessor names wfastcgi, or
/// starts a Python interpreter.
fn is_wfastcgi(n: Node) -> bool {
    let Some(sp) = n.attribute("scriptProcessor") else {
        return false;
    };
    let exe = sp.split('|').next().unwrap_or("").trim().trim_matches('"');
    let base = exe
        .rsplit(['\\', '/'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    uses_fastcgi(n) && (sp.to_ascii_lowercase().contains("wfastcgi") || base.starts_with("python"))
}

/// The interpreter of a `scriptProcessor="C:\Python312\python.exe|C:\...\wfastcgi.py"`.
fn script_python(sp: &str) -> Option<String> {
    let exe = sp.split('|').next()?.trim().trim_matches('"').trim();
    (!exe.is_empty()).then(|| exe.to_string())
}

/// `...\env\Scripts\activate_this.py` → `...\env\Scripts\python.exe`.
fn venv_python(activate_this: &str) -> String {
    match activate_this.rsplit_once(['\\', '/']) {
        Some((dir, _)) => {
            let sep = if dir.contains('\\') || !dir.contains('/') {
                '\\'
            } else {
                '/'
            };
            format!("{dir}{sep}python.exe")
        }
        None => "python.exe".to_string(),
    }
}

/// The `<add>`s of the site's `<appSettings>`, in document order.
fn app_settings(root: Node) -> Vec<Setting> {
    root.descendants()
        .filter(|n| n.has_tag_name("appSettings") && is_app_level(*n))
        .flat_map(|s| s.children().filter(|n| n.has_tag_name("add")))
        .filter_map(|n| {
            Some(Setting {
                key: n.attribute("key")?.trim().to_string(),
                value: n.attribute("value").unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// The template's `<httpPlatform>` element with `arguments` filled in, preceded by
/// [`PLATFORM_COMMENT`], as a two-space indented block starting at column 0.
fn platform_block(arguments: &str) -> Result<String, IisError> {
    let text = WEB_CONFIG_TEMPLATE;
    let doc = Document::parse(text)
        .map_err(|e| IisError::Template(format!("web.config.template: {e}")))?;
    let platform = doc
        .descendants()
        .find(|n| n.has_tag_name("httpPlatform"))
        .ok_or_else(|| IisError::Template("web.config.template: no httpPlatform".into()))?;
    let args = platform
        .attributes()
        .find(|a| a.name() == "arguments")
        .ok_or_else(|| IisError::Template("web.config.template: no arguments".into()))?;
    let element = format!(
        "{}{}{}",
        &text[platform.range().start..args.range_value().start],
        escape_attr(arguments),
        &text[args.range_value().end..platform.range().end]
    );
    let element = xml::dedent(&element, xml::indent_of(text, platform));
    Ok(format!("{PLATFORM_COMMENT}\n{element}"))
}

/// Indents every line of a two-space block by one level.
fn indent_block(block: &str) -> String {
    block
        .lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Adds `block` (two-space indented, column 0) as the last children of `node`, one level
/// deeper than `node`; a self-closing `node` is expanded into start and end tags.
fn append_children(edits: &mut Edits, text: &str, node: Node, block: &str, unit: &str, nl: &str) {
    let indent = xml::indent_of(text, node);
    let inner = xml::reindent(block, &format!("{indent}{unit}"), unit, nl);
    match xml::end_tag_start(text, node) {
        None => {
            let range = node.range();
            let start_tag = text[range.start..range.end - 2].trim_end();
            edits.replace(
                range,
                format!(
                    "{start_tag}>{inner}{nl}{indent}</{}>",
                    node.tag_name().name()
                ),
            );
        }
        Some(end) => match xml::line_indent(text, end) {
            Some(end_indent) => {
                let mut at = end - end_indent.len();
                if text[..at].ends_with("\r\n") {
                    at -= 2;
                } else if text[..at].ends_with('\n') {
                    at -= 1;
                }
                edits.insert(at, inner);
            }
            None => edits.insert(end, format!("{inner}{nl}{indent}")),
        },
    }
}

/// Why a wfastcgi setting no longer applies, for the report.
fn no_longer_applies(key: &str) -> Option<&'static str> {
    Some(match key.to_ascii_uppercase().as_str() {
        "WSGI_PTVSD_ADDRESS" => {
            "fcgihost starts debugpy on a free loopback port itself; debuggers attach through \
             /ptvsd with WSGI_PTVSD_SECRET"
        }
        "APPINSIGHTS_INSTRUMENTATIONKEY" => {
            "fcgihost does not wrap the app in the retired applicationinsights middleware; \
             instrument the app itself (e.g. azure-monitor-opentelemetry). Still passed to \
             the app as an environment variable"
        }
        "WSGI_ALT_VIRTUALENV_HANDLER" => {
            "fcgihost serves it directly when WSGI_HANDLER is wfastcgi's ptvs_virtualenv_proxy; \
             better: put the app in WSGI_HANDLER"
        }
        "WSGI_ALT_VIRTUALENV_ACTIVATE_THIS" => {
            "fcgihost runs the virtualenv's python.exe instead (--python)"
        }
        _ => return None,
    })
}

/// The report `fcgihost migrate` prints to stderr.
fn report(
    path: &Path,
    changed: &[String],
    notes: &[String],
    settings: &[Setting],
    old_names: &[&str],
    new_name: &str,
) -> String {
    let mut out = format!("fcgihost migrate: {}\n", path.display());
    out.push_str("Changed:\n");
    for c in changed {
        out.push_str(&format!("  - {c}\n"));
    }
    let keys: Vec<&str> = settings.iter().map(|s| s.key.as_str()).collect();
    out.push_str(&format!(
        "Kept unchanged: every other element and comment, and all {} appSettings{}\n",
        keys.len(),
        if keys.is_empty() {
            String::new()
        } else {
            format!(" ({})", keys.join(", "))
        }
    ));
    let stale: Vec<(&str, &str)> = settings
        .iter()
        .filter_map(|s| no_longer_applies(&s.key).map(|why| (s.key.as_str(), why)))
        .collect();
    if !stale.is_empty() {
        out.push_str(
            "Settings that no longer apply (kept; fcgihost warns about them at start; remove \
             them when convenient):\n",
        );
        for (key, why) in stale {
            out.push_str(&format!("  - {key}: {why}\n"));
        }
    }
    let handler = settings
        .iter()
        .rev()
        .find(|s| s.key.eq_ignore_ascii_case("WSGI_HANDLER"));
    let mut notes = notes.to_vec();
    match handler.map(|s| s.value.trim()) {
        None | Some("") => notes
            .push("no WSGI_HANDLER: fcgihost will serve its welcome page until you set it".into()),
        Some(h) if h.starts_with("ptvs_virtualenv_proxy.") => notes.push(
            "WSGI_HANDLER is wfastcgi's ptvs_virtualenv_proxy: fcgihost serves \
             WSGI_ALT_VIRTUALENV_HANDLER directly (better: put the app in WSGI_HANDLER)"
                .into(),
        ),
        Some(_) => {}
    }
    if settings
        .iter()
        .any(|s| s.key.eq_ignore_ascii_case(SECRET_KEY) && !s.value.trim().is_empty())
    {
        notes.push(format!(
            "{SECRET_KEY} is set: remote debugging is on. The interpreter needs debugpy \
             (python -m pip install debugpy); attach with `fcgihost attach \
             wss://SECRET@<site>/ptvsd`. To switch it with the publish configuration instead, \
             add Web.Debug.config and Web.Release.config (`fcgihost web-config --out DIR`)"
        ));
    }
    if !notes.is_empty() {
        out.push_str("Notes:\n");
        for n in &notes {
            out.push_str(&format!("  - {n}\n"));
        }
    }
    out.push_str("Next steps (docs/iis.md has the details):\n");
    let mut steps = vec![
        "install HttpPlatformHandler on the server and enable the IIS feature \"WebSocket \
         Protocol\""
            .to_string(),
        "copy fcgihost.exe into the site's folder, next to web.config".to_string(),
        "create the site's logs folder and let the app pool identity write to it (stdoutLogFile)"
            .to_string(),
        "run `fcgihost check` in the site's folder: it shows every setting with its source and \
         imports the app once"
            .to_string(),
    ];
    if !old_names.is_empty() {
        let names: Vec<String> = old_names.iter().map(|n| format!("{n:?}")).collect();
        steps.push(format!(
            "a web.config in a subfolder (static\\ for instance) that removes {} must now remove \
             {new_name:?}",
            names.join(" or ")
        ));
        steps.push(
            "wfastcgi's FastCGI application in IIS Manager > FastCGI Settings is no longer \
             used; remove it (wfastcgi-disable) once the site runs"
                .into(),
        );
    }
    for (i, s) in steps.iter().enumerate() {
        out.push_str(&format!("  {}. {s}\n", i + 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const WFASTCGI: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <!-- my site -->
  <system.webServer>
    <handlers>
      <remove name="Python FastCGI" />
      <add name="Python FastCGI" path="*" verb="*" modules="FastCgiModule" scriptProcessor="C:\Python312\python.exe|C:\Python312\Lib\site-packages\wfastcgi.py" resourceType="Unspecified" requireAccess="Script" />
      <add name="php" path="*.php" verb="*" modules="FastCgiModule" scriptProcessor="C:\php\php-cgi.exe" resourceType="File" />
    </handlers>
    <rewrite><rules/></rewrite>
  </system.webServer>
  <appSettings>
    <add key="WSGI_HANDLER" value="app.app" />
    <add key="WSGI_PTVSD_ADDRESS" value="localhost:5678" />
  </appSettings>
  <location path="static">
    <system.webServer>
      <handlers>
        <remove name="Python FastCGI"/>
      </handlers>
    </system.webServer>
  </location>
</configuration>
"#;

    fn attr<'a>(doc: &'a Document, tag: &str, name: &str) -> Option<&'a str> {
        doc.descendants()
            .find(|n| n.has_tag_name(tag))?
            .attribute(name)
    }

    #[test]
    fn replaces_the_wfastcgi_handler_and_keeps_everything_else() {
        let m = migrate(WFASTCGI, Path::new("web.config")).unwrap();
        assert!(m.changed);
        let doc = Document::parse(&m.text).unwrap();
        assert_eq!(m.python.as_deref(), Some(r"C:\Python312\python.exe"));
        assert_eq!(
            attr(&doc, "httpPlatform", "arguments"),
            Some(r"serve --python C:\Python312\python.exe")
        );
        assert_eq!(attr(&doc, "webSocket", "enabled"), Some("true"));
        assert!(!m.text.contains("wfastcgi.py"));
        assert!(m.text.contains("scriptProcessor=\"C:\\php\\php-cgi.exe\""));
        assert!(m.text.contains("<!-- my site -->"));
        assert!(m.text.contains("<rewrite><rules/></rewrite>"));
        assert_eq!(
            m.text
                .matches("<remove name=\"httpPlatformHandler\"")
                .count(),
            2
        );
        // The new elements follow the handlers block, indented like it.
        assert!(m
            .text
            .contains("    </handlers>\n    <!--\n      fcgihost replaces wfastcgi"));
        assert!(m
            .text
            .contains("\n    <webSocket enabled=\"true\" />\n    <rewrite>"));
        let tail = &m.text[m.text.find("<appSettings>").unwrap()..];
        let orig_tail = &WFASTCGI[WFASTCGI.find("<appSettings>").unwrap()..];
        assert_eq!(
            tail,
            orig_tail.replace("\"Python FastCGI\"", "\"httpPlatformHandler\"")
        );
        assert!(m.report.contains("WSGI_PTVSD_ADDRESS: "), "{}", m.report);
        assert!(
            m.report.contains("left FastCGI handler \"php\""),
            "{}",
            m.report
        );
    }

    #[test]
    fn keeps_the_old_handler_path() {
        let text = WFASTCGI.replace(
            r#"name="Python FastCGI" path="*" verb="*""#,
            r#"name="Python FastCGI" path="handler.fcgi" verb="GET,POST""#,
        );
        let m = migrate(&text, Path::new("web.config")).unwrap();
        let doc = Document::parse(&m.text).unwrap();
        let add = doc
            .descendants()
            .find(|n| n.attribute("modules") == Some("httpPlatformHandler"))
            .unwrap();
        assert_eq!(add.attribute("path"), Some("handler.fcgi"));
        assert_eq!(add.attribute("verb"), Some("GET,POST"));
        assert!(m.report.contains("X-Original-URL"), "{}", m.report);
    }

    #[test]
    fn migrating_twice_changes_nothing() {
        let once = migrate(WFASTCGI, Path::new("web.config")).unwrap();
        let twice = migrate(&once.text, Path::new("web.config")).unwrap();
        assert!(!twice.changed);
        assert_eq!(twice.text, once.text);
        assert!(twice.report.contains("already uses HttpPlatformHandler"));
    }

    #[test]
    fn keeps_crlf_tabs_and_adds_missing_sections() {
        let text = "<configuration>\r\n\t<appSettings>\r\n\t\t<add key=\"WSGI_HANDLER\" value=\"a.b\"/>\r\n\t\t<add key=\"WSGI_ALT_VIRTUALENV_ACTIVATE_THIS\" value=\"D:\\site\\env\\Scripts\\activate_this.py\"/>\r\n\t</appSettings>\r\n</configuration>\r\n";
        let m = migrate(text, Path::new("web.config")).unwrap();
        let doc = Document::parse(&m.text).unwrap();
        assert_eq!(
            attr(&doc, "httpPlatform", "arguments"),
            Some(r"serve --python D:\site\env\Scripts\python.exe")
        );
        assert_eq!(attr(&doc, "add", "key"), Some("WSGI_HANDLER"));
        assert!(m.text.contains(
            "\r\n\t<system.webServer>\r\n\t\t<handlers>\r\n\t\t\t<add name=\"httpPlatformHandler\""
        ));
        assert!(
            m.text
                .ends_with("\t</system.webServer>\r\n</configuration>\r\n"),
            "{}",
            m.text
        );
        assert!(!m.text.replace("\r\n", "").contains('\n'));
        assert!(m.report.contains("applicationHost.config"));

        let empty = migrate("<configuration/>", Path::new("web.config")).unwrap();
        let doc = Document::parse(&empty.text).unwrap();
        assert_eq!(attr(&doc, "httpPlatform", "arguments"), Some("serve"));
    }

    #[test]
    fn existing_web_server_pieces_are_reused() {
        let text = r#"<configuration>
  <system.webServer>
    <handlers/>
    <webSocket enabled="false" />
  </system.webServer>
</configuration>"#;
        let m = migrate(text, Path::new("web.config")).unwrap();
        let doc = Document::parse(&m.text).unwrap();
        assert_eq!(attr(&doc, "webSocket", "enabled"), Some("true"));
        assert_eq!(m.text.matches("<webSocket").count(), 1);
        assert_eq!(attr(&doc, "add", "modules"), Some("httpPlatformHandler"));
        assert!(m
            .text
            .contains("    <handlers>\n      <add name=\"httpPlatformHandler\""));
    }

    #[test]
    fn rejects_what_is_not_a_web_config() {
        let e = migrate("<configuration>", Path::new("w.config")).unwrap_err();
        assert!(
            e.to_string().starts_with("w.config:1: malformed XML"),
            "{e}"
        );
        let e = migrate("<project/>", Path::new("w.config")).unwrap_err();
        assert!(e.to_string().contains("not <configuration>"), "{e}");
    }

    #[test]
    fn recognises_wfastcgi_handlers() {
        let doc = Document::parse(
            r#"<h>
<add modules="FastCgiModule" scriptProcessor="D:\home\Python362x64\python.exe|D:\home\Python362x64\wfastcgi.py"/>
<add modules="FastCgiModule" scriptProcessor="c:\venv\scripts\python.exe|c:\app\runner.py"/>
<add modules="FastCgiModule" scriptProcessor="C:\php\php-cgi.exe"/>
<add modules="IsapiModule" scriptProcessor="C:\x\wfastcgi.dll"/>
</h>"#,
        )
        .unwrap();
        let found: Vec<bool> = doc
            .root_element()
            .children()
            .filter(|n| n.is_element())
            .map(is_wfastcgi)
            .collect();
        assert_eq!(found, [true, true, false, false]);
        assert_eq!(
            script_python(r#""C:\Py\python.exe" | x"#).as_deref(),
            Some(r"C:\Py\python.exe")
        );
        assert_eq!(
            venv_python("/srv/env/bin/activate_this.py"),
            "/srv/env/bin/python.exe"
        );
    }
}
