//! The upstream connection pool end to end, seen from the backend's side of
//! the socket: idle connections are capped per backend, reused, closed after
//! the idle timeout (the default one, waited out), never used once the
//! backend closed them, and closed when their backend leaves the table; an
//! https backend that negotiates HTTP/2 by ALPN gets one authority.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Method;
use support::conn_backend::{ConnBackend, ConnScript};
use support::*;

fn service(name: &str, backends: &[&ConnBackend], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.address()))
        .collect();
    format!(
        "[services.{name}]\nbackends = [{}]\n{extra}\n",
        list.join(", ")
    )
}

/// Retries off: a request sent on a dead connection would reach the client
/// as a 502 instead of being saved by a retry.
const NO_RETRY: &str = "[services.svc.retry]\nattempts = 0\n";

async fn post_ok(proxy: SocketAddr, path: &str) -> String {
    let req = request(Method::POST, proxy, path)
        .body(full("payload"))
        .expect("request");
    let resp = Http::new().send(req).await.expect("POST through the proxy");
    assert_eq!(resp.status, 200, "{:?} {}", resp.reason(), resp.text());
    resp.text()
}

#[tokio::test]
async fn idle_connections_are_capped_per_backend_and_reused() {
    let backend = ConnBackend::start(ConnScript {
        hold_until: 12,
        ..ConnScript::default()
    })
    .await;
    // Idle lists are per worker: one worker, so that every request sees the
    // same list (the cap itself counts over all workers).
    let proxy_keys = "workers = 1\nupstream_idle_per_backend = 4\nupstream_idle_timeout = \"60s\"";
    let toml = base_toml_with(proxy_keys) + &service("svc", &[&backend], NO_RETRY);
    let app = start_app(&toml).await;
    // Twelve requests at once: the backend holds them until all twelve are
    // in, so the proxy needs twelve connections.
    let burst: Vec<_> = (0..12)
        .map(|i| {
            let proxy = app.proxy;
            tokio::spawn(async move { Http::new().get(proxy, &format!("/svc/{i}")).await })
        })
        .collect();
    for request in burst {
        let resp = request.await.expect("request task");
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert_eq!(backend.accepted(), 12);
    // Four stay idle; the proxy closes the other eight.
    eventually(
        Duration::from_secs(10),
        "8 connections closed by the proxy",
        || async { backend.closed_by_peer() == 8 },
    )
    .await;
    assert_eq!(backend.open(), 4);
    // The kept ones carry the next requests: no new connection.
    for i in 0..8 {
        let resp = Http::new().get(app.proxy, &format!("/svc/again{i}")).await;
        assert_eq!(resp.status, 200);
    }
    assert_eq!(backend.accepted(), 12, "idle connections were not reused");
    assert_eq!(backend.open(), 4);
}

#[tokio::test]
async fn a_cap_of_zero_keeps_no_idle_connection() {
    let backend = ConnBackend::start(ConnScript::default()).await;
    let toml = base_toml_with("upstream_idle_per_backend = 0") + &service("svc", &[&backend], "");
    let app = start_app(&toml).await;
    for i in 1..=3 {
        let resp = Http::new().get(app.proxy, &format!("/svc/{i}")).await;
        assert_eq!(
            resp.text(),
            format!("conn-{i}"),
            "a new connection each time"
        );
        eventually(Duration::from_secs(10), "the proxy closes it", || async {
            backend.closed_by_peer() == i
        })
        .await;
    }
    assert_eq!(backend.open(), 0);
}

#[tokio::test]
async fn a_connection_the_backend_closed_while_idle_is_not_used_again() {
    let backend = ConnBackend::start(ConnScript {
        close_idle_after: Some(Duration::from_millis(300)),
        ..ConnScript::default()
    })
    .await;
    let app = start_app(&(base_toml() + &service("svc", &[&backend], NO_RETRY))).await;
    let mut served_by = Vec::new();
    for round in 1..=5 {
        // POST: not idempotent, and retries are off, so a request written
        // to the closed connection would come back as a 502.
        served_by.push(post_ok(app.proxy, &format!("/svc/{round}")).await);
        eventually(
            Duration::from_secs(10),
            "the backend closes the idle connection",
            || async { backend.idle_closes() == round },
        )
        .await;
    }
    assert_eq!(
        backend.accepted(),
        5,
        "one connection per round: {served_by:?}"
    );
    assert_eq!(backend.closed_by_peer(), 0);
}

#[tokio::test]
async fn idle_connections_close_after_the_default_idle_timeout() {
    let backend = ConnBackend::start(ConnScript::default()).await;
    // One worker: idle lists are per worker, and the second request must
    // find the first one's connection.
    let app = start_app(&(base_toml_with("workers = 1") + &service("svc", &[&backend], ""))).await;
    let first = Http::new().get(app.proxy, "/svc/a").await;
    assert_eq!(first.text(), "conn-1");
    let answered = Instant::now();
    // Still pooled a moment later: reused.
    let second = Http::new().get(app.proxy, "/svc/b").await;
    assert_eq!(second.text(), "conn-1");
    let idle_from = Instant::now();
    eventually(
        Duration::from_secs(15),
        "the proxy closes its idle connection",
        || async { backend.closed_by_peer() == 1 },
    )
    .await;
    let closed = backend.last_peer_close().expect("close time");
    let idle = closed.duration_since(idle_from);
    // The default upstream_idle_timeout is 4 s: not before.
    assert!(
        idle >= Duration::from_millis(3900),
        "closed after {idle:?} idle, before the 4 s default"
    );
    assert!(closed.duration_since(answered) >= Duration::from_secs(4));
    // The next request dials a new connection.
    let third = Http::new().get(app.proxy, "/svc/c").await;
    assert_eq!(third.text(), "conn-2");
}

#[tokio::test]
async fn a_backend_removed_from_the_table_has_its_idle_connections_closed() {
    let kept = ConnBackend::start(ConnScript::default()).await;
    let removed = ConnBackend::start(ConnScript::default()).await;
    // One worker: idle lists are per worker (see above).
    let proxy_keys = "workers = 1\nupstream_idle_timeout = \"60s\"";
    let both = base_toml_with(proxy_keys) + &service("svc", &[&kept, &removed], "");
    let app = start_app(&both).await;
    for i in 0..4 {
        let resp = Http::new().get(app.proxy, &format!("/svc/{i}")).await;
        assert_eq!(resp.status, 200);
    }
    assert_eq!(
        (kept.open(), removed.open()),
        (1, 1),
        "one pooled connection each"
    );
    app.config
        .replace(&(base_toml_with(proxy_keys) + &service("svc", &[&kept], "")));
    let resp = admin_reload(app.admin).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    eventually(
        Duration::from_secs(10),
        "the removed backend's idle connection is closed",
        || async { removed.closed_by_peer() == 1 && removed.open() == 0 },
    )
    .await;
    // The backend that stayed keeps its pooled connection (60 s timeout).
    assert_eq!(kept.open(), 1);
    assert_eq!(kept.closed_by_peer(), 0);
    let resp = Http::new().get(app.proxy, "/svc/after").await;
    assert_eq!(
        resp.text(),
        "conn-1",
        "the kept backend's connection is reused"
    );
}

// ===== https backends negotiating HTTP/2 =====

/// The strict HTTP/2 server (`support::python::STRICT_H2`) behind `ssl`
/// offering ALPN `h2` only.
fn strict_h2_tls_server() -> String {
    format!(
        "{}{}",
        python::STRICT_H2,
        r#"
import ssl
cert, key = sys.argv[1], sys.argv[2]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
context.set_alpn_protocols(["h2"])

def serve(raw):
    try:
        sock = context.wrap_socket(raw, server_side=True)
    except (ssl.SSLError, OSError) as e:
        print("handshake failed:", e, file=sys.stderr, flush=True)
        raw.close()
        return
    if sock.selected_alpn_protocol() != "h2":
        print("ALPN did not choose h2", file=sys.stderr, flush=True)
        sock.close()
        return
    serve_h2(sock)

listen(serve)
"#
    )
}

#[tokio::test]
async fn an_https_backend_negotiating_h2_gets_one_authority() {
    if !tools::require_python("h2", "h2") {
        return;
    }
    let pki = pki::Pki::new();
    let leaf = pki.leaf("strict-h2");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, ca) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert, &leaf.cert_pem).expect("cert");
    std::fs::write(&key, &leaf.key_pem).expect("key");
    std::fs::write(&ca, pki.ca_pem()).expect("ca");
    let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
    let (_server, addr) = python::Py::server(&strict_h2_tls_server(), &[&cert_arg, &key_arg]).await;
    let authority = format!("localhost:{}", addr.port());
    let toml = base_toml()
        + &format!(
            "[services.secure]\nbackends = [\"{authority}\"]\nprotocol = \"https\"\n\
             tls_ca = \"{}\"\n[services.secure.retry]\nattempts = 0\n",
            ca.display()
        );
    let app = start_app(&toml).await;
    for client in [Http::new(), Http::h2c()] {
        for _ in 0..2 {
            let resp = client
                .get_host(app.proxy, "shop.example.test", "/secure/x")
                .await;
            assert_eq!(resp.status, 200, "{:?} {}", resp.reason(), resp.text());
            // One authority, the backend's name as configured; no Host.
            assert_eq!(resp.text(), format!("authority={authority} host=None"));
        }
    }
}
