//! What can go wrong, and the exit code each failure gives the process.

use backstop_engine::broker::BrokerError;

/// A failure of a `backstop` command. Nothing is acked when one of these ends a command early,
/// except records whose republish was already confirmed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A bad argument (exit code 2).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The broker could not be reached (exit code 3).
    #[error("cannot reach the Pulsar broker at {url}: {message}")]
    Unreachable {
        /// The service URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The admin REST API could not be reached or answered badly (exit code 3).
    #[error("Pulsar admin API at {url}: {message}")]
    Admin {
        /// The admin URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The topic does not exist (exit code 4).
    #[error("topic {0} does not exist (the admin API knows no such topic); nothing was read")]
    MissingTopic(String),
    /// A broker operation failed (exit code 5).
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
    /// Some records could not be redriven; they stay in the DLQ, unacked (exit code 6).
    #[error("{0} record(s) could not be redriven and were left in the DLQ (not acked)")]
    Incomplete(u64),
}

impl CliError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Invalid(_) => 2,
            CliError::Unreachable { .. } | CliError::Admin { .. } => 3,
            CliError::MissingTopic(_) => 4,
            CliError::Broker(_) => 5,
            CliError::Incomplete(_) => 6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_per_failure_class() {
        let codes = [
            CliError::Invalid("x".into()).exit_code(),
            CliError::Unreachable {
                url: "u".into(),
                message: "m".into(),
            }
            .exit_code(),
            CliError::MissingTopic("t".into()).exit_code(),
            CliError::Broker(BrokerError::connection("x")).exit_code(),
            CliError::Incomplete(1).exit_code(),
        ];
        assert_eq!(codes, [2, 3, 4, 5, 6]);
    }
}
