//! The access log's writer thread: takes entries off the queue, formats them
//! into one buffer, and writes the buffer when the queue is empty (or the
//! buffer is large), so a burst of requests costs one write, not one per line.
//! While lines keep coming it drains the queue every [`BATCH_EVERY`] instead
//! of blocking on it, so a request's `try_send` finds no sleeping receiver to
//! wake (no futex call, no context switch per request); when a drain finds
//! the queue empty it blocks again, so an idle log costs nothing.
//! A plain thread, not a tokio task: a write to a slow disk or a full pipe
//! blocks only this thread. SIGUSR1's reopen is handled here too.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntCounter;

use super::{line, Message};
use crate::config::{AccessLogConfig, AccessLogFormat, AccessLogTarget};

/// Write the buffer once it holds this much, even if more lines are queued.
const FLUSH_AT: usize = 64 * 1024;

/// Under traffic, how often the queue is drained (the most a line waits).
const BATCH_EVERY: Duration = Duration::from_millis(20);

/// A failing destination is reported at most this often.
const ERROR_EVERY: Duration = Duration::from_secs(10);

/// Open the destination now (so the caller learns a bad path at once) and
/// start the thread, which ends when every sender is gone and the queue is empty.
pub(super) fn spawn(
    config: &AccessLogConfig,
    rx: Receiver<Message>,
    reopen: Arc<AtomicBool>,
    dropped: IntCounter,
) -> io::Result<()> {
    let sink = Sink::open(&config.target)?;
    let mut writer = Writer {
        sink,
        format: config.format,
        buf: Vec::with_capacity(FLUSH_AT + 4096),
        lines: 0,
        dropped,
        reopen,
        last_error: None,
        clocks: None,
    };
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || writer.run(rx))?;
    Ok(())
}

enum Sink {
    Stdout,
    Stderr,
    File { path: PathBuf, file: File },
}

impl Sink {
    fn open(target: &AccessLogTarget) -> io::Result<Sink> {
        Ok(match target {
            AccessLogTarget::Stdout => Sink::Stdout,
            AccessLogTarget::Stderr => Sink::Stderr,
            AccessLogTarget::File(path) => Sink::File {
                file: open_file(path)?,
                path: path.clone(),
            },
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Sink::Stderr => io::stderr().lock().write_all(bytes),
            Sink::File { file, .. } => file.write_all(bytes),
        }
    }

    /// A fresh handle on the path (logrotate renamed the old file away).
    fn reopen(&mut self) {
        if let Sink::File { path, file } = self {
            match open_file(path) {
                Ok(new) => {
                    *file = new;
                    tracing::info!(path = %path.display(), "access log reopened");
                }
                Err(e) => tracing::error!(
                    path = %path.display(),
                    error = %e,
                    "cannot reopen the access log; still writing to the old file"
                ),
            }
        }
    }
}

fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

struct Writer {
    sink: Sink,
    format: AccessLogFormat,
    buf: Vec<u8>,
    /// Lines in `buf`.
    lines: u64,
    dropped: IntCounter,
    reopen: Arc<AtomicBool>,
    last_error: Option<Instant>,
    /// (wall, monotonic) read once for the batch being written.
    clocks: Option<(SystemTime, Instant)>,
}

impl Writer {
    fn run(&mut self, rx: Receiver<Message>) {
        // Idle: block until a line (or a reopen) comes.
        while let Ok(first) = rx.recv() {
            self.clocks = None;
            self.take(first);
            // Busy: drain, write, pause; back to blocking once a pause brought nothing.
            loop {
                let (taken, open) = self.drain(&rx);
                self.flush();
                self.reopen_if_asked();
                if !open {
                    return;
                }
                if taken == 0 {
                    break;
                }
                std::thread::sleep(BATCH_EVERY);
            }
        }
        self.flush();
    }

    /// The wall-clock time of `arrived`, from one reading of both clocks
    /// per batch (a batch spans at most a few tens of ms).
    fn wall_time(&mut self, arrived: Instant) -> SystemTime {
        let (wall, mono) = *self
            .clocks
            .get_or_insert_with(|| (SystemTime::now(), Instant::now()));
        wall.checked_sub(mono.saturating_duration_since(arrived))
            .unwrap_or(wall)
    }

    /// Everything queued now; (messages taken, whether senders remain).
    fn drain(&mut self, rx: &Receiver<Message>) -> (usize, bool) {
        self.clocks = None;
        let mut taken = 0;
        loop {
            match rx.try_recv() {
                Ok(message) => {
                    self.take(message);
                    taken += 1;
                }
                Err(TryRecvError::Empty) => return (taken, true),
                Err(TryRecvError::Disconnected) => return (taken, false),
            }
        }
    }

    fn take(&mut self, message: Message) {
        match message {
            Message::Line(mut entry) => {
                entry.time = self.wall_time(entry.arrived);
                line::write(&mut self.buf, &entry, self.format);
                self.lines += 1;
                if self.buf.len() >= FLUSH_AT {
                    self.flush();
                }
            }
            Message::Reopen => self.reopen_if_asked(),
            Message::Flush(ack) => {
                self.flush();
                let _ = ack.send(());
            }
        }
    }

    fn reopen_if_asked(&mut self) {
        if self.reopen.swap(false, Ordering::AcqRel) {
            self.flush();
            self.sink.reopen();
        }
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let Err(e) = self.sink.write_all(&self.buf) {
            self.dropped.inc_by(self.lines);
            let now = Instant::now();
            if self.last_error.is_none_or(|at| now - at >= ERROR_EVERY) {
                self.last_error = Some(now);
                tracing::error!(error = %e, "cannot write the access log; lines dropped");
            }
        }
        self.buf.clear();
        self.lines = 0;
    }
}
