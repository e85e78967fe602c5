//! cargo-fuzz target `config`: the properties are in `fuzz/checks/config.rs`
//! (shared with tests/fuzz_regressions.rs, which replays saved inputs).
#![no_main]

#[path = "../checks/config.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
