//! SPEC §5: `promtool check metrics` must accept the /metrics output, with
//! every family populated (requests, errors, backends, health checks,
//! reloads, registry). promtool comes from Debian's `prometheus` package,
//! which `.ci/run` installs; without it this test fails and says so.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use http::StatusCode;
use support::*;

fn promtool_check(text: &str) -> (bool, String) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool not runnable ({e}); install Debian's `prometheus` package (.ci/run does)"
        ),
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .expect("write metrics to promtool");
    }
    let out = child.wait_with_output().expect("promtool runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics() {
    let web = FakeBackend::start("web").await;
    let toml = base_toml()
        + &service_toml(
            "web",
            &[&web],
            "[services.web.health_check]\ninterval = \"100ms\"\npath = \"/healthz\"\n",
        )
        + &format!("[services.dead]\nbackends = [\"{}\"]\n", refused_addr());
    let app = start_app(&toml).await;
    eventually(WAIT, "web to pass its first health check", || async {
        get(app.proxy, "/web/x").await.status == StatusCode::OK
    })
    .await;
    assert_eq!(
        get(app.proxy, "/dead/x").await.status,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        get(app.proxy, "/nothing-here").await.status,
        StatusCode::NOT_FOUND
    );
    let _ = admin_reload(app.admin).await;
    let text = metrics_text(app.admin).await;
    for family in [
        "switchyard_requests_total",
        "switchyard_request_duration_seconds_bucket",
        "switchyard_backend_requests_total",
        "switchyard_backend_up",
        "switchyard_backend_active_requests",
        "switchyard_health_checks_total",
        "switchyard_retries_total",
        "switchyard_connections_open",
        "switchyard_config_reloads_total",
        "switchyard_build_info",
    ] {
        assert!(
            text.contains(family),
            "{family} missing from /metrics:\n{text}"
        );
    }
    let (ok, report) = promtool_check(&text);
    assert!(
        ok,
        "promtool check metrics failed:\n{report}\n--- metrics ---\n{text}"
    );
}
