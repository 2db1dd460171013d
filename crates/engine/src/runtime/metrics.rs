//! Prometheus metrics with the names the original Python system exposed, plus operator extras.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `pulsar_messages_sent_total` | counter | topic |
//! | `pulsar_errors_total` | counter | topic, kind |
//! | `pulsar_message_latency_seconds` | histogram | topic, op (`send`, `handle`) |
//! | `circuit_breaker_state` | gauge (0 closed, 1 half-open, 2 open) | breaker |
//! | `circuit_breaker_failures` | gauge | breaker |
//! | `circuit_breaker_transitions_total` | counter | breaker, from, to |
//! | `pulsar_messages_received_total` | counter | topic, subscription |
//! | `pulsar_messages_acked_total` | counter | topic, subscription |
//! | `pulsar_messages_nacked_total` | counter | topic, subscription, reason |
//! | `pulsar_messages_retried_total` | counter | topic |
//! | `pulsar_messages_dead_lettered_total` | counter | topic |
//! | `pulsar_handlers_in_flight` | gauge | topic, subscription |
//! | `pulsar_task_calls_rejected_total` | counter | topic (breaker open) |
//! | `pulsar_handlers_max_parallelism` | gauge | topic, subscription |
//! | `pulsar_messages_parked_total` | counter | topic, subscription |
//! | `backstop_control_actions_total` | counter | target, action (pause, resume, force_open, force_closed, release) |
//!
//! Label values are topic, subscription, breaker names and error kinds: bounded, never ids.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::core::{BreakerState, ErrorKind, Transition};

/// The metric families, registered in one [`Registry`].
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    pub(crate) sent: IntCounterVec,
    pub(crate) errors: IntCounterVec,
    pub(crate) latency: HistogramVec,
    pub(crate) breaker_state: IntGaugeVec,
    pub(crate) breaker_failures: IntGaugeVec,
    pub(crate) breaker_transitions: IntCounterVec,
    pub(crate) received: IntCounterVec,
    pub(crate) acked: IntCounterVec,
    pub(crate) nacked: IntCounterVec,
    pub(crate) retried: IntCounterVec,
    pub(crate) dead_lettered: IntCounterVec,
    pub(crate) in_flight: IntGaugeVec,
    pub(crate) rejected: IntCounterVec,
    pub(crate) max_parallelism: IntGaugeVec,
    pub(crate) parked: IntCounterVec,
    pub(crate) control: IntCounterVec,
}

impl Metrics {
    /// The families, registered in a fresh registry.
    ///
    /// ```
    /// let m = backstop_engine::runtime::Metrics::new();
    /// m.record_sent("user_updates");
    /// assert!(m.render().contains("pulsar_messages_sent_total{topic=\"user_updates\"} 1"));
    /// ```
    pub fn new() -> Metrics {
        Self::with_registry(Registry::new()).expect("fresh registry has no clashes")
    }

    /// The families, registered in `registry` (fails if the names are taken there).
    pub fn with_registry(registry: Registry) -> Result<Metrics, prometheus::Error> {
        fn counter(
            r: &Registry,
            name: &str,
            help: &str,
            labels: &[&str],
        ) -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        }
        fn gauge(
            r: &Registry,
            name: &str,
            help: &str,
            labels: &[&str],
        ) -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        }
        let r = &registry;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "pulsar_message_latency_seconds",
                "Latency of sends and handler runs",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["topic", "op"],
        )?;
        r.register(Box::new(latency.clone()))?;
        Ok(Metrics {
            sent: counter(
                r,
                "pulsar_messages_sent_total",
                "Messages published and confirmed",
                &["topic"],
            )?,
            errors: counter(
                r,
                "pulsar_errors_total",
                "Failed attempts by error kind",
                &["topic", "kind"],
            )?,
            latency,
            breaker_state: gauge(
                r,
                "circuit_breaker_state",
                "0 closed, 1 half-open, 2 open",
                &["breaker"],
            )?,
            breaker_failures: gauge(
                r,
                "circuit_breaker_failures",
                "Consecutive counted failures",
                &["breaker"],
            )?,
            breaker_transitions: counter(
                r,
                "circuit_breaker_transitions_total",
                "Breaker state changes",
                &["breaker", "from", "to"],
            )?,
            received: counter(
                r,
                "pulsar_messages_received_total",
                "Deliveries received",
                &["topic", "subscription"],
            )?,
            acked: counter(
                r,
                "pulsar_messages_acked_total",
                "Deliveries acknowledged",
                &["topic", "subscription"],
            )?,
            nacked: counter(
                r,
                "pulsar_messages_nacked_total",
                "Deliveries negatively acknowledged",
                &["topic", "subscription", "reason"],
            )?,
            retried: counter(
                r,
                "pulsar_messages_retried_total",
                "Retries scheduled",
                &["topic"],
            )?,
            dead_lettered: counter(
                r,
                "pulsar_messages_dead_lettered_total",
                "Dead-letter records confirmed",
                &["topic"],
            )?,
            in_flight: gauge(
                r,
                "pulsar_handlers_in_flight",
                "Handler runs in flight",
                &["topic", "subscription"],
            )?,
            rejected: counter(
                r,
                "pulsar_task_calls_rejected_total",
                "Task calls refused by an open breaker",
                &["topic"],
            )?,
            max_parallelism: gauge(
                r,
                "pulsar_handlers_max_parallelism",
                "Handler runs allowed at once",
                &["topic", "subscription"],
            )?,
            parked: counter(
                r,
                "pulsar_messages_parked_total",
                "Deliveries parked: budget exhausted and no DLQ",
                &["topic", "subscription"],
            )?,
            control: counter(
                r,
                "backstop_control_actions_total",
                "Operator control actions",
                &["target", "action"],
            )?,
            registry,
        })
    }

    /// The registry (to add your own metrics or gather).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Counts a confirmed publish.
    pub fn record_sent(&self, topic: &str) {
        self.sent.with_label_values(&[topic]).inc();
    }

    /// Counts a failed attempt.
    pub fn record_error(&self, topic: &str, kind: ErrorKind) {
        self.errors.with_label_values(&[topic, kind.as_str()]).inc();
    }

    /// Records a latency sample.
    pub fn observe_latency(&self, topic: &str, op: &str, secs: f64) {
        self.latency.with_label_values(&[topic, op]).observe(secs);
    }

    /// Sets up a breaker's series (closed, 0 failures) so dashboards see it before any change.
    pub fn register_breaker(&self, breaker: &str) {
        self.breaker_state
            .with_label_values(&[breaker])
            .set(BreakerState::Closed.gauge());
        self.breaker_failures.with_label_values(&[breaker]).set(0);
    }

    /// Records a breaker transition: the one state series moves, the failure gauge follows.
    pub fn record_transition(&self, breaker: &str, t: &Transition) {
        self.breaker_state
            .with_label_values(&[breaker])
            .set(t.to.gauge());
        self.breaker_failures
            .with_label_values(&[breaker])
            .set(i64::from(t.failures));
        self.breaker_transitions
            .with_label_values(&[breaker, t.from.as_str(), t.to.as_str()])
            .inc();
    }

    /// Sets the breaker's failure gauge.
    pub fn set_breaker_failures(&self, breaker: &str, failures: u32) {
        self.breaker_failures
            .with_label_values(&[breaker])
            .set(i64::from(failures));
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Time;

    #[test]
    fn exposes_the_python_names() {
        let m = Metrics::new();
        m.record_sent("t");
        m.record_error("t", ErrorKind::Timeout);
        m.observe_latency("t", "send", 0.01);
        m.register_breaker("b");
        let text = m.render();
        for name in [
            "pulsar_messages_sent_total{topic=\"t\"} 1",
            "pulsar_errors_total{kind=\"timeout\",topic=\"t\"} 1",
            "pulsar_message_latency_seconds_bucket{op=\"send\",topic=\"t\",le=\"0.01\"} 1",
            "pulsar_message_latency_seconds_sum{op=\"send\",topic=\"t\"}",
            "pulsar_message_latency_seconds_count{op=\"send\",topic=\"t\"} 1",
            "circuit_breaker_state{breaker=\"b\"} 0",
            "circuit_breaker_failures{breaker=\"b\"} 0",
        ] {
            assert!(text.contains(name), "missing `{name}` in\n{text}");
        }
    }

    #[test]
    fn breaker_state_is_one_series_holding_the_current_state() {
        let m = Metrics::new();
        m.register_breaker("b");
        let t = |from, to, failures| Transition {
            from,
            to,
            failures,
            at: Time::ZERO,
        };
        m.record_transition("b", &t(BreakerState::Closed, BreakerState::Open, 5));
        m.record_transition("b", &t(BreakerState::Open, BreakerState::HalfOpen, 5));
        m.record_transition("b", &t(BreakerState::HalfOpen, BreakerState::Closed, 0));
        let text = m.render();
        let lines: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("circuit_breaker_state{"))
            .collect();
        assert_eq!(lines, vec!["circuit_breaker_state{breaker=\"b\"} 0"]);
        assert!(text.contains("circuit_breaker_failures{breaker=\"b\"} 0"));
        assert!(text.contains(
            "circuit_breaker_transitions_total{breaker=\"b\",from=\"closed\",to=\"open\"} 1"
        ));
    }
}
