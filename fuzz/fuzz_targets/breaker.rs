//! cargo-fuzz target `breaker`: see `backstop_fuzz::breaker` for the ops and what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    backstop_fuzz::plant_from_env();
    if let Err(failure) = backstop_fuzz::breaker::check(data) {
        panic!(
            "breaker: {failure}\n{:#?}",
            backstop_fuzz::decode::<backstop_fuzz::breaker::BreakerCase>(data)
        );
    }
});
