//! Runtime control of one backend: `PATCH /v1/services/{service}/instances/{id}`
//! with `{"weight": 0..1000}` and/or `{"state": "ready" | "drain"}` (SPEC §7).
//!
//! An [`Overrides`] is what an operator set on a backend: a weight that
//! replaces the declared one, and the drain flag (no new requests, in-flight
//! ones finish, as HAProxy's `set server ... state drain`). A configured
//! backend's overrides are kept by the publisher while the backend stays in
//! the config (reloads keep them, a restart does not); a registered
//! instance's are stored with its registration, so the file and etcd stores
//! keep them, and a re-registration (PUT) keeps them too — they are the
//! operator's, not the instance's. [`Patch::from_json`] parses a body.

use serde_json::{Map, Value};

/// The highest weight (the config's and the registry's range is 0..=1000).
pub const MAX_WEIGHT: u32 = 1000;

/// What an operator set on one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Overrides {
    /// Replaces the declared weight (0 = no new requests).
    pub weight: Option<u32>,
    /// `"state": "drain"`.
    pub drain: bool,
}

impl Overrides {
    /// The weight requests see, given the declared one.
    pub fn weight(self, declared: u32) -> u32 {
        self.weight.unwrap_or(declared)
    }

    /// `"ready"` or `"drain"`.
    pub fn state(self) -> &'static str {
        if self.drain {
            "drain"
        } else {
            "ready"
        }
    }

    pub fn is_empty(self) -> bool {
        self == Overrides::default()
    }

    /// These overrides with `patch` applied.
    pub fn patched(self, patch: Patch) -> Overrides {
        Overrides {
            weight: patch.weight.unwrap_or(self.weight),
            drain: patch.drain.unwrap_or(self.drain),
        }
    }
}

/// A checked PATCH body: each field absent = unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Patch {
    /// `Some(None)`: `"weight": null`, back to the declared weight.
    pub weight: Option<Option<u32>>,
    pub drain: Option<bool>,
}

/// Why a PATCH body was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("the body is not valid JSON: {0}")]
    Json(String),
    #[error("the body must be a JSON object like {{\"weight\": 5}} or {{\"state\": \"drain\"}}")]
    NotAnObject,
    #[error("unknown field `{0}`: a PATCH sets only \"weight\" and \"state\"")]
    UnknownField(String),
    #[error(
        "nothing to change: send \"weight\" (0 to 1000) and/or \"state\" (\"ready\" or \"drain\")"
    )]
    Empty,
    #[error("weight must be an integer from 0 to 1000 (or null for the declared weight), got {0}")]
    Weight(String),
    #[error("state must be \"ready\" or \"drain\", got {0}")]
    State(String),
}

impl Patch {
    pub fn from_json(body: &[u8]) -> Result<Patch, PatchError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| PatchError::Json(e.to_string()))?;
        let Value::Object(mut fields) = value else {
            return Err(PatchError::NotAnObject);
        };
        if let Some(unknown) = fields
            .keys()
            .find(|k| !["weight", "state"].contains(&k.as_str()))
        {
            return Err(PatchError::UnknownField(shown(unknown)));
        }
        let patch = Patch {
            weight: weight(&mut fields)?,
            drain: state(&mut fields)?,
        };
        if patch == Patch::default() {
            return Err(PatchError::Empty);
        }
        Ok(patch)
    }
}

fn weight(fields: &mut Map<String, Value>) -> Result<Option<Option<u32>>, PatchError> {
    match fields.remove("weight") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(w) if w <= u64::from(MAX_WEIGHT) => Ok(Some(Some(w as u32))),
            _ => Err(PatchError::Weight(n.to_string())),
        },
        Some(other) => Err(PatchError::Weight(shown(&other.to_string()))),
    }
}

fn state(fields: &mut Map<String, Value>) -> Result<Option<bool>, PatchError> {
    match fields.remove("state") {
        None => Ok(None),
        Some(Value::String(s)) if s == "ready" => Ok(Some(false)),
        Some(Value::String(s)) if s == "drain" => Ok(Some(true)),
        Some(other) => Err(PatchError::State(shown(&other.to_string()))),
    }
}

/// Client text in a message, cut short and with control characters escaped:
/// an error sentence stays one line whatever was sent (the `admin_json`
/// fuzz target found a raw DEL byte of a field name echoed).
fn shown(s: &str) -> String {
    s.chars().take(64).flat_map(char::escape_debug).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Patch, PatchError> {
        Patch::from_json(body.as_bytes())
    }

    #[test]
    fn bodies_parse() {
        assert_eq!(
            parse(r#"{"weight": 0}"#),
            Ok(Patch {
                weight: Some(Some(0)),
                drain: None
            })
        );
        assert_eq!(
            parse(r#"{"state": "drain", "weight": 1000}"#),
            Ok(Patch {
                weight: Some(Some(1000)),
                drain: Some(true)
            })
        );
        assert_eq!(
            parse(r#"{"state": "ready", "weight": null}"#),
            Ok(Patch {
                weight: Some(None),
                drain: Some(false)
            })
        );
    }

    #[test]
    fn bad_bodies_are_refused() {
        let cases = [
            ("", "not valid JSON"),
            ("[]", "JSON object"),
            ("{}", "nothing to change"),
            (r#"{"weight": 1001}"#, "from 0 to 1000"),
            (r#"{"weight": -1}"#, "from 0 to 1000"),
            (r#"{"weight": 1.5}"#, "from 0 to 1000"),
            (r#"{"weight": "5"}"#, "from 0 to 1000"),
            (r#"{"state": "down"}"#, "\"ready\" or \"drain\""),
            (r#"{"state": 1}"#, "\"ready\" or \"drain\""),
            (r#"{"wieght": 1}"#, "unknown field `wieght`"),
            ("{\"a\u{7f}b\\nc\": 1}", "unknown field `a\\u{7f}b\\nc`"),
        ];
        for (body, fragment) in cases {
            let e = parse(body).expect_err(body);
            assert!(e.to_string().contains(fragment), "{body}: {e}");
        }
    }

    #[test]
    fn patches_compose() {
        let o = Overrides::default().patched(parse(r#"{"weight": 0}"#).unwrap_or_default());
        assert_eq!((o.weight(5), o.state()), (0, "ready"));
        let o = o.patched(parse(r#"{"state": "drain"}"#).unwrap_or_default());
        assert_eq!((o.weight(5), o.state()), (0, "drain"));
        let o = o.patched(parse(r#"{"weight": null, "state": "ready"}"#).unwrap_or_default());
        assert!(o.is_empty());
        assert_eq!(o.weight(5), 5);
    }
}
