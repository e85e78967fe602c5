//! Admin API security details, end to end with curl: the `Bearer` scheme is
//! matched without regard to case (RFC 9110), and the always-refused
//! registration addresses include the cloud metadata addresses outside
//! link-local and IPv4 addresses embedded in NAT64 and 6to4 forms.

mod support;

use http::{Method, StatusCode};
use support::registry_api::*;
use support::*;

/// `curl -X METHOD` with an `Authorization` header; (status, body). The
/// test first `require`s curl (`support::tools`).
async fn curl(
    admin: std::net::SocketAddr,
    method: &str,
    path: &str,
    authorization: &str,
    body: &str,
) -> (u16, String) {
    let url = format!("http://{admin}{path}");
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-m",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
        ])
        .args(["-H", &format!("Authorization: {authorization}")])
        .args(["-H", "Content-Type: application/json", "--data", body, &url])
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_matched_without_regard_to_case() {
    if !tools::require(&tools::CURL) {
        return;
    }
    let toml = format!("{}token = \"s3cret\"\n", base_toml());
    let app = start_app(&toml).await;
    let body = r#"{"address": "127.0.0.1:9"}"#;
    for (i, scheme) in ["bearer", "BEARER", "Bearer", "bEaReR"].iter().enumerate() {
        let path = instance_path("web", &format!("r{i}"));
        let (status, text) = curl(app.admin, "PUT", &path, &format!("{scheme} s3cret"), body).await;
        assert_eq!(status, 200, "{scheme}: {text}");
    }
    for wrong in ["bearer s3cre", "Basic s3cret", "bearers3cret", "s3cret"] {
        let path = instance_path("web", "denied");
        let (status, text) = curl(app.admin, "PUT", &path, wrong, body).await;
        assert_eq!(status, 401, "{wrong:?}: {text}");
        assert!(text.contains("\"error\""), "{text}");
    }
    assert_eq!(listed_ids(app.admin, "web").await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_metadata_and_embedded_link_local_addresses_are_refused() {
    // A broad allow list does not open the always-refused classes.
    let toml = base_toml() + "[registry]\nallowed_networks = [\"0.0.0.0/0\", \"::/0\"]\n";
    let app = start_app(&toml).await;
    let refused = [
        "[fd00:ec2::254]:80",
        "100.100.100.200:80",
        "[64:ff9b::a9fe:a9fe]:80",
        "[64:ff9b::100.100.100.200]:80",
        "[2002:a9fe:a9fe::1]:80",
        "[::ffff:100.100.100.200]:80",
    ];
    for (i, address) in refused.iter().enumerate() {
        let resp = try_register(
            app.admin,
            "web",
            &format!("m{i}"),
            address,
            Default::default(),
        )
        .await;
        assert_eq!(
            resp.status,
            StatusCode::FORBIDDEN,
            "{address}: {}",
            resp.text()
        );
        let message = resp.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            message.contains("metadata") || message.contains("link-local"),
            "{address}: {message}"
        );
    }
    assert!(listed(app.admin, "web").await.is_empty());
    // Their neighbours are ordinary unicast addresses.
    let resp = try_register(
        app.admin,
        "web",
        "ok",
        "100.100.100.201:80",
        Default::default(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_listing_opens_an_embedded_address() {
    let toml = base_toml() + "[registry]\nallowed_networks = [\"64:ff9b::a9fe:a9fe/128\"]\n";
    let app = start_app(&toml).await;
    let resp = try_register(
        app.admin,
        "web",
        "nat64",
        "[64:ff9b::a9fe:a9fe]:80",
        Default::default(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let resp = admin_call(
        app.admin,
        Method::PUT,
        &instance_path("web", "other"),
        r#"{"address": "[64:ff9b::a9fe:1]:80"}"#,
        None,
    )
    .await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN, "{}", resp.text());
}
