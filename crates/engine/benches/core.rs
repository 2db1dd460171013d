//! The sans-IO core's decision throughput (docs/benchmarks.md), in message lifecycles per second.
//!
//! - `consumer/lifecycle_ok`: delivered → Invoke → finished(Ok) → Ack, in steady state with
//!   64 handler runs in flight; every action and event drained at every step.
//! - `consumer/retry_mix`: the same with 30 % of messages failing once and then succeeding,
//!   5 % failing every attempt and going to the DLQ (publish confirmed, then acked), time
//!   advancing and retries fired by `handle_timeout`.
//! - `producer/call_ok`: call → RunBody → body Ok → Publish → publish Ok → Complete.
//!
//! Run: `cargo bench -p backstop-engine --bench core` (wall time), or with
//! `BACKSTOP_BENCH_CPU=1` to measure the thread's CPU time instead (Linux).

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use backstop_engine::core::{
    splitmix64, ConsumerAction, ConsumerConfig, ConsumerEvent, ConsumerMachine, ErrorKind, Key,
    ProducerAction, ProducerConfig, ProducerEvent, ProducerMachine, RetryPolicy, Time,
};
use criterion::measurement::Measurement;
use criterion::{Criterion, SamplingMode, Throughput};

const PARALLELISM: u32 = 64;
const BATCH: u64 = 10_000;

/// What a real driver does with the outputs it does not act on: counts them per kind, the way
/// the runtime turns events into metrics.
#[derive(Default)]
struct Seen {
    actions: [u64; 8],
    events: [u64; 16],
}

impl Seen {
    #[inline]
    fn action(&mut self, a: &ConsumerAction) {
        let i = match a {
            ConsumerAction::Request { .. } => 0,
            ConsumerAction::Invoke { .. } => 1,
            ConsumerAction::Ack { .. } => 2,
            ConsumerAction::Nack { .. } => 3,
            ConsumerAction::PublishDlq { .. } => 4,
            ConsumerAction::Pause => 5,
            ConsumerAction::Resume => 6,
            ConsumerAction::PublishRetry { .. } => 7,
        };
        self.actions[i] += 1;
    }

    #[inline]
    fn event(&mut self, e: &ConsumerEvent) {
        let i = match e {
            ConsumerEvent::Received { .. } => 0,
            ConsumerEvent::Invoked { .. } => 1,
            ConsumerEvent::Succeeded { latency, .. } => {
                black_box(latency);
                2
            }
            ConsumerEvent::Failed { .. } => 3,
            ConsumerEvent::RetryScheduled { .. } => 4,
            ConsumerEvent::DeadLettered { .. } => 5,
            ConsumerEvent::DeadLetterFailed { .. } => 6,
            ConsumerEvent::Acked { .. } => 7,
            ConsumerEvent::Nacked { .. } => 8,
            ConsumerEvent::Breaker(_) => 9,
            ConsumerEvent::Drained => 10,
            ConsumerEvent::RetryPublished { .. } => 11,
            ConsumerEvent::RetryPublishFailed { .. } => 12,
        };
        self.events[i] += 1;
    }
}

/// Drives a consumer machine in steady state with every run succeeding.
struct Steady {
    m: ConsumerMachine,
    seen: Seen,
    running: VecDeque<Key>,
    now: Time,
}

impl Steady {
    fn new() -> Steady {
        let cfg = ConsumerConfig::builder()
            .max_parallelism(PARALLELISM)
            .build()
            .expect("valid");
        let mut s = Steady {
            m: ConsumerMachine::new(cfg),
            seen: Seen::default(),
            running: VecDeque::with_capacity(PARALLELISM as usize * 4),
            now: Time::ZERO,
        };
        s.drain();
        // Fill every slot, then keep it full: one delivery in, one completion out.
        while s.running.len() < PARALLELISM as usize {
            s.m.handle_delivered(s.now, true);
            s.drain();
        }
        s
    }

    #[inline]
    fn drain(&mut self) {
        while let Some(a) = self.m.poll_action() {
            match a {
                ConsumerAction::Invoke { key, .. } => self.running.push_back(key),
                other => self.seen.action(&other),
            }
        }
        while let Some(e) = self.m.poll_event() {
            self.seen.event(&e);
        }
    }

    /// One full lifecycle: a delivery comes in (and waits for a slot), the oldest run finishes.
    #[inline]
    fn lifecycle(&mut self) {
        self.now = self.now + Duration::from_micros(1);
        self.m.handle_delivered(self.now, true);
        self.drain();
        let k = self.running.pop_front().expect("a run in flight");
        self.m.handle_finished(self.now, k, Ok(()));
        self.drain();
    }
}

/// Drives a consumer machine with retries and dead-letters mixed in.
struct Mix {
    m: ConsumerMachine,
    seen: Seen,
    running: VecDeque<Key>,
    dlq: VecDeque<Key>,
    fate: Vec<u8>,
    seq: u64,
    now: Time,
    done: u64,
}

const OK: u8 = 0;
const FAIL_ONCE: u8 = 1;
const EXHAUST: u8 = 2;

impl Mix {
    fn new() -> Mix {
        let cfg = ConsumerConfig::builder()
            .max_parallelism(PARALLELISM)
            .retry(
                RetryPolicy::builder()
                    .max_retries(2)
                    .retry_delay(Duration::from_millis(1))
                    .build()
                    .expect("valid"),
            )
            .dead_letter(true)
            .build()
            .expect("valid");
        let held = cfg.max_held() as usize;
        let mut m = Mix {
            m: ConsumerMachine::new(cfg),
            seen: Seen::default(),
            running: VecDeque::with_capacity(held),
            dlq: VecDeque::with_capacity(held),
            fate: vec![OK; held],
            seq: 0,
            now: Time::ZERO,
            done: 0,
        };
        m.drain();
        m
    }

    #[inline]
    fn drain(&mut self) {
        while let Some(a) = self.m.poll_action() {
            match a {
                ConsumerAction::Invoke { key, .. } => self.running.push_back(key),
                ConsumerAction::PublishDlq { key, .. } => self.dlq.push_back(key),
                ConsumerAction::Ack { .. } | ConsumerAction::Nack { .. } => self.done += 1,
                _ => {}
            }
            self.seen.action(&a);
        }
        while let Some(e) = self.m.poll_event() {
            self.seen.event(&e);
        }
    }

    /// One step: deliver if there is credit, finish the oldest run, confirm DLQ publishes, let
    /// 10 µs pass and fire what is due.
    #[inline]
    fn step(&mut self) {
        if self.m.credit() > 0 {
            self.seq += 1;
            let roll = splitmix64(self.seq) % 100;
            let key = self.m.handle_delivered(self.now, true);
            self.fate[key.index()] = match roll {
                0..30 => FAIL_ONCE,
                30..35 => EXHAUST,
                _ => OK,
            };
            self.drain();
        }
        if let Some(k) = self.running.pop_front() {
            let attempt = self.m.attempts(k).unwrap_or(1);
            let result = match self.fate[k.index()] {
                FAIL_ONCE if attempt == 1 => Err(ErrorKind::Handler),
                EXHAUST => Err(ErrorKind::Handler),
                _ => Ok(()),
            };
            self.m.handle_finished(self.now, k, result);
            self.drain();
        }
        while let Some(k) = self.dlq.pop_front() {
            self.m.handle_dlq_result(self.now, k, Ok(()));
            self.drain();
        }
        self.now = self.now + Duration::from_micros(10);
        if self.m.poll_timeout().is_some_and(|t| t <= self.now) {
            self.m.handle_timeout(self.now);
            self.drain();
        }
    }

    /// Runs until `n` more messages have ended (acked or nacked).
    fn lifecycles(&mut self, n: u64) {
        let target = self.done + n;
        while self.done < target {
            self.step();
        }
    }
}

fn producer_call(m: &mut ProducerMachine, now: Time) {
    let call = m.handle_call(now);
    let mut pending = 1u32;
    while pending > 0 {
        pending = 0;
        while let Some(a) = m.poll_action() {
            match a {
                ProducerAction::RunBody { .. } => {
                    m.handle_body_result(now, call, Ok(()));
                    pending += 1;
                }
                ProducerAction::Publish { .. } => {
                    m.handle_publish_result(now, call, Ok(()));
                    pending += 1;
                }
                ProducerAction::Complete { outcome, .. } => {
                    black_box(outcome);
                }
                ProducerAction::PublishDlq { .. } => {}
            }
        }
        while let Some(e) = m.poll_event() {
            black_box(matches!(e, ProducerEvent::Sent { .. }));
        }
    }
}

fn consumer<M: Measurement>(c: &mut Criterion<M>, suffix: &str) {
    let mut g = c.benchmark_group(format!("consumer{suffix}"));
    if !suffix.is_empty() {
        g.sampling_mode(SamplingMode::Flat);
    }
    g.throughput(Throughput::Elements(BATCH));
    let mut steady = Steady::new();
    g.bench_function("lifecycle_ok", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                steady.lifecycle();
            }
        })
    });
    let mut mix = Mix::new();
    mix.lifecycles(100_000); // reach steady state: retries and DLQ waits in the mix
    g.bench_function("retry_mix", |b| b.iter(|| mix.lifecycles(BATCH)));
    g.finish();
}

fn producer<M: Measurement>(c: &mut Criterion<M>, suffix: &str) {
    let mut g = c.benchmark_group(format!("producer{suffix}"));
    if !suffix.is_empty() {
        g.sampling_mode(SamplingMode::Flat);
    }
    g.throughput(Throughput::Elements(BATCH));
    let mut m = ProducerMachine::new(ProducerConfig::builder().build().expect("valid"));
    let mut now = Time::ZERO;
    g.bench_function("call_ok", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                now = now + Duration::from_micros(1);
                producer_call(&mut m, now);
            }
        })
    });
    g.finish();
}

/// CPU time of the calling thread, from `/proc/thread-self/schedstat` (Linux): a figure for
/// "on one core" that other processes competing for the CPU do not inflate.
mod cpu_time {
    use criterion::measurement::{Measurement, ValueFormatter, WallTime};

    pub struct CpuTime {
        wall: WallTime,
    }

    fn read() -> Option<u64> {
        let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
        s.split_whitespace().next()?.parse().ok()
    }

    impl CpuTime {
        pub fn new() -> Option<CpuTime> {
            read().map(|_| CpuTime { wall: WallTime })
        }
    }

    impl Measurement for CpuTime {
        type Intermediate = u64;
        type Value = u64;
        fn start(&self) -> u64 {
            read().unwrap_or(0)
        }
        fn end(&self, start: u64) -> u64 {
            read().unwrap_or(0).saturating_sub(start)
        }
        fn add(&self, a: &u64, b: &u64) -> u64 {
            a + b
        }
        fn zero(&self) -> u64 {
            0
        }
        fn to_f64(&self, v: &u64) -> f64 {
            *v as f64
        }
        fn formatter(&self) -> &dyn ValueFormatter {
            self.wall.formatter() // nanoseconds either way
        }
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

/// Wall-clock time by default; thread CPU time with `BACKSTOP_BENCH_CPU=1` (groups get a
/// `-cpu` suffix so the two never share a baseline).
fn main() {
    if std::env::var_os("BACKSTOP_BENCH_CPU").is_some() {
        let m = cpu_time::CpuTime::new().expect("/proc/thread-self/schedstat is readable");
        // The kernel's CPU-time counter moves in scheduler ticks (4 ms here) while a thread runs
        // undisturbed: few, long, equal samples keep that granularity under 1 %.
        let mut c = config()
            .with_measurement(m)
            .sample_size(10)
            .measurement_time(Duration::from_secs(12))
            .configure_from_args();
        consumer(&mut c, "-cpu");
        producer(&mut c, "-cpu");
        c.final_summary();
    } else {
        let mut c = config().configure_from_args();
        consumer(&mut c, "");
        producer(&mut c, "");
        c.final_summary();
    }
}
