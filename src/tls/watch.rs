//! The folder watch behind certificate reloads ([`super::live`]).
//!
//! Editors, ACME clients and cert-manager replace a file by renaming another
//! over it, and Kubernetes secret volumes swap a `..data` symlink; a watch on
//! the file itself would miss all of these, so the *folders* holding the
//! certificate and key files are watched (inotify through `notify`). Only
//! events naming one of the files, or a `..` name, count; a burst of them is
//! settled for [`SETTLE`] (at most [`SETTLE_MAX`]) before the files are
//! read. A folder that cannot be watched (it does not exist yet) or whose
//! watch went away (it was removed) marks the watch broken; the reloader
//! then sets it up again every [`RETRY_WATCH`].

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

/// Quiet time after the last file event before the files are read: one
/// replacement is often several events (create, write, rename, chmod).
pub const SETTLE: Duration = Duration::from_millis(200);

/// The longest a burst of events delays a reload, so that a folder whose
/// other files never stop changing cannot hold a new certificate back.
pub const SETTLE_MAX: Duration = Duration::from_secs(1);

/// While a folder cannot be watched (it does not exist yet, or was removed),
/// the watch is retried, and the files read, this often.
pub const RETRY_WATCH: Duration = Duration::from_secs(2);

/// A live watch of some folders.
#[derive(Debug)]
pub(super) struct FolderWatch {
    pub(super) folders: BTreeSet<PathBuf>,
    pub(super) names: BTreeSet<OsString>,
    /// Some folder could not be watched, or a watched one was removed or
    /// renamed (its watch is gone with it): the watch must be set up again.
    broken: Arc<AtomicBool>,
    /// Kept alive for as long as the folders are watched.
    _watcher: notify::RecommendedWatcher,
}

/// Whether a watch needs setting up again (absent or broken).
pub(super) fn needs_rewatch(watch: Option<&FolderWatch>) -> bool {
    watch.is_none_or(|w| w.broken.load(Ordering::Relaxed))
}

/// Where folder events go (cloned into each watcher's callback).
#[derive(Debug, Clone)]
pub(super) struct EventSender(pub(super) tokio::sync::mpsc::UnboundedSender<()>);

impl EventSender {
    /// A watcher on `folders`, passing on the events that touch one of the
    /// file `names` or a name starting with `..` (a Kubernetes secret
    /// volume's `..data` swap). A folder that cannot be watched (logged when
    /// `log`) marks the watch broken, and so does the removal of a watched
    /// folder: [`super::live::CertReloader::watch`] then retries it every [`RETRY_WATCH`].
    /// `None` when no watcher can be made at all (retried the same way).
    pub(super) fn watcher(
        &self,
        folders: BTreeSet<PathBuf>,
        names: BTreeSet<OsString>,
        log: bool,
    ) -> Option<FolderWatch> {
        let tx = self.0.clone();
        let broken = Arc::new(AtomicBool::new(false));
        let (wanted, watched, lost) = (names.clone(), folders.clone(), Arc::clone(&broken));
        let concerns = move |path: &PathBuf| {
            path.file_name().is_some_and(|name| {
                wanted.contains(name) || name.as_encoded_bytes().starts_with(b"..")
            })
        };
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else {
                return;
            };
            if event.paths.iter().any(|p| watched.contains(p)) {
                lost.store(true, Ordering::Relaxed);
                let _ = tx.send(());
                return;
            }
            let access = matches!(event.kind, notify::EventKind::Access(_));
            if !access && event.paths.iter().any(&concerns) {
                let _ = tx.send(());
            }
        })
        .map_err(|e| {
            if log {
                tracing::warn!(error = %e, "cannot watch the certificate folders; trying again every 2 s");
            }
        })
        .ok()?;
        for folder in &folders {
            if let Err(e) = watcher.watch(folder, RecursiveMode::NonRecursive) {
                broken.store(true, Ordering::Relaxed);
                if log {
                    let folder = folder.display();
                    tracing::warn!(%folder, error = %e, "cannot watch a certificate folder; trying again every 2 s");
                }
            }
        }
        Some(FolderWatch {
            folders,
            names,
            broken,
            _watcher: watcher,
        })
    }
}

/// Wait until no event came for [`SETTLE`], or [`SETTLE_MAX`] passed;
/// false when the sender is gone.
pub(super) async fn settle(rx: &mut tokio::sync::mpsc::UnboundedReceiver<()>) -> bool {
    let deadline = tokio::time::Instant::now() + SETTLE_MAX;
    loop {
        let quiet = (tokio::time::Instant::now() + SETTLE).min(deadline);
        match tokio::time::timeout_at(quiet, rx.recv()).await {
            Ok(Some(())) => continue,
            Ok(None) => return false,
            Err(_quiet_or_late) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_settled_but_never_for_longer_than_the_maximum() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(()).expect("send");
        let started = tokio::time::Instant::now();
        assert!(settle(&mut rx).await);
        assert_eq!(started.elapsed(), SETTLE);
        // Events every 100 ms forever: the wait ends at SETTLE_MAX.
        let sender = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
        let started = tokio::time::Instant::now();
        assert!(settle(&mut rx).await);
        assert_eq!(started.elapsed(), SETTLE_MAX);
        sender.abort();
    }
}
