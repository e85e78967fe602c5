//! Connections to backends, kept for reuse: Switchyard's own pool on
//! hyper's `client::conn` (no request channel to a pool task, no hashed
//! checkout by URI).
//!
//! - HTTP/1.1: each worker thread keeps its own idle connections per backend
//!   ([`worker::Worker`], owned by the request path as a thread-local), so
//!   taking one is a pop and one compare-and-swap; at most
//!   `[proxy] upstream_idle_per_backend` are kept per backend over all
//!   workers, and each is closed after `upstream_idle_timeout` unused.
//! - HTTP/2 (h2c, or TLS where ALPN chose `h2`): one shared, multiplexed
//!   connection per backend, dialed once however many requests wait for it,
//!   closed after the same idle timeout with no request in flight.
//! - A connection the backend closes while idle is marked by the task
//!   driving it and is never handed out again; a request refused by a
//!   connection that closed before sending it goes out on another one.
//! - The [`reaper`] (one task) closes expired idle connections, and every
//!   idle connection of a backend that left the table.
//!
//! [`Pools`] is built by the app beside the table, not by it: the table
//! knows nothing of connections, and the pool reads the table only to learn
//! which backends are gone.

pub mod conn;
pub mod connector;
pub mod endpoint;
pub mod reaper;
pub mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::backend::Backend;
use crate::config::{ProxyConfig, ServiceConfig, UpstreamProtocol, UpstreamTls};
pub use connector::{Connector, DialError, UpstreamIo};
pub use endpoint::{Conn, Endpoint, Lease, SendError};
pub use worker::{Checkout, Worker};

/// Which backends can share connection settings. TLS settings are per
/// service: a CA or server name is a service setting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamKey {
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    tls: Option<(Arc<str>, UpstreamTls)>,
}

impl UpstreamKey {
    /// Whether `settings` of `service` would make this key (no allocation:
    /// a worker asks after every table rebuild).
    pub fn matches(&self, service: &str, settings: &ServiceConfig) -> bool {
        self.protocol == settings.protocol
            && self.connect_timeout == settings.connect_timeout
            && match &self.tls {
                None => settings.protocol != UpstreamProtocol::Https,
                Some((name, tls)) => **name == *service && *tls == settings.tls,
            }
    }

    pub fn new(service: &Arc<str>, settings: &ServiceConfig) -> UpstreamKey {
        let tls = (settings.protocol == UpstreamProtocol::Https)
            .then(|| (Arc::clone(service), settings.tls.clone()));
        UpstreamKey {
            protocol: settings.protocol,
            connect_timeout: settings.connect_timeout,
            tls,
        }
    }
}

/// `[proxy] upstream_idle_per_backend` and `upstream_idle_timeout`, as
/// atomics a reload can change under running requests.
#[derive(Debug)]
pub struct PoolSettings {
    idle_per_backend: AtomicUsize,
    idle_timeout_ms: AtomicU64,
    /// Wakes the reaper from its connection-less sleep.
    opened: Notify,
}

impl PoolSettings {
    pub fn idle_per_backend(&self) -> usize {
        self.idle_per_backend.load(Ordering::Relaxed)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed))
    }

    fn apply(&self, config: &ProxyConfig) {
        self.idle_per_backend
            .store(config.upstream_idle_per_backend, Ordering::Relaxed);
        let ms = u64::try_from(config.upstream_idle_timeout.as_millis()).unwrap_or(u64::MAX);
        self.idle_timeout_ms.store(ms.max(1), Ordering::Relaxed);
    }

    fn wake_reaper(&self) {
        self.opened.notify_one();
    }
}

/// Every backend's endpoint, shared by the workers and the reaper.
#[derive(Debug)]
pub struct Pools<B> {
    settings: Arc<PoolSettings>,
    /// By backend `Arc` address (each endpoint holds its backend, so the
    /// address stays unique while it is here). Locked on a worker's first
    /// request to a backend after a rebuild, and by the reaper.
    endpoints: Mutex<HashMap<usize, Arc<Endpoint<B>>>>,
    /// One connector per connection settings (a TLS client config is
    /// costly to build).
    connectors: Mutex<HashMap<UpstreamKey, Connector>>,
    /// Retired endpoints whose connections are still closing.
    retiring: Mutex<Vec<Arc<Endpoint<B>>>>,
    /// Moves on every retirement: workers then drop their stale slots.
    epoch: AtomicU64,
    /// An endpoint was made since the reaper last compared with the table.
    added: AtomicBool,
}

impl<B> Pools<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(config: &ProxyConfig) -> Pools<B> {
        let settings = PoolSettings {
            idle_per_backend: AtomicUsize::new(0),
            idle_timeout_ms: AtomicU64::new(1),
            opened: Notify::new(),
        };
        settings.apply(config);
        Pools {
            settings: Arc::new(settings),
            endpoints: Mutex::new(HashMap::new()),
            connectors: Mutex::new(HashMap::new()),
            retiring: Mutex::new(Vec::new()),
            epoch: AtomicU64::new(0),
            added: AtomicBool::new(false),
        }
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The endpoint of `backend` with its service's connection settings; a
    /// new one when the settings changed (the old one is retired).
    pub fn endpoint(
        &self,
        service: &Arc<str>,
        settings: &ServiceConfig,
        backend: &Arc<Backend>,
    ) -> Arc<Endpoint<B>> {
        let key = UpstreamKey::new(service, settings);
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let address = Arc::as_ptr(backend) as usize;
        if let Some(endpoint) = endpoints.get(&address).filter(|e| e.key == key) {
            return Arc::clone(endpoint);
        }
        let connector = self.connector(&key);
        let endpoint = Arc::new(Endpoint::new(
            Arc::clone(backend),
            key,
            connector,
            Arc::clone(&self.settings),
        ));
        if let Some(old) = endpoints.insert(address, Arc::clone(&endpoint)) {
            self.retire(old);
        }
        self.added.store(true, Ordering::Release);
        endpoint
    }

    fn connector(&self, key: &UpstreamKey) -> Connector {
        let mut connectors = self
            .connectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        connectors
            .entry(key.clone())
            .or_insert_with(|| {
                let tls = key.tls.as_ref().map(|(_, tls)| tls);
                Connector::new(key.connect_timeout, tls)
            })
            .clone()
    }

    /// Nothing new is kept for `endpoint`; the reaper closes its connections.
    fn retire(&self, endpoint: Arc<Endpoint<B>>) {
        endpoint.retired.store(true, Ordering::Release);
        self.retiring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(endpoint);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.settings.wake_reaper();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_matches_the_settings_that_made_it_and_no_others() {
        let service: Arc<str> = Arc::from("api");
        let mut settings = ServiceConfig::default();
        let key = UpstreamKey::new(&service, &settings);
        assert!(key.matches("api", &settings));
        assert!(key.matches("other", &settings), "plain keys are shared");
        settings.connect_timeout += Duration::from_millis(1);
        assert!(!key.matches("api", &settings));
        settings.protocol = UpstreamProtocol::Https;
        let tls = UpstreamKey::new(&service, &settings);
        assert!(tls.matches("api", &settings));
        assert!(!tls.matches("other", &settings), "TLS keys are per service");
        settings.tls.server_name = Some("backend.internal".into());
        assert!(!tls.matches("api", &settings));
    }
}
