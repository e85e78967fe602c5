//! TLS listeners end to end: certificates chosen by SNI (exact, wildcard, the
//! first as fallback for no or unknown SNI), HTTP/1.1 and HTTP/2 by ALPN,
//! `X-Forwarded-Proto: https`, the handshake kept off the accept loop, the
//! per-listener connection gauge, key formats, and start-up failures that
//! name the unreadable file.
//!
//! Certificates come from rcgen (one test CA, leaves signed by it); clients
//! are curl (with `--resolve` to pick the SNI) and, where the test needs to
//! hold a connection, tokio-rustls.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt;

use support::*;

// ===== certificates =====

/// A test CA (`support::pki`) and the files of the leaves it signed, in
/// one temp folder.
struct CertDir {
    dir: tempfile::TempDir,
    ca: support::pki::Pki,
}

impl CertDir {
    fn new() -> CertDir {
        let ca = support::pki::Pki::new();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), ca.ca_pem()).expect("write ca");
        CertDir { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca_path(&self) -> String {
        self.path("ca.pem").display().to_string()
    }

    /// Writes `NAME.pem` and `NAME-key.pem` (PKCS#8) for a leaf with common
    /// name `cn` and these subjectAltNames; returns the config's `{ cert, key }`.
    fn leaf(&self, name: &str, cn: &str, sans: &[&str]) -> String {
        let leaf = self.ca.leaf_for(cn, sans);
        std::fs::write(self.path(&format!("{name}.pem")), leaf.cert_pem).expect("write cert");
        std::fs::write(self.path(&format!("{name}-key.pem")), leaf.key_pem).expect("write key");
        self.pair(name)
    }

    fn pair(&self, name: &str) -> String {
        format!(
            "{{ cert = \"{}\", key = \"{}\" }}",
            self.path(&format!("{name}.pem")).display(),
            self.path(&format!("{name}-key.pem")).display()
        )
    }

    fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.ca_der()
    }
}

// ===== the app with TLS listeners =====

/// The App in-process with one plain and one TLS listener.
struct TlsApp {
    plain: SocketAddr,
    tls: SocketAddr,
    admin: SocketAddr,
    _app: TestApp,
}

/// `[proxy]` with a plain listener, `extra_proxy` lines, one TLS listener
/// serving `certs` (config text of the array's items) and `tls_extra` lines.
fn tls_toml(extra_proxy: &str, certs: &[String], tls_extra: &str) -> String {
    format!(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n{extra_proxy}\n\n\
         [[proxy.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{}]\n{tls_extra}\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n",
        certs.join(", ")
    )
}

async fn start_tls_app(toml: &str) -> TlsApp {
    let app = start_app(toml).await;
    wait_ready(app.admin).await;
    TlsApp {
        plain: app.proxy,
        tls: *app.tls.first().expect("no TLS listener"),
        admin: app.admin,
        _app: app,
    }
}

/// Two certificates (`a.example` first, then `*.b.example`) and a backend
/// reachable on every path.
async fn sni_setup() -> (CertDir, FakeBackend, TlsApp) {
    let pki = CertDir::new();
    let a = pki.leaf("a", "a.example", &["a.example"]);
    let b = pki.leaf("b", "b.example wildcard", &["*.b.example"]);
    let backend = FakeBackend::start("web").await;
    let toml = tls_toml("", &[a, b], "")
        + &service_toml("web", &[&backend], "")
        + &route_toml(None, "/", "web", false);
    let app = start_tls_app(&toml).await;
    (pki, backend, app)
}

// ===== curl =====

/// curl with `args`; the tests that call it first `require` it (`support::tools`).
async fn curl(args: &[String]) -> Output {
    let child = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run curl");
    tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("curl did not finish in time")
        .expect("wait for curl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `https://NAME:PORT/PATH` with `--resolve NAME:PORT:127.0.0.1`, so curl
/// sends NAME as SNI (and, with `--cacert`, verifies the certificate for it).
fn resolve_args(name: &str, addr: SocketAddr, path: &str) -> Vec<String> {
    vec![
        "--resolve".into(),
        format!("{name}:{}:127.0.0.1", addr.port()),
        format!("https://{name}:{}{path}", addr.port()),
    ]
}

/// The subject common name curl (OpenSSL) reports for the served certificate.
async fn served_subject(extra: Vec<String>) -> String {
    let mut args = vec![
        "-k".to_string(),
        "-v".into(),
        "-o".into(),
        "/dev/null".into(),
    ];
    args.extend(extra);
    let out = curl(&args).await;
    let err = text(&out.stderr);
    assert!(out.status.success(), "curl failed:\n{err}");
    err.lines()
        .find_map(|l| l.trim_start_matches('*').trim().strip_prefix("subject:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no subject in curl -v output:\n{err}"))
}

// ===== tests =====

#[tokio::test]
async fn sni_picks_exact_and_wildcard_certificates() {
    if !tools::require(&tools::CURL) {
        return;
    }
    let (pki, backend, app) = sni_setup().await;
    for name in ["a.example", "A.EXAMPLE", "x.b.example"] {
        let mut args = vec!["--cacert".to_string(), pki.ca_path()];
        args.extend(resolve_args(name, app.tls, "/hello"));
        let out = curl(&args).await;
        assert!(
            out.status.success(),
            "{name}: curl verifying against the test CA failed:\n{}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "web", "{name}");
    }
    assert_eq!(backend.hits(), 3);
    let subject = served_subject(resolve_args("x.b.example", app.tls, "/")).await;
    assert!(subject.contains("b.example wildcard"), "{subject}");
}

#[tokio::test]
async fn no_sni_or_unknown_sni_gets_the_first_certificate() {
    if !tools::require(&tools::CURL) {
        return;
    }
    let (_pki, _backend, app) = sni_setup().await;
    // curl sends no SNI to an IP address.
    let by_ip = vec![format!("https://127.0.0.1:{}/", app.tls.port())];
    assert!(served_subject(by_ip).await.contains("a.example"));
    for unknown in ["c.example", "b.example", "y.x.b.example"] {
        let subject = served_subject(resolve_args(unknown, app.tls, "/")).await;
        assert!(subject.contains("a.example"), "{unknown}: {subject}");
    }
}

#[tokio::test]
async fn http2_and_http1_by_alpn_with_forwarded_proto_https() {
    if !tools::require(&tools::CURL) {
        return;
    }
    let (pki, backend, app) = sni_setup().await;
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let mut args = vec![
            flag.to_string(),
            "--cacert".into(),
            pki.ca_path(),
            "-w".into(),
            " %{http_version}".into(),
        ];
        args.extend(resolve_args("a.example", app.tls, "/v"));
        let out = curl(&args).await;
        assert!(out.status.success(), "{flag}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("web {version}"), "{flag}");
        let seen = backend.last_seen().expect("backend saw the request");
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"), "{flag}");
    }
    // The plain listener of the same app still says http.
    let resp = get(app.plain, "/plain").await;
    assert_eq!(resp.status, 200);
    let seen = backend.last_seen().expect("backend saw the request");
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn alpn_setting_limits_the_protocols_offered() {
    if !tools::require(&tools::CURL) {
        return;
    }
    let pki = CertDir::new();
    let a = pki.leaf("a", "a.example", &["a.example"]);
    let backend = FakeBackend::start("web").await;
    let toml = tls_toml("", &[a], "alpn = [\"http/1.1\"]")
        + &service_toml("web", &[&backend], "")
        + &route_toml(None, "/", "web", false);
    let app = start_tls_app(&toml).await;
    let mut args = vec![
        "--http2".to_string(),
        "--cacert".into(),
        pki.ca_path(),
        "-w".into(),
        " %{http_version}".into(),
    ];
    args.extend(resolve_args("a.example", app.tls, "/"));
    let out = curl(&args).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "web 1.1");
}

/// A tokio-rustls client trusting the test CA.
fn tls_client(pki: &CertDir) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der()).expect("add test CA");
    let config = rustls::ClientConfig::builder_with_provider(switchyard::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn silent_handshakes_do_not_block_accepting_and_time_out() {
    if !tools::require(&tools::CURL) {
        return;
    }
    let pki = CertDir::new();
    let a = pki.leaf("a", "a.example", &["a.example"]);
    let backend = FakeBackend::start("web").await;
    let toml = tls_toml("header_read_timeout = \"1s\"", &[a], "")
        + &service_toml("web", &[&backend], "")
        + &route_toml(None, "/", "web", false);
    let app = start_tls_app(&toml).await;
    // Several connections that never send a ClientHello.
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(
            tokio::net::TcpStream::connect(app.tls)
                .await
                .expect("connect"),
        );
    }
    let started = Instant::now();
    let mut args = vec!["--cacert".to_string(), pki.ca_path()];
    args.extend(resolve_args("a.example", app.tls, "/"));
    let out = curl(&args).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "a request waited {:?} behind silent handshakes",
        started.elapsed()
    );
    // Each silent connection is closed once header_read_timeout passes.
    for mut conn in silent {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "silent connection not closed: {read:?}"
        );
    }
}

#[tokio::test]
async fn connections_open_is_labelled_with_the_tls_listener() {
    let (pki, _backend, app) = sni_setup().await;
    let label = app.tls.to_string();
    let tcp = tokio::net::TcpStream::connect(app.tls)
        .await
        .expect("connect");
    let name = ServerName::try_from("a.example").expect("name");
    let conn = tls_client(&pki)
        .connect(name, tcp)
        .await
        .expect("handshake with the a.example certificate");
    eventually(WAIT, "connections_open{tls listener} = 1", || async {
        let text = metrics_text(app.admin).await;
        metric(
            &text,
            "switchyard_connections_open",
            &[("listener", &label)],
        ) == Some(1.0)
    })
    .await;
    drop(conn);
    eventually(WAIT, "connections_open{tls listener} = 0", || async {
        let text = metrics_text(app.admin).await;
        metric(
            &text,
            "switchyard_connections_open",
            &[("listener", &label)],
        ) == Some(0.0)
    })
    .await;
}

/// Runs openssl; the test that calls it first `require`s it (`support::tools`).
fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn sec1_and_rsa_keys_load() {
    if !tools::require(&tools::CURL) || !tools::require(&tools::OPENSSL) {
        return;
    }
    let pki = CertDir::new();
    // SEC1 ("EC PRIVATE KEY"): an rcgen P-256 key, converted.
    pki.leaf("ec", "ec.example", &["ec.example"]);
    let p8 = pki.path("ec-key.pem").display().to_string();
    let sec1 = pki.path("ec-sec1.pem").display().to_string();
    openssl(&["ec", "-in", &p8, "-out", &sec1]);
    assert!(std::fs::read_to_string(&sec1)
        .expect("read")
        .contains("BEGIN EC PRIVATE KEY"));
    // PKCS#1 ("RSA PRIVATE KEY"): a self-signed RSA certificate from openssl.
    let rsa_cert = pki.path("rsa.pem").display().to_string();
    let rsa_key = pki.path("rsa-key.pem").display().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=rsa.example",
        "-addext",
        "subjectAltName=DNS:rsa.example",
        "-keyout",
        &rsa_key,
        "-out",
        &rsa_cert,
    ]);
    let rsa_pkcs1 = pki.path("rsa-pkcs1.pem").display().to_string();
    openssl(&["rsa", "-in", &rsa_key, "-traditional", "-out", &rsa_pkcs1]);
    assert!(std::fs::read_to_string(&rsa_pkcs1)
        .expect("read")
        .contains("BEGIN RSA PRIVATE KEY"));
    let certs = [
        format!(
            "{{ cert = \"{}\", key = \"{sec1}\" }}",
            pki.path("ec.pem").display()
        ),
        format!("{{ cert = \"{rsa_cert}\", key = \"{rsa_pkcs1}\" }}"),
    ];
    let backend = FakeBackend::start("web").await;
    let toml = tls_toml("", &certs, "")
        + &service_toml("web", &[&backend], "")
        + &route_toml(None, "/", "web", false);
    let app = start_tls_app(&toml).await;
    assert!(served_subject(resolve_args("ec.example", app.tls, "/"))
        .await
        .contains("ec.example"));
    assert!(served_subject(resolve_args("rsa.example", app.tls, "/"))
        .await
        .contains("rsa.example"));
}

/// `switchyard serve` with this TLS listener must exit non-zero, its last
/// stderr line naming `file`.
async fn serve_fails_naming(certs: &str, file: &Path) {
    let toml = tls_toml("", &[certs.to_string()], "");
    let config = ConfigFile::new(&toml);
    let out = run_binary(&["serve", "--config", &config.path_str()]).await;
    let err = text(&out.stderr);
    assert!(!out.status.success(), "serve started anyway:\n{err}");
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let file = file.display().to_string();
    assert!(
        last.starts_with("switchyard: ") && last.contains(&file),
        "the last line should give the reason naming {file}:\n{err}"
    );
}

#[tokio::test]
async fn unreadable_or_invalid_files_stop_start_up_naming_the_file() {
    let pki = CertDir::new();
    pki.leaf("a", "a.example", &["a.example"]);
    pki.leaf("other", "other.example", &["other.example"]);
    let cert = pki.path("a.pem");
    let key = pki.path("a-key.pem");
    let pair = |c: &Path, k: &Path| {
        format!(
            "{{ cert = \"{}\", key = \"{}\" }}",
            c.display(),
            k.display()
        )
    };
    // Missing certificate, missing key.
    let missing = pki.path("missing.pem");
    serve_fails_naming(&pair(&missing, &key), &missing).await;
    serve_fails_naming(&pair(&cert, &missing), &missing).await;
    // Not PEM at all; a PEM file with no key; a broken certificate.
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").expect("write");
    serve_fails_naming(&pair(&garbage, &key), &garbage).await;
    serve_fails_naming(&pair(&cert, &garbage), &garbage).await;
    let broken = pki.path("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    serve_fails_naming(&pair(&broken, &key), &broken).await;
    // A key that belongs to another certificate.
    serve_fails_naming(
        &pair(&cert, &pki.path("other-key.pem")),
        &pki.path("other-key.pem"),
    )
    .await;
}

#[tokio::test]
async fn the_binary_logs_its_tls_listener() {
    if !tools::require(&tools::CURL) {
        return;
    }
    let pki = CertDir::new();
    let a = pki.leaf("a", "a.example", &["a.example"]);
    let config = ConfigFile::new(&tls_toml("", &[a], ""));
    let proc = spawn_serve(&config).await;
    let tls = eventually_line(&proc, "tls listening on ").await;
    let out = curl(&[
        "-k".to_string(),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code}".into(),
        format!("https://127.0.0.1:{}/nothing-here", tls.port()),
    ])
    .await;
    assert_eq!(text(&out.stdout), "404", "{}", text(&out.stderr));
}

async fn eventually_line(proc: &Proc, marker: &str) -> SocketAddr {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(addr) = proc
            .stderr()
            .lines()
            .find_map(|l| parse_listen_line(l, marker))
        {
            return addr;
        }
        assert!(
            Instant::now() < deadline,
            "no `{marker}` line:\n{}",
            proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
