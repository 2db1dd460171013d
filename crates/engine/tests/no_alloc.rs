//! Proof that the core does not allocate per message in steady state: a counting global
//! allocator (this test binary's own) counts this thread's allocations while 100 000 message
//! lifecycles run after a warm-up, for the plain lifecycle, a retry/DLQ mix, and producer calls.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::VecDeque;
use std::time::Duration;

use backstop_engine::core::{
    splitmix64, ConsumerAction, ConsumerConfig, ConsumerMachine, ErrorKind, Key, ProducerAction,
    ProducerConfig, ProducerMachine, RetryPolicy, Time,
};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: allocations during thread teardown are not ours to count.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by this thread while `f` runs.
fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

const LIFECYCLES: u64 = 100_000;

/// A consumer driver: delivers while there is credit, finishes the oldest run (failing it as
/// `fate` says), confirms DLQ publishes, advances time and fires timers.
struct Driver {
    m: ConsumerMachine,
    running: VecDeque<Key>,
    dlq: VecDeque<Key>,
    fate: Vec<u8>,
    mix: bool,
    seq: u64,
    now: Time,
    done: u64,
}

impl Driver {
    fn new(mix: bool) -> Driver {
        let cfg = ConsumerConfig::builder()
            .max_parallelism(64)
            .retry(
                RetryPolicy::builder()
                    .max_retries(2)
                    .retry_delay(Duration::from_millis(1))
                    .exponential(2, Duration::from_millis(4), 300)
                    .build()
                    .unwrap(),
            )
            .dead_letter(true)
            .build()
            .unwrap();
        let held = cfg.max_held() as usize;
        let mut d = Driver {
            m: ConsumerMachine::new(cfg),
            running: VecDeque::with_capacity(held),
            dlq: VecDeque::with_capacity(held),
            fate: vec![0; held],
            mix,
            seq: 0,
            now: Time::ZERO,
            done: 0,
        };
        d.drain();
        d
    }

    fn drain(&mut self) {
        while let Some(a) = self.m.poll_action() {
            match a {
                ConsumerAction::Invoke { key, .. } => self.running.push_back(key),
                ConsumerAction::PublishDlq { key, .. } => self.dlq.push_back(key),
                ConsumerAction::Ack { .. } | ConsumerAction::Nack { .. } => self.done += 1,
                _ => {}
            }
        }
        while self.m.poll_event().is_some() {}
    }

    fn step(&mut self) {
        if self.m.credit() > 0 {
            self.seq += 1;
            let key = self.m.handle_delivered(self.now, true);
            self.fate[key.index()] = if self.mix {
                match splitmix64(self.seq) % 100 {
                    0..30 => 1,  // fails once
                    30..35 => 2, // fails every attempt: DLQ
                    _ => 0,
                }
            } else {
                0
            };
            self.drain();
        }
        if let Some(k) = self.running.pop_front() {
            let attempt = self.m.attempts(k).unwrap_or(1);
            let r = match self.fate[k.index()] {
                1 if attempt == 1 => Err(ErrorKind::Handler),
                2 => Err(ErrorKind::Panic),
                _ => Ok(()),
            };
            self.m.handle_finished(self.now, k, r);
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

    fn run(&mut self, lifecycles: u64) {
        let target = self.done + lifecycles;
        while self.done < target {
            self.step();
        }
    }
}

#[test]
fn steady_state_allocates_nothing_per_message() {
    // The counter works (a sanity check that this binary's allocator is in use).
    assert!(allocations_in(|| drop(std::hint::black_box(vec![1u8; 64]))) >= 1);

    let mut plain = Driver::new(false);
    plain.run(10_000);
    let n = allocations_in(|| plain.run(LIFECYCLES));
    assert_eq!(n, 0, "{n} allocations over {LIFECYCLES} plain lifecycles");

    let mut mix = Driver::new(true);
    mix.run(10_000);
    let n = allocations_in(|| mix.run(LIFECYCLES));
    assert_eq!(
        n, 0,
        "{n} allocations over {LIFECYCLES} retry/DLQ lifecycles"
    );
    assert!(
        mix.m.held() > 0 && mix.seq > LIFECYCLES,
        "the mix really ran"
    );

    let mut p = ProducerMachine::new(ProducerConfig::builder().build().unwrap());
    let mut now = Time::ZERO;
    let call = |now: Time, p: &mut ProducerMachine| {
        let k = p.handle_call(now);
        while let Some(a) = p.poll_action() {
            match a {
                ProducerAction::RunBody { .. } => {
                    p.handle_body_result(now, k, Ok(()));
                }
                ProducerAction::Publish { .. } => {
                    p.handle_publish_result(now, k, Ok(()));
                }
                _ => {}
            }
        }
        while p.poll_event().is_some() {}
    };
    for _ in 0..1_000 {
        call(now, &mut p);
    }
    let n = allocations_in(|| {
        for _ in 0..LIFECYCLES {
            now = now + Duration::from_micros(1);
            call(now, &mut p);
        }
    });
    assert_eq!(n, 0, "{n} allocations over {LIFECYCLES} producer calls");
}
