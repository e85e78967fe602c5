//! The open-file budget: client connections are capped below what the
//! process's descriptor limit (RLIMIT_NOFILE) can carry.
//!
//! A proxied client connection can hold two descriptors (its socket and a
//! pooled backend connection), and health checks, the admin API, config and
//! registry files, etcd and the access log need some too. Without a cap, idle
//! clients could take every descriptor and leave none to reach a backend, so
//! established clients would get 502 (HAProxy derives its `maxconn` from the
//! limit in the same spirit). At start-up the soft limit is raised towards the
//! hard one, as far as `max_connections` needs, and `max_connections` is then
//! lowered, with one log line, if the limit still cannot carry it.

/// Descriptors kept out of the client budget: listeners, the admin API,
/// health checks, files, etcd, the access log, the runtime's own.
pub const RESERVED: u64 = 64;

/// What start-up decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    /// Client connections the proxy listeners accept at most.
    pub max_connections: usize,
    /// The soft RLIMIT_NOFILE after raising it (None: unknown on this platform).
    pub nofile: Option<u64>,
}

/// Descriptors that `max_connections` clients and `backends` backends need.
pub fn needed(max_connections: usize, backends: usize) -> u64 {
    2 * max_connections as u64 + RESERVED + backends as u64
}

/// The cap for a descriptor limit of `nofile`: at least one connection.
pub fn cap(max_connections: usize, backends: usize, nofile: u64) -> usize {
    let usable = nofile.saturating_sub(RESERVED + backends as u64) / 2;
    (max_connections as u64).min(usable).max(1) as usize
}

/// Raise the soft limit as far as needed (never above the hard limit) and
/// cap `max_connections` to what it carries; logs when it lowers the cap.
pub fn apply(max_connections: usize, backends: usize) -> ConnectionBudget {
    let wanted = needed(max_connections, backends);
    let nofile = match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit; max_connections left as configured");
            return ConnectionBudget {
                max_connections,
                nofile: None,
            };
        }
    };
    let allowed = cap(max_connections, backends, nofile);
    if allowed < max_connections {
        tracing::warn!(
            "max_connections lowered from {max_connections} to {allowed}: the open-file limit \
             (RLIMIT_NOFILE) is {nofile}, and each client connection may need two descriptors \
             (plus {} kept for backends, health checks and files); raise it to {wanted} \
             (ulimit -n, or LimitNOFILE= in a systemd unit) to allow them all",
            RESERVED + backends as u64
        );
    }
    ConnectionBudget {
        max_connections: allowed,
        nofile: Some(nofile),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_two_descriptors_per_connection_and_the_reserve() {
        assert_eq!(cap(10_000, 0, 1_048_576), 10_000);
        assert_eq!(cap(10_000, 0, 1024), 480);
        assert_eq!(cap(10_000, 36, 256), 78);
        assert_eq!(cap(10_000, 0, 10), 1);
        assert_eq!(needed(10_000, 6), 20_070);
        assert!(cap(10_000, 6, needed(10_000, 6)) == 10_000);
    }
}
