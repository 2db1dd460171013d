//! An in-memory broker for backstop's tests, simulations and demo: [`MemBroker`] implements
//! the engine's [`Broker`](backstop_engine::broker::Broker) traits, [`Faults`] breaks it on
//! command, its inspection methods let test oracles see what happened, and [`Server`] /
//! [`RemoteBroker`] serve it over TCP (tokio or turmoil streams) so it can run as a separate
//! host that a simulation partitions and crashes.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use backstop_engine::broker::{Broker, OutgoingMessage, SubscriptionSpec};
//! use backstop_engine::core::ErrorKind;
//! use backstop_mem::{MemBroker, Op};
//!
//! let broker = MemBroker::new();
//! let sub = broker.subscribe(&SubscriptionSpec::new("orders", "billing")).await.unwrap();
//! let producer = broker.producer("orders").await.unwrap();
//! producer.send(OutgoingMessage::new("order-1").with_key("c-7")).await.unwrap();
//!
//! let m = sub.receive().await.unwrap();
//! assert_eq!((m.payload.as_slice(), m.redelivery_count), (&b"order-1"[..], 0));
//! assert_eq!(broker.unacked_count("orders", "billing"), 1);
//! sub.ack(&m.id).await.unwrap();
//! assert_eq!(broker.acked_ids("orders", "billing"), vec![m.id]);
//!
//! // Faults: the next ack fails with a connection error.
//! broker.faults().fail_next(Op::Ack, 1, ErrorKind::Connection);
//! producer.send(OutgoingMessage::new("order-2")).await.unwrap();
//! let m = sub.receive().await.unwrap();
//! assert_eq!(sub.ack(&m.id).await.unwrap_err().kind(), ErrorKind::Connection);
//! sub.ack(&m.id).await.unwrap();
//! assert_eq!(broker.counters().acks, 2);
//! # }
//! ```
//!
//! # Semantics
//!
//! - **Topics** are created on first use (by a producer or a subscription); each is an
//!   append-only log that keeps every message, so [`MemBroker::topic_messages`] can show it.
//! - **Subscriptions** are durable: created by their first `subscribe`, they keep collecting
//!   messages while no consumer is attached. A new subscription starts at the latest message
//!   (Pulsar's default): earlier messages are not delivered to it. [`MemConfig`] can make it
//!   start at the earliest instead ([`InitialPosition`]).
//! - **Delivery** is pull-based with no prefetch: a message goes to a consumer only when it
//!   calls `receive`, so a consumer that stops receiving holds nothing but what it received.
//!   Waiting messages go out oldest first (redeliveries included, by publish order).
//! - **Subscription types.**
//!   *Shared*: any consumer may take any waiting message; consumers receiving at the same time
//!   split the stream. *Exclusive*: a second `subscribe` while a consumer is attached fails
//!   with [`ErrorKind::Rejected`](backstop_engine::core::ErrorKind::Rejected); after it closes
//!   another may attach. *Failover*: every consumer may attach, only the earliest attached one
//!   receives; when it closes the next takes over, with the returned deliveries first.
//!   *Key_Shared*: a message's key (none counts as the empty key) hashes (FNV-1a, stable) onto
//!   the attached consumers; while one consumer holds unacknowledged messages of a key, no other
//!   consumer gets that key, so per-key order holds even while consumers come and go.
//!   Joining an attached subscription with another type fails with Rejected.
//! - **Ack** removes a delivery the consumer holds. Acking (or nacking) a message that was
//!   already acknowledged is an accepted no-op, counted in
//!   [`Counters::redundant_acks`]; a message this consumer does not hold (never delivered to
//!   it, already nacked, returned after a close) is refused with
//!   [`ErrorKind::Invalid`](backstop_engine::core::ErrorKind::Invalid) and counted in
//!   [`Counters::rejected_acks`]; one taken back by a crash fails with Connection.
//! - **Nack** makes the delivery available again after the subscription's
//!   `nack_redelivery_delay` (at once if zero). **Closing** a consumer (or dropping its handle)
//!   returns its unacked deliveries at once. Every redelivery carries `redelivery_count` = how
//!   many times the message was delivered before, whatever brought it back (nack, close,
//!   crash, dropped connection).
//! - **Cancel safety.** `receive` is cancel-safe: a delivery is taken from the subscription in
//!   the same synchronous step that completes the future, so dropping a pending `receive`
//!   (for instance the losing branch of `tokio::select!`) never loses or holds a message. The
//!   same holds over TCP ([`RemoteBroker`]). The other operations complete in one step once
//!   their injected latency is over, so dropping them before that does nothing.
//! - **Time** is tokio's (`tokio::time::sleep`, `tokio::time::Instant`): nack delays and
//!   injected latency run under paused time and under turmoil's simulated clock. There is no
//!   randomness and no iteration over hash-ordered maps: the same calls give the same result.
//!
//! # Faults and inspection
//!
//! [`MemBroker::faults`] returns the [`Faults`] handle (failures per [`Op`], latency, outage,
//! dropped connections, crash). [`MemBroker::topic_messages`],
//! [`MemBroker::subscription_stats`], [`MemBroker::unacked_count`], [`MemBroker::acked_ids`],
//! [`MemBroker::backlog`] and [`MemBroker::counters`] show the state to test oracles.
//!
//! # Over TCP
//!
//! [`Server`] serves any `Arc<dyn Broker>` over streams (see its example); [`RemoteBroker`]
//! is the client, built on a connect function so it works with tokio's and turmoil's
//! `TcpStream` alike; [`Server::connect_in_memory`] gives it an in-memory pipe instead, which
//! runs under paused tokio time. The protocol (length-prefixed JSON frames with request ids,
//! so calls multiplex over one connection) is described in the `wire` module's source. When a
//! connection ends — closed, broken, idle past [`ServerConfig::idle_timeout`], or cut by
//! [`Server::disconnect_all`] — the server closes the consumers it opened, so their unacked
//! deliveries return to their subscriptions.
#![warn(missing_docs)]

mod broker;
mod client;
mod faults;
mod id;
mod inspect;
mod server;
mod state;
mod wire;

pub use broker::{MemBroker, MemProducer, MemSubscription};
pub use client::{ClientConfig, RemoteBroker};
pub use faults::{Faults, Op};
pub use inspect::{Counters, SubscriptionStats};
pub use server::{serve, serve_connection, Listener, Server, ServerConfig, MAX_IN_FLIGHT};
pub use state::{InitialPosition, MemConfig};
