//! `dlq redrive`: republish dead-letter records to their origin (or `--to`), acking each DLQ
//! record only after the broker confirmed its republish.
//!
//! - **Lossless and resumable.** The records are read through the tool's durable, Exclusive
//!   subscription; a record is acked only after the broker confirmed the copy. A run killed at
//!   any point leaves every unconfirmed record unacked, and the next run starts from them. A
//!   record whose copy was confirmed but whose ack did not reach the broker is published again
//!   by the next run: a duplicate, recognisable by its `backstop.redrive.source` property.
//! - **Loop guard.** A record already redriven `--max-redrives` times (its
//!   `backstop.redrive.count` property, kept through backstop's and the Java client's
//!   dead-lettering) goes to the parking topic instead, as it was, then is acked.
//! - **Non-matching records stay.** Records the filters do not select, and messages that are no
//!   dead-letter record, are not acked; they return to the subscription when the run closes it,
//!   so the next run sees them again (Pulsar keeps them as unacked backlog; the broker's
//!   `maxUnackedMessagesPerConsumer`, 50 000 by default, bounds how many one run can hold).

use std::collections::BTreeMap;
use std::time::Duration;

use backstop_engine::broker::{OutgoingMessage, Producer, Subscription};
use backstop_pulsar::PulsarBroker;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::scan::Scan;
use crate::{CliError, DlqRecord, Filter};

/// How a redrive runs.
#[derive(Debug, Clone)]
pub struct RedriveOptions {
    /// The DLQ (full name).
    pub dlq: String,
    /// Publish here instead of each record's origin.
    pub to: Option<String>,
    /// Which records.
    pub filter: Filter,
    /// At most this many publishes per second.
    pub rate: Option<f64>,
    /// At most this many records redriven or parked.
    pub max: Option<u64>,
    /// Count only: publish and ack nothing.
    pub dry_run: bool,
    /// Records redriven this many times before are parked.
    pub max_redrives: u32,
    /// Where parked records go.
    pub park_topic: String,
    /// Republishes awaiting confirmation at once.
    pub in_flight: usize,
    /// Expected backlog (progress bar length), when known.
    pub expected: Option<u64>,
    /// Show a progress bar (on a terminal only).
    pub progress: bool,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Records republished (confirmed) and acked.
    pub redriven: u64,
    /// Records sent to the parking topic (confirmed) and acked.
    pub parked: u64,
    /// Records the filters did not select: left, unacked, for the next run.
    pub skipped: u64,
    /// Messages that are no dead-letter record: left, unacked.
    pub unrecognized: u64,
    /// Records whose republish failed: left, unacked.
    pub failed: u64,
    /// Records republished whose ack failed (the next run publishes them again).
    pub ack_failed: u64,
    /// Dry run: records that would be redriven.
    pub would_redrive: u64,
    /// Dry run: records that would be parked.
    pub would_park: u64,
    /// Redriven or parked records per destination topic.
    pub by_destination: BTreeMap<String, u64>,
    /// The first few reasons records were left (unrecognized or failed).
    pub problems: Vec<String>,
    /// Set when the run may have stopped before the end of the backlog.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl Summary {
    fn problem(&mut self, p: String) {
        if self.problems.len() < 10 {
            self.problems.push(p);
        }
    }

    /// One line for people.
    pub fn line(&self) -> String {
        let mut s = format!(
            "redriven {}, parked {}, skipped {} (left for the next run), unrecognized {}, failed {}",
            self.redriven, self.parked, self.skipped, self.unrecognized, self.failed
        );
        if self.ack_failed > 0 {
            s += &format!(", ack failed {} (will be published again)", self.ack_failed);
        }
        if self.would_redrive + self.would_park > 0 {
            s += &format!(
                "; dry run: would redrive {}, would park {}",
                self.would_redrive, self.would_park
            );
        }
        s
    }
}

enum Outcome {
    Done { dest: String, parked: bool },
    SendFailed(String),
    AckFailed(String),
}

/// Runs a redrive over the backlog of `scan`.
pub async fn redrive(
    broker: &PulsarBroker,
    mut scan: Scan,
    o: &RedriveOptions,
) -> Result<Summary, CliError> {
    if o.max_redrives == 0 {
        return Err(CliError::Invalid(
            "--max-redrives must be at least 1".into(),
        ));
    }
    let bar = if o.progress {
        let b = match o.expected {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        b.set_style(
            ProgressStyle::with_template("{spinner} {pos}/{len} [{bar:30}] {per_sec} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut tick = o.rate.map(|r| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut s = Summary::default();
    let mut pending = FuturesUnordered::new();
    let mut started: u64 = 0;
    let mut stop = false;
    let settle = |s: &mut Summary, r: Outcome, bar: &ProgressBar| {
        match r {
            Outcome::Done { dest, parked } => {
                if parked {
                    s.parked += 1
                } else {
                    s.redriven += 1
                }
                *s.by_destination.entry(dest).or_default() += 1;
            }
            Outcome::SendFailed(e) => {
                s.failed += 1;
                s.problem(e);
            }
            Outcome::AckFailed(e) => {
                s.ack_failed += 1;
                s.problem(e);
            }
        }
        bar.set_message(format!("redriven {} parked {}", s.redriven, s.parked));
    };
    while !stop {
        if o.max.is_some_and(|m| started >= m) {
            break;
        }
        while pending.len() >= o.in_flight.max(1) {
            if let Some(r) = pending.next().await {
                settle(&mut s, r, &bar);
            }
        }
        while let Some(Some(r)) = pending.next().now_or_never() {
            if matches!(r, Outcome::SendFailed(_)) {
                stop = true;
            }
            settle(&mut s, r, &bar);
        }
        if stop || s.failed > 0 {
            break;
        }
        let Some(m) = scan.next().await? else { break };
        bar.inc(1);
        let record = match DlqRecord::from_message(&m) {
            Ok(r) => r,
            Err(why) => {
                s.unrecognized += 1;
                s.problem(format!(
                    "{}: {why}",
                    backstop_pulsar::origin_message_id(&m.id)
                ));
                continue;
            }
        };
        if !o.filter.matches(&record) {
            s.skipped += 1;
            continue;
        }
        let park = record.redrive_count >= o.max_redrives;
        let (dest, msg): (String, OutgoingMessage) = if park {
            (o.park_topic.clone(), DlqRecord::park_message(&m, &o.dlq))
        } else {
            (
                o.to.clone().unwrap_or_else(|| record.origin_topic.clone()),
                record.redrive_message(&o.dlq),
            )
        };
        started += 1;
        if o.dry_run {
            if park {
                s.would_park += 1
            } else {
                s.would_redrive += 1
            }
            *s.by_destination.entry(dest).or_default() += 1;
            continue;
        }
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let broker = broker.clone();
        let sub = scan.subscription.clone();
        let id = m.id.clone();
        let shown = backstop_pulsar::origin_message_id(&m.id);
        pending.push(async move {
            let sent = match broker.pulsar_producer(&dest).await {
                Ok(p) => p.send(msg).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                return Outcome::SendFailed(format!("{shown} -> {dest}: {e} (left in the DLQ)"));
            }
            match sub.ack(&id).await {
                Ok(()) => Outcome::Done { dest, parked: park },
                Err(e) => Outcome::AckFailed(format!("{shown}: republished but ack failed: {e}")),
            }
        });
    }
    while let Some(r) = pending.next().await {
        settle(&mut s, r, &bar);
    }
    bar.finish_and_clear();
    if !stop && s.failed == 0 && o.max.is_none_or(|m| started < m) {
        s.warning = scan.incomplete();
    }
    scan.close().await?;
    Ok(s)
}
