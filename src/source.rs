//! Who says which backends exist: the [`BackendSource`] seam.
//!
//! A source declares backends ([`Declared`]: service, id, address, weight,
//! lease end) and says when its declarations change, push-based, through a
//! `watch` channel the publisher follows. The config is one source
//! ([`StaticSource`], which changes on reload); the registry is another
//! (registrations, departures, and in cluster mode etcd's watch); a third
//! (Consul, Kubernetes endpoints) would be one more implementation. The
//! publisher merges every source's declarations, keyed by (service, source,
//! id), into one set of live backends (`table::members`), so the rules for
//! keeping, creating, draining and forgetting a backend are written once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::backend::Source;
use crate::config::Config;

/// One backend as a source declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    pub service: Arc<str>,
    /// Configured backends: their address as written; registered ones:
    /// their instance id.
    pub id: Arc<str>,
    /// `host:port` as declared (the metric label).
    pub address: Arc<str>,
    pub resolved: SocketAddr,
    pub weight: u32,
    pub source: Source,
    /// When a registered instance's lease ends (`None`: never).
    pub expires_at: Option<SystemTime>,
    /// Drained by the admin API: no new requests.
    pub drain: bool,
}

impl Declared {
    /// The merge key within a service.
    pub fn key(&self) -> (Source, &str) {
        (self.source, &self.id)
    }
}

/// A source of backends, push-based.
pub trait BackendSource: Send + Sync + std::fmt::Debug {
    /// Append every backend it declares now to `into`, sorted by (service,
    /// id). `config` is the running config (for sources that read it).
    fn declared(&self, config: &Config, into: &mut Vec<Declared>);

    /// A receiver that changes whenever `declared` would answer differently.
    fn changes(&self) -> watch::Receiver<u64>;
}

/// The backends listed in the config (`backends = [...]`). It changes only
/// on reload, which the publisher applies itself, synchronously.
#[derive(Debug, Default)]
pub struct StaticSource;

impl StaticSource {
    /// The config's backends, sorted by (service, address).
    pub fn declared(config: &Config, into: &mut Vec<Declared>) {
        for (name, service) in &config.services {
            let name: Arc<str> = Arc::from(name.as_str());
            let start = into.len();
            into.extend(service.backends.iter().map(|b| {
                let address: Arc<str> = Arc::from(b.address.as_str());
                Declared {
                    service: Arc::clone(&name),
                    id: Arc::clone(&address),
                    address,
                    resolved: b.resolved,
                    weight: b.weight,
                    source: Source::Config,
                    expires_at: None,
                    drain: false,
                }
            }));
            into[start..].sort_by(|a, b| a.id.cmp(&b.id));
        }
    }
}

/// Merge two lists sorted by (service, source, id) into one.
pub fn merge_sorted(a: Vec<Declared>, b: Vec<Declared>) -> Vec<Declared> {
    if b.is_empty() {
        return a;
    }
    if a.is_empty() {
        return b;
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => (&x.service, x.key()) <= (&y.service, y.key()),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return out,
        };
        let next = if take_a { a.next() } else { b.next() };
        out.extend(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(service: &str, id: &str, source: Source) -> Declared {
        Declared {
            service: service.into(),
            id: id.into(),
            address: id.into(),
            resolved: "127.0.0.1:1"
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 1))),
            weight: 1,
            source,
            expires_at: None,
            drain: false,
        }
    }

    #[test]
    fn two_sorted_lists_merge_by_service_source_and_id() {
        let config = vec![d("a", "x", Source::Config), d("b", "y", Source::Config)];
        let registry = vec![d("a", "m", Source::Registry), d("c", "z", Source::Registry)];
        let merged = merge_sorted(config, registry);
        let keys: Vec<(&str, &str)> = merged.iter().map(|d| (&*d.service, &*d.id)).collect();
        assert_eq!(keys, [("a", "x"), ("a", "m"), ("b", "y"), ("c", "z")]);
    }
}
