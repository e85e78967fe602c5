//! The dashboard in a real browser: headless Chromium loads the admin page
//! of a running Switchyard (scripts run under `--virtual-time-budget`, so
//! several 2 s refreshes happen) and the rendered DOM must list every
//! service and instance, their health badges (ok, degraded, down), and the
//! request rate, 5xx ratio and p99 computed from two samples while traffic
//! flows. CI installs Debian's `chromium` (.ci/setup); without it this test
//! fails and says so.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::registry_api::register;
use support::*;

/// The browser binary: `$CHROMIUM`, else `chromium`, `chromium-browser` or
/// `google-chrome` on PATH (`support::tools`; the test requires it first).
fn chromium() -> String {
    tools::locate(&tools::CHROMIUM).expect("the test requires Chromium first")
}

/// Loads `url` headless and returns the DOM after `budget_ms` of virtual time.
async fn dump_dom(url: &str, budget_ms: u32) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let browser = chromium();
    let child = tokio::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--virtual-time-budget={budget_ms}"),
            "--dump-dom",
            url,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {browser} ({e}): install Debian's `chromium` (.ci/setup does)")
        });
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium output");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// The rendered `<section data-service="NAME">…</section>`.
fn section<'a>(dom: &'a str, name: &str) -> &'a str {
    let start = dom
        .find(&format!("<section data-service=\"{name}\">"))
        .unwrap_or_else(|| panic!("service {name} not rendered:\n{dom}"));
    let rest = &dom[start..];
    &rest[..rest.find("</section>").unwrap_or(rest.len())]
}

/// The figure shown above `caption` in a service's section.
fn figure(section: &str, caption: &str) -> String {
    let at = section
        .find(&format!("<span>{caption}</span>"))
        .unwrap_or_else(|| panic!("no {caption} in {section}"));
    let before = &section[..at];
    let open = before.rfind("<b>").expect("<b>") + 3;
    before[open..].trim_end_matches("</b>").to_owned()
}

fn number(text: &str) -> f64 {
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a number: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_renders_services_instances_health_and_traffic() {
    if !tools::require(&tools::CHROMIUM) {
        return;
    }
    let web_a = FakeBackend::start("web-a").await;
    let web_b = FakeBackend::start("web-b").await;
    let api = FakeBackend::start("api").await;
    let half = FakeBackend::start("half").await;
    let registered = FakeBackend::start("api-registered").await;
    let check = "[services.half.health_check]\npath = \"/\"\ninterval = \"200ms\"\n\
                 [services.dead.health_check]\npath = \"/\"\ninterval = \"200ms\"\n";
    let dead_list = format!("backends = [\"{}\"]\n", refused_addr());
    let half_list = format!(
        "backends = [\"{}\", \"{}\"]\n",
        half.address(),
        refused_addr()
    );
    let toml = base_toml()
        + &service_toml("web", &[&web_a, &web_b], "")
        + &service_toml("api", &[&api], "")
        + "[services.half]\n"
        + &half_list
        + "[services.dead]\n"
        + &dead_list
        + check
        + &route_toml(None, "/shop", "web", false);
    let app = start_app(&toml).await;
    register(
        app.admin,
        "api",
        "api-2",
        &registered.address(),
        json!({ "ttl": "0s" }),
    )
    .await;
    // Health checks settle: half has one of two up, dead none.
    eventually(WAIT, "half degraded and dead down", || async {
        let body = get(app.admin, "/v1/dashboard").await.json();
        let healthy = |name: &str| {
            body["services"]
                .as_array()
                .and_then(|l| l.iter().find(|s| s["name"] == name))
                .map(|s| {
                    (
                        s["healthy"].as_u64(),
                        s["instances"].as_array().map(Vec::len),
                    )
                })
        };
        healthy("half") == Some((Some(1), Some(2)))
            && healthy("dead") == Some((Some(0), Some(1)))
            && healthy("api") == Some((Some(2), Some(2)))
    })
    .await;

    // Traffic while the browser samples: bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, proxy) = (stop.clone(), app.proxy);
        tokio::spawn(async move {
            let client = Http::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            for i in 0..5_000u32 {
                if stop.load(Ordering::Relaxed) || tokio::time::Instant::now() > deadline {
                    break;
                }
                let path = if i % 4 == 0 {
                    "/api/?status=500"
                } else {
                    "/shop/"
                };
                let _ = client.try_get(proxy, path).await;
                // The pace of the background traffic (bounded in count and time).
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Some traffic before the first sample too.
    eventually(WAIT, "traffic flowing", || async {
        web_a.hits() + web_b.hits() >= 10
    })
    .await;
    let dom = dump_dom(&format!("http://{}/", app.admin), 9_000).await;
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;

    assert!(!dom.contains("Cannot load"), "{dom}");
    assert!(
        dom.contains(&format!("version {}", env!("CARGO_PKG_VERSION"))),
        "{dom}"
    );
    assert!(dom.contains("no reload since start"), "{dom}");
    // Every service and every instance (configured and registered).
    let web = section(&dom, "web");
    for b in [&web_a, &web_b] {
        assert!(
            web.contains(&format!("data-instance=\"{}\"", b.address())),
            "{web}"
        );
    }
    let api_section = section(&dom, "api");
    assert!(api_section.contains(&format!("data-instance=\"{}\"", api.address())));
    assert!(
        api_section.contains("data-instance=\"api-2\""),
        "{api_section}"
    );
    assert!(api_section.contains(&registered.address()) && api_section.contains(">registry<"));
    // Health badges: three levels, three classes; the page's status is the worst.
    assert!(web.contains("badge badge-ok"), "{web}");
    assert!(
        section(&dom, "half").contains("badge badge-degraded"),
        "{}",
        section(&dom, "half")
    );
    assert!(
        section(&dom, "dead").contains("badge badge-down"),
        "{}",
        section(&dom, "dead")
    );
    assert!(
        dom.contains("id=\"status\" class=\"badge badge-down\""),
        "{dom}"
    );
    // Traffic figures from two samples.
    let rate = figure(web, "request rate");
    assert!(
        rate.ends_with("req/s") && number(&rate) > 0.0,
        "web rate {rate}"
    );
    let p99 = figure(web, "p99 latency");
    assert!(p99.ends_with("ms") || p99.ends_with(" s"), "web p99 {p99}");
    assert_eq!(figure(web, "5xx ratio"), "0.0 %");
    let errors = figure(api_section, "5xx ratio");
    assert!(
        errors.ends_with('%') && number(&errors) > 0.0,
        "api 5xx {errors}"
    );
    // The routes table.
    assert!(dom.contains("<td>/shop</td>"), "{dom}");
}
