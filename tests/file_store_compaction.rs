//! On the file store each write is durable in the journal before its
//! answer; the snapshot (`registry.json`) only compacts the journal, so it
//! waits for a pause in the writes instead of rewriting the whole registry
//! beside a burst (issue 13, item 4: 10,000 sequential registrations under
//! 2 s). On the default config: during a sequential burst longer than the
//! pause the writer waits for, the snapshot is rewritten at most once; after
//! the burst it holds every registration, without a shutdown.

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// Longer than the writer's pause (250 ms) many times over; before the
/// pause, snapshots were rewritten every 0.1-1 s during a burst.
const BURST: Duration = Duration::from_secs(3);
/// Below the default `max_instances_per_service` (10,000): a release build
/// registers more than that within `BURST`.
const MAX_REGISTRATIONS: usize = 9_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_writes_is_not_slowed_by_snapshots_which_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("registry.json");
    let app =
        start_app(&(base_toml() + &format!("[registry]\nstore = \"file:{}\"\n", store.display())))
            .await;
    // One registration and the pause after it: the first snapshot.
    register(
        app.admin,
        "burst",
        "first",
        "127.0.0.1:9001",
        json!({"ttl": "0s"}),
    )
    .await;
    eventually(WAIT, "the first snapshot", || async { store.exists() }).await;

    // A sequential burst on one keep-alive connection; every snapshot
    // written meanwhile is a new file (written aside, then renamed) with a
    // new modification time.
    let http = Http::new();
    let mut snapshots = BTreeSet::new();
    let started = Instant::now();
    let mut registered = 1;
    while started.elapsed() < BURST && registered < MAX_REGISTRATIONS {
        let body = json!({"address": "127.0.0.1:9001", "ttl": "0s"}).to_string();
        let resp = http
            .send(
                request(
                    http::Method::PUT,
                    app.admin,
                    &instance_path("burst", &format!("i{registered}")),
                )
                .body(full(body))
                .unwrap(),
            )
            .await
            .expect("PUT");
        assert_eq!(resp.status, http::StatusCode::OK, "{}", resp.text());
        registered += 1;
        if let Ok(meta) = std::fs::metadata(&store) {
            snapshots.insert((meta.ino(), meta.mtime(), meta.mtime_nsec()));
        }
    }
    assert!(
        registered > 100,
        "only {registered} registrations in {BURST:?}"
    );
    assert!(
        // The first one, and one more if the box stalled the burst.
        snapshots.len() <= 2,
        "{} snapshots written during a {BURST:?} burst of {registered} registrations",
        snapshots.len()
    );

    // After the burst, the snapshot catches up by itself.
    eventually(WAIT, "the snapshot to hold the whole burst", || async {
        std::fs::read_to_string(&store)
            .is_ok_and(|text| text.contains(&format!("\"i{}\"", registered - 1)))
    })
    .await;
    let text = std::fs::read_to_string(&store).unwrap();
    assert_eq!(
        text.matches("\"service\": \"burst\"").count(),
        registered,
        "{}",
        &text[..text.len().min(2000)]
    );
}
