//! Fuzzes the `fcgihost.toml` loader (`config::parse_toml_text`, the parser `config::load`
//! runs on the file): no input panics, and every error is a file error whose message names
//! the file (and, with a line, one that exists).
#![no_main]

use std::path::Path;

use fcgihost::config::{parse_toml_text, ConfigError};
use libfuzzer_sys::fuzz_target;

/// The file name errors must carry (a space, to catch quoting that splits on it).
const FILE: &str = "/srv/my app/fcgihost.toml";

fuzz_target!(|data: &[u8]| {
    // `load` reads the file as UTF-8; anything else never reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Err(err) = parse_toml_text(Path::new(FILE), text) else {
        return;
    };
    let message = err.to_string();
    assert!(
        message.starts_with(FILE),
        "error does not name the file: {message}"
    );
    match err {
        ConfigError::At { line, .. } => {
            let lines = text.split('\n').count();
            assert!(
                line >= 1 && line <= lines,
                "line {line} of {lines}: {message}"
            );
        }
        ConfigError::InFile { .. } => {}
        other => panic!("not a file error: {other:?}"),
    }
});
