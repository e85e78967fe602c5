//! Unit tests of the registry's state machine: upserts, leases on a paused
//! clock, limits, snapshots, persistence through a store.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Map;
use tokio::time::Instant;

use super::store::MemoryStore;
use super::*;
use crate::config::{RegistryConfig, StoreConfig};

fn config() -> RegistryConfig {
    RegistryConfig {
        default_ttl: Duration::from_secs(30),
        store: StoreConfig::Memory,
        allowed_networks: None,
        allow_new_services: true,
        max_instances_per_service: 3,
        max_services: 1_000,
        max_instances: 100_000,
    }
}

fn limits(config: &RegistryConfig) -> Limits<'_> {
    Limits {
        config,
        declared: false,
    }
}

fn registration(address: &str, ttl: Option<u64>) -> Registration {
    Registration {
        address: address.to_owned(),
        weight: 1,
        ttl: ttl.map(Duration::from_secs),
        metadata: Map::new(),
    }
}

async fn register(
    r: &Registry,
    c: &RegistryConfig,
    service: &str,
    id: &str,
    ttl: Option<u64>,
) -> Result<Arc<Instance>, RegistryError> {
    r.register(limits(c), service, id, registration("127.0.0.1:9001", ttl))
        .await
}

#[tokio::test]
async fn register_is_an_idempotent_upsert() {
    let c = config();
    let r = Registry::in_memory(vec![]);
    let first = register(&r, &c, "users", "a", None)
        .await
        .expect("register");
    assert_eq!(first.ttl, Duration::from_secs(30), "default ttl");
    assert!(first.expires_at.is_some());
    let index = r.index();
    register(&r, &c, "users", "a", None).await.expect("again");
    assert_eq!(
        r.index(),
        index,
        "the same registration changes no membership"
    );
    assert_eq!(r.snapshot().len(), 1);

    let heavier = Registration {
        weight: 5,
        ..registration("127.0.0.1:9001", None)
    };
    r.register(limits(&c), "users", "a", heavier)
        .await
        .expect("update");
    assert_eq!(r.index(), index + 1, "a new weight is a change");
    assert_eq!(
        r.snapshot().instance("users", "a").map(|i| i.weight),
        Some(5)
    );
}

#[tokio::test]
async fn deregister_removes_and_then_404s() {
    let c = config();
    let r = Registry::in_memory(vec![]);
    register(&r, &c, "users", "a", None)
        .await
        .expect("register");
    assert!(r.deregister("users", "a").await.is_ok());
    assert!(
        r.snapshot().is_empty(),
        "the service goes with its last instance"
    );
    assert!(matches!(
        r.deregister("users", "a").await,
        Err(RegistryError::NotFound { .. })
    ));
    assert!(matches!(
        r.heartbeat("users", "a").await,
        Err(RegistryError::NotFound { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn leases_expire_and_heartbeats_renew_them() {
    let c = config();
    let r = Arc::new(Registry::in_memory(vec![]));
    let expiry = tokio::spawn(Arc::clone(&r).run_expiry());
    register(&r, &c, "users", "kept", Some(2))
        .await
        .expect("register");
    register(&r, &c, "users", "lapsed", Some(2))
        .await
        .expect("register");
    register(&r, &c, "users", "forever", Some(0))
        .await
        .expect("register");
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        r.heartbeat("users", "kept").await.expect("renewed in time");
    }
    let snapshot = r.snapshot();
    let ids: Vec<&str> = snapshot.service("users").iter().map(|i| &*i.id).collect();
    assert_eq!(
        ids,
        ["forever", "kept"],
        "5.4 s later, only the renewed lease is alive"
    );
    assert!(matches!(
        r.heartbeat("users", "lapsed").await,
        Err(RegistryError::NotFound { .. })
    ));
    assert!(r
        .heartbeat("users", "forever")
        .await
        .expect("no expiry")
        .expires_at
        .is_none());
    expiry.abort();
}

#[tokio::test(start_paused = true)]
async fn a_lease_past_its_deadline_is_gone_before_the_sweep() {
    let c = config();
    let r = Registry::in_memory(vec![]);
    register(&r, &c, "users", "a", Some(1))
        .await
        .expect("register");
    tokio::time::advance(Duration::from_millis(1001)).await;
    // No expiry task runs here: the heartbeat itself sees the lease is over.
    assert!(matches!(
        r.heartbeat("users", "a").await,
        Err(RegistryError::NotFound { .. })
    ));
    assert!(r.snapshot().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_new_earlier_lease_wakes_the_expiry_task() {
    let c = config();
    let r = Arc::new(Registry::in_memory(vec![]));
    let expiry = tokio::spawn(Arc::clone(&r).run_expiry());
    register(&r, &c, "users", "long", Some(60))
        .await
        .expect("register");
    tokio::time::sleep(Duration::from_millis(10)).await;
    register(&r, &c, "users", "short", Some(1))
        .await
        .expect("register");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(r.snapshot().instance("users", "short").is_none());
    assert!(r.snapshot().instance("users", "long").is_some());
    expiry.abort();
}

#[tokio::test]
async fn instance_limit_counts_new_ids_only() {
    let c = config();
    let r = Registry::in_memory(vec![]);
    for id in ["a", "b", "c"] {
        register(&r, &c, "users", id, None)
            .await
            .expect("under the limit");
    }
    let over = register(&r, &c, "users", "d", None).await;
    assert!(
        matches!(over, Err(RegistryError::TooManyInstances { max: 3, .. })),
        "{over:?}"
    );
    register(&r, &c, "users", "a", None)
        .await
        .expect("updating is not a new instance");
    register(&r, &c, "other", "d", None)
        .await
        .expect("the limit is per service");
}

#[tokio::test]
async fn new_services_can_be_refused() {
    let c = RegistryConfig {
        allow_new_services: false,
        ..config()
    };
    let r = Registry::in_memory(vec![]);
    let refused = register(&r, &c, "users", "a", None).await;
    assert!(
        matches!(refused, Err(RegistryError::NewService(_))),
        "{refused:?}"
    );
    let declared = Limits {
        config: &c,
        declared: true,
    };
    r.register(declared, "users", "a", registration("127.0.0.1:9001", None))
        .await
        .expect("a declared service takes registrations");
}

#[tokio::test]
async fn addresses_are_checked_after_resolution() {
    let c = RegistryConfig {
        allowed_networks: Some(vec!["10.0.0.0/8".parse().unwrap()]),
        ..config()
    };
    let own = vec!["127.0.0.1:8080".parse().unwrap()];
    let r = Registry::in_memory(own);
    let refused = r
        .register(
            limits(&c),
            "users",
            "a",
            registration("localhost:9001", None),
        )
        .await;
    assert!(
        matches!(refused, Err(RegistryError::Refused { .. })),
        "{refused:?}"
    );
    let own = r
        .register(
            limits(&config()),
            "users",
            "a",
            registration("127.0.0.1:8080", None),
        )
        .await;
    assert!(matches!(
        own,
        Err(RegistryError::Refused {
            reason: address::Refusal::OwnListener,
            ..
        })
    ));
    let mapped = r
        .register(
            limits(&config()),
            "users",
            "a",
            registration("[::ffff:127.0.0.1]:9001", None),
        )
        .await
        .expect("loopback is unicast");
    assert_eq!(mapped.resolved, "127.0.0.1:9001".parse().unwrap());
    assert_eq!(
        &*mapped.address, "[::ffff:127.0.0.1]:9001",
        "kept as registered"
    );
}

#[tokio::test]
async fn bad_names_are_refused() {
    let c = config();
    let r = Registry::in_memory(vec![]);
    for (service, id) in [
        ("a b", "x"),
        ("users", "a/b"),
        ("", "x"),
        ("users", &"x".repeat(129)),
    ] {
        let got = register(&r, &c, service, id, None).await;
        assert!(
            matches!(got, Err(RegistryError::BadName { .. })),
            "{service:?}/{id:?}"
        );
    }
}

#[tokio::test]
async fn snapshots_are_shared_until_something_changes() {
    let c = config();
    let r = Registry::in_memory(vec![]);
    register(&r, &c, "users", "a", None)
        .await
        .expect("register");
    let one = r.snapshot();
    let two = r.snapshot();
    assert!(Arc::ptr_eq(&one, &two));
    r.heartbeat("users", "a").await.expect("renew");
    let three = r.snapshot();
    assert!(
        !Arc::ptr_eq(&one, &three),
        "a heartbeat moves the lease's end"
    );
    assert_eq!(one.index, three.index, "but not the membership index");
}

#[tokio::test]
async fn the_writer_saves_the_latest_snapshot_and_restores_it() {
    let c = config();
    let store = Arc::new(MemoryStore::default());
    let r = Arc::new(Registry::open(store.clone(), &c, vec![]).expect("open"));
    let writer = tokio::spawn(Arc::clone(&r).run_writer());
    for id in ["a", "b", "c"] {
        register(&r, &c, "users", id, Some(60))
            .await
            .expect("register");
    }
    r.flush().await.expect("flush");
    assert_eq!(store.saved().len(), 3);
    writer.abort();

    let reopened = Registry::open(store.clone(), &c, vec![]).expect("reopen");
    let snapshot = reopened.snapshot();
    assert_eq!(snapshot.len(), 3);
    let kept = snapshot.instance("users", "a").expect("restored");
    assert_eq!(
        kept.expires_at,
        r.snapshot().instance("users", "a").unwrap().expires_at
    );
}

#[tokio::test]
async fn expired_and_refused_leases_are_dropped_at_load() {
    let c = config();
    let store = Arc::new(MemoryStore::default());
    let mut past = Instance::clone(
        &register(&Registry::in_memory(vec![]), &c, "users", "old", Some(60))
            .await
            .unwrap(),
    );
    past.expires_at = Some(std::time::SystemTime::now() - Duration::from_secs(1));
    let mut looping = past.clone();
    looping.id = "loop".into();
    looping.expires_at = None;
    looping.resolved = "127.0.0.1:8080".parse().unwrap();
    let mut fine = past.clone();
    fine.id = "fine".into();
    fine.expires_at = Some(std::time::SystemTime::now() + Duration::from_secs(60));
    store
        .save(&[Arc::new(past), Arc::new(looping), Arc::new(fine)], 1)
        .unwrap();
    let own = vec!["127.0.0.1:8080".parse().unwrap()];
    let r = Registry::open(store, &c, own).expect("open");
    let ids: Vec<String> = r.snapshot().instances().map(|i| i.id.to_string()).collect();
    assert_eq!(ids, ["fine"]);
    // The kept lease runs on the monotonic clock from its remaining time.
    assert_eq!(r.expire(Instant::now() + Duration::from_secs(59)), 0);
    assert_eq!(r.expire(Instant::now() + Duration::from_secs(61)), 1);
}

#[tokio::test]
async fn watchers_see_membership_changes() {
    let c = config();
    let r = Registry::in_memory(vec![]);
    let mut rx = r.subscribe();
    register(&r, &c, "users", "a", None)
        .await
        .expect("register");
    assert!(rx.has_changed().unwrap());
    rx.borrow_and_update();
    r.heartbeat("users", "a").await.expect("renew");
    assert!(
        !rx.has_changed().unwrap(),
        "heartbeats do not wake watchers"
    );
}

#[tokio::test(start_paused = true)]
async fn joins_are_batched_and_departures_are_immediate() {
    use crate::source::BackendSource;
    let c = RegistryConfig {
        max_instances_per_service: 100,
        ..config()
    };
    let r = Arc::new(Registry::in_memory(vec![]));
    let changes = r.changes();
    let calls = || *changes.borrow();
    let notifier = tokio::spawn(Arc::clone(&r).run_notifier());
    register(&r, &c, "users", "first", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(calls(), 1, "the first join is told at once");
    for i in 0..50 {
        register(&r, &c, "users", &format!("i{i}"), None)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(calls(), 1, "a burst waits for the batch");
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(calls(), 2, "then one call covers it");
    r.deregister("users", "first").await.unwrap();
    assert_eq!(calls(), 3, "a departure is told at once");
    notifier.abort();
}

#[tokio::test]
async fn a_patch_is_stored_with_the_registration_and_outlives_a_re_registration() {
    use crate::overrides::Patch;
    let c = config();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(store::FileStore::new(dir.path().join("registry.json")));
    let r = Arc::new(Registry::open(store.clone(), &c, vec![]).expect("open"));
    let writer = tokio::spawn(Arc::clone(&r).run_writer());
    let first = register(&r, &c, "users", "a", Some(60))
        .await
        .expect("register");
    let index = r.index();
    let patch = Patch {
        weight: Some(Some(0)),
        drain: Some(true),
    };
    let patched = r.patch("users", "a", patch).await.expect("patch");
    assert_eq!(
        patched.expires_at, first.expires_at,
        "the lease is untouched"
    );
    assert_eq!(r.index(), index + 1, "a patch is a membership change");
    assert_eq!(patched.to_json()["state"], "drain");
    assert_eq!(patched.to_json()["weight"], 0);
    // The instance registers again: the operator's override stays.
    let again = register(&r, &c, "users", "a", Some(60))
        .await
        .expect("again");
    assert!(again.overrides.drain && again.overrides.weight == Some(0));
    r.flush().await.expect("flush");
    writer.abort();
    let reopened = Registry::open(store, &c, vec![]).expect("reopen");
    let kept = reopened
        .snapshot()
        .instance("users", "a")
        .map(|i| i.overrides);
    assert_eq!(kept, Some(again.overrides), "the file store keeps it");
    let unknown = r.patch("users", "zz", patch).await;
    assert!(matches!(unknown, Err(RegistryError::NotFound { .. })));
}

#[tokio::test]
async fn instances_of_a_service_share_its_name_and_the_empty_metadata() {
    let c = config();
    let r = Registry::in_memory(vec![]);
    let a = register(&r, &c, "users", "a", None).await.expect("a");
    let b = register(&r, &c, "users", "b", None).await.expect("b");
    assert!(Arc::ptr_eq(&a.service, &b.service));
    assert!(Arc::ptr_eq(&a.metadata, &b.metadata));
    let mut metadata = Map::new();
    metadata.insert("zone".into(), "eu-1".into());
    let with = Registration {
        metadata,
        ..registration("127.0.0.1:9002", None)
    };
    let c3 = r.register(limits(&c), "users", "c", with).await.expect("c");
    assert_eq!(
        c3.metadata.get("zone").and_then(|v| v.as_str()),
        Some("eu-1")
    );
    assert!(b.metadata.is_empty(), "the shared empty object stays empty");
    // The count `max_instances` checks follows registrations and departures.
    r.deregister("users", "a").await.expect("deregister");
    assert_eq!(r.lock().instances, 2);
}
