//! Fuzzes the web.config loader (`config::parse_web_config_bytes`, the parser `config::load`
//! runs on the app's web.config: UTF-8/UTF-16 decoding, XML, `<appSettings>`, wfastcgi keys):
//! no input panics, and every error and warning names the file.
#![no_main]

use std::collections::HashMap;
use std::path::Path;

use fcgihost::config::{parse_web_config_bytes, ConfigError};
use libfuzzer_sys::fuzz_target;

/// The file name errors and warnings must carry.
const FILE: &str = "/srv/my app/web.config";

fuzz_target!(|data: &[u8]| {
    // %VAR% references in PYTHONPATH expand from the environment.
    let env: HashMap<String, String> = [
        ("SystemDrive", "C:"),
        ("HOME", "/home/app"),
        ("EMPTY", ""),
        ("LOOP", "%LOOP%"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    match parse_web_config_bytes(Path::new(FILE), data, &env) {
        Ok(warnings) => {
            for w in warnings {
                assert!(w.starts_with(FILE), "warning does not name the file: {w}");
            }
        }
        Err(err) => {
            let message = err.to_string();
            assert!(
                message.starts_with(FILE),
                "error does not name the file: {message}"
            );
            match err {
                ConfigError::At { line, .. } => assert!(line >= 1, "line {line}: {message}"),
                ConfigError::InFile { .. } => {}
                other => panic!("not a file error: {other:?}"),
            }
        }
    }
});
