//! Shared helpers for the runtime tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use backstop::{Backstop, BreakerConfig};
use backstop_mem::MemBroker;

/// A context over a fresh in-memory broker, ignoring the process environment.
pub fn context() -> (Backstop, MemBroker) {
    context_with(BreakerConfig::default())
}

pub fn context_with(breaker: BreakerConfig) -> (Backstop, MemBroker) {
    let mem = MemBroker::new();
    let bs = Backstop::builder(Arc::new(mem.clone()))
        .breaker_defaults(breaker)
        .env_from(BTreeMap::new())
        .wall_clock_epoch_ms(1_700_000_000_000)
        .build()
        .expect("valid context");
    (bs, mem)
}

/// Lets spawned tasks run without moving paused time much.
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Waits (in paused time) until `cond` holds, up to `limit` of simulated time.
pub async fn until(limit: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "condition not reached within {limit:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
