//! The shape pass: TOML text in, the raw mirror ([`RawConfig`]) out, with
//! *every* shape error found (unknown key, wrong type, unknown variant,
//! missing field), not just serde's first.
//!
//! The text is parsed once into a `toml_edit` document that keeps the byte
//! span of every key and value (a syntax error stops here: one error, the
//! file cannot be read further). Then, in a loop, the document is
//! deserialized into the raw mirror; each error is recorded at its own
//! line:column, under the dotted key of the document path at its span
//! ([`super::locate`]), and the key holding it is removed before the next
//! try. The mirror's own `deny_unknown_fields` and field types stay the one
//! schema: nothing here lists keys, so nothing can drift from `raw.rs`.
//! Each round removes a key, so the loop ends; an error that no removal can
//! fix (one without a position) ends it without a mirror.

use std::path::Path;

use serde::Deserialize;
use toml_edit::{Document, DocumentMut};

use super::errors::{key_segment, line_col, ConfigError};
use super::locate::{path_at, remove_key, spell, Seg};
use super::raw::RawConfig;
use super::syntax::{clean_message, quoted_field, syntax_error};

/// What the shape pass found.
pub(super) struct Shape {
    /// The mirror of what is left once every faulty key is removed; `None`
    /// when an error could not be recovered from (`errors` is then non-empty).
    pub raw: Option<RawConfig>,
    /// One per faulty key, in the order found.
    pub errors: Vec<ConfigError>,
    /// The dotted keys removed, so that later checks know their defaults
    /// are stand-ins.
    pub dropped: Vec<String>,
}

/// Parses `text`; `Err` is the one syntax error.
pub(super) fn read(text: &str, origin: &Path) -> Result<Shape, ConfigError> {
    let doc =
        Document::parse(text).map_err(|e| syntax_error(origin, text, e.message(), e.span()))?;
    let mut table = doc.into_table();
    let mut shape = Shape {
        raw: None,
        errors: Vec::new(),
        dropped: Vec::new(),
    };
    let mut dropped: Vec<Vec<Seg>> = Vec::new();
    loop {
        let document = DocumentMut::from(table.clone());
        let error = match RawConfig::deserialize(toml_edit::de::Deserializer::from(document)) {
            Ok(raw) => {
                shape.raw = Some(raw);
                shape.dropped = dropped.iter().map(|p| spell(p)).collect();
                return Ok(shape);
            }
            Err(error) => error,
        };
        let message = clean_message(error.message());
        let span = error.span();
        let path = span.as_ref().and_then(|s| path_at(&table, s.start));
        if !follows_a_drop(path.as_deref(), &message, &dropped) {
            let (line, column) = span.map_or((0, 0), |s| line_col(text, s.start));
            shape.errors.push(ConfigError {
                file: origin.to_path_buf(),
                line,
                column,
                key: error_key(path.as_deref(), &message),
                message,
            });
        }
        let Some(removed) = path.and_then(|p| remove_key(&mut table, &p)) else {
            shape.dropped = dropped.iter().map(|p| spell(p)).collect();
            return Ok(shape);
        };
        dropped.push(removed);
    }
}

/// A table that lost a key to an earlier error is not also reported for a
/// missing field: the dropped key is most likely the one meant (`servic` for
/// `service`, or `service = 5`), and its error already says so.
fn follows_a_drop(path: Option<&[Seg]>, message: &str, dropped: &[Vec<Seg>]) -> bool {
    let Some(table) = path.filter(|_| message.starts_with("missing field")) else {
        return false;
    };
    let child_of_table = |d: &&Vec<Seg>| d.len() == table.len() + 1 && d.starts_with(table);
    dropped.iter().any(|d| child_of_table(&d))
}

/// The document path, plus the field a message names when the path stops
/// above it ("missing field `certs`" at the `[[proxy.tls]]` table).
fn error_key(path: Option<&[Seg]>, message: &str) -> String {
    let mut key = path.map(spell).unwrap_or_default();
    let named = quoted_field(message);
    let last = path.and_then(<[Seg]>::last);
    if let Some(field) = named.filter(|f| last != Some(&Seg::Key(f.clone()))) {
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(&key_segment(&field));
    }
    if key.is_empty() {
        key = "<document>".into();
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_ok(text: &str) -> Shape {
        read(text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn shown(shape: &Shape) -> Vec<String> {
        let errors = shape.errors.iter();
        errors
            .map(|e| format!("{}:{} {}", e.line, e.column, e.key))
            .collect()
    }

    #[test]
    fn a_clean_file_has_no_errors_and_a_mirror() {
        let shape = read_ok("[proxy]\nlisten = [\"127.0.0.1:0\"]\n");
        assert!(shape.errors.is_empty() && shape.dropped.is_empty());
        assert!(shape.raw.is_some());
    }

    #[test]
    fn every_unknown_key_and_wrong_type_is_found_and_dropped() {
        let text = "[proxy]\nlisen = 1\nmax_headers = \"many\"\n\
                    [services.a]\nbalanse = 2\nbackends = [{ address = \"x:1\", wieght = 2 }]\n\
                    [services.a.helth_check]\npath = \"/\"\n";
        let shape = read_ok(text);
        let mut found = shown(&shape);
        found.sort();
        let expected = [
            "2:1 proxy.lisen",
            "3:15 proxy.max_headers",
            "5:1 services.a.balanse",
            "6:32 services.a.backends[0].wieght",
            "7:13 services.a.helth_check",
        ];
        assert_eq!(found, expected);
        assert!(shape.raw.is_some());
        assert_eq!(shape.dropped.len(), 5);
        assert!(shape.dropped.contains(&"proxy.max_headers".to_owned()));
    }

    #[test]
    fn a_missing_field_names_the_field_and_drops_its_table() {
        let shape = read_ok("[[routes]]\nhost = \"a\"\n[[routes]]\nservice = \"b\"\n");
        assert_eq!(shown(&shape), ["1:1 routes[0].service"]);
        assert_eq!(shape.dropped, ["routes"]);
        let raw = shape.raw.expect("recovered");
        assert!(raw.routes.is_empty());
    }

    #[test]
    fn a_syntax_error_is_the_only_error() {
        let e = read("[proxy]\nlisten = [\n", Path::new("t.toml")).err();
        let e = e.expect("syntax error");
        assert_eq!((e.line, e.key.as_str()), (2, "proxy.listen"));
    }
}
