//! Why a registry operation was refused.
//!
//! One enum for the registry's boundary. Every variant is a client mistake or
//! a policy decision, never an internal failure: registrations are accepted
//! in memory and persisted later (see `store`), so a disk problem cannot fail
//! a request. The admin API maps each variant to its status in one exhaustive
//! `match` (`admin::instances::status_of`).

use std::fmt;
use std::net::IpAddr;

use super::address::{AddressError, Refusal};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("the body is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("the body must be a JSON object like {{\"address\": \"127.0.0.1:9001\"}}")]
    NotAnObject,
    /// The name as sent, quoted and cut: it is client text (found by the
    /// `admin_json` fuzz target, which saw a raw DEL byte echoed).
    #[error("unknown field {0}; the fields are address, weight, ttl and metadata")]
    UnknownField(Shown),
    #[error("`address` is required, like {{\"address\": \"127.0.0.1:9001\"}}")]
    MissingAddress,
    #[error("`{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error(
        "{kind} {value} is invalid: use 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-'"
    )]
    BadName { kind: NameKind, value: Shown },
    #[error("weight {0} is out of range: it must be an integer from 0 to 1000")]
    Weight(Shown),
    #[error("ttl {value} is invalid: {problem}")]
    Ttl { value: Shown, problem: TtlProblem },
    #[error(transparent)]
    Address(#[from] AddressError),
    #[error("address {address} ({ip}) may not be registered: {reason}")]
    Refused {
        address: Shown,
        ip: IpAddr,
        reason: Refusal,
    },
    #[error("service `{0}` does not exist and registry.allow_new_services is false")]
    NewService(String),
    #[error("service `{service}` already has {max} registered instances (registry.max_instances_per_service)")]
    TooManyInstances { service: String, max: usize },
    #[error("the registry already holds instances of {max} services (registry.max_services): service `{service}` cannot be added")]
    TooManyServices { service: String, max: usize },
    #[error("the registry already holds {max} registered instances (registry.max_instances)")]
    RegistryFull { max: usize },
    #[error("instance `{id}` of service `{service}` is not registered (unknown, or its lease expired): register it again")]
    NotFound { service: String, id: String },
    /// Cluster mode: etcd did not take the write (SPEC §6: 503).
    #[error("registry store unavailable: {0}")]
    StoreUnavailable(String),
}

/// Which kind of name failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Service,
    Instance,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Service => "service name",
            NameKind::Instance => "instance id",
        })
    }
}

/// What is wrong with a ttl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlProblem {
    NotADuration,
    TooShort,
    TooLong,
}

impl fmt::Display for TtlProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TtlProblem::NotADuration => {
                "it must be a duration string like \"30s\" or \"0s\" (no expiry)"
            }
            TtlProblem::TooShort => "a lease must last at least 1s (or \"0s\" for no expiry)",
            TtlProblem::TooLong => "a lease may last at most 365 days (or \"0s\" for no expiry)",
        })
    }
}

/// A client-supplied value quoted in an error: debug-escaped and cut at 64
/// characters, so an error sentence stays one readable line whatever was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown(String);

impl Shown {
    const MAX: usize = 64;

    pub fn new(value: &str) -> Shown {
        Shown(value.to_owned())
    }
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut cut: String = self.0.chars().take(Shown::MAX).collect();
        if cut.len() < self.0.len() {
            cut.push('…');
        }
        write!(f, "{cut:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_values_are_quoted_and_cut() {
        assert_eq!(Shown::new("a b").to_string(), "\"a b\"");
        let long = "x".repeat(200);
        let shown = Shown::new(&long).to_string();
        assert!(shown.len() < 80, "{shown}");
        assert!(shown.contains('…'));
        assert_eq!(Shown::new("a\nb").to_string(), "\"a\\nb\"");
    }
}
