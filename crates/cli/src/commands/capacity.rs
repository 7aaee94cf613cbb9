//! `cram capacity`: per text, the horizon found by a stage search.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use cram::capacity::{
    self, CapacityConfig, CapacityStore, CapacityText, Event, PatienceFrom, Schedule, Search,
    TextProgress,
};
use cram::engine::{CramResult, Engine, StopReason};
use cram::lowdim::{self, LowDim, LowDimArgs};
use cram::memfile::{self, BasisRef, MemMeta, ModelIdentity};
use cram::model::LoadedModel;
use cram::protocol::CramArgs;
use cram::store::RunLock;

/// Options of `cram capacity`.
#[derive(Args)]
pub struct CapacityArgs {
    /// The texts: a text file (one text), or .jsonl / .csv with a `text`
    /// field.
    #[arg(long)]
    pub input: PathBuf,
    /// Field (JSONL) or column (CSV) holding the text.
    #[arg(long, default_value = "text")]
    pub field: String,
    /// Search only the first N texts of the input.
    #[arg(long, value_name = "N")]
    pub texts: Option<usize>,
    /// Truncate each text to its first L tokens: the horizon is at most L
    /// [default: as many as the model's context allows].
    #[arg(long, value_name = "L")]
    pub max_tokens: Option<usize>,
    /// gallop (double the target while stages succeed, then bisect), climb
    /// (double while stages succeed; after a failure, climb from the
    /// verified prefix by 1, 2, 4, ... tokens, back to 1 after each failure)
    /// or step:K (grow by K tokens per stage, stop at the first failure).
    #[arg(long, default_value = "gallop")]
    pub search: Search,
    /// The first stage's target in tokens [default: the fitting length
    /// under a learned basis with --z-start fitted; otherwise 8 for gallop
    /// and climb, K for step:K].
    #[arg(long, value_name = "TOKENS")]
    pub start: Option<usize>,
    /// Most optimisation steps of one stage.
    #[arg(long, default_value_t = CapacityConfig::new(Search::Gallop).stage_steps)]
    pub stage_steps: usize,
    /// A stage fails after this many steps in which neither its longest
    /// correct prefix nor its accuracy grew.
    #[arg(long, default_value_t = CapacityConfig::new(Search::Gallop).stage_patience)]
    pub stage_patience: usize,
    /// What the patience counts progress against: update (the stage's own
    /// updates; its start, a warm start's checkpoint, stays a candidate
    /// for the best vectors) or start (the start's evaluation too, as runs
    /// made before this option did: resume those with it).
    #[arg(long, value_name = "FROM", default_value_t = CapacityConfig::new(Search::Gallop).patience_from)]
    pub patience_from: PatienceFrom,
    /// gallop and climb stop once the shortest failed target is within PCT
    /// percent of the verified horizon; 0: bisect to the exact horizon.
    #[arg(long, value_name = "PCT", default_value_t = 0)]
    pub tolerance: usize,
    /// Most optimisation steps per text, all stages together.
    #[arg(long, default_value_t = CapacityConfig::new(Search::Gallop).budget)]
    pub budget: usize,
    /// Learning-rate schedule: text (the protocol's warm-up and cosine over
    /// the text's budget, restored with a checkpoint) or stage (the cosine
    /// restarted at every stage, over --stage-steps). Runs made before
    /// `stage` was the default resume with `--schedule text --stage-warmup 0`.
    #[arg(long, default_value_t = CapacityConfig::new(Search::Gallop).schedule)]
    pub schedule: Schedule,
    /// The learning rate ramps up over the first STEPS steps of every stage
    /// after a text's first (for a warm start, whose first updates can
    /// throw the vectors out of the shorter prefix's optimum); 0: no ramp.
    #[arg(long, value_name = "STEPS", default_value_t = CapacityConfig::new(Search::Gallop).stage_warmup)]
    pub stage_warmup: usize,
    /// Texts searched together.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// The engine settings (the protocol's max_steps and patience are
    /// replaced by the stage and text budgets).
    #[command(flatten)]
    pub cram: CramArgs,
    /// Low-dimensional vectors, by default every text its own basis with z
    /// of size 32 (`--low-dim 0`: full vectors; a shared basis is saved as
    /// RUN_DIR/basis.safetensors and beside the vector files).
    #[command(flatten)]
    pub low_dim: LowDimArgs,
    /// The run folder: RUN_DIR/capacity.sqlite holds every finished stage;
    /// running again resumes it.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write each text's horizon vectors to VEC_DIR/NNNNN.safetensors
    /// (the `compress` format; `cram decompress` regenerates the prefix).
    #[arg(short = 'o', long = "vectors", value_name = "VEC_DIR")]
    pub vectors: Option<PathBuf>,
    /// Append every step of every text (text, stage, step, target, loss,
    /// accuracy, correct prefix, steps without progress, learning rate) to
    /// FILE as JSON lines; a resumed run appends after the lines already
    /// there (steps of stages in flight at a kill appear again).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// When another cram process is writing this run folder, wait for it.
    #[arg(long)]
    pub wait: bool,
    /// Print one JSON object per text, nothing else.
    #[arg(long)]
    pub json: bool,
}

/// Runs `cram capacity`.
pub fn capacity(m: &LoadedModel, args: &CapacityArgs, quiet: bool) -> anyhow::Result<()> {
    if args.batch == 0 {
        anyhow::bail!("--batch must be at least 1");
    }
    if args.texts == Some(0) {
        anyhow::bail!("--texts must be at least 1");
    }
    // Tokenise and check everything before any compute.
    let mut samples =
        cram::datasets::load_texts(&cram::texts::source_of(&args.input, &args.field))?;
    if let Some(n) = args.texts {
        samples.truncate(n);
    }
    let mut ecfg = args.cram.config();
    ecfg.low_dim = args
        .low_dim
        .setting(
            args.batch.min(samples.len()),
            &lowdim::LowDimDefaults::capacity(),
        )
        .map_err(anyhow::Error::msg)?;
    let cfg = CapacityConfig {
        search: args.search,
        start: args
            .start
            .or(ecfg.low_dim.as_ref().and_then(LowDim::default_start))
            .unwrap_or(args.search.default_start()),
        max_tokens: args.max_tokens,
        stage_steps: args.stage_steps,
        stage_patience: args.stage_patience,
        patience_from: args.patience_from,
        tolerance: args.tolerance,
        budget: args.budget,
        schedule: args.schedule,
        stage_warmup: args.stage_warmup,
    };
    if let Some((field, msg)) = cfg.invalid() {
        anyhow::bail!("--{}: {msg}", field.replace('_', "-"));
    }
    let mut engine = Engine::new(m, ecfg)?;
    let layout = engine.layout().clone();
    let ecfg = engine.config().clone();
    let room = m
        .model
        .info()
        .context_length
        .saturating_sub(ecfg.n_mem + layout.prefix_len());
    let limit = args.max_tokens.map_or(room, |l| l.min(room));
    let mut texts = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        let mut ids = layout.text_ids(m.tokenizer.encode(&s.text, true)?);
        ids.truncate(limit);
        texts.push(CapacityText {
            index: i,
            id: s.id.clone(),
            ids,
        });
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create folder", args.out.display()))?;
    if let Some(dir) = &args.vectors {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    }
    let db = args.out.join(capacity::store::CAPACITY_DB);
    let _lock = RunLock::acquire(&db, args.wait)?;
    let mut store = CapacityStore::open(&db)?;
    let identity = ModelIdentity::of(m)?;
    let mut basis_ref = None;
    if let Some(low) = ecfg.low_dim.clone().filter(|l| l.basis.is_shared()) {
        for t in &texts {
            engine.check_text(&t.ids)?;
        }
        // A run folder of other settings is refused before a basis is
        // made (or fitted) for it.
        let before = capacity::run_settings(&identity, &m.model.info().backend(), &engine, &cfg);
        if let Some(mut old) = store.settings()? {
            if let Some(o) = old.as_object_mut() {
                o.remove("basis_sha256");
            }
            if old != before {
                store.adopt_settings(&before)?;
            }
        }
        let file = lowdim::basis_file(&db);
        let fit: Vec<(usize, Vec<u32>)> = texts.iter().map(|t| (t.index, t.ids.clone())).collect();
        let (basis, r) = super::compress::prepare_basis(
            &engine,
            &low,
            &identity,
            &fit,
            &file,
            !quiet && !args.json,
        )?;
        if let Some(dir) = &args.vectors {
            let copy = dir.join(lowdim::BASIS_FILE);
            let same = copy.exists()
                && lowdim::Basis::read(&copy).is_ok_and(|(b, _, _)| b.sha256() == basis.sha256());
            if !same {
                if copy.exists() {
                    anyhow::bail!(
                        "{}: holds another basis; use another --vectors folder or remove it",
                        copy.display()
                    );
                }
                std::fs::copy(&file, &copy)
                    .with_context(|| format!("{}: cannot write", copy.display()))?;
            }
        }
        basis_ref = Some(r);
        engine = engine.with_basis(basis)?;
    }
    store.adopt_settings(&capacity::run_settings(
        &identity,
        &m.model.info().backend(),
        &engine,
        &cfg,
    ))?;
    store.set_meta("model_name", &m.spec)?;
    let show = !quiet && !args.json;
    if show {
        eprintln!(
            "capacity: {} text(s) of at most {limit} tokens, search {}, start {}, stages of at most {} steps (patience {} from the {}), tolerance {}%, {} steps per text, schedule {:?} (stage warm-up {}); protocol {}, {} vector(s), sink {}, lr {}",
            texts.len(),
            cfg.search,
            cfg.start,
            cfg.stage_steps,
            cfg.stage_patience,
            cfg.patience_from,
            cfg.tolerance,
            cfg.budget,
            cfg.schedule,
            cfg.stage_warmup,
            ecfg.protocol.map_or("none", |p| p.as_str()),
            ecfg.n_mem,
            layout.describe(),
            ecfg.optimizer.lr
        );
    }
    let bar = if show {
        let bar = ProgressBar::new(texts.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("texts {pos}/{len} [{bar:30}] {msg} {elapsed}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut trace = match &args.trace {
        Some(path) => Some((
            path,
            std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open the trace file {}", path.display()))?,
            ),
        )),
        None => None,
    };
    let results = capacity::search(&engine, &cfg, &texts, args.batch, &mut store, |e| {
        match e {
            Event::Trace(steps) => {
                if let Some((path, w)) = trace.as_mut() {
                    write_trace(w, steps)
                        .map_err(|e| cram::CramError::bad_file(path.as_path(), e))?;
                }
            }
            Event::Step {
                live,
                done,
                accuracy,
            } => {
                bar.set_position(done as u64);
                bar.set_message(format!("live {live}, stage accuracy {accuracy:.3}"));
            }
            Event::Stage(s) => {
                bar.set_message(format!(
                    "text {}: stage {} target {} -> {} ({} steps), horizon {}",
                    s.index,
                    s.stage,
                    s.target,
                    if s.exact {
                        "exact".to_string()
                    } else {
                        format!("{} right", s.prefix)
                    },
                    s.steps,
                    s.lo
                ));
            }
            Event::Text(p) => {
                let file = match &args.vectors {
                    Some(dir) => write_vectors(
                        m,
                        &identity,
                        &engine,
                        basis_ref.as_ref(),
                        dir,
                        p,
                        &texts[p.index].ids,
                    )?,
                    None => None,
                };
                bar.suspend(|| report_text(p, file.as_deref(), args.json, quiet));
            }
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    if show {
        let h: Vec<usize> = results.iter().map(TextProgress::horizon).collect();
        let steps: usize = results.iter().map(|p| p.steps).sum();
        let mut sorted = h.clone();
        sorted.sort_unstable();
        println!(
            "{} text(s): mean horizon {:.1} tokens, median {}, {steps} steps in total",
            h.len(),
            h.iter().sum::<usize>() as f64 / h.len().max(1) as f64,
            sorted.get(sorted.len() / 2).copied().unwrap_or(0)
        );
    }
    Ok(())
}

/// Appends one JSON line per text of a batch step, flushed, so that a
/// killed run leaves whole lines.
fn write_trace(w: &mut impl Write, steps: &[capacity::StepTrace]) -> std::io::Result<()> {
    for t in steps {
        serde_json::to_writer(&mut *w, t)?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

/// Writes the horizon's vectors of a finished text in the `compress`
/// format (nothing for a horizon that predicts no token).
fn write_vectors(
    m: &LoadedModel,
    identity: &ModelIdentity,
    engine: &Engine<'_>,
    basis: Option<&BasisRef>,
    dir: &Path,
    p: &TextProgress,
    ids: &[u32],
) -> cram::Result<Option<PathBuf>> {
    let cfg = engine.config();
    let h = p.horizon();
    let Some(r) = p.result.as_ref().filter(|r| r.loss.is_some()) else {
        return Ok(None);
    };
    let prefix = &ids[..h];
    let skip = usize::from(cfg.loss == cram::engine::LossConvention::Paper);
    let result = CramResult {
        n_tokens: h,
        n_mem: cfg.n_mem,
        n_predicted: cfg.loss.n_predicted(h),
        original_loss: r.original_loss,
        original_accuracy: r.original_accuracy,
        original_n_predicted: h.saturating_sub(1),
        best_loss: r.loss.unwrap_or(f64::NAN),
        best_accuracy: r.accuracy.unwrap_or(0.0),
        steps: p.steps,
        best_step: p.steps,
        stop_reason: StopReason::Converged,
        wall_time_s: p.seconds,
        loss_curve: Vec::new(),
        accuracy_curve: Vec::new(),
        vectors: Vec::new(),
        decoded_ids: prefix[skip..].to_vec(),
        exact: true,
        first_mismatch: None,
    };
    let mut meta = MemMeta::new(m, identity, cfg, engine.layout(), prefix, &result);
    meta.basis = basis.cloned();
    let path = dir.join(format!("{:05}.safetensors", p.index));
    memfile::write(
        &path,
        &engine.params()?.file_numbers(&p.checkpoint.params),
        &meta,
    )?;
    Ok(Some(path))
}

/// Prints a finished text (JSON or one line).
fn report_text(p: &TextProgress, file: Option<&Path>, json: bool, quiet: bool) {
    if json {
        let r = p.result.as_ref();
        let v = serde_json::json!({
            "id": p.id,
            "index": p.index,
            "horizon": p.horizon(),
            "n_tokens": p.n_tokens,
            "saturated": p.saturated(),
            "steps": p.steps,
            "seconds": p.seconds,
            "stages": p.stages,
            "loss": r.and_then(|r| r.loss),
            "accuracy": r.and_then(|r| r.accuracy),
            "original_loss": r.map(|r| r.original_loss),
            "text_loss": r.map(|r| r.text_loss),
            "file": file.map(|f| f.display().to_string()),
        });
        println!("{v}");
    } else if !quiet {
        println!(
            "text {} ({}): horizon {} of {} tokens{}, {} stages, {} steps, {:.1}s{}",
            p.index,
            p.id,
            p.horizon(),
            p.n_tokens,
            if p.saturated() {
                " (the whole text)"
            } else {
                ""
            },
            p.stages,
            p.steps,
            p.seconds,
            file.map_or(String::new(), |f| format!(" -> {}", f.display()))
        );
    }
}
