//! Pooled HTTP clients to backends, one per [`UpstreamKey`]: protocol and
//! connect timeout, and for TLS backends also the service and its TLS settings.
//!
//! Clients are kept by the publisher across table rebuilds, so a reload never
//! throws away warm keep-alive connections. The pool's idle timeout stays
//! below common backend keep-alive timeouts (Node.js and Apache close idle
//! connections after 5 s), which keeps the stale-connection race rare; the
//! client itself retries a request that a reused connection dropped before
//! any byte of it was written. For the rest of the race — the backend closed
//! the connection just after the request went out — every connection carries
//! its birth time ([`Born`]), so the request path can tell a reused
//! connection from a fresh one and retry any method on the former.
//!
//! `protocol = "https"`: requests name the backend as written in the config
//! (`https://api.internal:8443/...`), so the pool keys, SNI and certificate
//! check use that name, while the connection is dialed at the address it
//! resolved to at load — the same one the health checks probe — through the
//! pool's pins ([`Upstream::pin`]). How connections are made, TLS and ALPN
//! included, is [`super::connector`]'s business.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Extensions, Request};
use hyper_util::client::legacy::connect::{capture_connection, CaptureConnection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::UpstreamBody;
use super::connector::{Connector, TlsDial};
use crate::backend::Backend;
use crate::config::{ServiceConfig, UpstreamProtocol, UpstreamTls};

/// How long an idle pooled connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Which services share a pool. TLS pools are per service: their pins map
/// the service's backend names, and a CA or server name is a service setting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamKey {
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    tls: Option<(Arc<str>, UpstreamTls)>,
}

impl UpstreamKey {
    pub fn new(service: &Arc<str>, settings: &ServiceConfig) -> UpstreamKey {
        let tls = (settings.protocol == UpstreamProtocol::Https)
            .then(|| (Arc::clone(service), settings.tls.clone()));
        UpstreamKey {
            protocol: settings.protocol,
            connect_timeout: settings.connect_timeout,
            tls,
        }
    }

    /// The service of a per-service (TLS) pool.
    pub fn service(&self) -> Option<&Arc<str>> {
        self.tls.as_ref().map(|(service, _)| service)
    }
}

/// A pooled client; cloning shares the pool.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub protocol: UpstreamProtocol,
    client: Client<Connector, UpstreamBody>,
    /// Set for https pools.
    tls: Option<Arc<TlsDial>>,
}

impl Upstream {
    pub fn new(key: &UpstreamKey) -> Upstream {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .retry_canceled_requests(true)
            .set_host(false);
        if key.protocol == UpstreamProtocol::H2c {
            builder.http2_only(true);
        }
        let tls = key.tls.as_ref().map(|(_, settings)| settings);
        let connector = Connector::new(key.connect_timeout, tls);
        Upstream {
            protocol: key.protocol,
            tls: connector.tls_dial(),
            client: builder.build(connector),
        }
    }

    pub fn client(&self) -> &Client<Connector, UpstreamBody> {
        &self.client
    }

    /// Tell an https pool where its backends' names dial (the publisher calls
    /// this on each rebuild; a no-op for other protocols, and when nothing
    /// changed). New connections read the pins with one atomic load.
    pub fn pin(&self, backends: &[Arc<Backend>]) {
        let Some(tls) = &self.tls else {
            return;
        };
        let pins: HashMap<Arc<str>, SocketAddr> = backends
            .iter()
            .map(|b| (Arc::from(b.named_authority.as_str()), b.resolved))
            .collect();
        tls.set_pins(pins);
    }
}

/// When a backend connection was made; attached to every connection's
/// metadata.
#[derive(Debug, Clone, Copy)]
pub struct Born(pub Instant);

/// Ask the client to report which connection serves `req`.
pub fn watch_connection(req: &mut Request<UpstreamBody>) -> CaptureConnection {
    capture_connection(req)
}

/// Whether the connection that served (or failed) a request existed before `since`.
pub fn was_reused(captured: &CaptureConnection, since: Instant) -> bool {
    let metadata = captured.connection_metadata();
    let Some(connected) = metadata.as_ref() else {
        return false;
    };
    let mut extensions = Extensions::new();
    connected.get_extras(&mut extensions);
    extensions.get::<Born>().is_some_and(|born| born.0 < since)
}
