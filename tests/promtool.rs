//! SPEC §5: `promtool check metrics` must accept the /metrics output, with
//! every family populated (requests, errors, backends, health checks,
//! reloads, registry). promtool comes from Debian's `prometheus` package,
//! which `.ci/run` installs; without it this test fails and says so.

mod support;

use http::StatusCode;
use support::*;

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
    let (ok, report) = support::promtool::promtool_accepts(&text);
    assert!(
        ok,
        "promtool check metrics failed:\n{report}\n--- metrics ---\n{text}"
    );
}
