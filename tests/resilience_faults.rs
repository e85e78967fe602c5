//! Resilience end to end, part 2: backends that misbehave on the wire — they
//! hang, reset mid-answer or after a POST body, answer garbage — and clients
//! that walk away mid-body. Real sockets on 127.0.0.1 and the real app
//! in-process; the misbehaving backends are raw TCP scripts
//! ([`RawBackend`]) because hyper would refuse to misbehave. Every wait is
//! bounded and the only time checks are generous liveness bounds. The stale
//! keep-alive race is in `resilience_keepalive.rs`.

mod resilience_raw;
mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::Method;
use http_body_util::BodyExt;

use resilience_raw::*;
use support::*;

/// `"ejected"` of the instance at `address` per `GET /v1/services/{svc}`.
async fn ejected(admin: SocketAddr, svc: &str, address: &str) -> Option<bool> {
    instance_of(admin, svc, address).await?["ejected"].as_bool()
}

// ===== hanging backend: 504, ejection, return =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_backend_times_out_with_504_then_is_ejected_and_returns() {
    let hang = RawBackend::start(Script::Hang).await;
    let good = FakeBackend::start("good").await;
    let backends = format!("[\"{}\", \"{}\"]", hang.address(), good.address());
    let extra = "request_timeout = \"300ms\"\n\
                 [services.svc.outlier]\nconsecutive_failures = 2\nbase_ejection = \"2s\"\n";
    let app = start_app(&(base_toml() + &service("svc", &backends, extra))).await;
    let http = Http::new();

    // Round robin over two: within a few requests the hanging one is hit twice.
    let mut timeouts = 0;
    for i in 0..8 {
        let started = Instant::now();
        let resp = http.get(app.proxy, &format!("/svc/r{i}")).await;
        let took = started.elapsed();
        if resp.status == 504 {
            assert_eq!(resp.reason(), Some("backend timeout"));
            assert!(took < Duration::from_secs(5), "504 took {took:?}");
            timeouts += 1;
            if timeouts == 2 {
                break;
            }
        } else {
            assert_eq!(resp.status, 200, "body {:?}", resp.text());
            assert_eq!(resp.backend(), Some("good"));
        }
    }
    assert_eq!(
        timeouts, 2,
        "the hanging backend should have timed out twice"
    );
    assert_eq!(
        ejected(app.admin, "svc", &hang.address()).await,
        Some(true),
        "two consecutive timeouts should eject the hanging backend"
    );
    assert_eq!(
        ejected(app.admin, "svc", &good.address()).await,
        Some(false)
    );

    // The ready list follows at the next coalesced rebuild: wait until the
    // proxy sends everything to the good one, then count from there.
    eventually(
        WAIT,
        "the ejected backend to leave the ready list",
        || async {
            let mut all_good = true;
            for i in 0..4 {
                let resp = http.get(app.proxy, &format!("/svc/settle{i}")).await;
                all_good &= resp.status == 200 && resp.backend() == Some("good");
            }
            all_good
        },
    )
    .await;
    let seen_before = hang.requests();
    for i in 0..6 {
        let resp = http.get(app.proxy, &format!("/svc/ejected{i}")).await;
        assert_eq!(resp.status, 200, "while ejected: {:?}", resp.text());
        assert_eq!(resp.backend(), Some("good"));
    }
    assert_eq!(
        hang.requests(),
        seen_before,
        "an ejected backend got traffic"
    );
    assert_eq!(
        ejected(app.admin, "svc", &hang.address()).await,
        Some(true),
        "the ejection (2 s) should still hold"
    );

    // After base_ejection it is back: listed as not ejected, and picked again.
    eventually(WAIT, "the ejection to end", || async {
        ejected(app.admin, "svc", &hang.address()).await == Some(false)
    })
    .await;
    eventually(
        WAIT,
        "traffic to reach the hanging backend again",
        || async {
            let resp = http.get(app.proxy, "/svc/back").await;
            assert!(matches!(resp.status.as_u16(), 200 | 504), "{resp:?}");
            hang.requests() > seen_before
        },
    )
    .await;
}

/// SPEC §2: "a 504 that Switchyard makes is retried only when try_timeout
/// is set and time remains" — with the default `on` list, which names 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_timeout_retries_a_get_from_a_hanging_backend_on_another() {
    let hang = RawBackend::start(Script::Hang).await;
    let good = FakeBackend::start("good").await;
    let backends = format!("[\"{}\", \"{}\"]", hang.address(), good.address());
    let extra = "request_timeout = \"5s\"\ntry_timeout = \"200ms\"\n";
    let app = start_app(&(base_toml() + &service("svc", &backends, extra))).await;
    let http = Http::new();
    let mut answers = Vec::new();
    for i in 0..4 {
        let resp = http.get(app.proxy, &format!("/svc/r{i}")).await;
        answers.push(format!("{} {:?}", resp.status.as_u16(), resp.reason()));
    }
    assert!(
        hang.requests() >= 1,
        "round robin never tried the hanging backend"
    );
    assert!(
        answers.iter().all(|a| a.starts_with("200")),
        "a GET whose try timed out should be retried on the good backend: {answers:?}"
    );

    // A POST was sent before its try timed out: never replayed.
    let hang_posts = hang.count("POST");
    for i in 0..2 {
        let resp = http
            .send(post(app.proxy, &format!("/svc/p{i}"), b"once"))
            .await
            .expect("POST");
        assert!(matches!(resp.status.as_u16(), 200 | 504), "{resp:?}");
    }
    let good_posts = good.seen().iter().filter(|s| s.method == "POST").count();
    assert_eq!(
        hang.count("POST") - hang_posts + good_posts,
        2,
        "a POST was sent twice"
    );
}

// ===== POST is never sent twice =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_reset_after_its_body_is_a_502_and_reaches_one_backend_once() {
    let resetters = [
        RawBackend::start(Script::ResetAfterBody).await,
        RawBackend::start(Script::ResetAfterBody).await,
        RawBackend::start(Script::ResetAfterBody).await,
    ];
    let good = FakeBackend::start("good").await;
    let all: Vec<&RawBackend> = resetters.iter().collect();
    let mixed = format!("[\"{}\", \"{}\"]", resetters[0].address(), good.address());
    let retry = |svc: &str| format!("[services.{svc}.retry]\nattempts = 2\n");
    let toml = base_toml()
        + &service("svc", &addresses(&all), &retry("svc"))
        + &service("mixed", &mixed, &retry("mixed"));
    let app = start_app(&toml).await;
    let http = Http::new();
    let total = |method: &str| resetters.iter().map(|b| b.count(method)).sum::<usize>();

    let resp = http
        .send(post(app.proxy, "/svc/order", b"one order"))
        .await
        .expect("POST");
    assert_eq!(resp.status, 502, "body {:?}", resp.text());
    assert_eq!(resp.reason(), Some("backend reset"));
    assert_eq!(
        total("POST"),
        1,
        "the POST must reach exactly one backend once"
    );

    // A GET in the same situation is retried, each time on another backend.
    let resp = http.get(app.proxy, "/svc/item").await;
    assert_eq!(resp.status, 502);
    assert_eq!(total("GET"), 3, "GET: first try + 2 retries");
    for b in &resetters {
        assert_eq!(b.count("GET"), 1, "retries should go to other backends");
    }
    assert_eq!(total("POST"), 1);

    // One resetting and one good backend: each POST lands once, on one of them.
    let mut answers = Vec::new();
    for i in 0..4 {
        let resp = http
            .send(post(app.proxy, &format!("/mixed/order{i}"), b"order"))
            .await
            .expect("POST");
        answers.push(resp.status.as_u16());
    }
    let failed = answers.iter().filter(|s| **s == 502).count();
    let ok = answers.iter().filter(|s| **s == 200).count();
    assert_eq!(failed + ok, 4, "answers {answers:?}");
    assert!(
        failed >= 1,
        "round robin should have hit the resetter: {answers:?}"
    );
    assert_eq!(
        resetters[0].count("POST"),
        1 + failed,
        "answers {answers:?}"
    );
    assert_eq!(
        good.hits(),
        ok,
        "a reset POST was replayed on the good backend"
    );
}

// ===== a reset in the middle of the response body =====

const CUT_LENGTH: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\nx-backend: cut\r\n\r\nonly the first bytes";
const CUT_CHUNKED: &[u8] =
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-backend: cut\r\n\r\n5\r\nfirst\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_response_ends_the_client_body_in_error_without_retry() {
    for (svc, bytes) in [("length", CUT_LENGTH), ("chunked", CUT_CHUNKED)] {
        let a = RawBackend::start(Script::ReplyThenReset(bytes)).await;
        let b = RawBackend::start(Script::ReplyThenReset(bytes)).await;
        let extra = "[services.svc.retry]\nattempts = 2\n";
        let app = start_app(&(base_toml() + &service("svc", &addresses(&[&a, &b]), extra))).await;
        let started = Instant::now();
        let resp = Http::new()
            .send_streaming(
                request(Method::GET, app.proxy, "/svc/file")
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("{svc}: no response head: {e}"));
        assert_eq!(resp.status(), 200, "{svc}: the head was already sent");
        let body = tokio::time::timeout(WAIT, resp.into_body().collect()).await;
        let took = started.elapsed();
        match body {
            Err(_) => panic!("{svc}: the truncated body hung"),
            Ok(Ok(whole)) => panic!(
                "{svc}: a truncated body ended cleanly: {:?}",
                whole.to_bytes()
            ),
            Ok(Err(_)) => {}
        }
        assert!(took < Duration::from_secs(5), "{svc}: took {took:?}");
        assert_eq!(
            a.requests() + b.requests(),
            1,
            "{svc}: no retry once response bytes went to the client"
        );
    }
}

// ===== malformed answers =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_backend_answers_are_502_before_any_header_is_forwarded() {
    let cases: [(&str, &'static [u8]); 4] = [
        (
            "length_and_chunked",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\
              x-leak: yes\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "bad_status_line",
            b"HTTP/1.1 2x0 OK\r\nx-leak: yes\r\ncontent-length: 2\r\n\r\nok",
        ),
        ("not_http", b"SSH-2.0-OpenSSH_9.6\r\nx-leak: yes\r\n\r\n"),
        // The lengths disagree: forwarding either framing desyncs someone.
        (
            "length_mismatch",
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\
              x-leak: yes\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    let mut problems = Vec::new();
    for (svc, bytes) in cases {
        let backend = RawBackend::start(Script::Reply(bytes)).await;
        let app = start_app(&(base_toml() + &service(svc, &addresses(&[&backend]), ""))).await;
        match Http::new().try_get(app.proxy, &format!("/{svc}/x")).await {
            Ok(r) if r.status == 502 && r.header("x-leak").is_none() => {
                assert_eq!(r.reason(), Some("backend bad response"), "{svc}");
            }
            Ok(r) => problems.push(format!(
                "{svc}: got {} (x-switchyard-error {:?}, x-leak {:?}, body {:?}), want 502",
                r.status,
                r.reason(),
                r.header("x-leak"),
                r.text()
            )),
            Err(e) => problems.push(format!("{svc}: client error {e}, want a 502")),
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

// ===== a client that aborts mid-body =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_abort_mid_body_cancels_the_upstream_request() {
    let backend = RawBackend::start(Script::WatchBody).await;
    let app = start_app(&(base_toml() + &service("svc", &addresses(&[&backend]), ""))).await;

    let mut client = RawConn::connect(app.proxy).await;
    let head = format!(
        "POST /svc/upload HTTP/1.1\r\nhost: {}\r\ncontent-length: 100000\r\n\r\n",
        app.proxy
    );
    client.send(head.as_bytes()).await.expect("send head");
    client.send(&[b'a'; 1000]).await.expect("send part");
    eventually(
        WAIT,
        "the first body bytes to reach the backend",
        || async { backend.stats.body_bytes.load(Ordering::SeqCst) >= 1000 },
    )
    .await;
    drop(client);

    let started = Instant::now();
    eventually(WAIT, "the upstream request to be cancelled", || async {
        backend.get(|s| &s.cut_bodies) == 1
    })
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "cancel took {took:?}");

    // The proxy is fine afterwards, and the cut connection was not reused.
    let http = Http::new();
    for i in 0..3 {
        let resp = http.get(app.proxy, &format!("/svc/after{i}")).await;
        assert_eq!((resp.status.as_u16(), resp.text()), (200, "0".to_string()));
        let resp = http
            .send(post(app.proxy, &format!("/svc/post{i}"), b"12345"))
            .await
            .expect("POST after the abort");
        assert_eq!((resp.status.as_u16(), resp.text()), (200, "5".to_string()));
    }
    assert_eq!(backend.get(|s| &s.cut_bodies), 1);
    assert_eq!(backend.requests(), 7);
}
