//! Self-checks of the test support (fake backends, raw parser, metrics
//! parser) without Switchyard in between, so that a failure elsewhere points
//! at Switchyard rather than at the harness.

mod support;

use std::time::Duration;

use http::Method;
use http_body_util::BodyExt;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_backend_modes_work_directly() {
    let b = FakeBackend::start("direct").await;
    let http = Http::new();

    let plain = http.get(b.addr, "/x").await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.backend(), Some("direct"));
    assert_eq!(plain.text(), "direct");

    let echo = http.get_host(b.addr, "Some.Host:99", "/e?echo=1").await;
    let json = echo.json();
    assert_eq!(json["uri"], "/e?echo=1");
    assert_eq!(json["method"], "GET");
    let headers: Vec<(String, String)> = serde_json::from_value(json["headers"].clone()).unwrap();
    assert!(headers.contains(&("host".into(), "Some.Host:99".into())));
    assert_eq!(b.last_seen().unwrap().header("host"), Some("Some.Host:99"));

    let counted = http.post(b.addr, "/c?count=1", "12345").await;
    assert_eq!(counted.text(), "5");

    let status = http.get(b.addr, "/s?status=418").await;
    assert_eq!(status.status.as_u16(), 418);

    let streamed = http
        .send_streaming(
            request(Method::GET, b.addr, "/big?stream_bytes=1000000")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(count_body(streamed.into_body()).await.unwrap(), 1_000_000);

    let addr = b.addr;
    let held = tokio::spawn(async move { Http::new().get(addr, "/h?hold=1").await });
    eventually(WAIT, "hold", || async { b.held() == 1 }).await;
    assert!(!held.is_finished());
    b.release(1);
    assert_eq!(held.await.unwrap().status, 200);

    let resp = http
        .send_streaming(
            request(Method::GET, b.addr, "/sh?stream_hold=1")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first\n");
    eventually(WAIT, "stream hold", || async { b.held() == 1 }).await;
    b.release(1);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"rest\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_and_refused_fail_directly() {
    let reset = ResetBackend::start().await;
    assert!(Http::new().try_get(reset.addr, "/").await.is_err());
    assert!(reset.accepted() >= 1);
    assert!(Http::new().try_get(refused_addr(), "/").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_conn_reads_keep_alive_and_close() {
    let b = FakeBackend::start("raw").await;
    let mut conn = RawConn::connect(b.addr).await;
    conn.send(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b?stream_bytes=70000 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let first = conn.response().await;
    assert_eq!((first.status, first.text().as_str()), (200, "raw"));
    let second = conn.response().await;
    assert_eq!(second.body.len(), 70000);
    assert!(!conn.closes_within(Duration::from_millis(200)).await);
    conn.send(b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(conn.response().await.status, 200);
    assert!(conn.closes_within(Duration::from_secs(2)).await);
}

#[test]
fn raw_parser_handles_chunked_and_close_delimited() {
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\nrest";
    let (resp, used) = parse_raw_response(chunked, false).unwrap();
    assert_eq!(resp.body, b"abcde");
    assert_eq!(&chunked[used..], b"rest");
    assert!(parse_raw_response(&chunked[..30], false).is_none());
    let closed = b"HTTP/1.0 400 Bad Request\r\nX: y\r\n\r\nbad";
    assert!(parse_raw_response(closed, false).is_none());
    let (resp, _) = parse_raw_response(closed, true).unwrap();
    assert_eq!((resp.status, resp.body.as_slice()), (400, &b"bad"[..]));
    assert_eq!(resp.header("x"), Some("y"));
}

#[test]
fn metrics_parser_matches_labels_in_any_order() {
    let text = "# HELP a_total x\n# TYPE a_total counter\n\
                a_total{code=\"200\",service=\"web\"} 5\n\
                a_total{service=\"web\",code=\"500\"} 2\n\
                b_bucket{le=\"+Inf\",service=\"a \\\"q\\\"\"} 7\n\
                c 1.5e0\n";
    assert_eq!(
        metric(text, "a_total", &[("service", "web"), ("code", "200")]),
        Some(5.0)
    );
    assert_eq!(metric(text, "a_total", &[("service", "web")]), Some(7.0));
    assert_eq!(metric(text, "a_total", &[("service", "x")]), None);
    assert_eq!(
        metric(text, "b_bucket", &[("le", "+Inf"), ("service", "a \"q\"")]),
        Some(7.0)
    );
    assert_eq!(metric(text, "c", &[]), Some(1.5));
    assert_eq!(
        parse_listen_line(
            "2024-01-01T00:00:00Z  INFO switchyard: proxy listening on 127.0.0.1:4242",
            "proxy listening on "
        ),
        Some("127.0.0.1:4242".parse().unwrap())
    );
    assert_eq!(
        parse_listen_line(
            r#"{"fields":{"message":"admin listening on 127.0.0.1:9"}}"#,
            "admin listening on "
        ),
        Some("127.0.0.1:9".parse().unwrap())
    );
}
