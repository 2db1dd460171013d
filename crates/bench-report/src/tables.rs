//! The generated markdown: one table per suite with the median and spread of every figure,
//! the comparisons of backstop with each other contender measured in the same rounds, and the
//! charts.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use backstop_bench_report::{summarize, ReportError, Sample, Summary};

const BEGIN: &str = "<!-- bench-report:begin -->";
const END: &str = "<!-- bench-report:end -->";

/// The contender every comparison is about.
const SUBJECT: &str = "backstop";

/// A figure for a table: `12.35 M`, `4081`, `21.2`, `0.37`.
pub(crate) fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn suites(summaries: &[Summary]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in summaries {
        if !out.contains(&s.suite) {
            out.push(s.suite.clone());
        }
    }
    out
}

/// The contender name of a comparison of backstop with `other`: `backstop / other` for a
/// ratio, `backstop minus other` for a difference.
pub(crate) fn comparison_contender(difference: bool, other: &str) -> String {
    let what = if difference { "minus" } else { "/" };
    format!("{SUBJECT} {what} {other}")
}

/// backstop against each other contender of the same metric, round by round: a ratio for
/// rates, a difference for latencies (unit `ms`).
pub(crate) fn comparisons(samples: &[Sample], suite: &str) -> Vec<Summary> {
    let mut by_round: BTreeMap<(String, u32), Vec<&Sample>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.suite == suite) {
        by_round
            .entry((s.metric.clone(), s.round))
            .or_default()
            .push(s);
    }
    let mut derived = Vec::new();
    for ((metric, round), group) in &by_round {
        let Some(subject) = group.iter().find(|s| s.contender == SUBJECT) else {
            continue;
        };
        for other in group.iter().filter(|s| s.contender != SUBJECT) {
            let difference = subject.unit == "ms";
            let (unit, value) = if difference {
                ("ms", subject.value - other.value)
            } else {
                ("ratio", subject.value / other.value)
            };
            derived.push(Sample::new(
                suite,
                metric,
                &comparison_contender(difference, &other.contender),
                unit,
                *round,
                value,
            ));
        }
    }
    summarize(&derived)
}

/// The markdown between the markers.
pub fn section(
    samples: &[Sample],
    summaries: &[Summary],
    images: &[(String, PathBuf)],
    doc_dir: &Path,
    header: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{BEGIN}");
    let _ = writeln!(
        out,
        "<!-- written by `scripts/bench` (crates/bench-report); edits here are overwritten -->\n"
    );
    if !header.is_empty() {
        let _ = writeln!(out, "{header}\n");
    }
    let _ = writeln!(
        out,
        "Median over rounds, with the smallest and largest round; comparisons are taken round by \
         round (same moment, same machine) and then summarized.\n"
    );
    let _ = writeln!(out, "{}", crate::targets::table(samples));
    for suite in suites(summaries) {
        let _ = writeln!(out, "#### {suite}\n");
        let _ = writeln!(out, "| figure | contender | median | range | rounds |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        let mut rows: Vec<&Summary> = summaries.iter().filter(|s| s.suite == suite).collect();
        let metric_order = |m: &str| rows_order(summaries, &suite, m);
        rows.sort_by_key(|s| metric_order(&s.metric));
        for s in rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} {} | {} – {} | {} |",
                s.metric,
                s.contender,
                number(s.median),
                s.unit,
                number(s.min),
                number(s.max),
                s.rounds
            );
        }
        let cmp = comparisons(samples, &suite);
        if !cmp.is_empty() {
            let _ = writeln!(out, "\n| figure | comparison | median | range | rounds |");
            let _ = writeln!(out, "|---|---|---|---|---|");
            for c in &cmp {
                let unit = if c.unit == "ratio" { "×" } else { " ms" };
                let _ = writeln!(
                    out,
                    "| {} | {} | {}{unit} | {} – {} | {} |",
                    c.metric,
                    c.contender,
                    number(c.median),
                    number(c.min),
                    number(c.max),
                    c.rounds
                );
            }
        }
        for (image_suite, path) in images.iter().filter(|(s, _)| *s == suite) {
            let rel = relative(path, doc_dir);
            let _ = writeln!(out, "\n![{image_suite}]({rel})");
        }
        let _ = writeln!(out);
    }
    let _ = write!(out, "{END}");
    out
}

/// Where a metric first appears in a suite (rows of one metric stay together, in measuring order).
fn rows_order(summaries: &[Summary], suite: &str, metric: &str) -> usize {
    summaries
        .iter()
        .filter(|s| s.suite == suite)
        .position(|s| s.metric == metric)
        .unwrap_or(usize::MAX)
}

fn relative(path: &Path, base: &Path) -> String {
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (p, b) = (abs(path), abs(base));
    match p.strip_prefix(&b) {
        Ok(r) => r.display().to_string(),
        Err(_) => p.display().to_string(),
    }
}

/// Replaces the text between the markers (markers included) in `doc`.
pub fn replace_section(doc: &Path, section: &str) -> Result<(), ReportError> {
    let text = std::fs::read_to_string(doc).map_err(|source| ReportError::Io {
        path: doc.display().to_string(),
        source,
    })?;
    let updated = splice(&text, section).ok_or_else(|| {
        ReportError::Invalid(format!(
            "{}: add the lines `{BEGIN}` and `{END}` where the generated tables go",
            doc.display()
        ))
    })?;
    std::fs::write(doc, updated).map_err(|source| ReportError::Io {
        path: doc.display().to_string(),
        source,
    })
}

fn splice(text: &str, section: &str) -> Option<String> {
    let start = text.find(BEGIN)?;
    let end = text[start..].find(END)? + start + END.len();
    Some(format!("{}{section}{}", &text[..start], &text[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Sample> {
        let mut v = Vec::new();
        for (round, bare, ours) in [(0, 100.0, 90.0), (1, 200.0, 200.0), (2, 100.0, 110.0)] {
            v.push(Sample::new("e2e", "msg/s", "bare", "msg/s", round, bare));
            v.push(Sample::new(
                "e2e", "msg/s", "backstop", "msg/s", round, ours,
            ));
        }
        v.push(Sample::new("lat", "p50", "bare", "ms", 0, 1.0));
        v.push(Sample::new("lat", "p50", "backstop", "ms", 0, 1.25));
        v
    }

    #[test]
    fn comparisons_are_per_round() {
        let c = comparisons(&samples(), "e2e");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].contender, "backstop / bare");
        // per-round ratios 0.9, 1.0, 1.1: median 1.0 (the ratio of medians would be 0.7)
        assert!((c[0].median - 1.0).abs() < 1e-9);
        assert!((c[0].min - 0.9).abs() < 1e-9 && (c[0].max - 1.1).abs() < 1e-9);
        let l = comparisons(&samples(), "lat");
        assert_eq!(l[0].contender, "backstop minus bare");
        assert!((l[0].median - 0.25).abs() < 1e-9);
    }

    #[test]
    fn the_section_replaces_only_the_marked_text() {
        let s = samples();
        let sum = summarize(&s);
        let text = section(&s, &sum, &[], Path::new("."), "run: test");
        assert!(text.starts_with(BEGIN) && text.ends_with(END));
        assert!(text.contains("| msg/s | backstop / bare | 1.00× | 0.90 – 1.10 | 3 |"));
        let doc = format!("intro\n{BEGIN}\nold\n{END}\noutro\n");
        let new = splice(&doc, &text).unwrap();
        assert!(new.starts_with("intro\n") && new.ends_with("\noutro\n"));
        assert!(!new.contains("old"));
        assert!(splice("no markers", &text).is_none());
    }
}
