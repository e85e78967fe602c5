//! The upstream pool keys: `[proxy] upstream_idle_per_backend` and
//! `upstream_idle_timeout`.

use super::*;

#[test]
fn pool_keys_default_to_64_idle_connections_and_4_seconds() {
    let c = parse_ok("");
    assert_eq!(c.proxy.upstream_idle_per_backend, 64);
    assert_eq!(c.proxy.upstream_idle_timeout, Duration::from_secs(4));
    let set = parse_ok("[proxy]\nupstream_idle_per_backend = 0\nupstream_idle_timeout = \"90s\"\n");
    assert_eq!(set.proxy.upstream_idle_per_backend, 0);
    assert_eq!(set.proxy.upstream_idle_timeout, Duration::from_secs(90));
}

#[test]
fn pool_keys_refuse_negative_counts_and_zero_timeouts_with_their_line() {
    let e = fails(
        "[proxy]\nupstream_idle_per_backend = -1\n",
        "proxy.upstream_idle_per_backend",
        "-1",
    );
    assert_eq!((e.line, e.column), (2, 29), "{e}");
    fails(
        "[proxy]\nupstream_idle_timeout = \"0s\"\n",
        "proxy.upstream_idle_timeout",
        "greater than zero",
    );
}
