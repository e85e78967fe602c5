//! Cluster-mode benchmark (issue 9, "Speed"), run against two Switchyard
//! nodes A and B that share one registry in a 3-member etcd. `bench/cluster.sh`
//! starts etcd and the nodes, then runs this with their addresses:
//!
//! ```sh
//! bench/cluster.sh                      # everything, once
//! CLUSTER_BENCH_RUNS=3 bench/cluster.sh # three runs, each on a fresh cluster
//! ```
//!
//! Phases (`--phases baseline,propagation,burst,heartbeat`, in that order;
//! `baseline` is 5 s of nothing, for the idle CPU and etcd traffic):
//!
//! 1. **Propagation**: `--registrations N` (1,000) registrations, each in a
//!    service of its own (`p-<i>`) pointing at this program's backend, PUT on
//!    A one at a time. From the moment A's 200 arrives, B's proxy is polled at
//!    `/p-<i>/` every `--poll-ms` (1) until the backend answers through it
//!    (before that B answers 404: no such service). That is the routing figure.
//!    Beside it, a blocking query on B (`GET /v1/services/p-<i>?index=N`,
//!    N = B's index before the PUT) times when B's registry (not yet its
//!    table) has the change; it can be answered before A's 200 reaches the
//!    client, hence negative values. After each instance is routed, the next
//!    PUT waits `--gap-ms` (120): a node batches joins into at most one table
//!    rebuild per 100 ms, and a gap longer than that times each registration on
//!    its own; `--gap-ms 0` times a steady stream instead.
//! 2. **Burst**: `--burst N` (10,000) registrations into service `burst`
//!    (`"ttl": "30s"`, addresses 10.x.y.z:8080) through A, `--concurrency C`
//!    (32) in flight, while a paced load (`--rate R` requests/s per node over
//!    `--conns K` keep-alive connections, open loop: each request is timed from
//!    its scheduled start) runs through both nodes' proxies to a configured
//!    backend (`/load/` → this program's backend). The proxy's latency during
//!    the burst is compared with `--idle-secs` (5) of the same load before it.
//! 3. **Heartbeats**: through A, in the order the burst registered the
//!    instances, paced at each `RATE:SECS` of `--heartbeats` (default
//!    `1000:10,333:28`): 1,000/s is the `switchyard register --heartbeat`
//!    cadence for 30 s ttls (every ttl/3), 333/s is one heartbeat per instance
//!    per ttl. The 1,000/s pass comes first so that every lease has been renewed
//!    when the 333/s pass (which reaches the last instances only ~30 s later)
//!    runs. For each: A's and B's CPU (utime + stime from /proc/PID/stat, % of
//!    one core), the etcd members' CPU, and the RPCs etcd served (its own
//!    /metrics counters, summed over the members).
//!
//! Addresses: `--a-admin --a-proxy --b-admin --b-proxy` (host:port),
//! `--backend` (where this program's backend listens; both nodes' configs
//! route `/load/` to it), `--etcd host:port,...` (client endpoints, for
//! /metrics), `--a-pid --b-pid --etcd-pids P,P,P` (for CPU).
//!
//! Every loop is bounded in count and time; all traffic goes to the given
//! (loopback) addresses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// What the backend answers; B routes `/p-<i>/` once this comes back.
const BACKEND_BODY: &[u8] = b"cluster-bench backend";
/// How long one registration may take to reach B before it counts as lost.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(5);
/// Bound on the whole burst.
const BURST_LIMIT: Duration = Duration::from_secs(300);
/// Bound on waiting for the burst to be listed on a node.
const LISTED_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Options {
    a_admin: SocketAddr,
    a_proxy: SocketAddr,
    b_admin: SocketAddr,
    b_proxy: SocketAddr,
    backend: SocketAddr,
    a_pid: u32,
    b_pid: u32,
    etcd: Vec<SocketAddr>,
    etcd_pids: Vec<u32>,
    phases: Vec<String>,
    registrations: usize,
    gap: Duration,
    poll: Duration,
    burst: usize,
    concurrency: usize,
    ttl: String,
    rate: u64,
    conns: u64,
    idle: Duration,
    heartbeats: Vec<(f64, Duration)>,
    hb_conns: usize,
}

fn options() -> Result<Options, Error> {
    let unset: SocketAddr = "127.0.0.1:0".parse()?;
    let mut o = Options {
        a_admin: unset,
        a_proxy: unset,
        b_admin: unset,
        b_proxy: unset,
        backend: unset,
        a_pid: 0,
        b_pid: 0,
        etcd: Vec::new(),
        etcd_pids: Vec::new(),
        phases: ["baseline", "propagation", "burst", "heartbeat"]
            .map(String::from)
            .to_vec(),
        registrations: 1000,
        gap: Duration::from_millis(120),
        poll: Duration::from_millis(1),
        burst: 10_000,
        concurrency: 32,
        ttl: "30s".into(),
        rate: 1000,
        conns: 4,
        idle: Duration::from_secs(5),
        heartbeats: vec![
            (1000.0, Duration::from_secs(10)),
            (333.0, Duration::from_secs(28)),
        ],
        hb_conns: 64,
    };
    let list = |v: &str| -> Vec<String> {
        v.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--a-admin" => o.a_admin = value.parse()?,
            "--a-proxy" => o.a_proxy = value.parse()?,
            "--b-admin" => o.b_admin = value.parse()?,
            "--b-proxy" => o.b_proxy = value.parse()?,
            "--backend" => o.backend = value.parse()?,
            "--a-pid" => o.a_pid = value.parse()?,
            "--b-pid" => o.b_pid = value.parse()?,
            "--etcd" => {
                o.etcd = list(&value)
                    .iter()
                    .map(|e| e.parse())
                    .collect::<Result<_, _>>()?
            }
            "--etcd-pids" => {
                o.etcd_pids = list(&value)
                    .iter()
                    .map(|p| p.parse())
                    .collect::<Result<_, _>>()?
            }
            "--phases" => o.phases = list(&value),
            "--registrations" => o.registrations = value.parse()?,
            "--gap-ms" => o.gap = Duration::from_millis(value.parse()?),
            "--poll-ms" => o.poll = Duration::from_millis(value.parse()?),
            "--burst" => o.burst = value.parse()?,
            "--concurrency" => o.concurrency = value.parse::<usize>()?.max(1),
            "--ttl" => o.ttl = value,
            "--rate" => o.rate = value.parse::<u64>()?.max(1),
            "--conns" => o.conns = value.parse::<u64>()?.max(1),
            "--idle-secs" => o.idle = Duration::from_secs(value.parse()?),
            "--heartbeats" => {
                o.heartbeats = list(&value)
                    .iter()
                    .map(|p| -> Result<(f64, Duration), Error> {
                        let (rate, secs) = p.split_once(':').ok_or("--heartbeats RATE:SECS,...")?;
                        Ok((rate.parse()?, Duration::from_secs_f64(secs.parse()?)))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--hb-conns" => o.hb_conns = value.parse::<usize>()?.max(1),
            _ => return Err(format!("unknown option {flag}").into()),
        }
    }
    for (name, addr) in [
        ("--a-admin", o.a_admin),
        ("--a-proxy", o.a_proxy),
        ("--b-admin", o.b_admin),
        ("--b-proxy", o.b_proxy),
        ("--backend", o.backend),
    ] {
        if addr.port() == 0 {
            return Err(format!("{name} is required").into());
        }
    }
    Ok(o)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let o = options()?;
    let backend = o.backend;
    in_own_thread(move || start_backend(backend))?;
    for admin in [o.a_admin, o.b_admin] {
        wait_ready(admin).await?;
    }
    for proxy in [o.a_proxy, o.b_proxy] {
        wait_routed(proxy, "/load/", Duration::from_secs(10)).await?;
    }
    println!(
        "cluster bench: nodes A (proxy {}, admin {}) and B (proxy {}, admin {}), etcd {:?}",
        o.a_proxy, o.a_admin, o.b_proxy, o.b_admin, o.etcd
    );
    let phase = |name: &str| o.phases.iter().any(|p| p == name);
    if phase("baseline") {
        // What the idle cluster costs, for comparison with the phases below.
        let before = Usage::now(&o).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        println!("baseline: 5 s with no requests");
        before.report("  idle", &Usage::now(&o).await, None);
    }
    if phase("propagation") {
        propagation(&o).await?;
    }
    if phase("burst") {
        let order = burst(&o).await?;
        if phase("heartbeat") {
            let order = Arc::new(order);
            for &(rate, length) in &o.heartbeats {
                heartbeats(&o, Arc::clone(&order), rate, length).await?;
            }
        }
    }
    Ok(())
}

// ===== phase 1: propagation =====

async fn propagation(o: &Options) -> Result<(), Error> {
    let mut a_admin = connect(o.a_admin).await?;
    let mut b_admin = connect(o.b_admin).await?;
    let mut b_blocking = connect(o.b_admin).await?;
    let mut b_proxy = connect(o.b_proxy).await?;
    let body = format!(r#"{{"address": "{}", "ttl": "0s"}}"#, o.backend);
    let (mut routed, mut listed, mut puts) = (Vec::new(), Vec::new(), Vec::new());
    let mut lost = 0;
    let started = Instant::now();
    for i in 0..o.registrations {
        let service = format!("p-{i}");
        // B's index now: the blocking query waits for anything past it.
        let (_, index, _) = send(&mut b_admin, Method::GET, "/v1/services/load", "").await?;
        let index = index.ok_or("no X-Switchyard-Index on B")?;
        let blocking_path = format!("/v1/services/{service}?index={index}&wait=5s");
        let blocking = async {
            let (status, _, _) = send(&mut b_blocking, Method::GET, &blocking_path, "").await?;
            Ok::<_, Error>((status, Instant::now()))
        };
        let put_then_poll = async {
            // Let the blocking query reach B first.
            tokio::time::sleep(Duration::from_millis(2)).await;
            let path = format!("/v1/services/{service}/instances/x");
            let sent = Instant::now();
            let (status, _, answer) = send(&mut a_admin, Method::PUT, &path, &body).await?;
            let answered = Instant::now();
            if status != 200 {
                return Err::<_, Error>(
                    format!(
                        "PUT {path} on A: {status} {}",
                        String::from_utf8_lossy(&answer)
                    )
                    .into(),
                );
            }
            let probe = format!("/{service}/");
            loop {
                let (status, _, answer) = match send(&mut b_proxy, Method::GET, &probe, "").await {
                    Ok(r) => r,
                    Err(_) => {
                        b_proxy = connect(o.b_proxy).await?;
                        continue;
                    }
                };
                let now = Instant::now();
                if status == 200 && answer.as_ref() == BACKEND_BODY {
                    return Ok((sent, answered, Some(now)));
                }
                if now - answered > PROPAGATION_LIMIT {
                    return Ok((sent, answered, None));
                }
                tokio::time::sleep(o.poll).await;
            }
        };
        let (blocked, polled) = tokio::join!(blocking, put_then_poll);
        let (sent, answered, seen) = polled?;
        let (status, registry_at) = blocked?;
        puts.push(ms(answered - sent));
        match seen {
            Some(at) => routed.push(ms(at - answered)),
            None => lost += 1,
        }
        if status == 200 {
            listed.push(signed_ms(registry_at, answered));
        }
        tokio::time::sleep(o.gap).await;
    }
    println!(
        "propagation: {} registrations on A (one service each), next PUT {} ms after B routed the previous one, B polled every {} ms; {:.1} s",
        o.registrations,
        o.gap.as_millis(),
        o.poll.as_millis(),
        started.elapsed().as_secs_f64()
    );
    println!("  PUT on A answered:              {}", summary(&mut puts));
    println!("  A's 200 -> B routes (proxy):    {}", summary(&mut routed));
    println!(
        "  A's 200 -> B's registry (index): {}",
        summary(&mut listed)
    );
    if lost > 0 {
        println!(
            "  NOT ROUTED by B within {} s: {lost}",
            PROPAGATION_LIMIT.as_secs()
        );
    }
    Ok(())
}

// ===== phase 2: burst =====

/// Returns the instance numbers in the order their PUTs were answered.
async fn burst(o: &Options) -> Result<Vec<usize>, Error> {
    // Warm up, then the idle phase: the same load on both nodes.
    run_load_both(o, Duration::from_millis(500)).await?;
    let idle = run_load_both(o, o.idle).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let load_a = tokio::spawn(run_load_until(o.a_proxy, o.clone(), Arc::clone(&stop)));
    let load_b = tokio::spawn(run_load_until(o.b_proxy, o.clone(), Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = Usage::now(o).await;
    let started = Instant::now();
    let (admin, n, concurrency, ttl) = (o.a_admin, o.burst, o.concurrency, o.ttl.clone());
    let registered = tokio::task::spawn_blocking(move || {
        in_own_thread(move || register_all(admin, n, concurrency, ttl))
    })
    .await??;
    let burst_time = started.elapsed();
    let after = Usage::now(o).await;
    let (listed_a, listed_b) = tokio::join!(
        wait_listed(o.a_admin, o.burst, started),
        wait_listed(o.b_admin, o.burst, started)
    );
    let (listed_a, listed_b) = (listed_a?, listed_b?);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (load_a, load_b) = (load_a.await??, load_b.await??);

    let failed = registered.iter().filter(|r| r.status != 200).count();
    let mut latencies: Vec<f64> = registered.iter().map(|r| r.ms).collect();
    println!(
        "burst: {} registrations (ttl {}) through A, {} in flight, while {} req/s per node run through both proxies",
        o.burst, o.ttl, o.concurrency, o.rate
    );
    println!(
        "  total {:.2} s ({:.0}/s); per PUT {}{}",
        burst_time.as_secs_f64(),
        o.burst as f64 / burst_time.as_secs_f64(),
        summary(&mut latencies),
        if failed > 0 {
            format!("; {failed} NOT 200")
        } else {
            String::new()
        }
    );
    let listed = |at: Option<Duration>| {
        at.map_or("NOT within 60 s".to_owned(), |d| {
            format!("{:.2} s", d.as_secs_f64())
        })
    };
    println!(
        "  all listed (GET /v1/services) after the first PUT: A {}, B {}",
        listed(listed_a),
        listed(listed_b)
    );
    before.report("  during the burst", &after, None);
    for (node, idle, load) in [("A", &idle.0, &load_a), ("B", &idle.1, &load_b)] {
        let mut idle_ms: Vec<f64> = idle.iter().map(|s| s.ms).collect();
        let mut during: Vec<f64> = load
            .iter()
            .filter(|s| s.due >= started && s.due <= started + burst_time)
            .map(|s| s.ms)
            .collect();
        let errors = load.iter().filter(|s| s.status != 200).count()
            + idle.iter().filter(|s| s.status != 200).count();
        let idle_p99 = pct(&mut idle_ms, 99.0);
        let during_p99 = pct(&mut during, 99.0);
        println!("  proxy {node} idle:  {}", summary(&mut idle_ms));
        println!("  proxy {node} burst: {}", summary(&mut during));
        println!(
            "  proxy {node} p99 burst/idle: {:.2}x{}",
            during_p99 / idle_p99,
            if errors > 0 {
                format!(" ({errors} answers not 200)")
            } else {
                String::new()
            }
        );
    }
    if burst_time > Duration::from_secs(25) {
        println!(
            "  NOTE: the burst took longer than 25 s: with 30 s ttls, the first instances' leases end before the heartbeat passes reach them (expect 404s)"
        );
    }
    let mut order: Vec<&Registered> = registered.iter().filter(|r| r.status == 200).collect();
    order.sort_by_key(|r| r.done);
    Ok(order.iter().map(|r| r.i).collect())
}

struct Registered {
    i: usize,
    status: u16,
    done: Instant,
    ms: f64,
}

/// PUT instances `0..n` of `burst` on `concurrency` keep-alive connections.
async fn register_all(
    admin: SocketAddr,
    n: usize,
    concurrency: usize,
    ttl: String,
) -> Result<Vec<Registered>, Error> {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + BURST_LIMIT;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, ttl) = (Arc::clone(&next), ttl.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(admin).await?;
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                if Instant::now() > deadline {
                    return Err::<_, Error>("the burst took over 300 s".into());
                }
                let address = format!(
                    "10.{}.{}.{}:8080",
                    i / 62_500 % 256,
                    i / 250 % 250,
                    i % 250 + 1
                );
                let body = format!(r#"{{"address": "{address}", "ttl": "{ttl}"}}"#);
                let path = format!("/v1/services/burst/instances/i-{i}");
                let t = Instant::now();
                let (status, _, _) = send(&mut sender, Method::PUT, &path, &body).await?;
                let now = Instant::now();
                done.push(Registered {
                    i,
                    status,
                    done: now,
                    ms: ms(now - t),
                });
            }
            Ok(done)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// Poll a node's listing until `n` instances of `burst` are in its table;
/// the time since `since`, or `None` after `LISTED_LIMIT`.
async fn wait_listed(
    admin: SocketAddr,
    n: usize,
    since: Instant,
) -> Result<Option<Duration>, Error> {
    let mut sender = connect(admin).await?;
    let deadline = Instant::now() + LISTED_LIMIT;
    while Instant::now() < deadline {
        let (_, _, body) = send(&mut sender, Method::GET, "/v1/services", "").await?;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let healthy = v["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "burst"))
            .and_then(|s| s["healthy"].as_u64())
            .unwrap_or(0);
        if healthy as usize >= n {
            return Ok(Some(since.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(None)
}

// ===== phase 3: heartbeats =====

async fn heartbeats(
    o: &Options,
    order: Arc<Vec<usize>>,
    rate: f64,
    length: Duration,
) -> Result<(), Error> {
    if order.is_empty() {
        return Err("no registered instances to heartbeat".into());
    }
    let slots = (rate * length.as_secs_f64()).round() as usize;
    let start = Instant::now() + Duration::from_millis(200);
    let (admin, conns) = (o.a_admin, o.hb_conns);
    let driver = tokio::task::spawn_blocking(move || {
        in_own_thread(move || send_heartbeats(admin, conns, order, start, rate, slots))
    });
    tokio::time::sleep_until(start.into()).await;
    let before = Usage::now(o).await;
    let results = driver.await??;
    let elapsed = start.elapsed();
    let after = Usage::now(o).await;
    let ok = results.iter().filter(|h| h.status == 200).count();
    let not_found = results.iter().filter(|h| h.status == 404).count();
    let other = results.len() - ok - not_found;
    let mut latency: Vec<f64> = results.iter().map(|h| h.ms).collect();
    let mut lateness: Vec<f64> = results.iter().map(|h| h.late_ms).collect();
    println!(
        "heartbeats: {} through A at {rate:.0}/s ({} connections) over {:.1} s: {:.0}/s achieved; 200: {ok}, 404: {not_found}, other: {other}",
        results.len(),
        o.hb_conns,
        elapsed.as_secs_f64(),
        results.len() as f64 / elapsed.as_secs_f64(),
    );
    println!("  per heartbeat:  {}", summary(&mut latency));
    println!(
        "  sent late (after its slot): p99 {:.3} ms, max {:.3} ms",
        pct(&mut lateness, 99.0),
        pct(&mut lateness, 100.0)
    );
    before.report("  heartbeats", &after, Some(ok));
    Ok(())
}

struct Heartbeat {
    status: u16,
    ms: f64,
    late_ms: f64,
}

/// Heartbeat slot `j` is due at `start + j / rate` and renews
/// `order[j % len]`; `conns` connections take slots in turn.
async fn send_heartbeats(
    admin: SocketAddr,
    conns: usize,
    order: Arc<Vec<usize>>,
    start: Instant,
    rate: f64,
    slots: usize,
) -> Result<Vec<Heartbeat>, Error> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (next, order) = (Arc::clone(&next), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(admin).await?;
            let mut done = Vec::new();
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                if j >= slots {
                    break;
                }
                let due = start + Duration::from_secs_f64(j as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let sent = Instant::now();
                let path = format!(
                    "/v1/services/burst/instances/i-{}/heartbeat",
                    order[j % order.len()]
                );
                let (status, _, _) = send(&mut sender, Method::PUT, &path, "").await?;
                done.push(Heartbeat {
                    status,
                    ms: ms(sent.elapsed()),
                    late_ms: ms(sent - due),
                });
            }
            Ok::<_, Error>(done)
        }));
    }
    let mut all = Vec::with_capacity(slots);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

// ===== CPU and etcd counters =====

/// What the processes and etcd had done at one moment.
struct Usage {
    at: Instant,
    a: f64,
    b: f64,
    etcd: f64,
    counters: Counters,
}

impl Usage {
    async fn now(o: &Options) -> Usage {
        Usage {
            at: Instant::now(),
            a: cpu_seconds(o.a_pid),
            b: cpu_seconds(o.b_pid),
            etcd: o.etcd_pids.iter().map(|&p| cpu_seconds(p)).sum(),
            counters: etcd_counters(&o.etcd).await,
        }
    }

    /// Print CPU (% of one core) and etcd's RPCs per second between `self`
    /// and `later`; per heartbeat too when `heartbeats` is given.
    fn report(&self, label: &str, later: &Usage, heartbeats: Option<usize>) {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let pc = |a: f64, b: f64| (b - a) / secs * 100.0;
        println!(
            "{label}: CPU, % of one core: A {:.1} %, B {:.1} %, etcd (3 members) {:.1} %",
            pc(self.a, later.a),
            pc(self.b, later.b),
            pc(self.etcd, later.etcd)
        );
        if let Some(ok) = heartbeats.filter(|&ok| ok > 0) {
            println!(
                "{label}: A's CPU per heartbeat {:.0} µs, B's {:.0} µs",
                (later.a - self.a) * 1e6 / ok as f64,
                (later.b - self.b) * 1e6 / ok as f64
            );
        }
        let delta = later.counters.delta(&self.counters);
        if delta.is_empty() {
            println!("{label}: etcd counters unavailable");
            return;
        }
        let rate = |name: &str| delta.get(name).copied().unwrap_or(0.0) / secs;
        let mut rpcs: Vec<(String, f64)> = delta
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("rpc ")?.to_owned(), *v / secs)))
            .filter(|(_, r)| *r >= 0.05)
            .collect();
        rpcs.sort_by(|x, y| y.1.total_cmp(&x.1));
        let unary: f64 = rpcs
            .iter()
            .filter(|(m, _)| !STREAMS.contains(&m.as_str()))
            .map(|(_, r)| r)
            .sum::<f64>()
            .max(0.0);
        let keepalives = rate("msg LeaseKeepAlive");
        println!(
            "{label}: etcd requests/s (all members): {:.0} = unary RPCs {:.0} + keep-alive messages {:.0}; by method: {}",
            unary + keepalives,
            unary,
            keepalives,
            rpcs.iter()
                .map(|(m, r)| format!("{m} {r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(ok) = heartbeats.filter(|&ok| ok > 0) {
            println!(
                "{label}: per heartbeat answered 200: {:.2} etcd requests, {:.2} keep-alive streams opened, {:.2} proposals committed",
                (unary + keepalives) * secs / ok as f64,
                rate("rpc LeaseKeepAlive") * secs / ok as f64,
                rate("proposals committed") * secs / ok as f64
            );
        }
        println!(
            "{label}: etcd raft proposals committed {:.0}/s, WAL fsyncs {:.0}/s (all members), watch events sent {:.0}/s",
            rate("proposals committed"),
            rate("wal fsyncs"),
            rate("msg sent Watch"),
        );
    }
}

/// gRPC methods that are streams (counted by their messages, not opened).
const STREAMS: [&str; 2] = ["LeaseKeepAlive", "Watch"];

/// Named counters from etcd's /metrics, summed over the members (the raft
/// commit index: the highest member's).
#[derive(Default)]
struct Counters(BTreeMap<String, f64>);

impl Counters {
    fn delta(&self, earlier: &Counters) -> BTreeMap<String, f64> {
        if self.0.is_empty() || earlier.0.is_empty() {
            return BTreeMap::new();
        }
        self.0
            .iter()
            .map(|(k, v)| (k.clone(), v - earlier.0.get(k).copied().unwrap_or(0.0)))
            .collect()
    }
}

async fn etcd_counters(members: &[SocketAddr]) -> Counters {
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    for &member in members {
        let text = match scrape(member).await {
            Ok(text) => text,
            Err(e) => {
                eprintln!("cannot read etcd metrics at {member}: {e}");
                return Counters::default();
            }
        };
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let method = label(labels, "grpc_method");
            let key = match (name, method) {
                ("grpc_server_started_total", Some(m)) => format!("rpc {m}"),
                ("grpc_server_msg_received_total", Some(m)) if STREAMS.contains(&m) => {
                    format!("msg {m}")
                }
                ("grpc_server_msg_sent_total", Some("Watch")) => "msg sent Watch".into(),
                ("etcd_disk_wal_fsync_duration_seconds_count", _) => "wal fsyncs".into(),
                ("etcd_server_proposals_committed_total", _) => {
                    let top = sums.entry("proposals committed".into()).or_default();
                    *top = top.max(value);
                    continue;
                }
                _ => continue,
            };
            *sums.entry(key).or_default() += value;
        }
    }
    Counters(sums)
}

fn label<'l>(labels: &'l str, name: &str) -> Option<&'l str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = &labels[start..];
    Some(&rest[..rest.find('"')?])
}

async fn scrape(member: SocketAddr) -> Result<String, Error> {
    let mut sender = connect(member).await?;
    let (status, _, body) = send(&mut sender, Method::GET, "/metrics", "").await?;
    if status != 200 {
        return Err(format!("/metrics answered {status}").into());
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// User + system CPU time a process has used (Linux: /proc/PID/stat, in
/// clock ticks of 1/100 s); 0 for pid 0, NaN when unreadable.
fn cpu_seconds(pid: u32) -> f64 {
    if pid == 0 {
        return 0.0;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

// ===== proxy load =====

/// One paced request: when it was due, its latency from then, its status.
struct Sample {
    due: Instant,
    ms: f64,
    status: u16,
}

/// The same load on both nodes for `length`.
async fn run_load_both(o: &Options, length: Duration) -> Result<(Vec<Sample>, Vec<Sample>), Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let a = tokio::spawn(run_load_until(o.a_proxy, o.clone(), Arc::clone(&stop)));
    let b = tokio::spawn(run_load_until(o.b_proxy, o.clone(), Arc::clone(&stop)));
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    Ok((a.await??, b.await??))
}

/// `conns` paced connections sending GET /load/ at `rate` in all until
/// `stop` (open loop: each request is timed from its scheduled start).
async fn run_load_until(
    proxy: SocketAddr,
    o: Options,
    stop: Arc<AtomicBool>,
) -> Result<Vec<Sample>, Error> {
    let interval = Duration::from_secs_f64(o.conns as f64 / o.rate as f64);
    let mut tasks = Vec::new();
    for w in 0..o.conns {
        let stop = Arc::clone(&stop);
        let conns = o.conns;
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(proxy).await?;
            let mut samples = Vec::new();
            let offset = interval.mul_f64(w as f64 / conns as f64);
            let mut next = Instant::now() + offset;
            // Bounded: at most an hour of requests.
            let limit = Instant::now() + Duration::from_secs(3600);
            while !stop.load(Ordering::Relaxed) && next < limit {
                tokio::time::sleep_until(next.into()).await;
                let status = match send(&mut sender, Method::GET, "/load/", "").await {
                    Ok((status, _, _)) => status,
                    Err(_) => {
                        sender = connect(proxy).await?;
                        0
                    }
                };
                samples.push(Sample {
                    due: next,
                    ms: ms(next.elapsed()),
                    status,
                });
                next += interval;
            }
            Ok::<_, Error>(samples)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

// ===== HTTP =====

/// The backend: answers every request with `BACKEND_BODY`.
async fn start_backend(addr: SocketAddr) -> Result<(), Error> {
    let listener = TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                        BACKEND_BODY,
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

/// Run `task` on a thread of its own with its own single-threaded runtime,
/// and wait for its result (the thread keeps serving what it spawned).
fn in_own_thread<F, Fut, T>(task: F) -> Result<T, Error>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, Error>>,
    T: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(Error::from(e)));
                return;
            }
        };
        runtime.block_on(async move {
            let _ = tx.send(task().await);
            std::future::pending::<()>().await;
        });
    });
    rx.recv()?
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, Error> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One request (bounded by 30 s): status, `X-Switchyard-Index`, body.
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    body: &str,
) -> Result<(u16, Option<u64>, Bytes), Error> {
    let exchange = async {
        sender.ready().await?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1")
            .body(Full::new(Bytes::from(body.to_owned())))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let index = resp
            .headers()
            .get("x-switchyard-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, Error>((status, index, body))
    };
    tokio::time::timeout(Duration::from_secs(30), exchange).await?
}

async fn wait_ready(admin: SocketAddr) -> Result<(), Error> {
    for _ in 0..200 {
        if let Ok(mut s) = connect(admin).await {
            if let Ok((200, _, _)) = send(&mut s, Method::GET, "/readyz", "").await {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{admin} did not become ready").into())
}

/// Wait until `proxy` answers `path` from the backend.
async fn wait_routed(proxy: SocketAddr, path: &str, limit: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(mut s) = connect(proxy).await {
            if let Ok((200, _, body)) = send(&mut s, Method::GET, path, "").await {
                if body.as_ref() == BACKEND_BODY {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{proxy} does not route {path} to the backend").into())
}

// ===== figures =====

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `at - since` in ms, negative when `at` came first.
fn signed_ms(at: Instant, since: Instant) -> f64 {
    match at.checked_duration_since(since) {
        Some(d) => ms(d),
        None => -ms(since - at),
    }
}

/// The `p`-th percentile (100 = max); sorts `samples`.
fn pct(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (samples.len() as f64)).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

fn summary(samples: &mut [f64]) -> String {
    format!(
        "n={} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        pct(samples, 50.0),
        pct(samples, 99.0),
        pct(samples, 100.0)
    )
}
