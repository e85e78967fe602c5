//! Validation: the raw mirror ([`super::raw`]) in, the domain types of
//! [`super`] out, or *every* problem found, each as a [`ConfigError`] with
//! file, line, column and dotted key.
//!
//! This file owns the defaults (one `default_*` function per table, so the
//! embedded default and a sparse file agree by construction) and every semantic
//! check. A check never stops the walk: it records its error in [`Ctx`] and
//! yields the default, so one pass reports all errors at once. The only I/O is
//! reading the file, reading `admin.token_env`, and resolving backend and
//! listen host names (`ToSocketAddrs`, first address).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::raw::{
    Int, RawAdmin, RawBackend, RawBalance, RawConfig, RawHealthCheck, RawHealthKind, RawLogFormat,
    RawOutlier, RawProtocol, RawProxy, RawRegistry, RawRetry, RawRoute, RawService, RawTls, Text,
};
use super::{
    AdminConfig, BackendConfig, BalancePolicy, CertPair, Config, HealthCheckConfig,
    HealthCheckKind, LogConfig, LogFormat, OutlierConfig, ProxyConfig, RegistryConfig, RetryConfig,
    RetryOn, RouteConfig, ServiceConfig, StoreConfig, TlsListenerConfig, UpstreamProtocol,
};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{}:{}: {}: {}", .file.display(), .line, .column, .key, .message)]
pub struct ConfigError {
    /// The file (or the `origin` given to `Config::from_toml_str`), as given.
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no position (an unreadable file).
    pub line: usize,
    /// 1-based, in characters; 0 when `line` is 0.
    pub column: usize,
    /// Dotted key path, e.g. `services.users.backends[1].address`.
    pub key: String,
    /// One sentence saying what is wrong.
    pub message: String,
}

/// Every problem found in one load, in file order. Displays one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

// === impl ConfigErrors ===

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// === entry points ===

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
    let mut config = parse_str(&text, path)?;
    config.path = Some(absolute(path));
    Ok(config)
}

/// Parses and validates `text`; `origin` names it in errors and anchors
/// relative paths (its folder). `Config.path` stays `None`.
pub(super) fn parse_str(text: &str, origin: &Path) -> Result<Config, ConfigErrors> {
    let raw: RawConfig =
        toml::from_str(text).map_err(|e| ConfigErrors(vec![syntax_error(origin, text, &e)]))?;
    let mut cx = Ctx::new(origin, text);
    let config = build(&mut cx, &raw);
    cx.finish(config)
}

/// Defaults only: proxy on 0.0.0.0:8080, admin on 127.0.0.1:9091, no services.
pub(super) fn embedded_default() -> Config {
    Config {
        path: None,
        proxy: default_proxy(),
        admin: default_admin(),
        registry: default_registry(),
        services: BTreeMap::new(),
        routes: Vec::new(),
        log: LogConfig::default(),
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

// === defaults ===

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn default_proxy() -> ProxyConfig {
    ProxyConfig {
        listen: vec![SocketAddr::from(([0, 0, 0, 0], 8080))],
        tls: Vec::new(),
        header_read_timeout: secs(10),
        idle_timeout: secs(60),
        max_header_bytes: 32 * 1024,
        max_headers: 100,
        body_idle_timeout: secs(30),
        max_body_bytes: 0,
        trusted_proxies: Vec::new(),
        max_connections: 10_000,
        drain_timeout: secs(30),
        workers: 0,
    }
}

fn default_alpn() -> Vec<String> {
    vec!["h2".into(), "http/1.1".into()]
}

fn default_admin() -> AdminConfig {
    AdminConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
        token: None,
    }
}

fn default_registry() -> RegistryConfig {
    RegistryConfig {
        default_ttl: secs(30),
        store: StoreConfig::Memory,
        allowed_networks: None,
        allow_new_services: true,
        max_instances_per_service: 10_000,
    }
}

pub(super) fn default_service() -> ServiceConfig {
    ServiceConfig {
        balance: BalancePolicy::RoundRobin,
        backends: Vec::new(),
        protocol: UpstreamProtocol::Http1,
        connect_timeout: secs(1),
        request_timeout: secs(30),
        try_timeout: None,
        health_check: None,
        retry: default_retry(),
        outlier: None,
        max_requests_per_backend: 0,
        panic_threshold: 0,
    }
}

fn default_health_check() -> HealthCheckConfig {
    HealthCheckConfig {
        kind: HealthCheckKind::Http,
        path: "/healthz".into(),
        host: None,
        interval: secs(2),
        timeout: secs(1),
        healthy_threshold: 2,
        unhealthy_threshold: 3,
        expect_status: (200, 399),
    }
}

fn default_retry() -> RetryConfig {
    RetryConfig {
        attempts: 1,
        on: vec![
            RetryOn::ConnectError,
            RetryOn::Reset,
            RetryOn::Status(502),
            RetryOn::Status(503),
            RetryOn::Status(504),
        ],
        idempotent_only: true,
        budget_percent: 20,
        buffer_bytes: 64 * 1024,
    }
}

fn default_outlier() -> OutlierConfig {
    OutlierConfig {
        consecutive_failures: 5,
        base_ejection: secs(30),
        max_ejected_percent: 50,
        eject_on_5xx: false,
    }
}

// === Ctx: the error collector ===

/// A listener address seen so far, for the overlap check.
struct Bound {
    addr: SocketAddr,
    span: Option<Range<usize>>,
    key: String,
}

/// Everything a check needs: where errors point, where relative paths start,
/// and the errors and listen addresses collected so far.
struct Ctx<'a> {
    origin: &'a Path,
    text: &'a str,
    /// The config file's folder (absolute when possible).
    base: PathBuf,
    errors: Vec<ConfigError>,
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

/// The upper bound of an "at least N" check (its message then omits the bound).
const NO_MAX: i64 = i64::MAX;
const U32_MAX: i64 = u32::MAX as i64;

impl<'a> Ctx<'a> {
    fn new(origin: &'a Path, text: &'a str) -> Self {
        let base = absolute(origin).parent().map(Path::to_path_buf);
        Ctx {
            origin,
            text,
            base: base.unwrap_or_default(),
            errors: Vec::new(),
            bound: Vec::new(),
        }
    }

    fn error(&mut self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        let (line, column) = span.map_or((0, 0), |s| line_col(self.text, s.start));
        self.errors.push(ConfigError {
            file: self.origin.to_path_buf(),
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// Runs `f` on the value; an `Err` is recorded at the value's span.
    fn check<S, T>(
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
    fn val<S, T>(
        &mut self,
        v: Option<&Spanned<S>>,
        key: &str,
        d: T,
        f: impl FnOnce(&S) -> Result<T, String>,
    ) -> T {
        v.and_then(|v| self.check(v, key, f)).unwrap_or(d)
    }

    /// A duration that must be greater than zero.
    fn dur(&mut self, v: Option<&Text>, key: &str, d: Duration) -> Duration {
        self.val(v, key, d, |s| parse_duration(s, false))
    }

    /// A duration where zero means something ("no expiry", "don't wait").
    fn dur0(&mut self, v: Option<&Text>, key: &str, d: Duration) -> Duration {
        self.val(v, key, d, |s| parse_duration(s, true))
    }

    fn int<T: TryFrom<i64>>(
        &mut self,
        v: Option<&Int>,
        key: &str,
        d: T,
        range: RangeInclusive<i64>,
    ) -> T {
        self.val(v, key, d, |n| in_range(*n, &range))
    }

    fn list<T>(
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

    fn path(&mut self, v: &Text, key: &str) -> PathBuf {
        let base = self.base.clone();
        self.val(Some(v), key, PathBuf::new(), |s| non_empty_path(s, &base))
    }

    fn bind(&mut self, addr: SocketAddr, span: Option<Range<usize>>, key: String) {
        self.bound.push(Bound { addr, span, key });
    }

    fn finish(mut self, config: Config) -> Result<Config, ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(config);
        }
        self.errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(self.errors))
    }
}

// === the walk ===

fn build(cx: &mut Ctx, raw: &RawConfig) -> Config {
    let proxy = proxy(cx, &raw.proxy);
    let admin = admin(cx, &raw.admin);
    check_overlaps(cx);
    let services = raw.services.iter();
    let services = services.map(|(name, s)| (name.get_ref().clone(), service(cx, name, s)));
    let format = match raw.log.format {
        Some(RawLogFormat::Json) => LogFormat::Json,
        Some(RawLogFormat::Text) | None => LogFormat::Text,
    };
    Config {
        path: None,
        proxy,
        admin,
        services: services.collect(),
        registry: registry(cx, &raw.registry),
        routes: routes(cx, &raw.routes),
        log: LogConfig { format },
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
    if let (Some(l), true) = (&raw.listen, listen.is_empty() && tls.is_empty()) {
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
    }
}

fn proxy_listen(cx: &mut Ctx, raw: &RawProxy, default: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(list) = &raw.listen else {
        for (i, addr) in default.iter().enumerate() {
            cx.bind(*addr, None, format!("proxy.listen[{i}]"));
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
    cx.bind(listen, span.clone(), "admin.listen".into());
    let token = admin_token(cx, raw);
    let no_token_keys = raw.token.is_none() && raw.token_env.is_none();
    if no_token_keys && !listen.ip().to_canonical().is_loopback() {
        let message = format!(
            "refusing a non-loopback admin listener without a token ({listen}); \
             set admin.token or admin.token_env"
        );
        cx.error(span, "admin.listen", message);
    }
    AdminConfig { listen, token }
}

fn admin_token(cx: &mut Ctx, raw: &RawAdmin) -> Option<String> {
    match (&raw.token, &raw.token_env) {
        (Some(_), Some(env)) => {
            let message = "set either admin.token or admin.token_env, not both";
            cx.error(Some(env.span()), "admin.token_env", message);
            None
        }
        (Some(token), None) => cx.check(token, "admin.token", |t| non_empty(t)),
        (None, Some(env)) => cx.check(env, "admin.token_env", |name| read_env(name)),
        (None, None) => None,
    }
}

fn registry(cx: &mut Ctx, raw: &RawRegistry) -> RegistryConfig {
    let d = default_registry();
    let base = cx.base.clone();
    let store = take!(cx, "registry", val(raw.store, d, |s| parse_store(s, &base)));
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
    }
}

fn service(cx: &mut Ctx, name: &Text, raw: &RawService) -> ServiceConfig {
    let key = service_key(name.get_ref());
    cx.check(name, &key, |n| check_name(n));
    let d = default_service();
    let balance = raw.balance.map_or(d.balance, |b| match b {
        RawBalance::RoundRobin => BalancePolicy::RoundRobin,
        RawBalance::LeastConn => BalancePolicy::LeastConn,
    });
    let protocol = raw.protocol.map_or(d.protocol, |p| match p {
        RawProtocol::Http1 => UpstreamProtocol::Http1,
        RawProtocol::H2c => UpstreamProtocol::H2c,
        RawProtocol::Https => UpstreamProtocol::Https,
    });
    let try_timeout = raw.try_timeout.as_ref();
    let try_timeout = try_timeout.and_then(|t| {
        cx.check(t, &format!("{key}.try_timeout"), |s| {
            parse_duration(s, false)
        })
    });
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
            .map(|h| health(cx, &k("health_check"), h)),
        retry: raw
            .retry
            .as_ref()
            .map_or(d.retry, |r| retry(cx, &k("retry"), r)),
        outlier: raw.outlier.as_ref().map(|o| outlier(cx, &k("outlier"), o)),
        max_requests_per_backend: take!(cx, key, int(raw.max_requests_per_backend, d, 0..=U32_MAX)),
        panic_threshold: take!(cx, key, int(raw.panic_threshold, d, 0..=100)),
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
        Some(w) => cx.check(w, &format!("{at}.weight"), |n| in_range(*n, &(1..=1000))),
        None => Some(1),
    };
    Some(BackendConfig {
        address: address.into_inner(),
        resolved: resolved?,
        weight: weight?,
    })
}

fn health(cx: &mut Ctx, key: &str, raw: &RawHealthCheck) -> HealthCheckConfig {
    let d = default_health_check();
    let kind = raw.kind.map_or(d.kind, |kind| match kind {
        RawHealthKind::Http => HealthCheckKind::Http,
        RawHealthKind::Tcp => HealthCheckKind::Tcp,
    });
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
/// (neither could win).
fn routes(cx: &mut Ctx, raw: &[RawRoute]) -> Vec<RouteConfig> {
    let mut out: Vec<RouteConfig> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let key = format!("routes[{i}]");
        let route = route(cx, &key, r);
        let same = |o: &RouteConfig| o.host == route.host && o.path_prefix == route.path_prefix;
        if let Some(j) = out.iter().position(same) {
            let span = r.path_prefix.as_ref().unwrap_or(&r.service).span();
            let message = format!("this route has the same host and path_prefix as routes[{j}]");
            cx.error(Some(span), &key, message);
        }
        out.push(route);
    }
    out
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
    }
}

/// Listeners must not share an address: same port and same IP, or one of them
/// the same family's wildcard. Port 0 (ephemeral) never clashes.
fn check_overlaps(cx: &mut Ctx) {
    let bound = std::mem::take(&mut cx.bound);
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
        cx.error(at.span.clone(), &at.key, message);
    }
}

fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    let same_family = a.is_ipv4() == b.is_ipv4();
    let wildcard = a.ip().is_unspecified() || b.ip().is_unspecified();
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || (same_family && wildcard))
}

// === value parsers: pure, `Err` is the one-sentence message ===

/// `n` in `range` and in `T`. A "huge" upper bound (a type's limit rather than
/// a policy) is left out of the message unless `n` is above it.
fn in_range<T: TryFrom<i64>>(n: i64, range: &RangeInclusive<i64>) -> Result<T, String> {
    let fits = range.contains(&n).then(|| T::try_from(n).ok()).flatten();
    let (lo, hi) = (*range.start(), *range.end());
    fits.ok_or_else(|| match (n < lo, hi >= U32_MAX) {
        (true, true) => format!("must be at least {lo}, got {n}"),
        (false, true) => format!("must be at most {hi}, got {n}"),
        (_, false) => format!("must be from {lo} to {hi}, got {n}"),
    })
}

fn parse_duration(s: &str, zero_ok: bool) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        format!("`{s}` is not a duration ({e}); write it like \"250ms\", \"2s\" or \"1m\"")
    })?;
    if d.is_zero() && !zero_ok {
        return Err(format!("must be greater than zero, got `{s}`"));
    }
    Ok(d)
}

/// `host:port`, `[v6]:port`; the port must be at least `min_port`.
fn split_host_port(s: &str, min_port: u16) -> Result<(&str, u16), String> {
    let bad =
        || format!("`{s}` is not a host:port address like \"127.0.0.1:8080\" or \"[::1]:8080\"");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.is_empty() || (host.contains(':') && !bracketed) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p >= min_port => Ok((host, p)),
        _ => Err(format!(
            "the port of `{s}` must be a number from {min_port} to 65535"
        )),
    }
}

fn parse_ip(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// An IP literal as is; a name through the system resolver, first address.
fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Some(ip) = parse_ip(host) {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve host `{host}`: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("host `{host}` resolved to no address"))
}

/// A listen address; port 0 (ephemeral) is allowed.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let (host, port) = split_host_port(s, 0)?;
    resolve(host, port)
}

fn resolve_backend(s: &str) -> Result<SocketAddr, String> {
    let (host, port) = split_host_port(s, 1)?;
    resolve(host, port)
}

/// A CIDR; a bare address is its own /32 or /128.
fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{s}` is not an IP network like \"10.0.0.0/8\" or an IP address"))
}

fn parse_store(s: &str, base: &Path) -> Result<StoreConfig, String> {
    if s == "memory" {
        return Ok(StoreConfig::Memory);
    }
    if let Some(path) = s.strip_prefix("file:") {
        return non_empty_path(path, base)
            .map(StoreConfig::File)
            .map_err(|_| "the file store needs a path, like \"file:data/registry.json\"".into());
    }
    match s.strip_prefix("etcd://") {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(StoreConfig::Etcd(s.into())),
        _ => Err(format!(
            "store `{s}` must be \"memory\", \"file:PATH\" or \"etcd://HOST:PORT/PREFIX\""
        )),
    }
}

/// A non-empty path, made absolute against the config file's folder.
fn non_empty_path(s: &str, base: &Path) -> Result<PathBuf, String> {
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

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(s.to_owned())
}

fn read_env(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("the environment variable name must not be empty".into());
    }
    env_token(name, std::env::var(name))
}

/// The token from `token_env`'s lookup result (split out to test without `set_var`).
fn env_token(name: &str, value: Result<String, std::env::VarError>) -> Result<String, String> {
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

fn parse_alpn(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 255 {
        return Err(format!("ALPN protocol id `{s}` must be 1 to 255 bytes"));
    }
    Ok(s.to_owned())
}

/// Service names (table keys and `routes[].service`).
fn check_name(s: &str) -> Result<(), String> {
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
fn service_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        format!("services.{name}")
    } else {
        format!("services.{name:?}")
    }
}

fn parse_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s.chars().any(char::is_whitespace) {
        return Err(format!(
            "path `{s}` must start with \"/\" and contain no spaces"
        ));
    }
    Ok(s.to_owned())
}

fn parse_header_host(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "host `{s}` must be non-empty and contain no spaces"
        ));
    }
    Ok(s.to_owned())
}

/// "200-399" or "200", with 100 <= low <= high <= 599.
fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let (lo, hi) = (lo.trim().parse::<u16>(), hi.trim().parse::<u16>());
    match (lo, hi) {
        (Ok(lo), Ok(hi)) if 100 <= lo && lo <= hi && hi <= 599 => Ok((lo, hi)),
        _ => Err(format!(
            "`{s}` is not a status range like \"200-399\" or \"200\" (100 <= low <= high <= 599)"
        )),
    }
}

fn parse_retry_on(s: &str) -> Result<RetryOn, String> {
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

/// Route hosts: exact or `*.suffix`, lower-cased, any `:port` removed.
fn normalize_host(s: &str) -> Result<String, String> {
    let lower = s.trim().to_ascii_lowercase();
    let host = strip_port(&lower);
    let name = host.strip_prefix("*.").unwrap_or(host);
    let ok = if name.starts_with('[') {
        parse_ip(name).is_some()
    } else {
        is_dns_name(name)
    };
    if !ok {
        return Err(format!(
            "route host `{s}` must be a host name like \"api.example.com\" \
             or a wildcard like \"*.example.com\""
        ));
    }
    Ok(host.to_owned())
}

fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.find(']').map_or(h, |i| &h[..=i]);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    }
}

fn is_dns_name(name: &str) -> bool {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (1..=253).contains(&name.len()) && name.split('.').all(label_ok)
}

// === TOML syntax/type errors ===

/// One `ConfigError` from a `toml` error: its span becomes line:column, and
/// the key is rebuilt from the table header above and the key on that line.
fn syntax_error(origin: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().replace('\n', "; ");
    let message = message.replace("expected i64", "expected an integer");
    let span = e.span();
    let (line, column) = span.as_ref().map_or((0, 0), |s| line_col(text, s.start));
    let key = span.map_or_else(String::new, |s| key_at(text, s.start, &message));
    ConfigError {
        file: origin.to_path_buf(),
        line,
        column,
        key: if key.is_empty() {
            "<document>".into()
        } else {
            key
        },
        message,
    }
}

/// 1-based line and character column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

fn key_at(text: &str, offset: usize, message: &str) -> String {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let (above, on_line) = before.split_at(line_start);
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let (table, local) = if on_line.trim_start().starts_with('[') {
        // Inside a header, at a key: the header up to that key is the table.
        (
            dotted(on_line.trim_start().trim_start_matches('[')),
            String::new(),
        )
    } else if on_line.trim().is_empty() && header(&text[line_start..line_end]).is_some() {
        // At the start of a header: that table is the subject.
        (current_table(&text[..line_end]), String::new())
    } else {
        let rest = &text[before.len()..line_end];
        (current_table(above), local_key(above, on_line, rest))
    };
    let leaf = quoted_field(message).filter(|f| !local.ends_with(f.as_str()));
    let parts = [table, local, leaf.unwrap_or_default()];
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let parts: Vec<&str> = parts.into_iter().filter(|p| !p.is_empty()).collect();
    parts.join(".")
}

/// The key whose value holds the error, within the current table; `on_line`
/// and `rest` are the error's line before and from the error's offset.
fn local_key(above: &str, on_line: &str, rest: &str) -> String {
    if let Some(key) = assignment_key(on_line) {
        return key; // `key = value`, the error in the value
    }
    let at_key = assignment_key(rest).is_some() || rest.trim().is_empty();
    if at_key && is_key_text(on_line) {
        return dotted(on_line); // at a key, maybe after a dotted prefix like `health_check.`
    }
    // Inside a multi-line array or table: the nearest `key =` above, under the header.
    let lines = above.lines().rev().take_while(|l| header(l).is_none());
    lines.filter_map(assignment_key).next().unwrap_or_default()
}

fn assignment_key(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    (!key.trim().is_empty() && is_key_text(key)).then(|| dotted(key))
}

fn is_key_text(s: &str) -> bool {
    let key_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | '"');
    s.chars().all(key_char)
}

/// `a . b.` → `a.b`.
fn dotted(s: &str) -> String {
    let parts = s.split('.').map(str::trim).filter(|p| !p.is_empty());
    parts.collect::<Vec<_>>().join(".")
}

/// The last `[table]` or `[[array]]` header in `text`, arrays with their index.
fn current_table(text: &str) -> String {
    let headers: Vec<(String, bool)> = text.lines().filter_map(header).collect();
    let Some((name, is_array)) = headers.last() else {
        return String::new();
    };
    if !is_array {
        return name.clone();
    }
    let index = headers.iter().filter(|(n, a)| *a && n == name).count() - 1;
    format!("{name}[{index}]")
}

fn header(line: &str) -> Option<(String, bool)> {
    let line = line.split('#').next().unwrap_or("").trim();
    let (inner, is_array) = match line.strip_prefix("[[") {
        Some(rest) => (rest.strip_suffix("]]")?, true),
        None => (line.strip_prefix('[')?.strip_suffix(']')?, false),
    };
    let plausible = !inner.trim().is_empty() && !inner.contains([',', '=', '[', ']']);
    plausible.then(|| (dotted(inner), is_array))
}

/// The field named in "unknown field `x`", "missing field `x`", "duplicate key `x`".
fn quoted_field(message: &str) -> Option<String> {
    let named = [
        "unknown field `",
        "missing field `",
        "duplicate key `",
        "duplicate field `",
    ];
    let start = named
        .iter()
        .find_map(|p| message.find(p).map(|i| i + p.len()))?;
    let rest = &message[start..];
    rest.find('`').map(|end| rest[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "/etc/switchyard/switchyard.toml";

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        parse_str(text, Path::new("test.toml"))
    }

    fn parse_ok(text: &str) -> Config {
        parse_str(text, Path::new(ORIGIN)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        match parse(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.0,
        }
    }

    /// Exactly one error, at `key`, whose message contains `fragment`.
    fn fails(text: &str, key: &str, fragment: &str) -> ConfigError {
        let errs = errors(text);
        assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
        let e = errs[0].clone();
        assert_eq!(e.key, key, "{e}");
        assert!(e.message.contains(fragment), "{e}");
        e
    }

    fn service(config: &Config, name: &str) -> ServiceConfig {
        config
            .services
            .get(name)
            .cloned()
            .expect("service declared")
    }

    const FULL: &str = r#"
[proxy]
listen = ["127.0.0.1:18080", "[::1]:18080"]
header_read_timeout = "5s"
idle_timeout = "2m"
max_header_bytes = 16384
max_headers = 50
body_idle_timeout = "250ms"
max_body_bytes = 1048576
trusted_proxies = ["10.0.0.0/8", "192.168.1.7"]
max_connections = 500
drain_timeout = "0s"
workers = 4

[[proxy.tls]]
listen = "127.0.0.1:18443"
certs = [{ cert = "certs/a.pem", key = "/abs/a-key.pem" }]
alpn = ["http/1.1"]

[admin]
listen = "0.0.0.0:19091"
token = "s3cret"

[registry]
default_ttl = "0s"
store = "file:data/registry.json"
allowed_networks = ["127.0.0.0/8"]
allow_new_services = false
max_instances_per_service = 7

[services.users]
balance = "least_conn"
backends = [
  "127.0.0.1:9001",
  { address = "127.0.0.1:9002", weight = 3 },
]
protocol = "h2c"
connect_timeout = "250ms"
request_timeout = "10s"
try_timeout = "2s"

[services.users.health_check]
path = "/ready"
interval = "3s"
timeout = "5s"
healthy_threshold = 1
unhealthy_threshold = 4
expect_status = "200"
kind = "tcp"
host = "users.internal"

[services.users.retry]
attempts = 2
on = ["connect_error", "timeout", "429"]
idempotent_only = false
budget_percent = 0

[services.users.outlier]
consecutive_failures = 3
base_ejection = "1m"
max_ejected_percent = 100

[[routes]]
host = "API.Example.com:8443"
path_prefix = "/users"
service = "users"
strip_prefix = true

[[routes]]
host = "*.Example.com"
service = "orders"

[log]
format = "json"
"#;

    #[test]
    fn the_full_example_parses_to_the_expected_values() {
        let c = parse_ok(FULL);
        let p = &c.proxy;
        assert_eq!(p.listen, vec![sa("127.0.0.1:18080"), sa("[::1]:18080")]);
        assert_eq!(p.header_read_timeout, secs(5));
        assert_eq!(p.idle_timeout, secs(120));
        assert_eq!((p.max_header_bytes, p.max_headers), (16384, 50));
        assert_eq!(p.body_idle_timeout, Duration::from_millis(250));
        assert_eq!(p.max_body_bytes, 1_048_576);
        assert_eq!(
            p.trusted_proxies,
            vec![net("10.0.0.0/8"), net("192.168.1.7/32")]
        );
        assert_eq!((p.max_connections, p.workers), (500, 4));
        assert_eq!(p.drain_timeout, Duration::ZERO);
        let tls = TlsListenerConfig {
            listen: sa("127.0.0.1:18443"),
            certs: vec![CertPair {
                cert: "/etc/switchyard/certs/a.pem".into(),
                key: "/abs/a-key.pem".into(),
            }],
            alpn: vec!["http/1.1".into()],
        };
        assert_eq!(p.tls, vec![tls]);
        assert_eq!(c.admin.listen, sa("0.0.0.0:19091"));
        assert_eq!(c.admin.token.as_deref(), Some("s3cret"));
        let r = &c.registry;
        assert_eq!(r.default_ttl, Duration::ZERO);
        let store = StoreConfig::File("/etc/switchyard/data/registry.json".into());
        assert_eq!(r.store, store);
        assert_eq!(r.allowed_networks, Some(vec![net("127.0.0.0/8")]));
        assert!(!r.allow_new_services);
        assert_eq!(r.max_instances_per_service, 7);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.path, None);
    }

    #[test]
    fn the_full_example_service_and_routes() {
        let c = parse_ok(FULL);
        let users = service(&c, "users");
        assert_eq!(users.balance, BalancePolicy::LeastConn);
        assert_eq!(users.protocol, UpstreamProtocol::H2c);
        let b = &users.backends;
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].address.as_str(), b[0].weight), ("127.0.0.1:9001", 1));
        assert_eq!((b[1].resolved, b[1].weight), (sa("127.0.0.1:9002"), 3));
        assert_eq!(users.connect_timeout, Duration::from_millis(250));
        assert_eq!(users.request_timeout, secs(10));
        assert_eq!(users.try_timeout, Some(secs(2)));
        let health = HealthCheckConfig {
            kind: HealthCheckKind::Tcp,
            path: "/ready".into(),
            host: Some("users.internal".into()),
            interval: secs(3),
            timeout: secs(5),
            healthy_threshold: 1,
            unhealthy_threshold: 4,
            expect_status: (200, 200),
        };
        assert_eq!(users.health_check, Some(health));
        let on = vec![
            RetryOn::ConnectError,
            RetryOn::Timeout,
            RetryOn::Status(429),
        ];
        let retry = RetryConfig {
            attempts: 2,
            on,
            idempotent_only: false,
            budget_percent: 0,
            buffer_bytes: 64 * 1024,
        };
        assert_eq!(users.retry, retry);
        let outlier = OutlierConfig {
            consecutive_failures: 3,
            base_ejection: secs(60),
            max_ejected_percent: 100,
            eject_on_5xx: false,
        };
        assert_eq!(users.outlier, Some(outlier));
        let route = |host: &str, prefix: &str, service: &str, strip| RouteConfig {
            host: Some(host.into()),
            path_prefix: prefix.into(),
            service: service.into(),
            strip_prefix: strip,
        };
        let routes = vec![
            route("api.example.com", "/users", "users", true),
            route("*.example.com", "/", "orders", false),
        ];
        assert_eq!(c.routes, routes);
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("test network")
    }

    #[test]
    fn an_empty_file_is_the_embedded_default() {
        let c = parse("").expect("empty is valid");
        assert_eq!(c, embedded_default());
        assert_eq!(c.proxy.listen, vec![sa(super::super::DEFAULT_PROXY_LISTEN)]);
        assert_eq!(c.admin.listen, sa(super::super::DEFAULT_ADMIN_LISTEN));
        assert_eq!(c.proxy.max_header_bytes, 32768);
        assert_eq!(c.registry.default_ttl, secs(30));
        assert_eq!(c.registry.store, StoreConfig::Memory);
        assert!(c.services.is_empty() && c.routes.is_empty() && c.path.is_none());
    }

    #[test]
    fn sparse_tables_get_the_documented_defaults() {
        let text = "[services.a]\n[services.a.health_check]\n[services.a.outlier]\n\
                    [services.b.retry]\n[[routes]]\nservice = \"a\"\n";
        let c = parse(text).expect("valid");
        let a = service(&c, "a");
        assert_eq!(a.balance, BalancePolicy::RoundRobin);
        assert_eq!(a.protocol, UpstreamProtocol::Http1);
        assert!(a.backends.is_empty());
        assert_eq!((a.connect_timeout, a.request_timeout), (secs(1), secs(30)));
        assert_eq!(a.try_timeout, None);
        assert_eq!(a.health_check, Some(default_health_check()));
        assert_eq!(default_health_check().expect_status, (200, 399));
        assert_eq!(a.outlier, Some(default_outlier()));
        assert_eq!(a.retry, default_retry());
        assert_eq!(service(&c, "b").retry, default_retry());
        assert_eq!(service(&c, "b").outlier, None);
        assert_eq!(c.routes[0].path_prefix, "/");
        assert!(!c.routes[0].strip_prefix && c.routes[0].host.is_none());
    }

    #[test]
    fn an_unknown_key_names_its_line_and_key() {
        let text = "[proxy]\nlisten = [\"127.0.0.1:0\"]\nlisen = [\"127.0.0.1:0\"]\n";
        let e = parse(text).expect_err("typo rejected");
        assert_eq!(e.0.len(), 1);
        let shown = e.to_string();
        assert!(
            shown.starts_with("test.toml:3:1: proxy.lisen: unknown field `lisen`"),
            "{shown}"
        );
    }

    #[test]
    fn syntax_and_type_errors_carry_position_and_key() {
        let e = fails(
            "[proxy]\nmax_headers = \"a\"\n",
            "proxy.max_headers",
            "expected an integer",
        );
        assert_eq!((e.line, e.column), (2, 15));
        let text = "[[routes]]\nservice = \"a\"\n[[routes]]\nservic = \"b\"\n";
        fails(text, "routes[1].servic", "unknown field");
        let text = r#"[services.a]
backends = [
  "127.0.0.1:1",
  { address = "127.0.0.1:2", wieght = 2 },
]
"#;
        let e = fails(text, "services.a.backends.wieght", "unknown field `wieght`");
        assert_eq!((e.line, e.column), (4, 30));
        fails(
            "[[proxy.tls]]\nlisten = \"127.0.0.1:0\"\n",
            "proxy.tls[0].certs",
            "missing field",
        );
        fails(
            "[services.a]\nbalance = \"rr\"\n",
            "services.a.balance",
            "unknown variant",
        );
        fails(
            "[services.a]\nhealth_check.intervl = \"1s\"\n",
            "services.a.health_check.intervl",
            "unknown field",
        );
        let e = fails("[proxy]\nlisten = [\"a\"\n", "proxy", "expected");
        assert_eq!(e.line, 3);
    }

    #[test]
    fn every_semantic_error_is_reported_at_once() {
        let text = r#"
[proxy]
idle_timeout = "soon"
max_headers = 0
[services.users]
backends = ["127.0.0.1:0", { address = "127.0.0.1:1", weight = 0 }]
[services.users.retry]
attempts = 11
[[routes]]
path_prefix = "users"
service = "users"
"#;
        let errs = errors(text);
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        let expected = [
            "proxy.idle_timeout",
            "proxy.max_headers",
            "services.users.backends[0]",
            "services.users.backends[1].weight",
            "services.users.retry.attempts",
            "routes[0].path_prefix",
        ];
        assert_eq!(keys, expected);
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, [3, 4, 6, 6, 8, 10]);
        assert_eq!(ConfigErrors(errs).to_string().lines().count(), 6);
    }

    #[test]
    fn the_display_format_is_file_line_col_key_message() {
        let e = fails(
            "[services.a]\nbackends = [{ address = \"127.0.0.1:1\", weight = 1001 }]\n",
            "services.a.backends[0].weight",
            "1 to 1000",
        );
        let shown =
            "test.toml:2:49: services.a.backends[0].weight: must be from 1 to 1000, got 1001";
        assert_eq!(e.to_string(), shown);
    }

    #[test]
    fn durations_parse_and_refuse_zero_where_meaningless() {
        fails(
            "[proxy]\nidle_timeout = \"2\"\n",
            "proxy.idle_timeout",
            "\"250ms\"",
        );
        fails(
            "[proxy]\nheader_read_timeout = \"0s\"\n",
            "proxy.header_read_timeout",
            "greater than zero",
        );
        fails(
            "[services.a]\ntry_timeout = \"0ms\"\n",
            "services.a.try_timeout",
            "greater than zero",
        );
        fails(
            "[services.a.health_check]\ntimeout = \"0s\"\n",
            "services.a.health_check.timeout",
            "greater than zero",
        );
        fails(
            "[services.a.outlier]\nbase_ejection = \"x\"\n",
            "services.a.outlier.base_ejection",
            "not a duration",
        );
        let c = parse("[registry]\ndefault_ttl = \"0s\"\n[proxy]\ndrain_timeout = \"0s\"\n");
        assert!(c.is_ok());
    }

    #[test]
    fn addresses_need_a_host_and_a_valid_port() {
        fails(
            "[services.a]\nbackends = [\"127.0.0.1:0\"]\n",
            "services.a.backends[0]",
            "1 to 65535",
        );
        fails(
            "[services.a]\nbackends = [\"127.0.0.1:70000\"]\n",
            "services.a.backends[0]",
            "1 to 65535",
        );
        fails(
            "[services.a]\nbackends = [\"127.0.0.1\"]\n",
            "services.a.backends[0]",
            "host:port",
        );
        fails(
            "[services.a]\nbackends = [\"::1:80\"]\n",
            "services.a.backends[0]",
            "host:port",
        );
        fails(
            "[admin]\nlisten = \"127.0.0.1:x\"\n",
            "admin.listen",
            "0 to 65535",
        );
        let c = parse_ok(
            "[proxy]\nlisten = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\n[admin]\nlisten = \"[::1]:0\"\n",
        );
        assert_eq!(c.proxy.listen, vec![sa("127.0.0.1:0"); 2]);
    }

    #[test]
    fn backend_names_are_resolved_and_kept_as_written() {
        let c = parse_ok("[services.a]\nbackends = [\"localhost:9001\"]\n");
        let b = &service(&c, "a").backends[0];
        assert_eq!(b.address, "localhost:9001");
        assert!(b.resolved.ip().is_loopback() && b.resolved.port() == 9001);
        let text = "[services.a]\nbackends = [{ address = \"no-such-host.invalid:80\" }]\n";
        fails(
            text,
            "services.a.backends[0].address",
            "`no-such-host.invalid`",
        );
    }

    #[test]
    fn weights_are_1_to_1000_and_backends_unique() {
        fails(
            "[services.a]\nbackends = [{ address = \"127.0.0.1:1\", weight = 0 }]\n",
            "services.a.backends[0].weight",
            "got 0",
        );
        fails(
            "[services.a]\nbackends = [{ address = \"127.0.0.1:1\", weight = -3 }]\n",
            "services.a.backends[0].weight",
            "got -3",
        );
        fails(
            "[services.a]\nbackends = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n",
            "services.a.backends[1]",
            "listed twice",
        );
    }

    #[test]
    fn service_names_are_checked_in_tables_and_routes() {
        fails(
            "[services.\"bad name\"]\n",
            "services.\"bad name\"",
            "1 to 128 characters",
        );
        let long = "x".repeat(129);
        fails(
            &format!("[services.{long}]\n"),
            &format!("services.{long}"),
            "1 to 128",
        );
        fails(
            "[[routes]]\nservice = \"a/b\"\n",
            "routes[0].service",
            "service name `a/b`",
        );
        fails(
            "[[routes]]\nservice = \"\"\n",
            "routes[0].service",
            "service name ``",
        );
        let c = parse_ok("[services.\"users.v2\"]\n[[routes]]\nservice = \"undeclared_Svc-1\"\n");
        assert!(c.services.contains_key("users.v2"));
    }

    #[test]
    fn route_hosts_are_normalized_and_checked() {
        assert_eq!(
            normalize_host("API.example.COM:8080"),
            Ok("api.example.com".into())
        );
        assert_eq!(normalize_host("*.Example.com"), Ok("*.example.com".into()));
        assert_eq!(normalize_host("[::1]:80"), Ok("[::1]".into()));
        for bad in ["a.*.com", "*", "*.", "a b", "", "exa mple.com", "[zz]"] {
            assert!(normalize_host(bad).is_err(), "accepted {bad:?}");
        }
        fails(
            "[[routes]]\nhost = \"a.*.com\"\nservice = \"a\"\n",
            "routes[0].host",
            "wildcard",
        );
    }

    #[test]
    fn paths_must_start_with_a_slash() {
        fails(
            "[[routes]]\npath_prefix = \"api\"\nservice = \"a\"\n",
            "routes[0].path_prefix",
            "start with",
        );
        fails(
            "[services.a.health_check]\npath = \"healthz\"\n",
            "services.a.health_check.path",
            "start with",
        );
    }

    #[test]
    fn duplicate_routes_are_an_error() {
        let text =
            "[[routes]]\nservice = \"a\"\n[[routes]]\npath_prefix = \"/\"\nservice = \"b\"\n";
        fails(text, "routes[1]", "same host and path_prefix as routes[0]");
    }

    #[test]
    fn listen_addresses_must_not_repeat() {
        fails(
            "[proxy]\nlisten = [\"127.0.0.1:9091\"]\n",
            "proxy.listen[0]",
            "overlaps admin.listen",
        );
        fails(
            "[admin]\nlisten = \"127.0.0.1:8080\"\n",
            "admin.listen",
            "overlaps proxy.listen[0] (0.0.0.0:8080)",
        );
        let text = r#"[proxy]
listen = ["127.0.0.1:8443"]
[[proxy.tls]]
listen = "127.0.0.1:8443"
certs = [{ cert = "c", key = "k" }]
"#;
        fails(text, "proxy.tls[0].listen", "overlaps proxy.listen[0]");
        let ok = "[proxy]\nlisten = [\"127.0.0.1:8080\", \"127.0.0.2:8080\"]\n";
        assert!(parse(ok).is_ok());
        fails(
            "[proxy]\nlisten = []\n",
            "proxy.listen",
            "at least one listener",
        );
    }

    #[test]
    fn status_ranges() {
        assert_eq!(parse_status_range("200-399"), Ok((200, 399)));
        assert_eq!(parse_status_range("204"), Ok((204, 204)));
        for bad in ["399-200", "99", "600", "200-600", "abc", "2xx", ""] {
            assert!(parse_status_range(bad).is_err(), "accepted {bad:?}");
        }
        fails(
            "[services.a.health_check]\nexpect_status = \"399-200\"\n",
            "services.a.health_check.expect_status",
            "200-399",
        );
    }

    #[test]
    fn retry_conditions_and_limits() {
        assert_eq!(parse_retry_on("reset"), Ok(RetryOn::Reset));
        assert_eq!(parse_retry_on("503"), Ok(RetryOn::Status(503)));
        for bad in ["302", "5xx", "retry", "0503", "600", ""] {
            assert!(parse_retry_on(bad).is_err(), "accepted {bad:?}");
        }
        fails(
            "[services.a.retry]\non = [\"reset\", \"302\"]\n",
            "services.a.retry.on[1]",
            "not a retry condition",
        );
        fails(
            "[services.a.retry]\nattempts = 11\n",
            "services.a.retry.attempts",
            "0 to 10",
        );
        fails(
            "[services.a.retry]\nbudget_percent = 101\n",
            "services.a.retry.budget_percent",
            "0 to 100",
        );
    }

    #[test]
    fn health_and_outlier_limits() {
        fails(
            "[services.a.health_check]\nhealthy_threshold = 0\n",
            "services.a.health_check.healthy_threshold",
            "at least 1",
        );
        fails(
            "[services.a.health_check]\nunhealthy_threshold = 0\n",
            "services.a.health_check.unhealthy_threshold",
            "at least 1",
        );
        fails(
            "[services.a.health_check]\nhost = \"\"\n",
            "services.a.health_check.host",
            "non-empty",
        );
        fails(
            "[services.a.outlier]\nconsecutive_failures = 0\n",
            "services.a.outlier.consecutive_failures",
            "at least 1",
        );
        fails(
            "[services.a.outlier]\nmax_ejected_percent = 101\n",
            "services.a.outlier.max_ejected_percent",
            "0 to 100",
        );
    }

    #[test]
    fn networks_accept_cidrs_and_bare_addresses() {
        assert_eq!(parse_net("10.1.2.3"), Ok(net("10.1.2.3/32")));
        assert_eq!(parse_net("::1"), Ok(net("::1/128")));
        assert_eq!(parse_net("10.1.2.3/8"), Ok(net("10.0.0.0/8")));
        fails(
            "[proxy]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
            "proxy.trusted_proxies[0]",
            "IP network",
        );
        fails(
            "[registry]\nallowed_networks = [\"10.0.0.0/8\", \"bogus\"]\n",
            "registry.allowed_networks[1]",
            "`bogus`",
        );
    }

    #[test]
    fn registry_stores() {
        let base = Path::new("/srv");
        assert_eq!(parse_store("memory", base), Ok(StoreConfig::Memory));
        assert_eq!(
            parse_store("file:r.json", base),
            Ok(StoreConfig::File("/srv/r.json".into()))
        );
        assert_eq!(
            parse_store("file:/var/r.json", base),
            Ok(StoreConfig::File("/var/r.json".into()))
        );
        let etcd = "etcd://127.0.0.1:2379/switchyard";
        assert_eq!(parse_store(etcd, base), Ok(StoreConfig::Etcd(etcd.into())));
        fails(
            "[registry]\nstore = \"file:\"\n",
            "registry.store",
            "needs a path",
        );
        fails(
            "[registry]\nstore = \"etcd://\"\n",
            "registry.store",
            "\"memory\"",
        );
        fails(
            "[registry]\nstore = \"redis://x\"\n",
            "registry.store",
            "\"memory\"",
        );
        fails(
            "[registry]\nmax_instances_per_service = 0\n",
            "registry.max_instances_per_service",
            "at least 1",
        );
    }

    #[test]
    fn admin_tokens() {
        let c = parse_ok("[admin]\ntoken_env = \"PATH\"\n");
        assert_eq!(c.admin.token, std::env::var("PATH").ok());
        let unset = "SWITCHYARD_TEST_VARIABLE_THAT_IS_NEVER_SET";
        fails(
            &format!("[admin]\ntoken_env = \"{unset}\"\n"),
            "admin.token_env",
            "is not set",
        );
        assert!(env_token("X", Ok(String::new())).is_err_and(|m| m.contains("is empty")));
        fails(
            "[admin]\ntoken = \"a\"\ntoken_env = \"PATH\"\n",
            "admin.token_env",
            "not both",
        );
        fails(
            "[admin]\ntoken = \"\"\n",
            "admin.token",
            "must not be empty",
        );
    }

    #[test]
    fn a_non_loopback_admin_needs_a_token() {
        let e = fails(
            "[admin]\nlisten = \"0.0.0.0:9091\"\n",
            "admin.listen",
            "refusing a non-loopback admin listener without a token",
        );
        assert_eq!((e.line, e.column), (2, 10));
        assert!(parse("[admin]\nlisten = \"0.0.0.0:9091\"\ntoken = \"t\"\n").is_ok());
        assert!(parse("[admin]\nlisten = \"[::1]:9091\"\n").is_ok());
    }

    #[test]
    fn tls_listeners_need_certs() {
        fails(
            "[[proxy.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = []\n",
            "proxy.tls[0].certs",
            "at least one",
        );
        let text =
            "[[proxy.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{ cert = \"\", key = \"k\" }]\n";
        fails(text, "proxy.tls[0].certs[0].cert", "must not be empty");
        let text = r#"[[proxy.tls]]
listen = "127.0.0.1:0"
certs = [{ cert = "c", key = "k" }]
alpn = [""]
"#;
        fails(text, "proxy.tls[0].alpn[0]", "1 to 255 bytes");
        let c = parse_ok(
            "[[proxy.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{ cert = \"c\", key = \"k\" }]\n",
        );
        assert_eq!(c.proxy.tls[0].alpn, default_alpn());
        assert_eq!(
            c.proxy.tls[0].certs[0].key,
            PathBuf::from("/etc/switchyard/k")
        );
    }

    #[test]
    fn proxy_limits() {
        fails(
            "[proxy]\nmax_header_bytes = 1023\n",
            "proxy.max_header_bytes",
            "at least 1024",
        );
        fails(
            "[proxy]\nmax_headers = 0\n",
            "proxy.max_headers",
            "at least 1",
        );
        fails(
            "[proxy]\nmax_connections = 0\n",
            "proxy.max_connections",
            "at least 1",
        );
        fails(
            "[proxy]\nmax_body_bytes = -1\n",
            "proxy.max_body_bytes",
            "at least 0",
        );
    }

    #[test]
    fn load_file_reads_sets_the_path_and_anchors_relative_paths() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, "[registry]\nstore = \"file:reg.json\"\n").expect("write");
        let c = load_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.path.as_deref(), Some(path.as_path()));
        assert_eq!(
            c.registry.store,
            StoreConfig::File(dir.path().join("reg.json"))
        );
        let missing = dir.path().join("missing.toml");
        let e = load_file(&missing).expect_err("unreadable");
        assert_eq!((e.0.len(), e.0[0].line, e.0[0].column), (1, 0, 0));
        assert!(e.to_string().contains("cannot read the config file"), "{e}");
    }
}
