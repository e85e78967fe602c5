//! The metric series of registered backends and of the services they fill
//! (issue 13, item 3: memory per registration). A backend's series are
//! written from its live state at each scrape, so they appear as soon as it
//! is in the table and go with it; a service's request series appear with
//! its first request and go when the service leaves the table. Two backends
//! under the same labels report one series, which promtool accepts.

mod support;

use http::StatusCode;
use serde_json::json;
use support::promtool::promtool_accepts;
use support::*;

fn backend_ok(text: &str, service: &str, backend: &str) -> Option<f64> {
    metric(
        text,
        "switchyard_backend_requests_total",
        &[
            ("service", service),
            ("backend", backend),
            ("outcome", "ok"),
        ],
    )
}

#[tokio::test]
async fn a_registered_backend_reports_from_its_registration_and_its_service_from_its_first_request()
{
    let backend = FakeBackend::start("b1").await;
    let app = start_app(&base_toml()).await;
    let addr = backend.address();
    register(app.admin, "web", "w1", &addr, json!({})).await;

    eventually(WAIT, "the registered backend's series", || async {
        let text = metrics_text(app.admin).await;
        backend_ok(&text, "web", &addr) == Some(0.0)
            && metric(&text, "switchyard_backend_up", &[("backend", &addr)]) == Some(1.0)
            && metric(
                &text,
                "switchyard_backend_state",
                &[("backend", &addr), ("state", "ready")],
            ) == Some(1.0)
    })
    .await;
    let text = metrics_text(app.admin).await;
    assert_eq!(
        metric(
            &text,
            "switchyard_request_duration_seconds_count",
            &[("service", "web")]
        ),
        None,
        "a service's request series appear with its first request"
    );

    let http = Http::new();
    let resp = http.get(app.proxy, "/web/x").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.backend(), Some("b1"));
    // The duration is recorded when the response body has ended.
    eventually(WAIT, "the first request's series", || async {
        let text = metrics_text(app.admin).await;
        metric(
            &text,
            "switchyard_request_duration_seconds_count",
            &[("service", "web")],
        ) == Some(1.0)
    })
    .await;
    let text = metrics_text(app.admin).await;
    for (name, labels, want) in [
        (
            "switchyard_requests_total",
            vec![("service", "web"), ("code", "200")],
            1.0,
        ),
        ("switchyard_retries_total", vec![("service", "web")], 0.0),
        (
            "switchyard_backend_requests_total",
            vec![("backend", addr.as_str()), ("outcome", "ok")],
            1.0,
        ),
        (
            "switchyard_backend_active_requests",
            vec![("backend", addr.as_str())],
            0.0,
        ),
        (
            "switchyard_outlier_ejections_total",
            vec![("backend", addr.as_str())],
            0.0,
        ),
    ] {
        assert_eq!(
            metric(&text, name, &labels),
            Some(want),
            "{name} {labels:?} in\n{text}"
        );
    }
    let (ok, report) = promtool_accepts(&text);
    assert!(ok, "promtool: {report}\n{text}");

    // The last instance leaves: the service leaves the table, and every
    // series of its backend and of the service goes with it.
    assert_eq!(
        deregister(app.admin, "web", "w1").await.status,
        StatusCode::NO_CONTENT
    );
    eventually(WAIT, "the departed service's series to go", || async {
        let text = metrics_text(app.admin).await;
        !text.lines().any(|l| l.contains("service=\"web\""))
    })
    .await;
}

#[tokio::test]
async fn one_address_configured_and_registered_in_a_service_is_one_series() {
    let backend = FakeBackend::start("b1").await;
    let app = start_app(&(base_toml() + &service_toml("web", &[&backend], ""))).await;
    let addr = backend.address();
    register(app.admin, "web", "w1", &addr, json!({})).await;
    let http = Http::new();
    eventually(WAIT, "both backends of `web` in the table", || async {
        let listed = http.get(app.admin, "/v1/services/web").await;
        listed.text().matches(&addr).count() >= 2
    })
    .await;
    for _ in 0..4 {
        assert_eq!(http.get(app.proxy, "/web/x").await.status, StatusCode::OK);
    }
    let text = metrics_text(app.admin).await;
    let ok_series: Vec<_> = metric_label_sets(&text, "switchyard_backend_requests_total")
        .into_iter()
        .filter(|labels| labels.iter().any(|(k, v)| k == "outcome" && v == "ok"))
        .collect();
    assert_eq!(ok_series.len(), 1, "{text}");
    assert_eq!(backend_ok(&text, "web", &addr), Some(4.0));
    assert_eq!(
        metric(&text, "switchyard_backend_up", &[("backend", &addr)]),
        Some(1.0)
    );
    let (ok, report) = promtool_accepts(&text);
    assert!(ok, "promtool: {report}\n{text}");
}
