//! Lease bookkeeping: which registered instances expire next.
//!
//! Two clocks on purpose. The wall clock (`SystemTime`) is what a lease *is*:
//! the API shows it and the file store persists it, so a restart keeps each
//! lease's remaining time. The monotonic clock (`tokio::time::Instant`) is
//! what the expiry task sleeps on, immune to clock steps and controllable with
//! `tokio::time::pause` in tests. [`Leases`] indexes deadlines so the next
//! expiry is found in O(log n); it is pure, with no timers of its own.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Where one lease sits in the index; needed to renew or drop it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LeaseKey {
    deadline: Instant,
    /// Breaks ties between leases with the same deadline.
    seq: u64,
}

impl LeaseKey {
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// Deadlines in order, each with its owner.
#[derive(Debug)]
pub struct Leases<K> {
    by_deadline: BTreeMap<LeaseKey, K>,
    next_seq: u64,
}

impl<K> Default for Leases<K> {
    fn default() -> Self {
        Leases {
            by_deadline: BTreeMap::new(),
            next_seq: 0,
        }
    }
}

impl<K> Leases<K> {
    pub fn insert(&mut self, deadline: Instant, owner: K) -> LeaseKey {
        let key = LeaseKey {
            deadline,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        self.by_deadline.insert(key, owner);
        key
    }

    pub fn remove(&mut self, key: LeaseKey) -> Option<K> {
        self.by_deadline.remove(&key)
    }

    /// The earliest deadline, if any lease is running.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.keys().next().map(LeaseKey::deadline)
    }

    /// Remove and return every lease whose deadline is at or before `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Vec<K> {
        let mut expired = Vec::new();
        while let Some(entry) = self.by_deadline.first_entry() {
            if entry.key().deadline > now {
                break;
            }
            expired.push(entry.remove());
        }
        expired
    }

    pub fn len(&self) -> usize {
        self.by_deadline.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_deadline.is_empty()
    }
}

/// A lease of `ttl` starting now, on both clocks; `None` when `ttl` is zero
/// (no expiry).
pub fn start(ttl: Duration, now: Instant, wall: SystemTime) -> Option<(Instant, SystemTime)> {
    if ttl.is_zero() {
        return None;
    }
    Some((now + ttl, wall + ttl))
}

/// What is left of a lease that ends at `expires_at` (wall clock); `None`
/// when it has already ended. Used when loading persisted leases.
pub fn remaining(expires_at: SystemTime, wall_now: SystemTime) -> Option<Duration> {
    expires_at
        .duration_since(wall_now)
        .ok()
        .filter(|left| !left.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expired_leases_pop_in_deadline_order() {
        let t0 = Instant::now();
        let mut leases = Leases::default();
        let b = leases.insert(t0 + Duration::from_secs(2), "b");
        leases.insert(t0 + Duration::from_secs(1), "a");
        leases.insert(t0 + Duration::from_secs(3), "c");
        assert_eq!(leases.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert!(leases.pop_expired(t0).is_empty());

        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(leases.pop_expired(Instant::now()), vec!["a", "b"]);
        assert_eq!(leases.remove(b), None, "already popped");
        assert_eq!(leases.len(), 1);
        assert_eq!(leases.next_deadline(), Some(t0 + Duration::from_secs(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn renewing_moves_the_deadline() {
        let t0 = Instant::now();
        let mut leases = Leases::default();
        let key = leases.insert(t0 + Duration::from_secs(1), "a");
        tokio::time::advance(Duration::from_millis(900)).await;
        // A heartbeat: drop the old deadline, insert a new one.
        assert_eq!(leases.remove(key), Some("a"));
        let renewed = leases.insert(Instant::now() + Duration::from_secs(1), "a");
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(leases.pop_expired(Instant::now()).is_empty(), "renewed");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(leases.pop_expired(Instant::now()), vec!["a"]);
        assert_eq!(renewed.deadline(), t0 + Duration::from_millis(1900));
        assert!(leases.is_empty());
    }

    #[test]
    fn equal_deadlines_do_not_collide() {
        let t = Instant::now();
        let mut leases = Leases::default();
        leases.insert(t, 1);
        leases.insert(t, 2);
        assert_eq!(leases.pop_expired(t), vec![1, 2]);
    }

    #[test]
    fn zero_ttl_means_no_lease() {
        let now = Instant::now();
        let wall = SystemTime::now();
        assert_eq!(start(Duration::ZERO, now, wall), None);
        let (deadline, expires) = start(Duration::from_secs(30), now, wall).expect("lease");
        assert_eq!(deadline - now, Duration::from_secs(30));
        assert_eq!(
            expires.duration_since(wall).ok(),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn remaining_time_survives_a_restart() {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let ends = wall + Duration::from_secs(20);
        assert_eq!(remaining(ends, wall), Some(Duration::from_secs(20)));
        assert_eq!(remaining(ends, ends), None);
        assert_eq!(remaining(wall, ends), None);
    }
}
