//! Benchmark results as JSON lines, and (with the default `render` feature) the tables and
//! PNG charts that `scripts/bench` writes into `docs/benchmarks.md`.
//!
//! A benchmark calls [`record`] for each figure it measures; the figure is appended to the
//! file named by `BACKSTOP_BENCH_JSON` (nothing happens when it is unset, so benchmarks run by
//! hand are unchanged). `scripts/bench` sets it, runs every suite several times in rotated
//! order and then runs the `bench-report` binary over the collected lines.
//!
//! ```
//! use backstop_bench_report::{summarize, Sample};
//! let samples = vec![
//!     Sample::new("e2e", "throughput", "backstop", "msg/s", 0, 300.0),
//!     Sample::new("e2e", "throughput", "backstop", "msg/s", 1, 500.0),
//!     Sample::new("e2e", "throughput", "backstop", "msg/s", 2, 400.0),
//! ];
//! let s = &summarize(&samples)[0];
//! assert_eq!((s.median, s.min, s.max, s.rounds), (400.0, 300.0, 500.0, 3));
//! ```
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub mod criterion_import;

/// The environment variable naming the JSON-lines file that [`record`] appends to.
pub const RESULTS_ENV: &str = "BACKSTOP_BENCH_JSON";
/// The environment variable carrying the round number `scripts/bench` is in.
pub const ROUND_ENV: &str = "BACKSTOP_BENCH_ROUND";

/// One measured figure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The suite: `core`, `e2e`, `sim` or `pulsar`.
    pub suite: String,
    /// What was measured within the suite, e.g. `produce msg/s` or `publish latency p50`.
    pub metric: String,
    /// Who was measured: `backstop`, `bare pulsar crate`, `pulsar-perf`, ...
    pub contender: String,
    /// The unit of `value`.
    pub unit: String,
    /// The round of `scripts/bench` (0 when run by hand).
    pub round: u32,
    /// The figure.
    pub value: f64,
}

impl Sample {
    /// A sample.
    pub fn new(
        suite: &str,
        metric: &str,
        contender: &str,
        unit: &str,
        round: u32,
        value: f64,
    ) -> Sample {
        Sample {
            suite: suite.into(),
            metric: metric.into(),
            contender: contender.into(),
            unit: unit.into(),
            round,
            value,
        }
    }
}

/// Errors reading or writing results.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line of a results file is not a sample.
    #[error("{path} line {line}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The 1-based line number.
        line: usize,
        /// Why.
        source: serde_json::Error,
    },
    /// Something else is wrong with the input (a missing marker, no samples, ...).
    #[error("{0}")]
    Invalid(String),
}

fn io_error(path: &Path, source: std::io::Error) -> ReportError {
    ReportError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The round `scripts/bench` is in (`BACKSTOP_BENCH_ROUND`, 0 when unset).
pub fn current_round() -> u32 {
    std::env::var(ROUND_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Appends a figure of the current round to the results file named by `BACKSTOP_BENCH_JSON`;
/// does nothing when it is unset. A benchmark that cannot write its result fails loudly
/// (panics), since a silently missing figure would make the report lie. A non-finite value (a
/// measurement that failed) is said on stderr and left out: its round then counts one figure
/// fewer, which the report's rounds column shows.
pub fn record(suite: &str, metric: &str, contender: &str, unit: &str, value: f64) {
    let Some(path) = std::env::var_os(RESULTS_ENV) else {
        return;
    };
    if !value.is_finite() {
        // A measurement that failed (e.g. pulsar-perf ran out of memory) is left out: the
        // report then shows one round fewer for it, never a made-up figure.
        eprintln!("bench-report: {suite}/{metric}/{contender}: no figure ({value}), not recorded");
        return;
    }
    let sample = Sample::new(suite, metric, contender, unit, current_round(), value);
    append(Path::new(&path), &[sample]).unwrap_or_else(|e| panic!("recording a result: {e}"));
}

/// Appends samples to a JSON-lines file.
pub fn append(path: &Path, samples: &[Sample]) -> Result<(), ReportError> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    for s in samples {
        let line = serde_json::to_string(s).expect("a sample serializes");
        writeln!(file, "{line}").map_err(|e| io_error(path, e))?;
    }
    Ok(())
}

/// Reads a JSON-lines results file (blank lines are skipped).
pub fn read(path: &Path) -> Result<Vec<Sample>, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_error(path, e))?;
    parse(&text, &path.display().to_string())
}

/// Parses JSON lines; `origin` names the input in errors.
pub fn parse(text: &str, origin: &str) -> Result<Vec<Sample>, ReportError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| ReportError::Parse {
                path: origin.to_string(),
                line: i + 1,
                source,
            })
        })
        .collect()
}

/// The figures of one (suite, metric, contender) over all rounds.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// The suite.
    pub suite: String,
    /// The metric.
    pub metric: String,
    /// The contender.
    pub contender: String,
    /// The unit.
    pub unit: String,
    /// The median over rounds (the mean of the two middle values for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
    /// How many rounds measured it.
    pub rounds: usize,
}

/// Groups samples by (suite, metric, contender) in the order they first appear, with the
/// median, min and max over rounds. NaN values (a contender that failed) are left out.
pub fn summarize(samples: &[Sample]) -> Vec<Summary> {
    let mut order: Vec<(String, String, String)> = Vec::new();
    let mut groups: BTreeMap<(String, String, String), (String, Vec<f64>)> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.value.is_finite()) {
        let key = (s.suite.clone(), s.metric.clone(), s.contender.clone());
        let entry = groups.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            (s.unit.clone(), Vec::new())
        });
        entry.1.push(s.value);
    }
    order
        .into_iter()
        .map(|key| {
            let (unit, mut values) = groups.remove(&key).expect("grouped");
            values.sort_by(f64::total_cmp);
            let n = values.len();
            let median = if n % 2 == 1 {
                values[n / 2]
            } else {
                (values[n / 2 - 1] + values[n / 2]) / 2.0
            };
            Summary {
                suite: key.0,
                metric: key.1,
                contender: key.2,
                unit,
                median,
                min: values[0],
                max: values[n - 1],
                rounds: n,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reports_the_line_of_a_bad_sample() {
        let good = serde_json::to_string(&Sample::new("a", "m", "c", "u", 0, 1.0)).unwrap();
        let text = format!("{good}\n\nnot json\n");
        match parse(&text, "r.jsonl") {
            Err(ReportError::Parse { line, .. }) => assert_eq!(line, 3),
            other => panic!("expected a parse error, got {other:?}"),
        }
        assert_eq!(parse(&good, "r").unwrap().len(), 1);
    }

    #[test]
    fn summaries_keep_first_appearance_order_and_skip_nan() {
        let s = [
            Sample::new("s", "m", "b", "x", 0, 2.0),
            Sample::new("s", "m", "a", "x", 0, 1.0),
            Sample::new("s", "m", "b", "x", 1, 4.0),
            Sample::new("s", "m", "a", "x", 1, f64::NAN),
        ];
        let sum = summarize(&s);
        assert_eq!(sum.len(), 2);
        assert_eq!(sum[0].contender, "b");
        assert_eq!((sum[0].median, sum[0].rounds), (3.0, 2));
        assert_eq!((sum[1].median, sum[1].rounds), (1.0, 1));
    }

    #[test]
    fn append_then_read_round_trips() {
        let dir = std::env::temp_dir().join(format!("bench-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.jsonl");
        let _ = std::fs::remove_file(&path);
        let a = Sample::new("core", "lifecycles/s", "consumer", "1/s", 2, 1e7);
        append(&path, std::slice::from_ref(&a)).unwrap();
        append(&path, std::slice::from_ref(&a)).unwrap();
        assert_eq!(read(&path).unwrap(), vec![a.clone(), a]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
