//! The files under deploy/: the compose example's Switchyard config passes
//! `check`, its Prometheus config passes `promtool check config`, every
//! metric its Grafana dashboard queries is one Switchyard exports, its demo
//! backend (demo-backend/backend.py, run with the real python3) registers
//! itself, heartbeats past its lease and deregisters on SIGTERM; the systemd
//! unit passes `systemd-analyze verify`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::*;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

/// The compose config, moved to loopback and ephemeral ports, with a fixed token.
fn compose_config_on_loopback() -> String {
    let text = std::fs::read_to_string(deploy("compose/switchyard.toml")).expect("read");
    let replaced = text
        .replace("\"0.0.0.0:8080\"", "\"127.0.0.1:0\"")
        .replace("\"0.0.0.0:9091\"", "\"127.0.0.1:0\"")
        .replace(
            "token_env = \"SWITCHYARD_ADMIN_TOKEN\"",
            "token = \"deploy-test\"",
        )
        .replace(
            "allowed_networks = [",
            "allowed_networks = [\"127.0.0.0/8\", ",
        );
    assert_ne!(
        text, replaced,
        "the compose config changed shape; update this test"
    );
    replaced
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_configs_validate() {
    if !tools::require(&tools::PROMTOOL) {
        return;
    }
    let config = deploy("compose/switchyard.toml");
    let out = tokio::process::Command::new(BIN)
        .args(["check", config.to_str().unwrap()])
        .env("SWITCHYARD_ADMIN_TOKEN", "x")
        .output()
        .await
        .expect("run check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let prometheus = deploy("compose/prometheus/prometheus.yml");
    let out = std::process::Command::new("promtool")
        .args(["check", "config", prometheus.to_str().unwrap()])
        .output()
        .expect("promtool (Debian's prometheus package) is needed");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Metric names in a PromQL expression (identifiers starting `switchyard_`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("switchyard_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_queries_only_metrics_switchyard_exports() {
    let text = std::fs::read_to_string(deploy("compose/grafana/dashboards/switchyard.json"))
        .expect("read dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert_eq!(dashboard["uid"], "switchyard");
    // A running Switchyard with traffic, health checks, a retry and a registration.
    let backend = FakeBackend::start("a").await;
    let check = "[services.web.health_check]\npath = \"/\"\ninterval = \"200ms\"\n";
    let app = start_app(&(base_toml() + &service_toml("web", &[&backend], check))).await;
    eventually(
        WAIT,
        "the backend checked healthy and answering",
        || async { get(app.proxy, "/web/").await.status == 200 },
    )
    .await;
    let other = FakeBackend::start("b").await;
    let body = serde_json::json!({ "ttl": "0s" });
    support::registry_api::register(app.admin, "api", "b-1", &other.address(), body).await;
    eventually(WAIT, "the registration in the metrics", || async {
        metrics_text(app.admin)
            .await
            .contains("switchyard_registry_instances{")
    })
    .await;
    let exported: Vec<String> = metrics_text(app.admin)
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let exports = |name: &str| {
        exported.iter().any(|e| {
            name == e
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(e.as_str()))
        })
    };
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut titles = Vec::new();
    for panel in panels {
        titles.push(panel["title"].as_str().unwrap_or_default().to_owned());
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                assert!(
                    exports(&name),
                    "{name} (panel {}) is not exported",
                    panel["title"]
                );
            }
        }
    }
    for wanted in [
        "Request rate",
        "Error ratio (5xx)",
        "Latency percentiles",
        "Backend health",
    ] {
        assert!(
            titles.iter().any(|t| t == wanted),
            "no panel {wanted}: {titles:?}"
        );
    }
}

/// Runs the compose example's backend.py as backend `id` on a free port.
fn demo_backend(admin: std::net::SocketAddr, id: &str, port: u16) -> tokio::process::Child {
    tokio::process::Command::new("python3")
        .arg(deploy("compose/demo-backend/backend.py"))
        .env("SWITCHYARD_ADMIN", format!("http://{admin}"))
        .env("SWITCHYARD_ADMIN_TOKEN", "deploy-test")
        .env("SERVICE", "web")
        .env("INSTANCE_ID", id)
        .env("PORT", port.to_string())
        .env("ADVERTISE", format!("127.0.0.1:{port}"))
        .env("TTL", "3s")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the demo backend")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn instance_ids(admin: std::net::SocketAddr) -> Vec<String> {
    let resp = get(admin, "/v1/services/web").await;
    let body = resp.json();
    let mut ids: Vec<String> = body["instances"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|i| i["health"] == "healthy")
                .filter_map(|i| i["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_backends_register_heartbeat_and_deregister() {
    if !tools::require(&tools::PYTHON3) {
        return;
    }
    let app = start_app(&compose_config_on_loopback()).await;
    let mut backends = Vec::new();
    for id in ["backend-1", "backend-2", "backend-3"] {
        backends.push(demo_backend(app.admin, id, free_port()));
    }
    let all = vec!["backend-1", "backend-2", "backend-3"];
    eventually(
        Duration::from_secs(20),
        "three healthy registered backends",
        || async { instance_ids(app.admin).await == all },
    )
    .await;
    // Every one answers through the proxy (route "/" -> web). Listed as
    // healthy is not yet routed: the table is published just after, so wait
    // for the proxy itself to see all three.
    eventually(
        Duration::from_secs(20),
        "all three to answer through the proxy",
        || async {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..30 {
                let resp = get(app.proxy, "/hello").await;
                if resp.status != 200 {
                    return false;
                }
                seen.insert(resp.header("x-instance").unwrap_or_default().to_owned());
            }
            seen.len() == 3
        },
    )
    .await;
    // Until two 3 s leases past the ones they hold now have ended, the
    // heartbeats keep all three.
    let ends = listed(app.admin, "web").await.iter().map(expires_at).max();
    let until = ends.expect("three instances") + Duration::from_secs(3);
    holds_until(until, "all three listed healthy", || async {
        instance_ids(app.admin).await == all
    })
    .await;
    // SIGTERM: backend-2 deregisters itself, well before its lease would end.
    let pid = backends[1].id().expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    eventually(Duration::from_secs(2), "backend-2 deregistered", || async {
        instance_ids(app.admin).await == ["backend-1", "backend-3"]
    })
    .await;
    let exited = tokio::time::timeout(Duration::from_secs(5), backends[1].wait()).await;
    assert!(exited.is_ok(), "backend-2 exits after deregistering");
}

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(deploy("systemd/switchyard.service")).expect("read unit");
    for line in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "Environment=SWITCHYARD_CONFIG=/etc/switchyard/switchyard.toml",
    ] {
        assert!(unit.lines().any(|l| l == line), "no `{line}` in the unit");
    }
    // systemd-analyze checks the directives; point it at the binary this test built.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("switchyard.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/switchyard", BIN)).expect("write");
    if !tools::require(&tools::SYSTEMD_ANALYZE) {
        return;
    }
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
