//! Certificates for the TLS reload and gRPC-over-TLS tests: a test CA
//! (rcgen), leaves it signs, files written or replaced by rename as
//! cert-manager and ACME clients do, and a TLS client that reports which
//! certificate a fresh handshake was served.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::Request;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{empty, ReqBody};

/// A test CA.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, as PEM, and the certificate's DER (what
/// a handshake serves).
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Switchyard test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("ca key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("ca cert");
        Pki { ca }
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A leaf for `localhost` and 127.0.0.1 with this common name.
    pub fn leaf(&self, cn: &str) -> Leaf {
        self.leaf_for(cn, &["localhost", "127.0.0.1"])
    }

    /// A leaf with this common name for these subjectAltNames (DNS names,
    /// wildcards or IP addresses).
    pub fn leaf_for(&self, cn: &str, sans: &[&str]) -> Leaf {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client config trusting only this CA, offering `alpn`. Session
    /// resumption is off: every connection is a full handshake, in which the
    /// server presents the certificate it serves now (a resumed session
    /// reports the certificate of the session it resumed).
    pub fn client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()).expect("add test CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

/// Writes `text` to `path` the way cert-manager and ACME clients replace a
/// file: into a sibling temporary file, then renamed over it.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-new");
    std::fs::write(&tmp, text).expect("write temporary file");
    std::fs::rename(&tmp, path).expect("rename over the file");
}

/// The `cert.pem` and `key.pem` paths of a folder.
pub fn pair_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Installs `cert_pem` and `key_pem` as `cert.pem`/`key.pem` in `dir`, each
/// by rename: both written to temporary files first, then renamed over the
/// old ones back to back (key first), as a renewal would.
pub fn install_pems(dir: &Path, cert_pem: &str, key_pem: &str) {
    let (cert, key) = pair_paths(dir);
    let (cert_tmp, key_tmp) = (dir.join(".cert.pem.new"), dir.join(".key.pem.new"));
    std::fs::write(&cert_tmp, cert_pem).expect("write temporary cert");
    std::fs::write(&key_tmp, key_pem).expect("write temporary key");
    std::fs::rename(&key_tmp, &key).expect("rename key");
    std::fs::rename(&cert_tmp, &cert).expect("rename cert");
}

/// [`install_pems`] for a leaf.
pub fn install(dir: &Path, leaf: &Leaf) {
    install_pems(dir, &leaf.cert_pem, &leaf.key_pem);
}

/// A fresh TLS connection to `addr` with SNI `localhost`: the stream and
/// the certificate the server presented.
pub async fn connect(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
) -> Result<(TlsStream<TcpStream>, CertificateDer<'static>), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let name = ServerName::try_from("localhost").expect("server name");
    let tls = TlsConnector::from(Arc::clone(client))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
    let served = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .cloned()
        .ok_or("no certificate served")?;
    Ok((tls, served))
}

/// The certificate a fresh handshake gets.
pub async fn served_cert(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
) -> Result<CertificateDer<'static>, String> {
    connect(addr, client).await.map(|(_, cert)| cert)
}

/// An HTTP/1.1 connection over a fresh TLS connection.
pub async fn https_connection(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
) -> Result<hyper::client::conn::http1::SendRequest<ReqBody>, String> {
    let (tls, _) = connect(addr, client).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// `GET path` on `sender`; the status.
pub async fn https_get(
    sender: &mut hyper::client::conn::http1::SendRequest<ReqBody>,
    path: &str,
) -> Result<u16, String> {
    let req = Request::get(path)
        .header("host", "localhost")
        .body(empty())
        .map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    super::count_body(resp.into_body()).await?;
    Ok(status)
}
