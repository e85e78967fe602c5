//! The service registry: instances register over the admin API, renew their
//! lease with heartbeats, and leave by deregistering or by letting it expire.
//!
//! [`Registry`] is the source of truth for registered instances. Writers (the
//! admin handlers, the expiry task) take a short mutex over a sorted map;
//! readers (the publisher's rebuilds, the admin listings, the store writer)
//! get an immutable [`Snapshot`] from an `ArcSwap`. The snapshot is rebuilt
//! lazily, by the first reader after a change, so a burst of 10,000
//! registrations costs 10,000 O(log n) inserts plus one O(n) snapshot per
//! reader pass (a table rebuild, a store write, a listing), not 10,000
//! copies. The request path never reads the registry at all: it sees
//! registered instances only through the published table.
//!
//! Membership changes call back into the publisher (`Publisher::nudge`, set
//! with [`Registry::on_change`]) and are announced on a `watch` channel
//! carrying the registry's index (a counter of membership changes), which
//! blocking queries wait on. A departure calls back at once: no new request
//! may reach a deregistered or expired instance. Joins are batched by
//! `run_notifier` (the first at once, then at most one call per 100 ms), so
//! a burst of registrations costs a handful of table rebuilds, each O(n),
//! rather than one every publisher cycle — rebuilds are what the request
//! path would feel. Heartbeats move a lease but change no membership, so
//! they advance the data version (for the store and the listings) but not
//! the index.
//!
//! # Layout
//! - [`instance`]: the instance type and the validation of PUT bodies.
//! - [`address`]: `host:port` parsing, resolution and the network policy.
//! - [`lease`]: lease deadlines on the wall and monotonic clocks.
//! - `entries` (private): the state behind the writers' mutex.
//! - [`snapshot`]: the immutable view readers get; the registry as a `BackendSource`.
//! - [`store`]: the `RegistryStore` seam; memory and file stores.
//! - [`journal`]: the file store's write-ahead log, group-committed.
//! - [`shared`]: the `SharedStore` seam, for stores every node follows
//!   (`cluster`); [`etcd`] implements it.
//! - [`client`]: the `switchyard register` command's HTTP client.
//! - [`error`]: `RegistryError`, every way a request is refused.

pub mod address;
pub mod client;
mod cluster;
mod entries;
pub mod error;
pub mod etcd;
pub mod instance;
mod journal;
pub mod lease;
pub mod shared;
pub mod snapshot;
pub mod store;
mod tasks;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use entries::{Change, Entry, Inner, Origin};
pub use error::{NameKind, RegistryError};
pub use etcd::{EtcdError, EtcdStore};
pub use instance::{Instance, Registration};

use crate::overrides::Patch;
pub use shared::{SharedError, SharedStore};
pub use snapshot::Snapshot;
pub use store::{Loaded, RegistryStore, StoreError};

use crate::config::RegistryConfig;
use address::Policy;
use error::Shown;
use instance::check_name;

/// (service, instance id): an instance's identity.
type Key = (Arc<str>, Arc<str>);

/// The registry; shared as `Arc<Registry>`.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    /// Mirror of `Inner::version`, so a reader can tell without the lock
    /// whether the published snapshot is current.
    version: AtomicU64,
    snapshot: ArcSwap<Snapshot>,
    /// The membership index; the publisher and blocking queries watch it.
    index: watch::Sender<u64>,
    /// Wakes the expiry task when a lease may end before the one it sleeps on.
    lease_added: Notify,
    /// Wakes the store writer.
    dirty: Notify,
    /// Wakes `run_notifier`: an instance joined or changed.
    joined: Notify,
    store: Arc<dyn RegistryStore>,
    /// Serialises saves (a late older save must never overwrite a newer
    /// one) and remembers the version last saved.
    saved: Arc<tokio::sync::Mutex<u64>>,
    /// Switchyard's own listen addresses: never registrable (a loop).
    own_listeners: Vec<SocketAddr>,
    /// Bumped on every membership change the table should see (joins
    /// batched by `run_notifier`, departures at once): the publisher follows
    /// it ([`BackendSource::changes`]).
    membership: watch::Sender<u64>,
    /// Told of every departure and lease change before the write that made
    /// it is answered (exact departure, SPEC §3).
    routing: OnceLock<Hook>,
    /// Cluster mode: the shared store (etcd), which every write goes to first.
    cluster: Option<Arc<dyn SharedStore>>,
}

/// What routing must learn synchronously: the table's rebuild comes later,
/// but from the moment a departure is answered no new request may go to the
/// instance, and a lease's end must be known where requests are routed.
pub trait RoutingHook: Send + Sync {
    /// `service`/`id` left: no new request may reach it from now on.
    fn left(&self, service: &str, id: &str);
    /// `service`/`id`'s lease now ends at `expires_at` (`None`: never).
    fn lease(&self, service: &str, id: &str, expires_at: Option<SystemTime>);
}

/// The routing hook, boxed.
struct Hook(Box<dyn RoutingHook>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoutingHook")
    }
}

/// What a registration is checked against, from the running config.
#[derive(Debug, Clone, Copy)]
pub struct Limits<'a> {
    pub config: &'a RegistryConfig,
    /// The config declares the service or a route names it (so a
    /// registration does not *create* it).
    pub declared: bool,
}

impl Registry {
    /// Load what `store` holds, dropping expired leases and instances the
    /// current policy refuses (both logged). `own_listeners` are the bound
    /// listen addresses, refused as registration targets.
    pub fn open(
        store: Arc<dyn RegistryStore>,
        config: &RegistryConfig,
        own_listeners: Vec<SocketAddr>,
    ) -> Result<Registry, StoreError> {
        let loaded = store.load()?;
        let registry = Registry::new(store, own_listeners);
        registry.restore(loaded, config);
        Ok(registry)
    }

    /// An empty registry on a memory store (tests, tools).
    pub fn in_memory(own_listeners: Vec<SocketAddr>) -> Registry {
        Registry::new(Arc::new(store::MemoryStore::default()), own_listeners)
    }

    fn new(store: Arc<dyn RegistryStore>, own_listeners: Vec<SocketAddr>) -> Registry {
        Registry {
            inner: Mutex::new(Inner::default()),
            version: AtomicU64::new(0),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            index: watch::Sender::new(0),
            lease_added: Notify::new(),
            dirty: Notify::new(),
            joined: Notify::new(),
            store,
            saved: Arc::new(tokio::sync::Mutex::new(0)),
            own_listeners,
            membership: watch::Sender::new(0),
            routing: OnceLock::new(),
            cluster: None,
        }
    }

    fn restore(&self, loaded: Loaded, config: &RegistryConfig) {
        let Loaded {
            instances: loaded,
            version,
            compact,
        } = loaded;
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut inner = self.lock();
        let (mut expired, mut refused, mut kept) = (0, 0, 0);
        for instance in loaded {
            let deadline = match instance.expires_at {
                None => None,
                Some(at) => match lease::remaining(at, wall) {
                    Some(left) => Some(now + left),
                    None => {
                        expired += 1;
                        continue;
                    }
                },
            };
            if let Err(reason) = address::classify(instance.resolved, &self.policy(config)) {
                tracing::warn!(service = %instance.service, id = %instance.id, address = %instance.address, %reason, "dropping a stored registration the current policy refuses");
                refused += 1;
                continue;
            }
            let instance = Instance {
                service: inner.service_name(&instance.service),
                ..instance
            };
            inner.upsert(Arc::new(instance), deadline, Origin::default());
            kept += 1;
        }
        // Newer than the empty initial snapshot, and what the store already
        // holds (nothing to write back); the journal's next line follows
        // every line it already has.
        let version = version.max(1);
        inner.version = version;
        self.version.store(version, Ordering::Release);
        drop(inner);
        if let Ok(mut saved) = self.saved.try_lock() {
            // With journal files to compact, nothing saved yet covers them:
            // the writer saves once the writes pause (or at shutdown).
            *saved = if compact { 0 } else { version };
        }
        if compact {
            self.dirty.notify_one();
        }
        if expired + refused + kept > 0 {
            tracing::info!(kept, expired, refused, "registry store loaded");
        }
    }

    fn policy<'a>(&'a self, config: &'a RegistryConfig) -> Policy<'a> {
        Policy {
            allowed: config.allowed_networks.as_deref(),
            own: &self.own_listeners,
            is_local: &address::is_local_ip,
        }
    }

    /// Register or update `service`/`id` (idempotent): validate, resolve and
    /// check the address, then upsert with a fresh lease.
    pub async fn register(
        &self,
        limits: Limits<'_>,
        service: &str,
        id: &str,
        registration: Registration,
    ) -> Result<Arc<Instance>, RegistryError> {
        check_name(NameKind::Service, service)?;
        check_name(NameKind::Instance, id)?;
        // Resolve before taking the lock: DNS may take a while.
        let resolved = address::resolve(&registration.address).await?;
        let resolved =
            address::classify(resolved, &self.policy(limits.config)).map_err(|reason| {
                RegistryError::Refused {
                    address: Shown::new(&registration.address),
                    ip: address::canonical(resolved.ip()),
                    reason,
                }
            })?;
        let ttl = registration.ttl.unwrap_or(limits.config.default_ttl);
        let (now, wall) = (Instant::now(), SystemTime::now());
        let lease = lease::start(ttl, now, wall);
        let (overrides, service_name) = {
            let inner = self.lock();
            // An operator's PATCH outlives the instance's own re-registrations.
            let overrides = inner.get(service, id).map(|e| e.instance.overrides);
            (overrides.unwrap_or_default(), inner.service_name(service))
        };
        let instance = Arc::new(Instance {
            service: service_name,
            id: Arc::from(id),
            address: Arc::from(registration.address.as_str()),
            resolved,
            weight: registration.weight,
            ttl,
            expires_at: lease.map(|(_, wall)| wall),
            metadata: instance::shared_metadata(registration.metadata),
            overrides,
        });
        let deadline = lease.map(|(at, _)| at);
        let Some(cluster) = &self.cluster else {
            let durable = {
                let mut inner = self.lock();
                inner.admit(limits, service, id)?;
                let change = inner.upsert(Arc::clone(&instance), deadline, Origin::default());
                let durable = self.journal_put(&inner, &instance);
                self.changed(inner, change, deadline, &[]);
                durable
            };
            self.tell_lease(&instance);
            journal_done(durable).await?;
            return Ok(instance);
        };
        self.lock().admit(limits, service, id)?;
        let (revision, etcd_lease) = cluster.put(&instance).await.map_err(unavailable)?;
        let mut inner = self.lock();
        let replaced = inner.get(service, id).map_or(0, |e| e.etcd_lease);
        let origin = Origin {
            revision,
            etcd_lease,
        };
        let change = inner.apply(Arc::clone(&instance), deadline, origin);
        self.changed(inner, change, deadline, &[]);
        self.tell_lease(&instance);
        if replaced != etcd_lease {
            cluster.revoke_later(replaced);
        }
        Ok(instance)
    }

    /// Queue `instance` in the file store's journal as the version the
    /// coming `changed` gives it; called under the writers' lock, so the
    /// journal's lines keep the writes' order.
    fn journal_put(&self, inner: &Inner, instance: &Instance) -> Option<journal::Ack> {
        let journal = self.store.journal()?;
        let line = store::encode_instance(instance);
        Some(journal.append(inner.version + 1, journal::Record::Put(&line)))
    }

    fn journal_delete(&self, inner: &Inner, service: &str, id: &str) -> Option<journal::Ack> {
        let record = journal::Record::Delete { service, id };
        Some(self.store.journal()?.append(inner.version + 1, record))
    }

    /// Tell routing when an instance's lease now ends.
    fn tell_lease(&self, instance: &Instance) {
        if let Some(Hook(hook)) = self.routing.get() {
            hook.lease(&instance.service, &instance.id, instance.expires_at);
        }
    }

    /// Tell routing that instances left.
    fn tell_left(&self, left: &[Key]) {
        if let Some(Hook(hook)) = self.routing.get() {
            for (service, id) in left {
                hook.left(service, id);
            }
        }
    }

    /// Renew a lease with the instance's own ttl. An unknown instance, or one
    /// whose lease has ended (even if the expiry task has not run yet), is
    /// `NotFound`: the client must register again.
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<Arc<Instance>, RegistryError> {
        check_name(NameKind::Service, service)?;
        check_name(NameKind::Instance, id)?;
        let now = Instant::now();
        let found = {
            let inner = self.lock();
            inner
                .get(service, id)
                .map(|e| (Arc::clone(&e.instance), e.lease, e.etcd_lease))
        };
        let Some((old, lease, etcd_lease)) = found else {
            return Err(not_found(service, id));
        };
        if lease.is_some_and(|key| key.deadline() <= now) {
            self.leave(self.lock(), service, id);
            return Err(not_found(service, id));
        }
        let Some((deadline, wall)) = lease::start(old.ttl, now, SystemTime::now()) else {
            return Ok(old);
        };
        let instance = Arc::new(Instance {
            expires_at: Some(wall),
            ..Instance::clone(&old)
        });
        let mut origin = Origin::default();
        if let Some(cluster) = &self.cluster {
            let renewed = cluster.renew(&instance, etcd_lease).await;
            let Some(revision) = renewed.map_err(unavailable)? else {
                self.leave(self.lock(), service, id);
                return Err(not_found(service, id));
            };
            origin = Origin {
                revision,
                etcd_lease,
            };
        }
        let durable = {
            let mut inner = self.lock();
            if inner.get(service, id).is_none() {
                // Deregistered meanwhile: a heartbeat does not bring it back.
                return Err(not_found(service, id));
            }
            let change = inner.apply(Arc::clone(&instance), Some(deadline), origin);
            let durable = self.journal_put(&inner, &instance);
            self.changed(inner, change, Some(deadline), &[]);
            durable
        };
        self.tell_lease(&instance);
        journal_done(durable).await?;
        Ok(instance)
    }

    /// Apply an operator's `PATCH` (weight, drain) to `service`/`id`: stored
    /// with the registration (and so by the file and etcd stores), lease
    /// unchanged. `NotFound` when it is not registered.
    pub async fn patch(
        &self,
        service: &str,
        id: &str,
        patch: Patch,
    ) -> Result<Arc<Instance>, RegistryError> {
        check_name(NameKind::Service, service)?;
        check_name(NameKind::Instance, id)?;
        let current = {
            let inner = self.lock();
            inner
                .get(service, id)
                .map(|e| (Arc::clone(&e.instance), e.lease, e.etcd_lease, e.revision))
        };
        let Some((old, lease, etcd_lease, revision)) = current else {
            return Err(not_found(service, id));
        };
        let instance = Arc::new(Instance {
            overrides: old.overrides.patched(patch),
            ..Instance::clone(&old)
        });
        let mut origin = Origin {
            revision,
            etcd_lease,
        };
        if let Some(cluster) = &self.cluster {
            let written = cluster.update(&instance, etcd_lease).await;
            let Some(revision) = written.map_err(unavailable)? else {
                self.leave(self.lock(), service, id);
                return Err(not_found(service, id));
            };
            origin.revision = revision;
        }
        let durable = {
            let mut inner = self.lock();
            if inner.get(service, id).is_none() {
                // Deregistered meanwhile: a PATCH does not bring it back.
                return Err(not_found(service, id));
            }
            let deadline = lease.map(|key| key.deadline());
            let change = inner.apply(Arc::clone(&instance), deadline, origin);
            let durable = self.journal_put(&inner, &instance);
            self.changed(inner, change, deadline, &[]);
            durable
        };
        journal_done(durable).await?;
        Ok(instance)
    }

    /// Remove `service`/`id` locally (if present) and tell everyone.
    fn leave(&self, mut inner: MutexGuard<'_, Inner>, service: &str, id: &str) {
        if inner.remove(service, id).is_some() {
            let key: Key = (Arc::from(service), Arc::from(id));
            self.changed(inner, Change::Left, None, &[key]);
        }
    }

    /// Remove `service`/`id`; the table drains it if requests are in flight.
    /// Once this returns, no new request is routed to it.
    pub async fn deregister(
        &self,
        service: &str,
        id: &str,
    ) -> Result<Arc<Instance>, RegistryError> {
        check_name(NameKind::Service, service)?;
        check_name(NameKind::Instance, id)?;
        let Some(cluster) = &self.cluster else {
            let (entry, durable) = {
                let mut inner = self.lock();
                let entry = inner
                    .detach(service, id)
                    .ok_or_else(|| not_found(service, id))?;
                let durable = self.journal_delete(&inner, service, id);
                self.changed_left(inner, &entry);
                (entry, durable)
            };
            journal_done(durable).await?;
            return Ok(entry.instance);
        };
        let Some((revision, stored)) = cluster.delete(service, id).await.map_err(unavailable)?
        else {
            self.leave(self.lock(), service, id);
            return Err(not_found(service, id));
        };
        cluster.revoke_later(stored.lease);
        let mut inner = self.lock();
        inner.seen_revision(revision);
        // The watch may have applied the delete already; it is ours all the same.
        match inner.detach(service, id) {
            Some(entry) => {
                self.changed_left(inner, &entry);
                Ok(entry.instance)
            }
            None => Ok(Arc::new(stored.instance)),
        }
    }

    /// Publish the departure of `entry`, already taken out under `inner`.
    fn changed_left(&self, inner: MutexGuard<'_, Inner>, entry: &Entry) {
        let key: Key = (
            Arc::clone(&entry.instance.service),
            Arc::clone(&entry.instance.id),
        );
        self.changed(inner, Change::Left, None, &[key]);
    }

    /// Drop every lease that ended at or before `now`; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        if self.cluster.as_ref().is_some_and(|c| !c.is_up()) {
            // etcd away: heartbeats cannot be taken, so no lease ends here;
            // the node catches up with etcd's own expiries when it is back.
            return 0;
        }
        let mut inner = self.lock();
        let expired = inner.leases.pop_expired(now);
        for (service, id) in &expired {
            if let Some(entry) = inner.detach(service, id) {
                tracing::info!(%service, %id, address = %entry.instance.address, "registration expired");
            }
        }
        let count = expired.len();
        if count > 0 {
            self.changed(inner, Change::Left, None, &expired);
        }
        count
    }

    /// The current snapshot. Lock-free when nothing changed since the last
    /// one; otherwise the first caller rebuilds it (O(n), under the writers'
    /// mutex) and later callers share it.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let current = self.snapshot.load_full();
        if current.version == self.version.load(Ordering::Acquire) {
            return current;
        }
        let inner = self.lock();
        let current = self.snapshot.load_full();
        if current.version == inner.version {
            return current;
        }
        let fresh = Arc::new(inner.snapshot());
        self.snapshot.store(Arc::clone(&fresh));
        fresh
    }

    /// Tell `hook` of departures and lease changes (once set, it stays).
    pub fn set_routing_hook(&self, hook: impl RoutingHook + 'static) {
        if self.routing.set(Hook(Box::new(hook))).is_err() {
            tracing::warn!("registry routing hook already set; ignoring another");
        }
    }

    /// The membership index now.
    pub fn index(&self) -> u64 {
        *self.index.borrow()
    }

    /// A receiver that sees the index advance on every membership change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.index.subscribe()
    }

    /// Publish a change made under `inner`: bump versions, wake the writer,
    /// the expiry task (when a new lease may end first) and watchers, and
    /// tell the publisher — at once when an instance left (no traffic may
    /// go to it), batched by `run_notifier` when one joined or changed.
    fn changed(
        &self,
        mut inner: MutexGuard<'_, Inner>,
        change: Change,
        lease: Option<Instant>,
        left: &[Key],
    ) {
        inner.version += 1;
        self.version.store(inner.version, Ordering::Release);
        if change != Change::Lease {
            // A count of membership changes; in cluster mode it also jumps
            // to etcd's revision, so nodes that saw the same writes agree.
            let revision = u64::try_from(inner.revision).unwrap_or(0);
            inner.index = (inner.index + 1).max(revision);
        }
        let index = inner.index;
        let wake_expiry = lease.is_some_and(|at| inner.armed.is_none_or(|armed| at < armed));
        drop(inner);
        self.dirty.notify_one();
        if wake_expiry {
            self.lease_added.notify_one();
        }
        match change {
            Change::Lease => {}
            Change::Joined => {
                self.index.send_replace(index);
                self.joined.notify_one();
            }
            Change::Left => {
                self.tell_left(left);
                self.index.send_replace(index);
                self.notify_change();
            }
        }
    }

    /// Tell the table's publisher that membership changed.
    fn notify_change(&self) {
        self.membership.send_modify(|n| *n += 1);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation completes before the guard drops; a panic cannot
        // leave a half-made change behind.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn unavailable(e: SharedError) -> RegistryError {
    RegistryError::StoreUnavailable(e.to_string())
}

fn not_found(service: &str, id: &str) -> RegistryError {
    RegistryError::NotFound {
        service: service.to_owned(),
        id: id.to_owned(),
    }
}

/// Wait until a journaled write is durable (no journal: nothing to wait for).
async fn journal_done(durable: Option<journal::Ack>) -> Result<(), RegistryError> {
    let Some(ack) = durable else {
        return Ok(());
    };
    match ack.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RegistryError::StoreUnavailable(format!(
            "the registry file could not be written: {e}"
        ))),
        Err(_) => Err(RegistryError::StoreUnavailable(
            "the registry file's writer has stopped".into(),
        )),
    }
}

#[cfg(test)]
mod tests;
