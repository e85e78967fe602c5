//! The walk, top half: the raw mirror in, a [`Config`] out. This file builds
//! the whole and the process-wide tables (`[proxy]` with its TLS listeners,
//! `[admin]`, `[registry]`, `[log]`) and runs the listener overlap check;
//! [`super::services`] builds services and routes. A failed check records its
//! error in [`Ctx`] and yields the default, so one pass reports all errors.

use std::net::SocketAddr;

use toml::Spanned;

use super::access_log::access_log;
use super::addresses::{parse_listen, parse_net};
use super::ctx::{take, Ctx};
use super::defaults::{default_admin, default_alpn, default_proxy, default_registry};
use super::raw::{RawAdmin, RawConfig, RawLogFormat, RawPriority, RawProxy, RawRegistry, RawTls};
use super::services::{routes, service, warn_undeclared_services};
use super::values::{non_empty, parse_alpn, parse_store, NO_MAX};
use crate::config::{
    AdminConfig, CertPair, Config, ControlPriority, LogConfig, LogFormat, ProxyConfig,
    RegistryConfig, StoreConfig, TlsListenerConfig,
};

pub(super) fn build(cx: &mut Ctx, raw: &RawConfig) -> Config {
    let proxy = proxy(cx, &raw.proxy);
    let admin = admin(cx, &raw.admin);
    cx.check_overlaps();
    let services = raw.services.iter();
    let services = services
        .map(|(name, s)| (name.get_ref().clone(), service(cx, name, s)))
        .collect();
    let format = match raw.log.format {
        Some(RawLogFormat::Json) => LogFormat::Json,
        Some(RawLogFormat::Text) | None => LogFormat::Text,
    };
    let registry = registry(cx, &raw.registry);
    let mut admin = admin;
    if raw.admin.priority.is_none() && matches!(registry.store, StoreConfig::Etcd(_)) {
        // Cluster mode: etcd ends leases, and a heartbeat reaches it only
        // through the control thread; at background priority a saturated
        // machine could hold one back past its lease.
        admin.priority = ControlPriority::Normal;
    }
    let routes = routes(cx, &raw.routes);
    warn_undeclared_services(cx, &raw.routes, &services);
    Config {
        path: None,
        proxy,
        admin,
        services,
        registry,
        routes,
        log: LogConfig { format },
        access_log: raw.access_log.as_ref().map(|a| access_log(cx, a)),
        warnings: Vec::new(),
    }
}

fn proxy(cx: &mut Ctx, raw: &RawProxy) -> ProxyConfig {
    let d = default_proxy();
    let listen = proxy_listen(cx, raw, d.listen);
    let tls: Vec<_> = raw
        .tls
        .iter()
        .enumerate()
        .map(|(i, t)| tls(cx, i, t))
        .collect();
    let no_listener = listen.is_empty() && tls.is_empty() && !cx.dropped("proxy.tls");
    if let (Some(l), true) = (&raw.listen, no_listener) {
        let message = "the proxy needs at least one listener in proxy.listen or [[proxy.tls]]";
        cx.error(Some(l.span()), "proxy.listen", message);
    }
    let nets = raw.trusted_proxies.as_deref().unwrap_or_default();
    ProxyConfig {
        listen,
        tls,
        header_read_timeout: take!(cx, "proxy", dur(raw.header_read_timeout, d)),
        idle_timeout: take!(cx, "proxy", dur(raw.idle_timeout, d)),
        max_header_bytes: take!(cx, "proxy", int(raw.max_header_bytes, d, 1024..=NO_MAX)),
        max_headers: take!(cx, "proxy", int(raw.max_headers, d, 1..=NO_MAX)),
        body_idle_timeout: take!(cx, "proxy", dur(raw.body_idle_timeout, d)),
        max_body_bytes: take!(cx, "proxy", int(raw.max_body_bytes, d, 0..=NO_MAX)),
        trusted_proxies: cx.list(nets, "proxy.trusted_proxies", |s| parse_net(s)),
        max_connections: take!(cx, "proxy", int(raw.max_connections, d, 1..=NO_MAX)),
        drain_timeout: take!(cx, "proxy", dur0(raw.drain_timeout, d)),
        workers: take!(cx, "proxy", int(raw.workers, d, 0..=1024)),
        merge_slashes: raw.merge_slashes.unwrap_or(d.merge_slashes),
        upstream_idle_per_backend: take!(
            cx,
            "proxy",
            int(raw.upstream_idle_per_backend, d, 0..=NO_MAX)
        ),
        upstream_idle_timeout: take!(cx, "proxy", dur(raw.upstream_idle_timeout, d)),
    }
}

/// The plain listeners. The default ones take part in the overlap check,
/// unless they only stand in for a `listen` dropped for its wrong shape.
fn proxy_listen(cx: &mut Ctx, raw: &RawProxy, default: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(list) = &raw.listen else {
        if !cx.dropped("proxy.listen") {
            for (i, addr) in default.iter().enumerate() {
                cx.bind(*addr, None, format!("proxy.listen[{i}]"));
            }
        }
        return default;
    };
    let mut out = Vec::new();
    for (i, entry) in list.get_ref().iter().enumerate() {
        let key = format!("proxy.listen[{i}]");
        if let Some(addr) = cx.check(entry, &key, |s| parse_listen(s)) {
            cx.bind(addr, Some(entry.span()), key);
            out.push(addr);
        }
    }
    out
}

fn tls(cx: &mut Ctx, i: usize, raw: &RawTls) -> TlsListenerConfig {
    let key = format!("proxy.tls[{i}]");
    let listen = cx.check(&raw.listen, &format!("{key}.listen"), |s| parse_listen(s));
    if let Some(addr) = listen {
        cx.bind(addr, Some(raw.listen.span()), format!("{key}.listen"));
    }
    let pairs = raw.certs.get_ref();
    if pairs.is_empty() {
        let message = "a TLS listener needs at least one { cert, key } pair";
        cx.error(Some(raw.certs.span()), &format!("{key}.certs"), message);
    }
    let certs = pairs.iter().enumerate().map(|(j, pair)| CertPair {
        cert: cx.path(&pair.cert, &format!("{key}.certs[{j}].cert")),
        key: cx.path(&pair.key, &format!("{key}.certs[{j}].key")),
    });
    let certs = certs.collect();
    let alpn = match &raw.alpn {
        Some(list) => cx.list(list, &format!("{key}.alpn"), |s| parse_alpn(s)),
        None => default_alpn(),
    };
    let listen = listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    TlsListenerConfig {
        listen,
        certs,
        alpn,
    }
}

fn admin(cx: &mut Ctx, raw: &RawAdmin) -> AdminConfig {
    let d = default_admin();
    let listen = take!(cx, "admin", val(raw.listen, d, |s| parse_listen(s)));
    let span = raw.listen.as_ref().map(Spanned::span);
    if !cx.dropped("admin.listen") {
        cx.bind(listen, span.clone(), "admin.listen".into());
    }
    let token = admin_token(cx, raw);
    let no_token_keys = raw.token.is_none()
        && raw.token_env.is_none()
        && !cx.dropped("admin.token")
        && !cx.dropped("admin.token_env");
    if no_token_keys && !listen.ip().to_canonical().is_loopback() {
        let message = format!(
            "refusing a non-loopback admin listener without a token ({listen}); \
             set admin.token or admin.token_env"
        );
        cx.error(span, "admin.listen", message);
    }
    let priority = match raw.priority {
        Some(RawPriority::Normal) => ControlPriority::Normal,
        Some(RawPriority::Background) | None => ControlPriority::Background,
    };
    AdminConfig {
        listen,
        token,
        priority,
    }
}

fn admin_token(cx: &mut Ctx, raw: &RawAdmin) -> Option<String> {
    match (&raw.token, &raw.token_env) {
        (Some(_), Some(env)) => {
            let message = "set either admin.token or admin.token_env, not both";
            cx.error(Some(env.span()), "admin.token_env", message);
            None
        }
        (Some(token), None) => cx.check(token, "admin.token", |t| non_empty(t)),
        (None, Some(env)) => cx.secret_env(env, "admin.token_env"),
        (None, None) => None,
    }
}

/// `store`, with `[registry.etcd]` for an etcd store (an error elsewhere).
fn store(cx: &mut Ctx, raw: &RawRegistry, base: &std::path::Path) -> StoreConfig {
    let Some(text) = raw.store.as_ref() else {
        if let Some(etcd) = &raw.etcd {
            cx.error(
                Some(etcd.span()),
                "registry.etcd",
                "[registry.etcd] needs store = \"etcd://HOST:PORT/PREFIX\"",
            );
        }
        return StoreConfig::Memory;
    };
    if let Some(rest) = text.get_ref().strip_prefix("etcd://") {
        let Some((endpoints, prefix)) =
            cx.check(text, "registry.store", |_| super::etcd::parse_url(rest))
        else {
            return StoreConfig::Memory;
        };
        let etcd = raw.etcd.as_ref().map(|e| e.get_ref());
        return StoreConfig::Etcd(super::etcd::settings(cx, endpoints, prefix, etcd));
    }
    if let Some(etcd) = &raw.etcd {
        cx.error(
            Some(etcd.span()),
            "registry.etcd",
            "[registry.etcd] is only used with store = \"etcd://...\"",
        );
    }
    cx.check(text, "registry.store", |s| parse_store(s, base))
        .unwrap_or(StoreConfig::Memory)
}

fn registry(cx: &mut Ctx, raw: &RawRegistry) -> RegistryConfig {
    let d = default_registry();
    let base = cx.base.clone();
    let store = store(cx, raw, &base);
    let nets = raw.allowed_networks.as_ref();
    let nets = nets.map(|n| cx.list(n, "registry.allowed_networks", |s| parse_net(s)));
    RegistryConfig {
        default_ttl: take!(cx, "registry", dur0(raw.default_ttl, d)),
        store,
        allowed_networks: nets,
        allow_new_services: raw.allow_new_services.unwrap_or(d.allow_new_services),
        max_instances_per_service: take!(
            cx,
            "registry",
            int(raw.max_instances_per_service, d, 1..=NO_MAX)
        ),
        max_services: take!(cx, "registry", int(raw.max_services, d, 1..=NO_MAX)),
        max_instances: take!(cx, "registry", int(raw.max_instances, d, 1..=NO_MAX)),
    }
}
