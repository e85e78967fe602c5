//! Configuration: the validated, domain-typed view of `switchyard.toml`.
//!
//! Loading is two-staged. [`raw`] mirrors the TOML one to one with serde
//! (`deny_unknown_fields`, enums for closed sets, `toml::Spanned` where a later
//! check needs the position); [`validate`] turns that mirror into the types below
//! and collects *every* error, each carrying file, line, column and key. Nothing
//! outside this module sees the raw mirror, and nothing here does I/O beyond
//! reading the file and resolving host names.

mod raw;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use validate::{ConfigError, ConfigErrors, Purpose};

/// Where the embedded default puts the proxy listener.
pub const DEFAULT_PROXY_LISTEN: &str = "0.0.0.0:8080";
/// Where the embedded default puts the admin listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9091";

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from; `None` for the embedded default. Reloads re-read it.
    pub path: Option<PathBuf>,
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub registry: RegistryConfig,
    /// Declared services by name (BTreeMap: stable order in listings and metrics).
    pub services: BTreeMap<String, ServiceConfig>,
    /// Routes in file order; precedence is decided by `routing`, not by order.
    pub routes: Vec<RouteConfig>,
    pub log: LogConfig,
    /// `[access_log]`; `None` = no access log.
    pub access_log: Option<AccessLogConfig>,
    /// What the load found worth saying that is not an error (same
    /// `FILE:LINE:COL: KEY: MESSAGE` form), in file order. `check` prints
    /// them, `serve` logs them at start-up and on every reload.
    pub warnings: Vec<ConfigError>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    /// Plain HTTP/1.1 + h2c listeners. Default `["0.0.0.0:8080"]`.
    pub listen: Vec<SocketAddr>,
    /// TLS listeners (`[[proxy.tls]]`).
    pub tls: Vec<TlsListenerConfig>,
    /// Default 10 s: time to receive a complete request head.
    pub header_read_timeout: Duration,
    /// Default 60 s: a client connection with no request in flight and no bytes moving is closed.
    pub idle_timeout: Duration,
    /// Default 32768: larger header sections get 431.
    pub max_header_bytes: usize,
    /// Default 100: more header fields get 431.
    pub max_headers: usize,
    /// Default 30 s: a body (either direction) that moves no byte for this long is aborted.
    pub body_idle_timeout: Duration,
    /// Default 0 = unlimited; larger request bodies get 413.
    pub max_body_bytes: u64,
    /// Default empty: peers whose X-Forwarded-For is kept and appended to.
    pub trusted_proxies: Vec<IpNet>,
    /// Default 10000: at this many open client connections, accepting pauses.
    pub max_connections: usize,
    /// Default 30 s: how long graceful shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Default 0 = one runtime worker thread per core.
    pub workers: usize,
    /// Default false: `//` runs in request paths count as one `/` (routing and upstream).
    pub merge_slashes: bool,
    /// Default 64 (NGINX's `keepalive 64`): idle keep-alive connections kept
    /// per backend; 0 = every upstream connection closes after its request.
    pub upstream_idle_per_backend: usize,
    /// Default 4 s: an idle upstream connection is closed after this long
    /// (below the 5 s keep-alive of Node.js and Apache, so the backend
    /// rarely closes first).
    pub upstream_idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsListenerConfig {
    pub listen: SocketAddr,
    /// Certificate/key pairs, chosen by SNI; the first is the default. Paths are
    /// already made absolute (relative ones are relative to the config file's folder).
    pub certs: Vec<CertPair>,
    /// Default `["h2", "http/1.1"]`.
    pub alpn: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Default `127.0.0.1:9091`.
    pub listen: SocketAddr,
    /// From `token`, or the environment variable named by `token_env` (read at load).
    pub token: Option<String>,
    /// How the control plane (admin API, registry, table rebuilds) competes
    /// with the proxy's workers for CPU. Default: background.
    pub priority: ControlPriority,
}

/// `admin.priority`: the control-plane thread's scheduling priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ControlPriority {
    /// Runs only when the proxy's workers leave a core free (Linux
    /// `SCHED_IDLE`): a burst of registrations never delays a request, but
    /// under sustained 100 % CPU the admin API slows down.
    #[default]
    Background,
    /// The same priority as the proxy's workers: a fair share of the CPU.
    Normal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RegistryConfig {
    /// Default 30 s.
    pub default_ttl: Duration,
    pub store: StoreConfig,
    /// `None` = any unicast address (the always-refused classes stay refused).
    pub allowed_networks: Option<Vec<IpNet>>,
    /// Default true.
    pub allow_new_services: bool,
    /// Default 10000.
    pub max_instances_per_service: usize,
    /// Default 1000: services that have registered instances, at most.
    pub max_services: usize,
    /// Default 100000: registered instances in all, at most.
    pub max_instances: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    Memory,
    /// Absolute path (relative paths resolved against the config file's folder).
    File(PathBuf),
    /// `etcd://host:port[,host:port...]/prefix` with `[registry.etcd]`.
    Etcd(EtcdConfig),
}

/// Cluster mode: where the shared registry lives in etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdConfig {
    /// `host:port` of each member, in the order written.
    pub endpoints: Vec<String>,
    /// Key prefix, with a leading `/` and no trailing one (`/switchyard`).
    pub prefix: String,
    pub username: Option<String>,
    /// Read from `password_env` at load.
    pub password: Option<String>,
    /// `ca` (with optional client `cert` + `key`): TLS to every endpoint.
    pub tls: Option<EtcdTls>,
    /// Default 5 s: start-up waits this long for etcd; also bounds each request to it.
    pub dial_timeout: std::time::Duration,
}

/// TLS to etcd: PEM files, read when the config loads.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdTls {
    pub ca_pem: Vec<u8>,
    /// Client certificate and key, for etcd's `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl EtcdConfig {
    /// `host:port,host:port` as written, for messages.
    pub fn endpoint_list(&self) -> String {
        self.endpoints.join(",")
    }
}

/// `balance = "..."`: the policy list lives with the policies.
pub use crate::balance::BalancePolicy;

/// `hash_key`: what part of a request `balance = "hash"` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// `header:NAME`: the first value of that request header.
    Header(http::header::HeaderName),
    /// `cookie:NAME`: that cookie's value.
    Cookie(String),
    /// `query:NAME`: that query parameter's first value, as sent (not decoded).
    Query(String),
    /// `client_ip`: the address of the connection's peer.
    ClientIp,
    /// `path`: the request path, without the query.
    Path,
}

/// `[services.NAME.sticky]`: cookie session affinity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyConfig {
    /// The cookie's name; its value names the backend opaquely.
    pub cookie: String,
    /// Default 0 = a session cookie (no `Max-Age`).
    pub ttl: Duration,
    /// Default "/".
    pub path: String,
    /// Default false.
    pub secure: bool,
    /// Default true.
    pub http_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    Http1,
    H2c,
    Https,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Default round robin.
    pub balance: BalancePolicy,
    pub backends: Vec<BackendConfig>,
    /// Default http1.
    pub protocol: UpstreamProtocol,
    /// Default 1 s, per connection attempt.
    pub connect_timeout: Duration,
    /// Default 30 s, the whole request including retries (until response headers).
    pub request_timeout: Duration,
    /// Default none: bound on each attempt.
    pub try_timeout: Option<Duration>,
    pub health_check: Option<HealthCheckConfig>,
    pub retry: RetryConfig,
    /// Absent = no passive ejection.
    pub outlier: Option<OutlierConfig>,
    /// Default 0 = unlimited: requests in flight per backend; a backend at its
    /// limit is skipped, and when all are, the answer is a fast 503.
    pub max_requests_per_backend: u32,
    /// Default 0 = off. When fewer than this percentage of a service's backends
    /// are ready (but at least one is), balance over all non-draining ones.
    pub panic_threshold: u32,
    /// `protocol = "https"` only (the keys are errors with other protocols).
    pub tls: UpstreamTls,
    /// `balance = "hash"` only (required there).
    pub hash_key: Option<HashKey>,
    /// Default 0 = unbounded; else a percentage ≥ 100 of the fair share of
    /// in-flight requests a backend may take before its keys spill over.
    pub hash_balance_factor: u32,
    /// Default 0 = off: the ramp from ~10 % to full weight of a backend
    /// that joins or comes back.
    pub slow_start: Duration,
    pub sticky: Option<StickyConfig>,
}

/// TLS towards a service's backends. Default: the webpki (Mozilla) roots,
/// each backend's host as SNI and verified name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct UpstreamTls {
    /// `tls_ca`: extra trusted roots, read and checked at load so that a bad
    /// file fails `check`, start-up and reload alike.
    pub ca: Option<CaFile>,
    /// `tls_server_name`: SNI and verified name for every backend of the service.
    pub server_name: Option<String>,
}

/// A PEM file of CA certificates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CaFile {
    /// Absolute (a relative `tls_ca` is relative to the config file's folder).
    pub path: PathBuf,
    pub certs: Vec<rustls::pki_types::CertificateDer<'static>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// `host:port` exactly as written; this is the backend's identity and metric label.
    pub address: String,
    /// The address it resolved to at load time.
    pub resolved: SocketAddr,
    /// Default 1; 1..=1000.
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// `GET path`, a status in `expect_status` passes (HTTP/2 prior
    /// knowledge for `h2c` services, TLS for `https` ones).
    Http,
    /// A TCP connect passes.
    Tcp,
    /// `grpc.health.v1.Health/Check` over the service's protocol (`h2c` or
    /// `https`; validation refuses others); only `SERVING` passes.
    Grpc {
        /// `grpc_service`: the service name asked about; default `""`, the
        /// server as a whole (the gRPC health protocol's convention).
        service: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub kind: HealthCheckKind,
    /// Default "/healthz".
    pub path: String,
    /// Optional Host header for HTTP checks.
    pub host: Option<String>,
    /// Default 2 s.
    pub interval: Duration,
    /// Default 1 s.
    pub timeout: Duration,
    /// Default 2.
    pub healthy_threshold: u32,
    /// Default 3.
    pub unhealthy_threshold: u32,
    /// Default 200..=399 (inclusive).
    pub expect_status: (u16, u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    ConnectError,
    Reset,
    Timeout,
    Status(u16),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Default 1: extra tries after the first.
    pub attempts: u32,
    /// Default connect_error, reset, 502, 503, 504.
    pub on: Vec<RetryOn>,
    /// Default true.
    pub idempotent_only: bool,
    /// Default 20.
    pub budget_percent: u32,
    /// Default 65536: request bodies up to this size are kept so that they can
    /// be sent again; larger ones are streamed and never retried once sent.
    pub buffer_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    /// Default 5.
    pub consecutive_failures: u32,
    /// Default 30 s; the n-th ejection lasts n × this (capped at 10×).
    pub base_ejection: Duration,
    /// Default 50.
    pub max_ejected_percent: u32,
    /// Default false: whether 5xx answers count as failures (transport errors
    /// and timeouts always do).
    pub eject_on_5xx: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Lower-cased, port stripped; exact (`api.example.com`) or wildcard (`*.example.com`).
    pub host: Option<String>,
    /// Default "/".
    pub path_prefix: String,
    pub service: String,
    /// Default false.
    pub strip_prefix: bool,
    /// Default false: paths with `%2f`, `%5c`, `%00` or `\` get 400 on this route.
    pub allow_ambiguous_paths: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// Where access-log lines go and how they look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Default stdout.
    pub target: AccessLogTarget,
    /// Default JSON.
    pub format: AccessLogFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    Stderr,
    /// Absolute (a relative path is relative to the config file's folder);
    /// opened for appending, created if missing, reopened on SIGUSR1.
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// NGINX/Apache `combined`, then Switchyard's fields as `key="value"` pairs.
    Combined,
}

impl Default for ServiceConfig {
    /// The settings of a service declared with an empty table (also used for
    /// services that only a route or a registration names).
    fn default() -> Self {
        validate::default_service()
    }
}

impl Config {
    /// Read, parse and validate a file. Every problem found is returned at once.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        validate::load_file(path)
    }

    /// What `switchyard check` runs: [`Config::load`], and also every TLS
    /// listener's certificate and key read, parsed and matched (errors at
    /// the `cert` or `key` value, naming the file).
    pub fn check_file(path: &Path) -> Result<Config, ConfigErrors> {
        validate::check_file(path)
    }

    /// [`Config::load`] for `switchyard check`: the same checks, except that
    /// an unset `admin.token_env` variable is a warning, not an error.
    pub fn load_for(path: &Path, purpose: Purpose) -> Result<Config, ConfigErrors> {
        validate::load_file_for(path, purpose)
    }

    /// Parse and validate the text of the config file at `path` (already
    /// read by the caller), exactly as [`Config::load`] would.
    pub fn from_file_text(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        validate::parse_file_text(text, path)
    }

    /// Parse and validate TOML text; `origin` names it in errors and anchors
    /// relative paths (its parent folder), as if it were the file's path.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigErrors> {
        validate::parse_str(text, origin)
    }

    /// The embedded default: proxy on 0.0.0.0:8080, admin on 127.0.0.1:9091, no services.
    pub fn embedded_default() -> Config {
        validate::embedded_default()
    }
}
