//! The `config` oracle: the config loader and validator (src/config/) on
//! arbitrary text. It must never panic, and every error and warning it
//! reports must point into the text: a line from 1 to the last line, a
//! column from 1 to one past the end of that line (in characters), a key
//! and a message. Loading the same text twice gives the same errors.
//!
//! Shared by `fuzz/fuzz_targets/config.rs` and `tests/fuzz_regressions.rs`.

use std::path::Path;

use switchyard::config::{Config, ConfigError, ConfigErrors};

/// Panics when loading `data` (as UTF-8 TOML text) breaks a property.
pub fn check(data: &[u8]) {
    // The loader reads files as UTF-8 (`read_to_string`): other bytes never
    // reach it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Path::new("fuzz.toml");
    match Config::from_toml_str(text, origin) {
        Ok(config) => {
            for warning in &config.warnings {
                positioned(text, warning);
            }
        }
        Err(ConfigErrors(errors)) => {
            assert!(!errors.is_empty(), "a refused config without an error");
            for error in &errors {
                positioned(text, error);
            }
            // Same text, same verdict: nothing depends on hidden state.
            let again = Config::from_toml_str(text, origin).err();
            assert_eq!(again, Some(ConfigErrors(errors)), "a second load differs");
        }
    }
}

/// The error points at a real place in `text` and says something.
pub fn positioned(text: &str, error: &ConfigError) {
    let shown = error.to_string();
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        error.line >= 1 && error.line <= lines.len(),
        "line out of the text ({} lines): {shown}",
        lines.len()
    );
    let width = lines[error.line - 1].chars().count();
    assert!(
        error.column >= 1 && error.column <= width + 1,
        "column out of line {} ({width} characters): {shown}",
        error.line
    );
    assert!(!error.key.is_empty(), "an error without a key: {shown}");
    assert!(
        !error.message.trim().is_empty(),
        "an error without a message: {shown}"
    );
}
