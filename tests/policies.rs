//! SPEC §7 balancing policies against real backends on loopback: `hash`
//! (stability, spread, the keys that move when a backend leaves, every
//! `hash_key` form, the bounded-load spill of a hot key), `p2c_ewma` around
//! a slow backend, and `slow_start` shares while a new backend ramps and
//! after its window.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use support::slow::SlowBackend;
use support::*;

/// Which backend answered a GET with `header: value` (if any).
async fn via_header(
    http: &Http,
    app: &TestApp,
    path: &str,
    header: Option<(&str, &str)>,
) -> String {
    let mut req = request(Method::GET, app.proxy, path);
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    let resp = http
        .send(req.body(empty()).unwrap())
        .await
        .expect("request");
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.backend().expect("x-backend").to_owned()
}

fn hash_toml(backends: &[&FakeBackend], extra: &str) -> String {
    format!(
        "{}{}{}",
        base_toml(),
        service_toml("web", backends, &format!("balance = \"hash\"\n{extra}")),
        route_toml(None, "/", "web", false)
    )
}

/// Where each of `keys` lands, asking `times` times per key.
async fn owners(
    http: &Http,
    app: &TestApp,
    keys: &[String],
    times: usize,
) -> HashMap<String, String> {
    let mut owner = HashMap::new();
    for key in keys {
        let first = via_header(http, app, "/k", Some(("x-user-id", key))).await;
        for _ in 1..times {
            let again = via_header(http, app, "/k", Some(("x-user-id", key))).await;
            assert_eq!(again, first, "key {key} moved between requests");
        }
        owner.insert(key.clone(), first);
    }
    owner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_keeps_keys_put_spreads_them_and_moves_only_the_removed_backends_keys() {
    let backends = [
        FakeBackend::start("a").await,
        FakeBackend::start("b").await,
        FakeBackend::start("c").await,
        FakeBackend::start("d").await,
    ];
    let all: Vec<&FakeBackend> = backends.iter().collect();
    let app = start_app(&hash_toml(&all, "hash_key = \"header:X-User-Id\"")).await;
    let http = Http::new();
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let before = owners(&http, &app, &keys, 3).await;
    let spread = tally(&before.values().collect::<Vec<_>>());
    println!("hash: 200 keys over 4 backends: {spread:?}");
    for b in &backends {
        let n = spread.get(&b.name).copied().unwrap_or(0);
        // 50 each on average; a degenerate ring would starve one.
        assert!((20..=90).contains(&n), "{}: {n} keys: {spread:?}", b.name);
    }

    // Remove "c" by a reload: its keys move, the others' stay.
    let three = [&backends[0], &backends[1], &backends[3]];
    app.config
        .replace(&hash_toml(&three, "hash_key = \"header:X-User-Id\""));
    assert_eq!(admin_reload(app.admin).await.status, 200);
    let after = owners(&http, &app, &keys, 1).await;
    let others: Vec<&String> = keys.iter().filter(|k| before[*k] != "c").collect();
    let kept = others.iter().filter(|k| after[**k] == before[**k]).count();
    println!(
        "hash: one of 4 removed: {kept} of {} other keys kept their backend",
        others.len()
    );
    assert!(
        kept * 100 >= others.len() * 90,
        "only {kept} of {} kept",
        others.len()
    );
    assert!(after.values().all(|b| b != "c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hash_key_form_sticks_and_a_request_without_the_key_is_round_robin() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let c = FakeBackend::start("c").await;
    let http = Http::new();
    type Case = (
        &'static str,
        fn(usize) -> (String, Option<(String, String)>),
    );
    let cases: [Case; 4] = [
        ("cookie:sid", |i| {
            (
                "/x".into(),
                Some(("cookie".into(), format!("a=1; sid=s{i}"))),
            )
        }),
        ("query:user", |i| (format!("/x?user=u{i}&z=1"), None)),
        ("path", |i| (format!("/items/{i}"), None)),
        ("header:X-Tenant", |i| {
            ("/x".into(), Some(("x-tenant".into(), format!("t{i}"))))
        }),
    ];
    for (spec, make) in cases {
        let app = start_app(&hash_toml(&[&a, &b, &c], &format!("hash_key = \"{spec}\""))).await;
        let mut seen = Vec::new();
        for i in 0..30 {
            let (path, header) = make(i);
            let header = header.as_ref().map(|(n, v)| (n.as_str(), v.as_str()));
            let first = via_header(&http, &app, &path, header).await;
            for _ in 0..2 {
                assert_eq!(
                    via_header(&http, &app, &path, header).await,
                    first,
                    "{spec} key {i}"
                );
            }
            seen.push(first);
        }
        assert!(
            tally(&seen).len() >= 2,
            "{spec}: 30 keys all on one backend"
        );
        // Without the key: round robin over all three.
        let mut plain = Vec::new();
        for _ in 0..6 {
            plain.push(via_header(&http, &app, "/x", None).await);
        }
        if spec != "path" {
            let counts = tally(&plain);
            assert_eq!(counts.len(), 3, "{spec}: no key should rotate: {plain:?}");
        }
        app.stop().await.expect("stop");
    }
    // client_ip: every request from this test comes from 127.0.0.1.
    let app = start_app(&hash_toml(&[&a, &b, &c], "hash_key = \"client_ip\"")).await;
    let mut seen = Vec::new();
    for _ in 0..20 {
        seen.push(via_header(&http, &app, "/x", None).await);
    }
    assert_eq!(tally(&seen).len(), 1, "one client, one backend: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_spills_over_its_bound_and_comes_home_when_load_falls() {
    let backends = [
        FakeBackend::start("a").await,
        FakeBackend::start("b").await,
        FakeBackend::start("c").await,
        FakeBackend::start("d").await,
    ];
    let all: Vec<&FakeBackend> = backends.iter().collect();
    let app = start_app(&hash_toml(
        &all,
        "hash_key = \"header:X-User-Id\"\nhash_balance_factor = 150",
    ))
    .await;
    let http = Http::new();
    let home = via_header(&http, &app, "/k", Some(("x-user-id", "hot"))).await;
    // Hold 8 requests of the hot key, one after the other.
    let mut held = Vec::new();
    for n in 1..=8 {
        let req = request(Method::GET, app.proxy, "/k?hold=1")
            .header("x-user-id", "hot")
            .body(empty())
            .unwrap();
        let client = http.clone();
        held.push(tokio::spawn(async move { client.send(req).await }));
        eventually(WAIT, "the request is held", || async {
            backends.iter().map(FakeBackend::held).sum::<usize>() == n
        })
        .await;
    }
    let holding: Vec<(String, usize)> = backends
        .iter()
        .map(|b| (b.name.clone(), b.held()))
        .collect();
    println!("hash_balance_factor = 150, 8 hot-key requests in flight: {holding:?}");
    // Bound: ⌈1.5 · (L + 1) / 4⌉ with L in flight: the home backend holds
    // at most 3 of the 8; the rest spilled.
    let at_home = holding
        .iter()
        .find(|(n, _)| *n == home)
        .map_or(0, |(_, h)| *h);
    assert!(
        (1..=3).contains(&at_home),
        "home {home} holds {at_home}: {holding:?}"
    );
    assert!(
        holding.iter().filter(|(_, h)| *h > 0).count() >= 3,
        "{holding:?}"
    );
    for b in &backends {
        b.release(8);
    }
    for h in held {
        let resp = h.await.expect("join").expect("held request");
        assert_eq!(resp.status, 200);
    }
    // No load: the key is home again.
    eventually(WAIT, "in-flight counts settle", || async {
        let listed = listed(app.admin, "web").await;
        listed.iter().all(|i| i["active_requests"] == json!(0))
    })
    .await;
    assert_eq!(
        via_header(&http, &app, "/k", Some(("x-user-id", "hot"))).await,
        home
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_routes_around_a_backend_100ms_slower() {
    let fast = [
        SlowBackend::start("f1", Duration::from_millis(1)).await,
        SlowBackend::start("f2", Duration::from_millis(1)).await,
        SlowBackend::start("f3", Duration::from_millis(1)).await,
    ];
    let slow = SlowBackend::start("slow", Duration::from_millis(101)).await;
    let list: Vec<String> = fast
        .iter()
        .chain([&slow])
        .map(|b| format!("\"{}\"", b.address()))
        .collect();
    let toml = format!(
        "{}[services.web]\nbalance = \"p2c_ewma\"\nbackends = [{}]\n{}",
        base_toml(),
        list.join(", "),
        route_toml(None, "/", "web", false)
    );
    let app = start_app(&toml).await;
    // Four clients, 100 requests each, bounded.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (http, proxy) = (Http::new(), app.proxy);
        clients.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            for _ in 0..100 {
                let resp = http.get(proxy, "/x").await;
                answered.push(resp.backend().unwrap_or("error").to_owned());
            }
            answered
        }));
    }
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.expect("client"));
    }
    let counts = tally(&all);
    let share = counts.get("slow").copied().unwrap_or(0) as f64 / all.len() as f64;
    println!(
        "p2c_ewma, one backend 100 ms slower, 400 requests: {counts:?} (slow share {:.1} %)",
        share * 100.0
    );
    assert!(share < 0.15, "{counts:?}");
    assert_eq!(counts.get("error"), None);
    assert!(slow.hits() >= 1, "the slow one was tried at least once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_new_backend_from_a_small_share_to_its_full_share() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let c = FakeBackend::start("c").await;
    let window = Duration::from_secs(5);
    let toml = format!(
        "{}{}{}",
        base_toml(),
        service_toml("web", &[&a, &b], "slow_start = \"5s\""),
        route_toml(None, "/", "web", false)
    );
    let app = start_app(&toml).await;
    let http = Http::new();
    register(app.admin, "web", "c", &c.address(), json!({ "ttl": "0s" })).await;
    // It joins when the table has it; the ramp starts then.
    eventually(WAIT, "c is in the table", || async {
        listed(app.admin, "web")
            .await
            .iter()
            .any(|i| i["id"] == "c" && i["health"] == "healthy")
    })
    .await;
    let joined = Instant::now();
    let mut first = Vec::new();
    while joined.elapsed() < Duration::from_secs(1) && first.len() < 2_000 {
        first.push(
            http.get(app.proxy, "/x")
                .await
                .backend()
                .unwrap_or("")
                .to_owned(),
        );
    }
    let early = tally(&first).get("c").copied().unwrap_or(0) as f64 / first.len() as f64;
    // Past the window: its full third.
    while joined.elapsed() < window + Duration::from_millis(200) {
        http.get(app.proxy, "/warm").await;
    }
    let mut later = Vec::new();
    for _ in 0..300 {
        later.push(
            http.get(app.proxy, "/x")
                .await
                .backend()
                .unwrap_or("")
                .to_owned(),
        );
    }
    let full = tally(&later).get("c").copied().unwrap_or(0) as f64 / later.len() as f64;
    println!(
        "slow_start 5s: new backend's share {:.1} % in its first second ({} requests), {:.1} % after the window",
        early * 100.0,
        first.len(),
        full * 100.0
    );
    assert!(early > 0.0 && early < 0.2, "first second: {early}");
    assert!((0.28..=0.39).contains(&full), "after the window: {full}");
}

/// The default decay (10 s, longer than this test's quiet phase): a backend
/// that was slow and recovered is avoided at first, then — once its
/// estimate has decayed — tried again and given its share back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_gives_a_recovered_backend_its_share_back_after_the_decay() {
    let fast = [
        SlowBackend::start("f1", Duration::from_millis(1)).await,
        SlowBackend::start("f2", Duration::from_millis(1)).await,
        SlowBackend::start("f3", Duration::from_millis(1)).await,
    ];
    let flaky = SlowBackend::start("flaky", Duration::from_millis(100)).await;
    let list: Vec<String> = fast
        .iter()
        .chain([&flaky])
        .map(|b| format!("\"{}\"", b.address()))
        .collect();
    let toml = format!(
        "{}[services.web]\nbalance = \"p2c_ewma\"\nbackends = [{}]\n{}",
        base_toml(),
        list.join(", "),
        route_toml(None, "/", "web", false)
    );
    let app = start_app(&toml).await;
    let http = Http::new();
    // It serves a request while slow: its (peak) estimate is 100 ms.
    eventually(WAIT, "the slow backend served a request", || async {
        http.get(app.proxy, "/x").await;
        flaky.hits() >= 1
    })
    .await;
    flaky.set_delay(Duration::from_millis(1));
    let recovered = Instant::now();
    // Quiet phase: its estimate is still high.
    let (start, mut quiet) = (flaky.hits(), 0usize);
    while recovered.elapsed() < Duration::from_secs(3) {
        http.get(app.proxy, "/x").await;
        quiet += 1;
    }
    let quiet_share = (flaky.hits() - start) as f64 / quiet as f64;
    // Then it comes back: a 200-request window with ≥ 15 % on it.
    // From 100 ms to par with ~1.5 ms backends: ln(66) × 10 s ≈ 42 s on a quiet
    // machine (sooner when noise raises the fast ones' peaks).
    let limit = Duration::from_secs(120);
    let mut back_after = None;
    while recovered.elapsed() < limit && back_after.is_none() {
        let before = flaky.hits();
        for _ in 0..200 {
            http.get(app.proxy, "/x").await;
        }
        if flaky.hits() - before >= 30 {
            back_after = Some(recovered.elapsed());
        }
    }
    println!(
        "p2c_ewma: recovered backend's share {:.1} % in the 3 s after recovery ({quiet} requests), full share back after {back_after:?}",
        quiet_share * 100.0
    );
    assert!(quiet_share < 0.1, "avoided at first: {quiet_share}");
    assert!(back_after.is_some(), "never came back within {limit:?}");
}
