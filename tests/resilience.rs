//! Resilience end to end, part 1: instances fail and the next request should
//! not notice. A backend killed under load, the retry budget when everything
//! fails, replayable request bodies, per-backend request limits and the panic
//! threshold. Real sockets on 127.0.0.1, the real app in-process; every wait
//! is bounded and the only time checks are generous liveness bounds. Backends
//! that misbehave on the wire (hang, reset, garbage, stale keep-alive) are in
//! `resilience_faults.rs`.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use support::*;

// ===== an echo backend with a switchable /healthz =====

/// An HTTP/1.1 backend on `127.0.0.1:0`: `/healthz` answers the status the
/// test sets; every other request is answered 200 with its own body and
/// `x-backend: NAME`, and counted.
struct EchoBackend {
    name: String,
    addr: SocketAddr,
    health: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl EchoBackend {
    async fn start(name: &str) -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("local addr");
        let health = Arc::new(AtomicU16::new(200));
        let hits = Arc::new(AtomicUsize::new(0));
        let (h, n, who) = (Arc::clone(&health), Arc::clone(&hits), Arc::from(name));
        let task = tokio::spawn(echo_loop(listener, who, h, n));
        EchoBackend {
            name: name.to_string(),
            addr,
            health,
            hits,
            task,
        }
    }

    fn address(&self) -> String {
        self.addr.to_string()
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::SeqCst);
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_loop(
    listener: TcpListener,
    name: Arc<str>,
    health: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (name, health, hits) = (Arc::clone(&name), Arc::clone(&health), Arc::clone(&hits));
                conns.spawn(async move {
                    let service = service_fn(move |req| {
                        echo(Arc::clone(&name), Arc::clone(&health), Arc::clone(&hits), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn echo(
    name: Arc<str>,
    health: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/healthz" {
        let status = StatusCode::from_u16(health.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = status;
        return Ok(resp);
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::from_static(b"body failed"),
    };
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut()
        .insert("x-backend", name.parse().expect("header value"));
    Ok(resp)
}

// ===== small helpers =====

fn retries(metrics: &str, svc: &str) -> f64 {
    metric(metrics, "switchyard_retries_total", &[("service", svc)]).unwrap_or(0.0)
}

/// `n` bytes that differ from position to position (a shifted copy shows).
fn pattern(n: usize) -> Bytes {
    (0..n)
        .map(|i| (i * 7 % 253) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// The `health` of the instance at `address` per `GET /v1/services/{svc}`.
async fn health_of(admin: SocketAddr, svc: &str, address: &str) -> Option<String> {
    let resp = Http::new()
        .try_get(admin, &format!("/v1/services/{svc}"))
        .await
        .ok()?;
    let json: serde_json::Value = serde_json::from_slice(&resp.body).ok()?;
    json["instances"]
        .as_array()?
        .iter()
        .find(|i| i["address"] == address)?["health"]
        .as_str()
        .map(str::to_string)
}

async fn wait_health(admin: SocketAddr, svc: &str, b: &EchoBackend, want: &str) {
    let what = format!("{svc}/{} to be {want}", b.name);
    eventually(WAIT, &what, || async {
        health_of(admin, svc, &b.address()).await.as_deref() == Some(want)
    })
    .await;
}

/// Who answered each of `n` GETs to `/{svc}/...` (`None`: not a backend).
async fn answers(proxy: SocketAddr, svc: &str, n: usize) -> Vec<Option<String>> {
    let http = Http::new();
    let mut who = Vec::with_capacity(n);
    for i in 0..n {
        let resp = http.get(proxy, &format!("/{svc}/r{i}")).await;
        who.push(resp.backend().map(str::to_string));
    }
    who
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
    let echo = EchoBackend::start("echo").await;
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
    let a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    let c = EchoBackend::start("c").await;
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
            wait_health(app.admin, svc, x, "healthy").await;
        }
    }

    // Two of three fail their checks.
    b.set_health(500);
    c.set_health(500);
    for svc in services {
        for x in [&b, &c] {
            wait_health(app.admin, svc, x, "unhealthy").await;
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
        wait_health(app.admin, svc, &a, "unhealthy").await;
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
