//! The registry's background work: ending leases on time, batching join
//! notifications, and persisting snapshots without putting a disk write on
//! any request.
//!
//! Persisting snapshots is coalesced: the writer wakes on a change, saves the
//! latest snapshot, then sleeps [`WRITE_INTERVAL`] (or 10× as long as the
//! save took, if that is longer) before looking again, so saving a large
//! registry never takes more than a tenth of the time. On the file store
//! every write is already durable in the journal before it is answered; the
//! snapshot only compacts the journal, so there the writer first waits for
//! a pause in the writes ([`COMPACT_QUIET`], at most [`COMPACT_DEFER`]): a
//! burst of registrations then pays for its own fsyncs only, not for
//! rewriting the whole registry beside them (issue 13, item 4). A clean
//! shutdown calls [`Registry::flush`].

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Registry, StoreError};

/// During a burst of joins, at most one change callback (a table rebuild)
/// per this interval. Joins still show in the table well within the 1 s the
/// SPEC allows; departures never wait for it.
pub const JOIN_BATCH: Duration = Duration::from_millis(100);
/// At most one store write per this interval.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(100);
/// With a journal, a snapshot waits until no write came for this long...
pub const COMPACT_QUIET: Duration = Duration::from_millis(250);
/// ...or until this long after the change that asked for it.
pub const COMPACT_DEFER: Duration = Duration::from_secs(5);
/// Between writes, wait at least this many times as long as the last took.
const WRITE_PACE: u32 = 10;
/// After a failed write, wait this long before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// An expiry timer that fires this late means the control thread was kept
/// off the CPU (it runs at background priority), and heartbeats may be
/// waiting unread in their sockets.
const STARVED: Duration = Duration::from_millis(250);
/// The most a starved expiry waits before it looks again.
const MAX_GRACE: Duration = Duration::from_secs(5);

impl Registry {
    /// End leases as their deadlines pass; runs until aborted.
    pub async fn run_expiry(self: Arc<Self>) {
        loop {
            let woken = self.lease_added.notified();
            tokio::pin!(woken);
            // Register interest before reading the deadline, so a lease
            // added in between still wakes this loop.
            woken.as_mut().enable();
            self.expire(Instant::now());
            let next = self.arm();
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => self.grace_if_starved(at).await,
                        _ = &mut woken => {}
                    }
                }
                None => woken.await,
            }
        }
    }

    /// When the expiry timer fired late, give the heartbeats that piled up
    /// meanwhile the time to be read before ending leases: a lease must not
    /// end because Switchyard, not the instance, fell behind (Eureka's
    /// self-preservation, for the same reason). While the thread stays
    /// starved, every round is late, and nothing expires.
    async fn grace_if_starved(&self, due: Instant) {
        if let Some(grace) = starvation_grace(due, Instant::now()) {
            tracing::warn!(
                late_ms = grace.as_millis() as u64,
                "lease expiry ran late (the control plane was short of CPU); expiring after a grace period"
            );
            tokio::time::sleep(grace).await;
        }
    }

    /// Tell the publisher about joins: the first at once, then at most once
    /// per `JOIN_BATCH`; runs until aborted.
    pub async fn run_notifier(self: Arc<Self>) {
        loop {
            self.joined.notified().await;
            self.notify_change();
            tokio::time::sleep(JOIN_BATCH).await;
        }
    }

    /// Record (and return) the deadline the expiry task sleeps until.
    fn arm(&self) -> Option<Instant> {
        let mut inner = self.lock();
        inner.armed = inner.leases.next_deadline();
        inner.armed
    }

    /// Save changes as they come, at most one write per `WRITE_INTERVAL`;
    /// runs until aborted.
    pub async fn run_writer(self: Arc<Self>) {
        loop {
            self.dirty.notified().await;
            if self.store.journal().is_some() {
                self.wait_for_a_pause().await;
            }
            let started = Instant::now();
            match self.flush().await {
                Ok(()) => tokio::time::sleep(write_pause(started.elapsed())).await,
                Err(e) => {
                    tracing::error!(error = %e, "registry store write failed; retrying");
                    tokio::time::sleep(RETRY_AFTER).await;
                    self.dirty.notify_one();
                }
            }
        }
    }

    /// Wait until no write came for [`COMPACT_QUIET`], or [`COMPACT_DEFER`]
    /// has passed.
    async fn wait_for_a_pause(&self) {
        let deadline = Instant::now() + COMPACT_DEFER;
        loop {
            let seen = self.version.load(std::sync::atomic::Ordering::Acquire);
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(COMPACT_QUIET.min(deadline - now)).await;
            if self.version.load(std::sync::atomic::Ordering::Acquire) == seen {
                return;
            }
        }
    }

    /// Save the current snapshot if it is newer than the last save. Called
    /// by the writer and once more at shutdown.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let mut saved = Arc::clone(&self.saved).lock_owned().await;
        let snapshot = self.snapshot();
        if snapshot.version == *saved {
            return Ok(());
        }
        let store = Arc::clone(&self.store);
        // Serialising and fsyncing block: keep them off the runtime's
        // workers. The guard travels with the write, so even if this task is
        // aborted mid-save the next save waits for this one to finish.
        tokio::task::spawn_blocking(move || {
            let instances: Vec<_> = snapshot.instances().cloned().collect();
            store.save(&instances, snapshot.version)?;
            *saved = snapshot.version;
            Ok(())
        })
        .await
        .map_err(StoreError::Task)?
    }
}

/// The pause after a save that took `took`.
fn write_pause(took: Duration) -> Duration {
    WRITE_INTERVAL.max(took.saturating_mul(WRITE_PACE))
}

/// How long to wait before expiring leases when a timer due at `due` fired
/// at `now`: nothing when on time, else as long as it was late (bounded).
fn starvation_grace(due: Instant, now: Instant) -> Option<Duration> {
    let late = now.saturating_duration_since(due);
    (late >= STARVED).then(|| late.min(MAX_GRACE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_saves_are_spaced_out() {
        assert_eq!(write_pause(Duration::from_millis(1)), WRITE_INTERVAL);
        assert_eq!(
            write_pause(Duration::from_millis(30)),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn a_late_expiry_waits_as_long_as_it_was_late() {
        let due = Instant::now();
        assert_eq!(starvation_grace(due, due), None);
        assert_eq!(
            starvation_grace(due, due + Duration::from_millis(249)),
            None
        );
        let late = Duration::from_millis(800);
        assert_eq!(starvation_grace(due, due + late), Some(late));
        assert_eq!(
            starvation_grace(due, due + Duration::from_secs(60)),
            Some(MAX_GRACE)
        );
        assert_eq!(starvation_grace(due + late, due), None, "early is on time");
    }
}
