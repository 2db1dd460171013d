//! Turns criterion's saved estimates (`target/criterion/<group>/<bench>/new/`) into
//! [`Sample`]s: elements per second from the median time per iteration and the benchmark's
//! declared throughput.

use std::path::Path;

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::{ReportError, Sample};

#[derive(Deserialize)]
struct Estimate {
    point_estimate: f64,
}

#[derive(Deserialize)]
struct Estimates {
    median: Estimate,
}

#[derive(Deserialize)]
enum Throughput {
    Elements(u64),
    Bytes(IgnoredAny),
    BytesDecimal(IgnoredAny),
    ElementsAndBytes { elements: u64 },
}

#[derive(Deserialize)]
struct Benchmark {
    throughput: Option<Throughput>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReportError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ReportError::Parse {
        path: path.display().to_string(),
        line: 1,
        source,
    })
}

/// Elements per second of the benchmark `id` (`group/bench`, e.g. `consumer-cpu/lifecycle_ok`)
/// as criterion last saved it under `criterion_dir`, as a sample of `suite` for `round`; the
/// contender names the clock (`-cpu` groups: CPU time, others: wall clock).
/// Criterion's time unit is nanoseconds, also for backstop's CPU-time measurement.
pub fn elements_per_second(
    criterion_dir: &Path,
    id: &str,
    suite: &str,
    round: u32,
) -> Result<Sample, ReportError> {
    let dir = criterion_dir.join(id).join("new");
    let estimates: Estimates = read_json(&dir.join("estimates.json"))?;
    let bench: Benchmark = read_json(&dir.join("benchmark.json"))?;
    let elements = match bench.throughput {
        Some(Throughput::Elements(n)) | Some(Throughput::ElementsAndBytes { elements: n, .. }) => n,
        Some(Throughput::Bytes(_)) | Some(Throughput::BytesDecimal(_)) | None => {
            return Err(ReportError::Invalid(format!(
                "{id}: criterion saved no element throughput"
            )))
        }
    };
    let ns = estimates.median.point_estimate;
    if ns <= 0.0 || !ns.is_finite() {
        return Err(ReportError::Invalid(format!("{id}: median time {ns} ns")));
    }
    let (group, name) = id.split_once('/').unwrap_or((id, id));
    // the `-cpu` groups measure the benchmark thread's CPU time, the others wall-clock time
    let (group, clock) = match group.strip_suffix("-cpu") {
        Some(g) => (g, "CPU time"),
        None => (group, "wall clock"),
    };
    Ok(Sample::new(
        suite,
        &format!("{group} {name}"),
        &format!("backstop core ({clock})"),
        "elements/s",
        round,
        elements as f64 * 1e9 / ns,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_criterion_saves() {
        let root = std::env::temp_dir().join(format!("bench-crit-{}", std::process::id()));
        let dir = root.join("consumer-cpu/lifecycle_ok/new");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("estimates.json"),
            r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":2.0},"point_estimate":1.5,"standard_error":0.1},
               "median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":2.0},"point_estimate":500000.0,"standard_error":0.1}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("benchmark.json"),
            r#"{"group_id":"consumer-cpu","function_id":"lifecycle_ok","value_str":null,"throughput":{"Elements":10000},"full_id":"consumer-cpu/lifecycle_ok","directory_name":"consumer-cpu/lifecycle_ok","title":"consumer-cpu/lifecycle_ok"}"#,
        )
        .unwrap();
        let s = elements_per_second(&root, "consumer-cpu/lifecycle_ok", "core", 3).unwrap();
        assert_eq!(s.metric, "consumer lifecycle_ok");
        assert_eq!(s.contender, "backstop core (CPU time)");
        assert_eq!(s.round, 3);
        // 10,000 elements in 0.5 ms
        assert!((s.value - 2e7).abs() < 1e-3, "{}", s.value);
        assert!(elements_per_second(&root, "missing/bench", "core", 0).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
