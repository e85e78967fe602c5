//! Shared end-to-end test support, one module per concern. Everything
//! listens on `127.0.0.1:0`; every wait is bounded by a timeout; spawned
//! processes are killed when their handle drops.
//!
//! Test files say `use support::*;`: every module's public items are
//! re-exported here (each re-export allows being unused: no test binary
//! uses them all), so a helper's path does not depend on where it lives.
#![allow(dead_code)]

/// The admin API as tests read it: metrics, readiness, reload.
pub mod admin_api;
/// Fake backends: the scriptable [`FakeBackend`], [`ResetBackend`].
pub mod backends;
/// The `switchyard` binary as a child process.
pub mod binary;
/// Request and response bodies.
pub mod bodies;
/// HTTP client helpers.
pub mod client;
/// Config text and config files.
pub mod config_file;
/// A backend that counts its connections (the upstream pool tests).
pub mod conn_backend;
/// The app run in-process.
pub mod in_process;
/// Access-log files.
pub mod logs;
/// Certificates and TLS clients.
pub mod pki;
/// A Prometheus text parser.
pub mod prom;
/// `promtool check metrics`.
pub mod promtool;
/// Python scripts as real clients and servers.
pub mod python;
/// Raw TCP connections and response parsing.
pub mod raw;
/// The registry's admin API.
pub mod registry_api;
/// A backend slow on every request.
pub mod slow;
/// External tools: one rule for a missing one (fail in CI, skip elsewhere).
pub mod tools;
/// Bounded waits on observable events.
pub mod wait;

#[allow(unused_imports)]
pub use admin_api::*;
#[allow(unused_imports)]
pub use backends::*;
#[allow(unused_imports)]
pub use binary::*;
#[allow(unused_imports)]
pub use bodies::*;
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use config_file::*;
#[allow(unused_imports)]
pub use in_process::*;
#[allow(unused_imports)]
pub use logs::*;
#[allow(unused_imports)]
pub use prom::*;
#[allow(unused_imports)]
pub use raw::*;
#[allow(unused_imports)]
pub use registry_api::*;
#[allow(unused_imports)]
pub use wait::*;
