//! The service registry end to end (issue 4): registration, heartbeats,
//! leases, deregistration with draining, discovery, the durable file store,
//! auth, the network policy, limits and every bad input, on a real App with
//! real sockets on 127.0.0.1.

mod support;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::*;
use switchyard::app::App;
use switchyard::config::Config;

// ===== helpers =====

/// An error answer: the status and a JSON body `{"error": "<sentence>"}`.
fn assert_error(resp: &Resp, status: StatusCode, what: &str) {
    assert_eq!(resp.status, status, "{what}: {}", resp.text());
    let body = resp.json();
    let message = body["error"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{what}: no error sentence in {body}");
    assert!(!message.contains('\n'), "{what}: one line, got {message:?}");
}

fn registry_toml(extra: &str) -> String {
    format!("{}[registry]\n{extra}\n", base_toml())
}

// ===== registration and traffic =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_instance_gets_traffic_within_a_second() {
    let app = start_app(&base_toml()).await;
    let backend = FakeBackend::start("r1").await;
    let http = Http::new();
    let started = Instant::now();
    let stored = register(
        app.admin,
        "web",
        "r1",
        &backend.address(),
        json!({"metadata": {"zone": "a"}}),
    )
    .await;
    assert_eq!(stored["address"], backend.address().as_str());
    assert_eq!(stored["weight"], 1);
    assert_eq!(stored["metadata"]["zone"], "a");
    assert!(
        stored["expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{stored}"
    );

    eventually(
        Duration::from_secs(1),
        "traffic to reach the registered instance",
        || async { answered_by(&http, app.proxy, "web").await.as_deref() == Some("r1") },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(1));

    let listed = listed(app.admin, "web").await;
    assert_eq!(listed.len(), 1);
    let instance = &listed[0];
    assert_eq!(instance["source"], "registry");
    assert_eq!(instance["health"], "healthy");
    assert_eq!(instance["draining"], false);
    assert_eq!(instance["metadata"]["zone"], "a");
    assert_eq!(instance["expires_at"], stored["expires_at"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistering_stops_traffic_at_once() {
    let toml = format!("{}[services.web]\n", base_toml());
    let app = start_app(&toml).await;
    let backend = FakeBackend::start("r1").await;
    let http = Http::new();
    register(app.admin, "web", "r1", &backend.address(), json!({})).await;
    eventually(Duration::from_secs(1), "traffic", || async {
        answered_by(&http, app.proxy, "web").await.as_deref() == Some("r1")
    })
    .await;

    assert_eq!(
        deregister(app.admin, "web", "r1").await.status,
        StatusCode::NO_CONTENT
    );
    eventually(
        Duration::from_millis(500),
        "no traffic after DELETE",
        || async { http.get(app.proxy, "/web/x").await.status == StatusCode::SERVICE_UNAVAILABLE },
    )
    .await;
    let hits = backend.hits();
    for _ in 0..5 {
        assert_eq!(
            http.get(app.proxy, "/web/x").await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(backend.hits(), hits);
    assert!(listed(app.admin, "web").await.is_empty());
    assert_error(
        &deregister(app.admin, "web", "r1").await,
        StatusCode::NOT_FOUND,
        "second DELETE",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_an_idempotent_upsert() {
    let app = start_app(&base_toml()).await;
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let http = Http::new();
    register(app.admin, "web", "i1", &a.address(), json!({"weight": 2})).await;
    register(app.admin, "web", "i1", &a.address(), json!({"weight": 2})).await;
    assert_eq!(listed(app.admin, "web").await.len(), 1);
    let moved = register(app.admin, "web", "i1", &b.address(), json!({"weight": 3})).await;
    assert_eq!(moved["weight"], 3);
    eventually(
        Duration::from_secs(1),
        "traffic to the new address",
        || async { answered_by(&http, app.proxy, "web").await.as_deref() == Some("b") },
    )
    .await;
    let listed = listed(app.admin, "web").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["address"], b.address().as_str());
    assert_eq!(listed[0]["weight"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_and_configured_backends_balance_together() {
    let configured = FakeBackend::start("configured").await;
    let registered = FakeBackend::start("registered").await;
    let toml = format!("{}{}", base_toml(), service_toml("web", &[&configured], ""));
    let app = start_app(&toml).await;
    let http = Http::new();
    register(app.admin, "web", "r1", &registered.address(), json!({})).await;
    eventually(
        Duration::from_secs(1),
        "the registered backend to join",
        || async { answered_by(&http, app.proxy, "web").await.as_deref() == Some("registered") },
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..20 {
        seen.push(
            answered_by(&http, app.proxy, "web")
                .await
                .unwrap_or_default(),
        );
    }
    let counts = tally(&seen);
    assert_eq!(
        (counts["configured"], counts["registered"]),
        (10, 10),
        "{counts:?}"
    );
    let sources: Vec<String> = listed(app.admin, "web")
        .await
        .iter()
        .map(|i| i["source"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(sources, ["config", "registry"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_may_name_a_service_only_the_registry_fills_and_reloads_keep_it() {
    let toml = format!("{}{}", base_toml(), route_toml(None, "/api", "api", true));
    let app = start_app(&toml).await;
    let backend = FakeBackend::start("api-1").await;
    let http = Http::new();
    assert_eq!(
        http.get(app.proxy, "/api/x").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    register(app.admin, "api", "a1", &backend.address(), json!({})).await;
    eventually(
        Duration::from_secs(1),
        "the routed service to answer",
        || async { http.get(app.proxy, "/api/x").await.backend() == Some("api-1") },
    )
    .await;
    assert_eq!(
        backend.last_seen().map(|s| s.uri),
        Some("/x".to_owned()),
        "the route strips /api"
    );

    assert_eq!(admin_reload(app.admin).await.status, StatusCode::OK);
    assert_eq!(listed_ids(app.admin, "api").await, ["a1"]);
    assert_eq!(http.get(app.proxy, "/api/x").await.backend(), Some("api-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_instances_are_health_checked() {
    let toml = format!(
        "{}[services.web.health_check]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nunhealthy_threshold = 1\n",
        base_toml()
    );
    let app = start_app(&toml).await;
    let up = FakeBackend::start("up").await;
    let down = refused_addr();
    let http = Http::new();
    register(app.admin, "web", "up", &up.address(), json!({})).await;
    register(app.admin, "web", "down", &down.to_string(), json!({})).await;
    eventually(
        Duration::from_secs(3),
        "the live instance to pass its check",
        || async {
            listed(app.admin, "web")
                .await
                .iter()
                .any(|i| i["id"] == "up" && i["health"] == "healthy")
        },
    )
    .await;
    eventually(
        Duration::from_secs(3),
        "the dead instance to fail its check",
        || async {
            listed(app.admin, "web")
                .await
                .iter()
                .any(|i| i["id"] == "down" && i["health"] == "unhealthy")
        },
    )
    .await;
    // The listing reads live health; the table follows within a rebuild.
    eventually(
        Duration::from_secs(1),
        "traffic to the healthy instance",
        || async { answered_by(&http, app.proxy, "web").await.as_deref() == Some("up") },
    )
    .await;
    for _ in 0..5 {
        let resp = http.get(app.proxy, "/web/x").await;
        assert_eq!(
            resp.backend(),
            Some("up"),
            "{} {:?} {}",
            resp.status,
            resp.reason(),
            resp.text()
        );
    }
    let healthy = get(app.admin, "/v1/services/web?healthy=true").await.json();
    let ids: Vec<&str> = healthy["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["up"]);
}

// ===== leases =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_expires_without_heartbeats() {
    let app = start_app(&base_toml()).await;
    let backend = FakeBackend::start("r1").await;
    let http = Http::new();
    register(
        app.admin,
        "web",
        "r1",
        &backend.address(),
        json!({"ttl": "1s"}),
    )
    .await;
    eventually(Duration::from_secs(1), "traffic", || async {
        answered_by(&http, app.proxy, "web").await.as_deref() == Some("r1")
    })
    .await;
    // No timing assertion (a loaded CI box delays the expiry task): the
    // lease ends, and once it is gone from the listing no request reaches
    // the instance (tests/departure.rs checks the exact moment).
    eventually(Duration::from_secs(10), "the lease to expire", || async {
        listed(app.admin, "web").await.is_empty()
    })
    .await;
    let hits = backend.hits();
    let after = http.get(app.proxy, "/web/x").await.status;
    // 503 while the emptied service is still in the table, 404 once the
    // rebuild dropped it: either way the instance got nothing.
    assert!(
        [StatusCode::SERVICE_UNAVAILABLE, StatusCode::NOT_FOUND].contains(&after),
        "{after}"
    );
    assert_eq!(backend.hits(), hits);
    assert_error(
        &heartbeat(app.admin, "web", "r1").await,
        StatusCode::NOT_FOUND,
        "heartbeat after expiry",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_lease_alive_past_twice_its_ttl() {
    let app = start_app(&base_toml()).await;
    let backend = FakeBackend::start("r1").await;
    let http = Http::new();
    let first = register(
        app.admin,
        "web",
        "r1",
        &backend.address(),
        json!({"ttl": "1s"}),
    )
    .await;
    let started = Instant::now();
    let mut last = first["expires_at"].as_str().unwrap().to_owned();
    while started.elapsed() < Duration::from_millis(2500) {
        // The heartbeat pace is what is tested (renewals keep the lease).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let resp = heartbeat(app.admin, "web", "r1").await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        let renewed = resp.json()["expires_at"].as_str().unwrap().to_owned();
        assert!(renewed > last, "the lease moved: {last} -> {renewed}");
        last = renewed;
    }
    assert_eq!(listed_ids(app.admin, "web").await, ["r1"]);
    assert_eq!(
        answered_by(&http, app.proxy, "web").await.as_deref(),
        Some("r1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_ttl_never_expires() {
    let app = start_app(&registry_toml("default_ttl = \"1s\"")).await;
    let stored = register(app.admin, "web", "r1", "127.0.0.1:9", json!({"ttl": "0s"})).await;
    assert_eq!(stored["expires_at"], Value::Null);
    assert_eq!(stored["ttl"], "0s");
    let defaulted = register(app.admin, "web", "r2", "127.0.0.1:9", json!({})).await;
    assert_eq!(defaulted["ttl"], "1s", "default_ttl applies");
    // r2's lease ends; r1, listed beside it all along, outlives it.
    eventually(WAIT, "r2's 1 s lease to end", || async {
        listed_ids(app.admin, "web").await == ["r1"]
    })
    .await;
    let beat = heartbeat(app.admin, "web", "r1").await;
    assert_eq!(beat.status, StatusCode::OK);
    assert_eq!(beat.json()["expires_at"], Value::Null);
}

// ===== draining =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deregistered_instance_drains_its_requests_in_flight() {
    let app = start_app(&base_toml()).await;
    let slow = FakeBackend::start("slow").await;
    let other = FakeBackend::start("other").await;
    let http = Http::new();
    register(app.admin, "web", "slow", &slow.address(), json!({})).await;
    eventually(Duration::from_secs(1), "traffic", || async {
        answered_by(&http, app.proxy, "web").await.as_deref() == Some("slow")
    })
    .await;
    let in_flight = {
        let http = http.clone();
        let proxy = app.proxy;
        tokio::spawn(async move { http.get(proxy, "/web/x?hold=1").await })
    };
    eventually(WAIT, "the slow request to be held", || async {
        slow.held() == 1
    })
    .await;

    assert_eq!(
        deregister(app.admin, "web", "slow").await.status,
        StatusCode::NO_CONTENT
    );
    let listed_now = listed(app.admin, "web").await;
    assert_eq!(listed_now.len(), 1, "{listed_now:?}");
    assert_eq!(listed_now[0]["draining"], true);
    assert_eq!(listed_now[0]["active_requests"], 1);
    register(app.admin, "web", "other", &other.address(), json!({})).await;
    eventually(
        Duration::from_secs(1),
        "new requests to go elsewhere",
        || async { answered_by(&http, app.proxy, "web").await.as_deref() == Some("other") },
    )
    .await;
    for _ in 0..4 {
        assert_eq!(
            answered_by(&http, app.proxy, "web").await.as_deref(),
            Some("other")
        );
    }
    let draining: Vec<Value> = listed(app.admin, "web").await;
    assert!(
        draining
            .iter()
            .any(|i| i["id"] == "slow" && i["draining"] == true),
        "{draining:?}"
    );

    slow.release(1);
    let finished = in_flight.await.unwrap();
    assert_eq!(finished.status, StatusCode::OK);
    assert_eq!(
        finished.backend(),
        Some("slow"),
        "the request in flight finished on it"
    );
    eventually(
        Duration::from_secs(2),
        "the drained instance to disappear",
        || async { listed_ids(app.admin, "web").await == ["other"] },
    )
    .await;
}

// ===== discovery =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_services_and_counts() {
    let toml = format!("{}[services.declared]\n", base_toml());
    let app = start_app(&toml).await;
    let backend = FakeBackend::start("r1").await;
    register(app.admin, "web", "r1", &backend.address(), json!({})).await;
    register(
        app.admin,
        "web",
        "r2",
        &refused_addr().to_string(),
        json!({}),
    )
    .await;
    let resp = get(app.admin, "/v1/services").await;
    assert_eq!(resp.status, StatusCode::OK);
    let body = resp.json();
    let web = body["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .cloned();
    let web = web.unwrap_or_else(|| panic!("web is listed: {body}"));
    assert_eq!(web["balance"], "round_robin");
    assert_eq!(web["instances"], 2);
    let declared = get(app.admin, "/v1/services?healthy=true").await.json();
    let names: Vec<&str> = declared["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"declared"),
        "no healthy instance: {names:?}"
    );
    assert_error(
        &get(app.admin, "/v1/services?healthy=maybe").await,
        StatusCode::BAD_REQUEST,
        "bad healthy",
    );
    assert_error(
        &get(app.admin, "/v1/services/nope").await,
        StatusCode::NOT_FOUND,
        "unknown service",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_query_returns_when_the_registry_changes() {
    let app = start_app(&base_toml()).await;
    let first = get(app.admin, "/v1/services").await;
    let index: u64 = first.header("x-switchyard-index").unwrap().parse().unwrap();

    // Nothing changes: the query waits out its `wait`.
    let started = Instant::now();
    let idle = get(app.admin, &format!("/v1/services?index={index}&wait=300ms")).await;
    assert!(started.elapsed() >= Duration::from_millis(290));
    assert_eq!(
        idle.header("x-switchyard-index"),
        Some(index.to_string().as_str())
    );

    let admin_addr = app.admin;
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let resp = get(
            admin_addr,
            &format!("/v1/services/web?index={index}&wait=10s"),
        )
        .await;
        (started.elapsed(), resp)
    });
    // The pause the long poll must span (the assertion below measures it);
    // a poll that arrives after the change answers at once, still later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    register(app.admin, "web", "r1", "127.0.0.1:9", json!({})).await;
    let (waited, resp) = waiter.await.unwrap();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(resp.status, StatusCode::OK);
    let new_index: u64 = resp.header("x-switchyard-index").unwrap().parse().unwrap();
    assert!(new_index > index);
    assert_eq!(resp.json()["instances"][0]["id"], "r1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_gauge_counts_registered_instances_only() {
    let configured = FakeBackend::start("c").await;
    let toml = format!("{}{}", base_toml(), service_toml("web", &[&configured], ""));
    let app = start_app(&toml).await;
    register(app.admin, "web", "r1", "127.0.0.1:9", json!({})).await;
    register(app.admin, "web", "r2", "127.0.0.1:10", json!({})).await;
    register(app.admin, "api", "a1", "127.0.0.1:11", json!({})).await;
    let text = metrics_text(app.admin).await;
    assert_eq!(
        metric(
            &text,
            "switchyard_registry_instances",
            &[("service", "web")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            "switchyard_registry_instances",
            &[("service", "api")]
        ),
        Some(1.0)
    );
    deregister(app.admin, "api", "a1").await;
    let text = metrics_text(app.admin).await;
    assert_eq!(
        metric(
            &text,
            "switchyard_registry_instances",
            &[("service", "api")]
        ),
        None
    );
}

// ===== the file store =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_store_keeps_registrations_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data/registry.json");
    let toml = registry_toml(&format!("store = \"file:{}\"", store.display()));
    let backend = FakeBackend::start("r1").await;

    let app = start_app(&toml).await;
    let leased = register(
        app.admin,
        "web",
        "leased",
        &backend.address(),
        json!({"ttl": "60s", "metadata": {"v": 2}}),
    )
    .await;
    register(
        app.admin,
        "web",
        "forever",
        &backend.address(),
        json!({"ttl": "0s"}),
    )
    .await;
    let short = register(
        app.admin,
        "web",
        "short",
        &backend.address(),
        json!({"ttl": "1s"}),
    )
    .await;
    app.stop().await.expect("clean shutdown");
    assert!(
        store.exists(),
        "written by the first write at the latest at shutdown"
    );

    // The short lease ends while nothing runs.
    wait_until(expires_at(&short)).await;
    let app = start_app(&toml).await;
    let listed = listed(app.admin, "web").await;
    let ids: Vec<&str> = listed.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["forever", "leased"],
        "the expired lease was dropped at load"
    );
    let leased_again = listed.iter().find(|i| i["id"] == "leased").unwrap();
    assert_eq!(
        leased_again["expires_at"], leased["expires_at"],
        "the lease kept its end"
    );
    assert_eq!(leased_again["metadata"]["v"], 2);
    let http = Http::new();
    assert_eq!(
        answered_by(&http, app.proxy, "web").await.as_deref(),
        Some("r1")
    );
    assert_eq!(
        heartbeat(app.admin, "web", "leased").await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_reach_the_file_without_a_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("registry.json");
    let toml = registry_toml(&format!("store = \"file:{}\"", store.display()));
    let app = start_app(&toml).await;
    register(app.admin, "web", "r1", "127.0.0.1:9", json!({})).await;
    eventually(
        Duration::from_secs(2),
        "the writer to persist the registration",
        || async { std::fs::read_to_string(&store).is_ok_and(|text| text.contains("\"r1\"")) },
    )
    .await;
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_store_stops_start_up_naming_the_file_and_leaves_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("registry.json");
    std::fs::write(&store, "{\"version\": 1, \"instances\": [").unwrap();
    let toml = registry_toml(&format!("store = \"file:{}\"", store.display()));
    let config = ConfigFile::new(&toml);
    let loaded = Config::load(config.path()).expect("valid config");
    let err = App::bind(loaded).await.expect_err("corrupt store");
    let message = err.to_string();
    assert!(message.contains(&store.display().to_string()), "{message}");
    assert!(message.contains("corrupt"), "{message}");
    assert_eq!(
        std::fs::read_to_string(&store).unwrap(),
        "{\"version\": 1, \"instances\": ["
    );

    // The binary: a non-zero exit with one line naming the file.
    let out = run_binary(&["serve", "--config", &config.path_str()]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("corrupt"))
        .unwrap_or_default();
    assert!(line.contains(&store.display().to_string()), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&store).unwrap(),
        "{\"version\": 1, \"instances\": ["
    );
}

// ===== security and limits =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_the_token() {
    let toml = format!("{}token = \"s3cret\"\n", base_toml());
    let app = start_app(&toml).await;
    let path = instance_path("web", "r1");
    let body = r#"{"address": "127.0.0.1:9"}"#;
    for token in [None, Some("wrong"), Some("s3cre"), Some("s3cret-")] {
        let resp = admin_call(app.admin, Method::PUT, &path, body, token).await;
        assert_error(
            &resp,
            StatusCode::UNAUTHORIZED,
            &format!("PUT with {token:?}"),
        );
    }
    assert!(
        listed(app.admin, "web").await.is_empty(),
        "nothing registered"
    );
    let ok = admin_call(app.admin, Method::PUT, &path, body, Some("s3cret")).await;
    assert_eq!(ok.status, StatusCode::OK);
    let beat = admin_call(
        app.admin,
        Method::PUT,
        &format!("{path}/heartbeat"),
        "",
        None,
    )
    .await;
    assert_error(&beat, StatusCode::UNAUTHORIZED, "heartbeat without token");
    let beat = admin_call(
        app.admin,
        Method::PUT,
        &format!("{path}/heartbeat"),
        "",
        Some("s3cret"),
    )
    .await;
    assert_eq!(beat.status, StatusCode::OK);
    let delete = admin_call(app.admin, Method::DELETE, &path, "", None).await;
    assert_error(&delete, StatusCode::UNAUTHORIZED, "DELETE without token");
    assert_eq!(
        listed_ids(app.admin, "web").await,
        ["r1"],
        "reads on loopback need no token"
    );
    let delete = admin_call(app.admin, Method::DELETE, &path, "", Some("s3cret")).await;
    assert_eq!(delete.status, StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_networks_and_the_always_refused_classes_get_403() {
    let app = start_app(&registry_toml(
        "allowed_networks = [\"10.0.0.0/8\", \"127.0.0.0/8\"]",
    ))
    .await;
    let proxy = app.proxy;
    let admin_addr = app.admin;
    let cases = [
        "192.168.1.10:80".to_owned(),
        "169.254.169.254:80".to_owned(),
        "[fe80::1]:80".to_owned(),
        "[::ffff:169.254.169.254]:80".to_owned(),
        "0.0.0.0:9001".to_owned(),
        "[::]:9001".to_owned(),
        "224.0.0.1:80".to_owned(),
        "255.255.255.255:80".to_owned(),
        proxy.to_string(),
        admin_addr.to_string(),
        format!("localhost:{}", proxy.port()),
        format!("[::ffff:127.0.0.1]:{}", proxy.port()),
    ];
    for (n, address) in cases.iter().enumerate() {
        let resp = put(
            app.admin,
            &instance_path("web", &format!("i{n}")),
            &json!({ "address": address }).to_string(),
        )
        .await;
        assert_error(&resp, StatusCode::FORBIDDEN, address);
    }
    assert!(
        listed(app.admin, "web").await.is_empty(),
        "nothing registered"
    );
    register(app.admin, "web", "ok", "127.0.0.1:9001", json!({})).await;
    register(
        app.admin,
        "web",
        "mapped",
        "[::ffff:127.0.0.1]:9002",
        json!({}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_mapped_loopback_is_refused_when_loopback_is_not_allowed() {
    let app = start_app(&registry_toml("allowed_networks = [\"10.0.0.0/8\"]")).await;
    for address in [
        "127.0.0.1:9001",
        "[::ffff:127.0.0.1]:9001",
        "localhost:9001",
    ] {
        let resp = put(
            app.admin,
            &instance_path("web", "a"),
            &json!({ "address": address }).to_string(),
        )
        .await;
        assert_error(&resp, StatusCode::FORBIDDEN, address);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_listener_is_every_local_ip_at_its_port() {
    let toml = "[proxy]\nlisten = [\"0.0.0.0:0\"]\n\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let app = start_app(toml).await;
    let port = app.proxy.port();
    for address in [format!("127.0.0.1:{port}"), format!("127.0.0.5:{port}")] {
        let resp = put(
            app.admin,
            &instance_path("web", "a"),
            &json!({ "address": address }).to_string(),
        )
        .await;
        assert_error(&resp, StatusCode::FORBIDDEN, &address);
    }
    let other = format!("192.0.2.1:{port}");
    register(app.admin, "web", "a", &other, json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_services_and_instance_limits_are_enforced() {
    let toml = format!(
        "{}[registry]\nallow_new_services = false\nmax_instances_per_service = 2\n\n[services.web]\n\n{}",
        base_toml(),
        route_toml(None, "/api", "api", false)
    );
    let app = start_app(&toml).await;
    let resp = put(
        app.admin,
        &instance_path("brand-new", "a"),
        r#"{"address": "127.0.0.1:9"}"#,
    )
    .await;
    assert_error(&resp, StatusCode::FORBIDDEN, "a new service");
    assert_error(
        &get(app.admin, "/v1/services/brand-new").await,
        StatusCode::NOT_FOUND,
        "not created",
    );
    register(app.admin, "api", "a", "127.0.0.1:9", json!({})).await;
    register(app.admin, "web", "a", "127.0.0.1:9", json!({})).await;
    register(app.admin, "web", "b", "127.0.0.1:10", json!({})).await;
    let over = put(
        app.admin,
        &instance_path("web", "c"),
        r#"{"address": "127.0.0.1:11"}"#,
    )
    .await;
    assert_error(&over, StatusCode::TOO_MANY_REQUESTS, "a third instance");
    assert!(over.json()["error"]
        .as_str()
        .unwrap()
        .contains("max_instances_per_service"));
    register(app.admin, "web", "b", "127.0.0.1:12", json!({})).await;
    assert_eq!(listed_ids(app.admin, "web").await, ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let app = start_app(&base_toml()).await;
    let stored = register(
        app.admin,
        "web",
        "keep",
        "127.0.0.1:9001",
        json!({"weight": 4}),
    )
    .await;
    let keep = instance_path("web", "keep");
    let long = "x".repeat(129);
    let cases: Vec<(Method, String, String, StatusCode)> = vec![
        (
            Method::PUT,
            keep.clone(),
            "{not json".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            "".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            "[]".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            "{}".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            r#"{"address": 9001}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            r#"{"address": "127.0.0.1:1", "weight": "2"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            r#"{"address": "127.0.0.1:1", "ttl": 30}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            r#"{"address": "127.0.0.1:1", "metadata": "x"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            r#"{"address": "127.0.0.1"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            r#"{"address": "[::1]"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            r#"{"address": "no-such-host.invalid:80"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            r#"{"address": "127.0.0.1:0"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            r#"{"address": "127.0.0.1:70000"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            r#"{"address": "bad host:80"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            r#"{"address": "127.0.0.1:1", "weight": -1}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            r#"{"address": "127.0.0.1:1", "weight": 1001}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            r#"{"address": "127.0.0.1:1", "weight": 1000000}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            r#"{"address": "127.0.0.1:1", "ttl": "-5s"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            r#"{"address": "127.0.0.1:1", "ttl": "100years"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            r#"{"address": "127.0.0.1:1", "ttl": "soon"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            r#"{"address": "127.0.0.1:1", "port": 1}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            instance_path("web", "a/b"),
            r#"{"address": "127.0.0.1:1"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            instance_path("web", "a%2Fb"),
            r#"{"address": "127.0.0.1:1"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            instance_path("web", "a%20b"),
            r#"{"address": "127.0.0.1:1"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            instance_path("we%20b", "a"),
            r#"{"address": "127.0.0.1:1"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            instance_path("web", &long),
            r#"{"address": "127.0.0.1:1"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            instance_path(&long, "a"),
            r#"{"address": "127.0.0.1:1"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            instance_path("web", ""),
            r#"{"address": "127.0.0.1:1"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            keep.clone(),
            format!(
                r#"{{"address": "127.0.0.1:1", "metadata": {{"pad": "{}"}}}}"#,
                "x".repeat(70 * 1024)
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            Method::POST,
            keep.clone(),
            r#"{"address": "127.0.0.1:1"}"#.into(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::GET,
            keep.clone(),
            "".into(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            // PATCH is runtime control (SPEC §7): an empty body is refused.
            Method::PATCH,
            keep.clone(),
            "".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            format!("{keep}/heartbeat"),
            "".into(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::DELETE,
            format!("{keep}/heartbeat"),
            "".into(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::PUT,
            "/v1/services".into(),
            "".into(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::PUT,
            instance_path("web", "unknown") + "/heartbeat",
            "".into(),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::DELETE,
            instance_path("web", "unknown"),
            "".into(),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (method, path, body, status) in &cases {
        let what = format!("{method} {path} {}", &body[..body.len().min(60)]);
        let resp = admin_call(app.admin, method.clone(), path, body, None).await;
        assert_error(&resp, *status, &what);
        if *status == StatusCode::METHOD_NOT_ALLOWED {
            assert!(resp.header("allow").is_some(), "{what}: Allow header");
        }
    }
    let listed = listed(app.admin, "web").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["address"], "127.0.0.1:9001");
    assert_eq!(listed[0]["weight"], 4);
    assert_eq!(listed[0]["expires_at"], stored["expires_at"]);
}
