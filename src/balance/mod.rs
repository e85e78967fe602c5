//! Load-balancing policies: selection only, no I/O and no health logic.
//!
//! A policy is built once per table rebuild over the service's *ready*
//! backends (healthy, not ejected, not draining) from a [`Build`], and then
//! picks an index into that same slice from a [`PickContext`]: the ready
//! slice, the indices a retry has already tried (never picked again), and the
//! request's hashed key when the service balances by one. What a policy needs
//! to know of a backend's live state (in-flight count, latency, slow-start
//! ramp) it reads from the [`Backend`] itself, whose state outlives rebuilds.
//!
//! Adding a policy is one new file implementing [`Policy`] and one line in
//! the [`policies!`] list below: the list declares the module, the config
//! spelling (the [`BalancePolicy`] enum that the config deserialises
//! directly) and the statically dispatched [`Balancer`] arm.

pub mod key;
pub mod sticky;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use serde::Deserialize;

use crate::backend::Backend;
use crate::config::ServiceConfig;

/// What one pick sees.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    /// The backends the table allows, in the order the policy was built over.
    pub ready: &'a [Arc<Backend>],
    /// Indices into `ready` this request has tried or skipped already.
    pub tried: &'a [usize],
    /// The request's key, hashed (`hash_key`), when the service has one and
    /// the request carries it.
    pub key: Option<u64>,
}

impl<'a> PickContext<'a> {
    pub fn new(ready: &'a [Arc<Backend>], tried: &'a [usize]) -> PickContext<'a> {
        PickContext {
            ready,
            tried,
            key: None,
        }
    }

    pub fn with_key(self, key: Option<u64>) -> PickContext<'a> {
        PickContext { key, ..self }
    }

    fn is_tried(&self, index: usize) -> bool {
        self.tried.contains(&index)
    }
}

/// What a policy is built from, once per table rebuild.
#[derive(Debug, Clone, Copy)]
pub struct Build<'a> {
    pub ready: &'a [Arc<Backend>],
    pub settings: &'a ServiceConfig,
    /// The service's position, shared across rebuilds (round robin's
    /// rotation, the samplers' sequence).
    pub cursor: &'a Arc<AtomicUsize>,
}

impl Build<'_> {
    /// `slow_start` in milliseconds (0 = off).
    fn slow_start_ms(&self) -> u64 {
        u64::try_from(self.settings.slow_start.as_millis()).unwrap_or(u64::MAX)
    }
}

/// The one seam: a policy built for a ready set, choosing among it.
pub trait Policy: std::fmt::Debug + Send + Sync + Sized {
    fn build(build: &Build<'_>) -> Self;
    /// An index into `cx.ready` not in `cx.tried`, or `None` when every
    /// ready backend was tried. No allocation.
    fn pick(&self, cx: &PickContext<'_>) -> Option<usize>;
}

/// The policy list: `module::Type = "config spelling"`. One line per policy
/// declares its module and its [`BalancePolicy`] and [`Balancer`] variants.
macro_rules! policies {
    ($($module:ident :: $policy:ident = $name:literal, $doc:literal;)+) => {
        $(mod $module; pub use $module::$policy;)+

        /// `balance = "..."`, deserialised from the config as is.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
        pub enum BalancePolicy {
            $(#[doc = $doc] #[serde(rename = $name)] $policy,)+
        }

        impl BalancePolicy {
            /// The config spelling, also used in the admin API.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(BalancePolicy::$policy => $name,)+
                }
            }
        }

        /// A built policy, dispatched statically.
        #[derive(Debug)]
        pub enum Balancer {
            $($policy($policy),)+
        }

        impl Balancer {
            /// Build `policy` for this exact ready slice (weights are read now).
            pub fn new(policy: BalancePolicy, build: &Build<'_>) -> Balancer {
                match policy {
                    $(BalancePolicy::$policy => Balancer::$policy(<$policy as Policy>::build(build)),)+
                }
            }

            pub fn pick(&self, cx: &PickContext<'_>) -> Option<usize> {
                match self {
                    $(Balancer::$policy(p) => p.pick(cx),)+
                }
            }
        }
    };
}

policies! {
    round_robin::RoundRobin = "round_robin", "Smooth weighted round robin.";
    least_conn::LeastConn = "least_conn", "Fewest in-flight requests per unit of weight.";
    p2c_ewma::P2cEwma = "p2c_ewma", "Power of two choices over peak-EWMA latency x load.";
    hash::Hash = "hash", "Consistent hashing of a request key, with bounded load.";
}

/// The first index not yet tried, scanning from `start`; the fallback when a
/// policy's own choice was already tried.
fn first_untried(len: usize, start: usize, tried: &[usize]) -> Option<usize> {
    (0..len)
        .map(|k| (start + k) % len)
        .find(|i| !tried.contains(i))
}

/// A well-mixed 64-bit value from a counter (splitmix64): the policies'
/// lock-free randomness, one shared `fetch_add` per pick.
fn mix(n: u64) -> u64 {
    let mut x = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Two distinct indices below `len` (≥ 2) from one random word.
fn two_choices(x: u64, len: usize) -> (usize, usize) {
    let a = (x % len as u64) as usize;
    let b = (a + 1 + ((x >> 32) % (len as u64 - 1)) as usize) % len;
    (a, b)
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::config::Config;

    /// Service settings for policy unit tests (default but for `extra`).
    pub fn settings(extra: &str) -> ServiceConfig {
        let toml = format!("[services.a]\n{extra}\n");
        let config = Config::from_toml_str(&toml, std::path::Path::new("t.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        config.services.get("a").cloned().unwrap_or_default()
    }

    /// Build `policy` over `ready` with `settings`.
    pub fn build<P: Policy>(ready: &[Arc<Backend>], settings: &ServiceConfig, seed: usize) -> P {
        let cursor = Arc::new(AtomicUsize::new(seed));
        P::build(&Build {
            ready,
            settings,
            cursor: &cursor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_choices_are_distinct_and_in_range() {
        for n in 0..10_000 {
            let (a, b) = two_choices(mix(n), 17);
            assert!(a < 17 && b < 17 && a != b);
        }
    }

    #[test]
    fn every_policy_has_its_config_spelling() {
        for name in ["round_robin", "least_conn", "p2c_ewma", "hash"] {
            let parsed: BalancePolicy =
                serde_json::from_value(serde_json::json!(name)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.as_str(), name);
        }
    }
}
