//! The IIS commands through the real binary: `fcgihost web-config` renders well-formed
//! web.config / Web.Debug.config / Web.Release.config that use only what HttpPlatformHandler's
//! schema and XDT define, with a fresh secret each time; `fcgihost migrate` turns the wfastcgi
//! web.config of tests/fixtures into the fcgihost one, keeping every appSetting; and a
//! `web-config --debug` file's secret opens `/ptvsd` of a `fcgihost serve` that reads it.
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::dap::{basic_auth, DapClient};
use common::{app_dir, request, run_cli, Host, HostOpts};

/// The attributes HttpPlatformHandler's configuration schema defines for `<httpPlatform>`
/// (httpplatform_schema.xml, v1.2; its child element is `<environmentVariables>`).
const HTTP_PLATFORM_ATTRIBUTES: &[&str] = &[
    "processPath",
    "arguments",
    "startupTimeLimit",
    "startupRetryCount",
    "rapidFailsPerMinute",
    "requestTimeout",
    "stdoutLogEnabled",
    "stdoutLogFile",
    "processesPerApplication",
    "forwardWindowsAuthToken",
];
/// The XML Document Transform namespace.
const XDT: &str = "http://schemas.microsoft.com/XML-Document-Transform";
/// How long one CLI run may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

fn fixture() -> PathBuf {
    common::repo_root().join("tests/fixtures/wfastcgi.web.config")
}

/// Runs `fcgihost ARGS` in `dir` (no `--listen`/`--python` added) and expects success.
fn cli(dir: &Path, args: &[&str]) -> common::CliOutput {
    let mut opts = HostOpts::new()
        .subcommand(args[0])
        .no_listen_flag()
        .no_python_flag();
    for a in &args[1..] {
        opts = opts.arg(a);
    }
    let out = run_cli(opts, dir, CLI_TIMEOUT);
    assert_eq!(out.code, Some(0), "fcgihost {args:?} failed: {out:#?}");
    out
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fcgihost-iis-")
        .tempdir()
        .unwrap()
}

fn parse(text: &str) -> roxmltree::Document<'_> {
    roxmltree::Document::parse(text).unwrap_or_else(|e| panic!("not well-formed XML: {e}\n{text}"))
}

/// `(key, value)` of every `<add>` in `<appSettings>`, in order.
fn app_settings(doc: &roxmltree::Document) -> Vec<(String, String)> {
    doc.descendants()
        .filter(|n| {
            n.has_tag_name("add") && n.parent().is_some_and(|p| p.has_tag_name("appSettings"))
        })
        .map(|n| {
            (
                n.attribute("key").unwrap_or("").to_string(),
                n.attribute("value").unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn setting(doc: &roxmltree::Document, key: &str) -> Option<String> {
    app_settings(doc)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

fn element<'a, 'i>(doc: &'a roxmltree::Document<'i>, name: &str) -> roxmltree::Node<'a, 'i> {
    doc.descendants()
        .find(|n| n.has_tag_name(name))
        .unwrap_or_else(|| panic!("no <{name}>"))
}

/// Checks `<httpPlatform>` against the schema: known attributes only (XDT's aside), and only
/// `<environmentVariables>` holding `<environmentVariable name value>` inside.
fn assert_schema_valid_platform(doc: &roxmltree::Document) {
    let platform = element(doc, "httpPlatform");
    for a in platform.attributes() {
        if a.namespace() == Some(XDT) {
            continue;
        }
        assert!(
            a.namespace().is_none() && HTTP_PLATFORM_ATTRIBUTES.contains(&a.name()),
            "<httpPlatform> attribute {:?} is not in HttpPlatformHandler's schema",
            a.name()
        );
    }
    for child in platform.children().filter(|n| n.is_element()) {
        assert!(
            child.has_tag_name("environmentVariables"),
            "{:?}",
            child.tag_name()
        );
        for var in child.children().filter(|n| n.is_element()) {
            assert!(
                var.has_tag_name("environmentVariable"),
                "{:?}",
                var.tag_name()
            );
            let names: BTreeSet<&str> = var.attributes().map(|a| a.name()).collect();
            assert_eq!(names, BTreeSet::from(["name", "value"]));
        }
    }
}

fn assert_secret_shape(secret: &str) {
    assert_eq!(secret.len(), 32, "{secret:?}");
    assert!(
        secret.chars().all(|c| c.is_ascii_alphanumeric()),
        "{secret:?}"
    );
}

#[test]
fn web_config_files_are_well_formed_and_valid_for_the_schema() {
    let dir = tempdir();
    let out = cli(
        dir.path(),
        &[
            "web-config",
            "--app",
            "flaskapp.app",
            "--python",
            r"C:\Program Files\Python312\python.exe",
            "--out",
            "site",
        ],
    );
    let site = dir.path().join("site");
    let web = fs::read_to_string(site.join("web.config")).unwrap();
    let debug = fs::read_to_string(site.join("Web.Debug.config")).unwrap();
    let release = fs::read_to_string(site.join("Web.Release.config")).unwrap();
    assert!(
        out.stderr
            .contains("Web.Debug.config holds a fresh debug secret"),
        "{out:#?}"
    );

    // web.config: the app, HttpPlatformHandler for every request, fcgihost with --python.
    let doc = parse(&web);
    assert_eq!(doc.root_element().tag_name().name(), "configuration");
    assert_eq!(
        setting(&doc, "WSGI_HANDLER").as_deref(),
        Some("flaskapp.app")
    );
    assert_eq!(
        setting(&doc, "WSGI_PTVSD_SECRET"),
        None,
        "debugging must be off by default"
    );
    let handler = element(&doc, "handlers")
        .children()
        .find(|n| n.has_tag_name("add"))
        .unwrap();
    assert_eq!(handler.attribute("modules"), Some("httpPlatformHandler"));
    assert_eq!(handler.attribute("path"), Some("*"));
    assert_schema_valid_platform(&doc);
    let platform = element(&doc, "httpPlatform");
    assert_eq!(
        platform.attribute("arguments"),
        Some(r#"serve --python "C:\Program Files\Python312\python.exe""#)
    );
    assert_eq!(platform.attribute("processPath"), Some(r".\fcgihost.exe"));
    assert_eq!(platform.attribute("stdoutLogEnabled"), Some("true"));
    assert_eq!(platform.attribute("requestTimeout"), Some("00:30:00"));
    assert_eq!(platform.attribute("processesPerApplication"), Some("1"));
    assert_eq!(
        element(&doc, "webSocket").attribute("enabled"),
        Some("true")
    );

    // Web.Debug.config: inserts (or updates) exactly one secret, raises IIS's timeout.
    let doc = parse(&debug);
    assert_eq!(
        doc.root_element().lookup_namespace_uri(Some("xdt")),
        Some(XDT)
    );
    let adds: Vec<_> = element(&doc, "appSettings")
        .children()
        .filter(|n| n.is_element())
        .collect();
    let transforms: Vec<_> = adds
        .iter()
        .map(|n| n.attribute((XDT, "Transform")))
        .collect();
    assert_eq!(
        transforms,
        [Some("InsertIfMissing"), Some("SetAttributes(value)")]
    );
    let secrets: BTreeSet<_> = adds.iter().map(|n| n.attribute("value").unwrap()).collect();
    assert_eq!(secrets.len(), 1);
    assert_secret_shape(secrets.first().unwrap());
    for n in &adds {
        assert_eq!(n.attribute("key"), Some("WSGI_PTVSD_SECRET"));
        assert_eq!(n.attribute((XDT, "Locator")), Some("Match(key)"));
    }
    assert_schema_valid_platform(&doc);

    // Web.Release.config: removes it.
    let doc = parse(&release);
    let remove = element(&doc, "appSettings").first_element_child().unwrap();
    assert_eq!(remove.attribute("key"), Some("WSGI_PTVSD_SECRET"));
    assert_eq!(remove.attribute((XDT, "Transform")), Some("Remove"));
    assert_eq!(remove.attribute((XDT, "Locator")), Some("Match(key)"));

    // Without --out, stdout is that same web.config.
    let printed = cli(
        dir.path(),
        &[
            "web-config",
            "--app",
            "flaskapp.app",
            "--python",
            r"C:\Program Files\Python312\python.exe",
        ],
    );
    assert_eq!(printed.stdout, web);

    // --out refuses to overwrite unless --force.
    let again = run_cli(
        HostOpts::new()
            .subcommand("web-config")
            .no_listen_flag()
            .no_python_flag()
            .arg("--out")
            .arg("site"),
        dir.path(),
        CLI_TIMEOUT,
    );
    assert_eq!(again.code, Some(1), "{again:#?}");
    assert!(again.stderr.contains("--force"), "{again:#?}");
    cli(dir.path(), &["web-config", "--out", "site", "--force"]);
}

#[test]
fn web_config_debug_makes_a_fresh_secret_each_time() {
    let dir = tempdir();
    let secret_of = |out: &common::CliOutput| {
        let doc = parse(&out.stdout);
        assert_schema_valid_platform(&doc);
        assert_eq!(
            element(&doc, "httpPlatform").attribute("requestTimeout"),
            Some("08:00:00")
        );
        setting(&doc, "WSGI_PTVSD_SECRET").expect("no WSGI_PTVSD_SECRET")
    };
    let first = secret_of(&cli(dir.path(), &["web-config", "--debug"]));
    let second = secret_of(&cli(dir.path(), &["web-config", "--debug"]));
    assert_secret_shape(&first);
    assert_secret_shape(&second);
    assert_ne!(first, second);

    // With --out, web.config and Web.Debug.config carry the same secret.
    cli(dir.path(), &["web-config", "--debug", "--out", "."]);
    let web = fs::read_to_string(dir.path().join("web.config")).unwrap();
    let debug = fs::read_to_string(dir.path().join("Web.Debug.config")).unwrap();
    let secret = setting(&parse(&web), "WSGI_PTVSD_SECRET").unwrap();
    assert_secret_shape(&secret);
    assert!(app_settings(&parse(&debug))
        .iter()
        .all(|(_, v)| *v == secret));
}

#[test]
fn migrate_keeps_every_app_setting_and_switches_to_http_platform_handler() {
    let original = fs::read_to_string(fixture()).unwrap();
    let dir = tempdir();
    fs::write(dir.path().join("web.config"), &original).unwrap();
    let out = cli(dir.path(), &["migrate", "web.config"]);

    let before = parse(&original);
    let after = parse(&out.stdout);
    let settings = app_settings(&after);
    assert_eq!(settings, app_settings(&before));
    assert_eq!(settings.len(), 9);
    assert_eq!(
        setting(&after, "PYTHONPATH").as_deref(),
        Some(r"%SystemDrive%\inetpub\myproj;%MYPROJ_VENDOR%\lib")
    );
    assert_eq!(
        setting(&after, "WSGI_PTVSD_SECRET").as_deref(),
        Some("my_secret_22_chars_xy&z")
    );

    // The handler: httpPlatformHandler instead of FastCGI, fcgihost gets the old python.
    assert!(!out.stdout.contains("FastCgiModule"), "{}", out.stdout);
    assert!(!after
        .descendants()
        .any(|n| n.has_attribute("scriptProcessor")));
    let handlers: Vec<_> = after
        .descendants()
        .filter(|n| n.has_tag_name("add") && n.parent().is_some_and(|p| p.has_tag_name("handlers")))
        .collect();
    assert_eq!(handlers.len(), 1);
    assert_eq!(handlers[0].attribute("name"), Some("httpPlatformHandler"));
    assert_eq!(
        handlers[0].attribute("modules"),
        Some("httpPlatformHandler")
    );
    assert_schema_valid_platform(&after);
    assert_eq!(
        element(&after, "httpPlatform").attribute("arguments"),
        Some(r"serve --python C:\Python312\python.exe")
    );
    assert_eq!(
        element(&after, "webSocket").attribute("enabled"),
        Some("true")
    );
    // The static folder's exclusion follows the handler's new name.
    let removes: Vec<_> = after
        .descendants()
        .filter(|n| n.has_tag_name("remove"))
        .map(|n| n.attribute("name").unwrap_or(""))
        .collect();
    assert_eq!(removes, ["httpPlatformHandler"]);

    // Everything outside <handlers> and the added elements is byte for byte the same.
    let same = |tag: &str| {
        let a = element(&before, tag).range();
        let b = element(&after, tag).range();
        assert_eq!(&out.stdout[b], &original[a], "<{tag}> changed");
    };
    for tag in ["appSettings", "system.web", "staticContent"] {
        same(tag);
    }
    assert!(out
        .stdout
        .starts_with(&original[..original.find("<configuration>").unwrap()]));

    // The report: what changed, what no longer applies, what to do next.
    for needle in [
        "replaced handler \"Python FastCGI\"",
        "added <httpPlatform",
        "added <webSocket enabled=\"true\"/>",
        "all 9 appSettings",
        "WSGI_PTVSD_ADDRESS: ",
        "APPINSIGHTS_INSTRUMENTATIONKEY: ",
        "Next steps",
        "copy fcgihost.exe",
    ] {
        assert!(
            out.stderr.contains(needle),
            "no {needle:?} in the report:\n{}",
            out.stderr
        );
    }
    assert_eq!(
        fs::read_to_string(dir.path().join("web.config")).unwrap(),
        original
    );
}

#[test]
fn migrate_write_replaces_the_file_and_keeps_a_backup() {
    let original = fs::read(fixture()).unwrap();
    let dir = tempdir();
    fs::write(dir.path().join("Web.config"), &original).unwrap();
    let printed = cli(dir.path(), &["migrate", "Web.config"]);
    let written = cli(dir.path(), &["migrate", "Web.config", "--write"]);
    assert!(written.stdout.is_empty(), "{written:#?}");
    assert!(
        written.stderr.contains("Web.config.wfastcgi.bak"),
        "{written:#?}"
    );
    assert_eq!(
        fs::read(dir.path().join("Web.config.wfastcgi.bak")).unwrap(),
        original
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("Web.config")).unwrap(),
        printed.stdout
    );

    // A second run finds nothing to do and leaves the file (and the backup) alone.
    let again = cli(dir.path(), &["migrate", "Web.config", "--write"]);
    assert!(
        again.stderr.contains("already uses HttpPlatformHandler"),
        "{again:#?}"
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("Web.config")).unwrap(),
        printed.stdout
    );

    // Not XML: an error naming the file and line, exit code 1.
    fs::write(
        dir.path().join("broken.config"),
        "<configuration>\n<appSettings>",
    )
    .unwrap();
    let bad = run_cli(
        HostOpts::new()
            .subcommand("migrate")
            .no_listen_flag()
            .no_python_flag()
            .arg("broken.config"),
        dir.path(),
        CLI_TIMEOUT,
    );
    assert_eq!(bad.code, Some(1), "{bad:#?}");
    assert!(bad.stderr.contains("broken.config:"), "{bad:#?}");
    assert!(bad.stderr.contains("malformed XML"), "{bad:#?}");
}

/// `web-config --debug --app plainapp:app` output, as the app's web.config, is all `serve`
/// needs: it serves the app and opens /ptvsd to that secret and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_config_debug_secret_opens_ptvsd_of_serve() {
    let dir = tempdir();
    let rendered = cli(
        dir.path(),
        &["web-config", "--debug", "--app", "plainapp:app"],
    )
    .stdout;
    let secret = setting(&parse(&rendered), "WSGI_PTVSD_SECRET").unwrap();
    let app = fs::read(app_dir("plain").join("plainapp.py")).unwrap();

    // No --app: the app and the secret come from web.config in the app dir (the host's cwd).
    let opts = HostOpts::new()
        .file("web.config", rendered)
        .file("plainapp.py", app)
        .workers(1);
    let host = tokio::task::spawn_blocking(move || Host::start(opts))
        .await
        .unwrap();
    let get = |path: &str, auth: Option<String>| {
        let url = host.url(path);
        tokio::task::spawn_blocking(move || {
            let headers: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| vec![("Authorization", a)])
                .unwrap_or_default();
            request("GET", &url, &headers, b"")
        })
    };

    let hello = get("/", None).await.unwrap();
    assert_eq!(hello.status, 200, "{}", host.log());
    assert_eq!(hello.text(), "Hello, world!");
    let info = get("/ptvsd", Some(basic_auth(&secret))).await.unwrap();
    assert_eq!(info.status, 200, "{}\n{}", info.text(), host.log());
    let refused = get("/ptvsd", Some(basic_auth("not-the-secret")))
        .await
        .unwrap();
    assert_eq!(refused.status, 401);

    // A debugger gets through the WebSocket with that secret and attaches to the worker.
    let ws = format!("ws://{}/ptvsd", host.addr());
    let mut dap = DapClient::connect_ws(&ws, Some(&secret))
        .await
        .unwrap_or_else(|e| panic!("WebSocket with the web.config secret: {e}\n{}", host.log()));
    dap.attach("vscode", &[]).await;
    dap.disconnect().await;
    match DapClient::connect_ws(&ws, Some("not-the-secret")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        Err(other) => panic!("expected 401, got {other}"),
        Ok(_) => panic!("the WebSocket was accepted with a wrong secret"),
    }
    drop(host);
}
