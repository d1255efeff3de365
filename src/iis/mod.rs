//! The IIS side of fcgihost: `fcgihost web-config` renders the web.config that makes IIS's
//! HttpPlatformHandler start fcgihost (plus the `Web.Debug.config` / `Web.Release.config`
//! publish transforms that switch remote debugging on and off), and `fcgihost migrate`
//! rewrites a wfastcgi-era web.config into that shape. Reading web.config's `<appSettings>`
//! at run time is the config module's job, not this one's.
//!
//! Submodules: `render` (the embedded templates and the secret), `migrate` (the rewrite),
//! `xml` (text splicing on roxmltree's byte ranges, escaping, encodings).

mod migrate;
mod render;
mod xml;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use migrate::{migrate, Migration, HANDLER_NAME};
pub use render::{
    generate_secret, platform_arguments, render, Rendered, WebConfigOptions, HANDLER_KEY,
    SECRET_KEY, SECRET_LEN, WEB_CONFIG_TEMPLATE, WEB_DEBUG_CONFIG_TEMPLATE,
    WEB_RELEASE_CONFIG_TEMPLATE,
};

/// Why `web-config` or `migrate` could not do its job; `Display` is the message for the user.
#[derive(Debug, thiserror::Error)]
pub enum IisError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Standard output or standard error could not be written (a closed pipe).
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
    /// The input is not UTF-8 or UTF-16 text.
    #[error("{}: not UTF-8 or UTF-16 text", path.display())]
    Encoding {
        /// The file.
        path: PathBuf,
    },
    /// The input is not well-formed XML.
    #[error("{}:{line}: malformed XML: {message}", path.display())]
    Xml {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: u32,
        /// What the parser said.
        message: String,
    },
    /// The input is XML but not a web.config.
    #[error("{}: not a web.config: {message}", path.display())]
    NotWebConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file to be written exists already and `--force` was not given.
    #[error("{} exists already; pass --force to overwrite it", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// `migrate --write` would overwrite an earlier backup.
    #[error(
        "the backup {} exists already (from an earlier migration?); move it away first",
        path.display()
    )]
    BackupExists {
        /// The existing backup.
        path: PathBuf,
    },
    /// A command-line value cannot be used.
    #[error("{flag}: {message}")]
    Arg {
        /// The flag (`--python`).
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The system's random source failed.
    #[error("cannot generate a random secret: {0}")]
    Random(String),
    /// An embedded template lacks what rendering needs, or edits collided (a bug in fcgihost).
    #[error("internal error in the web.config templates: {0}")]
    Template(String),
}

impl IisError {
    /// A roxmltree parse error of `path`, without the position the message repeats.
    fn xml(path: &Path, e: &roxmltree::Error) -> Self {
        let full = e.to_string();
        let position = format!(" at {}", e.pos());
        IisError::Xml {
            path: path.to_path_buf(),
            line: e.pos().row,
            message: full.strip_suffix(&position).unwrap_or(&full).to_string(),
        }
    }
}

/// The three file names `web-config --out` writes, as Visual Studio names them.
const FILE_NAMES: [&str; 3] = ["web.config", "Web.Debug.config", "Web.Release.config"];

/// `fcgihost web-config`: renders the files with a fresh secret. Without `out`, prints
/// web.config to `stdout`; with it, writes all three files into that directory (created if
/// needed), refusing to overwrite existing ones unless `force`. Either way with CRLF line
/// ends ([`crlf`]). Notes go to `stderr`.
pub fn web_config_command(
    opts: &WebConfigOptions,
    out: Option<&Path>,
    force: bool,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<(), IisError> {
    let secret = generate_secret()?;
    let rendered = render(opts, &secret)?;
    let mut notes: Vec<String> = Vec::new();
    match out {
        None => {
            stdout
                .write_all(crlf(&rendered.web_config).as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(IisError::Output)?;
            notes.push(
                "printed web.config; `--out DIR` writes it with Web.Debug.config and \
                 Web.Release.config"
                    .into(),
            );
        }
        Some(dir) => {
            let targets = FILE_NAMES
                .iter()
                .map(|name| existing_name(dir, name))
                .collect::<Vec<_>>();
            if !force {
                if let Some((path, _)) = targets.iter().find(|(_, exists)| *exists) {
                    return Err(IisError::Exists { path: path.clone() });
                }
            }
            std::fs::create_dir_all(dir).map_err(|source| IisError::Write {
                path: dir.to_path_buf(),
                source,
            })?;
            let contents = [
                &rendered.web_config,
                &rendered.web_debug_config,
                &rendered.web_release_config,
            ];
            for ((path, _), text) in targets.iter().zip(contents) {
                std::fs::write(path, crlf(text)).map_err(|source| IisError::Write {
                    path: path.clone(),
                    source,
                })?;
            }
            let names: Vec<String> = targets
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect();
            notes.push(format!("wrote {}", names.join(", ")));
            notes.push(
                "Web.Debug.config holds a fresh debug secret: publishing the Debug \
                 configuration turns remote debugging on, publishing Release turns it off"
                    .into(),
            );
        }
    }
    if opts.app.as_deref().is_none_or(|a| a.trim().is_empty()) {
        notes.push(format!(
            "{HANDLER_KEY} is empty (fcgihost's welcome page): pass --app or edit web.config"
        ));
    }
    if opts.debug {
        notes.push(format!(
            "remote debugging is on in web.config itself (secret {secret}); attach with: \
             fcgihost attach wss://{secret}@<your site>/ptvsd"
        ));
    }
    for n in notes {
        writeln!(stderr, "fcgihost web-config: {n}").map_err(IisError::Output)?;
    }
    Ok(())
}

/// `text` with Windows line ends (CRLF) throughout: web.config files live on Windows, where
/// Notepad, Visual Studio's publish transforms and `git` with `core.autocrlf` expect them.
/// The embedded templates keep LF in the repository; a CR already there is kept.
pub fn crlf(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 32);
    let mut previous = '\0';
    for c in text.chars() {
        if c == '\n' && previous != '\r' {
            out.push('\r');
        }
        out.push(c);
        previous = c;
    }
    out
}

/// `dir/name`, or the existing file in `dir` whose name differs from `name` only in letter
/// case (Visual Studio writes `Web.config`); and whether it exists.
fn existing_name(dir: &Path, name: &str) -> (PathBuf, bool) {
    let exact = dir.join(name);
    if exact.exists() {
        return (exact, true);
    }
    let other = std::fs::read_dir(dir).ok().and_then(|entries| {
        entries.filter_map(Result::ok).find(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
    });
    match other {
        Some(e) => (e.path(), true),
        None => (exact, false),
    }
}

/// `fcgihost migrate`: converts the wfastcgi web.config at `path`. Prints the report to
/// `stderr`; prints the new XML to `stdout`, or with `write` replaces the file (same
/// encoding) after copying the original to `<name>.wfastcgi.bak`.
pub fn migrate_command(
    path: &Path,
    write: bool,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<(), IisError> {
    let bytes = std::fs::read(path).map_err(|source| IisError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let (text, encoding) = xml::decode(&bytes).ok_or_else(|| IisError::Encoding {
        path: path.to_path_buf(),
    })?;
    let migration = migrate(&text, path)?;
    stderr
        .write_all(migration.report.as_bytes())
        .map_err(IisError::Output)?;
    if !write {
        let shown = if matches!(encoding, xml::Encoding::Utf16Le | xml::Encoding::Utf16Be) {
            declare_utf8(&migration.text)
        } else {
            migration.text.clone()
        };
        return stdout
            .write_all(shown.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(IisError::Output);
    }
    if !migration.changed {
        return writeln!(stderr, "{} left as it is", path.display()).map_err(IisError::Output);
    }
    let mut backup_name = path.file_name().unwrap_or_default().to_os_string();
    backup_name.push(".wfastcgi.bak");
    let backup = path.with_file_name(backup_name);
    if backup.exists() {
        return Err(IisError::BackupExists { path: backup });
    }
    std::fs::write(&backup, &bytes).map_err(|source| IisError::Write {
        path: backup.clone(),
        source,
    })?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".fcgihost-migrate.tmp");
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, xml::encode(&migration.text, encoding))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            IisError::Write {
                path: path.to_path_buf(),
                source,
            }
        })?;
    writeln!(
        stderr,
        "wrote {} (the original is in {})",
        path.display(),
        backup.display()
    )
    .map_err(IisError::Output)
}

/// The text with an `encoding="utf-16"` XML declaration changed to `utf-8`, for printing a
/// UTF-16 file's conversion as UTF-8.
fn declare_utf8(text: &str) -> String {
    let Some(decl_end) = text.starts_with("<?xml").then(|| text.find("?>")).flatten() else {
        return text.to_string();
    };
    let decl = &text[..decl_end];
    let lower = decl.to_ascii_lowercase();
    let Some(at) = lower.find("utf-16") else {
        return text.to_string();
    };
    format!("{}utf-8{}", &text[..at], &text[at + "utf-16".len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_config_files_get_crlf_line_ends() {
        assert_eq!(crlf("a\nb\r\nc\n"), "a\r\nb\r\nc\r\n");
        let dir = tempfile::tempdir().unwrap();
        let opts = WebConfigOptions::default();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        web_config_command(&opts, Some(dir.path()), false, &mut out, &mut err).unwrap();
        for name in FILE_NAMES {
            let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
            assert!(text.contains("\r\n"), "{name}");
            assert_eq!(
                text.matches('\n').count(),
                text.matches("\r\n").count(),
                "{name}"
            );
        }
        web_config_command(&opts, None, false, &mut out, &mut err).unwrap();
        let printed = String::from_utf8(out).unwrap();
        assert_eq!(
            printed.matches('\n').count(),
            printed.matches("\r\n").count()
        );
    }

    #[test]
    fn utf16_declarations_become_utf8_for_printing() {
        assert_eq!(
            declare_utf8("<?xml version=\"1.0\" encoding=\"UTF-16\"?><a/>"),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><a/>"
        );
        assert_eq!(declare_utf8("<a x=\"utf-16\"/>"), "<a x=\"utf-16\"/>");
    }

    #[test]
    fn web_config_out_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Web.config"), "mine").unwrap();
        let opts = WebConfigOptions::default();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let e = web_config_command(&opts, Some(dir.path()), false, &mut out, &mut err).unwrap_err();
        assert!(matches!(e, IisError::Exists { .. }), "{e}");
        web_config_command(&opts, Some(dir.path()), true, &mut out, &mut err).unwrap();
        let written = std::fs::read_to_string(dir.path().join("Web.config")).unwrap();
        assert!(written.contains("httpPlatformHandler"));
        assert!(dir.path().join("Web.Debug.config").is_file());
        assert!(dir.path().join("Web.Release.config").is_file());
    }

    #[test]
    fn migrate_write_keeps_a_backup_and_the_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Web.config");
        let original = "<configuration><appSettings><add key=\"WSGI_HANDLER\" value=\"a.b\"/></appSettings></configuration>";
        std::fs::write(&path, xml::encode(original, xml::Encoding::Utf8Bom)).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        migrate_command(&path, true, &mut out, &mut err).unwrap();
        assert!(out.is_empty());
        let backup = dir.path().join("Web.config.wfastcgi.bak");
        assert_eq!(
            std::fs::read(&backup).unwrap(),
            xml::encode(original, xml::Encoding::Utf8Bom)
        );
        let (new_text, enc) = xml::decode(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(enc, xml::Encoding::Utf8Bom);
        assert!(new_text.contains("httpPlatformHandler"));
        let e = {
            std::fs::write(&path, original).unwrap();
            migrate_command(&path, true, &mut out, &mut err).unwrap_err()
        };
        assert!(matches!(e, IisError::BackupExists { .. }), "{e}");
    }
}
