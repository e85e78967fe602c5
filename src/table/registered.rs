//! Registered instances in the published table.
//!
//! The publisher merges the registry's snapshot into every rebuild: a service
//! may be declared in the config, named by a route, or exist only in the
//! registry, and its configured and registered backends balance together.
//! Registered backends are kept here, apart from configured ones, keyed by
//! (service, instance id), so the two can never collide even when an id looks
//! like an address. A registered backend survives rebuilds while it stays
//! registered at the same resolved address (a new weight is applied in
//! place); a new address makes a new backend.
//!
//! Deregistration drains: an instance that leaves the registry (DELETE or
//! lease expiry) while requests are in flight on it stays in the service's
//! `backends`, marked draining (so never in `ready`), until its in-flight
//! count reaches zero; [`Publisher::run_drain_sweeper`] republishes when that
//! happens, and the backend disappears.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Publisher, State};
use crate::backend::{Backend, Health, Source};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::{Instance, Registry};

/// How often the sweeper looks for finished drains.
const DRAIN_SWEEP: Duration = Duration::from_millis(250);

/// The registry's share of the publisher's state.
#[derive(Debug, Default)]
pub(super) struct Registered {
    registry: Option<Arc<Registry>>,
    /// Per service, its registered backends in the table, sorted by id (the
    /// snapshot's order), so a rebuild merges two sorted lists in one pass
    /// instead of looking every instance up.
    live: HashMap<Arc<str>, Vec<Arc<Backend>>>,
    /// Left the registry with requests in flight: listed, never picked.
    draining: Vec<Arc<Backend>>,
    /// Left the table in this rebuild; their metric series go in `finish`.
    gone: Vec<Arc<Backend>>,
}

impl Registered {
    /// Start a rebuild: merge the registry's snapshot into the live
    /// backends (reusing, creating, retiring), end finished drains, and
    /// return `names` plus every service that has registered or draining
    /// backends, sorted.
    pub(super) fn begin(
        &mut self,
        names: Vec<Arc<str>>,
        config: &Config,
        metrics: &Metrics,
    ) -> Vec<Arc<str>> {
        let snapshot = self
            .registry
            .as_ref()
            .map(|r| r.snapshot())
            .unwrap_or_default();
        let mut previous = std::mem::take(&mut self.live);
        for (service, instances) in snapshot.services() {
            let old = previous.remove(service).unwrap_or_default();
            let checked = config
                .services
                .get(&**service)
                .is_some_and(|s| s.health_check.is_some());
            let merged = self.merge(instances, old, checked, metrics);
            self.live.insert(Arc::clone(service), merged);
        }
        for backend in previous.into_values().flatten() {
            self.retire(backend);
        }
        self.end_drains();
        let mut all: Vec<Arc<str>> = names;
        all.extend(self.live.keys().cloned());
        all.extend(self.draining.iter().map(|b| Arc::clone(&b.service)));
        all.sort_unstable();
        all.dedup();
        all
    }

    /// One service: walk its instances and its previous backends, both
    /// sorted by id. Same id and address: keep the backend (new weight in
    /// place); a new address: a new backend; gone: retire.
    fn merge(
        &mut self,
        instances: &[Arc<Instance>],
        old: Vec<Arc<Backend>>,
        checked: bool,
        metrics: &Metrics,
    ) -> Vec<Arc<Backend>> {
        let mut merged = Vec::with_capacity(instances.len());
        let mut old = old.into_iter().peekable();
        for instance in instances {
            while let Some(passed) = old.next_if(|b| *b.id < *instance.id) {
                self.retire(passed);
            }
            let backend = match old.next_if(|b| same_id(b, instance)) {
                Some(kept) if kept.resolved == instance.resolved => {
                    kept.set_weight(instance.weight);
                    // Registered again after a departure this table had not
                    // yet seen: it takes requests again.
                    kept.set_draining(false);
                    kept.set_lease_end(instance.expires_at);
                    kept
                }
                moved => {
                    if let Some(moved) = moved {
                        self.retire(moved);
                    }
                    self.revive(instance)
                        .unwrap_or_else(|| new_backend(instance, checked, metrics))
                }
            };
            merged.push(backend);
        }
        for passed in old {
            self.retire(passed);
        }
        merged
    }

    /// Drain a backend with requests in flight; forget one without.
    fn retire(&mut self, backend: Arc<Backend>) {
        if backend.active_requests() > 0 {
            backend.set_draining(true);
            tracing::info!(service = %backend.service, id = %backend.id, active = backend.active_requests(), "registered instance left; draining");
            self.draining.push(backend);
        } else {
            self.gone.push(backend);
        }
    }

    /// A draining backend registered again at the same address comes back,
    /// keeping its in-flight count and counters.
    fn revive(&mut self, instance: &Instance) -> Option<Arc<Backend>> {
        let at = self.draining.iter().position(|b| {
            b.service == instance.service && same_id(b, instance) && b.resolved == instance.resolved
        })?;
        let backend = self.draining.swap_remove(at);
        backend.set_draining(false);
        backend.set_lease_end(instance.expires_at);
        Some(backend)
    }

    /// A registered backend in the table now, by id.
    fn find(&self, service: &str, id: &str) -> Option<&Arc<Backend>> {
        let live = self.live.get(service)?;
        let at = live.binary_search_by(|b| (*b.id).cmp(id)).ok()?;
        live.get(at)
    }

    /// Draining backends whose requests have all finished go.
    fn end_drains(&mut self) {
        for backend in std::mem::take(&mut self.draining) {
            if backend.active_requests() == 0 {
                tracing::info!(service = %backend.service, id = %backend.id, "drain finished");
                self.gone.push(backend);
            } else {
                self.draining.push(backend);
            }
        }
    }

    /// Append `service`'s registered and draining backends to `backends`.
    pub(super) fn add(&self, service: &Arc<str>, backends: &mut Vec<Arc<Backend>>) {
        if let Some(live) = self.live.get(service) {
            backends.extend(live.iter().cloned());
        }
        let draining = self.draining.iter().filter(|b| b.service == *service);
        backends.extend(draining.cloned());
    }

    /// End a rebuild: drop the metric series of backends that left, unless
    /// a backend still in the table reports under the same labels.
    pub(super) fn finish(
        &mut self,
        metrics: &Metrics,
        configured: &HashMap<(Arc<str>, Arc<str>), Arc<Backend>>,
    ) {
        if self.gone.is_empty() {
            return;
        }
        let in_use: HashSet<(&str, &str)> = configured
            .values()
            .chain(self.live.values().flatten())
            .chain(self.draining.iter())
            .map(|b| (&*b.service, &*b.address))
            .collect();
        for backend in &self.gone {
            if !in_use.contains(&(&*backend.service, &*backend.address)) {
                metrics.forget_backend(&backend.service, &backend.address);
            }
        }
        self.gone.clear();
    }

    /// Whether any backend is draining.
    pub(super) fn is_draining(&self) -> bool {
        !self.draining.is_empty()
    }

    /// Whether a draining backend has finished (time to republish).
    fn drains_finished(&self) -> bool {
        self.draining.iter().any(|b| b.active_requests() == 0)
    }
}

/// The same instance id (pointer equality first: a renewed or re-published
/// instance shares its id's allocation with the backend made from it).
fn same_id(backend: &Backend, instance: &Instance) -> bool {
    Arc::ptr_eq(&backend.id, &instance.id) || backend.id == instance.id
}

/// A backend for a registered instance. With active checks it starts
/// `Unknown` and takes no traffic until a check passes (SPEC §2), like a
/// configured one.
fn new_backend(instance: &Instance, checked: bool, metrics: &Metrics) -> Arc<Backend> {
    let backend = Backend::new(
        Arc::clone(&instance.service),
        Arc::clone(&instance.id),
        Arc::clone(&instance.address),
        instance.resolved,
        instance.weight,
        Source::Registry,
        metrics.backend_counters(&instance.service, &instance.address),
    );
    if checked {
        backend.set_health(Health::Unknown);
    }
    backend.set_lease_end(instance.expires_at);
    Arc::new(backend)
}

// === impl Publisher ===

impl Publisher {
    /// Merge `registry`'s instances into every rebuild from now on, and
    /// publish at once (instances loaded from a durable store included).
    pub fn attach_registry(&self, registry: Arc<Registry>) {
        let mut state = self.lock();
        state.registered.registry = Some(registry);
        self.publish_rebuilt(&mut state);
    }

    /// An instance left the registry: from now on it gets no new request
    /// (the rebuild that removes it from the table comes later).
    pub fn instance_left(&self, service: &str, id: &str) {
        if let Some(backend) = self.lock().registered.find(service, id) {
            backend.set_draining(true);
        }
    }

    /// An instance's lease now ends at `expires_at`.
    pub fn instance_lease(&self, service: &str, id: &str, expires_at: Option<SystemTime>) {
        if let Some(backend) = self.lock().registered.find(service, id) {
            backend.set_lease_end(expires_at);
        }
    }

    /// Republish whenever a draining backend's last request has finished, so
    /// it leaves the listings; runs until aborted. It looks only while
    /// something drains (a request's end says nothing, so then it polls),
    /// and otherwise sleeps until a drain starts.
    pub async fn run_drain_sweeper(self: Arc<Self>) {
        loop {
            let started = self.drain_started.notified();
            tokio::pin!(started);
            started.as_mut().enable();
            let (draining, finished) = {
                let state = self.lock();
                (
                    state.registered.is_draining(),
                    state.registered.drains_finished(),
                )
            };
            if finished {
                self.republish();
                continue;
            }
            match draining {
                true => tokio::time::sleep(DRAIN_SWEEP).await,
                false => started.await,
            }
        }
    }
}

impl State {
    /// Registered backends in the table now, draining ones included (tests).
    #[cfg(test)]
    fn registered_backends(&self) -> usize {
        let live: usize = self.registered.live.values().map(Vec::len).sum();
        live + self.registered.draining.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Map;

    use super::*;
    use crate::config::{Config, RegistryConfig};
    use crate::registry::{Limits, Registration};
    use crate::table::Table;

    async fn setup(config_toml: &str) -> (Arc<Publisher>, Arc<Registry>, RegistryConfig) {
        let config = Config::from_toml_str(config_toml, std::path::Path::new("/tmp/t.toml"))
            .expect("test config");
        let registry_config = config.registry.clone();
        let publisher = Arc::new(Publisher::new(Arc::new(config), Metrics::new()));
        let registry = Arc::new(Registry::in_memory(vec![]));
        publisher.attach_registry(Arc::clone(&registry));
        (publisher, registry, registry_config)
    }

    async fn register(
        registry: &Registry,
        config: &RegistryConfig,
        service: &str,
        id: &str,
        address: &str,
        weight: u32,
    ) {
        let limits = Limits {
            config,
            declared: false,
        };
        let registration = Registration {
            address: address.into(),
            weight,
            ttl: Some(Duration::ZERO),
            metadata: Map::new(),
        };
        registry
            .register(limits, service, id, registration)
            .await
            .expect("register");
    }

    fn ids(table: &Table, service: &str) -> Vec<(String, &'static str, bool)> {
        let Some(service) = table.service(service) else {
            return Vec::new();
        };
        service
            .backends
            .iter()
            .map(|b| {
                (
                    b.id.to_string(),
                    b.source.as_str(),
                    service.ready.iter().any(|r| Arc::ptr_eq(r, b)),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn registered_and_configured_backends_balance_together() {
        let (publisher, registry, rc) =
            setup("[services.users]\nbackends = [\"127.0.0.1:9001\"]\n").await;
        register(&registry, &rc, "users", "web-1", "127.0.0.1:9001", 1).await;
        register(&registry, &rc, "orders", "o-1", "127.0.0.1:9101", 1).await;
        publisher.republish();
        let table = publisher.table().load_full();
        assert_eq!(
            ids(&table, "users"),
            [
                ("127.0.0.1:9001".into(), "config", true),
                ("web-1".into(), "registry", true)
            ],
            "the same address, configured and registered: two backends"
        );
        assert_eq!(ids(&table, "orders"), [("o-1".into(), "registry", true)]);
    }

    #[tokio::test]
    async fn a_backend_survives_rebuilds_and_takes_new_weights_in_place() {
        let (publisher, registry, rc) = setup("").await;
        register(&registry, &rc, "users", "a", "127.0.0.1:9001", 1).await;
        publisher.republish();
        let first = Arc::clone(
            &publisher
                .table()
                .load_full()
                .service("users")
                .unwrap()
                .backends[0],
        );
        register(&registry, &rc, "users", "a", "127.0.0.1:9001", 7).await;
        publisher.republish();
        let second = Arc::clone(
            &publisher
                .table()
                .load_full()
                .service("users")
                .unwrap()
                .backends[0],
        );
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(second.weight(), 7);
        register(&registry, &rc, "users", "a", "127.0.0.1:9002", 7).await;
        publisher.republish();
        let third = Arc::clone(
            &publisher
                .table()
                .load_full()
                .service("users")
                .unwrap()
                .backends[0],
        );
        assert!(
            !Arc::ptr_eq(&second, &third),
            "a new address is a new backend"
        );
    }

    #[tokio::test]
    async fn a_deregistered_backend_drains_then_disappears() {
        let (publisher, registry, rc) = setup("").await;
        register(&registry, &rc, "users", "a", "127.0.0.1:9001", 1).await;
        register(&registry, &rc, "users", "b", "127.0.0.1:9002", 1).await;
        publisher.republish();
        let a = Arc::clone(
            &publisher
                .table()
                .load_full()
                .service("users")
                .unwrap()
                .backends[0],
        );
        let in_flight = a.start_request();
        registry.deregister("users", "a").await.expect("deregister");
        publisher.republish();
        let table = publisher.table().load_full();
        assert_eq!(
            ids(&table, "users"),
            [
                ("b".into(), "registry", true),
                ("a".into(), "registry", false)
            ]
        );
        assert!(a.is_draining());
        assert!(!publisher.lock().registered.drains_finished());
        drop(in_flight);
        assert!(publisher.lock().registered.drains_finished());
        publisher.republish();
        assert_eq!(
            ids(&publisher.table().load_full(), "users"),
            [("b".into(), "registry", true)]
        );
        assert_eq!(publisher.lock().registered_backends(), 1);
    }

    #[tokio::test]
    async fn a_registry_only_service_goes_with_its_last_instance() {
        let (publisher, registry, rc) = setup("").await;
        register(&registry, &rc, "orders", "o-1", "127.0.0.1:9101", 1).await;
        publisher.republish();
        assert!(publisher.table().load_full().service("orders").is_some());
        registry
            .deregister("orders", "o-1")
            .await
            .expect("deregister");
        publisher.republish();
        assert!(publisher.table().load_full().service("orders").is_none());
    }

    #[tokio::test]
    async fn with_active_checks_a_registered_backend_starts_unknown() {
        let (publisher, registry, rc) =
            setup("[services.users]\n[services.users.health_check]\npath = \"/\"\n").await;
        register(&registry, &rc, "users", "a", "127.0.0.1:9001", 1).await;
        publisher.republish();
        let table = publisher.table().load_full();
        assert_eq!(ids(&table, "users"), [("a".into(), "registry", false)]);
        assert_eq!(
            table.service("users").unwrap().backends[0].health(),
            Health::Unknown
        );
    }
}
