//! Cluster mode: a registry that follows a shared store (etcd:
//! [`super::etcd`]; the seam is [`super::shared::SharedStore`]).
//!
//! At start-up the node lists the prefix and starts from that; then
//! [`Registry::run_follower`] applies the watch's changes as they come. When
//! the watch fails (etcd away, or compacted past it), the node keeps routing
//! with what it has, lists again as soon as etcd answers, and reconciles:
//! what etcd no longer holds leaves (departures made meanwhile), what it
//! holds newer is taken. Every change goes through the same upsert/leave
//! paths as a local write, so routing hears of departures at once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::shared::{Change as StoreChange, Listing, SharedError, SharedStore, Stored};
use super::{lease, Change, Key, Origin, Registry};
use crate::config::RegistryConfig;

/// After a failed list or watch, wait this long before trying again (then
/// doubling, up to `MAX_RETRY`).
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(2);

impl Registry {
    /// A registry on `cluster`, loaded from one listing (waits up to the
    /// store's `dial_timeout`). Returns it and the listing's revision, where
    /// [`Registry::run_follower`] starts.
    pub async fn open_cluster(
        cluster: Arc<dyn SharedStore>,
        config: &RegistryConfig,
        own_listeners: Vec<std::net::SocketAddr>,
    ) -> Result<(Registry, i64), SharedError> {
        // Members may still be starting: keep asking until dial_timeout.
        let deadline = Instant::now() + cluster.dial_timeout();
        let listing = loop {
            match cluster.list().await {
                Ok(listing) => break listing,
                Err(e) if Instant::now() + FIRST_RETRY >= deadline => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "the shared store is not answering yet");
                    tokio::time::sleep(FIRST_RETRY).await;
                }
            }
        };
        let mut registry = Registry::new(
            Arc::new(super::store::MemoryStore::default()),
            own_listeners,
        );
        registry.cluster = Some(cluster);
        let revision = listing.revision;
        let count = listing.instances.len();
        registry.reconcile(listing, config);
        tracing::info!(instances = count, revision, store = %registry.cluster.as_ref().map(|c| c.describe()).unwrap_or_default(), "registry loaded from the shared store");
        Ok((registry, revision))
    }

    /// Whether the store is reachable (always true but in cluster mode).
    pub fn store_up(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.is_up())
    }

    /// Follow etcd's changes from `after` on; runs until aborted.
    pub async fn run_follower(self: Arc<Self>, config: RegistryConfig, mut after: i64) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let mut retry = FIRST_RETRY;
        loop {
            match self.follow(&cluster, &config, after).await {
                Ok(never) => match never {},
                Err(e) => {
                    tracing::warn!(error = %e, store = %cluster.describe(), "watch on the shared store ended; listing again")
                }
            }
            loop {
                tokio::time::sleep(retry).await;
                match cluster.list().await {
                    Ok(listing) => {
                        after = listing.revision;
                        self.reconcile(listing, &config);
                        retry = FIRST_RETRY;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "listing the shared store failed; retrying");
                        retry = (retry * 2).min(MAX_RETRY);
                    }
                }
            }
        }
    }

    /// Watch from `after + 1` and apply every change until the watch fails.
    async fn follow(
        &self,
        cluster: &Arc<dyn SharedStore>,
        config: &RegistryConfig,
        after: i64,
    ) -> Result<std::convert::Infallible, SharedError> {
        let mut stream = cluster.watch(after).await?;
        loop {
            let changes = stream.next().await?;
            self.apply_changes(changes, config);
        }
    }

    /// Apply a batch of watch events.
    fn apply_changes(&self, changes: Vec<StoreChange>, config: &RegistryConfig) {
        for change in changes {
            match change {
                StoreChange::Put(stored) => self.take(stored, config),
                StoreChange::Deleted {
                    service,
                    id,
                    revision,
                } => {
                    let mut inner = self.lock();
                    inner.seen_revision(revision);
                    let older = inner
                        .get(&service, &id)
                        .is_some_and(|e| e.revision < revision);
                    if older {
                        self.leave(inner, &service, &id);
                    }
                }
            }
        }
    }

    /// Take one stored instance (skipped when its lease already ended or
    /// the address policy refuses it).
    fn take(&self, stored: Stored, config: &RegistryConfig) {
        let Stored {
            instance,
            lease: etcd_lease,
            revision,
        } = stored;
        let (service, id) = (Arc::clone(&instance.service), Arc::clone(&instance.id));
        let deadline = match instance.expires_at {
            None => None,
            Some(at) => match lease::remaining(at, SystemTime::now()) {
                Some(left) => Some(Instant::now() + left),
                None => {
                    // Its time is up here; etcd deletes it shortly.
                    let mut inner = self.lock();
                    inner.seen_revision(revision);
                    self.leave(inner, &service, &id);
                    return;
                }
            },
        };
        if let Err(reason) = super::address::classify(instance.resolved, &self.policy(config)) {
            tracing::warn!(%service, %id, address = %instance.address, %reason, "ignoring a registration in etcd that this node's policy refuses");
            return;
        }
        let instance = Arc::new(instance);
        let origin = Origin {
            revision,
            etcd_lease,
        };
        let mut inner = self.lock();
        let change = inner.apply(Arc::clone(&instance), deadline, origin);
        self.changed(inner, change, deadline, &[]);
        self.tell_lease(&instance);
    }

    /// Make the local registry what `listing` says: take every instance in
    /// it, and let go of every instance it lacks that is older than it.
    fn reconcile(&self, listing: Listing, config: &RegistryConfig) {
        let present: std::collections::HashSet<(String, String)> = listing
            .instances
            .iter()
            .map(|s| (s.instance.service.to_string(), s.instance.id.to_string()))
            .collect();
        let revision = listing.revision;
        for stored in listing.instances {
            self.take(stored, config);
        }
        let mut inner = self.lock();
        inner.seen_revision(revision);
        let gone: Vec<Key> = inner
            .services
            .iter()
            .flat_map(|(service, entries)| {
                entries
                    .iter()
                    .filter(|(_, e)| e.revision <= revision)
                    .map(move |(id, _)| (Arc::clone(service), Arc::clone(id)))
            })
            .filter(|(s, i)| !present.contains(&(s.to_string(), i.to_string())))
            .collect();
        for (service, id) in &gone {
            inner.remove(service, id);
        }
        if gone.is_empty() {
            // Still publish the revision for blocking queries.
            drop(inner);
            return;
        }
        self.changed(inner, Change::Left, None, &gone);
    }
}
