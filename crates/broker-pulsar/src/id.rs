//! Pulsar message ids as backstop [`MessageId`] bytes, and back.

use std::fmt;

use backstop_engine::broker::MessageId;
use pulsar::proto::MessageIdData;

/// Format tag of the first byte; bumped if the layout ever changes.
const VERSION: u8 = 1;
/// Encoded length: tag + ledger (8) + entry (8) + partition (4) + batch index (4) + batch size (4).
const ENCODED_LEN: usize = 1 + 8 + 8 + 4 + 4 + 4;

/// A Pulsar message id: where a message sits in the topic (ledger, entry), which partition it
/// came from, and its place in a producer-side batch.
///
/// It is what the adapter puts into [`MessageId`] bytes (29 bytes, big endian, a version tag
/// first), so that an id handed out by `receive` round-trips to `ack`/`nack`.
///
/// ```
/// use backstop_pulsar::PulsarMessageId;
/// let id = PulsarMessageId { ledger_id: 7, entry_id: 3, partition: -1, batch_index: 1, batch_size: 4 };
/// let bytes = id.to_message_id();
/// assert_eq!(PulsarMessageId::from_message_id(&bytes), Ok(id));
/// assert_eq!(id.to_string(), "7:3:-1:1"); // the Java client's `MessageId.toString()`
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PulsarMessageId {
    /// The BookKeeper ledger.
    pub ledger_id: u64,
    /// The entry in the ledger.
    pub entry_id: u64,
    /// The partition index, `-1` for a non-partitioned topic.
    pub partition: i32,
    /// The index inside a producer-side batch, `-1` when the entry is not a batch.
    pub batch_index: i32,
    /// How many messages the batch holds, `0` when the entry is not a batch.
    pub batch_size: i32,
}

/// Bytes that are not a message id this adapter produced.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a Pulsar message id from this adapter ({len} bytes, tag {tag:?})")]
pub struct InvalidMessageId {
    len: usize,
    tag: Option<u8>,
}

impl PulsarMessageId {
    /// Whether this message is one of a producer-side batch.
    pub fn is_batched(&self) -> bool {
        self.batch_index >= 0 && self.batch_size > 0
    }

    /// The id of the whole entry (the batch the message is part of), which is what an ack that
    /// must cover the entire batch names.
    pub fn entry(&self) -> EntryKey {
        EntryKey {
            ledger_id: self.ledger_id,
            entry_id: self.entry_id,
            partition: self.partition,
        }
    }

    /// Encodes into the opaque bytes the engine carries.
    pub fn to_message_id(&self) -> MessageId {
        let mut b = Vec::with_capacity(ENCODED_LEN);
        b.push(VERSION);
        b.extend_from_slice(&self.ledger_id.to_be_bytes());
        b.extend_from_slice(&self.entry_id.to_be_bytes());
        b.extend_from_slice(&self.partition.to_be_bytes());
        b.extend_from_slice(&self.batch_index.to_be_bytes());
        b.extend_from_slice(&self.batch_size.to_be_bytes());
        MessageId(b)
    }

    /// Decodes bytes made by [`PulsarMessageId::to_message_id`].
    pub fn from_message_id(id: &MessageId) -> Result<PulsarMessageId, InvalidMessageId> {
        let b = id.0.as_slice();
        let invalid = || InvalidMessageId {
            len: b.len(),
            tag: b.first().copied(),
        };
        if b.len() != ENCODED_LEN || b[0] != VERSION {
            return Err(invalid());
        }
        let u64_at = |i: usize| -> Result<u64, InvalidMessageId> {
            Ok(u64::from_be_bytes(
                b[i..i + 8].try_into().map_err(|_| invalid())?,
            ))
        };
        let i32_at = |i: usize| -> Result<i32, InvalidMessageId> {
            Ok(i32::from_be_bytes(
                b[i..i + 4].try_into().map_err(|_| invalid())?,
            ))
        };
        Ok(PulsarMessageId {
            ledger_id: u64_at(1)?,
            entry_id: u64_at(9)?,
            partition: i32_at(17)?,
            batch_index: i32_at(21)?,
            batch_size: i32_at(25)?,
        })
    }

    /// Builds the id of a delivered message from the pulsar crate's id, the batch size found in
    /// its metadata, and the partition index the adapter knows it was consumed from.
    pub(crate) fn from_delivery(
        data: &MessageIdData,
        num_messages_in_batch: Option<i32>,
        partition: i32,
    ) -> PulsarMessageId {
        let batch_index = data.batch_index.unwrap_or(-1);
        let batch_size = if batch_index >= 0 {
            num_messages_in_batch.unwrap_or(0).max(0)
        } else {
            0
        };
        PulsarMessageId {
            ledger_id: data.ledger_id,
            entry_id: data.entry_id,
            partition,
            batch_index: if batch_size > 0 { batch_index } else { -1 },
            batch_size,
        }
    }

    /// From a send receipt. A batching producer's receipt carries the message's batch index and
    /// the batch size (the pulsar crate sets both per message of a batch), kept so that the id
    /// names this message and not its whole batch.
    pub(crate) fn from_receipt(data: &MessageIdData) -> PulsarMessageId {
        let batch_size = data.batch_size.unwrap_or(0).max(0);
        let batch_index = data.batch_index.unwrap_or(-1);
        let batched = batch_size > 0 && batch_index >= 0;
        PulsarMessageId {
            ledger_id: data.ledger_id,
            entry_id: data.entry_id,
            partition: data.partition.unwrap_or(-1),
            batch_index: if batched { batch_index } else { -1 },
            batch_size: if batched { batch_size } else { 0 },
        }
    }

    /// The pulsar crate's id for acknowledging or redelivering this single message, without
    /// batch information (acks of batched messages go through [`EntryKey::to_data`]).
    pub(crate) fn to_data(self) -> MessageIdData {
        MessageIdData {
            ledger_id: self.ledger_id,
            entry_id: self.entry_id,
            partition: (self.partition >= 0).then_some(self.partition),
            batch_index: None,
            ack_set: Vec::new(),
            batch_size: None,
            first_chunk_message_id: None,
        }
    }
}

impl fmt::Display for PulsarMessageId {
    /// The Java client's format: `ledger:entry:partition`, plus `:batchIndex` for batched
    /// messages (what the Java client writes into `ORIGIN_MESSAGE_ID`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.ledger_id, self.entry_id, self.partition)?;
        if self.is_batched() {
            write!(f, ":{}", self.batch_index)?;
        }
        Ok(())
    }
}

/// One broker entry: a single message, or a whole producer-side batch.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey {
    /// The BookKeeper ledger.
    pub ledger_id: u64,
    /// The entry in the ledger.
    pub entry_id: u64,
    /// The partition index, `-1` for a non-partitioned topic.
    pub partition: i32,
}

impl EntryKey {
    /// The pulsar crate's id for the whole entry (no batch index: acking it acks every message
    /// of the batch).
    pub(crate) fn to_data(self) -> MessageIdData {
        PulsarMessageId {
            ledger_id: self.ledger_id,
            entry_id: self.entry_id,
            partition: self.partition,
            batch_index: -1,
            batch_size: 0,
        }
        .to_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_extremes() {
        for id in [
            PulsarMessageId {
                ledger_id: 0,
                entry_id: 0,
                partition: -1,
                batch_index: -1,
                batch_size: 0,
            },
            PulsarMessageId {
                ledger_id: u64::MAX,
                entry_id: u64::MAX - 1,
                partition: i32::MAX,
                batch_index: 999,
                batch_size: 1000,
            },
        ] {
            assert_eq!(
                PulsarMessageId::from_message_id(&id.to_message_id()),
                Ok(id)
            );
        }
    }

    #[test]
    fn rejects_foreign_bytes() {
        assert!(PulsarMessageId::from_message_id(&MessageId(vec![])).is_err());
        assert!(PulsarMessageId::from_message_id(&MessageId(vec![1; 5])).is_err());
        let mut b = PulsarMessageId {
            ledger_id: 1,
            entry_id: 2,
            partition: -1,
            batch_index: -1,
            batch_size: 0,
        }
        .to_message_id()
        .0;
        b[0] = 9;
        assert!(PulsarMessageId::from_message_id(&MessageId(b)).is_err());
    }

    #[test]
    fn delivery_ids_carry_batch_info_only_for_batches() {
        let data = MessageIdData {
            ledger_id: 5,
            entry_id: 6,
            batch_index: Some(2),
            ..Default::default()
        };
        let id = PulsarMessageId::from_delivery(&data, Some(3), 1);
        assert!(id.is_batched());
        assert_eq!(id.to_string(), "5:6:1:2");
        assert_eq!(id.entry().to_data().batch_index, None);
        let single = MessageIdData {
            ledger_id: 5,
            entry_id: 7,
            ..Default::default()
        };
        let id = PulsarMessageId::from_delivery(&single, None, -1);
        assert!(!id.is_batched());
        assert_eq!(id.to_string(), "5:7:-1");
        assert_eq!(id.to_data().partition, None);
    }
}
