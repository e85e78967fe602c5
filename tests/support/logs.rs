//! Access-log helpers: read a log file's lines, waiting (bounded) for them.

use std::path::Path;
use std::time::Duration;

use super::eventually;

/// The complete lines of `path` now (none if it does not exist).
pub fn log_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Waits up to `limit` until `path` holds at least `n` lines; returns them all.
pub async fn wait_log_lines(path: &Path, n: usize, limit: Duration) -> Vec<String> {
    eventually(
        limit,
        &format!("{n} lines in {}", path.display()),
        || async { log_lines(path).len() >= n },
    )
    .await;
    log_lines(path)
}

/// The lines of `path` parsed as JSON objects (panics on a line that is not).
pub fn json_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}
