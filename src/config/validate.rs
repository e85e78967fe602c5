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
//! - Warnings (a route to a service no table declares; in `check`, a
//!   missing token variable) go to `Config.warnings` and never fail a load.
//!
//! The only I/O is reading the file, reading `admin.token_env`, resolving
//! backend and listen host names (`ToSocketAddrs`, first address), and
//! reading services' `tls_ca` files ([`upstream_tls`]).

mod access_log;
mod addresses;
mod balancing;
mod build;
mod certificates;
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

/// What a load is for. `Check` (the `switchyard check` command) reports a
/// missing `admin.token_env` variable as a warning: the machine that lints a
/// config (CI, an image build) rarely holds the secrets the server will.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Purpose {
    #[default]
    Serve,
    Check,
}

/// Reads `path`, then [`parse_str`]; `Config.path` is set to the absolute path.
pub(super) fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    load_file_for(path, Purpose::Serve)
}

/// The config file's text, or the one error saying why it cannot be read.
fn read_config(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: "<file>".into(),
            message: format!("cannot read the config file: {e}"),
        }])
    })
}

/// [`load_file`] for a given [`Purpose`].
pub(super) fn load_file_for(path: &Path, purpose: Purpose) -> Result<Config, ConfigErrors> {
    let text = read_config(path)?;
    let mut config = parse_str_for(&text, path, purpose)?;
    config.path = Some(absolute(path));
    Ok(config)
}

/// [`load_file_for`] as `switchyard check` runs it (an unset token
/// variable is a warning), plus its certificate pass ([`certificates`]):
/// every error of both, in file order.
pub(super) fn check_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = read_config(path)?;
    let loaded = parse_str_for(&text, path, Purpose::Check).map(|mut config| {
        config.path = Some(absolute(path));
        config
    });
    let cert_errors = certificates::check(&text, path);
    match loaded {
        Ok(config) if cert_errors.is_empty() => Ok(config),
        Ok(_) => Err(ConfigErrors(cert_errors)),
        Err(ConfigErrors(mut errors)) => {
            errors.extend(cert_errors);
            errors.sort_by_key(|e| (e.line, e.column));
            Err(ConfigErrors(errors))
        }
    }
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
    parse_str_for(text, origin, Purpose::Serve)
}

fn parse_str_for(text: &str, origin: &Path, purpose: Purpose) -> Result<Config, ConfigErrors> {
    let shape = shape::read(text, origin).map_err(|e| ConfigErrors(vec![e]))?;
    let mut cx = Ctx::new(origin, text, shape.errors, shape.dropped, purpose);
    let config = shape.raw.map(|raw| build::build(&mut cx, &raw));
    cx.finish(config)
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
