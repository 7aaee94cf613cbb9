//! `cram sweep`, `cram export`, `cram merge` and `cram check`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use cram::engine::Engine;
use cram::memfile::{tokens_sha256, ModelIdentity};
use cram::metrics::Cell;
use cram::model::LoadedModel;
use cram::store::{self, CellRecord, RunMeta, Store};
use cram::sweep::{self, Chunk, Grid, Shard, SweepConfig};

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
    pub format: cram::export::Format,
    /// The output file.
    #[arg(short, long)]
    pub output: PathBuf,
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

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A configuration, its text, the loaded data sets and the grid.
struct Plan {
    path: PathBuf,
    cfg: SweepConfig,
    toml: String,
    datasets: Vec<sweep::Dataset>,
    grid: Grid,
}

fn plan(config: &Path) -> anyhow::Result<Plan> {
    let (cfg, toml) = SweepConfig::from_file(config)?;
    let base = config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let datasets = cfg
        .load_datasets(base)
        .with_context(|| config.display().to_string())?;
    let grid = Grid::new(&cfg, &datasets);
    Ok(Plan {
        path: config.to_path_buf(),
        cfg,
        toml,
        datasets,
        grid,
    })
}

fn model_args(spec: &str, dtype: &str, device: &str) -> crate::ModelArgs {
    crate::ModelArgs {
        model: spec.to_string(),
        dtype: dtype.to_string(),
        device: device.to_string(),
    }
}

/// What the run needs from one model: its identity and the tokens of its
/// pending cells, keyed by (dataset, length).
struct ModelPrep {
    identity: ModelIdentity,
    tokens: HashMap<(usize, usize), Vec<Vec<u32>>>,
}

/// Loads model `m`, checks every cell of `chunks` against it (context
/// length, text tokens, and that finished cells were made from the same
/// tokens), and tokenises the texts.
fn prepare_model(
    p: &Plan,
    m: usize,
    chunks: &[&Chunk],
    done: &HashMap<sweep::CellKey, String>,
    device: &str,
) -> anyhow::Result<(LoadedModel, ModelPrep)> {
    let spec = &p.cfg.models[m];
    let lm = model_args(spec, &p.cfg.dtype, device)
        .load()
        .with_context(|| format!("{}: model `{spec}`", p.path.display()))?;
    let ctx = lm.model.info().context_length;
    for c in chunks {
        if c.length + c.n_mem > ctx {
            bail!(
                "{}: lengths: length {} with {} vector(s) exceeds the context length {ctx} of model `{spec}`",
                p.path.display(),
                c.length,
                c.n_mem
            );
        }
    }
    let mut tokens = HashMap::new();
    for c in chunks {
        let key = (c.dataset, c.length);
        if let std::collections::hash_map::Entry::Vacant(e) = tokens.entry(key) {
            e.insert(p.datasets[c.dataset].tokens(&lm.tokenizer, c.length)?);
        }
        let ids = &tokens[&key];
        let engine = Engine::new(lm.model.as_ref(), p.cfg.cram_config(c.n_mem))?;
        for s in c.samples.clone() {
            let k = p.grid.key(c, s);
            engine.check_text(&ids[s]).with_context(|| {
                format!(
                    "model `{spec}`, data set `{}`, text `{}`, length {}",
                    k.dataset, k.sample_id, k.length
                )
            })?;
            if let Some(h) = done.get(&k) {
                if *h != tokens_sha256(&ids[s]) {
                    bail!(
                        "model `{spec}`, data set `{}`, text `{}`, length {}: the run holds this cell made from other tokens (the data or the tokenizer changed); start a new run with --new or another --out",
                        k.dataset,
                        k.sample_id,
                        k.length
                    );
                }
            }
        }
    }
    let identity = ModelIdentity::of(&lm)?;
    Ok((lm, ModelPrep { identity, tokens }))
}

/// Moves `db` (after folding its log in) to `run_dir/old/`.
fn move_aside(db: &Path, run_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    if !db.exists() {
        return Ok(None);
    }
    Store::open_existing(db)?.checkpoint_and_close()?;
    let old = run_dir.join("old");
    std::fs::create_dir_all(&old).with_context(|| format!("{}: cannot create", old.display()))?;
    let stem = db.file_stem().and_then(|s| s.to_str()).unwrap_or("results");
    let to = old.join(format!("{stem}-{}.sqlite", unix_now()));
    std::fs::rename(db, &to)
        .with_context(|| format!("{}: cannot move to {}", db.display(), to.display()))?;
    for ext in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{ext}", db.display()));
        if side.exists() {
            std::fs::remove_file(&side)
                .with_context(|| format!("{}: cannot remove", side.display()))?;
        }
    }
    Ok(Some(to))
}

/// Runs `cram sweep`.
pub fn sweep(args: &SweepArgs, quiet: bool) -> anyhow::Result<()> {
    // Everything is checked before the first optimisation step.
    let p = plan(&args.config)?;
    let shard = sweep::shard_from_env(args.shard, args.shards, |k| std::env::var(k).ok())?;
    let mine = p.grid.shard(shard);
    let config_json = p.cfg.canonical_json();
    let config_hash = p.cfg.hash();
    let db = store::db_path(&args.out, shard);
    if args.new {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("{}: cannot create folder", args.out.display()))?;
        if let Some(to) = move_aside(&db, &args.out)? {
            if !quiet {
                eprintln!("moved the previous run's database to {}", to.display());
            }
        }
    } else if db.exists() {
        let st = Store::open_existing(&db)?;
        if let Some(m) = st.meta()? {
            if m.config_hash != config_hash {
                bail!(
                    "{}: the run was started with another configuration (differing keys: {}); use --new to start afresh (the old database moves to {}/old/) or another --out",
                    db.display(),
                    sweep::differing_keys(&m.config_json, &config_json).join(", "),
                    args.out.display()
                );
            }
        }
    }
    let done = if db.exists() {
        Store::open_existing(&db)?.done()?
    } else {
        HashMap::new()
    };
    // Load and check each model; keep the first for the run.
    let mut by_model: Vec<Vec<&Chunk>> = vec![Vec::new(); p.cfg.models.len()];
    for c in &mine {
        by_model[c.model].push(c);
    }
    let mut preps: Vec<Option<ModelPrep>> = Vec::new();
    let mut first_loaded: Option<(usize, LoadedModel)> = None;
    for (m, chunks) in by_model.iter().enumerate() {
        if chunks.is_empty() {
            preps.push(None);
            continue;
        }
        let (lm, prep) = prepare_model(&p, m, chunks, &done, &args.device)?;
        if first_loaded.is_none() {
            first_loaded = Some((m, lm));
        }
        preps.push(Some(prep));
    }

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create folder", args.out.display()))?;
    let mut store = Store::open(&db)?;
    if store.meta()?.is_none() {
        store.init_meta(&RunMeta {
            config_toml: p.toml.clone(),
            config_json,
            config_hash: config_hash.clone(),
            cram_version: env!("CARGO_PKG_VERSION").to_string(),
        })?;
    }

    let total = Grid::count(&mine);
    let already = p
        .grid
        .keys(&mine)
        .iter()
        .filter(|k| done.contains_key(k))
        .count();
    let mp = if quiet {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    } else {
        MultiProgress::new()
    };
    let overall = mp.add(ProgressBar::new(total as u64));
    overall.set_style(
        ProgressStyle::with_template("cells {pos}/{len} [{bar:30}] {percent}% ETA {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    overall.set_position(already as u64);
    overall.reset_eta();
    let shard_str = shard.filter(|s| s.count > 1).map(|s| s.to_string());
    let mut new_cells = 0usize;
    let mut loaded: Option<(usize, LoadedModel)> = first_loaded;
    for c in &mine {
        let pending: Vec<usize> = c
            .samples
            .clone()
            .filter(|&s| !done.contains_key(&p.grid.key(c, s)))
            .collect();
        if pending.is_empty() {
            continue;
        }
        if loaded.as_ref().is_none_or(|(m, _)| *m != c.model) {
            drop(loaded.take()); // free the previous model first
            let spec = &p.cfg.models[c.model];
            let lm = model_args(spec, &p.cfg.dtype, &args.device)
                .load()
                .with_context(|| format!("model `{spec}`"))?;
            loaded = Some((c.model, lm));
        }
        let lm = &loaded.as_ref().expect("a model is loaded").1;
        let prep = preps[c.model].as_ref().expect("the model was prepared");
        let info = lm.model.info();
        let engine = Engine::new(lm.model.as_ref(), p.cfg.cram_config(c.n_mem))?;
        let ids = &prep.tokens[&(c.dataset, c.length)];
        overall.set_message(format!(
            "{} / {} / length {} / {} vector(s)",
            p.cfg.models[c.model], p.datasets[c.dataset].name, c.length, c.n_mem
        ));
        // Runs of consecutive samples keep each text's seed stream
        // (`seed + sample index`) whatever was done before.
        let mut runs: Vec<Vec<usize>> = Vec::new();
        for &s in &pending {
            match runs.last_mut() {
                Some(r) if *r.last().expect("runs are non-empty") + 1 == s => r.push(s),
                _ => runs.push(vec![s]),
            }
        }
        for run in runs {
            let texts: Vec<Vec<u32>> = run.iter().map(|&s| ids[s].clone()).collect();
            let bar = mp.add(ProgressBar::new(p.cfg.optimizer.max_steps as u64));
            bar.set_style(
                ProgressStyle::with_template("  batch [{bar:30}] step {pos}/{len} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            let start = Instant::now();
            let results = engine.run(&texts, run[0], |r| {
                bar.set_position(r.step as u64);
                bar.set_message(format!(
                    "live {}/{} loss {:.4} acc {:.4}",
                    r.live, r.total, r.mean_loss, r.mean_accuracy
                ));
            })?;
            let batch_seconds = start.elapsed().as_secs_f64();
            bar.finish_and_clear();
            mp.remove(&bar);
            let finished_at = unix_now();
            let rows: Vec<(CellRecord, Vec<f32>)> = run
                .iter()
                .zip(results)
                .map(|(&s, r)| {
                    let k = p.grid.key(c, s);
                    let tokens = &ids[s];
                    let rec = CellRecord {
                        cell: Cell::from_result(
                            &k.model,
                            &k.dataset,
                            &k.sample_id,
                            info.input_size,
                            info.vocab_size,
                            &r,
                        ),
                        grid_length: c.length,
                        sample_index: s,
                        text_hash: tokens_sha256(tokens),
                        token_ids: tokens.clone(),
                        steps: r.steps,
                        best_step: r.best_step,
                        stop_reason: r.stop_reason,
                        exact: r.exact,
                        first_mismatch: r.first_mismatch,
                        decoded_ids: r.decoded_ids,
                        loss_curve: r.loss_curve,
                        accuracy_curve: r.accuracy_curve,
                        seconds: r.wall_time_s,
                        batch_seconds,
                        finished_at,
                        model_sha256: prep.identity.weights_sha256.clone(),
                        config_hash: config_hash.clone(),
                        cram_version: env!("CARGO_PKG_VERSION").to_string(),
                        shard: shard_str.clone(),
                    };
                    (rec, r.vectors)
                })
                .collect();
            store.insert_batch(&rows)?;
            new_cells += rows.len();
            overall.inc(rows.len() as u64);
        }
    }
    overall.finish_and_clear();
    if !quiet {
        let skipped = p.grid.skipped.len();
        println!(
            "{}: {} cells ({} new, {} already there){}{}",
            db.display(),
            total,
            new_cells,
            already,
            shard
                .filter(|s| s.count > 1)
                .map(|s| format!(
                    ", shard {s} of a grid of {} cells",
                    p.grid.keys(&p.grid.chunks).len()
                ))
                .unwrap_or_default(),
            if skipped > 0 {
                format!("; skipped (length, n_mem) pairs with more vectors than tokens: {skipped}")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// Runs `cram export`.
pub fn export(args: &ExportArgs, quiet: bool) -> anyhow::Result<()> {
    let run = store::load_run(&args.run_dir)?;
    cram::export::export(&run.cells, args.format, &args.output)?;
    if !quiet {
        println!("{}: {} cells", args.output.display(), run.cells.len());
    }
    Ok(())
}

/// The result databases an input of `cram merge` names: a database file,
/// or every one in a run folder.
fn input_databases(p: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if p.is_file() {
        return Ok(vec![p.to_path_buf()]);
    }
    let dbs = store::run_databases(p)?;
    if dbs.is_empty() {
        bail!("{}: no result database in this folder", p.display());
    }
    Ok(dbs)
}

/// Runs `cram merge`.
pub fn merge(args: &MergeArgs, quiet: bool) -> anyhow::Result<()> {
    let mut dbs = Vec::new();
    for p in &args.inputs {
        dbs.extend(input_databases(p)?);
    }
    // Check every configuration before writing anything.
    let mut metas: Vec<(PathBuf, RunMeta)> = Vec::new();
    let mut started = Vec::new();
    for db in &dbs {
        let st = Store::open_existing(db)?;
        let Some(m) = st.meta()? else {
            // Created by a run killed before it recorded its configuration.
            if st.count()? > 0 {
                bail!("{}: holds cells but no configuration", db.display());
            }
            continue;
        };
        started.push(db.clone());
        if let Some((first, m0)) = metas.first() {
            if m0.config_hash != m.config_hash {
                bail!(
                    "{} and {} were made with different configurations (differing keys: {})",
                    first.display(),
                    db.display(),
                    sweep::differing_keys(&m0.config_json, &m.config_json).join(", ")
                );
            }
        }
        metas.push((db.clone(), m));
    }
    let (_, meta) = metas.first().context("nothing to merge")?.clone();
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("{}: cannot create folder", args.output.display()))?;
    let out = args.output.join(store::DB_NAME);
    if out.exists() {
        if let Some(m) = Store::open_existing(&out)?.meta()? {
            if m.config_hash != meta.config_hash {
                bail!(
                    "{}: made with another configuration (differing keys: {})",
                    out.display(),
                    sweep::differing_keys(&m.config_json, &meta.config_json).join(", ")
                );
            }
        }
    }
    let mut st = Store::open(&out)?;
    if st.meta()?.is_none() {
        st.init_meta(&meta)?;
    }
    let out_canon = std::fs::canonicalize(&out).ok();
    let mut added = 0;
    for db in &started {
        if std::fs::canonicalize(db).ok() == out_canon {
            continue;
        }
        added += st.merge_from(db)?;
    }
    if !quiet {
        println!(
            "{}: {} cells ({added} added from {} database(s))",
            out.display(),
            st.count()?,
            dbs.len()
        );
    }
    Ok(())
}

/// Runs `cram check`: SQLite's integrity check on every database of the
/// run, no duplicate cells, and with `--config` the grid is complete.
pub fn check(args: &CheckArgs, quiet: bool) -> anyhow::Result<()> {
    let dbs = store::run_databases(&args.run_dir)?;
    if dbs.is_empty() {
        bail!(
            "{}: no result database in this folder",
            args.run_dir.display()
        );
    }
    let mut started = false;
    for db in &dbs {
        let st = Store::open_existing(db)?;
        let ic = st.integrity_check()?;
        if ic != "ok" {
            bail!("{}: integrity check failed: {ic}", db.display());
        }
        let recs = st.records()?;
        let keys: HashSet<_> = recs.iter().map(|r| r.key()).collect();
        if keys.len() != recs.len() {
            bail!(
                "{}: {} rows but {} distinct cells",
                db.display(),
                recs.len(),
                keys.len()
            );
        }
        started |= st.meta()?.is_some();
    }
    let (cells, config_hash) = if started {
        let run = store::load_run(&args.run_dir)?;
        (run.cells, Some(run.config_hash))
    } else {
        (Vec::new(), None)
    };
    let mut msg = format!(
        "{}: integrity ok, {} database(s), {} cells",
        args.run_dir.display(),
        dbs.len(),
        cells.len()
    );
    if let Some(config) = &args.config {
        let p = plan(config)?;
        if config_hash.as_deref().is_some_and(|h| h != p.cfg.hash()) {
            bail!(
                "{}: the run was made with another configuration than {}",
                args.run_dir.display(),
                config.display()
            );
        }
        let want: HashSet<_> = p.grid.keys(&p.grid.chunks).into_iter().collect();
        let have: HashSet<_> = cells.iter().map(|c| c.key()).collect();
        let missing = want.difference(&have).count();
        let extra = have.difference(&want).count();
        if missing > 0 || extra > 0 {
            bail!(
                "{}: incomplete: {missing} of the grid's {} cells missing, {extra} cells not in the grid",
                args.run_dir.display(),
                want.len()
            );
        }
        msg += &format!(", the grid's {} cells complete", want.len());
    }
    if !quiet {
        println!("{msg}");
    }
    Ok(())
}
