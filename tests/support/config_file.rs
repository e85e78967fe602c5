//! Config text for tests: the `[proxy]`/`[admin]` base on ephemeral
//! ports, `[services.*]` and `[[routes]]` snippets, and [`ConfigFile`], a
//! config in its own temporary folder that a test can rewrite.

use std::path::{Path, PathBuf};

use super::FakeBackend;

/// `[proxy]` and `[admin]` on ephemeral loopback ports, plus `extra_proxy`
/// lines inside `[proxy]`.
pub fn base_toml_with(extra_proxy: &str) -> String {
    format!(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n{extra_proxy}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n"
    )
}

pub fn base_toml() -> String {
    base_toml_with("")
}

/// `["127.0.0.1:A", "127.0.0.1:B"]`
pub fn backend_list(backends: &[&FakeBackend]) -> String {
    let items: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.address()))
        .collect();
    format!("[{}]", items.join(", "))
}

/// A `[services.NAME]` table with `backends` and any `extra` lines.
pub fn service_toml(name: &str, backends: &[&FakeBackend], extra: &str) -> String {
    format!(
        "[services.{name}]\nbackends = {}\n{extra}\n",
        backend_list(backends)
    )
}

/// One `[[routes]]` entry.
pub fn route_toml(host: Option<&str>, prefix: &str, service: &str, strip: bool) -> String {
    let mut out = String::from("[[routes]]\n");
    if let Some(host) = host {
        out.push_str(&format!("host = \"{host}\"\n"));
    }
    out.push_str(&format!(
        "path_prefix = \"{prefix}\"\nservice = \"{service}\"\n"
    ));
    if strip {
        out.push_str("strip_prefix = true\n");
    }
    out.push('\n');
    out
}

/// A config file in its own temporary folder.
pub struct ConfigFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    pub fn new(text: &str) -> ConfigFile {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, text).expect("write config");
        ConfigFile { dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary folder that holds the file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path_str(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Rewrites the file in place (truncate + write, same inode).
    pub fn write_in_place(&self, text: &str) {
        std::fs::write(&self.path, text).expect("write config");
    }

    /// Replaces the file atomically: write a sibling, rename over it.
    pub fn replace(&self, text: &str) {
        let tmp = self.dir.path().join(".switchyard.toml.tmp");
        std::fs::write(&tmp, text).expect("write temp config");
        std::fs::rename(&tmp, &self.path).expect("rename config");
    }
}
