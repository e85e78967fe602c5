//! Active health checks end to end: real sockets on 127.0.0.1, the real app
//! in-process, and keep-alive backends whose `/healthz` answer each test
//! flips (good, 500, hang, garbage, close, redirect, flapping) — mostly on
//! the connection the checker kept from its last passing check. Intervals are short
//! (50–200 ms) and every wait is a bounded poll; the bounds are generous
//! because the suite runs on a small, noisy box.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use support::*;

// ===== a backend with a scriptable /healthz =====

/// What `/healthz` does.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// 200.
    Good,
    /// Answers with this status.
    Status(u16),
    /// Reads the request, never answers, keeps the connection open.
    Hang,
    /// Answers bytes that are not HTTP.
    Garbage,
    /// Closes the connection without a byte.
    Close,
    /// 302 to another path (which would pass if followed).
    Redirect,
    /// 200 and 500 by turns.
    Flap,
}

struct Shared {
    name: String,
    mode: Mutex<Mode>,
    health_hits: AtomicUsize,
    traffic: AtomicUsize,
    accepts: AtomicUsize,
}

/// An HTTP/1.1 backend on `127.0.0.1:0`: `/healthz` follows [`Mode`], every
/// other path answers 200 with `x-backend: NAME` (keep-alive, bodyless
/// requests only, which is all these tests send).
struct HealthBackend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl HealthBackend {
    async fn start(name: &str, mode: Mode) -> HealthBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            name: name.to_string(),
            mode: Mutex::new(mode),
            health_hits: AtomicUsize::new(0),
            traffic: AtomicUsize::new(0),
            accepts: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        HealthBackend { addr, shared, task }
    }

    fn address(&self) -> String {
        self.addr.to_string()
    }

    fn set(&self, mode: Mode) {
        *self.shared.mode.lock().expect("mode lock") = mode;
    }

    /// Health checks received (counted when the request head arrives).
    fn health_hits(&self) -> usize {
        self.shared.health_hits.load(Ordering::SeqCst)
    }
}

impl Drop for HealthBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Connections live in the set, so aborting this task closes them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    shared.accepts.fetch_add(1, Ordering::SeqCst);
                    conns.spawn(serve_conn(stream, Arc::clone(&shared)));
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Reads one request head; `None` at EOF or error.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn serve_conn(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut stream, &mut buf).await {
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let reply = if path == "/healthz" {
            let hit = shared.health_hits.fetch_add(1, Ordering::SeqCst);
            let mode = *shared.mode.lock().expect("mode lock");
            match health_reply(mode, hit).await {
                Some(reply) => reply,
                None => return, // close (or, after a hang, give up)
            }
        } else {
            shared.traffic.fetch_add(1, Ordering::SeqCst);
            let name = &shared.name;
            let len = name.len();
            format!("HTTP/1.1 200 OK\r\nx-backend: {name}\r\ncontent-length: {len}\r\n\r\n{name}")
        };
        // Keep-alive, like most servers: the checker may reuse the connection.
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The answer to a check in `mode`; `None` = close without answering.
async fn health_reply(mode: Mode, hit: usize) -> Option<String> {
    let status = |code: u16| format!("HTTP/1.1 {code} X\r\ncontent-length: 2\r\n\r\nok");
    Some(match mode {
        Mode::Good => status(200),
        Mode::Status(code) => status(code),
        Mode::Flap if hit.is_multiple_of(2) => status(200),
        Mode::Flap => status(500),
        Mode::Redirect => {
            "HTTP/1.1 302 Found\r\nlocation: /ok\r\ncontent-length: 0\r\n\r\n".to_string()
        }
        Mode::Garbage => "SSH-2.0-OpenSSH_9.2\r\n\r\nnot http at all\r\n".to_string(),
        Mode::Close => return None,
        Mode::Hang => {
            // Never answering is the fault under test.
            tokio::time::sleep(Duration::from_secs(60)).await;
            return None;
        }
    })
}

// ===== config and observation helpers =====

/// `[services.NAME]` with these backends (or raw addresses) and a
/// `[services.NAME.health_check]` table made of `check` lines.
fn checked_service(name: &str, addresses: &[String], check: &str) -> String {
    let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[services.{name}]\nbackends = [{}]\n\n[services.{name}.health_check]\n{check}\n",
        list.join(", ")
    )
}

fn addresses(backends: &[&HealthBackend]) -> Vec<String> {
    backends.iter().map(|b| b.address()).collect()
}

/// Check lines with this interval and both thresholds; a timeout of 2 s,
/// generous, so that a slow moment of a loaded box is not a failed check.
fn check_lines(interval_ms: u64, rise: u32, fall: u32) -> String {
    check_lines_with_timeout(interval_ms, rise, fall, 2000)
}

fn check_lines_with_timeout(interval_ms: u64, rise: u32, fall: u32, timeout_ms: u64) -> String {
    format!(
        "interval = \"{interval_ms}ms\"\ntimeout = \"{timeout_ms}ms\"\n\
         healthy_threshold = {rise}\nunhealthy_threshold = {fall}\n"
    )
}

fn all_from(who: &[Option<String>], name: &str) -> bool {
    who.iter().all(|w| w.as_deref() == Some(name))
}

fn checks(metrics: &str, address: &str, result: &str) -> f64 {
    health_checks(metrics, &[("backend", address), ("result", result)])
}

// ===== tests =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_backend_gets_no_traffic_until_its_first_check_passes() {
    let b = HealthBackend::start("b", Mode::Status(500)).await;
    // A failure threshold out of reach: the backend stays unknown while failing.
    let check = check_lines(100, 3, 1000);
    let app = start_app(&(base_toml() + &checked_service("svc", &addresses(&[&b]), &check))).await;
    wait_ready(app.admin).await;

    eventually(WAIT, "a first check", || async { b.health_hits() >= 1 }).await;
    assert_eq!(
        health_of(app.admin, "svc", &b.address()).await.as_deref(),
        Some("unknown")
    );
    let resp = Http::new().get(app.proxy, "/svc/x").await;
    assert_eq!(
        resp.status,
        503,
        "unknown backend got traffic: {}",
        resp.text()
    );
    assert_eq!(b.shared.traffic.load(Ordering::SeqCst), 0);

    // One pass is enough from unknown, even with healthy_threshold = 3.
    b.set(Mode::Good);
    wait_health(app.admin, "svc", &b.address(), "healthy", WAIT).await;
    eventually(WAIT, "traffic to reach b", || async {
        all_from(&answers(app.proxy, "svc", 1).await, "b")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_check_of_a_new_backend_runs_at_once() {
    let b = HealthBackend::start("b", Mode::Good).await;
    // An interval far beyond the wait: only an immediate first check can pass in time.
    let check = "interval = \"1h\"\ntimeout = \"1s\"\n";
    let app = start_app(&(base_toml() + &checked_service("svc", &addresses(&[&b]), check))).await;
    wait_health(app.admin, "svc", &b.address(), "healthy", WAIT).await;
    assert_eq!(b.health_hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_checks_reuse_one_connection() {
    let b = HealthBackend::start("b", Mode::Good).await;
    let check = check_lines(50, 1, 2);
    let app = start_app(&(base_toml() + &checked_service("svc", &addresses(&[&b]), &check))).await;
    eventually(WAIT, "ten checks", || async { b.health_hits() >= 10 }).await;
    assert_eq!(b.shared.accepts.load(Ordering::SeqCst), 1);
    assert_eq!(
        health_of(app.admin, "svc", &b.address()).await.as_deref(),
        Some("healthy")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_leaves_within_the_threshold_and_returns_after_recovery() {
    let a = HealthBackend::start("a", Mode::Good).await;
    let b = HealthBackend::start("b", Mode::Good).await;
    let (interval, fall) = (200, 2);
    let check = check_lines(interval, 2, fall);
    let app =
        start_app(&(base_toml() + &checked_service("svc", &addresses(&[&a, &b]), &check))).await;
    for x in [&a, &b] {
        wait_health(app.admin, "svc", &x.address(), "healthy", WAIT).await;
    }

    a.set(Mode::Status(500));
    let started = Instant::now();
    wait_health(app.admin, "svc", &a.address(), "unhealthy", WAIT).await;
    // The ready list follows at the next (coalesced) table rebuild.
    eventually(WAIT, "traffic to leave a", || async {
        all_from(&answers(app.proxy, "svc", 4).await, "b")
    })
    .await;
    let took = started.elapsed();
    // The contract is interval × unhealthy_threshold + one interval (600 ms
    // here); the assertion leaves room for a loaded CI box.
    let promised = Duration::from_millis(interval * (u64::from(fall) + 1));
    assert!(took < promised * 4, "took {took:?}, promised {promised:?}");
    eprintln!("traffic left a after {took:?} (promised within {promised:?})");
    let who = answers(app.proxy, "svc", 10).await;
    assert!(all_from(&who, "b"), "traffic still reaches a: {who:?}");

    let metrics = metrics_text(app.admin).await;
    let up = |x: &HealthBackend| {
        metric(
            &metrics,
            "switchyard_backend_up",
            &[("backend", &x.address())],
        )
    };
    assert_eq!(
        (up(&a), up(&b)),
        (Some(0.0), Some(1.0)),
        "switchyard_backend_up"
    );
    assert!(checks(&metrics, &a.address(), "failure") >= f64::from(fall));
    assert!(checks(&metrics, &b.address(), "success") >= 1.0);

    a.set(Mode::Good);
    wait_health(app.admin, "svc", &a.address(), "healthy", WAIT).await;
    eventually(WAIT, "traffic to return to a", || async {
        let who = answers(app.proxy, "svc", 4).await;
        assert!(who.iter().all(Option::is_some), "requests failed: {who:?}");
        who.iter().any(|w| w.as_deref() == Some("a"))
    })
    .await;
}

/// A healthy backend whose `/healthz` turns to `mode` is marked unhealthy.
async fn goes_down_on(mode: Mode, extra_check: &str) {
    let b = HealthBackend::start("b", Mode::Good).await;
    // A short timeout: the hang case waits for it twice.
    let check = format!("{}{extra_check}", check_lines_with_timeout(100, 1, 2, 300));
    let app = start_app(&(base_toml() + &checked_service("svc", &addresses(&[&b]), &check))).await;
    wait_health(app.admin, "svc", &b.address(), "healthy", WAIT).await;
    b.set(mode);
    wait_health(app.admin, "svc", &b.address(), "unhealthy", WAIT).await;
    let metrics = metrics_text(app.admin).await;
    assert!(
        checks(&metrics, &b.address(), "failure") >= 2.0,
        "{mode:?}: failures not counted"
    );
    let what = format!("{mode:?}: requests to get 503");
    eventually(WAIT, &what, || async {
        Http::new().get(app.proxy, "/svc/x").await.status == 503
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_health_endpoint_times_out_and_counts_as_failure() {
    goes_down_on(Mode::Hang, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_answer_fails() {
    goes_down_on(Mode::Garbage, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_fails() {
    goes_down_on(Mode::Close, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_outside_the_expected_range_fails() {
    goes_down_on(Mode::Redirect, "expect_status = \"200-299\"\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_checks_mark_a_closed_port_down_and_a_listening_one_up() {
    let live = HealthBackend::start("live", Mode::Hang).await;
    let closed = refused_addr().to_string();
    let check = format!("kind = \"tcp\"\n{}", check_lines(100, 1, 2));
    let listed = vec![live.address(), closed.clone()];
    let app = start_app(&(base_toml() + &checked_service("svc", &listed, &check))).await;
    // A TCP check sends nothing, so even a hanging HTTP endpoint passes it.
    wait_health(app.admin, "svc", &live.address(), "healthy", WAIT).await;
    wait_health(app.admin, "svc", &closed, "unhealthy", WAIT).await;
    assert_eq!(live.health_hits(), 0, "a TCP check sent an HTTP request");
    let who = answers(app.proxy, "svc", 6).await;
    assert!(all_from(&who, "live"), "{who:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_is_damped_by_the_thresholds() {
    let b = HealthBackend::start("b", Mode::Good).await;
    let check = check_lines(50, 2, 2);
    let app = start_app(&(base_toml() + &checked_service("svc", &addresses(&[&b]), &check))).await;
    wait_health(app.admin, "svc", &b.address(), "healthy", WAIT).await;

    b.set(Mode::Flap);
    let start_hits = b.health_hits();
    let deadline = Instant::now() + WAIT;
    // Never two failures in a row: it must stay healthy throughout.
    while b.health_hits() < start_hits + 12 && Instant::now() < deadline {
        let h = health_of(app.admin, "svc", &b.address()).await;
        assert_eq!(
            h.as_deref(),
            Some("healthy"),
            "flapped after {} checks",
            b.health_hits() - start_hits
        );
        // The pace of looking; the loop ends on the checks counted above.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(b.health_hits() >= start_hits + 12, "too few checks ran");
    let metrics = metrics_text(app.admin).await;
    assert!(
        checks(&metrics, &b.address(), "failure") >= 5.0,
        "flap failures not counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_of_a_backend_removed_by_a_reload_stop() {
    let a = HealthBackend::start("a", Mode::Good).await;
    let b = HealthBackend::start("b", Mode::Good).await;
    let check = check_lines(100, 1, 2);
    let both = base_toml() + &checked_service("svc", &addresses(&[&a, &b]), &check);
    let app = start_app(&both).await;
    eventually(WAIT, "a to be checked a few times", || async {
        a.health_hits() >= 3
    })
    .await;

    app.config
        .replace(&(base_toml() + &checked_service("svc", &addresses(&[&b]), &check)));
    let resp = admin_reload(app.admin).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        health_of(app.admin, "svc", &a.address()).await,
        None,
        "a still listed"
    );

    // The supervisor stops a's checker at the next publish; a check may be
    // in flight. Settled once a's count stays put while b is checked twice.
    eventually(WAIT, "a's checks to stop", || async {
        let (a_now, b_now) = (a.health_hits(), b.health_hits());
        eventually(WAIT, "b to be checked twice", || async {
            b.health_hits() >= b_now + 2
        })
        .await;
        a.health_hits() == a_now
    })
    .await;
    let settled = a.health_hits();
    let b_before = b.health_hits();
    // Ten intervals: a stopped checker stays silent while b's keeps going.
    eventually(WAIT, "b to be checked on", || async {
        b.health_hits() >= b_before + 10
    })
    .await;
    assert_eq!(
        a.health_hits(),
        settled,
        "the removed backend is still checked"
    );
    let metrics = metrics_text(app.admin).await;
    let gone = metric(
        &metrics,
        "switchyard_health_checks_total",
        &[("backend", &a.address())],
    );
    assert_eq!(gone, None, "the removed backend's check series remain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stays_across_a_reload_keeps_its_state() {
    let a = HealthBackend::start("a", Mode::Good).await;
    let b = HealthBackend::start("b", Mode::Status(500)).await;
    let c = HealthBackend::start("c", Mode::Status(500)).await;
    let config = |list: &[&HealthBackend], interval| {
        base_toml() + &checked_service("svc", &addresses(list), &check_lines(interval, 1, 2))
    };
    let app = start_app(&config(&[&a, &b], 100)).await;
    wait_health(app.admin, "svc", &a.address(), "healthy", WAIT).await;
    wait_health(app.admin, "svc", &b.address(), "unhealthy", WAIT).await;

    // Membership changes (c joins): a and b are the same backends, same state.
    app.config.replace(&config(&[&a, &b, &c], 100));
    assert_eq!(admin_reload(app.admin).await.status, 200);
    let states = [
        health_of(app.admin, "svc", &a.address()).await,
        health_of(app.admin, "svc", &b.address()).await,
    ];
    assert_eq!(states, [Some("healthy".into()), Some("unhealthy".into())]);
    assert!(all_from(&answers(app.proxy, "svc", 4).await, "a"));

    // The check settings change: checkers restart, the state stays.
    app.config.replace(&config(&[&a, &b, &c], 150));
    assert_eq!(admin_reload(app.admin).await.status, 200);
    // Watched until the restarted checkers have each run 3 checks (a
    // success for a, failures for b: either would flip a reset state).
    let (a_from, b_from) = (a.health_hits(), b.health_hits());
    let deadline = Instant::now() + WAIT;
    while a.health_hits() < a_from + 3 || b.health_hits() < b_from + 3 {
        assert!(
            Instant::now() < deadline,
            "the restarted checkers ran no checks"
        );
        let a_health = health_of(app.admin, "svc", &a.address()).await;
        let b_health = health_of(app.admin, "svc", &b.address()).await;
        assert_eq!(a_health.as_deref(), Some("healthy"), "a lost its state");
        assert_eq!(b_health.as_deref(), Some("unhealthy"), "b lost its state");
        // The pace of looking, not a wait for an event.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(all_from(&answers(app.proxy, "svc", 4).await, "a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_without_checks_are_healthy_and_unchecked() {
    let a = HealthBackend::start("a", Mode::Status(500)).await;
    // A checked service beside it: its checks show the checkers running.
    let witness = HealthBackend::start("w", Mode::Good).await;
    let toml = format!(
        "{}[services.svc]\nbackends = [\"{}\"]\n{}",
        base_toml(),
        a.address(),
        checked_service("checked", &addresses(&[&witness]), &check_lines(50, 1, 1))
    );
    let app = start_app(&toml).await;
    assert_eq!(
        health_of(app.admin, "svc", &a.address()).await.as_deref(),
        Some("healthy")
    );
    assert!(all_from(&answers(app.proxy, "svc", 3).await, "a"));
    eventually(WAIT, "5 checks of the checked service", || async {
        witness.health_hits() >= 5
    })
    .await;
    assert_eq!(a.health_hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_check_table_makes_a_down_backend_healthy_again() {
    let a = HealthBackend::start("a", Mode::Status(500)).await;
    let check = check_lines(100, 1, 1);
    let app = start_app(&(base_toml() + &checked_service("svc", &addresses(&[&a]), &check))).await;
    wait_health(app.admin, "svc", &a.address(), "unhealthy", WAIT).await;

    let plain = format!(
        "{}[services.svc]\nbackends = [\"{}\"]\n",
        base_toml(),
        a.address()
    );
    app.config.replace(&plain);
    assert_eq!(admin_reload(app.admin).await.status, 200);
    wait_health(app.admin, "svc", &a.address(), "healthy", WAIT).await;
    eventually(WAIT, "traffic to reach a", || async {
        all_from(&answers(app.proxy, "svc", 1).await, "a")
    })
    .await;
}
