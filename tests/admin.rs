//! The admin listener's basics: /healthz, /readyz and the /metrics families
//! SPEC §5 names (labels matched in any order).

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_answer_200() {
    let app = start_app(&base_toml()).await;
    assert_eq!(get(app.admin, "/healthz").await.status, 200);
    wait_ready(app.admin).await;
    assert_eq!(get(app.admin, "/readyz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_the_required_families() {
    let web = FakeBackend::start("web").await;
    let dead = refused_addr();
    let toml = format!(
        "{}{}[services.dead]\nbackends = [\"{dead}\"]\nconnect_timeout = \"500ms\"\n\n{}{}",
        base_toml(),
        service_toml("web", &[&web], ""),
        route_toml(None, "/web", "web", false),
        route_toml(None, "/dead", "dead", false)
    );
    let app = start_app(&toml).await;
    let http = Http::new();
    for i in 0..5 {
        assert_eq!(http.get(app.proxy, &format!("/web/{i}")).await.status, 200);
    }
    // Its status (502) is checked in errors.rs; here only that it is counted.
    let dead_code = http
        .get(app.proxy, "/dead/x")
        .await
        .status
        .as_str()
        .to_string();

    let resp = get(app.admin, "/metrics").await;
    assert_eq!(resp.status, 200);
    let ctype = resp.header("content-type").unwrap_or("");
    assert!(ctype.starts_with("text/plain"), "content-type {ctype:?}");
    let text = resp.text();
    let web_addr = web.address();
    let dead_addr = dead.to_string();

    let mut problems = Vec::new();
    let mut check = |what: &str, got: Option<f64>, ok: &dyn Fn(f64) -> bool| match got {
        Some(v) if ok(v) => {}
        other => problems.push(format!("{what}: {other:?}")),
    };
    check(
        "requests_total{service=web,code=200} == 5",
        metric(
            &text,
            "switchyard_requests_total",
            &[("service", "web"), ("code", "200")],
        ),
        &|v| v == 5.0,
    );
    check(
        "requests_total{service=dead,code=<its status>} == 1",
        metric(
            &text,
            "switchyard_requests_total",
            &[("service", "dead"), ("code", &dead_code)],
        ),
        &|v| v == 1.0,
    );
    check(
        "request_duration_seconds_count{service=web} == 5",
        metric(
            &text,
            "switchyard_request_duration_seconds_count",
            &[("service", "web")],
        ),
        &|v| v == 5.0,
    );
    check(
        "request_duration_seconds_bucket{service=web,le=+Inf} == 5",
        metric(
            &text,
            "switchyard_request_duration_seconds_bucket",
            &[("service", "web"), ("le", "+Inf")],
        ),
        &|v| v == 5.0,
    );
    check(
        "request_duration_seconds_sum{service=web} >= 0",
        metric(
            &text,
            "switchyard_request_duration_seconds_sum",
            &[("service", "web")],
        ),
        &|v| v >= 0.0,
    );
    check(
        "backend_requests_total{web,outcome=ok} == 5",
        metric(
            &text,
            "switchyard_backend_requests_total",
            &[
                ("service", "web"),
                ("backend", &web_addr),
                ("outcome", "ok"),
            ],
        ),
        &|v| v == 5.0,
    );
    check(
        "backend_requests_total{dead,outcome=error} >= 1",
        metric(
            &text,
            "switchyard_backend_requests_total",
            &[
                ("service", "dead"),
                ("backend", &dead_addr),
                ("outcome", "error"),
            ],
        ),
        &|v| v >= 1.0,
    );
    check(
        "backend_active_requests{web} == 0",
        metric(
            &text,
            "switchyard_backend_active_requests",
            &[("service", "web"), ("backend", &web_addr)],
        ),
        &|v| v == 0.0,
    );
    check(
        "build_info{version} == 1",
        metric(
            &text,
            "switchyard_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
        ),
        &|v| v == 1.0,
    );
    if metric_label_sets(&text, "switchyard_connections_open")
        .iter()
        .all(|ls| !ls.iter().any(|(k, _)| k == "listener"))
    {
        problems.push("no switchyard_connections_open{listener=...} sample".into());
    }
    if !text.contains("switchyard_config_reloads_total") {
        problems.push("no switchyard_config_reloads_total".into());
    }
    for family in [
        "switchyard_requests_total counter",
        "switchyard_request_duration_seconds histogram",
        "switchyard_backend_requests_total counter",
        "switchyard_backend_active_requests gauge",
        "switchyard_connections_open gauge",
        "switchyard_build_info gauge",
    ] {
        if !text.contains(&format!("# TYPE {family}")) {
            problems.push(format!("missing `# TYPE {family}`"));
        }
    }
    assert!(
        problems.is_empty(),
        "{problems:#?}\n--- /metrics ---\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_open_follows_client_connections() {
    let web = FakeBackend::start("web").await;
    let toml = format!(
        "{}{}{}",
        base_toml(),
        service_toml("web", &[&web], ""),
        route_toml(None, "/", "web", false)
    );
    let app = start_app(&toml).await;
    let open = |text: &str| metric(text, "switchyard_connections_open", &[]).unwrap_or(0.0);

    // The scrape's own connection may count too: compare with a baseline.
    let baseline = open(&metrics_text(app.admin).await);
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut conn = RawConn::connect(app.proxy).await;
        conn.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(conn.response().await.status, 200);
        conns.push(conn);
    }
    eventually(WAIT, "connections_open up by 3", || async {
        open(&metrics_text(app.admin).await) >= baseline + 3.0
    })
    .await;
    drop(conns);
    eventually(
        Duration::from_secs(5),
        "connections_open back to its baseline",
        || async { open(&metrics_text(app.admin).await) <= baseline },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_counter_counts_ok_reloads() {
    let app = start_app(&base_toml()).await;
    let before = metric(
        &metrics_text(app.admin).await,
        "switchyard_config_reloads_total",
        &[("result", "ok")],
    )
    .unwrap_or(0.0);
    let resp = admin_reload(app.admin).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let after = metric(
        &metrics_text(app.admin).await,
        "switchyard_config_reloads_total",
        &[("result", "ok")],
    )
    .unwrap_or(0.0);
    assert!(after >= before + 1.0, "{before} -> {after}");
}
