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
mod task;

use proc_macro::TokenStream;

/// Turns an `async fn(args..) -> Result<T, TaskError>` into a producer task.
///
/// The function keeps its name and arguments; calling it runs the body with retries and publishes
/// the `Ok` value as JSON to `topic`, returning `Result<Published<T>, TaskFailure<name::Args>>`.
/// A module of the same name holds `spec()`, `Args` and `call_with(&Backstop, ..)`.
///
/// Arguments: `topic` (required), `max_retries` (default 3), `retry_delay` (default `"5s"`),
/// `dlq_topic`, `send_timeout` (default `"10s"`).
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    task::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Marks an `async fn(message: M) -> Result<(), HandlerError>` as a consumer of `topic`.
///
/// The function stays callable as it is; a module of the same name holds `spec()` and
/// `start(&Backstop)`, which subscribes and runs it with bounded parallelism, retries, DLQ and a
/// circuit breaker.
///
/// Arguments: `topic` and `subscription` (required), `max_parallelism` (default 1),
/// `max_retries` (default 3), `retry_delay` (default `"5s"`), `dlq_topic`, `subscription_type`
/// (`"shared"`, `"exclusive"`, `"failover"`, `"key_shared"`; default shared),
/// `shutdown_grace` (default `"30s"`).
#[proc_macro_attribute]
pub fn consumer(attr: TokenStream, item: TokenStream) -> TokenStream {
    consumer::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
