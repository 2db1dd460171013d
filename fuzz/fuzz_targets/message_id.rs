//! cargo-fuzz target `message_id`: message ids and ORIGIN_MESSAGE_ID values; see `fuzz/src/parsers.rs` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../src/parsers.rs"]
#[allow(dead_code)]
mod harness;

fuzz_target!(|data: &[u8]| {
    if let Err(failure) = harness::check_message_id(data) {
        panic!("message_id: {failure}");
    }
});
