//! The request path's side of the upstream pool ([`crate::pool`]): this
//! worker thread's idle connections, taken and given back without a lock or
//! a channel hop.

use std::cell::RefCell;
use std::sync::Arc;

use super::body::UpstreamBody;
use crate::backend::Backend;
use crate::pool::{Checkout, Lease, Pools, Worker};
use crate::table::Service;

/// The pools of the proxy's requests.
pub type UpstreamPools = Pools<UpstreamBody>;

/// A connection checked out for one request.
pub type Conn = crate::pool::Conn<UpstreamBody>;

/// An HTTP/1 connection carrying one request until its response ends.
pub type ConnLease = Lease<UpstreamBody>;

thread_local! {
    static WORKER: RefCell<Worker<UpstreamBody>> = RefCell::new(Worker::default());
}

/// A connection to `backend`: reused when one is at hand, else dialed. A
/// retry passes `reuse_h1 = false`: the attempt before it may have failed
/// on a connection the backend dropped, and when a backend restarts every
/// idle connection to it is dead, so the retry goes out on a new one.
pub async fn connect(
    pools: &UpstreamPools,
    service: &Service,
    backend: &Arc<Backend>,
    reuse_h1: bool,
) -> Result<Conn, crate::pool::DialError> {
    let checkout = WORKER.try_with(|worker| match worker.try_borrow_mut() {
        Ok(mut worker) => {
            worker.checkout(pools, &service.name, &service.settings, backend, reuse_h1)
        }
        Err(_) => Checkout::Dial(pools.endpoint(&service.name, &service.settings, backend)),
    });
    let checkout = checkout.unwrap_or_else(|_| {
        // This thread is shutting down: no list to take from.
        Checkout::Dial(pools.endpoint(&service.name, &service.settings, backend))
    });
    match checkout {
        Checkout::Ready(conn) => Ok(conn),
        // Boxed: a dial's state (TCP connect, TLS and HTTP/2 handshakes)
        // runs to kilobytes that every request's future would otherwise
        // carry, and copy at each move; dials are the rare case.
        Checkout::Dial(endpoint) => Box::pin(endpoint.connect()).await,
    }
}

/// Give a connection whose response ended cleanly back to this worker.
pub fn release(lease: ConnLease) {
    // A thread shutting down (or a re-entrant call, which cannot happen)
    // closes the connection instead.
    let _ = WORKER.try_with(|worker| {
        if let Ok(mut worker) = worker.try_borrow_mut() {
            worker.release(lease);
        }
    });
}
