//! The sweep runner: resume, the configuration check, model preparation,
//! batching of a model's pending cells and the records committed to the
//! results store. `cram sweep` is a thin wrapper that parses flags, draws
//! progress bars and prints the summary.

use std::collections::HashMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::engine::{Engine, StepReport};
use crate::error::{CramError, Result};
use crate::layout::Layout;
use crate::memfile::{tokens_sha256, ModelIdentity};
use crate::metrics::Cell;
use crate::model::LoadedModel;
use crate::store::{self, CellRecord, RunMeta, Store};

use super::{Chunk, Dataset, Grid, Shard, SweepConfig};

/// `err` with `context` in front, as one line (`context: err`).
fn context<T>(r: Result<T>, context: impl Display) -> Result<T> {
    r.map_err(|e| CramError::Input(format!("{context}: {e}")))
}

/// A configuration, its text, the loaded data sets and the grid.
pub struct Plan {
    /// The configuration file.
    pub path: PathBuf,
    /// The parsed configuration.
    pub cfg: SweepConfig,
    /// The file as written.
    pub toml: String,
    /// The data sets, loaded.
    pub datasets: Vec<Dataset>,
    /// Every cell.
    pub grid: Grid,
}

impl Plan {
    /// Reads and checks a configuration and loads its data sets (relative
    /// paths are relative to the configuration file).
    pub fn load(config: &Path) -> Result<Self> {
        let (cfg, toml) = SweepConfig::from_file(config)?;
        let base = config
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let datasets = context(cfg.load_datasets(base), config.display())?;
        let grid = Grid::new(&cfg, &datasets);
        Ok(Self {
            path: config.to_path_buf(),
            cfg,
            toml,
            datasets,
            grid,
        })
    }
}

/// Loads the model a configuration names (`spec`) in the configuration's
/// compute dtype (`dtype`); the caller chooses device and kernels.
pub type ModelLoader<'a> = dyn FnMut(&str, &str) -> Result<LoadedModel> + 'a;

/// Where a sweep goes and how it starts.
pub struct RunOptions {
    /// The run folder.
    pub out: PathBuf,
    /// The part of the grid to run (`None`: all of it).
    pub shard: Option<Shard>,
    /// Move an existing database of this folder (and shard) aside first.
    pub new: bool,
    /// When another process is writing the same database, wait for it
    /// instead of failing at once.
    pub wait: bool,
}

/// What a running sweep reports; every method has an empty default.
pub trait Progress {
    /// The previous database was moved to `to` (`--new`).
    fn moved_aside(&mut self, _to: &Path) {}
    /// The run starts: `total` cells in this shard, `already` of them done.
    fn start(&mut self, _total: usize, _already: usize) {}
    /// A (model, dataset, length, vectors) group starts.
    fn group(&mut self, _description: &str) {}
    /// A batch of texts starts, for at most `max_steps` steps.
    fn batch_start(&mut self, _max_steps: usize) {}
    /// One optimisation step of the batch.
    fn step(&mut self, _report: &StepReport) {}
    /// The batch's `cells` are committed.
    fn batch_done(&mut self, _cells: usize) {}
    /// Something the user should know that does not stop the run.
    fn warning(&mut self, _message: &str) {}
}

/// Reports nothing.
pub struct Quiet;

impl Progress for Quiet {}

/// What a sweep did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// The database written.
    pub db: PathBuf,
    /// Cells of this shard.
    pub total: usize,
    /// Cells computed by this run.
    pub new_cells: usize,
    /// Cells found done.
    pub already: usize,
    /// Cells of the whole grid.
    pub grid_cells: usize,
    /// (length, `n_mem`) pairs skipped for having more vectors than tokens.
    pub skipped: usize,
    /// Rows of the paper's other experiments ([`crate::ablations`]) this
    /// run added.
    pub ablation_rows: usize,
}

/// The token ids of every text, keyed by (dataset, length).
type Tokens = HashMap<(usize, usize), Vec<Vec<u32>>>;

/// Checks a loaded model against its cells (context length, text tokens,
/// and that finished cells were made from the same tokens) and tokenises
/// the texts, keyed by (dataset, length); also returns the layout, the
/// configuration's sink resolved for the model's tokenizer.
fn prepare(
    p: &Plan,
    lm: &LoadedModel,
    chunks: &[&Chunk],
    done: &HashMap<super::CellKey, String>,
) -> Result<(Tokens, Layout)> {
    let spec = &lm.spec;
    let ctx = lm.model.info().context_length;
    let layout = p.cfg.sink.resolve(&lm.tokenizer)?;
    for c in chunks {
        if layout.prefix_len() + c.n_mem + c.length > ctx {
            return Err(CramError::Input(format!(
                "{}: lengths: length {} with {} vector(s){} exceeds the context length {ctx} of model `{spec}`",
                p.path.display(),
                c.length,
                c.n_mem,
                if layout.prefix_len() > 0 { " and the sink token" } else { "" }
            )));
        }
    }
    let mut tokens = HashMap::new();
    for c in chunks {
        let key = (c.dataset, c.length);
        if let std::collections::hash_map::Entry::Vacant(e) = tokens.entry(key) {
            e.insert(p.datasets[c.dataset].tokens(&lm.tokenizer, &layout, c.length)?);
        }
        let ids = &tokens[&key];
        let engine = Engine::with_layout(
            lm.model.as_ref(),
            p.cfg.cram_config(c.n_mem),
            layout.clone(),
        )?;
        for s in c.samples.clone() {
            let k = p.grid.key(c, s);
            let what = format!(
                "model `{spec}`, data set `{}`, text `{}`, length {}",
                k.dataset, k.sample_id, k.length
            );
            context(engine.check_text(&ids[s]), &what)?;
            if done.get(&k).is_some_and(|h| *h != tokens_sha256(&ids[s])) {
                return Err(CramError::Input(format!(
                    "{what}: the run holds this cell made from other tokens (the data or the tokenizer changed); start a new run with --new or another --out"
                )));
            }
        }
    }
    Ok((tokens, layout))
}

/// Runs the cells of `opts.shard` of `p` that the run folder does not hold
/// yet, into its results store, one committed transaction per batch.
///
/// Each model is loaded once (by `load`), checked against every one of its
/// cells and tokenised before its first optimisation step; models run in
/// the configuration's order. A configuration other than the one the run
/// was started with is refused, naming the keys that differ.
pub fn run(
    p: &Plan,
    opts: &RunOptions,
    load: &mut ModelLoader<'_>,
    progress: &mut dyn Progress,
) -> Result<RunSummary> {
    let shard = opts.shard;
    let mine = p.grid.shard(shard);
    let config_json = p.cfg.canonical_json();
    let config_hash = p.cfg.hash();
    let db = store::db_path(&opts.out, shard);
    let create_out = || {
        std::fs::create_dir_all(&opts.out)
            .map_err(|e| CramError::bad_file(&opts.out, format!("cannot create folder: {e}")))
    };
    // One writer per database: taken before anything is read or moved.
    let _lock = if opts.out.is_dir() || opts.new {
        create_out()?;
        Some(store::RunLock::acquire(&db, opts.wait)?)
    } else {
        None
    };
    if opts.new {
        if let Some(to) = store::move_aside(&db, &opts.out)? {
            progress.moved_aside(&to);
        }
    } else if db.exists() {
        let st = Store::open_read(&db)?;
        if let Some(m) = st.meta()? {
            if m.config_hash != config_hash {
                return Err(CramError::Input(format!(
                    "{}: the run was started with another configuration (differing keys: {}); use --new to start afresh (the old database moves to {}/old/) or another --out",
                    db.display(),
                    super::differing_keys(&m.config_json, &config_json).join(", "),
                    opts.out.display()
                )));
            }
        }
    }
    let done = if db.exists() {
        Store::open_read(&db)?.done()?
    } else {
        HashMap::new()
    };
    let pending = |c: &Chunk| -> Vec<usize> {
        c.samples
            .clone()
            .filter(|&s| !done.contains_key(&p.grid.key(c, s)))
            .collect()
    };
    let total = Grid::count(&mine);
    let already = p
        .grid
        .keys(&mine)
        .iter()
        .filter(|k| done.contains_key(k))
        .count();
    let mut by_model: Vec<Vec<&Chunk>> = vec![Vec::new(); p.cfg.models.len()];
    for c in &mine {
        by_model[c.model].push(c);
    }
    // The store is created once the first model passed its checks.
    let mut late_lock = None;
    let mut open_store = || -> Result<Store> {
        create_out()?;
        if _lock.is_none() && late_lock.is_none() {
            late_lock = Some(store::RunLock::acquire(&db, opts.wait)?);
        }
        let mut st = Store::open(&db)?;
        if st.meta()?.is_none() {
            st.init_meta(&RunMeta {
                config_toml: p.toml.clone(),
                config_json: config_json.clone(),
                config_hash: config_hash.clone(),
                cram_version: env!("CARGO_PKG_VERSION").to_string(),
            })?;
        }
        Ok(st)
    };
    let shard_str = shard.filter(|s| s.count > 1).map(|s| s.to_string());
    let mut store: Option<Store> = None;
    let mut new_cells = 0usize;
    let mut ablation_rows = 0usize;
    let mut started = false;
    for (m, chunks) in by_model.iter().enumerate() {
        if chunks.is_empty() {
            continue;
        }
        let spec = &p.cfg.models[m];
        let lm = context(
            load(spec, &p.cfg.dtype),
            format!("{}: model `{spec}`", p.path.display()),
        )?;
        let (tokens, layout) = prepare(p, &lm, chunks, &done)?;
        let mut short: std::collections::BTreeMap<(usize, usize), usize> = Default::default();
        for c in chunks.iter().filter(|c| !p.datasets[c.dataset].is_random()) {
            let ids = &tokens[&(c.dataset, c.length)];
            let n = c
                .samples
                .clone()
                .filter(|&s| ids[s].len() < c.length)
                .count();
            *short.entry((c.dataset, c.length)).or_default() += n;
        }
        for ((d, length), n) in short.into_iter().filter(|(_, n)| *n > 0) {
            progress.warning(&format!(
                "model `{spec}`, data set `{}`, length {length}: {n} cell(s) of texts with fewer tokens than the length; they hold the real token count (n_tokens)",
                p.datasets[d].name
            ));
        }
        let identity = ModelIdentity::of(&lm)?;
        let info = lm.model.info();
        let backend = serde_json::to_string(&info.backend()).expect("a backend serialises");
        let layout_json = serde_json::to_string(&layout).expect("a layout serialises");
        if store.is_none() {
            store = Some(open_store()?);
        }
        let st = store.as_mut().expect("the store is open");
        if !started {
            progress.start(total, already);
            started = true;
        }
        for c in chunks {
            let pending = pending(c);
            if pending.is_empty() {
                continue;
            }
            let engine = Engine::with_layout(
                lm.model.as_ref(),
                p.cfg.cram_config(c.n_mem),
                layout.clone(),
            )?;
            let ids = &tokens[&(c.dataset, c.length)];
            progress.group(&format!(
                "{} / {} / length {} / {} vector(s)",
                spec, p.datasets[c.dataset].name, c.length, c.n_mem
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
                progress.batch_start(p.cfg.optimizer.max_steps);
                let start = Instant::now();
                let results = engine.run(&texts, run[0], |r| progress.step(r))?;
                let batch_seconds = start.elapsed().as_secs_f64();
                let finished_at = store::unix_now();
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
                            model_sha256: identity.weights_sha256.clone(),
                            config_hash: config_hash.clone(),
                            cram_version: env!("CARGO_PKG_VERSION").to_string(),
                            shard: shard_str.clone(),
                            backend: Some(backend.clone()),
                            layout: Some(layout_json.clone()),
                        };
                        (rec, r.vectors)
                    })
                    .collect();
                st.insert_batch(&rows)?;
                new_cells += rows.len();
                progress.batch_done(rows.len());
            }
        }
        ablation_rows +=
            crate::ablations::run_model(p, &lm, chunks, &tokens, &layout, shard, st, progress)?;
    }
    if store.is_none() {
        // Nothing of this shard needed a model: still a valid, empty run.
        open_store()?;
    }
    Ok(RunSummary {
        db,
        total,
        new_cells,
        already,
        grid_cells: p.grid.keys(&p.grid.chunks).len(),
        skipped: p.grid.skipped.len(),
        ablation_rows,
    })
}
