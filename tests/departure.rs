//! Exact departure (issue 9 item 7, SPEC §3): once a DELETE has been
//! answered, or an instance's lease's time is up, no new request goes to it
//! on that node: not "shortly after", not one request later. Checked on the
//! memory store and on the file store (`store = "file:..."`), with a fake
//! backend per instance recording what reached it.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use http::StatusCode;
use serde_json::{json, Value};
use support::*;

/// Register → delete → request cycles per store.
const DELETE_CYCLES: usize = 50;
/// Rounds of leases per store, and leases ending in each round.
const LEASE_ROUNDS: usize = 5;
const LEASES_PER_ROUND: usize = 4;
/// `expires_at` is printed to the millisecond (rounded down): requests sent
/// this long after the printed end are after the real one.
const END_SLACK: Duration = Duration::from_millis(2);

async fn register_ttl(
    addr: SocketAddr,
    service: &str,
    id: &str,
    address: &str,
    ttl: &str,
) -> Value {
    register(addr, service, id, address, json!({"ttl": ttl})).await
}

/// Sends requests until `backend` has received one (it is balanced).
async fn until_it_gets_traffic(
    http: &Http,
    proxy: SocketAddr,
    service: &str,
    backend: &FakeBackend,
) {
    eventually(
        Duration::from_secs(1),
        &format!(
            "{} to get traffic (a registration joins within 1 s)",
            backend.name
        ),
        || async {
            let _ = answered_by(http, proxy, service).await;
            backend.hits() > 0
        },
    )
    .await;
}

fn memory_toml() -> String {
    base_toml()
}

fn file_toml(dir: &tempfile::TempDir) -> String {
    format!(
        "{}[registry]\nstore = \"file:{}\"\n",
        base_toml(),
        dir.path().join("registry.json").display()
    )
}

/// `cycles` times: a new instance joins next to the survivor `stay`,
/// gets traffic, is deleted; the two requests sent right after the 204
/// (round robin would give one of them to it if it were still balanced)
/// both reach `stay`, and the deleted one receives nothing more.
async fn no_request_after_the_delete_is_answered(
    admin: SocketAddr,
    proxy: SocketAddr,
    cycles: usize,
) {
    let http = Http::new();
    let stay = FakeBackend::start("stay").await;
    register_ttl(admin, "web", "stay", &stay.address(), "0s").await;
    until_it_gets_traffic(&http, proxy, "web", &stay).await;

    for i in 0..cycles {
        let id = format!("leave{i}");
        let leaving = FakeBackend::start(&id).await;
        register_ttl(admin, "web", &id, &leaving.address(), "30s").await;
        until_it_gets_traffic(&http, proxy, "web", &leaving).await;

        let resp = deregister(admin, "web", &id).await;
        assert_eq!(resp.status, StatusCode::NO_CONTENT, "{}", resp.text());
        let hits = leaving.hits();
        for n in 0..2 {
            let by = answered_by(&http, proxy, "web").await;
            assert_eq!(
                by.as_deref(),
                Some("stay"),
                "cycle {i}: request {n} right after the 204"
            );
        }
        assert_eq!(
            leaving.hits(),
            hits,
            "cycle {i}: a request reached {id} after its DELETE was answered"
        );
    }
}

/// `LEASE_ROUNDS` rounds of `LEASES_PER_ROUND` instances with `"ttl":
/// "2s"` (short, yet long enough to join under load) next to `stay`: requests flow without pause
/// from their registration until past the last end; each request is noted
/// with the wall-clock time it was sent, and none sent after an instance's
/// `expires_at` may have reached that instance.
async fn no_request_after_the_lease_ends(app: &TestApp) {
    let http = Http::new();
    let stay = FakeBackend::start("stay").await;
    register_ttl(app.admin, "web", "stay", &stay.address(), "0s").await;
    until_it_gets_traffic(&http, app.proxy, "web", &stay).await;

    for round in 0..LEASE_ROUNDS {
        let mut leases: Vec<(String, FakeBackend, SystemTime)> = Vec::new();
        for k in 0..LEASES_PER_ROUND {
            let id = format!("lease{round}-{k}");
            let backend = FakeBackend::start(&id).await;
            let stored = register_ttl(app.admin, "web", &id, &backend.address(), "2s").await;
            assert_eq!(stored["ttl"], "2s");
            let end = expires_at(&stored);
            leases.push((id, backend, end));
        }
        let last_end = leases.iter().map(|(_, _, end)| *end).max().unwrap();
        let stop = SystemTime::now() + Duration::from_secs(5);
        let mut sent: Vec<(SystemTime, Option<String>)> = Vec::new();
        let started = Instant::now();
        while SystemTime::now() < last_end + Duration::from_millis(300) {
            assert!(
                SystemTime::now() < stop && started.elapsed() < Duration::from_secs(5),
                "round {round}: the leases should have ended by now"
            );
            let at = SystemTime::now();
            let by = answered_by(&http, app.proxy, "web").await;
            sent.push((at, by));
            // The pace of the request loop (bounded by the lease ends), not a wait.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }

        for (id, backend, end) in &leases {
            let before = sent
                .iter()
                .filter(|(at, by)| at < end && by.as_deref() == Some(id.as_str()))
                .count();
            assert!(
                before > 0 && backend.hits() > 0,
                "round {round}: {id} got no traffic during its lease"
            );
            let late: Vec<Duration> = sent
                .iter()
                .filter(|(at, by)| *at >= *end + END_SLACK && by.as_deref() == Some(id.as_str()))
                .map(|(at, _)| at.duration_since(*end).unwrap())
                .collect();
            assert!(
                late.is_empty(),
                "round {round}: requests reached {id} this long after its lease ended: {late:?}"
            );
        }
        // The survivor took the rest.
        assert_eq!(
            answered_by(&http, app.proxy, "web").await.as_deref(),
            Some("stay")
        );
        let resp = get(app.admin, "/v1/services/web").await;
        let listed: Vec<Value> = resp.json()["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(listed.len(), 1, "round {round}: {listed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_no_request_reaches_an_instance_after_its_delete_is_answered() {
    let app = start_app(&memory_toml()).await;
    no_request_after_the_delete_is_answered(app.admin, app.proxy, DELETE_CYCLES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_no_request_reaches_an_instance_after_its_delete_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let app = start_app(&file_toml(&dir)).await;
    no_request_after_the_delete_is_answered(app.admin, app.proxy, DELETE_CYCLES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_no_request_reaches_an_instance_after_its_lease_ends() {
    let app = start_app(&memory_toml()).await;
    no_request_after_the_lease_ends(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_no_request_reaches_an_instance_after_its_lease_ends() {
    let dir = tempfile::tempdir().unwrap();
    let app = start_app(&file_toml(&dir)).await;
    no_request_after_the_lease_ends(&app).await;
}

/// The same on the real binary, where the admin API and the proxy do not
/// share the test's runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_sends_no_request_after_a_delete_is_answered() {
    let config = ConfigFile::new(&memory_toml());
    let proc = spawn_serve(&config).await;
    no_request_after_the_delete_is_answered(proc.admin, proc.proxy(), 20).await;
}
