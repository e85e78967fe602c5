//! SPEC §7 runtime control and sessions: `PATCH /v1/services/{service}/
//! instances/{id}` (drain with a request in flight that completes, weight 0,
//! back to ready, the 400/404/401 answers, overrides that survive a reload,
//! registered instances whose override is stored with the registration),
//! and `[services.X.sticky]` cookies (round trip, re-stick after a drain).

mod support;

use http::{Method, StatusCode};
use serde_json::json;
use support::*;

fn web_toml(backends: &[&FakeBackend], extra: &str) -> String {
    format!(
        "{}{}{}",
        base_toml(),
        service_toml("web", backends, extra),
        route_toml(None, "/", "web", false)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_the_request_in_flight_finish_and_takes_no_new_ones() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let app = start_app(&web_toml(&[&a, &b], "")).await;
    let http = Http::new();
    // Round robin starts at the first listed backend: the held one is on a.
    let client = http.clone();
    let proxy = app.proxy;
    let in_flight = tokio::spawn(async move { client.get(proxy, "/slow?hold=1").await });
    eventually(WAIT, "a holds the request", || async { a.held() == 1 }).await;

    let resp = patch(app.admin, "web", &a.address(), json!({ "state": "drain" })).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["id"], a.address());
    assert_eq!(body["state"], "drain");
    assert_eq!(body["active_requests"], 1);

    let hits = a.hits();
    let after = answer_labels(&http, app.proxy, "/x", 20).await;
    assert!(after.iter().all(|n| n == "b"), "{after:?}");
    assert_eq!(a.hits(), hits, "a drained backend gets no new request");

    a.release(1);
    let done = in_flight.await.expect("join");
    assert_eq!(done.status, 200, "the request in flight completes");
    assert_eq!(done.backend(), Some("a"));

    let listed = listed(app.admin, "web").await;
    let row = listed
        .iter()
        .find(|i| i["id"] == a.address())
        .expect("a listed");
    assert_eq!(row["state"], "drain");
    assert_eq!(row["draining"], true);

    // Back to ready: a takes requests again.
    let resp = patch(app.admin, "web", &a.address(), json!({ "state": "ready" })).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.json()["state"], "ready");
    let back = answer_labels(&http, app.proxy, "/x", 10).await;
    assert_eq!(tally(&back).get("a"), Some(&5), "{back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_zero_takes_a_backend_out_and_weights_apply_at_once() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let app = start_app(&web_toml(&[&a, &b], "")).await;
    let http = Http::new();
    let resp = patch(app.admin, "web", &b.address(), json!({ "weight": 0 })).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.json()["weight"], 0);
    let only_a = answer_labels(&http, app.proxy, "/x", 10).await;
    assert!(only_a.iter().all(|n| n == "a"), "{only_a:?}");

    // Both at 0: no backend takes requests.
    patch(app.admin, "web", &a.address(), json!({ "weight": 0 })).await;
    let none = http.get(app.proxy, "/x").await;
    assert_eq!(none.status, StatusCode::SERVICE_UNAVAILABLE);

    // a at 3, b at 1: 3:1.
    patch(app.admin, "web", &a.address(), json!({ "weight": 3 })).await;
    patch(app.admin, "web", &b.address(), json!({ "weight": 1 })).await;
    let counts = tally(&answer_labels(&http, app.proxy, "/x", 40).await);
    assert_eq!(
        (counts.get("a"), counts.get("b")),
        (Some(&30), Some(&10)),
        "{counts:?}"
    );

    // null: back to the config's weight (1:1).
    patch(app.admin, "web", &a.address(), json!({ "weight": null })).await;
    let counts = tally(&answer_labels(&http, app.proxy, "/x", 20).await);
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_patches_are_400_unknown_targets_404_and_writes_need_the_token() {
    let a = FakeBackend::start("a").await;
    let toml = format!(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n\n{}{}",
        service_toml("web", &[&a], ""),
        route_toml(None, "/", "web", false)
    );
    let app = start_app(&toml).await;
    let path = instance_path("web", &a.address());
    let call = |body: &'static str, token: Option<&'static str>| {
        let path = path.clone();
        let admin = app.admin;
        async move { admin_call(admin, Method::PATCH, &path, body, token).await }
    };
    let token = Some("s3cret");
    for body in [
        "",
        "{",
        "[]",
        "{}",
        r#"{"weight": 1001}"#,
        r#"{"weight": -1}"#,
        r#"{"weight": "5"}"#,
        r#"{"state": "down"}"#,
        r#"{"weight": 1, "colour": "red"}"#,
    ] {
        let resp = call(body, token).await;
        assert_eq!(
            resp.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            resp.text()
        );
        assert!(resp.json()["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let unauthorized = call(r#"{"state": "drain"}"#, None).await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
    let wrong = call(r#"{"state": "drain"}"#, Some("nope")).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    for (service, id) in [
        ("web", "127.0.0.1:1"),
        ("nope", a.address().as_str()),
        ("web", "ghost"),
    ] {
        let resp = admin_call(
            app.admin,
            Method::PATCH,
            &instance_path(service, id),
            r#"{"state": "drain"}"#,
            token,
        )
        .await;
        assert_eq!(
            resp.status,
            StatusCode::NOT_FOUND,
            "{service}/{id}: {}",
            resp.text()
        );
    }
    // Nothing above changed anything.
    assert_eq!(Http::new().get(app.proxy, "/x").await.backend(), Some("a"));
    let ok = call(r#"{"state": "drain"}"#, token).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_override_survives_reloads_while_the_backend_stays() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let app = start_app(&web_toml(&[&a, &b], "")).await;
    let http = Http::new();
    let resp = patch(app.admin, "web", &a.address(), json!({ "state": "drain" })).await;
    assert_eq!(resp.status, StatusCode::OK);
    // A reload with a changed file (a new timeout) keeps the drain.
    app.config
        .replace(&web_toml(&[&a, &b], "request_timeout = \"20s\""));
    assert_eq!(admin_reload(app.admin).await.status, 200);
    let hits = a.hits();
    let after = answer_labels(&http, app.proxy, "/x", 10).await;
    assert!(after.iter().all(|n| n == "b"), "{after:?}");
    assert_eq!(a.hits(), hits);
    // Removed from the config, then listed again: the override is gone.
    app.config.replace(&web_toml(&[&b], ""));
    assert_eq!(admin_reload(app.admin).await.status, 200);
    app.config.replace(&web_toml(&[&a, &b], ""));
    assert_eq!(admin_reload(app.admin).await.status, 200);
    let back = answer_labels(&http, app.proxy, "/x", 10).await;
    assert_eq!(tally(&back).get("a"), Some(&5), "{back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_instances_override_is_stored_with_its_registration() {
    let a = FakeBackend::start("a").await;
    let r = FakeBackend::start("r").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("registry.json");
    let toml = format!(
        "{}[registry]\nstore = \"file:{}\"\n\n{}{}",
        base_toml(),
        store.display(),
        service_toml("web", &[&a], ""),
        route_toml(None, "/", "web", false)
    );
    let app = start_app(&toml).await;
    let http = Http::new();
    register(app.admin, "web", "r1", &r.address(), json!({ "ttl": "0s" })).await;
    eventually(WAIT, "r1 takes requests", || async {
        answer_labels(&http, app.proxy, "/x", 2)
            .await
            .iter()
            .any(|n| n == "r")
    })
    .await;
    let resp = patch(app.admin, "web", "r1", json!({ "weight": 0 })).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let body = resp.json();
    assert_eq!(
        (body["id"].clone(), body["weight"].clone()),
        (json!("r1"), json!(0))
    );
    let hits = r.hits();
    let after = answer_labels(&http, app.proxy, "/x", 10).await;
    assert!(after.iter().all(|n| n == "a"), "{after:?}");
    assert_eq!(
        r.hits(),
        hits,
        "weight 0: no new request from the answer on"
    );
    // The instance registers again (its agent does this): the override stays.
    register(
        app.admin,
        "web",
        "r1",
        &r.address(),
        json!({ "ttl": "0s", "weight": 2 }),
    )
    .await;
    let row = listed(app.admin, "web").await;
    let row = row
        .iter()
        .find(|i| i["id"] == "r1")
        .expect("r1 listed")
        .clone();
    assert_eq!(row["weight"], 0, "{row}");
    // The file store holds it.
    eventually(WAIT, "the store file has the override", || async {
        std::fs::read_to_string(&store).is_ok_and(|text| text.contains("\"weight_override\": 0"))
    })
    .await;
    let drained = patch(
        app.admin,
        "web",
        "r1",
        json!({ "weight": null, "state": "drain" }),
    )
    .await;
    assert_eq!(drained.json()["state"], "drain");
    assert_eq!(drained.json()["weight"], 2);
    eventually(WAIT, "the store file has the drain", || async {
        std::fs::read_to_string(&store).is_ok_and(|text| text.contains("\"drain\": true"))
    })
    .await;
    let after = answer_labels(&http, app.proxy, "/x", 6).await;
    assert!(after.iter().all(|n| n == "a"), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_round_trips_and_re_sticks_after_a_drain() {
    let backends = [
        FakeBackend::start("a").await,
        FakeBackend::start("b").await,
        FakeBackend::start("c").await,
    ];
    let all: Vec<&FakeBackend> = backends.iter().collect();
    let app = start_app(&web_toml(
        &all,
        "[services.web.sticky]\ncookie = \"sy_web\"\nttl = \"1h\"",
    ))
    .await;
    let http = Http::new();
    let first = http.get(app.proxy, "/x").await;
    let set = first.header("set-cookie").expect("set-cookie").to_owned();
    let stuck = first.backend().expect("x-backend").to_owned();
    assert!(set.starts_with("sy_web="), "{set}");
    assert!(set.contains("Max-Age=3600") && set.contains("HttpOnly") && set.contains("Path=/"));
    for b in &backends {
        let port = b.addr.port().to_string();
        assert!(
            !set.contains(&port) && !set.contains("127.0.0.1"),
            "names the address: {set}"
        );
    }
    let cookie = set.split(';').next().unwrap_or("").to_owned();
    let with_cookie = |cookie: String| {
        let http = http.clone();
        let proxy = app.proxy;
        async move {
            let req = request(Method::GET, proxy, "/x")
                .header("cookie", format!("other=1; {cookie}"))
                .body(empty())
                .unwrap();
            http.send(req).await.expect("request")
        }
    };
    for _ in 0..15 {
        let resp = with_cookie(cookie.clone()).await;
        assert_eq!(resp.backend(), Some(stuck.as_str()));
        assert_eq!(
            resp.header("set-cookie"),
            None,
            "already stuck: no new cookie"
        );
    }

    // Drain the sticky backend: the session moves and the cookie is re-set.
    let drained = backends
        .iter()
        .find(|b| b.name == stuck)
        .expect("stuck backend");
    let resp = patch(
        app.admin,
        "web",
        &drained.address(),
        json!({ "state": "drain" }),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    let hits = drained.hits();
    let moved = with_cookie(cookie.clone()).await;
    let now = moved.backend().expect("x-backend").to_owned();
    assert_ne!(now, stuck);
    let reset = moved.header("set-cookie").expect("re-set").to_owned();
    let cookie2 = reset.split(';').next().unwrap_or("").to_owned();
    assert_ne!(cookie2, cookie);
    for _ in 0..10 {
        assert_eq!(
            with_cookie(cookie2.clone()).await.backend(),
            Some(now.as_str())
        );
    }
    // The old cookie never reaches the drained backend again.
    for _ in 0..5 {
        assert_ne!(
            with_cookie(cookie.clone()).await.backend(),
            Some(stuck.as_str())
        );
    }
    assert_eq!(drained.hits(), hits);
    // A cookie naming no backend: balanced, and set.
    let bogus = with_cookie("sy_web=0123456789abcdef".into()).await;
    assert_eq!(bogus.status, 200);
    assert!(bogus.header("set-cookie").is_some());
}
