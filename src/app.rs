//! Composition root: binds listeners, builds the shared state, runs until
//! shutdown, then drains.
//!
//! `App::bind` does everything that can fail at start-up (binding sockets,
//! loading TLS certificates, loading the registry's store)
//! so that `main` can report it in one line; `App::run` serves until the
//! given shutdown future resolves, then stops accepting, turns /readyz to
//! 503, and waits up to `drain_timeout` for open connections to finish.
//! Tests start the real thing on `127.0.0.1:0` through the same two calls.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::access_log::AccessLogSwitch;
use crate::admin::{AdminService, AdminState};
use crate::config::{Config, StoreConfig};
use crate::control::ControlPlane;
use crate::listener::{self, ConnTimeouts, Listener};
use crate::metrics::Metrics;
use crate::proxy::upstream::UpstreamPools;
use crate::proxy::{Proxy, ProxyService};
use crate::registry::{self, Registry, StoreError};
use crate::reload::Reloader;
use crate::source::BackendSource;
use crate::table::Publisher;
use crate::tls::live::{CertReloader, ListenerCerts};
use crate::tls::{self, TlsError};
use crate::workers::{self, MakeRuntime, Workers};

/// Admin connections allowed at once (the admin API is for operators and scrapers).
const ADMIN_MAX_CONNECTIONS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The registry's store cannot be read (the message names the file).
    #[error(transparent)]
    Registry(#[from] StoreError),
    /// A TLS listener's certificate or key is unreadable or invalid (the
    /// message names the file).
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot start the control-plane thread: {0}")]
    Control(#[source] io::Error),
    #[error("cannot start the proxy's worker threads: {0}")]
    Workers(#[source] io::Error),
    /// Cluster mode: the shared store did not answer within `dial_timeout`
    /// (the message names its endpoints).
    #[error("cannot load the registry: {0}")]
    SharedStore(#[from] crate::registry::SharedError),
    #[error("cannot open the access log: {0}")]
    AccessLog(#[source] io::Error),
}

/// A bound, not yet serving, Switchyard.
#[derive(Debug)]
pub struct App {
    config: Arc<Config>,
    metrics: Metrics,
    publisher: Arc<Publisher>,
    /// Connections to backends, beside the table rather than in it.
    pools: Arc<UpstreamPools>,
    registry: Arc<Registry>,
    reloader: Reloader,
    /// The TLS listeners' certificates: reloaded with the config and when
    /// their files change.
    certs: Arc<CertReloader>,
    proxy_sockets: Vec<TcpListener>,
    /// `[[proxy.tls]]` sockets with their certificates, loaded at bind.
    tls_sockets: Vec<(TcpListener, Arc<ServerConfig>)>,
    /// One connection builder for every proxy listener, plain or TLS.
    http_builders: Arc<listener::HttpBuilders>,
    admin_socket: TcpListener,
    ready: Arc<AtomicBool>,
    /// Admin API, registry tasks, rebuilds: off the proxy's workers.
    control: ControlPlane,
    /// Cluster mode: the etcd revision the registry was loaded at.
    follow_from: Option<i64>,
    access_log: Arc<AccessLogSwitch>,
    /// The proxy's workers beyond the thread `run` is called on.
    workers: Workers,
}

impl App {
    /// Bind every listener and build the first table.
    pub async fn bind(config: Config) -> Result<App, StartError> {
        let config = Arc::new(config);
        let bind = |addr: SocketAddr| {
            listener::bind(addr).map_err(|source| StartError::Bind { addr, source })
        };
        let proxy_sockets = config
            .proxy
            .listen
            .iter()
            .map(|&addr| bind(addr))
            .collect::<Result<Vec<_>, _>>()?;
        let mut live_certs = Vec::with_capacity(config.proxy.tls.len());
        let tls_sockets = config
            .proxy
            .tls
            .iter()
            .map(|t| {
                let (server_config, certs) = tls::server_config(t)?;
                let socket = bind(t.listen)?;
                let bound = socket.local_addr().unwrap_or(t.listen);
                let listen = t.listen;
                live_certs.push(ListenerCerts {
                    listen,
                    bound,
                    certs,
                });
                Ok((socket, server_config))
            })
            .collect::<Result<Vec<_>, StartError>>()?;
        let admin_socket = bind(config.admin.listen)?;
        let control = ControlPlane::start(config.admin.priority).map_err(StartError::Control)?;
        let (registry, follow_from) = open_registry(
            &config,
            &proxy_sockets,
            &tls_sockets,
            &admin_socket,
            &control,
        )
        .await?;
        let http_builders = Arc::new(listener::http_builders(&config.proxy));
        let metrics = Metrics::new();
        let access_log = Arc::new(AccessLogSwitch::new(metrics.access_log_dropped()));
        access_log
            .apply(config.access_log.as_ref())
            .map_err(StartError::AccessLog)?;
        let publisher = Arc::new(Publisher::new(Arc::clone(&config), metrics.clone()));
        let pools = Arc::new(UpstreamPools::new(&config.proxy));
        publisher.add_source(Arc::clone(&registry) as Arc<dyn BackendSource>);
        registry.set_routing_hook(RoutingToTable(Arc::downgrade(&publisher)));
        let certs = Arc::new(CertReloader::new(live_certs, metrics.clone()));
        let reloader = Reloader::new(Arc::clone(&publisher), metrics.clone(), config.path.clone())
            .with_certificates(Arc::clone(&certs))
            .with_access_log(Arc::clone(&access_log));
        Ok(App {
            config,
            metrics,
            publisher,
            pools,
            registry,
            reloader,
            certs,
            proxy_sockets,
            tls_sockets,
            http_builders,
            admin_socket,
            ready: Arc::new(AtomicBool::new(false)),
            control,
            follow_from,
            access_log,
            workers: Workers::default(),
        })
    }

    /// Start the proxy's workers beyond the calling thread (`[proxy]
    /// workers`, 0: one per core), each on a runtime from `make`; their
    /// accept loops start with `run`. Without this call the thread `run` is
    /// called on is the only worker.
    pub fn start_workers(&mut self, make: MakeRuntime) -> Result<(), StartError> {
        let extra = workers::count(self.config.proxy.workers).saturating_sub(1);
        self.workers = Workers::start(extra, make).map_err(StartError::Workers)?;
        Ok(())
    }

    /// The plain proxy listeners' real addresses, in config order.
    pub fn proxy_addrs(&self) -> Vec<SocketAddr> {
        self.proxy_sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// The TLS listeners' real addresses, in config order.
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.tls_sockets
            .iter()
            .filter_map(|(s, _)| s.local_addr().ok())
            .collect()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_socket
            .local_addr()
            .unwrap_or(self.config.admin.listen)
    }

    /// A handle to trigger reloads.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Reload the config on every SIGHUP. The listener and the reloads run
    /// on the control thread, like every other reload, so parsing a config
    /// and rebuilding the table never take a proxy worker's time.
    pub fn reload_on_hangup(&self) {
        self.control
            .enter(|| crate::shutdown::reload_on_hangup(self.reloader()));
    }

    /// Reopen the access log file on every SIGUSR1 (logrotate's signal).
    pub fn reopen_log_on_user1(&self) {
        let access_log = Arc::clone(&self.access_log);
        self.control
            .enter(|| crate::shutdown::reopen_log_on_user1(access_log));
    }

    /// Serve until `shutdown` resolves, then drain and return.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let (stop_proxy, proxy_stopped) = watch::channel(false);
        let (stop_admin, admin_stopped) = watch::channel(false);
        let backends = self
            .config
            .services
            .values()
            .map(|s| s.backends.len())
            .sum();
        let max_connections =
            listener::budget_connections(self.config.proxy.max_connections, backends)
                .max_connections;
        let permits = Arc::new(Semaphore::new(max_connections));
        self.spawn_proxy_listeners(&permits, proxy_stopped);
        let admin_permits = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
        self.spawn_admin_listener(&admin_permits, admin_stopped);
        let _watcher = self.control.enter(|| self.reloader.watch_file());
        self.control.enter(|| self.certs.watch());
        let coalescer = self
            .control
            .spawn(Arc::clone(&self.publisher).run_coalescer());
        let sweeper = self
            .control
            .spawn(Arc::clone(&self.publisher).run_sweeper());
        let reaper = self
            .control
            .spawn(Arc::clone(&self.pools).run_reaper(Arc::clone(&self.publisher)));
        let health = crate::health::spawn(Arc::clone(&self.publisher), self.metrics.clone());
        let registry_tasks = self.spawn_registry_tasks();
        self.ready.store(true, Ordering::Relaxed);

        shutdown.await;
        self.ready.store(false, Ordering::Relaxed);
        tracing::info!(drain_timeout = ?self.config.proxy.drain_timeout, "shutting down: draining connections");
        let _ = stop_proxy.send(true);
        let timeout = self.config.proxy.drain_timeout;
        if !listener::drained(&permits, max_connections, timeout).await {
            tracing::warn!("drain timeout reached; closing the remaining connections");
        }
        let _ = stop_admin.send(true);
        listener::drained(
            &admin_permits,
            ADMIN_MAX_CONNECTIONS,
            std::time::Duration::from_secs(1),
        )
        .await;
        coalescer.abort();
        sweeper.abort();
        reaper.abort();
        health.abort(); // dropping the supervisor aborts every checker
        registry_tasks.iter().for_each(|task| task.abort());
        if let Err(e) = self.registry.flush().await {
            tracing::error!(error = %e, "could not save the registry at shutdown");
        }
        let access_log = Arc::clone(&self.access_log);
        let _ = tokio::task::spawn_blocking(move || {
            access_log.flush(std::time::Duration::from_secs(2))
        })
        .await;
        tracing::info!("stopped");
        Ok(())
    }

    /// Lease expiry, join notifications, the store writer, the drain sweeper.
    fn spawn_registry_tasks(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let control = &self.control;
        let registry = &self.registry;
        let mut tasks = vec![
            control.spawn(Arc::clone(registry).run_expiry()),
            control.spawn(Arc::clone(registry).run_notifier()),
            control.spawn(Arc::clone(&self.publisher).run_drain_sweeper()),
            control.spawn(
                Arc::clone(&self.publisher).follow(Arc::clone(registry) as Arc<dyn BackendSource>),
            ),
        ];
        match self.follow_from {
            // etcd took every write before it was answered: nothing to save.
            Some(revision) => {
                tasks.push(control.spawn(
                    Arc::clone(registry).run_follower(self.config.registry.clone(), revision),
                ))
            }
            None => tasks.push(control.spawn(Arc::clone(registry).run_writer())),
        }
        tasks
    }

    /// Moves the proxy sockets, plain and TLS, into their accept loops: when
    /// those end at shutdown the sockets close, so new connections are
    /// refused at once. TLS listeners get their own `Proxy` only to say
    /// `X-Forwarded-Proto: https`.
    fn spawn_proxy_listeners(&mut self, permits: &Arc<Semaphore>, stopped: watch::Receiver<bool>) {
        let plain = Arc::new(self.proxy_settings(false));
        for socket in std::mem::take(&mut self.proxy_sockets) {
            self.spawn_proxy(socket, &plain, None, permits, &stopped);
        }
        let tls = Arc::new(self.proxy_settings(true));
        for (socket, server_config) in std::mem::take(&mut self.tls_sockets) {
            let acceptor = TlsAcceptor::from(server_config);
            self.spawn_proxy(socket, &tls, Some(acceptor), permits, &stopped);
        }
    }

    fn proxy_settings(&self, tls: bool) -> Proxy {
        let cfg = &self.config.proxy;
        Proxy {
            table: Arc::clone(self.publisher.table()),
            nudge: self.publisher.readiness_nudge(),
            pools: Arc::clone(&self.pools),
            trusted_proxies: cfg.trusted_proxies.clone(),
            body_idle_timeout: cfg.body_idle_timeout,
            max_body_bytes: cfg.max_body_bytes,
            max_header_bytes: cfg.max_header_bytes,
            tls,
            access_log: Arc::clone(&self.access_log),
            unrouted: self.metrics.unrouted(),
        }
    }

    fn spawn_proxy(
        &self,
        socket: TcpListener,
        proxy: &Arc<Proxy>,
        tls: Option<TlsAcceptor>,
        permits: &Arc<Semaphore>,
        stopped: &watch::Receiver<bool>,
    ) {
        let Ok(addr) = socket.local_addr() else {
            return;
        };
        let cfg = &self.config.proxy;
        match tls {
            Some(_) => tracing::info!("tls listening on {addr}"),
            None => tracing::info!("proxy listening on {addr}"),
        }
        let proxy = Arc::clone(proxy);
        let l = Listener {
            socket,
            builders: Arc::clone(&self.http_builders),
            make_service: move |peer| ProxyService::new(Arc::clone(&proxy), peer),
            permits: Arc::clone(permits),
            metrics: self.metrics.listener(&addr.to_string()),
            timeouts: ConnTimeouts {
                header_read: cfg.header_read_timeout,
                idle: cfg.idle_timeout,
            },
            shutdown: stopped.clone(),
            tls,
        };
        l.spawn_on_workers(&self.workers);
        tokio::spawn(l.run());
    }

    fn spawn_admin_listener(&self, permits: &Arc<Semaphore>, stopped: watch::Receiver<bool>) {
        let addr = self.admin_addr();
        let Ok(socket) = clone_listener(&self.admin_socket) else {
            return;
        };
        let state = Arc::new(AdminState {
            publisher: Arc::clone(&self.publisher),
            registry: Arc::clone(&self.registry),
            metrics: self.metrics.clone(),
            reloader: self.reloader.clone(),
            ready: Arc::clone(&self.ready),
            listen: addr,
        });
        tracing::info!("admin listening on {addr}");
        let builders = Arc::new(listener::http_builders(&self.config.proxy));
        let l = Listener {
            socket,
            builders,
            make_service: move |_peer| AdminService::new(Arc::clone(&state)),
            permits: Arc::clone(permits),
            metrics: self.metrics.listener(&addr.to_string()),
            timeouts: ConnTimeouts {
                header_read: self.config.proxy.header_read_timeout,
                idle: self.config.proxy.idle_timeout,
            },
            shutdown: stopped,
            tls: None,
        };
        self.control.spawn(l.run());
    }
}

/// The registry, loaded from its store, told every address Switchyard listens
/// on (those are never registrable: a backend there would be a loop); in
/// cluster mode also the etcd revision to follow from.
async fn open_registry(
    config: &Config,
    proxy: &[TcpListener],
    tls: &[(TcpListener, Arc<ServerConfig>)],
    admin: &TcpListener,
    control: &ControlPlane,
) -> Result<(Arc<Registry>, Option<i64>), StartError> {
    let mut own: Vec<SocketAddr> = proxy
        .iter()
        .chain(tls.iter().map(|(s, _)| s))
        .chain(std::iter::once(admin))
        .filter_map(|s| s.local_addr().ok())
        .collect();
    own.extend(config.proxy.tls.iter().map(|t| t.listen));
    if let StoreConfig::Etcd(etcd) = &config.registry.store {
        // Connected on the control thread: the client's connection tasks
        // (tonic spawns them where it connects) then run there, so etcd
        // traffic (writes, heartbeats, the watch) never takes a proxy
        // worker's turn (59 % of a node's heartbeat CPU was on the workers).
        let etcd = etcd.clone();
        let store = control
            .spawn(async move { registry::EtcdStore::connect(&etcd).await })
            .await
            .map_err(|e| StartError::Control(io::Error::other(e)))?
            .map_err(registry::SharedError::from)?;
        let store: Arc<dyn registry::SharedStore> = Arc::new(store);
        let (registry, revision) = Registry::open_cluster(store, &config.registry, own).await?;
        return Ok((Arc::new(registry), Some(revision)));
    }
    let store = registry::store::from_config(&config.registry.store)?;
    Ok((
        Arc::new(Registry::open(store, &config.registry, own)?),
        None,
    ))
}

/// Tells the table, synchronously, what the registry's departures and lease
/// changes mean for routing (weak: the publisher holds the registry).
struct RoutingToTable(std::sync::Weak<Publisher>);

impl registry::RoutingHook for RoutingToTable {
    fn left(&self, service: &str, id: &str) {
        if let Some(publisher) = self.0.upgrade() {
            publisher.instance_left(service, id);
        }
    }

    fn lease(&self, service: &str, id: &str, expires_at: Option<std::time::SystemTime>) {
        if let Some(publisher) = self.0.upgrade() {
            publisher.instance_lease(service, id, expires_at);
        }
    }
}

/// A second handle on a bound socket, so `App` keeps reporting its address
/// while the accept loop owns the other.
fn clone_listener(socket: &TcpListener) -> io::Result<TcpListener> {
    TcpListener::from_std(listener::duplicate(socket)?)
}
