//! Switchyard: an HTTP reverse-proxy load balancer with a built-in service
//! registry.
//!
//! Requests come in on the proxy listeners, are routed by host and path to a
//! service, balanced over that service's ready backends, and forwarded through
//! pooled upstream connections; everything the request path reads is one
//! immutable [`table::Table`] swapped in atomically whenever a source of
//! backends (the config, the registry), a health checker or an ejection
//! changes something.
//!
//! # Layout
//!
//! - [`config`]: the TOML contract, parsed strictly and validated with line:column errors.
//! - [`app`]: composition root — binds listeners, builds state, runs, drains.
//! - [`control`]: the control-plane thread (admin API, registry tasks, rebuilds) and its priority.
//! - [`table`]: the published snapshot and its single writer, the publisher
//!   (one merge of every source's backends, a publish generation to wait on).
//! - [`source`]: the `BackendSource` seam (config, registry): who says which backends exist.
//! - [`backend`]: one upstream instance and its live atomics (in-flight, health).
//! - [`balance`]: selection policies (round robin, least connections, p2c_ewma, hash),
//!   request keys and sticky cookies.
//! - [`overrides`]: runtime weight and drain of one backend (`PATCH .../instances/{id}`).
//! - [`health`]: active health checks — a supervisor, one checker task per backend, probes
//!   (HTTP, TCP, gRPC).
//! - [`routing`]: host and path-prefix precedence.
//! - [`request_path`]: dot segments removed, ambiguous encodings found, before routing.
//! - [`proxy`]: the request path (headers, retries, bodies, errors).
//! - [`pool`]: upstream connections — per-worker HTTP/1 keep-alive lists capped per
//!   backend, one shared HTTP/2 connection per backend, the idle reaper, the connector
//!   (TCP, TLS, ALPN).
//! - [`budget`]: each service's retry budget, kept across rebuilds.
//! - [`listener`]: accept loops, connection limits, header-read and idle timeouts, graceful close.
//! - [`log_throttle`]: one log line per interval for faults that repeat (EMFILE...).
//! - [`tls`]: rustls settings — listener certificates chosen by SNI and reloaded live
//!   ([`tls::live`]), TLS to backends.
//! - [`admin`]: /healthz, /readyz, /metrics and the /v1 API.
//! - [`metrics`]: the owned Prometheus registry and pre-resolved handles.
//! - [`registry`]: registered instances, leases, the stores (memory, file, etcd for
//!   cluster mode), the `register` client.
//! - [`reload`]: config reloads from SIGHUP, file changes and the admin API.
//! - [`shutdown`]: process signals.
//! - [`access_log`]: the access log (queue, writer thread, JSON and combined lines).
//! - [`request_id`]: `X-Request-Id`, kept or generated.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod backend;
pub mod balance;
pub mod budget;
pub mod config;
pub mod control;
pub mod health;
pub mod huge_pages;
pub mod listener;
pub mod log_throttle;
pub mod metrics;
pub mod overrides;
pub mod pool;
pub mod proxy;
pub mod registry;
pub mod reload;
pub mod request_id;
pub mod request_path;
pub mod routing;
pub mod shutdown;
pub mod source;
pub mod table;
pub mod tls;
pub mod workers;
