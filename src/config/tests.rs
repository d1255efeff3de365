//! Tests of the configuration layers, their precedence and the messages users see. Each test
//! works in its own temporary directory (passed as the current directory), so tests run in
//! parallel without touching the process's real current directory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::values::{
    expand_percent_vars, format_duration, parse_listen, parse_script_name, split_words, suggest,
};
use super::*;

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fcgihost-config-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create dir");
        }
        std::fs::write(&p, text).expect("write file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load_in(dir: &TempDir, cli: &CliOverrides, e: &[(&str, &str)]) -> Loaded {
    load_with_cwd(cli, &env(e), dir.path()).expect("config loads")
}

fn load_err(dir: &TempDir, cli: &CliOverrides, e: &[(&str, &str)]) -> String {
    match load_with_cwd(cli, &env(e), dir.path()) {
        Ok(_) => panic!("expected a configuration error"),
        Err(err) => err.to_string(),
    }
}

fn source_of<'a>(loaded: &'a Loaded, key: &str) -> &'a Source {
    &loaded
        .sources
        .iter()
        .find(|s| s.key == key)
        .unwrap_or_else(|| panic!("no setting {key}"))
        .source
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

const WEB_CONFIG_APP: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <appSettings>
    <add key="WSGI_HANDLER" value="app.web" />
  </appSettings>
</configuration>
"#;

#[test]
fn defaults_when_nothing_is_configured() {
    let dir = TempDir::new();
    let l = load_in(&dir, &CliOverrides::default(), &[]);
    let c = &l.config;
    assert_eq!(c.app, None);
    assert_eq!(c.app_dir, dir.path());
    assert_eq!(c.python, if cfg!(windows) { "python" } else { "python3" });
    assert!(c.pythonpath.is_empty());
    assert_eq!(c.listen, addr("127.0.0.1:8000"));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(c.workers, cpus);
    assert_eq!(c.max_queue, 1000);
    assert_eq!(c.queue_timeout, Duration::from_secs(30));
    assert_eq!(c.request_timeout, Some(Duration::from_secs(90)));
    assert_eq!(c.graceful_timeout, Duration::from_secs(30));
    assert_eq!(c.startup_timeout, Duration::from_secs(60));
    assert_eq!(c.rapid_fails_per_minute, 10);
    assert_eq!(c.script_name, "");
    assert_eq!(
        c.restart_file_regex.as_deref(),
        Some(r".*((\.py)|(\.config))$")
    );
    assert_eq!(c.worker, WorkerConfig::default());
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.file, None);
    assert!(c.log.access);
    assert!(!c.debug_enabled());
    assert_eq!(c.debug.path, "/ptvsd");
    assert_eq!(c.debug.wait_for_attach, None);
    assert_eq!(c.debug.max_pause, None);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert!(l.sources.iter().all(|s| s.source == Source::Default));
    assert_eq!(l.config_file, None);
    assert_eq!(l.web_config, None);
}

#[test]
fn app_precedence_cli_env_file_webconfig_default() {
    let dir = TempDir::new();
    let web = dir.write("web.config", WEB_CONFIG_APP);
    dir.write("fcgihost.toml", "app = \"app.file\"\n");
    let cli = CliOverrides {
        app: Some("app.cli".into()),
        ..CliOverrides::default()
    };
    let all_env: &[(&str, &str)] = &[("FCGIHOST_APP", "app.env")];

    let l = load_in(&dir, &cli, all_env);
    assert_eq!(l.config.app.as_deref(), Some("app.cli"));
    assert_eq!(source_of(&l, "app"), &Source::Cli);

    let l = load_in(&dir, &CliOverrides::default(), all_env);
    assert_eq!(l.config.app.as_deref(), Some("app.env"));
    assert_eq!(source_of(&l, "app"), &Source::Env("FCGIHOST_APP".into()));

    let l = load_in(&dir, &CliOverrides::default(), &[]);
    assert_eq!(l.config.app.as_deref(), Some("app.file"));
    assert_eq!(
        source_of(&l, "app"),
        &Source::File(PathBuf::from("fcgihost.toml"))
    );
    assert_eq!(l.config_file, Some(PathBuf::from("fcgihost.toml")));

    std::fs::remove_file(dir.path().join("fcgihost.toml")).expect("remove");
    let l = load_in(&dir, &CliOverrides::default(), &[]);
    assert_eq!(l.config.app.as_deref(), Some("app.web"));
    assert_eq!(source_of(&l, "app"), &Source::WebConfig(web.clone()));
    assert_eq!(l.web_config, Some(web.clone()));

    std::fs::remove_file(&web).expect("remove");
    let l = load_in(&dir, &CliOverrides::default(), &[]);
    assert_eq!(l.config.app, None);
    assert_eq!(source_of(&l, "app"), &Source::Default);
}

#[test]
fn workers_and_timeout_precedence() {
    let dir = TempDir::new();
    dir.write(
        "fcgihost.toml",
        "workers = 2\nrequest_timeout = \"2m\"\nmax_queue = 5\n",
    );
    let cli = CliOverrides {
        workers: Some(7),
        request_timeout: Some("0".into()),
        ..CliOverrides::default()
    };
    let e: &[(&str, &str)] = &[
        ("FCGIHOST_WORKERS", "3"),
        ("FCGIHOST_REQUEST_TIMEOUT", "45s"),
    ];
    let l = load_in(&dir, &cli, e);
    assert_eq!(l.config.workers, 7);
    assert_eq!(l.config.request_timeout, None, "0 disables");
    assert_eq!(l.config.max_queue, 5);
    assert_eq!(source_of(&l, "workers"), &Source::Cli);

    let l = load_in(&dir, &CliOverrides::default(), e);
    assert_eq!(l.config.workers, 3);
    assert_eq!(l.config.request_timeout, Some(Duration::from_secs(45)));
    assert_eq!(
        source_of(&l, "request_timeout"),
        &Source::Env("FCGIHOST_REQUEST_TIMEOUT".into())
    );

    let l = load_in(&dir, &CliOverrides::default(), &[]);
    assert_eq!(l.config.workers, 2);
    assert_eq!(l.config.request_timeout, Some(Duration::from_secs(120)));
}

#[test]
fn env_layer_beats_webconfig_and_fcgihost_names_beat_wsgi_names() {
    let dir = TempDir::new();
    dir.write(
        "web.config",
        r#"<configuration><appSettings>
            <add key="WSGI_HANDLER" value="app.web"/>
            <add key="WSGI_LOG" value="web.log"/>
            <add key="WSGI_PTVSD_SECRET" value="from-web-config-secret-value"/>
        </appSettings></configuration>"#,
    );
    let l = load_in(
        &dir,
        &CliOverrides::default(),
        &[
            ("WSGI_HANDLER", "app.wsgi_env"),
            ("FCGIHOST_APP", "app.fcgihost_env"),
            ("WSGI_LOG", "env.log"),
            ("FCGIHOST_DEBUG_SECRET", ""),
        ],
    );
    assert_eq!(l.config.app.as_deref(), Some("app.fcgihost_env"));
    assert_eq!(l.config.log.file, Some(dir.path().join("env.log")));
    assert_eq!(source_of(&l, "log.file"), &Source::Env("WSGI_LOG".into()));
    assert_eq!(l.origin("log.file"), "environment variable WSGI_LOG");
    let from_web = load_in(&dir, &CliOverrides::default(), &[]);
    assert_eq!(
        from_web.origin("log.file"),
        format!("WSGI_LOG in {}", dir.path().join("web.config").display())
    );
    assert_eq!(from_web.origin("workers"), "the default of workers");
    assert_eq!(l.config.debug.secret, None, "empty env value turns it off");
    assert!(!l.config.debug_enabled());
}

#[test]
fn every_table_key_has_an_env_override() {
    let dir = TempDir::new();
    let l = load_in(
        &dir,
        &CliOverrides::default(),
        &[
            ("FCGIHOST_PYTHON", ".venv/bin/python"),
            ("FCGIHOST_LISTEN", "0.0.0.0:9000"),
            ("FCGIHOST_MAX_QUEUE", "0"),
            ("FCGIHOST_QUEUE_TIMEOUT", "500ms"),
            ("FCGIHOST_GRACEFUL_TIMEOUT", "1m30s"),
            ("FCGIHOST_STARTUP_TIMEOUT", "2m"),
            ("FCGIHOST_RAPID_FAILS_PER_MINUTE", "3"),
            ("FCGIHOST_SCRIPT_NAME", "/mount/"),
            ("FCGIHOST_RESTART_FILE_REGEX", ""),
            (
                "FCGIHOST_WORKER_COMMAND",
                "python3 \"my fcgi.py\" --flag C:\\x",
            ),
            ("FCGIHOST_WORKER_ENV", "A=1 B=\"two words\""),
            ("FCGIHOST_LOG_LEVEL", "WARNING"),
            ("FCGIHOST_LOG_ACCESS", "off"),
            ("FCGIHOST_DEBUG_SECRET", "a-long-enough-debug-secret"),
            ("FCGIHOST_DEBUG_PATH", "dbg"),
            ("FCGIHOST_DEBUG_WAIT_FOR_ATTACH", "10s"),
            ("FCGIHOST_DEBUG_MAX_PAUSE", "1h"),
            ("FCGIHOST_PYTHONPATH", "lib"),
        ],
    );
    let c = &l.config;
    assert_eq!(
        PathBuf::from(&c.python),
        dir.path().join(".venv").join("bin").join("python")
    );
    assert_eq!(c.listen, addr("0.0.0.0:9000"));
    assert_eq!(c.max_queue, 0);
    assert_eq!(c.queue_timeout, Duration::from_millis(500));
    assert_eq!(c.graceful_timeout, Duration::from_secs(90));
    assert_eq!(c.startup_timeout, Duration::from_secs(120));
    assert_eq!(c.rapid_fails_per_minute, 3);
    assert_eq!(c.script_name, "/mount");
    assert_eq!(c.restart_file_regex, None);
    assert_eq!(
        c.worker.command,
        Some(vec![
            "python3".to_string(),
            "my fcgi.py".to_string(),
            "--flag".to_string(),
            "C:\\x".to_string()
        ])
    );
    assert_eq!(c.worker.env.get("A").map(String::as_str), Some("1"));
    assert_eq!(c.worker.env.get("B").map(String::as_str), Some("two words"));
    assert_eq!(c.log.level, "warn");
    assert!(!c.log.access);
    assert!(c.debug_enabled());
    assert_eq!(c.debug.path, "/dbg");
    assert_eq!(c.debug.wait_for_attach, Some(Duration::from_secs(10)));
    assert_eq!(c.debug.max_pause, Some(Duration::from_secs(3600)));
    assert_eq!(c.pythonpath, vec!["lib".to_string()]);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn full_toml_file_with_tables() {
    let dir = TempDir::new();
    dir.write(
        "fcgihost.toml",
        r#"
app = "pkg.mod:app"
python = ".venv/bin/python"
pythonpath = ["lib", "vendor"]
listen = 8080
workers = 4
queue_timeout = 5
restart_file_regex = ""

[worker]
command = ["python3", "my_fcgi.py"]

[worker.env]
DJANGO_SETTINGS_MODULE = "site.settings"
PORT = 5

[log]
level = "debug"
file = "logs/host.log"
access = false

[debug]
secret = "a-long-enough-debug-secret"
path = "/dbg/"
wait_for_attach = "30s"
max_pause = "0s"
"#,
    );
    let l = load_in(&dir, &CliOverrides::default(), &[]);
    let c = &l.config;
    assert_eq!(c.app.as_deref(), Some("pkg.mod:app"));
    assert_eq!(
        PathBuf::from(&c.python),
        dir.path().join(".venv/bin/python")
    );
    assert_eq!(c.pythonpath, vec!["lib".to_string(), "vendor".to_string()]);
    assert_eq!(c.listen, addr("127.0.0.1:8080"));
    assert_eq!(c.workers, 4);
    assert_eq!(c.queue_timeout, Duration::from_secs(5));
    assert_eq!(c.restart_file_regex, None);
    assert_eq!(
        c.worker.command,
        Some(vec!["python3".to_string(), "my_fcgi.py".to_string()])
    );
    assert_eq!(c.worker.env.get("PORT").map(String::as_str), Some("5"));
    assert_eq!(c.log.level, "debug");
    assert_eq!(c.log.file, Some(dir.path().join("logs").join("host.log")));
    assert!(!c.log.access);
    assert_eq!(c.debug.path, "/dbg");
    assert_eq!(c.debug.wait_for_attach, Some(Duration::from_secs(30)));
    assert_eq!(c.debug.max_pause, None);
    assert_eq!(
        source_of(&l, "worker.env.DJANGO_SETTINGS_MODULE"),
        &Source::File(PathBuf::from("fcgihost.toml"))
    );
}

#[test]
fn config_file_from_cli_sets_default_app_dir_and_relative_paths() {
    let dir = TempDir::new();
    dir.write("site/app/web.config", WEB_CONFIG_APP);
    dir.write("site/conf/host.toml", "app_dir = \"../app\"\n");
    let cli = CliOverrides {
        config_file: Some(PathBuf::from("site/conf/host.toml")),
        ..CliOverrides::default()
    };
    let l = load_in(&dir, &cli, &[]);
    assert_eq!(l.config.app_dir, dir.path().join("site/conf/../app"));
    assert_eq!(l.config.app.as_deref(), Some("app.web"));
    assert_eq!(
        source_of(&l, "app_dir").to_string(),
        Path::new("site/conf/host.toml").display().to_string()
    );

    // Without app_dir the config file's directory is the app dir.
    dir.write("site/conf/host.toml", "workers = 1\n");
    let l = load_in(&dir, &cli, &[]);
    assert_eq!(l.config.app_dir, dir.path().join("site/conf"));
    assert_eq!(source_of(&l, "app_dir"), &Source::Default);
}

#[test]
fn missing_config_file_is_an_error() {
    let dir = TempDir::new();
    let cli = CliOverrides {
        config_file: Some(PathBuf::from("nope.toml")),
        ..CliOverrides::default()
    };
    assert_eq!(
        load_err(&dir, &cli, &[]),
        "config file nope.toml (from --config) not found"
    );
    assert_eq!(
        load_err(
            &dir,
            &CliOverrides::default(),
            &[("FCGIHOST_CONFIG", "other.toml")]
        ),
        "config file other.toml (from env FCGIHOST_CONFIG) not found"
    );
}

#[test]
fn fcgihost_config_env_names_the_file() {
    let dir = TempDir::new();
    dir.write("conf/x.toml", "workers = 9\n");
    let l = load_in(
        &dir,
        &CliOverrides::default(),
        &[("FCGIHOST_CONFIG", "conf/x.toml")],
    );
    assert_eq!(l.config.workers, 9);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn app_dir_that_does_not_exist_is_an_error() {
    let dir = TempDir::new();
    let cli = CliOverrides {
        app_dir: Some(PathBuf::from("missing")),
        ..CliOverrides::default()
    };
    let msg = load_err(&dir, &cli, &[]);
    assert!(msg.starts_with("app_dir "), "{msg}");
    assert!(
        msg.ends_with("(from command line) is not a directory"),
        "{msg}"
    );
}

#[test]
fn unknown_top_level_key_has_line_and_suggestion() {
    let dir = TempDir::new();
    dir.write("fcgihost.toml", "app = \"x:app\"\n\nwokers = 3\n");
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:3: unknown key `wokers` (did you mean `workers`?)"
    );
}

#[test]
fn unknown_key_in_debug_table_has_line_and_suggestion() {
    let dir = TempDir::new();
    dir.write("fcgihost.toml", "workers = 2\n\n[debug]\nscret = \"abc\"\n");
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:4: unknown key `scret` in [debug] (did you mean `secret`?)"
    );
    // Inline table form.
    dir.write(
        "fcgihost.toml",
        "debug = { path = \"/p\", secert = \"x\" }\n",
    );
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:1: unknown key `secert` in [debug] (did you mean `secret`?)"
    );
}

#[test]
fn misplaced_and_foreign_keys_get_pointers() {
    let dir = TempDir::new();
    dir.write("fcgihost.toml", "secret = \"abc\"\n");
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:1: unknown key `secret` (`secret` belongs in the [debug] table)"
    );
    dir.write("fcgihost.toml", "WSGI_HANDLER = \"app.app\"\n");
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:1: unknown key `WSGI_HANDLER` (did you mean `app`?)"
    );
    dir.write("fcgihost.toml", "[log]\nworkers = 2\n");
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:2: unknown key `workers` in [log] (`workers` is a top-level key: put it \
         before any [table])"
    );
    dir.write("fcgihost.toml", "[debug]\nlevel = \"info\"\n");
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:2: unknown key `level` in [debug] (`level` belongs in the [log] table)"
    );
    dir.write("fcgihost.toml", "[log]\nwsgi_ptvsd_secret = \"x\"\n");
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:2: unknown key `wsgi_ptvsd_secret` in [log] (did you mean `secret` in the \
         [debug] table?)"
    );
    dir.write("fcgihost.toml", "bind = \"0.0.0.0:80\"\n");
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:1: unknown key `bind` (did you mean `listen`?)"
    );
    dir.write("fcgihost.toml", "completely_unrelated = 1\n");
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:1: unknown key `completely_unrelated`"
    );
}

#[test]
fn bad_duration_names_key_and_line() {
    let dir = TempDir::new();
    dir.write(
        "fcgihost.toml",
        "app = \"a:app\"\nworkers = 2\n\n# timeouts\nrequest_timeout = \"9x\"\n",
    );
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:5: key `request_timeout`: invalid duration \"9x\" (use e.g. \"90s\", \"2m\")"
    );
    dir.write("fcgihost.toml", "[debug]\nmax_pause = -5\n");
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:2: key `debug.max_pause`: invalid duration -5 (must not be negative)"
    );
}

#[test]
fn wrong_types_are_reported() {
    let dir = TempDir::new();
    dir.write("fcgihost.toml", "workers = \"4\"\n");
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:1: key `workers`: expected a whole number, found string \"4\""
    );
    dir.write("fcgihost.toml", "\ndebug = 5\n");
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:2: invalid type: integer `5`, expected a table"
    );
    dir.write("fcgihost.toml", "[worker]\ncommand = []\n");
    let msg = load_err(&dir, &CliOverrides::default(), &[]);
    assert!(
        msg.starts_with("fcgihost.toml:2: key `worker.command`: must name a program"),
        "{msg}"
    );
    dir.write("fcgihost.toml", "startup_timeout = 0\n");
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:1: key `startup_timeout`: must be greater than 0"
    );
    dir.write("fcgihost.toml", "[log]\naccess = \"yes\"\n");
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:2: key `log.access`: expected true or false, found string \"yes\""
    );
}

#[test]
fn workers_zero_is_an_error_in_every_layer() {
    let dir = TempDir::new();
    dir.write("fcgihost.toml", "app = \"a:app\"\nworkers = 0\n");
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:2: key `workers`: must be at least 1 (got 0)"
    );
    std::fs::remove_file(dir.path().join("fcgihost.toml")).expect("remove");
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[("FCGIHOST_WORKERS", "0")]),
        "environment variable FCGIHOST_WORKERS: must be at least 1 (got 0)"
    );
    let cli = CliOverrides {
        workers: Some(0),
        ..CliOverrides::default()
    };
    assert_eq!(
        load_err(&dir, &cli, &[]),
        "command line --workers: must be at least 1 (got 0)"
    );
}

#[test]
fn toml_syntax_and_duplicate_errors_have_lines() {
    let dir = TempDir::new();
    dir.write("fcgihost.toml", "workers = 2\napp = \n");
    let msg = load_err(&dir, &CliOverrides::default(), &[]);
    assert!(msg.starts_with("fcgihost.toml:2: "), "{msg}");
    dir.write("fcgihost.toml", "app = \"a\"\nworkers = 1\napp = \"b\"\n");
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:3: duplicate key `app`"
    );
}

#[test]
fn env_bad_values_name_the_variable() {
    let dir = TempDir::new();
    let cases: &[(&str, &str, &str)] = &[
        (
            "FCGIHOST_REQUEST_TIMEOUT",
            "9x",
            "environment variable FCGIHOST_REQUEST_TIMEOUT: invalid duration \"9x\" (use e.g. \"90s\", \"2m\")",
        ),
        (
            "FCGIHOST_WORKERS",
            "many",
            "environment variable FCGIHOST_WORKERS: invalid number \"many\" (expected a whole number)",
        ),
        (
            "FCGIHOST_LISTEN",
            "nowhere",
            "environment variable FCGIHOST_LISTEN: invalid listen address \"nowhere\" (use IP:PORT, e.g. \"127.0.0.1:8000\", or a port number)",
        ),
        (
            "FCGIHOST_LOG_ACCESS",
            "maybe",
            "environment variable FCGIHOST_LOG_ACCESS: invalid boolean \"maybe\" (use true or false)",
        ),
        (
            "FCGIHOST_LOG_LEVEL",
            "loud",
            "environment variable FCGIHOST_LOG_LEVEL: invalid log level \"loud\" (use trace, debug, info, warn, error or off)",
        ),
        (
            "FCGIHOST_WORKER_COMMAND",
            "python3 \"unterminated",
            "environment variable FCGIHOST_WORKER_COMMAND: unterminated quote in \"python3 \"unterminated\"",
        ),
        (
            "HTTP_PLATFORM_PORT",
            "eighty",
            "environment variable HTTP_PLATFORM_PORT: invalid port \"eighty\" (expected a number 0-65535)",
        ),
    ];
    for (var, value, expected) in cases {
        assert_eq!(
            load_err(&dir, &CliOverrides::default(), &[(var, value)]),
            *expected
        );
    }
}

#[test]
fn cli_bad_values_name_the_flag() {
    let dir = TempDir::new();
    let cli = CliOverrides {
        request_timeout: Some("soon".into()),
        ..CliOverrides::default()
    };
    assert_eq!(
        load_err(&dir, &cli, &[]),
        "command line --request-timeout: invalid duration \"soon\" (use e.g. \"90s\", \"2m\")"
    );
    let cli = CliOverrides {
        listen: Some("1.2.3.4".into()),
        ..CliOverrides::default()
    };
    assert!(load_err(&dir, &cli, &[]).starts_with("command line --listen: invalid listen"));
}

#[test]
fn unknown_fcgihost_env_vars_are_warnings() {
    let dir = TempDir::new();
    let l = load_in(
        &dir,
        &CliOverrides::default(),
        &[
            ("FCGIHOST_WOKERS", "4"),
            ("FCGIHOST_NONSENSE_THING", "1"),
            ("FCGIHOST_DEBUG", "1"),
            ("UNRELATED", "x"),
        ],
    );
    assert_eq!(
        l.warnings,
        vec![
            "environment variable FCGIHOST_DEBUG ignored: fcgihost sets it for its workers \
             (debugging is turned on by FCGIHOST_DEBUG_SECRET)"
                .to_string(),
            "unknown environment variable FCGIHOST_NONSENSE_THING ignored".to_string(),
            "unknown environment variable FCGIHOST_WOKERS ignored (did you mean FCGIHOST_WORKERS?)"
                .to_string(),
        ]
    );
}

#[test]
fn http_platform_port_sets_the_default_listen() {
    let dir = TempDir::new();
    let l = load_in(
        &dir,
        &CliOverrides::default(),
        &[("HTTP_PLATFORM_PORT", "12345"), ("ASPNETCORE_PORT", "999")],
    );
    assert_eq!(l.config.listen, addr("127.0.0.1:12345"));
    assert_eq!(
        source_of(&l, "listen"),
        &Source::Env("HTTP_PLATFORM_PORT".into())
    );
    assert_eq!(
        source_of(&l, "listen").to_string(),
        "env HTTP_PLATFORM_PORT"
    );

    let l = load_in(
        &dir,
        &CliOverrides::default(),
        &[("ASPNETCORE_PORT", "999")],
    );
    assert_eq!(l.config.listen, addr("127.0.0.1:999"));

    // An explicit listen wins, with a warning when it differs.
    let cli = CliOverrides {
        listen: Some("127.0.0.1:7000".into()),
        ..CliOverrides::default()
    };
    let l = load_in(&dir, &cli, &[("HTTP_PLATFORM_PORT", "12345")]);
    assert_eq!(l.config.listen, addr("127.0.0.1:7000"));
    assert_eq!(l.warnings.len(), 1);
    assert!(
        l.warnings[0].contains("HTTP_PLATFORM_PORT=12345"),
        "{:?}",
        l.warnings
    );
}

#[test]
fn webconfig_app_settings_are_mapped() {
    let dir = TempDir::new();
    let web = dir.write(
        "web.config",
        r#"<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <appSettings>
    <add key="WSGI_HANDLER" value="django.core.wsgi.get_wsgi_application()" />
    <add key="PYTHONPATH" value="C:\a;%APPDATA%\b;;%NOT_SET%\c" />
    <add key="WSGI_LOG" value="logs\wfastcgi.log" />
    <add key="WSGI_RESTART_FILE_REGEX" value=".*\.py$" />
    <add key="WSGI_PTVSD_SECRET" value="abcdefghijklmnopqrstuv" />
    <add key="WSGI_PTVSD_ADDRESS" value="localhost:5678" />
    <add key="SCRIPT_NAME" value="myapp/" />
    <add key="DJANGO_SETTINGS_MODULE" value="mysite.settings" />
    <add key="DB_PASSWORD" value="hunter2" />
    <add key="TEMP_KEY" value="gone" />
    <remove key="temp_key" />
  </appSettings>
  <system.webServer>
    <handlers><add name="x" path="*" verb="*" modules="httpPlatformHandler" /></handlers>
  </system.webServer>
</configuration>
"#,
    );
    let l = load_in(
        &dir,
        &CliOverrides::default(),
        &[("appdata", r"C:\Users\u\AppData\Roaming")],
    );
    let c = &l.config;
    let src = Source::WebConfig(web.clone());
    assert_eq!(
        c.app.as_deref(),
        Some("django.core.wsgi.get_wsgi_application()")
    );
    assert_eq!(
        c.pythonpath,
        vec![
            r"C:\a".to_string(),
            r"C:\Users\u\AppData\Roaming\b".to_string(),
            r"%NOT_SET%\c".to_string()
        ]
    );
    assert_eq!(c.log.file, Some(dir.path().join(r"logs\wfastcgi.log")));
    assert_eq!(c.restart_file_regex.as_deref(), Some(r".*\.py$"));
    assert!(c.debug_enabled());
    assert_eq!(c.script_name, "/myapp");
    assert_eq!(
        c.worker
            .env
            .get("DJANGO_SETTINGS_MODULE")
            .map(String::as_str),
        Some("mysite.settings")
    );
    assert_eq!(source_of(&l, "worker.env.DJANGO_SETTINGS_MODULE"), &src);
    assert_eq!(
        source_of(&l, "worker.env.DJANGO_SETTINGS_MODULE").to_string(),
        "web.config"
    );
    assert!(
        !c.worker.env.contains_key("TEMP_KEY"),
        "removed by <remove>"
    );
    for known in [
        "WSGI_HANDLER",
        "PYTHONPATH",
        "WSGI_PTVSD_SECRET",
        "WSGI_PTVSD_ADDRESS",
    ] {
        assert!(
            !c.worker.env.contains_key(known),
            "{known} is not passed on"
        );
    }
    for key in [
        "app",
        "pythonpath",
        "log.file",
        "debug.secret",
        "script_name",
    ] {
        assert_eq!(source_of(&l, key), &src, "{key}");
    }
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    let w = &l.warnings[0];
    assert!(
        w.starts_with(&format!(
            "{}:9: WSGI_PTVSD_ADDRESS no longer applies",
            web.display()
        )),
        "{w}"
    );
    assert!(w.contains("free loopback port"), "{w}");

    let table = render_sources(&l);
    assert!(!table.contains("hunter2"), "{table}");
    assert!(!table.contains("abcdefghijklmnopqrstuv"), "{table}");
    assert!(table.contains("mysite.settings"), "{table}");
}

#[test]
fn webconfig_legacy_settings_warn_and_virtualenv_proxy_is_unwrapped() {
    let dir = TempDir::new();
    dir.write(
        "Web.config",
        r#"<configuration>
  <appSettings>
    <add key="WSGI_ALT_VIRTUALENV_HANDLER" value="app.wsgi_app" />
    <add key="WSGI_ALT_VIRTUALENV_ACTIVATE_THIS" value="D:\home\site\wwwroot\env\Scripts\activate_this.py" />
    <add key="WSGI_HANDLER" value="ptvs_virtualenv_proxy.get_virtualenv_handler()" />
    <add key="APPINSIGHTS_INSTRUMENTATIONKEY" value="0000" />
  </appSettings>
</configuration>"#,
    );
    let l = load_in(&dir, &CliOverrides::default(), &[]);
    assert_eq!(l.config.app.as_deref(), Some("app.wsgi_app"));
    assert_eq!(l.warnings.len(), 3, "{:?}", l.warnings);
    assert!(l.warnings[0].contains(r"D:\home\site\wwwroot\env\Scripts\python.exe"));
    assert!(l.warnings[1].contains("virtualenv proxy"));
    assert!(l.warnings[2].contains("APPINSIGHTS_INSTRUMENTATIONKEY no longer applies"));
    assert_eq!(
        l.config
            .worker
            .env
            .get("APPINSIGHTS_INSTRUMENTATIONKEY")
            .map(String::as_str),
        Some("0000")
    );
}

#[test]
fn webconfig_clear_location_and_utf16() {
    let dir = TempDir::new();
    let xml = r#"<?xml version="1.0" encoding="utf-16"?>
<configuration>
  <appSettings>
    <add key="OLD" value="1" />
    <clear />
    <add key="KEPT" value="2" />
  </appSettings>
  <location path="." inheritInChildApplications="false">
    <appSettings><add key="WSGI_HANDLER" value="app.loc" /></appSettings>
  </location>
  <location path="sub"><appSettings><add key="OTHER" value="3" /></appSettings></location>
</configuration>"#;
    let mut bytes = vec![0xFF, 0xFE];
    bytes.extend(xml.encode_utf16().flat_map(u16::to_le_bytes));
    std::fs::write(dir.path().join("web.config"), bytes).expect("write");
    let l = load_in(&dir, &CliOverrides::default(), &[]);
    let keys: Vec<&String> = l.config.worker.env.keys().collect();
    assert_eq!(keys, vec!["KEPT"]);
    assert_eq!(l.config.app.as_deref(), Some("app.loc"));
}

#[test]
fn webconfig_malformed_xml_reports_file_and_line() {
    let dir = TempDir::new();
    let web = dir.write(
        "web.config",
        "<configuration>\n  <appSettings>\n    <add key=\"A\" value=\"1\">\n  </appSettings>\n</configuration>\n",
    );
    let msg = load_err(&dir, &CliOverrides::default(), &[]);
    let prefix = format!("{}:4: malformed XML: ", web.display());
    assert!(msg.starts_with(&prefix), "{msg}");
}

#[test]
fn worker_env_merges_across_layers() {
    let dir = TempDir::new();
    let web = dir.write(
        "web.config",
        r#"<configuration><appSettings>
            <add key="A" value="web"/><add key="B" value="web"/><add key="C" value="web"/>
        </appSettings></configuration>"#,
    );
    dir.write(
        "fcgihost.toml",
        "[worker]\nenv = { B = \"file\", C = \"file\" }\n",
    );
    let l = load_in(
        &dir,
        &CliOverrides::default(),
        &[("FCGIHOST_WORKER_ENV", "C=env")],
    );
    let env = &l.config.worker.env;
    assert_eq!(env["A"], "web");
    assert_eq!(env["B"], "file");
    assert_eq!(env["C"], "env");
    assert_eq!(source_of(&l, "worker.env.A"), &Source::WebConfig(web));
    assert_eq!(
        source_of(&l, "worker.env.C"),
        &Source::Env("FCGIHOST_WORKER_ENV".into())
    );
}

#[test]
fn secret_is_never_shown() {
    let dir = TempDir::new();
    let secret = "Sup3r-Secret-Value-For-Debugging";
    dir.write(
        "fcgihost.toml",
        &format!("[debug]\nsecret = \"{secret}\"\n\n[worker.env]\nAPI_TOKEN = \"tok-123\"\n"),
    );
    let l = load_in(&dir, &CliOverrides::default(), &[]);
    assert!(l.config.debug_enabled());
    let table = render_sources(&l);
    assert!(!table.contains(secret), "{table}");
    assert!(!table.contains("tok-123"), "{table}");
    assert!(table.contains("<set>"), "{table}");
    let shown = l
        .sources
        .iter()
        .find(|s| s.key == "debug.secret")
        .map(|s| s.value.clone());
    assert_eq!(shown.as_deref(), Some("<set>"));
    assert!(!format!("{:?}", l.config).contains(secret));
    assert!(!format!("{l:?}").contains(secret));
}

#[test]
fn render_sources_is_an_aligned_table() {
    let dir = TempDir::new();
    dir.write("fcgihost.toml", "workers = 3\n");
    let l = load_in(
        &dir,
        &CliOverrides::default(),
        &[("FCGIHOST_LOG_LEVEL", "debug")],
    );
    let table = render_sources(&l);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), l.sources.len());
    let eq_col: Vec<usize> = lines.iter().filter_map(|l| l.find(" = ")).collect();
    assert_eq!(eq_col.len(), lines.len());
    assert!(eq_col.iter().all(|c| *c == eq_col[0]), "{table}");
    let src_col: Vec<usize> = lines.iter().filter_map(|l| l.rfind("   (")).collect();
    assert!(src_col.iter().all(|c| *c == src_col[0]), "{table}");
    assert!(table.contains("(fcgihost.toml)"), "{table}");
    assert!(table.contains("(env FCGIHOST_LOG_LEVEL)"), "{table}");
    assert!(table.contains("(default)"), "{table}");
    let workers = lines
        .iter()
        .find(|l| l.starts_with("workers "))
        .expect("workers line");
    assert!(workers.contains("= 3 "), "{workers}");
}

#[test]
fn warnings_for_settings_without_effect_and_short_secrets() {
    let dir = TempDir::new();
    dir.write("fcgihost.toml", "[debug]\nwait_for_attach = \"5s\"\n");
    let l = load_in(&dir, &CliOverrides::default(), &[]);
    assert_eq!(l.warnings.len(), 1);
    assert!(l.warnings[0].starts_with("debug.wait_for_attach (from fcgihost.toml) has no effect"));

    let l = load_in(
        &dir,
        &CliOverrides::default(),
        &[("WSGI_PTVSD_SECRET", "short")],
    );
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(l.warnings[0].contains("only 5 characters"));
}

#[test]
fn source_display() {
    assert_eq!(Source::Default.to_string(), "default");
    assert_eq!(
        Source::WebConfig(PathBuf::from("/x/web.config")).to_string(),
        "web.config"
    );
    assert_eq!(
        Source::File(PathBuf::from("fcgihost.toml")).to_string(),
        "fcgihost.toml"
    );
    assert_eq!(
        Source::Env("FCGIHOST_WORKERS".into()).to_string(),
        "env FCGIHOST_WORKERS"
    );
    assert_eq!(Source::Cli.to_string(), "command line");
}

#[test]
fn durations_parse() {
    let ok: &[(&str, u64)] = &[
        ("90s", 90_000),
        ("500ms", 500),
        ("2m", 120_000),
        ("1h", 3_600_000),
        ("1m30s", 90_000),
        ("1h 2m 3s", 3_723_000),
        ("90", 90_000),
        (" 0 ", 0),
        ("0s", 0),
        ("1d", 86_400_000),
        ("00:02:00", 120_000),
        ("1:00:30", 3_630_000),
    ];
    for (s, ms) in ok {
        assert_eq!(
            parse_duration(s),
            Ok(Duration::from_millis(*ms)),
            "parsing {s:?}"
        );
    }
    for bad in [
        "",
        "9x",
        "s",
        "1.5s",
        "-1s",
        "10 s s",
        "00:61:00",
        "1:2",
        "99999999999999999999h",
    ] {
        let err = parse_duration(bad).expect_err(bad);
        assert_eq!(
            err,
            format!("invalid duration \"{bad}\" (use e.g. \"90s\", \"2m\")")
        );
    }
}

#[test]
fn durations_format_round_trip() {
    for ms in [0, 500, 1000, 90_000, 3_723_500, 86_400_000 + 61_000] {
        let d = Duration::from_millis(ms);
        let text = format_duration(d);
        assert_eq!(parse_duration(&text), Ok(d), "{text}");
    }
    assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
}

#[test]
fn listen_forms() {
    assert_eq!(parse_listen("127.0.0.1:80"), Ok(addr("127.0.0.1:80")));
    assert_eq!(parse_listen("[::1]:80"), Ok(addr("[::1]:80")));
    assert_eq!(parse_listen("8000"), Ok(addr("127.0.0.1:8000")));
    assert_eq!(parse_listen("localhost:81"), Ok(addr("127.0.0.1:81")));
    assert!(parse_listen("example.com:80").is_err());
    assert!(parse_listen("127.0.0.1:99999").is_err());
}

#[test]
fn words_and_expansion_and_suggestions() {
    assert_eq!(
        split_words(r#"  a 'b c' "d 'e'" C:\x\y  "#),
        Ok(vec![
            "a".to_string(),
            "b c".to_string(),
            "d 'e'".to_string(),
            r"C:\x\y".to_string()
        ])
    );
    assert_eq!(
        split_words("x \"\""),
        Ok(vec!["x".to_string(), String::new()])
    );
    let e = env(&[("A", "1"), ("Path", "p")]);
    assert_eq!(
        expand_percent_vars("%A%;%PATH%;%B%;100%;%%", &e),
        "1;p;%B%;100%;%%"
    );
    assert_eq!(expand_percent_vars("%B%%A%", &e), "%B%1");
    assert_eq!(suggest("wokers", &["app", "workers"]), Some("workers"));
    assert_eq!(
        suggest("Request-Timeout", &["request_timeout"]),
        Some("request_timeout")
    );
    assert_eq!(suggest("zzz", &["app", "workers"]), None);
    assert_eq!(parse_script_name("/"), Ok(String::new()));
    assert_eq!(parse_script_name("a/b/"), Ok("/a/b".to_string()));
}

#[test]
fn fastcgi_listen_and_trusted_proxies_layers() {
    let dir = TempDir::new();
    let l = load_in(&dir, &CliOverrides::default(), &[]);
    assert_eq!(l.config.fastcgi_listen, None);
    assert_eq!(l.config.trusted_proxies, TrustedProxies::loopback());
    assert!(!l.config.listen_configured);
    assert_eq!(source_of(&l, "trusted_proxies"), &Source::Default);

    dir.write(
        "fcgihost.toml",
        "fastcgi_listen = \"run/fcgi.sock\"\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nlisten = 8001\n",
    );
    let l = load_in(&dir, &CliOverrides::default(), &[]);
    assert_eq!(
        l.config.fastcgi_listen,
        Some(FastcgiListen::Unix(dir.path().join("run/fcgi.sock")))
    );
    assert!(l
        .config
        .trusted_proxies
        .contains("10.9.8.7".parse().unwrap()));
    assert!(!l
        .config
        .trusted_proxies
        .contains("127.0.0.1".parse().unwrap()));
    assert!(l.config.listen_configured);

    let l = load_in(
        &dir,
        &CliOverrides::default(),
        &[
            ("FCGIHOST_FASTCGI_LISTEN", "9001"),
            ("FCGIHOST_TRUSTED_PROXIES", ""),
        ],
    );
    assert_eq!(
        l.config.fastcgi_listen,
        Some(FastcgiListen::Tcp(addr("127.0.0.1:9001")))
    );
    assert!(l.config.trusted_proxies.is_empty());

    let cli = CliOverrides {
        fastcgi_listen: Some("unix:/tmp/x.sock".into()),
        ..CliOverrides::default()
    };
    let l = load_in(&dir, &cli, &[("FCGIHOST_FASTCGI_LISTEN", "9001")]);
    assert_eq!(
        l.config.fastcgi_listen,
        Some(FastcgiListen::Unix(PathBuf::from("/tmp/x.sock")))
    );
    assert_eq!(source_of(&l, "fastcgi_listen"), &Source::Cli);
    let cli = CliOverrides {
        fastcgi_listen: Some(String::new()),
        ..CliOverrides::default()
    };
    assert_eq!(load_in(&dir, &cli, &[]).config.fastcgi_listen, None);
}

#[test]
fn fastcgi_listen_and_trusted_proxies_errors() {
    let dir = TempDir::new();
    dir.write("fcgihost.toml", "trusted_proxies = [\"10.0.0.0/33\"]\n");
    let err = load_err(&dir, &CliOverrides::default(), &[]);
    assert!(
        err.starts_with("fcgihost.toml:1: key `trusted_proxies`: invalid address or CIDR block"),
        "{err}"
    );
    dir.write("fcgihost.toml", "fastcgi_listen = \"nowhere\"\n");
    let err = load_err(&dir, &CliOverrides::default(), &[]);
    assert!(
        err.starts_with("fcgihost.toml:1: key `fastcgi_listen`: invalid FastCGI address"),
        "{err}"
    );
    dir.write("fcgihost.toml", "fastcgi_lisen = \"9001\"\n");
    let err = load_err(&dir, &CliOverrides::default(), &[]);
    assert!(err.contains("did you mean `fastcgi_listen`?"), "{err}");
    std::fs::remove_file(dir.path().join("fcgihost.toml")).unwrap();
    let err = load_err(
        &dir,
        &CliOverrides::default(),
        &[("FCGIHOST_TRUSTED_PROXIES", "10.0.0.1, proxy.example")],
    );
    assert!(
        err.starts_with("environment variable FCGIHOST_TRUSTED_PROXIES: invalid address"),
        "{err}"
    );
}

#[test]
fn in_memory_parsers_check_like_load_and_name_the_file() {
    let toml = Path::new("/srv/app/fcgihost.toml");
    assert!(parse_toml_text(toml, "app = \"pkg.mod:app\"\nworkers = 2\n").is_ok());
    let err = parse_toml_text(toml, "workers = 2\nwokers = 4\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "/srv/app/fcgihost.toml:2: unknown key `wokers` (did you mean `workers`?)"
    );
    // A byte-order mark is skipped, as when the file is read.
    assert!(parse_toml_text(toml, "\u{feff}workers = 2\n").is_ok());

    let web = Path::new("/srv/app/web.config");
    let warnings = parse_web_config_bytes(
        web,
        br#"<configuration><appSettings>
            <add key="WSGI_HANDLER" value="app.web"/>
            <add key="WSGI_PTVSD_ADDRESS" value="localhost:5678"/>
        </appSettings></configuration>"#,
        &HashMap::new(),
    )
    .expect("valid web.config");
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].starts_with("/srv/app/web.config:3: WSGI_PTVSD_ADDRESS"),
        "{warnings:?}"
    );
    let err = parse_web_config_bytes(web, b"<configuration>", &HashMap::new()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/srv/app/web.config:1: malformed XML"),
        "{err}"
    );
    let err = parse_web_config_bytes(web, b"\xff\xfe\x00", &HashMap::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/srv/app/web.config: not UTF-8 or UTF-16 text"
    );
}

#[test]
fn pipeline_settings_load_with_defaults_and_bounds() {
    let dir = TempDir::new();
    dir.write("fcgihost.toml", "app = \"a:app\"\n");
    let c = load_in(&dir, &CliOverrides::default(), &[]).config;
    assert_eq!(c.pipeline_depth, super::DEFAULT_PIPELINE_DEPTH);
    assert_eq!(c.pipeline_window, Duration::from_millis(10));
    dir.write(
        "fcgihost.toml",
        "app = \"a:app\"\npipeline_depth = 0\npipeline_window = \"250ms\"\n",
    );
    let c = load_in(&dir, &CliOverrides::default(), &[]).config;
    assert_eq!(
        (c.pipeline_depth, c.pipeline_window),
        (0, Duration::from_millis(250))
    );
    dir.write("fcgihost.toml", "app = \"a:app\"\npipeline_depth = 9\n");
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:2: key `pipeline_depth`: must be at most 8 (got 9)"
    );
    dir.write("fcgihost.toml", "app = \"a:app\"\n");
    assert_eq!(
        load_err(
            &dir,
            &CliOverrides::default(),
            &[("FCGIHOST_PIPELINE_DEPTH", "12")]
        ),
        "environment variable FCGIHOST_PIPELINE_DEPTH: must be at most 8 (got 12)"
    );
}

fn with_sets(sets: &[&str]) -> CliOverrides {
    CliOverrides {
        settings: sets
            .iter()
            .map(|s| CliSetting::parse_set(s).expect("key=value"))
            .collect(),
        ..CliOverrides::default()
    }
}

#[test]
fn set_values_read_as_toml_when_they_are_one_and_as_text_otherwise() {
    let dir = TempDir::new();
    let loaded = load_in(
        &dir,
        &with_sets(&[
            "workers=3",
            "request_timeout=90s",
            "listen=0.0.0.0:8001",
            "worker.command=[\"flup-app\", \"--x\"]",
            "worker.env.NAME=a.b=c",
            "log.access=false",
            "health_path=",
        ]),
        &[],
    );
    let c = &loaded.config;
    assert_eq!(c.workers, 3);
    assert_eq!(c.request_timeout, Some(Duration::from_secs(90)));
    assert_eq!(c.listen, addr("0.0.0.0:8001"));
    assert_eq!(
        c.worker.command,
        Some(vec!["flup-app".to_string(), "--x".to_string()])
    );
    assert_eq!(c.worker.env.get("NAME").map(String::as_str), Some("a.b=c"));
    assert!(!c.log.access);
    assert_eq!(c.health_path, None);
    assert_eq!(source_of(&loaded, "workers"), &Source::Cli);
}

#[test]
fn a_later_set_wins_a_dedicated_flag_wins_over_set_and_set_beats_env_and_file() {
    let dir = TempDir::new();
    std::fs::write(dir.path().join("fcgihost.toml"), "max_queue = 5\n").unwrap();
    let mut cli = with_sets(&["workers=2", "workers=4", "max_queue=9"]);
    let loaded = load_in(&dir, &cli, &[("FCGIHOST_MAX_QUEUE", "7")]);
    assert_eq!(loaded.config.workers, 4);
    assert_eq!(loaded.config.max_queue, 9);
    cli.workers = Some(6);
    assert_eq!(load_in(&dir, &cli, &[]).config.workers, 6);
}

#[test]
fn set_errors_name_the_argument_and_keep_the_files_message() {
    let dir = TempDir::new();
    assert_eq!(
        load_err(&dir, &with_sets(&["wokers=4"]), &[]),
        "command line --set wokers=4: unknown key `wokers` (did you mean `workers`?)"
    );
    assert_eq!(
        load_err(&dir, &with_sets(&["debug.max_paws=1m"]), &[]),
        "command line --set debug.max_paws=1m: unknown key `max_paws` in [debug] (did you mean `max_pause`?)"
    );
    assert!(CliSetting::parse_set("workers").is_err());
    assert!(CliSetting::worker_env("NAME").is_err());
    assert!(CliSetting::worker_env("=x").is_err());
}

#[test]
fn instance_id_from_website_instance_id_then_config_then_host_name() {
    let dir = TempDir::new();
    let cli = with_sets(&["instance_id=from-config"]);
    let loaded = load_in(&dir, &cli, &[("WEBSITE_INSTANCE_ID", "abc123")]);
    assert_eq!(loaded.config.instance_id, "abc123");
    assert_eq!(
        source_of(&loaded, "instance_id"),
        &Source::Env("WEBSITE_INSTANCE_ID".into())
    );
    assert_eq!(load_in(&dir, &cli, &[]).config.instance_id, "from-config");
    let by_host = load_in(&dir, &CliOverrides::default(), &[]);
    assert!(!by_host.config.instance_id.is_empty());
    assert_eq!(source_of(&by_host, "instance_id"), &Source::Default);
    assert!(load_err(&dir, &with_sets(&["instance_id=a;b"]), &[]).contains("invalid instance id"));
}

#[test]
fn threads_and_dynamic_pool_settings_load_with_defaults_and_bounds() {
    let dir = TempDir::new();
    dir.write("fcgihost.toml", "app = \"a:app\"\nworkers = 2\n");
    let c = load_in(&dir, &CliOverrides::default(), &[]).config;
    assert_eq!(
        (c.threads, c.workers_max, c.spawn_after, c.idle_timeout),
        (1, 2, Duration::from_millis(100), Duration::from_secs(10))
    );
    dir.write(
        "fcgihost.toml",
        "app = \"a:app\"\nworkers = 2\nthreads = 8\nworkers_max = 6\nspawn_after = \"50ms\"\nidle_timeout = \"1m\"\n",
    );
    let c = load_in(&dir, &CliOverrides::default(), &[]).config;
    assert_eq!(
        (c.threads, c.workers_max, c.spawn_after, c.idle_timeout),
        (8, 6, Duration::from_millis(50), Duration::from_secs(60))
    );
    let cli = CliOverrides {
        threads: Some(16),
        ..CliOverrides::default()
    };
    assert_eq!(load_in(&dir, &cli, &[]).config.threads, 16);
    dir.write("fcgihost.toml", "app = \"a:app\"\nthreads = 0\n");
    assert_eq!(
        load_err(&dir, &CliOverrides::default(), &[]),
        "fcgihost.toml:2: key `threads`: must be at least 1 (got 0)"
    );
    dir.write("fcgihost.toml", "app = \"a:app\"\n");
    assert_eq!(
        load_err(
            &dir,
            &CliOverrides::default(),
            &[("FCGIHOST_THREADS", "300")]
        ),
        "environment variable FCGIHOST_THREADS: must be at most 256 (got 300)"
    );
    let cli = CliOverrides {
        threads: Some(0),
        ..CliOverrides::default()
    };
    assert_eq!(
        load_err(&dir, &cli, &[]),
        "command line --threads: must be at least 1"
    );
    // A ceiling below the floor keeps the floor, with a warning naming both.
    dir.write(
        "fcgihost.toml",
        "app = \"a:app\"\nworkers = 3\nworkers_max = 2\n",
    );
    let l = load_in(&dir, &CliOverrides::default(), &[]);
    assert_eq!(l.config.workers_max, 3);
    assert!(
        l.warnings
            .iter()
            .any(|w| w.contains("workers_max 2") && w.contains("below workers 3")),
        "{:?}",
        l.warnings
    );
}
