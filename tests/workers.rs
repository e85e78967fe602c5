//! `[proxy] workers`: each worker is a thread with a single-threaded runtime
//! and its own accept loop on the shared listening socket. The extra
//! threads exist, connections land on more than one of them, and every
//! request is answered whichever worker took its connection.

mod support;

use std::collections::BTreeSet;

use http::StatusCode;
use support::*;

/// The names of the process's threads (`/proc/PID/task/*/comm`).
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

/// A generated request id starts with its worker thread's random prefix.
fn worker_prefix(resp: &Resp) -> String {
    let id = resp.header("x-request-id").expect("a generated request id");
    assert_eq!(id.len(), 32, "{id}");
    id[..16].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_each_accept_and_serve_connections() {
    let web = FakeBackend::start("web").await;
    let config =
        ConfigFile::new(&(base_toml_with("workers = 3") + &service_toml("web", &[&web], "")));
    let proc = spawn_serve(&config).await;
    let workers = thread_names(proc.pid)
        .into_iter()
        .filter(|name| name.starts_with("switchyard-work"))
        .count();
    assert_eq!(workers, 2, "the main thread is the first of 3 workers");

    // Rounds of 32 concurrent new connections, one request each: whichever
    // worker is free first accepts, so more than one worker shows up.
    let mut prefixes = BTreeSet::new();
    for _round in 0..20 {
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..32 {
            let path = if i % 2 == 0 { "/web/a" } else { "/web/b" };
            requests.spawn(get(proc.proxy(), path));
        }
        let answers = requests.join_all().await;
        for resp in &answers {
            assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
            prefixes.insert(worker_prefix(resp));
        }
        if prefixes.len() >= 2 {
            break;
        }
    }
    assert!(
        prefixes.len() >= 2,
        "every connection was served by one worker: {prefixes:?}"
    );
    assert!(
        prefixes.len() <= 3,
        "at most one prefix per worker: {prefixes:?}"
    );
}
