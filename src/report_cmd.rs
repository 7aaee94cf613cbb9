//! `cram report`.

use std::path::{Path, PathBuf};

use clap::Args;

use cram::metrics::{MetricsConfig, DEFAULT_BITS, DEFAULT_THRESHOLD};
use cram::report::{self, CellSelector, CurveChoice, ReportConfig, RunData, DEFAULT_CURVES};

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
    /// Accuracy threshold for "lossless".
    #[arg(long, default_value_t = DEFAULT_THRESHOLD)]
    pub threshold: f64,
    /// Bits per vector component in the theoretical capacity.
    #[arg(long, default_value_t = DEFAULT_BITS)]
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

/// Reads one run: a sweep's run folder (its SQLite results, all shards in
/// it), or a folder with `cells.jsonl` (or a `.jsonl` file) of
/// [`report::ReportCell`]s. Cells of a sweep are grouped by the grid length
/// they were cut to (the paper's lengths), not by their own token count.
fn read_run(path: &Path) -> anyhow::Result<RunData> {
    let jsonl = if path.is_dir() {
        path.join(report::CELLS_FILE).is_file()
    } else {
        true
    };
    if jsonl {
        return Ok(report::read_jsonl_run(path)?);
    }
    let run = cram::store::load_run(path)?;
    let name = path
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| path.display().to_string());
    let cells = run
        .cells
        .into_iter()
        .map(|r| {
            let mut cell = r.cell;
            cell.length = r.grid_length;
            report::ReportCell {
                cell,
                loss_curve: r.loss_curve,
                accuracy_curve: r.accuracy_curve,
            }
        })
        .collect();
    Ok(RunData {
        name,
        config_toml: run.config_toml,
        cells,
    })
}

/// Runs `cram report`.
pub fn run(args: &ReportArgs, quiet: bool) -> anyhow::Result<()> {
    let runs = args
        .runs
        .iter()
        .map(|p| read_run(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
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
    let s = report::write_report(&runs, &args.output, &cfg)?;
    if !quiet {
        println!(
            "{} run(s), {} texts, {} group(s): {} files, {} figures -> {}",
            s.n_runs,
            s.n_cells,
            s.groups.len(),
            s.files.len(),
            s.figures.len(),
            args.output.join(report::html::INDEX).display()
        );
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
