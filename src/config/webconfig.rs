//! The web.config layer: the `<appSettings>` that wfastcgi read from the app directory's
//! web.config (`<add key="WSGI_HANDLER" value="app.app"/>`, also `<remove>` and `<clear/>`).
//! fcgihost's own keys map onto settings; keys that no longer apply produce a warning; every
//! other key is passed to the workers as an environment variable, as wfastcgi put all
//! appSettings into `os.environ`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::values::{self, quote};
use super::{absolutize, non_empty, ConfigError, Partial, Source};

/// One `<add>` that is still in effect after `<remove>` / `<clear/>`.
struct Entry {
    key: String,
    value: String,
    line: usize,
}

/// Finds and reads `<app_dir>/web.config` (any letter case). Returns the layer and the path
/// read, if there was a file.
pub(super) fn read(
    app_dir: &Path,
    env: &HashMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<(Partial, Option<PathBuf>), ConfigError> {
    let Some(path) = find(app_dir) else {
        return Ok((Partial::default(), None));
    };
    let bytes = std::fs::read(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let layer = parse(&path, app_dir, &bytes, env, warnings)?;
    Ok((layer, Some(path)))
}

/// Decodes, parses and converts the bytes of the web.config at `path` (named in every error
/// and warning); relative paths in it resolve against `app_dir`. No file system access.
pub(super) fn parse(
    path: &Path,
    app_dir: &Path,
    bytes: &[u8],
    env: &HashMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<Partial, ConfigError> {
    let text = decode(bytes).ok_or_else(|| ConfigError::InFile {
        file: path.to_path_buf(),
        message: "not UTF-8 or UTF-16 text".to_string(),
    })?;
    let entries = app_settings(path, &text, warnings)?;
    convert(path, app_dir, entries, env, warnings)
}

/// `web.config`, else a file whose name is `web.config` in another letter case (IIS's file
/// system does not care; Linux does).
fn find(app_dir: &Path) -> Option<PathBuf> {
    let exact = app_dir.join("web.config");
    if exact.is_file() {
        return Some(exact);
    }
    std::fs::read_dir(app_dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.eq_ignore_ascii_case("web.config"))
                && e.path().is_file()
        })
        .map(|e| e.path())
}

/// UTF-8 (with or without BOM) or UTF-16 with BOM, as Visual Studio may save it.
fn decode(bytes: &[u8]) -> Option<String> {
    let utf16 = |rest: &[u8], from: fn([u8; 2]) -> u16| {
        let chunks = rest.chunks_exact(2);
        if !chunks.remainder().is_empty() {
            return None;
        }
        let units: Vec<u16> = chunks.map(|c| from([c[0], c[1]])).collect();
        String::from_utf16(&units).ok()
    };
    if let Some(rest) = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        return String::from_utf8(rest.to_vec()).ok();
    }
    if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        return utf16(rest, u16::from_le_bytes);
    }
    if let Some(rest) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        return utf16(rest, u16::from_be_bytes);
    }
    String::from_utf8(bytes.to_vec()).ok()
}

/// Parses the XML and applies `<add>`, `<remove>` and `<clear/>` of every `<appSettings>`
/// under `<configuration>` (also inside `<location>` for the app itself), in order.
fn app_settings(
    path: &Path,
    text: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<Entry>, ConfigError> {
    let doc = roxmltree::Document::parse(text).map_err(|e| {
        let full = e.to_string();
        let position = format!(" at {}", e.pos());
        ConfigError::At {
            file: path.to_path_buf(),
            line: e.pos().row as usize,
            message: format!(
                "malformed XML: {}",
                full.strip_suffix(&position).unwrap_or(&full)
            ),
        }
    })?;
    let line = |node: roxmltree::Node| doc.text_pos_at(node.range().start).row as usize;
    let root = doc.root_element();
    if root.tag_name().name() != "configuration" {
        warnings.push(format!(
            "{}: root element is <{}>, not <configuration>; no appSettings read",
            path.display(),
            root.tag_name().name()
        ));
        return Ok(Vec::new());
    }
    let sections = root.children().filter(|n| n.is_element()).flat_map(|n| {
        let inner: Vec<roxmltree::Node> = match n.tag_name().name() {
            "appSettings" => vec![n],
            "location" if matches!(n.attribute("path").map(str::trim), None | Some("" | ".")) => n
                .children()
                .filter(|c| c.has_tag_name("appSettings"))
                .collect(),
            _ => Vec::new(),
        };
        inner
    });

    let mut entries: Vec<Entry> = Vec::new();
    for section in sections {
        for attr in ["file", "configSource"] {
            if let Some(v) = section.attribute(attr) {
                warnings.push(format!(
                    "{}:{}: <appSettings {attr}={}> is not read by fcgihost; put the settings \
                     in web.config itself",
                    path.display(),
                    line(section),
                    quote(v)
                ));
            }
        }
        for el in section.children().filter(|n| n.is_element()) {
            let key = el.attribute("key").map(str::trim).unwrap_or("");
            match el.tag_name().name() {
                "add" if key.is_empty() => warnings.push(format!(
                    "{}:{}: <add> without a key ignored",
                    path.display(),
                    line(el)
                )),
                "add" => {
                    entries.retain(|e| !e.key.eq_ignore_ascii_case(key));
                    entries.push(Entry {
                        key: key.to_string(),
                        value: el.attribute("value").unwrap_or("").to_string(),
                        line: line(el),
                    });
                }
                "remove" => entries.retain(|e| !e.key.eq_ignore_ascii_case(key)),
                "clear" => entries.clear(),
                _ => {}
            }
        }
    }
    Ok(entries)
}

/// Maps the entries onto settings, warnings and worker environment.
fn convert(
    path: &Path,
    app_dir: &Path,
    entries: Vec<Entry>,
    env: &HashMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<Partial, ConfigError> {
    let src = Source::WebConfig(path.to_path_buf());
    let here = |line: usize| format!("{}:{line}", path.display());
    let get = |name: &str| entries.iter().find(|e| e.key.eq_ignore_ascii_case(name));
    let mut p = Partial::default();
    for e in &entries {
        match e.key.to_ascii_uppercase().as_str() {
            "WSGI_HANDLER" => {
                let mut app = non_empty(&e.value);
                let proxied = app
                    .as_deref()
                    .is_some_and(|a| a.starts_with("ptvs_virtualenv_proxy."));
                if proxied {
                    let alt = get("WSGI_ALT_VIRTUALENV_HANDLER").and_then(|a| non_empty(&a.value));
                    warnings.push(format!(
                        "{}: WSGI_HANDLER {} is wfastcgi's virtualenv proxy, which fcgihost does \
                         not need: {}",
                        here(e.line),
                        quote(&e.value),
                        match &alt {
                            Some(a) => format!("serving WSGI_ALT_VIRTUALENV_HANDLER {} directly", quote(a)),
                            None => "set WSGI_HANDLER to the app itself".to_string(),
                        }
                    ));
                    app = alt;
                }
                p.app = Some((app, src.clone()));
            }
            "PYTHONPATH" => {
                let expanded = values::expand_percent_vars(&e.value, env);
                let list = expanded
                    .split(';')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                p.pythonpath = Some((list, src.clone()));
            }
            "WSGI_LOG" => {
                let file = non_empty(&e.value).map(|f| absolutize(app_dir, Path::new(&f)));
                p.log_file = Some((file, src.clone()));
            }
            "WSGI_RESTART_FILE_REGEX" => {
                let re = (!e.value.is_empty()).then(|| e.value.clone());
                p.restart_file_regex = Some((re, src.clone()));
            }
            "WSGI_PTVSD_SECRET" => p.debug_secret = Some((non_empty(&e.value), src.clone())),
            "SCRIPT_NAME" => {
                let s = values::parse_script_name(&e.value).map_err(|m| ConfigError::At {
                    file: path.to_path_buf(),
                    line: e.line,
                    message: format!("SCRIPT_NAME: {m}"),
                })?;
                p.script_name = Some((s, src.clone()));
            }
            "WSGI_PTVSD_ADDRESS" => warnings.push(format!(
                "{}: WSGI_PTVSD_ADDRESS no longer applies: fcgihost starts debugpy on a free \
                 loopback port itself and debuggers attach through the debug.path endpoint \
                 (default /ptvsd) with WSGI_PTVSD_SECRET; remove the setting",
                here(e.line)
            )),
            "APPINSIGHTS_INSTRUMENTATIONKEY" => {
                warnings.push(format!(
                    "{}: APPINSIGHTS_INSTRUMENTATIONKEY no longer applies: wfastcgi wrapped the \
                     app in the retired `applicationinsights` package's middleware, fcgihost \
                     does not; instrument the app itself (e.g. azure-monitor-opentelemetry). \
                     The value is still passed to workers as an environment variable",
                    here(e.line)
                ));
                p.worker_env
                    .insert(e.key.clone(), (e.value.clone(), src.clone()));
            }
            "WSGI_ALT_VIRTUALENV_HANDLER" => {}
            "WSGI_ALT_VIRTUALENV_ACTIVATE_THIS" => {
                let dir = e
                    .value
                    .rsplit_once(['\\', '/'])
                    .map_or(".", |(d, _)| d)
                    .to_string();
                let sep = if dir.contains('\\') { '\\' } else { '/' };
                warnings.push(format!(
                    "{}: WSGI_ALT_VIRTUALENV_ACTIVATE_THIS no longer applies: set `python` to \
                     the virtualenv's interpreter instead (e.g. {dir}{sep}python.exe)",
                    here(e.line)
                ));
            }
            _ => match values::check_env_name(&e.key) {
                Ok(()) => {
                    p.worker_env
                        .insert(e.key.clone(), (e.value.clone(), src.clone()));
                }
                Err(m) => warnings.push(format!("{}: {m}; not passed to workers", here(e.line))),
            },
        }
    }
    Ok(p)
}
