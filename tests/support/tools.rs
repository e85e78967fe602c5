//! External tools the tests drive (curl, openssl, promtool, etcd,
//! Chromium, systemd-analyze, python3 and its modules), found through one
//! rule:
//!
//! - present: the test runs with it;
//! - missing and `CI` set (as `.ci/run` runs): the test **fails**, naming the
//!   package to install, so that a CI machine without the tool cannot pass
//!   by testing nothing;
//! - missing on a developer's machine: the test is **skipped** with a loud
//!   message on stderr (`cargo test -- --nocapture` shows it).
//!
//! A test asks at its start: `if !require(&CURL) { return; }`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A program a test runs, and how to get it.
pub struct Tool {
    /// Names tried in order on `PATH`.
    pub names: &'static [&'static str],
    /// A variable that, when set, names the program to run instead.
    pub override_var: Option<&'static str>,
    /// What to install (said when it is missing).
    pub install: &'static str,
}

pub const CURL: Tool = Tool {
    names: &["curl"],
    override_var: None,
    install: "Debian's `curl` package",
};

pub const OPENSSL: Tool = Tool {
    names: &["openssl"],
    override_var: None,
    install: "Debian's `openssl` package",
};

pub const PROMTOOL: Tool = Tool {
    names: &["promtool"],
    override_var: None,
    install: "Debian's `prometheus` package (it brings promtool)",
};

pub const ETCD: Tool = Tool {
    names: &["etcd"],
    override_var: None,
    install: "Debian's `etcd-server` package",
};

pub const ETCDCTL: Tool = Tool {
    names: &["etcdctl"],
    override_var: None,
    install: "Debian's `etcd-client` package",
};

pub const CHROMIUM: Tool = Tool {
    names: &["chromium", "chromium-browser", "google-chrome"],
    override_var: Some("CHROMIUM"),
    install: "Debian's `chromium` package, or set CHROMIUM=/path/to/chrome",
};

pub const SYSTEMD_ANALYZE: Tool = Tool {
    names: &["systemd-analyze"],
    override_var: None,
    install: "Debian's `systemd` package",
};

pub const PRLIMIT: Tool = Tool {
    names: &["prlimit"],
    override_var: None,
    install: "Debian's `util-linux` package",
};

pub const BASH: Tool = Tool {
    names: &["bash"],
    override_var: None,
    install: "Debian's `bash` package",
};

pub const PYTHON3: Tool = Tool {
    names: &["python3"],
    override_var: None,
    install: "Debian's `python3` package",
};

/// Whether the tests run under CI (`CI` set to anything but empty, `0` or
/// `false`), where a missing tool is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// The program to run for `tool`, if it is there.
pub fn locate(tool: &Tool) -> Option<String> {
    if let Some(var) = tool.override_var {
        if let Ok(path) = std::env::var(var) {
            if !path.is_empty() {
                return Some(path);
            }
        }
    }
    tool.names
        .iter()
        .find(|name| on_path(name).is_some())
        .map(|name| (*name).to_owned())
}

/// The program [`locate`] finds, or (as [`require`] rules) a failure in
/// CI and `None` elsewhere.
pub fn program(tool: &Tool) -> Option<String> {
    let found = locate(tool);
    if found.is_none() {
        missing(&format!(
            "`{}` is not installed: install {} (.ci/setup does)",
            tool.names.join("` or `"),
            tool.install
        ));
    }
    found
}

/// True when `tool` is there; otherwise fails the test in CI and returns
/// false (skip) elsewhere.
pub fn require(tool: &Tool) -> bool {
    program(tool).is_some()
}

/// True when python3 can import `module`; otherwise, as [`require`], fails
/// in CI or returns false. `package` is the pip package that brings it.
pub fn require_python(module: &str, package: &str) -> bool {
    if !require(&PYTHON3) {
        return false;
    }
    let imports = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !imports {
        missing(&format!(
            "python3 cannot import `{module}`: install the pip package `{package}` \
             (python3 -m pip install '{package}'; .ci/setup does)"
        ));
    }
    imports
}

/// The one rule for a missing tool: panic in CI, a loud skip elsewhere.
fn missing(what: &str) {
    if in_ci() {
        panic!("{what}; CI must have every tool the tests use");
    }
    eprintln!(
        "\n********************************************************************\n\
         SKIPPED (not CI): {what}\n\
         ********************************************************************\n"
    );
}

/// The first executable file called `name` on `PATH` (or `name` itself
/// when it is a path).
fn on_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return is_executable(Path::new(name)).then(|| PathBuf::from(name));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
