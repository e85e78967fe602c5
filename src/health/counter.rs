//! The threshold state machine of active health checks: pure, no I/O.
//!
//! A checker feeds it one result per check and applies the transition it
//! returns. Consecutive results, not ratios, decide: `healthy_threshold`
//! passes in a row mark a backend up, `unhealthy_threshold` failures in a row
//! mark it down, and any opposite result restarts the streak — so a flapping
//! endpoint (pass, fail, pass, ...) never changes a settled state unless a
//! threshold is 1. A backend whose health is still unknown (new, never
//! checked) needs only one pass to start taking traffic, because holding a
//! working backend back for `healthy_threshold` intervals helps no one; it
//! becomes unhealthy after `unhealthy_threshold` failures like any other.

use crate::backend::Health;

/// Consecutive-result counter for one backend.
#[derive(Debug, Clone)]
pub struct Counter {
    state: Health,
    /// Passes in a row since the last failure (0 after a failure).
    passes: u32,
    /// Failures in a row since the last pass (0 after a pass).
    failures: u32,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

impl Counter {
    /// Starts in `state` (the backend's current health, so a restarted checker
    /// keeps what was learnt) with empty streaks. Thresholds below 1 count as 1.
    pub fn new(state: Health, healthy_threshold: u32, unhealthy_threshold: u32) -> Counter {
        Counter {
            state,
            passes: 0,
            failures: 0,
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// Records one check result; returns the new state when it changed.
    pub fn record(&mut self, passed: bool) -> Option<Health> {
        let next = if passed {
            self.passes = self.passes.saturating_add(1);
            self.failures = 0;
            self.after_pass()
        } else {
            self.failures = self.failures.saturating_add(1);
            self.passes = 0;
            self.after_failure()
        };
        if next == self.state {
            return None;
        }
        self.state = next;
        Some(next)
    }

    fn after_pass(&self) -> Health {
        match self.state {
            Health::Unknown => Health::Healthy,
            Health::Unhealthy if self.passes >= self.healthy_threshold => Health::Healthy,
            other => other,
        }
    }

    fn after_failure(&self) -> Health {
        match self.state {
            Health::Unknown | Health::Healthy if self.failures >= self.unhealthy_threshold => {
                Health::Unhealthy
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(c: &mut Counter, results: &[bool]) -> Vec<Option<Health>> {
        results.iter().map(|&r| c.record(r)).collect()
    }

    #[test]
    fn one_pass_is_enough_from_unknown() {
        let mut c = Counter::new(Health::Unknown, 3, 3);
        assert_eq!(c.record(true), Some(Health::Healthy));
        assert_eq!(c.state(), Health::Healthy);
    }

    #[test]
    fn unknown_turns_unhealthy_after_the_failure_threshold() {
        let mut c = Counter::new(Health::Unknown, 2, 3);
        assert_eq!(
            feed(&mut c, &[false, false, false]),
            [None, None, Some(Health::Unhealthy)]
        );
    }

    #[test]
    fn unknown_failures_then_a_pass_is_healthy() {
        let mut c = Counter::new(Health::Unknown, 2, 3);
        assert_eq!(
            feed(&mut c, &[false, false, true]),
            [None, None, Some(Health::Healthy)]
        );
    }

    #[test]
    fn healthy_falls_after_consecutive_failures_only() {
        let mut c = Counter::new(Health::Healthy, 2, 3);
        assert_eq!(feed(&mut c, &[false, false, true]), [None, None, None]);
        assert_eq!(
            feed(&mut c, &[false, false, false]),
            [None, None, Some(Health::Unhealthy)]
        );
    }

    #[test]
    fn unhealthy_rises_after_consecutive_passes_only() {
        let mut c = Counter::new(Health::Unhealthy, 2, 3);
        assert_eq!(feed(&mut c, &[true, false, true]), [None, None, None]);
        assert_eq!(c.record(true), Some(Health::Healthy));
    }

    #[test]
    fn flapping_is_damped_both_ways() {
        let flap = [true, false, true, false, true, false, true, false];
        let mut up = Counter::new(Health::Healthy, 2, 2);
        assert!(feed(&mut up, &flap).iter().all(Option::is_none));
        assert_eq!(up.state(), Health::Healthy);
        let mut down = Counter::new(Health::Unhealthy, 2, 2);
        assert!(feed(&mut down, &flap).iter().all(Option::is_none));
        assert_eq!(down.state(), Health::Unhealthy);
    }

    #[test]
    fn no_repeated_transitions_in_a_settled_state() {
        let mut c = Counter::new(Health::Healthy, 1, 1);
        assert_eq!(c.record(false), Some(Health::Unhealthy));
        assert_eq!(feed(&mut c, &[false, false]), [None, None]);
        assert_eq!(c.record(true), Some(Health::Healthy));
        assert_eq!(feed(&mut c, &[true, true]), [None, None]);
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let mut c = Counter::new(Health::Healthy, 0, 0);
        assert_eq!(c.record(false), Some(Health::Unhealthy));
        assert_eq!(c.record(true), Some(Health::Healthy));
    }
}
