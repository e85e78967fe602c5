//! How errors are reported: position, dotted key, message, the display
//! form, and several errors in one load (shape and value errors together).

use super::*;

#[test]
fn an_unknown_key_names_its_line_and_key() {
    let text = "[proxy]\nlisten = [\"127.0.0.1:0\"]\nlisen = [\"127.0.0.1:0\"]\n";
    let e = parse(text).expect_err("typo rejected");
    assert_eq!(e.0.len(), 1);
    let shown = e.to_string();
    assert!(
        shown.starts_with("test.toml:3:1: proxy.lisen: unknown field `lisen`"),
        "{shown}"
    );
}

#[test]
fn syntax_and_type_errors_carry_position_and_key() {
    let e = fails(
        "[proxy]\nmax_headers = \"a\"\n",
        "proxy.max_headers",
        "expected an integer",
    );
    assert_eq!((e.line, e.column), (2, 15));
    let text = "[[routes]]\nservice = \"a\"\n[[routes]]\nservic = \"b\"\n";
    fails(text, "routes[1].servic", "unknown field");
    let text = r#"[services.a]
backends = [
  "127.0.0.1:1",
  { address = "127.0.0.1:2", wieght = 2 },
]
"#;
    let e = fails(
        text,
        "services.a.backends[1].wieght",
        "unknown field `wieght`",
    );
    assert_eq!((e.line, e.column), (4, 30));
    fails(
        "[[proxy.tls]]\nlisten = \"127.0.0.1:0\"\n",
        "proxy.tls[0].certs",
        "missing field",
    );
    fails(
        "[services.a]\nbalance = \"rr\"\n",
        "services.a.balance",
        "unknown variant",
    );
    fails(
        "[services.a]\nhealth_check.intervl = \"1s\"\n",
        "services.a.health_check.intervl",
        "unknown field",
    );
    // The parser reports an unclosed array where its line ends, under its key.
    let e = fails("[proxy]\nlisten = [\"a\"\n", "proxy.listen", "expected");
    assert_eq!(e.line, 2);
}

/// TOML 1.1 (the toml crate from 1.0): an inline table may span lines and end
/// with a comma; the key and value errors inside keep their own line.
#[test]
fn a_multi_line_inline_table_is_read_as_toml_1_1() {
    let text = "[services.a]\nbackends = [{\n  address = \"127.0.0.1:1\",\n  weight = 2,\n}]\n";
    let config = parse_ok(text);
    assert_eq!(service(&config, "a").backends[0].weight, 2);
    let text = "[services.a]\nbackends = [{\n  address = \"127.0.0.1:1\",\n  wieght = 2,\n}]\n";
    let e = fails(text, "services.a.backends[0].wieght", "unknown field");
    assert_eq!((e.line, e.column), (4, 3));
}

#[test]
fn every_semantic_error_is_reported_at_once() {
    let text = r#"
[proxy]
idle_timeout = "soon"
max_headers = 0
[services.users]
backends = ["127.0.0.1:0", { address = "127.0.0.1:1", weight = 1001 }]
[services.users.retry]
attempts = 11
[[routes]]
path_prefix = "users"
service = "users"
"#;
    let errs = errors(text);
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    let expected = [
        "proxy.idle_timeout",
        "proxy.max_headers",
        "services.users.backends[0]",
        "services.users.backends[1].weight",
        "services.users.retry.attempts",
        "routes[0].path_prefix",
    ];
    assert_eq!(keys, expected);
    let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
    assert_eq!(lines, [3, 4, 6, 6, 8, 10]);
    assert_eq!(ConfigErrors(errs).to_string().lines().count(), 6);
}

#[test]
fn the_display_format_is_file_line_col_key_message() {
    let e = fails(
        "[services.a]\nbackends = [{ address = \"127.0.0.1:1\", weight = 1001 }]\n",
        "services.a.backends[0].weight",
        "0 to 1000",
    );
    let shown = "test.toml:2:49: services.a.backends[0].weight: must be from 0 to 1000, got 1001";
    assert_eq!(e.to_string(), shown);
}

/// `(line, key)` of every error, in the order reported.
fn lines_and_keys(text: &str) -> Vec<(usize, String)> {
    errors(text).into_iter().map(|e| (e.line, e.key)).collect()
}

#[test]
fn every_unknown_key_is_reported_with_its_own_position() {
    let text = "[proxy]\nlisten = [\"127.0.0.1:0\"]\nlisen = \"x\"\n\n[admin]\n\
                listen = \"127.0.0.1:0\"\n\n[services.users]\n\
                backends = [\"127.0.0.1:9001\"]\nbalanse = \"round_robin\"\n\
                [services.users.helth_check]\npath = \"/\"\n[[routes]]\nservice = \"users\"\n\
                prefix = \"/\"\n[log]\nlevel = \"info\"\n";
    let expected = [
        (3, "proxy.lisen"),
        (10, "services.users.balanse"),
        (11, "services.users.helth_check"),
        (15, "routes[0].prefix"),
        (17, "log.level"),
    ];
    let expected: Vec<(usize, String)> = expected.map(|(l, k)| (l, k.to_owned())).into();
    assert_eq!(lines_and_keys(text), expected);
    let e = &errors(text)[1];
    assert_eq!(e.column, 1);
    assert!(e.message.starts_with("unknown field `balanse`"), "{e}");
}

#[test]
fn unknown_keys_wrong_types_and_invalid_values_are_reported_together() {
    let text = r#"[proxy]
listen = ["127.0.0.1:0"]
lisen = "x"
max_headers = "many"

[services.users]
backends = ["127.0.0.1:9001", { address = "127.0.0.1:9002", wieght = 2 }]
request_timeout = "soon"
balance = "random"

[services.users.retry]
attempts = 11
idempotent_only = "yes"
"#;
    let errs = errors(text);
    let shown: Vec<String> = errs
        .iter()
        .map(|e| format!("{}:{}: {}", e.line, e.column, e.key))
        .collect();
    let expected = [
        "3:1: proxy.lisen",
        "4:15: proxy.max_headers",
        "7:61: services.users.backends[1].wieght",
        "8:19: services.users.request_timeout",
        "9:11: services.users.balance",
        "12:12: services.users.retry.attempts",
        "13:19: services.users.retry.idempotent_only",
    ];
    assert_eq!(shown, expected, "{}", ConfigErrors(errs.clone()));
    assert!(
        errs[1].message.contains("expected an integer"),
        "{}",
        errs[1]
    );
    assert!(
        errs[4].message.contains("unknown variant `random`"),
        "{}",
        errs[4]
    );
}

#[test]
fn a_dropped_key_does_not_stand_in_for_a_second_error() {
    // A wrong-typed key falls back to its default; checks that compare keys
    // must not then complain about that default.
    let text = "[proxy]\nlisten = 8080\n[admin]\nlisten = \"0.0.0.0:8080\"\ntoken = 5\n";
    let keys = lines_and_keys(text);
    assert_eq!(
        keys,
        [(2, "proxy.listen".into()), (5, "admin.token".into())]
    );
    let text = "[proxy]\nlisten = [\"127.0.0.1:1\"]\n[admin]\nlisten = [\"127.0.0.1:1\"]\n";
    assert_eq!(lines_and_keys(text), [(4, "admin.listen".into())]);
    let text = "[proxy]\nlisten = []\ntls = 1\n";
    assert_eq!(lines_and_keys(text), [(3, "proxy.tls".into())]);
    let text = "[[routes]]\npath_prefix = 1\nservice = \"a\"\n[[routes]]\nservice = \"b\"\n";
    assert_eq!(lines_and_keys(text), [(2, "routes[0].path_prefix".into())]);
    let text = "[services.a]\nprotocol = \"http3\"\ntls_server_name = \"a.internal\"\n";
    assert_eq!(lines_and_keys(text), [(2, "services.a.protocol".into())]);
}

#[test]
fn a_missing_required_key_is_reported_once() {
    fails(
        "[[routes]]\nservice = 5\n",
        "routes[0].service",
        "expected a string",
    );
    fails(
        "[services.a]\nbackends = [{ adress = \"127.0.0.1:1\" }]\n",
        "services.a.backends[0].adress",
        "unknown field",
    );
    let e = fails(
        "[[routes]]\nhost = \"a.com\"\n",
        "routes[0].service",
        "missing field",
    );
    assert_eq!((e.line, e.column), (1, 1));
}

#[test]
fn a_syntax_error_is_one_error() {
    let e = fails("lisen = 1\n[proxy\nlisten = 5\n", "proxy", "");
    assert_eq!(e.line, 2);
}
