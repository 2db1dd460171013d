//! cargo-fuzz target `dlq_record`: dead-letter records (JSON bodies, properties) and their fitting to the size limit; see `fuzz/src/parsers.rs` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../src/parsers.rs"]
#[allow(dead_code)]
mod harness;

fuzz_target!(|data: &[u8]| {
    if let Err(failure) = harness::check_dlq(data) {
        panic!("dlq_record: {failure}");
    }
});
