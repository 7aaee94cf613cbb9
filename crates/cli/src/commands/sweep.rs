//! `cram sweep`, `cram export`, `cram merge` and `cram check`.

use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use cram::engine::StepReport;
use cram::sweep::{self, Plan, RunOptions, Shard};

/// Options of `cram sweep`.
#[derive(Args)]
pub struct SweepArgs {
    /// The sweep configuration (TOML).
    pub config: PathBuf,
    /// The run folder (created if needed); results go to RUN_DIR/results.sqlite
    /// (RUN_DIR/results-shard-I-of-N.sqlite for a shard).
    #[arg(long)]
    pub out: PathBuf,
    /// Run only shard I of N (0-based), e.g. 0/4.
    #[arg(long, conflicts_with = "shards")]
    pub shard: Option<Shard>,
    /// Number of shards, the index coming from JOB_COMPLETION_INDEX (a
    /// Kubernetes indexed Job). Slurm job arrays need neither option.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Start afresh: move an existing database of this run folder (and
    /// shard) to RUN_DIR/old/ instead of resuming it.
    #[arg(long)]
    pub new: bool,
    /// When another cram process is writing this run folder (and shard),
    /// wait for it to finish instead of failing at once.
    #[arg(long)]
    pub wait: bool,
    /// Device: cpu, or cuda[:N] when built with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Options of `cram export`.
#[derive(Args)]
pub struct ExportArgs {
    /// The run folder.
    pub run_dir: PathBuf,
    /// csv, jsonl or parquet.
    #[arg(long)]
    pub format: cram_report::export::Format,
    /// The output file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Export the rows of the paper's other experiments (context and copy
    /// baselines, tokens per byte, entropy bound, PCA runs; one line per
    /// value) instead of the cells.
    #[arg(long)]
    pub ablations: bool,
}

/// Options of `cram merge`.
#[derive(Args)]
pub struct MergeArgs {
    /// Run folders (or result databases) to merge, e.g. the shards' folders.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// The run folder to merge into (created if needed; merging again adds
    /// only what it lacks).
    #[arg(short, long)]
    pub output: PathBuf,
}

/// Options of `cram check`.
#[derive(Args)]
pub struct CheckArgs {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Also check that the run holds every cell of this configuration's grid
    /// (and nothing else), and that it is the configuration the run was made
    /// with.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

fn model_args(spec: &str, dtype: &str, device: &str) -> crate::ModelArgs {
    crate::ModelArgs {
        model: spec.to_string(),
        dtype: dtype.to_string(),
        device: device.to_string(),
    }
}

/// Progress bars: the cells of the run, and the steps of the running batch.
struct Bars {
    quiet: bool,
    mp: MultiProgress,
    overall: Option<ProgressBar>,
    batch: Option<ProgressBar>,
}

impl sweep::Progress for Bars {
    fn moved_aside(&mut self, to: &Path) {
        if !self.quiet {
            eprintln!("moved the previous run's database to {}", to.display());
        }
    }

    fn start(&mut self, total: usize, already: usize) {
        let overall = self.mp.add(ProgressBar::new(total as u64));
        overall.set_style(
            ProgressStyle::with_template("cells {pos}/{len} [{bar:30}] {percent}% ETA {eta} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        overall.set_position(already as u64);
        overall.reset_eta();
        self.overall = Some(overall);
    }

    fn group(&mut self, description: &str) {
        if let Some(o) = &self.overall {
            o.set_message(description.to_string());
        }
    }

    fn batch_start(&mut self, max_steps: usize) {
        let bar = self.mp.add(ProgressBar::new(max_steps as u64));
        bar.set_style(
            ProgressStyle::with_template("  batch [{bar:30}] step {pos}/{len} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        self.batch = Some(bar);
    }

    fn step(&mut self, r: &StepReport) {
        if let Some(bar) = &self.batch {
            bar.set_position(r.step as u64);
            bar.set_message(format!(
                "live {}/{} loss {:.4} acc {:.4}",
                r.live, r.total, r.mean_loss, r.mean_accuracy
            ));
        }
    }

    fn warning(&mut self, message: &str) {
        if !self.quiet {
            self.mp.suspend(|| eprintln!("warning: {message}"));
        }
    }

    fn batch_done(&mut self, cells: usize) {
        if let Some(bar) = self.batch.take() {
            bar.finish_and_clear();
            self.mp.remove(&bar);
        }
        if let Some(o) = &self.overall {
            o.inc(cells as u64);
        }
    }
}

/// Runs `cram sweep`.
pub fn sweep(args: &SweepArgs, quiet: bool) -> anyhow::Result<()> {
    // Everything is checked before the first optimisation step.
    let p = Plan::load(&args.config)?;
    let shard = sweep::shard_from_env(args.shard, args.shards, |k| std::env::var(k).ok())?;
    let opts = RunOptions {
        out: args.out.clone(),
        shard,
        new: args.new,
        wait: args.wait,
    };
    let mut load = |spec: &str, dtype: &str| -> cram::Result<cram::model::LoadedModel> {
        model_args(spec, dtype, &args.device)
            .load()
            .map_err(|e| cram::CramError::Input(format!("{e:#}")))
    };
    let mut bars = Bars {
        quiet,
        mp: if quiet {
            MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
        } else {
            MultiProgress::new()
        },
        overall: None,
        batch: None,
    };
    if p.cfg.capacity.is_some() {
        let s = sweep::capacity::run(&p, &opts, &mut load, &mut bars)?;
        if let Some(o) = bars.overall.take() {
            o.finish_and_clear();
        }
        if !quiet {
            println!(
                "{}: capacity sweep, {} unit(s), {} text searches ({} already done){}",
                args.out.display(),
                s.units,
                s.texts,
                s.already,
                shard
                    .filter(|s| s.count > 1)
                    .map(|sh| format!(", shard {sh}"))
                    .unwrap_or_default()
            );
        }
        return Ok(());
    }
    let s = sweep::run(&p, &opts, &mut load, &mut bars)?;
    if let Some(o) = bars.overall.take() {
        o.finish_and_clear();
    }
    if !quiet {
        println!(
            "{}: {} cells ({} new, {} already there){}{}{}",
            s.db.display(),
            s.total,
            s.new_cells,
            s.already,
            if s.ablation_rows > 0 {
                format!("; {} new rows of the other experiments", s.ablation_rows)
            } else {
                String::new()
            },
            shard
                .filter(|s| s.count > 1)
                .map(|sh| format!(", shard {sh} of a grid of {} cells", s.grid_cells))
                .unwrap_or_default(),
            if s.skipped > 0 {
                format!(
                    "; skipped (length, n_mem) pairs with more vectors than tokens: {}",
                    s.skipped
                )
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// Runs `cram export`.
pub fn export(args: &ExportArgs, quiet: bool) -> anyhow::Result<()> {
    if args.ablations {
        let n = cram_report::export::export_ablations(&args.run_dir, args.format, &args.output)?;
        if !quiet {
            println!(
                "{}: {n} rows of the other experiments",
                args.output.display()
            );
        }
        return Ok(());
    }
    let n = cram_report::export::export_run(&args.run_dir, args.format, &args.output)?;
    if !quiet {
        println!("{}: {n} cells", args.output.display());
    }
    Ok(())
}

/// Runs `cram merge`.
pub fn merge(args: &MergeArgs, quiet: bool) -> anyhow::Result<()> {
    let s = sweep::merge(&args.inputs, &args.output)?;
    if !quiet {
        println!(
            "{}: {} cells ({} added from {} database(s))",
            s.out.display(),
            s.cells,
            s.added,
            s.databases
        );
    }
    Ok(())
}

/// Runs `cram check`.
pub fn check(args: &CheckArgs, quiet: bool) -> anyhow::Result<()> {
    // A capacity run (`cram capacity`), or the units of a capacity sweep.
    let mut dbs = vec![args.run_dir.join(cram::capacity::store::CAPACITY_DB)];
    dbs.retain(|d| d.is_file());
    let units = sweep::capacity::units(&args.run_dir)?;
    dbs.extend(units.iter().flat_map(|u| u.1.iter().cloned()));
    if !dbs.is_empty() {
        let (mut texts, mut done, mut stages) = (0, 0, 0);
        for db in &dbs {
            let s = cram::capacity::CapacityStore::open_read(db)?.summary()?;
            texts += s.texts;
            done += s.done;
            stages += s.stages;
        }
        if let Some(config) = &args.config {
            let p = Plan::load(config)?;
            if let Some(cap) = &p.cfg.capacity {
                let want = p.cfg.models.len()
                    * p.datasets.len()
                    * p.cfg.n_mem.len()
                    * cap.units_per_cell()
                    * p.cfg.samples;
                if done != want {
                    anyhow::bail!(
                        "{}: {done} of the configuration's {want} text searches are done",
                        args.run_dir.display()
                    );
                }
            }
        }
        if !quiet {
            println!(
                "{}: integrity ok, capacity: {} database(s), {texts} text(s) searched, {done} done, {stages} stages",
                args.run_dir.display(),
                dbs.len(),
            );
        }
        if cram::store::run_databases(&args.run_dir)?.is_empty() {
            return Ok(());
        }
    }
    let s = sweep::check(&args.run_dir, args.config.as_deref())?;
    if !quiet {
        let mut msg = format!(
            "{}: integrity ok, {} database(s), {} cells",
            args.run_dir.display(),
            s.databases,
            s.cells
        );
        if let Some(n) = s.grid_cells {
            msg += &format!(", the grid's {n} cells complete");
        }
        if s.diverged > 0 {
            msg += &format!("; {} cell(s) diverged (non-finite loss)", s.diverged);
        }
        if s.short > 0 {
            msg += &format!(
                "; {} cell(s) of texts shorter than their length (real token counts in n_tokens)",
                s.short
            );
        }
        println!("{msg}");
    }
    Ok(())
}
