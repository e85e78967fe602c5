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

/// `switchyard serve --config FILE` with its stdout a pipe that nobody reads
/// (so a writer to stdout blocks once the pipe's buffer is full); returns
/// the child (killed on drop) and its proxy and admin addresses.
pub async fn spawn_with_stdout_unread(
    config: &super::ConfigFile,
) -> (
    tokio::process::Child,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(super::BIN)
        .args(["serve", "--config", &config.path_str()])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn switchyard");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let (mut proxy, mut admin) = (None, None);
    let deadline = tokio::time::Instant::now() + super::WAIT;
    while proxy.is_none() || admin.is_none() {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("switchyard logs its listeners in time")
            .expect("read stderr")
            .expect("switchyard exited before listening");
        proxy = proxy.or(super::parse_listen_line(&line, "proxy listening on "));
        admin = admin.or(super::parse_listen_line(&line, "admin listening on "));
    }
    // Keep draining stderr so that only stdout stays blocked.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (proxy, admin) = (proxy.unwrap(), admin.unwrap());
    super::wait_ready(admin).await;
    (child, proxy, admin)
}
