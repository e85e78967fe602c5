//! Certificate hot reload (SPEC §8), end to end against the real binary:
//! a certificate replaced on disk by rename (as cert-manager and ACME
//! clients do) serves the next fresh handshake while a bounded load loop of
//! TLS requests sees no failure and an open connection keeps working; a
//! broken replacement is kept out and counted in
//! `switchyard_tls_reloads_total`; SIGHUP, `POST /v1/reload` and a config
//! naming other files reload the certificates too; `switchyard check`
//! loads every certificate and key.
//!
//! Which certificate served a handshake is told by its DER bytes, compared
//! with the certificate written to disk.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::pki::*;
use support::*;

/// A config with one TLS listener serving `dir`'s `cert.pem`/`key.pem`, a
/// service `web` on `backend` routed at `/`.
fn toml(dir: &Path, backend: &FakeBackend) -> String {
    let (cert, key) = pair_paths(dir);
    format!(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n\n[[proxy.tls]]\nlisten = \"127.0.0.1:0\"\n\
         certs = [{{ cert = \"{}\", key = \"{}\" }}]\nalpn = [\"http/1.1\"]\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n{}{}",
        cert.display(),
        key.display(),
        service_toml("web", &[backend], ""),
        route_toml(None, "/", "web", false)
    )
}

/// The binary serving `config`, and its TLS listener's address.
async fn serve(config: &ConfigFile) -> (Proc, SocketAddr) {
    let proc = spawn_serve(config).await;
    let tls = proc
        .stderr()
        .lines()
        .find_map(|l| parse_listen_line(l, "tls listening on "))
        .unwrap_or_else(|| panic!("no TLS listener logged:\n{}", proc.stderr()));
    (proc, tls)
}

async fn tls_reloads(admin: SocketAddr, result: &str) -> f64 {
    let text = get(admin, "/metrics").await.text();
    metric(&text, "switchyard_tls_reloads_total", &[("result", result)]).unwrap_or(-1.0)
}

async fn wait_for_cert(addr: SocketAddr, client: &Arc<rustls::ClientConfig>, leaf: &Leaf) {
    eventually(
        Duration::from_secs(10),
        "the new certificate to be served",
        || async { matches!(served_cert(addr, client).await, Ok(der) if der == leaf.der) },
    )
    .await;
}

/// Requests, each on a fresh TLS connection, until `stop` (at most `max`,
/// and 60 s): (answered 200, failures with their first message).
async fn load_loop(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    stop: Arc<AtomicBool>,
    max: usize,
) -> (usize, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut ok, mut failures) = (0, Vec::new());
    for _ in 0..max {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            break;
        }
        let result = match https_connection(addr, &client).await {
            Ok(mut sender) => https_get(&mut sender, "/load").await,
            Err(e) => Err(e),
        };
        match result {
            Ok(200) => ok += 1,
            Ok(status) => failures.push(format!("status {status}")),
            Err(e) => failures.push(e),
        }
    }
    (ok, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_by_rename_serves_new_handshakes_without_a_failed_request() {
    let pki = Pki::new();
    let files = tempfile::tempdir().expect("tempdir");
    let (old, new) = (pki.leaf("old"), pki.leaf("new"));
    install(files.path(), &old);
    let backend = FakeBackend::start("web").await;
    let config = ConfigFile::new(&toml(files.path(), &backend));
    let (proc, tls) = serve(&config).await;
    let client = pki.client(&[b"http/1.1"]);
    assert_eq!(served_cert(tls, &client).await.expect("handshake"), old.der);

    // A connection opened before the rotation.
    let mut kept = https_connection(tls, &client).await.expect("connect");
    assert_eq!(https_get(&mut kept, "/before").await, Ok(200));

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load_loop(tls, Arc::clone(&client), Arc::clone(&stop), 5000));
    eventually(
        Duration::from_secs(20),
        "some load before the rotation",
        || async { backend.hits() >= 21 },
    )
    .await;
    let rotated = Instant::now();
    install(files.path(), &new);
    wait_for_cert(tls, &client, &new).await;
    let picked_up = rotated.elapsed();
    let hits = backend.hits();
    eventually(
        Duration::from_secs(20),
        "some load after the rotation",
        || async { backend.hits() >= hits + 20 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = load.await.expect("load loop");
    println!(
        "certificate picked up {picked_up:?} after the rename; {ok} requests, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failures.len(),
        ok + failures.len(),
        failures.first()
    );
    assert!(ok >= 40, "only {ok} requests ran");

    // The open connection is untouched and still answers.
    assert_eq!(https_get(&mut kept, "/after").await, Ok(200));
    assert_eq!(tls_reloads(proc.admin, "success").await, 1.0);
    assert_eq!(tls_reloads(proc.admin, "failure").await, 0.0);
    assert!(
        proc.stderr().contains("TLS certificates reloaded"),
        "{}",
        proc.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_replacement_is_kept_out_logged_and_counted() {
    let pki = Pki::new();
    let files = tempfile::tempdir().expect("tempdir");
    let (old, new, other) = (pki.leaf("old"), pki.leaf("new"), pki.leaf("other"));
    install(files.path(), &old);
    let backend = FakeBackend::start("web").await;
    let config = ConfigFile::new(&toml(files.path(), &backend));
    let (proc, tls) = serve(&config).await;
    let client = pki.client(&[b"http/1.1"]);
    let failures = |n: f64| {
        let admin = proc.admin;
        move || async move { tls_reloads(admin, "failure").await == n }
    };

    // A key that is not the certificate's.
    install_pems(files.path(), &new.cert_pem, &other.key_pem);
    eventually(
        Duration::from_secs(10),
        "a failed reload to be counted",
        failures(1.0),
    )
    .await;
    assert_eq!(served_cert(tls, &client).await.expect("handshake"), old.der);
    let mut conn = https_connection(tls, &client).await.expect("connect");
    assert_eq!(https_get(&mut conn, "/x").await, Ok(200));

    // A certificate file that is no PEM at all.
    replace_file(&pair_paths(files.path()).0, "not a certificate\n");
    eventually(
        Duration::from_secs(10),
        "the second failure to be counted",
        failures(2.0),
    )
    .await;
    assert_eq!(served_cert(tls, &client).await.expect("handshake"), old.der);

    // Both logged, one line each, naming the file at fault.
    let (cert_path, key_path) = pair_paths(files.path());
    let log = proc.stderr();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS certificate reload failed"))
        .collect();
    assert_eq!(failed.len(), 2, "{log}");
    assert!(
        failed[0].contains(&key_path.display().to_string()),
        "{}",
        failed[0]
    );
    assert!(
        failed[1].contains(&cert_path.display().to_string()),
        "{}",
        failed[1]
    );

    // A good pair is then picked up; the failures stay counted.
    install(files.path(), &new);
    wait_for_cert(tls, &client, &new).await;
    assert_eq!(tls_reloads(proc.admin, "success").await, 1.0);
    assert_eq!(tls_reloads(proc.admin, "failure").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_secret_volume_swap_is_picked_up() {
    // The layout kubelet gives a secret volume: `cert.pem -> ..data/cert.pem`,
    // `..data -> ..<timestamp>`; an update writes a new timestamped folder
    // and renames a new `..data` symlink over the old one.
    let pki = Pki::new();
    let (old, new) = (pki.leaf("old"), pki.leaf("new"));
    let volume = tempfile::tempdir().expect("tempdir");
    let dir = volume.path();
    let version = |name: &str, leaf: &Leaf| {
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder).expect("mkdir");
        install(&folder, leaf);
    };
    version("..2026_01", &old);
    std::os::unix::fs::symlink("..2026_01", dir.join("..data")).expect("symlink");
    for file in ["cert.pem", "key.pem"] {
        std::os::unix::fs::symlink(format!("..data/{file}"), dir.join(file)).expect("symlink");
    }
    let backend = FakeBackend::start("web").await;
    let config = ConfigFile::new(&toml(dir, &backend));
    let (proc, tls) = serve(&config).await;
    let client = pki.client(&[b"http/1.1"]);
    assert_eq!(served_cert(tls, &client).await.expect("handshake"), old.der);

    version("..2026_02", &new);
    std::os::unix::fs::symlink("..2026_02", dir.join("..data_tmp")).expect("symlink");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
    wait_for_cert(tls, &client, &new).await;
    assert_eq!(tls_reloads(proc.admin, "success").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_folder_does_not_hold_a_renewal_back() {
    let pki = Pki::new();
    let files = tempfile::tempdir().expect("tempdir");
    let (old, new) = (pki.leaf("old"), pki.leaf("new"));
    install(files.path(), &old);
    let backend = FakeBackend::start("web").await;
    let config = ConfigFile::new(&toml(files.path(), &backend));
    let (_proc, tls) = serve(&config).await;
    let client = pki.client(&[b"http/1.1"]);
    // Another file of the folder written every 50 ms (a log, say), for at
    // most 30 s.
    let stop = Arc::new(AtomicBool::new(false));
    let busy = files.path().join("busy.log");
    let writer = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            for i in 0..600 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let _ = std::fs::write(&busy, format!("line {i}\n"));
                // The pace of the busy writer is what is tested.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    install(files.path(), &new);
    wait_for_cert(tls, &client, &new).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_admin_reload_and_a_new_config_reload_the_certificates() {
    let pki = Pki::new();
    // The config names symlinks in `links/` pointing into `store/`: a
    // change inside `store/` is no event in the watched folder, so only an
    // explicit reload can pick it up.
    let files = tempfile::tempdir().expect("tempdir");
    let (links, store) = (files.path().join("links"), files.path().join("store"));
    std::fs::create_dir_all(&links).expect("mkdir");
    std::fs::create_dir_all(&store).expect("mkdir");
    let leaves: Vec<Leaf> = (1..=4).map(|i| pki.leaf(&format!("v{i}"))).collect();
    install(&store, &leaves[0]);
    let (cert, key) = pair_paths(&store);
    let (cert_link, key_link) = pair_paths(&links);
    std::os::unix::fs::symlink(&cert, &cert_link).expect("symlink");
    std::os::unix::fs::symlink(&key, &key_link).expect("symlink");
    let backend = FakeBackend::start("web").await;
    let config = ConfigFile::new(&toml(&links, &backend));
    let (proc, tls) = serve(&config).await;
    let client = pki.client(&[b"http/1.1"]);
    assert_eq!(
        served_cert(tls, &client).await.expect("handshake"),
        leaves[0].der
    );

    install(&store, &leaves[1]);
    proc.signal("HUP");
    wait_for_cert(tls, &client, &leaves[1]).await;
    assert_eq!(tls_reloads(proc.admin, "success").await, 1.0);

    // The admin reload answers once the certificates are swapped.
    install(&store, &leaves[2]);
    let resp = admin_reload(proc.admin).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        served_cert(tls, &client).await.expect("handshake"),
        leaves[2].der
    );
    assert_eq!(tls_reloads(proc.admin, "success").await, 2.0);

    // A config naming files in another folder (the file watch reloads it).
    let elsewhere = files.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    install(&elsewhere, &leaves[3]);
    config.replace(&toml(&elsewhere, &backend));
    wait_for_cert(tls, &client, &leaves[3]).await;
    assert_eq!(tls_reloads(proc.admin, "failure").await, 0.0);
    // And the new folder is watched from then on.
    install(&elsewhere, &leaves[0]);
    wait_for_cert(tls, &client, &leaves[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_naming_a_missing_certificate_applies_the_rest_and_keeps_the_old_one() {
    let pki = Pki::new();
    let files = tempfile::tempdir().expect("tempdir");
    let old = pki.leaf("old");
    install(files.path(), &old);
    let backend = FakeBackend::start("web").await;
    let config = ConfigFile::new(&toml(files.path(), &backend));
    let (proc, tls) = serve(&config).await;
    let client = pki.client(&[b"http/1.1"]);

    // The new config names a folder with no files, and routes `/new` to a
    // service that only it declares. (The file watch reloads it; each config
    // reload counts one failure while the files are missing.)
    let missing = files.path().join("not-there");
    let other = FakeBackend::start("other").await;
    let text = toml(&missing, &backend)
        + &service_toml("other", &[&other], "")
        + &route_toml(None, "/new", "other", false);
    config.replace(&text);
    let admin = proc.admin;
    eventually(
        Duration::from_secs(10),
        "a failed certificate reload",
        || async move { tls_reloads(admin, "failure").await >= 1.0 },
    )
    .await;
    let resp = Http::new().get(proc.proxy(), "/new/x").await;
    assert_eq!(resp.text(), "other", "the rest of the config applied");
    assert_eq!(served_cert(tls, &client).await.expect("handshake"), old.der);
    let log = proc.stderr();
    let missing_cert = pair_paths(&missing).0.display().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("TLS certificate reload failed") && l.contains(&missing_cert)),
        "{log}"
    );
    // Once the files appear there, the watch of the new folder picks them up.
    std::fs::create_dir_all(&missing).expect("mkdir");
    let new = pki.leaf("new");
    install(&missing, &new);
    wait_for_cert(tls, &client, &new).await;
    // The folder removed and made again (its watch went with it).
    std::fs::remove_dir_all(&missing).expect("rm -r");
    std::fs::create_dir_all(&missing).expect("mkdir");
    let newer = pki.leaf("newer");
    install(&missing, &newer);
    wait_for_cert(tls, &client, &newer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_loads_every_certificate_and_key() {
    let pki = Pki::new();
    let files = tempfile::tempdir().expect("tempdir");
    let (good, other) = (pki.leaf("good"), pki.leaf("other"));
    install(files.path(), &good);
    let backend = FakeBackend::start("web").await;
    let config = ConfigFile::new(&toml(files.path(), &backend));
    let out = run_binary(&["check", "--config", &config.path_str()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Missing certificate: the error names the file and points at `cert`.
    let (cert, key) = pair_paths(files.path());
    std::fs::remove_file(&cert).expect("remove");
    let out = run_binary(&["check", "--config", &config.path_str()]).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    let at = format!("{}:6:", config.path().display());
    assert!(err.contains(&at), "{err}");
    assert!(err.contains("proxy.tls[0].certs[0].cert"), "{err}");
    assert!(err.contains(&cert.display().to_string()), "{err}");

    // A key that is not the certificate's: the error points at `key`.
    install_pems(files.path(), &good.cert_pem, &other.key_pem);
    let out = run_binary(&["check", "--config", &config.path_str()]).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("proxy.tls[0].certs[0].key"), "{err}");
    assert!(err.contains(&key.display().to_string()), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
