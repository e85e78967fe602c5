//! The admin listener: health, readiness, metrics, reloads and the /v1 API.
//!
//! Small and boring on purpose: a plain `match` on method and path, JSON
//! bodies, and errors as `{"error": "<one sentence>"}` with the statuses of
//! SPEC §3. Writes need the bearer token when one is configured; /v1 reads
//! need it too when the admin listener is not on loopback.

mod api;
mod dashboard;
mod discovery;
mod instances;
mod stats;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::reload::Reloader;
use crate::table::Publisher;

/// What the admin handlers read.
#[derive(Debug)]
pub struct AdminState {
    pub publisher: Arc<Publisher>,
    /// Registration endpoints write here; discovery reads its snapshots.
    pub registry: Arc<Registry>,
    pub metrics: Metrics,
    pub reloader: Reloader,
    /// False until listeners are bound, and again while draining.
    pub ready: Arc<AtomicBool>,
    /// The admin listener's own address (decides whether reads need a token).
    pub listen: SocketAddr,
}

/// The admin hyper service.
#[derive(Debug, Clone)]
pub struct AdminService {
    state: Arc<AdminState>,
}

impl AdminService {
    pub fn new(state: Arc<AdminState>) -> AdminService {
        dashboard::mark_start();
        AdminService { state }
    }
}

pub type AdminResponse = Response<Full<Bytes>>;

impl hyper::service::Service<Request<Incoming>> for AdminService {
    type Response = AdminResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<AdminResponse, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let state = Arc::clone(&self.state);
        Box::pin(async move { Ok(route(&state, req).await) })
    }
}

async fn route(state: &AdminState, req: Request<Incoming>) -> AdminResponse {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    match segments.as_slice() {
        [""] => only_get(&method, dashboard::page),
        ["dashboard.js"] => only_get(&method, dashboard::script),
        ["dashboard.css"] => only_get(&method, dashboard::style),
        ["healthz"] => only_get(&method, || text(StatusCode::OK, "ok\n")),
        ["readyz"] => only_get(&method, || readiness(state)),
        ["metrics"] => only_get(&method, || metrics(state)),
        ["v1", rest @ ..] => {
            if let Err(resp) = authorize(state, &req) {
                return *resp;
            }
            api::handle(state, &method, rest, req).await
        }
        _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
    }
}

fn only_get(method: &Method, answer: impl FnOnce() -> AdminResponse) -> AdminResponse {
    if *method == Method::GET || *method == Method::HEAD {
        answer()
    } else {
        method_not_allowed("GET")
    }
}

fn readiness(state: &AdminState) -> AdminResponse {
    if state.ready.load(Ordering::Relaxed) {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

fn metrics(state: &AdminState) -> AdminResponse {
    let table = state.publisher.table().load_full();
    let registered = state.registry.snapshot();
    state.metrics.set_registry_instances(
        registered
            .services()
            .map(|(name, list)| (&**name, list.len())),
    );
    state.metrics.set_store_up(state.registry.store_up());
    let body = state.metrics.render(table.backends());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// Writes always need the token when one is set; reads need it when the
/// admin listener is reachable from beyond loopback.
fn authorize(state: &AdminState, req: &Request<Incoming>) -> Result<(), Box<AdminResponse>> {
    let config = state.publisher.config();
    let Some(token) = config.admin.token.as_deref() else {
        return Ok(());
    };
    let is_read = matches!(*req.method(), Method::GET | Method::HEAD);
    if is_read && state.listen.ip().is_loopback() {
        return Ok(());
    }
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .unwrap_or("");
    if tokens_match(presented, token) {
        Ok(())
    } else {
        Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        )))
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is
/// matched without regard to case (RFC 9110 §11.1: `bearer`, `BEARER` are
/// the same scheme) and may be followed by more than one space.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// Constant-time comparison (the `subtle` crate, whose optimisation barrier
/// keeps the compiler from turning it back into an early exit), so timing
/// reveals nothing of the token's bytes; only its length can show.
fn tokens_match(presented: &str, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(presented.as_bytes().ct_eq(token.as_bytes()))
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> AdminResponse {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub fn error(status: StatusCode, message: &str) -> AdminResponse {
    json(status, &serde_json::json!({ "error": message }))
}

pub fn method_not_allowed(allow: &'static str) -> AdminResponse {
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here");
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

fn text(status: StatusCode, body: &'static str) -> AdminResponse {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, tokens_match};

    #[test]
    fn token_comparison() {
        assert!(tokens_match("secret", "secret"));
        assert!(!tokens_match("secreT", "secret"));
        assert!(!tokens_match("secret-longer", "secret"));
        assert!(!tokens_match("", "secret"));
    }

    #[test]
    fn the_bearer_scheme_ignores_case() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
        assert_eq!(bearer_token("abc"), None);
    }
}
