//! Pick cost of every balancing policy at 10 and 10,000 ready backends, the
//! hash ring's rebuild at 10,000, and a check that a pick allocates nothing.
//!
//! Run: `cargo bench --bench balance` (BENCHMARKS.md has the figures).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use switchyard::backend::{Backend, BackendCounters, Source};
use switchyard::balance::sticky::StickyIndex;
use switchyard::balance::{BalancePolicy, Balancer, Build, PickContext};
use switchyard::config::{HashKey, ServiceConfig};

/// Counts allocations, to show that a pick makes none.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn backends(n: usize) -> Vec<Arc<Backend>> {
    (0..n)
        .map(|i| {
            let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080));
            let name: Arc<str> = Arc::from(addr.to_string().as_str());
            let b = Backend::new(
                Arc::from("svc"),
                Arc::clone(&name),
                name,
                addr,
                1 + (i % 3) as u32,
                Source::Config,
                BackendCounters::default(),
            );
            b.record_latency(Duration::from_micros(500 + (i as u64 % 7) * 100), false);
            Arc::new(b)
        })
        .collect()
}

fn settings(policy: BalancePolicy, factor: u32) -> ServiceConfig {
    let hash = policy == BalancePolicy::Hash;
    ServiceConfig {
        balance: policy,
        hash_key: hash.then_some(HashKey::Path),
        hash_balance_factor: factor,
        ..ServiceConfig::default()
    }
}

fn build(ready: &[Arc<Backend>], settings: &ServiceConfig) -> Balancer {
    let cursor = Arc::new(AtomicUsize::new(0));
    Balancer::new(
        settings.balance,
        &Build {
            ready,
            settings,
            cursor: &cursor,
        },
    )
}

/// Keys spread like hashed request keys.
fn key(n: u64) -> u64 {
    n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (n >> 7)
}

fn picks(c: &mut Criterion) {
    let cases = [
        ("round_robin", BalancePolicy::RoundRobin, 0),
        ("least_conn", BalancePolicy::LeastConn, 0),
        ("p2c_ewma", BalancePolicy::P2cEwma, 0),
        ("hash", BalancePolicy::Hash, 0),
        ("hash_bounded_125", BalancePolicy::Hash, 125),
    ];
    let mut group = c.benchmark_group("pick");
    for n in [10, 10_000] {
        let ready = backends(n);
        // Some load, so least_conn and the bound have something to compare.
        let _held: Vec<_> = ready.iter().step_by(3).map(|b| b.start_request()).collect();
        for (name, policy, factor) in cases {
            let settings = settings(policy, factor);
            let balancer = build(&ready, &settings);
            let mut n_key = 0u64;
            group.bench_function(format!("{name}/{n}"), |b| {
                b.iter(|| {
                    n_key += 1;
                    let cx = PickContext::new(&ready, &[]).with_key(Some(key(n_key)));
                    black_box(balancer.pick(black_box(&cx)))
                })
            });
            // No allocation on the pick path.
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            for k in 0..10_000 {
                let cx = PickContext::new(&ready, &[]).with_key(Some(key(k)));
                black_box(balancer.pick(&cx));
            }
            let allocated = ALLOCATIONS.load(Ordering::Relaxed) - before;
            println!("pick/{name}/{n}: {allocated} allocations in 10,000 picks");
            assert_eq!(allocated, 0, "{name} allocated on the pick path");
        }
        let sticky = StickyIndex::new(&ready);
        let cookie = format!("{:016x}", switchyard::balance::sticky::token(&ready[n / 2]));
        group.bench_function(format!("sticky_lookup/{n}"), |b| {
            b.iter(|| black_box(sticky.find(black_box(&cookie))))
        });
    }
    group.finish();
}

fn rebuilds(c: &mut Criterion) {
    let mut group = c.benchmark_group("rebuild");
    group.sample_size(10);
    let ready = backends(10_000);
    for (name, policy) in [
        ("hash", BalancePolicy::Hash),
        ("round_robin", BalancePolicy::RoundRobin),
    ] {
        let settings = settings(policy, 0);
        group.bench_function(format!("{name}/10000"), |b| {
            b.iter_batched(
                || (),
                |()| black_box(build(&ready, &settings)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, picks, rebuilds);
criterion_main!(benches);
