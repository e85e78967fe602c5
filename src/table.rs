//! The published backend table and its single writer.
//!
//! [`Table`] is an immutable snapshot — routes, services, each service's ready
//! backends and balancer — behind an `ArcSwap`: the request path does one
//! lock-free `load_full` and never waits. [`Publisher`] is the only writer. It
//! keeps the sources of truth (the config today; the registry and health
//! checkers feed it too) and the long-lived pieces that must survive a rebuild
//! (backends with their live state, retry budgets, metric handles), rebuilds
//! a whole table when a source changes, and swaps it in.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};

use crate::backend::{Backend, Health};
use crate::balance::sticky::StickyIndex;
use crate::balance::{Balancer, Build};
use crate::budget::RetryBudget;
use crate::config::{BalancePolicy, Config, ServiceConfig};
use crate::metrics::{Metrics, ServiceMetrics};
use crate::routing::{RouteSpec, RouteTable};
use crate::source::{merge_sorted, BackendSource, StaticSource};

mod members;
mod overrides;
mod registered;

/// One immutable snapshot of everything the request path reads.
#[derive(Debug, Default)]
pub struct Table {
    /// Shared with the next table when only readiness changed.
    pub routes: Arc<RouteTable>,
    /// Indexed by `Route::service`.
    pub services: Vec<Arc<Service>>,
    by_name: Arc<HashMap<Arc<str>, usize>>,
}

impl Table {
    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.by_name.get(name).map(|&i| &self.services[i])
    }

    /// Every backend of every service (admin listing, metrics scrape).
    pub fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.services.iter().flat_map(|s| s.backends.iter())
    }
}

/// A service as the request path sees it.
#[derive(Debug)]
pub struct Service {
    pub name: Arc<str>,
    pub policy: BalancePolicy,
    /// All known backends, ready or not (for listings).
    pub backends: Vec<Arc<Backend>>,
    /// The ones the balancer may pick; the balancer indexes this slice.
    pub ready: Vec<Arc<Backend>>,
    pub balancer: Balancer,
    /// `[services.NAME.sticky]`: cookie tokens of the ready backends.
    pub sticky: Option<StickyIndex>,
    /// The balancer's position, shared by every table that holds this service.
    pub cursor: Arc<AtomicUsize>,
    pub settings: Arc<ServiceConfig>,
    pub metrics: Arc<ServiceMetrics>,
    /// Shared by every table that holds this service, so reloads keep it.
    pub budget: Arc<RetryBudget>,
}

/// Shared handle to the current table.
pub type SharedTable = Arc<ArcSwap<Table>>;

/// While a replaced table is still held by a request, the sweeper looks
/// again this often.
const RETIRED_RECHECK: Duration = Duration::from_millis(250);

/// How long a nudge waits for more changes before rebuilding: a burst of
/// registrations or health flips becomes one rebuild, not one per change.
const COALESCE: Duration = Duration::from_millis(20);

/// The single writer of the table.
#[derive(Debug)]
pub struct Publisher {
    table: SharedTable,
    state: Mutex<State>,
    /// Set by `nudge`; drained by `run_coalescer`.
    dirty: Notify,
    /// What the nudges since the last rebuild asked for.
    pending: Mutex<Pending>,
    /// Replaced tables that requests may still hold (see `publish`).
    retired: Mutex<Vec<Arc<Table>>>,
    /// Counts full rebuilds (membership or settings changed, not just
    /// readiness): the health supervisor waits on it instead of polling.
    generation: watch::Sender<u64>,
    /// Wakes the sweeper: a backend was ejected, or a table was retired.
    sweep: Notify,
    /// Wakes the drain sweeper: a registered backend started draining.
    drain_started: Notify,
}

/// All the request path may ask of the publisher: refresh one service's
/// ready list (passive health ejected a backend). A narrow handle, so the
/// request path cannot rebuild or reconfigure the table.
#[derive(Debug, Clone)]
pub struct ReadinessNudge(Arc<Publisher>);

impl ReadinessNudge {
    pub fn service(&self, name: &Arc<str>) {
        self.0.nudge_service(name);
    }
}

/// Work the coalescer owes: a full rebuild, or fresh ready lists for some services.
#[derive(Debug, Default)]
struct Pending {
    full: bool,
    services: HashSet<Arc<str>>,
}

impl Service {
    /// The same service with its ready list and balancer recomputed from the
    /// backends' live state (health, ejection, draining).
    fn with_fresh_ready(&self) -> Service {
        let ready = ready_backends(&self.backends, self.settings.panic_threshold);
        Service {
            name: Arc::clone(&self.name),
            policy: self.policy,
            backends: self.backends.clone(),
            balancer: balancer(&ready, &self.settings, &self.cursor),
            sticky: sticky_index(&ready, &self.settings),
            cursor: Arc::clone(&self.cursor),
            ready,
            settings: Arc::clone(&self.settings),
            metrics: Arc::clone(&self.metrics),
            budget: Arc::clone(&self.budget),
        }
    }
}

/// What survives rebuilds. Behind a mutex taken only by writers (config
/// reloads, registry and health updates), never by the request path.
#[derive(Debug)]
struct State {
    config: Arc<Config>,
    metrics: Metrics,
    /// The sources besides the config (the registry), merged into every rebuild.
    sources: Vec<Arc<dyn BackendSource>>,
    /// Every service's backends from every source, with their live state.
    members: members::Members,
    service_metrics: HashMap<Arc<str>, Arc<ServiceMetrics>>,
    budgets: HashMap<Arc<str>, Arc<RetryBudget>>,
    /// Balancer cursors, so a rebuild does not restart round robin at the
    /// first backend (which, with frequent rebuilds, would favour it).
    cursors: HashMap<Arc<str>, Arc<AtomicUsize>>,
    /// Runtime overrides (`PATCH`) of configured backends.
    overrides: overrides::ConfiguredOverrides,
}

impl Publisher {
    /// Build the first table from `config` and publish it.
    pub fn new(config: Arc<Config>, metrics: Metrics) -> Publisher {
        let mut state = State {
            config,
            metrics,
            sources: Vec::new(),
            members: members::Members::default(),
            service_metrics: HashMap::new(),
            budgets: HashMap::new(),
            cursors: HashMap::new(),
            overrides: HashMap::new(),
        };
        let table = Arc::new(ArcSwap::from_pointee(state.rebuild()));
        Publisher {
            table,
            state: Mutex::new(state),
            dirty: Notify::new(),
            pending: Mutex::new(Pending::default()),
            retired: Mutex::new(Vec::new()),
            generation: watch::Sender::new(0),
            sweep: Notify::new(),
            drain_started: Notify::new(),
        }
    }

    /// A receiver that sees every full rebuild (a new generation): new,
    /// removed or re-set backends. Readiness-only refreshes do not count.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The handle the request path holds.
    pub fn readiness_nudge(self: &Arc<Self>) -> ReadinessNudge {
        ReadinessNudge(Arc::clone(self))
    }

    /// Ask for a full rebuild soon (registry changes). Cheap and
    /// non-blocking; bursts are coalesced by [`Publisher::run_coalescer`].
    pub fn nudge(&self) {
        self.lock_pending().full = true;
        self.dirty.notify_one();
    }

    /// Only the readiness of `service`'s backends changed (a health flip, an
    /// ejection or its end): the coalescer refreshes that one service, in
    /// O(its backends), and shares everything else with the current table.
    pub fn nudge_service(&self, service: &Arc<str>) {
        self.lock_pending().services.insert(Arc::clone(service));
        self.dirty.notify_one();
        // Perhaps an ejection: the sweeper learns when it ends.
        self.sweep.notify_one();
    }

    /// The task that turns nudges into rebuilds, at most one per `COALESCE`.
    pub async fn run_coalescer(self: Arc<Self>) {
        loop {
            self.dirty.notified().await;
            tokio::time::sleep(COALESCE).await;
            let pending = std::mem::take(&mut *self.lock_pending());
            if pending.full {
                self.republish();
            } else if !pending.services.is_empty() {
                self.refresh_ready(&pending.services);
            }
        }
    }

    /// Swap in a table whose listed services have fresh ready lists.
    fn refresh_ready(&self, names: &HashSet<Arc<str>>) {
        let _writer = self.lock();
        let old = self.table.load_full();
        let mut services = old.services.clone();
        for name in names {
            if let Some(&i) = old.by_name.get(name) {
                services[i] = Arc::new(old.services[i].with_fresh_ready());
            }
        }
        self.publish(Table {
            routes: Arc::clone(&old.routes),
            services,
            by_name: Arc::clone(&old.by_name),
        });
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn table(&self) -> &SharedTable {
        &self.table
    }

    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.lock().config)
    }

    /// Swap in a new config: rebuild and publish at once.
    pub fn apply_config(&self, config: Arc<Config>) {
        let mut state = self.lock();
        state.config = config;
        self.publish_rebuilt(&mut state);
    }

    /// Bring back backends when their ejection time is up, and free replaced
    /// tables once requests have let go of them; sleeps until one of those
    /// is due (woken by ejections and publications), so an idle proxy does
    /// no work here. Runs until aborted.
    pub async fn run_sweeper(self: Arc<Self>) {
        loop {
            let woken = self.sweep.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            self.release_retired();
            let next_end = self.end_ejections();
            let retired = !self
                .retired
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty();
            // A retired table is let go of by its last request, which says
            // nothing: look again shortly while one is held.
            let wait = match (next_end, retired) {
                (Some(end), true) => Some(end.min(RETIRED_RECHECK)),
                (Some(end), false) => Some(end),
                (None, true) => Some(RETIRED_RECHECK),
                (None, false) => None,
            };
            match wait {
                Some(wait) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = &mut woken => {}
                    }
                }
                None => woken.await,
            }
        }
    }

    /// End the ejections whose time is up (their services get fresh ready
    /// lists); returns how long until the next one ends.
    fn end_ejections(&self) -> Option<Duration> {
        let table = self.table.load();
        let mut expired = HashSet::new();
        let mut next: Option<u64> = None;
        for backend in table.backends() {
            if backend.ejection_expired() {
                backend.clear_ejection();
                tracing::info!(service = %backend.service, backend = %backend.address, "ejection over");
                expired.insert(Arc::clone(&backend.service));
            } else if let Some(left) = backend.ejection_left_ms() {
                next = Some(next.map_or(left, |n| n.min(left)));
            }
        }
        for name in expired {
            self.lock_pending().services.insert(name);
            self.dirty.notify_one();
        }
        next.map(Duration::from_millis)
    }

    /// Rebuild from the current sources (after a health or registry change).
    pub fn republish(&self) {
        let mut state = self.lock();
        self.publish_rebuilt(&mut state);
    }

    /// Rebuild, publish, and announce the new generation.
    fn publish_rebuilt(&self, state: &mut State) {
        let table = state.rebuild();
        self.publish(table);
        self.generation.send_modify(|g| *g += 1);
        if state.members.is_draining() {
            self.drain_started.notify_one();
        }
    }

    /// Swap `table` in. The table it replaces is kept until no request holds
    /// it, then dropped here, on the writer's thread: the last reference must
    /// not fall to a proxy worker, for whom freeing a 10,000-backend table
    /// (a cache miss per backend) is a millisecond stall.
    fn publish(&self, table: Table) {
        let old = self.table.swap(Arc::new(table));
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        retired.push(old);
        release_unused(&mut retired);
        if !retired.is_empty() {
            self.sweep.notify_one();
        }
    }

    /// Drop the retired tables no request holds any more (the sweeper calls
    /// this between publications).
    fn release_retired(&self) {
        release_unused(&mut self.retired.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic mid-rebuild leaves the old table published; the state is
        // still consistent enough to rebuild from.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn rebuild(&mut self) -> Table {
        let config = Arc::clone(&self.config);
        self.merge_sources(&config);
        let mut names = service_names(&config);
        names.extend(self.members.services().cloned());
        names.sort_unstable();
        names.dedup();
        let mut services = Vec::with_capacity(names.len());
        let mut by_name = HashMap::with_capacity(names.len());
        // Services only the registry knows share one copy of the defaults
        // (~0.5 KiB each otherwise, issue 13).
        let defaults = Arc::new(ServiceConfig::default());
        for name in &names {
            let settings = match config.services.get(name.as_ref()) {
                Some(declared) => Arc::new(declared.clone()),
                None => Arc::clone(&defaults),
            };
            let service = self.build_service(Arc::clone(name), settings);
            by_name.insert(Arc::clone(name), services.len());
            services.push(Arc::new(service));
        }
        self.members.finish(&self.metrics);
        let metrics = &self.metrics;
        self.service_metrics.retain(|name, series| {
            let kept = by_name.contains_key(name);
            if !kept {
                // Gone from the table: its request series go too, so
                // services that come and go do not pile up series.
                metrics.forget_service(series);
            }
            kept
        });
        self.budgets.retain(|k, _| by_name.contains_key(k));
        self.cursors.retain(|k, _| by_name.contains_key(k));
        Table {
            routes: Arc::new(route_table(&config, &by_name)),
            services,
            by_name: Arc::new(by_name),
        }
    }

    /// What every source declares now, merged into the live backends.
    fn merge_sources(&mut self, config: &Config) {
        let mut declared = Vec::new();
        StaticSource::declared(config, &mut declared);
        overrides::apply(&mut self.overrides, &mut declared);
        for source in &self.sources {
            let mut more = Vec::new();
            source.declared(config, &mut more);
            declared = merge_sorted(declared, more);
        }
        let checked = |name: &str| {
            config
                .services
                .get(name)
                .is_some_and(|s| s.health_check.is_some())
        };
        self.members.merge(&declared, &checked);
    }

    fn build_service(&mut self, name: Arc<str>, settings: Arc<ServiceConfig>) -> Service {
        let mut backends = self.members.backends(&name);
        // Configured backends (listed first) keep the config's order, which
        // round robin starts from and listings show.
        let configured = backends
            .iter()
            .take_while(|b| b.source == crate::backend::Source::Config)
            .count();
        backends[..configured].sort_by_key(|b| {
            settings
                .backends
                .iter()
                .position(|d| *d.address == *b.id)
                .unwrap_or(usize::MAX)
        });
        if settings.health_check.is_none() {
            // Checks switched off (or never on): everyone counts as healthy.
            backends.iter().for_each(|b| b.set_health(Health::Healthy));
        }
        let ready = ready_backends(&backends, settings.panic_threshold);
        let cursor = Arc::clone(self.cursors.entry(Arc::clone(&name)).or_default());
        Service {
            budget: Arc::clone(self.budgets.entry(Arc::clone(&name)).or_default()),
            balancer: balancer(&ready, &settings, &cursor),
            sticky: sticky_index(&ready, &settings),
            cursor,
            policy: settings.balance,
            metrics: self.service_metrics(&name),
            name,
            backends,
            ready,
            settings,
        }
    }

    fn service_metrics(&mut self, name: &Arc<str>) -> Arc<ServiceMetrics> {
        let metrics = &self.metrics;
        Arc::clone(
            self.service_metrics
                .entry(Arc::clone(name))
                .or_insert_with(|| metrics.service(name)),
        )
    }
}

/// Drop the tables only `retired` still holds. A count of one is final:
/// once swapped out a table cannot be loaded again, and `ArcSwap::swap` has
/// turned every outstanding guard on it into a counted reference.
fn release_unused(retired: &mut Vec<Arc<Table>>) {
    retired.retain(|table| Arc::strong_count(table) > 1);
}

/// The service's policy, built over `ready`.
fn balancer(
    ready: &[Arc<Backend>],
    settings: &ServiceConfig,
    cursor: &Arc<AtomicUsize>,
) -> Balancer {
    let build = Build {
        ready,
        settings,
        cursor,
    };
    Balancer::new(settings.balance, &build)
}

fn sticky_index(ready: &[Arc<Backend>], settings: &ServiceConfig) -> Option<StickyIndex> {
    settings.sticky.as_ref().map(|_| StickyIndex::new(ready))
}

/// The backends the balancer may pick. Below the panic threshold (a
/// percentage of non-draining backends; 0 = off) balance over all of them,
/// as Envoy does, rather than pile everything on a few survivors — but never
/// when none is ready: then the answer is 503.
fn ready_backends(backends: &[Arc<Backend>], panic_threshold: u32) -> Vec<Arc<Backend>> {
    let ready: Vec<Arc<Backend>> = backends.iter().filter(|b| b.is_ready()).cloned().collect();
    // Drained (departed or by the admin API) and weight-0 backends are no
    // candidates, not even in panic mode.
    let candidates = backends.iter().filter(|b| b.takes_new_requests()).count();
    let panic = !ready.is_empty() && ready.len() * 100 < candidates * panic_threshold as usize;
    if !panic {
        return ready;
    }
    backends
        .iter()
        .filter(|b| b.takes_new_requests())
        .cloned()
        .collect()
}

/// Declared services and services that routes name, sorted.
fn service_names(config: &Config) -> Vec<Arc<str>> {
    let mut names: BTreeSet<&str> = config.services.keys().map(String::as_str).collect();
    names.extend(config.routes.iter().map(|r| r.service.as_str()));
    names.into_iter().map(Arc::from).collect()
}

fn route_table(config: &Config, by_name: &HashMap<Arc<str>, usize>) -> RouteTable {
    let specs = config.routes.iter().filter_map(|r| {
        Some(RouteSpec {
            host: r.host.as_deref(),
            path_prefix: &r.path_prefix,
            service: *by_name.get(r.service.as_str())?,
            strip_prefix: r.strip_prefix,
            allow_ambiguous_paths: r.allow_ambiguous_paths,
        })
    });
    let named: BTreeSet<&str> = config.routes.iter().map(|r| r.service.as_str()).collect();
    let mut implicit: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, &index) in by_name {
        if !named.contains(name.as_ref()) {
            implicit.insert(name.as_ref(), index);
        }
    }
    let mut routes = RouteTable::build(specs, implicit);
    routes.merge_slashes = config.proxy.merge_slashes;
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher() -> Publisher {
        let toml = r#"
[services.a]
backends = ["127.0.0.1:9001", "127.0.0.1:9002"]
[services.b]
backends = ["127.0.0.1:9003"]
"#;
        let config = Config::from_toml_str(toml, std::path::Path::new("t.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        Publisher::new(Arc::new(config), Metrics::new())
    }

    fn retired(p: &Publisher) -> usize {
        p.retired.lock().map(|r| r.len()).unwrap_or(usize::MAX)
    }

    #[test]
    fn a_replaced_table_is_freed_by_the_publisher_not_by_its_last_reader() {
        let p = publisher();
        p.republish();
        assert_eq!(retired(&p), 0, "a table nobody holds goes at once");
        let held = p.table().load_full();
        let old = Arc::downgrade(&held);
        p.republish();
        drop(held); // the request ends: not the last reference
        assert!(old.upgrade().is_some(), "kept by the publisher");
        assert_eq!(retired(&p), 1);
        p.release_retired();
        assert!(old.upgrade().is_none(), "freed by the publisher");
        assert_eq!(retired(&p), 0);
    }

    #[test]
    fn a_table_still_in_use_is_kept_until_released() {
        let p = publisher();
        let held = p.table().load_full();
        p.republish();
        p.release_retired();
        assert_eq!(retired(&p), 1, "a request still holds it");
        assert_eq!(Arc::strong_count(&held), 2);
    }

    #[test]
    fn a_readiness_change_replaces_only_that_service() {
        let p = publisher();
        let before = p.table().load_full();
        let a = Arc::clone(before.service("a").expect("a"));
        let b = Arc::clone(before.service("b").expect("b"));
        assert_eq!(a.ready.len(), 2);
        a.backends[0].set_health(Health::Unhealthy);
        p.refresh_ready(&HashSet::from([Arc::clone(&a.name)]));
        let after = p.table().load_full();
        let a2 = after.service("a").expect("a");
        assert_eq!(a2.ready.len(), 1);
        assert!(
            Arc::ptr_eq(&a.backends[1], &a2.ready[0]),
            "same live backend"
        );
        assert!(
            Arc::ptr_eq(&b, after.service("b").expect("b")),
            "b untouched"
        );
        assert!(Arc::ptr_eq(&before.routes, &after.routes), "routes shared");
    }

    #[test]
    fn a_full_rebuild_keeps_backends_and_their_state() {
        let p = publisher();
        let before = p.table().load_full();
        let guard = before.service("a").expect("a").backends[0].start_request();
        p.republish();
        let after = p.table().load_full();
        let b0 = &after.service("a").expect("a").backends[0];
        assert!(Arc::ptr_eq(guard.backend(), b0));
        assert_eq!(b0.active_requests(), 1);
    }
}
