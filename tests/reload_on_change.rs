//! File-change restart (issue 4): editing a `.py` file of a running app replaces the
//! workers one by one while clients keep coming — every request succeeds and responses
//! switch to the new code; a syntax error in the new code leaves the old workers serving.
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

fn app_source(body: &str) -> String {
    format!(
        "def app(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [{body:?}.encode()]\n"
    )
}

#[test]
fn editing_the_app_switches_to_new_code_under_load_and_a_syntax_error_keeps_the_old() {
    let dir = tempfile::Builder::new()
        .prefix("fcgihost-test-")
        .tempdir()
        .expect("tempdir");
    let app_dir = dir.path().join("site");
    fs::create_dir_all(&app_dir).expect("mkdir");
    fs::write(app_dir.join("liveapp.py"), app_source("version one")).expect("write app");
    let host = Host::start_in(
        HostOpts::new()
            .app("liveapp:app")
            .app_dir(&app_dir)
            .workers(2),
        dir,
    );
    assert_eq!(get(&host.url("/")).text(), "version one");

    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let (stop, answers, url) = (stop.clone(), answers.clone(), host.url("/"));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = get(&url);
                    answers.lock().expect("answers").push((r.status, r.text()));
                }
            })
        })
        .collect();
    let latest =
        |answers: &Arc<Mutex<Vec<(u16, String)>>>| answers.lock().expect("answers").last().cloned();

    fs::write(
        app_dir.join("liveapp.py"),
        app_source("version two, edited"),
    )
    .expect("edit app");
    host.wait_for_log_count("worker replaced", 2, T);
    let switched = wait_until(T, || {
        latest(&answers).is_some_and(|(_, text)| text == "version two, edited")
    });
    assert!(switched, "responses switch to the new code");

    fs::write(
        app_dir.join("liveapp.py"),
        "def app(environ, start_response:\n",
    )
    .expect("break app");
    let log = host.wait_for_log("the changed app failed to load", T);
    assert!(
        log.contains("SyntaxError"),
        "the log has the traceback:\n{log}"
    );
    let before = answers.lock().expect("answers").len();
    assert!(
        wait_until(T, || answers.lock().expect("answers").len() > before + 50),
        "the old workers keep serving after the broken edit"
    );

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let answers = answers.lock().expect("answers");
    let failures: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status != 200)
        .collect();
    assert!(failures.is_empty(), "no request failed: {failures:?}");
    let texts: std::collections::BTreeSet<&str> = answers.iter().map(|(_, t)| t.as_str()).collect();
    assert!(
        texts
            .iter()
            .all(|t| *t == "version one" || *t == "version two, edited"),
        "only the two good versions were served: {texts:?}"
    );
    assert_eq!(latest_after_break(&answers), "version two, edited");
}

fn latest_after_break(answers: &[(u16, String)]) -> &str {
    answers.last().map(|(_, t)| t.as_str()).unwrap_or_default()
}
