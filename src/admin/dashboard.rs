//! The admin dashboard at `/`: one static page (compiled in) that reads the
//! same `/v1/services` API a script would, so it shows nothing the API does
//! not and needs no server-side templating.

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::Response;
use http_body_util::Full;

use super::AdminResponse;

const PAGE: &str = include_str!("dashboard.html");

pub fn page() -> AdminResponse {
    let mut resp = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
