//! Config reloads: from SIGHUP, a change of the file on disk, or the admin API.
//!
//! A reload reads and validates the file, and only then hands the new config
//! to the publisher; a file that fails validation changes nothing, is logged
//! and counted. Reloads are serialised so two triggers never interleave.
//! Listener addresses and worker counts are fixed at start-up: a reload that
//! changes them applies everything else and warns that those need a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::Mutex;

use crate::config::{Config, ConfigErrors};
use crate::metrics::Metrics;
use crate::table::Publisher;

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload (running on the embedded default)")]
    NoFile,
    #[error("the new config is invalid; the running config is unchanged")]
    Invalid(#[source] ConfigErrors),
    #[error("reload task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl ReloadError {
    /// One line per problem, for the admin API's `errors` list.
    pub fn details(&self) -> Vec<String> {
        match self {
            ReloadError::Invalid(errors) => errors.0.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// Cloneable handle that performs reloads.
#[derive(Debug, Clone)]
pub struct Reloader {
    publisher: Arc<Publisher>,
    metrics: Metrics,
    path: Option<PathBuf>,
    serial: Arc<Mutex<()>>,
}

impl Reloader {
    pub fn new(publisher: Arc<Publisher>, metrics: Metrics, path: Option<PathBuf>) -> Reloader {
        Reloader {
            publisher,
            metrics,
            path,
            serial: Arc::new(Mutex::new(())),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Re-read the config file and apply it if valid.
    pub async fn reload(&self, trigger: &'static str) -> Result<(), ReloadError> {
        let _serial = self.serial.lock().await;
        let path = self.path.clone().ok_or(ReloadError::NoFile)?;
        // Loading resolves host names: keep it off the runtime's workers.
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(ReloadError::Task)?;
        match loaded {
            Ok(config) => {
                self.warn_about_fixed_settings(&config);
                self.publisher.apply_config(Arc::new(config));
                self.metrics.count_reload(true);
                tracing::info!(trigger, "config reloaded");
                Ok(())
            }
            Err(errors) => {
                self.metrics.count_reload(false);
                tracing::error!(
                    trigger,
                    "config reload rejected; keeping the running config:\n{errors}"
                );
                Err(ReloadError::Invalid(errors))
            }
        }
    }

    fn warn_about_fixed_settings(&self, new: &Config) {
        let old = self.publisher.config();
        let fixed = [
            ("proxy.listen", old.proxy.listen != new.proxy.listen),
            ("proxy.tls", old.proxy.tls != new.proxy.tls),
            ("admin.listen", old.admin.listen != new.admin.listen),
            ("proxy.workers", old.proxy.workers != new.proxy.workers),
            (
                "proxy.max_connections",
                old.proxy.max_connections != new.proxy.max_connections,
            ),
        ];
        for (key, changed) in fixed {
            if changed {
                tracing::warn!(
                    key,
                    "changed in the file; it takes effect at the next restart"
                );
            }
        }
    }

    /// Watch the config file and reload when it changes. Watches the folder,
    /// because editors and `mv` replace the file rather than write into it.
    /// Returns the watcher, which must be kept alive.
    pub fn watch_file(&self) -> Option<notify::RecommendedWatcher> {
        let path = self.path.clone()?;
        let dir = path.parent()?.to_path_buf();
        let name = path.file_name()?.to_os_string();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if event.paths.iter().any(|p| p.file_name() == Some(name.as_os_str())) {
                    let _ = tx.send(());
                }
            }
        })
        .map_err(|e| tracing::warn!(error = %e, "cannot watch the config file; SIGHUP and POST /v1/reload still work"))
        .ok()?;
        if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            tracing::warn!(error = %e, "cannot watch the config folder");
            return None;
        }
        let reloader = self.clone();
        tokio::spawn(async move {
            let mut last = file_stamp(&path);
            while rx.recv().await.is_some() {
                // Coalesce the burst of events one save produces.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while rx.try_recv().is_ok() {}
                let stamp = file_stamp(&path);
                if stamp == last || stamp.is_none() {
                    continue;
                }
                last = stamp;
                let _ = reloader.reload("file change").await;
            }
        });
        Some(watcher)
    }
}

/// Content fingerprint, so touching a file or a no-op save does not reload.
fn file_stamp(path: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}
