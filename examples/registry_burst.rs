//! Registry burst benchmark (issue 4, "Speed"): registers N instances (default
//! 10,000) into one service with a sequential keep-alive client while a paced
//! load runs through the proxy to a real backend, and compares the proxy's
//! latency while idle with its latency during the burst.
//!
//! ```sh
//! cargo build --release --bins --examples
//! target/release/examples/registry_burst                 # memory store
//! target/release/examples/registry_burst --store file    # file store (coalesced writes)
//! ```
//!
//! Options: `--bin PATH` (default target/release/switchyard), `--instances N`,
//! `--store memory|file`, `--rate R` (proxy requests per second, default 2000),
//! `--workers W` (load connections, default 4), `--idle-secs S` (default 3),
//! `--log LEVEL` (Switchyard's RUST_LOG, default info), `--server-cpus LIST`
//! (run Switchyard under `taskset -c LIST`), `--server-workers N` (its
//! `[proxy] workers`, default 0 = one per core), `--priority background|normal`
//! (its `[admin] priority`, default background). Switchyard's log is kept in
//! `$REGISTRY_BURST_LOG` when set.
//!
//! On a 2-core machine, pin the two sides apart as `bench/` does:
//! `taskset -c 0 target/release/examples/registry_burst --server-cpus 1 --server-workers 1`.
//!
//! The load is paced (open loop): each worker has a schedule and a request
//! that starts late is timed from its scheduled start, so a stall in the
//! proxy shows up in the percentiles instead of hiding as lower throughput.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
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

#[derive(Debug, Clone)]
struct Options {
    bin: String,
    instances: usize,
    file_store: bool,
    rate: u64,
    workers: u64,
    idle: Duration,
    log: String,
    /// `taskset -c` list for Switchyard (empty: not pinned).
    server_cpus: String,
    /// `[proxy] workers` (0 = one per core).
    server_workers: u32,
    /// `[admin] priority`.
    priority: String,
}

fn options() -> Result<Options, Error> {
    let mut o = Options {
        bin: "target/release/switchyard".into(),
        instances: 10_000,
        file_store: false,
        rate: 2000,
        workers: 4,
        idle: Duration::from_secs(3),
        log: "info".into(),
        server_cpus: String::new(),
        server_workers: 0,
        priority: "background".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--bin" => o.bin = value,
            "--instances" => o.instances = value.parse()?,
            "--store" => o.file_store = value == "file",
            "--rate" => o.rate = value.parse()?,
            "--workers" => o.workers = value.parse()?,
            "--idle-secs" => o.idle = Duration::from_secs(value.parse()?),
            "--log" => o.log = value,
            "--server-cpus" => o.server_cpus = value,
            "--server-workers" => o.server_workers = value.parse()?,
            "--priority" => o.priority = value,
            _ => return Err(format!("unknown option {flag}").into()),
        }
    }
    Ok(o)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let o = options()?;
    let backend = in_own_thread(start_backend)?;
    let dir = tempfile::tempdir()?;
    let (proxy, admin) = (free_port()?, free_port()?);
    let store = if o.file_store {
        format!("file:{}", dir.path().join("registry.json").display())
    } else {
        "memory".into()
    };
    let config = format!(
        "[proxy]\nlisten = [\"{proxy}\"]\nworkers = {}\n[admin]\nlisten = \"{admin}\"\npriority = \"{}\"\n[registry]\nstore = \"{store}\"\nmax_instances_per_service = {}\n[services.load]\nbackends = [\"{backend}\"]\n[services.burst]\n",
        o.server_workers,
        o.priority,
        o.instances.max(1)
    );
    let config_path = dir.path().join("switchyard.toml");
    std::fs::write(&config_path, config)?;
    // The log goes elsewhere: the config's folder is watched for changes.
    let logs = tempfile::tempdir()?;
    let log_path = std::env::var("REGISTRY_BURST_LOG")
        .map_or_else(|_| logs.path().join("switchyard.log"), Into::into);
    let log = std::fs::File::create(log_path)?;
    let mut server = if o.server_cpus.is_empty() {
        tokio::process::Command::new(&o.bin)
    } else {
        let mut pinned = tokio::process::Command::new("taskset");
        pinned.args(["-c", &o.server_cpus, &o.bin]);
        pinned
    };
    let mut server = server
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", &o.log)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    wait_ready(admin).await?;

    // Warm up, then the idle phase.
    run_load(proxy, &o, Duration::from_millis(500)).await?;
    let idle: Vec<f64> = run_load(proxy, &o, o.idle)
        .await?
        .into_iter()
        .map(|(_, ms)| ms)
        .collect();

    // The burst, with the load running beside it.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load_until(proxy, o.clone(), Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server_pid = server.id().unwrap_or(0);
    let cpu_before = cpu_seconds(server_pid);
    let started = Instant::now();
    let instances = o.instances;
    // Control experiment: send the PUTs to the backend, not to Switchyard.
    let target = if std::env::var_os("REGISTRY_BURST_CONTROL").is_some() {
        backend
    } else {
        admin
    };
    let registration_latencies = tokio::task::spawn_blocking(move || {
        in_own_thread(move || async move { register_all(target, instances).await })
    })
    .await??;
    let burst_time = started.elapsed();
    let server_cpu = cpu_seconds(server_pid) - cpu_before;
    let joined = if target == admin {
        wait_listed(admin, o.instances).await?
    } else {
        true
    };
    let joined_after = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let load = load.await??;
    // Requests due while the PUTs were being sent: the burst itself.
    let during: Vec<f64> = load
        .iter()
        .filter(|(due, _)| *due >= started && *due <= started + burst_time)
        .map(|&(_, ms)| ms)
        .collect();
    // Requests due after it, while the last batch was joining the table.
    let mut after: Vec<f64> = load
        .iter()
        .filter(|(due, _)| *due > started + burst_time)
        .map(|&(_, ms)| ms)
        .collect();
    let mut reg = registration_latencies;
    println!(
        "registry burst: {} instances, store={}, priority={}, load {} req/s over {} connections",
        o.instances,
        if o.file_store { "file" } else { "memory" },
        o.priority,
        o.rate,
        o.workers
    );
    println!(
        "  registrations: {:.3} s total ({:.0}/s); per request p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        burst_time.as_secs_f64(),
        o.instances as f64 / burst_time.as_secs_f64(),
        pct(&mut reg, 50.0),
        pct(&mut reg, 99.0),
        pct(&mut reg, 100.0),
    );
    println!(
        "  switchyard CPU during the burst: {:.3} s ({:.1} µs per registration, load included)",
        server_cpu,
        server_cpu * 1e6 / o.instances as f64
    );
    println!(
        "  all {} listed by GET /v1/services {:.3} s after the first PUT ({})",
        o.instances,
        joined_after.as_secs_f64(),
        if joined { "ok" } else { "TIMED OUT" }
    );
    let (mut idle, mut during) = (idle, during);
    let (idle_p99, during_p99) = (pct(&mut idle, 99.0), pct(&mut during, 99.0));
    println!(
        "  proxy idle:   n={} p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        idle.len(),
        pct(&mut idle, 50.0),
        idle_p99,
        pct(&mut idle, 100.0)
    );
    println!(
        "  proxy burst:  n={} p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        during.len(),
        pct(&mut during, 50.0),
        during_p99,
        pct(&mut during, 100.0)
    );
    println!(
        "  proxy after:  n={} p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (until all joined, +200 ms)",
        after.len(),
        pct(&mut after, 50.0),
        pct(&mut after, 99.0),
        pct(&mut after, 100.0)
    );
    println!("  p99 burst/idle: {:.2}x", during_p99 / idle_p99);
    server.kill().await?;
    Ok(())
}

/// User + system CPU time a process has used (Linux: /proc/PID/stat, in
/// clock ticks of 1/100 s); NaN elsewhere.
fn cpu_seconds(pid: u32) -> f64 {
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

/// The `p`-th percentile in milliseconds (100 = max).
fn pct(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (samples.len() as f64)).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

fn free_port() -> Result<SocketAddr, Error> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// Run `task` on a thread of its own with its own single-threaded runtime,
/// and wait for its result. The backend and the registering client each get
/// one, so neither delays the load generator's tasks: the OS shares the CPU
/// between threads preemptively, where tasks of one runtime would take turns.
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
            // Keep serving whatever the task spawned (the backend).
            std::future::pending::<()>().await;
        });
    });
    rx.recv()?
}

/// A minimal HTTP/1.1 backend answering `ok` (its accept loop keeps running
/// on the calling runtime).
async fn start_backend() -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"ok",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, Error> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    addr: SocketAddr,
    path: &str,
    body: Bytes,
) -> Result<(u16, Bytes), Error> {
    sender.ready().await?;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(body))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn wait_ready(admin: SocketAddr) -> Result<(), Error> {
    for _ in 0..200 {
        if let Ok(mut s) = connect(admin).await {
            if let Ok((200, _)) = send(&mut s, Method::GET, admin, "/readyz", Bytes::new()).await {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("switchyard did not become ready".into())
}

/// PUT `n` instances, one after another on one keep-alive connection;
/// returns each request's latency in ms.
async fn register_all(admin: SocketAddr, n: usize) -> Result<Vec<f64>, Error> {
    let mut sender = connect(admin).await?;
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let address = format!(
            "10.{}.{}.{}:8080",
            i / 62_500 % 256,
            i / 250 % 250,
            i % 250 + 1
        );
        let body = format!(r#"{{"address": "{address}", "ttl": "0s"}}"#);
        let path = format!("/v1/services/burst/instances/i-{i}");
        let t = Instant::now();
        let (status, answer) =
            send(&mut sender, Method::PUT, admin, &path, Bytes::from(body)).await?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        if status != 200 {
            return Err(
                format!("PUT {path}: {status} {}", String::from_utf8_lossy(&answer)).into(),
            );
        }
    }
    Ok(latencies)
}

/// Poll the listing until `n` instances of `burst` are in the published table.
async fn wait_listed(admin: SocketAddr, n: usize) -> Result<bool, Error> {
    let mut sender = connect(admin).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let (_, body) = send(
            &mut sender,
            Method::GET,
            admin,
            "/v1/services",
            Bytes::new(),
        )
        .await?;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let healthy = v["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "burst"))
            .and_then(|s| s["healthy"].as_u64())
            .unwrap_or(0);
        if healthy as usize >= n {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(false)
}

/// Each request's due time and latency in ms.
type Samples = Vec<(Instant, f64)>;

async fn run_load(proxy: SocketAddr, o: &Options, length: Duration) -> Result<Samples, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(run_load_until(proxy, o.clone(), Arc::clone(&stop)));
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    task.await?
}

/// `workers` paced connections sending GET /load/ until `stop`.
async fn run_load_until(
    proxy: SocketAddr,
    o: Options,
    stop: Arc<AtomicBool>,
) -> Result<Samples, Error> {
    let interval = Duration::from_secs_f64(o.workers as f64 / o.rate as f64);
    let mut tasks = Vec::new();
    for w in 0..o.workers {
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(proxy).await?;
            let mut latencies = Vec::new();
            let offset = interval.mul_f64(w as f64 / o.workers as f64);
            let mut next = Instant::now() + offset;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(next.into()).await;
                let (status, _) =
                    send(&mut sender, Method::GET, proxy, "/load/", Bytes::new()).await?;
                if status != 200 {
                    return Err::<Samples, Error>(format!("proxy answered {status}").into());
                }
                latencies.push((next, next.elapsed().as_secs_f64() * 1e3));
                next += interval;
            }
            Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}
