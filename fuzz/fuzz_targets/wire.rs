//! cargo-fuzz target `wire`: the in-memory broker's TCP wire server under hostile bytes; see `fuzz/src/wire.rs` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../src/wire.rs"]
#[allow(dead_code)]
mod harness;

fuzz_target!(|data: &[u8]| {
    if let Err(failure) = harness::check(data) {
        panic!("wire: {failure}");
    }
});
