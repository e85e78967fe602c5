//! Where a registered instance's memory goes (issue 13, item 3): builds the
//! registry, the routing table and the metrics for N registered instances in
//! one process, exactly as `serve` wires them, and reports the live heap
//! bytes each stage adds, per instance, from a counting global allocator.
//!
//! ```sh
//! cargo run --example registry_memory -- --instances 10000             # one service
//! cargo run --example registry_memory -- --instances 3000 --services   # a service each
//! ```
//!
//! Stages, in the order a registration's memory appears in the server:
//! 1. the registry's entry (the admin handler's `register`);
//! 2. the registry snapshot the table rebuild reads;
//! 3. the table rebuild: live `Backend`s, the per-service pieces, the
//!    balancer and route table;
//! 4. a `/metrics` scrape: series the scrape creates and keeps.
//!
//! Until the change that wrote backend series at scrape time, the admin
//! handler also created each registration's series (~2.1 KiB) between 1
//! and 2, and the scrape kept ~4.1 KiB more (BENCHMARKS.md).
//!
//! "Live bytes" counts what the program asked the allocator for and has not
//! freed (no allocator overhead, no freed-but-kept pages): the floor under
//! RSS. RSS per registration is measured separately on the release binary
//! (BENCHMARKS.md).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Map;
use switchyard::config::Config;
use switchyard::metrics::Metrics;
use switchyard::registry::{Limits, Registration, Registry};
use switchyard::source::BackendSource;
use switchyard::table::Publisher;

/// The system allocator, counting live bytes and allocations.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the counters are
// plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Prints one stage's live-byte delta per instance.
struct Stages {
    instances: usize,
    last: isize,
    first: isize,
}

impl Stages {
    fn new(instances: usize) -> Stages {
        let now = live();
        Stages {
            instances,
            last: now,
            first: now,
        }
    }

    fn stage(&mut self, name: &str) {
        let now = live();
        let delta = now - self.last;
        println!(
            "{name:<44} {:>10} B  {:>8.1} B/instance",
            delta,
            delta as f64 / self.instances as f64
        );
        self.last = now;
    }

    fn total(&self) {
        let delta = self.last - self.first;
        println!(
            "{:<44} {:>10} B  {:>8.1} B/instance",
            "total",
            delta,
            delta as f64 / self.instances as f64
        );
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut instances = 10_000usize;
    let mut new_services = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--instances" => {
                instances = args.next().ok_or("--instances needs a number")?.parse()?;
            }
            "--services" => new_services = true,
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    let config = Config::from_toml_str(
        "[registry]\nmax_services = 1000000\nmax_instances = 1000000\n\
         max_instances_per_service = 1000000\n",
        std::path::Path::new("registry_memory.toml"),
    )
    .map_err(|e| format!("{e:?}"))?;
    let metrics = Metrics::new();
    let publisher = Arc::new(Publisher::new(Arc::new(config), metrics.clone()));
    let registry = Arc::new(Registry::in_memory(Vec::new()));
    publisher.add_source(Arc::clone(&registry) as Arc<dyn BackendSource>);
    let registry_config = publisher.config().registry.clone();
    // One scrape before, so the families and the process collector exist.
    drop(metrics.render(publisher.table().load().backends()));

    println!(
        "{instances} instances, {}",
        if new_services {
            "each in a service of its own"
        } else {
            "all in one service"
        }
    );
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    let mut stages = Stages::new(instances);
    let limits = Limits {
        config: &registry_config,
        declared: false,
    };
    for i in 0..instances {
        let service = match new_services {
            true => format!("s{i}"),
            false => "one".to_owned(),
        };
        let registration = Registration {
            address: format!("10.{}.{}.{}:8080", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            weight: 1,
            ttl: Some(Duration::ZERO),
            metadata: Map::new(),
        };
        registry
            .register(limits, &service, &format!("i{i}"), registration)
            .await?;
    }
    stages.stage("1. registry entries (map, lease, instance)");
    let snapshot = registry.snapshot();
    drop(snapshot);
    stages.stage("2. registry snapshot");
    publisher.republish();
    stages.stage("3. table: backends, services, balancers, routes");
    drop(metrics.render(publisher.table().load().backends()));
    stages.stage("4. series a /metrics scrape creates");
    stages.total();
    println!(
        "allocations: {:.1} per instance",
        (ALLOCATIONS.load(Ordering::Relaxed) - allocations) as f64 / instances as f64
    );
    Ok(())
}
