//! The file store's journal: every registration, heartbeat and
//! deregistration is appended to a log and made durable *before* it is
//! answered, so a crash (even `kill -9` mid-burst) loses nothing that was
//! acknowledged.
//!
//! Writes are group-committed: one thread owns the log file; each write
//! queues its line and waits; the thread takes everything queued, writes it
//! with one `write` and makes it durable with one `fdatasync`, then answers
//! them all. So a burst of concurrent writes costs one fsync per batch, not
//! one per write (PostgreSQL's and etcd's group commit).
//!
//! Files, beside the snapshot `registry.json`: `registry.json.log.<generation>`,
//! one line of JSON per write, `{"seq": N, "put": {instance}}` or
//! `{"seq": N, "delete": {"service": S, "id": I}}`. `seq` is the registry's
//! version after the write. The snapshot records the version it holds
//! (`journal_version`); at load the logs are replayed in generation order,
//! skipping lines the snapshot already holds. Once a snapshot covering a
//! whole log file is durable, the file is deleted; a file grows to
//! [`ROTATE_BYTES`] before a new generation starts.
//!
//! Each file is preallocated to [`ROTATE_BYTES`] when it is created (as
//! etcd's WAL does), so that an fdatasync flushes the new bytes and not the
//! file's growing size as well: on ext4 that cuts a sequential durable write
//! from ~0.12 to ~0.09 ms (`bench/fsync_floor.py`). A file's lines therefore
//! end at its first NUL byte (JSON never holds a raw NUL). A line cut short
//! at the end of a file's lines (a crash while writing it: it was never
//! acknowledged) is dropped at load with a warning; a bad line anywhere else
//! makes the store corrupt.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

/// A log file this large starts a new generation.
pub const ROTATE_BYTES: u64 = 4 * 1024 * 1024;

/// One write, as the registry hands it over.
pub enum Record<'a> {
    /// The instance's stored form (as the snapshot and etcd keep it).
    Put(&'a [u8]),
    Delete {
        service: &'a str,
        id: &'a str,
    },
}

/// One line of a log, as read back.
#[derive(Debug, Clone, PartialEq)]
pub enum Replayed {
    Put(Value),
    Delete { service: String, id: String },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    put: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delete: Option<Deleted>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Deleted {
    service: String,
    id: String,
}

/// Waits for one write to be durable.
pub type Ack = oneshot::Receiver<io::Result<()>>;

/// A line waiting for the next commit, and whom to tell.
struct Pending {
    seq: u64,
    line: Vec<u8>,
    ack: oneshot::Sender<io::Result<()>>,
}

enum Msg {
    Append(Pending),
    /// A snapshot holding everything up to this version is durable; the
    /// sender hears once the files it covers are deleted.
    Covered(u64, mpsc::Sender<()>),
}

/// The writer thread's handle.
#[derive(Debug)]
pub struct Journal {
    tx: mpsc::Sender<Msg>,
}

impl Journal {
    /// Start the writer for the logs beside `snapshot`; new lines go to a
    /// fresh generation after every existing one. `loaded` is the version
    /// the store loaded at (the existing files hold nothing newer).
    pub fn start(snapshot: &Path, loaded: u64) -> io::Result<Journal> {
        let existing = log_files(snapshot)?;
        let next = existing.last().map_or(1, |(generation, _)| generation + 1);
        let (tx, rx) = mpsc::channel();
        let mut writer = Writer {
            snapshot: snapshot.to_path_buf(),
            // Old generations: deletable once a snapshot covers the version
            // this process started from (their lines are all older).
            files: existing.into_iter().map(|(g, _)| (g, loaded)).collect(),
            generation: next,
            file: None,
            written: 0,
            max_seq: 0,
        };
        std::thread::Builder::new()
            .name("switchyard-journal".into())
            .spawn(move || writer.run(rx))?;
        Ok(Journal { tx })
    }

    /// Queue `record` as version `seq`; the answer comes once it is durable.
    pub fn append(&self, seq: u64, record: Record<'_>) -> Ack {
        let (ack, done) = oneshot::channel();
        let line = encode(seq, record);
        let msg = Msg::Append(Pending { seq, line, ack });
        if let Err(mpsc::SendError(Msg::Append(pending))) = self.tx.send(msg) {
            let stopped = io::Error::other("the journal writer has stopped");
            let _ = pending.ack.send(Err(stopped));
        }
        done
    }

    /// A snapshot with everything up to `version` is durable: logs that
    /// hold nothing newer can go.
    pub fn covered(&self, version: u64) {
        // Waits for the deletions (the caller is a blocking save), so that
        // a save at shutdown leaves no covered file behind.
        let (done, deleted) = mpsc::channel();
        if self.tx.send(Msg::Covered(version, done)).is_ok() {
            let _ = deleted.recv();
        }
    }
}

fn encode(seq: u64, record: Record<'_>) -> Vec<u8> {
    let mut line = format!("{{\"seq\":{seq},").into_bytes();
    match record {
        Record::Put(instance) => {
            line.extend_from_slice(b"\"put\":");
            line.extend_from_slice(instance);
        }
        Record::Delete { service, id } => {
            let deleted = Deleted {
                service: service.to_owned(),
                id: id.to_owned(),
            };
            line.extend_from_slice(b"\"delete\":");
            line.extend(serde_json::to_vec(&deleted).unwrap_or_default());
        }
    }
    line.extend_from_slice(b"}\n");
    line
}

struct Writer {
    snapshot: PathBuf,
    /// (generation, highest seq in it) of every file not yet deleted, the
    /// one being written last.
    files: Vec<(u64, u64)>,
    generation: u64,
    file: Option<File>,
    written: u64,
    max_seq: u64,
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        while let Ok(first) = rx.recv() {
            let mut batch = Vec::new();
            for msg in std::iter::once(first).chain(rx.try_iter()) {
                match msg {
                    Msg::Append(pending) => batch.push(pending),
                    Msg::Covered(version, done) => {
                        self.forget_covered(version);
                        let _ = done.send(());
                    }
                }
            }
            if !batch.is_empty() {
                let result = self.commit(&batch);
                for pending in batch {
                    let _ = pending.ack.send(match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                    });
                }
            }
        }
    }

    /// Write the batch with one write and one fdatasync.
    fn commit(&mut self, batch: &[Pending]) -> io::Result<()> {
        if self.file.is_none() || self.written >= ROTATE_BYTES {
            self.rotate()?;
        }
        let bytes: Vec<u8> = batch.iter().flat_map(|p| p.line.iter().copied()).collect();
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("no journal file"))?;
        file.write_all_at(&bytes, self.written)?;
        file.sync_data()?;
        self.written += bytes.len() as u64;
        let top = batch.iter().map(|p| p.seq).max().unwrap_or(0);
        self.max_seq = self.max_seq.max(top);
        if let Some(last) = self.files.last_mut() {
            last.1 = last.1.max(top);
        }
        Ok(())
    }

    /// Start the next generation: preallocated, and its creation made
    /// durable in the folder.
    fn rotate(&mut self) -> io::Result<()> {
        let path = log_path(&self.snapshot, self.generation);
        std::fs::create_dir_all(folder(&self.snapshot))?;
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        preallocate(&file)?;
        sync_folder(&self.snapshot)?;
        self.files.push((self.generation, self.max_seq));
        self.generation += 1;
        self.file = Some(file);
        self.written = 0;
        Ok(())
    }

    /// Delete every file but the current one whose lines the snapshot holds.
    fn forget_covered(&mut self, version: u64) {
        let current = self.file.as_ref().map(|_| self.generation - 1);
        self.files.retain(|&(generation, top)| {
            let deletable = Some(generation) != current && top <= version;
            if deletable {
                if let Err(e) = std::fs::remove_file(log_path(&self.snapshot, generation)) {
                    if e.kind() != io::ErrorKind::NotFound {
                        tracing::warn!(error = %e, generation, "cannot delete a registry journal file the snapshot covers");
                        return true;
                    }
                }
            }
            !deletable
        });
    }
}

/// Reserve [`ROTATE_BYTES`] of zeros for the file's lines, durably, so that
/// the fdatasync of each commit has no size change to flush. A filesystem
/// that cannot preallocate just lets the file grow as it is written.
#[cfg(target_os = "linux")]
fn preallocate(file: &File) -> io::Result<()> {
    let flags = rustix::fs::FallocateFlags::empty();
    match rustix::fs::fallocate(file, flags, 0, ROTATE_BYTES) {
        Ok(()) => file.sync_all(),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn preallocate(_file: &File) -> io::Result<()> {
    Ok(())
}

fn log_path(snapshot: &Path, generation: u64) -> PathBuf {
    let mut name = snapshot.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".log.{generation}"));
    snapshot.with_file_name(name)
}

fn folder(snapshot: &Path) -> PathBuf {
    match snapshot.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sync_folder(snapshot: &Path) -> io::Result<()> {
    File::open(folder(snapshot))?.sync_all()
}

/// Whether any log file lies beside `snapshot`.
pub fn any_log(snapshot: &Path) -> bool {
    log_files(snapshot).is_ok_and(|files| !files.is_empty())
}

/// The log files beside `snapshot`, by generation.
fn log_files(snapshot: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let prefix = format!(
        "{}.log.",
        snapshot.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(folder(snapshot)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(generation) = name.strip_prefix(&prefix).and_then(|g| g.parse().ok()) {
            files.push((generation, entry.path()));
        }
    }
    files.sort_unstable();
    Ok(files)
}

/// Why a log cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}, line {line}: {problem}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

/// What the logs add to a snapshot at `version`: the writes after it, in
/// order, and the highest version seen.
#[derive(Debug, Default)]
pub struct Replay {
    pub writes: Vec<Replayed>,
    pub version: u64,
    /// A file's last line cut short by a crash, dropped.
    pub torn_tail: bool,
}

pub fn replay(snapshot: &Path, version: u64) -> Result<Replay, ReplayError> {
    let read_error = |path: &Path, source| ReplayError::Read {
        path: path.to_path_buf(),
        source,
    };
    let files = log_files(snapshot).map_err(|e| read_error(&folder(snapshot), e))?;
    let mut replay = Replay {
        version,
        ..Replay::default()
    };
    for (_, path) in &files {
        let bytes = std::fs::read(path).map_err(|e| read_error(path, e))?;
        // The preallocated rest of the file is zeros.
        let written = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let lines: Vec<&[u8]> = bytes[..written].split_inclusive(|&b| b == b'\n').collect();
        for (number, raw) in lines.iter().enumerate() {
            let line = match parse_line(raw) {
                Ok(line) => line,
                // A crash cut the file's last line short: it was never
                // acknowledged (a later generation is a later process).
                Err(_) if number + 1 == lines.len() => {
                    replay.torn_tail = true;
                    break;
                }
                Err(problem) => {
                    return Err(ReplayError::Line {
                        path: path.clone(),
                        line: number + 1,
                        problem,
                    })
                }
            };
            replay.version = replay.version.max(line.seq);
            if line.seq <= version {
                continue;
            }
            match (line.put, line.delete) {
                (Some(put), None) => replay.writes.push(Replayed::Put(put)),
                (None, Some(d)) => replay.writes.push(Replayed::Delete {
                    service: d.service,
                    id: d.id,
                }),
                _ => {
                    return Err(ReplayError::Line {
                        path: path.clone(),
                        line: number + 1,
                        problem: "neither a put nor a delete".into(),
                    })
                }
            }
        }
    }
    Ok(replay)
}

/// A complete line (ending in `\n`) of valid JSON.
fn parse_line(raw: &[u8]) -> Result<Line, String> {
    let Some(body) = raw.strip_suffix(b"\n") else {
        return Err("the line is cut short".into());
    };
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(n: u64) -> Vec<u8> {
        format!("{{\"n\":{n}}}").into_bytes()
    }

    async fn write_all(journal: &Journal, range: std::ops::Range<u64>) {
        let acks: Vec<Ack> = range
            .map(|seq| journal.append(seq, Record::Put(&put(seq))))
            .collect();
        for ack in acks {
            ack.await.expect("writer alive").expect("durable");
        }
    }

    #[tokio::test]
    async fn acknowledged_writes_replay_in_order_after_the_snapshot_version() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = dir.path().join("registry.json");
        let journal = Journal::start(&snapshot, 0).unwrap();
        write_all(&journal, 1..6).await;
        let ack = journal.append(
            6,
            Record::Delete {
                service: "s",
                id: "i",
            },
        );
        ack.await.unwrap().unwrap();
        let replay = replay(&snapshot, 3).unwrap();
        assert_eq!(replay.version, 6);
        assert_eq!(
            replay.writes,
            vec![
                Replayed::Put(serde_json::json!({"n": 4})),
                Replayed::Put(serde_json::json!({"n": 5})),
                Replayed::Delete {
                    service: "s".into(),
                    id: "i".into()
                },
            ]
        );
        assert!(!replay.torn_tail);
    }

    /// Write `bytes` where the file's lines end (before its zeros), as a
    /// crash mid-commit would have.
    fn write_after_lines(log: &Path, bytes: &[u8]) {
        let content = std::fs::read(log).unwrap();
        let end = content
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(content.len());
        let file = OpenOptions::new().write(true).open(log).unwrap();
        file.write_all_at(bytes, end as u64).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn files_are_preallocated_and_their_zeros_are_not_lines() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = dir.path().join("registry.json");
        let journal = Journal::start(&snapshot, 0).unwrap();
        write_all(&journal, 1..4).await;
        let size = std::fs::metadata(log_path(&snapshot, 1)).unwrap().len();
        assert_eq!(size, ROTATE_BYTES);
        let replay = replay(&snapshot, 0).unwrap();
        assert_eq!(replay.writes.len(), 3);
        assert!(!replay.torn_tail);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_dropped_and_a_bad_middle_line_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = dir.path().join("registry.json");
        let journal = Journal::start(&snapshot, 0).unwrap();
        write_all(&journal, 1..3).await;
        drop(journal);
        let log = log_path(&snapshot, 1);
        write_after_lines(&log, b"{\"seq\":3,\"put\":{\"n\"");
        let replay = replay(&snapshot, 0).unwrap();
        assert!(replay.torn_tail);
        assert_eq!(replay.writes.len(), 2);
        // The same garbage followed by a good line is corruption.
        write_after_lines(&log, b"\n{\"seq\":4,\"put\":{}}\n");
        let err = super::replay(&snapshot, 0).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
    }

    #[tokio::test]
    async fn a_torn_line_from_an_earlier_process_is_dropped_before_later_files() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = dir.path().join("registry.json");
        let first = Journal::start(&snapshot, 0).unwrap();
        write_all(&first, 1..3).await;
        drop(first);
        // Killed while writing seq 3; the next process starts generation 2
        // after loading version 2 and writes seq 3 and 4 again.
        write_after_lines(&log_path(&snapshot, 1), b"{\"seq\":3,\"pu");
        let second = Journal::start(&snapshot, 2).unwrap();
        write_all(&second, 3..5).await;
        let replay = replay(&snapshot, 0).unwrap();
        assert!(replay.torn_tail);
        assert_eq!(replay.version, 4);
        let ns: Vec<_> = replay
            .writes
            .iter()
            .map(|w| match w {
                Replayed::Put(v) => v["n"].as_u64().unwrap(),
                Replayed::Delete { .. } => 0,
            })
            .collect();
        assert_eq!(ns, vec![1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn files_rotate_and_covered_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = dir.path().join("registry.json");
        let journal = Journal::start(&snapshot, 0).unwrap();
        let big = vec![b'x'; 1 << 20];
        let value = serde_json::to_vec(&String::from_utf8(big).unwrap()).unwrap();
        for seq in 1..=10 {
            journal
                .append(seq, Record::Put(&value))
                .await
                .unwrap()
                .unwrap();
        }
        let files = log_files(&snapshot).unwrap();
        assert!(files.len() >= 2, "{files:?}");
        journal.covered(10);
        // The writer handles `covered` with the next batch or at once.
        journal
            .append(11, Record::Put(b"{}"))
            .await
            .unwrap()
            .unwrap();
        let left = log_files(&snapshot).unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        let replay = replay(&snapshot, 10).unwrap();
        assert_eq!(replay.writes, vec![Replayed::Put(serde_json::json!({}))]);
    }
}
