//! `promtool check metrics` on a /metrics text (Debian's `prometheus` package).

use std::io::Write;
use std::process::{Command, Stdio};

use super::tools;

/// Whether promtool accepts `text`, and what it said. Without promtool
/// (`support::tools` rules): a failure in CI; elsewhere a loud skip of this
/// check, reported as accepted so the rest of the test still runs.
pub fn promtool_accepts(text: &str) -> (bool, String) {
    if !tools::require(&tools::PROMTOOL) {
        return (true, "promtool is not installed: not checked".to_owned());
    }
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|e| {
        panic!("promtool not runnable ({e}); install Debian's `prometheus` package (.ci/run does)")
    });
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .expect("write metrics to promtool");
    }
    let out = child.wait_with_output().expect("promtool runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}
