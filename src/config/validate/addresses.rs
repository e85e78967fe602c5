//! Address checks: `host:port` for listeners and backends (IP literals as is,
//! names through the system resolver, first address), CIDR networks, and the
//! host names and wildcards that routes match on. `Err` carries the
//! one-sentence message that becomes the error's MESSAGE.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use ipnet::IpNet;

/// `host:port`, `[v6]:port`; the port must be at least `min_port`.
fn split_host_port(s: &str, min_port: u16) -> Result<(&str, u16), String> {
    let bad =
        || format!("`{s}` is not a host:port address like \"127.0.0.1:8080\" or \"[::1]:8080\"");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.is_empty() || (host.contains(':') && !bracketed) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p >= min_port => Ok((host, p)),
        _ => Err(format!(
            "the port of `{s}` must be a number from {min_port} to 65535"
        )),
    }
}

fn parse_ip(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// An IP literal as is; a name through the system resolver, first address.
fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Some(ip) = parse_ip(host) {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve host `{host}`: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("host `{host}` resolved to no address"))
}

/// A listen address; port 0 (ephemeral) is allowed.
pub(super) fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let (host, port) = split_host_port(s, 0)?;
    resolve(host, port)
}

pub(super) fn resolve_backend(s: &str) -> Result<SocketAddr, String> {
    let (host, port) = split_host_port(s, 1)?;
    resolve(host, port)
}

/// A CIDR; a bare address is its own /32 or /128.
pub(super) fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{s}` is not an IP network like \"10.0.0.0/8\" or an IP address"))
}

/// Route hosts: exact or `*.suffix`, lower-cased, any `:port` removed.
pub(super) fn normalize_host(s: &str) -> Result<String, String> {
    let lower = s.trim().to_ascii_lowercase();
    let host = strip_port(&lower);
    let name = host.strip_prefix("*.").unwrap_or(host);
    let ok = if name.starts_with('[') {
        parse_ip(name).is_some()
    } else {
        is_dns_name(name)
    };
    if !ok {
        return Err(format!(
            "route host `{s}` must be a host name like \"api.example.com\" \
             or a wildcard like \"*.example.com\""
        ));
    }
    Ok(host.to_owned())
}

fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.find(']').map_or(h, |i| &h[..=i]);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    }
}

fn is_dns_name(name: &str) -> bool {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (1..=253).contains(&name.len()) && name.split('.').all(label_ok)
}
