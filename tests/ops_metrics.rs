//! The operations metrics (SPEC §8 and the additions to §5): `process_*`,
//! `switchyard_config_last_reload_successful` and its success timestamp
//! after a good and a bad reload, `switchyard_unrouted_requests_total`,
//! `switchyard_backend_state` for each state, and
//! `switchyard_access_log_dropped_total`; promtool accepts the whole text.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde_json::json;
use support::promtool::promtool_accepts;
use support::*;

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels).unwrap_or_else(|| panic!("{name}{labels:?} missing:\n{text}"))
}

fn state_of(text: &str, service: &str, backend: &str) -> Vec<String> {
    let states = ["ready", "unknown", "unhealthy", "ejected", "draining"];
    let on: Vec<String> = states
        .iter()
        .filter(|s| {
            value(
                text,
                "switchyard_backend_state",
                &[("service", service), ("backend", backend), ("state", s)],
            ) == 1.0
        })
        .map(|s| s.to_string())
        .collect();
    on
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_gauges_follow_a_good_and_a_bad_reload() {
    let web = FakeBackend::start("web").await;
    let good = base_toml() + &service_toml("web", &[&web], "");
    let before_start = now_secs();
    let app = start_app(&good).await;
    let text = metrics_text(app.admin).await;
    assert_eq!(
        value(&text, "switchyard_config_last_reload_successful", &[]),
        1.0
    );
    let loaded_at = value(
        &text,
        "switchyard_config_last_reload_success_timestamp_seconds",
        &[],
    );
    assert!(
        loaded_at >= before_start - 1.0 && loaded_at <= now_secs() + 1.0,
        "{loaded_at}"
    );

    // A good reload moves the timestamp on.
    eventually(WAIT, "the clock to move past the load", || async {
        now_secs() > loaded_at + 0.01
    })
    .await;
    app.config.write_in_place(&(good.clone() + "\n# touched\n"));
    assert_eq!(admin_reload(app.admin).await.status, StatusCode::OK);
    let text = metrics_text(app.admin).await;
    assert_eq!(
        value(&text, "switchyard_config_last_reload_successful", &[]),
        1.0
    );
    let reloaded_at = value(
        &text,
        "switchyard_config_last_reload_success_timestamp_seconds",
        &[],
    );
    assert!(reloaded_at > loaded_at, "{reloaded_at} after {loaded_at}");

    // A bad one sets 0 and leaves the timestamp of the last success.
    app.config
        .write_in_place(&(good.clone() + "[services.web.retry]\nattempts = -1\n"));
    assert_eq!(
        admin_reload(app.admin).await.status,
        StatusCode::BAD_REQUEST
    );
    let text = metrics_text(app.admin).await;
    assert_eq!(
        value(&text, "switchyard_config_last_reload_successful", &[]),
        0.0
    );
    assert_eq!(
        value(
            &text,
            "switchyard_config_last_reload_success_timestamp_seconds",
            &[]
        ),
        reloaded_at
    );
    assert_eq!(
        value(
            &text,
            "switchyard_config_reloads_total",
            &[("result", "error")]
        ),
        1.0
    );
    let (ok, report) = promtool_accepts(&text);
    assert!(ok, "promtool rejected the metrics:\n{report}\n{text}");

    // And the next good one sets it back to 1.
    app.config.write_in_place(&good);
    assert_eq!(admin_reload(app.admin).await.status, StatusCode::OK);
    let text = metrics_text(app.admin).await;
    assert_eq!(
        value(&text, "switchyard_config_last_reload_successful", &[]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_unrouted_and_access_log_metrics_pass_promtool() {
    let web = FakeBackend::start("web").await;
    let toml =
        base_toml() + "[access_log]\npath = \"access.log\"\n\n" + &service_toml("web", &[&web], "");
    let app = start_app(&toml).await;
    for _ in 0..3 {
        assert_eq!(
            get(app.proxy, "/nowhere").await.status,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(get(app.proxy, "/web/x").await.status, StatusCode::OK);
    let text = metrics_text(app.admin).await;
    assert_eq!(
        value(
            &text,
            "switchyard_unrouted_requests_total",
            &[("code", "404")]
        ),
        3.0
    );
    // Routed requests are not in it, and unrouted ones not in the per-service family.
    assert_eq!(
        metric_label_sets(&text, "switchyard_unrouted_requests_total").len(),
        1
    );
    assert_eq!(
        value(
            &text,
            "switchyard_requests_total",
            &[("service", "web"), ("code", "200")]
        ),
        1.0
    );
    assert_eq!(
        value(&text, "switchyard_access_log_dropped_total", &[]),
        0.0
    );
    assert!(value(&text, "process_resident_memory_bytes", &[]) > 1_000_000.0);
    assert!(value(&text, "process_open_fds", &[]) >= 3.0);
    assert!(value(&text, "process_max_fds", &[]) >= 3.0);
    let started = value(&text, "process_start_time_seconds", &[]);
    assert!(
        started > now_secs() - 3600.0 && started <= now_secs() + 1.0,
        "{started}"
    );
    assert!(
        text.contains("# TYPE process_cpu_seconds_total counter"),
        "{text}"
    );
    let (ok, report) = promtool_accepts(&text);
    assert!(ok, "promtool rejected the metrics:\n{report}\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_state_names_ready_unhealthy_ejected_and_draining() {
    let web = FakeBackend::start("web").await;
    let held = FakeBackend::start("held").await;
    let reset = ResetBackend::start().await;
    let dead = refused_addr();
    let check = "[services.SVC.health_check]\ninterval = \"100ms\"\npath = \"/healthz\"\n";
    let toml = base_toml()
        + &service_toml("web", &[&web], &check.replace("SVC", "web"))
        + &format!(
            "[services.dead]\nbackends = [\"{dead}\"]\n{}",
            check.replace("SVC", "dead")
        )
        + &format!(
            "[services.flaky]\nbackends = [\"{}\"]\n[services.flaky.outlier]\n\
             consecutive_failures = 1\nbase_ejection = \"60s\"\nmax_ejected_percent = 100\n\
             [services.flaky.retry]\nattempts = 0\n",
            reset.address()
        )
        + "[services.reg]\n";
    let app = start_app(&toml).await;
    let dead = dead.to_string();

    eventually(WAIT, "web ready and dead unhealthy", || async {
        let text = metrics_text(app.admin).await;
        metric(
            &text,
            "switchyard_backend_state",
            &[
                ("service", "web"),
                ("backend", &web.address()),
                ("state", "ready"),
            ],
        ) == Some(1.0)
            && metric(
                &text,
                "switchyard_backend_state",
                &[
                    ("service", "dead"),
                    ("backend", &dead),
                    ("state", "unhealthy"),
                ],
            ) == Some(1.0)
    })
    .await;
    let text = metrics_text(app.admin).await;
    assert_eq!(state_of(&text, "web", &web.address()), ["ready"]);
    assert_eq!(state_of(&text, "dead", &dead), ["unhealthy"]);
    assert_eq!(
        value(
            &text,
            "switchyard_backend_up",
            &[("service", "dead"), ("backend", &dead)]
        ),
        0.0
    );

    // One reset answer ejects the flaky backend.
    assert_eq!(
        get(app.proxy, "/flaky/x").await.status,
        StatusCode::BAD_GATEWAY
    );
    let text = metrics_text(app.admin).await;
    assert_eq!(state_of(&text, "flaky", &reset.address()), ["ejected"]);

    // A registered instance deregistered with a request in flight drains.
    register(app.admin, "reg", "h1", &held.address(), json!({})).await;
    eventually(WAIT, "the registered instance to take requests", || async {
        Http::new()
            .try_get(app.proxy, "/reg/ping")
            .await
            .is_ok_and(|r| r.status == StatusCode::OK)
    })
    .await;
    let proxy = app.proxy;
    let in_flight = tokio::spawn(async move { get(proxy, "/reg/x?hold=1").await });
    eventually(WAIT, "the request to wait at the backend", || async {
        held.held() == 1
    })
    .await;
    assert_eq!(
        deregister(app.admin, "reg", "h1").await.status,
        StatusCode::NO_CONTENT
    );
    let text = metrics_text(app.admin).await;
    assert_eq!(state_of(&text, "reg", &held.address()), ["draining"]);
    assert_eq!(
        value(
            &text,
            "switchyard_backend_up",
            &[("service", "reg"), ("backend", &held.address())]
        ),
        0.0
    );
    let (ok, report) = promtool_accepts(&text);
    assert!(ok, "promtool rejected the metrics:\n{report}\n{text}");
    held.release(1);
    assert_eq!(in_flight.await.unwrap().status, StatusCode::OK);
}
