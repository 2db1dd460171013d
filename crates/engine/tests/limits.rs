//! What zero and out-of-range values mean for the retry, timeout and parallelism settings, as
//! docs/security.md states it: each either has a stated meaning or is rejected with a
//! `ConfigError` naming the setting.

use std::time::Duration;

use backstop_engine::runtime::{ConsumerSpec, TaskSpec};

#[test]
fn zero_retry_delay_means_retry_at_once_and_zero_retries_one_attempt() {
    let spec = TaskSpec::new("t")
        .retry_delay(Duration::ZERO)
        .max_retries(0)
        .build()
        .expect("zero is a meaningful value for both");
    let _ = spec;
    ConsumerSpec::new("t", "s")
        .retry_delay(Duration::ZERO)
        .max_retries(0)
        .build()
        .expect("zero is a meaningful value for both");
}

#[test]
fn out_of_range_values_are_rejected_naming_the_setting() {
    let cases = [
        (
            TaskSpec::new("t").max_retries(1001).build().unwrap_err(),
            "max_retries",
        ),
        (
            TaskSpec::new("t")
                .retry_delay(Duration::from_secs(25 * 3600))
                .build()
                .unwrap_err(),
            "retry_delay",
        ),
        (
            TaskSpec::new("t")
                .send_timeout(Duration::ZERO)
                .build()
                .unwrap_err(),
            "send_timeout",
        ),
        (
            ConsumerSpec::new("t", "s")
                .max_parallelism(0)
                .build()
                .unwrap_err(),
            "max_parallelism",
        ),
        (
            ConsumerSpec::new("t", "s")
                .max_retries(5000)
                .build()
                .unwrap_err(),
            "max_retries",
        ),
        (
            ConsumerSpec::new("t", " ").build().unwrap_err(),
            "subscription",
        ),
    ];
    for (err, setting) in cases {
        assert_eq!(err.setting(), setting, "{err}");
    }
}
