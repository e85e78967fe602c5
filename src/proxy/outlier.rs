//! Passive health: eject a backend that keeps failing on real traffic.
//!
//! Consecutive failures (connect errors, resets, bad answers, timeouts; 5xx
//! answers too when `eject_on_5xx`) past `consecutive_failures` eject the
//! backend for `base_ejection` × the number of its ejections (capped at 10×),
//! unless that would put more than `max_ejected_percent` of the service out.
//! An ejection only flips atomics and nudges the publisher; the sweeper
//! brings the backend back when its time is up.

use http::StatusCode;

use super::{Proxy, ProxyError};
use crate::backend::Backend;
use crate::table::Service;

/// Record one attempt's outcome on `backend`, ejecting it if it crossed the line.
pub fn observe(
    proxy: &Proxy,
    service: &Service,
    backend: &Backend,
    outcome: Result<StatusCode, &ProxyError>,
) {
    let Some(config) = service.settings.outlier.as_ref() else {
        return;
    };
    let failed = match outcome {
        Ok(status) => config.eject_on_5xx && status.is_server_error(),
        Err(e) => e.blames_backend(),
    };
    if !failed {
        if outcome.is_ok() {
            backend.record_success();
        }
        return;
    }
    if backend.record_failure() < config.consecutive_failures
        || !room_to_eject(service, config.max_ejected_percent)
    {
        return;
    }
    if backend.eject(config.base_ejection) {
        backend.counters.ejections.inc();
        tracing::warn!(service = %service.name, backend = %backend.address, "ejected after consecutive failures");
        proxy.nudge.service(&backend.service);
    }
}

/// Whether one more ejection keeps the service within `max_percent` ejected.
fn room_to_eject(service: &Service, max_percent: u32) -> bool {
    let total = service.backends.iter().filter(|b| !b.is_draining()).count();
    let ejected = service.backends.iter().filter(|b| b.is_ejected()).count();
    (ejected + 1) * 100 <= total * max_percent as usize
}
