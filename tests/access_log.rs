//! SPEC §8 access log: one line per request, proxied or answered by
//! Switchyard itself, checked field by field (JSON) and against the
//! `combined` shape; SIGUSR1 after logrotate's rename writes to a new file;
//! reloads turn the log on and off; a log file whose folder is missing is a
//! config error with its position.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use serde_json::Value;
use support::*;

fn access_log_toml(path: &str, format: &str) -> String {
    format!("[access_log]\npath = \"{path}\"\nformat = \"{format}\"\n\n")
}

/// The log's JSON object for the request whose id is `id`.
fn line_with_id<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["request_id"] == id)
        .unwrap_or_else(|| panic!("no access-log line with request_id {id}: {lines:#?}"))
}

fn assert_recent_time(line: &Value) {
    let time = line["time"].as_str().expect("time is a string");
    let re = regex::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$").unwrap();
    assert!(
        re.is_match(time),
        "time {time:?} is not RFC 3339 UTC with ms"
    );
    let at = humantime::parse_rfc3339(time).expect("time parses");
    let age = SystemTime::now()
        .duration_since(at)
        .unwrap_or(Duration::ZERO);
    assert!(age < Duration::from_secs(60), "time {time} is not recent");
    assert!(at > UNIX_EPOCH);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_for_proxied_and_local_answers() {
    let web = FakeBackend::start("web").await;
    let toml = base_toml()
        + &access_log_toml("access.log", "json")
        + &service_toml("web", &[&web], "")
        + "[services.empty]\nbackends = []\n";
    let app = start_app(&toml).await;
    // Relative to the config file's folder.
    let log_path = app.config.path().parent().unwrap().join("access.log");

    let client = Http::new();
    let body = "twelve bytes";
    let req = request(Method::POST, app.proxy, "/web/items?page=2")
        .header("user-agent", "access-log-test/1.0")
        .header("referer", "http://example.test/from")
        .body(full(body))
        .unwrap();
    let proxied = client.send(req).await.expect("proxied POST");
    assert_eq!(proxied.status, StatusCode::OK);
    let proxied_id = proxied
        .header("x-request-id")
        .expect("x-request-id")
        .to_owned();

    let not_found = client.get(app.proxy, "/nothing/here").await;
    assert_eq!(not_found.status, StatusCode::NOT_FOUND);
    let not_found_id = not_found
        .header("x-request-id")
        .expect("x-request-id on 404")
        .to_owned();

    let unavailable = client.get(app.proxy, "/empty/x").await;
    assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
    let unavailable_id = unavailable
        .header("x-request-id")
        .expect("x-request-id on 503")
        .to_owned();

    let lines = wait_log_lines(&log_path, 3, WAIT).await;
    let lines = json_lines(&lines);
    assert_eq!(lines.len(), 3, "one line per request: {lines:#?}");
    let keys = [
        "time",
        "client",
        "method",
        "host",
        "path",
        "protocol",
        "status",
        "bytes_received",
        "bytes_sent",
        "duration_ms",
        "service",
        "backend",
        "attempts",
        "error",
        "user_agent",
        "referer",
        "request_id",
    ];
    for line in &lines {
        let object = line.as_object().expect("a JSON object");
        for key in keys {
            assert!(object.contains_key(key), "{key} missing from {line}");
        }
        assert_eq!(object.len(), keys.len(), "unexpected keys in {line}");
        assert_recent_time(line);
        let client: std::net::SocketAddr = line["client"].as_str().unwrap().parse().unwrap();
        assert!(client.ip().is_loopback(), "{line}");
        assert_eq!(line["host"], app.proxy.to_string());
        assert_eq!(line["protocol"], "HTTP/1.1");
        assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
    }

    let p = line_with_id(&lines, &proxied_id);
    assert_eq!(p["method"], "POST");
    assert_eq!(p["path"], "/web/items?page=2");
    assert_eq!(p["status"], 200);
    assert_eq!(p["bytes_received"], body.len());
    assert_eq!(p["bytes_sent"], proxied.body.len());
    assert_eq!(p["service"], "web");
    assert_eq!(p["backend"], web.address());
    assert_eq!(p["attempts"], 1);
    assert_eq!(p["error"], Value::Null);
    assert_eq!(p["user_agent"], "access-log-test/1.0");
    assert_eq!(p["referer"], "http://example.test/from");

    let n = line_with_id(&lines, &not_found_id);
    assert_eq!(n["method"], "GET");
    assert_eq!(n["path"], "/nothing/here");
    assert_eq!(n["status"], 404);
    assert_eq!(n["bytes_received"], 0);
    assert_eq!(n["bytes_sent"], not_found.body.len());
    assert_eq!(n["service"], Value::Null);
    assert_eq!(n["backend"], Value::Null);
    assert_eq!(n["attempts"], 0);
    assert_eq!(n["error"], "no route");
    assert_eq!(n["user_agent"], Value::Null);

    let u = line_with_id(&lines, &unavailable_id);
    assert_eq!(u["path"], "/empty/x");
    assert_eq!(u["status"], 503);
    assert_eq!(u["bytes_sent"], unavailable.body.len());
    assert_eq!(u["service"], "empty");
    assert_eq!(u["backend"], Value::Null);
    assert_eq!(u["attempts"], 0);
    assert_eq!(u["error"], "no healthy backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_backend_is_logged_with_its_attempts_and_reason() {
    let dead = refused_addr();
    let toml = base_toml()
        + &access_log_toml("access.log", "json")
        + &format!(
            "[services.dead]\nbackends = [\"{dead}\"]\n[services.dead.retry]\nattempts = 1\n"
        );
    let app = start_app(&toml).await;
    let log_path = app.config.path().parent().unwrap().join("access.log");
    let resp = get(app.proxy, "/dead/x").await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    let id = resp.header("x-request-id").unwrap().to_owned();
    let lines = json_lines(&wait_log_lines(&log_path, 1, WAIT).await);
    let line = line_with_id(&lines, &id);
    assert_eq!(line["status"], 502);
    assert_eq!(line["service"], "dead");
    assert_eq!(line["backend"], dead.to_string());
    // A refused connection is retried (attempts = 1 extra) on the only backend.
    assert_eq!(line["attempts"], 2);
    assert_eq!(line["error"], "backend connect failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_lines_match_the_combined_format() {
    let web = FakeBackend::start("web").await;
    let toml = base_toml()
        + &access_log_toml("access.log", "combined")
        + &service_toml("web", &[&web], "");
    let app = start_app(&toml).await;
    let log_path = app.config.path().parent().unwrap().join("access.log");
    let client = Http::new();
    let req = request(Method::GET, app.proxy, "/web/a?b=c")
        .header("user-agent", "quote\"agent")
        .header("x-request-id", "given-id-1")
        .body(empty())
        .unwrap();
    let ok = client.send(req).await.unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    let missing = client.get(app.proxy, "/missing").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let missing_id = missing.header("x-request-id").unwrap().to_owned();

    let lines = wait_log_lines(&log_path, 2, WAIT).await;
    let re = regex::Regex::new(concat!(
        r#"^(?P<ip>\S+) - - \[(?P<time>\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000)\] "#,
        r#""(?P<method>[A-Z]+) (?P<target>\S+) (?P<proto>HTTP/[0-9.]+)" (?P<status>\d{3}) (?P<sent>\d+) "#,
        r#""(?P<referer>[^"]*)" "(?P<ua>[^"]*)" host="(?P<host>[^"]*)" service="(?P<service>[^"]*)" "#,
        r#"backend="(?P<backend>[^"]*)" attempts=(?P<attempts>\d+) bytes_received=(?P<received>\d+) "#,
        r#"duration=(?P<duration>\d+\.\d{6}) error="(?P<error>[^"]*)" request_id="(?P<id>[^"]*)"$"#
    ))
    .unwrap();
    let parsed: Vec<_> = lines
        .iter()
        .map(|l| {
            re.captures(l)
                .unwrap_or_else(|| panic!("not in combined format: {l}"))
        })
        .collect();
    let ok_line = parsed
        .iter()
        .find(|c| &c["id"] == "given-id-1")
        .expect("line of the proxied request");
    assert_eq!(&ok_line["ip"], "127.0.0.1");
    assert_eq!(&ok_line["method"], "GET");
    assert_eq!(&ok_line["target"], "/web/a?b=c");
    assert_eq!(&ok_line["proto"], "HTTP/1.1");
    assert_eq!(&ok_line["status"], "200");
    assert_eq!(ok_line["sent"].parse::<usize>().unwrap(), ok.body.len());
    assert_eq!(&ok_line["referer"], "-");
    assert_eq!(
        &ok_line["ua"], "quote\\x22agent",
        "a quote is escaped as NGINX does"
    );
    assert_eq!(&ok_line["host"], app.proxy.to_string());
    assert_eq!(&ok_line["service"], "web");
    assert_eq!(&ok_line["backend"], web.address());
    assert_eq!(&ok_line["attempts"], "1");
    assert_eq!(&ok_line["error"], "-");
    let miss = parsed
        .iter()
        .find(|c| c["id"] == missing_id)
        .expect("line of the 404");
    assert_eq!(&miss["status"], "404");
    assert_eq!(&miss["service"], "-");
    assert_eq!(&miss["error"], "no route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_after_a_rename_writes_to_a_new_file() {
    let web = FakeBackend::start("web").await;
    let toml =
        base_toml() + &access_log_toml("access.log", "json") + &service_toml("web", &[&web], "");
    let config = ConfigFile::new(&toml);
    let proc = spawn_serve(&config).await;
    let dir = config.path().parent().unwrap().to_path_buf();
    let current = dir.join("access.log");
    let rotated = dir.join("access.log.1");

    assert_eq!(
        get(proc.proxy(), "/web/before").await.status,
        StatusCode::OK
    );
    wait_log_lines(&current, 1, WAIT).await;
    std::fs::rename(&current, &rotated).unwrap();
    // Written after the rename, before the signal: still the old file (as with NGINX).
    assert_eq!(
        get(proc.proxy(), "/web/between").await.status,
        StatusCode::OK
    );
    wait_log_lines(&rotated, 2, WAIT).await;
    proc.signal("USR1");
    eventually(WAIT, "SIGUSR1 to create a new access.log", || async {
        current.exists()
    })
    .await;
    assert_eq!(get(proc.proxy(), "/web/after").await.status, StatusCode::OK);
    let new_lines = json_lines(&wait_log_lines(&current, 1, WAIT).await);
    assert_eq!(new_lines.len(), 1);
    assert_eq!(new_lines[0]["path"], "/web/after");
    let old_lines = json_lines(&log_lines(&rotated));
    let old_paths: Vec<_> = old_lines.iter().map(|l| l["path"].clone()).collect();
    assert_eq!(old_paths, ["/web/before", "/web/between"]);
    assert!(
        proc.stderr().contains("access log reopened"),
        "{}",
        proc.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_turn_the_log_on_change_it_and_turn_it_off() {
    let web = FakeBackend::start("web").await;
    let without = base_toml() + &service_toml("web", &[&web], "");
    let app = start_app(&without).await;
    let dir = app.config.path().parent().unwrap().to_path_buf();
    let first = dir.join("first.log");
    let second = dir.join("second.log");
    assert_eq!(get(app.proxy, "/web/off").await.status, StatusCode::OK);

    app.config
        .write_in_place(&(without.clone() + &access_log_toml("first.log", "json")));
    assert_eq!(admin_reload(app.admin).await.status, StatusCode::OK);
    assert_eq!(get(app.proxy, "/web/on").await.status, StatusCode::OK);
    let lines = json_lines(&wait_log_lines(&first, 1, WAIT).await);
    assert_eq!(
        lines[0]["path"], "/web/on",
        "nothing logged before the log was on"
    );

    app.config
        .write_in_place(&(without.clone() + &access_log_toml("second.log", "combined")));
    assert_eq!(admin_reload(app.admin).await.status, StatusCode::OK);
    assert_eq!(get(app.proxy, "/web/moved").await.status, StatusCode::OK);
    let moved = wait_log_lines(&second, 1, WAIT).await;
    assert!(
        moved[0].contains("\"GET /web/moved HTTP/1.1\" 200"),
        "{moved:?}"
    );

    // A folder that does not exist: the reload is refused, the log stays on second.log.
    app.config
        .write_in_place(&(without.clone() + &access_log_toml("nowhere/x.log", "json")));
    let refused = admin_reload(app.admin).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused.text().contains("access_log.path"),
        "{}",
        refused.text()
    );
    assert_eq!(get(app.proxy, "/web/kept").await.status, StatusCode::OK);
    wait_log_lines(&second, 2, WAIT).await;

    app.config.write_in_place(&without);
    assert_eq!(admin_reload(app.admin).await.status, StatusCode::OK);
    assert_eq!(
        get(app.proxy, "/web/off-again").await.status,
        StatusCode::OK
    );
    // The request has been answered; its line would have been queued before
    // the answer went out, and the writer writes within milliseconds.
    let settled = within(Duration::from_millis(500), || async {
        log_lines(&second).len() > 2
    })
    .await;
    assert!(
        !settled,
        "logged after the log was turned off: {:?}",
        log_lines(&second)
    );
    assert_eq!(log_lines(&first).len(), 1);
}

#[tokio::test]
async fn check_reports_a_missing_log_folder_with_its_position() {
    let config = ConfigFile::new(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n\n[access_log]\npath = \"no/such/folder/access.log\"\nformat = \"json\"\n",
    );
    let out = run_binary(&["check", "--config", &config.path_str()]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(":5:8: access_log.path:"), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");

    let bad_format = ConfigFile::new("[access_log]\nformat = \"common\"\n");
    let out = run_binary(&["check", "--config", &bad_format.path_str()]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(":2:") && stderr.contains("access_log.format"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_stdout_never_holds_requests_back() {
    let web = FakeBackend::start("web").await;
    let toml =
        base_toml() + "[access_log]\npath = \"stdout\"\n\n" + &service_toml("web", &[&web], "");
    let config = ConfigFile::new(&toml);
    let (_child, proxy, _admin) = spawn_with_stdout_unread(&config).await;
    // ~300 bytes a line: a pipe buffer (64 KiB) is full after ~220 lines,
    // so from then on the writer is blocked on stdout.
    let client = Http::new();
    let started = std::time::Instant::now();
    for i in 0..1000 {
        let resp = client.get(proxy, "/web/pipe-is-full").await;
        assert_eq!(resp.status, StatusCode::OK, "request {i}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "bounded: request {i}"
        );
    }
    assert!(web.hits() >= 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_that_cannot_be_written_are_dropped_and_counted() {
    let web = FakeBackend::start("web").await;
    // Every write to /dev/full fails with ENOSPC (a full disk).
    let toml =
        base_toml() + &access_log_toml("/dev/full", "json") + &service_toml("web", &[&web], "");
    let app = start_app(&toml).await;
    for _ in 0..5 {
        assert_eq!(get(app.proxy, "/web/x").await.status, StatusCode::OK);
    }
    eventually(WAIT, "5 dropped lines counted", || async {
        metric(
            &metrics_text(app.admin).await,
            "switchyard_access_log_dropped_total",
            &[],
        ) == Some(5.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_queued_at_shutdown_are_written_before_exit() {
    let web = FakeBackend::start("web").await;
    let toml =
        base_toml() + &access_log_toml("access.log", "json") + &service_toml("web", &[&web], "");
    let config = ConfigFile::new(&toml);
    let mut proc = spawn_serve(&config).await;
    let log_path = config.path().parent().unwrap().join("access.log");
    let client = Http::new();
    for _ in 0..20 {
        assert_eq!(
            client.get(proc.proxy(), "/web/last").await.status,
            StatusCode::OK
        );
    }
    proc.signal("TERM");
    let status = proc.wait_exit(WAIT).await.expect("exits after SIGTERM");
    assert!(status.success(), "{}", proc.stderr());
    assert_eq!(
        log_lines(&log_path).len(),
        20,
        "every answered request is in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_requests_and_413_answers_are_logged() {
    let web = FakeBackend::start("web").await;
    let toml = base_toml_with("max_body_bytes = 10")
        + &access_log_toml("access.log", "json")
        + &service_toml("web", &[&web], "");
    let app = start_app(&toml).await;
    let log_path = app.config.path().parent().unwrap().join("access.log");

    let h2 = Http::h2c().get(app.proxy, "/web/over-h2").await;
    assert_eq!(h2.status, StatusCode::OK);
    let too_large = Http::new()
        .post(app.proxy, "/web/upload", "twenty bytes of body")
        .await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);

    let lines = json_lines(&wait_log_lines(&log_path, 2, WAIT).await);
    let h2_line = line_with_id(&lines, h2.header("x-request-id").unwrap());
    assert_eq!(h2_line["protocol"], "HTTP/2.0");
    assert_eq!(h2_line["host"], app.proxy.to_string(), "from :authority");
    assert_eq!(h2_line["status"], 200);
    assert_eq!(h2_line["backend"], web.address());
    let big = line_with_id(&lines, too_large.header("x-request-id").unwrap());
    assert_eq!(big["status"], 413);
    assert_eq!(big["method"], "POST");
    assert_eq!(big["service"], "web");
    assert_eq!(big["error"], "request body too large");
    assert_eq!(big["attempts"], 0);
}
