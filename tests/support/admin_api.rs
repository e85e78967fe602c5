//! The admin API as tests read it: metrics text, readiness, reload, an
//! instance's health.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;

use super::{eventually, get, metric, Http, Resp, WAIT};

pub async fn metrics_text(admin: SocketAddr) -> String {
    let resp = get(admin, "/metrics").await;
    assert_eq!(resp.status, StatusCode::OK, "GET /metrics");
    resp.text()
}

/// Waits (≤ `WAIT`) until `/readyz` answers 200: readiness is set once
/// `run` has started, a moment after the listeners are bound.
pub async fn wait_ready(admin: SocketAddr) {
    eventually(WAIT, "/readyz to answer 200", || async {
        matches!(Http::new().try_get(admin, "/readyz").await, Ok(r) if r.status == StatusCode::OK)
    })
    .await;
}

/// `POST /v1/reload` on the admin listener.
pub async fn admin_reload(admin: SocketAddr) -> Resp {
    Http::new().post(admin, "/v1/reload", Bytes::new()).await
}

/// The instance at `address` as `GET /v1/services/{service}` lists it
/// (`None`: no answer, or no such instance).
pub async fn instance_of(
    admin: SocketAddr,
    service: &str,
    address: &str,
) -> Option<serde_json::Value> {
    let resp = Http::new()
        .try_get(admin, &format!("/v1/services/{service}"))
        .await
        .ok()?;
    let json: serde_json::Value = serde_json::from_slice(&resp.body).ok()?;
    json["instances"]
        .as_array()?
        .iter()
        .find(|i| i["address"] == address)
        .cloned()
}

/// The `health` of the instance at `address` (`healthy`, `unhealthy`,
/// `unknown`; `None`: no answer, or no such instance).
pub async fn health_of(admin: SocketAddr, service: &str, address: &str) -> Option<String> {
    let instance = instance_of(admin, service, address).await?;
    instance["health"].as_str().map(str::to_string)
}

/// Waits (≤ `limit`) until the instance at `address` is `want` (`healthy`,
/// `unhealthy`, `unknown`); returns how long it took.
pub async fn wait_health(
    admin: SocketAddr,
    service: &str,
    address: &str,
    want: &str,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let what = format!("{service}/{address} to be {want}");
    eventually(limit, &what, || async {
        health_of(admin, service, address).await.as_deref() == Some(want)
    })
    .await;
    started.elapsed()
}

/// `switchyard_retries_total` of `service` in a metrics text (0 when absent).
pub fn retries(metrics: &str, service: &str) -> f64 {
    metric(metrics, "switchyard_retries_total", &[("service", service)]).unwrap_or(0.0)
}

/// `switchyard_health_checks_total` summed over the samples with `labels`
/// (`[("backend", ADDR), ("result", "failure")]`); 0 when absent.
pub fn health_checks(metrics: &str, labels: &[(&str, &str)]) -> f64 {
    metric(metrics, "switchyard_health_checks_total", labels).unwrap_or(0.0)
}
