//! One backend's checker task: probe, count, apply threshold transitions,
//! wait a jittered interval, repeat — until the supervisor aborts it.
//!
//! Checks run at a fixed rate from the start of each check, so a backend that
//! hangs is judged every `max(interval, timeout)`, not every
//! `interval + timeout`. Every wait is jittered per backend so that backends
//! added together (start-up, a large reload or registration burst) drift
//! apart instead of being checked in lockstep: the wait after the first check
//! is 50–100 % of the interval (which breaks up a burst at once), later waits
//! 90–110 %. Check times are then rounded to a coarse [`Grid`] (a twentieth of
//! the interval, at most 50 ms), so that a thousand checks a second cost a few
//! dozen thread wake-ups rather than a thousand.

use std::collections::hash_map::RandomState;
use std::error::Error;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use tokio::time::Instant;

use super::counter::Counter;
use super::{Probe, ProbeError};
use crate::backend::{Backend, Health};
use crate::table::Publisher;

/// `switchyard_health_checks_total` handles of one backend, resolved once.
#[derive(Debug, Clone)]
pub struct CheckCounters {
    pub success: IntCounter,
    pub failure: IntCounter,
}

/// When the first check of a new checker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At once: the backend is new or its health is unknown, so it takes no
    /// traffic until a check passes.
    Now,
    /// After a random share of one interval: a restart (new check settings)
    /// of a backend whose state is known, spread out so that a reload does
    /// not fire every check of a service at the same moment.
    Spread,
}

/// Everything one checker task owns.
#[derive(Debug)]
pub struct Checker<P> {
    pub probe: P,
    pub backend: Arc<Backend>,
    pub publisher: Arc<Publisher>,
    pub counters: CheckCounters,
    pub interval: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub grid: Grid,
}

impl<P: Probe> Checker<P> {
    /// The task body; runs until aborted.
    pub async fn run(self, start: Start) {
        let mut jitter = Jitter::for_backend(&self.backend);
        let mut next = Instant::now();
        if start == Start::Spread {
            next += jitter.scale(self.interval, 0.0, 1.0);
        }
        tokio::time::sleep_until(next).await;
        // Read only now: a restarted checker continues from the latest state.
        let mut counter = Counter::new(
            self.backend.health(),
            self.healthy_threshold,
            self.unhealthy_threshold,
        );
        let mut first = true;
        loop {
            let started = Instant::now();
            let result = self.probe.probe(self.backend.resolved).await;
            self.record(&mut counter, &result);
            let (lo, hi) = if first { (0.5, 1.0) } else { (0.9, 1.1) };
            first = false;
            let next = started + jitter.scale(self.interval, lo, hi);
            tokio::time::sleep_until(self.grid.round(next, self.interval)).await;
        }
    }

    /// Counts one result and applies a transition, if any.
    fn record(&self, counter: &mut Counter, result: &Result<(), ProbeError>) {
        match result {
            Ok(()) => self.counters.success.inc(),
            Err(_) => self.counters.failure.inc(),
        }
        let before = counter.state();
        let transition = counter.record(result.is_ok());
        // A passing check ends an outlier ejection early (Envoy's
        // `successful_active_health_check_uneject_host`).
        let unejected = result.is_ok() && self.backend.is_ejected();
        if unejected {
            self.backend.clear_ejection();
        }
        if let Some(after) = transition {
            self.backend.set_health(after);
            self.log_transition(before, after, result);
        }
        if transition.is_some() || unejected {
            // The table's ready lists only change on a rebuild.
            self.publisher.nudge_service(&self.backend.service);
        }
    }

    fn log_transition(&self, before: Health, after: Health, result: &Result<(), ProbeError>) {
        let (service, backend) = (&*self.backend.service, &*self.backend.address);
        let (from, to) = (before.as_str(), after.as_str());
        match result {
            Err(e) => {
                let reason = chain(e);
                tracing::warn!(service, backend, from, to, %reason, "health check: backend is down");
            }
            Ok(()) => tracing::info!(service, backend, from, to, "health check: backend is up"),
        }
    }
}

/// The largest grid step.
const MAX_STEP: Duration = Duration::from_millis(50);

/// Check times are rounded to a grid shared by all checkers of a supervisor,
/// so that checks due within the same few milliseconds share one runtime
/// wake-up: with a thousand checks a second, waking a thread for each one
/// costs more CPU (context switches) than the checks themselves. The step is
/// a twentieth of the interval, at most [`MAX_STEP`]; times are rounded to
/// the nearest step, so the mean interval stays as configured.
#[derive(Debug, Clone, Copy)]
pub struct Grid {
    origin: Instant,
}

impl Grid {
    pub fn new() -> Grid {
        Grid {
            origin: Instant::now(),
        }
    }

    fn round(&self, t: Instant, interval: Duration) -> Instant {
        let step = (interval / 20).min(MAX_STEP).as_nanos().max(1);
        let since = t.saturating_duration_since(self.origin).as_nanos();
        let nearest = (since + step / 2) / step * step;
        self.origin + Duration::from_nanos(u64::try_from(nearest).unwrap_or(u64::MAX))
    }
}

impl Default for Grid {
    fn default() -> Self {
        Grid::new()
    }
}

/// An error and its causes on one line (`a: b: c`).
pub fn chain(error: &dyn Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// A small per-backend random source for jitter (SplitMix64). Seeded from the
/// process's random hasher keys and the backend's identity, so two backends
/// (or two runs) never share a sequence; no crate needed for this.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn for_backend(backend: &Backend) -> Jitter {
        let mut hasher = RandomState::new().build_hasher();
        backend.service.hash(&mut hasher);
        backend.id.hash(&mut hasher);
        Jitter(hasher.finish())
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `d` times a uniform factor in `[lo, hi)`.
    pub fn scale(&mut self, d: Duration, lo: f64, hi: f64) -> Duration {
        // 53 random bits make a uniform f64 in [0, 1).
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        d.mul_f64(lo + (hi - lo) * unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testing::backend;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use std::collections::VecDeque;
    use std::net::SocketAddr;
    use std::sync::Mutex;

    /// Answers from a script (then passes), noting when each probe ran and
    /// the backend's health at that moment (the result of the checks before).
    #[derive(Debug, Clone)]
    struct Scripted {
        results: Arc<Mutex<VecDeque<bool>>>,
        seen: Arc<Mutex<Vec<(Instant, Health)>>>,
        backend: Arc<Backend>,
    }

    impl Scripted {
        fn times(&self) -> Vec<Instant> {
            self.seen
                .lock()
                .expect("lock")
                .iter()
                .map(|s| s.0)
                .collect()
        }

        fn healths(&self) -> Vec<Health> {
            self.seen
                .lock()
                .expect("lock")
                .iter()
                .map(|s| s.1)
                .collect()
        }
    }

    impl Probe for Scripted {
        async fn probe(&self, _addr: SocketAddr) -> Result<(), ProbeError> {
            let now = (Instant::now(), self.backend.health());
            self.seen.lock().expect("lock").push(now);
            let pass = self
                .results
                .lock()
                .expect("lock")
                .pop_front()
                .unwrap_or(true);
            if pass {
                Ok(())
            } else {
                Err(ProbeError::Timeout(Duration::from_secs(1)))
            }
        }
    }

    fn checker(script: &[bool], initial: Health) -> (Checker<Scripted>, Scripted) {
        let b = backend("127.0.0.1:9001", 1);
        b.set_health(initial);
        let probe = Scripted {
            results: Arc::new(Mutex::new(script.iter().copied().collect())),
            seen: Arc::default(),
            backend: Arc::clone(&b),
        };
        let publisher = Arc::new(Publisher::new(
            Arc::new(Config::embedded_default()),
            Metrics::new(),
        ));
        let counter = || IntCounter::new("c", "c").expect("static");
        let checker = Checker {
            probe: probe.clone(),
            backend: b,
            publisher,
            counters: CheckCounters {
                success: counter(),
                failure: counter(),
            },
            interval: Duration::from_secs(10),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            grid: Grid::new(),
        };
        (checker, probe)
    }

    #[tokio::test(start_paused = true)]
    async fn first_check_at_once_then_about_one_interval_apart() {
        let (c, probe) = checker(&[], Health::Unknown);
        let b = Arc::clone(&c.backend);
        let t0 = Instant::now();
        let task = tokio::spawn(c.run(Start::Now));
        tokio::time::sleep(Duration::from_secs(60)).await;
        task.abort();
        assert_eq!(b.health(), Health::Healthy);
        let at = probe.times();
        assert_eq!(at[0], t0, "the first check of a new backend runs at once");
        let gap = at[1] - at[0];
        assert!(
            gap >= Duration::from_secs(5) && gap <= Duration::from_secs(10),
            "{gap:?}"
        );
        for w in at[1..].windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap >= Duration::from_secs(9) && gap <= Duration::from_secs(11),
                "{gap:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn thresholds_drive_the_backend_health() {
        let script = [true, false, false, false, true, true];
        let (c, probe) = checker(&script, Health::Unknown);
        let (success, failure) = (c.counters.success.clone(), c.counters.failure.clone());
        let task = tokio::spawn(c.run(Start::Now));
        tokio::time::sleep(Duration::from_secs(75)).await;
        task.abort();
        use Health::{Healthy as H, Unhealthy as U, Unknown};
        // Health before each check: unknown, then the result of the checks so far.
        assert_eq!(probe.healths()[..7], [Unknown, H, H, H, U, U, H]);
        // Past the script every check passes.
        assert_eq!(failure.get(), 3);
        assert_eq!(success.get() as usize, probe.healths().len() - 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_spread_start_waits_less_than_one_interval() {
        let (c, probe) = checker(&[], Health::Healthy);
        let t0 = Instant::now();
        let task = tokio::spawn(c.run(Start::Spread));
        tokio::time::sleep(Duration::from_secs(10)).await;
        task.abort();
        let at = probe.times();
        assert!(!at.is_empty() && at[0] - t0 < Duration::from_secs(10));
    }

    #[test]
    fn the_grid_rounds_to_the_nearest_step() {
        let grid = Grid::new();
        let at = |ms| grid.origin + Duration::from_millis(ms);
        let second = Duration::from_secs(1);
        assert_eq!(grid.round(at(1_024), second), at(1_000));
        assert_eq!(grid.round(at(1_026), second), at(1_050));
        // A short interval gets a finer grid: 100 ms → 5 ms steps.
        assert_eq!(grid.round(at(1_003), Duration::from_millis(100)), at(1_005));
    }

    #[test]
    fn jitter_stays_in_bounds_and_varies() {
        let mut j = Jitter(42);
        let d = Duration::from_secs(1);
        let samples: Vec<Duration> = (0..1000).map(|_| j.scale(d, 0.9, 1.1)).collect();
        assert!(samples
            .iter()
            .all(|s| *s >= Duration::from_millis(900) && *s < Duration::from_millis(1100)));
        let min = samples.iter().min().copied().unwrap_or_default();
        let max = samples.iter().max().copied().unwrap_or_default();
        assert!(max - min > Duration::from_millis(150), "{min:?}..{max:?}");
    }

    #[test]
    fn chain_joins_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(chain(&ProbeError::Connect(io)), "cannot connect: refused");
    }
}
