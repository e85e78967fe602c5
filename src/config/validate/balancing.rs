//! The balancing keys of `[services.NAME]` (SPEC §7): `hash_key` (required
//! with `balance = "hash"`, an error with any other policy),
//! `hash_balance_factor` (0 or 100 to 1000, `hash` only), `slow_start` (not
//! with `hash`: ramping a backend's share would remap its keys), and the
//! `[services.NAME.sticky]` table.

use http::header::HeaderName;

use super::ctx::Ctx;
use super::raw::{RawService, RawSticky};
use super::values::{in_range, parse_duration, parse_path};
use crate::config::{BalancePolicy, HashKey, StickyConfig};
use std::time::Duration;

/// The checked balancing keys of one service.
pub(super) struct Balancing {
    pub hash_key: Option<HashKey>,
    pub hash_balance_factor: u32,
    pub slow_start: Duration,
    pub sticky: Option<StickyConfig>,
}

pub(super) fn balancing(
    cx: &mut Ctx,
    key: &str,
    raw: &RawService,
    balance: BalancePolicy,
) -> Balancing {
    let k = |leaf: &str| format!("{key}.{leaf}");
    let is_hash = balance == BalancePolicy::Hash;
    // A `balance` dropped for its wrong shape makes no claim either way.
    let known = !cx.dropped(&k("balance"));
    let hash_key = raw
        .hash_key
        .as_ref()
        .and_then(|v| cx.check(v, &k("hash_key"), |s| parse_hash_key(s)));
    let hash_balance_factor = raw.hash_balance_factor.as_ref().and_then(|v| {
        cx.check(v, &k("hash_balance_factor"), |n| match *n {
            0 => Ok(0),
            n => in_range(n, &(100..=1000))
                .map_err(|_| format!("must be 0 (off) or from 100 to 1000 (percent), got {n}")),
        })
    });
    let slow_start = raw
        .slow_start
        .as_ref()
        .and_then(|v| cx.check(v, &k("slow_start"), |s| parse_duration(s, true)));
    if known && !is_hash {
        for (leaf, span) in [
            ("hash_key", raw.hash_key.as_ref().map(|v| v.span())),
            (
                "hash_balance_factor",
                raw.hash_balance_factor.as_ref().map(|v| v.span()),
            ),
        ] {
            if let Some(span) = span {
                cx.error(Some(span), &k(leaf), "only applies with balance = \"hash\"");
            }
        }
    }
    if known && is_hash {
        if raw.hash_key.is_none() {
            let span = raw.balance.as_ref().map(|b| b.span());
            cx.error(
                span,
                &k("hash_key"),
                "balance = \"hash\" needs a hash_key (\"header:NAME\", \"cookie:NAME\", \"query:NAME\", \"client_ip\" or \"path\")",
            );
        }
        if let Some(v) = raw
            .slow_start
            .as_ref()
            .filter(|_| slow_start != Some(Duration::ZERO))
        {
            cx.error(
                Some(v.span()),
                &k("slow_start"),
                "does not apply with balance = \"hash\" (ramping a backend up would move its keys)",
            );
        }
    }
    Balancing {
        hash_key,
        hash_balance_factor: hash_balance_factor.unwrap_or(0),
        slow_start: slow_start.unwrap_or(Duration::ZERO),
        sticky: raw
            .sticky
            .as_ref()
            .map(|s| sticky(cx, &k("sticky"), s.get_ref())),
    }
}

fn parse_hash_key(s: &str) -> Result<HashKey, String> {
    let usage =
        "must be \"header:NAME\", \"cookie:NAME\", \"query:NAME\", \"client_ip\" or \"path\"";
    match s {
        "client_ip" => return Ok(HashKey::ClientIp),
        "path" => return Ok(HashKey::Path),
        _ => {}
    }
    let Some((kind, name)) = s.split_once(':') else {
        return Err(format!("{usage}, got {s:?}"));
    };
    if name.is_empty() {
        return Err(format!("{kind}: needs a name after the colon"));
    }
    match kind {
        "header" => HeaderName::from_bytes(name.as_bytes())
            .map(HashKey::Header)
            .map_err(|_| format!("{name:?} is not a valid header name")),
        "cookie" => check_token(name).map(|()| HashKey::Cookie(name.to_owned())),
        "query" => Ok(HashKey::Query(name.to_owned())),
        _ => Err(format!("{usage}, got {s:?}")),
    }
}

/// A cookie name is an RFC 7230 token.
fn check_token(name: &str) -> Result<(), String> {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~)"
        ))
    }
}

fn sticky(cx: &mut Ctx, key: &str, raw: &RawSticky) -> StickyConfig {
    let k = |leaf: &str| format!("{key}.{leaf}");
    let cookie = cx
        .check(&raw.cookie, &k("cookie"), |s| check_token(s))
        .map_or_else(String::new, |()| raw.cookie.get_ref().clone());
    let ttl = raw.ttl.as_ref();
    let ttl = ttl.and_then(|v| cx.check(v, &k("ttl"), |s| parse_duration(s, true)));
    let path = raw.path.as_ref();
    let path = path.and_then(|v| {
        cx.check(v, &k("path"), |s| {
            let path = parse_path(s)?;
            if path.contains(';') || path.chars().any(char::is_control) {
                return Err(format!("cookie path `{s}` may not contain ';'"));
            }
            Ok(path)
        })
    });
    StickyConfig {
        cookie,
        ttl: ttl.unwrap_or(Duration::ZERO),
        path: path.unwrap_or_else(|| "/".to_owned()),
        secure: raw.secure.unwrap_or(false),
        http_only: raw.http_only.unwrap_or(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys_parse() {
        assert_eq!(parse_hash_key("path"), Ok(HashKey::Path));
        assert_eq!(parse_hash_key("client_ip"), Ok(HashKey::ClientIp));
        assert_eq!(
            parse_hash_key("cookie:sid"),
            Ok(HashKey::Cookie("sid".into()))
        );
        assert_eq!(parse_hash_key("query:u"), Ok(HashKey::Query("u".into())));
        assert!(
            matches!(parse_hash_key("header:X-User-Id"), Ok(HashKey::Header(h)) if h == "x-user-id")
        );
        for bad in ["", "header:", "header:a b", "cookie:a;b", "ip", "body:x"] {
            assert!(parse_hash_key(bad).is_err(), "{bad}");
        }
    }
}
