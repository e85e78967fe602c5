//! The walk, bottom half: `[services.NAME]` (backends, health check, retry,
//! outlier) and `[[routes]]`, from the raw mirror to [`ServiceConfig`] and
//! [`RouteConfig`]. Same rules as [`super::build`]: a failed check records its
//! error in [`Ctx`] and yields the default.

use std::collections::BTreeMap;

use toml::Spanned;

use super::addresses::{normalize_host, resolve_backend};
use super::ctx::{take, Ctx};
use super::defaults::{default_health_check, default_outlier, default_retry, default_service};
use super::raw::{
    RawBackend, RawHealthCheck, RawHealthKind, RawOutlier, RawProtocol, RawRetry, RawRoute,
    RawService, Text,
};
use super::upstream_tls::upstream_tls;
use super::values::{
    check_name, in_range, parse_header_host, parse_path, parse_retry_on, parse_status_range,
    service_key, U32_MAX,
};
use crate::config::{
    BackendConfig, HealthCheckConfig, HealthCheckKind, OutlierConfig, RetryConfig, RouteConfig,
    ServiceConfig, UpstreamProtocol,
};

pub(super) fn service(cx: &mut Ctx, name: &Text, raw: &RawService) -> ServiceConfig {
    let key = service_key(name.get_ref());
    cx.check(name, &key, |n| check_name(n));
    let d = default_service();
    let balance = raw.balance.as_ref().map_or(d.balance, |b| *b.get_ref());
    let balancing = super::balancing::balancing(cx, &key, raw, balance);
    let protocol = raw.protocol.map_or(d.protocol, |p| match p {
        RawProtocol::Http1 => UpstreamProtocol::Http1,
        RawProtocol::H2c => UpstreamProtocol::H2c,
        RawProtocol::Https => UpstreamProtocol::Https,
    });
    let try_timeout = cx.dur_opt(raw.try_timeout.as_ref(), &format!("{key}.try_timeout"));
    let k = |leaf: &str| format!("{key}.{leaf}");
    ServiceConfig {
        balance,
        backends: backends(cx, &key, &raw.backends),
        protocol,
        connect_timeout: take!(cx, key, dur(raw.connect_timeout, d)),
        request_timeout: take!(cx, key, dur(raw.request_timeout, d)),
        try_timeout,
        health_check: raw
            .health_check
            .as_ref()
            .map(|h| health(cx, &k("health_check"), h, protocol)),
        retry: raw
            .retry
            .as_ref()
            .map_or(d.retry, |r| retry(cx, &k("retry"), r)),
        outlier: raw.outlier.as_ref().map(|o| outlier(cx, &k("outlier"), o)),
        max_requests_per_backend: take!(cx, key, int(raw.max_requests_per_backend, d, 0..=U32_MAX)),
        panic_threshold: take!(cx, key, int(raw.panic_threshold, d, 0..=100)),
        tls: upstream_tls(cx, &key, raw, protocol),
        hash_key: balancing.hash_key,
        hash_balance_factor: balancing.hash_balance_factor,
        slow_start: balancing.slow_start,
        sticky: balancing.sticky,
    }
}

fn backends(cx: &mut Ctx, key: &str, raw: &[Spanned<RawBackend>]) -> Vec<BackendConfig> {
    let mut out: Vec<BackendConfig> = Vec::new();
    for (i, entry) in raw.iter().enumerate() {
        let at = format!("{key}.backends[{i}]");
        let Some(backend) = backend(cx, &at, entry) else {
            continue;
        };
        if out.iter().any(|b| b.address == backend.address) {
            let message = format!(
                "backend `{}` is listed twice in this service",
                backend.address
            );
            cx.error(Some(entry.span()), &at, message);
            continue;
        }
        out.push(backend);
    }
    out
}

/// Resolves the address and checks the weight; `None` when either is wrong.
fn backend(cx: &mut Ctx, at: &str, entry: &Spanned<RawBackend>) -> Option<BackendConfig> {
    let (address, address_key, weight) = match entry.get_ref() {
        RawBackend::Address(a) => (Spanned::new(entry.span(), a.clone()), at.to_owned(), None),
        RawBackend::Table(t) => (
            t.address.clone(),
            format!("{at}.address"),
            t.weight.as_ref(),
        ),
    };
    let resolved = cx.check(&address, &address_key, |s| resolve_backend(s));
    let weight = match weight {
        Some(w) => cx.check(w, &format!("{at}.weight"), |n| in_range(*n, &(0..=1000))),
        None => Some(1),
    };
    Some(BackendConfig {
        address: address.into_inner(),
        resolved: resolved?,
        weight: weight?,
    })
}

fn health(
    cx: &mut Ctx,
    key: &str,
    raw: &RawHealthCheck,
    protocol: UpstreamProtocol,
) -> HealthCheckConfig {
    let d = default_health_check();
    let kind = health_kind(cx, key, raw, protocol).unwrap_or(d.kind);
    let host = raw.host.as_ref();
    let host = host.and_then(|h| cx.check(h, &format!("{key}.host"), |s| parse_header_host(s)));
    HealthCheckConfig {
        kind,
        path: take!(cx, key, val(raw.path, d, |s| parse_path(s))),
        host,
        interval: take!(cx, key, dur(raw.interval, d)),
        timeout: take!(cx, key, dur(raw.timeout, d)),
        healthy_threshold: take!(cx, key, int(raw.healthy_threshold, d, 1..=U32_MAX)),
        unhealthy_threshold: take!(cx, key, int(raw.unhealthy_threshold, d, 1..=U32_MAX)),
        expect_status: take!(
            cx,
            key,
            val(raw.expect_status, d, |s| parse_status_range(s))
        ),
    }
}

/// The check's kind; `grpc` needs an HTTP/2 protocol (`h2c` or `https`),
/// and `grpc_service` applies to it alone. `None` when the key is absent.
fn health_kind(
    cx: &mut Ctx,
    key: &str,
    raw: &RawHealthCheck,
    protocol: UpstreamProtocol,
) -> Option<HealthCheckKind> {
    let grpc_service = raw.grpc_service.as_ref();
    let is_grpc = raw.kind.as_ref().map(|k| *k.get_ref()) == Some(RawHealthKind::Grpc);
    if let (Some(service), false) = (grpc_service, is_grpc) {
        let message = "only applies with kind = \"grpc\"";
        cx.error(
            Some(service.span()),
            &format!("{key}.grpc_service"),
            message,
        );
    }
    let kind = raw.kind.as_ref()?;
    Some(match kind.get_ref() {
        RawHealthKind::Http => HealthCheckKind::Http,
        RawHealthKind::Tcp => HealthCheckKind::Tcp,
        RawHealthKind::Grpc => {
            // A `protocol` dropped for its wrong shape stands in as http1: no claim.
            let service_key = key.strip_suffix(".health_check").unwrap_or(key);
            let http2 = matches!(protocol, UpstreamProtocol::H2c | UpstreamProtocol::Https);
            if !http2 && !cx.dropped(&format!("{service_key}.protocol")) {
                let message = "kind = \"grpc\" needs protocol = \"h2c\" or \"https\" on the service (gRPC runs over HTTP/2)";
                cx.error(Some(kind.span()), &format!("{key}.kind"), message);
            }
            HealthCheckKind::Grpc {
                service: grpc_service.map_or_else(String::new, |s| s.get_ref().clone()),
            }
        }
    })
}

fn retry(cx: &mut Ctx, key: &str, raw: &RawRetry) -> RetryConfig {
    let d = default_retry();
    let on = match &raw.on {
        Some(list) => cx.list(list, &format!("{key}.on"), |s| parse_retry_on(s)),
        None => d.on,
    };
    RetryConfig {
        attempts: take!(cx, key, int(raw.attempts, d, 0..=10)),
        on,
        idempotent_only: raw.idempotent_only.unwrap_or(d.idempotent_only),
        budget_percent: take!(cx, key, int(raw.budget_percent, d, 0..=100)),
        buffer_bytes: take!(cx, key, int(raw.buffer_bytes, d, 0..=16 * 1024 * 1024)),
    }
}

fn outlier(cx: &mut Ctx, key: &str, raw: &RawOutlier) -> OutlierConfig {
    let d = default_outlier();
    OutlierConfig {
        consecutive_failures: take!(cx, key, int(raw.consecutive_failures, d, 1..=U32_MAX)),
        base_ejection: take!(cx, key, dur(raw.base_ejection, d)),
        max_ejected_percent: take!(cx, key, int(raw.max_ejected_percent, d, 0..=100)),
        eject_on_5xx: raw.eject_on_5xx.unwrap_or(d.eject_on_5xx),
    }
}

/// Routes in file order; two with the same host and prefix are an error
/// (neither could win). A route whose `host` or `path_prefix` was dropped for
/// its wrong shape is left out of that comparison: its stand-in is no claim.
pub(super) fn routes(cx: &mut Ctx, raw: &[RawRoute]) -> Vec<RouteConfig> {
    let mut out: Vec<RouteConfig> = Vec::new();
    let mut compared: Vec<usize> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let key = format!("routes[{i}]");
        let route = route(cx, &key, r);
        let stand_in =
            cx.dropped(&format!("{key}.host")) || cx.dropped(&format!("{key}.path_prefix"));
        let same = |o: &RouteConfig| o.host == route.host && o.path_prefix == route.path_prefix;
        let earlier = compared.iter().copied().find(|&j| same(&out[j]));
        if let (Some(j), false) = (earlier, stand_in) {
            let span = r.path_prefix.as_ref().unwrap_or(&r.service).span();
            let message = format!("this route has the same host and path_prefix as routes[{j}]");
            cx.error(Some(span), &key, message);
        }
        if !stand_in {
            compared.push(i);
        }
        out.push(route);
    }
    out
}

/// A route may name a service no table declares (registrations can fill
/// it), but more often the name is a typo (`"apii"`): say so, at the name.
pub(super) fn warn_undeclared_services(
    cx: &mut Ctx,
    raw: &[RawRoute],
    services: &BTreeMap<String, ServiceConfig>,
) {
    for (i, r) in raw.iter().enumerate() {
        let name = r.service.get_ref();
        if services.contains_key(name) || check_name(name).is_err() {
            continue;
        }
        let message = format!(
            "no [{}] table declares service `{name}`; the route answers 503 until an \
             instance registers under that name",
            service_key(name)
        );
        cx.warn(
            Some(r.service.span()),
            &format!("routes[{i}].service"),
            message,
        );
    }
}

fn route(cx: &mut Ctx, key: &str, raw: &RawRoute) -> RouteConfig {
    cx.check(&raw.service, &format!("{key}.service"), |s| check_name(s));
    let host = raw.host.as_ref();
    let host = host.and_then(|h| cx.check(h, &format!("{key}.host"), |s| normalize_host(s)));
    let prefix_key = format!("{key}.path_prefix");
    let prefix = raw.path_prefix.as_ref();
    let prefix = cx.val(prefix, &prefix_key, "/".to_owned(), |s| parse_path(s));
    RouteConfig {
        host,
        path_prefix: prefix,
        service: raw.service.get_ref().clone(),
        strip_prefix: raw.strip_prefix.unwrap_or(false),
        allow_ambiguous_paths: raw.allow_ambiguous_paths.unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, HealthCheckKind};

    fn check(protocol: &str, health: &str) -> Result<Config, String> {
        let text = format!(
            "[services.api]\nbackends = [\"127.0.0.1:9\"]\nprotocol = \"{protocol}\"\n\
             [services.api.health_check]\n{health}"
        );
        Config::from_toml_str(&text, Path::new("t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn grpc_checks_need_an_http2_protocol() {
        for protocol in ["h2c", "https"] {
            let config = check(protocol, "kind = \"grpc\"\ngrpc_service = \"users.v1\"\n")
                .unwrap_or_else(|e| panic!("{protocol}: {e}"));
            let kind = config.services["api"]
                .health_check
                .as_ref()
                .map(|h| &h.kind);
            let want = HealthCheckKind::Grpc {
                service: "users.v1".into(),
            };
            assert_eq!(kind, Some(&want));
        }
        let config = check("h2c", "kind = \"grpc\"\n").expect("valid");
        let kind = config.services["api"]
            .health_check
            .as_ref()
            .map(|h| &h.kind);
        let whole_server = HealthCheckKind::Grpc {
            service: String::new(),
        };
        assert_eq!(kind, Some(&whole_server));
        let err = check("http1", "kind = \"grpc\"\n").expect_err("http1");
        assert!(
            err.starts_with("t.toml:5:8: services.api.health_check.kind: kind = \"grpc\" needs protocol = \"h2c\" or \"https\""),
            "{err}"
        );
    }

    #[test]
    fn grpc_service_applies_to_grpc_checks_only() {
        let err = check("h2c", "grpc_service = \"x\"\n").expect_err("http check");
        assert!(
            err.contains(
                "services.api.health_check.grpc_service: only applies with kind = \"grpc\""
            ),
            "{err}"
        );
        assert!(check("h2c", "kind = \"tcp\"\ngrpc_service = \"x\"\n").is_err());
    }
}
