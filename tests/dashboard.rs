//! The admin dashboard: the page at `/` (with a strict Content-Security-Policy
//! and no inline script), its script and style as separate paths, and its
//! one read per refresh, `GET /v1/dashboard` (checked field by field here;
//! tests/dashboard_browser.rs renders the page in headless Chromium).

mod support;

use http::StatusCode;
use serde_json::Value;
use support::*;

fn header(resp: &Resp, name: &str) -> String {
    resp.header(name).unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_is_served_at_the_admin_root_with_a_strict_csp() {
    let backend = FakeBackend::start("web").await;
    let app = start_app(&(base_toml() + &service_toml("web", &[&backend], ""))).await;
    let resp = get(app.admin, "/").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(header(&resp, "content-type").starts_with("text/html"));
    let csp = header(&resp, "content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let page = resp.text();
    assert!(page.contains("<title>Switchyard</title>"));
    // No inline script or style: every <script> has a src, no <style>, no on*=.
    for tag in page.split("<script").skip(1) {
        let open = tag.split('>').next().unwrap_or_default();
        assert!(
            open.contains("src=\"/dashboard.js\""),
            "inline script: {open}"
        );
    }
    assert!(!page.contains("<style"), "inline style");
    assert!(!page.contains(" onload=") && !page.contains(" onclick="));

    let js = get(app.admin, "/dashboard.js").await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(header(&js, "content-type").starts_with("text/javascript"));
    assert_eq!(header(&js, "x-content-type-options"), "nosniff");
    let script = js.text();
    // One request per refresh, and the token only for the tab's session.
    assert_eq!(script.matches("fetch(").count(), 1, "one fetch per refresh");
    assert!(script.contains("\"/v1/dashboard\""));
    assert!(script.contains("sessionStorage") && !script.contains("localStorage"));
    let css = get(app.admin, "/dashboard.css").await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(header(&css, "content-type").starts_with("text/css"));
    // The three health levels have three different colours.
    let style = css.text();
    let colour = |class: &str| {
        let rule = style.split(class).nth(1).unwrap_or_default();
        rule.split("background:")
            .nth(1)
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let (ok, degraded, down) = (
        colour(".badge-ok"),
        colour(".badge-degraded"),
        colour(".badge-down"),
    );
    assert!(
        !ok.is_empty() && ok != degraded && degraded != down && ok != down,
        "{ok} {degraded} {down}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_only_answers_get() {
    let app = start_app(&base_toml()).await;
    for path in ["/", "/dashboard.js", "/dashboard.css", "/v1/dashboard"] {
        let resp = Http::new()
            .send(
                request(http::Method::POST, app.admin, path)
                    .body(empty())
                    .expect("request"),
            )
            .await
            .expect("admin answers");
        assert_eq!(resp.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
    }
}

fn service<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["services"]
        .as_array()
        .and_then(|list| list.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no service {name} in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_dashboard_has_everything_the_page_shows_in_one_answer() {
    let web = FakeBackend::start("web").await;
    let api = FakeBackend::start("api").await;
    let toml = base_toml()
        + &service_toml("web", &[&web], "")
        + &service_toml("api", &[&api], "")
        + &route_toml(Some("api.example.com"), "/v2", "api", true)
        + &route_toml(None, "/api", "api", false)
        + &route_toml(None, "/typo", "apii", false);
    let app = start_app(&toml).await;
    for _ in 0..7 {
        assert_eq!(get(app.proxy, "/web/").await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(app.proxy, "/api/?status=500").await.status, 500);
    }
    assert_eq!(get(app.proxy, "/api/").await.status, 200);

    let resp = get(app.admin, "/v1/dashboard").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let body: Value = serde_json::from_slice(&resp.body).expect("json");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        body["uptime_seconds"].as_f64().is_some_and(|u| u >= 0.0),
        "{body}"
    );
    assert!(body["started_at"]
        .as_str()
        .is_some_and(|s| s.ends_with('Z')));
    assert_eq!(body["last_reload"], Value::Null, "no reload yet");

    let web_json = service(&body, "web");
    assert_eq!(web_json["healthy"], 1);
    assert_eq!(web_json["instances"][0]["address"], web.address());
    assert_eq!(web_json["traffic"]["requests"], 7.0);
    assert_eq!(web_json["traffic"]["errors"], 0.0);
    let api_json = service(&body, "api");
    assert_eq!(api_json["traffic"]["requests"], 4.0);
    assert_eq!(api_json["traffic"]["errors"], 3.0);
    let buckets = api_json["traffic"]["duration"]["buckets"]
        .as_array()
        .expect("buckets");
    assert_eq!(buckets.last().unwrap()["le"], Value::Null, "+Inf last");
    assert_eq!(buckets.last().unwrap()["count"], 4.0);
    assert_eq!(api_json["traffic"]["duration"]["count"], 4.0);

    let routes = body["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 3);
    assert_eq!(routes[0]["host"], "api.example.com");
    assert_eq!(routes[0]["path_prefix"], "/v2");
    assert_eq!(routes[0]["strip_prefix"], true);
    assert_eq!(routes[0]["declared"], true);
    assert_eq!(routes[1]["host"], Value::Null);
    assert_eq!(routes[2]["service"], "apii");
    assert_eq!(routes[2]["declared"], false);

    // A rejected reload, then a good one: the last result is shown.
    app.config
        .write_in_place(&(toml.clone() + "[proxy.bogus]\n"));
    assert_eq!(admin_reload(app.admin).await.status, 400);
    let body: Value = serde_json::from_slice(&get(app.admin, "/v1/dashboard").await.body).unwrap();
    assert_eq!(body["last_reload"]["result"], "error", "{body}");
    assert_eq!(body["last_reload"]["trigger"], "admin API");
    let errors = body["last_reload"]["errors"].as_array().expect("errors");
    assert!(
        errors[0].as_str().unwrap().contains("proxy.bogus"),
        "{errors:?}"
    );
    app.config.write_in_place(&toml);
    assert_eq!(admin_reload(app.admin).await.status, 200);
    let body: Value = serde_json::from_slice(&get(app.admin, "/v1/dashboard").await.body).unwrap();
    assert_eq!(body["last_reload"]["result"], "ok", "{body}");
    assert_eq!(body["last_reload"]["errors"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_non_loopback_admin_the_snapshot_needs_the_token_and_the_page_does_not() {
    let toml = "[proxy]\nlisten = [\"127.0.0.1:0\"]\n\n[admin]\nlisten = \"0.0.0.0:0\"\n\
                token = \"dash-secret\"\n";
    let app = start_app(toml).await;
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], app.admin.port()));
    for path in ["/", "/dashboard.js", "/dashboard.css"] {
        assert_eq!(get(admin, path).await.status, StatusCode::OK, "{path}");
    }
    let resp = get(admin, "/v1/dashboard").await;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    assert!(resp.text().contains("bearer token"), "{}", resp.text());
    let with_token = Http::new()
        .send(
            request(http::Method::GET, admin, "/v1/dashboard")
                .header("authorization", "Bearer dash-secret")
                .body(empty())
                .expect("request"),
        )
        .await
        .expect("admin answers");
    assert_eq!(with_token.status, StatusCode::OK);
}
