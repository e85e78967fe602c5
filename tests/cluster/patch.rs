//! SPEC §7 runtime control in cluster mode: a `PATCH` of a registered
//! instance is stored with its registration in etcd (under its lease,
//! which it neither renews nor replaces), every node applies it within a
//! second, and the instance's own re-registration keeps it.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_on_one_node_is_in_etcd_when_answered_and_drains_on_every_node() {
    if !etcd::available() {
        return;
    }
    let etcd = Etcd::start(1).await;
    let store = etcd.store_url(&etcd.all(), PREFIX);
    let a = Node::start(&store).await;
    let b = Node::start(&store).await;
    let r1 = FakeBackend::start("r1").await;
    let r2 = FakeBackend::start("r2").await;
    let http = Http::new();
    register(a.admin(), "web", "r1", &r1.address(), json!({"ttl": "30s"})).await;
    register(a.admin(), "web", "r2", &r2.address(), json!({"ttl": "0s"})).await;
    for node in [&a, &b] {
        until_routed(
            &http,
            node.proxy(),
            "web",
            &["r1", "r2"],
            PROPAGATION,
            "both routed",
        )
        .await;
    }
    let key = instance_key(PREFIX, "web", "r1");
    let lease = etcd.kvs(&key).await[0].lease;

    let resp = patch(b.admin(), "web", "r1", json!({"state": "drain"})).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.json()["state"], "drain");
    let kv = etcd.kvs(&key).await;
    assert_eq!(kv[0].json()["drain"], true, "in etcd when answered");
    assert_eq!(kv[0].lease, lease, "under the same lease");
    for node in [&b, &a] {
        until_routed(
            &http,
            node.proxy(),
            "web",
            &["r2"],
            PROPAGATION,
            "r1 drained",
        )
        .await;
    }
    // A weight on an instance without a lease.
    let resp = patch(a.admin(), "web", "r2", json!({"weight": 7})).await;
    assert_eq!(resp.json()["weight"], 7);
    let kv = etcd.kvs(&instance_key(PREFIX, "web", "r2")).await;
    assert_eq!(
        (kv[0].json()["weight_override"].clone(), kv[0].lease),
        (json!(7), 0)
    );

    // The instance registers again on the other node: still drained.
    register(b.admin(), "web", "r1", &r1.address(), json!({"ttl": "30s"})).await;
    let kv = etcd.kvs(&key).await;
    assert_eq!(kv[0].json()["drain"], true);
    for node in [&a, &b] {
        let list = listed(node.admin(), "web").await;
        let row = list.iter().find(|i| i["id"] == "r1").expect("r1 listed");
        assert_eq!(row["state"], "drain", "{row}");
    }
    patch(a.admin(), "web", "r2", json!({"weight": null})).await;
    let resp = patch(a.admin(), "web", "r1", json!({"state": "ready"})).await;
    assert_eq!(resp.status, StatusCode::OK);
    until_routed(
        &http,
        b.proxy(),
        "web",
        &["r1", "r2"],
        PROPAGATION,
        "r1 back",
    )
    .await;
}
