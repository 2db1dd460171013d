//! The `otel` feature on a real Apache Pulsar broker: a task call made inside a traced span
//! writes that span's W3C `traceparent` into the message properties, and the consumer's handler
//! span continues the same trace. Its own test binary: it installs a global `tracing` subscriber
//! with an OpenTelemetry layer.
//!
//! Fails loudly when no broker answers; never skips.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::{Backstop, ConsumerSpec, Delivery, Task, TaskError, TaskSpec};
use common::*;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_round_trip_through_pulsar() {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let tracer = provider.tracer("backstop-test");
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
    tracing::subscriber::set_global_default(subscriber).expect("one subscriber per binary");

    bounded(Duration::from_secs(90), async {
        let bs = Backstop::builder(Arc::new(connect().await))
            .env_from(BTreeMap::new())
            .build()
            .expect("context");
        let topic = unique("otel");
        type Seen = Vec<(Option<String>, String)>; // (traceparent property, handler's trace id)
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let s2 = seen.clone();
        let consumer = bs
            .spawn_consumer_with_delivery(
                ConsumerSpec::new(&topic, "svc").build().unwrap(),
                move |_m: serde_json::Value, d: Delivery| {
                    let cx = tracing::Span::current().context();
                    let trace_id = cx.span().span_context().trace_id().to_string();
                    s2.lock().unwrap().push((
                        d.property(backstop::TRACEPARENT).map(str::to_string),
                        trace_id,
                    ));
                    async { Ok(()) }
                },
            )
            .await
            .expect("subscribe");

        let request = tracing::info_span!("http_request");
        let trace_id = request
            .context()
            .span()
            .span_context()
            .trace_id()
            .to_string();
        assert_ne!(
            trace_id, "00000000000000000000000000000000",
            "the layer is active"
        );
        let task = Task::new(&bs, TaskSpec::new(&topic).build().unwrap()).unwrap();
        task.call(1_u32, |n: &u32| {
            let n = *n;
            async move { Ok::<_, TaskError>(serde_json::json!({ "n": n })) }
        })
        .instrument(request)
        .await
        .expect("published");

        let start = std::time::Instant::now();
        while seen.lock().unwrap().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(60), "not consumed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (traceparent, handler_trace) = seen.lock().unwrap()[0].clone();
        let traceparent = traceparent.expect("traceparent property written on publish");
        assert!(
            traceparent.starts_with(&format!("00-{trace_id}-")),
            "{traceparent} carries the caller's trace {trace_id}"
        );
        assert_eq!(
            handler_trace, trace_id,
            "the handler's span continues the trace"
        );
        consumer.shutdown().await;
    })
    .await;
}
