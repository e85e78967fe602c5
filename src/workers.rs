//! The proxy's workers: one single-threaded runtime per worker thread
//! (thread-per-core, as HAProxy's threads and NGINX's worker processes).
//!
//! `[proxy] workers = N` (0: one per core) gives N workers: the main thread
//! is worker 0 and N - 1 threads are started here. Every worker runs its own
//! accept loop on every proxy listener (the same socket, so whichever worker
//! is free first takes a new connection), and a connection, the tasks it
//! spawns and the upstream connections it dials stay on the worker that
//! accepted it. Before, more than one worker meant tokio's multi-threaded,
//! work-stealing scheduler: every task wake-up was an atomic hand-off that
//! could cross cores, the I/O driver was shared, and two workers served
//! fewer requests than one (BENCHMARKS.md § Data plane).
//!
//! The binary makes each worker's runtime (`main.rs`: single-threaded, and it
//! hands freed memory back to the OS when the worker goes idle, which needs
//! the allocator's own call).

use std::future::Future;
use std::io;

use tokio::runtime::{Handle, Runtime};
use tokio::sync::oneshot;

/// How many workers `[proxy] workers` asks for (0: one per core).
pub fn count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Makes one worker's runtime (single-threaded).
pub type MakeRuntime = fn() -> io::Result<Runtime>;

/// The workers beyond the main thread. Dropping this stops their runtimes,
/// cancelling whatever still runs there (after the drain); the threads are
/// not joined, as dropping may happen on a runtime thread, which must not
/// block: each ends on its own once its runtime has shut down.
#[derive(Debug, Default)]
pub struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Start `extra` worker threads, each with a runtime from `make`.
    pub fn start(extra: usize, make: MakeRuntime) -> io::Result<Workers> {
        let mut workers = Workers::default();
        for index in 1..=extra {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("switchyard-worker-{index}"))
                .spawn(move || match make() {
                    Ok(runtime) => {
                        let _ = handle_tx.send(Ok(runtime.handle().clone()));
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                    }
                })?;
            let handle = handle_rx
                .recv()
                .map_err(|_| io::Error::other("a worker thread ended before it started"))??;
            workers.handles.push(handle);
            workers.stops.push(stop);
        }
        Ok(workers)
    }

    /// Run `task` on every extra worker; `make` builds each worker's copy
    /// (it runs on the calling thread; the future is polled on the worker,
    /// so whatever it registers with the runtime belongs to that worker).
    pub fn spawn_each<F>(&self, mut make: impl FnMut() -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        for handle in &self.handles {
            handle.spawn(make());
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}
