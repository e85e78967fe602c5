//! Protocols towards backends and passed through them, end to end:
//! `protocol = "https"` (TLS with ALPN to an in-process hyper server, trusted
//! through `tls_ca`, named by the backend's host or `tls_server_name`),
//! `protocol = "h2c"`, h2c prior knowledge from curl, gRPC with real python
//! grpcio clients and servers (balanced per request, trailers and error
//! statuses delivered), and WebSocket with python `websockets` (messages
//! both ways, least_conn counting an open socket as in flight).
//!
//! The python packages are required: a test that needs one and cannot import
//! it fails naming the pip package (`.ci/run` installs both).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use support::python::Py;
use support::*;

/// The App in-process with `files` beside its config (`support`), ready.
async fn start_with_files(toml: &str, files: &[(&str, &str)]) -> TestApp {
    let app = start_app_with_files(toml, files).await;
    wait_ready(app.admin).await;
    app
}

// ===== TLS backends that report the protocol they saw =====

/// A fake backend speaking TLS with `cert`/`key`, offering `alpn`, that
/// answers with the HTTP version each request came in (`support`).
async fn tls_backend(cert: &str, key: &str, alpn: &[&[u8]]) -> FakeBackend {
    FakeBackend::builder("tls")
        .tls(cert, key, alpn)
        .reply_version()
        .start()
        .await
}

/// A test CA and one leaf for `sans`: (CA PEM, leaf PEM, leaf key PEM).
fn pki(sans: &[&str]) -> (String, String, String) {
    let ca = support::pki::Pki::new();
    let leaf = ca.leaf_for("backend", sans);
    (ca.ca_pem(), leaf.cert_pem, leaf.key_pem)
}

fn https_service(address: &str, extra: &str) -> String {
    format!(
        "[services.secure]\nbackends = [\"{address}\"]\nprotocol = \"https\"\n{extra}\n\
         [services.secure.retry]\nattempts = 0\n\n"
    )
}

// ===== https and h2c to backends =====

#[tokio::test]
async fn https_backend_speaks_h2_by_alpn_named_by_its_host() {
    let (ca, cert, key) = pki(&["localhost"]);
    let backend = tls_backend(&cert, &key, &[b"h2", b"http/1.1"]).await;
    let address = format!("localhost:{}", backend.addr.port());
    let toml = base_toml() + &https_service(&address, "tls_ca = \"ca.pem\"");
    let app = start_with_files(&toml, &[("ca.pem", &ca)]).await;
    for _ in 0..3 {
        let resp = get(app.proxy, "/secure/x").await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.text(), "HTTP/2.0");
    }
    assert_eq!(backend.sni(), vec![Some("localhost".to_string())]);
    assert_eq!(
        backend.sni().len(),
        1,
        "the three requests should share one pooled HTTP/2 connection"
    );
}

#[tokio::test]
async fn https_backend_without_h2_gets_http1() {
    let (ca, cert, key) = pki(&["localhost"]);
    let backend = tls_backend(&cert, &key, &[b"http/1.1"]).await;
    let address = format!("localhost:{}", backend.addr.port());
    let toml = base_toml() + &https_service(&address, "tls_ca = \"ca.pem\"");
    let app = start_with_files(&toml, &[("ca.pem", &ca)]).await;
    let resp = get(app.proxy, "/secure/x").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "HTTP/1.1");
}

#[tokio::test]
async fn https_backend_certificate_is_verified() {
    let (_ca, cert, key) = pki(&["localhost"]);
    let backend = tls_backend(&cert, &key, &[b"h2", b"http/1.1"]).await;
    // Not trusted: the test CA is not among the webpki roots.
    let address = format!("localhost:{}", backend.addr.port());
    let app = start_with_files(&(base_toml() + &https_service(&address, "")), &[]).await;
    let resp = get(app.proxy, "/secure/x").await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.reason(), Some("backend connect failed"));
}

#[tokio::test]
async fn tls_server_name_overrides_the_verified_name() {
    let (ca, cert, key) = pki(&["backend.internal"]);
    let backend = tls_backend(&cert, &key, &[b"h2", b"http/1.1"]).await;
    let address = backend.addr.to_string();
    let extra = "tls_ca = \"ca.pem\"\ntls_server_name = \"backend.internal\"";
    let app = start_with_files(
        &(base_toml() + &https_service(&address, extra)),
        &[("ca.pem", &ca)],
    )
    .await;
    let resp = get(app.proxy, "/secure/x").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(backend.sni(), vec![Some("backend.internal".to_string())]);
    // Without the override the IP address is verified, and the cert lacks it.
    let plain = start_with_files(
        &(base_toml() + &https_service(&address, "tls_ca = \"ca.pem\"")),
        &[("ca.pem", &ca)],
    )
    .await;
    let resp = get(plain.proxy, "/secure/x").await;
    assert_eq!(resp.status, 502);
}

/// A health-checked https service: its backends take traffic only once a
/// check has passed, so a 200 through the proxy shows the check spoke TLS.
fn checked_https_service(address: &str, tls: &str) -> String {
    https_service(
        address,
        &format!(
            "{tls}\n[services.secure.health_check]\npath = \"/health\"\ninterval = \"100ms\"\n"
        ),
    )
}

#[tokio::test]
async fn https_backends_are_health_checked_over_tls() {
    let (ca, cert, key) = pki(&["localhost"]);
    // h2 offered too: the check must still get HTTP/1.1 (it offers only that).
    let backend = tls_backend(&cert, &key, &[b"h2", b"http/1.1"]).await;
    let address = format!("localhost:{}", backend.addr.port());
    let toml = base_toml() + &checked_https_service(&address, "tls_ca = \"ca.pem\"");
    let app = start_with_files(&toml, &[("ca.pem", &ca)]).await;
    eventually(
        Duration::from_secs(5),
        "the backend to pass its TLS check",
        || async { get(app.proxy, "/secure/x").await.status == 200 },
    )
    .await;
    assert!(
        backend.sni().len() >= 2,
        "the check and the request each made a TLS connection"
    );
    assert!(backend
        .sni()
        .iter()
        .all(|sni| sni.as_deref() == Some("localhost")));
}

#[tokio::test]
async fn an_https_backend_failing_verification_fails_its_checks() {
    let (ca, cert, key) = pki(&["backend.internal"]);
    let backend = tls_backend(&cert, &key, &[b"http/1.1"]).await;
    // Verified as 127.0.0.1, which the certificate does not name.
    let address = backend.addr.to_string();
    let toml = base_toml() + &checked_https_service(&address, "tls_ca = \"ca.pem\"");
    let app = start_with_files(&toml, &[("ca.pem", &ca)]).await;
    // Several checks have run, and every one failed its handshake.
    eventually(
        WAIT,
        "3 failed checks of the unverified backend",
        || async {
            let text = metrics_text(app.admin).await;
            let failed = [("backend", address.as_str()), ("result", "failure")];
            health_checks(&text, &failed) >= 3.0
        },
    )
    .await;
    let text = metrics_text(app.admin).await;
    let passed = [("backend", address.as_str()), ("result", "success")];
    assert_eq!(health_checks(&text, &passed), 0.0, "a check passed");
    let resp = get(app.proxy, "/secure/x").await;
    assert_eq!(
        resp.status, 503,
        "an unverified backend never passed a check"
    );
    // The same backend under its certificate's name passes.
    let named = base_toml()
        + &checked_https_service(
            &address,
            "tls_ca = \"ca.pem\"\ntls_server_name = \"backend.internal\"",
        );
    let app = start_with_files(&named, &[("ca.pem", &ca)]).await;
    eventually(
        Duration::from_secs(5),
        "the named backend to pass",
        || async { get(app.proxy, "/secure/x").await.status == 200 },
    )
    .await;
}

#[tokio::test]
async fn h2c_backend_gets_http2() {
    // h2c only (prior knowledge); answers with the version it was asked in.
    let backend = FakeBackend::builder("fast")
        .h2c()
        .reply_version()
        .start()
        .await;
    let addr = backend.addr;
    let toml =
        base_toml() + &format!("[services.fast]\nbackends = [\"{addr}\"]\nprotocol = \"h2c\"\n");
    let app = start_with_files(&toml, &[]).await;
    let resp = get(app.proxy, "/fast/x").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "HTTP/2.0");
}

#[tokio::test]
async fn curl_h2c_prior_knowledge() {
    let backend = FakeBackend::start("web").await;
    let toml = base_toml() + &service_toml("web", &[&backend], "");
    let app = start_with_files(&toml, &[]).await;
    let Some(curl) = tools::program(&tools::CURL) else {
        return;
    };
    let out = Command::new(curl)
        .args([
            "-sS",
            "--max-time",
            "10",
            "--http2-prior-knowledge",
            "-w",
            " %{http_version}",
        ])
        .arg(format!("http://{}/web/x", app.proxy))
        .output()
        .await
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "web 2");
}

// ===== gRPC (python grpcio, `support::python`) =====

const GRPC_SERVER: &str = r#"
import sys
from concurrent import futures
import grpc

name = sys.argv[1]

def who(request, context):
    return name.encode()

def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())

def count(request, context):
    for i in range(int(request.decode())):
        yield str(i).encode()

handler = grpc.method_handlers_generic_handler("test.Switchyard", {
    "Who": grpc.unary_unary_rpc_method_handler(who),
    "Fail": grpc.unary_unary_rpc_method_handler(fail),
    "Count": grpc.unary_stream_rpc_method_handler(count),
})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((handler,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination()
"#;

const GRPC_CLIENT: &str = r#"
import json, sys
import grpc

target, calls = sys.argv[1], int(sys.argv[2])
out = {}
with grpc.insecure_channel(target) as channel:
    who = channel.unary_unary("/test.Switchyard/Who")
    names = []
    for _ in range(calls):
        reply, call = who.with_call(b"hi", timeout=10)
        names.append(reply.decode())
    out["names"] = names
    out["who_code"] = call.code().name
    try:
        channel.unary_unary("/test.Switchyard/Fail")(b"x", timeout=10)
        out["fail_code"] = "OK"
    except grpc.RpcError as e:
        out["fail_code"] = e.code().name
        out["fail_details"] = e.details()
    stream = channel.unary_stream("/test.Switchyard/Count")(b"5", timeout=10)
    out["stream"] = [m.decode() for m in stream]
    out["stream_code"] = stream.code().name
print(json.dumps(out), flush=True)
"#;

#[tokio::test]
async fn grpc_passes_through_balanced_per_request() {
    if !tools::require_python("grpc", "grpcio") {
        return;
    }
    let (_a, a) = Py::server(GRPC_SERVER, &["alpha"]).await;
    let (_b, b) = Py::server(GRPC_SERVER, &["beta"]).await;
    let toml = base_toml()
        + &format!("[services.grpc]\nbackends = [\"{a}\", \"{b}\"]\nprotocol = \"h2c\"\n\n")
        + &route_toml(None, "/", "grpc", false);
    let app = start_with_files(&toml, &[]).await;
    // One channel: every call rides the same client connection.
    let target = app.proxy.to_string();
    let mut client = Py::run(GRPC_CLIENT, &[&target, "6"]).await;
    let out = client.json().await;
    let names: Vec<String> = out["names"]
        .as_array()
        .expect("names")
        .iter()
        .map(|v| v.as_str().unwrap_or("").to_string())
        .collect();
    let counts = tally(&names);
    assert_eq!(
        (counts.get("alpha"), counts.get("beta")),
        (Some(&3), Some(&3)),
        "calls on one connection should alternate between servers: {names:?}"
    );
    assert_eq!(out["who_code"], "OK");
    assert_eq!(out["fail_code"], "NOT_FOUND", "{out}");
    assert_eq!(out["fail_details"], "no such thing: x", "{out}");
    assert_eq!(out["stream"], serde_json::json!(["0", "1", "2", "3", "4"]));
    assert_eq!(out["stream_code"], "OK");
}

// ===== WebSocket =====

const WS_SERVER: &str = r#"
import asyncio, sys
from websockets.asyncio.server import serve

name = sys.argv[1]

async def echo(ws):
    await ws.send(f"hello from {name}")
    async for message in ws:
        await ws.send(f"{name}:{message}")

async def main():
    async with serve(echo, "127.0.0.1", 0) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().create_future()

asyncio.run(main())
"#;

/// Opens two sockets, talks on both, reports, waits for a line on stdin,
/// talks again, closes both, reports.
const WS_CLIENT: &str = r#"
import asyncio, json, sys
from websockets.asyncio.client import connect

async def talk(ws, tag):
    replies = [await ws.recv()]
    for i in range(3):
        await ws.send(f"{tag}{i}")
        replies.append(await ws.recv())
    return replies

async def main():
    url = sys.argv[1]
    first = await connect(url)
    one = await talk(first, "a")
    second = await connect(url)
    two = await talk(second, "b")
    print(json.dumps({"first": one, "second": two}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await first.send("again")
    await second.send("again")
    last = [await first.recv(), await second.recv()]
    await first.close()
    await second.close()
    print(json.dumps({"last": last}), flush=True)

asyncio.run(main())
"#;

/// `active_requests` of each instance of `service`, by address.
async fn active_requests(admin: SocketAddr, service: &str) -> Vec<(String, u64)> {
    let body = get(admin, &format!("/v1/services/{service}")).await.json();
    body["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| {
            let address = i["address"].as_str().unwrap_or("").to_string();
            (address, i["active_requests"].as_u64().unwrap_or(u64::MAX))
        })
        .collect()
}

#[tokio::test]
async fn websocket_passes_through_and_counts_as_in_flight() {
    if !tools::require_python("websockets.asyncio.server", "websockets>=13") {
        return;
    }
    let (_a, a) = Py::server(WS_SERVER, &["alpha"]).await;
    let (_b, b) = Py::server(WS_SERVER, &["beta"]).await;
    let toml = base_toml()
        + &format!("[services.ws]\nbackends = [\"{a}\", \"{b}\"]\nbalance = \"least_conn\"\n");
    let app = start_with_files(&toml, &[]).await;
    let url = format!("ws://{}/ws/chat", app.proxy);
    let mut client = Py::run(WS_CLIENT, &[&url]).await;
    let out = client.json().await;
    let server_of = |replies: &Value| -> String {
        let hello = replies[0].as_str().unwrap_or("");
        hello.trim_start_matches("hello from ").to_string()
    };
    let (first, second) = (server_of(&out["first"]), server_of(&out["second"]));
    assert_eq!(
        out["first"],
        serde_json::json!([
            format!("hello from {first}"),
            format!("{first}:a0"),
            format!("{first}:a1"),
            format!("{first}:a2")
        ])
    );
    assert_eq!(out["second"][3], format!("{second}:b2"));
    assert_ne!(
        first, second,
        "least_conn must send the second socket to the idle server while the first is open"
    );
    // Both sockets are open: each server counts one request in flight.
    let active = active_requests(app.admin, "ws").await;
    assert!(active.iter().all(|(_, n)| *n == 1), "{active:?}");
    client.send_line("go").await;
    let out = client.json().await;
    assert_eq!(
        out["last"],
        serde_json::json!([format!("{first}:again"), format!("{second}:again")])
    );
    eventually(WAIT, "closed sockets stop counting", || async {
        active_requests(app.admin, "ws")
            .await
            .iter()
            .all(|(_, n)| *n == 0)
    })
    .await;
}

// ===== a strict HTTP/2 backend =====

/// The strict HTTP/2 server (`support::python::STRICT_H2`) over h2c.
fn strict_h2_server() -> String {
    format!("{}\nlisten(serve_h2)\n", python::STRICT_H2)
}

#[tokio::test]
async fn a_strict_http2_backend_accepts_proxied_requests() {
    if !tools::require_python("h2", "h2") {
        return;
    }
    let (_py, addr) = Py::server(&strict_h2_server(), &["strict"]).await;
    let toml =
        base_toml() + &format!("[services.strict]\nbackends = [\"{addr}\"]\nprotocol = \"h2c\"\n");
    let app = start_app(&toml).await;
    for client in [Http::new(), Http::h2c()] {
        let resp = client
            .get_host(app.proxy, "shop.example.test", "/strict/x")
            .await;
        assert_eq!(resp.status, 200, "{:?} {}", resp.reason(), resp.text());
        // One authority: the backend's address, no Host beside it.
        assert_eq!(resp.text(), format!("authority={addr} host=None"));
    }
}
