//! The "Targets (issue 11)" table: each target of the throughput issue, the figure this run
//! reached (median and range over rounds, taken round by round like the comparisons) and
//! whether it is met. Everything but the bounds themselves comes from the results.

use std::fmt::Write;

use backstop_bench_report::{summarize, Sample, Summary};

use crate::tables::{comparison_contender, comparisons, number};

/// The batching window of the Pulsar adapter's default producer batching
/// (`PulsarBatching::default().max_delay`, crates/broker-pulsar/src/batching.rs), in ms: the
/// bound on the p50 latency backstop may add.
const BATCH_WINDOW_MS: f64 = 1.0;

/// The backlog the consumer-memory target is stated for.
const RSS_BACKLOG: u64 = 1_000_000;

/// Which metric of a suite a target reads.
#[derive(Clone, Copy, Debug)]
enum Metric {
    /// Exactly this metric.
    Exact(&'static str),
    /// The first metric starting with this (the rest names settings, e.g. a parallelism).
    Prefix(&'static str),
    /// `<n> message backlog` with the largest `n` measured.
    LargestBacklog,
}

/// What the figure of a target is.
#[derive(Clone, Copy, Debug)]
enum Figure {
    /// backstop / this contender, round by round.
    Ratio(&'static str),
    /// backstop minus this contender (ms), round by round.
    Difference(&'static str),
    /// This contender's own value.
    Value(&'static str),
}

/// Which side of the bound the figure must be on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

impl Bound {
    fn holds(self, v: f64) -> bool {
        match self {
            Bound::AtLeast(b) => v >= b,
            Bound::AtMost(b) => v <= b,
        }
    }

    /// The value that meets the bound worst among the rounds: min for AtLeast, max for AtMost.
    fn worst(self, s: &Summary) -> f64 {
        match self {
            Bound::AtLeast(_) => s.min,
            Bound::AtMost(_) => s.max,
        }
    }
}

struct Target {
    what: &'static str,
    suite: &'static str,
    metric: Metric,
    figure: Figure,
    bound: Bound,
}

/// The targets of issue 11, in the order of the table.
const TARGETS: &[Target] = &[
    Target {
        what: "produce ≥ 0.8× pulsar-perf (both with their default batching)",
        suite: "pulsar",
        metric: Metric::Exact("produce"),
        figure: Figure::Ratio("pulsar-perf (batching)"),
        bound: Bound::AtLeast(0.8),
    },
    Target {
        what: "produce ≥ 1.0× the bare pulsar crate",
        suite: "pulsar",
        metric: Metric::Exact("produce"),
        figure: Figure::Ratio("bare pulsar crate"),
        bound: Bound::AtLeast(1.0),
    },
    Target {
        what: "consume, unbatched topic ≥ 0.95× the bare pulsar crate",
        suite: "pulsar",
        metric: Metric::Exact("consume unbatched"),
        figure: Figure::Ratio("bare pulsar crate"),
        bound: Bound::AtLeast(0.95),
    },
    Target {
        what: "consume, batched topic ≥ 0.95× the bare pulsar crate",
        suite: "pulsar",
        metric: Metric::Exact("consume batched"),
        figure: Figure::Ratio("bare pulsar crate"),
        bound: Bound::AtLeast(0.95),
    },
    Target {
        what: "publish p50 added over the unbatched bare crate ≤ the batch window (1 ms)",
        suite: "pulsar",
        metric: Metric::Exact("publish p50"),
        figure: Figure::Difference("bare pulsar crate, no batching"),
        bound: Bound::AtMost(BATCH_WINDOW_MS),
    },
    Target {
        what: "end-to-end p50 added over the unbatched bare crate ≤ the batch window (1 ms)",
        suite: "pulsar",
        metric: Metric::Exact("end to end p50"),
        figure: Figure::Difference("bare pulsar crate, no batching"),
        bound: Bound::AtMost(BATCH_WINDOW_MS),
    },
    Target {
        what: "in-memory end to end ≥ 0.5× a bare tokio pipeline",
        suite: "in-memory",
        metric: Metric::Prefix("end to end"),
        figure: Figure::Ratio("bare tokio pipeline"),
        bound: Bound::AtLeast(0.5),
    },
    Target {
        what: "consumer RSS ≤ 64 MiB draining a 1,000,000-message backlog",
        suite: "pulsar memory",
        metric: Metric::LargestBacklog,
        figure: Figure::Value("consumer RSS max"),
        bound: Bound::AtMost(64.0),
    },
    Target {
        what: "produce client CPU per message ≤ 1.1× the bare pulsar crate",
        suite: "pulsar",
        metric: Metric::Exact("produce CPU"),
        figure: Figure::Ratio("bare pulsar crate"),
        bound: Bound::AtMost(1.1),
    },
    Target {
        what: "consume (unbatched topic) client CPU per message ≤ 1.1× the bare pulsar crate",
        suite: "pulsar",
        metric: Metric::Exact("consume unbatched CPU"),
        figure: Figure::Ratio("bare pulsar crate"),
        bound: Bound::AtMost(1.1),
    },
];

/// `<n> message backlog` → n.
fn backlog(metric: &str) -> Option<u64> {
    metric.strip_suffix(" message backlog")?.trim().parse().ok()
}

/// The metric of `suite` a target reads, if the run measured one.
fn find_metric(samples: &[Sample], suite: &str, metric: Metric) -> Option<String> {
    let mut in_suite = samples.iter().filter(|s| s.suite == suite);
    match metric {
        Metric::Exact(m) => in_suite.find(|s| s.metric == m).map(|s| s.metric.clone()),
        Metric::Prefix(p) => in_suite
            .find(|s| s.metric.starts_with(p))
            .map(|s| s.metric.clone()),
        Metric::LargestBacklog => in_suite
            .filter_map(|s| backlog(&s.metric).map(|n| (n, &s.metric)))
            .max_by_key(|(n, _)| *n)
            .map(|(_, m)| m.clone()),
    }
}

/// One row of the table.
#[derive(Debug, PartialEq)]
pub struct Row {
    /// The target, in words.
    pub what: &'static str,
    /// The figure reached: median, min, max, rounds and its unit suffix; None if not measured.
    pub reached: Option<(Summary, &'static str)>,
    /// Some(true) met, Some(false) not met, None: not measured as the target states it.
    pub met: Option<bool>,
    /// The verdict in words.
    pub verdict: String,
}

/// Evaluates every target against the samples of a run.
pub fn evaluate(samples: &[Sample]) -> Vec<Row> {
    TARGETS.iter().map(|t| evaluate_one(samples, t)).collect()
}

fn evaluate_one(samples: &[Sample], t: &Target) -> Row {
    let not_measured = || Row {
        what: t.what,
        reached: None,
        met: None,
        verdict: "not measured in this run".to_string(),
    };
    let Some(metric) = find_metric(samples, t.suite, t.metric) else {
        return not_measured();
    };
    let (summary, unit) = match t.figure {
        Figure::Ratio(other) | Figure::Difference(other) => {
            let name = comparison_contender(matches!(t.figure, Figure::Difference(_)), other);
            let found = comparisons(samples, t.suite)
                .into_iter()
                .find(|c| c.metric == metric && c.contender == name);
            let unit = if matches!(t.figure, Figure::Ratio(_)) {
                "×"
            } else {
                " ms"
            };
            (found, unit)
        }
        Figure::Value(contender) => {
            let found = summarize(samples)
                .into_iter()
                .find(|s| s.suite == t.suite && s.metric == metric && s.contender == contender);
            (found, " MiB")
        }
    };
    let Some(summary) = summary else {
        return not_measured();
    };
    let (met, verdict) = if let (Metric::LargestBacklog, Some(n)) = (t.metric, backlog(&metric)) {
        if n < RSS_BACKLOG {
            let there = if t.bound.holds(t.bound.worst(&summary)) {
                "within the bound there"
            } else {
                "over the bound there"
            };
            (
                None,
                format!("not measured at {RSS_BACKLOG}: this run's backlog was {n} ({there})"),
            )
        } else {
            judge(t.bound, &summary)
        }
    } else {
        judge(t.bound, &summary)
    };
    Row {
        what: t.what,
        reached: Some((summary, unit)),
        met,
        verdict,
    }
}

/// Met when every round meets the bound; met at the median when only the median does.
fn judge(bound: Bound, s: &Summary) -> (Option<bool>, String) {
    if bound.holds(bound.worst(s)) {
        (Some(true), "met".to_string())
    } else if bound.holds(s.median) {
        (
            Some(true),
            "met at the median, not in every round".to_string(),
        )
    } else {
        (Some(false), "not met".to_string())
    }
}

/// The markdown table.
pub fn table(samples: &[Sample]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "#### Targets (issue 11)\n");
    let _ = writeln!(
        out,
        "Each target against this run's figures (ratios and differences round by round, as in \
         the suites' comparison tables below). A target is met when its median is; the verdict \
         says when a round missed it.\n"
    );
    let _ = writeln!(out, "| target | reached (median) | range | rounds | met |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for row in evaluate(samples) {
        let verdict = match row.met {
            Some(false) => format!("**{}**", row.verdict),
            _ => row.verdict.clone(),
        };
        match &row.reached {
            Some((s, unit)) => {
                let _ = writeln!(
                    out,
                    "| {} | {}{unit} | {} – {} | {} | {} |",
                    row.what,
                    number(s.median),
                    number(s.min),
                    number(s.max),
                    s.rounds,
                    verdict
                );
            }
            None => {
                let _ = writeln!(out, "| {} | – | – | 0 | {verdict} |", row.what);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two rounds of a run: `(round, contender, metric, value)` in the suites the targets read.
    fn run() -> Vec<Sample> {
        let mut v = Vec::new();
        let mut add = |suite: &str, metric: &str, who: &str, unit: &str, values: [f64; 2]| {
            for (round, value) in values.into_iter().enumerate() {
                v.push(Sample::new(suite, metric, who, unit, round as u32, value));
            }
        };
        // produce: 0.5× and 0.7× pulsar-perf (not met); 1.2× and 0.9× bare (median 1.05: met
        // at the median only)
        add(
            "pulsar",
            "produce",
            "bare pulsar crate",
            "msg/s",
            [100.0, 100.0],
        );
        add("pulsar", "produce", "backstop", "msg/s", [120.0, 90.0]);
        add(
            "pulsar",
            "produce",
            "pulsar-perf (batching)",
            "msg/s",
            [240.0, 128.57142857142858],
        );
        // consume unbatched: 1.0× and 0.96× (met); batched topic not measured
        add(
            "pulsar",
            "consume unbatched",
            "bare pulsar crate",
            "msg/s",
            [50.0, 50.0],
        );
        add(
            "pulsar",
            "consume unbatched",
            "backstop",
            "msg/s",
            [50.0, 48.0],
        );
        // publish p50: +0.5 and +0.75 ms (met); end to end p50: +2 and +3 ms (not met)
        for (metric, bare, ours) in [
            ("publish p50", [2.0, 2.0], [2.5, 2.75]),
            ("end to end p50", [10.0, 10.0], [12.0, 13.0]),
        ] {
            add(
                "pulsar",
                metric,
                "bare pulsar crate, no batching",
                "ms",
                bare,
            );
            add("pulsar", metric, "backstop", "ms", ours);
        }
        // in-memory: 0.4× (not met)
        add(
            "in-memory",
            "end to end, max_parallelism 5",
            "bare tokio pipeline",
            "msg/s",
            [1000.0, 1000.0],
        );
        add(
            "in-memory",
            "end to end, max_parallelism 5",
            "backstop",
            "msg/s",
            [400.0, 400.0],
        );
        // RSS: only a 200,000 backlog, within the bound
        add(
            "pulsar memory",
            "200000 message backlog",
            "consumer RSS max",
            "MiB",
            [19.0, 20.0],
        );
        v
    }

    fn verdicts(samples: &[Sample]) -> Vec<(Option<bool>, String)> {
        evaluate(samples)
            .into_iter()
            .map(|r| (r.met, r.verdict))
            .collect()
    }

    #[test]
    fn targets_are_met_or_not_from_the_rounds() {
        let rows = evaluate(&run());
        assert_eq!(rows.len(), TARGETS.len());
        let v = verdicts(&run());
        assert_eq!(v[0], (Some(false), "not met".to_string()), "vs pulsar-perf");
        assert_eq!(
            v[1],
            (
                Some(true),
                "met at the median, not in every round".to_string()
            ),
            "produce vs bare"
        );
        assert_eq!(v[2], (Some(true), "met".to_string()), "consume unbatched");
        assert_eq!(
            v[3],
            (None, "not measured in this run".to_string()),
            "consume batched"
        );
        assert_eq!(v[4], (Some(true), "met".to_string()), "publish p50");
        assert_eq!(v[5], (Some(false), "not met".to_string()), "end to end p50");
        assert_eq!(v[6], (Some(false), "not met".to_string()), "in-memory");
        assert_eq!(v[7].0, None, "RSS at a smaller backlog: {}", v[7].1);
        assert!(v[7].1.contains("200000") && v[7].1.contains("within the bound"));
        assert_eq!(v[8].0, None, "produce CPU not in this run");
        assert_eq!(v[9].0, None, "consume CPU not in this run");

        // the figures are the per-round ratios and differences
        let (s, unit) = rows[1].reached.clone().unwrap();
        assert_eq!(unit, "×");
        assert!((s.median - 1.05).abs() < 1e-9 && (s.min - 0.9).abs() < 1e-9);
        let (s, unit) = rows[4].reached.clone().unwrap();
        assert_eq!(unit, " ms");
        assert!((s.median - 0.625).abs() < 1e-9);
    }

    #[test]
    fn the_largest_backlog_decides_the_memory_target() {
        let mut samples = run();
        for (round, rss) in [(0, 30.0), (1, 70.0), (2, 80.0)] {
            samples.push(Sample::new(
                "pulsar memory",
                "1000000 message backlog",
                "consumer RSS max",
                "MiB",
                round,
                rss,
            ));
        }
        let row = &evaluate(&samples)[7];
        assert_eq!((row.met, row.verdict.as_str()), (Some(false), "not met"));
        assert_eq!(row.reached.as_ref().unwrap().0.median, 70.0);
        samples.retain(|s| !(s.metric.starts_with("1000000") && s.value > 50.0));
        assert_eq!(evaluate(&samples)[7].met, Some(true));
    }

    #[test]
    fn the_table_has_a_row_per_target_and_marks_what_is_missing() {
        let text = table(&run());
        assert!(text.starts_with("#### Targets (issue 11)"));
        assert_eq!(
            text.lines().filter(|l| l.starts_with("| ")).count(),
            TARGETS.len() + 1
        );
        assert!(text.contains("| produce ≥ 1.0× the bare pulsar crate | 1.05× | 0.90 – 1.20 | 2 |"));
        assert!(text.contains("| – | – | 0 | not measured in this run |"));
        // nothing measured at all: every target says so
        assert!(evaluate(&[])
            .iter()
            .all(|r| r.met.is_none() && r.reached.is_none()));
    }
}
