//! TLS settings: the server side of `[[proxy.tls]]` listeners and the client
//! side of `protocol = "https"` services, both on rustls with the `ring`
//! provider (no C toolchain needed, unlike aws-lc).
//!
//! A listener's certificates are read at start-up ([`server_config`]) and
//! again on every reload ([`live`]): each file is read once, every PEM chain
//! and key is parsed, the key is checked against its certificate, and each
//! certificate's DNS names (exact and wildcard subjectAltNames, read with
//! rustls-webpki, which rustls already uses) go into two hash maps. The
//! [`SniResolver`] then picks a certificate per handshake without locks or
//! parsing: exact name, else the wildcard one label up, else the first
//! certificate — also when the client sends no SNI. A listener serves
//! through a [`live::LiveCerts`], which holds its current resolver behind an
//! `ArcSwap` so that a reload changes what new handshakes get and nothing
//! else. Any unreadable or invalid file is a [`TlsError`] whose one-line
//! message names the file, so `switchyard serve` can stop with it and
//! `switchyard check` can report it.

pub mod live;
mod watch;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{CertPair, TlsListenerConfig};
pub use live::LiveCerts;

/// ALPN offered to TLS backends: HTTP/2 when the backend wants it, else HTTP/1.1.
const UPSTREAM_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why TLS settings could not be built. Every message is one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate file {}: {source}", path.display())]
    ReadCert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("certificate file {} holds no PEM certificate", path.display())]
    NoCert { path: PathBuf },
    #[error("certificate file {} is not a valid X.509 certificate: {source}", path.display())]
    BadCert {
        path: PathBuf,
        #[source]
        source: webpki::Error,
    },
    #[error("cannot read private key file {}: {source}", path.display())]
    ReadKey {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("private key file {} is unusable with certificate {}: {source}", key.display(), cert.display())]
    BadKey {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot build the TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    /// Whether the problem is the private key's (unreadable, or not
    /// matching its certificate) rather than the certificate file's: config
    /// validation points at the `key` value then, else at `cert`.
    pub fn is_about_key(&self) -> bool {
        matches!(self, TlsError::ReadKey { .. } | TlsError::BadKey { .. })
    }
}

/// The one crypto provider Switchyard uses (passed explicitly rather than
/// installed process-wide, so nothing depends on start-up order).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// === server side ===

/// Load every certificate of a `[[proxy.tls]]` listener and build its rustls
/// config: TLS 1.2 and 1.3, no client certificates, SNI selection through
/// the returned [`LiveCerts`] (which reloads swap), ALPN as configured.
pub fn server_config(
    listener: &TlsListenerConfig,
) -> Result<(Arc<ServerConfig>, Arc<LiveCerts>), TlsError> {
    let certs = Arc::new(LiveCerts::load(&listener.certs)?);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&certs) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = listener
        .alpn
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    Ok((Arc::new(config), certs))
}

/// Read, parse and match one certificate/key pair, keeping nothing: what
/// `switchyard check` (config validation) does for every pair.
pub fn check_pair(pair: &CertPair) -> Result<(), TlsError> {
    let (_, files) = read_pairs(std::slice::from_ref(pair));
    SniResolver::from_pem(&files?).map(|_| ())
}

/// A pair's two files as read, so that what is parsed is what was
/// fingerprinted (a file replaced in between cannot mix the two).
#[derive(Debug)]
pub struct PairPem {
    pub pair: CertPair,
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// Read every file of `pairs` once. Also returns a fingerprint of what was
/// found — the bytes, or the error of a file that could not be read — so a
/// reload can tell "nothing changed" (same fingerprint) from a new attempt.
pub fn read_pairs(pairs: &[CertPair]) -> (u64, Result<Vec<PairPem>, TlsError>) {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut read = |path: &Path| {
        let bytes = std::fs::read(path);
        path.hash(&mut hasher);
        match &bytes {
            Ok(b) => b.hash(&mut hasher),
            Err(e) => e.kind().hash(&mut hasher),
        }
        bytes.map_err(rustls::pki_types::pem::Error::Io)
    };
    let mut files = Vec::with_capacity(pairs.len());
    let mut first_error = None;
    for pair in pairs {
        let cert = read(&pair.cert).map_err(|source| TlsError::ReadCert {
            path: pair.cert.clone(),
            source,
        });
        let key = read(&pair.key).map_err(|source| TlsError::ReadKey {
            path: pair.key.clone(),
            source,
        });
        match (cert, key) {
            (Ok(cert), Ok(key)) => files.push(PairPem {
                pair: pair.clone(),
                cert,
                key,
            }),
            (Err(e), _) | (_, Err(e)) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let stamp = hasher.finish();
    match first_error {
        Some(e) => (stamp, Err(e)),
        None => (stamp, Ok(files)),
    }
}

/// Picks a listener's certificate by the client's SNI.
#[derive(Debug)]
pub struct SniResolver {
    /// In config order; the first is the default.
    certs: Vec<Arc<CertifiedKey>>,
    /// Lower-cased exact DNS names → index in `certs` (the first cert naming it wins).
    exact: HashMap<String, usize>,
    /// For `*.b.example`: `b.example` → index in `certs`.
    wildcard: HashMap<String, usize>,
}

impl SniResolver {
    /// Read and check every pair; the resulting resolver is never empty when
    /// `pairs` is not (validation requires at least one).
    pub fn load(pairs: &[CertPair]) -> Result<SniResolver, TlsError> {
        SniResolver::from_pem(&read_pairs(pairs).1?)
    }

    /// Parse and check pairs already read.
    pub fn from_pem(files: &[PairPem]) -> Result<SniResolver, TlsError> {
        let provider = provider();
        let mut resolver = SniResolver {
            certs: Vec::with_capacity(files.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for (index, file) in files.iter().enumerate() {
            let pair = &file.pair;
            let chain = read_chain(&pair.cert, &file.cert)?;
            let names = dns_names(&pair.cert, &chain[0])?;
            let key = read_key(&pair.key, &file.key)?;
            let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|source| {
                TlsError::BadKey {
                    cert: pair.cert.clone(),
                    key: pair.key.clone(),
                    source,
                }
            })?;
            if names.is_empty() && index > 0 {
                tracing::warn!(cert = %pair.cert.display(), "certificate names no DNS subjectAltName and is not the first: it is never chosen");
            }
            resolver.add(index, names);
            resolver.certs.push(Arc::new(certified));
        }
        Ok(resolver)
    }

    fn add(&mut self, index: usize, names: Vec<String>) {
        for name in names {
            let map = match name.strip_prefix("*.") {
                Some(_) => &mut self.wildcard,
                None => &mut self.exact,
            };
            let key = name.strip_prefix("*.").unwrap_or(&name).to_owned();
            map.entry(key).or_insert(index);
        }
    }

    /// The index of the certificate for `sni`, if any names it.
    fn lookup(&self, sni: &str) -> Option<usize> {
        let name = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some(&index) = self.exact.get(&name) {
            return Some(index);
        }
        // A wildcard covers exactly one label: `*.b.example` matches
        // `x.b.example`, neither `b.example` nor `y.x.b.example`.
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).copied()
    }

    /// Which certificate a handshake with this SNI (or none) gets.
    pub fn choose(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let index = sni.and_then(|name| self.lookup(name)).unwrap_or(0);
        self.certs.get(index)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name()).cloned()
    }
}

/// A PEM file's certificates, end-entity first.
fn read_chain(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::ReadCert {
            path: path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// The first private key in a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
fn read_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| TlsError::ReadKey {
        path: path.to_owned(),
        source,
    })
}

/// The lower-cased DNS subjectAltNames of a certificate, wildcards included.
/// (Used to *select* a certificate; the client still verifies it.)
fn dns_names(path: &Path, cert: &CertificateDer<'_>) -> Result<Vec<String>, TlsError> {
    let parsed = webpki::EndEntityCert::try_from(cert).map_err(|source| TlsError::BadCert {
        path: path.to_owned(),
        source,
    })?;
    Ok(parsed
        .valid_dns_names()
        .map(|name| name.trim_end_matches('.').to_ascii_lowercase())
        .collect())
}

// === client side ===

/// The rustls config for TLS to backends: the webpki (Mozilla) roots plus
/// `extra_roots` (a service's `tls_ca`), ALPN h2 then http/1.1.
pub fn client_config(extra_roots: &[CertificateDer<'static>]) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // Certificates that are no usable trust anchor are skipped, as rustls
    // does for system stores; the config loader already checked the file.
    let (added, skipped) = roots.add_parsable_certificates(extra_roots.iter().cloned());
    if skipped > 0 {
        tracing::warn!(
            added,
            skipped,
            "tls_ca: some certificates are not usable as roots"
        );
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = UPSTREAM_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(names: &[&[&str]]) -> SniResolver {
        let mut r = SniResolver {
            certs: Vec::new(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for (i, list) in names.iter().enumerate() {
            r.add(i, list.iter().map(|s| s.to_string()).collect());
        }
        r
    }

    #[test]
    fn exact_then_wildcard_one_label_deep() {
        let r = resolver(&[&["a.example"], &["*.b.example", "b.example"]]);
        assert_eq!(r.lookup("a.example"), Some(0));
        assert_eq!(r.lookup("A.Example."), Some(0));
        assert_eq!(r.lookup("x.b.example"), Some(1));
        assert_eq!(r.lookup("b.example"), Some(1));
        assert_eq!(r.lookup("y.x.b.example"), None);
        assert_eq!(r.lookup("c.example"), None);
    }

    #[test]
    fn exact_beats_wildcard_and_first_cert_wins_ties() {
        let r = resolver(&[&["*.b.example"], &["x.b.example"], &["*.b.example"]]);
        assert_eq!(r.lookup("x.b.example"), Some(1));
        assert_eq!(r.lookup("z.b.example"), Some(0));
    }

    #[test]
    fn missing_files_name_the_file() {
        let pair = CertPair {
            cert: PathBuf::from("/nonexistent/cert.pem"),
            key: PathBuf::from("/nonexistent/key.pem"),
        };
        let err = SniResolver::load(&[pair]).map(|_| ()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent/cert.pem"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }
}
