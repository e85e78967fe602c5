//! The request path: route, pick, forward, answer.
//!
//! [`ProxyService`] is the hyper `Service` of every client connection. One
//! request reads the published table once (`load_full`: an `Arc` held across
//! awaits), finds its route and service, picks a backend, rewrites headers,
//! sends the request through the service's pooled client under the
//! timeouts, retries where [`retry`] allows, and streams the answer back with
//! the in-flight guard riding in the body. Any [`ProxyError`] becomes a
//! response in exactly one place, [`ProxyError::into_response`].

pub mod body;
pub mod error;
pub mod framing;
pub mod headers;
pub mod retry;
pub mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderValue, CONTENT_LENGTH, HOST};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;

use crate::backend::{ActiveGuard, Backend};
use crate::config::UpstreamProtocol;
use crate::routing::{self, Route};
use crate::table::{Service, SharedTable, Table};
use body::{BodyError, ProxyBody, RequestGuard, UpstreamBody};
pub use error::ProxyError;
use headers::Forwarded;
use retry::{Attempt, Failure};

static PROTO_HTTP: HeaderValue = HeaderValue::from_static("http");
static PROTO_HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Settings shared by every connection of one listener.
#[derive(Debug)]
pub struct Proxy {
    pub table: SharedTable,
    pub trusted_proxies: Vec<IpNet>,
    pub body_idle_timeout: Duration,
    /// 0 = unlimited.
    pub max_body_bytes: u64,
    /// `https` on TLS listeners.
    pub tls: bool,
}

/// The per-connection service: the shared proxy plus what is known of the peer.
#[derive(Debug, Clone)]
pub struct ProxyService {
    proxy: Arc<Proxy>,
    peer: Arc<Peer>,
}

/// The client end of a connection, rendered once at accept.
#[derive(Debug)]
struct Peer {
    ip: HeaderValue,
    trusted: bool,
}

impl ProxyService {
    pub fn new(proxy: Arc<Proxy>, peer: SocketAddr) -> ProxyService {
        let ip: IpAddr = peer.ip().to_canonical();
        let trusted = proxy.trusted_proxies.iter().any(|net| net.contains(&ip));
        let rendered = HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ProxyService {
            proxy,
            peer: Arc::new(Peer {
                ip: rendered,
                trusted,
            }),
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

/// A request in flight, after routing.
struct Forwarding<'t> {
    service: &'t Service,
    started: Instant,
    /// The client body was not consumed: a local answer must close the connection.
    unread_body: bool,
    http1: bool,
}

impl ProxyService {
    async fn handle(self, req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let http1 = req.version() <= Version::HTTP_11;
        let unread_body = !req.body().is_end_stream();
        if let Err(why) = headers::check_framing(req.version(), req.headers()) {
            return ProxyError::BadRequest(why).into_response(true);
        }
        let table: Arc<Table> = self.proxy.table.load_full();
        let Some(route) = find_route(&table, &req) else {
            return ProxyError::NoRoute.into_response(unread_body && http1);
        };
        let service = &table.services[route.service];
        let fwd = Forwarding {
            service,
            started,
            unread_body,
            http1,
        };
        match self.forward(&fwd, route, req).await {
            Ok(resp) => resp,
            Err(err) => {
                let status = err.status();
                service.metrics.count_response(status.as_u16());
                service
                    .metrics
                    .duration
                    .observe(started.elapsed().as_secs_f64());
                tracing::debug!(service = %service.name, error = %err, "answered locally");
                err.into_response(fwd.unread_body && fwd.http1)
            }
        }
    }

    async fn forward(
        &self,
        fwd: &Forwarding<'_>,
        route: &Route,
        mut req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let max = self.proxy.max_body_bytes;
        if max > 0 && declared_length(&req).is_some_and(|len| len > max) {
            return Err(ProxyError::BodyTooLarge);
        }
        let upgrade = fwd.http1 && headers::is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
        let forwarded = Forwarded {
            peer_ip: &self.peer.ip,
            trusted: self.peer.trusted,
            proto: if self.proxy.tls {
                &PROTO_HTTPS
            } else {
                &PROTO_HTTP
            },
            authority: authority.as_deref(),
        };
        headers::prepare_request(&mut parts.headers, &forwarded, upgrade);
        let path = upstream_path(route, &parts.uri)?;
        let body = UpstreamBody::stream(body, self.proxy.body_idle_timeout, max);
        let template = RequestTemplate {
            method: parts.method,
            path,
            headers: parts.headers,
        };
        let (resp, guard) = send_with_retries(fwd, template, body).await?;
        Ok(finish_response(
            fwd,
            resp,
            guard,
            client_upgrade,
            self.proxy.body_idle_timeout,
        ))
    }
}

/// What every attempt of one request sends.
struct RequestTemplate {
    method: http::Method,
    path: PathAndQuery,
    headers: http::HeaderMap,
}

impl RequestTemplate {
    fn build(
        &self,
        backend: &Backend,
        protocol: UpstreamProtocol,
        body: UpstreamBody,
    ) -> Request<UpstreamBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = backend_uri(backend, &self.path);
        *req.version_mut() = match protocol {
            UpstreamProtocol::H2c => Version::HTTP_2,
            UpstreamProtocol::Http1 | UpstreamProtocol::Https => Version::HTTP_11,
        };
        *req.headers_mut() = self.headers.clone();
        req
    }
}

fn backend_uri(backend: &Backend, path: &PathAndQuery) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(backend.authority.clone());
    parts.path_and_query = Some(path.clone());
    Uri::from_parts(parts).unwrap_or_default()
}

/// Up to this many attempts are remembered as "tried" (config caps retries at 10).
const MAX_TRIES: usize = 11;

async fn send_with_retries(
    fwd: &Forwarding<'_>,
    template: RequestTemplate,
    body: UpstreamBody,
) -> Result<(Response<Incoming>, ActiveGuard), ProxyError> {
    let service = fwd.service;
    let settings = &service.settings;
    let deadline = tokio::time::Instant::from_std(fwd.started + settings.request_timeout);
    let replayable = body.is_end_stream();
    let mut body = Some(body);
    let mut tried = [0usize; MAX_TRIES];
    let mut tries = 0usize;
    loop {
        let Some(index) = service.balancer.pick(&service.ready, &tried[..tries]) else {
            return Err(ProxyError::NoHealthyBackend);
        };
        tried[tries.min(MAX_TRIES - 1)] = index;
        tries += 1;
        let backend = &service.ready[index];
        let guard = backend.start_request();
        let attempt_body = body.take().unwrap_or(UpstreamBody::Empty);
        let req = template.build(backend, service.upstream.protocol, attempt_body);
        let try_deadline = settings
            .try_timeout
            .map_or(deadline, |t| deadline.min(tokio::time::Instant::now() + t));
        let outcome = attempt(service, backend, req, try_deadline).await;
        let attempt = Attempt {
            method: &template.method,
            retries: (tries - 1) as u32,
            replayable: replayable && tries < MAX_TRIES,
            try_timeout: settings.try_timeout.is_some() && tokio::time::Instant::now() < deadline,
        };
        let failure = match &outcome {
            Ok(resp) => Failure::Status(resp.status().as_u16()),
            Err(e) => Failure::Error(e),
        };
        let retry = match &outcome {
            Ok(resp) if !is_retryable_status(resp.status()) => false,
            _ => retry::should_retry(&settings.retry, attempt, failure),
        };
        if !retry {
            return outcome.map(|resp| (resp, guard));
        }
        service.metrics.retries.inc();
        tracing::debug!(service = %service.name, backend = %backend.address, "retrying");
    }
}

fn is_retryable_status(status: StatusCode) -> bool {
    status.is_server_error()
}

/// One attempt against one backend, classified and counted.
async fn attempt(
    service: &Service,
    backend: &Backend,
    req: Request<UpstreamBody>,
    deadline: tokio::time::Instant,
) -> Result<Response<Incoming>, ProxyError> {
    let sent = tokio::time::timeout_at(deadline, service.upstream.client().request(req)).await;
    let result = match sent {
        Err(_elapsed) => Err(ProxyError::Timeout),
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(classify(e)),
    };
    let counter = match &result {
        Ok(resp) if !resp.status().is_server_error() => &backend.counters.ok,
        Err(ProxyError::Timeout) => &backend.counters.timeout,
        _ => &backend.counters.error,
    };
    counter.inc();
    if let Err(e) = &result {
        tracing::debug!(backend = %backend.address, error = %e, cause = ?std::error::Error::source(e), "attempt failed");
    }
    result
}

/// Sort a client error into what the retry rules and the answer need.
fn classify(error: hyper_util::client::legacy::Error) -> ProxyError {
    if error.is_connect() {
        return ProxyError::Connect(error);
    }
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        if let Some(body) = cause.downcast_ref::<BodyError>() {
            return match body {
                BodyError::TooLarge(_) => ProxyError::BodyTooLarge,
                BodyError::Idle(_) => ProxyError::BodyTimeout,
                BodyError::Stream(_) => ProxyError::ClientGone(BodyError::Idle(Duration::ZERO)),
            };
        }
        if let Some(h) = cause.downcast_ref::<hyper::Error>() {
            if h.is_parse() || h.is_parse_status() {
                return ProxyError::BadResponse(error);
            }
        }
        source = cause.source();
    }
    ProxyError::Reset(error)
}

/// Turn the backend's answer into the client's, wiring up upgrades.
fn finish_response(
    fwd: &Forwarding<'_>,
    mut resp: Response<Incoming>,
    active: ActiveGuard,
    client_upgrade: Option<OnUpgrade>,
    body_idle_timeout: Duration,
) -> Response<ProxyBody> {
    let service = fwd.service;
    let status = resp.status();
    service.metrics.count_response(status.as_u16());
    let guard = RequestGuard {
        active,
        metrics: Arc::clone(&service.metrics),
        started: fwd.started,
    };
    let switching = status == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_some();
    let backend_upgrade = switching.then(|| hyper::upgrade::on(&mut resp));
    let refused_upgrade = client_upgrade.is_some() && !switching;
    let (mut parts, body) = resp.into_parts();
    headers::prepare_response(&mut parts.headers, switching);
    parts.version = Version::HTTP_11;
    if refused_upgrade {
        // The framing guard stopped inspecting this connection at the
        // upgrade request; it must not carry further requests.
        parts
            .headers
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    let body = match (client_upgrade, backend_upgrade) {
        (Some(client), Some(backend)) => {
            tokio::spawn(tunnel(client, backend, guard));
            ProxyBody::empty()
        }
        _ => ProxyBody::upstream(body, body_idle_timeout, guard),
    };
    Response::from_parts(parts, body)
}

/// Copy bytes both ways between an upgraded client and backend connection;
/// the request counts as in flight until both sides close.
async fn tunnel(client: OnUpgrade, backend: OnUpgrade, guard: RequestGuard) {
    let (client, backend) = tokio::join!(client, backend);
    match (client, backend) {
        (Ok(client), Ok(backend)) => {
            let mut client = TokioIo::new(client);
            let mut backend = TokioIo::new(backend);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        (Err(e), _) | (_, Err(e)) => tracing::debug!(error = %e, "upgrade failed"),
    }
    drop(guard);
}

/// Host header (HTTP/1) or URI authority (HTTP/2), then the route.
fn find_route<'t>(table: &'t Table, req: &Request<Incoming>) -> Option<&'t Route> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    table.routes.find(host, req.uri().path())
}

fn declared_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The path and query the backend sees (prefix stripped when the route says so).
fn upstream_path(route: &Route, uri: &Uri) -> Result<PathAndQuery, ProxyError> {
    let original = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if !route.strip_prefix {
        return Ok(original);
    }
    match routing::strip(&route.path_prefix, original.as_str()) {
        Some(stripped) => PathAndQuery::try_from(stripped)
            .map_err(|_| ProxyError::BadRequest("path cannot be rewritten")),
        None => Ok(original),
    }
}
