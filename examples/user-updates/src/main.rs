//! The seed example of the original guide, runnable: `update_user` publishes user updates with
//! retries and a DLQ, `process_user_update` consumes them five at a time. With no arguments it
//! runs on the embedded in-memory broker and injects faults so that retries, dead-lettering,
//! a poison message, a panicking handler, a broker outage that trips the producer's breaker and a
//! downstream outage that trips the consumer's breaker all happen, then recover. `--pulsar URL`
//! runs the same flow on Apache Pulsar. Metrics are served on `/metrics` throughout.

mod handlers;
mod scenario;

use std::time::Duration;

use clap::Parser;

/// Command-line options.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "user-updates",
    about = "backstop's seed example: producer task + consumer with retries, DLQ and breakers"
)]
pub struct Opts {
    /// Run against Apache Pulsar at this URL (e.g. pulsar://127.0.0.1:6650) instead of the
    /// embedded in-memory broker.
    #[arg(long)]
    pub pulsar: Option<String>,
    /// How many user updates to publish in the healthy phase.
    #[arg(long, default_value_t = 200)]
    pub messages: u32,
    /// Address of the Prometheus `/metrics` endpoint (loopback by default).
    #[arg(long, default_value = backstop::DEFAULT_METRICS_ADDR)]
    pub metrics_addr: std::net::SocketAddr,
    /// Keep serving `/metrics` this long after the run (e.g. "60s").
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub linger: Duration,
    /// Breaker recovery timeout for this demo (the library default is 30 s; `CB_RECOVERY_TIMEOUT`
    /// overrides both).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub recovery_timeout: Duration,
    /// Suffix for topic names (Pulsar keeps topics between runs); default: a per-run value.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Print the full /metrics text at the end.
    #[arg(long)]
    pub print_metrics: bool,
    /// After the scripted phases keep consuming until SIGTERM or ctrl-c, then drain
    /// (`Backstop::run_until_signal`).
    #[arg(long)]
    pub until_signal: bool,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // The demo's handler panics on purpose; report panics in one line instead of a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("panic (caught by backstop as a failed attempt): {info}")
    }));
    let opts = Opts::parse();
    match scenario::run(opts).await {
        Ok(summary) => {
            if !summary.ok() {
                eprintln!("FAILED: the run did not meet its expectations (see above)");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
