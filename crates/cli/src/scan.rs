//! Reading a DLQ through the tool's durable subscription, up to the end of its backlog.
//!
//! The subscription is Exclusive (two redrives of one DLQ cannot interleave) and starts at the
//! earliest message the first time it is used. A scan ends at the topic's last message as the
//! admin API reported it when the scan began (records written later wait for the next run), or
//! when nothing arrives for the idle time (a partitioned DLQ, or a last message acked before).
//! Nothing is acked here: what a scan does not ack returns to the subscription when it closes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop_engine::broker::{ReceivedMessage, Subscription, SubscriptionSpec, SubscriptionType};
use backstop_pulsar::{PulsarBroker, PulsarMessageId, PulsarSubscription};

use crate::admin::{Admin, Position};
use crate::topic::Topic;
use crate::CliError;

/// How long a subscribe waits for a previous, killed run's consumer to be gone.
const BUSY_WAIT: Duration = Duration::from_secs(20);

/// A scan in progress.
pub struct Scan {
    /// The subscription (ack through it).
    pub subscription: Arc<PulsarSubscription>,
    end: Option<Position>,
    idle: Duration,
    done: bool,
    reached_end: bool,
    backlog: Option<u64>,
    read: u64,
}

impl Scan {
    /// Opens the subscription `name` on `topic` and notes where the backlog ends.
    pub async fn open(
        broker: &PulsarBroker,
        admin: &Admin,
        topic: &Topic,
        name: &str,
        idle: Duration,
    ) -> Result<Scan, CliError> {
        let end = admin.last_position(topic).await?;
        let backlog = admin.backlog(topic, name).await?;
        let spec =
            SubscriptionSpec::new(topic.full.clone(), name).with_type(SubscriptionType::Exclusive);
        let started = Instant::now();
        let subscription = loop {
            match broker.pulsar_subscribe(&spec).await {
                Ok(s) => break s,
                // A killed run's consumer lingers until the broker sees its connection close.
                Err(e)
                    if e.message().to_ascii_lowercase().contains("busy")
                        && started.elapsed() < BUSY_WAIT =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                Err(e) => {
                    return Err(CliError::Invalid(format!(
                        "cannot open subscription `{name}` on {} ({e}); is another backstop command reading it?",
                        topic.full
                    )))
                }
            }
        };
        Ok(Scan {
            subscription: Arc::new(subscription),
            end,
            idle,
            done: false,
            reached_end: false,
            backlog,
            read: 0,
        })
    }

    /// The next message of the backlog, or `None` at its end.
    pub async fn next(&mut self) -> Result<Option<ReceivedMessage>, CliError> {
        if self.done {
            return Ok(None);
        }
        let m = match tokio::time::timeout(self.idle, self.subscription.receive()).await {
            Err(_) => {
                self.done = true;
                return Ok(None);
            }
            Ok(r) => r?,
        };
        self.read += 1;
        if let (Some(end), Ok(id)) = (self.end, PulsarMessageId::from_message_id(&m.id)) {
            let at = Position {
                ledger: id.ledger_id,
                entry: id.entry_id,
            };
            if at > end {
                // written after the scan began: left for the next run
                self.done = true;
                self.reached_end = true;
                return Ok(None);
            }
            let last_of_entry = !id.is_batched() || id.batch_index + 1 >= id.batch_size;
            if at == end && last_of_entry {
                self.done = true;
                self.reached_end = true;
            }
        }
        Ok(Some(m))
    }

    /// A warning when the scan ended by the idle timeout although the admin API named a last
    /// message it did not reach: the broker stopped delivering (most likely its
    /// `maxUnackedMessagesPerConsumer` limit, 50,000 by default, with that many records left
    /// unacked in this run), so counts cover only part of the backlog.
    pub fn incomplete(&self) -> Option<String> {
        let short = self.backlog.is_some_and(|b| self.read < b);
        (self.end.is_some() && !self.reached_end && short).then(|| {
            format!(
                "the scan read {} of {} backlog messages and then got nothing for {:?}; \
                 the counts may cover only part of the backlog (broker limit on unacked messages per consumer?). \
                 Rerun, or redrive part of the DLQ first.",
                self.read,
                self.backlog.unwrap_or(0),
                self.idle
            )
        })
    }

    /// Closes the subscription: acks given are flushed, unacked messages return to it.
    pub async fn close(self) -> Result<(), CliError> {
        self.subscription.close().await?;
        Ok(())
    }
}
