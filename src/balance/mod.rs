//! Load-balancing policies: selection only, no I/O and no health logic.
//!
//! A policy is built once per table rebuild over the service's *ready*
//! backends (healthy, not ejected, not draining) and then picks an index into
//! that same slice, skipping the indices a retry has already tried. Adding a
//! policy means a new file implementing [`Pick`] and a new arm in [`Balancer`].

mod least_conn;
mod round_robin;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

pub use least_conn::LeastConn;
pub use round_robin::RoundRobin;

use crate::backend::Backend;
use crate::config::BalancePolicy;

/// The one seam: choose a backend among `ready`, never one listed in `tried`.
pub trait Pick {
    fn pick(&self, ready: &[Arc<Backend>], tried: &[usize]) -> Option<usize>;
}

/// A built policy, dispatched statically.
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(RoundRobin),
    LeastConn(LeastConn),
}

impl Balancer {
    /// Build `policy` for this exact `ready` slice (weights are read now).
    /// `cursor` is the service's position, shared across rebuilds.
    pub fn new(
        policy: BalancePolicy,
        ready: &[Arc<Backend>],
        cursor: Arc<AtomicUsize>,
    ) -> Balancer {
        match policy {
            BalancePolicy::RoundRobin => Balancer::RoundRobin(RoundRobin::new(ready, cursor)),
            BalancePolicy::LeastConn => Balancer::LeastConn(LeastConn::new(cursor)),
        }
    }

    /// The service's position, for the balancer that replaces this one.
    pub fn cursor(&self) -> Arc<AtomicUsize> {
        match self {
            Balancer::RoundRobin(p) => p.cursor(),
            Balancer::LeastConn(p) => p.cursor(),
        }
    }

    pub fn pick(&self, ready: &[Arc<Backend>], tried: &[usize]) -> Option<usize> {
        match self {
            Balancer::RoundRobin(p) => p.pick(ready, tried),
            Balancer::LeastConn(p) => p.pick(ready, tried),
        }
    }
}

/// The first index not yet tried, scanning from `start`; the fallback when a
/// policy's own choice was already tried.
fn first_untried(len: usize, start: usize, tried: &[usize]) -> Option<usize> {
    (0..len)
        .map(|k| (start + k) % len)
        .find(|i| !tried.contains(i))
}
