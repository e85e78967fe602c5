//! The admin API as tests read it: metrics text, readiness, reload.

use std::net::SocketAddr;

use bytes::Bytes;
use http::StatusCode;

use super::{eventually, get, Http, Resp, WAIT};

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
