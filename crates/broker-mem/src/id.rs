//! Message ids: which topic and which position in its log, packed into the engine's opaque
//! [`MessageId`] bytes.

use backstop_engine::broker::{BrokerError, MessageId};
use backstop_engine::core::ErrorKind;

/// The length of an in-memory message id: a 4-byte topic number and an 8-byte log position.
const LEN: usize = 12;

/// Packs a topic number and a log position into a [`MessageId`] (big-endian, so ids of one
/// topic sort in publish order).
pub(crate) fn encode(topic: u32, seq: u64) -> MessageId {
    let mut bytes = Vec::with_capacity(LEN);
    bytes.extend_from_slice(&topic.to_be_bytes());
    bytes.extend_from_slice(&seq.to_be_bytes());
    MessageId(bytes)
}

/// Unpacks an id made by [`encode`]; anything else is an [`ErrorKind::Invalid`] error.
pub(crate) fn decode(id: &MessageId) -> Result<(u32, u64), BrokerError> {
    let bytes: &[u8; LEN] = id.0.as_slice().try_into().map_err(|_| {
        BrokerError::new(
            ErrorKind::Invalid,
            format!("message id {id} was not issued by the in-memory broker"),
        )
    })?;
    let (topic, seq) = bytes.split_at(4);
    let topic = u32::from_be_bytes(topic.try_into().expect("4 bytes"));
    let seq = u64::from_be_bytes(seq.try_into().expect("8 bytes"));
    Ok((topic, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_sorts_in_publish_order() {
        let a = encode(3, 9);
        let b = encode(3, 10);
        assert_eq!(decode(&a).unwrap(), (3, 9));
        assert!(a < b);
    }

    #[test]
    fn foreign_ids_are_invalid() {
        let err = decode(&MessageId(vec![1, 2, 3])).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid);
    }
}
