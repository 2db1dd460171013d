//! Operator-facing series of a consumer that dashboards and alerts read: its parallelism limit
//! (for "in flight vs max_parallelism") and its parked counter (created at 0 so that an alert on
//! it has a series before the first park).

use super::metrics::Metrics;
use super::spec::ConsumerSpec;

/// Sets up the operator series of a consumer when it starts.
pub(crate) fn register_consumer(m: &Metrics, topic: &str, sub: &str, spec: &ConsumerSpec) {
    m.max_parallelism
        .with_label_values(&[topic, sub])
        .set(i64::from(spec.max_parallelism_value()));
    m.parked.with_label_values(&[topic, sub]).inc_by(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_consumer_exposes_its_limit_and_a_zero_parked_series() {
        let m = Metrics::new();
        let spec = ConsumerSpec::new("t", "s")
            .max_parallelism(7)
            .build()
            .unwrap();
        register_consumer(&m, "t", "s", &spec);
        let text = m.render();
        assert!(
            text.contains("pulsar_handlers_max_parallelism{subscription=\"s\",topic=\"t\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("pulsar_messages_parked_total{subscription=\"s\",topic=\"t\"} 0"),
            "{text}"
        );
    }
}
