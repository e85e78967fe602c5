//! An immutable view of every registered instance, and the registry as a
//! [`BackendSource`] of the table.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::instance::Instance;
use super::Registry;
use crate::backend::Source;
use crate::source::{BackendSource, Declared};

/// An immutable view of every registered instance.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The data version it was taken at.
    pub version: u64,
    /// The membership index it was taken at.
    pub index: u64,
    /// Per service, instances sorted by id.
    pub(super) services: BTreeMap<Arc<str>, Vec<Arc<Instance>>>,
}

impl Snapshot {
    /// Services with at least one registered instance, by name.
    pub fn services(&self) -> impl Iterator<Item = (&Arc<str>, &[Arc<Instance>])> {
        self.services
            .iter()
            .map(|(name, list)| (name, list.as_slice()))
    }

    /// A service's instances (empty when none are registered).
    pub fn service(&self, name: &str) -> &[Arc<Instance>] {
        self.services.get(name).map_or(&[], Vec::as_slice)
    }

    pub fn instance(&self, service: &str, id: &str) -> Option<&Arc<Instance>> {
        let list = self.service(service);
        list.binary_search_by(|i| (*i.id).cmp(id))
            .ok()
            .map(|at| &list[at])
    }

    /// All instances, service by service.
    pub fn instances(&self) -> impl Iterator<Item = &Arc<Instance>> {
        self.services.values().flatten()
    }

    pub fn len(&self) -> usize {
        self.services.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

// === impl BackendSource ===

impl BackendSource for Registry {
    /// Every registered instance, sorted by (service, id) as the snapshot is.
    fn declared(&self, _config: &crate::config::Config, into: &mut Vec<Declared>) {
        let snapshot = self.snapshot();
        into.reserve(snapshot.len());
        into.extend(snapshot.instances().map(|i| Declared {
            service: Arc::clone(&i.service),
            id: Arc::clone(&i.id),
            address: Arc::clone(&i.address),
            resolved: i.resolved,
            weight: i.overrides.weight(i.weight),
            source: Source::Registry,
            expires_at: i.expires_at,
            drain: i.overrides.drain,
        }));
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.membership.subscribe()
    }
}
