//! `switchyard register` against a running `switchyard serve` (both the real
//! binary): register, heartbeat past twice the ttl, re-register after a lost
//! lease, deregister on SIGTERM, and the one-line errors with a non-zero
//! exit when the admin API is unreachable or refuses.

mod support;

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A running `switchyard register`; killed when dropped.
struct Register {
    child: tokio::process::Child,
    pid: u32,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Reads stderr to its end; awaited after exit so no line is missed.
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Register {
    fn start(args: &[&str]) -> Register {
        let mut child = tokio::process::Command::new(BIN)
            .arg("register")
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("SWITCHYARD_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn switchyard register");
        let pid = child.id().expect("pid");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr);
        let pipe = child.stderr.take().expect("stderr");
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Register {
            child,
            pid,
            stderr,
            reader: Some(reader),
        }
    }

    fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    async fn exit(&mut self) -> ExitStatus {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("register did not exit; stderr:\n{}", self.stderr()))
            .expect("wait");
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(WAIT, reader).await;
        }
        status
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

fn admin_url(admin: SocketAddr) -> String {
    format!("http://{admin}")
}

async fn serve(extra: &str) -> (ConfigFile, Proc) {
    let config = ConfigFile::new(&format!("{}{extra}", base_toml()));
    let proc = spawn_serve(&config).await;
    (config, proc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_heartbeats_until_sigterm_then_deregisters() {
    let (_config, server) = serve("").await;
    let backend = FakeBackend::start("wrapped").await;
    let url = admin_url(server.admin);
    let address = backend.address();
    let mut register = Register::start(&[
        "--admin",
        &url,
        "--service",
        "web",
        "--id",
        "w1",
        "--address",
        &address,
        "--ttl",
        "1s",
        "--heartbeat",
    ]);
    eventually(WAIT, "the instance to be registered", || async {
        listed_ids(server.admin, "web").await == ["w1"]
    })
    .await;
    // Until a second lease past the first has ended (2 ttl): only the
    // heartbeats keep it.
    let first = listed(server.admin, "web").await;
    let until = expires_at(&first[0]) + Duration::from_secs(1);
    holds_until(until, "w1 is listed", || async {
        listed_ids(server.admin, "web").await == ["w1"]
    })
    .await;
    let http = Http::new();
    eventually(
        Duration::from_secs(1),
        "traffic to the registered instance",
        || async { http.get(server.proxy(), "/web/x").await.backend() == Some("wrapped") },
    )
    .await;

    register.signal("TERM");
    let status = register.exit().await;
    assert!(
        status.success(),
        "exit {status:?}; stderr:\n{}",
        register.stderr()
    );
    assert!(
        listed_ids(server.admin, "web").await.is_empty(),
        "deregistered on the way out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_registered_again() {
    let (_config, server) = serve("").await;
    let url = admin_url(server.admin);
    let mut register = Register::start(&[
        "--admin",
        &url,
        "--service",
        "web",
        "--id",
        "w1",
        "--address",
        "127.0.0.1:9",
        "--ttl",
        "1s",
        "--weight",
        "3",
        "--heartbeat",
    ]);
    eventually(WAIT, "the instance to be registered", || async {
        listed_ids(server.admin, "web").await == ["w1"]
    })
    .await;
    let path = "/v1/services/web/instances/w1";
    let req = request(Method::DELETE, server.admin, path)
        .body(empty())
        .unwrap();
    assert_eq!(
        Http::new().send(req).await.unwrap().status,
        StatusCode::NO_CONTENT
    );
    eventually(
        Duration::from_secs(3),
        "the next heartbeat to register it again",
        || async { listed_ids(server.admin, "web").await == ["w1"] },
    )
    .await;
    let weight =
        get(server.admin, "/v1/services/web").await.json()["instances"][0]["weight"].clone();
    assert_eq!(weight, 3);
    register.signal("INT");
    assert!(
        register.exit().await.success(),
        "stderr:\n{}",
        register.stderr()
    );
    assert!(listed_ids(server.admin, "web").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_once_without_heartbeat_exits_zero() {
    let (_config, server) = serve("").await;
    let url = admin_url(server.admin);
    let mut register = Register::start(&[
        "--admin",
        &url,
        "--service",
        "web",
        "--id",
        "once",
        "--address",
        "127.0.0.1:9",
        "--ttl",
        "0s",
    ]);
    assert!(
        register.exit().await.success(),
        "stderr:\n{}",
        register.stderr()
    );
    assert_eq!(listed_ids(server.admin, "web").await, ["once"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_sent_and_a_refusal_is_one_line_and_nonzero() {
    let (_config, server) = serve("token = \"s3cret\"\n").await;
    let url = admin_url(server.admin);
    let args = [
        "--admin",
        &url,
        "--service",
        "web",
        "--id",
        "t1",
        "--address",
        "127.0.0.1:9",
    ];

    let mut without = Register::start(&args);
    let status = without.exit().await;
    assert!(!status.success());
    let stderr = without.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("switchyard register:"))
        .unwrap_or_default();
    assert!(line.contains("401"), "{stderr}");
    assert!(line.contains("token"), "{stderr}");

    let mut with = Register::start(&[&args[..], &["--token", "s3cret"]].concat());
    assert!(with.exit().await.success(), "stderr:\n{}", with.stderr());
    assert_eq!(listed_ids(server.admin, "web").await, ["t1"]);

    // A refused address: 403 with the server's reason.
    let own = server.proxy().to_string();
    let mut refused = Register::start(&[
        "--admin",
        &url,
        "--service",
        "web",
        "--id",
        "t2",
        "--address",
        &own,
        "--token",
        "s3cret",
    ]);
    assert!(!refused.exit().await.success());
    let stderr = refused.stderr();
    assert!(
        stderr.contains("403") && stderr.contains("own listeners"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_admin_is_a_clear_error() {
    let closed = refused_addr();
    let url = admin_url(closed);
    let mut register = Register::start(&[
        "--admin",
        &url,
        "--service",
        "web",
        "--id",
        "x",
        "--address",
        "127.0.0.1:9",
        "--heartbeat",
    ]);
    let status = register.exit().await;
    assert!(!status.success());
    let stderr = register.stderr();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("switchyard register:"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("cannot reach the admin API"), "{stderr}");

    let mut bad_url = Register::start(&[
        "--admin",
        "localhost:9091",
        "--service",
        "web",
        "--id",
        "x",
        "--address",
        "127.0.0.1:9",
    ]);
    assert!(!bad_url.exit().await.success());
    assert!(bad_url.stderr().contains("http://"), "{}", bad_url.stderr());

    let mut bad_id = Register::start(&[
        "--admin",
        &url,
        "--service",
        "web",
        "--id",
        "a/b",
        "--address",
        "127.0.0.1:9",
    ]);
    assert!(!bad_id.exit().await.success());
    assert!(
        bad_id.stderr().contains("instance id"),
        "{}",
        bad_id.stderr()
    );
}
