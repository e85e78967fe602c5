//! cargo-fuzz target `address`: the properties are in `fuzz/checks/address.rs`
//! (shared with tests/fuzz_regressions.rs, which replays saved inputs).
#![no_main]

#[path = "../checks/address.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
