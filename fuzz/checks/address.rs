//! The `address` oracle: the registry's address parser and policy
//! (src/registry/address.rs) on arbitrary text, without DNS.
//!
//! - No panic; every refusal is one short line.
//! - An IP literal it accepts round-trips (`SocketAddr` display, parsed
//!   again, is the same address) and agrees with the standard library's
//!   `SocketAddr` parser both ways (scope ids aside, which it refuses).
//! - `classify` (the network policy): its answer is canonical (no
//!   IPv4-mapped form) and stable when classified again; an IPv4-mapped
//!   address is classified as its IPv4 address; the NAT64 (`64:ff9b::/96`)
//!   and 6to4 (`2002::/16`) forms of an IPv4 address are refused exactly
//!   when the IPv4 address is; `0.0.0.0/0` + `::/0` allows nothing more than
//!   no list; listing the address itself always allows it; and one of
//!   Switchyard's own listeners is refused unless an always-refused class
//!   refuses it first.
//!
//! Shared by `fuzz/fuzz_targets/address.rs` and `tests/fuzz_regressions.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use switchyard::registry::address::{
    canonical, classify, is_host_name, parse_ip, split_host_port, Policy, Refusal,
};

/// Panics when parsing or classifying `data` (as text) breaks a property.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A zone (`%eth0`, even `%0`) is refused by the registry on purpose:
    // a registered address must mean the same on every node.
    let std_parsed = text
        .parse::<SocketAddr>()
        .ok()
        .filter(|a| a.port() != 0 && !text.contains('%') && !scoped(a));
    let (host, port) = match split_host_port(text) {
        Ok(split) => split,
        Err(e) => {
            one_line(&e.to_string());
            assert_eq!(
                std_parsed, None,
                "std parses {text:?}, the registry does not"
            );
            return;
        }
    };
    assert_ne!(port, 0, "port 0 accepted in {text:?}");
    let Some(ip) = parse_ip(host) else {
        assert_eq!(std_parsed, None, "std parses {text:?} as an IP literal");
        if is_host_name(host) {
            assert!(
                host.len() <= 253 && host.is_ascii() && !host.contains(':'),
                "{host:?} taken for a host name"
            );
        }
        return;
    };
    let addr = SocketAddr::new(ip, port);
    assert_eq!(
        std_parsed,
        Some(addr),
        "std and the registry disagree on {text:?}"
    );
    let shown = addr.to_string();
    let back = split_host_port(&shown)
        .ok()
        .and_then(|(h, p)| Some(SocketAddr::new(parse_ip(h)?, p)));
    assert_eq!(
        back,
        Some(addr),
        "{text:?} shown as {shown:?} does not parse back"
    );
    policies(addr);
}

fn scoped(addr: &SocketAddr) -> bool {
    matches!(addr, SocketAddr::V6(v6) if v6.scope_id() != 0 || v6.flowinfo() != 0)
}

/// `classify` under several policies, against each other.
fn policies(addr: SocketAddr) {
    let plain = run(addr, None, &[]);
    if let Ok(got) = plain {
        assert_eq!(got.ip(), canonical(got.ip()), "{addr} kept a mapped form");
        assert_eq!(got.port(), addr.port());
        assert_eq!(
            run(got, None, &[]),
            Ok(got),
            "{addr} then {got} classified differently"
        );
    }
    if let Err(refusal) = plain {
        one_line(&refusal.to_string());
    }

    let ip = canonical(addr.ip());
    assert_eq!(
        run(SocketAddr::new(ip, addr.port()), None, &[]),
        plain,
        "{addr} and its canonical form {ip} are classified differently"
    );
    if let IpAddr::V4(v4) = ip {
        for embedded in [nat64(v4), six_to_four(v4, addr.port())] {
            let wrapped = SocketAddr::new(IpAddr::V6(embedded), addr.port());
            assert_eq!(
                run(wrapped, None, &[]).err(),
                plain.err(),
                "{wrapped} (carrying {v4}) is classified unlike {addr}"
            );
        }
    }

    let any: Vec<IpNet> = ["0.0.0.0/0", "::/0"]
        .iter()
        .filter_map(|net| net.parse().ok())
        .collect();
    assert_eq!(
        run(addr, Some(&any), &[]),
        plain,
        "a broad allow changes {addr}"
    );

    let own = [SocketAddr::new(ip, addr.port())];
    let exact = [IpNet::from(ip)];
    let canonical_addr = SocketAddr::new(ip, addr.port());
    assert_eq!(
        run(addr, Some(&exact), &[]),
        Ok(canonical_addr),
        "{addr} is refused although allowed_networks lists it"
    );
    assert_eq!(
        run(addr, Some(&exact), &own),
        Ok(canonical_addr),
        "{addr} is refused as a listener although allowed_networks lists it"
    );
    let expected = match plain {
        Err(refusal) => refusal,
        Ok(_) => Refusal::OwnListener,
    };
    assert_eq!(
        run(addr, None, &own),
        Err(expected),
        "{addr} as one of our listeners"
    );
}

fn run(
    addr: SocketAddr,
    allowed: Option<&[IpNet]>,
    own: &[SocketAddr],
) -> Result<SocketAddr, Refusal> {
    let is_local = |ip: IpAddr| ip.is_loopback();
    let policy = Policy {
        allowed,
        own,
        is_local: &is_local,
    };
    classify(addr, &policy)
}

/// `64:ff9b::a.b.c.d` (RFC 6052).
fn nat64(v4: Ipv4Addr) -> Ipv6Addr {
    Ipv6Addr::from((0x0064_ff9b_u128 << 96) | u128::from(u32::from(v4)))
}

/// `2002:aabb:ccdd::/48` (RFC 3056), with some interface bits from `salt`.
fn six_to_four(v4: Ipv4Addr, salt: u16) -> Ipv6Addr {
    Ipv6Addr::from((0x2002_u128 << 112) | (u128::from(u32::from(v4)) << 80) | u128::from(salt))
}

/// An error sentence for an operator: one line, bounded, no control bytes.
fn one_line(message: &str) {
    assert!(!message.is_empty(), "an empty error");
    assert!(message.len() <= 1024, "an error of {} bytes", message.len());
    assert!(
        !message.chars().any(char::is_control),
        "an error with a control character: {message:?}"
    );
}
