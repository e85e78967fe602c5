//! The file store loses nothing it acknowledged (issue 13, item 4): five
//! times, a burst of registrations from 8 concurrent clients is cut by
//! `kill -9` mid-way; after a restart on the same file, every registration
//! that was answered 200 (and every deregistration answered 204) is there
//! (or gone), and the journal's files are cleaned up by snapshots.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use support::*;

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 400;

#[tokio::test]
async fn kill_9_mid_burst_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("registry.json");
    let config = ConfigFile::new(
        &(base_toml() + &format!("[registry]\nstore = \"file:{}\"\n", store.display())),
    );
    let mut expected: BTreeSet<String> = BTreeSet::new();
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    for run in 0..6 {
        let mut proc = spawn_serve(&config).await;
        let listed: BTreeSet<String> = listed_ids(proc.admin, "burst").await.into_iter().collect();
        check(run, &listed, &expected, &deleted);
        // Writes cut by the kill may have reached the disk unanswered:
        // what is listed now is the truth to build on.
        expected = listed;
        if run == 5 {
            proc.signal("TERM");
            assert!(proc.wait_exit(Duration::from_secs(30)).await.is_some());
            break;
        }

        // Each client registers its own ids; the first client also
        // deregisters one id of the previous run per registration.
        let acked = Arc::new(Mutex::new(Vec::<(String, bool)>::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let mut clients = Vec::new();
        let mut to_delete: Vec<String> = expected.iter().take(50).cloned().collect();
        for client in 0..CLIENTS {
            let (acked, count, admin) = (Arc::clone(&acked), Arc::clone(&count), proc.admin);
            let deletes = if client == 0 {
                std::mem::take(&mut to_delete)
            } else {
                Vec::new()
            };
            clients.push(tokio::spawn(async move {
                for i in 0..PER_CLIENT {
                    let id = format!("r{run}-c{client}-{i}");
                    let resp = Http::new()
                        .send(
                            request(http::Method::PUT, admin, &instance_path("burst", &id))
                                .body(full(
                                    json!({"address": "127.0.0.1:9001", "ttl": "0s"}).to_string(),
                                ))
                                .unwrap(),
                        )
                        .await;
                    match resp {
                        Ok(r) if r.status == StatusCode::OK => {
                            acked.lock().unwrap().push((id, true))
                        }
                        _ => return, // killed
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    if let Some(gone) = deletes.get(i) {
                        let resp = Http::new()
                            .send(
                                request(http::Method::DELETE, admin, &instance_path("burst", gone))
                                    .body(empty())
                                    .unwrap(),
                            )
                            .await;
                        match resp {
                            Ok(r) if r.status == StatusCode::NO_CONTENT => {
                                acked.lock().unwrap().push((gone.clone(), false))
                            }
                            _ => return,
                        }
                    }
                }
            }));
        }
        // Kill at a different point each run, well inside the burst.
        let kill_at = 300 + run * 350;
        eventually(Duration::from_secs(60), "the burst to get going", || {
            let n = count.load(Ordering::Relaxed);
            async move { n >= kill_at }
        })
        .await;
        proc.signal("KILL");
        assert!(proc.wait_exit(Duration::from_secs(10)).await.is_some());
        for client in clients {
            let _ = client.await;
        }
        for (id, present) in acked.lock().unwrap().iter() {
            if *present {
                expected.insert(id.clone());
            } else {
                expected.remove(id);
                deleted.insert(id.clone());
            }
        }
        assert!(
            expected.len() >= kill_at,
            "run {run}: {} acknowledged",
            expected.len()
        );
    }
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(
        leftovers <= 3,
        "the snapshot and at most two journal files: {leftovers}"
    );
}

/// Everything acknowledged is there; nothing acknowledged as deleted is.
fn check(
    run: usize,
    listed: &BTreeSet<String>,
    expected: &BTreeSet<String>,
    deleted: &BTreeSet<String>,
) {
    let missing: Vec<_> = expected.difference(listed).collect();
    assert!(
        missing.is_empty(),
        "run {run}: acknowledged but lost: {missing:?}"
    );
    let back: Vec<_> = listed.intersection(deleted).collect();
    assert!(
        back.is_empty(),
        "run {run}: deleted (204) but back: {back:?}"
    );
}
