//! The certificate pass of `switchyard check`: every `[[proxy.tls]]`
//! certificate and key is read and parsed, and each key is matched against
//! its certificate, as `serve` will at start-up. A missing file, a file
//! holding no usable PEM, or a key that is not its certificate's is an error
//! at the `cert` or `key` value (line and column), naming the file.
//!
//! Not part of loading itself: at start-up `serve` reads the files anyway
//! (and stops naming the file), and on a reload a bad pair is the
//! certificate reloader's to keep out and count, while the rest of the new
//! config still applies.

use std::path::Path;

use super::errors::{line_col, ConfigError};
use super::raw::Text;
use super::shape;
use super::values::non_empty_path;
use crate::config::CertPair;

/// The certificate errors of the config `text` read from `origin` (whose
/// folder anchors relative paths). Shape errors are not repeated here.
pub(super) fn check(text: &str, origin: &Path) -> Vec<ConfigError> {
    let Some(raw) = shape::read(text, origin).ok().and_then(|s| s.raw) else {
        return Vec::new();
    };
    let base = super::absolute(origin)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut errors = Vec::new();
    for (i, listener) in raw.proxy.tls.iter().enumerate() {
        for (j, pair) in listener.certs.get_ref().iter().enumerate() {
            // An empty path is the loader's error already.
            let (Ok(cert), Ok(key)) = (
                non_empty_path(pair.cert.get_ref(), &base),
                non_empty_path(pair.key.get_ref(), &base),
            ) else {
                continue;
            };
            let Err(e) = crate::tls::check_pair(&CertPair { cert, key }) else {
                continue;
            };
            let (value, leaf) = match e.is_about_key() {
                true => (&pair.key, "key"),
                false => (&pair.cert, "cert"),
            };
            let key = format!("proxy.tls[{i}].certs[{j}].{leaf}");
            errors.push(error(text, origin, value, key, e.to_string()));
        }
    }
    errors
}

fn error(text: &str, origin: &Path, value: &Text, key: String, message: String) -> ConfigError {
    let (line, column) = line_col(text, value.span().start);
    ConfigError {
        file: origin.to_path_buf(),
        line,
        column,
        key,
        message,
    }
}
