//! Tests of the whole validation path, text in, `Config` or errors out,
//! one file per area: [`full`] (every key set, and the defaults),
//! [`reporting`] (positions, keys, several errors at once), [`values`]
//! (durations, limits, names, paths, stores, tokens) and [`listeners`]
//! (addresses, networks, hosts, overlaps, TLS). The shared helpers live here.

mod balancing;
mod full;
mod listeners;
mod pool;
mod reporting;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::addresses::{normalize_host, parse_net};
use super::defaults::{
    default_alpn, default_health_check, default_outlier, default_retry, embedded_default, secs,
};
use super::values::{env_token, parse_retry_on, parse_status_range, parse_store};
use super::{load_file, parse_str, ConfigError, ConfigErrors};
use crate::config::{
    BalancePolicy, CertPair, Config, ControlPriority, HealthCheckConfig, HealthCheckKind,
    LogFormat, OutlierConfig, RetryConfig, RetryOn, RouteConfig, ServiceConfig, StoreConfig,
    TlsListenerConfig, UpstreamProtocol,
};

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

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("test network")
}
