//! The `switchyard` binary as a child process: spawn it with arguments,
//! wait for its listeners and readiness, signal it, read its stderr.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use super::{wait_ready, ConfigFile};

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A spawned `switchyard` process; killed when dropped.
pub struct Proc {
    child: tokio::process::Child,
    pub pid: u32,
    pub proxies: Vec<SocketAddr>,
    pub admin: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

/// The address after `marker` in a log line, e.g. `proxy listening on `.
pub fn parse_listen_line(line: &str, marker: &str) -> Option<SocketAddr> {
    let start = line.find(marker)? + marker.len();
    let addr: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse().ok()
}

/// Starts the binary with `args` (stderr captured, `RUST_LOG=info`), waits
/// for one `admin listening on` line and `proxies` `proxy listening on`
/// lines, then for `/readyz` to answer 200. Panics with the captured stderr
/// when it exits or takes too long.
pub async fn spawn_binary(args: &[&str], proxies: usize) -> Proc {
    spawn_binary_under(&[], args, proxies).await
}

/// [`spawn_binary`] run by a wrapper that execs it, e.g.
/// `["prlimit", "--nofile=256:256", "--"]` (the pid stays the binary's).
pub async fn spawn_binary_under(wrapper: &[&str], args: &[&str], proxies: usize) -> Proc {
    let (program, wrapper_args) = match wrapper.split_first() {
        Some((program, rest)) => (*program, rest),
        None => (BIN, &[][..]),
    };
    let bin: &[&str] = if wrapper.is_empty() { &[] } else { &[BIN] };
    let mut child = tokio::process::Command::new(program)
        .args(wrapper_args)
        .args(bin)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn switchyard");
    let pid = child.id().expect("pid");
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let sink = lines.clone();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });

    let mut proxy_addrs = Vec::new();
    let mut admin = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while admin.is_none() || proxy_addrs.len() < proxies {
        let line = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                panic!(
                    "switchyard {args:?} exited before listening; stderr:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
            Err(_) => panic!(
                "switchyard {args:?} did not log its listeners in time; stderr:\n{}",
                lines.lock().unwrap().join("\n")
            ),
        };
        if let Some(addr) = parse_listen_line(&line, "proxy listening on ") {
            proxy_addrs.push(addr);
        }
        if let Some(addr) = parse_listen_line(&line, "admin listening on ") {
            admin = Some(addr);
        }
    }
    let proc = Proc {
        child,
        pid,
        proxies: proxy_addrs,
        admin: admin.unwrap(),
        lines,
    };
    // Fully started (signal handlers installed) once /readyz says so.
    wait_ready(proc.admin).await;
    proc
}

/// `switchyard serve --config FILE`.
pub async fn spawn_serve(config: &ConfigFile) -> Proc {
    spawn_binary(&["serve", "--config", &config.path_str()], 1).await
}

impl Proc {
    pub fn proxy(&self) -> SocketAddr {
        self.proxies[0]
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid);
    }

    /// Waits for exit up to `limit`; `None` if still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .map(|r| r.expect("wait"))
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stderr captured so far.
    pub fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Peak resident set size (VmHWM) in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }
}

/// Runs the binary to completion (bounded) and returns its output.
pub async fn run_binary(args: &[&str]) -> std::process::Output {
    let child = tokio::process::Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn switchyard");
    tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("switchyard {args:?} did not exit in time"))
        .expect("wait")
}
