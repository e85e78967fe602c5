//! Resilience end to end, part 3: the stale keep-alive race. A backend
//! closes an idle pooled connection just as Switchyard reuses it; that must
//! never reach the client as an error, for GET or POST. One test runs the
//! realistic race (idle close after 1 s, requests jittered around it); a
//! deterministic backend that drops every reused connection right after the
//! next request head shows the retry that saves it, and that without retries
//! the race does reach the client (so the tests can catch it).

mod resilience_raw;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use resilience_raw::*;
use support::*;

// ===== the stale keep-alive race =====

/// GET and POST (small body) through a backend that closes idle connections
/// after 1 s without saying so, at intervals jittered around that second:
/// no client may see an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_closed_by_the_backend_never_reach_the_client() {
    let backend = RawBackend::start(Script::IdleClose(Duration::from_secs(1))).await;
    let app = start_app(&(base_toml() + &service("svc", &addresses(&[&backend]), ""))).await;
    let http = Http::new();
    // Offsets around the backend's 1 s idle close, in ms.
    let jitter: [i64; 12] = [-40, 30, -15, 10, -5, 0, 5, 150, -2, 2, 60, -60];
    let mut errors = Vec::new();
    for (i, offset) in jitter.iter().enumerate() {
        match http.try_get(app.proxy, &format!("/svc/get{i}")).await {
            Ok(r) if r.status == 200 && r.text() == "0" => {}
            other => errors.push(format!("GET #{i}: {other:?}")),
        }
        match http
            .send(post(
                app.proxy,
                &format!("/svc/post{i}"),
                b"0123456789abcdef",
            ))
            .await
        {
            Ok(r) if r.status == 200 && r.text() == "16" => {}
            other => errors.push(format!("POST #{i}: {other:?}")),
        }
        // Idle past the backend's keep-alive timeout on purpose: what is tested.
        tokio::time::sleep(Duration::from_millis((1000 + offset) as u64)).await;
    }
    assert!(errors.is_empty(), "client errors: {errors:#?}");
    assert_eq!(backend.count("GET"), 12);
    assert_eq!(backend.count("POST"), 12, "a POST was lost or duplicated");
    // Proof that the backend really dropped connections under the proxy.
    assert!(
        backend.get(|s| &s.idle_closes) >= 1 && backend.get(|s| &s.connections) >= 2,
        "the backend never closed an idle connection (closes {}, connections {})",
        backend.get(|s| &s.idle_closes),
        backend.get(|s| &s.connections)
    );
}

/// Sends `rounds` × (GET, POST) one after another; returns the failures.
async fn stale_rounds(proxy: SocketAddr, rounds: usize) -> Vec<String> {
    let http = Http::new();
    let mut failures = Vec::new();
    for i in 0..rounds {
        match http.try_get(proxy, &format!("/svc/get{i}")).await {
            Ok(r) if r.status == 200 && r.text() == "0" => {}
            Ok(r) => failures.push(format!("GET #{i}: {} {:?}", r.status, r.reason())),
            Err(e) => failures.push(format!("GET #{i}: {e}")),
        }
        match http
            .send(post(proxy, &format!("/svc/post{i}"), b"payload"))
            .await
        {
            Ok(r) if r.status == 200 && r.text() == "7" => {}
            Ok(r) => failures.push(format!("POST #{i}: {} {:?}", r.status, r.reason())),
            Err(e) => failures.push(format!("POST #{i}: {e}")),
        }
    }
    failures
}

/// The race's worst case on every reused connection: the backend reads the
/// next request head, then closes. Nothing was processed, so any method is
/// retried, on a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_closed_before_the_answer_is_retried_for_get_and_post() {
    let backend = RawBackend::start(Script::CloseOnReuse).await;
    let app = start_app(&(base_toml() + &service("svc", &addresses(&[&backend]), ""))).await;
    let failures = stale_rounds(app.proxy, 5).await;
    assert!(failures.is_empty(), "client errors: {failures:#?}");
    let dropped = backend.get(|s| &s.dropped_on_reuse);
    assert!(dropped >= 5, "the race was not exercised: {dropped} drops");
    assert_eq!(backend.count("GET"), 5);
    assert_eq!(backend.count("POST"), 5, "a POST was lost or duplicated");
    let metrics = metrics_text(app.admin).await;
    assert!(retries(&metrics, "svc") >= dropped as f64, "{metrics}");
}

/// The same backend with retries switched off: the race reaches the client,
/// which proves the tests above catch it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_the_stale_connection_race_reaches_the_client() {
    let backend = RawBackend::start(Script::CloseOnReuse).await;
    let extra = "[services.svc.retry]\nattempts = 0\n";
    let app = start_app(&(base_toml() + &service("svc", &addresses(&[&backend]), extra))).await;
    let failures = stale_rounds(app.proxy, 3).await;
    assert!(
        !failures.is_empty(),
        "with attempts = 0 a request on a dropped reused connection must fail"
    );
    assert!(
        failures.iter().all(|f| f.contains("502")),
        "failures should be 502s: {failures:#?}"
    );
}
