//! cargo-fuzz target `admin_json`: the properties are in `fuzz/checks/admin_json.rs`
//! (shared with tests/fuzz_regressions.rs, which replays saved inputs).
#![no_main]

#[path = "../checks/admin_json.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
