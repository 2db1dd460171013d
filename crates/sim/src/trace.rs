//! The run's trace: every observed core action and event, fault and broker-visible outcome, with
//! its simulated time, folded into one hash (for the determinism check) and kept as a readable
//! tail (for failure reports).

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use backstop_engine::core::{
    ConsumerAction, ConsumerEvent, DlqInfo, ProducerAction, ProducerEvent, ProducerOutcome, Time,
    Transition,
};

/// Who produced an entry: a service host's incarnation, or the simulation itself.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Who {
    /// The simulation driver (faults, checks, broker-visible outcomes).
    Sim,
    /// Service host `host` in its `incarnation`-th run (0 first, +1 per restart).
    Service {
        /// Host number.
        host: u8,
        /// Run number.
        incarnation: u32,
    },
    /// The pure-core tier's consumer (its `incarnation`-th machine) or producer.
    Core {
        /// Machine number (a crash starts a new one).
        incarnation: u32,
    },
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::Sim => f.write_str("sim"),
            Who::Service { host, incarnation } => write!(f, "svc{host}#{incarnation}"),
            Who::Core { incarnation } => write!(f, "core#{incarnation}"),
        }
    }
}

/// What an entry records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    /// A consumer action, as the runtime was about to perform it.
    ConsumerAction(ConsumerAction),
    /// A consumer event.
    ConsumerEvent(ConsumerEvent),
    /// A task (producer) action.
    ProducerAction(ProducerAction),
    /// A task (producer) event.
    ProducerEvent(ProducerEvent),
    /// Anything else (a fault, a task call's outcome, a broker-side observation).
    Note(String),
}

/// One trace line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Simulated time since the start of the run.
    pub sim: Duration,
    /// Who.
    pub who: Who,
    /// The core time of the machine concerned (its runtime's clock), if any.
    pub now: Option<Time>,
    /// What.
    pub what: What,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.sim.as_millis();
        write!(f, "{:>6}.{:03}s {:<8} ", ms / 1000, ms % 1000, self.who)?;
        match &self.what {
            What::ConsumerAction(a) => write!(f, "consumer action {a:?}"),
            What::ConsumerEvent(e) => write!(f, "consumer event  {e:?}"),
            What::ProducerAction(a) => write!(f, "task action     {a:?}"),
            What::ProducerEvent(e) => write!(f, "task event      {e:?}"),
            What::Note(s) => f.write_str(s),
        }
    }
}

/// A trace: a running hash of every entry plus a readable tail of the last entries.
///
/// ```
/// use backstop_sim::trace::{Trace, What, Who};
/// use std::time::Duration;
/// let mut a = Trace::new(100);
/// let mut b = Trace::new(0);
/// for t in [&mut a, &mut b] {
///     t.push(Duration::from_millis(5), Who::Sim, None, What::Note("partition svc0".into()));
/// }
/// assert_eq!(a.hash(), b.hash());
/// assert_eq!(a.tail().count(), 1);
/// assert_eq!(b.tail().count(), 0); // b keeps no readable tail
/// ```
#[derive(Clone, Debug)]
pub struct Trace {
    hash: u64,
    len: u64,
    keep: usize,
    tail: VecDeque<Entry>,
}

impl Trace {
    /// An empty trace keeping the last `keep` entries readable (0: none; keeping costs a
    /// little per entry).
    pub fn new(keep: usize) -> Trace {
        Trace {
            hash: 0xcbf2_9ce4_8422_2325,
            len: 0,
            keep,
            tail: VecDeque::new(),
        }
    }

    /// Records an entry.
    pub fn push(&mut self, sim: Duration, who: Who, now: Option<Time>, what: What) {
        self.mix(sim.as_nanos() as u64);
        match who {
            Who::Sim => self.mix(1),
            Who::Service { host, incarnation } => {
                self.mix(2 | u64::from(host) << 8 | u64::from(incarnation) << 16)
            }
            Who::Core { incarnation } => self.mix(3 | u64::from(incarnation) << 16),
        }
        self.mix(now.map_or(u64::MAX, Time::as_nanos));
        encode(&what, &mut |w| self.mix(w));
        self.len += 1;
        if self.keep > 0 {
            if self.tail.len() == self.keep {
                self.tail.pop_front();
            }
            self.tail.push_back(Entry {
                sim,
                who,
                now,
                what,
            });
        }
    }

    /// Mixes a plain value into the hash (final broker state, counters).
    pub fn mix(&mut self, word: u64) {
        // FNV-1a over the word's bytes, then a multiply-xorshift finaliser per word: stable
        // across platforms and Rust versions, unlike `DefaultHasher`.
        let mut h = self.hash;
        for b in word.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= h >> 29;
        self.hash = h;
    }

    /// Mixes bytes into the hash.
    pub fn mix_bytes(&mut self, bytes: &[u8]) {
        self.mix(bytes.len() as u64);
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(w));
        }
    }

    /// The hash of everything recorded so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// How many entries were recorded.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The readable tail, oldest first (empty unless kept).
    pub fn tail(&self) -> impl Iterator<Item = &Entry> {
        self.tail.iter()
    }

    /// The last `n` entries of the tail, one per line.
    pub fn render_tail(&self, n: usize) -> String {
        let skip = self.tail.len().saturating_sub(n);
        let mut out = String::new();
        for e in self.tail.iter().skip(skip) {
            out.push_str(&e.to_string());
            out.push('\n');
        }
        out
    }
}

fn info_words(info: &DlqInfo, out: &mut impl FnMut(u64)) {
    out(info.reason as u64);
    out(info.kind as u64);
    out(u64::from(info.attempts));
    out(info.first_failure.as_nanos());
    out(info.last_failure.as_nanos());
}

fn transition_words(t: &Transition, out: &mut impl FnMut(u64)) {
    out(t.from as u64 | (t.to as u64) << 8 | u64::from(t.failures) << 16);
    out(t.at.as_nanos());
}

fn outcome_words(o: &ProducerOutcome, out: &mut impl FnMut(u64)) {
    match *o {
        ProducerOutcome::Sent { attempts } => out(1 | u64::from(attempts) << 8),
        ProducerOutcome::Failed {
            kind,
            attempts,
            dlq,
        } => {
            out(2 | u64::from(attempts) << 8 | (kind as u64) << 40);
            out(match dlq {
                backstop_engine::core::DlqFate::NotConfigured => 0,
                backstop_engine::core::DlqFate::Published => 1,
                backstop_engine::core::DlqFate::Failed(k) => 2 | (k as u64) << 8,
            });
        }
        ProducerOutcome::CircuitOpen { attempts } => out(3 | u64::from(attempts) << 8),
    }
}

/// Encodes an entry's payload as words, without formatting (the hash is taken on every entry).
fn encode(what: &What, out: &mut impl FnMut(u64)) {
    match what {
        What::ConsumerAction(a) => match *a {
            ConsumerAction::Request { count } => out(0x10 | u64::from(count) << 8),
            ConsumerAction::Invoke { key, attempt } => {
                out(0x11 | u64::from(attempt) << 8);
                out(key.as_u64());
            }
            ConsumerAction::Ack { key } => {
                out(0x12);
                out(key.as_u64());
            }
            ConsumerAction::Nack { key, reason } => {
                out(0x13 | (reason as u64) << 8);
                out(key.as_u64());
            }
            ConsumerAction::PublishDlq { key, info } => {
                out(0x14);
                out(key.as_u64());
                info_words(&info, out);
            }
            ConsumerAction::Pause => out(0x15),
            ConsumerAction::Resume => out(0x16),
            ConsumerAction::PublishRetry {
                key,
                runs,
                delay_ms,
            } => {
                out(0x17 | u64::from(runs) << 8);
                out(key.as_u64());
                out(delay_ms);
            }
        },
        What::ConsumerEvent(e) => match *e {
            ConsumerEvent::Received {
                key,
                poison,
                prior_runs,
                ordering_key,
            } => {
                out(0x20 | u64::from(poison) << 8 | u64::from(prior_runs) << 16);
                if let Some(k) = ordering_key {
                    out(k);
                }
                out(key.as_u64());
            }
            ConsumerEvent::Invoked {
                key,
                attempt,
                probe,
            } => {
                out(0x21 | u64::from(attempt) << 8 | u64::from(probe) << 40);
                out(key.as_u64());
            }
            ConsumerEvent::Succeeded {
                key,
                attempt,
                latency,
            } => {
                out(0x22 | u64::from(attempt) << 8);
                out(key.as_u64());
                out(latency.as_nanos() as u64);
            }
            ConsumerEvent::Failed {
                key,
                attempt,
                kind,
                latency,
            } => {
                out(0x23 | u64::from(attempt) << 8 | (kind as u64) << 40);
                out(key.as_u64());
                out(latency.as_nanos() as u64);
            }
            ConsumerEvent::RetryScheduled {
                key,
                next_attempt,
                at,
            } => {
                out(0x24 | u64::from(next_attempt) << 8);
                out(key.as_u64());
                out(at.as_nanos());
            }
            ConsumerEvent::DeadLettered { key, info } => {
                out(0x25);
                out(key.as_u64());
                info_words(&info, out);
            }
            ConsumerEvent::DeadLetterFailed { key, kind } => {
                out(0x26 | (kind as u64) << 8);
                out(key.as_u64());
            }
            ConsumerEvent::RetryPublished { key } => {
                out(0x2c);
                out(key.as_u64());
            }
            ConsumerEvent::RetryPublishFailed { key, kind } => {
                out(0x2d | (kind as u64) << 8);
                out(key.as_u64());
            }
            ConsumerEvent::Acked { key } => {
                out(0x27);
                out(key.as_u64());
            }
            ConsumerEvent::Nacked { key, reason } => {
                out(0x28 | (reason as u64) << 8);
                out(key.as_u64());
            }
            ConsumerEvent::Breaker(t) => {
                out(0x29);
                transition_words(&t, out);
            }
            ConsumerEvent::Drained => out(0x2a),
        },
        What::ProducerAction(a) => match *a {
            ProducerAction::RunBody { call, attempt } => {
                out(0x30 | u64::from(attempt) << 8);
                out(call.as_u64());
            }
            ProducerAction::Publish { call, attempt } => {
                out(0x31 | u64::from(attempt) << 8);
                out(call.as_u64());
            }
            ProducerAction::PublishDlq { call, info } => {
                out(0x32);
                out(call.as_u64());
                info_words(&info, out);
            }
            ProducerAction::Complete { call, outcome } => {
                out(0x33);
                out(call.as_u64());
                outcome_words(&outcome, out);
            }
        },
        What::ProducerEvent(e) => match *e {
            ProducerEvent::Sent { call, latency } => {
                out(0x40);
                out(call.as_u64());
                out(latency.as_nanos() as u64);
            }
            ProducerEvent::Failed {
                call,
                attempt,
                kind,
                publish,
            } => {
                out(0x41
                    | u64::from(attempt) << 8
                    | (kind as u64) << 40
                    | u64::from(publish) << 48);
                out(call.as_u64());
            }
            ProducerEvent::RetryScheduled {
                call,
                next_attempt,
                at,
            } => {
                out(0x42 | u64::from(next_attempt) << 8);
                out(call.as_u64());
                out(at.as_nanos());
            }
            ProducerEvent::Rejected { call } => {
                out(0x43);
                out(call.as_u64());
            }
            ProducerEvent::DeadLettered { call, info } => {
                out(0x44);
                out(call.as_u64());
                info_words(&info, out);
            }
            ProducerEvent::DeadLetterFailed { call, kind } => {
                out(0x45 | (kind as u64) << 8);
                out(call.as_u64());
            }
            ProducerEvent::Breaker(t) => {
                out(0x46);
                transition_words(&t, out);
            }
        },
        What::Note(s) => {
            out(0x50 | (s.len() as u64) << 8);
            for chunk in s.as_bytes().chunks(8) {
                let mut w = [0u8; 8];
                w[..chunk.len()].copy_from_slice(chunk);
                out(u64::from_le_bytes(w));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_engine::core::Key;

    #[test]
    fn different_entries_give_different_hashes() {
        let key = Key::from_u64(3);
        let mut a = Trace::new(0);
        a.push(
            Duration::ZERO,
            Who::Sim,
            Some(Time::ZERO),
            What::ConsumerAction(ConsumerAction::Ack { key }),
        );
        let mut b = Trace::new(0);
        b.push(
            Duration::ZERO,
            Who::Sim,
            Some(Time::ZERO),
            What::ConsumerEvent(ConsumerEvent::Acked { key }),
        );
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn the_tail_is_bounded_and_renders() {
        let mut t = Trace::new(50);
        for i in 0..60u64 {
            t.push(
                Duration::from_millis(i),
                Who::Service {
                    host: 1,
                    incarnation: 0,
                },
                None,
                What::Note(format!("n{i}")),
            );
        }
        assert_eq!(t.tail().count(), 50);
        let s = t.render_tail(2);
        assert_eq!(s.lines().count(), 2);
        assert!(s.contains("svc1#0"), "{s}");
    }
}
