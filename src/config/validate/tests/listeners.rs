//! Addresses: listen and backend addresses, name resolution, networks,
//! route hosts, listener overlaps, the admin token rule and TLS listeners.

use super::*;

#[test]
fn addresses_need_a_host_and_a_valid_port() {
    fails(
        "[services.a]\nbackends = [\"127.0.0.1:0\"]\n",
        "services.a.backends[0]",
        "1 to 65535",
    );
    fails(
        "[services.a]\nbackends = [\"127.0.0.1:70000\"]\n",
        "services.a.backends[0]",
        "1 to 65535",
    );
    fails(
        "[services.a]\nbackends = [\"127.0.0.1\"]\n",
        "services.a.backends[0]",
        "host:port",
    );
    fails(
        "[services.a]\nbackends = [\"::1:80\"]\n",
        "services.a.backends[0]",
        "host:port",
    );
    fails(
        "[admin]\nlisten = \"127.0.0.1:x\"\n",
        "admin.listen",
        "0 to 65535",
    );
    let c = parse_ok(
        "[proxy]\nlisten = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\n[admin]\nlisten = \"[::1]:0\"\n",
    );
    assert_eq!(c.proxy.listen, vec![sa("127.0.0.1:0"); 2]);
}

#[test]
fn backend_names_are_resolved_and_kept_as_written() {
    let c = parse_ok("[services.a]\nbackends = [\"localhost:9001\"]\n");
    let b = &service(&c, "a").backends[0];
    assert_eq!(b.address, "localhost:9001");
    assert!(b.resolved.ip().is_loopback() && b.resolved.port() == 9001);
    let text = "[services.a]\nbackends = [{ address = \"no-such-host.invalid:80\" }]\n";
    fails(
        text,
        "services.a.backends[0].address",
        "`no-such-host.invalid`",
    );
}

#[test]
fn route_hosts_are_normalized_and_checked() {
    assert_eq!(
        normalize_host("API.example.COM:8080"),
        Ok("api.example.com".into())
    );
    assert_eq!(normalize_host("*.Example.com"), Ok("*.example.com".into()));
    assert_eq!(normalize_host("[::1]:80"), Ok("[::1]".into()));
    for bad in ["a.*.com", "*", "*.", "a b", "", "exa mple.com", "[zz]"] {
        assert!(normalize_host(bad).is_err(), "accepted {bad:?}");
    }
    fails(
        "[[routes]]\nhost = \"a.*.com\"\nservice = \"a\"\n",
        "routes[0].host",
        "wildcard",
    );
}

#[test]
fn listen_addresses_must_not_repeat() {
    fails(
        "[proxy]\nlisten = [\"127.0.0.1:9091\"]\n",
        "proxy.listen[0]",
        "overlaps admin.listen",
    );
    fails(
        "[admin]\nlisten = \"127.0.0.1:8080\"\n",
        "admin.listen",
        "overlaps proxy.listen[0] (0.0.0.0:8080)",
    );
    let text = r#"[proxy]
listen = ["127.0.0.1:8443"]
[[proxy.tls]]
listen = "127.0.0.1:8443"
certs = [{ cert = "c", key = "k" }]
"#;
    fails(text, "proxy.tls[0].listen", "overlaps proxy.listen[0]");
    let ok = "[proxy]\nlisten = [\"127.0.0.1:8080\", \"127.0.0.2:8080\"]\n";
    assert!(parse(ok).is_ok());
    fails(
        "[proxy]\nlisten = []\n",
        "proxy.listen",
        "at least one listener",
    );
}

#[test]
fn networks_accept_cidrs_and_bare_addresses() {
    assert_eq!(parse_net("10.1.2.3"), Ok(net("10.1.2.3/32")));
    assert_eq!(parse_net("::1"), Ok(net("::1/128")));
    assert_eq!(parse_net("10.1.2.3/8"), Ok(net("10.0.0.0/8")));
    fails(
        "[proxy]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
        "proxy.trusted_proxies[0]",
        "IP network",
    );
    fails(
        "[registry]\nallowed_networks = [\"10.0.0.0/8\", \"bogus\"]\n",
        "registry.allowed_networks[1]",
        "`bogus`",
    );
}

#[test]
fn a_non_loopback_admin_needs_a_token() {
    let e = fails(
        "[admin]\nlisten = \"0.0.0.0:9091\"\n",
        "admin.listen",
        "refusing a non-loopback admin listener without a token",
    );
    assert_eq!((e.line, e.column), (2, 10));
    assert!(parse("[admin]\nlisten = \"0.0.0.0:9091\"\ntoken = \"t\"\n").is_ok());
    assert!(parse("[admin]\nlisten = \"[::1]:9091\"\n").is_ok());
}

#[test]
fn tls_listeners_need_certs() {
    fails(
        "[[proxy.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = []\n",
        "proxy.tls[0].certs",
        "at least one",
    );
    let text = "[[proxy.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{ cert = \"\", key = \"k\" }]\n";
    fails(text, "proxy.tls[0].certs[0].cert", "must not be empty");
    let text = r#"[[proxy.tls]]
listen = "127.0.0.1:0"
certs = [{ cert = "c", key = "k" }]
alpn = [""]
"#;
    fails(text, "proxy.tls[0].alpn[0]", "1 to 255 bytes");
    let c = parse_ok(
        "[[proxy.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{ cert = \"c\", key = \"k\" }]\n",
    );
    assert_eq!(c.proxy.tls[0].alpn, default_alpn());
    assert_eq!(
        c.proxy.tls[0].certs[0].key,
        PathBuf::from("/etc/switchyard/k")
    );
}
