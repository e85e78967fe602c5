//! `store = "etcd://..."` and `[registry.etcd]`: endpoints, key prefix,
//! credentials, TLS files (read now, so a missing file is a config error with
//! its line) and the dial timeout.

use std::path::Path;
use std::time::Duration;

use super::ctx::Ctx;
use super::raw::{RawEtcd, Text};
use super::values::non_empty_path;
use crate::config::{EtcdConfig, EtcdTls};

/// Default `dial_timeout`.
pub(super) const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Endpoints and prefix of `etcd://host:port[,host:port...]/prefix`
/// (`rest` is what follows `etcd://`).
pub(super) fn parse_url(rest: &str) -> Result<(Vec<String>, String), String> {
    let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let endpoints: Vec<String> = hosts.split(',').map(|h| h.trim().to_owned()).collect();
    for endpoint in &endpoints {
        let ok = endpoint.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(format!(
                "etcd endpoint `{endpoint}` must be HOST:PORT, like \"etcd://127.0.0.1:2379/switchyard\""
            ));
        }
    }
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return Err("the etcd store needs a key prefix after the endpoints, like \"etcd://127.0.0.1:2379/switchyard\"".into());
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the etcd key prefix `{prefix}` must not contain spaces or control characters"
        ));
    }
    Ok((endpoints, format!("/{prefix}")))
}

/// The full etcd settings, or `None` after recording errors.
pub(super) fn settings(
    cx: &mut Ctx,
    endpoints: Vec<String>,
    prefix: String,
    raw: Option<&RawEtcd>,
) -> EtcdConfig {
    let empty = RawEtcd::default();
    let raw = raw.unwrap_or(&empty);
    let base = cx.base.clone();
    let username = raw.username.as_ref().and_then(|u| {
        cx.check(u, "registry.etcd.username", |s| {
            if s.is_empty() {
                Err("must not be empty".to_string())
            } else {
                Ok(s.clone())
            }
        })
    });
    let password = raw
        .password_env
        .as_ref()
        .and_then(|v| cx.secret_env(v, "registry.etcd.password_env"));
    if username.is_some() != raw.password_env.is_some() {
        let span = raw
            .username
            .as_ref()
            .or(raw.password_env.as_ref())
            .map(|t| t.span());
        cx.error(
            span,
            "registry.etcd",
            "set both username and password_env, or neither",
        );
    }
    let tls = tls(cx, raw, &base);
    let dial_timeout = cx.dur(
        raw.dial_timeout.as_ref(),
        "registry.etcd.dial_timeout",
        DIAL_TIMEOUT,
    );
    EtcdConfig {
        endpoints,
        prefix,
        username,
        password,
        tls,
        dial_timeout,
    }
}

fn tls(cx: &mut Ctx, raw: &RawEtcd, base: &Path) -> Option<EtcdTls> {
    let mut read = |v: &Option<Text>, key: &str| {
        v.as_ref().and_then(|v| {
            cx.check(v, key, |s| {
                let path = non_empty_path(s, base)?;
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
            })
        })
    };
    let ca = read(&raw.ca, "registry.etcd.ca");
    let cert = read(&raw.cert, "registry.etcd.cert");
    let key = read(&raw.key, "registry.etcd.key");
    if raw.cert.is_some() != raw.key.is_some() {
        let span = raw.cert.as_ref().or(raw.key.as_ref()).map(|t| t.span());
        cx.error(span, "registry.etcd", "set both cert and key, or neither");
    }
    if raw.ca.is_none() && raw.cert.is_some() {
        let span = raw.cert.as_ref().map(|t| t.span());
        cx.error(
            span,
            "registry.etcd.ca",
            "a client certificate needs `ca` (TLS to etcd)",
        );
    }
    Some(EtcdTls {
        ca_pem: ca?,
        identity: cert.zip(key),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_endpoints_and_a_rooted_prefix() {
        let (endpoints, prefix) =
            parse_url("127.0.0.1:2379,10.0.0.2:22379/switchyard/").unwrap_or_default();
        assert_eq!(endpoints, ["127.0.0.1:2379", "10.0.0.2:22379"]);
        assert_eq!(prefix, "/switchyard");
        assert_eq!(
            parse_url("etcd:2379/a/b").map(|p| p.1),
            Ok("/a/b".to_string())
        );
    }

    #[test]
    fn bad_urls_are_explained() {
        for bad in [
            "127.0.0.1/switchyard",
            "127.0.0.1:0/x",
            ":2379/x",
            "127.0.0.1:2379",
            "127.0.0.1:2379/",
            "a:1,/x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
