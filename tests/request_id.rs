//! SPEC §8 request ids: a request without `X-Request-Id` gets one (unique,
//! opaque), the backend sees it, the client gets it back (on local answers
//! too), and the access log has it; a client's own id is kept.

mod support;

use std::collections::HashSet;

use http::{Method, StatusCode};
use support::*;

fn toml_with_log(web: &FakeBackend) -> String {
    base_toml()
        + "[access_log]\npath = \"access.log\"\n\n"
        + &service_toml("web", &[web], "")
        + "[services.empty]\nbackends = []\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_id_reaches_the_backend_the_client_and_the_log() {
    let web = FakeBackend::start("web").await;
    let app = start_app(&toml_with_log(&web)).await;
    let log_path = app.config.path().parent().unwrap().join("access.log");

    let resp = get(app.proxy, "/web/one").await;
    assert_eq!(resp.status, StatusCode::OK);
    let id = resp
        .header("x-request-id")
        .expect("the client gets an id")
        .to_owned();
    assert!(!id.is_empty());
    let seen = web.last_seen().expect("backend saw the request");
    assert_eq!(
        seen.header_all("x-request-id"),
        [id.as_str()],
        "exactly one id, the same"
    );
    let lines = json_lines(&wait_log_lines(&log_path, 1, WAIT).await);
    assert_eq!(lines[0]["request_id"], id.as_str());
    assert_eq!(lines[0]["path"], "/web/one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_is_kept_end_to_end() {
    let web = FakeBackend::start("web").await;
    let app = start_app(&toml_with_log(&web)).await;
    let log_path = app.config.path().parent().unwrap().join("access.log");
    let req = request(Method::GET, app.proxy, "/web/mine")
        .header("x-request-id", "client-chosen-42")
        .body(empty())
        .unwrap();
    let resp = Http::new().send(req).await.unwrap();
    assert_eq!(resp.header("x-request-id"), Some("client-chosen-42"));
    let seen = web.last_seen().unwrap();
    assert_eq!(seen.header_all("x-request-id"), ["client-chosen-42"]);
    let lines = json_lines(&wait_log_lines(&log_path, 1, WAIT).await);
    assert_eq!(lines[0]["request_id"], "client-chosen-42");

    // Also on an answer Switchyard makes itself.
    let req = request(Method::GET, app.proxy, "/empty/x")
        .header("x-request-id", "client-chosen-43")
        .body(empty())
        .unwrap();
    let resp = Http::new().send(req).await.unwrap();
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.header("x-request-id"), Some("client-chosen-43"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_unique_over_connections_and_protocols_and_on_local_answers() {
    let web = FakeBackend::start("web").await;
    // No access log here: ids do not depend on it.
    let app = start_app(&(base_toml() + &service_toml("web", &[&web], ""))).await;
    let mut ids = HashSet::new();
    let h1 = Http::new();
    let h2 = Http::h2c();
    for i in 0..50 {
        let client = if i % 2 == 0 { &h1 } else { &h2 };
        let path = if i % 5 == 0 { "/no-route" } else { "/web/x" };
        let resp = client.get(app.proxy, path).await;
        let id = resp
            .header("x-request-id")
            .unwrap_or_else(|| panic!("no id on {path} ({})", resp.status))
            .to_owned();
        assert!(
            id.len() >= 16 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{id}"
        );
        assert!(ids.insert(id.clone()), "id {id} given twice");
        if path == "/no-route" {
            assert_eq!(resp.status, StatusCode::NOT_FOUND);
        }
    }
    // Each proxied request's id is the one its backend saw.
    let seen: HashSet<String> = web
        .seen()
        .iter()
        .map(|s| {
            s.header("x-request-id")
                .expect("backend saw an id")
                .to_owned()
        })
        .collect();
    assert_eq!(seen.len(), 40);
    assert!(seen.is_subset(&ids));
}
