//! The app run in-process ([`start_app`]): binds on ephemeral ports,
//! runs until the [`TestApp`] is stopped or dropped.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use switchyard::app::App;
use switchyard::config::Config;

use super::{ConfigFile, WAIT};

/// A running in-process App; dropping it triggers shutdown.
pub struct TestApp {
    /// The first plain proxy listener.
    pub proxy: SocketAddr,
    pub proxies: Vec<SocketAddr>,
    /// The TLS proxy listeners (`[[proxy.tls]]`), in config order.
    pub tls: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub config: ConfigFile,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), String>>>,
}

/// Writes `toml` to a temporary file, loads it with `Config::load` (so
/// reloads re-read that file), binds and runs the App.
pub async fn start_app(toml: &str) -> TestApp {
    start_app_with_files(toml, &[]).await
}

/// [`start_app`] with `files` (name, contents) written beside the config
/// first, so that relative paths in it (`tls_ca = "ca.pem"`) resolve to them.
pub async fn start_app_with_files(toml: &str, files: &[(&str, &str)]) -> TestApp {
    let config = ConfigFile::new(toml);
    for (name, contents) in files {
        std::fs::write(config.dir().join(name), contents).expect("write a file beside the config");
    }
    let loaded = Config::load(config.path())
        .unwrap_or_else(|e| panic!("test config rejected:\n{e}\n--- config ---\n{toml}"));
    let mut app = App::bind(loaded)
        .await
        .unwrap_or_else(|e| panic!("App::bind failed: {e}"));
    // As the binary does: `[proxy] workers` (default one per core) workers,
    // the test's runtime being the first.
    app.start_workers(worker_runtime)
        .unwrap_or_else(|e| panic!("App::start_workers failed: {e}"));
    let proxies = app.proxy_addrs();
    let tls = app.tls_addrs();
    let admin = app.admin_addr();
    assert!(!proxies.is_empty(), "App::proxy_addrs is empty");
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run(async move {
            let _ = rx.await;
        })
        .await
        .map_err(|e| e.to_string())
    });
    TestApp {
        proxy: proxies[0],
        proxies,
        tls,
        admin,
        config,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

impl TestApp {
    /// Starts shutdown without waiting for `run` to return.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits (bounded) for `run` to return after shutdown was triggered.
    pub async fn join(&mut self, limit: Duration) -> Result<(), String> {
        let handle = self.handle.take().expect("already joined");
        match tokio::time::timeout(limit, handle).await {
            Err(_) => Err(format!("App::run did not return within {limit:?}")),
            Ok(Err(join)) => Err(format!("App::run panicked: {join}")),
            Ok(Ok(result)) => result,
        }
    }

    /// Shutdown and wait for `run` to return.
    pub async fn stop(mut self) -> Result<(), String> {
        self.begin_shutdown();
        self.join(WAIT).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

/// A worker's runtime, as the binary's but without its allocator hook.
fn worker_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
