//! A backend: one upstream instance of a service, and its live state.
//!
//! A [`Backend`] is shared as an `Arc` that outlives table rebuilds: the
//! publisher keys it by service and identity, so a backend that stays in the
//! config (or stays registered) keeps its in-flight count, health and metric
//! handles across a reload. Everything that changes while requests run is an
//! atomic, so the request path never locks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::uri::Authority;

/// Who declared a backend (ordered: a service lists configured backends
/// before registered ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    Config,
    Registry,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Registry => "registry",
        }
    }
}

/// Health as the checkers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown = 0,
    Healthy = 1,
    Unhealthy = 2,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }

    fn from_u8(v: u8) -> Health {
        match v {
            0 => Health::Unknown,
            1 => Health::Healthy,
            _ => Health::Unhealthy,
        }
    }
}

/// Per-backend counters: plain atomics in the backend, which
/// `/metrics` reads at scrape time (`metrics::backends`), so a backend has
/// no metric series of its own to allocate, look up or forget: the labels
/// are its `service` and `address`, shared with the backend.
#[derive(Debug, Default)]
pub struct BackendCounters {
    /// `switchyard_backend_requests_total{outcome="ok"}`.
    pub ok: Count,
    /// `...{outcome="error"}`.
    pub error: Count,
    /// `...{outcome="timeout"}`.
    pub timeout: Count,
    /// `switchyard_outlier_ejections_total`.
    pub ejections: Count,
}

/// A monotonic counter the request path bumps without a lock.
#[derive(Debug, Default)]
pub struct Count(AtomicU64);

impl Count {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One upstream instance.
#[derive(Debug)]
pub struct Backend {
    /// The service it belongs to.
    pub service: Arc<str>,
    /// Instance id: the address for configured backends, the registered id otherwise.
    pub id: Arc<str>,
    /// `host:port` as declared; the `backend` metric label.
    pub address: Arc<str>,
    /// Where connections go.
    pub resolved: SocketAddr,
    /// Pre-built URI authority, cloned (a refcount bump) into every upstream URI.
    pub authority: Authority,
    /// `address` as a URI authority, for TLS backends: their connections are
    /// pooled, named (SNI, verification) and sent `:authority` by the name as
    /// written, and dialed at `resolved`. Equals `authority` for IP addresses.
    pub named_authority: Authority,
    pub source: Source,
    pub counters: BackendCounters,
    /// Balancing weight, 0..=1000 (0 = no new requests); atomic because a
    /// re-registration or an admin `PATCH` changes it in place.
    weight: AtomicU32,
    /// Set by `PATCH .../instances/{id}` with `"state": "drain"`: no new
    /// requests, in-flight ones finish (HAProxy's `set server state drain`).
    admin_drain: AtomicBool,
    /// Requests in flight on every backend of the service (shared by them
    /// all): the average load that `hash_balance_factor` bounds.
    service_load: Arc<AtomicU32>,
    /// Peak-EWMA of attempt latency, for `p2c_ewma`.
    latency: PeakEwma,
    /// When it joined or came back (from unhealthy or ejected), on the
    /// [`now_millis`] clock: where `slow_start` ramps from.
    ramp_from: AtomicU64,
    /// Requests in flight, counted until the response body has finished.
    active: AtomicU32,
    health: AtomicU8,
    /// Deregistered or expired: no new requests; listed until `active` drains.
    draining: AtomicBool,
    /// A registered instance's lease end on the [`now_millis`] clock (0 =
    /// none): from then on it takes no new request, even before the registry
    /// has noticed the expiry (SPEC §3: "once the lease's time is up").
    lease_until: AtomicU64,
    /// Passive health (outlier detection) from real traffic.
    outlier: Outlier,
}

/// Outlier-detection state: consecutive failures and the current ejection.
#[derive(Debug, Default)]
struct Outlier {
    consecutive_failures: AtomicU32,
    /// How many times it was ejected; the n-th ejection lasts n × base (capped).
    ejections: AtomicU32,
    /// Milliseconds on the process clock ([`now_millis`]) until which it is
    /// ejected; 0 = not ejected.
    ejected_until: AtomicU64,
}

/// The longest ejection is this many times the base ejection.
const MAX_EJECTION_FACTOR: u32 = 10;

/// Milliseconds since the process's first call: a cheap monotonic clock that
/// fits in an atomic.
pub fn now_millis() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Backend {
    /// A backend starts with weight as given, no requests, health `Healthy`
    /// (callers with active checks set `Unknown` before publishing it).
    pub fn new(
        service: Arc<str>,
        id: Arc<str>,
        address: Arc<str>,
        resolved: SocketAddr,
        weight: u32,
        source: Source,
        counters: BackendCounters,
    ) -> Backend {
        let authority = authority_for(resolved);
        let named_authority =
            Authority::try_from(address.as_ref()).unwrap_or_else(|_| authority.clone());
        Backend {
            service,
            id,
            address,
            resolved,
            authority,
            named_authority,
            source,
            counters,
            weight: AtomicU32::new(weight),
            admin_drain: AtomicBool::new(false),
            service_load: Arc::default(),
            latency: PeakEwma::default(),
            ramp_from: AtomicU64::new(now_millis()),
            active: AtomicU32::new(0),
            health: AtomicU8::new(Health::Healthy as u8),
            draining: AtomicBool::new(false),
            lease_until: AtomicU64::new(0),
            outlier: Outlier::default(),
        }
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    /// Share the service-wide in-flight counter (set once, before the
    /// backend is shared).
    pub fn sharing_service_load(mut self, load: Arc<AtomicU32>) -> Backend {
        self.service_load = load;
        self
    }

    /// Requests in flight on the whole service.
    pub fn service_load(&self) -> u32 {
        self.service_load.load(Ordering::Relaxed)
    }

    /// The admin state: drained (`true`) or ready.
    pub fn set_admin_drain(&self, drain: bool) {
        self.admin_drain.store(drain, Ordering::Relaxed);
    }

    pub fn is_admin_drained(&self) -> bool {
        self.admin_drain.load(Ordering::Relaxed)
    }

    /// One attempt ended after `elapsed`; a failed one counts as slow.
    pub fn record_latency(&self, elapsed: Duration, failed: bool) {
        self.latency.observe(elapsed, failed, now_millis());
    }

    /// `record_latency` at a given time on the [`now_millis`] clock (tests).
    #[cfg(test)]
    pub fn record_latency_at(&self, elapsed: Duration, now: u64) {
        self.latency.observe(elapsed, false, now);
    }

    /// The peak-EWMA latency as last recorded, in µs, and when (the low 32
    /// bits of the [`now_millis`] clock); `None` before the first attempt
    /// ended. It decays by `exp(-Δt / EWMA_DECAY)` from then.
    pub fn latency_sample(&self) -> Option<(f64, u32)> {
        self.latency.sample()
    }

    /// The `slow_start` share, in thousandths of its weight: 100 (10 %) at
    /// the moment it joined or came back, growing linearly to 1000 over
    /// `window_ms`; 1000 when `window_ms` is 0.
    pub fn ramp_permille(&self, window_ms: u64, now: u64) -> u64 {
        if window_ms == 0 {
            return 1000;
        }
        let from = self.ramp_from.load(Ordering::Relaxed);
        if from == 0 {
            return 1000;
        }
        let since = now.saturating_sub(from);
        if since >= window_ms {
            return 1000;
        }
        100 + 900 * since / window_ms
    }

    /// No ramp: a backend of the first table (HAProxy: slow start never
    /// applies when the process starts; there is no traffic to protect).
    /// Coming back later (from unhealthy or ejected) ramps as usual.
    pub fn skip_ramp(&self) {
        self.ramp_from.store(0, Ordering::Relaxed);
    }

    /// Start the `slow_start` ramp again (it came back).
    fn restart_ramp(&self) {
        self.ramp_from.store(now_millis(), Ordering::Relaxed);
    }

    pub fn active_requests(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    /// A backend that comes back healthy starts its slow-start ramp; so
    /// does a new one whose first check passes, unless it had no ramp (a
    /// backend of the first table).
    pub fn set_health(&self, health: Health) {
        let before = self.health.swap(health as u8, Ordering::Relaxed);
        let back = before == Health::Unhealthy as u8
            || (before == Health::Unknown as u8 && self.ramp_from.load(Ordering::Relaxed) != 0);
        if health == Health::Healthy && back {
            self.restart_ramp();
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// Whether the balancer may pick it: healthy, not draining, not ejected.
    pub fn is_ready(&self) -> bool {
        self.health() == Health::Healthy && self.takes_new_requests() && !self.is_ejected()
    }

    /// Not draining (departed or drained by the admin API), weight above
    /// 0, and its lease (if any) not over: checked on the request path for
    /// the backend the balancer chose, so a departure or a drain counts from
    /// the moment it is answered, not from the next table.
    pub fn takes_new_requests(&self) -> bool {
        if self.is_draining() || self.is_admin_drained() || self.weight() == 0 {
            return false;
        }
        let until = self.lease_until.load(Ordering::Relaxed);
        until == 0 || now_millis() < until
    }

    /// Set when its lease ends (`None`: never), from the wall-clock end.
    pub fn set_lease_end(&self, expires_at: Option<std::time::SystemTime>) {
        let until = match expires_at {
            None => 0,
            Some(at) => {
                let left = at
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                now_millis()
                    .saturating_add(u64::try_from(left.as_millis()).unwrap_or(u64::MAX))
                    .max(1)
            }
        };
        self.lease_until.store(until, Ordering::Relaxed);
    }

    pub fn is_ejected(&self) -> bool {
        let until = self.outlier.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_millis() < until
    }

    /// An ejection whose time is up, not yet cleared (the sweeper's cue to
    /// rebuild so the backend rejoins).
    pub fn ejection_expired(&self) -> bool {
        let until = self.outlier.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_millis() >= until
    }

    /// Milliseconds until the current ejection ends, if it is ejected.
    pub fn ejection_left_ms(&self) -> Option<u64> {
        let until = self.outlier.ejected_until.load(Ordering::Relaxed);
        let now = now_millis();
        (until != 0 && now < until).then(|| until - now)
    }

    /// End an ejection (time is up, or an active check passed); a backend
    /// that was ejected starts its slow-start ramp again.
    pub fn clear_ejection(&self) {
        if self.outlier.ejected_until.swap(0, Ordering::Relaxed) != 0 {
            self.restart_ramp();
        }
        self.outlier
            .consecutive_failures
            .store(0, Ordering::Relaxed);
    }

    /// A request succeeded: the failure streak ends.
    pub fn record_success(&self) {
        if self.outlier.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.outlier
                .consecutive_failures
                .store(0, Ordering::Relaxed);
        }
    }

    /// A request failed; returns the streak length including this failure.
    pub fn record_failure(&self) -> u32 {
        self.outlier
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
    }

    /// Eject for `base` × (number of ejections so far + 1), capped at 10 ×.
    /// Returns false if it already is ejected (another request won the race).
    pub fn eject(&self, base: Duration) -> bool {
        let factor = self
            .outlier
            .ejections
            .load(Ordering::Relaxed)
            .saturating_add(1)
            .min(MAX_EJECTION_FACTOR);
        let millis = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
        let until = now_millis().saturating_add(millis.saturating_mul(u64::from(factor)));
        let current = self.outlier.ejected_until.load(Ordering::Relaxed);
        if current != 0 && now_millis() < current {
            return false;
        }
        let won = self
            .outlier
            .ejected_until
            .compare_exchange(current, until, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if won {
            self.outlier.ejections.fetch_add(1, Ordering::Relaxed);
            self.outlier
                .consecutive_failures
                .store(0, Ordering::Relaxed);
        }
        won
    }

    /// Count one request in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.service_load.fetch_add(1, Ordering::Relaxed);
        ActiveGuard {
            backend: Arc::clone(self),
        }
    }
}

/// How fast old latency observations fade: Linkerd's and Finagle's
/// peak-EWMA default (10 s). A backend that was slow is tried again once its
/// estimate has decayed below the others' cost.
pub const EWMA_DECAY: Duration = Duration::from_secs(10);

/// What a failed attempt (refused, reset, timed out, 5xx) counts as, at
/// least: a failing backend looks slow, so `p2c_ewma` routes around it.
pub const FAILURE_LATENCY: Duration = Duration::from_secs(1);

/// Peak-EWMA latency (Finagle, Linkerd): a slower observation replaces the
/// estimate at once (the peak); faster ones pull it down gradually, with a
/// weight that depends on the time since the last one; and between
/// observations it decays towards zero, so an idle backend is tried again.
/// One atomic word: the estimate (µs, `f32` bits) and the time it was
/// taken (ms on [`now_millis`], low 32 bits), updated by compare-exchange.
#[derive(Debug, Default)]
struct PeakEwma {
    packed: AtomicU64,
}

impl PeakEwma {
    fn unpack(word: u64) -> (f64, u32) {
        (f64::from(f32::from_bits(word as u32)), (word >> 32) as u32)
    }

    fn pack(estimate_us: f64, at: u64) -> u64 {
        (u64::from(at as u32) << 32) | u64::from((estimate_us as f32).to_bits())
    }

    /// The weight the estimate taken at `at` keeps at `now`: exp(-Δt/τ).
    fn decay(at: u32, now: u64) -> f64 {
        let elapsed = (now as u32).wrapping_sub(at);
        if elapsed == 0 {
            return 1.0;
        }
        (-f64::from(elapsed) / EWMA_DECAY.as_millis() as f64).exp()
    }

    /// Tower's and Linkerd's update: a slower rtt is the new estimate; a
    /// faster one blends in by the time passed since the last update, and
    /// the old estimate decays towards zero over that time.
    fn observe(&self, elapsed: Duration, failed: bool, now: u64) {
        let mut rtt = elapsed.as_secs_f64() * 1e6;
        if failed {
            rtt = rtt.max(FAILURE_LATENCY.as_secs_f64() * 1e6);
        }
        let mut current = self.packed.load(Ordering::Relaxed);
        loop {
            let (estimate, at) = Self::unpack(current);
            let decay = Self::decay(at, now);
            let decayed = estimate * decay;
            let next = if rtt > decayed {
                rtt
            } else {
                decayed + rtt * (1.0 - decay)
            };
            match self.packed.compare_exchange_weak(
                current,
                Self::pack(next, now),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// The estimate (µs) and its time, undecayed; `None` when never set.
    fn sample(&self) -> Option<(f64, u32)> {
        let word = self.packed.load(Ordering::Relaxed);
        (word != 0).then(|| Self::unpack(word))
    }
}

/// The URI authority for a socket address (`127.0.0.1:9001`, `[::1]:9001`).
fn authority_for(addr: SocketAddr) -> Authority {
    // Display of a SocketAddr is always a valid authority.
    Authority::try_from(addr.to_string().as_str())
        .unwrap_or_else(|_| Authority::from_static("invalid.invalid"))
}

/// RAII in-flight count: dropping it ends the request for least-conn and the
/// active-requests gauge. It rides in the response body, so a streamed body
/// counts until its last byte (or the client's abort).
#[derive(Debug)]
pub struct ActiveGuard {
    backend: Arc<Backend>,
}

impl ActiveGuard {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
        self.backend.service_load.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A backend for unit tests.
    pub fn backend(address: &str, weight: u32) -> Arc<Backend> {
        let resolved: SocketAddr = address
            .parse()
            .unwrap_or_else(|_| ([127, 0, 0, 1], 1).into());
        Arc::new(Backend::new(
            Arc::from("svc"),
            Arc::from(address),
            Arc::from(address),
            resolved,
            weight,
            Source::Config,
            BackendCounters::default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::backend;
    use super::{now_millis, Health};

    #[test]
    fn guard_counts_in_flight() {
        let b = backend("127.0.0.1:9001", 1);
        let g1 = b.start_request();
        let g2 = b.start_request();
        assert_eq!(b.active_requests(), 2);
        drop(g1);
        assert_eq!(b.active_requests(), 1);
        drop(g2);
        assert_eq!(b.active_requests(), 0);
    }

    #[test]
    fn ejection_takes_it_out_and_grows() {
        let b = backend("127.0.0.1:9001", 1);
        assert!(b.is_ready());
        assert_eq!(b.record_failure(), 1);
        assert_eq!(b.record_failure(), 2);
        b.record_success();
        assert_eq!(b.record_failure(), 1);
        assert!(b.eject(std::time::Duration::from_secs(30)));
        assert!(b.is_ejected() && !b.is_ready());
        assert!(
            !b.eject(std::time::Duration::from_secs(30)),
            "already ejected"
        );
        b.clear_ejection();
        assert!(b.is_ready());
        assert!(b.eject(std::time::Duration::from_millis(0)));
        assert!(b.ejection_expired());
    }

    #[test]
    fn slow_start_ramps_on_join_and_on_coming_back_only() {
        let window = 60_000;
        let b = backend("127.0.0.1:9001", 1);
        assert!(
            b.ramp_permille(window, now_millis()) < 200,
            "a new backend ramps"
        );
        assert_eq!(b.ramp_permille(0, now_millis()), 1000, "slow_start off");
        b.skip_ramp();
        assert_eq!(b.ramp_permille(window, now_millis()), 1000);
        b.set_health(Health::Healthy);
        assert_eq!(
            b.ramp_permille(window, now_millis()),
            1000,
            "no change, no ramp"
        );
        b.set_health(Health::Unknown);
        b.set_health(Health::Healthy);
        assert_eq!(
            b.ramp_permille(window, now_millis()),
            1000,
            "first table: its first check passing is no comeback"
        );
        b.set_health(Health::Unhealthy);
        b.set_health(Health::Healthy);
        assert!(
            b.ramp_permille(window, now_millis()) < 200,
            "back from unhealthy"
        );
        b.skip_ramp();
        assert!(b.eject(std::time::Duration::from_secs(30)));
        b.clear_ejection();
        assert!(
            b.ramp_permille(window, now_millis()) < 200,
            "back from ejected"
        );
        let later = now_millis() + window / 2;
        let half = b.ramp_permille(window, later);
        assert!((540..=560).contains(&half), "linear: {half}");
    }

    #[test]
    fn drain_and_weight_zero_take_no_new_requests() {
        let b = backend("127.0.0.1:9001", 1);
        assert!(b.takes_new_requests());
        b.set_admin_drain(true);
        assert!(!b.takes_new_requests() && !b.is_ready());
        b.set_admin_drain(false);
        b.set_weight(0);
        assert!(!b.takes_new_requests() && !b.is_ready());
        b.set_weight(3);
        assert!(b.is_ready());
    }

    #[test]
    fn authority_is_the_socket_address() {
        let b = backend("127.0.0.1:9001", 1);
        assert_eq!(b.authority.as_str(), "127.0.0.1:9001");
    }
}
