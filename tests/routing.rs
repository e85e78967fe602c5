//! Routing precedence (SPEC §2 `[[routes]]`): host routes before host-less
//! ones, exact host before wildcard, longest path_prefix within a group, host
//! matching ignores case and port, strip_prefix, and the implicit
//! `/<service>/` route for services no route names.

mod support;

use std::collections::HashMap;

use support::*;

struct Fixture {
    app: TestApp,
    backends: HashMap<&'static str, FakeBackend>,
}

impl Fixture {
    fn backend(&self, name: &str) -> &FakeBackend {
        &self.backends[name]
    }

    /// GET with a Host header; returns which backend answered (or the
    /// status and switchyard reason when none did).
    async fn who(&self, host: &str, path: &str) -> String {
        let resp = Http::new().get_host(self.app.proxy, host, path).await;
        match resp.backend() {
            Some(b) => b.to_string(),
            None => format!("{} {}", resp.status.as_u16(), resp.reason().unwrap_or("-")),
        }
    }
}

async fn fixture() -> Fixture {
    let names = [
        "exact",
        "exact_v2",
        "wild",
        "wild_v2",
        "plain",
        "plain_long",
        "stripper",
        "orphan",
        "shadowed",
    ];
    let mut backends = HashMap::new();
    for name in names {
        backends.insert(name, FakeBackend::start(name).await);
    }
    let mut toml = base_toml();
    for name in names {
        toml.push_str(&service_toml(name, &[&backends[name]], ""));
    }
    // Deliberately not in precedence order: order in the file must not matter.
    toml.push_str(&route_toml(None, "/app", "plain", false));
    toml.push_str(&route_toml(Some("*.example.com"), "/", "wild", false));
    toml.push_str(&route_toml(None, "/app/admin", "plain_long", false));
    toml.push_str(&route_toml(Some("api.example.com"), "/", "exact", false));
    toml.push_str(&route_toml(Some("*.example.com"), "/v2", "wild_v2", false));
    toml.push_str(&route_toml(
        Some("api.example.com"),
        "/v2",
        "exact_v2",
        false,
    ));
    toml.push_str(&route_toml(None, "/strip", "stripper", true));
    // An explicit route on what would be service "shadowed"'s implicit prefix
    // sends it elsewhere; "shadowed" itself is named by no route.
    toml.push_str(&route_toml(None, "/shadowed/", "plain", false));
    // "orphan" is named by no route at all.
    let app = start_app(&toml).await;
    Fixture { app, backends }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_host_beats_wildcard_and_host_routes_beat_hostless() {
    let f = fixture().await;
    assert_eq!(f.who("api.example.com", "/x").await, "exact");
    assert_eq!(f.who("foo.example.com", "/x").await, "wild");
    // A host route with a shorter prefix beats a host-less one with a longer.
    assert_eq!(f.who("api.example.com", "/app/admin/x").await, "exact");
    assert_eq!(f.who("foo.example.com", "/app/x").await, "wild");
    // No host route matches: host-less routes apply.
    assert_eq!(f.who("other.test", "/app/x").await, "plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_prefix_wins_within_a_group() {
    let f = fixture().await;
    assert_eq!(f.who("api.example.com", "/v2/users").await, "exact_v2");
    assert_eq!(f.who("api.example.com", "/v1/users").await, "exact");
    assert_eq!(f.who("foo.example.com", "/v2/users").await, "wild_v2");
    assert_eq!(f.who("other.test", "/app/admin/x").await, "plain_long");
    assert_eq!(f.who("other.test", "/app/users").await, "plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_matching_ignores_case_and_port() {
    let f = fixture().await;
    assert_eq!(f.who("API.Example.COM", "/x").await, "exact");
    assert_eq!(f.who("api.example.com:8080", "/v2/x").await, "exact_v2");
    assert_eq!(f.who("Foo.EXAMPLE.com:443", "/x").await, "wild");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_prefix_is_case_sensitive_and_unmatched_is_404() {
    let f = fixture().await;
    assert_eq!(f.who("other.test", "/APP/x").await, "404 no route");
    assert_eq!(f.who("other.test", "/nothing").await, "404 no route");
    assert_eq!(f.backend("plain").hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_removes_the_prefix_before_forwarding() {
    let f = fixture().await;
    assert_eq!(f.who("other.test", "/strip/a/b?q=1").await, "stripper");
    let seen = f.backend("stripper").last_seen().unwrap();
    assert_eq!(seen.uri, "/a/b?q=1");
    assert_eq!(f.who("other.test", "/strip").await, "stripper");
    let seen = f.backend("stripper").last_seen().unwrap();
    assert!(
        seen.uri == "/" || seen.uri.is_empty(),
        "strip of the whole path should forward \"/\", got {:?}",
        seen.uri
    );
    // Without strip_prefix the path is forwarded as is.
    assert_eq!(f.who("other.test", "/app/users?x=y").await, "plain");
    assert_eq!(
        f.backend("plain").last_seen().unwrap().uri,
        "/app/users?x=y"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_named_by_no_route_is_reachable_at_its_name_with_prefix_kept() {
    let f = fixture().await;
    assert_eq!(f.who("other.test", "/orphan/items/1?z=2").await, "orphan");
    assert_eq!(
        f.backend("orphan").last_seen().unwrap().uri,
        "/orphan/items/1?z=2"
    );
    // A service that routes do name has no implicit prefix.
    assert_eq!(f.who("other.test", "/exact/x").await, "404 no route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_routes_take_precedence_over_implicit_service_prefixes() {
    let f = fixture().await;
    assert_eq!(f.who("other.test", "/shadowed/x").await, "plain");
    assert_eq!(f.backend("shadowed").hits(), 0);
    // A matching host route wins over the (host-less) implicit prefix too.
    assert_eq!(f.who("foo.example.com", "/orphan/x").await, "wild");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_route_works_without_any_routes() {
    let a = FakeBackend::start("alpha").await;
    let b = FakeBackend::start("beta").await;
    let toml = format!(
        "{}{}{}",
        base_toml(),
        service_toml("alpha", &[&a], ""),
        service_toml("beta", &[&b], "")
    );
    let app = start_app(&toml).await;
    let http = Http::new();
    assert_eq!(
        http.get(app.proxy, "/alpha/x").await.backend(),
        Some("alpha")
    );
    assert_eq!(http.get(app.proxy, "/beta/").await.backend(), Some("beta"));
    assert_eq!(a.last_seen().unwrap().uri, "/alpha/x");
    let none = http.get(app.proxy, "/gamma/x").await;
    assert_eq!(none.status.as_u16(), 404);
    assert_eq!(none.reason(), Some("no route"));
}
