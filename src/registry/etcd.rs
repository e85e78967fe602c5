//! The etcd store: cluster mode's shared registry (`store = "etcd://..."`).
//!
//! Every node keeps the registry it serves from in memory, as with the other
//! stores; etcd is the source of truth that all of them follow. A write is
//! made in etcd first and applied locally only once etcd has committed it
//! (so a 200/204 is durable on a quorum); every node, the writer included,
//! then sees it again on its watch and ignores what it already has (each
//! local entry remembers the etcd revision it came from).
//!
//! # Key layout
//!
//! One key per instance, `<prefix>/instances/<service>/<id>`, holding the
//! instance as JSON (the file store's entry format: address, resolved
//! address, weight, ttl, expires_at, metadata). An instance with a ttl is
//! attached to an etcd lease of its own, granted with that ttl: when the lease
//! ends, etcd deletes the key and every node drops the instance. A heartbeat
//! renews the lease (one keep-alive) and rewrites the value with the new
//! `expires_at` under the same lease, so that every node knows when the lease
//! ends and can stop routing to it at that moment, not when etcd gets round to
//! deleting it.
//!
//! # Following
//!
//! A node lists the prefix once (one range read at revision R), then watches
//! it from R + 1: no gap, no duplicate. When the watch is cancelled (etcd
//! compacted past it) or the connection fails, the node lists again and
//! reconciles (instances deleted meanwhile go), then watches from the new
//! revision. While etcd cannot be reached, the node keeps what it has.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};

use super::instance::Instance;
use super::shared::{Change, ChangeStream, Listing, SharedError, SharedStore, StoreFuture, Stored};
use super::store::{decode_instance, encode_instance};
use crate::config::EtcdConfig;

/// Why an etcd request failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd at {endpoints} did not answer within {}", humantime::format_duration(*timeout))]
    Timeout {
        endpoints: String,
        timeout: Duration,
    },
    #[error("etcd at {endpoints}: {}", innermost(source))]
    Client {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    /// The watch was cancelled (compaction): list again.
    #[error("the etcd watch was cancelled: {0}")]
    WatchCancelled(String),
}

impl From<EtcdError> for SharedError {
    fn from(e: EtcdError) -> SharedError {
        match e {
            EtcdError::WatchCancelled(_) => SharedError::StreamEnded(e.to_string()),
            EtcdError::Timeout { .. } | EtcdError::Client { .. } => {
                SharedError::Unavailable(e.to_string())
            }
        }
    }
}

/// A connection to the etcd cluster and this registry's prefix in it.
pub struct EtcdStore {
    client: Client,
    config: EtcdConfig,
    /// What the store and its watch streams share.
    shared: Arc<Shared>,
}

/// The key layout and the reachability flag, shared with watch streams.
#[derive(Debug)]
struct Shared {
    /// `<prefix>/instances/`.
    instances_prefix: String,
    endpoints: String,
    /// Whether the last request to etcd (or the watch) worked.
    up: AtomicBool,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.config.endpoints)
            .field("prefix", &self.config.prefix)
            .finish()
    }
}

impl EtcdStore {
    /// Connect and check that etcd answers, within `dial_timeout`.
    pub async fn connect(config: &EtcdConfig) -> Result<EtcdStore, EtcdError> {
        let timeout = config.dial_timeout;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(10), timeout);
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            options = options.with_user(user.clone(), password.clone());
        }
        let scheme = match &config.tls {
            Some(tls) => {
                let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
                if let Some((cert, key)) = &tls.identity {
                    t = t.identity(Identity::from_pem(cert, key));
                }
                options = options.with_tls(t);
                "https"
            }
            None => "http",
        };
        let endpoints: Vec<String> = config
            .endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let store_endpoints = config.endpoint_list();
        let client = bounded(
            timeout,
            &store_endpoints,
            Client::connect(endpoints, Some(options)),
        )
        .await?;
        let store = EtcdStore {
            client,
            shared: Arc::new(Shared {
                instances_prefix: format!("{}/instances/", config.prefix),
                endpoints: store_endpoints,
                up: AtomicBool::new(false),
            }),
            config: config.clone(),
        };
        Ok(store)
    }

    pub fn endpoints(&self) -> String {
        self.config.endpoint_list()
    }

    fn seen<T>(&self, result: Result<T, EtcdError>) -> Result<T, EtcdError> {
        self.shared.seen(result)
    }

    fn key(&self, service: &str, id: &str) -> String {
        format!("{}{service}/{id}", self.shared.instances_prefix)
    }

    fn decode(&self, key: &[u8], value: &[u8], lease: i64, revision: i64) -> Option<Stored> {
        self.shared.decode(key, value, lease, revision)
    }

    /// Run one request, bounded by `dial_timeout`.
    ///
    /// A request that did not reach etcd (a member refused the connection:
    /// the client's balancer still sends some requests to a member that is
    /// down) is sent again, up to twice per endpoint, all within the same
    /// bound. Every request here may be repeated: puts write the same value,
    /// the heartbeat's write is guarded by its lease, and a delete that
    /// never arrived deleted nothing.
    async fn call<T, F>(&self, f: impl Fn(Client) -> F) -> Result<T, EtcdError>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let attempts = 2 * self.config.endpoints.len() + 1;
        let endpoints = self.endpoints();
        let tries = async {
            let mut last = None;
            for _ in 0..attempts {
                match f(self.client.clone()).await {
                    Err(e) if never_arrived(&e) => last = Some(e),
                    done => return done,
                }
            }
            Err(last.unwrap_or(etcd_client::Error::InvalidArgs("no endpoint".into())))
        };
        let result = bounded(self.config.dial_timeout, &endpoints, tries).await;
        self.seen(result)
    }

    /// Every instance under the prefix, at one revision.
    pub async fn list(&self) -> Result<Listing, EtcdError> {
        let prefix = self.shared.instances_prefix.clone();
        let resp = self
            .call(|mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let instances = resp
            .kvs()
            .iter()
            .filter_map(|kv| self.decode(kv.key(), kv.value(), kv.lease(), kv.mod_revision()))
            .collect();
        Ok(Listing {
            revision,
            instances,
        })
    }

    /// Store `instance` (with a new lease of its ttl, unless the ttl is 0);
    /// returns the revision and the lease.
    pub async fn put(&self, instance: &Instance) -> Result<(i64, i64), EtcdError> {
        let lease = match ttl_seconds(instance.ttl) {
            0 => 0,
            ttl => self
                .call(|mut c| async move { c.lease_grant(ttl, None).await })
                .await?
                .id(),
        };
        let key = self.key(&instance.service, &instance.id);
        let value = encode_instance(instance);
        let options = (lease != 0).then(|| PutOptions::new().with_lease(lease));
        let resp = self
            .call(|mut c| {
                let (key, value, options) = (key.clone(), value.clone(), options.clone());
                async move { c.put(key, value, options).await }
            })
            .await?;
        Ok((resp.header().map_or(0, |h| h.revision()), lease))
    }

    /// Renew `lease` and store `instance` (its new `expires_at`) under it, if
    /// the key still holds that lease. `None`: the lease or the key is gone.
    pub async fn renew(&self, instance: &Instance, lease: i64) -> Result<Option<i64>, EtcdError> {
        let alive = self
            .call(|mut c| async move {
                match c.lease_keep_alive(lease).await {
                    Ok((keeper, mut stream)) => {
                        // End the stream cleanly (our side closed, the answer
                        // read to its end) rather than drop it mid-stream: h2
                        // closes a connection after 1,024 locally reset streams,
                        // which ~14,000 heartbeats reached (bench/cluster.sh).
                        drop(keeper);
                        while stream.message().await?.is_some() {}
                        Ok(true)
                    }
                    Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await?;
        if !alive {
            return Ok(None);
        }
        let key = self.key(&instance.service, &instance.id);
        let value = encode_instance(instance);
        let txn = Txn::new()
            .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let resp = self
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok(resp.succeeded().then_some(revision))
    }

    /// Store `instance` under its present `lease` (0: none), if the key is
    /// still there with that lease: an admin `PATCH`, which must neither
    /// renew nor bring back a registration. `None`: it is gone.
    pub async fn update(&self, instance: &Instance, lease: i64) -> Result<Option<i64>, EtcdError> {
        let key = self.key(&instance.service, &instance.id);
        let value = encode_instance(instance);
        let (when, options) = if lease == 0 {
            (Compare::version(key.clone(), CompareOp::Greater, 0), None)
        } else {
            (
                Compare::lease(key.clone(), CompareOp::Equal, lease),
                Some(PutOptions::new().with_lease(lease)),
            )
        };
        let txn = Txn::new()
            .when([when])
            .and_then([TxnOp::put(key, value, options)]);
        let resp = self
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok(resp.succeeded().then_some(revision))
    }

    /// Delete an instance; the revision of the delete and what was stored,
    /// or `None` when etcd did not have it.
    pub async fn delete(
        &self,
        service: &str,
        id: &str,
    ) -> Result<Option<(i64, Stored)>, EtcdError> {
        let key = self.key(service, id);
        let options = Some(DeleteOptions::new().with_prev_key());
        let resp = self
            .call(|mut c| {
                let (key, options) = (key.clone(), options.clone());
                async move { c.delete(key, options).await }
            })
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let previous = resp
            .prev_kvs()
            .iter()
            .find_map(|kv| self.decode(kv.key(), kv.value(), kv.lease(), kv.mod_revision()));
        Ok(previous.map(|stored| (revision, stored)))
    }

    /// Revoke a lease nothing uses any more, in the background (its keys
    /// already moved or went; an error only leaves it to run out).
    pub fn revoke_later(&self, lease: i64) {
        if lease == 0 {
            return;
        }
        let mut client = self.client.clone();
        let timeout = self.config.dial_timeout;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, client.lease_revoke(lease)).await;
        });
    }

    /// Watch the prefix from `revision` on.
    pub async fn watch(&self, revision: i64) -> Result<EtcdChanges, EtcdError> {
        let prefix = self.shared.instances_prefix.clone();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision);
        let stream = self
            .call(|mut c| {
                let (prefix, options) = (prefix.clone(), options.clone());
                async move { c.watch(prefix, Some(options)).await }
            })
            .await?;
        Ok(EtcdChanges {
            stream,
            shared: Arc::clone(&self.shared),
        })
    }
}

// === impl Shared ===

impl Shared {
    /// Record how the last request went (and log when that changes).
    fn seen<T>(&self, result: Result<T, EtcdError>) -> Result<T, EtcdError> {
        let ok = !matches!(
            result,
            Err(EtcdError::Timeout { .. } | EtcdError::Client { .. })
        );
        if self.up.swap(ok, Ordering::Relaxed) != ok {
            match ok {
                true => tracing::info!(endpoints = %self.endpoints, "etcd reachable"),
                false => {
                    tracing::warn!(endpoints = %self.endpoints, "etcd unreachable; routing on with the registry last seen, writes refused")
                }
            }
        }
        result
    }

    /// `(service, id)` of a key under the prefix.
    fn split_key<'k>(&self, key: &'k [u8]) -> Option<(&'k str, &'k str)> {
        let key = std::str::from_utf8(key).ok()?;
        key.strip_prefix(&self.instances_prefix)?.split_once('/')
    }

    /// An instance from its key and value; a value that does not parse (or
    /// does not match its key) is logged and skipped, never fatal: another
    /// program may write under the prefix.
    fn decode(&self, key: &[u8], value: &[u8], lease: i64, revision: i64) -> Option<Stored> {
        let (service, id) = self.split_key(key)?;
        match decode_instance(value) {
            Ok(instance) if *instance.service == *service && *instance.id == *id => Some(Stored {
                instance,
                lease,
                revision,
            }),
            Ok(_) => {
                tracing::warn!(%service, %id, "etcd value names another instance than its key; ignored");
                None
            }
            Err(problem) => {
                tracing::warn!(%service, %id, %problem, "etcd value is not a valid instance; ignored");
                None
            }
        }
    }
}

/// A watch on the prefix.
pub struct EtcdChanges {
    stream: WatchStream,
    shared: Arc<Shared>,
}

impl EtcdChanges {
    /// The next batch of changes (waits for them: no bound).
    async fn next_batch(&mut self) -> Result<Vec<Change>, EtcdError> {
        let shared = &self.shared;
        let message = self
            .stream
            .message()
            .await
            .map_err(|source| EtcdError::Client {
                endpoints: shared.endpoints.clone(),
                source,
            });
        let Some(resp) = shared.seen(message)? else {
            return Err(EtcdError::WatchCancelled("the watch stream ended".into()));
        };
        if resp.canceled() {
            let why = match resp.compact_revision() {
                0 => resp.cancel_reason().to_owned(),
                rev => format!("compacted at revision {rev}"),
            };
            return Err(EtcdError::WatchCancelled(why));
        }
        Ok(resp
            .events()
            .iter()
            .filter_map(|event| {
                let kv = event.kv()?;
                match event.event_type() {
                    EventType::Put => shared
                        .decode(kv.key(), kv.value(), kv.lease(), kv.mod_revision())
                        .map(Change::Put),
                    EventType::Delete => {
                        let (service, id) = shared.split_key(kv.key())?;
                        Some(Change::Deleted {
                            service: service.to_owned(),
                            id: id.to_owned(),
                            revision: kv.mod_revision(),
                        })
                    }
                }
            })
            .collect())
    }
}

impl ChangeStream for EtcdChanges {
    fn next(&mut self) -> StoreFuture<'_, Vec<Change>> {
        Box::pin(async move { Ok(self.next_batch().await?) })
    }
}

// === impl SharedStore ===

impl SharedStore for EtcdStore {
    fn describe(&self) -> String {
        format!("etcd at {}", self.endpoints())
    }

    fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }

    fn dial_timeout(&self) -> Duration {
        self.config.dial_timeout
    }

    fn list(&self) -> StoreFuture<'_, Listing> {
        Box::pin(async move { Ok(EtcdStore::list(self).await?) })
    }

    fn put<'a>(&'a self, instance: &'a Instance) -> StoreFuture<'a, (i64, i64)> {
        Box::pin(async move { Ok(EtcdStore::put(self, instance).await?) })
    }

    fn renew<'a>(&'a self, instance: &'a Instance, lease: i64) -> StoreFuture<'a, Option<i64>> {
        Box::pin(async move { Ok(EtcdStore::renew(self, instance, lease).await?) })
    }

    fn update<'a>(&'a self, instance: &'a Instance, lease: i64) -> StoreFuture<'a, Option<i64>> {
        Box::pin(async move { Ok(EtcdStore::update(self, instance, lease).await?) })
    }

    fn delete<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
    ) -> StoreFuture<'a, Option<(i64, Stored)>> {
        Box::pin(async move { Ok(EtcdStore::delete(self, service, id).await?) })
    }

    fn revoke_later(&self, lease: i64) {
        EtcdStore::revoke_later(self, lease);
    }

    fn watch(&self, after: i64) -> StoreFuture<'_, Box<dyn ChangeStream>> {
        Box::pin(async move {
            let changes = EtcdStore::watch(self, after + 1).await?;
            Ok(Box::new(changes) as Box<dyn ChangeStream>)
        })
    }
}

/// The innermost cause of an error, which says what went wrong in a few
/// words ("Connection refused (os error 111)") where the outer layers of a
/// gRPC error repeat one another.
fn innermost(e: &etcd_client::Error) -> String {
    let mut cause: &dyn std::error::Error = match e {
        // The status's own text repeats its whole cause chain.
        etcd_client::Error::GRpcStatus(status) => match std::error::Error::source(status) {
            Some(source) => source,
            None => return status.message().to_owned(),
        },
        other => other,
    };
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Whether a request failed before etcd saw it: the connection to the member
/// the balancer chose was refused or could not be made (gRPC UNAVAILABLE with
/// a transport cause), so sending it again is safe.
fn never_arrived(e: &etcd_client::Error) -> bool {
    const UNAVAILABLE: i32 = 14;
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            i32::from(status.code()) == UNAVAILABLE && std::error::Error::source(status).is_some()
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// `f`, or a timeout error after `timeout`.
async fn bounded<T>(
    timeout: Duration,
    endpoints: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(EtcdError::Client {
            endpoints: endpoints.to_owned(),
            source,
        }),
        Err(_) => Err(EtcdError::Timeout {
            endpoints: endpoints.to_owned(),
            timeout,
        }),
    }
}

/// A ttl as whole etcd lease seconds, rounded up (0 = no lease).
fn ttl_seconds(ttl: Duration) -> i64 {
    if ttl.is_zero() {
        return 0;
    }
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_lease_seconds() {
        assert_eq!(ttl_seconds(Duration::ZERO), 0);
        assert_eq!(ttl_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_seconds(Duration::from_secs(30)), 30);
    }
}
