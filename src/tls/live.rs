//! Certificates that change without a restart.
//!
//! A TLS listener picks its certificate through a [`LiveCerts`]: the
//! current [`SniResolver`] behind an `ArcSwap`, one lock-free load per
//! handshake. A reload reads the listener's files once, and when their bytes
//! differ from what is serving, parses and checks them and swaps the new
//! resolver in: new handshakes get it, open connections keep the session
//! they negotiated. A pair that cannot be read or parsed, or whose key does
//! not match its certificate, is kept out: the old certificates go on
//! serving, the reason is logged in one line and counted in
//! `switchyard_tls_reloads_total{result="failure"}`.
//!
//! The [`CertReloader`] owns every listener's `LiveCerts` and runs reloads
//! for two triggers: a config reload ([`CertReloader::apply_config`], which
//! may also name new files), and a change on disk ([`CertReloader::watch`]).
//! It watches the *folders* holding the files (`tls/watch.rs`). A reload
//! compares bytes, so an event that changed nothing costs one read of small
//! files. A folder that does not exist (yet), or that was removed, is
//! watched again every 2 s, its files read each time, until its
//! watch holds.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::watch::{needs_rewatch, settle, EventSender, FolderWatch, RETRY_WATCH};
use super::{read_pairs, SniResolver, TlsError};
use crate::config::{CertPair, Config};
use crate::metrics::Metrics;

/// A listener's certificates as serving now, swappable while it serves.
#[derive(Debug)]
pub struct LiveCerts {
    current: ArcSwap<Loaded>,
    /// The pairs the config names (after a reload that could not load them,
    /// not the ones serving), and the fingerprint of the last failed
    /// attempt, so that a file-change reload reports a broken file once per
    /// change instead of once per event. Only reloads take this lock.
    wanted: Mutex<Wanted>,
}

#[derive(Debug)]
struct Loaded {
    /// Fingerprint of the files' bytes this resolver was built from.
    stamp: u64,
    resolver: SniResolver,
}

#[derive(Debug)]
struct Wanted {
    pairs: Vec<CertPair>,
    failed: Option<u64>,
}

/// What a reload of one listener did.
#[derive(Debug)]
pub enum Outcome {
    /// The files hold what is serving (or what failed last time, for a
    /// file-change reload): nothing to do, nothing counted.
    Unchanged,
    /// New certificates serve new handshakes.
    Reloaded,
    /// The new files are unusable; the old certificates stay.
    Failed(TlsError),
}

// === impl LiveCerts ===

impl LiveCerts {
    /// Read and check `pairs`; an error names the file.
    pub fn load(pairs: &[CertPair]) -> Result<LiveCerts, TlsError> {
        let (stamp, files) = read_pairs(pairs);
        let resolver = SniResolver::from_pem(&files?)?;
        Ok(LiveCerts {
            current: ArcSwap::from_pointee(Loaded { stamp, resolver }),
            wanted: Mutex::new(Wanted {
                pairs: pairs.to_vec(),
                failed: None,
            }),
        })
    }

    /// The certificate a handshake with this SNI (or none) gets now.
    pub fn choose(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.current.load().resolver.choose(sni).cloned()
    }

    /// The files the config names for this listener.
    pub fn files(&self) -> Vec<PathBuf> {
        let wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        let files = wanted.pairs.iter();
        files
            .flat_map(|p| [p.cert.clone(), p.key.clone()])
            .collect()
    }

    /// Re-read the files (`pairs`, when given, become the ones wanted) and
    /// swap in what they hold if it differs from what is serving.
    /// `retry_failed`: try again even when the bytes are those of the last
    /// failed attempt (an operator's reload asks for it; a file event does not).
    pub fn reload(&self, pairs: Option<&[CertPair]>, retry_failed: bool) -> Outcome {
        let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pairs) = pairs {
            wanted.pairs = pairs.to_vec();
        }
        let (stamp, files) = read_pairs(&wanted.pairs);
        let repeated_failure = !retry_failed && wanted.failed == Some(stamp);
        if stamp == self.current.load().stamp || repeated_failure {
            return Outcome::Unchanged;
        }
        match files.and_then(|files| SniResolver::from_pem(&files)) {
            Ok(resolver) => {
                self.current.store(Arc::new(Loaded { stamp, resolver }));
                wanted.failed = None;
                Outcome::Reloaded
            }
            Err(e) => {
                wanted.failed = Some(stamp);
                Outcome::Failed(e)
            }
        }
    }
}

impl ResolvesServerCert for LiveCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name())
    }
}

/// Every TLS listener's certificates, with the reloads and the file watch.
#[derive(Debug)]
pub struct CertReloader {
    listeners: Vec<ListenerCerts>,
    metrics: Metrics,
    /// The folder watch, replaced when a config reload names other folders.
    watch: Mutex<Option<FolderWatch>>,
    /// Where the watch's events go; set by [`CertReloader::watch`].
    events: OnceLock<EventSender>,
}

/// One TLS listener's certificates.
#[derive(Debug)]
pub struct ListenerCerts {
    /// The configured `listen` address: how a reloaded config's
    /// `[[proxy.tls]]` entry is matched to this listener.
    pub listen: SocketAddr,
    /// The address it is bound to (differs for port 0), for the logs.
    pub bound: SocketAddr,
    pub certs: Arc<LiveCerts>,
}

// === impl CertReloader ===

impl CertReloader {
    pub fn new(listeners: Vec<ListenerCerts>, metrics: Metrics) -> CertReloader {
        CertReloader {
            listeners,
            metrics,
            watch: Mutex::new(None),
            events: OnceLock::new(),
        }
    }

    /// After a config reload: each listener that is still configured (same
    /// `listen`) re-reads the files the new config names for it. A listener
    /// whose address changed keeps serving (a new address needs a restart).
    pub fn apply_config(&self, config: &Config) {
        for listener in &self.listeners {
            let entry = config
                .proxy
                .tls
                .iter()
                .find(|t| t.listen == listener.listen);
            let Some(entry) = entry else {
                continue;
            };
            let outcome = listener.certs.reload(Some(&entry.certs), true);
            self.record(listener.bound, "config reload", outcome);
        }
        self.rewatch();
    }

    /// After a file event: re-read every listener's files.
    pub fn reload_changed(&self) {
        for listener in &self.listeners {
            let outcome = listener.certs.reload(None, false);
            self.record(listener.bound, "file change", outcome);
        }
    }

    fn record(&self, listen: SocketAddr, trigger: &'static str, outcome: Outcome) {
        match outcome {
            Outcome::Unchanged => {}
            Outcome::Reloaded => {
                self.metrics.count_tls_reload(true);
                tracing::info!(listener = %listen, trigger, "TLS certificates reloaded");
            }
            Outcome::Failed(e) => {
                self.metrics.count_tls_reload(false);
                // The message already carries its cause (and names the file).
                tracing::error!(listener = %listen, trigger, error = %e, "TLS certificate reload failed; the certificates in use stay");
            }
        }
    }

    /// Start watching the folders of every certificate and key file, and
    /// reload on changes for as long as `self` lives. Call it once, inside
    /// the runtime that should run the reloads.
    pub fn watch(self: &Arc<Self>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        if self.events.set(EventSender(tx)).is_err() {
            return; // already watching
        }
        self.rewatch();
        let reloader = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let broken = reloader.upgrade().is_some_and(|r| r.watch_is_broken());
                let event = match broken {
                    true => tokio::time::timeout(RETRY_WATCH, rx.recv()).await,
                    false => Ok(rx.recv().await),
                };
                match event {
                    Ok(None) => return,
                    Ok(Some(())) if !settle(&mut rx).await => return,
                    Ok(Some(())) => {}
                    // A folder may exist now: watch it, and read the files.
                    Err(_retry) => {
                        if let Some(reloader) = reloader.upgrade() {
                            reloader.rewatch();
                        }
                    }
                }
                let Some(reloader) = reloader.upgrade() else {
                    return;
                };
                // Reading and parsing a few PEM files: off the async workers.
                let _ = tokio::task::spawn_blocking(move || reloader.reload_changed()).await;
            }
        });
    }

    fn watch_is_broken(&self) -> bool {
        let watch = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
        needs_rewatch(watch.as_ref())
    }

    /// Watch exactly the folders the listeners' files are in now.
    fn rewatch(&self) {
        let Some(events) = self.events.get() else {
            return;
        };
        let files: Vec<PathBuf> = self
            .listeners
            .iter()
            .flat_map(|listener| listener.certs.files())
            .collect();
        let folders: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|file| file.parent().map(PathBuf::from))
            .collect();
        let names: BTreeSet<OsString> = files
            .iter()
            .filter_map(|file| file.file_name().map(OsString::from))
            .collect();
        let mut watch = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
        let same = |w: &FolderWatch| w.folders == folders && w.names == names;
        let retry = watch.as_ref().is_some_and(same);
        if folders.is_empty() || (retry && !needs_rewatch(watch.as_ref())) {
            return;
        }
        // A retry is quiet: its problem was logged the first time.
        *watch = events.watcher(folders, names, !retry);
        if needs_rewatch(watch.as_ref()) {
            // Wake the watch task, which may be waiting for events only.
            let _ = events.0.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `name` and its key, as PEM.
    fn pem(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &std::path::Path, file: &str, text: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, text).expect("write");
        path
    }

    fn names(certs: &LiveCerts) -> Vec<u8> {
        let chosen = certs.choose(None).expect("a certificate");
        chosen.cert[0].as_ref().to_vec()
    }

    #[test]
    fn a_good_pair_swaps_in_and_a_bad_one_is_kept_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_a, key_a) = pem("a.test");
        let pair = CertPair {
            cert: write(dir.path(), "cert.pem", &cert_a),
            key: write(dir.path(), "key.pem", &key_a),
        };
        let certs = LiveCerts::load(std::slice::from_ref(&pair)).expect("loads");
        let first = names(&certs);
        assert!(matches!(certs.reload(None, false), Outcome::Unchanged));

        // A mismatched key: refused, the first certificate stays.
        let (cert_b, key_b) = pem("b.test");
        write(dir.path(), "cert.pem", &cert_b);
        let outcome = certs.reload(None, false);
        assert!(
            matches!(&outcome, Outcome::Failed(e) if e.is_about_key()),
            "{outcome:?}"
        );
        assert_eq!(names(&certs), first);
        // The same broken bytes again: not a new attempt for a file event,
        // one for an operator's reload.
        assert!(matches!(certs.reload(None, false), Outcome::Unchanged));
        assert!(matches!(certs.reload(None, true), Outcome::Failed(_)));

        write(dir.path(), "key.pem", &key_b);
        assert!(matches!(certs.reload(None, false), Outcome::Reloaded));
        assert_ne!(names(&certs), first);

        std::fs::remove_file(&pair.key).expect("remove");
        let outcome = certs.reload(None, false);
        assert!(
            matches!(&outcome, Outcome::Failed(TlsError::ReadKey { .. })),
            "{outcome:?}"
        );
        assert!(certs.choose(Some("b.test")).is_some());
    }
}
