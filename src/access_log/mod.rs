//! The access log (`[access_log]`): one line per request, proxied or answered
//! by Switchyard itself, in JSON or NGINX's `combined` format, to stdout,
//! stderr or a file.
//!
//! The request path never formats or writes: it fills an [`Entry`] (one box
//! per request, only while the log is on) and hands it to a bounded queue;
//! a writer thread ([`writer`]) formats ([`line`]) and writes in batches.
//! When the queue is full the line is dropped and counted in
//! `switchyard_access_log_dropped_total`, so a slow disk or a blocked stdout
//! never holds a request back. [`AccessLogSwitch`] holds the log in force:
//! with the log off, the request path pays one atomic load.

pub mod line;
mod writer;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use http::header::{HeaderValue, HOST, REFERER, USER_AGENT};
use http::{Method, Request, Uri, Version};
use prometheus::IntCounter;

use crate::config::AccessLogConfig;

/// Lines that may wait for the writer; beyond this they are dropped.
const QUEUE_LINES: usize = 16 * 1024;

/// What the log line of an unanswered request says (the client went away
/// before Switchyard had an answer; NGINX's 499).
const CLIENT_CLOSED: u16 = 499;

/// One request, as the log line will tell it.
#[derive(Debug)]
pub struct Entry {
    /// When the request arrived, on the wall clock: worked out by the
    /// writer from `arrived` (one clock read per batch, none per request).
    pub time: SystemTime,
    /// When the request arrived.
    pub arrived: Instant,
    pub client: SocketAddr,
    pub method: Method,
    /// `Host`, or the HTTP/2 `:authority`.
    pub host: Option<HeaderValue>,
    /// The request target as received (path and query).
    pub uri: Uri,
    pub version: Version,
    pub user_agent: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
    pub request_id: HeaderValue,
    /// 0 until answered.
    pub status: u16,
    /// Request body bytes read from the client.
    pub received: u64,
    /// Response body bytes sent to the client.
    pub sent: u64,
    pub duration: Duration,
    pub service: Option<Arc<str>>,
    /// The backend of the last attempt.
    pub backend: Option<Arc<str>>,
    /// Attempts sent to backends (0 for local answers).
    pub attempts: u32,
    /// Switchyard's `x-switchyard-error` reason, when it answered by itself.
    pub error: Option<&'static str>,
}

enum Message {
    Line(Box<Entry>),
    /// Reopen the file (SIGUSR1); also a wake-up for the reopen flag.
    Reopen,
    /// Write everything queued before this, then answer (shutdown).
    Flush(SyncSender<()>),
}

/// One open access log: its queue and writer thread. The thread ends, after
/// writing what is queued, when the last handle is dropped (a reload that
/// turns the log off or changes it, once requests holding it are done).
#[derive(Debug)]
pub struct AccessLog {
    config: AccessLogConfig,
    queue: SyncSender<Message>,
    reopen: Arc<AtomicBool>,
    dropped: IntCounter,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Line(_) => f.write_str("Line"),
            Message::Reopen => f.write_str("Reopen"),
            Message::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl AccessLog {
    /// Open the destination (so that a bad path fails here, not later) and
    /// start the writer.
    fn open(config: &AccessLogConfig, dropped: IntCounter) -> io::Result<AccessLog> {
        let (queue, rx) = mpsc::sync_channel(QUEUE_LINES);
        let reopen = Arc::new(AtomicBool::new(false));
        writer::spawn(config, rx, Arc::clone(&reopen), dropped.clone())?;
        Ok(AccessLog {
            config: config.clone(),
            queue,
            reopen,
            dropped,
        })
    }

    fn send(&self, entry: Box<Entry>) {
        match self.queue.try_send(Message::Line(entry)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

/// The access log in force, swapped by reloads.
#[derive(Debug)]
pub struct AccessLogSwitch {
    current: ArcSwapOption<AccessLog>,
    dropped: IntCounter,
}

impl AccessLogSwitch {
    /// Off until [`AccessLogSwitch::apply`]; `dropped` is
    /// `switchyard_access_log_dropped_total`.
    pub fn new(dropped: IntCounter) -> AccessLogSwitch {
        AccessLogSwitch {
            current: ArcSwapOption::empty(),
            dropped,
        }
    }

    /// Put `config` in force: unchanged = keep the open log; `None` = off;
    /// otherwise open the new destination first and switch only if that
    /// worked (an error leaves the running log as it was).
    pub fn apply(&self, config: Option<&AccessLogConfig>) -> io::Result<()> {
        let current = self.current.load();
        if current.as_ref().map(|log| &log.config) == config {
            return Ok(());
        }
        drop(current);
        let next = match config {
            Some(config) => Some(Arc::new(AccessLog::open(config, self.dropped.clone())?)),
            None => None,
        };
        match config {
            Some(c) => tracing::info!(to = ?c.target, format = ?c.format, "access log on"),
            None => tracing::info!("access log off"),
        }
        self.current.store(next);
        Ok(())
    }

    /// Reopen the log file (after logrotate moved it); no-op for stdout/stderr.
    pub fn reopen(&self) {
        if let Some(log) = &*self.current.load() {
            log.reopen.store(true, Ordering::Release);
            // A full queue wakes the writer anyway; it checks the flag after each batch.
            let _ = log.queue.try_send(Message::Reopen);
        }
    }

    /// Write every line queued so far, waiting up to `limit` (at shutdown:
    /// the process must not exit with lines still in the queue). Blocks.
    pub fn flush(&self, limit: Duration) {
        let Some(log) = self.current.load_full() else {
            return;
        };
        let deadline = Instant::now() + limit;
        let (ack, done) = mpsc::sync_channel(1);
        let mut message = Message::Flush(ack);
        loop {
            match log.queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    message = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = done.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }

    /// Start the line of a request; `None` (and no allocation) when the log is off.
    pub fn begin<B>(
        &self,
        req: &Request<B>,
        client: SocketAddr,
        request_id: &HeaderValue,
        started: Instant,
    ) -> Option<Pending> {
        let log = self.current.load_full()?;
        let headers = req.headers();
        let host = headers.get(HOST).cloned().or_else(|| {
            let authority = req.uri().authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        let entry = Entry {
            time: SystemTime::UNIX_EPOCH,
            arrived: started,
            client,
            method: req.method().clone(),
            host,
            uri: req.uri().clone(),
            version: req.version(),
            user_agent: headers.get(USER_AGENT).cloned(),
            referer: headers.get(REFERER).cloned(),
            request_id: request_id.clone(),
            status: 0,
            received: 0,
            sent: 0,
            duration: Duration::ZERO,
            service: None,
            backend: None,
            attempts: 0,
            error: None,
        };
        Some(Pending {
            entry: Some(Box::new(entry)),
            log,
            started,
            received: None,
        })
    }
}

/// A request's line while the request runs; written when dropped (after the
/// response body, or at once for a local answer). Dropped unanswered (the
/// client went away first), it is logged as 499 "client closed request".
#[derive(Debug)]
pub struct Pending {
    entry: Option<Box<Entry>>,
    log: Arc<AccessLog>,
    started: Instant,
    /// Shared with the request body sent upstream, which counts into it.
    received: Option<Arc<AtomicU64>>,
}

impl Pending {
    /// The counter the upstream request body adds its bytes to.
    pub fn received_counter(&mut self) -> Arc<AtomicU64> {
        Arc::clone(self.received.get_or_insert_with(Default::default))
    }

    pub fn routed(&mut self, service: &Arc<str>) {
        if let Some(e) = &mut self.entry {
            e.service = Some(Arc::clone(service));
        }
    }

    /// How many attempts were sent, the last one to `backend`.
    pub fn attempted(&mut self, attempts: u32, backend: Option<&Arc<str>>) {
        if let Some(e) = &mut self.entry {
            e.attempts = attempts;
            e.backend = backend.cloned();
        }
    }

    /// The status sent; `error` when Switchyard answered by itself.
    pub fn answered(&mut self, status: u16, error: Option<&'static str>) {
        if let Some(e) = &mut self.entry {
            e.status = status;
            e.error = error;
        }
    }

    /// Response body bytes sent.
    pub fn add_sent(&mut self, bytes: u64) {
        if let Some(e) = &mut self.entry {
            e.sent += bytes;
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut entry) = self.entry.take() else {
            return;
        };
        entry.duration = self.started.elapsed();
        if let Some(received) = &self.received {
            entry.received = received.load(Ordering::Relaxed);
        }
        if entry.status == 0 {
            entry.status = CLIENT_CLOSED;
            entry.error = Some("client closed request");
        }
        self.log.send(entry);
    }
}
