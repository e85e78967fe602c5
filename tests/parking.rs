//! Idle HTTP/1 keep-alive connections are parked between requests (hyper's
//! connection and its buffers dropped, only the socket kept) and served
//! again, whole and in order, by the next request: `switchyard_connections_parked`
//! counts them. Raw sockets, so every byte boundary is the test's choice.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

const CONNS: usize = 20;

async fn app(backend: &FakeBackend) -> TestApp {
    let toml = format!(
        "{}{}{}",
        base_toml(),
        service_toml("svc", &[backend], ""),
        route_toml(None, "/", "svc", false)
    );
    start_app(&toml).await
}

async fn gauge(app: &TestApp, name: &str) -> f64 {
    let text = metrics_text(app.admin).await;
    let listener = app.proxy.to_string();
    metric(&text, name, &[("listener", listener.as_str())]).unwrap_or(0.0)
}

async fn wait_parked(app: &TestApp, want: usize, what: &str) {
    let want = want as f64;
    eventually(WAIT, what, || async move {
        gauge(app, "switchyard_connections_parked").await == want
    })
    .await;
}

fn get(proxy: SocketAddr, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {proxy}\r\n\r\n")
}

async fn answered(conn: &mut RawConn, what: &str) -> String {
    let resp = conn.response().await;
    assert_eq!(resp.status, 200, "{what}: {}", resp.text());
    assert_ne!(
        resp.header("connection").map(str::to_ascii_lowercase),
        Some("close".to_string()),
        "{what}: the proxy announced a close"
    );
    resp.text()
}

/// A connection that has served one request and is now parked.
async fn parked_connection(app: &TestApp) -> RawConn {
    let mut conn = RawConn::connect(app.proxy).await;
    conn.send(get(app.proxy, "/warm").as_bytes()).await.unwrap();
    answered(&mut conn, "warm-up").await;
    wait_parked(app, 1, "the idle connection parked").await;
    conn
}

/// Twenty clients, one request each, then idle: all parked. Each is then
/// served again on the same connection, and parked again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_parked_and_served_again() {
    let backend = FakeBackend::start("svc").await;
    let app = app(&backend).await;
    let mut conns = Vec::new();
    for i in 0..CONNS {
        let mut conn = RawConn::connect(app.proxy).await;
        conn.send(get(app.proxy, &format!("/first{i}")).as_bytes())
            .await
            .expect("send");
        assert_eq!(answered(&mut conn, "first request").await, "svc");
        conns.push(conn);
    }
    wait_parked(&app, CONNS, "every idle connection parked").await;
    assert_eq!(
        gauge(&app, "switchyard_connections_open").await,
        CONNS as f64
    );

    for (i, conn) in conns.iter_mut().enumerate() {
        conn.send(get(app.proxy, &format!("/second{i}")).as_bytes())
            .await
            .expect("a parked connection takes the next request");
        assert_eq!(answered(conn, "request after a park").await, "svc");
    }
    assert_eq!(backend.hits(), 2 * CONNS);
    let seen: Vec<String> = backend.seen().into_iter().map(|s| s.uri).collect();
    for i in 0..CONNS {
        assert!(seen.contains(&format!("/second{i}")), "{seen:?}");
    }
    wait_parked(&app, CONNS, "parked again after the second request").await;

    drop(conns);
    wait_parked(&app, 0, "closed connections leave the gauge").await;
    eventually(WAIT, "every connection closed", || async {
        gauge(&app, "switchyard_connections_open").await == 0.0
    })
    .await;
}

/// Three pipelined requests in one write to a parked connection are all
/// answered, in order: nothing the client sent is lost to a park.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_after_a_park_are_answered_in_order() {
    let backend = FakeBackend::start("svc").await;
    let app = app(&backend).await;
    let mut conn = parked_connection(&app).await;

    let burst: String = (0..3)
        .map(|i| get(app.proxy, &format!("/p{i}?echo=1")))
        .collect();
    conn.send(burst.as_bytes()).await.unwrap();
    for i in 0..3 {
        let text = answered(&mut conn, "pipelined request").await;
        let json: serde_json::Value = serde_json::from_str(&text).expect("echo json");
        assert_eq!(
            json["uri"],
            format!("/p{i}?echo=1"),
            "answer {i} out of order"
        );
    }
    wait_parked(&app, 1, "parked again").await;
}

/// A request whose head and body arrive apart (with the connection idle in
/// between as far as the socket goes) is not parked mid-message: the
/// backend gets every body byte, then the connection parks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_split_across_writes_arrives_whole() {
    let backend = FakeBackend::start("svc").await;
    let app = app(&backend).await;
    let mut conn = parked_connection(&app).await;

    let head = format!(
        "POST /upload?count=1 HTTP/1.1\r\nHost: {}\r\nContent-Length: 10\r\n\r\nhello",
        app.proxy
    );
    conn.send(head.as_bytes()).await.unwrap();
    // The head is in and the backend is waiting for the rest: the
    // connection is busy, not parked.
    eventually(WAIT, "the request reached the backend", || async {
        backend.hits() == 2
    })
    .await;
    assert_eq!(gauge(&app, "switchyard_connections_parked").await, 0.0);
    conn.send(b"world").await.unwrap();
    assert_eq!(answered(&mut conn, "split upload").await, "10");

    // Chunked, cut inside a chunk-size line.
    let chunked = format!(
        "POST /upload?count=1 HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        app.proxy
    );
    conn.send(chunked.as_bytes()).await.unwrap();
    eventually(WAIT, "the chunked request reached the backend", || async {
        backend.hits() == 3
    })
    .await;
    conn.send(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    assert_eq!(answered(&mut conn, "split chunked upload").await, "11");
    wait_parked(&app, 1, "parked after the uploads").await;
}

/// A client that connects and says nothing holds no hyper state either; its
/// first request, whenever it comes, is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_new_connection_starts_parked() {
    let backend = FakeBackend::start("svc").await;
    let app = app(&backend).await;
    let mut conn = RawConn::connect(app.proxy).await;
    wait_parked(&app, 1, "the silent connection parked").await;
    conn.send(get(app.proxy, "/late").as_bytes()).await.unwrap();
    assert_eq!(answered(&mut conn, "first request").await, "svc");
}

/// A request head split at every few bytes over a parked connection: the
/// connection stays unparked until the head completes, and is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_dribbled_into_a_parked_connection_is_answered() {
    let backend = FakeBackend::start("svc").await;
    let app = app(&backend).await;
    let mut conn = parked_connection(&app).await;

    let head = get(app.proxy, "/dribbled?echo=1");
    for piece in head.as_bytes().chunks(7) {
        conn.send(piece).await.unwrap();
        // The client dribbling is what is tested, not a wait for the proxy.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = answered(&mut conn, "dribbled head").await;
    let json: serde_json::Value = serde_json::from_str(&text).expect("echo json");
    assert_eq!(json["uri"], "/dribbled?echo=1");
}

/// Over TLS too: HTTPS keep-alive connections park between requests (the
/// TLS session stays; hyper's buffers go) and serve the next request on the
/// same TLS connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_connections_are_parked_and_served_again() {
    use support::pki::*;
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    install(dir.path(), &pki.leaf("parking"));
    let (cert, key) = pair_paths(dir.path());
    let backend = FakeBackend::start("svc").await;
    let config = ConfigFile::new(&format!(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n\n[[proxy.tls]]\nlisten = \"127.0.0.1:0\"\n\
         certs = [{{ cert = \"{}\", key = \"{}\" }}]\nalpn = [\"http/1.1\"]\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n{}{}",
        cert.display(),
        key.display(),
        service_toml("svc", &[&backend], ""),
        route_toml(None, "/", "svc", false)
    ));
    let proc = spawn_serve(&config).await;
    let tls = proc
        .stderr()
        .lines()
        .find_map(|l| parse_listen_line(l, "tls listening on "))
        .unwrap_or_else(|| panic!("no TLS listener logged:\n{}", proc.stderr()));
    let client = pki.client(&[b"http/1.1"]);
    let parked = || async {
        let text = metrics_text(proc.admin).await;
        metric(
            &text,
            "switchyard_connections_parked",
            &[("listener", tls.to_string().as_str())],
        )
        .unwrap_or(0.0)
    };
    let mut senders = Vec::new();
    for _ in 0..5 {
        let mut sender = https_connection(tls, &client)
            .await
            .expect("TLS connection");
        assert_eq!(https_get(&mut sender, "/first").await, Ok(200));
        senders.push(sender);
    }
    eventually(WAIT, "the five idle TLS connections parked", || async {
        parked().await == 5.0
    })
    .await;
    for sender in &mut senders {
        assert_eq!(https_get(sender, "/again").await, Ok(200));
    }
    assert_eq!(backend.hits(), 10);
    eventually(WAIT, "parked again", || async { parked().await == 5.0 }).await;
}
