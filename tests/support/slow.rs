//! A backend that is slow on every request (not per request, as the query's
//! `delay_ms` is): what `p2c_ewma` must route around. Kept as a name for the
//! tests that use it; it is a [`FakeBackend`] built with `.delay(..)`.

use std::time::Duration;

use super::FakeBackend;

/// `SlowBackend::start(name, delay)` is `FakeBackend::builder(name).delay(delay).start()`.
pub struct SlowBackend;

impl SlowBackend {
    pub async fn start(name: &str, delay: Duration) -> FakeBackend {
        FakeBackend::builder(name).delay(delay).start().await
    }
}
