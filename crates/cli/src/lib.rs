//! The `backstop` operator tool as a library: reading a dead-letter topic through a durable
//! subscription of its own, showing its records (`peek`, `stats`) and sending them back
//! (`redrive`) without losing any.
//!
//! | module | its one job |
//! |---|---|
//! | `error` | [`CliError`] and the process exit codes |
//! | `topic` | topic names: short form → `persistent://tenant/namespace/name` |
//! | `admin` | the few admin REST API calls (topic exists, last message id, backlog) |
//! | `record` | a DLQ message → [`DlqRecord`] (backstop records and Java/Python client DLQs) |
//! | `filter` | `--reason`, `--kind`, `--key`, `--origin`, `--since` |
//! | `scan` | reading the DLQ's subscription up to the end of its backlog |
//! | `inspect` | `peek` and `stats` |
//! | `redrive` | `redrive`: republish, then ack; loop guard; rate; summary |
#![warn(missing_docs)]

pub mod admin;
pub mod error;
pub mod filter;
pub mod inspect;
pub mod record;
pub mod redrive;
pub mod scan;
pub mod topic;

pub use error::CliError;
pub use filter::Filter;
pub use record::{DlqRecord, RecordFormat};

/// The subscription the tool reads DLQs through, unless `--subscription` names another.
pub const DEFAULT_SUBSCRIPTION: &str = backstop_engine::runtime::RECORDS_SUBSCRIPTION;
