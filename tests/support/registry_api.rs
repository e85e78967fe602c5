//! The registry's admin API as tests drive it: register, heartbeat,
//! deregister and list, over real HTTP to an admin listener. Shared by
//! tests/registry.rs, tests/departure.rs and tests/cluster.

use std::net::SocketAddr;
use std::time::SystemTime;

use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::{full, get, request, Http, Resp};

pub fn instance_path(service: &str, id: &str) -> String {
    format!("/v1/services/{service}/instances/{id}")
}

/// One admin request with an optional body and bearer token.
pub async fn admin_call(
    admin: SocketAddr,
    method: Method,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Resp {
    let mut req = request(method.clone(), admin, path);
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req.body(full(body.to_owned())).unwrap();
    Http::new()
        .send(req)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub async fn put(addr: SocketAddr, path: &str, body: &str) -> Resp {
    admin_call(addr, Method::PUT, path, body, None).await
}

/// `PUT` a registration of `service`/`id` at `address` with `extra` JSON
/// fields (`{"ttl": "2s"}`); the answer, whatever it is.
pub async fn try_register(
    addr: SocketAddr,
    service: &str,
    id: &str,
    address: &str,
    extra: Value,
) -> Resp {
    let mut body = json!({ "address": address });
    if let (Value::Object(fields), Some(body)) = (extra, body.as_object_mut()) {
        body.extend(fields);
    }
    put(addr, &instance_path(service, id), &body.to_string()).await
}

/// Registers and asserts 200; the stored instance.
pub async fn register(
    addr: SocketAddr,
    service: &str,
    id: &str,
    address: &str,
    extra: Value,
) -> Value {
    let resp = try_register(addr, service, id, address, extra).await;
    assert_eq!(
        resp.status,
        StatusCode::OK,
        "register {service}/{id} on {addr}: {}",
        resp.text()
    );
    resp.json()
}

pub async fn heartbeat(addr: SocketAddr, service: &str, id: &str) -> Resp {
    let path = format!("{}/heartbeat", instance_path(service, id));
    put(addr, &path, "").await
}

pub async fn deregister(addr: SocketAddr, service: &str, id: &str) -> Resp {
    admin_call(addr, Method::DELETE, &instance_path(service, id), "", None).await
}

/// The instances `GET /v1/services/{service}` lists (none when it is 404).
pub async fn listed(addr: SocketAddr, service: &str) -> Vec<Value> {
    let resp = get(addr, &format!("/v1/services/{service}")).await;
    if resp.status == StatusCode::NOT_FOUND {
        return Vec::new();
    }
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    resp.json()["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The ids listed, in listing order.
pub async fn listed_ids(addr: SocketAddr, service: &str) -> Vec<String> {
    listed(addr, service)
        .await
        .iter()
        .map(|i| i["id"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// The ids listed, sorted.
pub async fn sorted_ids(addr: SocketAddr, service: &str) -> Vec<String> {
    let mut ids = listed_ids(addr, service).await;
    ids.sort();
    ids
}

/// `PATCH` an instance's runtime settings (`{"weight": 0}`, `{"drain": true}`).
pub async fn patch(admin: SocketAddr, service: &str, id: &str, body: Value) -> Resp {
    admin_call(
        admin,
        Method::PATCH,
        &instance_path(service, id),
        &body.to_string(),
        None,
    )
    .await
}

/// Which fake backend answered `GET /<service>/x` (`None`: an error answer).
pub async fn answered_by(http: &Http, proxy: SocketAddr, service: &str) -> Option<String> {
    let resp = http.get(proxy, &format!("/{service}/x")).await;
    resp.backend().map(str::to_owned)
}

/// An instance's `expires_at` (RFC 3339).
pub fn expires_at(instance: &Value) -> SystemTime {
    let text = instance["expires_at"].as_str().unwrap_or_default();
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("expires_at {text:?}: {e}"))
}
