//! The raw serde mirror of `switchyard.toml`, one struct per TOML table.
//!
//! Nothing here checks meaning: this layer only fixes the *shape* of the file.
//! Every struct denies unknown fields (a typo is an error, never a silent no-op),
//! closed sets (`balance`, `protocol`, health `kind`, log `format`) are enums so
//! serde rejects anything else, and every value that [`super::validate`] checks
//! later is wrapped in [`Spanned`] so its error can point at line and column.
//! These structs are also the one schema of the file: `validate`'s shape pass
//! collects every error serde reports against them (dropping the faulty key
//! and trying again), so a new key needs only its field here, and nothing
//! else lists keys. Absent keys are `None`; the defaults live in `validate`.
//! Integers are read as `i64` so an out-of-range value (a negative weight, say)
//! gets its check's range message instead of serde's "invalid value".

use std::collections::BTreeMap;
use std::fmt;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// A string value with its position (addresses, durations, names, paths).
pub(super) type Text = Spanned<String>;
/// An integer value with its position (limits, thresholds, percentages).
pub(super) type Int = Spanned<i64>;

/// The whole file. Every table is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub registry: RawRegistry,
    /// Keyed by service name; the key keeps its span for name checks.
    #[serde(default)]
    pub services: BTreeMap<Text, RawService>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub log: RawLog,
    /// `[access_log]`: absent = no access log.
    pub access_log: Option<Spanned<RawAccessLog>>,
}

/// `[proxy]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    pub listen: Option<Spanned<Vec<Text>>>,
    pub header_read_timeout: Option<Text>,
    pub idle_timeout: Option<Text>,
    pub max_header_bytes: Option<Int>,
    pub max_headers: Option<Int>,
    pub body_idle_timeout: Option<Text>,
    pub max_body_bytes: Option<Int>,
    pub trusted_proxies: Option<Vec<Text>>,
    pub max_connections: Option<Int>,
    pub drain_timeout: Option<Text>,
    pub workers: Option<Int>,
    pub merge_slashes: Option<bool>,
    pub upstream_idle_per_backend: Option<Int>,
    pub upstream_idle_timeout: Option<Text>,
    #[serde(default)]
    pub tls: Vec<RawTls>,
}

/// One `[[proxy.tls]]` listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub listen: Text,
    pub certs: Spanned<Vec<RawCertPair>>,
    pub alpn: Option<Vec<Text>>,
}

/// One `{ cert = "...", key = "..." }` entry of `certs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertPair {
    pub cert: Text,
    pub key: Text,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub listen: Option<Text>,
    pub token: Option<Text>,
    pub token_env: Option<Text>,
    pub priority: Option<RawPriority>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawPriority {
    Background,
    Normal,
}

/// `[registry]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    pub default_ttl: Option<Text>,
    pub store: Option<Text>,
    pub allowed_networks: Option<Vec<Text>>,
    pub allow_new_services: Option<bool>,
    pub max_instances_per_service: Option<Int>,
    pub max_services: Option<Int>,
    pub max_instances: Option<Int>,
    pub etcd: Option<Spanned<RawEtcd>>,
}

/// `[registry.etcd]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEtcd {
    pub username: Option<Text>,
    pub password_env: Option<Text>,
    pub ca: Option<Text>,
    pub cert: Option<Text>,
    pub key: Option<Text>,
    pub dial_timeout: Option<Text>,
}

/// `[services.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub balance: Option<Spanned<crate::balance::BalancePolicy>>,
    pub hash_key: Option<Text>,
    pub hash_balance_factor: Option<Int>,
    pub slow_start: Option<Text>,
    pub sticky: Option<Spanned<RawSticky>>,
    #[serde(default)]
    pub backends: Vec<Spanned<RawBackend>>,
    pub protocol: Option<RawProtocol>,
    pub connect_timeout: Option<Text>,
    pub request_timeout: Option<Text>,
    pub try_timeout: Option<Text>,
    pub health_check: Option<RawHealthCheck>,
    pub retry: Option<RawRetry>,
    pub outlier: Option<RawOutlier>,
    pub max_requests_per_backend: Option<Int>,
    pub panic_threshold: Option<Int>,
    pub tls_ca: Option<Text>,
    pub tls_server_name: Option<Text>,
}

/// `[services.NAME.sticky]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSticky {
    pub cookie: Text,
    pub ttl: Option<Text>,
    pub path: Option<Text>,
    pub secure: Option<bool>,
    pub http_only: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawProtocol {
    Http1,
    H2c,
    Https,
}

/// A `backends` entry: `"host:port"` or `{ address = "host:port", weight = N }`.
///
/// Deserialized by hand rather than `#[serde(untagged)]`: an untagged enum
/// buffers its input, which loses spans and turns every mistake inside the
/// table (a typo such as `wieght`) into "did not match any variant". The span
/// of a string entry is taken one level up (`Spanned<RawBackend>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RawBackend {
    Address(String),
    Table(RawBackendTable),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackendTable {
    pub address: Text,
    pub weight: Option<Int>,
}

// === impl RawBackend ===

impl<'de> Deserialize<'de> for RawBackend {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(BackendVisitor)
    }
}

/// Accepts a string or a table; anything else is "invalid type: ..., expected ...".
struct BackendVisitor;

impl<'de> Visitor<'de> for BackendVisitor {
    type Value = RawBackend;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a \"host:port\" string or a table { address = \"host:port\", weight = N }")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawBackend, E> {
        Ok(RawBackend::Address(v.to_owned()))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawBackend, A::Error> {
        RawBackendTable::deserialize(MapAccessDeserializer::new(map)).map(RawBackend::Table)
    }
}

/// `[services.NAME.health_check]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    pub path: Option<Text>,
    pub interval: Option<Text>,
    pub timeout: Option<Text>,
    pub healthy_threshold: Option<Int>,
    pub unhealthy_threshold: Option<Int>,
    pub expect_status: Option<Text>,
    pub kind: Option<Spanned<RawHealthKind>>,
    pub host: Option<Text>,
    pub grpc_service: Option<Text>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawHealthKind {
    Http,
    Tcp,
    Grpc,
}

/// `[services.NAME.retry]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub attempts: Option<Int>,
    pub on: Option<Vec<Text>>,
    pub idempotent_only: Option<bool>,
    pub budget_percent: Option<Int>,
    pub buffer_bytes: Option<Int>,
}

/// `[services.NAME.outlier]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutlier {
    pub consecutive_failures: Option<Int>,
    pub base_ejection: Option<Text>,
    pub max_ejected_percent: Option<Int>,
    pub eject_on_5xx: Option<bool>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub host: Option<Text>,
    pub path_prefix: Option<Text>,
    pub service: Text,
    pub strip_prefix: Option<bool>,
    pub allow_ambiguous_paths: Option<bool>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub format: Option<RawLogFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawLogFormat {
    Text,
    Json,
}

/// `[access_log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccessLog {
    pub path: Option<Text>,
    pub format: Option<RawAccessLogFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawAccessLogFormat {
    Json,
    Combined,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RawConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn empty_file_is_all_absent() {
        let raw = parse("").expect("empty parses");
        assert!(raw.proxy.listen.is_none());
        assert!(raw.services.is_empty());
        assert!(raw.routes.is_empty());
        assert!(raw.log.format.is_none());
    }

    #[test]
    fn backends_take_both_shapes() {
        let text = r#"
[services.users]
backends = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }]
"#;
        let raw = parse(text).expect("parses");
        let (name, svc) = raw.services.iter().next().expect("one service");
        assert_eq!(name.get_ref(), "users");
        assert_eq!(
            svc.backends[0].get_ref(),
            &RawBackend::Address("127.0.0.1:9001".into())
        );
        let RawBackend::Table(table) = svc.backends[1].get_ref() else {
            panic!("second entry is a table");
        };
        assert_eq!(table.address.get_ref(), "127.0.0.1:9002");
        assert_eq!(table.weight.as_ref().map(|w| *w.get_ref()), Some(3));
        assert!(svc.backends[1].span().start > svc.backends[0].span().end);
    }

    #[test]
    fn enums_are_snake_case_and_closed() {
        let text = r#"
[services.a]
balance = "least_conn"
protocol = "h2c"
[services.a.health_check]
kind = "tcp"
[log]
format = "json"
"#;
        let raw = parse(text).expect("parses");
        let svc = &raw.services.values().next().expect("one service");
        assert_eq!(
            svc.balance.as_ref().map(|b| *b.get_ref()),
            Some(crate::balance::BalancePolicy::LeastConn)
        );
        assert_eq!(svc.protocol, Some(RawProtocol::H2c));
        let hc = svc.health_check.as_ref().expect("health check");
        assert_eq!(
            hc.kind.as_ref().map(|k| *k.get_ref()),
            Some(RawHealthKind::Tcp)
        );
        assert_eq!(raw.log.format, Some(RawLogFormat::Json));
        assert!(parse("[services.a]\nbalance = \"random\"\n").is_err());
        assert!(parse("[services.a]\nprotocol = \"http3\"\n").is_err());
        assert!(parse("[log]\nformat = \"xml\"\n").is_err());
    }

    #[test]
    fn unknown_fields_are_rejected_everywhere() {
        for text in [
            "typo = 1\n",
            "[proxy]\nlisen = []\n",
            "[[proxy.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = []\nextra = 1\n",
            "[admin]\ntokn = \"x\"\n",
            "[registry]\nttl = \"1s\"\n",
            "[services.a]\nweight = 1\n",
            "[services.a]\nbackends = [{ address = \"127.0.0.1:1\", wieght = 2 }]\n",
            "[services.a.health_check]\nintervall = \"1s\"\n",
            "[services.a.retry]\ntries = 1\n",
            "[services.a.outlier]\nfailures = 1\n",
            "[[routes]]\nservice = \"a\"\nprefix = \"/\"\n",
            "[log]\nlevel = \"info\"\n",
        ] {
            assert!(parse(text).is_err(), "accepted: {text}");
        }
    }

    #[test]
    fn a_typo_inside_a_backend_table_is_named() {
        let text = "[services.a]\nbackends = [{ address = \"127.0.0.1:1\", wieght = 2 }]\n";
        let err = parse(text).expect_err("typo rejected");
        assert!(err.message().contains("wieght"), "{err}");
        let err = parse("[services.a]\nbackends = [5]\n").expect_err("integer rejected");
        assert!(err.message().contains("host:port"), "{err}");
    }
}
