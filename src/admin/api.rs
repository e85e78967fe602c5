//! The /v1 endpoints: reload, the dashboard's snapshot, service discovery (`discovery`) and the
//! registry's registration endpoints (`instances`).

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::{
    dashboard, discovery, error, instances, json, method_not_allowed, AdminResponse, AdminState,
};
use crate::backend::Backend;

pub async fn handle(
    state: &AdminState,
    method: &Method,
    path: &[&str],
    req: Request<Incoming>,
) -> AdminResponse {
    let query = req.uri().query().map(str::to_owned);
    let query = query.as_deref();
    match path {
        ["reload"] => match *method {
            Method::POST => reload(state).await,
            _ => method_not_allowed("POST"),
        },
        ["dashboard"] => match *method {
            Method::GET | Method::HEAD => dashboard::snapshot(state),
            _ => method_not_allowed("GET"),
        },
        ["services"] => match *method {
            Method::GET | Method::HEAD => discovery::list(state, query).await,
            _ => method_not_allowed("GET"),
        },
        ["services", name] => match *method {
            Method::GET | Method::HEAD => discovery::show(state, name, query).await,
            _ => method_not_allowed("GET"),
        },
        ["services", service, "instances", id] => match *method {
            Method::PUT => instances::register(state, service, id, req).await,
            Method::DELETE => instances::deregister(state, service, id).await,
            Method::PATCH => instances::patch(state, service, id, req).await,
            _ => method_not_allowed("PUT, PATCH, DELETE"),
        },
        ["services", service, "instances", id, "heartbeat"] => match *method {
            Method::PUT => instances::heartbeat(state, service, id).await,
            _ => method_not_allowed("PUT"),
        },
        ["services", _, "instances", ..] => instances::slash_in_name(),
        _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
    }
}

async fn reload(state: &AdminState) -> AdminResponse {
    match state.reloader.reload("admin API").await {
        Ok(()) => json(StatusCode::OK, &json!({ "status": "reloaded" })),
        Err(e) => json(
            StatusCode::BAD_REQUEST,
            &json!({ "error": e.to_string(), "errors": e.details() }),
        ),
    }
}

/// One backend as the listings show it (`discovery` adds the registry's fields).
pub(super) fn instance_json(b: &Backend) -> Value {
    json!({
        "id": &*b.id,
        "address": &*b.address,
        "weight": b.weight(),
        "source": b.source.as_str(),
        "health": b.health().as_str(),
        "ejected": b.is_ejected(),
        // Departed with requests in flight, or drained by the admin API.
        "draining": b.is_draining() || b.is_admin_drained(),
        "state": if b.is_admin_drained() { "drain" } else { "ready" },
        "active_requests": b.active_requests(),
        "expires_at": Value::Null,
    })
}
