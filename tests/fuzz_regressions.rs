//! Fuzzing regressions, on stable and without the fuzzer: every input the
//! fuzz targets (fuzz/, run by bench/fuzz.sh) found to break a property is
//! saved under `tests/fuzz-regressions/<target>/` and replayed here through
//! the same oracle the target runs (`fuzz/checks/<target>.rs`), together
//! with the targets' committed seeds (`fuzz/seeds/<target>/`). A few tests
//! also show that each oracle does fail on the kind of fault it is for.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../fuzz/checks/address.rs"]
mod address;
#[path = "../fuzz/checks/admin_json.rs"]
mod admin_json;
#[path = "../fuzz/checks/config.rs"]
mod config;
#[path = "../fuzz/checks/framing.rs"]
mod framing;

/// The files of `dir`, sorted (none when it does not exist).
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Runs `check` on every saved input of `target`; fails naming each input
/// that breaks it. Returns how many inputs ran.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = inputs(&root.join("tests/fuzz-regressions").join(target));
    files.extend(inputs(&root.join("fuzz/seeds").join(target)));
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("read a saved fuzz input");
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: inputs failing: {failed:#?}");
    files.len()
}

#[test]
fn framing_inputs_hold() {
    assert!(replay("framing", framing::check) > 0, "no inputs found");
}

#[test]
fn config_inputs_hold() {
    assert!(replay("config", config::check) > 0, "no inputs found");
}

#[test]
fn admin_json_inputs_hold() {
    assert!(
        replay("admin_json", admin_json::check) > 0,
        "no inputs found"
    );
}

#[test]
fn address_inputs_hold() {
    assert!(replay("address", address::check) > 0, "no inputs found");
}

// --- the oracles can fail -------------------------------------------------------------

const CL_TE: &[u8] =
    b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

#[test]
#[should_panic(expected = "was not broken")]
fn the_framing_oracle_catches_a_conflict_let_through() {
    // As if the guard had left the smuggling head alone.
    framing::differential(CL_TE, CL_TE);
}

#[test]
#[should_panic(expected = "was changed")]
fn the_framing_oracle_catches_a_valid_head_changed() {
    let head = b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
    let mut out = head.to_vec();
    out[20] = b'X';
    framing::differential(head, &out);
}

#[test]
#[should_panic(expected = "line out of the text")]
fn the_config_oracle_catches_an_error_without_a_position() {
    let error = switchyard::config::ConfigError {
        file: "fuzz.toml".into(),
        line: 0,
        column: 0,
        key: "proxy.listen".into(),
        message: "bad".into(),
    };
    config::positioned("[proxy]\n", &error);
}

#[test]
#[should_panic(expected = "control character")]
fn the_admin_oracle_catches_an_error_echoing_a_newline() {
    admin_json::one_line("unknown field `a\nb`");
}
