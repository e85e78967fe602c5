//! Validation: TOML text in, the domain types of [`super`] out, or *every*
//! problem found, each as a [`ConfigError`] with file, line, column and
//! dotted key. This file holds the entry points; the work is split below:
//!
//! - [`shape`] parses the text (a syntax error is the one error) and reads it
//!   into the raw mirror ([`super::raw`]), recording each shape error (unknown
//!   key, wrong type, unknown variant) and dropping the key that holds it
//!   before trying again, so none hides another. [`locate`] finds and spells
//!   the key at an error's position; [`syntax`] does it from the text alone
//!   when the file does not parse.
//! - [`build`] and [`services`] walk the mirror through the value checks of
//!   [`values`] and [`addresses`]. A check never stops the walk: it records
//!   its error in the [`ctx::Ctx`] collector and yields the default from
//!   [`defaults`], so one pass reports all errors at once.
//! - Shape and value errors are returned together, sorted by position
//!   ([`errors`] has the types and their `FILE:LINE:COL: KEY: MESSAGE` form).
//!
//! The only I/O is reading the file, reading `admin.token_env`, resolving
//! backend and listen host names (`ToSocketAddrs`, first address), and
//! reading services' `tls_ca` files ([`upstream_tls`]).

mod addresses;
mod balancing;
mod build;
mod ctx;
mod defaults;
mod errors;
mod etcd;
mod locate;
mod services;
mod shape;
mod syntax;
mod upstream_tls;
mod values;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use super::raw;
use super::Config;
use ctx::Ctx;

pub(super) use defaults::{default_service, embedded_default};
pub use errors::{ConfigError, ConfigErrors};

/// Reads `path`, then [`parse_str`]; `Config.path` is set to the absolute path.
pub(super) fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: "<file>".into(),
            message: format!("cannot read the config file: {e}"),
        }])
    })?;
    parse_file_text(&text, path)
}

/// [`parse_str`] for text read from `path`; `Config.path` is set to the absolute path.
pub(super) fn parse_file_text(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let mut config = parse_str(text, path)?;
    config.path = Some(absolute(path));
    Ok(config)
}

/// Parses and validates `text`; `origin` names it in errors and anchors
/// relative paths (its folder). `Config.path` stays `None`.
pub(super) fn parse_str(text: &str, origin: &Path) -> Result<Config, ConfigErrors> {
    let shape = shape::read(text, origin).map_err(|e| ConfigErrors(vec![e]))?;
    let mut cx = Ctx::new(origin, text, shape.errors, shape.dropped);
    let config = shape.raw.map(|raw| build::build(&mut cx, &raw));
    cx.finish(config)
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
