//! A registered instance, and the validation of what clients send.
//!
//! [`Registration::from_json`] turns a PUT body into checked values with one
//! clear error per mistake (wrong type, missing address, weight or ttl out of
//! range, unknown field). It checks the shape only; the address is resolved
//! and checked against the network policy by the registry, since that needs
//! I/O and the running config. Everything here is pure and unit-tested.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

use super::error::{NameKind, RegistryError, Shown, TtlProblem};
use crate::overrides::Overrides;

/// Longest service name or instance id (SPEC §3).
pub const MAX_NAME: usize = 128;
/// Weights a registration may ask for (the config's range).
pub const WEIGHTS: std::ops::RangeInclusive<u64> = 0..=1000;
/// Shortest lease: a shorter one would expire between two heartbeats.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest lease; anything longer is a mistake ("0s" means no expiry).
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// One registered instance, immutable: a renewal makes a new one.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub service: Arc<str>,
    pub id: Arc<str>,
    /// `host:port` as registered; the backend's metric label.
    pub address: Arc<str>,
    /// Where connections go: resolved at registration, IPv4-mapped forms reduced.
    pub resolved: SocketAddr,
    /// 0..=1000, as registered (0 = no new requests).
    pub weight: u32,
    /// The lease length; zero = no expiry.
    pub ttl: Duration,
    /// Wall-clock end of the lease (persisted as such, so a restart keeps the
    /// remaining time); `None` when `ttl` is zero.
    pub expires_at: Option<SystemTime>,
    /// Whatever JSON object the client attached; stored and returned as is.
    pub metadata: Arc<Map<String, Value>>,
    /// What an operator set with `PATCH` (weight, drain); kept across
    /// re-registrations, stored with the registration.
    pub overrides: Overrides,
}

impl Instance {
    /// The JSON the admin API answers with.
    pub fn to_json(&self) -> Value {
        json!({
            "service": &*self.service,
            "id": &*self.id,
            "address": &*self.address,
            "weight": self.overrides.weight(self.weight),
            "state": self.overrides.state(),
            "ttl": format_ttl(self.ttl),
            "expires_at": self.expires_at.map(format_time),
            "metadata": &*self.metadata,
        })
    }

    /// Same registration apart from the lease's end: re-sending it changes
    /// nothing the proxy or a watcher sees.
    pub fn same_registration(&self, other: &Instance) -> bool {
        self.address == other.address
            && self.resolved == other.resolved
            && self.weight == other.weight
            && self.ttl == other.ttl
            && self.metadata == other.metadata
            && self.overrides == other.overrides
    }
}

/// `metadata` behind an `Arc`; the empty object (most registrations) is one
/// shared allocation rather than one per instance.
pub fn shared_metadata(metadata: Map<String, Value>) -> Arc<Map<String, Value>> {
    static EMPTY: std::sync::LazyLock<Arc<Map<String, Value>>> =
        std::sync::LazyLock::new(|| Arc::new(Map::new()));
    if metadata.is_empty() {
        Arc::clone(&EMPTY)
    } else {
        Arc::new(metadata)
    }
}

/// RFC 3339 in UTC with milliseconds, as the admin API and the file store write it.
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `"30s"`, `"1m 30s"`, `"0s"`.
pub fn format_ttl(ttl: Duration) -> String {
    if ttl.is_zero() {
        return "0s".to_owned();
    }
    humantime::format_duration(ttl).to_string()
}

/// A PUT body, checked for shape and ranges.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub address: String,
    /// Default 1.
    pub weight: u32,
    /// `None` = the registry's `default_ttl`.
    pub ttl: Option<Duration>,
    /// Default `{}`.
    pub metadata: Map<String, Value>,
}

impl Registration {
    /// Parse `{"address": ..., "weight": ..., "ttl": ..., "metadata": ...}`.
    pub fn from_json(body: &[u8]) -> Result<Registration, RegistryError> {
        let value: Value = serde_json::from_slice(body).map_err(RegistryError::Json)?;
        let Value::Object(mut fields) = value else {
            return Err(RegistryError::NotAnObject);
        };
        let known = ["address", "weight", "ttl", "metadata"];
        if let Some(unknown) = fields.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(RegistryError::UnknownField(Shown::new(unknown)));
        }
        Ok(Registration {
            address: address_field(fields.remove("address"))?,
            weight: weight_field(fields.remove("weight"))?,
            ttl: ttl_field(fields.remove("ttl"))?,
            metadata: metadata_field(fields.remove("metadata"))?,
        })
    }
}

fn address_field(value: Option<Value>) -> Result<String, RegistryError> {
    match value {
        None | Some(Value::Null) => Err(RegistryError::MissingAddress),
        Some(Value::String(s)) if s.trim().is_empty() => Err(RegistryError::MissingAddress),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(wrong_type("address", "a string like \"127.0.0.1:9001\"")),
    }
}

fn weight_field(value: Option<Value>) -> Result<u32, RegistryError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(1);
    };
    let Value::Number(n) = &value else {
        return Err(wrong_type("weight", "an integer from 0 to 1000"));
    };
    match n.as_u64() {
        Some(w) if WEIGHTS.contains(&w) => Ok(w as u32),
        _ => Err(RegistryError::Weight(Shown::new(&n.to_string()))),
    }
}

fn ttl_field(value: Option<Value>) -> Result<Option<Duration>, RegistryError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_ttl(&s).map(Some),
        Some(_) => Err(wrong_type(
            "ttl",
            "a duration string like \"30s\" (\"0s\" = no expiry)",
        )),
    }
}

fn metadata_field(value: Option<Value>) -> Result<Map<String, Value>, RegistryError> {
    match value {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(wrong_type("metadata", "a JSON object")),
    }
}

fn wrong_type(field: &'static str, expected: &'static str) -> RegistryError {
    RegistryError::WrongType { field, expected }
}

/// A lease length: `"0s"` (no expiry) or 1 s to 365 days.
pub fn parse_ttl(s: &str) -> Result<Duration, RegistryError> {
    let problem = |problem| RegistryError::Ttl {
        value: Shown::new(s),
        problem,
    };
    let ttl = humantime::parse_duration(s.trim()).map_err(|_| problem(TtlProblem::NotADuration))?;
    if ttl.is_zero() {
        Ok(ttl)
    } else if ttl < MIN_TTL {
        Err(problem(TtlProblem::TooShort))
    } else if ttl > MAX_TTL {
        Err(problem(TtlProblem::TooLong))
    } else {
        Ok(ttl)
    }
}

/// A service name or instance id: 1 to 128 of `[A-Za-z0-9._-]` (SPEC §3).
pub fn check_name(kind: NameKind, s: &str) -> Result<(), RegistryError> {
    let valid = !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(RegistryError::BadName {
            kind,
            value: Shown::new(s),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Registration, RegistryError> {
        Registration::from_json(body.as_bytes())
    }

    #[test]
    fn a_full_body_parses() {
        let r = parse(r#"{"address": "127.0.0.1:9001", "weight": 5, "ttl": "10s", "metadata": {"zone": "a"}}"#)
            .expect("valid");
        assert_eq!(r.address, "127.0.0.1:9001");
        assert_eq!(r.weight, 5);
        assert_eq!(r.ttl, Some(Duration::from_secs(10)));
        assert_eq!(r.metadata.get("zone"), Some(&json!("a")));
    }

    #[test]
    fn defaults_apply() {
        let r = parse(r#"{"address": "h:1"}"#).expect("valid");
        assert_eq!((r.weight, r.ttl, r.metadata.len()), (1, None, 0));
        let r = parse(r#"{"address": "h:1", "ttl": "0s"}"#).expect("valid");
        assert_eq!(r.ttl, Some(Duration::ZERO));
    }

    /// Whether an error is the one a case expects.
    type Expect = fn(&RegistryError) -> bool;

    #[test]
    fn every_bad_body_has_its_error() {
        let cases: &[(&str, Expect)] = &[
            ("{", |e| matches!(e, RegistryError::Json(_))),
            ("", |e| matches!(e, RegistryError::Json(_))),
            ("[1]", |e| matches!(e, RegistryError::NotAnObject)),
            ("{}", |e| matches!(e, RegistryError::MissingAddress)),
            (r#"{"address": ""}"#, |e| {
                matches!(e, RegistryError::MissingAddress)
            }),
            (r#"{"address": 9001}"#, |e| {
                matches!(
                    e,
                    RegistryError::WrongType {
                        field: "address",
                        ..
                    }
                )
            }),
            (r#"{"address": "h:1", "weight": "3"}"#, |e| {
                matches!(
                    e,
                    RegistryError::WrongType {
                        field: "weight",
                        ..
                    }
                )
            }),
            (r#"{"address": "h:1", "weight": -1}"#, |e| {
                matches!(e, RegistryError::Weight(_))
            }),
            (r#"{"address": "h:1", "weight": 1001}"#, |e| {
                matches!(e, RegistryError::Weight(_))
            }),
            (r#"{"address": "h:1", "weight": 1.5}"#, |e| {
                matches!(e, RegistryError::Weight(_))
            }),
            (r#"{"address": "h:1", "weight": 1e30}"#, |e| {
                matches!(e, RegistryError::Weight(_))
            }),
            (r#"{"address": "h:1", "ttl": 30}"#, |e| {
                matches!(e, RegistryError::WrongType { field: "ttl", .. })
            }),
            (r#"{"address": "h:1", "ttl": "soon"}"#, |e| {
                matches!(
                    e,
                    RegistryError::Ttl {
                        problem: TtlProblem::NotADuration,
                        ..
                    }
                )
            }),
            (r#"{"address": "h:1", "ttl": "-5s"}"#, |e| {
                matches!(
                    e,
                    RegistryError::Ttl {
                        problem: TtlProblem::NotADuration,
                        ..
                    }
                )
            }),
            (r#"{"address": "h:1", "ttl": "500ms"}"#, |e| {
                matches!(
                    e,
                    RegistryError::Ttl {
                        problem: TtlProblem::TooShort,
                        ..
                    }
                )
            }),
            (r#"{"address": "h:1", "ttl": "400days"}"#, |e| {
                matches!(
                    e,
                    RegistryError::Ttl {
                        problem: TtlProblem::TooLong,
                        ..
                    }
                )
            }),
            (r#"{"address": "h:1", "metadata": []}"#, |e| {
                matches!(
                    e,
                    RegistryError::WrongType {
                        field: "metadata",
                        ..
                    }
                )
            }),
            (
                r#"{"address": "h:1", "adress": "x"}"#,
                |e| matches!(e, RegistryError::UnknownField(f) if *f == Shown::new("adress")),
            ),
        ];
        for (body, expected) in cases {
            match parse(body) {
                Ok(r) => panic!("{body} was accepted: {r:?}"),
                Err(e) => assert!(expected(&e), "{body}: unexpected {e:?}"),
            }
        }
    }

    #[test]
    fn names_are_checked() {
        for good in ["a", "users", "web-1.eu_west", &"x".repeat(128)] {
            assert!(check_name(NameKind::Service, good).is_ok(), "{good}");
        }
        for bad in ["", "a/b", "a b", "a%20b", "ü", &"x".repeat(129)] {
            assert!(check_name(NameKind::Instance, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ttls_round_trip_through_text() {
        for ttl in [0, 1, 30, 90, 3600] {
            let ttl = Duration::from_secs(ttl);
            assert_eq!(parse_ttl(&format_ttl(ttl)).ok(), Some(ttl));
        }
        assert_eq!(parse_ttl("365days").ok(), Some(MAX_TTL));
    }

    #[test]
    fn instance_json_has_expiry_in_rfc3339() {
        let instance = Instance {
            service: "users".into(),
            id: "a".into(),
            address: "127.0.0.1:9001".into(),
            resolved: "127.0.0.1:9001".parse().unwrap(),
            weight: 2,
            ttl: Duration::from_secs(30),
            expires_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(86_400)),
            metadata: Arc::new(Map::new()),
            overrides: Overrides::default(),
        };
        let v = instance.to_json();
        assert_eq!(v["expires_at"], "1970-01-02T00:00:00.000Z");
        assert_eq!(v["ttl"], "30s");
        assert_eq!(v["weight"], 2);
        let forever = Instance {
            ttl: Duration::ZERO,
            expires_at: None,
            ..instance
        };
        assert_eq!(forever.to_json()["expires_at"], Value::Null);
    }
}
