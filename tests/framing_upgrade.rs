//! The request-smuggling guard (src/proxy/framing.rs) stops following a
//! connection at a head hyper takes for an upgrade: `CONNECT`, or an
//! `Upgrade` line on HTTP/1.1. When the protocol does not switch, hyper
//! keeps reading HTTP/1 requests, so the answer must close the connection
//! (SPEC §4: a request with both Content-Length and Transfer-Encoding never
//! reaches a backend). Found while writing the `framing` fuzz target's
//! reference (fuzz/checks/framing.rs), which stops comparing at upgrades.

mod support;

use std::time::Duration;

use support::*;

const SMUGGLED: &str = "POST /smuggled HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\
                        Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

async fn app_with_one_backend() -> (TestApp, FakeBackend) {
    let backend = FakeBackend::start("web").await;
    let toml = format!(
        "{}{}{}",
        base_toml(),
        service_toml("web", &[&backend], ""),
        route_toml(None, "/", "web", false)
    );
    (start_app(&toml).await, backend)
}

/// Sends `first` and the smuggling request in one write; expects one answer
/// with `status` and `Connection: close`, then the close, and no second
/// request anywhere.
async fn answered_then_closed(first: &str, status: u16) {
    let (app, backend) = app_with_one_backend().await;
    let mut conn = RawConn::connect(app.proxy).await;
    conn.send(format!("{first}{SMUGGLED}").as_bytes())
        .await
        .expect("send");
    let resp = conn.response().await;
    assert_eq!(resp.status, status, "{resp:?}");
    assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
    assert!(
        conn.closes_within(Duration::from_secs(5)).await,
        "the connection stayed open after an upgrade that did not happen"
    );
    assert_eq!(conn.leftover(), "", "a second answer came");
    assert!(
        backend.seen().iter().all(|s| !s.uri.contains("smuggled")),
        "the smuggling request reached the backend: {:#?}",
        backend.seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_line_without_connection_upgrade_closes_after_the_answer() {
    answered_then_closed("GET /a HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\n\r\n", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_closes_after_the_answer() {
    // The fake backend answers 200, not 101.
    answered_then_closed(
        "GET /a HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        200,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_answered_locally_closes_after_the_answer() {
    let (app, _backend) = app_with_one_backend().await;
    let mut conn = RawConn::connect(app.proxy).await;
    conn.send(format!("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n{SMUGGLED}").as_bytes())
        .await
        .expect("send");
    let resp = conn.response().await;
    assert!(resp.status >= 400, "CONNECT is not tunnelled: {resp:?}");
    assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
    assert!(conn.closes_within(Duration::from_secs(5)).await);
    assert_eq!(conn.leftover(), "", "a second answer came");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_upgrade_lines_keep_the_guard_and_the_connection() {
    // hyper does not upgrade HTTP/1.0: the guard keeps following, so the
    // connection may stay open and the smuggling request gets its 400.
    let (app, backend) = app_with_one_backend().await;
    let mut conn = RawConn::connect(app.proxy).await;
    let first = "GET /a HTTP/1.0\r\nHost: a\r\nUpgrade: x\r\nConnection: keep-alive\r\n\r\n";
    conn.send(format!("{first}{SMUGGLED}").as_bytes())
        .await
        .expect("send");
    let resp = conn.response().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_ne!(resp.header("connection"), Some("close"), "{resp:?}");
    let second = conn.response().await;
    assert_eq!(second.status, 400, "{second:?}");
    assert_eq!(backend.hits(), 1);
}
