//! Pooled HTTP clients to backends, one per (protocol, connect timeout).
//!
//! Clients are kept by the publisher across table rebuilds, so a reload never
//! throws away warm keep-alive connections. The pool's idle timeout stays
//! below common backend keep-alive timeouts (Node.js and Apache close idle
//! connections after 5 s), which keeps the stale-connection race rare; the
//! client also retries a request that a reused connection dropped before any
//! byte of it was written.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::UpstreamBody;
use crate::config::UpstreamProtocol;

/// How long an idle pooled connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// A pooled client; cloning shares the pool.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub protocol: UpstreamProtocol,
    client: Client<HttpConnector, UpstreamBody>,
}

impl Upstream {
    pub fn new(protocol: UpstreamProtocol, connect_timeout: Duration) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(30)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .retry_canceled_requests(true)
            .set_host(false);
        if protocol == UpstreamProtocol::H2c {
            builder.http2_only(true);
        }
        Upstream {
            protocol,
            client: builder.build(connector),
        }
    }

    pub fn client(&self) -> &Client<HttpConnector, UpstreamBody> {
        &self.client
    }
}
