//! What active health checks cost: the CPU time of a Switchyard process that
//! checks many backends, measured from `/proc/self/stat`.
//!
//! ```text
//! cargo run --release --example health_bench -- [--backends 1000] [--services 10]
//!     [--interval 1s] [--kind http|tcp|none] [--seconds 10] [--warmup 3]
//!     [--keepalive true|false]
//! ```
//!
//! The backends run in a child process (this same binary with `--serve N`):
//! N listeners on 127.0.0.1 that answer every request `200 ok` with
//! keep-alive (`--keepalive false`: and close), so their cost stays out of
//! the figure. The parent runs the real `App`
//! in-process (listeners, publisher, health supervisor) on a default runtime,
//! spreads the backends over `--services` services, waits until every backend
//! is healthy (or, with `--kind none`, just started), lets it settle, and then
//! reads its own user + system time over `--seconds`. Admin requests (to count
//! checks) are made outside the measured window. `--kind none` runs the same
//! app without checks: the baseline to subtract.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchyard::app::App;
use switchyard::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// The same allocator as the `switchyard` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Linux reports /proc CPU times in USER_HZ ticks, 100 per second.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug)]
struct Args {
    backends: usize,
    services: usize,
    interval: String,
    kind: String,
    seconds: u64,
    warmup: u64,
    /// Whether the backends keep connections open (`--keepalive false`: they
    /// close after each answer, so every HTTP check needs a new connection).
    keepalive: bool,
}

/// The parent's arguments, or the child's (`--serve N --close BOOL`).
fn parse_args() -> Result<(Args, Option<(usize, bool)>), BoxError> {
    let mut args = Args {
        backends: 1000,
        services: 10,
        interval: "1s".into(),
        kind: "http".into(),
        seconds: 10,
        warmup: 3,
        keepalive: true,
    };
    let mut serve = None;
    let mut close = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--serve" => serve = Some(value.parse()?),
            "--close" => close = value.parse()?,
            "--backends" => args.backends = value.parse()?,
            "--services" => args.services = value.parse::<usize>()?.max(1),
            "--interval" => args.interval = value,
            "--kind" => args.kind = value,
            "--seconds" => args.seconds = value.parse()?,
            "--warmup" => args.warmup = value.parse()?,
            "--keepalive" => args.keepalive = value.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok((args, serve.map(|n| (n, close))))
}

fn main() -> Result<(), BoxError> {
    let (args, serve) = parse_args()?;
    let runtime = tokio::runtime::Runtime::new()?;
    match serve {
        Some((n, close)) => runtime.block_on(serve_backends(n, close)),
        None => runtime.block_on(measure(args)),
    }
}

// ===== the child: N trivial backends =====

async fn serve_backends(n: usize, close: bool) -> Result<(), BoxError> {
    let mut addrs = Vec::with_capacity(n);
    for _ in 0..n {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?.to_string());
        tokio::spawn(accept_loop(listener, close));
    }
    println!("{}", addrs.join(","));
    std::io::stdout().flush()?;
    // Exit when the parent closes our stdin (or dies).
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await?;
    Ok(())
}

async fn accept_loop(listener: TcpListener, close: bool) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream, close));
        }
    }
}

/// Answers 200 to each request head until EOF (keep-alive, like most
/// servers) or, with `close`, to one request and closes; a TCP check's
/// connection just ends.
async fn answer(mut stream: TcpStream, close: bool) {
    let mut buf = [0u8; 1024];
    let mut pending = Vec::new();
    loop {
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            pending.drain(..end + 4);
            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if stream.write_all(reply).await.is_err() || close {
                return;
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

// ===== the parent: the app and the measurement =====

async fn measure(args: Args) -> Result<(), BoxError> {
    let (mut child, addrs) = start_backends(args.backends, args.keepalive)?;
    let config = Config::from_toml_str(&config_text(&args, &addrs), Path::new("bench.toml"))
        .map_err(|e| e.to_string())?;
    let app = App::bind(config).await?;
    let admin = app.admin_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));

    let started = Instant::now();
    if args.kind != "none" {
        wait_all_healthy(admin, args.backends).await?;
    }
    eprintln!(
        "all {} backends up after {:?}",
        args.backends,
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;

    let checks0 = total_checks(admin).await?;
    let (cpu0, wall0) = (own_cpu_seconds()?, Instant::now());
    let child_cpu0 = cpu_seconds(&format!("/proc/{}/stat", child.id()))?;
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (cpu1, wall) = (own_cpu_seconds()?, wall0.elapsed().as_secs_f64());
    let child_cpu1 = cpu_seconds(&format!("/proc/{}/stat", child.id()))?;
    let checks = total_checks(admin).await? - checks0;

    let cpu = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
    report(&args, cpu, wall, checks, child_cpu1 - child_cpu0);
    let _ = stop.send(());
    let _ = running.await;
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

fn report(args: &Args, (user, system): (f64, f64), wall: f64, checks: f64, child_cpu: f64) {
    let cpu = user + system;
    let per_check_us = if checks > 0.0 {
        cpu / checks * 1e6
    } else {
        0.0
    };
    println!(
        "kind={} backends={} services={} interval={} keepalive={} window={wall:.1}s",
        args.kind, args.backends, args.services, args.interval, args.keepalive
    );
    println!(
        "checks={checks:.0} ({:.0}/s)  cpu={cpu:.2}s = {:.2}% of one core  ({per_check_us:.1} µs/check)",
        checks / wall,
        cpu / wall * 100.0
    );
    println!("  user {user:.2}s, system {system:.2}s");
    println!(
        "backends' process (not counted above): {:.2}% of one core",
        child_cpu / wall * 100.0
    );
}

/// Spawns this binary with `--serve N` and reads the listeners' addresses.
fn start_backends(n: usize, keepalive: bool) -> Result<(Child, Vec<String>), BoxError> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--serve",
            &n.to_string(),
            "--close",
            &(!keepalive).to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addrs: Vec<String> = line.trim().split(',').map(str::to_string).collect();
    if addrs.len() != n {
        return Err(format!("backends process gave {} addresses", addrs.len()).into());
    }
    Ok((child, addrs))
}

fn config_text(args: &Args, addrs: &[String]) -> String {
    let mut text =
        String::from("[proxy]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    let per = addrs.len().div_ceil(args.services);
    for (i, chunk) in addrs.chunks(per.max(1)).enumerate() {
        let list: Vec<String> = chunk.iter().map(|a| format!("\"{a}\"")).collect();
        text.push_str(&format!(
            "[services.s{i}]\nbackends = [{}]\n",
            list.join(",")
        ));
        if args.kind != "none" {
            text.push_str(&format!(
                "[services.s{i}.health_check]\nkind = \"{}\"\ninterval = \"{}\"\n",
                args.kind, args.interval
            ));
        }
    }
    text
}

/// This process's (user, system) CPU seconds.
fn own_cpu_seconds() -> Result<(f64, f64), BoxError> {
    cpu_split("/proc/self/stat")
}

/// utime + stime of a `/proc/PID/stat` file, in seconds.
fn cpu_seconds(path: &str) -> Result<f64, BoxError> {
    let (user, system) = cpu_split(path)?;
    Ok(user + system)
}

/// (utime, stime) (fields 14 and 15) of a `/proc/PID/stat` file, in seconds.
fn cpu_split(path: &str) -> Result<(f64, f64), BoxError> {
    let stat = std::fs::read_to_string(path)?;
    // The command name may hold spaces; fields resume after its ')'.
    let rest = stat.rsplit_once(')').ok_or("odd stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).ok_or("no utime")?.parse()?;
    let stime: f64 = fields.get(12).ok_or("no stime")?.parse()?;
    Ok((utime / TICKS_PER_SECOND, stime / TICKS_PER_SECOND))
}

async fn wait_all_healthy(admin: SocketAddr, n: usize) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = http_get(admin, "/v1/services").await?;
        let json: serde_json::Value = serde_json::from_str(&body)?;
        let healthy: u64 = json["services"]
            .as_array()
            .map(|s| s.iter().filter_map(|s| s["healthy"].as_u64()).sum())
            .unwrap_or(0);
        if healthy as usize >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("only {healthy} of {n} backends became healthy").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The sum of every `switchyard_health_checks_total` sample.
async fn total_checks(admin: SocketAddr) -> Result<f64, BoxError> {
    let text = http_get(admin, "/metrics").await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("switchyard_health_checks_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// A minimal HTTP/1.0 GET; returns the body.
async fn http_get(addr: SocketAddr, path: &str) -> Result<String, BoxError> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.0\r\nhost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok(body.to_string())
}
