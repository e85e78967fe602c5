//! cargo-fuzz target `framing`: the properties are in `fuzz/checks/framing.rs`
//! (shared with tests/fuzz_regressions.rs, which replays saved inputs).
#![no_main]

#[path = "../checks/framing.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
