//! cargo-fuzz target `producer`: see `backstop_fuzz::producer` for the ops and what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    backstop_fuzz::plant_from_env();
    if let Err(failure) = backstop_fuzz::producer::check(data) {
        panic!(
            "producer: {failure}\n{:#?}",
            backstop_fuzz::decode::<backstop_fuzz::producer::ProducerCase>(data)
        );
    }
});
