//! The one task that closes connections: idle HTTP/1 connections past
//! `upstream_idle_timeout`, unused HTTP/2 connections, and every connection
//! of a backend that left the table (once it carries no request).
//!
//! It ticks at an eighth of the idle timeout while any connection is open,
//! so a connection is closed between the timeout and an eighth later, and
//! sleeps without a timer when none is. It learns of reloads and membership
//! changes from the publisher's generation, and of backends gone from a
//! readiness-only table from the table itself.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::Pools;
use crate::backend::now_millis;
use crate::table::{Publisher, Table};

/// The shortest tick, whatever the timeout.
const MIN_TICK: Duration = Duration::from_millis(25);

impl<B> Pools<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Run until aborted.
    pub async fn run_reaper(self: Arc<Self>, publisher: Arc<Publisher>) {
        let mut generation = publisher.subscribe();
        let mut seen_table: usize = 0;
        loop {
            let woken = self.settings.opened.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if generation.has_changed().unwrap_or(false) {
                generation.borrow_and_update();
                self.settings.apply(&publisher.config().proxy);
            }
            let table = publisher.table().load_full();
            let added = self.added.swap(false, Ordering::AcqRel);
            if added || Arc::as_ptr(&table) as usize != seen_table {
                seen_table = Arc::as_ptr(&table) as usize;
                self.retire_gone(&table);
            }
            drop(table);
            let open = self.reap();
            let tick = (self.settings.idle_timeout() / 8).max(MIN_TICK);
            tokio::select! {
                _ = tokio::time::sleep(tick), if open > 0 => {}
                _ = &mut woken => {}
                changed = generation.changed() => {
                    if changed.is_err() {
                        // The publisher is gone: the process is stopping.
                        return;
                    }
                }
            }
        }
    }

    /// Retire the endpoints of backends no longer in `table`.
    fn retire_gone(&self, table: &Table) {
        let live: HashSet<usize> = table.backends().map(|b| Arc::as_ptr(b) as usize).collect();
        let gone: Vec<_> = {
            let mut endpoints = self
                .endpoints
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let gone: Vec<usize> = endpoints
                .keys()
                .filter(|k| !live.contains(k))
                .copied()
                .collect();
            gone.iter().filter_map(|k| endpoints.remove(k)).collect()
        };
        for endpoint in gone {
            self.retire(endpoint);
        }
        let endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let used: HashSet<_> = endpoints.values().map(|e| e.key.clone()).collect();
        drop(endpoints);
        self.connectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|key, _| used.contains(key));
    }

    /// Close what is due; returns how many connections remain open.
    fn reap(&self) -> usize {
        let now = now_millis();
        let timeout_ms =
            u64::try_from(self.settings.idle_timeout().as_millis()).unwrap_or(u64::MAX);
        let endpoints: Vec<_> = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut open: usize = endpoints.iter().map(|e| e.reap(now, timeout_ms)).sum();
        let mut retiring = self.retiring.lock().unwrap_or_else(PoisonError::into_inner);
        retiring.retain(|e| {
            let left = e.reap(now, timeout_ms);
            open += left;
            left > 0
        });
        open
    }
}
