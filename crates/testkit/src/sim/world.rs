//! The state a simulation's hosts and its driver share: the oracle feeds (one per consumer per
//! service incarnation), the task watches, the last events, the first violation.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backstop_engine::core::{
    ConsumerAction, ConsumerConfig, ConsumerEvent, ProducerAction, ProducerEvent, Time,
};
use backstop_engine::runtime::Observer;

use super::report::Broke;
use crate::feed::{ConsumerFeed, TaskWatch};
use crate::oracle::Violation;

/// How many of the last events a failure report shows.
pub(crate) const LAST_EVENTS: usize = 40;

/// The first violation of a run, as recorded.
#[derive(Clone, Debug)]
pub(crate) struct Broken {
    pub broke: Broke,
    pub at: Duration,
    pub last_events: Vec<String>,
}

/// Everything shared (behind one mutex: turmoil runs every host on one thread).
#[derive(Default)]
pub(crate) struct World {
    /// The last events, readable.
    pub events: VecDeque<String>,
    /// Oracle feeds by (consumer name, incarnation).
    pub feeds: BTreeMap<(String, u32), ConsumerFeed>,
    /// Task watches by (task topic, incarnation).
    pub tasks: BTreeMap<(String, u32), TaskWatch>,
    /// Core settings of each consumer, by name (`topic/subscription`).
    pub consumer_cfgs: BTreeMap<String, ConsumerConfig>,
    /// Attempts allowed per call of each task, by topic.
    pub task_attempts: BTreeMap<String, u32>,
    /// Incarnations started so far.
    pub started: u32,
    /// The running incarnation (none while crashed).
    pub live: Option<u32>,
    /// Whether every consumer of the live incarnation has subscribed.
    pub subscribed: bool,
    /// Whether every consumer has subscribed at least once (the subscriptions exist on the
    /// broker from then on, across crashes).
    pub ever_subscribed: bool,
    /// Service hooks of the live incarnation still running.
    pub hooks_running: u32,
    /// Set by the driver once everything settled: the service shuts down gracefully.
    pub stop: bool,
    /// Set by the service once its consumers have shut down.
    pub stopped: bool,
    /// The first violation.
    pub broken: Option<Broken>,
    /// Whether the load host published every scheduled message.
    pub published_all: bool,
    /// The simulated time the driver last saw (for records made outside a host).
    pub clock: Duration,
}

/// The shared world.
pub(crate) type Shared = Arc<Mutex<World>>;

/// Locks the world (a poisoned lock is taken over).
pub(crate) fn lock(w: &Shared) -> MutexGuard<'_, World> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// `Key { index: 3, generation: 1 }` → `3v1`: the key's own short form, for readable events.
fn compact(text: String) -> String {
    const OPEN: &str = "Key { index: ";
    const MID: &str = ", generation: ";
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find(OPEN) {
        out.push_str(&rest[..i]);
        let after = &rest[i + OPEN.len()..];
        let parsed = after.find(MID).and_then(|m| {
            let end = after[m..].find(" }")? + m;
            Some((&after[..m], &after[m + MID.len()..end], end + 2))
        });
        match parsed {
            Some((index, generation, used)) => {
                out.push_str(index);
                out.push('v');
                out.push_str(generation);
                rest = &after[used..];
            }
            None => {
                out.push_str(OPEN);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Simulated time (zero outside a run).
pub(crate) fn sim_now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

impl World {
    /// The service crashed: its incarnation's buffered steps are checked, then it is retired.
    pub fn crashed(&mut self) {
        self.flush_all();
        self.live = None;
        self.subscribed = false;
        self.hooks_running = 0;
    }

    /// Adds a line to the last events.
    pub fn note(&mut self, text: String) {
        let t = turmoil::sim_elapsed().unwrap_or(self.clock);
        if self.events.len() == LAST_EVENTS {
            self.events.pop_front();
        }
        self.events
            .push_back(format!("{:>9.3}s {}", t.as_secs_f64(), compact(text)));
    }

    /// Records the first violation (later ones are ignored).
    pub fn fail(&mut self, broke: Broke) {
        if self.broken.is_none() {
            let at = turmoil::sim_elapsed().unwrap_or(self.clock);
            self.note(format!("BROKEN: {broke}"));
            self.broken = Some(Broken {
                broke,
                at,
                last_events: self.events.iter().cloned().collect(),
            });
        }
    }

    fn oracle_fail(&mut self, who: String, violation: Violation) {
        self.fail(Broke::Oracle { who, violation });
    }

    /// Feeds every buffered step to its oracle.
    pub fn flush_all(&mut self) {
        let mut bad = None;
        for ((name, inc), f) in self.feeds.iter_mut() {
            if let Err(v) = f.flush() {
                bad = Some((format!("consumer {name} (incarnation {inc})"), v));
                break;
            }
        }
        if let Some((who, v)) = bad {
            self.oracle_fail(who, v);
        }
    }

    fn feed(&mut self, name: &str, inc: u32) -> Option<&mut ConsumerFeed> {
        let cfg = *self.consumer_cfgs.get(name)?;
        Some(
            self.feeds
                .entry((name.to_string(), inc))
                .or_insert_with(|| ConsumerFeed::new(cfg)),
        )
    }

    fn task(&mut self, name: &str, inc: u32) -> &mut TaskWatch {
        let n = self.task_attempts.get(name).copied().unwrap_or(u32::MAX);
        self.tasks
            .entry((name.to_string(), inc))
            .or_insert_with(|| TaskWatch::new(n))
    }
}

/// The runtime observer of one service incarnation: records the events and feeds the oracles.
pub(crate) struct SimObserver {
    pub world: Shared,
    pub incarnation: u32,
}

impl Observer for SimObserver {
    fn consumer_action(&self, consumer: &str, now: Time, action: &ConsumerAction) {
        let mut w = lock(&self.world);
        w.note(format!("#{} {consumer}: {action:?}", self.incarnation));
        if w.broken.is_some() {
            return;
        }
        let inc = self.incarnation;
        if let Some(Err(v)) = w.feed(consumer, inc).map(|f| f.action(now, *action)) {
            w.oracle_fail(format!("consumer {consumer} (incarnation {inc})"), v);
        }
    }

    fn consumer_event(&self, consumer: &str, now: Time, event: &ConsumerEvent) {
        let mut w = lock(&self.world);
        w.note(format!("#{} {consumer}: {event:?}", self.incarnation));
        if w.broken.is_some() {
            return;
        }
        let inc = self.incarnation;
        if let Some(Err(v)) = w.feed(consumer, inc).map(|f| f.event(now, *event)) {
            w.oracle_fail(format!("consumer {consumer} (incarnation {inc})"), v);
        }
    }

    fn producer_action(&self, task: &str, now: Time, action: &ProducerAction) {
        let mut w = lock(&self.world);
        w.note(format!("#{} task {task}: {action:?}", self.incarnation));
        if w.broken.is_some() {
            return;
        }
        let inc = self.incarnation;
        if let Err(v) = w.task(task, inc).action(now, action) {
            w.oracle_fail(format!("task {task} (incarnation {inc})"), v);
        }
    }

    fn producer_event(&self, task: &str, now: Time, event: &ProducerEvent) {
        let mut w = lock(&self.world);
        w.note(format!("#{} task {task}: {event:?}", self.incarnation));
        if w.broken.is_some() {
            return;
        }
        let inc = self.incarnation;
        if let Err(v) = w.task(task, inc).event(now, event) {
            w.oracle_fail(format!("task {task} (incarnation {inc})"), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::compact;

    #[test]
    fn keys_are_shown_short() {
        assert_eq!(
            compact("Invoke { key: Key { index: 3, generation: 12 }, attempt: 1 }".into()),
            "Invoke { key: 3v12, attempt: 1 }"
        );
        assert_eq!(compact("no key here".into()), "no key here");
        assert_eq!(compact("Key { index: broken".into()), "Key { index: broken");
    }
}
