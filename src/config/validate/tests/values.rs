//! Value checks: durations, integer limits, weights, names, paths, status
//! ranges, retry conditions, registry stores, admin tokens and priority.

use super::*;

#[test]
fn durations_parse_and_refuse_zero_where_meaningless() {
    fails(
        "[proxy]\nidle_timeout = \"2\"\n",
        "proxy.idle_timeout",
        "\"250ms\"",
    );
    fails(
        "[proxy]\nheader_read_timeout = \"0s\"\n",
        "proxy.header_read_timeout",
        "greater than zero",
    );
    fails(
        "[services.a]\ntry_timeout = \"0ms\"\n",
        "services.a.try_timeout",
        "greater than zero",
    );
    fails(
        "[services.a.health_check]\ntimeout = \"0s\"\n",
        "services.a.health_check.timeout",
        "greater than zero",
    );
    fails(
        "[services.a.outlier]\nbase_ejection = \"x\"\n",
        "services.a.outlier.base_ejection",
        "not a duration",
    );
    let c = parse("[registry]\ndefault_ttl = \"0s\"\n[proxy]\ndrain_timeout = \"0s\"\n");
    assert!(c.is_ok());
}

#[test]
fn weights_are_0_to_1000_and_backends_unique() {
    let zero = "[services.a]\nbackends = [{ address = \"127.0.0.1:1\", weight = 0 }]\n";
    assert_eq!(service(&parse_ok(zero), "a").backends[0].weight, 0);
    fails(
        "[services.a]\nbackends = [{ address = \"127.0.0.1:1\", weight = 1001 }]\n",
        "services.a.backends[0].weight",
        "got 1001",
    );
    fails(
        "[services.a]\nbackends = [{ address = \"127.0.0.1:1\", weight = -3 }]\n",
        "services.a.backends[0].weight",
        "got -3",
    );
    fails(
        "[services.a]\nbackends = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n",
        "services.a.backends[1]",
        "listed twice",
    );
}

#[test]
fn service_names_are_checked_in_tables_and_routes() {
    fails(
        "[services.\"bad name\"]\n",
        "services.\"bad name\"",
        "1 to 128 characters",
    );
    let long = "x".repeat(129);
    fails(
        &format!("[services.{long}]\n"),
        &format!("services.{long}"),
        "1 to 128",
    );
    fails(
        "[[routes]]\nservice = \"a/b\"\n",
        "routes[0].service",
        "service name `a/b`",
    );
    fails(
        "[[routes]]\nservice = \"\"\n",
        "routes[0].service",
        "service name ``",
    );
    let c = parse_ok("[services.\"users.v2\"]\n[[routes]]\nservice = \"undeclared_Svc-1\"\n");
    assert!(c.services.contains_key("users.v2"));
}

#[test]
fn paths_must_start_with_a_slash() {
    fails(
        "[[routes]]\npath_prefix = \"api\"\nservice = \"a\"\n",
        "routes[0].path_prefix",
        "start with",
    );
    fails(
        "[services.a.health_check]\npath = \"healthz\"\n",
        "services.a.health_check.path",
        "start with",
    );
}

#[test]
fn duplicate_routes_are_an_error() {
    let text = "[[routes]]\nservice = \"a\"\n[[routes]]\npath_prefix = \"/\"\nservice = \"b\"\n";
    fails(text, "routes[1]", "same host and path_prefix as routes[0]");
}

#[test]
fn status_ranges() {
    assert_eq!(parse_status_range("200-399"), Ok((200, 399)));
    assert_eq!(parse_status_range("204"), Ok((204, 204)));
    for bad in ["399-200", "99", "600", "200-600", "abc", "2xx", ""] {
        assert!(parse_status_range(bad).is_err(), "accepted {bad:?}");
    }
    fails(
        "[services.a.health_check]\nexpect_status = \"399-200\"\n",
        "services.a.health_check.expect_status",
        "200-399",
    );
}

#[test]
fn retry_conditions_and_limits() {
    assert_eq!(parse_retry_on("reset"), Ok(RetryOn::Reset));
    assert_eq!(parse_retry_on("503"), Ok(RetryOn::Status(503)));
    for bad in ["302", "5xx", "retry", "0503", "600", ""] {
        assert!(parse_retry_on(bad).is_err(), "accepted {bad:?}");
    }
    fails(
        "[services.a.retry]\non = [\"reset\", \"302\"]\n",
        "services.a.retry.on[1]",
        "not a retry condition",
    );
    fails(
        "[services.a.retry]\nattempts = 11\n",
        "services.a.retry.attempts",
        "0 to 10",
    );
    fails(
        "[services.a.retry]\nbudget_percent = 101\n",
        "services.a.retry.budget_percent",
        "0 to 100",
    );
}

#[test]
fn health_and_outlier_limits() {
    fails(
        "[services.a.health_check]\nhealthy_threshold = 0\n",
        "services.a.health_check.healthy_threshold",
        "at least 1",
    );
    fails(
        "[services.a.health_check]\nunhealthy_threshold = 0\n",
        "services.a.health_check.unhealthy_threshold",
        "at least 1",
    );
    fails(
        "[services.a.health_check]\nhost = \"\"\n",
        "services.a.health_check.host",
        "non-empty",
    );
    fails(
        "[services.a.outlier]\nconsecutive_failures = 0\n",
        "services.a.outlier.consecutive_failures",
        "at least 1",
    );
    fails(
        "[services.a.outlier]\nmax_ejected_percent = 101\n",
        "services.a.outlier.max_ejected_percent",
        "0 to 100",
    );
}

#[test]
fn registry_stores() {
    let base = Path::new("/srv");
    assert_eq!(parse_store("memory", base), Ok(StoreConfig::Memory));
    assert_eq!(
        parse_store("file:r.json", base),
        Ok(StoreConfig::File("/srv/r.json".into()))
    );
    assert_eq!(
        parse_store("file:/var/r.json", base),
        Ok(StoreConfig::File("/var/r.json".into()))
    );
    let config = parse_ok(
        "[registry]\nstore = \"etcd://127.0.0.1:2379,127.0.0.1:22379/switchyard\"\n[registry.etcd]\ndial_timeout = \"2s\"\n",
    );
    let StoreConfig::Etcd(etcd) = config.registry.store else {
        panic!("not an etcd store: {:?}", config.registry.store);
    };
    assert_eq!(etcd.endpoints, ["127.0.0.1:2379", "127.0.0.1:22379"]);
    assert_eq!(etcd.prefix, "/switchyard");
    assert_eq!(etcd.dial_timeout, std::time::Duration::from_secs(2));
    assert_eq!(etcd.tls, None);
    assert_eq!(
        config.admin.priority,
        crate::config::ControlPriority::Normal,
        "cluster mode runs the control plane at normal priority unless told otherwise"
    );
    fails(
        "[registry]\nstore = \"etcd://127.0.0.1:2379/x\"\n[registry.etcd]\nca = \"/nonexistent/ca.pem\"\n",
        "registry.etcd.ca",
        "cannot read",
    );
    fails(
        "[registry]\nstore = \"memory\"\n[registry.etcd]\ndial_timeout = \"2s\"\n",
        "registry.etcd",
        "only used with",
    );
    fails(
        "[registry]\nstore = \"file:\"\n",
        "registry.store",
        "needs a path",
    );
    fails(
        "[registry]\nstore = \"etcd://\"\n",
        "registry.store",
        "HOST:PORT",
    );
    fails(
        "[registry]\nstore = \"redis://x\"\n",
        "registry.store",
        "\"memory\"",
    );
    fails(
        "[registry]\nmax_instances_per_service = 0\n",
        "registry.max_instances_per_service",
        "at least 1",
    );
}

#[test]
fn admin_tokens() {
    let c = parse_ok("[admin]\ntoken_env = \"PATH\"\n");
    assert_eq!(c.admin.token, std::env::var("PATH").ok());
    let unset = "SWITCHYARD_TEST_VARIABLE_THAT_IS_NEVER_SET";
    fails(
        &format!("[admin]\ntoken_env = \"{unset}\"\n"),
        "admin.token_env",
        "is not set",
    );
    assert!(env_token("X", Ok(String::new())).is_err_and(|m| m.contains("is empty")));
    fails(
        "[admin]\ntoken = \"a\"\ntoken_env = \"PATH\"\n",
        "admin.token_env",
        "not both",
    );
    fails(
        "[admin]\ntoken = \"\"\n",
        "admin.token",
        "must not be empty",
    );
}

#[test]
fn admin_priority() {
    assert_eq!(parse_ok("").admin.priority, ControlPriority::Background);
    let normal = parse_ok("[admin]\npriority = \"normal\"\n");
    assert_eq!(normal.admin.priority, ControlPriority::Normal);
    let background = parse_ok("[admin]\npriority = \"background\"\n");
    assert_eq!(background.admin.priority, ControlPriority::Background);
    fails(
        "[admin]\npriority = \"realtime\"\n",
        "admin.priority",
        "unknown variant `realtime`",
    );
}

#[test]
fn proxy_limits() {
    fails(
        "[proxy]\nmax_header_bytes = 1023\n",
        "proxy.max_header_bytes",
        "at least 1024",
    );
    fails(
        "[proxy]\nmax_headers = 0\n",
        "proxy.max_headers",
        "at least 1",
    );
    fails(
        "[proxy]\nmax_connections = 0\n",
        "proxy.max_connections",
        "at least 1",
    );
    fails(
        "[proxy]\nmax_body_bytes = -1\n",
        "proxy.max_body_bytes",
        "at least 0",
    );
}
