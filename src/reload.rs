//! Config reloads: from SIGHUP, a change of the file on disk, or the admin API.
//!
//! A reload reads and validates the file, and only then hands the new config
//! to the publisher; a file that fails validation changes nothing, is logged
//! and counted. Reloads are serialised so two triggers never interleave.
//! Listener addresses and worker counts are fixed at start-up: a reload that
//! changes them applies everything else and warns that those need a restart.
//! The TLS listeners' certificates are re-read on every applied reload
//! ([`crate::tls::live`]), from the files the new config names.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::Mutex;

use crate::access_log::AccessLogSwitch;
use crate::config::{Config, ConfigErrors};
use crate::metrics::Metrics;
use crate::table::Publisher;
use crate::tls::live::CertReloader;

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload (running on the embedded default)")]
    NoFile,
    #[error("the new config is invalid; the running config is unchanged")]
    Invalid(#[source] ConfigErrors),
    #[error("reload task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("cannot open the new access log ({0}); the running config is unchanged")]
    AccessLog(#[source] std::io::Error),
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

/// How the last reload went, for the dashboard.
#[derive(Debug, Clone)]
pub struct LastReload {
    pub ok: bool,
    pub at: std::time::SystemTime,
    pub trigger: &'static str,
    /// Empty when `ok`; one line per problem otherwise.
    pub errors: Vec<String>,
}

/// Cloneable handle that performs reloads.
#[derive(Debug, Clone)]
pub struct Reloader {
    publisher: Arc<Publisher>,
    metrics: Metrics,
    path: Option<PathBuf>,
    serial: Arc<Mutex<()>>,
    /// Fingerprint of the file text the running config came from, so the
    /// watcher reloads only real changes (and catches one made before it started).
    applied: Arc<std::sync::Mutex<Option<u64>>>,
    /// The TLS listeners' certificates, re-read on every applied reload.
    certs: Option<Arc<CertReloader>>,
    /// The access log, re-pointed by each applied config.
    access_log: Option<Arc<AccessLogSwitch>>,
    /// The last reload's outcome; `None` until one happens.
    last: Arc<std::sync::Mutex<Option<LastReload>>>,
}

/// Quiet time after the last file event before the file is read: one save
/// is often several events (truncate, write, rename).
const SETTLE: Duration = Duration::from_millis(200);
/// The longest a stream of changes can hold a reload back: a file written
/// without pause is still picked up (within SPEC's 2 s).
const SETTLE_AT_MOST: Duration = Duration::from_secs(1);

impl Reloader {
    /// `path` is the file the running config was just loaded from.
    pub fn new(publisher: Arc<Publisher>, metrics: Metrics, path: Option<PathBuf>) -> Reloader {
        let applied = path
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| fingerprint(&b));
        Reloader {
            publisher,
            metrics,
            path,
            serial: Arc::new(Mutex::new(())),
            applied: Arc::new(std::sync::Mutex::new(applied)),
            certs: None,
            access_log: None,
            last: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// Also reload these certificates whenever a config is applied.
    pub fn with_certificates(mut self, certs: Arc<CertReloader>) -> Reloader {
        self.certs = Some(certs);
        self
    }

    /// Reloads also turn the access log on, off, or to a new file or format.
    pub fn with_access_log(mut self, access_log: Arc<AccessLogSwitch>) -> Reloader {
        self.access_log = Some(access_log);
        self
    }

    /// Re-read the config file and apply it if valid.
    pub async fn reload(&self, trigger: &'static str) -> Result<(), ReloadError> {
        self.reload_from_file(trigger, false).await
    }

    /// The watcher's reload: skips a file whose text is what is running, and
    /// an empty file (an editor mid-save; SIGHUP or the API still apply one).
    async fn reload_if_changed(&self) {
        let _ = self.reload_from_file("file change", true).await;
    }

    async fn reload_from_file(
        &self,
        trigger: &'static str,
        only_changes: bool,
    ) -> Result<(), ReloadError> {
        let _serial = self.serial.lock().await;
        let path = self.path.clone().ok_or(ReloadError::NoFile)?;
        // Reading resolves host names too: keep it off the runtime's workers.
        // The text is read once, so what is fingerprinted is what is applied.
        let (text, loaded) =
            tokio::task::spawn_blocking(move || match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let loaded = Config::from_file_text(&text, &path);
                    (text, loaded)
                }
                // Unreadable: the loader phrases the error, naming the file.
                Err(_) => (String::new(), Config::load(&path)),
            })
            .await
            .map_err(ReloadError::Task)?;
        let stamp = fingerprint(text.as_bytes());
        if only_changes && (text.trim().is_empty() || self.applied_stamp() == Some(stamp)) {
            return Ok(());
        }
        self.apply(trigger, loaded, stamp)
    }

    fn apply(
        &self,
        trigger: &'static str,
        loaded: Result<Config, ConfigErrors>,
        stamp: u64,
    ) -> Result<(), ReloadError> {
        let loaded = loaded.map_err(ReloadError::Invalid).and_then(|config| {
            // First, because it is the one step that can still fail: a log
            // file that cannot be opened rejects the reload as a whole.
            match &self.access_log {
                Some(log) => log.apply(config.access_log.as_ref()),
                None => Ok(()),
            }
            .map(|()| config)
            .map_err(ReloadError::AccessLog)
        });
        match loaded {
            Ok(config) => {
                for warning in &config.warnings {
                    tracing::warn!(trigger, "config warning: {warning}");
                }
                self.warn_about_fixed_settings(&config);
                if let Some(certs) = &self.certs {
                    certs.apply_config(&config);
                }
                self.publisher.apply_config(Arc::new(config));
                self.metrics.count_reload(true);
                *self
                    .applied
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stamp);
                tracing::info!(trigger, "config reloaded");
                self.remember(trigger, Vec::new());
                Ok(())
            }
            Err(ReloadError::Invalid(invalid)) => {
                self.metrics.count_reload(false);
                // One line, whatever the log format: line-based tools
                // (grep, journald, log shippers) must see the whole reason.
                let errors: Vec<String> = invalid.0.iter().map(ToString::to_string).collect();
                tracing::error!(
                    trigger,
                    errors = errors.join("; "),
                    "config reload rejected; keeping the running config"
                );
                self.remember(trigger, errors);
                Err(ReloadError::Invalid(invalid))
            }
            Err(other) => {
                self.metrics.count_reload(false);
                tracing::error!(trigger, "config reload rejected: {other}");
                self.remember(trigger, vec![other.to_string()]);
                Err(other)
            }
        }
    }

    /// The last reload's outcome (`None` when none happened since start-up).
    pub fn last_reload(&self) -> Option<LastReload> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn remember(&self, trigger: &'static str, errors: Vec<String>) {
        let outcome = LastReload {
            ok: errors.is_empty(),
            at: std::time::SystemTime::now(),
            trigger,
            errors,
        };
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(outcome);
    }

    fn applied_stamp(&self) -> Option<u64> {
        *self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn warn_about_fixed_settings(&self, new: &Config) {
        let old = self.publisher.config();
        let fixed = [
            ("proxy.listen", old.proxy.listen != new.proxy.listen),
            // Certificates reload; the TLS listeners themselves do not.
            ("proxy.tls", !same_tls_listeners(&old, new)),
            ("admin.listen", old.admin.listen != new.admin.listen),
            ("admin.priority", old.admin.priority != new.admin.priority),
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
            // A change made between the start-up load and this watch.
            reloader.reload_if_changed().await;
            while rx.recv().await.is_some() {
                if !settle(&mut rx).await {
                    return;
                }
                reloader.reload_if_changed().await;
            }
        });
        Some(watcher)
    }
}

/// Whether both configs have the same TLS listeners (addresses and ALPN),
/// whatever certificates they name.
fn same_tls_listeners(old: &Config, new: &Config) -> bool {
    let shape = |c: &Config| -> Vec<_> {
        let listeners = c.proxy.tls.iter();
        listeners.map(|t| (t.listen, t.alpn.clone())).collect()
    };
    shape(old) == shape(new)
}

/// Wait until no event came for [`SETTLE`], or [`SETTLE_AT_MOST`] passed;
/// false when the watcher is gone.
async fn settle(rx: &mut tokio::sync::mpsc::UnboundedReceiver<()>) -> bool {
    let give_up = tokio::time::Instant::now() + SETTLE_AT_MOST;
    loop {
        let wait = SETTLE.min(give_up.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(())) if tokio::time::Instant::now() < give_up => continue,
            Ok(Some(())) => return true,
            Ok(None) => return false,
            Err(_quiet) => return true,
        }
    }
}

/// Content fingerprint, so touching a file or a no-op save does not reload.
fn fingerprint(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_file_written_without_pause_is_still_reloaded() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // An event every 50 ms, for 10 s: never quiet for SETTLE.
        tokio::spawn(async move {
            for _ in 0..200 {
                if tx.send(()).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let started = tokio::time::Instant::now();
        assert!(settle(&mut rx).await);
        let waited = started.elapsed();
        assert!(
            waited <= SETTLE_AT_MOST + Duration::from_millis(50),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_file_settles_after_settle() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(()).unwrap();
        let started = tokio::time::Instant::now();
        assert!(settle(&mut rx).await);
        assert_eq!(started.elapsed(), SETTLE);
        drop(tx);
        assert!(!settle(&mut rx).await);
    }
}
