//! The live backends of every service, from every source, merged by one rule.
//!
//! Each rebuild hands [`Members::merge`] what all sources declare, sorted by
//! (service, source, id); it walks that beside the previous live backends,
//! sorted the same way, in one pass:
//! - same key, same resolved address: keep the backend (its in-flight count,
//!   health, ejection and metric handles), with the new weight and lease end
//!   admin drain applied in place; it takes requests again if a departure
//!   had marked it;
//! - a new key or a new address: a new backend, `Unknown` until its first
//!   check passes when the service has active checks (SPEC §2), else healthy;
//!   a draining backend declared again at its old address comes back instead;
//! - gone: a registered instance is drained while requests are in flight on
//!   it (listed, never picked), forgotten once none are; a configured backend
//!   a reload removed is forgotten at once (see `retire`). Their health-check
//!   series go too, unless another backend reports under the same labels.
//!
//! The key carries the source, so a configured backend and a registered
//! instance whose id looks like that address never collide.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use crate::backend::{Backend, BackendCounters, Health, Source};
use crate::metrics::Metrics;
use crate::source::Declared;

/// Every service's live and draining backends.
#[derive(Debug, Default)]
pub(super) struct Members {
    /// Per service, its backends in the table, sorted by (source, id).
    live: HashMap<Arc<str>, Vec<Arc<Backend>>>,
    /// Left with requests in flight: listed, never picked.
    draining: Vec<Arc<Backend>>,
    /// Left in this rebuild; their metric series go in `finish`.
    gone: Vec<Arc<Backend>>,
    /// Per service, the in-flight counter all its backends share.
    loads: HashMap<Arc<str>, Arc<AtomicU32>>,
    /// The first merge is done: backends created from now on join a running
    /// proxy, and `slow_start` ramps them up.
    seeded: bool,
}

impl Members {
    /// Merge `declared` (sorted by service, source, id) into the live
    /// backends, and end finished drains. `checked(service)`: whether the
    /// service has active health checks.
    pub fn merge(&mut self, declared: &[Declared], checked: &dyn Fn(&str) -> bool) {
        let mut previous = std::mem::take(&mut self.live);
        for group in declared.chunk_by(|a, b| a.service == b.service) {
            let service = &group[0].service;
            let old = previous.remove(service).unwrap_or_default();
            let merged = self.merge_service(group, old, checked(service));
            self.live.insert(Arc::clone(service), merged);
        }
        for backend in previous.into_values().flatten() {
            self.retire(backend);
        }
        self.end_drains();
        let draining: HashSet<&Arc<str>> = self.draining.iter().map(|b| &b.service).collect();
        let live = &self.live;
        self.loads
            .retain(|name, _| live.contains_key(name) || draining.contains(name));
        self.seeded = true;
    }

    /// One service: two lists sorted by (source, id), walked together.
    fn merge_service(
        &mut self,
        declared: &[Declared],
        old: Vec<Arc<Backend>>,
        checked: bool,
    ) -> Vec<Arc<Backend>> {
        let mut merged = Vec::with_capacity(declared.len());
        let mut old = old.into_iter().peekable();
        for d in declared {
            while let Some(passed) = old.next_if(|b| key(b) < d.key()) {
                self.retire(passed);
            }
            let backend = match old.next_if(|b| key(b) == d.key()) {
                Some(kept) if kept.resolved == d.resolved => {
                    kept.set_weight(d.weight);
                    kept.set_admin_drain(d.drain);
                    kept.set_lease_end(d.expires_at);
                    // Declared again after a departure this table had not
                    // yet seen: it takes requests again.
                    kept.set_draining(false);
                    kept
                }
                moved => {
                    if let Some(moved) = moved {
                        self.retire(moved);
                    }
                    let load = Arc::clone(self.loads.entry(Arc::clone(&d.service)).or_default());
                    self.revive(d).unwrap_or_else(|| {
                        let backend = new_backend(d, checked, load);
                        if !self.seeded {
                            backend.skip_ramp();
                        }
                        backend
                    })
                }
            };
            merged.push(backend);
        }
        for passed in old {
            self.retire(passed);
        }
        merged
    }

    /// Drain a registered backend with requests in flight; forget the rest.
    ///
    /// A configured backend a reload removed is not drained: requests that
    /// still hold the previous table may send to it until they are done (a
    /// reload must fail no request, and the address is still a working
    /// backend), and those in flight keep it alive through their guards.
    /// A registered instance that left must get no new request at all.
    fn retire(&mut self, backend: Arc<Backend>) {
        if backend.source == Source::Registry && backend.active_requests() > 0 {
            backend.set_draining(true);
            tracing::info!(service = %backend.service, id = %backend.id, source = backend.source.as_str(), active = backend.active_requests(), "backend left; draining");
            self.draining.push(backend);
        } else {
            self.gone.push(backend);
        }
    }

    /// A draining backend declared again at the same address comes back,
    /// keeping its in-flight count and counters.
    fn revive(&mut self, d: &Declared) -> Option<Arc<Backend>> {
        let at = self.draining.iter().position(|b| {
            b.service == d.service && key(b) == d.key() && b.resolved == d.resolved
        })?;
        let backend = self.draining.swap_remove(at);
        backend.set_draining(false);
        backend.set_weight(d.weight);
        backend.set_admin_drain(d.drain);
        backend.set_lease_end(d.expires_at);
        Some(backend)
    }

    /// Draining backends whose requests have all finished go.
    fn end_drains(&mut self) {
        for backend in std::mem::take(&mut self.draining) {
            if backend.active_requests() == 0 {
                tracing::info!(service = %backend.service, id = %backend.id, "drain finished");
                self.gone.push(backend);
            } else {
                self.draining.push(backend);
            }
        }
    }

    /// The next merge is part of start-up: the backends it creates do not
    /// slow-start (a source attached before the proxy serves).
    pub fn starting_up(&mut self) {
        self.seeded = false;
    }

    /// Every service with live or draining backends.
    pub fn services(&self) -> impl Iterator<Item = &Arc<str>> {
        self.live
            .keys()
            .chain(self.draining.iter().map(|b| &b.service))
    }

    /// `service`'s live then draining backends.
    pub fn backends(&self, service: &str) -> Vec<Arc<Backend>> {
        let live = self.live.get(service).map_or(&[][..], Vec::as_slice);
        let draining = self.draining.iter().filter(|b| &*b.service == service);
        live.iter().chain(draining).cloned().collect()
    }

    /// A live backend by its key.
    pub fn find(&self, service: &str, source: Source, id: &str) -> Option<&Arc<Backend>> {
        let live = self.live.get(service)?;
        let at = live.binary_search_by(|b| key(b).cmp(&(source, id))).ok()?;
        live.get(at)
    }

    /// End a rebuild: drop the metric series of backends that left (their
    /// health-check counters; the rest are read from live backends at
    /// scrape time), unless a backend still listed reports under the same
    /// labels.
    pub fn finish(&mut self, metrics: &Metrics) {
        if self.gone.is_empty() {
            return;
        }
        let in_use: HashSet<(&str, &str)> = self
            .live
            .values()
            .flatten()
            .chain(self.draining.iter())
            .map(|b| (&*b.service, &*b.address))
            .collect();
        for backend in &self.gone {
            if !in_use.contains(&(&*backend.service, &*backend.address)) {
                metrics.forget_backend(&backend.service, &backend.address);
            }
        }
        self.gone.clear();
    }

    /// Whether any backend is draining.
    pub fn is_draining(&self) -> bool {
        !self.draining.is_empty()
    }

    /// Whether a draining backend has finished (time to republish).
    pub fn drains_finished(&self) -> bool {
        self.draining.iter().any(|b| b.active_requests() == 0)
    }

    /// Live and draining backends (tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live.values().map(Vec::len).sum::<usize>() + self.draining.len()
    }
}

/// A backend's merge key within its service.
fn key(backend: &Backend) -> (Source, &str) {
    (backend.source, &backend.id)
}

/// A new backend for `d`. With active checks it starts `Unknown` and takes no
/// traffic until a check passes (SPEC §2).
fn new_backend(d: &Declared, checked: bool, load: Arc<AtomicU32>) -> Arc<Backend> {
    let backend = Backend::new(
        Arc::clone(&d.service),
        Arc::clone(&d.id),
        Arc::clone(&d.address),
        d.resolved,
        d.weight,
        d.source,
        BackendCounters::default(),
    )
    .sharing_service_load(load);
    if checked {
        backend.set_health(Health::Unknown);
    }
    backend.set_lease_end(d.expires_at);
    backend.set_admin_drain(d.drain);
    Arc::new(backend)
}
