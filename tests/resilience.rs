//! Resilience end to end, part 1: instances fail and the next request should
//! not notice. A backend killed under load, the retry budget when everything
//! fails, replayable request bodies, per-backend request limits and the panic
//! threshold. Real sockets on 127.0.0.1, the real app in-process; every wait
//! is bounded and the only time checks are generous liveness bounds. Backends
//! that misbehave on the wire (hang, reset, garbage, stale keep-alive) are in
//! `resilience_faults.rs`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;

use support::*;

// ===== small helpers =====

/// A backend that answers with the request body, and `/healthz` with the
/// status the test sets (`set_health`).
async fn echo_backend(name: &str) -> FakeBackend {
    FakeBackend::builder(name)
        .echo_body()
        .health("/healthz", 200)
        .start()
        .await
}

/// `n` bytes that differ from position to position (a shifted copy shows).
fn pattern(n: usize) -> Bytes {
    (0..n)
        .map(|i| (i * 7 % 253) as u8)
        .collect::<Vec<u8>>()
        .into()
}

// ===== a backend killed under load =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_in_the_middle_of_a_load_fails_no_request() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let c = FakeBackend::start("c").await;
    let extra = "[services.svc.retry]\nattempts = 2\n";
    let app = start_app(&(base_toml() + &service_toml("svc", &[&a, &b, &c], extra))).await;
    let proxy = app.proxy;
    const TOTAL: usize = 300;

    let load = tokio::spawn(async move {
        let http = Http::new();
        let (mut who, mut failures) = (Vec::new(), Vec::new());
        for i in 0..TOTAL {
            // Paced, so that the kill lands mid-run even in a fast release build.
            tokio::time::sleep(Duration::from_millis(3)).await;
            match http.try_get(proxy, &format!("/svc/r{i}")).await {
                Ok(r) if r.status == 200 => who.push(r.backend().unwrap_or("?").to_string()),
                Ok(r) => failures.push(format!("#{i}: {} {:?}", r.status, r.reason())),
                Err(e) => failures.push(format!("#{i}: {e}")),
            }
        }
        (who, failures)
    });
    eventually(WAIT, "a third of the load to be served", || async {
        a.hits() + b.hits() + c.hits() >= TOTAL / 3
    })
    .await;
    let b_hits = b.hits();
    drop(b); // listener and every connection closed, mid-run
    let (who, failures) = tokio::time::timeout(Duration::from_secs(20), load)
        .await
        .expect("the load did not finish")
        .expect("load task");

    assert!(failures.is_empty(), "failed requests: {failures:#?}");
    assert_eq!(who.len(), TOTAL);
    let counts = tally(&who);
    let from_b = counts.get("b").copied().unwrap_or(0);
    assert!(
        from_b <= b_hits + 1,
        "b answered {from_b} after {b_hits} hits"
    );
    assert_eq!(
        counts.get("a").copied().unwrap_or(0) + counts.get("c").copied().unwrap_or(0),
        TOTAL - from_b,
        "answers {counts:?}"
    );
    assert!(a.hits() >= TOTAL / 3 && c.hits() >= TOTAL / 3, "{counts:?}");
    // Without outlier detection the dead backend stays in rotation: the
    // requests that picked it first were retried, not failed.
    let metrics = metrics_text(app.admin).await;
    assert!(
        retries(&metrics, "svc") >= 1.0,
        "no retry: was b killed mid-run?"
    );
}

// ===== the retry budget =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_attempts_when_every_backend_fails() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let c = FakeBackend::start("c").await;
    let refused = format!(
        "[\"{}\", \"{}\", \"{}\"]",
        refused_addr(),
        refused_addr(),
        refused_addr()
    );
    let retry = |svc: &str| format!("[services.{svc}.retry]\nattempts = 2\nbudget_percent = 0\n");
    let toml = base_toml()
        + &service_toml("busy", &[&a, &b, &c], &retry("busy"))
        + &format!("[services.down]\nbackends = {refused}\n{}\n", retry("down"));
    let app = start_app(&toml).await;
    let http = Http::new();
    const N: usize = 150;
    // The budget's floor: 10 retries per second over a 10 s window (its
    // one-second buckets make a window span 9 to 10 s).
    let floor = |took: Duration| 100 * (took.as_secs() as usize / 9 + 1);

    // Every backend answers 503 (retryable) ...
    let started = Instant::now();
    for i in 0..N {
        let resp = http.get(app.proxy, &format!("/busy/r{i}?status=503")).await;
        assert_eq!(resp.status, 503, "#{i}: {:?}", resp.text());
        assert!(resp.backend().is_some(), "#{i}: the backend's own 503");
    }
    let took = started.elapsed();
    let attempts = a.hits() + b.hits() + c.hits();
    let metrics = metrics_text(app.admin).await;
    let counted = retries(&metrics, "busy") as usize;
    assert_eq!(
        attempts - N,
        counted,
        "retries at the backends vs the metric"
    );
    assert!(counted >= 1, "the floor allows some retries");
    assert!(
        attempts <= N + floor(took),
        "{attempts} attempts for {N} requests in {took:?}; budget allows {}",
        N + floor(took)
    );

    // ... or refuses connections (nothing sent: retryable for any method).
    let started = Instant::now();
    for i in 0..N {
        let resp = http.get(app.proxy, &format!("/down/r{i}")).await;
        assert_eq!(resp.status, 502, "#{i}: {:?}", resp.text());
        assert_eq!(resp.reason(), Some("backend connect failed"));
    }
    let took = started.elapsed();
    let metrics = metrics_text(app.admin).await;
    let attempts = metric(
        &metrics,
        "switchyard_backend_requests_total",
        &[("service", "down")],
    )
    .unwrap_or(0.0) as usize;
    let counted = retries(&metrics, "down") as usize;
    assert_eq!(
        attempts - N,
        counted,
        "attempts vs switchyard_retries_total"
    );
    assert!(counted >= 1, "the floor allows some retries");
    assert!(
        attempts <= N + floor(took),
        "{attempts} attempts for {N} requests in {took:?}; budget allows {}",
        N + floor(took)
    );
}

// ===== replayable request bodies =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_survive_a_refused_first_try_and_large_ones_stream_intact() {
    let echo = echo_backend("echo").await;
    let flaky = format!("[\"{}\", \"{}\"]", refused_addr(), echo.address());
    let toml = base_toml()
        + &format!("[services.flaky]\nbackends = {flaky}\n\n")
        + &format!("[services.direct]\nbackends = [\"{}\"]\n\n", echo.address());
    let app = start_app(&toml).await;
    let http = Http::new();
    let send = |path: &str, body: &Bytes| {
        let req = request(Method::POST, app.proxy, path)
            .body(full(body.clone()))
            .expect("request");
        http.send(req)
    };

    // Small bodies (under buffer_bytes): round robin sends every other one
    // to the refused address first; the retry carries the whole body.
    let small = pattern(1000);
    for i in 0..4 {
        let resp = send(&format!("/flaky/small{i}"), &small)
            .await
            .expect("POST");
        assert_eq!(resp.status, 200, "#{i}: {:?}", resp.reason());
        assert_eq!(resp.backend(), Some("echo"));
        assert!(resp.body == small, "#{i}: body changed on the way");
    }
    assert_eq!(echo.hits(), 4, "each POST reached the backend exactly once");
    let metrics = metrics_text(app.admin).await;
    assert!(retries(&metrics, "flaky") >= 1.0, "no retry happened");

    // A body over buffer_bytes (64 KiB) needs no buffering when nothing fails.
    let large = pattern(300 * 1024);
    let resp = send("/direct/large", &large).await.expect("POST");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), large.len());
    assert!(resp.body == large, "large body changed on the way");

    // A refused connection sent nothing, so even a large body is still whole.
    for i in 0..2 {
        let resp = send(&format!("/flaky/large{i}"), &large)
            .await
            .expect("POST");
        assert_eq!(resp.status, 200, "#{i}: {:?}", resp.reason());
        assert!(resp.body == large, "#{i}: large body changed on the way");
    }
}

// ===== per-backend request limit =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_at_its_request_limit_gets_a_fast_503_or_is_skipped() {
    let solo = FakeBackend::start("solo").await;
    let p = FakeBackend::start("p").await;
    let q = FakeBackend::start("q").await;
    let limit = "max_requests_per_backend = 1\n";
    let toml = base_toml()
        + &service_toml("one", &[&solo], limit)
        + &service_toml("two", &[&p, &q], limit);
    let app = start_app(&toml).await;
    let http = Http::new();

    // One backend, busy: a fast 503, not a queue.
    let client = http.clone();
    let proxy = app.proxy;
    let held = tokio::spawn(async move { client.get(proxy, "/one/held?hold=1").await });
    eventually(WAIT, "the first request to be held", || async {
        solo.held() == 1
    })
    .await;
    let started = Instant::now();
    let resp = http.get(app.proxy, "/one/next").await;
    let took = started.elapsed();
    assert_eq!(resp.status, 503, "{:?}", resp.text());
    assert_eq!(resp.reason(), Some("backend limit reached"));
    assert!(resp.header("retry-after").is_some(), "{:?}", resp.headers);
    assert!(took < Duration::from_secs(2), "503 took {took:?}");
    assert_eq!(
        solo.hits(),
        1,
        "the refused request must not reach the backend"
    );
    solo.release(1);
    let resp = held.await.expect("held request");
    assert_eq!(resp.status, 200);
    eventually(WAIT, "the backend to take requests again", || async {
        http.get(app.proxy, "/one/again").await.status == 200
    })
    .await;

    // Two backends, one busy: requests go to the free one.
    let client = http.clone();
    let held = tokio::spawn(async move { client.get(proxy, "/two/held?hold=1").await });
    eventually(WAIT, "a request to be held", || async {
        p.held() + q.held() == 1
    })
    .await;
    let (busy, free) = if p.held() == 1 { (&p, &q) } else { (&q, &p) };
    for i in 0..4 {
        let resp = http.get(app.proxy, &format!("/two/free{i}")).await;
        assert_eq!(resp.status, 200, "#{i}: {:?}", resp.reason());
        assert_eq!(resp.backend(), Some(free.name.as_str()), "#{i}");
    }
    assert_eq!(busy.hits(), 1);
    busy.release(1);
    assert_eq!(held.await.expect("held request").status, 200);
}

// ===== panic threshold =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_panic_threshold_chooses_between_the_survivor_and_every_backend() {
    let a = echo_backend("a").await;
    let b = echo_backend("b").await;
    let c = echo_backend("c").await;
    let list = format!(
        "[\"{}\", \"{}\", \"{}\"]",
        a.address(),
        b.address(),
        c.address()
    );
    let service = |svc: &str, panic: u32| {
        format!(
            "[services.{svc}]\nbackends = {list}\npanic_threshold = {panic}\n\
             [services.{svc}.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\n\
             timeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\n\n"
        )
    };
    let app = start_app(&(base_toml() + &service("calm", 0) + &service("panicky", 80))).await;
    let services = ["calm", "panicky"];
    for svc in services {
        for x in [&a, &b, &c] {
            wait_health(app.admin, svc, &x.address(), "healthy", WAIT).await;
        }
    }

    // Two of three fail their checks.
    b.set_health(500);
    c.set_health(500);
    for svc in services {
        for x in [&b, &c] {
            wait_health(app.admin, svc, &x.address(), "unhealthy", WAIT).await;
        }
    }
    // panic_threshold = 0: everything goes to the survivor.
    eventually(WAIT, "calm traffic to go to a only", || async {
        let who = answers(app.proxy, "calm", 6).await;
        who.iter().all(|w| w.as_deref() == Some("a"))
    })
    .await;
    // panic_threshold = 80 (1 of 3 ready is 33 %): spread over all three,
    // once the rebuild that carries panicky's health is published.
    eventually(WAIT, "panicky traffic to reach all three", || async {
        let who = answers(app.proxy, "panicky", 9).await;
        ["a", "b", "c"]
            .iter()
            .all(|name| who.iter().any(|w| w.as_deref() == Some(*name)))
    })
    .await;
    let who = answers(app.proxy, "panicky", 9).await;
    let names: Vec<&str> = who.iter().map(|w| w.as_deref().unwrap_or("-")).collect();
    let counts = tally(&names);
    for name in ["a", "b", "c"] {
        assert!(
            counts.get(name).is_some_and(|n| *n >= 1),
            "panic mode should reach {name}: {who:?}"
        );
    }
    assert_eq!(
        health_of(app.admin, "panicky", &b.address())
            .await
            .as_deref(),
        Some("unhealthy")
    );

    // None healthy: 503 at once, panic or not.
    a.set_health(500);
    for svc in services {
        wait_health(app.admin, svc, &a.address(), "unhealthy", WAIT).await;
    }
    for svc in services {
        eventually(WAIT, &format!("{svc} to answer 503"), || async {
            http_status(app.proxy, svc).await == 503
        })
        .await;
        let started = Instant::now();
        let resp = Http::new().get(app.proxy, &format!("/{svc}/none")).await;
        let took = started.elapsed();
        assert_eq!(resp.status, 503, "{svc}");
        assert_eq!(resp.reason(), Some("no healthy backend"), "{svc}");
        assert!(resp.header("retry-after").is_some(), "{svc}");
        assert!(took < Duration::from_secs(1), "{svc}: 503 took {took:?}");
    }
}

async fn http_status(proxy: SocketAddr, svc: &str) -> u16 {
    Http::new()
        .get(proxy, &format!("/{svc}/probe"))
        .await
        .status
        .as_u16()
}
