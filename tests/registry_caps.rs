//! Registry growth is bounded (issue 13, item 3): `registry.max_services`
//! caps the services that registrations fill, `registry.max_instances` the
//! registered instances in all; over either a registration gets 429 with a
//! sentence naming the key, an update of an existing instance always passes,
//! and room freed by a deregistration can be used again.

mod support;

use http::StatusCode;
use serde_json::json;
use support::*;

fn config(registry: &str) -> String {
    base_toml() + "[registry]\n" + registry + "\n"
}

fn error_of(resp: &Resp) -> String {
    resp.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn services_and_instances_are_capped_with_429() {
    let app = start_app(&config("max_services = 3\nmax_instances = 5\n")).await;
    for (service, id) in [("a", "1"), ("b", "1"), ("c", "1"), ("c", "2")] {
        register(app.admin, service, id, "127.0.0.1:9001", json!({})).await;
    }
    let over = try_register(app.admin, "d", "1", "127.0.0.1:9001", json!({})).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        error_of(&over).contains("registry.max_services"),
        "{}",
        over.text()
    );
    // An update of an existing instance is not a new one.
    register(app.admin, "a", "1", "127.0.0.1:9002", json!({})).await;
    register(app.admin, "a", "2", "127.0.0.1:9001", json!({})).await;
    let full = try_register(app.admin, "b", "2", "127.0.0.1:9001", json!({})).await;
    assert_eq!(full.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        error_of(&full).contains("registry.max_instances"),
        "{}",
        full.text()
    );
    register(app.admin, "b", "1", "127.0.0.1:9003", json!({})).await;
    // Room freed is room again: the last instance of `c` leaves, and with
    // it the service.
    for id in ["1", "2"] {
        assert_eq!(
            deregister(app.admin, "c", id).await.status,
            StatusCode::NO_CONTENT
        );
    }
    register(app.admin, "d", "1", "127.0.0.1:9001", json!({})).await;
    register(app.admin, "d", "2", "127.0.0.1:9001", json!({})).await;
    assert_eq!(
        try_register(app.admin, "e", "1", "127.0.0.1:9001", json!({}))
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// The defaults: registrations each into a new service stop at 1,000
/// services.
#[tokio::test]
async fn the_default_caps_stop_a_flood_of_new_services() {
    let app = start_app(&base_toml()).await;
    let mut accepted = 0;
    let mut refused = 0;
    for i in 0..1_200 {
        let resp = try_register(
            app.admin,
            &format!("s{i}"),
            "1",
            "127.0.0.1:9001",
            json!({}),
        )
        .await;
        match resp.status {
            StatusCode::OK => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(error_of(&resp).contains("registry.max_services"));
                refused += 1;
            }
            other => panic!("registration {i}: {other} {}", resp.text()),
        }
    }
    assert_eq!((accepted, refused), (1_000, 200));
}
