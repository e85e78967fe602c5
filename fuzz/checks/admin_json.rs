//! The `admin_json` oracle: the admin API's JSON bodies, as the handlers in
//! src/admin/instances.rs parse them — `Registration::from_json` (PUT
//! .../instances/{id}) and `Patch::from_json` (PATCH weight / drain) — and
//! the text checks they and the routes use (`parse_ttl`, `check_name`).
//!
//! On any bytes: no panic; every refusal is one short line (the admin API
//! sends it as `{"error": ...}` and logs it: client text must be quoted and
//! cut, never echoed whole); and what is accepted round-trips: written
//! back as JSON, it parses to the same value.
//!
//! Shared by `fuzz/fuzz_targets/admin_json.rs` and `tests/fuzz_regressions.rs`.

use serde_json::{json, Value};
use switchyard::overrides::Patch;
use switchyard::registry::instance::{check_name, format_ttl, parse_ttl};
use switchyard::registry::{NameKind, Registration};

/// Longest error sentence: the fixed text plus a value quoted by `Shown`
/// (64 characters, each escaped to at most 10 bytes) and serde_json's
/// position.
const MAX_MESSAGE: usize = 1024;

/// Panics when parsing `data` as an admin body breaks a property.
pub fn check(data: &[u8]) {
    match Registration::from_json(data) {
        Ok(registration) => {
            let back = registration_json(&registration).to_string();
            let again = Registration::from_json(back.as_bytes());
            assert_eq!(
                again.as_ref().ok(),
                Some(&registration),
                "a registration does not round-trip through {back}: {again:?}"
            );
        }
        Err(e) => one_line(&e.to_string()),
    }
    match Patch::from_json(data) {
        Ok(patch) => {
            let back = patch_json(&patch).to_string();
            let again = Patch::from_json(back.as_bytes());
            assert_eq!(
                again,
                Ok(patch),
                "a patch does not round-trip through {back}"
            );
        }
        Err(e) => one_line(&e.to_string()),
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_ttl(text) {
        Ok(ttl) => {
            let shown = format_ttl(ttl);
            let again = parse_ttl(&shown).ok();
            assert_eq!(again, Some(ttl), "ttl {text:?} shown as {shown:?}");
        }
        Err(e) => one_line(&e.to_string()),
    }
    for kind in [NameKind::Service, NameKind::Instance] {
        if let Err(e) = check_name(kind, text) {
            one_line(&e.to_string());
        }
    }
}

/// A registration as a client would send it.
fn registration_json(r: &Registration) -> Value {
    json!({
        "address": r.address,
        "weight": r.weight,
        "ttl": r.ttl.map(format_ttl),
        "metadata": r.metadata,
    })
}

fn patch_json(p: &Patch) -> Value {
    let mut body = serde_json::Map::new();
    if let Some(weight) = p.weight {
        body.insert("weight".into(), json!(weight));
    }
    if let Some(drain) = p.drain {
        body.insert("state".into(), json!(if drain { "drain" } else { "ready" }));
    }
    Value::Object(body)
}

/// An error sentence for an operator: one line, bounded, no control bytes.
pub fn one_line(message: &str) {
    assert!(!message.is_empty(), "an empty error");
    assert!(
        message.len() <= MAX_MESSAGE,
        "an error of {} bytes echoes the input: {}…",
        message.len(),
        message.chars().take(200).collect::<String>()
    );
    assert!(
        !message.chars().any(char::is_control),
        "an error with a control character: {message:?}"
    );
}
