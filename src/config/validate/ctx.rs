//! [`Ctx`], the error collector every check writes to: where errors point
//! (file and text, for line:column), where relative paths start, the errors
//! found so far, the keys the shape pass dropped, and the listen addresses
//! seen so far with the check that they do not overlap. Also the [`take!`]
//! macro that ties a field's key, value and default together.

use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::absolute;
use super::errors::{line_col, ConfigError, ConfigErrors};
use super::raw::{Int, Text};
use super::values::{duration_ceiling, in_range, non_empty_path, parse_duration_within, read_env};
use super::Purpose;
use crate::config::Config;

/// A listener address seen so far, for the overlap check.
struct Bound {
    addr: SocketAddr,
    span: Option<Range<usize>>,
    key: String,
}

/// Everything a check needs: where errors point, where relative paths start,
/// and the errors and listen addresses collected so far.
pub(super) struct Ctx<'a> {
    origin: &'a Path,
    text: &'a str,
    /// The config file's folder (absolute when possible).
    pub(super) base: PathBuf,
    errors: Vec<ConfigError>,
    /// Problems that do not stop a load (exit 0 in `check`), in file order.
    warnings: Vec<ConfigError>,
    /// What the load is for: `check` turns a few environment-dependent
    /// errors into warnings (the machine that lints may lack the secrets).
    pub(super) purpose: Purpose,
    /// Dotted keys the shape pass removed after an error of their own. Their
    /// checks see the default; checks that compare keys skip them so that a
    /// stand-in default never causes a second, misleading error.
    dropped: Vec<String>,
    bound: Vec<Bound>,
}

/// `take!(cx, "table", method(raw.field, defaults, extra...))` checks
/// `raw.field` under the key `table.field`, falling back to `defaults.field`:
/// the field name is written once, so key, value and default cannot drift.
macro_rules! take {
    ($cx:ident, $table:expr, $m:ident($r:ident.$f:ident, $d:ident $(, $a:expr)*)) => {
        $cx.$m(
            $r.$f.as_ref(),
            &format!("{}.{}", $table, stringify!($f)),
            $d.$f
            $(, $a)*
        )
    };
}
pub(super) use take;

impl<'a> Ctx<'a> {
    /// A collector that starts with the shape pass's `errors` and `dropped` keys.
    pub(super) fn new(
        origin: &'a Path,
        text: &'a str,
        errors: Vec<ConfigError>,
        dropped: Vec<String>,
        purpose: Purpose,
    ) -> Self {
        let base = absolute(origin).parent().map(Path::to_path_buf);
        Ctx {
            origin,
            text,
            base: base.unwrap_or_default(),
            errors,
            warnings: Vec::new(),
            purpose,
            dropped,
            bound: Vec::new(),
        }
    }

    pub(super) fn error(
        &mut self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) {
        let error = self.at(span, key, message.into());
        self.errors.push(error);
    }

    /// A problem worth telling the operator that does not fail the load.
    pub(super) fn warn(
        &mut self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) {
        let warning = self.at(span, key, message.into());
        self.warnings.push(warning);
    }

    fn at(&self, span: Option<Range<usize>>, key: &str, message: String) -> ConfigError {
        let (line, column) = span.map_or((0, 0), |s| line_col(self.text, s.start));
        ConfigError {
            file: self.origin.to_path_buf(),
            line,
            column,
            key: key.to_owned(),
            message,
        }
    }

    /// Whether `key`, or a table or array above it, was dropped by the shape
    /// pass (its value had the wrong shape, and that error is already recorded).
    pub(super) fn dropped(&self, key: &str) -> bool {
        self.dropped.iter().any(|d| {
            key.strip_prefix(d.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }

    /// Runs `f` on the value; an `Err` is recorded at the value's span.
    pub(super) fn check<S, T>(
        &mut self,
        v: &Spanned<S>,
        key: &str,
        f: impl FnOnce(&S) -> Result<T, String>,
    ) -> Option<T> {
        f(v.get_ref())
            .map_err(|m| self.error(Some(v.span()), key, m))
            .ok()
    }

    /// Like `check`, for an optional key with a default.
    pub(super) fn val<S, T>(
        &mut self,
        v: Option<&Spanned<S>>,
        key: &str,
        d: T,
        f: impl FnOnce(&S) -> Result<T, String>,
    ) -> T {
        v.and_then(|v| self.check(v, key, f)).unwrap_or(d)
    }

    /// A duration that must be greater than zero, and at most the key's
    /// ceiling ([`duration_ceiling`]).
    pub(super) fn dur(&mut self, v: Option<&Text>, key: &str, d: Duration) -> Duration {
        self.val(v, key, d, |s| bounded_duration(s, false, key))
    }

    /// A duration where zero means something ("no expiry", "don't wait"),
    /// at most the key's ceiling.
    pub(super) fn dur0(&mut self, v: Option<&Text>, key: &str, d: Duration) -> Duration {
        self.val(v, key, d, |s| bounded_duration(s, true, key))
    }

    /// A secret read from the environment variable `v` names. Unset or
    /// empty is an error, except for `check` ([`Purpose::Check`]): the
    /// machine that lints a config (CI, an image build) rarely holds the
    /// server's secrets, so there it is a warning and the value is `None`.
    pub(super) fn secret_env(&mut self, v: &Text, key: &str) -> Option<String> {
        if self.purpose != Purpose::Check {
            return self.check(v, key, |name| read_env(name));
        }
        if let Err(message) = read_env(v.get_ref()) {
            let message = format!("{message}; `serve` refuses to start without it");
            self.warn(Some(v.span()), key, message);
        }
        None
    }

    /// An optional duration with no default (`None` when absent or wrong).
    pub(super) fn dur_opt(&mut self, v: Option<&Text>, key: &str) -> Option<Duration> {
        v.and_then(|v| self.check(v, key, |s| bounded_duration(s, false, key)))
    }

    pub(super) fn int<T: TryFrom<i64>>(
        &mut self,
        v: Option<&Int>,
        key: &str,
        d: T,
        range: RangeInclusive<i64>,
    ) -> T {
        self.val(v, key, d, |n| in_range(*n, &range))
    }

    pub(super) fn list<T>(
        &mut self,
        v: &[Text],
        key: &str,
        f: impl Fn(&String) -> Result<T, String>,
    ) -> Vec<T> {
        let entries = v.iter().enumerate();
        entries
            .filter_map(|(i, e)| self.check(e, &format!("{key}[{i}]"), &f))
            .collect()
    }

    pub(super) fn path(&mut self, v: &Text, key: &str) -> PathBuf {
        let base = self.base.clone();
        self.val(Some(v), key, PathBuf::new(), |s| non_empty_path(s, &base))
    }

    /// Records a listen address for [`Ctx::check_overlaps`]; `span` is `None`
    /// for a default.
    pub(super) fn bind(&mut self, addr: SocketAddr, span: Option<Range<usize>>, key: String) {
        self.bound.push(Bound { addr, span, key });
    }

    /// Listeners must not share an address: same port and same IP, or one of
    /// them the same family's wildcard. Port 0 (ephemeral) never clashes.
    pub(super) fn check_overlaps(&mut self) {
        let bound = std::mem::take(&mut self.bound);
        for (i, b) in bound.iter().enumerate() {
            let Some(prev) = bound[..i].iter().find(|p| overlaps(p.addr, b.addr)) else {
                continue;
            };
            let (at, other) = if b.span.is_some() {
                (b, prev)
            } else {
                (prev, b)
            };
            let message = format!(
                "listen address {} overlaps {} ({}); each listener needs its own address",
                at.addr, other.key, other.addr
            );
            self.error(at.span.clone(), &at.key, message);
        }
    }

    /// The config when nothing was wrong, else every error in file order. A
    /// `None` config (the shape pass could not recover) always has errors.
    pub(super) fn finish(mut self, config: Option<Config>) -> Result<Config, ConfigErrors> {
        match config {
            Some(mut config) if self.errors.is_empty() => {
                self.warnings.sort_by_key(|e| (e.line, e.column));
                config.warnings = self.warnings;
                Ok(config)
            }
            _ => {
                self.errors.sort_by_key(|e| (e.line, e.column));
                Err(ConfigErrors(self.errors))
            }
        }
    }
}

/// A duration within the key's ceiling ([`duration_ceiling`]): a value past
/// it is almost always a typo (`"100000000000h"`).
fn bounded_duration(s: &str, zero_ok: bool, key: &str) -> Result<Duration, String> {
    parse_duration_within(s, zero_ok, duration_ceiling(key))
}

fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    let same_family = a.is_ipv4() == b.is_ipv4();
    let wildcard = a.ip().is_unspecified() || b.ip().is_unspecified();
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || (same_family && wildcard))
}
