//! Self-checks of `FakeBackend::builder` (tests/support/backends.rs) without
//! Switchyard in between: every setting does what the tests that use it
//! rely on, so a failure elsewhere points at Switchyard, not at the fake.

mod support;

use std::time::{Duration, Instant};

use http::{Method, StatusCode, Version};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_delay_apply_to_every_request_and_can_change() {
    let b = FakeBackend::builder("s")
        .status(503)
        .delay(Duration::from_millis(150))
        .start()
        .await;
    let http = Http::new();
    let started = Instant::now();
    let resp = http.get(b.addr, "/x").await;
    assert!(started.elapsed() >= Duration::from_millis(150), "no delay");
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.backend(), Some("s"));
    // The query still scripts one request.
    assert_eq!(
        http.get(b.addr, "/x?status=200").await.status,
        StatusCode::OK
    );

    b.set_status(201);
    b.set_delay(Duration::ZERO);
    assert_eq!(http.get(b.addr, "/x").await.status, StatusCode::CREATED);
    assert_eq!(b.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_path_is_answered_and_counted_apart() {
    let b = FakeBackend::builder("h")
        .health("/healthz", 200)
        .start()
        .await;
    let http = Http::new();
    assert_eq!(http.get(b.addr, "/healthz").await.status, StatusCode::OK);
    b.set_health(500);
    let failing = http.get(b.addr, "/healthz").await;
    assert_eq!(failing.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(http.get(b.addr, "/other").await.text(), "h");
    assert_eq!((b.health_hits(), b.hits()), (2, 1));
    assert_eq!(b.seen().len(), 1, "checks are not recorded as traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_body_answers_with_the_request_body() {
    let b = FakeBackend::builder("e").echo_body().start().await;
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let resp = Http::new().post(b.addr, "/up", body.clone()).await;
    assert_eq!(resp.body.as_ref(), body.as_slice());
    assert_eq!(b.body_bytes(), body.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_speaks_only_http2_and_reply_version_says_so() {
    let b = FakeBackend::builder("v")
        .h2c()
        .reply_version()
        .start()
        .await;
    let resp = Http::h2c().get(b.addr, "/v").await;
    assert_eq!(resp.text(), format!("{:?}", Version::HTTP_2));
    // An HTTP/1.1 request gets no answer from an h2c-only server.
    let refused = Http::new().try_get(b.addr, "/v").await;
    assert!(refused.is_err(), "{refused:?}");

    let h1 = FakeBackend::builder("v1").reply_version().start().await;
    assert_eq!(Http::new().get(h1.addr, "/v").await.text(), "HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drip_sends_its_chunks_paced() {
    let b = FakeBackend::builder("d")
        .drip(3, Duration::from_millis(200))
        .start()
        .await;
    let started = Instant::now();
    let resp = Http::new().get(b.addr, "/d").await;
    let want: String = (0..3).map(drip_chunk).collect();
    assert_eq!(resp.text(), want);
    // The first at once, then one per 200 ms: at least 400 ms in all.
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_after_ends_each_connection_after_its_nth_answer() {
    let b = FakeBackend::builder("c").close_after(2).start().await;
    let mut conn = RawConn::connect(b.addr).await;
    for i in 0..2 {
        let req = format!("GET /r{i} HTTP/1.1\r\nHost: x\r\n\r\n");
        conn.send(req.as_bytes()).await.expect("write");
        let resp = conn.response().await;
        assert_eq!(resp.status, 200);
        let closes = resp.header("connection") == Some("close");
        assert_eq!(closes, i == 1, "answer {i}: {:?}", resp.headers);
    }
    assert!(conn.closes_within(WAIT).await, "still open after 2 answers");
    // A new connection gets its own count.
    let again = Http::new()
        .send(
            request(Method::GET, b.addr, "/again")
                .body(empty())
                .unwrap(),
        )
        .await
        .expect("a new connection is served");
    assert_eq!(again.status, 200);
    assert_eq!(b.connections(), 2);
}
