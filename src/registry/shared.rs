//! The seam for stores that several nodes share: [`SharedStore`].
//!
//! The memory and file stores ([`super::store::RegistryStore`]) keep one
//! node's registry; the registry is the source of truth and hands them
//! snapshots. A shared store is the source of truth itself (etcd today; Consul
//! or Kubernetes endpoints would be one more implementation): every write is
//! made in it first and applied locally once it has answered, and each node
//! follows it (a listing at a revision, then a stream of changes after it),
//! see `cluster.rs`. Revisions are the store's own, increasing; leases are
//! the store's handles for an instance's ttl (0 = none).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::instance::Instance;

/// A boxed future of a shared store's answer.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SharedError>> + Send + 'a>>;

/// A store every node of a cluster shares.
pub trait SharedStore: Send + Sync + std::fmt::Debug {
    /// Where it is, for messages ("etcd at 10.0.0.1:2379,10.0.0.2:2379").
    fn describe(&self) -> String;

    /// Whether its last answer (or its change stream) worked.
    fn is_up(&self) -> bool;

    /// How long start-up waits for it, and the bound on each request.
    fn dial_timeout(&self) -> Duration;

    /// Every instance it holds, at one revision.
    fn list(&self) -> StoreFuture<'_, Listing>;

    /// Store `instance`, with a new lease of its ttl (none for a ttl of 0);
    /// returns the revision and the lease.
    fn put<'a>(&'a self, instance: &'a Instance) -> StoreFuture<'a, (i64, i64)>;

    /// Renew `lease` and store `instance` (its new `expires_at`) under it;
    /// `None` when the lease or the instance is gone.
    fn renew<'a>(&'a self, instance: &'a Instance, lease: i64) -> StoreFuture<'a, Option<i64>>;

    /// Store `instance` in place of the one held under `lease` (0: none),
    /// keeping that lease; `None` when the instance or its lease is gone.
    fn update<'a>(&'a self, instance: &'a Instance, lease: i64) -> StoreFuture<'a, Option<i64>>;

    /// Delete an instance: the revision and what it held, or `None`.
    fn delete<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
    ) -> StoreFuture<'a, Option<(i64, Stored)>>;

    /// Let go of a lease nothing uses any more, in the background.
    fn revoke_later(&self, lease: i64);

    /// The changes made after revision `after`.
    fn watch(&self, after: i64) -> StoreFuture<'_, Box<dyn ChangeStream>>;
}

/// A stream of changes from a shared store.
pub trait ChangeStream: Send {
    /// The next batch (waits for it; an error ends the stream: list again).
    fn next(&mut self) -> StoreFuture<'_, Vec<Change>>;
}

/// An instance as a shared store holds it.
#[derive(Debug)]
pub struct Stored {
    pub instance: Instance,
    /// Its lease; 0 = none.
    pub lease: i64,
    /// The revision that last wrote it.
    pub revision: i64,
}

/// Everything the store holds, at one revision.
#[derive(Debug)]
pub struct Listing {
    pub revision: i64,
    pub instances: Vec<Stored>,
}

/// One change seen on a change stream.
#[derive(Debug)]
pub enum Change {
    Put(Stored),
    Deleted {
        service: String,
        id: String,
        revision: i64,
    },
}

/// Why a shared store's request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SharedError {
    /// It cannot be reached, or did not answer in time (writes get 503).
    #[error("{0}")]
    Unavailable(String),
    /// The change stream ended (compaction, a broken connection): list again.
    #[error("{0}")]
    StreamEnded(String),
}
