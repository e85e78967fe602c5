//! The command line: `--version`, `check` (exit codes, every error with
//! FILE:LINE:COL: KEY: MESSAGE), log formats of `serve`.

mod support;

use std::path::Path;

use support::*;
use switchyard::config::Config;

const GOOD: &str = r#"# a small but complete config
[proxy]
listen = ["127.0.0.1:0"]
max_headers = 50

[admin]
listen = "127.0.0.1:0"

[services.users]
balance = "least_conn"
backends = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }]
request_timeout = "2s"

[[routes]]
host = "api.example.com"
path_prefix = "/users"
service = "users"
strip_prefix = true
"#;

/// `lisen` (a typo) on line 3.
const TYPO: &str =
    "# line 1\n[proxy]\nlisen = [\"127.0.0.1:0\"]\n\n[admin]\nlisten = \"127.0.0.1:0\"\n";

/// Stderr lines mentioning `needle`.
fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

/// Asserts some line reads `FILE:LINE:COL: ...KEY...`.
fn assert_error_line(stderr: &str, file: &str, line: usize, key: &str) {
    let prefix = format!("{file}:{line}:");
    let found = stderr.lines().any(|l| {
        let Some(rest) = l.find(&prefix).map(|i| &l[i + prefix.len()..]) else {
            return false;
        };
        let col: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        !col.is_empty() && rest[col.len()..].starts_with(": ") && rest.contains(key)
    });
    assert!(
        found,
        "no error line `{prefix}COL: ...{key}...` in:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_prints_the_crate_version() {
    let out = run_binary(&["--version"]).await;
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version printed {stdout:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_a_good_file() {
    let config = ConfigFile::new(GOOD);
    let out = run_binary(&["check", "--config", &config.path_str()]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_an_unknown_key_naming_file_line_and_key() {
    let config = ConfigFile::new(TYPO);
    let path = config.path_str();
    let out = run_binary(&["check", "--config", &path]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert_error_line(&stderr, &path, 3, "lisen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_every_unknown_key() {
    let text = "[proxy]\nlisten = [\"127.0.0.1:0\"]\nlisen = \"x\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[services.users]\nbackends = [\"127.0.0.1:9001\"]\nbalanse = \"round_robin\"\n";
    let config = ConfigFile::new(text);
    let path = config.path_str();
    let out = run_binary(&["check", "--config", &path]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert_error_line(&stderr, &path, 3, "lisen");
    assert_error_line(&stderr, &path, 10, "balanse");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_every_invalid_value() {
    let text = "[proxy]\nlisten = [\"127.0.0.1:0\"]\n\n[services.users]\nbackends = [\"127.0.0.1:9001\"]\nrequest_timeout = \"soon\"\n\n[services.orders]\nbackends = [\"127.0.0.1:9002\"]\nconnect_timeout = \"later\"\n";
    let config = ConfigFile::new(text);
    let path = config.path_str();
    let out = run_binary(&["check", "--config", &path]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert_error_line(&stderr, &path, 6, "request_timeout");
    assert_error_line(&stderr, &path, 10, "connect_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_unknown_keys_and_invalid_values_together() {
    let text = "[proxy]\nlisten = [\"127.0.0.1:0\"]\nlisen = \"x\"\n\n[services.users]\nbackends = [\"127.0.0.1:9001\"]\nrequest_timeout = \"soon\"\n";
    let config = ConfigFile::new(text);
    let path = config.path_str();
    let out = run_binary(&["check", "--config", &path]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert_error_line(&stderr, &path, 3, "lisen");
    assert_error_line(&stderr, &path, 7, "request_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_on_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let path = path.to_string_lossy();
    let out = run_binary(&["check", "--config", &path]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check of a missing file passed");
    assert!(
        !lines_with(&stderr, "absent.toml").is_empty(),
        "the error should name the file:\n{stderr}"
    );
}

#[test]
fn config_errors_display_file_line_col_key_message() {
    let origin = Path::new("/etc/switchyard/test.toml");
    let errors = Config::from_toml_str(TYPO, origin).expect_err("typo accepted");
    let shown = errors.to_string();
    assert_error_line(&shown, "/etc/switchyard/test.toml", 3, "lisen");
    let line = lines_with(&shown, "lisen")[0];
    // FILE:LINE:COL: KEY: MESSAGE — a message follows the key.
    let after_key = line.split("lisen").nth(1).unwrap_or("");
    assert!(
        after_key.contains(": ") && after_key.trim_start_matches([':', ' ', '`', '"']).len() > 3,
        "no message after the key: {line:?}"
    );
}

#[test]
fn good_config_parses_in_the_library() {
    let config =
        Config::from_toml_str(GOOD, Path::new("good.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.routes.len(), 1);
    assert_eq!(config.services["users"].backends.len(), 2);
    assert_eq!(config.services["users"].backends[1].weight, 3);
    assert_eq!(config.routes[0].host.as_deref(), Some("api.example.com"));
    assert!(config.routes[0].strip_prefix);
}

fn serve_config() -> ConfigFile {
    ConfigFile::new(&base_toml())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_listening_lines_without_colour() {
    let config = serve_config();
    let proc = spawn_serve(&config).await;
    let stderr = proc.stderr();
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escapes on a non-tty stderr:\n{stderr:?}"
    );
    assert_eq!(get(proc.admin, "/healthz").await.status, 200);
    assert!(proc.proxy().port() != 0);
}

fn assert_all_json(stderr: &str) {
    assert!(!stderr.trim().is_empty());
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line:?}"));
        assert!(value.is_object(), "not a JSON object: {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_before_the_subcommand() {
    let config = serve_config();
    let path = config.path_str();
    let proc = spawn_binary(&["--log-format", "json", "serve", "--config", &path], 1).await;
    assert_all_json(&proc.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_after_the_subcommand() {
    let config = serve_config();
    let path = config.path_str();
    let proc = spawn_binary(&["serve", "--config", &path, "--log-format", "json"], 1).await;
    assert_all_json(&proc.stderr());
}
