//! Routing: which service answers a request, from its host and path.
//!
//! Precedence (SPEC §2): routes whose host matches come before host-less ones,
//! an exact host before a wildcard (`*.example.com`; the longer suffix first),
//! and within one group the longest `path_prefix` wins. Host matching ignores
//! case and port; the prefix is a plain, case-sensitive string prefix. A
//! service that no route names is reachable at `/<service>/`, but only after
//! every explicit route has failed to match. Pure: no I/O, built once per table.

use std::collections::HashMap;

/// One compiled route; `service` indexes the table's service list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub path_prefix: String,
    pub service: usize,
    pub strip_prefix: bool,
    /// Requests whose path holds `%2f`, `%5c`, `%00` or `\` may use it.
    pub allow_ambiguous_paths: bool,
}

/// A route as declared, before compilation.
#[derive(Debug, Clone)]
pub struct RouteSpec<'a> {
    /// Lower-case, no port; `*.suffix` for a wildcard.
    pub host: Option<&'a str>,
    pub path_prefix: &'a str,
    pub service: usize,
    pub strip_prefix: bool,
    pub allow_ambiguous_paths: bool,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Vec<Route>>,
    /// (".example.com", routes), longest suffix first.
    wildcard: Vec<(String, Vec<Route>)>,
    hostless: Vec<Route>,
    /// `/<service>/` for services no route names; tried last.
    implicit: Vec<Route>,
    /// `[proxy] merge_slashes`: how request paths are normalised before [`RouteTable::find`].
    pub merge_slashes: bool,
}

/// Longest host name we normalise on the stack (DNS caps names at 253).
const MAX_HOST: usize = 255;

impl RouteTable {
    /// Compile `specs`; `implicit` lists (service name, index) of services that
    /// no route names.
    pub fn build<'a>(
        specs: impl IntoIterator<Item = RouteSpec<'a>>,
        implicit: impl IntoIterator<Item = (&'a str, usize)>,
    ) -> RouteTable {
        let mut table = RouteTable::default();
        for spec in specs {
            let route = Route {
                path_prefix: spec.path_prefix.to_owned(),
                service: spec.service,
                strip_prefix: spec.strip_prefix,
                allow_ambiguous_paths: spec.allow_ambiguous_paths,
            };
            match spec.host {
                None => table.hostless.push(route),
                Some(host) => match host.strip_prefix('*') {
                    Some(suffix) => table.wildcard_group(suffix).push(route),
                    None => table.exact.entry(host.to_owned()).or_default().push(route),
                },
            }
        }
        for (name, service) in implicit {
            table.implicit.push(Route {
                path_prefix: format!("/{name}/"),
                service,
                strip_prefix: false,
                allow_ambiguous_paths: false,
            });
        }
        table.sort();
        table
    }

    fn wildcard_group(&mut self, suffix: &str) -> &mut Vec<Route> {
        let pos = match self.wildcard.iter().position(|(s, _)| s == suffix) {
            Some(pos) => pos,
            None => {
                self.wildcard.push((suffix.to_owned(), Vec::new()));
                self.wildcard.len() - 1
            }
        };
        &mut self.wildcard[pos].1
    }

    fn sort(&mut self) {
        let by_prefix = |routes: &mut Vec<Route>| {
            routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        };
        self.exact.values_mut().for_each(by_prefix);
        self.wildcard.iter_mut().for_each(|(_, r)| by_prefix(r));
        self.wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        by_prefix(&mut self.hostless);
        by_prefix(&mut self.implicit);
    }

    /// The route for `host` (as sent: any case, maybe with a port) and `path`.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let mut buf = [0u8; MAX_HOST];
        let host = host.and_then(|h| normalise_host(h, &mut buf));
        if let Some(host) = host {
            if let Some(r) = self.exact.get(host).and_then(|g| longest(g, path)) {
                return Some(r);
            }
            for (suffix, group) in &self.wildcard {
                if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                    if let Some(r) = longest(group, path) {
                        return Some(r);
                    }
                }
            }
        }
        longest(&self.hostless, path).or_else(|| self.implicit_for(path))
    }

    /// `/<service>/...`, and `/<service>` itself.
    fn implicit_for(&self, path: &str) -> Option<&Route> {
        longest(&self.implicit, path).or_else(|| {
            self.implicit
                .iter()
                .find(|r| r.path_prefix.len() == path.len() + 1 && r.path_prefix.starts_with(path))
        })
    }
}

/// Routes are sorted longest prefix first, so the first match is the longest.
fn longest<'r>(routes: &'r [Route], path: &str) -> Option<&'r Route> {
    routes
        .iter()
        .find(|r| path.starts_with(r.path_prefix.as_str()))
}

/// Lower-case `host` and drop its port, into `buf`; `None` if it cannot be a host.
fn normalise_host<'b>(host: &str, buf: &'b mut [u8; MAX_HOST]) -> Option<&'b str> {
    let bare = strip_port(host);
    let bytes = bare.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_HOST {
        return None;
    }
    let out = &mut buf[..bytes.len()];
    out.copy_from_slice(bytes);
    out.make_ascii_lowercase();
    let out = std::str::from_utf8(out).ok()?;
    Some(out.strip_suffix('.').unwrap_or(out))
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content and brackets, drop ":port".
        return match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

/// The path the backend sees: `path` without `prefix` (always starting with
/// `/`), query kept. `None` when nothing needs to change.
pub fn strip(prefix: &str, path_and_query: &str) -> Option<String> {
    let rest = path_and_query.strip_prefix(prefix)?;
    if rest.starts_with('/') {
        return Some(rest.to_owned());
    }
    let mut out = String::with_capacity(rest.len() + 1);
    out.push('/');
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        host: Option<&'static str>,
        prefix: &'static str,
        service: usize,
    ) -> RouteSpec<'static> {
        RouteSpec {
            host,
            path_prefix: prefix,
            service,
            strip_prefix: false,
            allow_ambiguous_paths: false,
        }
    }

    fn table() -> RouteTable {
        RouteTable::build(
            vec![
                spec(None, "/", 0),
                spec(None, "/users", 1),
                spec(None, "/users/admin", 2),
                spec(Some("api.example.com"), "/", 3),
                spec(Some("api.example.com"), "/v2", 4),
                spec(Some("*.example.com"), "/", 5),
                spec(Some("*.deep.example.com"), "/", 6),
            ],
            vec![("orders", 7)],
        )
    }

    fn svc(t: &RouteTable, host: Option<&str>, path: &str) -> Option<usize> {
        t.find(host, path).map(|r| r.service)
    }

    #[test]
    fn longest_prefix_wins_within_a_group() {
        let t = table();
        assert_eq!(svc(&t, None, "/users/admin/x"), Some(2));
        assert_eq!(svc(&t, None, "/users/7"), Some(1));
        assert_eq!(svc(&t, None, "/other"), Some(0));
    }

    #[test]
    fn exact_host_before_wildcard_before_hostless() {
        let t = table();
        assert_eq!(svc(&t, Some("api.example.com"), "/users"), Some(3));
        assert_eq!(svc(&t, Some("api.example.com"), "/v2/x"), Some(4));
        assert_eq!(svc(&t, Some("www.example.com"), "/users"), Some(5));
        assert_eq!(svc(&t, Some("a.deep.example.com"), "/"), Some(6));
        assert_eq!(svc(&t, Some("example.com"), "/users"), Some(1));
        assert_eq!(svc(&t, Some("other.org"), "/users"), Some(1));
    }

    #[test]
    fn host_ignores_case_and_port() {
        let t = table();
        assert_eq!(svc(&t, Some("API.Example.COM:8080"), "/"), Some(3));
        assert_eq!(svc(&t, Some("WWW.example.com:443"), "/"), Some(5));
        assert_eq!(svc(&t, Some("api.example.com."), "/"), Some(3));
    }

    #[test]
    fn prefix_is_case_sensitive() {
        let t = RouteTable::build(vec![spec(None, "/Users", 1)], vec![]);
        assert_eq!(svc(&t, None, "/users"), None);
        assert_eq!(svc(&t, None, "/Users/1"), Some(1));
    }

    #[test]
    fn implicit_routes_come_after_explicit_ones() {
        let t = table();
        // The hostless "/" route catches everything first.
        assert_eq!(svc(&t, None, "/orders/1"), Some(0));
        let t = RouteTable::build(vec![spec(None, "/users", 1)], vec![("orders", 7)]);
        assert_eq!(svc(&t, None, "/orders/1"), Some(7));
        assert_eq!(svc(&t, None, "/orders"), Some(7));
        assert_eq!(svc(&t, None, "/ordersx"), None);
        assert_eq!(svc(&t, None, "/nothing"), None);
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets() {
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("host:80"), "host");
        assert_eq!(strip_port("host"), "host");
    }

    #[test]
    fn strip_keeps_a_leading_slash_and_the_query() {
        assert_eq!(strip("/users", "/users/42?x=1").as_deref(), Some("/42?x=1"));
        assert_eq!(strip("/users", "/users").as_deref(), Some("/"));
        assert_eq!(strip("/users", "/users?x").as_deref(), Some("/?x"));
        assert_eq!(strip("/users/", "/users/42").as_deref(), Some("/42"));
        assert_eq!(strip("/users", "/other"), None);
    }
}
