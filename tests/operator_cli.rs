//! What a new operator meets on the command line: shell completions,
//! `SWITCHYARD_CONFIG` as the default config path (flag > variable >
//! built-in default), `check`/`serve` warnings for a route to a service no
//! table declares, `check` passing a config whose token variable is unset
//! (while `serve` refuses it), duration ceilings, and a rejected reload
//! logged on one line.

mod support;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use support::*;

/// Runs the binary to completion (bounded) in `dir`, with `env` set and
/// `SWITCHYARD_CONFIG` / `SWITCHYARD_ADMIN_TOKEN` removed unless given.
async fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .current_dir(dir)
        .env_remove("SWITCHYARD_CONFIG")
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command.spawn().expect("spawn switchyard");
    tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("switchyard {args:?} did not exit in time"))
        .expect("wait")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A config on loopback, ephemeral ports, with `extra` appended.
fn loopback_config(extra: &str) -> String {
    format!("[proxy]\nlisten = [\"127.0.0.1:0\"]\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{extra}")
}

/// Line `line` of some stderr line reads `FILE:LINE:COL: KEY: ...` with `fragment`.
fn has_located_line(text: &str, file: &str, line: usize, col: usize, key: &str) -> bool {
    let wanted = format!("{file}:{line}:{col}: {key}: ");
    text.lines().any(|l| l.contains(&wanted))
}

// ===== completions =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_are_printed_for_bash_zsh_and_fish() {
    if !tools::require(&tools::BASH) {
        return;
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = run_binary(&["completions", shell]).await;
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        for word in ["switchyard", "serve", "check", "register", "completions"] {
            assert!(script.contains(word), "{shell} script lacks `{word}`");
        }
        // Flags of the subcommands are offered too (fish spells them `-l NAME`).
        for flag in ["config", "heartbeat", "log-format"] {
            let spelled = [format!("--{flag}"), format!("-l {flag}")];
            assert!(
                spelled.iter().any(|s| script.contains(s.as_str())),
                "{shell} script lacks `--{flag}`"
            );
        }
    }
    // The bash script really defines the completion in bash.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("switchyard.bash");
    std::fs::write(&path, stdout(&run_binary(&["completions", "bash"]).await)).expect("write");
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p switchyard",
            path.display()
        ))
        .output()
        .expect("run bash");
    assert!(
        out.status.success() && stdout(&out).contains("switchyard"),
        "bash did not register the completion: {} {}",
        stdout(&out),
        stderr(&out)
    );
    let bad = run_binary(&["completions", "tcsh"]).await;
    assert!(!bad.status.success(), "an unknown shell is refused");
}

// ===== SWITCHYARD_CONFIG =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_takes_its_file_from_the_flag_then_the_variable_then_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&good, loopback_config("")).expect("write");
    std::fs::write(&bad, "[proxy]\nlisen = 1\n").expect("write");
    let (good_s, bad_s) = (good.to_str().unwrap(), bad.to_str().unwrap());

    // The variable alone.
    let out = run_in(dir.path(), &["check"], &[("SWITCHYARD_CONFIG", bad_s)]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("bad.toml:2:1: proxy.lisen"),
        "{}",
        stderr(&out)
    );
    let out = run_in(dir.path(), &["check"], &[("SWITCHYARD_CONFIG", good_s)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("good.toml: ok"), "{}", stdout(&out));

    // The flag (and the positional FILE) win over the variable.
    let out = run_in(
        dir.path(),
        &["check", "--config", good_s],
        &[("SWITCHYARD_CONFIG", bad_s)],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run_in(
        dir.path(),
        &["check", good_s],
        &[("SWITCHYARD_CONFIG", bad_s)],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Neither: ./config/switchyard.toml, and a clear error when it is absent.
    let out = run_in(dir.path(), &["check"], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no config file at config/switchyard.toml")
            && stderr(&out).contains("SWITCHYARD_CONFIG"),
        "{}",
        stderr(&out)
    );
    std::fs::create_dir(dir.path().join("config")).expect("mkdir");
    std::fs::copy(&good, dir.path().join("config/switchyard.toml")).expect("copy");
    let out = run_in(dir.path(), &["check"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // An empty variable counts as unset.
    let out = run_in(dir.path(), &["check"], &[("SWITCHYARD_CONFIG", "")]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Spawns `serve` with `env`, returns once it logged its admin address and
/// /readyz answers, or panics with stderr if it exits first.
async fn serve_with_env(args: &[&str], env: &[(&str, &str)]) -> (tokio::process::Child, String) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .env_remove("SWITCHYARD_CONFIG")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line()).await;
        match line {
            Ok(Ok(Some(line))) => {
                seen.push_str(&line);
                seen.push('\n');
                if let Some(admin) = parse_listen_line(&line, "admin listening on ") {
                    wait_ready(admin).await;
                    return (child, seen);
                }
            }
            _ => panic!("serve {args:?} did not start; stderr:\n{seen}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_its_file_from_the_variable_and_the_flag_wins() {
    let good = ConfigFile::new(&loopback_config(""));
    let (mut child, log) =
        serve_with_env(&["serve"], &[("SWITCHYARD_CONFIG", &good.path_str())]).await;
    assert!(
        log.contains("config loaded") && log.contains(&good.path_str()),
        "{log}"
    );
    child.kill().await.expect("kill");

    // The flag beats a variable naming a file that does not exist.
    let (mut child, log) = serve_with_env(
        &["serve", "--config", &good.path_str()],
        &[("SWITCHYARD_CONFIG", "/nonexistent/switchyard.toml")],
    )
    .await;
    assert!(log.contains(&good.path_str()), "{log}");
    child.kill().await.expect("kill");

    // A variable naming a missing file is an error, not a silent default.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_in(
        dir.path(),
        &["serve"],
        &[("SWITCHYARD_CONFIG", "/nonexistent/switchyard.toml")],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/switchyard.toml"),
        "{}",
        stderr(&out)
    );
}

// ===== a route to a service no table declares =====

const TYPO_ROUTE: &str = "[services.api]\nbackends = [\"127.0.0.1:9\"]\n\n[[routes]]\npath_prefix = \"/api\"\nservice = \"apii\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_about_a_route_to_an_undeclared_service() {
    let text = loopback_config(TYPO_ROUTE);
    let config = ConfigFile::new(&text);
    let line = text
        .lines()
        .position(|l| l.starts_with("service = \"apii\""))
        .unwrap()
        + 1;
    let out = run_binary(&["check", "--config", &config.path_str()]).await;
    assert_eq!(out.status.code(), Some(0), "a warning is not an error");
    let err = stderr(&out);
    assert!(
        has_located_line(&err, &config.path_str(), line, 11, "routes[0].service"),
        "{err}"
    );
    let warning = err
        .lines()
        .find(|l| l.contains("routes[0].service"))
        .unwrap();
    assert!(warning.starts_with("warning: "), "{warning}");
    assert!(warning.contains("`apii`"), "{warning}");
    assert!(stdout(&out).contains(": ok"));

    // A declared service (even with no backends) draws no warning.
    let fine = ConfigFile::new(&loopback_config(
        "[services.apii]\n\n[[routes]]\npath_prefix = \"/api\"\nservice = \"apii\"\n",
    ));
    let out = run_binary(&["check", "--config", &fine.path_str()]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_warns_about_a_route_to_an_undeclared_service() {
    let text = loopback_config(TYPO_ROUTE);
    let config = ConfigFile::new(&text);
    let line = text
        .lines()
        .position(|l| l.starts_with("service = \"apii\""))
        .unwrap()
        + 1;
    let proc = spawn_serve(&config).await;
    let log = proc.stderr();
    assert!(
        has_located_line(&log, &config.path_str(), line, 11, "routes[0].service"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("routes[0].service")),
        "{log}"
    );
    // It is served as the contract says: the route exists and answers 503.
    let resp = get(proc.proxy(), "/api/x").await;
    assert_eq!(resp.status, 503);
}

// ===== the token variable: a warning in check, an error in serve =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_the_docker_config_without_its_token_and_serve_refuses_it() {
    let docker = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/docker.toml");
    let docker = docker.to_str().unwrap();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_in(dir.path(), &["check", docker], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.lines().any(|l| l.starts_with("warning: ")
            && l.contains("admin.token_env")
            && l.contains("SWITCHYARD_ADMIN_TOKEN")),
        "{err}"
    );
    // With the variable set there is nothing to say.
    let out = run_in(
        dir.path(),
        &["check", docker],
        &[("SWITCHYARD_ADMIN_TOKEN", "s3cret")],
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));

    // serve keeps it an error (before binding anything).
    let out = run_in(dir.path(), &["serve", "--config", docker], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("admin.token_env") && err.contains("is not set"),
        "{err}"
    );
}

// ===== duration ceilings =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_beyond_their_ceiling_are_errors_with_line_and_column() {
    let text = loopback_config(
        "[services.api]\nbackends = [\"127.0.0.1:9\"]\nconnect_timeout = \"25h\"\n\
         request_timeout = \"24h\"\n\n[services.api.health_check]\npath = \"/\"\n\
         interval = \"100000000000h\"\ntimeout = \"2h\"\n",
    );
    let config = ConfigFile::new(&text);
    let out = run_binary(&["check", "--config", &config.path_str()]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let line_of = |prefix: &str| text.lines().position(|l| l.starts_with(prefix)).unwrap() + 1;
    let file = config.path_str();
    assert!(
        has_located_line(
            &err,
            &file,
            line_of("connect_timeout"),
            19,
            "services.api.connect_timeout"
        ),
        "{err}"
    );
    assert!(
        has_located_line(
            &err,
            &file,
            line_of("interval"),
            12,
            "services.api.health_check.interval"
        ),
        "{err}"
    );
    assert!(err.contains("must be at most 1h"), "{err}");
    assert!(err.contains("must be at most 24h"), "{err}");
    // At the ceiling is fine: request_timeout 24h and timeout 2h (≤ 24h) pass.
    assert_eq!(err.lines().count(), 2, "{err}");
}

// ===== a rejected reload, on one line =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_reload_is_logged_on_one_line() {
    let backend = FakeBackend::start("a").await;
    let config = ConfigFile::new(&(base_toml() + &service_toml("web", &[&backend], "")));
    let proc = spawn_serve(&config).await;
    // Two errors, on lines 2 and 3.
    config.write_in_place("[proxy]\nlisen = 1\nworkers = -1\n");
    let resp = admin_reload(proc.admin).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    eventually(WAIT, "the rejection is logged", || async {
        proc.stderr().contains("config reload rejected")
    })
    .await;
    // Let the log settle, then look at the whole rejection.
    eventually(WAIT, "both errors on the rejection's line", || async {
        proc.stderr()
            .lines()
            .any(|l| l.contains("config reload rejected") && l.contains("proxy.workers"))
    })
    .await;
    let log = proc.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("config reload rejected"))
        .unwrap();
    assert!(
        line.contains("proxy.lisen") && line.contains("proxy.workers"),
        "{line}"
    );
    assert!(line.contains(":2:1:") && line.contains(":3:"), "{line}");
    // No error line of its own elsewhere: nothing begins with the file's path.
    assert!(
        !log.lines().any(|l| l.starts_with(&config.path_str())),
        "{log}"
    );
    // The running config is unchanged.
    assert_eq!(get(proc.proxy(), "/web/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_treats_an_unset_etcd_password_variable_as_a_warning_too() {
    let text = loopback_config(
        "[registry]\nstore = \"etcd://127.0.0.1:1/switchyard\"\n\n[registry.etcd]\n\
         username = \"switchyard\"\npassword_env = \"SWITCHYARD_TEST_ETCD_PASSWORD_UNSET\"\n",
    );
    let config = ConfigFile::new(&text);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_in(dir.path(), &["check", &config.path_str()], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let line = text
        .lines()
        .position(|l| l.starts_with("password_env"))
        .unwrap()
        + 1;
    let err = stderr(&out);
    assert!(
        has_located_line(
            &err,
            &config.path_str(),
            line,
            16,
            "registry.etcd.password_env"
        ),
        "{err}"
    );
    assert!(err.starts_with("warning: "), "{err}");
    // serve refuses it before trying to reach etcd.
    let out = run_in(dir.path(), &["serve", "--config", &config.path_str()], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("registry.etcd.password_env") && err.contains("is not set"),
        "{err}"
    );
}
