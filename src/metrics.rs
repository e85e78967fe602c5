//! Prometheus metrics: one owned registry per App (no global registry, so tests
//! can run several Apps in one process) and typed handles.
//!
//! The request path only touches pre-resolved handles: a service's series
//! are resolved once, with its first request, and per-status-code counters
//! lazily once per code. Backends own no series at all: their counters are
//! atomics in the [`Backend`], and [`backends`] writes their families at
//! scrape time from the table's live backends (memory per registered
//! instance, issue 13).

use std::sync::{Arc, OnceLock};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::backend::Backend;

mod backends;

/// Buckets for request durations: 1 ms to 30 s.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// All metric families of one App.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests_total: IntCounterVec,
    request_duration: HistogramVec,
    pub health_checks: IntCounterVec,
    retries: IntCounterVec,
    pub registry_instances: IntGaugeVec,
    connections_open: IntGaugeVec,
    connections_parked: IntGaugeVec,
    connections_closed: IntCounterVec,
    connections_cut: IntCounterVec,
    config_reloads: IntCounterVec,
    registry_store_up: IntGauge,
    tls_reloads: IntCounterVec,
    unrouted: IntCounterVec,
    access_log_dropped: IntCounter,
    last_reload_successful: IntGauge,
    last_reload_success_time: Gauge,
}

/// `switchyard_unrouted_requests_total`: requests answered before a route
/// was found (404 no route, and the 400/431 refusals checked before routing).
#[derive(Debug)]
pub struct UnroutedMetrics {
    requests: IntCounterVec,
    /// Index = status code − 100, resolved on first use.
    by_code: Box<[OnceLock<IntCounter>]>,
}

impl UnroutedMetrics {
    pub fn count(&self, status: u16) {
        let Some(slot) = status
            .checked_sub(100)
            .and_then(|i| self.by_code.get(usize::from(i)))
        else {
            return;
        };
        slot.get_or_init(|| {
            let digits = status_digits(status);
            let code = std::str::from_utf8(&digits).unwrap_or("000");
            self.requests.with_label_values(&[code])
        })
        .inc();
    }
}

/// One listener's connection handles, resolved when it starts.
#[derive(Debug)]
pub struct ListenerMetrics {
    pub open: IntGauge,
    /// Open HTTP/1 connections parked between requests (no hyper buffers).
    pub parked: IntGauge,
    /// Closed by Switchyard: no request in flight for `idle_timeout`.
    pub closed_idle: IntCounter,
    /// Closed by Switchyard: no complete request head (or no byte at all)
    /// within `header_read_timeout`.
    pub closed_header_read: IntCounter,
    /// Closed by Switchyard: TLS handshake not done within `header_read_timeout`.
    pub closed_handshake: IntCounter,
    /// Closed by Switchyard: an HTTP/2 client flooded PING/SETTINGS frames.
    pub closed_flood: IntCounter,
    /// Dropped with requests still unanswered (only at the end of a drain).
    pub cut: IntCounter,
}

/// A service's handles, shared by every table that holds the service.
///
/// Its series appear with its first request (Prometheus's "on first use"):
/// a service created by a registration that never serves costs the
/// registry no histogram (~1.2 KiB with its labels), only this struct.
#[derive(Debug)]
pub struct ServiceMetrics {
    service: Arc<str>,
    requests_total: IntCounterVec,
    request_duration: HistogramVec,
    retries_total: IntCounterVec,
    series: OnceLock<ServiceSeries>,
}

/// The series of a service that has served.
#[derive(Debug)]
struct ServiceSeries {
    duration: Histogram,
    retries: IntCounter,
    /// Index = status code − 100, each resolved on first use.
    by_code: Box<[OnceLock<IntCounter>]>,
}

impl ServiceMetrics {
    fn series(&self) -> &ServiceSeries {
        self.series.get_or_init(|| ServiceSeries {
            duration: self.request_duration.with_label_values(&[&self.service]),
            retries: self.retries_total.with_label_values(&[&self.service]),
            by_code: (100..600).map(|_| OnceLock::new()).collect(),
        })
    }

    /// Count one answered request with this status code.
    pub fn count_response(&self, status: u16) {
        let series = self.series();
        let Some(slot) = status
            .checked_sub(100)
            .and_then(|i| series.by_code.get(usize::from(i)))
        else {
            return;
        };
        slot.get_or_init(|| {
            let digits = status_digits(status);
            let code = std::str::from_utf8(&digits).unwrap_or("000");
            self.requests_total
                .with_label_values(&[&self.service, code])
        })
        .inc();
    }

    /// Record one request's duration, from its arrival to its response's end.
    pub fn observe_duration(&self, seconds: f64) {
        self.series().duration.observe(seconds);
    }

    /// Count one retried attempt.
    pub fn count_retry(&self) {
        self.series().retries.inc();
    }
}

/// The three ASCII digits of a status code.
fn status_digits(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let m = Metrics {
            requests_total: counter_vec(
                "switchyard_requests_total",
                "Requests answered, by service and status code.",
                &["service", "code"],
            ),
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "switchyard_request_duration_seconds",
                    "Time from request received to response finished.",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["service"],
            )
            .expect("static metric definition"),
            health_checks: counter_vec(
                "switchyard_health_checks_total",
                "Active health checks, by result.",
                &["service", "backend", "result"],
            ),
            retries: counter_vec(
                "switchyard_retries_total",
                "Retried attempts.",
                &["service"],
            ),
            registry_instances: gauge_vec(
                "switchyard_registry_instances",
                "Registered instances (configured backends not counted).",
                &["service"],
            ),
            connections_open: gauge_vec(
                "switchyard_connections_open",
                "Open client connections, by listener.",
                &["listener"],
            ),
            connections_parked: gauge_vec(
                "switchyard_connections_parked",
                "Open HTTP/1 client connections parked between requests (no request in flight, no buffers held), by listener.",
                &["listener"],
            ),
            connections_closed: counter_vec(
                "switchyard_connections_closed_total",
                "Client connections Switchyard closed on a timer, by listener and reason.",
                &["listener", "reason"],
            ),
            connections_cut: counter_vec(
                "switchyard_connections_cut_total",
                "Client connections dropped with requests still unanswered, by listener.",
                &["listener"],
            ),
            config_reloads: counter_vec(
                "switchyard_config_reloads_total",
                "Config reloads, by result.",
                &["result"],
            ),
            registry_store_up: IntGauge::new(
                "switchyard_registry_store_up",
                "1 while the registry's store answers (always 1 for the memory and file stores).",
            )
            .expect("static metric definition"),
            tls_reloads: counter_vec(
                "switchyard_tls_reloads_total",
                "Reloads of a TLS listener's certificates (config reload or file change), by result.",
                &["result"],
            ),
            unrouted: counter_vec(
                "switchyard_unrouted_requests_total",
                "Requests answered before a route was found (404 no route, 400, 431), by status code.",
                &["code"],
            ),
            access_log_dropped: IntCounter::new(
                "switchyard_access_log_dropped_total",
                "Access-log lines dropped: the writer's queue was full or the write failed.",
            )
            .expect("static metric definition"),
            last_reload_successful: IntGauge::new(
                "switchyard_config_last_reload_successful",
                "1 if the last config load or reload succeeded, 0 if it was rejected.",
            )
            .expect("static metric definition"),
            last_reload_success_time: Gauge::new(
                "switchyard_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful config load or reload.",
            )
            .expect("static metric definition"),
            registry,
        };
        // The start-up load is the first successful one.
        m.last_reload_successful.set(1);
        m.last_reload_success_time.set(unix_now());
        let build_info = gauge_vec(
            "switchyard_build_info",
            "Always 1; the version label names the build.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Both results exist from the start, so `rate()` and alerts see a 0.
        for result in ["ok", "error"] {
            m.config_reloads.with_label_values(&[result]);
        }
        for result in ["success", "failure"] {
            m.tls_reloads.with_label_values(&[result]);
        }
        for collector in m.collectors().chain(std::iter::once(
            Box::new(build_info) as Box<dyn prometheus::core::Collector>
        )) {
            m.registry
                .register(collector)
                .expect("metric names are unique");
        }
        m.register_process_collector();
        m
    }

    /// The standard `process_*` metrics (CPU, memory, open fds, start time), from /proc.
    #[cfg(target_os = "linux")]
    fn register_process_collector(&self) {
        let collector = prometheus::process_collector::ProcessCollector::for_self();
        if let Err(e) = self.registry.register(Box::new(collector)) {
            tracing::warn!(error = %e, "process metrics unavailable");
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn register_process_collector(&self) {}

    fn collectors(&self) -> impl Iterator<Item = Box<dyn prometheus::core::Collector>> {
        let list: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.requests_total.clone()),
            Box::new(self.request_duration.clone()),
            Box::new(self.health_checks.clone()),
            Box::new(self.retries.clone()),
            Box::new(self.registry_instances.clone()),
            Box::new(self.connections_open.clone()),
            Box::new(self.connections_parked.clone()),
            Box::new(self.connections_closed.clone()),
            Box::new(self.connections_cut.clone()),
            Box::new(self.config_reloads.clone()),
            Box::new(self.registry_store_up.clone()),
            Box::new(self.tls_reloads.clone()),
            Box::new(self.unrouted.clone()),
            Box::new(self.access_log_dropped.clone()),
            Box::new(self.last_reload_successful.clone()),
            Box::new(self.last_reload_success_time.clone()),
        ];
        list.into_iter()
    }

    /// A service's handles; its series appear with its first request.
    pub fn service(&self, service: &Arc<str>) -> Arc<ServiceMetrics> {
        Arc::new(ServiceMetrics {
            service: Arc::clone(service),
            requests_total: self.requests_total.clone(),
            request_duration: self.request_duration.clone(),
            retries_total: self.retries.clone(),
            series: OnceLock::new(),
        })
    }

    /// Drop the series of a backend that left the table for good: its
    /// health-check counters (the other backend families are written from
    /// the table's backends at each scrape, so they go with the backend).
    pub fn forget_backend(&self, service: &str, backend: &str) {
        for result in ["success", "failure"] {
            let _ = self
                .health_checks
                .remove_label_values(&[service, backend, result]);
        }
    }

    /// Drop a service's request series once it has left the table.
    pub fn forget_service(&self, service: &ServiceMetrics) {
        let Some(series) = service.series.get() else {
            return;
        };
        let name: &str = &service.service;
        let _ = self.request_duration.remove_label_values(&[name]);
        let _ = self.retries.remove_label_values(&[name]);
        for (slot, status) in series.by_code.iter().zip(100u16..) {
            if slot.get().is_some() {
                let digits = status_digits(status);
                let code = std::str::from_utf8(&digits).unwrap_or("000");
                let _ = self.requests_total.remove_label_values(&[name, code]);
            }
        }
    }

    /// Set `switchyard_registry_instances` to these per-service counts of
    /// registered instances; services not listed lose their series.
    pub fn set_registry_instances<'a>(&self, counts: impl Iterator<Item = (&'a str, usize)>) {
        self.registry_instances.reset();
        for (service, count) in counts {
            self.registry_instances
                .with_label_values(&[service])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// `switchyard_registry_store_up`, set at scrape time.
    pub fn set_store_up(&self, up: bool) {
        self.registry_store_up.set(i64::from(up));
    }

    /// A listener's handles; every series exists from the start at 0.
    pub fn listener(&self, listener: &str) -> Arc<ListenerMetrics> {
        let closed = |reason: &str| {
            self.connections_closed
                .with_label_values(&[listener, reason])
        };
        Arc::new(ListenerMetrics {
            open: self.connections_open.with_label_values(&[listener]),
            parked: self.connections_parked.with_label_values(&[listener]),
            closed_idle: closed("idle_timeout"),
            closed_header_read: closed("header_read_timeout"),
            closed_handshake: closed("handshake_timeout"),
            closed_flood: closed("control_frame_flood"),
            cut: self.connections_cut.with_label_values(&[listener]),
        })
    }

    /// Count a reload; also sets `switchyard_config_last_reload_successful`
    /// and, on success, its timestamp.
    pub fn count_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads.with_label_values(&[result]).inc();
        self.last_reload_successful.set(i64::from(ok));
        if ok {
            self.last_reload_success_time.set(unix_now());
        }
    }

    /// `switchyard_unrouted_requests_total`'s handles.
    pub fn unrouted(&self) -> Arc<UnroutedMetrics> {
        Arc::new(UnroutedMetrics {
            requests: self.unrouted.clone(),
            by_code: (100..600).map(|_| OnceLock::new()).collect(),
        })
    }

    /// `switchyard_access_log_dropped_total`.
    pub fn access_log_dropped(&self) -> IntCounter {
        self.access_log_dropped.clone()
    }

    /// `switchyard_tls_reloads_total{result="success"|"failure"}`.
    pub fn count_tls_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.tls_reloads.with_label_values(&[result]).inc();
    }

    /// Render the text exposition: the registry's families, then the
    /// backend families from `backends`' live state.
    pub fn render<'a>(&self, backends: impl Iterator<Item = &'a Arc<Backend>>) -> String {
        let mut out = Vec::with_capacity(8192);
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut out).is_err() {
            return String::new();
        }
        let mut text = String::from_utf8(out).unwrap_or_default();
        backends::render(backends, &mut text);
        text
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_become_labels() {
        let m = Metrics::new();
        let s = m.service(&Arc::from("users"));
        s.count_response(200);
        s.count_response(200);
        s.count_response(503);
        s.count_response(42); // out of range: ignored, not a panic
        let text = m.render(std::iter::empty());
        assert!(text.contains(r#"switchyard_requests_total{code="200",service="users"} 2"#));
        assert!(text.contains(r#"switchyard_requests_total{code="503",service="users"} 1"#));
        assert!(text.contains("switchyard_build_info{version="));
    }

    #[test]
    fn reloads_are_counted_by_result() {
        let m = Metrics::new();
        m.count_reload(true);
        m.count_reload(false);
        m.count_reload(false);
        let text = m.render(std::iter::empty());
        assert!(text.contains(r#"switchyard_config_reloads_total{result="error"} 2"#));
        assert!(text.contains(r#"switchyard_config_reloads_total{result="ok"} 1"#));
    }
}
