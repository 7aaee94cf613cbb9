//! `cram report`.

use std::path::PathBuf;

use clap::Args;

use cram::metrics::{MetricsConfig, DEFAULT_BITS, DEFAULT_THRESHOLD};
use cram_report::{CellSelector, CurveChoice, ReportConfig, DEFAULT_CURVES};

/// Options of `cram report`.
#[derive(Args)]
pub struct ReportArgs {
    /// Run folders of `cram sweep` (or folders with cells.jsonl and
    /// config.toml, or .jsonl files); all go into one report.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output folder (created if needed).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Accuracy threshold for "lossless", in (0, 1].
    #[arg(long, default_value_t = DEFAULT_THRESHOLD, value_parser = threshold, allow_hyphen_values = true)]
    pub threshold: f64,
    /// Bits per vector component in the theoretical capacity (positive).
    #[arg(long, default_value_t = DEFAULT_BITS, value_parser = bits)]
    pub bits: f64,
    /// Draw the optimisation curves of this many texts, chosen by the report.
    #[arg(long, default_value_t = DEFAULT_CURVES, conflicts_with = "curve")]
    pub curves: usize,
    /// Draw the curves of the texts matching KEY=VALUE[,KEY=VALUE...] (keys:
    /// model, dataset, sample, mem, length); repeatable.
    #[arg(long)]
    pub curve: Vec<CellSelector>,
    /// Heading of index.html.
    #[arg(long, default_value = "Cramming report")]
    pub title: String,
}

fn threshold(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t > 0.0 && t <= 1.0 => Ok(t),
        _ => Err(format!("`{s}` is not an accuracy in (0, 1]")),
    }
}

fn bits(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(b) if b.is_finite() && b > 0.0 => Ok(b),
        _ => Err(format!("`{s}` is not a positive number of bits")),
    }
}

/// Runs `cram report`.
pub fn run(args: &ReportArgs, quiet: bool) -> anyhow::Result<()> {
    // A folder of `cram capacity` goes to the capacity section; one that
    // holds no sweep results besides is not read as a sweep.
    let mut runs = Vec::new();
    let mut capacity = Vec::new();
    for p in &args.runs {
        let cap = cram_report::capacity::read(p)?;
        let sweep = !p.is_dir()
            || p.join(cram_report::CELLS_FILE).is_file()
            || !cram::store::run_databases(p)?.is_empty();
        if sweep || cap.is_empty() {
            runs.push(cram_report::read_run(p)?);
        }
        capacity.extend(cap);
    }
    let cfg = ReportConfig {
        metrics: MetricsConfig {
            threshold: args.threshold,
            bits: args.bits,
        },
        curves: if args.curve.is_empty() {
            CurveChoice::Auto(args.curves)
        } else {
            CurveChoice::Select(args.curve.clone())
        },
        title: args.title.clone(),
    };
    let s = cram_report::write_report_with(&runs, &capacity, &args.output, &cfg)?;
    if !quiet {
        println!(
            "{} run(s), {} texts, {} group(s): {} files, {} figures -> {}",
            s.n_runs,
            s.n_cells,
            s.groups.len(),
            s.files.len(),
            s.figures.len(),
            args.output.join(cram_report::html::INDEX).display()
        );
        if s.n_diverged > 0 {
            eprintln!(
                "warning: {} text(s) have a non-finite loss (their optimisation diverged)",
                s.n_diverged
            );
        }
        if let CurveChoice::Select(sels) = &cfg.curves {
            if s.curve_cells.is_empty() {
                let sels: Vec<String> = sels.iter().map(|s| s.to_string()).collect();
                eprintln!(
                    "warning: no text with curves matches --curve {}",
                    sels.join(" --curve ")
                );
            }
        }
    }
    Ok(())
}
