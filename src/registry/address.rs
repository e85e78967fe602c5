//! Registered addresses: parsing `host:port`, resolving host names, and the
//! policy of which IPs may be registered at all.
//!
//! Registration must not become a way to point the proxy at arbitrary
//! internal hosts, so every address is checked *after* resolution (a name
//! that resolves to a metadata address is refused like the literal), with
//! IPv4-mapped IPv6 forms (`::ffff:127.0.0.1`) reduced to IPv4 first. The
//! always-refused classes (link-local, cloud metadata addresses that are not
//! link-local, unspecified, multicast, broadcast, Switchyard's own listeners)
//! also cover IPv4 addresses carried inside NAT64 (`64:ff9b::/96`) and 6to4
//! (`2002::/16`) addresses, and pass only when `allowed_networks` lists a
//! network *inside* the class, such as `169.254.169.254/32`: a broad
//! `0.0.0.0/0` does not count as listing them. [`classify`] is pure and
//! unit-tested; only [`resolve`] does I/O.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;
use std::time::Duration;

use ipnet::IpNet;

use super::error::Shown;

/// How long a registration may wait for the system resolver.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an address could not be parsed or resolved (400).
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("address {0} needs a port, like \"127.0.0.1:9001\"")]
    MissingPort(Shown),
    #[error("the port of address {0} must be a number from 1 to 65535")]
    BadPort(Shown),
    #[error("address {0} has port 0; an instance needs the port it listens on")]
    PortZero(Shown),
    #[error("address {0} has no valid host name or IP")]
    BadHost(Shown),
    #[error("cannot resolve host {host}: {source}")]
    Unresolvable {
        host: Shown,
        #[source]
        source: io::Error,
    },
    #[error("host {0} resolved to no address")]
    NoAddress(Shown),
    #[error("resolving host {0} took longer than 2s")]
    ResolveTimeout(Shown),
}

/// Why a resolved address is refused (403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    LinkLocal,
    CloudMetadata,
    Unspecified,
    Multicast,
    Broadcast,
    OwnListener,
    NotAllowed,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::LinkLocal => "it is link-local (169.254.0.0/16 or fe80::/10, where cloud metadata services live) and not listed in registry.allowed_networks",
            Refusal::CloudMetadata => "it is a cloud metadata address (fd00:ec2::254 or 100.100.100.200) and not listed in registry.allowed_networks",
            Refusal::Unspecified => "it is an unspecified address (0.0.0.0/8 or ::) and not listed in registry.allowed_networks",
            Refusal::Multicast => "it is a multicast address and not listed in registry.allowed_networks",
            Refusal::Broadcast => "it is the broadcast address and not listed in registry.allowed_networks",
            Refusal::OwnListener => "it is one of Switchyard's own listeners, which would make a forwarding loop",
            Refusal::NotAllowed => "it is outside registry.allowed_networks",
        })
    }
}

/// What [`classify`] checks an address against.
pub struct Policy<'a> {
    /// `registry.allowed_networks`; `None` = any unicast address.
    pub allowed: Option<&'a [IpNet]>,
    /// Switchyard's own listen addresses (as bound, so real ports).
    pub own: &'a [SocketAddr],
    /// Whether an IP belongs to this host (a listener on `0.0.0.0:P` is
    /// reachable at every local IP with port P).
    pub is_local: &'a dyn Fn(IpAddr) -> bool,
}

/// Split `host:port` (`[v6]:port` for IPv6) and check the port.
pub fn split_host_port(address: &str) -> Result<(&str, u16), AddressError> {
    let shown = || Shown::new(address);
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && !port.contains(']') => (host, port),
        _ => return Err(AddressError::MissingPort(shown())),
    };
    if port.is_empty() {
        return Err(AddressError::MissingPort(shown()));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddressError::BadPort(shown()));
    }
    match port.parse::<u16>() {
        Ok(0) => Err(AddressError::PortZero(shown())),
        Ok(port) => Ok((host, port)),
        Err(_) => Err(AddressError::BadPort(shown())),
    }
}

/// An IP literal: `1.2.3.4` or `[::1]`. Public for the `address` fuzz target.
#[doc(hidden)]
pub fn parse_ip(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// A DNS name as RFC 1123 allows it (plus `_`, which some resolvers serve).
/// Public for the `address` fuzz target.
#[doc(hidden)]
pub fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63 && !label.starts_with('-'))
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// Parse `address` and resolve its host (first address the system resolver
/// gives, as the config does), bounded by a timeout.
pub async fn resolve(address: &str) -> Result<SocketAddr, AddressError> {
    let (host, port) = split_host_port(address)?;
    if let Some(ip) = parse_ip(host) {
        return Ok(SocketAddr::new(ip, port));
    }
    if !is_host_name(host) {
        return Err(AddressError::BadHost(Shown::new(address)));
    }
    let lookup = tokio::net::lookup_host((host, port));
    let mut addrs = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Err(_) => return Err(AddressError::ResolveTimeout(Shown::new(host))),
        Ok(Err(source)) => {
            let host = Shown::new(host);
            return Err(AddressError::Unresolvable { host, source });
        }
        Ok(Ok(addrs)) => addrs,
    };
    addrs
        .next()
        .ok_or_else(|| AddressError::NoAddress(Shown::new(host)))
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as the IPv4 address it reaches.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Check `addr` against the policy; `Ok` carries the canonical address to
/// connect to.
pub fn classify(addr: SocketAddr, policy: &Policy<'_>) -> Result<SocketAddr, Refusal> {
    let ip = canonical(addr.ip());
    let explicit = |class: IpNet| {
        policy
            .allowed
            .unwrap_or(&[])
            .iter()
            .any(|net| net.contains(&ip) && class.contains(net))
    };
    if let Some((refusal, class)) = special_class(ip).or_else(|| embedded_class(ip)) {
        if !explicit(class) {
            return Err(refusal);
        }
    }
    if let Some(allowed) = policy.allowed {
        if !allowed.iter().any(|net| net.contains(&ip)) {
            return Err(Refusal::NotAllowed);
        }
    }
    if is_own_listener(ip, addr.port(), policy) && !explicit(IpNet::from(ip)) {
        return Err(Refusal::OwnListener);
    }
    Ok(SocketAddr::new(ip, addr.port()))
}

/// The always-refused class an IP falls in, with the class's whole range.
fn special_class(ip: IpAddr) -> Option<(Refusal, IpNet)> {
    /// Parsed once: this runs on every registration.
    static CLASSES: LazyLock<Vec<(IpNet, Refusal)>> = LazyLock::new(|| {
        [
            ("169.254.0.0/16", Refusal::LinkLocal),
            ("fe80::/10", Refusal::LinkLocal),
            // Metadata services outside link-local: AWS over IPv6, Alibaba Cloud.
            ("fd00:ec2::254/128", Refusal::CloudMetadata),
            ("100.100.100.200/32", Refusal::CloudMetadata),
            ("0.0.0.0/8", Refusal::Unspecified),
            ("::/128", Refusal::Unspecified),
            ("224.0.0.0/4", Refusal::Multicast),
            ("ff00::/8", Refusal::Multicast),
            ("255.255.255.255/32", Refusal::Broadcast),
        ]
        .into_iter()
        .filter_map(|(range, refusal)| Some((range.parse().ok()?, refusal)))
        .collect()
    });
    CLASSES
        .iter()
        .find(|(range, _)| range.contains(&ip))
        .map(|&(range, refusal)| (refusal, range))
}

/// The always-refused class of the IPv4 address a NAT64 (`64:ff9b::/96`,
/// RFC 6052) or 6to4 (`2002::/16`, RFC 3056) address carries — a gateway
/// would deliver to that IPv4 — with the class's range written in the same
/// IPv6 form (so that `allowed_networks` can list it explicitly).
fn embedded_class(ip: IpAddr) -> Option<(Refusal, IpNet)> {
    const NAT64: u128 = 0x0064_ff9b << 96;
    const SIX_TO_FOUR: u128 = 0x2002 << 112;
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    let bits = u128::from(v6);
    // (prefix, prefix length, where the IPv4 address sits: bits below it)
    let (prefix, prefix_len, shift) = if bits >> 32 == NAT64 >> 32 {
        (NAT64, 96, 0)
    } else if bits >> 112 == SIX_TO_FOUR >> 112 {
        (SIX_TO_FOUR, 16, 80)
    } else {
        return None;
    };
    // Truncation intended: the 32 bits at `shift` are the IPv4 address.
    let v4 = Ipv4Addr::from((bits >> shift) as u32);
    let (refusal, class) = special_class(IpAddr::V4(v4))?;
    let IpNet::V4(class) = class else {
        return None;
    };
    let start = prefix | (u128::from(u32::from(class.network())) << shift);
    let net = ipnet::Ipv6Net::new(Ipv6Addr::from(start), prefix_len + class.prefix_len()).ok()?;
    Some((refusal, IpNet::V6(net)))
}

/// Same port as a listener, and the listener's IP or (for a wildcard
/// listener) any IP of this host.
fn is_own_listener(ip: IpAddr, port: u16, policy: &Policy<'_>) -> bool {
    policy.own.iter().any(|listen| {
        let listen_ip = canonical(listen.ip());
        listen.port() == port
            && (listen_ip == ip || (listen_ip.is_unspecified() && (policy.is_local)(ip)))
    })
}

/// Whether `ip` is one of this host's addresses: loopback, or one a socket
/// can bind to (the kernel refuses to bind to an address it does not own).
pub fn is_local_ip(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("test net")).collect()
    }

    fn check(
        address: &str,
        allowed: Option<&[IpNet]>,
        own: &[SocketAddr],
    ) -> Result<SocketAddr, Refusal> {
        let is_local = |ip: IpAddr| ip.is_loopback() || ip == IpAddr::from([10, 0, 0, 5]);
        let policy = Policy {
            allowed,
            own,
            is_local: &is_local,
        };
        classify(addr(address), &policy)
    }

    #[test]
    fn host_and_port_are_split_and_checked() {
        assert_eq!(
            split_host_port("127.0.0.1:9001").ok(),
            Some(("127.0.0.1", 9001))
        );
        assert_eq!(split_host_port("[::1]:80").ok(), Some(("[::1]", 80)));
        assert_eq!(
            split_host_port("db.local:5432").ok(),
            Some(("db.local", 5432))
        );
        assert!(matches!(
            split_host_port("127.0.0.1"),
            Err(AddressError::MissingPort(_))
        ));
        assert!(matches!(
            split_host_port("127.0.0.1:"),
            Err(AddressError::MissingPort(_))
        ));
        assert!(matches!(
            split_host_port("::1"),
            Err(AddressError::MissingPort(_))
        ));
        assert!(matches!(
            split_host_port("[::1]"),
            Err(AddressError::MissingPort(_))
        ));
        assert!(matches!(
            split_host_port("h:0"),
            Err(AddressError::PortZero(_))
        ));
        assert!(matches!(
            split_host_port("h:65536"),
            Err(AddressError::BadPort(_))
        ));
        assert!(matches!(
            split_host_port("h:-1"),
            Err(AddressError::BadPort(_))
        ));
        assert!(matches!(
            split_host_port("h:8o"),
            Err(AddressError::BadPort(_))
        ));
    }

    #[test]
    fn host_names_follow_dns_syntax() {
        assert!(is_host_name("localhost"));
        assert!(is_host_name("api-1.internal_zone.example"));
        assert!(!is_host_name(""));
        assert!(!is_host_name("a b"));
        assert!(!is_host_name("a..b"));
        assert!(!is_host_name("-a"));
        assert!(!is_host_name("a/b"));
        assert!(!is_host_name(&"a".repeat(64)));
    }

    #[tokio::test]
    async fn literals_resolve_without_dns_and_bad_hosts_are_refused() {
        assert_eq!(
            resolve("127.0.0.1:9001").await.ok(),
            Some(addr("127.0.0.1:9001"))
        );
        assert_eq!(resolve("[::1]:9001").await.ok(), Some(addr("[::1]:9001")));
        assert!(matches!(
            resolve("bad host:1").await,
            Err(AddressError::BadHost(_))
        ));
        assert!(matches!(
            resolve("[zz]:1").await,
            Err(AddressError::BadHost(_))
        ));
        let unresolvable = resolve("no-such-host.invalid:80").await;
        assert!(
            matches!(
                unresolvable,
                Err(AddressError::Unresolvable { .. } | AddressError::NoAddress(_))
            ),
            "{unresolvable:?}"
        );
    }

    #[test]
    fn ipv4_mapped_addresses_become_ipv4() {
        assert_eq!(
            canonical("::ffff:127.0.0.1".parse().unwrap()),
            IpAddr::from([127, 0, 0, 1])
        );
        assert_eq!(
            canonical("::1".parse().unwrap()),
            "::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn unicast_passes_without_allowed_networks() {
        assert_eq!(
            check("127.0.0.1:9001", None, &[]),
            Ok(addr("127.0.0.1:9001"))
        );
        assert_eq!(check("10.1.2.3:80", None, &[]), Ok(addr("10.1.2.3:80")));
        assert_eq!(
            check("[2001:db8::1]:80", None, &[]),
            Ok(addr("[2001:db8::1]:80"))
        );
        assert_eq!(
            check("[::ffff:10.0.0.1]:80", None, &[]),
            Ok(addr("10.0.0.1:80"))
        );
    }

    #[test]
    fn special_classes_are_refused_even_by_a_broad_allow() {
        let any = nets(&["0.0.0.0/0", "::/0"]);
        for allowed in [None, Some(&any[..])] {
            let cases = [
                ("169.254.169.254:80", Refusal::LinkLocal),
                ("[fe80::1]:80", Refusal::LinkLocal),
                ("[::ffff:169.254.169.254]:80", Refusal::LinkLocal),
                ("0.0.0.0:80", Refusal::Unspecified),
                ("[::]:80", Refusal::Unspecified),
                ("[::ffff:0.0.0.0]:80", Refusal::Unspecified),
                ("224.0.0.1:80", Refusal::Multicast),
                ("[ff02::1]:80", Refusal::Multicast),
                ("255.255.255.255:80", Refusal::Broadcast),
            ];
            for (address, refusal) in cases {
                assert_eq!(check(address, allowed, &[]), Err(refusal), "{address}");
            }
        }
    }

    #[test]
    fn cloud_metadata_and_embedded_ipv4_are_refused_even_by_a_broad_allow() {
        let any = nets(&["0.0.0.0/0", "::/0"]);
        for allowed in [None, Some(&any[..])] {
            let cases = [
                ("[fd00:ec2::254]:80", Refusal::CloudMetadata),
                ("100.100.100.200:80", Refusal::CloudMetadata),
                ("[::ffff:100.100.100.200]:80", Refusal::CloudMetadata),
                // NAT64 and 6to4 forms of 169.254.169.254 and others.
                ("[64:ff9b::a9fe:a9fe]:80", Refusal::LinkLocal),
                ("[64:ff9b::169.254.1.2]:80", Refusal::LinkLocal),
                ("[2002:a9fe:a9fe::]:80", Refusal::LinkLocal),
                ("[2002:a9fe:0102:1::5]:80", Refusal::LinkLocal),
                ("[64:ff9b::100.100.100.200]:80", Refusal::CloudMetadata),
                ("[2002:6464:64c8::1]:80", Refusal::CloudMetadata),
                ("[64:ff9b::0.0.0.0]:80", Refusal::Unspecified),
                ("[2002:e000:0001::]:80", Refusal::Multicast),
                ("[64:ff9b::255.255.255.255]:80", Refusal::Broadcast),
            ];
            for (address, refusal) in cases {
                assert_eq!(check(address, allowed, &[]), Err(refusal), "{address}");
            }
        }
        // Neighbours of the metadata addresses and ordinary embedded IPv4 pass.
        for address in [
            "[fd00:ec2::253]:80",
            "100.100.100.201:80",
            "[64:ff9b::10.0.0.1]:80",
            "[2002:0a00:0001::1]:80",
            "[64:ff9b:1::a9fe:a9fe]:80",
        ] {
            assert!(check(address, None, &[]).is_ok(), "{address}");
        }
    }

    #[test]
    fn embedded_classes_pass_when_listed_explicitly_in_their_own_form() {
        let allowed = nets(&["64:ff9b::a9fe:a9fe/128", "2002:a9fe::/32"]);
        assert!(check("[64:ff9b::a9fe:a9fe]:80", Some(&allowed), &[]).is_ok());
        assert!(check("[2002:a9fe:1:2::9]:80", Some(&allowed), &[]).is_ok());
        assert_eq!(
            check("[64:ff9b::a9fe:1]:80", Some(&allowed), &[]),
            Err(Refusal::LinkLocal)
        );
        // Listing the IPv4 class does not list its NAT64 form.
        let v4 = nets(&["169.254.0.0/16", "::/0"]);
        assert_eq!(
            check("[64:ff9b::a9fe:a9fe]:80", Some(&v4), &[]),
            Err(Refusal::LinkLocal)
        );
    }

    #[test]
    fn special_classes_pass_when_listed_explicitly() {
        let allowed = nets(&["169.254.169.254/32", "fe80::/10"]);
        let got = check("169.254.169.254:80", Some(&allowed), &[]);
        assert_eq!(got, Ok(addr("169.254.169.254:80")));
        assert!(check("[fe80::2]:80", Some(&allowed), &[]).is_ok());
        assert_eq!(
            check("169.254.1.1:80", Some(&allowed), &[]),
            Err(Refusal::LinkLocal)
        );
    }

    #[test]
    fn allowed_networks_restrict_after_mapping() {
        let allowed = nets(&["10.0.0.0/8"]);
        assert!(check("10.9.9.9:80", Some(&allowed), &[]).is_ok());
        assert_eq!(
            check("127.0.0.1:80", Some(&allowed), &[]),
            Err(Refusal::NotAllowed)
        );
        let mapped = check("[::ffff:127.0.0.1]:80", Some(&allowed), &[]);
        assert_eq!(mapped, Err(Refusal::NotAllowed));
        let loopback = nets(&["127.0.0.0/8"]);
        let mapped = check("[::ffff:127.0.0.1]:80", Some(&loopback), &[]);
        assert_eq!(mapped, Ok(addr("127.0.0.1:80")));
    }

    #[test]
    fn own_listeners_are_refused() {
        let own = [addr("127.0.0.1:8080"), addr("0.0.0.0:9091")];
        assert_eq!(
            check("127.0.0.1:8080", None, &own),
            Err(Refusal::OwnListener)
        );
        assert_eq!(
            check("[::ffff:127.0.0.1]:8080", None, &own),
            Err(Refusal::OwnListener)
        );
        assert!(check("127.0.0.1:8081", None, &own).is_ok());
        assert!(check("127.0.0.2:8080", None, &own).is_ok());
        // A wildcard listener is every local IP with its port.
        assert_eq!(
            check("127.0.0.9:9091", None, &own),
            Err(Refusal::OwnListener)
        );
        assert_eq!(
            check("10.0.0.5:9091", None, &own),
            Err(Refusal::OwnListener)
        );
        assert!(check("10.0.0.6:9091", None, &own).is_ok());
        // 127.0.0.0/8 does not list the listener explicitly; a host route does.
        let broad = nets(&["127.0.0.0/8"]);
        assert_eq!(
            check("127.0.0.1:8080", Some(&broad), &own),
            Err(Refusal::OwnListener)
        );
        let exact = nets(&["127.0.0.1/32"]);
        assert!(check("127.0.0.1:8080", Some(&exact), &own).is_ok());
    }

    #[test]
    fn an_ipv6_wildcard_listener_covers_local_ipv4_too() {
        let own = [addr("[::]:8080")];
        assert_eq!(
            check("127.0.0.1:8080", None, &own),
            Err(Refusal::OwnListener)
        );
        assert_eq!(check("[::1]:8080", None, &own), Err(Refusal::OwnListener));
    }

    #[test]
    fn local_ips_are_detected() {
        assert!(is_local_ip(IpAddr::from([127, 0, 0, 1])));
        assert!(is_local_ip(IpAddr::from([127, 1, 2, 3])));
        assert!(!is_local_ip(IpAddr::from([192, 0, 2, 1])));
    }
}
