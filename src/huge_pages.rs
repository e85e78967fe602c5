//! Transparent huge pages, declined for the process (issue 13, item 3).
//!
//! On a kernel with THP set to `always` (`/sys/kernel/mm/transparent_hugepage/enabled`),
//! every 2 MiB stretch of heap the allocator touches can be backed by a whole huge page,
//! so the resident size counts memory nothing uses: measured on the release build,
//! 10,000 registered instances grew RSS by 2.25 KiB each with THP and 0.96 KiB
//! without, and the idle process from 22 MiB to 13 MiB (BENCHMARKS.md § Registry
//! memory). A proxy's heap is small and churns; huge pages buy it little, and
//! operators of Redis, MongoDB and others turn them off for the same bloat. So the binary
//! declines them at start (`prctl(PR_SET_THP_DISABLE)`, which covers every thread of the process),
//! unless `MIMALLOC_ALLOW_THP=1` asks for them (mimalloc's own switch; `=0` already
//! declines them inside the allocator).

/// The environment variable that keeps huge pages (`1`).
pub const ALLOW_ENV: &str = "MIMALLOC_ALLOW_THP";

/// Decline transparent huge pages for this process unless `MIMALLOC_ALLOW_THP=1`.
/// A kernel without the `prctl` (before 3.15) or without THP keeps what it has.
pub fn decline() {
    if std::env::var(ALLOW_ENV).is_ok_and(|v| v.trim() == "1") {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(error = %e, "transparent huge pages could not be declined");
    }
}

/// Whether the process has declined transparent huge pages.
#[cfg(target_os = "linux")]
pub fn declined() -> bool {
    rustix::thread::transparent_huge_pages_are_disabled().unwrap_or(false)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn declining_sets_the_process_flag() {
        // Unit tests share one process: the flag stays set for the others,
        // which is harmless.
        super::decline();
        assert!(super::declined() || std::env::var(super::ALLOW_ENV).is_ok());
    }
}
