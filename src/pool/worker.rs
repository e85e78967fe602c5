//! What one worker thread keeps for itself: its idle HTTP/1 connections per
//! backend (last in, first out, so surplus connections age out) and a copy
//! of each backend's HTTP/2 handle. The request path owns one [`Worker`] per
//! thread (a `thread_local!`, so no lock and no channel between a request
//! and its connection); the pool only needs the type.
//!
//! Lookups are keyed by the backend's `Arc` address; the slot holds the
//! endpoint, which holds the backend, so an address cannot be reused while
//! a slot names it. A slot remembers the service settings it was made for
//! (by `Arc`), so a rebuild that changes nothing costs one slow lookup per
//! backend and worker, and one that changes the connection settings gets a
//! new endpoint.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper::client::conn::{http1, http2};

use super::conn::ConnState;
use super::endpoint::{Conn, Endpoint, Lease};
use super::Pools;
use crate::backend::Backend;
use crate::config::ServiceConfig;

/// One worker's connections.
#[derive(Debug)]
pub struct Worker<B> {
    /// The pool's retirement epoch last seen: when it moves, slots of
    /// retired endpoints are dropped.
    epoch: u64,
    slots: HashMap<usize, Slot<B>, BuildHasherDefault<AddressHasher>>,
}

#[derive(Debug)]
struct Slot<B> {
    endpoint: Arc<Endpoint<B>>,
    /// The service settings this slot was checked against (`None`: made
    /// by a release, not checked yet).
    settings: Option<Arc<ServiceConfig>>,
    idle: VecDeque<Idle<B>>,
    h2: Option<http2::SendRequest<B>>,
}

#[derive(Debug)]
struct Idle<B> {
    send: http1::SendRequest<B>,
    state: Arc<ConnState>,
}

/// What a checkout found.
#[derive(Debug)]
pub enum Checkout<B> {
    /// A live connection, reused.
    Ready(Conn<B>),
    /// None idle: dial one with [`Endpoint::connect`].
    Dial(Arc<Endpoint<B>>),
}

impl<B> Default for Worker<B> {
    fn default() -> Worker<B> {
        Worker {
            epoch: 0,
            slots: HashMap::default(),
        }
    }
}

impl<B> Worker<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A connection to `backend` of `service`: the shared HTTP/2 one, or the
    /// most recently idle HTTP/1 one of this worker (unless `reuse_h1` is
    /// false), or word to dial.
    pub fn checkout(
        &mut self,
        pools: &Pools<B>,
        service: &Arc<str>,
        settings: &Arc<ServiceConfig>,
        backend: &Arc<Backend>,
        reuse_h1: bool,
    ) -> Checkout<B> {
        self.forget_retired(pools);
        let slot = self.slot(pools, service, settings, backend);
        let endpoint = &slot.endpoint;
        if endpoint.speaks_h2() {
            if let Some(send) = slot.h2.as_ref().filter(|s| !s.is_closed()) {
                return Checkout::Ready(endpoint.h2_conn(send.clone(), true));
            }
            slot.h2 = endpoint.current_h2();
            return match &slot.h2 {
                Some(send) => Checkout::Ready(endpoint.h2_conn(send.clone(), true)),
                None => Checkout::Dial(Arc::clone(endpoint)),
            };
        }
        while let Some(idle) = slot.idle.pop_back().filter(|_| reuse_h1) {
            if !idle.state.claim() {
                continue; // closed by the reaper or by the backend
            }
            endpoint.idle.fetch_sub(1, Ordering::AcqRel);
            if idle.send.is_closed() {
                continue; // its task has not marked it yet
            }
            let lease = Lease::reused(idle.send, idle.state, Arc::clone(endpoint));
            return Checkout::Ready(Conn::H1(lease));
        }
        Checkout::Dial(Arc::clone(endpoint))
    }

    /// Offer a connection whose response was read to the end back to this
    /// worker's idle list; closed instead when the backend is at its cap of
    /// idle connections or gone.
    pub fn release(&mut self, lease: Lease<B>) {
        let endpoint = &lease.endpoint;
        let cap = endpoint.settings.idle_per_backend();
        if lease.send.is_closed() || endpoint.retired.load(Ordering::Acquire) {
            return;
        }
        if endpoint.idle.fetch_add(1, Ordering::AcqRel) >= cap {
            endpoint.idle.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let key = Arc::as_ptr(&endpoint.backend) as usize;
        // The request's task may have moved to this worker since its
        // checkout: the connection joins this worker's list.
        let slot = self
            .slots
            .entry(key)
            .or_insert_with(|| Slot::new(Arc::clone(endpoint), None));
        if !Arc::ptr_eq(&slot.endpoint, endpoint) {
            // This worker already holds another endpoint for the backend
            // (its settings changed): the older connection goes.
            endpoint.idle.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        // Closed connections sink to the bottom of a LIFO list: drop one per
        // release, so lists never hold more than their share of dead ones.
        if slot.idle.front().is_some_and(|i| i.state.is_closed()) {
            slot.idle.pop_front();
        }
        if !lease.state.set_idle() {
            // Its task saw it close just now.
            endpoint.idle.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        slot.idle.push_back(Idle {
            send: lease.send,
            state: lease.state,
        });
    }

    fn slot(
        &mut self,
        pools: &Pools<B>,
        service: &Arc<str>,
        settings: &Arc<ServiceConfig>,
        backend: &Arc<Backend>,
    ) -> &mut Slot<B> {
        match self.slots.entry(Arc::as_ptr(backend) as usize) {
            Entry::Occupied(o)
                if o.get()
                    .settings
                    .as_ref()
                    .is_some_and(|s| Arc::ptr_eq(s, settings)) =>
            {
                o.into_mut()
            }
            Entry::Occupied(o) => {
                // A rebuild since: the same connection settings (most
                // rebuilds: the slot stays), or a new endpoint.
                let slot = o.into_mut();
                let retired = slot.endpoint.retired.load(Ordering::Acquire);
                if !retired && slot.endpoint.key.matches(service, settings) {
                    slot.settings = Some(Arc::clone(settings));
                    return slot;
                }
                let endpoint = pools.endpoint(service, settings, backend);
                if Arc::ptr_eq(&slot.endpoint, &endpoint) {
                    slot.settings = Some(Arc::clone(settings));
                } else {
                    *slot = Slot::new(endpoint, Some(settings));
                }
                slot
            }
            Entry::Vacant(v) => v.insert(Slot::new(
                pools.endpoint(service, settings, backend),
                Some(settings),
            )),
        }
    }

    /// Drop the slots of endpoints retired since the last look (their idle
    /// connections are closed by the reaper; this frees the handles).
    fn forget_retired(&mut self, pools: &Pools<B>) {
        let epoch = pools.epoch();
        if epoch == self.epoch {
            return;
        }
        self.epoch = epoch;
        self.slots
            .retain(|_, slot| !slot.endpoint.retired.load(Ordering::Acquire));
    }
}

impl<B> Slot<B> {
    fn new(endpoint: Arc<Endpoint<B>>, settings: Option<&Arc<ServiceConfig>>) -> Slot<B> {
        Slot {
            endpoint,
            settings: settings.cloned(),
            idle: VecDeque::new(),
            h2: None,
        }
    }
}

/// Slots are keyed by an `Arc` address: already unique, so hashing is a
/// multiply that spreads the aligned low bits.
#[derive(Debug, Default)]
pub struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(26);
    }
}
