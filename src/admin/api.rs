//! The /v1 endpoints: reload and service discovery.

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::{error, json, method_not_allowed, AdminResponse, AdminState};
use crate::backend::Backend;
use crate::table::Service;

pub async fn handle(
    state: &AdminState,
    method: &Method,
    path: &[&str],
    _req: Request<Incoming>,
) -> AdminResponse {
    match path {
        ["reload"] => match *method {
            Method::POST => reload(state).await,
            _ => method_not_allowed("POST"),
        },
        ["services"] => match *method {
            Method::GET | Method::HEAD => list_services(state),
            _ => method_not_allowed("GET"),
        },
        ["services", name] => match *method {
            Method::GET | Method::HEAD => show_service(state, name),
            _ => method_not_allowed("GET"),
        },
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

fn list_services(state: &AdminState) -> AdminResponse {
    let table = state.publisher.table().load_full();
    let services: Vec<Value> = table
        .services
        .iter()
        .map(|s| {
            json!({
                "name": &*s.name,
                "balance": s.policy.as_str(),
                "instances": s.backends.len(),
                "healthy": s.ready.len(),
            })
        })
        .collect();
    json(StatusCode::OK, &json!({ "services": services }))
}

fn show_service(state: &AdminState, name: &str) -> AdminResponse {
    let table = state.publisher.table().load_full();
    match table.service(name) {
        Some(service) => json(StatusCode::OK, &service_json(service)),
        None => error(StatusCode::NOT_FOUND, "no such service"),
    }
}

fn service_json(service: &Service) -> Value {
    let instances: Vec<Value> = service.backends.iter().map(|b| instance_json(b)).collect();
    json!({
        "name": &*service.name,
        "balance": service.policy.as_str(),
        "instances": instances,
    })
}

fn instance_json(b: &Backend) -> Value {
    json!({
        "id": &*b.id,
        "address": &*b.address,
        "weight": b.weight(),
        "source": b.source.as_str(),
        "health": b.health().as_str(),
        "ejected": false,
        "draining": b.is_draining(),
        "active_requests": b.active_requests(),
        "expires_at": Value::Null,
    })
}
