//! The full example (every key set) and the defaults of an empty or sparse file.

use super::*;

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
        allow_ambiguous_paths: false,
    };
    let routes = vec![
        route("api.example.com", "/users", "users", true),
        route("*.example.com", "/", "orders", false),
    ];
    assert_eq!(c.routes, routes);
}

#[test]
fn an_empty_file_is_the_embedded_default() {
    let c = parse("").expect("empty is valid");
    assert_eq!(c, embedded_default());
    assert_eq!(
        c.proxy.listen,
        vec![sa(crate::config::DEFAULT_PROXY_LISTEN)]
    );
    assert_eq!(c.admin.listen, sa(crate::config::DEFAULT_ADMIN_LISTEN));
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
