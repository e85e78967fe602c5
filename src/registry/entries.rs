//! The registry's mutable state behind its writers' mutex: the entries by
//! service and id, their leases, and the counters that say what changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::time::Instant;

use super::error::RegistryError;
use super::instance::Instance;
use super::lease::{LeaseKey, Leases};
use super::{Key, Limits, Snapshot};

/// The mutable state, behind the writers' mutex.
#[derive(Debug, Default)]
pub(super) struct Inner {
    /// Sorted, so snapshots and listings come out in a stable order.
    pub(super) services: BTreeMap<Arc<str>, BTreeMap<Arc<str>, Entry>>,
    /// Registered instances in all services (what `max_instances` caps).
    pub(super) instances: usize,
    pub(super) leases: Leases<Key>,
    /// Bumped by every change, heartbeats included.
    pub(super) version: u64,
    /// Bumped by membership changes only (what the table and watchers see).
    pub(super) index: u64,
    /// The deadline the expiry task sleeps until (`None`: until woken).
    pub(super) armed: Option<Instant>,
    /// Cluster mode: the newest etcd revision applied.
    pub(super) revision: i64,
}

/// What a write changed, which decides who hears of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// Only a lease's end (a heartbeat, or the same registration again).
    Lease,
    /// A new instance, or a new address, weight, ttl or metadata.
    Joined,
    /// An instance was deregistered or expired.
    Left,
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) instance: Arc<Instance>,
    pub(super) lease: Option<LeaseKey>,
    /// Cluster mode: the etcd revision that wrote it, and its etcd lease (0:
    /// none). Always 0 on the other stores.
    pub(super) revision: i64,
    pub(super) etcd_lease: i64,
}

/// Where an upsert's data came from (cluster mode: etcd's revision and lease).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Origin {
    pub(super) revision: i64,
    pub(super) etcd_lease: i64,
}

// === impl Inner ===

impl Inner {
    pub(super) fn get(&self, service: &str, id: &str) -> Option<&Entry> {
        self.services.get(service)?.get(id)
    }

    /// The registry's own copy of `service`'s name when it has instances
    /// (so every instance of a service shares one string), else a new one.
    pub(super) fn service_name(&self, service: &str) -> Arc<str> {
        self.services
            .get_key_value(service)
            .map_or_else(|| Arc::from(service), |(name, _)| Arc::clone(name))
    }

    /// Refuse a registration that would create a service or pass the limit.
    pub(super) fn admit(
        &self,
        limits: Limits<'_>,
        service: &str,
        id: &str,
    ) -> Result<(), RegistryError> {
        let existing = self.services.get(service);
        if existing.is_none() && !limits.declared && !limits.config.allow_new_services {
            return Err(RegistryError::NewService(service.to_owned()));
        }
        if existing.is_some_and(|m| m.contains_key(id)) {
            return Ok(()); // an update adds nothing
        }
        let count = existing.map_or(0, BTreeMap::len);
        let max = limits.config.max_instances_per_service;
        if count >= max {
            return Err(RegistryError::TooManyInstances {
                service: service.to_owned(),
                max,
            });
        }
        let max = limits.config.max_services;
        if existing.is_none() && self.services.len() >= max {
            return Err(RegistryError::TooManyServices {
                service: service.to_owned(),
                max,
            });
        }
        let max = limits.config.max_instances;
        if self.instances >= max {
            return Err(RegistryError::RegistryFull { max });
        }
        Ok(())
    }

    /// Insert or replace; returns what changed: membership (anything but the
    /// lease's end differs) or only the lease.
    pub(super) fn upsert(
        &mut self,
        instance: Arc<Instance>,
        deadline: Option<Instant>,
        origin: Origin,
    ) -> Change {
        let key: Key = (Arc::clone(&instance.service), Arc::clone(&instance.id));
        let old = self.detach(&key.0, &key.1);
        let lease = deadline.map(|at| self.leases.insert(at, key.clone()));
        let changed = old.is_none_or(|old| !old.instance.same_registration(&instance));
        let entry = Entry {
            instance,
            lease,
            revision: origin.revision,
            etcd_lease: origin.etcd_lease,
        };
        self.services.entry(key.0).or_default().insert(key.1, entry);
        self.instances += 1;
        match changed {
            true => Change::Joined,
            false => Change::Lease,
        }
    }

    /// Upsert data from etcd at `origin.revision`, unless a newer revision
    /// of the instance is already here (a late watch event after our own
    /// later write); also records the revision.
    pub(super) fn apply(
        &mut self,
        instance: Arc<Instance>,
        deadline: Option<Instant>,
        origin: Origin,
    ) -> Change {
        self.seen_revision(origin.revision);
        let newer = self
            .get(&instance.service, &instance.id)
            .is_some_and(|e| e.revision > origin.revision);
        if newer {
            return Change::Lease;
        }
        self.upsert(instance, deadline, origin)
    }

    pub(super) fn seen_revision(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    pub(super) fn remove(&mut self, service: &str, id: &str) -> Option<Arc<Instance>> {
        self.detach(service, id).map(|entry| entry.instance)
    }

    /// Take an entry out of the maps and its lease out of the index; a
    /// service left without instances disappears.
    pub(super) fn detach(&mut self, service: &str, id: &str) -> Option<Entry> {
        let instances = self.services.get_mut(service)?;
        let entry = instances.remove(id)?;
        self.instances -= 1;
        if instances.is_empty() {
            self.services.remove(service);
        }
        if let Some(key) = entry.lease {
            self.leases.remove(key);
        }
        Some(entry)
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        let services = self
            .services
            .iter()
            .map(|(name, entries)| {
                let list = entries.values().map(|e| Arc::clone(&e.instance)).collect();
                (Arc::clone(name), list)
            })
            .collect();
        Snapshot {
            version: self.version,
            index: self.index,
            services,
        }
    }
}
