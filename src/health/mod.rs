//! Active health checks: one checker task per backend of every service that
//! has a `[services.NAME.health_check]` table.
//!
//! The [`Supervisor`] waits on the publisher's generation (bumped by every
//! full rebuild: a reload, a registration, a departure) and reconciles its
//! tasks with the new table: it starts a checker for a
//! backend it has not seen (configured and registered ones alike), stops the
//! checker of a backend that left the table or started draining, and restarts
//! one whose service's check settings changed — the backend keeps its health,
//! because it is the same `Arc` the table carries over. A checker
//! ([`checker`]) probes through the [`Probe`] seam ([`http`], [`tcp`],
//! [`grpc`]; the first and last connect through [`transport`]), feeds
//! results to the pure threshold machine ([`counter`]), and on a transition
//! sets the backend's health and nudges the publisher, which rebuilds the
//! ready lists. The request path only ever reads the published table, so it
//! never waits on a check.

pub mod checker;
pub mod counter;
pub mod grpc;
pub mod http;
pub mod tcp;
pub mod transport;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, Health};
use crate::config::{
    HealthCheckConfig, HealthCheckKind, ServiceConfig, UpstreamProtocol, UpstreamTls,
};
use crate::metrics::Metrics;
use crate::table::{Publisher, Table};

use checker::{CheckCounters, Checker, Grid, Start};
pub use grpc::GrpcProbe;
pub use http::HttpProbe;
pub use tcp::TcpProbe;
use transport::Http;
pub use transport::ProbeTls;

/// One health attempt against one address. Thresholds are not its business:
/// it answers pass (`Ok`) or fail (`Err`, with why), within its own timeout.
pub trait Probe: Send + Sync + 'static {
    fn probe(&self, addr: SocketAddr) -> impl Future<Output = Result<(), ProbeError>> + Send;
}

/// Why a check failed (or could not be set up).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect")]
    Connect(#[source] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("bad or broken HTTP answer")]
    Http(#[source] hyper::Error),
    #[error("status {status} is outside the expected {}-{}", expected.0, expected.1)]
    Status { status: u16, expected: (u16, u16) },
    #[error("health check path cannot be sent")]
    Uri(#[source] ::http::uri::InvalidUri),
    #[error("health check Host header cannot be sent")]
    Host(#[source] ::http::header::InvalidHeaderValue),
    #[error("TLS handshake failed")]
    Tls(#[source] std::io::Error),
    #[error("{0} is no valid TLS server name")]
    ServerName(String),
    #[error("TLS settings unusable")]
    TlsSettings(#[source] Arc<crate::tls::TlsError>),
    #[error("gRPC status {code} {message}")]
    GrpcStatus { code: u32, message: String },
    #[error("the health service answered {}", grpc::serving_status_name(*.0))]
    NotServing(i32),
    #[error("bad gRPC answer: {0}")]
    GrpcAnswer(&'static str),
    #[error("undecodable gRPC health answer")]
    GrpcDecode(#[source] prost::DecodeError),
}

/// The probe a service's config asks for.
#[derive(Debug)]
pub enum AnyProbe {
    Http(HttpProbe),
    Tcp(TcpProbe),
    Grpc(GrpcProbe),
}

impl AnyProbe {
    /// `tls`: set for the backends of an `https` service (used by HTTP and
    /// gRPC checks); `protocol`: the service's, which decides the HTTP version.
    pub fn new(
        config: &HealthCheckConfig,
        backend: &Backend,
        tls: Option<ProbeTls>,
        protocol: UpstreamProtocol,
    ) -> Result<AnyProbe, ProbeError> {
        let authority = config.host.as_deref().unwrap_or(&backend.address);
        Ok(match &config.kind {
            HealthCheckKind::Http => {
                let http = probe_http(&config.kind, protocol);
                AnyProbe::Http(HttpProbe::new(config, &backend.address, tls, http)?)
            }
            HealthCheckKind::Tcp => AnyProbe::Tcp(TcpProbe::new(config.timeout)),
            HealthCheckKind::Grpc { service } => {
                AnyProbe::Grpc(GrpcProbe::new(service, authority, config.timeout, tls)?)
            }
        })
    }
}

/// The HTTP version a check speaks: gRPC always HTTP/2, HTTP checks HTTP/2
/// (prior knowledge) towards `h2c` services, whose backends may speak
/// nothing else; over TLS the HTTP check keeps HTTP/1.1.
fn probe_http(kind: &HealthCheckKind, protocol: UpstreamProtocol) -> Http {
    match (kind, protocol) {
        (HealthCheckKind::Grpc { .. }, _) | (HealthCheckKind::Http, UpstreamProtocol::H2c) => {
            Http::Http2
        }
        _ => Http::Http1,
    }
}

impl Probe for AnyProbe {
    async fn probe(&self, addr: SocketAddr) -> Result<(), ProbeError> {
        match self {
            AnyProbe::Http(p) => p.probe(addr).await,
            AnyProbe::Tcp(p) => p.probe(addr).await,
            AnyProbe::Grpc(p) => p.probe(addr).await,
        }
    }
}

/// Service name and backend id: a backend's identity in the table.
type Key = (Arc<str>, Arc<str>);

/// A running checker, aborted when dropped.
#[derive(Debug)]
struct Running {
    /// The backend it checks; a different `Arc` under the same key (the
    /// address now resolves elsewhere) is a new backend.
    backend: Arc<Backend>,
    /// The settings it was started with (shared with the table, not copied).
    settings: Arc<ServiceConfig>,
    task: tokio::task::JoinHandle<()>,
    /// The reconcile pass that last saw it in the table.
    seen: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps exactly one checker per checked backend of the published table.
/// Dropping it (or aborting its task) stops every checker.
#[derive(Debug)]
pub struct Supervisor {
    publisher: Arc<Publisher>,
    metrics: Metrics,
    running: HashMap<Key, Running>,
    pass: u64,
    /// Shared by all checkers, so that their checks bunch into few wake-ups.
    grid: Grid,
    /// TLS client settings per distinct `https` service setting (and the
    /// HTTP version its ALPN offers): building one parses the root store,
    /// too costly per backend.
    tls_clients: HashMap<(UpstreamTls, Http), TlsClient>,
}

type TlsClient = Result<Arc<rustls::ClientConfig>, Arc<crate::tls::TlsError>>;

impl Supervisor {
    pub fn new(publisher: Arc<Publisher>, metrics: Metrics) -> Supervisor {
        Supervisor {
            publisher,
            metrics,
            running: HashMap::new(),
            pass: 0,
            grid: Grid::new(),
            tls_clients: HashMap::new(),
        }
    }

    /// Reconcile with every new table until aborted.
    pub async fn run(mut self) {
        let mut generations = self.publisher.subscribe();
        loop {
            generations.mark_unchanged();
            let table = self.publisher.table().load_full();
            self.reconcile(&table);
            drop(table);
            if generations.changed().await.is_err() {
                return; // the publisher is gone
            }
        }
    }

    /// Checked backends now running a checker.
    pub fn checked(&self) -> usize {
        self.running.len()
    }

    /// Start, restart and stop checkers so that they match `table`.
    pub fn reconcile(&mut self, table: &Table) {
        self.pass += 1;
        let mut tls_in_use = Vec::new();
        for service in &table.services {
            let Some(check) = checks(&service.settings) else {
                continue;
            };
            if let Some(tls) = check.tls {
                tls_in_use.push((tls, probe_http(&check.config.kind, check.protocol)));
            }
            for backend in service.backends.iter().filter(|b| !b.is_draining()) {
                self.ensure(backend, &service.settings);
            }
        }
        // The rest left the table, started draining or lost their checks;
        // dropping them aborts their tasks. (When checks are switched off the
        // publisher itself marks the backends healthy again.)
        let pass = self.pass;
        self.running.retain(|_, r| r.seen == pass);
        // TLS settings no service uses any more (a reload changed them).
        self.tls_clients
            .retain(|(settings, http), _| tls_in_use.contains(&(settings, *http)));
    }

    /// Make sure `backend` has a checker running the checks `settings` asks for.
    fn ensure(&mut self, backend: &Arc<Backend>, settings: &Arc<ServiceConfig>) {
        let Some(check) = checks(settings) else {
            return;
        };
        let key = (Arc::clone(&backend.service), Arc::clone(&backend.id));
        let start = match self.running.get_mut(&key) {
            Some(r)
                if Arc::ptr_eq(&r.backend, backend)
                    && (Arc::ptr_eq(&r.settings, settings)
                        || checks(&r.settings).as_ref() == Some(&check)) =>
            {
                r.seen = self.pass;
                return;
            }
            // Same backend, new settings: restart; it keeps its health.
            Some(r) if Arc::ptr_eq(&r.backend, backend) => Start::Spread,
            _ => Start::Now,
        };
        // A backend no check has judged yet takes no traffic: check it now.
        let start = match backend.health() {
            Health::Unknown => Start::Now,
            _ => start,
        };
        // Dropping the old entry aborts its task before the new one starts.
        self.running.remove(&key);
        if let Some(task) = self.spawn(backend, &check, start) {
            let running = Running {
                backend: Arc::clone(backend),
                settings: Arc::clone(settings),
                task,
                seen: self.pass,
            };
            self.running.insert(key, running);
        }
    }

    fn spawn(
        &mut self,
        backend: &Arc<Backend>,
        check: &Checks<'_>,
        start: Start,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let config = check.config;
        let http = probe_http(&config.kind, check.protocol);
        let probe = self
            .probe_tls(backend, check.tls, http)
            .and_then(|tls| AnyProbe::new(config, backend, tls, check.protocol));
        let probe = match probe {
            Ok(probe) => probe,
            Err(e) => {
                let (service, backend) = (&*backend.service, &*backend.address);
                let reason = checker::chain(&e);
                tracing::error!(service, backend, %reason, "health check not started");
                return None;
            }
        };
        let checker = Checker {
            probe,
            backend: Arc::clone(backend),
            publisher: Arc::clone(&self.publisher),
            counters: self.counters(backend),
            interval: config.interval,
            healthy_threshold: config.healthy_threshold,
            unhealthy_threshold: config.unhealthy_threshold,
            grid: self.grid,
        };
        Some(tokio::spawn(checker.run(start)))
    }

    /// The TLS side of `backend`'s HTTP and gRPC checks, for an `https` service.
    fn probe_tls(
        &mut self,
        backend: &Backend,
        tls: Option<&UpstreamTls>,
        http: Http,
    ) -> Result<Option<ProbeTls>, ProbeError> {
        let Some(settings) = tls else {
            return Ok(None);
        };
        let client = self
            .tls_clients
            .entry((settings.clone(), http))
            .or_insert_with(|| transport::client_config(settings, http).map_err(Arc::new))
            .clone()
            .map_err(ProbeError::TlsSettings)?;
        let host = backend.named_authority.host();
        ProbeTls::new(client, settings, host).map(Some)
    }

    fn counters(&self, backend: &Backend) -> CheckCounters {
        let handle = |result: &str| {
            self.metrics.health_checks.with_label_values(&[
                &backend.service,
                &backend.address,
                result,
            ])
        };
        CheckCounters {
            success: handle("success"),
            failure: handle("failure"),
        }
    }
}

/// What a checker's probes depend on; a change of any restarts it.
#[derive(Debug, PartialEq)]
struct Checks<'a> {
    config: &'a HealthCheckConfig,
    /// The TLS settings the probes speak (HTTP and gRPC checks of an
    /// `https` service).
    tls: Option<&'a UpstreamTls>,
    protocol: UpstreamProtocol,
}

/// The checks `settings` asks for.
fn checks(settings: &ServiceConfig) -> Option<Checks<'_>> {
    let config = settings.health_check.as_ref()?;
    let speaks_http = matches!(
        config.kind,
        HealthCheckKind::Http | HealthCheckKind::Grpc { .. }
    );
    let tls = settings.protocol == UpstreamProtocol::Https && speaks_http;
    Some(Checks {
        config,
        tls: tls.then_some(&settings.tls),
        protocol: settings.protocol,
    })
}

/// Start the supervisor as a task; aborting the handle stops every checker.
pub fn spawn(publisher: Arc<Publisher>, metrics: Metrics) -> tokio::task::JoinHandle<()> {
    tokio::spawn(Supervisor::new(publisher, metrics).run())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    /// A config whose service `svc` lists `backends`, checked every `interval`
    /// (`None`: no check table).
    fn config(backends: &[&str], interval: Option<&str>) -> Arc<Config> {
        let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
        let mut text = format!("[services.svc]\nbackends = [{}]\n", list.join(", "));
        if let Some(interval) = interval {
            text.push_str(&format!(
                "[services.svc.health_check]\ninterval = \"{interval}\"\n"
            ));
        }
        let config = Config::from_toml_str(&text, Path::new("/nonexistent/switchyard.toml"));
        Arc::new(config.expect("valid test config"))
    }

    fn task_ids(s: &Supervisor) -> Vec<tokio::task::Id> {
        let mut ids: Vec<_> = s.running.values().map(|r| r.task.id()).collect();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn reconcile_keeps_one_checker_per_checked_backend() {
        // Port 1 on loopback refuses at once; the hour-long interval keeps
        // each checker to its first check.
        let (a, b) = ("127.0.0.1:1", "127.0.0.2:1");
        let publisher = Arc::new(Publisher::new(config(&[a, b], Some("1h")), Metrics::new()));
        let mut sup = Supervisor::new(Arc::clone(&publisher), Metrics::new());
        let reconcile = |sup: &mut Supervisor| sup.reconcile(&publisher.table().load_full());

        reconcile(&mut sup);
        assert_eq!(sup.checked(), 2);
        let ids = task_ids(&sup);
        reconcile(&mut sup);
        assert_eq!(task_ids(&sup), ids, "an unchanged table restarts nothing");

        publisher.apply_config(config(&[b], Some("1h")));
        reconcile(&mut sup);
        assert_eq!(sup.checked(), 1, "a left the table");
        let kept = task_ids(&sup);
        assert!(ids.contains(&kept[0]), "b's checker was restarted");

        publisher.apply_config(config(&[b], Some("30m")));
        reconcile(&mut sup);
        assert_eq!(sup.checked(), 1);
        assert_ne!(task_ids(&sup), kept, "new settings restart the checker");

        publisher.apply_config(config(&[b], None));
        reconcile(&mut sup);
        assert_eq!(sup.checked(), 0, "checks switched off");
    }

    #[tokio::test]
    async fn dropping_the_supervisor_aborts_its_checkers() {
        let publisher = Arc::new(Publisher::new(
            config(&["127.0.0.1:1"], Some("1h")),
            Metrics::new(),
        ));
        let mut sup = Supervisor::new(Arc::clone(&publisher), Metrics::new());
        sup.reconcile(&publisher.table().load_full());
        let handle = sup.running.values().map(|r| r.task.abort_handle()).next();
        drop(sup);
        let handle = handle.expect("one checker");
        for _ in 0..100 {
            if handle.is_finished() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(handle.is_finished());
    }
}
