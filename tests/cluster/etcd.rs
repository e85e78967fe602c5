//! A real etcd for the cluster tests: single- and multi-member clusters on
//! ephemeral loopback ports with temporary data dirs, started from Debian's
//! `etcd-server` package (`etcd`, v3.4), read with `etcdctl` (`etcd-client`).
//!
//! Members can be stopped (SIGTERM), killed (SIGKILL) and restarted with the
//! same name, data dir and ports; every member still running is killed when
//! the [`Etcd`] drops. Every wait is bounded. A test first asks
//! [`available`]: a missing `etcd` or `etcdctl` fails it in CI and skips it
//! elsewhere, naming the package to install (`support::tools`).
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{tools, Http};

/// Whether `etcd` and `etcdctl` are installed (`support::tools` rules: a
/// missing one fails the test in CI and skips it elsewhere).
pub fn available() -> bool {
    tools::require(&tools::ETCD) && tools::require(&tools::ETCDCTL)
}

/// How long a cluster (or a restarted member) may take to become healthy.
const START_LIMIT: Duration = Duration::from_secs(30);
/// Start attempts when a picked port turns out to be taken.
const START_ATTEMPTS: usize = 4;

/// One key as etcd holds it.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: String,
    pub value: String,
    /// Its lease id; 0 = no lease.
    pub lease: i64,
}

impl Kv {
    /// The value parsed as JSON (panics naming the key when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.value).unwrap_or_else(|e| {
            panic!(
                "etcd value of {} is not JSON ({e}): {}",
                self.key, self.value
            )
        })
    }
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn spawn(&mut self, initial_cluster: &str, token: &str) {
        assert!(
            self.child.is_none(),
            "etcd member {} is already running",
            self.name
        );
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the etcd log file");
        let log_err = log.try_clone().expect("clone the etcd log file");
        let child = Command::new("etcd")
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(self.client_url())
            .arg("--advertise-client-urls")
            .arg(self.client_url())
            .arg("--listen-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(token)
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr")
            .env_remove("ETCD_NAME")
            .env_remove("ETCD_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn();
        match child {
            Ok(child) => self.child = Some(child),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`etcd` is not installed: install Debian's `etcd-server` package \
                 (apt-get install etcd-server etcd-client); the cluster tests need a real etcd"
            ),
            Err(e) => panic!("cannot start etcd: {e}"),
        }
    }

    /// True while the process runs.
    fn running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(child) => matches!(child.try_wait(), Ok(None)),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then up to 10 s for a clean exit, then SIGKILL.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.chars().take(400).collect())
            .collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn port_clash(&self) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|t| t.contains("address already in use"))
    }
}

/// A running etcd cluster on loopback; killed when dropped.
pub struct Etcd {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    initial_cluster: String,
    /// `--initial-cluster-token`, the same for every member.
    token: String,
}

/// `n` distinct free loopback ports (bound together, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

impl Etcd {
    /// Starts an `n`-member cluster and waits until every member is healthy.
    pub async fn start(n: usize) -> Etcd {
        assert!(n >= 1);
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut etcd = Etcd::configure(n);
            for i in 0..n {
                let (cluster, token) = (etcd.initial_cluster.clone(), etcd.token.clone());
                etcd.members[i].spawn(&cluster, &token);
            }
            match etcd.wait_all_healthy().await {
                Ok(()) => return etcd,
                Err(e) => {
                    let clash = etcd.members.iter().any(Member::port_clash);
                    last_failure = e;
                    drop(etcd);
                    if !clash {
                        break;
                    }
                }
            }
        }
        panic!("etcd cluster of {n} did not start: {last_failure}");
    }

    fn configure(n: usize) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir for etcd");
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("switchyard-test-{}", ports[1]);
        Etcd {
            dir,
            members,
            initial_cluster,
            token,
        }
    }

    /// How many members the cluster has.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// `127.0.0.1:PORT` of member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    pub fn client_addr(&self, i: usize) -> SocketAddr {
        self.endpoint(i).parse().unwrap()
    }

    /// The endpoints of `members`, comma-separated.
    pub fn endpoints_of(&self, members: &[usize]) -> String {
        members
            .iter()
            .map(|&i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn all(&self) -> Vec<usize> {
        (0..self.members.len()).collect()
    }

    /// `etcd://EP1,EP2/PREFIX` naming `members`.
    pub fn store_url(&self, members: &[usize], prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.endpoints_of(members))
    }

    /// The data dirs' parent (kept until drop).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn is_running(&mut self, i: usize) -> bool {
        self.members[i].running()
    }

    /// SIGKILL member `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// SIGTERM member `i` and wait (bounded) for it to exit.
    pub fn stop(&mut self, i: usize) {
        self.members[i].stop();
    }

    /// Stops every member.
    pub fn stop_all(&mut self) {
        for m in &mut self.members {
            m.stop();
        }
    }

    /// Starts member `i` again (same name, data dir and ports) without
    /// waiting; see [`Etcd::wait_healthy`].
    pub fn spawn_again(&mut self, i: usize) {
        let (cluster, token) = (self.initial_cluster.clone(), self.token.clone());
        self.members[i].spawn(&cluster, &token);
    }

    /// Starts member `i` again and waits until it is healthy (it needs a
    /// quorum of the cluster to be running to say so).
    pub async fn restart(&mut self, i: usize) {
        self.spawn_again(i);
        if let Err(e) = self.wait_healthy(i, START_LIMIT).await {
            panic!("restarted etcd member m{i} did not become healthy: {e}");
        }
    }

    /// Starts every stopped member again and waits until all are healthy.
    pub async fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            if !self.members[i].running() {
                self.spawn_again(i);
            }
        }
        if let Err(e) = self.wait_all_healthy().await {
            panic!("restarted etcd cluster did not become healthy: {e}");
        }
    }

    async fn wait_all_healthy(&mut self) -> Result<(), String> {
        for i in 0..self.members.len() {
            self.wait_healthy(i, START_LIMIT).await?;
        }
        Ok(())
    }

    /// Polls `GET /health` on member `i` until it answers `"health":"true"`.
    pub async fn wait_healthy(&mut self, i: usize, limit: Duration) -> Result<(), String> {
        let addr = self.client_addr(i);
        let deadline = Instant::now() + limit;
        let mut last: String;
        loop {
            if !self.members[i].running() {
                return Err(format!(
                    "etcd member m{i} exited; its log ends:\n{}",
                    self.members[i].log_tail()
                ));
            }
            let http = Http::new();
            match tokio::time::timeout(Duration::from_secs(3), http.try_get(addr, "/health")).await
            {
                Ok(Ok(resp)) => {
                    let text = resp.text();
                    if resp.status == http::StatusCode::OK && text.contains("\"health\":\"true\"") {
                        return Ok(());
                    }
                    last = format!("{}: {text}", resp.status);
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = "GET /health took over 3s".into(),
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "etcd member m{i} not healthy after {limit:?} (last: {last}); its log ends:\n{}",
                    self.members[i].log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of member `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        self.members[i].log_tail()
    }

    /// Runs `etcdctl` (API v3) against `members`; its stdout, or an error
    /// with its stderr. Bounded (20 s).
    pub async fn etcdctl(&self, members: &[usize], args: &[&str]) -> Result<String, String> {
        let child = tokio::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints_of(members)))
            .arg("--dial-timeout=3s")
            .arg("--command-timeout=8s")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`etcdctl` is not installed: install Debian's `etcd-client` package \
                 (apt-get install etcd-server etcd-client)"
            ),
            Err(e) => panic!("cannot run etcdctl: {e}"),
        };
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .map_err(|_| format!("etcdctl {args:?} did not finish within 20s"))?
            .map_err(|e| format!("etcdctl {args:?}: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "etcdctl {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                stdout
            ))
        }
    }

    /// Every key under `prefix` (linearizable read through `members`).
    pub async fn kvs_via(&self, members: &[usize], prefix: &str) -> Vec<Kv> {
        let out = self
            .etcdctl(members, &["get", "--prefix", prefix, "-w", "json"])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        parse_kvs(&out)
    }

    /// Every key under `prefix`, through every member.
    pub async fn kvs(&self, prefix: &str) -> Vec<Kv> {
        self.kvs_via(&self.all(), prefix).await
    }

    /// Every key under `prefix` as member `i` alone has it (serializable
    /// read: no quorum, the member's own copy).
    pub async fn local_kvs(&self, i: usize, prefix: &str) -> Result<Vec<Kv>, String> {
        let out = self
            .etcdctl(
                &[i],
                &["get", "--prefix", prefix, "--consistency=s", "-w", "json"],
            )
            .await?;
        Ok(parse_kvs(&out))
    }

    /// The keys under `prefix`, sorted.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .kvs(prefix)
            .await
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        keys.sort();
        keys
    }

    pub async fn put(&self, key: &str, value: &str) {
        self.etcdctl(&self.all(), &["put", key, value])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Deletes `key` through `members`; how many keys went.
    pub async fn delete_via(&self, members: &[usize], key: &str) -> u64 {
        let out = self
            .etcdctl(members, &["del", key])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        out.trim().parse().unwrap_or(0)
    }

    /// The index of the current leader (asked of the running members).
    pub async fn leader(&mut self) -> usize {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].running())
            .collect();
        let out = self
            .etcdctl(&running, &["endpoint", "status", "-w", "json"])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let statuses: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("endpoint status ({e}): {out}"));
        let statuses = statuses.as_array().cloned().unwrap_or_default();
        let leader = statuses
            .iter()
            .find_map(|s| s["Status"]["leader"].as_u64())
            .unwrap_or_else(|| panic!("no leader in {out}"));
        for s in &statuses {
            if s["Status"]["header"]["member_id"].as_u64() == Some(leader) {
                let endpoint = s["Endpoint"].as_str().unwrap_or_default();
                if let Some(i) = (0..self.members.len()).find(|&i| self.endpoint(i) == endpoint) {
                    return i;
                }
            }
        }
        panic!("the leader {leader} is none of the asked members: {out}");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}

/// The kvs of `etcdctl get -w json` (keys and values are base64).
fn parse_kvs(out: &str) -> Vec<Kv> {
    let parsed: serde_json::Value =
        serde_json::from_str(out).unwrap_or_else(|e| panic!("etcdctl json ({e}): {out}"));
    parsed["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| Kv {
                    key: decode_b64(kv["key"].as_str().unwrap_or_default()),
                    value: decode_b64(kv["value"].as_str().unwrap_or_default()),
                    lease: kv["lease"].as_i64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Standard base64 (with padding) to text.
fn decode_b64(text: &str) -> String {
    fn sextet(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some((c - b'A') as u32),
            b'a'..=b'z' => Some((c - b'a') as u32 + 26),
            b'0'..=b'9' => Some((c - b'0') as u32 + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let Some(v) = sextet(c) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn base64_decodes() {
    assert_eq!(decode_b64("L2EvYg=="), "/a/b");
    assert_eq!(decode_b64("eyJ4IjoxfQ=="), "{\"x\":1}");
    assert_eq!(decode_b64(""), "");
    assert_eq!(decode_b64("YWJj"), "abc");
}
