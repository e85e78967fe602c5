//! Error answers Switchyard makes itself (404, 502, 503, 504), and requests
//! HTTP/1.1 forbids (400, 431): they get a clear answer, the connection is
//! closed where the framing cannot be trusted, and the backend never sees them.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;

/// Checks the shape every error Switchyard makes shares.
fn assert_switchyard_error(resp: &Resp, status: u16, reason_prefix: &str) {
    assert_eq!(
        resp.status.as_u16(),
        status,
        "status; body {:?}",
        resp.text()
    );
    let reason = resp.reason().unwrap_or_else(|| {
        panic!(
            "{status} without x-switchyard-error; headers {:?}",
            resp.headers
        )
    });
    assert!(
        reason.starts_with(reason_prefix),
        "x-switchyard-error {reason:?} should start with {reason_prefix:?}"
    );
    let ctype = resp.header("content-type").unwrap_or("");
    assert!(
        ctype.starts_with("text/plain"),
        "{status} content-type {ctype:?}, want text/plain"
    );
    assert!(
        !resp.body.is_empty() && resp.body.len() < 512,
        "{status} body should be short plain text, got {:?}",
        resp.text()
    );
}

async fn app_with_one_backend(extra_proxy: &str) -> (TestApp, FakeBackend) {
    let backend = FakeBackend::start("web").await;
    let toml = format!(
        "{}{}{}",
        base_toml_with(extra_proxy),
        service_toml("web", &[&backend], ""),
        route_toml(None, "/", "web", false)
    );
    (start_app(&toml).await, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404() {
    let backend = FakeBackend::start("api").await;
    let toml = format!(
        "{}{}{}",
        base_toml(),
        service_toml("api", &[&backend], ""),
        route_toml(None, "/api", "api", false)
    );
    let app = start_app(&toml).await;
    let resp = get(app.proxy, "/elsewhere/x").await;
    assert_switchyard_error(&resp, 404, "no route");
    assert_eq!(resp.reason(), Some("no route"));
    assert_eq!(backend.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_is_503_with_retry_after() {
    let toml = format!(
        "{}[services.empty]\nbackends = []\n\n{}",
        base_toml(),
        route_toml(None, "/", "empty", false)
    );
    let app = start_app(&toml).await;
    let resp = get(app.proxy, "/x").await;
    assert_switchyard_error(&resp, 503, "no healthy backend");
    assert_eq!(resp.reason(), Some("no healthy backend"));
    let retry_after = resp.header("retry-after").expect("503 without Retry-After");
    assert!(
        retry_after.trim().parse::<u64>().is_ok(),
        "Retry-After {retry_after:?} should be delay-seconds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_backend_is_502() {
    let dead = refused_addr();
    let toml = format!(
        "{}[services.dead]\nbackends = [\"{dead}\"]\nconnect_timeout = \"500ms\"\n\n{}",
        base_toml(),
        route_toml(None, "/", "dead", false)
    );
    let app = start_app(&toml).await;
    let resp = get(app.proxy, "/x").await;
    assert_switchyard_error(&resp, 502, "backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_backend_is_502() {
    let reset = ResetBackend::start().await;
    let toml = format!(
        "{}[services.flaky]\nbackends = [\"{}\"]\n\n{}",
        base_toml(),
        reset.address(),
        route_toml(None, "/", "flaky", false)
    );
    let app = start_app(&toml).await;
    let resp = get(app.proxy, "/x").await;
    assert_switchyard_error(&resp, 502, "backend");
    assert!(reset.accepted() >= 1, "the reset backend was never reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_is_504_after_request_timeout() {
    let backend = FakeBackend::start("slow").await;
    let toml = format!(
        "{}{}{}",
        base_toml(),
        service_toml("slow", &[&backend], "request_timeout = \"300ms\""),
        route_toml(None, "/", "slow", false)
    );
    let app = start_app(&toml).await;
    let resp = get(app.proxy, "/x?delay_ms=3000").await;
    assert_switchyard_error(&resp, 504, "backend timeout");
    assert_eq!(resp.reason(), Some("backend timeout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_requests_keep_the_connection_open() {
    // Control for the "connection closed" checks below.
    let (app, backend) = app_with_one_backend("").await;
    let mut conn = RawConn::connect(app.proxy).await;
    for _ in 0..2 {
        conn.send(b"GET /a HTTP/1.1\r\nHost: example.test\r\n\r\n")
            .await
            .unwrap();
        let resp = conn.response().await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "web");
    }
    assert!(!conn.closes_within(Duration::from_millis(300)).await);
    assert_eq!(backend.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_without_host_is_accepted() {
    let (app, backend) = app_with_one_backend("").await;
    let mut conn = RawConn::connect(app.proxy).await;
    conn.send(b"GET /old HTTP/1.0\r\n\r\n").await.unwrap();
    let resp = conn.response().await;
    assert_eq!(resp.status, 200, "HTTP/1.0 needs no Host: {resp:?}");
    assert_eq!(backend.hits(), 1);
}

/// Sends each raw request on its own connection; each must get `status`,
/// the connection must close, and the backend must see none of them. A
/// valid request afterwards still works.
async fn assert_rejected(extra_proxy: &str, requests: &[&[u8]], status: u16, must_close: bool) {
    let (app, backend) = app_with_one_backend(extra_proxy).await;
    let mut problems = Vec::new();
    for raw in requests {
        let shown = String::from_utf8_lossy(raw);
        let shown = &shown[..shown.len().min(160)];
        let hits_before = backend.hits();
        let mut conn = RawConn::connect(app.proxy).await;
        let _ = conn.send(raw).await;
        let Some(resp) = conn.try_response().await else {
            problems.push(format!("no answer to {shown:?}; got {:?}", conn.leftover()));
            continue;
        };
        if resp.status != status {
            problems.push(format!(
                "{shown:?}: got {} (want {status}), headers {:?}",
                resp.status, resp.headers
            ));
        }
        if must_close && !conn.closes_within(Duration::from_secs(3)).await {
            problems.push(format!("{shown:?}: connection left open after the answer"));
        }
        if backend.hits() != hits_before {
            problems.push(format!("{shown:?}: reached the backend"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    let ok = get(app.proxy, "/after").await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(backend.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_400() {
    assert_rejected(
        "",
        &[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        ],
        400,
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differing_content_lengths_are_400() {
    assert_rejected(
        "",
        &[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!",
        ],
        400,
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_other_than_chunked_is_400() {
    assert_rejected(
        "",
        &[
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
        ],
        400,
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_host_is_400() {
    assert_rejected("", &[b"GET / HTTP/1.1\r\n\r\n"], 400, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doubled_host_is_400() {
    assert_rejected(
        "",
        &[
            b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n",
        ],
        400,
        true,
    )
    .await;
}

fn get_with_big_header(size: usize) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(size)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_section_over_max_header_bytes_is_431() {
    let big = get_with_big_header(20_000);
    assert_rejected("max_header_bytes = 16384", &[big.as_bytes()], 431, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_section_over_the_default_32_kib_is_431() {
    let big = get_with_big_header(40_000);
    assert_rejected("", &[big.as_bytes()], 431, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_max_header_bytes_is_enforced_too() {
    // 4096 is a valid setting; a 6000-byte header section is over it.
    let big = get_with_big_header(6_000);
    assert_rejected("max_header_bytes = 4096", &[big.as_bytes()], 431, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_section_under_max_header_bytes_passes() {
    let (app, backend) = app_with_one_backend("max_header_bytes = 16384").await;
    let mut conn = RawConn::connect(app.proxy).await;
    conn.send(get_with_big_header(10_000).as_bytes())
        .await
        .unwrap();
    assert_eq!(conn.response().await.status, 200);
    assert_eq!(backend.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_max_headers_is_431() {
    let mut req = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..40 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("\r\n");
    assert_rejected("max_headers = 20", &[req.as_bytes()], 431, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_than_max_headers_pass() {
    let (app, backend) = app_with_one_backend("max_headers = 20").await;
    let mut req = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..10 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let mut conn = RawConn::connect(app.proxy).await;
    conn.send(req.as_bytes()).await.unwrap();
    assert_eq!(conn.response().await.status, 200);
    assert_eq!(backend.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_answer_to_unread_body_closes_the_connection() {
    let backend = FakeBackend::start("api").await;
    let toml = format!(
        "{}{}{}",
        base_toml(),
        service_toml("api", &[&backend], ""),
        route_toml(None, "/api", "api", false)
    );
    let app = start_app(&toml).await;
    let mut conn = RawConn::connect(app.proxy).await;
    // The body announces 100000 bytes; what follows looks like a second
    // request and must never be parsed as one.
    conn.send(
        b"POST /nowhere HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await
    .unwrap();
    let resp = conn.response().await;
    assert_eq!(resp.status, 404, "{resp:?}");
    assert_eq!(resp.header("x-switchyard-error"), Some("no route"));
    assert!(
        conn.closes_within(Duration::from_secs(3)).await,
        "connection left open after a 404 to a request with an unread body"
    );
    assert_eq!(backend.hits(), 0, "smuggled request reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_headers_are_cut_at_header_read_timeout() {
    let (app, backend) = app_with_one_backend("header_read_timeout = \"500ms\"").await;
    let mut conn = RawConn::connect(app.proxy).await;
    conn.send(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    // Keep trickling one header byte every 100 ms, never finishing the head.
    let mut closed = false;
    for _ in 0..50 {
        if conn.send(b"X").await.is_err() || conn.closes_within(Duration::from_millis(100)).await {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a head trickled for 5 s was not cut at header_read_timeout = 500ms"
    );
    assert_eq!(backend.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed_at_idle_timeout() {
    let (app, _backend) = app_with_one_backend("idle_timeout = \"500ms\"").await;
    let mut conn = RawConn::connect(app.proxy).await;
    conn.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(conn.response().await.status, 200);
    assert!(
        conn.closes_within(Duration::from_secs(5)).await,
        "an idle keep-alive connection outlived idle_timeout = 500ms by seconds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_is_cut_at_body_idle_timeout() {
    let (app, backend) = app_with_one_backend("body_idle_timeout = \"500ms\"").await;
    let mut conn = RawConn::connect(app.proxy).await;
    conn.send(b"POST /up?count=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n0123456789")
        .await
        .unwrap();
    eventually(
        WAIT,
        "the first body bytes to reach the backend",
        || async { backend.body_bytes() >= 10 },
    )
    .await;
    // The client sends nothing more: the exchange must end, not hang.
    assert!(
        conn.closes_within(Duration::from_secs(5)).await,
        "a request body stalled for 5 s was not cut at body_idle_timeout = 500ms; got {:?}",
        conn.leftover()
    );
    assert!(backend.body_bytes() < 100_000);
}

async fn app_with_refused_and_good(extra: &str) -> (TestApp, FakeBackend) {
    let good = FakeBackend::start("good").await;
    let dead = refused_addr();
    let toml = format!(
        "{}[services.web]\nbackends = [\"{dead}\", \"{}\"]\nconnect_timeout = \"500ms\"\n{extra}\n\n{}",
        base_toml(),
        good.address(),
        route_toml(None, "/", "web", false)
    );
    (start_app(&toml).await, good)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_are_retried_on_another_backend_for_any_method() {
    let (app, good) = app_with_refused_and_good("").await;
    let http = Http::new();
    for i in 0..6 {
        let resp = http.get(app.proxy, &format!("/g{i}")).await;
        assert_eq!(resp.status, 200, "GET {i}: {}", resp.text());
        assert_eq!(resp.backend(), Some("good"));
    }
    // Nothing reached the refused backend, so even POST may be retried.
    for i in 0..6 {
        let resp = http.post(app.proxy, &format!("/p{i}"), "").await;
        assert_eq!(resp.status, 200, "empty POST {i}: {}", resp.text());
    }
    assert_eq!(good.hits(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_are_retried_for_post_with_a_small_body() {
    // SPEC §2: "connection refused or failed to connect ... may be retried
    // for any method" — the body never left, so it can be sent again.
    let (app, good) = app_with_refused_and_good("").await;
    let http = Http::new();
    let mut statuses = Vec::new();
    for i in 0..6 {
        let resp = http
            .post(app.proxy, &format!("/p{i}?count=1"), "data")
            .await;
        statuses.push((resp.status.as_u16(), resp.text()));
    }
    assert!(
        statuses.iter().all(|(s, body)| *s == 200 && body == "4"),
        "POSTs with a 4-byte body after a refused connect: {statuses:?}"
    );
    assert_eq!(good.hits(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_after_send_is_retried_only_for_idempotent_methods() {
    let good = FakeBackend::start("good").await;
    let reset = ResetBackend::start().await;
    let toml = format!(
        "{}[services.web]\nbackends = [\"{}\", \"{}\"]\n\n{}",
        base_toml(),
        reset.address(),
        good.address(),
        route_toml(None, "/", "web", false)
    );
    let app = start_app(&toml).await;
    let http = Http::new();
    for i in 0..6 {
        let resp = http.get(app.proxy, &format!("/g{i}")).await;
        assert_eq!(resp.status, 200, "GET {i} not retried: {}", resp.text());
    }
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(
            http.post(app.proxy, &format!("/p{i}"), "data")
                .await
                .status
                .as_u16(),
        );
    }
    let failed = statuses.iter().filter(|s| **s == 502).count();
    assert!(
        failed >= 1 && statuses.iter().all(|s| *s == 200 || *s == 502),
        "POSTs that the reset backend got must fail with 502, not be retried: {statuses:?}"
    );
}
