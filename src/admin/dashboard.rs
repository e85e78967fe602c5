//! The admin dashboard: the page at `/` with its script and style at
//! `/dashboard.js` and `/dashboard.css` (all compiled in), and its one read,
//! `GET /v1/dashboard` (version, uptime, last reload, routes, every service
//! with its instances and cumulative traffic figures), one request per refresh.
//!
//! The page carries a strict Content-Security-Policy: scripts and styles
//! only from this origin (no inline code at all), fetches only to it, no
//! frames, no forms. The token a user types stays in `sessionStorage` (gone
//! with the tab), never in `localStorage`.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use super::{discovery, json, stats, AdminResponse, AdminState};
use crate::registry::instance::format_time;

const PAGE: &str = include_str!("dashboard.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// The page's policy: nothing inline, nothing from elsewhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// When the admin side first served anything: the uptime's origin.
static STARTED: OnceLock<(Instant, SystemTime)> = OnceLock::new();

/// Marks the start (first call wins); called when the admin service is made.
pub fn mark_start() {
    STARTED.get_or_init(|| (Instant::now(), SystemTime::now()));
}

pub fn page() -> AdminResponse {
    let mut resp = asset(PAGE, "text/html; charset=utf-8");
    let headers = resp.headers_mut();
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

pub fn script() -> AdminResponse {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

pub fn style() -> AdminResponse {
    asset(STYLE, "text/css; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> AdminResponse {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// `GET /v1/dashboard`: everything the page shows, in one answer.
pub fn snapshot(state: &AdminState) -> AdminResponse {
    let table = state.publisher.table().load_full();
    let config = state.publisher.config();
    let exposition = state.metrics.render(table.backends());
    let mut totals = stats::totals(&exposition);
    let services: Vec<Value> = discovery::all(state)
        .into_iter()
        .map(|mut service| {
            let name = service["name"].as_str().unwrap_or_default().to_owned();
            let figures = totals.remove(&name).unwrap_or_default();
            service["traffic"] = figures.to_json();
            service
        })
        .collect();
    let routes: Vec<Value> = config
        .routes
        .iter()
        .map(|r| {
            json!({
                "host": r.host,
                "path_prefix": r.path_prefix,
                "service": r.service,
                "strip_prefix": r.strip_prefix,
                "declared": config.services.contains_key(&r.service),
            })
        })
        .collect();
    let (started, started_wall) = *STARTED.get_or_init(|| (Instant::now(), SystemTime::now()));
    let last_reload = state.reloader.last_reload().map(|r| {
        json!({
            "result": if r.ok { "ok" } else { "error" },
            "at": format_time(r.at),
            "trigger": r.trigger,
            "errors": r.errors,
        })
    });
    let body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": format_time(started_wall),
        "uptime_seconds": started.elapsed().as_secs_f64(),
        "config_file": config.path.as_ref().map(|p| p.display().to_string()),
        "last_reload": last_reload,
        "routes": routes,
        "services": services,
    });
    json(StatusCode::OK, &body)
}
