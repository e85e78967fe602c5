//! Request paths are normalised before routing (issue 13, item 1): dot
//! segments (`..`, `%2e%2e`) cannot walk a request past a prefix route into
//! another service's space, the backend gets the path that was routed,
//! ambiguous encodings (`%2f`, `%5c`, `%00`, `\`) get 400 unless the route
//! allows them, and `[proxy] merge_slashes` folds `//`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Fixture {
    app: TestApp,
    admin: FakeBackend,
    public: FakeBackend,
    files: FakeBackend,
}

/// `/admin` → admin, `/files` → files (ambiguous encodings allowed), `/` → public.
async fn fixture(extra_proxy: &str) -> Fixture {
    let admin = FakeBackend::start("admin").await;
    let public = FakeBackend::start("public").await;
    let files = FakeBackend::start("files").await;
    let mut toml = base_toml_with(extra_proxy);
    toml.push_str(&service_toml("admin", &[&admin], ""));
    toml.push_str(&service_toml("public", &[&public], ""));
    toml.push_str(&service_toml("files", &[&files], ""));
    toml.push_str(&route_toml(None, "/admin", "admin", false));
    toml.push_str(&route_toml(None, "/", "public", false));
    toml.push_str(&route_toml(None, "/files", "files", false).replace(
        "service = \"files\"\n",
        "service = \"files\"\nallow_ambiguous_paths = true\n",
    ));
    let app = start_app(&toml).await;
    Fixture {
        app,
        admin,
        public,
        files,
    }
}

/// Sends `target` byte for byte on a fresh HTTP/1.1 connection; returns the
/// status and the `x-backend` header (empty when Switchyard answered).
async fn raw_get(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!("GET {target} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answer within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let backend = text
        .lines()
        .find_map(|l| l.strip_prefix("x-backend: "))
        .unwrap_or("")
        .trim()
        .to_string();
    (status, backend)
}

fn last_uri(backend: &FakeBackend) -> String {
    backend.last_seen().expect("the backend saw a request").uri
}

#[tokio::test]
async fn dot_segments_cannot_walk_past_a_prefix_route() {
    let f = fixture("").await;
    let cases = [
        ("/public/../admin", "admin", "/admin"),
        ("/%2e%2e/admin", "admin", "/admin"),
        ("/%2E%2e/admin/users?id=7", "admin", "/admin/users?id=7"),
        ("/x/.%2E/admin/./keys", "admin", "/admin/keys"),
        ("/../../admin", "admin", "/admin"),
        ("/admin/../public/page", "public", "/public/page"),
        ("/public/./a/b/..", "public", "/public/a/"),
        ("/public/..data/.hidden", "public", "/public/..data/.hidden"),
    ];
    for (target, service, seen) in cases {
        let (status, backend) = raw_get(f.app.proxy, target).await;
        assert_eq!(status, 200, "{target}");
        assert_eq!(backend, service, "{target} routed");
        let got = match service {
            "admin" => last_uri(&f.admin),
            _ => last_uri(&f.public),
        };
        assert_eq!(got, seen, "{target}: the path the backend got");
    }
}

#[tokio::test]
async fn ambiguous_encodings_get_400_unless_the_route_allows_them() {
    let f = fixture("").await;
    for target in [
        "/admin%2f..%2fpublic",
        "/public/a%2Fb",
        "/public/a%5cb",
        "/public/a%00b",
        "/public/a\\..\\..\\admin",
    ] {
        let (status, backend) = raw_get(f.app.proxy, target).await;
        assert_eq!((status, backend.as_str()), (400, ""), "{target}");
    }
    assert_eq!(f.public.hits() + f.admin.hits(), 0);
    // The route that allows them forwards them untouched (dot segments
    // are still removed).
    let (status, backend) = raw_get(f.app.proxy, "/files/./dir%2Fname%00x").await;
    assert_eq!((status, backend.as_str()), (200, "files"));
    assert_eq!(last_uri(&f.files), "/files/dir%2Fname%00x");
}

#[tokio::test]
async fn slashes_are_merged_only_when_configured() {
    let f = fixture("").await;
    let (status, backend) = raw_get(f.app.proxy, "//admin//keys").await;
    assert_eq!((status, backend.as_str()), (200, "public"));
    assert_eq!(last_uri(&f.public), "//admin//keys");

    let merged = fixture("merge_slashes = true").await;
    let (status, backend) = raw_get(merged.app.proxy, "//admin//keys/").await;
    assert_eq!((status, backend.as_str()), (200, "admin"));
    assert_eq!(last_uri(&merged.admin), "/admin/keys/");
}

#[tokio::test]
async fn http2_paths_are_normalised_too() {
    let f = fixture("").await;
    let resp = Http::h2c().get(f.app.proxy, "/public/%2e%2e/admin").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.backend(), Some("admin"));
    assert_eq!(last_uri(&f.admin), "/admin");
}

/// curl, as a user would send it (`--path-as-is` keeps the dot segments
/// curl itself would otherwise remove).
#[tokio::test]
async fn curl_path_as_is_reaches_the_routed_backend() {
    if !tools::require(&tools::CURL) {
        return;
    }
    let f = fixture("").await;
    let url = format!("http://{}/public/../admin/x", f.app.proxy);
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--path-as-is", "-o", "/dev/null", "-D", "-", &url])
        .output()
        .await
        .expect("run curl");
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-backend: admin"), "{head}");
    assert_eq!(last_uri(&f.admin), "/admin/x");
}
