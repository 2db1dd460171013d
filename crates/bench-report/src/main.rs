//! `bench-report`: records figures for `scripts/bench`, imports criterion's estimates, and
//! renders the collected results as markdown tables and PNG charts into the docs.

use std::path::PathBuf;
use std::process::ExitCode;

use backstop_bench_report::{append, criterion_import, read, summarize, ReportError, Sample};
use clap::{Parser, Subcommand};

mod chart;
mod tables;
mod targets;

#[derive(Parser)]
#[command(about = "Benchmark results for docs/benchmarks.md (used by scripts/bench)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Append one figure to a results file.
    Record {
        #[arg(long)]
        results: PathBuf,
        #[arg(long)]
        suite: String,
        #[arg(long)]
        metric: String,
        #[arg(long)]
        contender: String,
        #[arg(long)]
        unit: String,
        #[arg(long, default_value_t = 0)]
        round: u32,
        #[arg(long)]
        value: f64,
    },
    /// Append criterion's last estimates (elements/s) of the given benchmark ids.
    ImportCriterion {
        #[arg(long)]
        results: PathBuf,
        /// criterion's output directory (target/criterion)
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 0)]
        round: u32,
        /// benchmark ids, `group/bench`
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Write the tables between the markers of a markdown file, and the charts as PNGs.
    Render {
        #[arg(long)]
        results: PathBuf,
        /// the markdown file holding `<!-- bench-report:begin -->` ... `<!-- bench-report:end -->`
        #[arg(long)]
        doc: PathBuf,
        /// where the PNGs go (linked relative to the doc)
        #[arg(long)]
        charts: PathBuf,
        /// a line describing the run (command, machine, date)
        #[arg(long, default_value = "")]
        header: String,
    },
}

fn run(cli: Cli) -> Result<(), ReportError> {
    match cli.command {
        Command::Record {
            results,
            suite,
            metric,
            contender,
            unit,
            round,
            value,
        } => append(
            &results,
            &[Sample::new(
                &suite, &metric, &contender, &unit, round, value,
            )],
        ),
        Command::ImportCriterion {
            results,
            dir,
            round,
            ids,
        } => {
            let samples = ids
                .iter()
                .map(|id| criterion_import::elements_per_second(&dir, id, "core", round))
                .collect::<Result<Vec<_>, _>>()?;
            append(&results, &samples)
        }
        Command::Render {
            results,
            doc,
            charts,
            header,
        } => {
            let samples = read(&results)?;
            if samples.is_empty() {
                return Err(ReportError::Invalid(format!(
                    "{}: no results",
                    results.display()
                )));
            }
            let summaries = summarize(&samples);
            let images = chart::render_all(&summaries, &charts)?;
            let doc_dir = match doc.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let section = tables::section(&samples, &summaries, &images, &doc_dir, &header);
            tables::replace_section(&doc, &section)?;
            println!(
                "bench-report: {} samples, {} figures, {} charts -> {}",
                samples.len(),
                summaries.len(),
                images.len(),
                doc.display()
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-report: {e}");
            ExitCode::FAILURE
        }
    }
}
