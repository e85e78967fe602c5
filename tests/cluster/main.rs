//! Cluster mode end to end (issue 9, SPEC §6): real etcd clusters (one or
//! three members, started by `etcd.rs`) and two or three real `switchyard
//! serve` processes sharing a registry through them.
//!
//! Each test starts its own etcd on its own ephemeral ports and data dirs and
//! its own nodes, so the tests run in parallel threads of this one binary.
//! Propagation to other nodes is held to SPEC's one second; waits for things
//! the contract does not time (a node noticing that etcd went away or came
//! back, an election) are bounded but generous.
//!
//! etcd's smallest lease is 2 s with its default timing (1.5 × the election
//! timeout, rounded up), so the lease tests use `"ttl": "2s"`.

#[path = "../support/mod.rs"]
mod support;

mod etcd;
mod patch;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use etcd::Etcd;
use http::StatusCode;
use serde_json::{json, Value};
use support::*;

/// SPEC §6: other nodes route by a change within one second.
const PROPAGATION: Duration = Duration::from_secs(1);
/// How long a node may take to notice that etcd went away or came back, or
/// the cluster to elect a new leader (the contract gives no number).
const NOTICE: Duration = Duration::from_secs(20);
/// The prefix most tests use (each test has its own etcd).
const PREFIX: &str = "sy";

// ===== nodes =====

fn node_toml(store: &str) -> String {
    format!(
        "{}[registry]\nstore = \"{store}\"\n\n[registry.etcd]\ndial_timeout = \"3s\"\n",
        base_toml()
    )
}

/// A `switchyard serve` process in cluster mode, with its config file.
struct Node {
    config: ConfigFile,
    proc: Proc,
}

impl Node {
    async fn start(store: &str) -> Node {
        let config = ConfigFile::new(&node_toml(store));
        let proc = spawn_serve(&config).await;
        Node { config, proc }
    }

    fn admin(&self) -> SocketAddr {
        self.proc.admin
    }

    fn proxy(&self) -> SocketAddr {
        self.proc.proxy()
    }

    /// `kill -9`, and wait for the exit.
    async fn kill9(&mut self) {
        self.proc.signal("KILL");
        assert!(
            self.proc.wait_exit(WAIT).await.is_some(),
            "the node did not die on SIGKILL"
        );
    }

    /// Starts the same config again (new ephemeral listeners); returns
    /// once the new process is ready.
    async fn restart(&mut self) {
        self.proc = spawn_serve(&self.config).await;
    }

    /// `switchyard_registry_store_up`, or `None` when not exported.
    async fn store_up(&self) -> Option<f64> {
        metric(
            &metrics_text(self.admin()).await,
            "switchyard_registry_store_up",
            &[],
        )
    }

    async fn ready(&self) -> StatusCode {
        get(self.admin(), "/readyz").await.status
    }
}

// ===== admin API =====

/// The etcd key of an instance (SPEC §6 layout as the README documents it).
fn instance_key(prefix: &str, service: &str, id: &str) -> String {
    format!("/{prefix}/instances/{service}/{id}")
}

/// The ids listed and not draining, sorted. (Right after a removal, an
/// instance may still be listed `"draining": true` for a moment even with
/// nothing in flight: the sweeper drops it within 250 ms.)
async fn live_ids(addr: SocketAddr, service: &str) -> Vec<String> {
    let mut ids: Vec<String> = listed(addr, service)
        .await
        .iter()
        .filter(|i| i["draining"] != true)
        .map(|i| i["id"].as_str().unwrap_or("").to_owned())
        .collect();
    ids.sort();
    ids
}

fn ids(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The backends that answer `n` requests to `/<service>/x`; an answer from
/// none is recorded as `status NNN`.
async fn answer_set(http: &Http, proxy: SocketAddr, service: &str, n: usize) -> BTreeSet<String> {
    let path = format!("/{service}/x");
    answer_labels(http, proxy, &path, n)
        .await
        .into_iter()
        .collect()
}

/// Waits (≤ `limit`) until requests to `/<service>/x` through `proxy` are
/// answered by exactly the backends in `want` (round robin: 2 × |want| + 2
/// requests a round).
async fn until_routed(
    http: &Http,
    proxy: SocketAddr,
    service: &str,
    want: &[&str],
    limit: Duration,
    what: &str,
) {
    let want = names(want);
    let n = 2 * want.len() + 2;
    poll(limit, what, || {
        let want = &want;
        async move {
            let got = answer_set(http, proxy, service, n).await;
            if got == *want {
                Ok(())
            } else {
                Err(format!("/{service}/ answered by {got:?}, want {want:?}"))
            }
        }
    })
    .await;
}

/// Polls `check` every 20 ms until it returns `Ok`; after `limit`, panics
/// naming `what` and the last `Err` (what was seen instead).
async fn poll<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let last = match check().await {
            Ok(()) => return,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A 503 `{"error": "registry store unavailable: ..."}` in one line.
fn assert_store_unavailable(resp: &Resp, what: &str) {
    assert_eq!(
        resp.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: {}",
        resp.text()
    );
    let body = resp.json();
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("registry store unavailable: "),
        "{what}: {body}"
    );
    assert!(!message.contains('\n'), "{what}: one line, got {message:?}");
}

/// The `Instant` matching a wall-clock time (now if it has passed).
fn instant_of(t: SystemTime) -> Instant {
    let now_wall = SystemTime::now();
    let now = Instant::now();
    match t.duration_since(now_wall) {
        Ok(ahead) => now + ahead,
        Err(_) => now,
    }
}

/// The etcd value of an instance holds what the API answered.
fn assert_stored_like(kv: &etcd::Kv, answer: &Value) {
    let stored = kv.json();
    for field in ["address", "weight", "metadata"] {
        assert_eq!(
            stored[field], answer[field],
            "{field} of {} in etcd: {stored} vs the answer {answer}",
            kv.key
        );
    }
    for field in ["ttl", "expires_at"] {
        if stored.get(field).is_some() {
            assert_eq!(
                stored[field], answer[field],
                "{field} of {} in etcd: {stored} vs the answer {answer}",
                kv.key
            );
        }
    }
}

// ===== the harness itself =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_harness_runs_a_one_member_cluster() {
    if !etcd::available() {
        return;
    }
    let mut etcd = Etcd::start(1).await;
    etcd.put("/selftest/a", "{\"x\":1}").await;
    etcd.put("/selftest/b", "two words").await;
    etcd.put("/selftest-not/c", "other prefix").await;
    let kvs = etcd.kvs("/selftest/").await;
    let got: Vec<(String, String)> = kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("/selftest/a".to_string(), "{\"x\":1}".to_string()),
            ("/selftest/b".to_string(), "two words".to_string())
        ]
    );
    assert_eq!(kvs[0].json()["x"], 1);
    assert_eq!(kvs[0].lease, 0);
    let out = etcd
        .etcdctl(&[0], &["get", "/selftest/b", "--print-value-only"])
        .await
        .unwrap();
    assert_eq!(out.trim(), "two words");
    assert_eq!(etcd.delete_via(&[0], "/selftest/b").await, 1);
    assert_eq!(etcd.keys("/selftest/").await, ["/selftest/a"]);

    // Stop and restart with the same data dir and ports: the data stays.
    etcd.stop(0);
    assert!(!etcd.is_running(0));
    assert!(etcd.etcdctl(&[0], &["get", "/selftest/a"]).await.is_err());
    etcd.restart(0).await;
    assert_eq!(etcd.keys("/selftest/").await, ["/selftest/a"]);
    etcd.kill(0);
    assert!(!etcd.is_running(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_harness_runs_three_members_and_survives_losing_one() {
    if !etcd::available() {
        return;
    }
    let mut etcd = Etcd::start(3).await;
    assert_eq!(etcd.size(), 3);
    etcd.put("/selftest/a", "1").await;
    let leader = etcd.leader().await;
    etcd.kill(leader);
    let rest: Vec<usize> = etcd.all().into_iter().filter(|&i| i != leader).collect();
    poll(NOTICE, "a write after losing the leader", || {
        let etcd = &etcd;
        let rest = &rest;
        async move {
            etcd.etcdctl(rest, &["put", "/selftest/b", "2"])
                .await
                .map(|_| ())
        }
    })
    .await;
    assert_ne!(etcd.leader().await, leader);
    etcd.restart(leader).await;
    eventually(NOTICE, "the restarted member to catch up", || async {
        etcd.local_kvs(leader, "/selftest/")
            .await
            .is_ok_and(|kvs| kvs.len() == 2)
    })
    .await;
}

// ===== propagation =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_on_one_node_is_in_etcd_when_answered_and_routed_by_another_within_a_second()
{
    if !etcd::available() {
        return;
    }
    let etcd = Etcd::start(1).await;
    let store = etcd.store_url(&etcd.all(), PREFIX);
    let a = Node::start(&store).await;
    let b = Node::start(&store).await;
    let r1 = FakeBackend::start("r1").await;
    let http = Http::new();

    let stored = register(
        a.admin(),
        "web",
        "r1",
        &r1.address(),
        json!({"ttl": "30s", "weight": 3, "metadata": {"zone": "a"}}),
    )
    .await;
    let answered = Instant::now();
    // Durable before the answer: etcd has it now.
    let kvs = etcd.kvs(&format!("/{PREFIX}/")).await;
    let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, [instance_key(PREFIX, "web", "r1")]);
    assert_stored_like(&kvs[0], &stored);
    assert_ne!(kvs[0].lease, 0, "a ttl is an etcd lease");

    eventually(PROPAGATION, "node B to route to r1", || async {
        answered_by(&http, b.proxy(), "web").await.as_deref() == Some("r1")
    })
    .await;
    eventually(
        PROPAGATION.saturating_sub(answered.elapsed()),
        "node A to route to r1",
        || async { answered_by(&http, a.proxy(), "web").await.as_deref() == Some("r1") },
    )
    .await;
    for node in [&a, &b] {
        let list = listed(node.admin(), "web").await;
        assert_eq!(list.len(), 1, "{list:?}");
        let instance = &list[0];
        assert_eq!(instance["id"], "r1");
        assert_eq!(instance["source"], "registry");
        assert_eq!(instance["address"], r1.address().as_str());
        assert_eq!(instance["weight"], 3);
        assert_eq!(instance["metadata"]["zone"], "a");
        assert_eq!(instance["expires_at"], stored["expires_at"]);
        assert_eq!(instance["draining"], false);
    }

    // "ttl": "0s" = no lease; a write on B is in etcd when answered too.
    let idle = refused_addr().to_string();
    let forever = register(b.admin(), "static", "s1", &idle, json!({"ttl": "0s"})).await;
    assert_eq!(forever["expires_at"], Value::Null);
    let kvs = etcd.kvs(&format!("/{PREFIX}/instances/static/")).await;
    assert_eq!(kvs.len(), 1, "{kvs:?}");
    assert_eq!(kvs[0].key, instance_key(PREFIX, "static", "s1"));
    assert_eq!(kvs[0].lease, 0, "no lease for a zero ttl");
    assert_stored_like(&kvs[0], &forever);
    eventually(PROPAGATION, "node A to list static/s1", || async {
        sorted_ids(a.admin(), "static").await == ["s1"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deregistration_is_final_at_once_on_the_answering_node_and_within_a_second_elsewhere() {
    if !etcd::available() {
        return;
    }
    let etcd = Etcd::start(1).await;
    let store = etcd.store_url(&etcd.all(), PREFIX);
    let a = Node::start(&store).await;
    let b = Node::start(&store).await;
    let stay = FakeBackend::start("stay").await;
    let http = Http::new();
    register(
        a.admin(),
        "web",
        "stay",
        &stay.address(),
        json!({"ttl": "0s"}),
    )
    .await;
    until_routed(
        &http,
        b.proxy(),
        "web",
        &["stay"],
        PROPAGATION,
        "B routes to stay",
    )
    .await;

    for i in 0..5 {
        let id = format!("leave{i}");
        let leaving = FakeBackend::start(&id).await;
        register(a.admin(), "web", &id, &leaving.address(), json!({})).await;
        until_routed(
            &http,
            b.proxy(),
            "web",
            &["stay", &id],
            PROPAGATION,
            "B routes to both",
        )
        .await;
        until_routed(
            &http,
            a.proxy(),
            "web",
            &["stay", &id],
            PROPAGATION,
            "A routes to both",
        )
        .await;

        let resp = deregister(b.admin(), "web", &id).await;
        assert_eq!(resp.status, StatusCode::NO_CONTENT, "{}", resp.text());
        let answered = Instant::now();
        let hits = leaving.hits();
        // Right after the 204, B sends it nothing (round robin: one of two
        // requests would go to it if it were still balanced).
        for _ in 0..2 {
            assert_eq!(
                answered_by(&http, b.proxy(), "web").await.as_deref(),
                Some("stay"),
                "cycle {i}: a request to B right after its 204"
            );
        }
        assert_eq!(
            leaving.hits(),
            hits,
            "cycle {i}: B sent a request to {id} after the 204"
        );
        assert_eq!(live_ids(b.admin(), "web").await, ["stay"], "cycle {i}");
        assert_eq!(
            etcd.keys(&format!("/{PREFIX}/")).await,
            [instance_key(PREFIX, "web", "stay")],
            "cycle {i}: the DELETE is in etcd when answered"
        );

        // A: out of balancing within one second of the 204 ...
        eventually(
            PROPAGATION.saturating_sub(answered.elapsed()),
            "node A to drop the deregistered instance",
            || async { live_ids(a.admin(), "web").await == ["stay"] },
        )
        .await;
        // ... and from then on it gets nothing from A either.
        tokio::time::sleep_until((answered + PROPAGATION).into()).await;
        let hits = leaving.hits();
        for _ in 0..2 {
            assert_eq!(
                answered_by(&http, a.proxy(), "web").await.as_deref(),
                Some("stay"),
                "cycle {i}: a request to A a second after the 204"
            );
        }
        assert_eq!(
            leaving.hits(),
            hits,
            "cycle {i}: A sent a request to {id} after 1 s"
        );
        // Nothing in flight: soon no longer listed anywhere.
        for node in [&a, &b] {
            eventually(
                Duration::from_secs(2),
                "the instance to leave the lists",
                || async { sorted_ids(node.admin(), "web").await == ["stay"] },
            )
            .await;
        }
    }
}

// ===== leases =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_on_another_node_renews_a_lease_made_elsewhere() {
    if !etcd::available() {
        return;
    }
    let etcd = Etcd::start(1).await;
    let store = etcd.store_url(&etcd.all(), PREFIX);
    let a = Node::start(&store).await;
    let b = Node::start(&store).await;
    let r1 = FakeBackend::start("r1").await;
    let http = Http::new();
    let first = register(a.admin(), "web", "r1", &r1.address(), json!({"ttl": "2s"})).await;
    let first_end = expires_at(&first);
    eventually(PROPAGATION, "node B to list r1", || async {
        sorted_ids(b.admin(), "web").await == ["r1"]
    })
    .await;

    // Renew on B only, every 500 ms, well past twice the original ttl.
    let started = Instant::now();
    let mut last = first["expires_at"].as_str().unwrap().to_owned();
    let mut beats = 0;
    while started.elapsed() < Duration::from_secs(5) && beats < 20 {
        // The heartbeat pace is what is tested.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let resp = heartbeat(b.admin(), "web", "r1").await;
        assert_eq!(
            resp.status,
            StatusCode::OK,
            "heartbeat {beats} on B: {}",
            resp.text()
        );
        let renewed = resp.json()["expires_at"].as_str().unwrap().to_owned();
        assert!(renewed > last, "the lease moved: {last} -> {renewed}");
        last = renewed;
        beats += 1;
        for node in [&a, &b] {
            assert_eq!(
                sorted_ids(node.admin(), "web").await,
                ["r1"],
                "after heartbeat {beats}"
            );
        }
    }
    assert!(SystemTime::now() > first_end + Duration::from_secs(2));
    for node in [&a, &b] {
        assert_eq!(
            answered_by(&http, node.proxy(), "web").await.as_deref(),
            Some("r1"),
            "the renewed instance is routed"
        );
    }
    let kvs = etcd.kvs(&format!("/{PREFIX}/")).await;
    assert_eq!(kvs.len(), 1, "{kvs:?}");
    assert_ne!(kvs[0].lease, 0);
    // A heartbeat on A works as well.
    assert_eq!(
        heartbeat(a.admin(), "web", "r1").await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_end_removes_the_instance_on_every_node() {
    if !etcd::available() {
        return;
    }
    let etcd = Etcd::start(1).await;
    let store = etcd.store_url(&etcd.all(), PREFIX);
    let a = Node::start(&store).await;
    let b = Node::start(&store).await;
    let stay = FakeBackend::start("stay").await;
    let leaving = FakeBackend::start("leaving").await;
    let http = Http::new();
    register(
        a.admin(),
        "web",
        "stay",
        &stay.address(),
        json!({"ttl": "0s"}),
    )
    .await;
    let leased = register(
        a.admin(),
        "web",
        "leaving",
        &leaving.address(),
        json!({"ttl": "2s"}),
    )
    .await;
    let end = expires_at(&leased);
    until_routed(
        &http,
        a.proxy(),
        "web",
        &["stay", "leaving"],
        PROPAGATION,
        "A routes to both",
    )
    .await;
    until_routed(
        &http,
        b.proxy(),
        "web",
        &["stay", "leaving"],
        PROPAGATION,
        "B routes to both",
    )
    .await;

    // Requests to both nodes until a second past the end, each noted with
    // the wall-clock time it was sent.
    let stop_at = instant_of(end + PROPAGATION + Duration::from_millis(300));
    let mut sent: Vec<(&str, SystemTime, Option<String>)> = Vec::new();
    for _ in 0..2000 {
        if Instant::now() >= stop_at {
            break;
        }
        for (name, node) in [("A", &a), ("B", &b)] {
            let at = SystemTime::now();
            let by = answered_by(&http, node.proxy(), "web").await;
            sent.push((name, at, by));
        }
        // The pace of the request loop (bounded in count and time).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(Instant::now() >= stop_at, "the request loop ended early");
    // A (the node that answered the registration): nothing from the end on
    // (expires_at is printed to the millisecond: 2 ms of slack).
    let late_on_a: Vec<_> = sent
        .iter()
        .filter(|(node, at, by)| {
            *node == "A"
                && *at >= end + Duration::from_millis(2)
                && by.as_deref() == Some("leaving")
        })
        .map(|(_, at, _)| at.duration_since(end).unwrap())
        .collect();
    assert!(
        late_on_a.is_empty(),
        "node A sent requests to the instance this long after its lease ended: {late_on_a:?}"
    );
    let late_on_b: Vec<_> = sent
        .iter()
        .filter(|(node, at, by)| {
            *node == "B" && *at >= end + PROPAGATION && by.as_deref() == Some("leaving")
        })
        .map(|(_, at, _)| at.duration_since(end).unwrap())
        .collect();
    assert!(
        late_on_b.is_empty(),
        "node B sent requests to the instance this long after its lease ended: {late_on_b:?}"
    );
    for (name, node) in [("A", &a), ("B", &b)] {
        assert_eq!(
            sorted_ids(node.admin(), "web").await,
            ["stay"],
            "node {name}"
        );
        let resp = heartbeat(node.admin(), "web", "leaving").await;
        assert_eq!(
            resp.status,
            StatusCode::NOT_FOUND,
            "heartbeat on {name} after the lease ended: {}",
            resp.text()
        );
    }
    eventually(
        Duration::from_secs(5),
        "etcd to drop the expired key",
        || async {
            etcd.keys(&format!("/{PREFIX}/")).await == [instance_key(PREFIX, "web", "stay")]
        },
    )
    .await;
}

// ===== joining, restarting =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_later_sees_every_registration_at_once() {
    if !etcd::available() {
        return;
    }
    let etcd = Etcd::start(1).await;
    let store = etcd.store_url(&etcd.all(), PREFIX);
    let a = Node::start(&store).await;
    let w1 = FakeBackend::start("w1").await;
    let w2 = FakeBackend::start("w2").await;
    let a1 = FakeBackend::start("a1").await;
    let http = Http::new();
    let s_w1 = register(a.admin(), "web", "w1", &w1.address(), json!({"ttl": "0s"})).await;
    let s_w2 = register(a.admin(), "web", "w2", &w2.address(), json!({"ttl": "60s"})).await;
    let s_a1 = register(
        a.admin(),
        "api",
        "a1",
        &a1.address(),
        json!({"ttl": "30s", "metadata": {"v": 7}}),
    )
    .await;
    register(
        a.admin(),
        "web",
        "gone",
        &refused_addr().to_string(),
        json!({}),
    )
    .await;
    assert_eq!(
        deregister(a.admin(), "web", "gone").await.status,
        StatusCode::NO_CONTENT
    );

    // B: ready means it has the registry; no waiting from here on.
    let b = Node::start(&store).await;
    assert_eq!(sorted_ids(b.admin(), "web").await, ids(&["w1", "w2"]));
    assert_eq!(sorted_ids(b.admin(), "api").await, ["a1"]);
    let on_b: Vec<Value> = listed(b.admin(), "web").await;
    for stored in [&s_w1, &s_w2] {
        let same = on_b.iter().find(|i| i["id"] == stored["id"]).unwrap();
        assert_eq!(same["expires_at"], stored["expires_at"], "{same}");
        assert_eq!(same["address"], stored["address"]);
    }
    assert_eq!(
        listed(b.admin(), "api").await[0]["metadata"],
        s_a1["metadata"]
    );
    assert_eq!(
        answered_by(&http, b.proxy(), "api").await.as_deref(),
        Some("a1"),
        "the first request to the new node"
    );
    assert_eq!(
        answer_set(&http, b.proxy(), "web", 4).await,
        names(&["w1", "w2"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_node_loses_no_registration() {
    if !etcd::available() {
        return;
    }
    let etcd = Etcd::start(1).await;
    let store = etcd.store_url(&etcd.all(), PREFIX);
    let mut a = Node::start(&store).await;
    let b = Node::start(&store).await;
    let k1 = FakeBackend::start("k1").await;
    let k2 = FakeBackend::start("k2").await;
    let http = Http::new();
    let s_k1 = register(a.admin(), "web", "k1", &k1.address(), json!({"ttl": "0s"})).await;
    let s_k2 = register(a.admin(), "web", "k2", &k2.address(), json!({"ttl": "60s"})).await;
    // kill -9 right after the 200: the registration is already durable.
    a.kill9().await;

    eventually(PROPAGATION, "node B to list both", || async {
        sorted_ids(b.admin(), "web").await == ids(&["k1", "k2"])
    })
    .await;
    until_routed(
        &http,
        b.proxy(),
        "web",
        &["k1", "k2"],
        PROPAGATION,
        "B routes to both",
    )
    .await;
    assert_eq!(
        etcd.keys(&format!("/{PREFIX}/")).await,
        [
            instance_key(PREFIX, "web", "k1"),
            instance_key(PREFIX, "web", "k2")
        ]
    );

    a.restart().await;
    let on_a = listed(a.admin(), "web").await;
    assert_eq!(on_a.len(), 2, "{on_a:?}");
    for stored in [&s_k1, &s_k2] {
        let same = on_a.iter().find(|i| i["id"] == stored["id"]).unwrap();
        assert_eq!(
            same["expires_at"], stored["expires_at"],
            "the lease kept its end: {same}"
        );
    }
    assert_eq!(
        answer_set(&http, a.proxy(), "web", 4).await,
        names(&["k1", "k2"])
    );
    // The restarted node can still renew the lease it made before.
    assert_eq!(
        heartbeat(a.admin(), "web", "k2").await.status,
        StatusCode::OK
    );
}

// ===== etcd failures =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_of_three_etcd_members_keeps_writes_working_and_loses_nothing() {
    if !etcd::available() {
        return;
    }
    let mut etcd = Etcd::start(3).await;
    let store = etcd.store_url(&etcd.all(), PREFIX);
    let a = Node::start(&store).await;
    let b = Node::start(&store).await;
    let idle = refused_addr().to_string();
    register(a.admin(), "web", "r1", &idle, json!({"ttl": "0s"})).await;
    register(b.admin(), "web", "r2", &idle, json!({"ttl": "30s"})).await;
    for node in [&a, &b] {
        eventually(PROPAGATION, "both nodes to list r1 and r2", || async {
            sorted_ids(node.admin(), "web").await == ids(&["r1", "r2"])
        })
        .await;
    }

    // Lose the leader: the worst member to lose.
    let lost = etcd.leader().await;
    etcd.kill(lost);
    let survivors: Vec<usize> = etcd.all().into_iter().filter(|&i| i != lost).collect();

    // The first write may wait out the election (or get the 503 meanwhile).
    poll(
        NOTICE,
        "a write to succeed after losing one member of three",
        || {
            let idle = &idle;
            let a = &a;
            async move {
                let resp = try_register(a.admin(), "web", "r3", idle, json!({"ttl": "0s"})).await;
                if resp.status == StatusCode::OK {
                    return Ok(());
                }
                assert_store_unavailable(&resp, "a write while etcd elects a new leader");
                Err(resp.text())
            }
        },
    )
    .await;

    // From then on every write works at the first try, on both nodes.
    let mut want = vec!["r2", "r3"];
    let extra = ["r4", "r5", "r6", "r7", "r8"];
    for (i, id) in extra.iter().enumerate() {
        let node = if i % 2 == 0 { &b } else { &a };
        register(node.admin(), "web", id, &idle, json!({"ttl": "30s"})).await;
        want.push(id);
    }
    assert_eq!(
        heartbeat(a.admin(), "web", "r2").await.status,
        StatusCode::OK
    );
    assert_eq!(
        deregister(b.admin(), "web", "r1").await.status,
        StatusCode::NO_CONTENT
    );

    let want = ids(&want);
    for node in [&a, &b] {
        eventually(
            PROPAGATION,
            "both nodes to list every registration",
            || async { live_ids(node.admin(), "web").await == want },
        )
        .await;
    }
    let want_keys: Vec<String> = want
        .iter()
        .map(|id| instance_key(PREFIX, "web", id))
        .collect();
    let mut keys: Vec<String> = etcd
        .kvs_via(&survivors, &format!("/{PREFIX}/"))
        .await
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    keys.sort();
    assert_eq!(keys, want_keys);

    // The lost member comes back and catches up.
    etcd.restart(lost).await;
    poll(NOTICE, "the restarted member to catch up", || {
        let etcd = &etcd;
        let want_keys = &want_keys;
        async move {
            let mut local: Vec<String> = etcd
                .local_kvs(lost, &format!("/{PREFIX}/"))
                .await?
                .into_iter()
                .map(|kv| kv.key)
                .collect();
            local.sort();
            if local == *want_keys {
                Ok(())
            } else {
                Err(format!("it has {local:?}"))
            }
        }
    })
    .await;
    for node in [&a, &b] {
        assert_eq!(sorted_ids(node.admin(), "web").await, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_keeps_routing_while_all_of_etcd_is_down_and_recovers_without_a_restart() {
    if !etcd::available() {
        return;
    }
    let mut etcd = Etcd::start(1).await;
    let store = etcd.store_url(&etcd.all(), PREFIX);
    let a = Node::start(&store).await;
    let b = Node::start(&store).await;
    let r1 = FakeBackend::start("r1").await;
    let r2 = FakeBackend::start("r2").await;
    let r3 = FakeBackend::start("r3").await;
    let http = Http::new();
    register(a.admin(), "web", "r1", &r1.address(), json!({"ttl": "0s"})).await;
    register(b.admin(), "web", "r2", &r2.address(), json!({"ttl": "60s"})).await;
    for node in [&a, &b] {
        until_routed(
            &http,
            node.proxy(),
            "web",
            &["r1", "r2"],
            PROPAGATION,
            "both nodes route to both",
        )
        .await;
        assert_eq!(node.store_up().await, Some(1.0), "store_up while etcd runs");
    }

    etcd.stop_all();

    for (name, node) in [("A", &a), ("B", &b)] {
        eventually(NOTICE, "store_up to drop to 0", || async {
            node.store_up().await == Some(0.0)
        })
        .await;
        // Routing goes on with what the node last saw.
        assert_eq!(
            answer_set(&http, node.proxy(), "web", 6).await,
            names(&["r1", "r2"]),
            "node {name} routes while etcd is down"
        );
        assert_eq!(node.ready().await, StatusCode::OK, "node {name} /readyz");
        // Writes answer 503 with the JSON error, and change nothing.
        assert_store_unavailable(
            &try_register(node.admin(), "web", "r3", &r3.address(), json!({})).await,
            "PUT while etcd is down",
        );
        assert_store_unavailable(
            &deregister(node.admin(), "web", "r1").await,
            "DELETE while etcd is down",
        );
        assert_store_unavailable(
            &heartbeat(node.admin(), "web", "r2").await,
            "heartbeat while etcd is down",
        );
        assert_eq!(
            sorted_ids(node.admin(), "web").await,
            ids(&["r1", "r2"]),
            "node {name} keeps its registry"
        );
        assert_eq!(
            answer_set(&http, node.proxy(), "web", 6).await,
            names(&["r1", "r2"]),
            "node {name} routes after the refused writes"
        );
    }
    assert_eq!(r3.hits(), 0);

    etcd.restart_all().await;

    for node in [&a, &b] {
        eventually(NOTICE, "store_up back to 1", || async {
            node.store_up().await == Some(1.0)
        })
        .await;
    }
    // Writes work again, and every node follows them again.
    let resp = deregister(b.admin(), "web", "r1").await;
    assert_eq!(
        resp.status,
        StatusCode::NO_CONTENT,
        "DELETE once store_up is back to 1: {}",
        resp.text()
    );
    let answered = Instant::now();
    eventually(PROPAGATION, "node A to drop r1", || async {
        live_ids(a.admin(), "web").await == ["r2"]
    })
    .await;
    register(a.admin(), "web", "r3", &r3.address(), json!({})).await;
    until_routed(
        &http,
        b.proxy(),
        "web",
        &["r2", "r3"],
        PROPAGATION,
        "B routes to the new one",
    )
    .await;
    until_routed(
        &http,
        a.proxy(),
        "web",
        &["r2", "r3"],
        PROPAGATION
            .saturating_sub(answered.elapsed())
            .max(Duration::from_millis(500)),
        "A routes without r1",
    )
    .await;
    // The 60 s lease survived the outage.
    assert_eq!(
        heartbeat(a.admin(), "web", "r2").await.status,
        StatusCode::OK
    );
}

/// A node whose only etcd endpoint is one member of three is cut off when
/// that member stops, while the other node and etcdctl go on through the
/// other two: removals made meanwhile must reach it when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_etcd_keeps_routing_and_catches_up_with_removals_made_meanwhile() {
    if !etcd::available() {
        return;
    }
    let mut etcd = Etcd::start(3).await;
    // A's only endpoint is a follower: losing it needs no election, so B
    // and etcdctl go on at once through the other two.
    let cut = (etcd.leader().await + 1) % 3;
    let rest: Vec<usize> = etcd.all().into_iter().filter(|&i| i != cut).collect();
    let a = Node::start(&etcd.store_url(&[cut], PREFIX)).await;
    let b = Node::start(&etcd.store_url(&rest, PREFIX)).await;
    let backends = [
        FakeBackend::start("r1").await,
        FakeBackend::start("r2").await,
        FakeBackend::start("r3").await,
        FakeBackend::start("r4").await,
        FakeBackend::start("r5").await,
    ];
    let http = Http::new();
    register(
        b.admin(),
        "web",
        "r1",
        &backends[0].address(),
        json!({"ttl": "0s"}),
    )
    .await;
    register(
        b.admin(),
        "web",
        "r2",
        &backends[1].address(),
        json!({"ttl": "60s"}),
    )
    .await;
    register(
        a.admin(),
        "web",
        "r3",
        &backends[2].address(),
        json!({"ttl": "0s"}),
    )
    .await;
    for node in [&a, &b] {
        until_routed(
            &http,
            node.proxy(),
            "web",
            &["r1", "r2", "r3"],
            PROPAGATION,
            "both nodes route to all three",
        )
        .await;
    }

    etcd.kill(cut);

    eventually(NOTICE, "node A's store_up to drop to 0", || async {
        a.store_up().await == Some(0.0)
    })
    .await;
    assert_eq!(b.store_up().await, Some(1.0), "node B still reaches etcd");
    assert_eq!(a.ready().await, StatusCode::OK);
    assert_store_unavailable(
        &try_register(a.admin(), "web", "r9", &backends[4].address(), json!({})).await,
        "PUT on the cut-off node",
    );
    assert_store_unavailable(
        &deregister(a.admin(), "web", "r3").await,
        "DELETE on the cut-off node",
    );
    assert_store_unavailable(
        &heartbeat(a.admin(), "web", "r2").await,
        "heartbeat on the cut-off node",
    );

    // Meanwhile, through the rest of the cluster: a DELETE on B, a key
    // deleted with etcdctl, a new registration.
    assert_eq!(
        deregister(b.admin(), "web", "r1").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        etcd.delete_via(&rest, &instance_key(PREFIX, "web", "r2"))
            .await,
        1,
        "etcdctl del"
    );
    register(
        b.admin(),
        "web",
        "r4",
        &backends[3].address(),
        json!({"ttl": "0s"}),
    )
    .await;
    until_routed(
        &http,
        b.proxy(),
        "web",
        &["r3", "r4"],
        PROPAGATION,
        "B follows the changes",
    )
    .await;

    // A cannot know: it keeps routing with what it last saw.
    assert_eq!(sorted_ids(a.admin(), "web").await, ids(&["r1", "r2", "r3"]));
    assert_eq!(
        answer_set(&http, a.proxy(), "web", 8).await,
        names(&["r1", "r2", "r3"]),
        "the cut-off node keeps routing"
    );

    etcd.restart(cut).await;

    eventually(NOTICE, "node A's store_up back to 1", || async {
        a.store_up().await == Some(1.0)
    })
    .await;
    eventually(
        NOTICE,
        "node A to catch up (r1, r2 removed; r4 added)",
        || async { sorted_ids(a.admin(), "web").await == ids(&["r3", "r4"]) },
    )
    .await;
    until_routed(
        &http,
        a.proxy(),
        "web",
        &["r3", "r4"],
        PROPAGATION,
        "A routes by the caught-up registry",
    )
    .await;
    let hits: Vec<usize> = backends.iter().map(FakeBackend::hits).collect();
    assert_eq!(
        answer_set(&http, a.proxy(), "web", 6).await,
        names(&["r3", "r4"])
    );
    assert_eq!(
        backends[0].hits(),
        hits[0],
        "r1 got a request after the catch-up"
    );
    assert_eq!(
        backends[1].hits(),
        hits[1],
        "r2 got a request after the catch-up"
    );

    // And A writes again.
    register(a.admin(), "web", "r5", &backends[4].address(), json!({})).await;
    until_routed(
        &http,
        b.proxy(),
        "web",
        &["r3", "r4", "r5"],
        PROPAGATION,
        "B routes to A's new registration",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_at_start_up_exits_after_the_dial_timeout_naming_the_endpoints() {
    // One endpoint refuses connections, the other accepts them (kernel
    // backlog) and never says a word.
    let refused = refused_addr();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let dial_timeout = Duration::from_secs(2);
    let toml = format!(
        "{}[registry]\nstore = \"etcd://{refused},{silent_addr}/{PREFIX}\"\n\n[registry.etcd]\ndial_timeout = \"2s\"\n",
        base_toml()
    );
    let config = ConfigFile::new(&toml);
    let started = Instant::now();
    let out = run_binary(&["serve", "--config", &config.path_str()]).await;
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve must fail; stderr:\n{stderr}");
    assert!(
        took < dial_timeout + Duration::from_secs(4),
        "serve took {took:?} to give up (dial_timeout {dial_timeout:?}); stderr:\n{stderr}"
    );
    let named: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(&refused.to_string()) && l.contains(&silent_addr.to_string()))
        .collect();
    assert!(
        !named.is_empty(),
        "no stderr line names both endpoints ({refused}, {silent_addr}):\n{stderr}"
    );
    drop(silent);
}

// ===== prefixes, blocking queries, draining =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_different_prefixes_of_one_etcd_are_independent() {
    if !etcd::available() {
        return;
    }
    let etcd = Etcd::start(1).await;
    // "team" is a string prefix of "team-b": the keys must not mix.
    let a = Node::start(&etcd.store_url(&[0], "team")).await;
    let b = Node::start(&etcd.store_url(&[0], "team-b")).await;
    let c = Node::start(&etcd.store_url(&[0], "team")).await;
    let ta = FakeBackend::start("ta").await;
    let tb = FakeBackend::start("tb").await;
    let http = Http::new();
    let on_a = register(a.admin(), "web", "r1", &ta.address(), json!({"ttl": "0s"})).await;
    let on_b = register(b.admin(), "web", "r1", &tb.address(), json!({"ttl": "0s"})).await;

    // C shares A's prefix: it follows A.
    until_routed(
        &http,
        c.proxy(),
        "web",
        &["ta"],
        PROPAGATION,
        "C routes to A's registration",
    )
    .await;
    until_routed(
        &http,
        a.proxy(),
        "web",
        &["ta"],
        PROPAGATION,
        "A routes to its registration",
    )
    .await;
    assert_eq!(answer_set(&http, b.proxy(), "web", 4).await, names(&["tb"]));
    assert_eq!(
        listed(b.admin(), "web").await[0]["address"],
        tb.address().as_str()
    );
    assert_eq!(
        listed(c.admin(), "web").await[0]["address"],
        ta.address().as_str()
    );

    let team = etcd.kvs("/team/").await;
    assert_eq!(team.len(), 1, "{team:?}");
    assert_eq!(team[0].key, instance_key("team", "web", "r1"));
    assert_stored_like(&team[0], &on_a);
    let team_b = etcd.kvs("/team-b/").await;
    assert_eq!(team_b.len(), 1, "{team_b:?}");
    assert_eq!(team_b[0].key, instance_key("team-b", "web", "r1"));
    assert_stored_like(&team_b[0], &on_b);

    // A removal on A's prefix reaches C, not B.
    assert_eq!(
        deregister(a.admin(), "web", "r1").await.status,
        StatusCode::NO_CONTENT
    );
    eventually(PROPAGATION, "C to drop r1", || async {
        live_ids(c.admin(), "web").await.is_empty()
    })
    .await;
    // An addition on B's prefix reaches neither A nor C.
    let tb2 = FakeBackend::start("tb2").await;
    register(b.admin(), "web", "r2", &tb2.address(), json!({"ttl": "0s"})).await;
    // A later write on A's prefix: once C has it, C has seen every change
    // before it (etcd delivers a watch in revision order), r2 included had
    // it leaked across prefixes.
    let marker = refused_addr().to_string();
    register(a.admin(), "marker", "m1", &marker, json!({"ttl": "0s"})).await;
    eventually(PROPAGATION, "C to list the later marker", || async {
        sorted_ids(c.admin(), "marker").await == ["m1"]
    })
    .await;
    assert_eq!(sorted_ids(b.admin(), "web").await, ids(&["r1", "r2"]));
    assert!(sorted_ids(a.admin(), "web").await.is_empty());
    assert!(sorted_ids(c.admin(), "web").await.is_empty());
    assert!(sorted_ids(b.admin(), "marker").await.is_empty());
    assert_eq!(
        deregister(a.admin(), "marker", "m1").await.status,
        StatusCode::NO_CONTENT
    );
    // B routes to its own r1, and r2 (once its table is republished).
    until_routed(
        &http,
        b.proxy(),
        "web",
        &["tb", "tb2"],
        PROPAGATION,
        "B routes to its own r1, and r2",
    )
    .await;
    for node in [&a, &c] {
        let resp = http.get(node.proxy(), "/web/x").await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND, "{}", resp.text());
    }
    assert_eq!(etcd.keys("/team/").await, Vec::<String>::new());
}

/// `X-Switchyard-Index` of a discovery answer.
fn index_of(resp: &Resp) -> u64 {
    resp.header("x-switchyard-index")
        .unwrap_or_else(|| panic!("no x-switchyard-index: {:?}", resp.headers))
        .parse()
        .unwrap()
}

/// Starts a blocking GET on `addr`; it yields the answer and when it came.
fn blocking_get(addr: SocketAddr, path: String) -> tokio::task::JoinHandle<(Resp, Instant)> {
    tokio::spawn(async move {
        let resp = get(addr, &path).await;
        (resp, Instant::now())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_query_on_one_node_wakes_on_a_change_made_on_another() {
    if !etcd::available() {
        return;
    }
    let etcd = Etcd::start(1).await;
    let store = etcd.store_url(&etcd.all(), PREFIX);
    let a = Node::start(&store).await;
    let b = Node::start(&store).await;
    let idle = refused_addr().to_string();
    register(a.admin(), "web", "r0", &idle, json!({"ttl": "0s"})).await;
    eventually(PROPAGATION, "B to list r0", || async {
        sorted_ids(b.admin(), "web").await == ["r0"]
    })
    .await;

    // A registration on A wakes a query on B.
    let index = index_of(&get(b.admin(), "/v1/services/web").await);
    let waiter = blocking_get(b.admin(), format!("/v1/services/web?index={index}&wait=5s"));
    // The pause the query must span without an answer (what is tested).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the query did not wait");
    register(a.admin(), "web", "r1", &idle, json!({"ttl": "0s"})).await;
    let answered = Instant::now();
    let (resp, at) = waiter.await.unwrap();
    assert!(
        at.saturating_duration_since(answered) < PROPAGATION,
        "woke {:?} after the registration",
        at.saturating_duration_since(answered)
    );
    assert_eq!(resp.status, StatusCode::OK);
    let next = index_of(&resp);
    assert!(next > index, "{index} -> {next}");
    let listed: Vec<String> = resp.json()["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(listed.iter().any(|id| id == "r1"), "{listed:?}");

    // A DELETE on A wakes a query on B, also on /v1/services.
    let index = index_of(&get(b.admin(), "/v1/services").await);
    let waiter = blocking_get(b.admin(), format!("/v1/services?index={index}&wait=5s"));
    // The pause the query must span without an answer (what is tested).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the query did not wait");
    assert_eq!(
        deregister(a.admin(), "web", "r0").await.status,
        StatusCode::NO_CONTENT
    );
    let answered = Instant::now();
    let (resp, at) = waiter.await.unwrap();
    assert!(at.saturating_duration_since(answered) < PROPAGATION);
    assert_eq!(resp.status, StatusCode::OK);
    assert!(index_of(&resp) > index, "{index}: {}", resp.text());
    // Woken means applied: r0 is out of balancing on B.
    assert_eq!(live_ids(b.admin(), "web").await, ["r1"]);

    // Nothing changes: the query waits out its `wait` on either node.
    for node in [&a, &b] {
        let index = index_of(&get(node.admin(), "/v1/services/web").await);
        let started = Instant::now();
        let resp = get(
            node.admin(),
            &format!("/v1/services/web?index={index}&wait=1s"),
        )
        .await;
        assert!(
            started.elapsed() >= Duration::from_millis(950),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(index_of(&resp), index);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_does_not_wake_a_blocking_query_on_another_node() {
    if !etcd::available() {
        return;
    }
    let etcd = Etcd::start(1).await;
    let store = etcd.store_url(&etcd.all(), PREFIX);
    let a = Node::start(&store).await;
    let b = Node::start(&store).await;
    register(
        a.admin(),
        "web",
        "r1",
        &refused_addr().to_string(),
        json!({"ttl": "10s"}),
    )
    .await;
    eventually(PROPAGATION, "B to list r1", || async {
        sorted_ids(b.admin(), "web").await == ["r1"]
    })
    .await;
    // README: the index advances on registration changes, not on heartbeats.
    let index = index_of(&get(b.admin(), "/v1/services/web").await);
    let started = Instant::now();
    let waiter = blocking_get(b.admin(), format!("/v1/services/web?index={index}&wait=2s"));
    for _ in 0..3 {
        // Heartbeats spread over the query's wait (what is tested).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            heartbeat(a.admin(), "web", "r1").await.status,
            StatusCode::OK
        );
    }
    let (resp, at) = waiter.await.unwrap();
    assert!(
        at.duration_since(started) >= Duration::from_millis(1900),
        "a heartbeat woke the query after {:?}",
        at.duration_since(started)
    );
    assert_eq!(index_of(&resp), index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_requests_in_flight_lists_a_removed_instance_as_draining() {
    if !etcd::available() {
        return;
    }
    let etcd = Etcd::start(1).await;
    let store = etcd.store_url(&etcd.all(), PREFIX);
    let a = Node::start(&store).await;
    let b = Node::start(&store).await;
    let slow = FakeBackend::start("slow").await;
    let other = FakeBackend::start("other").await;
    let http = Http::new();
    register(
        a.admin(),
        "web",
        "slow",
        &slow.address(),
        json!({"ttl": "0s"}),
    )
    .await;
    until_routed(
        &http,
        b.proxy(),
        "web",
        &["slow"],
        PROPAGATION,
        "B routes to slow",
    )
    .await;
    let in_flight = {
        let http = http.clone();
        let proxy = b.proxy();
        tokio::spawn(async move { http.get(proxy, "/web/x?hold=1").await })
    };
    eventually(WAIT, "the request through B to be held", || async {
        slow.held() == 1
    })
    .await;
    register(
        a.admin(),
        "web",
        "other",
        &other.address(),
        json!({"ttl": "0s"}),
    )
    .await;
    assert_eq!(
        deregister(a.admin(), "web", "slow").await.status,
        StatusCode::NO_CONTENT
    );

    // A has nothing in flight on it: out at once, and soon unlisted.
    assert_eq!(live_ids(a.admin(), "web").await, ["other"]);
    let on_a = listed(a.admin(), "web").await;
    assert!(
        on_a.iter()
            .all(|i| i["id"] != "slow" || i["active_requests"] == 0),
        "A has nothing in flight on slow: {on_a:?}"
    );
    eventually(PROPAGATION, "A to stop listing slow", || async {
        sorted_ids(a.admin(), "web").await == ["other"]
    })
    .await;
    // B still has the request in flight: draining there, within a second.
    eventually(PROPAGATION, "B to list slow as draining", || async {
        listed(b.admin(), "web")
            .await
            .iter()
            .any(|i| i["id"] == "slow" && i["draining"] == true && i["active_requests"] == 1)
    })
    .await;
    until_routed(
        &http,
        b.proxy(),
        "web",
        &["other"],
        PROPAGATION,
        "B sends new requests elsewhere",
    )
    .await;
    assert_eq!(
        answer_set(&http, b.proxy(), "web", 4).await,
        names(&["other"])
    );
    assert!(listed(b.admin(), "web")
        .await
        .iter()
        .any(|i| i["id"] == "slow" && i["draining"] == true));

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
        "the drained instance to leave B's list",
        || async { sorted_ids(b.admin(), "web").await == ["other"] },
    )
    .await;
}
