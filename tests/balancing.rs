//! Balancing: round_robin evenness, smooth weights, least_conn preferring
//! the idle backend and counting a streaming response until it ends.

mod support;

use http::Method;
use http_body_util::BodyExt;
use support::*;

/// `n` sequential GETs over one keep-alive client; the answering backends in order.
async fn sequence(app: &TestApp, n: usize) -> Vec<String> {
    let http = Http::new();
    let mut order = Vec::with_capacity(n);
    for i in 0..n {
        let resp = http.get(app.proxy, &format!("/r{i}")).await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        order.push(resp.backend().expect("x-backend").to_string());
    }
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let c = FakeBackend::start("c").await;
    let toml = format!(
        "{}{}{}",
        base_toml(),
        service_toml("web", &[&a, &b, &c], "balance = \"round_robin\""),
        route_toml(None, "/", "web", false)
    );
    let app = start_app(&toml).await;
    let order = sequence(&app, 300).await;
    let counts = tally(&order);
    for name in ["a", "b", "c"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!((99..=101).contains(&n), "{name} got {n} of 300: {counts:?}");
    }
    // Plain round robin over equal weights never repeats a backend back to back.
    for pair in order.windows(2) {
        assert_ne!(pair[0], pair[1], "same backend twice in a row: {order:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_the_default_policy() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let toml = format!(
        "{}{}{}",
        base_toml(),
        service_toml("web", &[&a, &b], ""),
        route_toml(None, "/", "web", false)
    );
    let app = start_app(&toml).await;
    let counts = tally(&sequence(&app, 100).await);
    assert_eq!(counts.get("a"), Some(&50), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&50), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_is_3_to_1_and_smooth() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let toml = format!(
        "{}[services.web]\nbalance = \"round_robin\"\nbackends = [{{ address = \"{}\", weight = 3 }}, {{ address = \"{}\", weight = 1 }}]\n\n{}",
        base_toml(),
        a.address(),
        b.address(),
        route_toml(None, "/", "web", false)
    );
    let app = start_app(&toml).await;
    let order = sequence(&app, 400).await;
    let counts = tally(&order);
    let na = counts.get("a").copied().unwrap_or(0);
    let nb = counts.get("b").copied().unwrap_or(0);
    assert!((299..=301).contains(&na), "a: {na}, b: {nb}");
    assert!((99..=101).contains(&nb), "a: {na}, b: {nb}");
    let compact: String = order.iter().map(|s| s.as_str()).collect();
    assert!(
        !compact.contains("aaaa"),
        "more than 3 of the heavy backend in a row: {compact}"
    );
    for (i, window) in order.windows(4).enumerate() {
        let heavy = window.iter().filter(|s| *s == "a").count();
        assert_eq!(
            heavy, 3,
            "window {i} {window:?} should hold 3 a + 1 b; sequence {compact}"
        );
    }
}

async fn least_conn_app() -> (TestApp, FakeBackend, FakeBackend) {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let toml = format!(
        "{}{}{}",
        base_toml(),
        service_toml("web", &[&a, &b], "balance = \"least_conn\""),
        route_toml(None, "/", "web", false)
    );
    (start_app(&toml).await, a, b)
}

/// Which backend holds a request at its gate (waits until one does).
async fn holder<'a>(a: &'a FakeBackend, b: &'a FakeBackend) -> (&'a FakeBackend, &'a FakeBackend) {
    eventually(WAIT, "a backend to hold the slow request", || async {
        a.held() + b.held() == 1
    })
    .await;
    if a.held() == 1 {
        (a, b)
    } else {
        (b, a)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_sends_new_requests_to_the_idle_backend() {
    let (app, a, b) = least_conn_app().await;
    let proxy = app.proxy;
    let slow = tokio::spawn(async move { Http::new().get(proxy, "/slow?hold=1").await });
    let (busy, idle) = holder(&a, &b).await;

    let http = Http::new();
    for i in 0..10 {
        let resp = http.get(app.proxy, &format!("/quick{i}")).await;
        assert_eq!(
            resp.backend(),
            Some(idle.name.as_str()),
            "request {i} went to the busy backend {}",
            busy.name
        );
    }
    assert_eq!(busy.hits(), 1);

    busy.release(1);
    let slow = tokio::time::timeout(WAIT, slow).await.unwrap().unwrap();
    assert_eq!(slow.status, 200);
    assert_eq!(slow.backend(), Some(busy.name.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_counts_a_streaming_body_until_it_ends() {
    let (app, a, b) = least_conn_app().await;
    // The head and the first chunk arrive; the rest of the body is held.
    let resp = Http::new()
        .send_streaming(
            request(Method::GET, app.proxy, "/stream?stream_hold=1")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let streamer_name = resp.headers()["x-backend"].to_str().unwrap().to_string();
    let (streamer, idle) = if streamer_name == "a" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let mut body = resp.into_body();
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("first chunk in time")
        .unwrap()
        .unwrap();
    assert_eq!(first.data_ref().map(|d| &d[..]), Some(&b"first\n"[..]));
    eventually(WAIT, "the stream to wait at the gate", || async {
        streamer.held() == 1
    })
    .await;

    let metrics = metrics_text(app.admin).await;
    let active = metric(
        &metrics,
        "switchyard_backend_active_requests",
        &[("backend", &streamer.address())],
    );
    assert_eq!(
        active,
        Some(1.0),
        "a streaming response is in flight until it ends"
    );

    let http = Http::new();
    for i in 0..10 {
        let resp = http.get(app.proxy, &format!("/quick{i}")).await;
        assert_eq!(
            resp.backend(),
            Some(idle.name.as_str()),
            "request {i} went to the backend still streaming"
        );
    }

    streamer.release(1);
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("rest of the body in time")
        .unwrap()
        .to_bytes();
    assert_eq!(&rest[..], b"rest\n");
    let address = streamer.address();
    eventually(WAIT, "active requests back to 0", || async {
        let m = metrics_text(app.admin).await;
        metric(
            &m,
            "switchyard_backend_active_requests",
            &[("backend", &address)],
        ) == Some(0.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_count_is_released_when_the_client_goes_away() {
    let (app, a, b) = least_conn_app().await;
    // One bare connection, so that closing it is under the test's control.
    let stream = tokio::net::TcpStream::connect(app.proxy).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let conn_task = tokio::spawn(conn);
    let req = origin_request(Method::GET, app.proxy, "/stream?stream_hold=1")
        .body(empty())
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let name = resp.headers()["x-backend"].to_str().unwrap().to_string();
    let streamer = if name == "a" { &a } else { &b };
    eventually(WAIT, "the stream to wait at the gate", || async {
        streamer.held() == 1
    })
    .await;
    let address = streamer.address();
    let m = metrics_text(app.admin).await;
    assert_eq!(
        metric(
            &m,
            "switchyard_backend_active_requests",
            &[("backend", &address)]
        ),
        Some(1.0)
    );

    // The client goes away mid-body while the backend still holds the rest.
    drop(resp);
    drop(sender);
    conn_task.abort();
    let _ = conn_task.await;
    eventually(
        WAIT,
        "active requests back to 0 after the client closed its connection",
        || async {
            let m = metrics_text(app.admin).await;
            metric(
                &m,
                "switchyard_backend_active_requests",
                &[("backend", &address)],
            ) == Some(0.0)
        },
    )
    .await;
    streamer.release(1);
}
