//! One backend as the pool sees it: how to dial it, its shared HTTP/2
//! connection, the count of its idle HTTP/1 connections against the cap, and
//! the list of its live connections the reaper walks.
//!
//! Endpoints are shared by every worker; what a worker keeps for itself (its
//! idle HTTP/1 connections, a copy of the HTTP/2 handle) is in
//! [`super::worker`]. A connection checked out for a request is a [`Conn`];
//! an HTTP/1 one comes back to its worker's list through [`Lease::release`]
//! once its response has been read to the end, and is closed otherwise.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};

use super::conn::{self, ConnState};
use super::connector::{Connector, DialError};
use super::{PoolSettings, UpstreamKey};
use crate::backend::{now_millis, Backend};
use crate::config::UpstreamProtocol;

/// One backend's connections.
#[derive(Debug)]
pub struct Endpoint<B> {
    pub backend: Arc<Backend>,
    pub(super) key: UpstreamKey,
    connector: Connector,
    pub(super) settings: Arc<PoolSettings>,
    /// HTTP/1 connections on some worker's idle list (the cap counts these).
    pub(super) idle: AtomicUsize,
    /// Gone from the table (or its service's connection settings changed):
    /// nothing new is kept, idle connections are closed.
    pub(super) retired: AtomicBool,
    /// Every connection not yet closed, for the reaper (HTTP/2 ones too).
    pub(super) conns: Mutex<Vec<Arc<ConnState>>>,
    /// The shared HTTP/2 connection, once one is up.
    /// Read on every HTTP/2 request, so lock-free; written on a dial and by
    /// the reaper.
    h2: ArcSwapOption<(http2::SendRequest<B>, Arc<ConnState>)>,
    /// One HTTP/2 dial at a time: concurrent first requests wait for it
    /// rather than each opening a connection.
    h2_dial: tokio::sync::Mutex<()>,
    /// TLS ALPN chose `h2` (or the service is h2c): requests multiplex.
    speaks_h2: AtomicBool,
    /// The last request sent on the HTTP/2 connection ([`now_millis`]).
    h2_used: AtomicU64,
}

impl<B> Endpoint<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(super) fn new(
        backend: Arc<Backend>,
        key: UpstreamKey,
        connector: Connector,
        settings: Arc<PoolSettings>,
    ) -> Endpoint<B> {
        let h2c = key.protocol == UpstreamProtocol::H2c;
        Endpoint {
            backend,
            key,
            connector,
            settings,
            idle: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            h2: ArcSwapOption::empty(),
            h2_dial: tokio::sync::Mutex::new(()),
            speaks_h2: AtomicBool::new(h2c),
            h2_used: AtomicU64::new(0),
        }
    }

    pub fn speaks_h2(&self) -> bool {
        self.speaks_h2.load(Ordering::Relaxed)
    }

    /// The shared HTTP/2 connection, if one is up.
    pub(super) fn current_h2(&self) -> Option<http2::SendRequest<B>> {
        let current = self.h2.load();
        current
            .as_deref()
            .filter(|(send, _)| !send.is_closed())
            .map(|(send, _)| send.clone())
    }

    /// A request goes out on the HTTP/2 connection now.
    pub(super) fn touch_h2(&self) {
        self.h2_used.store(now_millis(), Ordering::Relaxed);
    }

    /// A new connection (dialed now): HTTP/2 when the service is h2c or TLS
    /// ALPN chose it, HTTP/1.1 otherwise.
    pub async fn connect(self: &Arc<Self>) -> Result<Conn<B>, DialError> {
        if self.speaks_h2() {
            // One dial at a time: requests arriving while the connection is
            // being made wait for it and share it.
            let _dialing = self.h2_dial.lock().await;
            if let Some(send) = self.current_h2() {
                return Ok(self.h2_conn(send, true));
            }
            return self.dial().await;
        }
        self.dial().await
    }

    async fn dial(self: &Arc<Self>) -> Result<Conn<B>, DialError> {
        let backend = &self.backend;
        let name = match self.key.protocol {
            UpstreamProtocol::Https => &backend.named_authority,
            UpstreamProtocol::Http1 | UpstreamProtocol::H2c => &backend.authority,
        };
        let io = self.connector.dial(backend.resolved, name).await?;
        if self.key.protocol == UpstreamProtocol::H2c || io.is_h2() {
            self.speaks_h2.store(true, Ordering::Relaxed);
            let (send, state) = conn::http2(io).await?;
            self.register(&state);
            self.set_h2(send.clone(), state);
            return Ok(self.h2_conn(send, false));
        }
        // ALPN chose HTTP/1.1 (perhaps after a backend's restart without h2).
        self.speaks_h2.store(false, Ordering::Relaxed);
        let endpoint = Arc::clone(self);
        let (send, state) = conn::http1(io, move || {
            endpoint.idle.fetch_sub(1, Ordering::AcqRel);
        })
        .await?;
        self.register(&state);
        Ok(Conn::H1(Lease {
            send,
            state,
            endpoint: Arc::clone(self),
            reused: false,
        }))
    }

    pub(super) fn h2_conn(self: &Arc<Self>, send: http2::SendRequest<B>, reused: bool) -> Conn<B> {
        self.touch_h2();
        Conn::H2 { send, reused }
    }

    fn set_h2(&self, send: http2::SendRequest<B>, state: Arc<ConnState>) {
        let replaced = self.h2.swap(Some(Arc::new((send, state))));
        // A second TLS dial that raced the first: the older connection
        // closes once its handles and streams are gone.
        drop(replaced);
    }

    fn register(&self, state: &Arc<ConnState>) {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(state));
        self.settings.wake_reaper();
    }
}

impl<B> Endpoint<B> {
    /// The reaper's pass: close idle HTTP/1 connections past the timeout
    /// (all of them once retired), and the HTTP/2 connection once no
    /// request has used it for as long; forget closed ones. Returns how many
    /// connections are left.
    pub(super) fn reap(&self, now: u64, timeout_ms: u64) -> usize {
        let retired = self.retired.load(Ordering::Acquire);
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        for state in conns.iter() {
            let expired = state.idle_for(now).is_some_and(|idle| idle >= timeout_ms);
            if (retired || expired) && state.close_if_idle() {
                self.idle.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.reap_h2(now, timeout_ms, retired);
        conns.retain(|state| !state.is_closed());
        conns.len()
    }

    fn reap_h2(&self, now: u64, timeout_ms: u64, retired: bool) {
        let current = self.h2.load_full();
        let Some(shared) = current.as_deref() else {
            return;
        };
        let (send, state) = shared;
        // Cleared only if no dial replaced it meanwhile.
        let clear = || drop(self.h2.compare_and_swap(&current, None));
        if send.is_closed() {
            clear();
            return;
        }
        // The backend's in-flight count covers every stream until its
        // response body ends (gRPC streams included).
        let unused = now.saturating_sub(self.h2_used.load(Ordering::Relaxed)) >= timeout_ms;
        if self.backend.active_requests() == 0 && (retired || unused) {
            state.signal_close();
            clear();
        }
    }
}

/// A connection checked out for one request.
#[derive(Debug)]
pub enum Conn<B> {
    H1(Lease<B>),
    /// A handle on the shared HTTP/2 connection.
    H2 {
        send: http2::SendRequest<B>,
        reused: bool,
    },
}

/// Why a request did not get a response.
// Not boxed: the request only passes back up one call, on a rare path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SendError<B> {
    /// The connection closed before the request went out; it is handed
    /// back untouched, to go out on another connection.
    NotSent(Request<B>),
    Failed(hyper::Error),
}

impl<B> Conn<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn is_h2(&self) -> bool {
        matches!(self, Conn::H2 { .. })
    }

    /// Whether the connection was made before this request (the stale
    /// keep-alive race is possible on it).
    pub fn reused(&self) -> bool {
        match self {
            Conn::H1(lease) => lease.reused,
            Conn::H2 { reused, .. } => *reused,
        }
    }

    /// The HTTP/1 connection, to be offered back when its response ends.
    pub fn into_lease(self) -> Option<Lease<B>> {
        match self {
            Conn::H1(lease) => Some(lease),
            Conn::H2 { .. } => None,
        }
    }

    pub async fn send(&mut self, req: Request<B>) -> Result<Response<Incoming>, SendError<B>> {
        let sent = match self {
            Conn::H1(lease) => {
                // Ready at once unless the previous response's end has not
                // reached the connection's task yet.
                if lease.send.ready().await.is_err() {
                    return Err(SendError::NotSent(req));
                }
                lease.send.try_send_request(req).await
            }
            Conn::H2 { send, .. } => send.try_send_request(req).await,
        };
        sent.map_err(|mut e| match e.take_message() {
            Some(req) => SendError::NotSent(req),
            None => SendError::Failed(e.into_error()),
        })
    }
}

/// An HTTP/1 connection out of the idle lists, carrying one request.
/// Dropping it closes the connection; [`Lease::release`] offers it back.
#[derive(Debug)]
pub struct Lease<B> {
    pub(super) send: http1::SendRequest<B>,
    pub(super) state: Arc<ConnState>,
    pub(super) endpoint: Arc<Endpoint<B>>,
    reused: bool,
}

impl<B> Lease<B> {
    pub(super) fn reused(
        send: http1::SendRequest<B>,
        state: Arc<ConnState>,
        endpoint: Arc<Endpoint<B>>,
    ) -> Lease<B> {
        Lease {
            send,
            state,
            endpoint,
            reused: true,
        }
    }
}
