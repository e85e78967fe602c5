//! Rate-limited log lines for faults that can repeat thousands of times a
//! second (accept failing with EMFILE, backend connects failing for want of
//! a descriptor): the first occurrence is logged at once, the rest within the
//! interval are only counted and reported with the next line. Lock-free: two
//! atomics, touched only on the fault path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One kind of repeated fault.
#[derive(Debug, Default)]
pub struct Throttle {
    /// Milliseconds since [`epoch`] of the last line written, plus one (0 = never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle {
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be written now, `n` = occurrences left
    /// unlogged since the previous line; `None` (and counted) otherwise.
    pub fn allow(&self, interval: Duration) -> Option<u64> {
        self.allow_at(now_ms() + 1, interval)
    }

    fn allow_at(&self, now: u64, interval: Duration) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= interval.as_millis() as u64;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Whether `error`, or any error under it, is the process or the system
/// running out of file descriptors (EMFILE, ENFILE).
pub fn is_out_of_descriptors(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            // 24 = EMFILE, 23 = ENFILE on Linux and the BSDs.
            if matches!(io.raw_os_error(), Some(23 | 24)) {
                return true;
            }
            // A wrapped io::Error hides its payload from `source()`.
            if io
                .get_ref()
                .is_some_and(|inner| is_out_of_descriptors(inner))
            {
                return true;
            }
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_of_the_rest() {
        let t = Throttle::new();
        let second = Duration::from_secs(1);
        assert_eq!(t.allow_at(1, second), Some(0));
        for ms in 2..500 {
            assert_eq!(t.allow_at(ms, second), None);
        }
        assert_eq!(t.allow_at(900, second), None);
        assert_eq!(t.allow_at(1001, second), Some(499));
        assert_eq!(t.allow_at(3000, second), Some(0));
    }

    #[test]
    fn descriptor_exhaustion_is_found_under_wrappers() {
        let emfile = std::io::Error::from_raw_os_error(24);
        assert!(is_out_of_descriptors(&emfile));
        let wrapped = std::io::Error::other(emfile);
        assert!(is_out_of_descriptors(&wrapped));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!is_out_of_descriptors(&refused));
    }
}
