//! The balancing keys (SPEC §7): policies, hash_key, hash_balance_factor,
//! slow_start and the sticky table.

use super::*;
use crate::config::{HashKey, StickyConfig};

#[test]
fn every_policy_and_its_keys_parse() {
    let config = parse_ok(
        r#"
[services.a]
balance = "hash"
hash_key = "header:X-User-Id"
hash_balance_factor = 125
[services.b]
balance = "p2c_ewma"
slow_start = "30s"
[services.b.sticky]
cookie = "sy_b"
ttl = "1h"
path = "/app"
secure = true
http_only = false
[services.c]
balance = "least_conn"
"#,
    );
    let a = service(&config, "a");
    assert_eq!(a.balance, BalancePolicy::Hash);
    assert!(matches!(&a.hash_key, Some(HashKey::Header(h)) if h == "x-user-id"));
    assert_eq!(a.hash_balance_factor, 125);
    let b = service(&config, "b");
    assert_eq!(b.balance, BalancePolicy::P2cEwma);
    assert_eq!(b.slow_start, secs(30));
    assert_eq!(
        b.sticky,
        Some(StickyConfig {
            cookie: "sy_b".into(),
            ttl: secs(3600),
            path: "/app".into(),
            secure: true,
            http_only: false,
        })
    );
    let c = service(&config, "c");
    assert_eq!(c.balance, BalancePolicy::LeastConn);
    assert_eq!((c.slow_start, c.sticky), (Duration::ZERO, None));
}

#[test]
fn hash_needs_its_key_and_its_keys_need_hash() {
    fails(
        "[services.a]\nbalance = \"hash\"\n",
        "services.a.hash_key",
        "needs a hash_key",
    );
    fails(
        "[services.a]\nhash_key = \"path\"\n",
        "services.a.hash_key",
        "only applies with balance = \"hash\"",
    );
    fails(
        "[services.a]\nbalance = \"hash\"\nhash_key = \"body\"\n",
        "services.a.hash_key",
        "must be",
    );
    fails(
        "[services.a]\nbalance = \"hash\"\nhash_key = \"path\"\nhash_balance_factor = 50\n",
        "services.a.hash_balance_factor",
        "from 100 to 1000",
    );
    fails(
        "[services.a]\nbalance = \"hash\"\nhash_key = \"path\"\nslow_start = \"10s\"\n",
        "services.a.slow_start",
        "does not apply",
    );
    fails(
        "[services.a]\nbalance = \"random\"\n",
        "services.a.balance",
        "p2c_ewma",
    );
}

#[test]
fn sticky_needs_a_cookie_name() {
    fails(
        "[services.a.sticky]\ncookie = \"a b\"\n",
        "services.a.sticky.cookie",
        "not a valid cookie name",
    );
    fails(
        "[services.a.sticky]\ncookie = \"s\"\npath = \"/a;b\"\n",
        "services.a.sticky.path",
        "may not contain",
    );
    let errs = errors("[services.a.sticky]\nttl = \"1h\"\n");
    assert!(
        errs.iter().any(|e| e.message.contains("cookie")),
        "{}",
        ConfigErrors(errs.clone())
    );
}
