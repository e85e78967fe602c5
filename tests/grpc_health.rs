//! gRPC health checks (`kind = "grpc"`) end to end against real grpcio
//! servers running the standard health service (PyPI
//! `grpcio-health-checking`), flipped between SERVING and NOT_SERVING from
//! the test, over h2c and over TLS; and HTTP checks of an `h2c` service
//! against a backend that speaks only HTTP/2 (prior knowledge). Health is
//! observed through the admin API and the check counters.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::pki::Pki;
use support::python::Py;
use support::*;

/// A grpcio server with the health service. Its stdin takes lines
/// `STATUS SERVICE` (`SERVING users.v1`, `NOT_SERVING ` for the whole
/// server), each acknowledged with `ok`. Arguments: `plain` (no health
/// service at all), or `tls CERT KEY`.
const HEALTH_SERVER: &str = r#"
import sys
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
servicer = health.HealthServicer()
args = sys.argv[1:]
if not args or args[0] != "plain":
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
if args and args[0] == "tls":
    pair = (open(args[2], "rb").read(), open(args[1], "rb").read())
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([pair]))
else:
    port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
for line in sys.stdin:
    status, _, service = line.rstrip("\n").partition(" ")
    servicer.set(service, getattr(health_pb2.HealthCheckResponse, status))
    print("ok", flush=True)
"#;

/// The running python server (`support::python`); killed when dropped.
struct HealthServer {
    py: Py,
    addr: SocketAddr,
}

impl HealthServer {
    async fn start(args: &[&str]) -> HealthServer {
        let (py, addr) = Py::server(HEALTH_SERVER, args).await;
        HealthServer { py, addr }
    }

    /// Sets `service`'s serving status (`""`: the whole server).
    async fn set(&mut self, service: &str, status: &str) {
        self.py.send_line(&format!("{status} {service}")).await;
        assert_eq!(self.py.line().await, "ok");
    }
}

async fn checks(admin: SocketAddr, service: &str, result: &str) -> f64 {
    let text = metrics_text(admin).await;
    health_checks(&text, &[("service", service), ("result", result)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_checks_follow_serving_and_not_serving_on_the_default_timers() {
    if !tools::require_python("grpc_health.v1.health", "grpcio-health-checking") {
        return;
    }
    let mut server = HealthServer::start(&[]).await;
    let at = server.addr.to_string();
    server.set("", "SERVING").await;
    // Default interval (2 s) and thresholds (rise 2, fall 3).
    let toml = base_toml()
        + &format!(
            "[services.grpc]\nbackends = [\"{}\"]\nprotocol = \"h2c\"\n\
             [services.grpc.health_check]\nkind = \"grpc\"\n",
            server.addr
        );
    let app = start_app(&toml).await;
    let limit = Duration::from_secs(30);
    wait_health(app.admin, "grpc", &at, "healthy", limit).await;

    server.set("", "NOT_SERVING").await;
    wait_health(app.admin, "grpc", &at, "unhealthy", limit).await;
    assert!(checks(app.admin, "grpc", "failure").await >= 3.0);
    // The table follows the backend's health at its next rebuild.
    eventually(
        limit,
        "503 from a service with no healthy backend",
        || async { Http::new().get(app.proxy, "/grpc/x").await.status == 503 },
    )
    .await;

    server.set("", "SERVING").await;
    wait_health(app.admin, "grpc", &at, "healthy", limit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_service_names_the_service_asked_about() {
    if !tools::require_python("grpc_health.v1.health", "grpcio-health-checking") {
        return;
    }
    let mut server = HealthServer::start(&[]).await;
    let at = server.addr.to_string();
    server.set("", "SERVING").await;
    let toml = base_toml()
        + &format!(
            "[services.users]\nbackends = [\"{}\"]\nprotocol = \"h2c\"\n\
             [services.users.health_check]\nkind = \"grpc\"\ngrpc_service = \"users.v1\"\n\
             interval = \"200ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\n",
            server.addr
        );
    let app = start_app(&toml).await;
    let limit = Duration::from_secs(15);
    // The whole server serves, but users.v1 is unknown to it (NOT_FOUND).
    wait_health(app.admin, "users", &at, "unhealthy", limit).await;
    server.set("users.v1", "SERVING").await;
    wait_health(app.admin, "users", &at, "healthy", limit).await;
    server.set("users.v1", "SERVICE_UNKNOWN").await;
    wait_health(app.admin, "users", &at, "unhealthy", limit).await;
    server.set("users.v1", "SERVING").await;
    wait_health(app.admin, "users", &at, "healthy", limit).await;
    server.set("users.v1", "NOT_SERVING").await;
    wait_health(app.admin, "users", &at, "unhealthy", limit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_health_service_fails_the_check() {
    if !tools::require_python("grpc_health.v1.health", "grpcio-health-checking") {
        return;
    }
    let server = HealthServer::start(&["plain"]).await;
    let at = server.addr.to_string();
    let toml = base_toml()
        + &format!(
            "[services.bare]\nbackends = [\"{}\"]\nprotocol = \"h2c\"\n\
             [services.bare.health_check]\nkind = \"grpc\"\ninterval = \"200ms\"\n",
            server.addr
        );
    let app = start_app(&toml).await;
    wait_health(app.admin, "bare", &at, "unhealthy", Duration::from_secs(15)).await;
    assert_eq!(checks(app.admin, "bare", "success").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_checks_speak_tls_to_https_services() {
    if !tools::require_python("grpc_health.v1.health", "grpcio-health-checking") {
        return;
    }
    let pki = Pki::new();
    let files = tempfile::tempdir().expect("tempdir");
    let leaf = pki.leaf("grpc backend");
    let write = |name: &str, text: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let (cert, key, ca) = (
        write("cert.pem", &leaf.cert_pem),
        write("key.pem", &leaf.key_pem),
        write("ca.pem", &pki.ca_pem()),
    );
    let mut server = HealthServer::start(&["tls", &cert, &key]).await;
    let at = server.addr.to_string();
    server.set("", "SERVING").await;
    let toml = base_toml()
        + &format!(
            "[services.secure]\nbackends = [\"{}\"]\nprotocol = \"https\"\n\
             tls_ca = \"{ca}\"\ntls_server_name = \"localhost\"\n\
             [services.secure.health_check]\nkind = \"grpc\"\ninterval = \"200ms\"\n\
             healthy_threshold = 1\nunhealthy_threshold = 1\n",
            server.addr
        );
    let app = start_app(&toml).await;
    let limit = Duration::from_secs(15);
    wait_health(app.admin, "secure", &at, "healthy", limit).await;
    server.set("", "NOT_SERVING").await;
    wait_health(app.admin, "secure", &at, "unhealthy", limit).await;
    server.set("", "SERVING").await;
    wait_health(app.admin, "secure", &at, "healthy", limit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_checks_need_an_http2_protocol() {
    let config = ConfigFile::new(
        "[services.api]\nbackends = [\"127.0.0.1:9\"]\n\
         [services.api.health_check]\nkind = \"grpc\"\n",
    );
    let out = run_binary(&["check", "--config", &config.path_str()]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let at = format!(
        "{}:4:8: services.api.health_check.kind:",
        config.path().display()
    );
    assert!(err.contains(&at), "{err}");
    assert!(err.contains("protocol = \"h2c\" or \"https\""), "{err}");
}

// ===== HTTP checks of an h2c service =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_checks_of_an_h2c_service_speak_http2() {
    // Speaks only HTTP/2 with prior knowledge, as many h2c services do.
    let backend = FakeBackend::builder("h2c-only").h2c().start().await;
    let toml = base_toml()
        + &format!(
            "[services.h2]\nbackends = [\"{}\"]\nprotocol = \"h2c\"\n\
             [services.h2.health_check]\npath = \"/healthz\"\ninterval = \"200ms\"\n\
             healthy_threshold = 1\nunhealthy_threshold = 1\n",
            backend.addr
        );
    let app = start_app(&toml).await;
    let limit = Duration::from_secs(15);
    wait_health(app.admin, "h2", &backend.address(), "healthy", limit).await;
    eventually(limit, "the h2c-only backend to be proxied to", || async {
        Http::new().get(app.proxy, "/h2/x").await.text() == "h2c-only"
    })
    .await;
    backend.set_status(503);
    wait_health(app.admin, "h2", &backend.address(), "unhealthy", limit).await;
    backend.set_status(200);
    wait_health(app.admin, "h2", &backend.address(), "healthy", limit).await;
}
