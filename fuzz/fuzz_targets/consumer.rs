//! cargo-fuzz target `consumer`: see `backstop_fuzz::consumer` for the ops and what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    backstop_fuzz::plant_from_env();
    if let Err(failure) = backstop_fuzz::consumer::check(data) {
        panic!(
            "consumer: {failure}\n{:#?}",
            backstop_fuzz::decode::<backstop_fuzz::consumer::ConsumerCase>(data)
        );
    }
});
