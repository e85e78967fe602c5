//! The registration endpoints: `PUT /v1/services/{service}/instances/{id}`
//! (register or update), `PUT .../{id}/heartbeat` (renew the lease) and
//! `DELETE .../{id}` (deregister), and `PATCH .../{id}` (runtime weight and
//! drain of a configured backend or a registered instance, SPEC §7).
//!
//! Bodies are read with a 64 KiB limit (413 beyond, without reading the rest)
//! and handed to the registry, which validates everything; its refusals map
//! to statuses in [`status_of`], one exhaustive `match`. A refused request
//! changes nothing.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use super::api::instance_json;
use super::{error, json, AdminResponse, AdminState};
use crate::overrides::Patch;
use crate::registry::{Limits, Registration, RegistryError};

/// Largest request body the admin API reads (SPEC §3).
pub const MAX_BODY: usize = 64 * 1024;

/// `PUT /v1/services/{service}/instances/{id}`: 200 with the stored instance.
pub async fn register(
    state: &AdminState,
    service: &str,
    id: &str,
    req: Request<Incoming>,
) -> AdminResponse {
    let body = match read_body(req).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    let registration = match Registration::from_json(&body) {
        Ok(r) => r,
        Err(e) => return refused(&e),
    };
    let config = state.publisher.config();
    let declared =
        config.services.contains_key(service) || config.routes.iter().any(|r| r.service == service);
    let limits = Limits {
        config: &config.registry,
        declared,
    };
    match state
        .registry
        .register(limits, service, id, registration)
        .await
    {
        Ok(instance) => {
            tracing::debug!(%service, %id, address = %instance.address, "instance registered");
            json(StatusCode::OK, &instance.to_json())
        }
        Err(e) => refused(&e),
    }
}

/// `PUT .../{id}/heartbeat`: 200 with the renewed instance, 404 when the
/// lease is gone.
pub async fn heartbeat(state: &AdminState, service: &str, id: &str) -> AdminResponse {
    match state.registry.heartbeat(service, id).await {
        Ok(instance) => json(StatusCode::OK, &instance.to_json()),
        Err(e) => refused(&e),
    }
}

/// `DELETE .../{id}`: 204, or 404.
pub async fn deregister(state: &AdminState, service: &str, id: &str) -> AdminResponse {
    match state.registry.deregister(service, id).await {
        Ok(instance) => {
            tracing::debug!(%service, %id, address = %instance.address, "instance deregistered");
            let mut resp = AdminResponse::new(Default::default());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp
        }
        Err(e) => refused(&e),
    }
}

/// `PATCH .../{id}` with `{"weight": 0..1000}` and/or `{"state": "ready" |
/// "drain"}`: 200 with the instance. A configured backend (id = its
/// `host:port` as written) wins over a registered instance of the same id.
pub async fn patch(
    state: &AdminState,
    service: &str,
    id: &str,
    req: Request<Incoming>,
) -> AdminResponse {
    let body = match read_body(req).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    let patch = match Patch::from_json(&body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    if let Some((backend, overrides)) = state.publisher.patch_configured(service, id, patch) {
        tracing::info!(%service, %id, weight = backend.weight(), state = overrides.state(), "configured backend patched");
        return json(StatusCode::OK, &instance_json(&backend));
    }
    match state.registry.patch(service, id, patch).await {
        Ok(instance) => {
            state
                .publisher
                .instance_overrides(service, id, instance.overrides, instance.weight);
            tracing::info!(%service, %id, weight = instance.overrides.weight(instance.weight), state = instance.overrides.state(), "registered instance patched");
            json(StatusCode::OK, &instance.to_json())
        }
        // Not a name a registration could have: no such instance either.
        Err(RegistryError::BadName { .. }) => error(
            StatusCode::NOT_FOUND,
            &format!("service `{service}` has no configured backend or registered instance `{id}`"),
        ),
        Err(RegistryError::NotFound { .. }) => error(
            StatusCode::NOT_FOUND,
            &format!("service `{service}` has no configured backend or registered instance `{id}`"),
        ),
        Err(e) => refused(&e),
    }
}

/// A path under `/v1/services/{service}/instances/` with extra segments:
/// a name or id with a `/` in it.
pub fn slash_in_name() -> AdminResponse {
    error(
        StatusCode::BAD_REQUEST,
        "service names and instance ids are 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-' (no '/')",
    )
}

/// Read a request body of at most [`MAX_BODY`] bytes.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, AdminResponse> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body is larger than 64 KiB",
        )),
        Err(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "the request body could not be read",
        )),
    }
}

fn refused(e: &RegistryError) -> AdminResponse {
    error(status_of(e), &e.to_string())
}

/// Every refusal's status (SPEC §3).
pub fn status_of(e: &RegistryError) -> StatusCode {
    match e {
        RegistryError::Json(_)
        | RegistryError::NotAnObject
        | RegistryError::UnknownField(_)
        | RegistryError::MissingAddress
        | RegistryError::WrongType { .. }
        | RegistryError::BadName { .. }
        | RegistryError::Weight(_)
        | RegistryError::Ttl { .. }
        | RegistryError::Address(_) => StatusCode::BAD_REQUEST,
        RegistryError::Refused { .. } | RegistryError::NewService(_) => StatusCode::FORBIDDEN,
        RegistryError::TooManyInstances { .. }
        | RegistryError::TooManyServices { .. }
        | RegistryError::RegistryFull { .. } => StatusCode::TOO_MANY_REQUESTS,
        RegistryError::NotFound { .. } => StatusCode::NOT_FOUND,
        RegistryError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}
