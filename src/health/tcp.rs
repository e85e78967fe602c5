//! The TCP-connect probe (`kind = "tcp"`): a backend passes when it accepts a
//! connection within the check timeout.
//!
//! Nothing is sent; the connection is closed gracefully at once. It suits
//! backends that speak no HTTP on their port, and proves less than the HTTP
//! probe: a process that accepts but never answers still passes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::{Probe, ProbeError};

/// Connects, then hangs up.
#[derive(Debug, Clone)]
pub struct TcpProbe {
    /// Bounds the connect (the whole check).
    timeout: Duration,
}

impl TcpProbe {
    pub fn new(timeout: Duration) -> TcpProbe {
        TcpProbe { timeout }
    }
}

impl Probe for TcpProbe {
    async fn probe(&self, addr: SocketAddr) -> Result<(), ProbeError> {
        match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
            Err(_) => Err(ProbeError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(ProbeError::Connect(e)),
            Ok(Ok(_stream)) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listening_port_passes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let probe = TcpProbe::new(Duration::from_secs(5));
        assert!(probe.probe(addr).await.is_ok());
    }

    #[tokio::test]
    async fn a_closed_port_fails_with_a_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let probe = TcpProbe::new(Duration::from_secs(5));
        let err = probe.probe(addr).await.expect_err("nothing listens");
        assert!(matches!(err, ProbeError::Connect(_)), "{err:?}");
    }
}
