//! `tls_ca` and `tls_server_name` of `[services.NAME]`, for `protocol =
//! "https"`. The CA file is read here, at load, so a missing or broken file
//! is a config error with its line (in `check`, at start-up and on reload)
//! rather than a pool that can never connect.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::ctx::Ctx;
use super::raw::RawService;
use crate::config::{CaFile, UpstreamProtocol, UpstreamTls};

pub(super) fn upstream_tls(
    cx: &mut Ctx,
    key: &str,
    raw: &RawService,
    protocol: UpstreamProtocol,
) -> UpstreamTls {
    let ca = raw.tls_ca.as_ref().and_then(|v| {
        let at = format!("{key}.tls_ca");
        let path = cx.path(v, &at);
        // An empty path was already reported by `cx.path`.
        (!path.as_os_str().is_empty())
            .then(|| cx.check(v, &at, |_| read_ca(&path)))
            .flatten()
    });
    let server_name = raw
        .tls_server_name
        .as_ref()
        .and_then(|v| cx.check(v, &format!("{key}.tls_server_name"), |s| server_name(s)));
    // A `protocol` dropped for its wrong shape stands in as http1: no claim.
    let not_https = protocol != UpstreamProtocol::Https && !cx.dropped(&format!("{key}.protocol"));
    if not_https {
        for (leaf, v) in [
            ("tls_ca", &raw.tls_ca),
            ("tls_server_name", &raw.tls_server_name),
        ] {
            if let Some(v) = v {
                let message = "only applies with protocol = \"https\"";
                cx.error(Some(v.span()), &format!("{key}.{leaf}"), message);
            }
        }
    }
    UpstreamTls { ca, server_name }
}

/// Every certificate of a PEM file, each checked to be usable as a trust anchor.
fn read_ca(path: &Path) -> Result<CaFile, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read CA file {shown}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("CA file {shown} holds no PEM certificate"));
    }
    for cert in &certs {
        webpki::anchor_from_trusted_cert(cert)
            .map_err(|e| format!("CA file {shown} holds an unusable certificate: {e}"))?;
    }
    Ok(CaFile {
        path: path.to_path_buf(),
        certs,
    })
}

/// A DNS name or an IP address, as rustls accepts for SNI and verification.
fn server_name(s: &str) -> Result<String, String> {
    ServerName::try_from(s)
        .map(|_| s.to_owned())
        .map_err(|_| format!("`{s}` is not a valid DNS name or IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_dns_names_or_ips() {
        assert!(server_name("backend.internal").is_ok());
        assert!(server_name("10.0.0.1").is_ok());
        assert!(server_name("bad name").is_err());
        assert!(server_name("").is_err());
    }

    #[test]
    fn ca_files_must_hold_certificates() {
        let dir = std::env::temp_dir().join(format!("sy-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no pem here\n").ok();
        let err = read_ca(&empty).map(|_| ()).unwrap_err();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let err = read_ca(&dir.join("missing.pem")).map(|_| ()).unwrap_err();
        assert!(err.contains("cannot read CA file"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
