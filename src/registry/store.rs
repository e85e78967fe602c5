//! Where registrations persist: the [`RegistryStore`] seam, an in-memory
//! store and a JSON file store (etcd, which every node follows rather than
//! loads, is `super::etcd`).
//!
//! The registry keeps its live table in memory and hands the store whole
//! snapshots, at most one write per ~100 ms (see `Registry::run_writer`); the
//! store is read once, at start-up. The file store also keeps a journal
//! (`super::journal`): each write is appended and fsynced before the admin
//! API answers it, so nothing acknowledged is lost; the request path never
//! waits for a disk.
//!
//! The file store writes atomically: the snapshot goes to a temporary file in
//! the same folder, is fsynced, renamed over the target, and the folder is
//! fsynced, so a crash leaves the old file or the new one, never a torn one.
//! At load a missing file means "nothing registered yet" (it is created on
//! the first write); an unreadable or corrupt file is an error naming it, and
//! is left untouched for the operator to inspect.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{NameKind, RegistryError};
use super::instance::{check_name, format_time, format_ttl, parse_ttl, Instance, WEIGHTS};
use super::journal::{self, Journal, Replayed};
use crate::config::StoreConfig;
use crate::overrides::Overrides;

/// The file format's version; a file with another one is refused, not guessed at.
const FORMAT_VERSION: u32 = 1;

/// Persistence for registrations.
pub trait RegistryStore: Send + Sync + fmt::Debug {
    /// Everything persisted, expired leases included (the registry drops
    /// them), and the registry version it was persisted at.
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Replace what is persisted with `instances`, the registry at `version`.
    fn save(&self, instances: &[Arc<Instance>], version: u64) -> Result<(), StoreError>;
    /// Where each write must be made durable before it is answered (the
    /// file store); `None`: writes are persisted by snapshots only.
    fn journal(&self) -> Option<&Journal> {
        None
    }
}

/// What a store held at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    pub instances: Vec<Instance>,
    /// The registry version of the newest write in it (0: none).
    pub version: u64,
    /// Journal files were found: a snapshot should cover them soon, so
    /// they can go even if no write comes (they would pile up across
    /// restarts otherwise).
    pub compact: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read the registry store {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the registry store {} is corrupt ({reason}); it was left untouched: fix or move it away", path.display())]
    Corrupt { path: PathBuf, reason: Corruption },
    #[error("cannot write the registry store {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the registry store `{0}` is not supported by this build; use \"memory\" or \"file:PATH\""
    )]
    Unsupported(String),
    #[error("the registry store writer failed")]
    Task(#[source] tokio::task::JoinError),
}

/// What is wrong inside a store file.
#[derive(Debug, thiserror::Error)]
pub enum Corruption {
    #[error("not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("format version {0}, this build reads version {FORMAT_VERSION}")]
    Version(u32),
    #[error("instance #{index}: {problem}")]
    Entry {
        index: usize,
        #[source]
        problem: EntryProblem,
    },
    #[error("journal: {0}")]
    Replay(#[from] journal::ReplayError),
    #[error("journal write #{index}: {problem}")]
    Journal {
        index: usize,
        #[source]
        problem: EntryProblem,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum EntryProblem {
    #[error("not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("{0}")]
    Invalid(#[from] RegistryError),
    #[error("bad resolved address `{0}`")]
    Resolved(String),
    #[error("weight {0} is out of range")]
    Weight(u64),
    #[error("bad expires_at `{0}`")]
    ExpiresAt(String),
}

/// Build the store the config names.
pub fn from_config(config: &StoreConfig) -> Result<Arc<dyn RegistryStore>, StoreError> {
    match config {
        StoreConfig::Memory => Ok(Arc::new(MemoryStore::default())),
        StoreConfig::File(path) => Ok(Arc::new(FileStore::new(path.clone()))),
        StoreConfig::Etcd(etcd) => Err(StoreError::Unsupported(format!(
            "etcd://{}{}",
            etcd.endpoint_list(),
            etcd.prefix
        ))),
    }
}

// === impl MemoryStore ===

/// Keeps nothing across restarts; remembers the last save (for tests).
#[derive(Debug, Default)]
pub struct MemoryStore {
    saved: Mutex<Vec<Arc<Instance>>>,
}

impl MemoryStore {
    /// What the last `save` got.
    pub fn saved(&self) -> Vec<Arc<Instance>> {
        self.saved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl RegistryStore for MemoryStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        Ok(Loaded {
            instances: self.saved().iter().map(|i| Instance::clone(i)).collect(),
            version: 0,
            compact: false,
        })
    }

    fn save(&self, instances: &[Arc<Instance>], _version: u64) -> Result<(), StoreError> {
        *self.saved.lock().unwrap_or_else(PoisonError::into_inner) = instances.to_vec();
        Ok(())
    }
}

// === impl FileStore ===

/// A JSON snapshot, replaced atomically on every save, and the journal of
/// the writes since.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    /// Started by `load`, after the existing logs were read.
    journal: OnceLock<Journal>,
}

impl FileStore {
    pub fn new(path: PathBuf) -> FileStore {
        FileStore {
            path,
            journal: OnceLock::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, reason: Corruption) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    fn write_error(&self, source: io::Error) -> StoreError {
        StoreError::Write {
            path: self.path.clone(),
            source,
        }
    }

    /// The snapshot file: its instances and the version it holds.
    fn load_snapshot(&self) -> Result<(Vec<Instance>, u64), StoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(source) => {
                let path = self.path.clone();
                return Err(StoreError::Read { path, source });
            }
        };
        let file: StoredFile =
            serde_json::from_slice(&bytes).map_err(|e| self.corrupt(Corruption::Json(e)))?;
        if file.version != FORMAT_VERSION {
            return Err(self.corrupt(Corruption::Version(file.version)));
        }
        let instances = file
            .instances
            .into_iter()
            .enumerate()
            .map(|(index, stored)| {
                stored
                    .into_instance()
                    .map_err(|problem| self.corrupt(Corruption::Entry { index, problem }))
            })
            .collect::<Result<_, _>>()?;
        Ok((instances, file.journal_version))
    }

    /// The journal's writes after the snapshot, applied in order.
    fn replay(&self, instances: Vec<Instance>, version: u64) -> Result<Loaded, StoreError> {
        let replay = journal::replay(&self.path, version).map_err(|e| self.corrupt(e.into()))?;
        if replay.torn_tail {
            tracing::warn!(path = %self.path.display(), "the registry journal's last line was cut short by a crash (never acknowledged); dropped");
        }
        let mut by_key: BTreeMap<(Arc<str>, Arc<str>), Instance> = instances
            .into_iter()
            .map(|i| ((Arc::clone(&i.service), Arc::clone(&i.id)), i))
            .collect();
        for (index, write) in replay.writes.into_iter().enumerate() {
            match write {
                Replayed::Put(value) => {
                    let instance = serde_json::from_value::<StoredInstance>(value)
                        .map_err(EntryProblem::Json)
                        .and_then(StoredInstance::into_instance)
                        .map_err(|problem| self.corrupt(Corruption::Journal { index, problem }))?;
                    by_key.insert(
                        (Arc::clone(&instance.service), Arc::clone(&instance.id)),
                        instance,
                    );
                }
                Replayed::Delete { service, id } => {
                    by_key.remove(&(Arc::from(service), Arc::from(id)));
                }
            }
        }
        Ok(Loaded {
            instances: by_key.into_values().collect(),
            version: replay.version,
            compact: false,
        })
    }
}

impl RegistryStore for FileStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let (instances, version) = self.load_snapshot()?;
        let compact = journal::any_log(&self.path);
        let mut loaded = self.replay(instances, version)?;
        loaded.compact = compact;
        let journal =
            Journal::start(&self.path, loaded.version).map_err(|e| self.write_error(e))?;
        let _ = self.journal.set(journal);
        Ok(loaded)
    }

    fn save(&self, instances: &[Arc<Instance>], version: u64) -> Result<(), StoreError> {
        let file = StoredFile {
            version: FORMAT_VERSION,
            journal_version: version,
            instances: instances
                .iter()
                .map(|i| StoredInstance::from(&**i))
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| self.write_error(e.into()))?;
        write_atomically(&self.path, &bytes).map_err(|e| self.write_error(e))?;
        if let Some(journal) = self.journal.get() {
            journal.covered(version);
        }
        Ok(())
    }

    fn journal(&self) -> Option<&Journal> {
        self.journal.get()
    }
}

/// Temp file in the same folder (so the rename cannot cross file systems),
/// fsync, rename over the target, fsync the folder (so the rename is durable).
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.as_deref().unwrap_or("registry"),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

// === the file format ===

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredFile {
    version: u32,
    /// The registry version the snapshot holds: journal lines up to it are
    /// in it (0 in files written before the journal existed).
    #[serde(default)]
    journal_version: u64,
    instances: Vec<StoredInstance>,
}

/// One instance as written: the ttl as text, the lease's end as RFC 3339.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredInstance {
    service: String,
    id: String,
    address: String,
    resolved: String,
    weight: u64,
    ttl: String,
    expires_at: Option<String>,
    #[serde(default)]
    metadata: Map<String, Value>,
    /// `PATCH`'s weight, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weight_override: Option<u64>,
    /// `PATCH`'s `"state": "drain"`.
    #[serde(default, skip_serializing_if = "is_false")]
    drain: bool,
}

fn is_false(b: &bool) -> bool {
    !b
}

impl From<&Instance> for StoredInstance {
    fn from(i: &Instance) -> Self {
        StoredInstance {
            service: i.service.to_string(),
            id: i.id.to_string(),
            address: i.address.to_string(),
            resolved: i.resolved.to_string(),
            weight: u64::from(i.weight),
            ttl: format_ttl(i.ttl),
            expires_at: i.expires_at.map(format_time),
            metadata: Map::clone(&i.metadata),
            weight_override: i.overrides.weight.map(u64::from),
            drain: i.overrides.drain,
        }
    }
}

impl StoredInstance {
    fn into_instance(self) -> Result<Instance, EntryProblem> {
        check_name(NameKind::Service, &self.service)?;
        check_name(NameKind::Instance, &self.id)?;
        let resolved: SocketAddr = self
            .resolved
            .parse()
            .map_err(|_| EntryProblem::Resolved(self.resolved.clone()))?;
        if !WEIGHTS.contains(&self.weight) {
            return Err(EntryProblem::Weight(self.weight));
        }
        let weight_override = match self.weight_override {
            None => None,
            Some(w) if WEIGHTS.contains(&w) => Some(w as u32),
            Some(w) => return Err(EntryProblem::Weight(w)),
        };
        let ttl = parse_ttl(&self.ttl)?;
        let expires_at = match self.expires_at {
            None => None,
            Some(text) => Some(parse_time(&text).ok_or(EntryProblem::ExpiresAt(text))?),
        };
        Ok(Instance {
            service: self.service.into(),
            id: self.id.into(),
            address: self.address.into(),
            resolved,
            weight: self.weight as u32,
            ttl,
            expires_at,
            metadata: super::instance::shared_metadata(self.metadata),
            overrides: Overrides {
                weight: weight_override,
                drain: self.drain,
            },
        })
    }
}

/// An instance as the etcd store keeps it: one file-format entry, as JSON.
pub(super) fn encode_instance(instance: &Instance) -> Vec<u8> {
    serde_json::to_vec(&StoredInstance::from(instance)).unwrap_or_default()
}

/// The instance in an etcd value.
pub(super) fn decode_instance(bytes: &[u8]) -> Result<Instance, EntryProblem> {
    let stored: StoredInstance = serde_json::from_slice(bytes).map_err(EntryProblem::Json)?;
    stored.into_instance()
}

fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(text).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn instance(id: &str, expires_at: Option<SystemTime>) -> Arc<Instance> {
        let mut metadata = Map::new();
        metadata.insert("zone".into(), Value::from("eu-1"));
        Arc::new(Instance {
            service: "users".into(),
            id: id.into(),
            address: "localhost:9001".into(),
            resolved: "127.0.0.1:9001".parse().unwrap(),
            weight: 7,
            ttl: if expires_at.is_some() {
                Duration::from_secs(30)
            } else {
                Duration::ZERO
            },
            expires_at,
            metadata: Arc::new(metadata),
            // "b" carries an operator's PATCH, which the store keeps.
            overrides: Overrides {
                weight: (id == "b").then_some(0),
                drain: id == "b",
            },
        })
    }

    /// Whole milliseconds, as the file keeps them.
    fn millis(t: SystemTime) -> SystemTime {
        let ms = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64)
    }

    #[test]
    fn a_missing_file_loads_empty_and_is_created_on_save() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/registry.json");
        let store = FileStore::new(path.clone());
        assert!(store.load().expect("missing = empty").instances.is_empty());
        assert!(!path.exists(), "loading creates nothing");
        store.save(&[], 1).expect("save");
        assert!(path.exists());
    }

    #[test]
    fn instances_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("registry.json"));
        let ends = millis(SystemTime::now() + Duration::from_secs(30));
        let saved = vec![instance("a", Some(ends)), instance("b", None)];
        store.save(&saved, 1).expect("save");
        let loaded = store.load().expect("load").instances;
        let expected: Vec<Instance> = saved.iter().map(|i| Instance::clone(i)).collect();
        assert_eq!(loaded, expected);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it_and_stays_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        for text in [
            "{not json",
            "",
            r#"{"version": 9, "instances": []}"#,
            r#"{"version": 1, "instances": [{"service": "a/b", "id": "x", "address": "h:1", "resolved": "127.0.0.1:1", "weight": 1, "ttl": "0s", "expires_at": null}]}"#,
        ] {
            std::fs::write(&path, text).unwrap();
            let err = FileStore::new(path.clone()).load().expect_err(text);
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        }
    }

    #[test]
    fn an_unreadable_path_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        // A folder where the file should be.
        let err = FileStore::new(dir.path().to_path_buf())
            .load()
            .expect_err("a folder");
        assert!(matches!(err, StoreError::Read { .. }), "{err:?}");
    }

    #[test]
    fn the_memory_store_keeps_the_last_save() {
        let store = MemoryStore::default();
        store.save(&[instance("a", None)], 1).unwrap();
        assert_eq!(store.load().unwrap().instances.len(), 1);
    }
}
