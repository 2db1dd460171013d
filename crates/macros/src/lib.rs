//! The `task` and `consumer` attribute macros of backstop: the Rust form of the original
//! `@pulsar_task` and `@pulsar_consumer` decorators. Use them through the `backstop` crate.
//!
//! Arguments keep the decorators' names and meanings: `topic`, `max_retries`, `retry_delay`,
//! `dlq_topic`, `subscription`, `max_parallelism`. Bad arguments are compile errors that point at
//! the argument.
#![warn(missing_docs)]

mod args;
mod consumer;
mod handler;
mod settings;
mod task;
mod topic;

use proc_macro::TokenStream;

/// Turns an `async fn(args..) -> Result<T, TaskError>` into a producer task.
///
/// The function keeps its name and arguments; calling it runs the body with retries and publishes
/// the `Ok` value to `topic` in the installed context, returning
/// `Result<Published<T>, TaskFailure<name::Args>>` (without an installed context: a
/// `FailureReason::NoContext` failure with the arguments, never a panic). A module of the same
/// name holds `spec()`, `Args`, `task(&Backstop)` and `call_with(&Backstop, ..)`.
///
/// Arguments of reference type (`client: &Client`) are state: passed to the body on every
/// attempt, not part of `Args` (so not serialized into dead-letter records).
///
/// Arguments: `topic` (required), `max_retries` (default 3), `retry_delay` (default `"5s"`),
/// `dlq_topic`, `send_timeout` (default `"10s"`), `body_timeout` (off by default: a run past it
/// is cancelled and is a Timeout attempt), `key` and `ordering_key` (the name of an argument or
/// of a field of the returned value, published as the message key / ordering key), `codec`
/// (`"json"` default, `"bytes"`, `"string"`, `"protobuf"`; by default `Vec<u8>`/`Bytes` results
/// are published raw and `String` results as text).
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    task::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Marks an `async fn(message: M) -> Result<(), HandlerError>` as a consumer of `topic`.
///
/// After the message the function may take, in any order, `delivery: &Delivery` (or
/// `Delivery`: key, properties, message id, redelivery count, attempt, times) and
/// `state: &S` (application state). It stays callable as it is; a module of the same name holds
/// `spec()` and `start(&Backstop)` — `start(&Backstop, state)` with a state argument, taking `S`
/// or `Arc<S>` — which subscribes and runs it with bounded parallelism, retries, DLQ and a
/// circuit breaker.
///
/// Arguments: `topic` and `subscription` (required), `max_parallelism` (default 1),
/// `max_retries` (default 3: `max_retries + 1` runs per message across redeliveries),
/// `retry_delay` (default `"5s"`), `retry` (`"in_process"`, the default, or `"nack"`: where a
/// message waits for its retry; docs/retries.md), `dlq_topic`, `park_topic` (where a failed message goes
/// without a DLQ; default `"<topic>-<subscription>-PARKED"`), `subscription_type` (`"shared"`, `"exclusive"`, `"failover"`, `"key_shared"`; default shared),
/// `shutdown_grace` (default `"30s"`), `handler_timeout` (off by default: a run past it is
/// cancelled, its slot freed, and it is a Timeout attempt), `codec` (`"json"` default,
/// `"bytes"`, `"string"`, `"protobuf"`; by default `Vec<u8>`/`Bytes` messages are raw and
/// `String` messages UTF-8 text).
#[proc_macro_attribute]
pub fn consumer(attr: TokenStream, item: TokenStream) -> TokenStream {
    consumer::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
