//! The Apache Pulsar adapter for backstop: the engine's [`Broker`], [`Producer`] and
//! [`Subscription`] traits on top of the [`pulsar`] crate (tokio, rustls, no OpenSSL).
//!
//! ```no_run
//! use backstop_engine::broker::{Broker, OutgoingMessage, SubscriptionSpec, SubscriptionType};
//! use backstop_pulsar::{PulsarBroker, PulsarOptions};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = PulsarBroker::connect("pulsar://127.0.0.1:6650", PulsarOptions::default()).await?;
//! let sub = broker
//!     .subscribe(&SubscriptionSpec::new("orders", "billing").with_type(SubscriptionType::KeyShared))
//!     .await?;
//! broker.producer("orders").await?.send(OutgoingMessage::new("hi").with_key("k")).await?;
//! let m = sub.receive().await?;
//! sub.ack(&m.id).await?;
//! # Ok(()) }
//! ```
//!
//! # What the adapter adds to the pulsar crate
//!
//! - **Bounded operations.** Creating producers and consumers, sends and closes each wait at most
//!   [`PulsarOptions::operation_timeout`] (10 s); the crate's own retries are turned off or made
//!   finite. Errors map to engine kinds ([`error_kind`]): connection loss, IO and disconnects
//!   are [`ErrorKind::Connection`], timeouts and throttling [`ErrorKind::Timeout`] (both feed
//!   circuit breakers), refusals (quota, permissions, a busy exclusive subscription, fenced,
//!   too large) [`ErrorKind::Rejected`].
//! - **Recovery.** A producer that failed with a Connection or Timeout error is dropped and
//!   re-created by the next send. A subscription's consumer is rebuilt (with backoff) when its
//!   stream ends or when a health check of an idle consumer fails; acks and nacks given
//!   meanwhile are kept.
//! - **Nack delay.** Nacks are held for the spec's `nack_redelivery_delay` and then sent as a
//!   redelivery request; the crate redelivers at once.
//! - **No batch loss.** Producers made here never batch. For messages of a producer-side batch
//!   from another client, the crate would ack the whole batch when one message is acked; the
//!   adapter instead holds such acks until every message of the batch was acked (and skips the
//!   already-acked ones if the batch is redelivered).
//! - **Redelivery counts.** The crate does not expose the broker's redelivery count; the
//!   adapter counts how often its subscription saw each message.
//! - **No Nagle.** The crate opens its connections with Nagle's algorithm on; an ack followed
//!   closely by a publish then waits for the broker's delayed TCP acknowledgement (about 40 ms).
//!   On Linux the adapter sets `TCP_NODELAY` on them, as the Java client does
//!   ([`PulsarOptions::tcp_nodelay`]).
//! - **Message ids** encode ledger, entry, partition, batch index and batch size
//!   ([`PulsarMessageId`]), so they round-trip to `ack`/`nack`.
//! - **DLQ vocabulary**: [`dlq_properties`] gives the Java client's `REAL_TOPIC`,
//!   `ORIGIN_MESSAGE_ID` and `RECONSUMETIMES`. The dead-letter records of backstop's runtime
//!   carry these three properties too; their producers write `ORIGIN_MESSAGE_ID` in the Java
//!   form `ledger:entry:partition[:batchIndex]` ([`java_origin_message_id`]; the record's JSON
//!   `origin_message_id` keeps the engine's opaque hex id).
//!
//! # Limits
//!
//! - Sends are not batched (see above): throughput is that of one broker entry per message
//!   (on a 2-core standalone about 15 000 msg/s of 1 KiB, where pulsar-perf with batching
//!   reaches 60 000-76 000; `docs/benchmarks.md`).
//! - `TCP_NODELAY` is set only on Linux, by finding the crate's sockets in `/proc/self/fd`, and
//!   on every socket of the process connected to the service URL's port (including those of
//!   other Pulsar clients in the same process). A connection the crate re-opens keeps Nagle's
//!   algorithm for up to a second.
//! - Acks are fire-and-forget in Pulsar; one lost on a broken connection means a redelivery.
//! - The crate's consumer engine handles acks in the same queue as incoming deliveries. When its
//!   buffer is full (the application receives slower than the broker delivers), an ack waits
//!   behind at most about [`PulsarOptions::receiver_queue_size`] deliveries; while the
//!   application does not call `receive` at all (a paused consumer), acks wait until it does,
//!   or until `close`, which drains the buffer first. They are never dropped; if the process
//!   dies first, those messages are redelivered (at-least-once).
//! - On Exclusive and Failover subscriptions the broker answers a nack by redelivering *every*
//!   unacked message of the consumer (it keeps order), so messages still being handled may be
//!   delivered a second time, with the same id.
//! - After a connection loss, the first send on an existing producer can wait the whole
//!   operation timeout (the crate keeps trying to re-create its producer) and fails with
//!   Timeout; later sends fail fast with Connection until the broker is back.
//! - Chunked messages (Java `chunkingEnabled`) are not reassembled by the crate.
//! - `ReceivedMessage::topic` is the topic as named in the spec, also for the partitions of a
//!   partitioned topic (the partition is in the id).
//! - Keys are strings; a key a foreign producer set as raw bytes arrives base64-encoded.
//!
//! | module | its one job |
//! |---|---|
//! | `client` | [`PulsarBroker`]: connect, settings, producer cache |
//! | `producer` | [`PulsarProducer`]: the producer task; lazy, non-batching, re-created after failures |
//! | `subscription` | [`PulsarSubscription`]: the consumer task, acks, nacks, rebuilds |
//! | `tracking` | batch ack tracking and local redelivery counts |
//! | `id` | [`PulsarMessageId`] ⇄ [`MessageId`](backstop_engine::broker::MessageId) bytes |
//! | `error` | pulsar errors → [`ErrorKind`] |
//! | `options` | [`PulsarOptions`] and their validation |
//! | `diagnose` | names the cause when the crate reports an opaque connect failure |
//! | `auth` | [`TokenSource`]: token authentication from a string, file or environment variable |
//! | `dlq` | Java-compatible dead-letter properties |
//! | `nodelay` | `TCP_NODELAY` on the crate's broker connections |
//!
//! [`Broker`]: backstop_engine::broker::Broker
//! [`Producer`]: backstop_engine::broker::Producer
//! [`Subscription`]: backstop_engine::broker::Subscription
//! [`ErrorKind`]: backstop_engine::core::ErrorKind
//! [`ErrorKind::Connection`]: backstop_engine::core::ErrorKind::Connection
//! [`ErrorKind::Timeout`]: backstop_engine::core::ErrorKind::Timeout
//! [`ErrorKind::Rejected`]: backstop_engine::core::ErrorKind::Rejected
#![warn(missing_docs)]

mod auth;
mod batching;
mod client;
mod diagnose;
mod dlq;
mod error;
mod health;
mod id;
mod nodelay;
mod oauth2;
mod options;
mod producer;
mod subscription;
mod tracking;

pub use auth::TokenSource;
pub use batching::PulsarBatching;
pub use client::PulsarBroker;
pub use dlq::{
    dead_letter_message, dlq_properties, java_origin_message_id, origin_message_id,
    PROPERTY_ORIGIN_MESSAGE_ID, PROPERTY_REAL_TOPIC, PROPERTY_RECONSUME_TIMES,
};
pub use error::{broker_error, connection_kind, error_kind, server_kind, ConnectError};
pub use health::probe;
pub use id::{EntryKey, InvalidMessageId, PulsarMessageId};
pub use oauth2::OAuth2;
pub use options::{validate_url, ConfigError, InitialPosition, PulsarOptions};
pub use producer::PulsarProducer;
pub use subscription::PulsarSubscription;

/// The pulsar crate this adapter is built on, for code that needs its types.
pub use pulsar;
