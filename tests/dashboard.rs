//! The admin dashboard at `/`: served as HTML, and built only on the public
//! `/v1/services` API (so what it shows is what the API says).

mod support;

use http::StatusCode;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_is_served_at_the_admin_root() {
    let backend = FakeBackend::start("web").await;
    let app = start_app(&(base_toml() + &service_toml("web", &[&backend], ""))).await;
    let resp = get(app.admin, "/").await;
    assert_eq!(resp.status, StatusCode::OK);
    let content_type = resp
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let page = resp.text();
    assert!(page.contains("<title>Switchyard</title>"));
    assert!(
        page.contains("/v1/services"),
        "the page reads the public API"
    );
    // The API it reads answers with the service it will show.
    let list = get(app.admin, "/v1/services").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.text().contains("\"web\""), "{}", list.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_only_answers_get() {
    let app = start_app(&base_toml()).await;
    let resp = Http::new()
        .send(
            request(http::Method::POST, app.admin, "/")
                .body(empty())
                .expect("request"),
        )
        .await
        .expect("admin answers");
    assert_eq!(resp.status, StatusCode::METHOD_NOT_ALLOWED);
}
