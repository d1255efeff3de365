//! The wfastcgi drop-in (issue 4): a directory holding only a wfastcgi-era web.config (the
//! old FastCGI handler and `<appSettings>`) runs under `fcgihost serve` with no other
//! configuration — `WSGI_HANDLER`, `PYTHONPATH` with `%VAR%`, `SCRIPT_NAME`, `WSGI_LOG`,
//! other appSettings in the app's environment, and a warning for settings that no longer
//! apply.
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use common::*;

const WEB_CONFIG: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <appSettings>
    <add key="WSGI_HANDLER" value="dropinapp.application" />
    <add key="PYTHONPATH" value="%DROPIN_LIBS%;extra" />
    <add key="WSGI_LOG" value="wfastcgi.log" />
    <add key="SCRIPT_NAME" value="/myproj" />
    <add key="WSGI_PTVSD_ADDRESS" value="localhost:5678" />
    <add key="DJANGO_SETTINGS_MODULE" value="myproj.settings" />
  </appSettings>
  <system.webServer>
    <handlers>
      <add name="Python FastCGI" path="*" verb="*" modules="FastCgiModule"
           scriptProcessor="C:\Python312\python.exe|C:\Python312\Lib\site-packages\wfastcgi.py"
           resourceType="Unspecified" requireAccess="Script" />
    </handlers>
  </system.webServer>
</configuration>
"#;

const APP: &str = r#"import json, os
import dropinhelper

def application(environ, start_response):
    body = json.dumps({
        "script_name": environ["SCRIPT_NAME"],
        "path_info": environ["PATH_INFO"],
        "query": environ["QUERY_STRING"],
        "settings": os.environ.get("DJANGO_SETTINGS_MODULE"),
        "helper": dropinhelper.NAME,
        "cwd": os.getcwd(),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
"#;

#[test]
fn a_wfastcgi_web_config_alone_runs_the_app() {
    let dir = tempfile::Builder::new()
        .prefix("fcgihost-test-")
        .tempdir()
        .expect("tempdir");
    let libs = dir.path().join("libs");
    let host = Host::start_in(
        HostOpts::new()
            .file("web.config", WEB_CONFIG)
            .file("libs/dropinapp.py", APP)
            .file("extra/dropinhelper.py", "NAME = 'from extra'\n")
            .env("DROPIN_LIBS", libs.as_os_str()),
        dir,
    );
    let r = get(&host.url("/myproj/orders/7?x=1"));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["script_name"], "/myproj", "SCRIPT_NAME from appSettings");
    assert_eq!(
        v["path_info"], "/orders/7",
        "PATH_INFO without the mount prefix"
    );
    assert_eq!(v["query"], "x=1");
    assert_eq!(
        v["settings"], "myproj.settings",
        "other appSettings reach the app's environment"
    );
    assert_eq!(
        v["helper"], "from extra",
        "relative PYTHONPATH entries work"
    );
    let cwd = std::path::PathBuf::from(v["cwd"].as_str().expect("cwd"));
    assert_eq!(
        cwd.canonicalize().expect("cwd"),
        host.dir().canonicalize().expect("dir"),
        "workers run in the app directory, as wfastcgi chdir'ed"
    );

    let log = host.log();
    assert!(
        log.contains("WSGI_PTVSD_ADDRESS"),
        "a warning names the setting that no longer applies:\n{log}"
    );
    let wsgi_log = std::fs::read_to_string(host.dir().join("wfastcgi.log")).expect("WSGI_LOG file");
    assert!(
        wsgi_log.contains("listening on"),
        "WSGI_LOG receives the log:\n{wsgi_log}"
    );
}
