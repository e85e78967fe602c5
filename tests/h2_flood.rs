//! HTTP/2 control-frame floods (issue 13, item 6): a client that sends PINGs
//! (or SETTINGS) in bulk and never reads the answers is disconnected at once,
//! on the default config, long before any timer would; a client that pings
//! at keep-alive rates is not; the close is counted.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
    out.extend_from_slice(payload);
    out
}

fn ping() -> Vec<u8> {
    frame(0x6, 0, b"floodme!")
}

fn flood_closes(text: &str, listener: SocketAddr) -> f64 {
    metric(
        text,
        "switchyard_connections_closed_total",
        &[
            ("listener", listener.to_string().as_str()),
            ("reason", "control_frame_flood"),
        ],
    )
    .unwrap_or(0.0)
}

/// Writes `frames` without reading a byte, then waits (bounded) for the
/// proxy to close: Some(time to close) or None if it stayed open.
async fn flood(addr: SocketAddr, frames: Vec<u8>) -> Option<Duration> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    // The proxy may close while we still write: a write error is the point.
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&frames)).await;
    let mut sink = vec![0u8; 1 << 16];
    let closed = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .ok()
        .map(|_| started.elapsed())
}

#[tokio::test]
async fn a_ping_flood_is_disconnected_and_counted_on_the_default_config() {
    let backend = FakeBackend::start("b").await;
    let app = start_app(&(base_toml() + &service_toml("svc", &[&backend], ""))).await;
    let mut frames = PREFACE.to_vec();
    frames.extend(frame(0x4, 0, &[]));
    for _ in 0..100_000 {
        frames.extend(ping());
    }
    let took = flood(app.proxy, frames).await;
    assert!(
        took.is_some(),
        "the connection stayed open 5 s after 100,000 unread PINGs"
    );
    let text = metrics_text(app.admin).await;
    assert_eq!(flood_closes(&text, app.proxy), 1.0);
    // Other clients are served as before.
    let resp = Http::h2c().get(app.proxy, "/svc/").await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn a_settings_flood_is_disconnected_too() {
    let backend = FakeBackend::start("b").await;
    let app = start_app(&(base_toml() + &service_toml("svc", &[&backend], ""))).await;
    let mut frames = PREFACE.to_vec();
    for _ in 0..50_000 {
        frames.extend(frame(0x4, 0, &[0, 3, 0, 0, 0, 100]));
    }
    assert!(flood(app.proxy, frames).await.is_some());
    let text = metrics_text(app.admin).await;
    assert_eq!(flood_closes(&text, app.proxy), 1.0);
}

/// A client pinging well inside the budget on one connection keeps it, and
/// its requests are served.
#[tokio::test]
async fn pings_at_keepalive_rates_are_answered() {
    let backend = FakeBackend::start("b").await;
    let app = start_app(&(base_toml() + &service_toml("svc", &[&backend], ""))).await;
    let mut stream = TcpStream::connect(app.proxy).await.expect("connect");
    let mut frames = PREFACE.to_vec();
    frames.extend(frame(0x4, 0, &[]));
    for _ in 0..500 {
        frames.extend(ping());
    }
    stream.write_all(&frames).await.expect("write");
    // Read until 500 PING ACKs came back (frames are parsed by header).
    let mut acks = 0;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(10);
    while acks < 500 {
        assert!(Instant::now() < deadline, "only {acks} PING ACKs came back");
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("answers within 10 s")
            .expect("read");
        assert!(n > 0, "closed after {acks} PING ACKs");
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == 0x6 && buf[4] & 1 == 1 {
                acks += 1;
            }
            buf.drain(..9 + len);
        }
    }
    let text = metrics_text(app.admin).await;
    assert_eq!(flood_closes(&text, app.proxy), 0.0);
}
