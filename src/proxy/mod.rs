//! The request path: route, pick, forward, answer.
//!
//! [`ProxyService`] is the hyper `Service` of every client connection. One
//! request reads the published table once (`load_full`: an `Arc` held across
//! awaits), finds its route and service, picks a backend, rewrites headers,
//! sends the request on a pooled connection ([`crate::pool`]) under the
//! timeouts, retries where [`retry`] allows, and streams the answer back with
//! the in-flight guard riding in the body. Any [`ProxyError`] becomes a
//! response in exactly one place, [`ProxyError::into_response`].

pub mod body;
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
use crate::pool::SendError;
use crate::request_id;
use crate::request_path;
use crate::routing::{self, Route};
use crate::table::{ReadinessNudge, Service, SharedTable, Table};
use body::{BodyError, ProxyBody, RequestGuard, UpstreamBody};
pub use error::ProxyError;
use headers::Forwarded;
use retry::{Attempt, Failure};
use upstream::{Conn, ConnLease, UpstreamPools};

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
    pub nudge: ReadinessNudge,
    /// Connections to the backends.
    pub pools: Arc<UpstreamPools>,
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
        // `handle` itself is boxed: an async block around it would copy
        // its (kilobytes large) future once more on the first poll.
        Box::pin(self.clone().handle(req))
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
    async fn handle(self, mut req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let request_id = request_id::ensure(req.headers_mut());
        let mut log = self
            .proxy
            .access_log
            .begin(&req, self.peer.addr, &request_id, started);
        let guard_stops =
            framing::RequestFraming::stops_after(req.method(), req.version(), req.headers());
        let method_connect = req.method() == http::Method::CONNECT;
        let mut resp = self.answer(req, started, &mut log).await;
        resp.headers_mut().insert(request_id::HEADER, request_id);
        // The framing guard stopped at this head; unless hyper now leaves
        // HTTP/1 (101, or 2xx to CONNECT), no further request may follow.
        let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS
            || (method_connect && resp.status().is_success());
        if guard_stops && !switched {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        Ok(resp)
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
            target: Target {
                protocol: fwd.service.settings.protocol,
                path,
            },
            headers: parts.headers,
        };
        let (mut resp, conn, guard) =
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
        let answer = Answer {
            resp,
            conn,
            active: guard,
        };
        Ok(finish_response(
            fwd,
            answer,
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
    target: Target,
    headers: http::HeaderMap,
}

/// Where the attempts of one request go, besides the backend.
struct Target {
    protocol: UpstreamProtocol,
    path: PathAndQuery,
}

impl RequestTemplate {
    /// The request for one attempt on `conn`. The headers are moved into
    /// the `last` attempt possible and cloned for the others, which a retry
    /// may follow.
    fn build(
        &mut self,
        backend: &Backend,
        conn: &Conn,
        body: UpstreamBody,
        last: bool,
    ) -> Request<UpstreamBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.headers_mut() = if last {
            std::mem::take(&mut self.headers)
        } else {
            self.headers.clone()
        };
        fit(&mut req, backend, conn, &self.target);
        req
    }
}

/// Address `req` for the protocol its connection speaks (known before the
/// request goes out, ALPN included). HTTP/1.1: origin-form, the client's
/// Host. HTTP/2: `:scheme` and `:authority` naming the backend, and no Host
/// beside it (RFC 9113 §8.3.1: a Host that differs makes a strict server
/// refuse the request as malformed); the client's host travels in
/// X-Forwarded-Host.
fn fit(req: &mut Request<UpstreamBody>, backend: &Backend, conn: &Conn, target: &Target) {
    if conn.is_h2() {
        *req.version_mut() = Version::HTTP_2;
        *req.uri_mut() = backend_uri(backend, target.protocol, &target.path);
        req.headers_mut().remove(HOST);
    } else {
        *req.version_mut() = Version::HTTP_11;
        *req.uri_mut() = Uri::from(target.path.clone());
    }
}

/// The absolute URI of an HTTP/2 request. TLS backends are addressed by
/// the name written in the config (the SNI and name verified), the others
/// by the address they resolved to.
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

/// The backend's answer, the HTTP/1 connection it came on, and the request's
/// place in the backend's in-flight count.
type Answered = (Response<Incoming>, Option<ConnLease>, ActiveGuard);

async fn send_with_retries(
    proxy: &Proxy,
    fwd: &Forwarding<'_>,
    mut template: RequestTemplate,
    body: UpstreamBody,
    affinity: &Affinity,
) -> Result<Answered, ProxyError> {
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
        let try_deadline = settings
            .try_timeout
            .map_or(deadline, |t| deadline.min(tokio::time::Instant::now() + t));
        let last = retries >= settings.retry.attempts;
        let sending = Sending {
            proxy,
            service,
            backend,
            deadline: try_deadline,
            retry: retries > 0,
        };
        let outcome = sending.attempt(&mut template, attempt_body, last).await;
        let status = outcome.as_ref().map(|(resp, _)| resp.status());
        outlier::observe(proxy, service, backend, status);
        let facts = Attempt {
            method: &template.method,
            retries,
            replayable: body.again().is_some(),
            try_timeout: settings.try_timeout.is_some() && tokio::time::Instant::now() < deadline,
        };
        let failure = match &outcome {
            Ok((resp, _)) if !resp.status().is_server_error() => {
                return outcome.map(|(resp, conn)| (resp, conn, guard));
            }
            Ok((resp, _)) => Failure::Status(resp.status().as_u16()),
            Err(e) => Failure::Error(e),
        };
        let retry = !last
            && retry::should_retry(&settings.retry, facts, failure)
            && service
                .budget
                .try_retry(now_secs(), settings.retry.budget_percent);
        if !retry {
            return outcome.map(|(resp, conn)| (resp, conn, guard));
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

/// How many connections one attempt may try when each closes before its
/// request goes out (a backend restarting under a full idle list).
const MAX_UNSENT: usize = 4;

/// One attempt against one backend.
struct Sending<'a> {
    proxy: &'a Proxy,
    service: &'a Service,
    backend: &'a Arc<Backend>,
    deadline: tokio::time::Instant,
    /// A retry: it goes out on a new HTTP/1 connection.
    retry: bool,
}

impl Sending<'_> {
    /// Send under the attempt's deadline; classify and count the outcome.
    async fn attempt(
        &self,
        template: &mut RequestTemplate,
        body: UpstreamBody,
        last: bool,
    ) -> Result<(Response<Incoming>, Option<ConnLease>), ProxyError> {
        let started = Instant::now();
        let sent = tokio::time::timeout_at(self.deadline, self.send(template, body, last)).await;
        let result = match sent {
            Err(_elapsed) => Err(ProxyError::Timeout),
            Ok(Ok((resp, conn))) => headers::check_response_framing(resp.headers())
                .map(|()| (resp, conn))
                .map_err(ProxyError::BadFraming),
            Ok(Err(e)) => Err(e),
        };
        let status = result.as_ref().map(|(resp, _)| resp.status());
        record_latency(self.backend, started, status);
        self.count(status);
        result
    }

    /// Take a connection and send; a connection that closed before the
    /// request went out hands it back, and the next one takes it.
    async fn send(
        &self,
        template: &mut RequestTemplate,
        body: UpstreamBody,
        last: bool,
    ) -> Result<(Response<Incoming>, Option<ConnLease>), ProxyError> {
        let pools = &self.proxy.pools;
        let mut conn = upstream::connect(pools, self.service, self.backend, !self.retry)
            .await
            .map_err(ProxyError::Connect)?;
        let mut req = template.build(self.backend, &conn, body, last);
        for _ in 0..MAX_UNSENT {
            match conn.send(req).await {
                Ok(resp) => return Ok((resp, conn.into_lease())),
                Err(SendError::Failed(e)) => {
                    return Err(classify(e, self.stale_possible(&conn, template)))
                }
                Err(SendError::NotSent(unsent)) => req = unsent,
            }
            conn = upstream::connect(pools, self.service, self.backend, !self.retry)
                .await
                .map_err(ProxyError::Connect)?;
            fit(&mut req, self.backend, &conn, &template.target);
        }
        Err(ProxyError::Stale(None))
    }

    /// Whether a failure on `conn` may be the stale keep-alive race (the
    /// backend closed a reused connection as the request went out): then
    /// nothing reached it, and any method may be retried. Idempotent
    /// methods are retried anyway, and their failures count against the
    /// backend's health as resets.
    fn stale_possible(&self, conn: &Conn, template: &RequestTemplate) -> bool {
        conn.reused() && !retry::is_idempotent(&template.method)
    }

    fn count(&self, status: Result<StatusCode, &ProxyError>) {
        let backend = self.backend;
        let counter = match status {
            Ok(status) if !status.is_server_error() => &backend.counters.ok,
            Err(ProxyError::Timeout) => &backend.counters.timeout,
            _ => &backend.counters.error,
        };
        counter.inc();
        if let Err(e) = status {
            tracing::debug!(backend = %backend.address, error = %e, cause = ?std::error::Error::source(e), "attempt failed");
            if is_out_of_descriptors(e) {
                if let Some(more) = NO_DESCRIPTOR.allow(Duration::from_secs(10)) {
                    tracing::warn!(backend = %backend.address, more_since_last_line = more, "backend connect failed: the process is out of file descriptors (RLIMIT_NOFILE)");
                }
            }
        }
    }
}

/// Backend connects failing for want of a descriptor: one line per interval.
static NO_DESCRIPTOR: Throttle = Throttle::new();

/// Feed `p2c_ewma`: the attempt's time to response headers; a failure of
/// the backend's (refused, reset, timed out, garbled, 5xx) counts as slow,
/// one of the client's (its body too large, idle or gone) not at all.
fn record_latency(backend: &Backend, started: Instant, status: Result<StatusCode, &ProxyError>) {
    let failed = match status {
        Ok(status) => status.is_server_error(),
        Err(ProxyError::BodyTooLarge | ProxyError::BodyTimeout | ProxyError::ClientGone) => return,
        Err(_) => true,
    };
    backend.record_latency(started.elapsed(), failed);
}

/// Sort a send error into what the retry rules and the answer need.
/// `reused`: the request went out on a connection made earlier.
fn classify(error: hyper::Error, reused: bool) -> ProxyError {
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        if let Some(body) = cause.downcast_ref::<BodyError>() {
            return match body {
                BodyError::TooLarge(_) => ProxyError::BodyTooLarge,
                BodyError::Idle(_) => ProxyError::BodyTimeout,
                BodyError::Stream(_) => ProxyError::ClientGone,
            };
        }
        source = cause.source();
    }
    if error.is_parse() || error.is_parse_status() {
        return ProxyError::BadResponse(error);
    }
    if reused {
        ProxyError::Stale(Some(error))
    } else {
        ProxyError::Reset(error)
    }
}

/// What came back from the backend that answered.
struct Answer {
    resp: Response<Incoming>,
    /// The HTTP/1 connection it came on, offered back when the body ends.
    conn: Option<ConnLease>,
    active: ActiveGuard,
}

/// Turn the backend's answer into the client's, wiring up upgrades.
fn finish_response(
    fwd: &Forwarding<'_>,
    answer: Answer,
    client_upgrade: Option<OnUpgrade>,
    body_idle_timeout: Duration,
) -> Response<ProxyBody> {
    let Answer {
        mut resp,
        conn,
        active,
    } = answer;
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
            // The connection now belongs to the tunnel; its lease goes.
            drop(conn);
            tokio::spawn(tunnel(client, backend, guard));
            ProxyBody::empty()
        }
        _ => ProxyBody::upstream(body, body_idle_timeout, guard, conn),
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
