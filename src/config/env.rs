//! The environment layer: `FCGIHOST_<KEY>` / `FCGIHOST_<TABLE>_<KEY>` for every key, plus the
//! wfastcgi names (`WSGI_HANDLER`, `WSGI_PTVSD_SECRET`, `WSGI_LOG`,
//! `WSGI_RESTART_FILE_REGEX`) that IIS sites set through `<environmentVariables>`. A bad value
//! is an error naming the variable; an unknown `FCGIHOST_*` variable is a warning.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use super::values;
use super::{
    absolutize, non_empty, non_zero, parse_duration, resolve_program, ConfigError, Partial, Source,
    TrustedProxies,
};

/// Variables the host sets for its workers (worker protocol); setting them for the host
/// does nothing, which the warning says.
const WORKER_ONLY: &[&str] = &[
    "FCGIHOST_CONTROL_FD",
    "FCGIHOST_WORKER_ID",
    "FCGIHOST_WORKER_THREADS",
    "FCGIHOST_DEBUG",
    "FCGIHOST_WELCOME",
];

/// Reads variables and remembers which names it asked for, to spot unknown ones.
struct Reader<'a> {
    env: &'a HashMap<String, String>,
    asked: BTreeSet<&'static str>,
}

impl Reader<'_> {
    /// Sets `slot` from the first of `names` present in the environment.
    fn set<T>(
        &mut self,
        slot: &mut Option<(T, Source)>,
        names: &[&'static str],
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<(), ConfigError> {
        self.asked.extend(names.iter().copied());
        let Some((name, raw)) = names.iter().find_map(|n| self.env.get(*n).map(|v| (*n, v))) else {
            return Ok(());
        };
        let value = parse(raw).map_err(|message| ConfigError::Env {
            var: name.to_string(),
            message,
        })?;
        *slot = Some((value, Source::Env(name.to_string())));
        Ok(())
    }
}

/// The separator of path lists in the environment (`os.pathsep`).
const PATH_LIST_SEP: char = if cfg!(windows) { ';' } else { ':' };

/// Reads the environment layer; relative paths resolve against `cwd`.
pub(super) fn read(
    env: &HashMap<String, String>,
    cwd: &Path,
    warnings: &mut Vec<String>,
) -> Result<Partial, ConfigError> {
    let mut r = Reader {
        env,
        asked: BTreeSet::new(),
    };
    let mut p = Partial::default();
    let dur = |s: &str| parse_duration(s);
    let opt_dur = |s: &str| parse_duration(s).map(non_zero);
    let count = |min: u64| {
        move |s: &str| {
            values::parse_count(s, min)
                .and_then(|n| usize::try_from(n).map_err(|_| format!("{n} is too large")))
        }
    };
    let not_empty = |s: &str| non_empty(s).ok_or_else(|| "must not be empty".to_string());

    r.set(&mut p.app, &["FCGIHOST_APP", "WSGI_HANDLER"], |s| {
        Ok(non_empty(s))
    })?;
    r.set(&mut p.app_dir, &["FCGIHOST_APP_DIR"], |s| {
        not_empty(s).map(|s| absolutize(cwd, Path::new(&s)))
    })?;
    r.set(&mut p.python, &["FCGIHOST_PYTHON"], |s| {
        not_empty(s).map(|s| resolve_program(cwd, &s))
    })?;
    r.set(&mut p.pythonpath, &["FCGIHOST_PYTHONPATH"], |s| {
        Ok(s.split(PATH_LIST_SEP)
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(String::from)
            .collect())
    })?;
    r.set(&mut p.listen, &["FCGIHOST_LISTEN"], values::parse_listen)?;
    r.set(&mut p.fastcgi_listen, &["FCGIHOST_FASTCGI_LISTEN"], |s| {
        values::parse_fastcgi_listen(s, cwd)
    })?;
    r.set(
        &mut p.trusted_proxies,
        &["FCGIHOST_TRUSTED_PROXIES"],
        TrustedProxies::parse_text,
    )?;
    r.set(&mut p.workers, &["FCGIHOST_WORKERS"], count(1))?;
    r.set(&mut p.threads, &["FCGIHOST_THREADS"], |s| {
        count(1)(s).and_then(values::check_threads)
    })?;
    r.set(&mut p.workers_max, &["FCGIHOST_WORKERS_MAX"], |s| {
        count(1)(s).map(Some)
    })?;
    r.set(&mut p.spawn_after, &["FCGIHOST_SPAWN_AFTER"], dur)?;
    r.set(&mut p.idle_timeout, &["FCGIHOST_IDLE_TIMEOUT"], dur)?;
    r.set(&mut p.max_queue, &["FCGIHOST_MAX_QUEUE"], count(0))?;
    r.set(&mut p.pipeline_depth, &["FCGIHOST_PIPELINE_DEPTH"], |s| {
        count(0)(s).and_then(values::check_pipeline_depth)
    })?;
    r.set(&mut p.pipeline_window, &["FCGIHOST_PIPELINE_WINDOW"], dur)?;
    r.set(&mut p.queue_timeout, &["FCGIHOST_QUEUE_TIMEOUT"], dur)?;
    r.set(
        &mut p.request_timeout,
        &["FCGIHOST_REQUEST_TIMEOUT"],
        opt_dur,
    )?;
    r.set(&mut p.graceful_timeout, &["FCGIHOST_GRACEFUL_TIMEOUT"], dur)?;
    r.set(&mut p.max_requests, &["FCGIHOST_MAX_REQUESTS"], |s| {
        values::parse_count(s, 0)
    })?;
    r.set(
        &mut p.max_requests_jitter,
        &["FCGIHOST_MAX_REQUESTS_JITTER"],
        |s| values::parse_count(s, 0),
    )?;
    r.set(&mut p.max_worker_rss, &["FCGIHOST_MAX_WORKER_RSS"], |s| {
        values::parse_byte_size(s).map(|b| (b > 0).then_some(b))
    })?;
    r.set(
        &mut p.max_worker_lifetime,
        &["FCGIHOST_MAX_WORKER_LIFETIME"],
        opt_dur,
    )?;
    r.set(&mut p.startup_timeout, &["FCGIHOST_STARTUP_TIMEOUT"], |s| {
        let d = parse_duration(s)?;
        if d.is_zero() {
            Err("must be greater than 0".to_string())
        } else {
            Ok(d)
        }
    })?;
    r.set(
        &mut p.rapid_fails_per_minute,
        &["FCGIHOST_RAPID_FAILS_PER_MINUTE"],
        |s| {
            values::parse_count(s, 0)
                .and_then(|n| u32::try_from(n).map_err(|_| format!("{n} is too large")))
        },
    )?;
    r.set(
        &mut p.script_name,
        &["FCGIHOST_SCRIPT_NAME"],
        values::parse_script_name,
    )?;
    r.set(
        &mut p.restart_file_regex,
        &["FCGIHOST_RESTART_FILE_REGEX", "WSGI_RESTART_FILE_REGEX"],
        |s| Ok((!s.is_empty()).then(|| s.to_string())),
    )?;
    r.set(&mut p.status_path, &["FCGIHOST_STATUS_PATH"], |s| {
        if s.trim().is_empty() {
            return Ok(None);
        }
        values::parse_url_path(s).map(Some)
    })?;
    r.set(&mut p.health_path, &["FCGIHOST_HEALTH_PATH"], |s| {
        values::parse_optional_url_path(s)
    })?;
    r.set(
        &mut p.instance_id,
        &["FCGIHOST_INSTANCE_ID"],
        values::parse_instance_id,
    )?;
    r.set(&mut p.pid_file, &["FCGIHOST_PID_FILE"], |s| {
        Ok(non_empty(s).map(|s| absolutize(cwd, Path::new(&s))))
    })?;
    r.set(
        &mut p.slow_request_threshold,
        &["FCGIHOST_SLOW_REQUEST_THRESHOLD"],
        opt_dur,
    )?;
    r.set(&mut p.max_header_size, &["FCGIHOST_MAX_HEADER_SIZE"], |s| {
        values::parse_byte_size(s).and_then(|n| values::check_min(n, 1024))
    })?;
    r.set(&mut p.max_headers, &["FCGIHOST_MAX_HEADERS"], count(1))?;
    r.set(
        &mut p.max_request_line,
        &["FCGIHOST_MAX_REQUEST_LINE"],
        |s| values::parse_byte_size(s).map(|n| (n > 0).then_some(n)),
    )?;
    r.set(
        &mut p.max_header_field_size,
        &["FCGIHOST_MAX_HEADER_FIELD_SIZE"],
        |s| values::parse_byte_size(s).map(|n| (n > 0).then_some(n)),
    )?;
    r.set(&mut p.max_body_size, &["FCGIHOST_MAX_BODY_SIZE"], |s| {
        values::parse_byte_size(s).map(|n| (n > 0).then_some(n))
    })?;
    r.set(
        &mut p.header_read_timeout,
        &["FCGIHOST_HEADER_READ_TIMEOUT"],
        opt_dur,
    )?;
    r.set(
        &mut p.keep_alive_timeout,
        &["FCGIHOST_KEEP_ALIVE_TIMEOUT"],
        opt_dur,
    )?;
    r.set(&mut p.max_connections, &["FCGIHOST_MAX_CONNECTIONS"], |s| {
        count(0)(s).map(|n| (n > 0).then_some(n))
    })?;
    r.set(&mut p.worker_command, &["FCGIHOST_WORKER_COMMAND"], |s| {
        values::split_words(s).map(|w| (!w.is_empty()).then_some(w))
    })?;
    let mut pairs = None;
    r.set(
        &mut pairs,
        &["FCGIHOST_WORKER_ENV"],
        values::parse_env_pairs,
    )?;
    if let Some((pairs, src)) = pairs {
        for (k, v) in pairs {
            p.worker_env.insert(k, (v, src.clone()));
        }
    }
    r.set(
        &mut p.log_level,
        &["FCGIHOST_LOG_LEVEL"],
        values::parse_log_level,
    )?;
    r.set(&mut p.log_file, &["FCGIHOST_LOG_FILE", "WSGI_LOG"], |s| {
        Ok(non_empty(s).map(|s| absolutize(cwd, Path::new(&s))))
    })?;
    r.set(
        &mut p.log_access,
        &["FCGIHOST_LOG_ACCESS"],
        values::parse_bool,
    )?;
    r.set(
        &mut p.log_access_format,
        &["FCGIHOST_LOG_ACCESS_FORMAT"],
        values::parse_access_format,
    )?;
    r.set(&mut p.log_access_file, &["FCGIHOST_LOG_ACCESS_FILE"], |s| {
        Ok(values::parse_log_target(s, cwd))
    })?;
    r.set(
        &mut p.debug_secret,
        &["FCGIHOST_DEBUG_SECRET", "WSGI_PTVSD_SECRET"],
        |s| Ok(non_empty(s)),
    )?;
    r.set(
        &mut p.debug_path,
        &["FCGIHOST_DEBUG_PATH"],
        values::parse_url_path,
    )?;
    r.set(
        &mut p.debug_wait_for_attach,
        &["FCGIHOST_DEBUG_WAIT_FOR_ATTACH"],
        opt_dur,
    )?;
    r.set(
        &mut p.debug_max_pause,
        &["FCGIHOST_DEBUG_MAX_PAUSE"],
        opt_dur,
    )?;

    // Read by `locate_config_file`.
    r.asked.insert("FCGIHOST_CONFIG");

    let known: Vec<&str> = r
        .asked
        .iter()
        .copied()
        .filter(|n| n.starts_with("FCGIHOST_"))
        .collect();
    let mut unknown: Vec<&String> = env
        .keys()
        .filter(|k| k.starts_with("FCGIHOST_"))
        .filter(|k| !known.contains(&k.as_str()))
        .collect();
    unknown.sort();
    for name in unknown {
        if WORKER_ONLY.contains(&name.as_str()) {
            let extra = if name == "FCGIHOST_DEBUG" {
                " (debugging is turned on by FCGIHOST_DEBUG_SECRET)"
            } else {
                ""
            };
            warnings.push(format!(
                "environment variable {name} ignored: fcgihost sets it for its workers{extra}"
            ));
            continue;
        }
        let hint = values::suggest(name, &known)
            .map(|k| format!(" (did you mean {k}?)"))
            .unwrap_or_default();
        warnings.push(format!("unknown environment variable {name} ignored{hint}"));
    }
    Ok(p)
}
