//! How a problem is reported: [`ConfigError`] (`FILE:LINE:COL: KEY: MESSAGE`),
//! the list [`ConfigErrors`], and the two spelling helpers every error shares:
//! byte offset → line:column, and one key segment as written in a dotted key.

use std::fmt;
use std::path::PathBuf;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{}:{}: {}: {}", .file.display(), .line, .column, .key, .message)]
pub struct ConfigError {
    /// The file (or the `origin` given to `Config::from_toml_str`), as given.
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no position (an unreadable file).
    pub line: usize,
    /// 1-based, in characters; 0 when `line` is 0.
    pub column: usize,
    /// Dotted key path, e.g. `services.users.backends[1].address`.
    pub key: String,
    /// One sentence saying what is wrong.
    pub message: String,
}

/// Every problem found in one load, in file order. Displays one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

// === impl ConfigErrors ===

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// === spelling ===

/// 1-based line and character column of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// One segment of a dotted key: bare when TOML allows it (`users`), quoted
/// otherwise (`"users.v2"`), so the key can be pasted back into the file.
pub(super) fn key_segment(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_one_based_lines_and_character_columns() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, text.find('=').unwrap()), (1, 3));
        assert_eq!(line_col(text, text.rfind('=').unwrap()), (2, 4));
        assert_eq!(line_col(text, 10_000), (3, 1));
    }

    #[test]
    fn key_segments_are_quoted_only_when_needed() {
        assert_eq!(key_segment("users_v2-a"), "users_v2-a");
        assert_eq!(key_segment("users.v2"), "\"users.v2\"");
        assert_eq!(key_segment("bad name"), "\"bad name\"");
        assert_eq!(key_segment(""), "\"\"");
    }
}
