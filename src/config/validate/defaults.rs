//! The defaults: one `default_*` function per table, so the embedded default,
//! a sparse file and `ServiceConfig::default()` agree by construction. The
//! checks in [`super::build`] and [`super::services`] fall back to these
//! values, field by field, whenever a key is absent or wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{
    AdminConfig, BalancePolicy, Config, ControlPriority, HealthCheckConfig, HealthCheckKind,
    LogConfig, OutlierConfig, ProxyConfig, RegistryConfig, RetryConfig, RetryOn, ServiceConfig,
    StoreConfig, UpstreamProtocol, UpstreamTls,
};

/// Defaults only: proxy on 0.0.0.0:8080, admin on 127.0.0.1:9091, no services.
pub(in crate::config) fn embedded_default() -> Config {
    Config {
        path: None,
        proxy: default_proxy(),
        admin: default_admin(),
        registry: default_registry(),
        services: BTreeMap::new(),
        routes: Vec::new(),
        log: LogConfig::default(),
        access_log: None,
        warnings: Vec::new(),
    }
}

pub(super) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub(super) fn default_proxy() -> ProxyConfig {
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
        merge_slashes: false,
        upstream_idle_per_backend: 64,
        upstream_idle_timeout: secs(4),
    }
}

pub(super) fn default_alpn() -> Vec<String> {
    vec!["h2".into(), "http/1.1".into()]
}

pub(super) fn default_admin() -> AdminConfig {
    AdminConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
        token: None,
        priority: ControlPriority::Background,
    }
}

pub(super) fn default_registry() -> RegistryConfig {
    RegistryConfig {
        default_ttl: secs(30),
        store: StoreConfig::Memory,
        allowed_networks: None,
        allow_new_services: true,
        max_instances_per_service: 10_000,
        max_services: 1_000,
        max_instances: 100_000,
    }
}

pub(in crate::config) fn default_service() -> ServiceConfig {
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
        tls: UpstreamTls::default(),
        hash_key: None,
        hash_balance_factor: 0,
        slow_start: Duration::ZERO,
        sticky: None,
    }
}

pub(super) fn default_health_check() -> HealthCheckConfig {
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

pub(super) fn default_retry() -> RetryConfig {
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

pub(super) fn default_outlier() -> OutlierConfig {
    OutlierConfig {
        consecutive_failures: 5,
        base_ejection: secs(30),
        max_ejected_percent: 50,
        eject_on_5xx: false,
    }
}
