//! Many seeds from a cargo test, with `BACKSTOP_SEED` to replay one and `BACKSTOP_SEEDS` to
//! run more.

use super::report::{Counts, Report};
use super::Simulation;

/// What [`run_seeds`] did.
#[derive(Clone, Debug)]
pub struct Seeds {
    /// Seeds run.
    pub runs: u64,
    /// Seeds that passed.
    pub passed: u64,
    /// The report of the first seed that failed (the run stops there).
    pub first_failure: Option<Report>,
    /// Counts summed over every seed run.
    pub counts: Counts,
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v:?} is not a whole number"),
    }
}

/// The command that reruns the current test with `BACKSTOP_SEED=seed`, from what cargo and
/// libtest tell a running test (package, test binary, test name).
fn replay_command(seed: u64) -> String {
    let mut cmd = format!("BACKSTOP_SEED={seed} cargo test");
    if let Ok(pkg) = std::env::var("CARGO_PKG_NAME") {
        cmd.push_str(&format!(" -p {pkg}"));
    }
    let exe = std::env::current_exe().ok();
    let stem = exe
        .as_ref()
        .and_then(|p| p.file_stem())
        .and_then(|s| s.to_str())
        .map(|s| match s.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
            _ => s.to_string(),
        });
    if let Some(stem) = stem {
        let lib = std::env::var("CARGO_CRATE_NAME").ok().or_else(|| {
            std::env::var("CARGO_PKG_NAME")
                .ok()
                .map(|p| p.replace('-', "_"))
        });
        if lib.as_deref() == Some(stem.as_str()) {
            cmd.push_str(" --lib");
        } else {
            cmd.push_str(&format!(" --test {stem}"));
        }
    }
    if let Some(name) = std::thread::current().name().filter(|n| *n != "main") {
        cmd.push_str(&format!(" -- --exact {name}"));
    }
    cmd
}

/// Runs `build`'s simulation for seeds `0..seeds` (or `0..BACKSTOP_SEEDS` when set; only
/// `BACKSTOP_SEED` when that is set), stopping at the first failure. `build` sets up each
/// seed's simulation: fresh state, consumers, messages, faults, invariants.
///
/// # Panics
/// When `BACKSTOP_SEED` or `BACKSTOP_SEEDS` is set to something other than a whole number.
#[must_use = "check `first_failure`, or use check_seeds"]
pub fn run_seeds(seeds: u64, build: impl Fn(&mut Simulation)) -> Seeds {
    let list: Vec<u64> = match env_u64("BACKSTOP_SEED") {
        Some(s) => vec![s],
        None => (0..env_u64("BACKSTOP_SEEDS").unwrap_or(seeds)).collect(),
    };
    let mut out = Seeds {
        runs: 0,
        passed: 0,
        first_failure: None,
        counts: Counts::default(),
    };
    for seed in list {
        let mut sim = Simulation::new(seed);
        sim.replay_command(replay_command(seed));
        build(&mut sim);
        let report = sim.run();
        out.runs += 1;
        out.counts += report.counts;
        if report.passed() {
            out.passed += 1;
        } else {
            out.first_failure = Some(report);
            break;
        }
    }
    out
}

/// [`run_seeds`], then panics with the first failing seed's report (its violation, the last
/// events before it, the fault schedule, the counts and the command that replays it).
///
/// ```no_run
/// use backstop_engine::runtime::{ConsumerSpec, HandlerError};
/// use backstop_testkit::{check_seeds, FaultProfile};
///
/// #[test]
/// fn orders_survive_broker_restarts() {
///     check_seeds(100, |sim| {
///         sim.consumer(ConsumerSpec::new("orders", "billing"), |_id: u64| async {
///             Ok::<(), HandlerError>(())
///         });
///         sim.publish_json("orders", &1u64);
///         sim.faults(FaultProfile::all());
///     });
/// }
/// ```
///
/// # Panics
/// When a seed fails, or on a malformed `BACKSTOP_SEED` / `BACKSTOP_SEEDS`.
pub fn check_seeds(seeds: u64, build: impl Fn(&mut Simulation)) -> Seeds {
    let out = run_seeds(seeds, build);
    if let Some(r) = &out.first_failure {
        panic!(
            "simulation failed after {} passing seed(s)\n{r}",
            out.passed
        );
    }
    println!(
        "backstop-testkit: {} seed(s) passed: {}",
        out.passed, out.counts
    );
    out
}
