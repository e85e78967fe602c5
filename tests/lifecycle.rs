//! Start-up and shutdown: graceful drain on SIGTERM/SIGINT (in-flight
//! requests finish, /readyz turns 503 or closes, new connections are
//! refused, exit 0), start-up failures, several listeners.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use support::*;
use switchyard::app::App;
use switchyard::config::Config;

fn config_for(backend: &FakeBackend) -> String {
    format!(
        "{}{}{}",
        base_toml(),
        service_toml("web", &[backend], ""),
        route_toml(None, "/", "web", false)
    )
}

/// True once a fresh connection to `addr` is refused.
async fn refused(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Err(_))
    )
}

/// `/readyz` answers 503, or the admin listener is gone.
async fn not_ready(admin: SocketAddr) -> bool {
    if refused(admin).await {
        return true;
    }
    match Http::new().try_get(admin, "/readyz").await {
        Ok(resp) => resp.status == StatusCode::SERVICE_UNAVAILABLE,
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let backend = FakeBackend::start("web").await;
    let config = ConfigFile::new(&config_for(&backend));
    let mut proc = spawn_serve(&config).await;
    let (proxy, admin) = (proc.proxy(), proc.admin);
    wait_ready(admin).await;

    let slow = tokio::spawn(async move { Http::new().try_get(proxy, "/slow?delay_ms=1500").await });
    eventually(WAIT, "the slow request to reach the backend", || async {
        backend.hits() == 1
    })
    .await;
    proc.signal("TERM");

    // Collect every problem, so one failure does not hide the others.
    let mut problems = Vec::new();
    if !within(Duration::from_secs(1), || not_ready(admin)).await {
        problems.push("/readyz neither 503 nor closed 1 s into the drain".to_string());
    }
    if !within(Duration::from_secs(1), || refused(proxy)).await {
        problems.push("new proxy connections still accepted (not refused) during drain".into());
    }
    if slow.is_finished() {
        problems.push("the slow request ended before the drain checks ran".into());
    }
    match tokio::time::timeout(WAIT, slow).await {
        Ok(Ok(Ok(resp))) if resp.status == 200 && resp.text() == "web" => {}
        other => problems.push(format!("in-flight request during drain: {other:?}")),
    }
    match proc.wait_exit(WAIT).await {
        Some(status) if status.code() == Some(0) => {}
        other => problems.push(format!("exit after drain: {other:?}")),
    }
    assert!(
        problems.is_empty(),
        "{problems:#?}\nstderr:\n{}",
        proc.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_when_idle_exits_zero() {
    let backend = FakeBackend::start("web").await;
    let config = ConfigFile::new(&config_for(&backend));
    let mut proc = spawn_serve(&config).await;
    assert_eq!(get(proc.proxy(), "/x").await.status, 200);
    proc.signal("INT");
    let status = proc.wait_exit(WAIT).await.expect("exit after SIGINT");
    assert_eq!(status.code(), Some(0), "stderr:\n{}", proc.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_run_drains_then_returns() {
    let backend = FakeBackend::start("web").await;
    let mut app = start_app(&config_for(&backend)).await;
    let (proxy, admin) = (app.proxy, app.admin);
    assert_eq!(get(admin, "/healthz").await.status, 200);
    wait_ready(admin).await;

    let slow = tokio::spawn(async move { Http::new().try_get(proxy, "/slow?delay_ms=1000").await });
    eventually(WAIT, "the slow request to reach the backend", || async {
        backend.hits() == 1
    })
    .await;
    app.begin_shutdown();
    let mut problems = Vec::new();
    if !within(Duration::from_millis(800), || not_ready(admin)).await {
        problems.push("/readyz neither 503 nor closed during drain".to_string());
    }
    if !within(Duration::from_millis(800), || refused(proxy)).await {
        problems.push("new proxy connections still accepted (not refused) during drain".into());
    }
    match tokio::time::timeout(WAIT, slow).await {
        Ok(Ok(Ok(resp))) if resp.status == 200 => {}
        other => problems.push(format!("in-flight request during drain: {other:?}")),
    }
    if let Err(e) = app.join(WAIT).await {
        problems.push(format!("App::run after drain: {e}"));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_the_wait() {
    let backend = FakeBackend::start("web").await;
    let toml = format!(
        "{}{}{}",
        base_toml_with("drain_timeout = \"500ms\""),
        service_toml("web", &[&backend], ""),
        route_toml(None, "/", "web", false)
    );
    let mut app = start_app(&toml).await;
    let proxy = app.proxy;
    let _stuck = tokio::spawn(async move { Http::new().try_get(proxy, "/stuck?hold=1").await });
    eventually(WAIT, "the stuck request to be held", || async {
        backend.held() == 1
    })
    .await;
    app.begin_shutdown();
    // Liveness bound only: run must give up on the stuck request.
    app.join(Duration::from_secs(8))
        .await
        .expect("App::run returns after drain_timeout");
    backend.release(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxy_listeners_both_serve() {
    let backend = FakeBackend::start("web").await;
    let toml = config_for(&backend).replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\", \"127.0.0.1:0\"]",
    );
    let app = start_app(&toml).await;
    assert_eq!(app.proxies.len(), 2, "{:?}", app.proxies);
    assert_ne!(app.proxies[0], app.proxies[1]);
    for addr in &app.proxies {
        assert_ne!(addr.port(), 0, "proxy_addrs must report real ports");
        assert_eq!(get(*addr, "/x").await.backend(), Some("web"));
    }
    assert_ne!(app.admin.port(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_bind_fails_when_the_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let toml =
        format!("[proxy]\nlisten = [\"127.0.0.1:{port}\"]\n\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    let config = Config::from_toml_str(&toml, std::path::Path::new("taken.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    match App::bind(config).await {
        Ok(_) => panic!("App::bind succeeded on a port already in use"),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exits_nonzero_with_a_reason_when_the_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = ConfigFile::new(&format!(
        "[proxy]\nlisten = [\"127.0.0.1:{port}\"]\n\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    ));
    let out = run_binary(&["serve", "--config", &config.path_str()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started on a taken port; stderr:\n{stderr}"
    );
    assert!(
        stderr.lines().any(|l| l.contains(&port.to_string())),
        "no line names the taken address 127.0.0.1:{port}; stderr:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exits_nonzero_on_a_bad_config() {
    let config = ConfigFile::new(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\nlisen = \"oops\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    let out = run_binary(&["serve", "--config", &config.path_str()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with a bad config");
    assert!(stderr.contains("lisen"), "stderr:\n{stderr}");
}

/// SIGTERM as soon as the first "proxy listening" line appears: the process
/// is already serving, so it must drain and exit 0, not die by the signal's
/// default action. Repeated because the window is short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_listening_still_exits_zero() {
    let config = ConfigFile::new(&base_toml());
    let mut outcomes = Vec::new();
    for _ in 0..20 {
        let (mut child, mut lines) = serve_until_logged(&config, "proxy listening on").await;
        let pid = child.id().expect("pid").to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let status = tokio::time::timeout(WAIT, child.wait())
            .await
            .expect("exit after SIGTERM")
            .expect("wait");
        outcomes.push(status.code());
    }
    let unclean = outcomes.iter().filter(|c| **c != Some(0)).count();
    assert_eq!(
        unclean, 0,
        "{unclean} of 20 processes did not exit 0 after an early SIGTERM (None = killed by the signal): {outcomes:?}"
    );
}

/// The scheduling policy of the process's `switchyard-control` thread, from
/// /proc (field 41 of the thread's stat: 0 = SCHED_OTHER, 5 = SCHED_IDLE).
#[cfg(target_os = "linux")]
fn control_thread_policy(pid: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "switchyard-cont" {
            continue; // the kernel keeps 15 bytes of a thread's name
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        let after_name = &stat[stat.rfind(')')? + 1..];
        // After the name comes field 3, so field 41 is the 39th here.
        return after_name.split_whitespace().nth(38)?.parse().ok();
    }
    None
}

/// `[admin] priority`: the control plane yields the CPU to the proxy's
/// workers (SCHED_IDLE) by default, and shares it fairly when told "normal".
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_runs_in_the_background_unless_told_otherwise() {
    for (setting, expected) in [
        ("", 5),
        ("priority = \"background\"\n", 5),
        ("priority = \"normal\"\n", 0),
    ] {
        let config = ConfigFile::new(&format!("{}{setting}", base_toml()));
        let (mut child, _log) = serve_until_logged(&config, "admin listening on").await;
        let pid = child.id().expect("pid");
        assert_eq!(
            control_thread_policy(pid),
            Some(expected),
            "policy of the control thread with {setting:?}"
        );
        child.kill().await.expect("kill");
    }
}

type LogLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>;

/// Start `switchyard serve` on `config` and read its log until a line
/// containing `marker`; the rest of the log is returned unread.
async fn serve_until_logged(
    config: &ConfigFile,
    marker: &str,
) -> (tokio::process::Child, LogLines) {
    use tokio::io::AsyncBufReadExt;

    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--config", &config.path_str()])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn switchyard");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let logged = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(marker) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(logged, "no `{marker}` line");
    (child, lines)
}
