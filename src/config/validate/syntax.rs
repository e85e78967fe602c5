//! TOML syntax errors: the file cannot be parsed, so there is no document to
//! ask which key an offset belongs to. The key is rebuilt from the text
//! instead: the table header above the error and the `key =` on its line (or
//! the nearest one above, inside a multi-line value). Also the message
//! clean-up and field-name extraction that shape errors share.

use std::ops::Range;
use std::path::Path;

use super::errors::{line_col, ConfigError};

/// One `ConfigError` from a parse error: its span becomes line:column, and
/// the key is rebuilt from the table header above and the key on that line.
pub(super) fn syntax_error(
    origin: &Path,
    text: &str,
    message: &str,
    span: Option<Range<usize>>,
) -> ConfigError {
    let message = clean_message(message);
    let (line, column) = span.as_ref().map_or((0, 0), |s| line_col(text, s.start));
    let key = span.map_or_else(String::new, |s| key_at(text, s.start, &message));
    ConfigError {
        file: origin.to_path_buf(),
        line,
        column,
        key: if key.is_empty() {
            "<document>".into()
        } else {
            key
        },
        message,
    }
}

/// A parser or serde message on one line, in the words of the config file.
pub(super) fn clean_message(message: &str) -> String {
    let message = message.trim().replace('\n', "; ");
    message.replace("expected i64", "expected an integer")
}

/// The field named in "unknown field `x`", "missing field `x`", "duplicate key `x`".
pub(super) fn quoted_field(message: &str) -> Option<String> {
    let named = [
        "unknown field `",
        "missing field `",
        "duplicate key `",
        "duplicate field `",
    ];
    let start = named
        .iter()
        .find_map(|p| message.find(p).map(|i| i + p.len()))?;
    let rest = &message[start..];
    rest.find('`').map(|end| rest[..end].to_owned())
}

fn key_at(text: &str, offset: usize, message: &str) -> String {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let (above, on_line) = before.split_at(line_start);
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let (table, local) = if on_line.trim_start().starts_with('[') {
        // Inside a header, at a key: the header up to that key is the table.
        (
            dotted(on_line.trim_start().trim_start_matches('[')),
            String::new(),
        )
    } else if on_line.trim().is_empty() && header(&text[line_start..line_end]).is_some() {
        // At the start of a header: that table is the subject.
        (current_table(&text[..line_end]), String::new())
    } else {
        let rest = &text[before.len()..line_end];
        (current_table(above), local_key(above, on_line, rest))
    };
    let leaf = quoted_field(message).filter(|f| !local.ends_with(f.as_str()));
    let parts = [table, local, leaf.unwrap_or_default()];
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let parts: Vec<&str> = parts.into_iter().filter(|p| !p.is_empty()).collect();
    parts.join(".")
}

/// The key whose value holds the error, within the current table; `on_line`
/// and `rest` are the error's line before and from the error's offset.
fn local_key(above: &str, on_line: &str, rest: &str) -> String {
    if let Some(key) = assignment_key(on_line) {
        return key; // `key = value`, the error in the value
    }
    let at_key = assignment_key(rest).is_some() || rest.trim().is_empty();
    if at_key && is_key_text(on_line) {
        return dotted(on_line); // at a key, maybe after a dotted prefix like `health_check.`
    }
    // Inside a multi-line array or table: the nearest `key =` above, under the header.
    let lines = above.lines().rev().take_while(|l| header(l).is_none());
    lines.filter_map(assignment_key).next().unwrap_or_default()
}

fn assignment_key(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    (!key.trim().is_empty() && is_key_text(key)).then(|| dotted(key))
}

fn is_key_text(s: &str) -> bool {
    let key_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | '"');
    s.chars().all(key_char)
}

/// `a . b.` → `a.b`.
fn dotted(s: &str) -> String {
    let parts = s.split('.').map(str::trim).filter(|p| !p.is_empty());
    parts.collect::<Vec<_>>().join(".")
}

/// The last `[table]` or `[[array]]` header in `text`, arrays with their index.
fn current_table(text: &str) -> String {
    let headers: Vec<(String, bool)> = text.lines().filter_map(header).collect();
    let Some((name, is_array)) = headers.last() else {
        return String::new();
    };
    if !is_array {
        return name.clone();
    }
    let index = headers.iter().filter(|(n, a)| *a && n == name).count() - 1;
    format!("{name}[{index}]")
}

fn header(line: &str) -> Option<(String, bool)> {
    let line = line.split('#').next().unwrap_or("").trim();
    let (inner, is_array) = match line.strip_prefix("[[") {
        Some(rest) => (rest.strip_suffix("]]")?, true),
        None => (line.strip_prefix('[')?.strip_suffix(']')?, false),
    };
    let plausible = !inner.trim().is_empty() && !inner.contains([',', '=', '[', ']']);
    plausible.then(|| (dotted(inner), is_array))
}
