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
pub mod connector;
pub mod error;
pub mod framing;
pub mod headers;
mod outlier;
pub mod retry;
pub mod upstream;

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderValue, CONTENT_LENGTH, HOST};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;

use crate::access_log::{AccessLogSwitch, Pending};
use crate::backend::{ActiveGuard, Backend};
use crate::balance::key::{self, RequestParts};
use crate::balance::{sticky, PickContext};
use crate::config::UpstreamProtocol;
use crate::log_throttle::{is_out_of_descriptors, Throttle};
use crate::metrics::UnroutedMetrics;
use crate::request_id;
use crate::request_path;
use crate::routing::{self, Route};
use crate::table::{Publisher, Service, SharedTable, Table};
use body::{BodyError, ProxyBody, RequestGuard, UpstreamBody};
pub use error::ProxyError;
use headers::Forwarded;
use retry::{Attempt, Failure};

/// hyper's smallest read buffer; heads over `max_header_bytes` above this
/// are refused by hyper itself.
pub const HYPER_MIN_BUF: usize = 8192;

static PROTO_HTTP: HeaderValue = HeaderValue::from_static("http");
static PROTO_HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Settings shared by every connection of one listener.
#[derive(Debug)]
pub struct Proxy {
    pub table: SharedTable,
    /// Nudged when passive health ejects a backend.
    pub publisher: Arc<Publisher>,
    pub trusted_proxies: Vec<IpNet>,
    pub body_idle_timeout: Duration,
    /// 0 = unlimited.
    pub max_body_bytes: u64,
    /// Checked here only when below hyper's 8 KiB floor (hyper enforces the rest).
    pub max_header_bytes: usize,
    /// `https` on TLS listeners.
    pub tls: bool,
    /// The access log in force (reloads swap it).
    pub access_log: Arc<AccessLogSwitch>,
    /// Requests answered before a route was found.
    pub unrouted: Arc<UnroutedMetrics>,
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
    addr: SocketAddr,
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
                addr: peer,
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
    /// Attempts sent so far, and the ready-slice index of the last one's
    /// backend (`usize::MAX`: none), for the access log.
    attempts: AtomicU32,
    last_backend: AtomicUsize,
    /// The access log's count of request body bytes (only while it is on).
    received: Option<Arc<AtomicU64>>,
}

impl Forwarding<'_> {
    fn note_attempt(&self, index: usize) {
        let n = self.attempts.load(Ordering::Relaxed);
        self.attempts.store(n + 1, Ordering::Relaxed);
        self.last_backend.store(index, Ordering::Relaxed);
    }

    /// Tell the access-log line where the request went.
    fn report(&self, log: &mut Pending) {
        let backend = self
            .service
            .ready
            .get(self.last_backend.load(Ordering::Relaxed));
        log.attempted(
            self.attempts.load(Ordering::Relaxed),
            backend.map(|b| &b.address),
        );
    }
}

impl ProxyService {
    /// Every request: its id first (kept or generated, sent to the backend
    /// and returned to the client), then the answer; the access-log line is
    /// written when the response body ends, or at once for a local answer.
    async fn handle(self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let request_id = request_id::ensure(req.headers_mut());
        let mut log = self
            .proxy
            .access_log
            .begin(&req, self.peer.addr, &request_id, started);
        let mut resp = self.answer(req, started, &mut log).await;
        resp.headers_mut().insert(request_id::HEADER, request_id);
        resp
    }

    async fn answer(
        &self,
        req: Request<Incoming>,
        started: Instant,
        log: &mut Option<Pending>,
    ) -> Response<ProxyBody> {
        let http1 = req.version() <= Version::HTTP_11;
        let unread_body = !req.body().is_end_stream();
        if let Err(why) = headers::check_framing(req.version(), req.headers()) {
            return self.unrouted(ProxyError::BadRequest(why), true, log);
        }
        if self.proxy.max_header_bytes < HYPER_MIN_BUF
            && headers::head_size(req.method(), req.uri(), req.headers())
                > self.proxy.max_header_bytes
        {
            return self.unrouted(ProxyError::HeadersTooLarge, http1, log);
        }
        let table: Arc<Table> = self.proxy.table.load_full();
        let path = request_path::normalise(req.uri().path(), table.routes.merge_slashes);
        let Some(route) = find_route(&table, &req, &path.path) else {
            return self.unrouted(ProxyError::NoRoute, unread_body && http1, log);
        };
        if path.ambiguous && !route.allow_ambiguous_paths {
            let why = "the path holds an ambiguous encoding (%2f, %5c, %00 or \\)";
            return self.unrouted(ProxyError::BadRequest(why), unread_body && http1, log);
        }
        let normalised = match path.path {
            Cow::Owned(path) => Some(path),
            Cow::Borrowed(_) => None,
        };
        let service = &table.services[route.service];
        let received = log.as_mut().and_then(|log| {
            log.routed(&service.name);
            unread_body.then(|| log.received_counter())
        });
        let fwd = Forwarding {
            service,
            started,
            unread_body,
            http1,
            attempts: AtomicU32::new(0),
            last_backend: AtomicUsize::new(usize::MAX),
            received,
        };
        match self.forward(&fwd, route, normalised, req).await {
            Ok(mut resp) => {
                if let Some(mut line) = log.take() {
                    fwd.report(&mut line);
                    line.answered(resp.status().as_u16(), None);
                    match resp.body_mut().guard_mut() {
                        Some(guard) => guard.log = Some(line),
                        // An upgrade: logged at the switch (the tunnel may last hours).
                        None => *log = Some(line),
                    }
                }
                resp
            }
            Err(err) => {
                let status = err.status();
                service.metrics.count_response(status.as_u16());
                service
                    .metrics
                    .observe_duration(started.elapsed().as_secs_f64());
                tracing::debug!(service = %service.name, error = %err, "answered locally");
                if let Some(line) = log {
                    fwd.report(line);
                }
                local_answer(err, fwd.unread_body && fwd.http1, log)
            }
        }
    }

    /// A local answer before any route: counted in `switchyard_unrouted_requests_total`.
    fn unrouted(
        &self,
        err: ProxyError,
        close: bool,
        log: &mut Option<Pending>,
    ) -> Response<ProxyBody> {
        self.proxy.unrouted.count(err.status().as_u16());
        local_answer(err, close, log)
    }

    async fn forward(
        &self,
        fwd: &Forwarding<'_>,
        route: &Route,
        normalised: Option<String>,
        mut req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let max = self.proxy.max_body_bytes;
        if max > 0 && declared_length(&req).is_some_and(|len| len > max) {
            return Err(ProxyError::BodyTooLarge);
        }
        let upgrade = fwd.http1 && headers::is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let affinity = self.affinity(fwd.service, &parts);
        // A refcount bump, not a copy: the header rewrite borrows it.
        let authority = parts.uri.authority().cloned();
        let forwarded = Forwarded {
            peer_ip: &self.peer.ip,
            trusted: self.peer.trusted,
            proto: if self.proxy.tls {
                &PROTO_HTTPS
            } else {
                &PROTO_HTTP
            },
            authority: authority.as_ref().map(|a| a.as_str()),
        };
        headers::prepare_request(&mut parts.headers, &forwarded, upgrade);
        let path = upstream_path(route, &parts.uri, normalised)?;
        let body = UpstreamBody::from_client(
            body,
            self.proxy.body_idle_timeout,
            max,
            fwd.service.settings.retry.buffer_bytes,
            fwd.received.clone(),
        );
        let template = RequestTemplate {
            method: parts.method,
            path,
            headers: parts.headers,
        };
        let (mut resp, guard) =
            send_with_retries(&self.proxy, fwd, template, body, &affinity).await?;
        if let Some(config) = &fwd.service.settings.sticky {
            // Stick the client to the backend that answered, unless its
            // cookie already names it.
            if !affinity.cookie_names(guard.backend()) {
                resp.headers_mut().append(
                    http::header::SET_COOKIE,
                    sticky::set_cookie(config, guard.backend()),
                );
            }
        }
        Ok(finish_response(
            fwd,
            resp,
            guard,
            client_upgrade,
            self.proxy.body_idle_timeout,
        ))
    }
}

impl ProxyService {
    /// What the request says about where it should go: its hashed
    /// `hash_key`, and the backend its sticky cookie names.
    fn affinity(&self, service: &Service, parts: &http::request::Parts) -> Affinity {
        let settings = &service.settings;
        let key = settings.hash_key.as_ref().and_then(|spec| {
            let request = RequestParts {
                headers: &parts.headers,
                uri: &parts.uri,
                client_ip: self.peer.ip.as_bytes(),
            };
            key::request_key(spec, &request)
        });
        let cookie = settings
            .sticky
            .as_ref()
            .and_then(|config| key::cookie(&parts.headers, &config.cookie))
            .and_then(sticky::parse_token);
        let sticky = match (&service.sticky, cookie) {
            (Some(index), Some(token)) => index.find_token(token),
            _ => None,
        };
        Affinity {
            key,
            sticky,
            cookie,
        }
    }
}

/// Where a request would like to go.
struct Affinity {
    /// The hashed `hash_key`, when the service has one and the request carries it.
    key: Option<u64>,
    /// The ready index the sticky cookie names, if it names a ready backend.
    sticky: Option<usize>,
    /// The backend token the sticky cookie carries.
    cookie: Option<u64>,
}

impl Affinity {
    fn cookie_names(&self, backend: &Backend) -> bool {
        sticky::names(self.cookie, backend)
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
        *req.uri_mut() = backend_uri(backend, protocol, &self.path);
        *req.version_mut() = match protocol {
            UpstreamProtocol::H2c => Version::HTTP_2,
            UpstreamProtocol::Http1 | UpstreamProtocol::Https => Version::HTTP_11,
        };
        *req.headers_mut() = self.headers.clone();
        if protocol == UpstreamProtocol::H2c {
            // One authority (RFC 9113 §8.3.1): `:authority` names the
            // backend (the pool dials what the URI names), and a Host that
            // differs makes a strict server refuse the request as
            // malformed. The client's host travels in X-Forwarded-Host.
            req.headers_mut().remove(HOST);
        }
        req
    }
}

/// TLS backends are addressed by name (pool key, SNI, HTTP/2 `:authority`);
/// the others by the address they resolved to.
fn backend_uri(backend: &Backend, protocol: UpstreamProtocol, path: &PathAndQuery) -> Uri {
    let mut parts = http::uri::Parts::default();
    let (scheme, authority) = match protocol {
        UpstreamProtocol::Https => (Scheme::HTTPS, &backend.named_authority),
        UpstreamProtocol::Http1 | UpstreamProtocol::H2c => (Scheme::HTTP, &backend.authority),
    };
    parts.scheme = Some(scheme);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(path.clone());
    Uri::from_parts(parts).unwrap_or_default()
}

/// How many picks one request remembers (attempts are capped at 11; the rest
/// is room for backends skipped because they were at their request limit).
const MAX_TRIED: usize = 16;

/// Indices of the ready slice this request has tried or skipped.
struct Tried {
    list: [usize; MAX_TRIED],
    len: usize,
}

impl Tried {
    fn new() -> Tried {
        Tried {
            list: [0; MAX_TRIED],
            len: 0,
        }
    }

    fn as_slice(&self) -> &[usize] {
        &self.list[..self.len]
    }

    /// Returns false when full.
    fn push(&mut self, index: usize) -> bool {
        if self.len == MAX_TRIED {
            return false;
        }
        self.list[self.len] = index;
        self.len += 1;
        true
    }
}

/// Pick a backend with room under the service's request limit, avoiding
/// those already tried; a retry with nothing new left may reuse one. The
/// backend a sticky cookie names comes first, if it still takes requests.
fn pick(
    service: &Service,
    tried: &mut Tried,
    retrying: bool,
    affinity: &Affinity,
) -> Result<usize, ProxyError> {
    let limit = service.settings.max_requests_per_backend;
    let has_room = |b: &Backend| limit == 0 || b.active_requests() < limit;
    if let Some(index) = affinity.sticky {
        let stuck = service.ready.get(index).filter(|b| {
            !tried.as_slice().contains(&index) && b.takes_new_requests() && has_room(b)
        });
        if stuck.is_some() {
            return Ok(index);
        }
    }
    let mut saw_full = false;
    loop {
        let cx = PickContext::new(&service.ready, tried.as_slice()).with_key(affinity.key);
        let choice = service.balancer.pick(&cx).or_else(|| {
            retrying
                .then(|| service.balancer.pick(&PickContext { tried: &[], ..cx }))
                .flatten()
        });
        let Some(index) = choice else {
            return Err(if saw_full {
                ProxyError::LimitReached
            } else {
                ProxyError::NoHealthyBackend
            });
        };
        let backend = &service.ready[index];
        if !backend.takes_new_requests() {
            // Left or drained since this table was built (deregistered,
            // lease over, drained or set to weight 0 by the admin API):
            // never picked again, whatever the table still says.
            if !tried.push(index) {
                return Err(ProxyError::NoHealthyBackend);
            }
            continue;
        }
        if has_room(backend) {
            return Ok(index);
        }
        saw_full = true;
        if !tried.push(index) || retrying {
            return Err(ProxyError::LimitReached);
        }
    }
}

async fn send_with_retries(
    proxy: &Proxy,
    fwd: &Forwarding<'_>,
    template: RequestTemplate,
    body: UpstreamBody,
    affinity: &Affinity,
) -> Result<(Response<Incoming>, ActiveGuard), ProxyError> {
    let service = fwd.service;
    let settings = &service.settings;
    let deadline = tokio::time::Instant::from_std(fwd.started + settings.request_timeout);
    service.budget.record_request(now_secs());
    let mut tried = Tried::new();
    let mut retries = 0u32;
    loop {
        let index = pick(service, &mut tried, retries > 0, affinity)?;
        tried.push(index);
        fwd.note_attempt(index);
        let backend = &service.ready[index];
        let guard = backend.start_request();
        let attempt_body = body.again().unwrap_or(UpstreamBody::Empty);
        let req = template.build(backend, service.upstream.protocol, attempt_body);
        let try_deadline = settings
            .try_timeout
            .map_or(deadline, |t| deadline.min(tokio::time::Instant::now() + t));
        let outcome = attempt(service, backend, req, try_deadline).await;
        outlier::observe(proxy, service, backend, &outcome);
        let facts = Attempt {
            method: &template.method,
            retries,
            replayable: body.again().is_some(),
            try_timeout: settings.try_timeout.is_some() && tokio::time::Instant::now() < deadline,
        };
        let failure = match &outcome {
            Ok(resp) if !resp.status().is_server_error() => return Ok((outcome?, guard)),
            Ok(resp) => Failure::Status(resp.status().as_u16()),
            Err(e) => Failure::Error(e),
        };
        let retry = retry::should_retry(&settings.retry, facts, failure)
            && service
                .budget
                .try_retry(now_secs(), settings.retry.budget_percent);
        if !retry {
            return outcome.map(|resp| (resp, guard));
        }
        retries += 1;
        service.metrics.count_retry();
        tracing::debug!(service = %service.name, backend = %backend.address, "retrying");
    }
}

/// Whole seconds on the process clock, for the retry budget's buckets.
fn now_secs() -> u64 {
    crate::backend::now_millis() / 1000
}

/// One attempt against one backend, classified and counted.
async fn attempt(
    service: &Service,
    backend: &Backend,
    mut req: Request<UpstreamBody>,
    deadline: tokio::time::Instant,
) -> Result<Response<Incoming>, ProxyError> {
    // Only requests that could not otherwise be retried pay for learning
    // whether their connection was a reused one.
    let watched =
        (!retry::is_idempotent(req.method())).then(|| upstream::watch_connection(&mut req));
    let started = Instant::now();
    let sent = tokio::time::timeout_at(deadline, service.upstream.client().request(req)).await;
    let result = match sent {
        Err(_elapsed) => Err(ProxyError::Timeout),
        Ok(Ok(resp)) => headers::check_response_framing(resp.headers())
            .map(|()| resp)
            .map_err(ProxyError::BadFraming),
        Ok(Err(e)) => {
            let reused = watched.is_some_and(|w| upstream::was_reused(&w, started));
            Err(classify(e, reused))
        }
    };
    record_latency(backend, started, &result);
    let counter = match &result {
        Ok(resp) if !resp.status().is_server_error() => &backend.counters.ok,
        Err(ProxyError::Timeout) => &backend.counters.timeout,
        _ => &backend.counters.error,
    };
    counter.inc();
    if let Err(e) = &result {
        tracing::debug!(backend = %backend.address, error = %e, cause = ?std::error::Error::source(e), "attempt failed");
        if is_out_of_descriptors(e) {
            if let Some(more) = NO_DESCRIPTOR.allow(Duration::from_secs(10)) {
                tracing::warn!(backend = %backend.address, more_since_last_line = more, "backend connect failed: the process is out of file descriptors (RLIMIT_NOFILE)");
            }
        }
    }
    result
}

/// Backend connects failing for want of a descriptor: one line per interval.
static NO_DESCRIPTOR: Throttle = Throttle::new();

/// Feed `p2c_ewma`: the attempt's time to response headers; a failure of
/// the backend's (refused, reset, timed out, garbled, 5xx) counts as slow,
/// one of the client's (its body too large, idle or gone) not at all.
fn record_latency(
    backend: &Backend,
    started: Instant,
    result: &Result<Response<Incoming>, ProxyError>,
) {
    let failed = match result {
        Ok(resp) => resp.status().is_server_error(),
        Err(ProxyError::BodyTooLarge | ProxyError::BodyTimeout | ProxyError::ClientGone) => return,
        Err(_) => true,
    };
    backend.record_latency(started.elapsed(), failed);
}

/// Sort a client error into what the retry rules and the answer need.
/// `reused`: the request went out on a pooled connection made earlier.
fn classify(error: hyper_util::client::legacy::Error, reused: bool) -> ProxyError {
    if error.is_connect() {
        return ProxyError::Connect(error);
    }
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        if let Some(body) = cause.downcast_ref::<BodyError>() {
            return match body {
                BodyError::TooLarge(_) => ProxyError::BodyTooLarge,
                BodyError::Idle(_) => ProxyError::BodyTimeout,
                BodyError::Stream(_) => ProxyError::ClientGone,
            };
        }
        if let Some(h) = cause.downcast_ref::<hyper::Error>() {
            if h.is_parse() || h.is_parse_status() {
                return ProxyError::BadResponse(error);
            }
        }
        source = cause.source();
    }
    if reused {
        ProxyError::Stale(error)
    } else {
        ProxyError::Reset(error)
    }
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
        log: None,
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

/// Switchyard's own answer, told to the access-log line (written when the
/// caller drops it, right after).
fn local_answer(err: ProxyError, close: bool, log: &mut Option<Pending>) -> Response<ProxyBody> {
    let status = err.status().as_u16();
    let reason = err.reason();
    let resp = err.into_response(close);
    if let Some(line) = log {
        line.answered(status, Some(reason));
        line.add_sent(resp.body().size_hint().exact().unwrap_or(0));
    }
    resp
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

/// Host header (HTTP/1) or URI authority (HTTP/2), then the route for the
/// normalised `path`.
fn find_route<'t>(table: &'t Table, req: &Request<Incoming>, path: &str) -> Option<&'t Route> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    table.routes.find(host, path)
}

fn declared_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The path and query the backend sees: the normalised path when
/// normalising changed it, the prefix stripped when the route says so.
fn upstream_path(
    route: &Route,
    uri: &Uri,
    normalised: Option<String>,
) -> Result<PathAndQuery, ProxyError> {
    let original = match normalised {
        Some(path) => with_query(path, uri.query())?,
        None => uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    if !route.strip_prefix {
        return Ok(original);
    }
    match routing::strip(&route.path_prefix, original.as_str()) {
        Some(stripped) => PathAndQuery::try_from(stripped)
            .map_err(|_| ProxyError::BadRequest("path cannot be rewritten")),
        None => Ok(original),
    }
}

fn with_query(mut path: String, query: Option<&str>) -> Result<PathAndQuery, ProxyError> {
    if let Some(query) = query {
        path.push('?');
        path.push_str(query);
    }
    PathAndQuery::try_from(path).map_err(|_| ProxyError::BadRequest("path cannot be rewritten"))
}
