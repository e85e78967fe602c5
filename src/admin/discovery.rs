//! Discovery: `GET /v1/services` and `GET /v1/services/{service}`.
//!
//! The answer joins two views. The published table has each backend's live
//! state (health, ejection, draining, requests in flight); the registry's
//! snapshot has lease ends and metadata, and is newer: the table catches up
//! within the publisher's coalescing delay (~20 ms). So a registered
//! instance the table does not have yet is listed (`"health": "unknown"`),
//! and one already deregistered is hidden unless requests are still in
//! flight on it (then it shows `"draining": true`). A client that PUTs and
//! then GETs sees its write.
//!
//! Query parameters: `healthy=true` lists only instances that may receive
//! traffic (and, on the list, only services with one). `index=N` makes a
//! blocking query, as Consul's: the answer waits until the registry's index
//! (the `X-Switchyard-Index` header of every answer, also `"index"` in the
//! body) is past N, or `wait` (default 30s, at most 5m) has passed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::StatusCode;
use serde_json::{json, Value};

use super::api::instance_json;
use super::{error, json, AdminResponse, AdminState};
use crate::backend::{Backend, Source};
use crate::config::{Config, ServiceConfig};
use crate::registry::instance::format_time;
use crate::registry::{Instance, Snapshot};
use crate::table::Service;

/// The response header carrying the registry index.
pub const INDEX_HEADER: &str = "x-switchyard-index";
/// How long a blocking query waits by default, and at most.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(300);

/// Parsed query parameters (unknown ones are ignored, as HTTP APIs do).
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub healthy: bool,
    pub index: Option<u64>,
    pub wait: Duration,
}

/// Parse `healthy`, `index` and `wait`; the error is the 400 message.
pub fn parse_query(query: Option<&str>) -> Result<Query, &'static str> {
    let mut parsed = Query {
        healthy: false,
        index: None,
        wait: DEFAULT_WAIT,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "healthy" => {
                parsed.healthy = match value {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    _ => return Err("healthy must be true or false"),
                }
            }
            "index" => {
                let index = value
                    .parse()
                    .map_err(|_| "index must be a non-negative integer")?;
                parsed.index = Some(index);
            }
            "wait" => {
                parsed.wait = humantime::parse_duration(value)
                    .ok()
                    .filter(|w| *w <= MAX_WAIT)
                    .ok_or("wait must be a duration like \"30s\", at most \"5m\"")?;
            }
            _ => {}
        }
    }
    Ok(parsed)
}

/// `GET /v1/services`.
pub async fn list(state: &AdminState, query: Option<&str>) -> AdminResponse {
    let query = match parse_query(query) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let snapshot = block(state, &query).await;
    let table = state.publisher.table().load_full();
    let config = state.publisher.config();
    let mut services: BTreeMap<&str, Value> = BTreeMap::new();
    let names = table
        .services
        .iter()
        .map(|s| &*s.name)
        .chain(snapshot.services().map(|(name, _)| &**name));
    for name in names {
        let rows = rows(table.service(name).map(|s| &**s), name, &snapshot);
        if rows.is_empty() && table.service(name).is_none() {
            continue;
        }
        let healthy = rows.iter().filter(|r| r.is_ready()).count();
        if query.healthy && healthy == 0 {
            continue;
        }
        let summary = json!({
            "name": name,
            "balance": balance(table.service(name).map(|s| &**s), name, &config),
            "instances": rows.len(),
            "healthy": healthy,
        });
        services.insert(name, summary);
    }
    let services: Vec<Value> = services.into_values().collect();
    indexed(
        json!({ "services": services, "index": snapshot.index }),
        snapshot.index,
    )
}

/// `GET /v1/services/{service}`.
pub async fn show(state: &AdminState, name: &str, query: Option<&str>) -> AdminResponse {
    let query = match parse_query(query) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let snapshot = block(state, &query).await;
    let table = state.publisher.table().load_full();
    let service = table.service(name).map(|s| &**s);
    let rows = rows(service, name, &snapshot);
    if service.is_none() && rows.is_empty() {
        return error(StatusCode::NOT_FOUND, "no such service");
    }
    let instances: Vec<Value> = rows
        .iter()
        .filter(|r| !query.healthy || r.is_ready())
        .map(Row::to_json)
        .collect();
    let body = json!({
        "name": name,
        "balance": balance(service, name, &state.publisher.config()),
        "instances": instances,
        "index": snapshot.index,
    });
    indexed(body, snapshot.index)
}

/// Every service with every instance, as `GET /v1/services/{service}`
/// lists each, plus the `healthy` count: the dashboard's one read per refresh.
pub(super) fn all(state: &AdminState) -> Vec<Value> {
    let snapshot = state.registry.snapshot();
    let table = state.publisher.table().load_full();
    let config = state.publisher.config();
    let mut services: BTreeMap<&str, Value> = BTreeMap::new();
    let names = table
        .services
        .iter()
        .map(|s| &*s.name)
        .chain(snapshot.services().map(|(name, _)| &**name));
    for name in names {
        let service = table.service(name).map(|s| &**s);
        let rows = rows(service, name, &snapshot);
        if rows.is_empty() && service.is_none() {
            continue;
        }
        let instances: Vec<Value> = rows.iter().map(Row::to_json).collect();
        let detail = json!({
            "name": name,
            "balance": balance(service, name, &config),
            "healthy": rows.iter().filter(|r| r.is_ready()).count(),
            "instances": instances,
        });
        services.insert(name, detail);
    }
    services.into_values().collect()
}

/// With `index`, wait (bounded by `wait`) until the registry moves past it.
async fn block(state: &AdminState, query: &Query) -> Arc<Snapshot> {
    if let Some(index) = query.index {
        let mut changes = state.registry.subscribe();
        let _ = tokio::time::timeout(query.wait, changes.wait_for(|now| *now > index)).await;
    }
    state.registry.snapshot()
}

fn indexed(body: Value, index: u64) -> AdminResponse {
    let mut resp = json(StatusCode::OK, &body);
    resp.headers_mut()
        .insert(INDEX_HEADER, HeaderValue::from(index));
    resp
}

fn balance(service: Option<&Service>, name: &str, config: &Config) -> &'static str {
    let policy = match service {
        Some(s) => s.policy,
        None => config
            .services
            .get(name)
            .map_or_else(|| ServiceConfig::default().balance, |s| s.balance),
    };
    policy.as_str()
}

/// One listed instance.
#[derive(Debug)]
enum Row<'a> {
    /// In the table; `registered` is the registry's newer record of it.
    Live {
        backend: &'a Arc<Backend>,
        registered: Option<&'a Arc<Instance>>,
    },
    /// Left the registry, not yet out of the table, requests in flight.
    Leaving(&'a Arc<Backend>),
    /// Registered, not yet in the table.
    Pending(&'a Arc<Instance>),
}

impl Row<'_> {
    fn is_ready(&self) -> bool {
        match self {
            Row::Live { backend, .. } => backend.is_ready(),
            Row::Leaving(_) | Row::Pending(_) => false,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Row::Live {
                backend,
                registered,
            } => {
                let mut v = instance_json(backend);
                v["metadata"] = json!({});
                if let Some(i) = registered {
                    v["weight"] = json!(i.overrides.weight(i.weight));
                    v["state"] = json!(i.overrides.state());
                    v["expires_at"] = json!(i.expires_at.map(format_time));
                    v["metadata"] = json!(&*i.metadata);
                }
                v
            }
            Row::Leaving(backend) => {
                let mut v = instance_json(backend);
                v["draining"] = json!(true);
                v["metadata"] = json!({});
                v
            }
            Row::Pending(i) => {
                let mut v = i.to_json();
                let fields = v.as_object_mut();
                if let Some(fields) = fields {
                    fields.remove("service");
                    fields.remove("ttl");
                }
                v["source"] = json!(Source::Registry.as_str());
                v["health"] = json!("unknown");
                v["ejected"] = json!(false);
                v["draining"] = json!(false);
                v["active_requests"] = json!(0);
                v
            }
        }
    }
}

/// The table's backends of `name`, reconciled with the registry snapshot.
fn rows<'a>(service: Option<&'a Service>, name: &str, snapshot: &'a Snapshot) -> Vec<Row<'a>> {
    let backends = service.map_or(&[][..], |s| &s.backends[..]);
    let registered = snapshot.service(name);
    let mut rows = Vec::with_capacity(backends.len().max(registered.len()));
    // The table keeps a service's registered backends in id order, as the
    // snapshot does: walk both at once (O(n); listing 10,000 instances must
    // not stall the thread it runs on).
    let mut pending = registered.iter().peekable();
    let mut last_id: Option<&str> = None;
    for backend in backends {
        if let Some(row) = unregistered(backend) {
            rows.push(row);
            continue;
        }
        if last_id.is_some_and(|last| last > &*backend.id) {
            // Not in id order after all: take the general path.
            return rows_by_search(backends, registered);
        }
        last_id = Some(&backend.id);
        while let Some(instance) = pending.next_if(|i| *i.id < *backend.id) {
            rows.push(Row::Pending(instance));
        }
        let same = pending.next_if(|i| i.id == backend.id);
        rows.extend(row_for(backend, same));
        if let Some(moved) = same.filter(|i| i.resolved != backend.resolved) {
            rows.push(Row::Pending(moved));
        }
    }
    rows.extend(pending.map(Row::Pending));
    rows
}

/// The row of a backend no registration stands behind: a configured one,
/// or a registered one that left with requests still in flight on it (one
/// that left with none is gone, even before the table that drops it).
fn unregistered(backend: &Arc<Backend>) -> Option<Row<'_>> {
    let listed = match backend.source {
        Source::Config => true,
        Source::Registry => backend.is_draining() && backend.active_requests() > 0,
    };
    listed.then_some(Row::Live {
        backend,
        registered: None,
    })
}

/// A registered backend's row given its registry record (if the id is still
/// registered): live when the address matches; otherwise it is leaving, and
/// listed only while requests are in flight on it.
fn row_for<'a>(backend: &'a Arc<Backend>, record: Option<&'a Arc<Instance>>) -> Option<Row<'a>> {
    match record.filter(|i| i.resolved == backend.resolved) {
        Some(instance) => Some(Row::Live {
            backend,
            registered: Some(instance),
        }),
        None if backend.active_requests() > 0 => Some(Row::Leaving(backend)),
        None => None,
    }
}

/// The same as [`rows`] for backends in any order: one binary search each.
fn rows_by_search<'a>(
    backends: &'a [Arc<Backend>],
    registered: &'a [Arc<Instance>],
) -> Vec<Row<'a>> {
    let mut matched = vec![false; registered.len()];
    let mut rows = Vec::with_capacity(backends.len());
    for backend in backends {
        if let Some(row) = unregistered(backend) {
            rows.push(row);
            continue;
        }
        let found = registered
            .binary_search_by(|i| (*i.id).cmp(&backend.id))
            .ok()
            .filter(|&at| registered[at].resolved == backend.resolved);
        if let Some(at) = found {
            matched[at] = true;
        }
        rows.extend(row_for(backend, found.map(|at| &registered[at])));
    }
    let pending = registered.iter().zip(matched).filter(|(_, m)| !m);
    rows.extend(pending.map(|(i, _)| Row::Pending(i)));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse() {
        let q = parse_query(None).unwrap();
        assert_eq!((q.healthy, q.index, q.wait), (false, None, DEFAULT_WAIT));
        let q = parse_query(Some("healthy=true&index=7&wait=2s&other=x")).unwrap();
        assert_eq!(
            (q.healthy, q.index, q.wait),
            (true, Some(7), Duration::from_secs(2))
        );
        assert!(parse_query(Some("healthy")).unwrap().healthy);
        assert!(!parse_query(Some("healthy=false")).unwrap().healthy);
        for bad in [
            "healthy=yes",
            "index=-1",
            "index=x",
            "wait=10m",
            "wait=soon",
        ] {
            assert!(parse_query(Some(bad)).is_err(), "{bad}");
        }
    }
}
