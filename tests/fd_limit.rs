//! File-descriptor exhaustion (issue 13, item 2): under a low open-file
//! limit, idle clients cannot take every descriptor. Switchyard lowers its
//! connection cap below the limit at start-up and says so; an established
//! client is still served through a fresh backend connection while hundreds
//! of idle sockets wait; the accept loop never fails.

mod support;

use std::time::Duration;

use support::*;
use tokio::net::TcpStream;

const IDLE_CLIENTS: usize = 400;

#[tokio::test]
async fn idle_clients_cannot_take_the_descriptors_backends_need() {
    if !tools::require(&tools::PRLIMIT) {
        return;
    }
    let first = FakeBackend::start("first").await;
    let late = FakeBackend::start("late").await;
    let config = ConfigFile::new(
        &(base_toml()
            + &service_toml("first", &[&first], "")
            + &service_toml("late", &[&late], "")),
    );
    let proc = spawn_binary_under(
        &["prlimit", "--nofile=256:256", "--"],
        &["serve", "--config", &config.path_str()],
        1,
    )
    .await;
    let log = proc.stderr();
    assert!(
        log.contains("max_connections lowered from 10000 to 95"),
        "no start-up line about the lowered cap:\n{log}"
    );

    // An established client, served once.
    let mut established = h1_connection(proc.proxy()).await.expect("connect");
    let resp = established
        .send_request(
            origin_request(http::Method::GET, proc.proxy(), "/first/")
                .body(empty())
                .unwrap(),
        )
        .await
        .expect("first request");
    assert_eq!(resp.status(), 200);

    // Hundreds of idle clients: the first 94 more are accepted, the rest
    // wait in the kernel's backlog.
    let mut idle = Vec::with_capacity(IDLE_CLIENTS);
    for _ in 0..IDLE_CLIENTS {
        idle.push(
            TcpStream::connect(proc.proxy())
                .await
                .expect("connect idle"),
        );
    }
    let listener = proc.proxy().to_string();
    eventually(
        Duration::from_secs(10),
        "95 client connections open",
        || async {
            let text = metrics_text(proc.admin).await;
            metric(
                &text,
                "switchyard_connections_open",
                &[("listener", listener.as_str())],
            ) == Some(95.0)
        },
    )
    .await;

    // The established client reaches a backend it has no connection to yet.
    let resp = established
        .send_request(
            origin_request(http::Method::GET, proc.proxy(), "/late/")
                .body(empty())
                .unwrap(),
        )
        .await
        .expect("request while idle clients wait");
    assert_eq!(
        resp.status(),
        200,
        "{:?}",
        resp.headers().get("x-switchyard-error")
    );
    assert_eq!(late.hits(), 1);
    let log = proc.stderr();
    assert!(!log.contains("accept failed"), "{log}");
    assert!(!log.contains("out of file descriptors"), "{log}");
    drop(idle);
}
