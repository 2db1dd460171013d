//! `backstop`: inspect and safely redrive dead-letter topics on Apache Pulsar.
//!
//! ```text
//! backstop dlq init    TOPIC                       create the tool's subscription (earliest)
//! backstop dlq stats   TOPIC [filters] [--json]    counts by reason, kind, origin, age
//! backstop dlq peek    TOPIC [-n N] [filters] [--json]
//! backstop dlq redrive TOPIC [--to T] [filters] [--rate N] [--max N] [--dry-run]
//!                            [--max-redrives N] [--park-topic T] [--json]
//! ```
//! Exit codes: 0 done, 2 bad arguments, 3 broker or admin API unreachable, 4 topic missing,
//! 5 broker error, 6 some records could not be redriven (left in the DLQ).

use std::io::IsTerminal;
use std::time::Duration;

use backstop_cli::admin::Admin;
use backstop_cli::filter::{now_ms, parse_since};
use backstop_cli::inspect::{peek, render_peek, render_stats, stats};
use backstop_cli::redrive::{redrive, RedriveOptions};
use backstop_cli::scan::Scan;
use backstop_cli::topic::Topic;
use backstop_cli::{CliError, Filter, DEFAULT_SUBSCRIPTION};
use backstop_engine::broker::Subscription;
use backstop_pulsar::{InitialPosition, PulsarBroker, PulsarOptions};
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "backstop",
    version,
    about = "Inspect and safely redrive backstop (and Java/Python client) dead-letter topics on Apache Pulsar"
)]
struct Cli {
    /// Pulsar service URL.
    #[arg(
        long,
        global = true,
        env = "BACKSTOP_PULSAR_URL",
        default_value = "pulsar://127.0.0.1:6650"
    )]
    url: String,
    /// Pulsar admin REST API URL (http://).
    #[arg(
        long,
        global = true,
        env = "BACKSTOP_PULSAR_ADMIN",
        default_value = "http://127.0.0.1:8080"
    )]
    admin: String,
    /// Token for token authentication (never printed).
    #[arg(
        long,
        global = true,
        env = "BACKSTOP_PULSAR_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// The durable subscription the tool reads DLQs through.
    #[arg(long, global = true, default_value = DEFAULT_SUBSCRIPTION)]
    subscription: String,
    /// A scan ends when nothing arrives for this long (or at the DLQ's last message).
    #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "2s")]
    idle: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Dead-letter topics.
    #[command(subcommand)]
    Dlq(Dlq),
}

#[derive(Args, Debug, Clone)]
struct FilterArgs {
    /// Only records with this reason (exhausted, permanent, decode).
    #[arg(long)]
    reason: Option<String>,
    /// Only records whose last error has this kind (timeout, connection, invalid, ...).
    #[arg(long)]
    kind: Option<String>,
    /// Only records with this message key.
    #[arg(long)]
    key: Option<String>,
    /// Only records from this origin topic.
    #[arg(long)]
    origin: Option<String>,
    /// Only records whose last failure is at most this old (`2h`) or after this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> Result<Filter, CliError> {
        Ok(Filter {
            reason: self.reason.clone(),
            kind: self.kind.clone(),
            key: self.key.clone(),
            origin: self.origin.clone(),
            since_ms: self
                .since
                .as_deref()
                .map(|s| parse_since(s, now_ms()))
                .transpose()?,
        })
    }
}

#[derive(Subcommand, Debug)]
enum Dlq {
    /// Create the tool's subscription on a DLQ, at its earliest message, so records written
    /// from now on are kept until redriven (creates the topic if needed).
    Init {
        /// The dead-letter topic.
        topic: String,
    },
    /// Counts by reason, error kind, origin topic and subscription, writer and age.
    Stats {
        /// The dead-letter topic.
        topic: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show records: error, attempts, failure times, origin, key, payload preview.
    Peek {
        /// The dead-letter topic.
        topic: String,
        /// At most this many records.
        #[arg(short = 'n', long, default_value_t = 10)]
        count: usize,
        #[command(flatten)]
        filter: FilterArgs,
        /// Payload preview length (characters).
        #[arg(long, default_value_t = 200)]
        preview: usize,
        /// JSON output (one array).
        #[arg(long)]
        json: bool,
    },
    /// Republish records to their origin (or --to), acking each only after its copy is
    /// confirmed. Safe to kill and rerun.
    Redrive {
        /// The dead-letter topic.
        topic: String,
        /// Publish every selected record here instead of its origin topic.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many publishes per second.
        #[arg(long)]
        rate: Option<f64>,
        /// At most this many records.
        #[arg(long)]
        max: Option<u64>,
        /// Count what would happen; publish and ack nothing.
        #[arg(long)]
        dry_run: bool,
        /// Park records already redriven this many times instead of looping them.
        #[arg(long, default_value_t = 3)]
        max_redrives: u32,
        /// The parking topic (default: `<TOPIC>-PARKED`).
        #[arg(long)]
        park_topic: Option<String>,
        /// Republishes awaiting confirmation at once.
        #[arg(long, default_value_t = 32)]
        in_flight: usize,
        /// JSON summary.
        #[arg(long)]
        json: bool,
    },
}

async fn connect(cli: &Cli) -> Result<PulsarBroker, CliError> {
    let mut options = PulsarOptions::default()
        .with_initial_position(InitialPosition::Earliest)
        .with_connect_timeout(Duration::from_secs(10));
    if let Some(t) = &cli.token {
        options = options.with_auth_token(t.clone());
    }
    PulsarBroker::connect(&cli.url, options)
        .await
        .map_err(|e| CliError::Unreachable {
            url: cli.url.clone(),
            message: e.to_string(),
        })
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let admin = Admin::new(&cli.admin, cli.token.clone())?;
    let Command::Dlq(cmd) = &cli.command;
    let name = match cmd {
        Dlq::Init { topic }
        | Dlq::Stats { topic, .. }
        | Dlq::Peek { topic, .. }
        | Dlq::Redrive { topic, .. } => topic,
    };
    let topic = Topic::parse(name)?;
    if let Dlq::Init { .. } = cmd {
        let broker = connect(&cli).await?;
        let scan_sub = broker
            .pulsar_subscribe(
                &backstop_engine::broker::SubscriptionSpec::new(
                    topic.full.clone(),
                    &cli.subscription,
                )
                .with_type(backstop_engine::broker::SubscriptionType::Exclusive),
            )
            .await?;
        scan_sub.close().await?;
        println!(
            "subscription `{}` ready on {}",
            cli.subscription, topic.full
        );
        return Ok(());
    }
    admin.require_topic(&topic).await?;
    let expected = admin.backlog(&topic, &cli.subscription).await?;
    let broker = connect(&cli).await?;
    let scan = Scan::open(&broker, &admin, &topic, &cli.subscription, cli.idle).await?;
    match cmd {
        Dlq::Init { .. } => unreachable!("handled above"),
        Dlq::Stats {
            filter, json: j, ..
        } => {
            let s = stats(scan, &filter.filter()?).await?;
            if *j {
                println!("{}", json(&s));
            } else {
                print!("{}", render_stats(&topic.full, &s));
            }
        }
        Dlq::Peek {
            count,
            filter,
            preview,
            json: j,
            ..
        } => {
            let items = peek(scan, &filter.filter()?, *count, *preview).await?;
            if *j {
                println!("{}", json(&items));
            } else {
                for (i, item) in items.iter().enumerate() {
                    print!("{}", render_peek(i + 1, item));
                }
                if items.is_empty() {
                    println!("no matching records in {}", topic.full);
                }
            }
        }
        Dlq::Redrive {
            to,
            filter,
            rate,
            max,
            dry_run,
            max_redrives,
            park_topic,
            in_flight,
            json: j,
            ..
        } => {
            if rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                return Err(CliError::Invalid("--rate must be a positive number".into()));
            }
            let to = to.as_deref().map(Topic::parse).transpose()?.map(|t| t.full);
            let park_topic = match park_topic {
                Some(p) => Topic::parse(p)?.full,
                None => format!("{}-PARKED", topic.full),
            };
            let o = RedriveOptions {
                dlq: topic.full.clone(),
                to,
                filter: filter.filter()?,
                rate: *rate,
                max: *max,
                dry_run: *dry_run,
                max_redrives: *max_redrives,
                park_topic,
                in_flight: *in_flight,
                expected,
                progress: std::io::stderr().is_terminal(),
            };
            let s = redrive(&broker, scan, &o).await?;
            if *j {
                println!("{}", json(&s));
            } else {
                println!("{}", s.line());
                for p in &s.problems {
                    eprintln!("  {p}");
                }
                if let Some(w) = &s.warning {
                    eprintln!("backstop: warning: {w}");
                }
            }
            let left = s.failed + s.unrecognized;
            if left > 0 {
                return Err(CliError::Incomplete(left));
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("backstop: error: {e}");
        std::process::exit(e.exit_code());
    }
}
