//! The proxy's per-request CPU outside the kernel and hyper: request and
//! response header preparation, route lookup at 1,000 routes, and the
//! routing table's rebuild at 10,000 backends (what every health or
//! registry change costs the control plane).
//!
//! Run: `cargo bench --bench data_plane` (BENCHMARKS.md has the figures).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use switchyard::config::Config;
use switchyard::metrics::Metrics;
use switchyard::proxy::headers::{check_framing, prepare_request, prepare_response, Forwarded};
use switchyard::routing::{RouteSpec, RouteTable};
use switchyard::table::Publisher;

/// What a browser sends through a proxy, give or take.
fn browser_request() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "shop.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("connection", "keep-alive"),
        ("cookie", "session=0123456789abcdef; theme=dark"),
        ("upgrade-insecure-requests", "1"),
        ("x-forwarded-for", "203.0.113.7"),
    ] {
        headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers
}

fn backend_response() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("content-type", "text/html; charset=utf-8"),
        ("content-length", "5120"),
        ("cache-control", "private, max-age=0"),
        ("date", "Thu, 03 Dec 2026 16:00:00 GMT"),
        ("keep-alive", "timeout=5"),
        ("connection", "keep-alive"),
    ] {
        headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers
}

fn headers(c: &mut Criterion) {
    let peer = HeaderValue::from_static("198.51.100.20");
    let proto = HeaderValue::from_static("http");
    let proto: &'static HeaderValue = Box::leak(Box::new(proto));
    let fwd = Forwarded {
        peer_ip: &peer,
        trusted: false,
        proto,
        authority: None,
    };
    let request = browser_request();
    let response = backend_response();
    c.bench_function(
        "headers/request: check framing + prepare (9 headers)",
        |b| {
            b.iter_batched_ref(
                || request.clone(),
                |headers| {
                    let ok = check_framing(http::Version::HTTP_11, headers).is_ok();
                    prepare_request(headers, &fwd, false);
                    black_box(ok)
                },
                BatchSize::SmallInput,
            )
        },
    );
    c.bench_function("headers/response: prepare (6 headers)", |b| {
        b.iter_batched_ref(
            || response.clone(),
            |headers| prepare_response(headers, false),
            BatchSize::SmallInput,
        )
    });
}

/// 1,000 routes: 100 exact hosts with 5 prefixes each, 100 wildcard hosts
/// with 3 prefixes each, and 200 host-less prefixes.
fn thousand_routes() -> RouteTable {
    let exact: Vec<String> = (0..100).map(|i| format!("app{i}.example.com")).collect();
    let wildcard: Vec<String> = (0..100)
        .map(|i| format!("*.tenant{i}.example.net"))
        .collect();
    let prefixes: Vec<String> = (0..200)
        .map(|i| format!("/api/v{}/area{i}/", i % 4))
        .collect();
    let mut specs = Vec::new();
    for (h, host) in exact.iter().enumerate() {
        for p in 0..5 {
            specs.push(RouteSpec {
                host: Some(host.as_str()),
                path_prefix: prefixes[(h + p * 37) % prefixes.len()].as_str(),
                service: h % 50,
                strip_prefix: false,
                allow_ambiguous_paths: false,
            });
        }
    }
    for (h, host) in wildcard.iter().enumerate() {
        for p in 0..3 {
            specs.push(RouteSpec {
                host: Some(host.as_str()),
                path_prefix: prefixes[(h + p * 53) % prefixes.len()].as_str(),
                service: h % 50,
                strip_prefix: false,
                allow_ambiguous_paths: false,
            });
        }
    }
    for (i, prefix) in prefixes.iter().enumerate() {
        specs.push(RouteSpec {
            host: None,
            path_prefix: prefix.as_str(),
            service: i % 50,
            strip_prefix: false,
            allow_ambiguous_paths: false,
        });
    }
    assert_eq!(specs.len(), 1000);
    RouteTable::build(specs, std::iter::empty())
}

fn routes(c: &mut Criterion) {
    let table = thousand_routes();
    let cases = [
        (
            "exact host",
            Some("app42.example.com"),
            "/api/v3/area179/items/7",
        ),
        (
            "wildcard host",
            Some("eu.tenant77.example.net:8443"),
            "/api/v1/area129/x",
        ),
        (
            "host-less prefix",
            Some("unknown.example.org"),
            "/api/v2/area198/list",
        ),
        ("no match", Some("unknown.example.org"), "/nothing/here"),
    ];
    for (what, host, path) in cases {
        c.bench_function(&format!("routes/find among 1,000: {what}"), |b| {
            b.iter(|| {
                black_box(
                    table
                        .find(black_box(host), black_box(path))
                        .map(|r| r.service),
                )
            })
        });
    }
}

/// A config with one service of `n` backends and health checks off.
fn config_with_backends(n: usize) -> Config {
    let mut text = String::from(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[services.big]\nbackends = [\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "  \"10.{}.{}.{}:8080\",\n",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        ));
    }
    text.push_str("]\n[[routes]]\npath_prefix = \"/\"\nservice = \"big\"\n");
    match Config::from_toml_str(&text, Path::new("bench.toml")) {
        Ok(config) => config,
        Err(e) => panic!("bench config: {e}"),
    }
}

fn table_rebuild(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let publisher = Publisher::new(Arc::new(config_with_backends(10_000)), Metrics::new());
    let mut group = c.benchmark_group("table");
    group.sample_size(20);
    group.bench_function("rebuild + publish at 10,000 backends", |b| {
        b.iter(|| publisher.republish())
    });
    group.finish();
}

criterion_group!(benches, headers, routes, table_rebuild);
criterion_main!(benches);
