//! The TCP protocol between [`crate::RemoteBroker`] and [`crate::Server`]: frames of a 4-byte
//! big-endian length and a JSON body. Requests carry an id their response repeats, so calls
//! multiplex over one connection; id 0 is for requests whose answer nobody awaits.
//!
//! | request | response |
//! | --- | --- |
//! | `ping` | `pong` |
//! | `create_producer {topic}` | `producer {handle}` |
//! | `send {producer, message}` | `sent {id}` (sends of one producer run in order) |
//! | `subscribe {topic, subscription, kind, nack_delay_nanos}` | `subscribed {handle}` |
//! | `receive {subscription}` | `message {..}` or `cancelled` |
//! | `cancel {request}` | none; the receive `request` answers `cancelled` if it had no message yet |
//! | `ack` / `nack {subscription, id}`, `close {subscription}` | `done` |
//!
//! Any request may be answered `error {kind, message}` with an [`ErrorKind`] label.

use std::collections::BTreeMap;
use std::io;

use backstop_engine::broker::{
    BrokerError, MessageId, MessageMetadata, OutgoingMessage, ReceivedMessage, SubscriptionSpec,
    SubscriptionType,
};
use backstop_engine::core::ErrorKind;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Frames larger than this are refused (a corrupt or hostile length prefix).
pub(crate) const MAX_FRAME: usize = 64 * 1024 * 1024;

/// A request from the client.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) id: u64,
    pub(crate) op: Req,
}

/// The operations a client can ask for.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Req {
    Ping,
    CreateProducer {
        topic: String,
    },
    Send {
        producer: u64,
        message: WireOutgoing,
    },
    Subscribe {
        topic: String,
        subscription: String,
        kind: String,
        nack_delay_nanos: u64,
    },
    Receive {
        subscription: u64,
    },
    Cancel {
        request: u64,
    },
    Ack {
        subscription: u64,
        #[serde(with = "hex")]
        id: Vec<u8>,
    },
    Nack {
        subscription: u64,
        #[serde(with = "hex")]
        id: Vec<u8>,
    },
    Close {
        subscription: u64,
    },
}

impl Req {
    /// The subscribe request for `spec`.
    pub(crate) fn subscribe(spec: &SubscriptionSpec) -> Req {
        Req::Subscribe {
            topic: spec.topic.clone(),
            subscription: spec.subscription.clone(),
            kind: kind_label(spec.kind).to_owned(),
            nack_delay_nanos: u64::try_from(spec.nack_redelivery_delay.as_nanos())
                .unwrap_or(u64::MAX),
        }
    }
}

/// The label of a subscription type on the wire.
pub(crate) fn kind_label(kind: SubscriptionType) -> &'static str {
    match kind {
        SubscriptionType::Shared => "shared",
        SubscriptionType::Exclusive => "exclusive",
        SubscriptionType::Failover => "failover",
        SubscriptionType::KeyShared => "key_shared",
    }
}

/// A response to the request with the same id.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Response {
    pub(crate) id: u64,
    pub(crate) result: Resp,
}

/// What a request produced.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Resp {
    Pong,
    Producer {
        handle: u64,
    },
    Sent {
        #[serde(with = "hex")]
        id: Vec<u8>,
    },
    Subscribed {
        handle: u64,
    },
    Message(WireReceived),
    Cancelled,
    Done,
    Error {
        kind: String,
        message: String,
    },
}

impl Resp {
    /// The error response for `e`.
    pub(crate) fn error(e: &BrokerError) -> Resp {
        Resp::Error {
            kind: e.kind().as_str().to_owned(),
            message: e.message().to_owned(),
        }
    }

    /// The error this response carries, if it is one.
    pub(crate) fn into_result(self) -> Result<Resp, BrokerError> {
        match self {
            Resp::Error { kind, message } => {
                let kind = kind.parse().unwrap_or(ErrorKind::Fatal);
                Err(BrokerError::new(kind, message))
            }
            other => Ok(other),
        }
    }
}

/// [`OutgoingMessage`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireOutgoing {
    #[serde(with = "hex")]
    payload: Vec<u8>,
    key: Option<String>,
    properties: BTreeMap<String, String>,
    #[serde(default)]
    ordering_key: Option<Vec<u8>>,
    #[serde(default)]
    event_time_ms: Option<u64>,
    #[serde(default)]
    deliver_after_ms: Option<u64>,
}

impl From<OutgoingMessage> for WireOutgoing {
    fn from(m: OutgoingMessage) -> Self {
        WireOutgoing {
            payload: m.payload,
            key: m.key,
            properties: m.properties,
            ordering_key: m.ordering_key,
            event_time_ms: m.event_time_ms,
            deliver_after_ms: m.deliver_after.map(|d| d.as_millis() as u64),
        }
    }
}

impl From<WireOutgoing> for OutgoingMessage {
    fn from(m: WireOutgoing) -> Self {
        OutgoingMessage {
            payload: m.payload,
            key: m.key,
            properties: m.properties,
            ordering_key: m.ordering_key,
            event_time_ms: m.event_time_ms,
            deliver_after: m.deliver_after_ms.map(std::time::Duration::from_millis),
        }
    }
}

/// [`MessageMetadata`] on the wire.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct WireMetadata {
    display_id: Option<String>,
    partition: Option<i32>,
    ordering_key: Option<Vec<u8>>,
    publish_time_ms: Option<u64>,
    event_time_ms: Option<u64>,
}

/// [`ReceivedMessage`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireReceived {
    #[serde(with = "hex")]
    id: Vec<u8>,
    topic: String,
    #[serde(with = "hex")]
    payload: Vec<u8>,
    key: Option<String>,
    properties: BTreeMap<String, String>,
    redelivery_count: u32,
    #[serde(default)]
    metadata: WireMetadata,
}

impl From<ReceivedMessage> for WireReceived {
    fn from(m: ReceivedMessage) -> Self {
        WireReceived {
            id: m.id.0,
            topic: m.topic,
            payload: m.payload,
            key: m.key,
            properties: m.properties,
            redelivery_count: m.redelivery_count,
            metadata: WireMetadata {
                display_id: m.metadata.display_id,
                partition: m.metadata.partition,
                ordering_key: m.metadata.ordering_key,
                publish_time_ms: m.metadata.publish_time_ms,
                event_time_ms: m.metadata.event_time_ms,
            },
        }
    }
}

impl From<WireReceived> for ReceivedMessage {
    fn from(m: WireReceived) -> Self {
        ReceivedMessage {
            id: MessageId(m.id),
            topic: m.topic,
            payload: m.payload,
            key: m.key,
            properties: m.properties,
            redelivery_count: m.redelivery_count,
            metadata: MessageMetadata {
                display_id: m.metadata.display_id,
                partition: m.metadata.partition,
                ordering_key: m.metadata.ordering_key,
                publish_time_ms: m.metadata.publish_time_ms,
                event_time_ms: m.metadata.event_time_ms,
            },
        }
    }
}

/// Bytes as a lowercase hex string.
mod hex {
    use serde::{de, Deserialize, Deserializer, Serializer};
    use std::fmt::Write;

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            let _ = write!(out, "{b:02x}");
        }
        s.serialize_str(&out)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if s.len() % 2 != 0 {
            return Err(de::Error::custom("odd-length hex string"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| {
                s.get(i..i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .ok_or_else(|| de::Error::custom("invalid hex digit"))
            })
            .collect()
    }
}

/// Serializes `value` as one frame (length prefix included).
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut frame = vec![0u8; 4];
    serde_json::to_writer(&mut frame, value).expect("protocol types always serialize");
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    frame
}

/// Reads frames from a stream. [`FrameReader::next`] is cancel-safe: bytes are only taken
/// from the stream into the reader's own buffer, so a `select!` may drop a pending `next`
/// without losing part of a frame.
pub(crate) struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    scratch: Box<[u8]>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(inner: R) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: Vec::new(),
            scratch: vec![0u8; 64 * 1024].into_boxed_slice(),
        }
    }

    /// The next frame; `Ok(None)` on a clean end of stream between frames.
    pub(crate) async fn next<T: serde::de::DeserializeOwned>(&mut self) -> io::Result<Option<T>> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(Some(frame));
            }
            let n = self.inner.read(&mut self.scratch).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "stream ended inside a frame",
                    ))
                };
            }
            self.buf.extend_from_slice(&self.scratch[..n]);
        }
    }

    /// A complete frame from the buffer, if there is one.
    fn parse<T: serde::de::DeserializeOwned>(&mut self) -> io::Result<Option<T>> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"),
            ));
        }
        let Some(body) = self.buf.get(4..4 + len) else {
            return Ok(None);
        };
        let frame = serde_json::from_slice(body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.buf.drain(..4 + len);
        Ok(Some(frame))
    }
}

/// Writes already encoded frames and flushes.
pub(crate) async fn write_frames<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frames: &[u8],
) -> io::Result<()> {
    writer.write_all(frames).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let message = ReceivedMessage {
            id: MessageId(vec![0, 1, 0xff]),
            topic: "t".into(),
            payload: b"\x00payload\n".to_vec(),
            key: Some("k".into()),
            properties: [("a".to_string(), "b".to_string())].into(),
            redelivery_count: 2,
            metadata: MessageMetadata {
                display_id: Some("0:1:-1".into()),
                partition: None,
                ordering_key: Some(vec![1, 2]),
                publish_time_ms: Some(1_700_000_000_000),
                event_time_ms: Some(1_600_000_000_000),
            },
        };
        let frame = encode(&Response {
            id: 7,
            result: Resp::Message(message.clone().into()),
        });
        let mut reader = FrameReader::new(&frame[..]);
        let back: Response = reader.next().await.unwrap().unwrap();
        assert_eq!(back.id, 7);
        match back.result {
            Resp::Message(m) => assert_eq!(ReceivedMessage::from(m), message),
            other => panic!("unexpected {other:?}"),
        }
        assert!(reader.next::<Response>().await.unwrap().is_none());
        let mut cut = FrameReader::new(&frame[..frame.len() - 1]);
        assert!(cut.next::<Response>().await.is_err());
    }

    #[tokio::test]
    async fn oversized_and_garbage_frames_are_errors() {
        let huge: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(FrameReader::new(huge).next::<Response>().await.is_err());
        let garbage: &[u8] = &[0, 0, 0, 3, b'x', b'y', b'z'];
        assert!(FrameReader::new(garbage).next::<Response>().await.is_err());
    }

    #[tokio::test]
    async fn reading_survives_cancellation_mid_frame() {
        let frame = encode(&Response {
            id: 1,
            result: Resp::Done,
        });
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(rx);
        tx.write_all(&frame[..3]).await.unwrap();
        // A pending read is dropped with part of the frame buffered...
        let r = tokio::time::timeout(
            std::time::Duration::from_millis(10),
            reader.next::<Response>(),
        )
        .await;
        assert!(r.is_err());
        tx.write_all(&frame[3..]).await.unwrap();
        // ...and the next read still gets the whole frame.
        let back: Response = reader.next().await.unwrap().unwrap();
        assert_eq!(back.id, 1);
    }

    #[test]
    fn error_kinds_survive_the_wire() {
        for kind in ErrorKind::ALL {
            let e = BrokerError::new(kind, "m");
            assert_eq!(Resp::error(&e).into_result().unwrap_err(), e);
        }
    }
}
