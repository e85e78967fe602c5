//! The registry's side of the publisher: attaching sources, the
//! synchronous departure hooks, and the drain sweeper.
//!
//! Registered instances reach the table through the registry's
//! [`BackendSource`] implementation and the one merge in `members`, beside the
//! configured backends: a service may be declared in the config, named by a
//! route, or exist only in the registry, and its configured and registered
//! backends balance together.
//!
//! Departures drain: an instance that leaves the registry (DELETE, lease
//! expiry, an etcd delete) while requests are in flight on it stays in the
//! service's `backends`, marked draining (so never picked), until its
//! in-flight count reaches zero; [`Publisher::run_drain_sweeper`] republishes
//! when that happens, and the backend disappears. The departure itself is
//! exact: [`Publisher::instance_left`] marks the live backend before the
//! registry answers, so no new request reaches it, whatever table is current.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Publisher;
use crate::backend::Source;
use crate::source::BackendSource;

/// How often the sweeper looks for finished drains while something drains.
const DRAIN_SWEEP: Duration = Duration::from_millis(250);

// === impl Publisher ===

impl Publisher {
    /// Merge `source`'s backends into every rebuild from now on, and
    /// publish at once (instances loaded from a durable store included).
    /// [`Publisher::follow`] rebuilds when it changes.
    pub fn add_source(&self, source: Arc<dyn BackendSource>) {
        let mut state = self.lock();
        state.sources.push(source);
        // Attached at start-up: what it holds already (a durable store's
        // instances) belongs to the first table and does not slow-start.
        state.members.starting_up();
        self.publish_rebuilt(&mut state);
    }

    /// Rebuild (coalesced) whenever `source` changes; runs until aborted or
    /// the source is gone. It subscribes here, before the task first runs,
    /// so no change made meanwhile is missed.
    pub fn follow(
        self: Arc<Self>,
        source: Arc<dyn BackendSource>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut changes = source.changes();
        async move {
            drop(source);
            while changes.changed().await.is_ok() {
                self.nudge();
            }
        }
    }

    /// An instance left the registry: from now on it gets no new request
    /// (the rebuild that removes it from the table comes later).
    pub fn instance_left(&self, service: &str, id: &str) {
        if let Some(backend) = self.lock().members.find(service, Source::Registry, id) {
            backend.set_draining(true);
        }
    }

    /// An instance's lease now ends at `expires_at`.
    pub fn instance_lease(&self, service: &str, id: &str, expires_at: Option<SystemTime>) {
        if let Some(backend) = self.lock().members.find(service, Source::Registry, id) {
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
                (state.members.is_draining(), state.members.drains_finished())
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Map;

    use super::*;
    use crate::backend::Health;
    use crate::config::{Config, RegistryConfig};
    use crate::metrics::Metrics;
    use crate::registry::{Limits, Registration, Registry};
    use crate::table::Table;

    async fn setup(config_toml: &str) -> (Arc<Publisher>, Arc<Registry>, RegistryConfig) {
        let config = Config::from_toml_str(config_toml, std::path::Path::new("/tmp/t.toml"))
            .expect("test config");
        let registry_config = config.registry.clone();
        let publisher = Arc::new(Publisher::new(Arc::new(config), Metrics::new()));
        let registry = Arc::new(Registry::in_memory(vec![]));
        publisher.add_source(Arc::clone(&registry) as Arc<dyn BackendSource>);
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
        assert!(!publisher.lock().members.drains_finished());
        drop(in_flight);
        assert!(publisher.lock().members.drains_finished());
        publisher.republish();
        assert_eq!(
            ids(&publisher.table().load_full(), "users"),
            [("b".into(), "registry", true)]
        );
        assert_eq!(publisher.lock().members.len(), 1);
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
