//! Value checks for everything that is not an address: integer ranges,
//! durations, the registry store, paths, tokens, names, status ranges and
//! retry conditions. Each is pure (only `read_env` looks at the environment);
//! `Err` carries the one-sentence message that becomes the error's MESSAGE.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::errors::key_segment;
use crate::config::{RetryOn, StoreConfig};

/// The upper bound of an "at least N" check (its message then omits the bound).
pub(super) const NO_MAX: i64 = i64::MAX;
pub(super) const U32_MAX: i64 = u32::MAX as i64;

/// `n` in `range` and in `T`. A "huge" upper bound (a type's limit rather than
/// a policy) is left out of the message unless `n` is above it.
pub(super) fn in_range<T: TryFrom<i64>>(n: i64, range: &RangeInclusive<i64>) -> Result<T, String> {
    let fits = range.contains(&n).then(|| T::try_from(n).ok()).flatten();
    let (lo, hi) = (*range.start(), *range.end());
    fits.ok_or_else(|| match (n < lo, hi >= U32_MAX) {
        (true, true) => format!("must be at least {lo}, got {n}"),
        (false, true) => format!("must be at most {hi}, got {n}"),
        (_, false) => format!("must be from {lo} to {hi}, got {n}"),
    })
}

/// A duration of at most a year: past that it is a typo (`"100000000000h"`),
/// and timers that far out overflow. Keys with a tighter ceiling go through
/// [`parse_duration_within`]. For checks that do not go through `Ctx::dur`
/// (the balancing keys, merged from another branch, call it directly).
#[cfg_attr(not(test), allow(dead_code))]
pub(super) fn parse_duration(s: &str, zero_ok: bool) -> Result<Duration, String> {
    parse_duration_within(s, zero_ok, (YEAR, "365d"))
}

/// A duration of at most `ceiling` (the value, and how to write it).
pub(super) fn parse_duration_within(
    s: &str,
    zero_ok: bool,
    (ceiling, spelled): (Duration, &str),
) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        format!("`{s}` is not a duration ({e}); write it like \"250ms\", \"2s\" or \"1m\"")
    })?;
    if d.is_zero() && !zero_ok {
        return Err(format!("must be greater than zero, got `{s}`"));
    }
    if d > ceiling {
        return Err(format!("must be at most {spelled}, got `{s}`"));
    }
    Ok(d)
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// The longest duration any key accepts ([`parse_duration`] enforces it).
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// The largest value a duration key accepts, and how to write it. By the
/// key's last segment: check intervals at most an hour (a longer interval
/// means a dead backend stays in rotation for hours); timeouts and ejections
/// at most a day; anything else (a lease, a ramp-up, a cookie's lifetime) at
/// most a year, which every duration gets from [`parse_duration`] itself.
pub(super) fn duration_ceiling(key: &str) -> (Duration, &'static str) {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    match leaf {
        "interval" => (HOUR, "1h"),
        "base_ejection" => (DAY, "24h"),
        leaf if leaf.ends_with("timeout") => (DAY, "24h"),
        _ => (YEAR, "365d"),
    }
}

pub(super) fn parse_store(s: &str, base: &Path) -> Result<StoreConfig, String> {
    if s == "memory" {
        return Ok(StoreConfig::Memory);
    }
    if let Some(path) = s.strip_prefix("file:") {
        return non_empty_path(path, base)
            .map(StoreConfig::File)
            .map_err(|_| "the file store needs a path, like \"file:data/registry.json\"".into());
    }
    Err(format!(
        "store `{s}` must be \"memory\", \"file:PATH\" or \"etcd://HOST:PORT/PREFIX\""
    ))
}

/// A non-empty path, made absolute against the config file's folder.
pub(super) fn non_empty_path(s: &str, base: &Path) -> Result<PathBuf, String> {
    if s.trim().is_empty() {
        return Err("the path must not be empty".into());
    }
    let path = Path::new(s);
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    })
}

pub(super) fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(s.to_owned())
}

pub(super) fn read_env(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("the environment variable name must not be empty".into());
    }
    env_token(name, std::env::var(name))
}

/// The token from `token_env`'s lookup result (split out to test without `set_var`).
pub(super) fn env_token(
    name: &str,
    value: Result<String, std::env::VarError>,
) -> Result<String, String> {
    match value {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) => Err(format!("environment variable `{name}` is empty")),
        Err(std::env::VarError::NotPresent) => {
            Err(format!("environment variable `{name}` is not set"))
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(format!("environment variable `{name}` is not valid UTF-8"))
        }
    }
}

pub(super) fn parse_alpn(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 255 {
        return Err(format!("ALPN protocol id `{s}` must be 1 to 255 bytes"));
    }
    Ok(s.to_owned())
}

/// Service names (table keys and `routes[].service`).
pub(super) fn check_name(s: &str) -> Result<(), String> {
    let chars_ok = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if (1..=128).contains(&s.len()) && chars_ok {
        return Ok(());
    }
    Err(format!(
        "service name `{s}` must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' or '-'"
    ))
}

/// The key of a service table, quoted when the name is not a bare TOML key.
pub(super) fn service_key(name: &str) -> String {
    format!("services.{}", key_segment(name))
}

pub(super) fn parse_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s.chars().any(char::is_whitespace) {
        return Err(format!(
            "path `{s}` must start with \"/\" and contain no spaces"
        ));
    }
    Ok(s.to_owned())
}

pub(super) fn parse_header_host(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "host `{s}` must be non-empty and contain no spaces"
        ));
    }
    Ok(s.to_owned())
}

/// "200-399" or "200", with 100 <= low <= high <= 599.
pub(super) fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let (lo, hi) = (lo.trim().parse::<u16>(), hi.trim().parse::<u16>());
    match (lo, hi) {
        (Ok(lo), Ok(hi)) if 100 <= lo && lo <= hi && hi <= 599 => Ok((lo, hi)),
        _ => Err(format!(
            "`{s}` is not a status range like \"200-399\" or \"200\" (100 <= low <= high <= 599)"
        )),
    }
}

pub(super) fn parse_retry_on(s: &str) -> Result<RetryOn, String> {
    let code = (s.len() == 3).then(|| s.parse::<u16>().ok()).flatten();
    match (s, code) {
        ("connect_error", _) => Ok(RetryOn::ConnectError),
        ("reset", _) => Ok(RetryOn::Reset),
        ("timeout", _) => Ok(RetryOn::Timeout),
        (_, Some(code)) if (400..=599).contains(&code) => Ok(RetryOn::Status(code)),
        _ => Err(format!(
            "`{s}` is not a retry condition: use \"connect_error\", \"reset\", \"timeout\" \
             or a 4xx/5xx status like \"503\""
        )),
    }
}

#[cfg(test)]
mod ceiling_tests {
    use super::*;

    #[test]
    fn duration_keys_have_ceilings_by_their_last_segment() {
        let ceiling = |key| duration_ceiling(key).0;
        assert_eq!(ceiling("services.a.health_check.interval"), HOUR);
        assert_eq!(ceiling("services.a.health_check.timeout"), DAY);
        assert_eq!(ceiling("proxy.header_read_timeout"), DAY);
        assert_eq!(ceiling("services.a.outlier.base_ejection"), DAY);
        assert_eq!(ceiling("registry.default_ttl"), YEAR);
        assert_eq!(ceiling("services.a.slow_start"), YEAR);
    }

    #[test]
    fn no_duration_passes_a_year() {
        assert_eq!(parse_duration("365d", false), Ok(YEAR));
        let err = parse_duration("100000000000h", false).unwrap_err();
        assert!(err.contains("at most 365d"), "{err}");
        assert!(parse_duration("366d", true).is_err());
    }
}
