//! `cram compress` and `cram decompress`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use cram::engine::{CramConfig, CramResult, Engine};
use cram::layout::Layout;
use cram::lowdim::{self, LowDimArgs};
use cram::memfile::{self, BasisRef, MemMeta, ModelIdentity};
use cram::model::LoadedModel;
use cram::protocol::CramArgs;

/// Options of `cram compress`.
#[derive(Args)]
pub struct CompressArgs {
    /// The text to compress.
    #[arg(long, conflicts_with = "input", required_unless_present = "input")]
    pub text: Option<String>,
    /// A text file (one text), or .jsonl / .csv with a `text` field (many texts).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Field (JSONL) or column (CSV) holding the text.
    #[arg(long, default_value = "text")]
    pub field: String,
    /// Compress only the first N texts of the input.
    #[arg(long, value_name = "N", requires = "input")]
    pub texts: Option<usize>,
    /// Truncate each text to its first L tokens (BOS included when the
    /// tokenizer adds it and the layout keeps it in the text).
    #[arg(long)]
    pub tokens: Option<usize>,
    /// Texts optimised together.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// The engine settings: a protocol and single overrides.
    #[command(flatten)]
    pub cram: CramArgs,
    /// Low-dimensional vectors.
    #[command(flatten)]
    pub low_dim: LowDimArgs,
    /// Output: a .safetensors file (one text) or a folder (many texts).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print one JSON object per text, nothing else.
    #[arg(long)]
    pub json: bool,
    /// Replace output files that hold something else. Without it, a text
    /// whose output file already holds its vectors (same text, settings and
    /// model) is skipped, so an interrupted run resumes, and any other
    /// existing output file is an error.
    #[arg(long)]
    pub overwrite: bool,
}

/// Runs `cram compress`.
pub fn compress(m: &LoadedModel, args: &CompressArgs, quiet: bool) -> anyhow::Result<()> {
    let mut texts = match (&args.text, &args.input) {
        (Some(t), _) => vec![t.clone()],
        (None, Some(p)) => cram::texts::read_texts(p, &args.field)?,
        (None, None) => anyhow::bail!("give --text or --input"),
    };
    if let Some(n) = args.texts {
        texts.truncate(n);
    }
    let many = args.input.as_ref().is_some_and(|p| {
        matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("jsonl" | "csv")
        )
    });
    if args.batch == 0 {
        anyhow::bail!("--batch must be at least 1");
    }
    let mut ecfg = args.cram.config();
    ecfg.low_dim = args
        .low_dim
        .setting(
            args.batch.min(texts.len()),
            &lowdim::LowDimDefaults::compress(),
        )
        .map_err(anyhow::Error::msg)?;
    let mut engine = Engine::new(m, ecfg)?;
    let layout = engine.layout().clone();
    if !quiet && !args.json {
        let c = engine.config();
        let o = &c.optimizer;
        eprintln!(
            "protocol {}: {} vector(s), sink {}, loss {}, init {}, lr {}{}, betas {}/{}, at most {} steps",
            c.protocol.map_or("none", |p| p.as_str()),
            c.n_mem,
            layout.describe(),
            c.loss,
            c.init,
            o.lr,
            o.min_lr
                .map_or(String::new(), |m| format!(" (warm-up {}, cosine to {m})", o.warmup_steps)),
            o.beta1,
            o.beta2,
            o.max_steps
        );
    }
    // Tokenise and check everything before any compute.
    let mut all_ids = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        if t.trim().is_empty() {
            anyhow::bail!("text {i}: empty text");
        }
        let mut ids = layout.text_ids(m.tokenizer.encode(t, true)?);
        if let Some(l) = args.tokens {
            ids.truncate(l);
        }
        engine
            .check_text(&ids)
            .with_context(|| format!("text {i}"))?;
        all_ids.push(ids);
    }
    if many {
        std::fs::create_dir_all(&args.output)
            .with_context(|| format!("{}: cannot create folder", args.output.display()))?;
    } else if let Some(dir) = args.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    }
    let identity = ModelIdentity::of(m)?;
    let mut basis_ref = None;
    if let Some(low) = engine
        .config()
        .low_dim
        .clone()
        .filter(|l| l.basis.is_shared())
    {
        let file = if many {
            args.output.join(lowdim::BASIS_FILE)
        } else {
            args.output.with_extension("basis.safetensors")
        };
        if args.overwrite && file.exists() {
            std::fs::remove_file(&file)
                .with_context(|| format!("{}: cannot remove", file.display()))?;
        }
        let fit: Vec<(usize, Vec<u32>)> = all_ids.iter().cloned().enumerate().collect();
        let (basis, r) =
            prepare_basis(&engine, &low, &identity, &fit, &file, !quiet && !args.json)?;
        basis_ref = Some(r);
        engine = engine.with_basis(basis)?;
    }
    let basis_sha = basis_ref.as_ref().map(|b| b.sha256.as_str());
    let cfg = engine.config().clone();
    let path_of = |i: usize| {
        if many {
            args.output.join(format!("{i:05}.safetensors"))
        } else {
            args.output.clone()
        }
    };
    // Texts whose file already holds their vectors are done; any other
    // existing file is refused before any compute (unless --overwrite).
    let mut pending = Vec::new();
    for (i, ids) in all_ids.iter().enumerate() {
        let path = path_of(i);
        let kept = if args.overwrite {
            None
        } else {
            memfile::existing(&path, &identity, &cfg, basis_sha, ids)?
        };
        match kept {
            Some(meta) => report_kept(i, &path, &meta, args.json, quiet),
            None => pending.push(i),
        }
    }
    // Runs of consecutive texts keep each text's seed stream (`seed + i`).
    let mut runs: Vec<Vec<usize>> = Vec::new();
    for &i in &pending {
        match runs.last_mut() {
            Some(r) if *r.last().expect("runs are non-empty") + 1 == i && r.len() < args.batch => {
                r.push(i)
            }
            _ => runs.push(vec![i]),
        }
    }
    for run in runs {
        let first = run[0];
        let chunk: Vec<Vec<u32>> = run.iter().map(|&i| all_ids[i].clone()).collect();
        let bar = if quiet || args.json {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::new(cfg.optimizer.max_steps as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] step {pos}/{len} {msg} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(format!("texts {}..{}", first, first + chunk.len()));
            bar
        };
        let results = engine.run(&chunk, first, |r| {
            bar.set_position(r.step as u64);
            bar.set_message(format!(
                "live {}/{} loss {:.4} acc {:.4}",
                r.live, r.total, r.mean_loss, r.mean_accuracy
            ));
        })?;
        bar.finish_and_clear();
        for (k, r) in results.iter().enumerate() {
            let i = first + k;
            let path = path_of(i);
            let mut meta = MemMeta::new(m, &identity, &cfg, &layout, &chunk[k], r);
            meta.basis = basis_ref.clone();
            memfile::write(&path, &r.vectors, &meta)?;
            report(i, &path, r, m, &cfg, &layout, args.json, quiet)?;
        }
    }
    Ok(())
}

/// The basis of low-dimensional settings `low` for `engine`, in `file`
/// (reused when it holds one of the same settings, made otherwise; see
/// [`lowdim::prepare`]), and the reference vector files record. `show`:
/// print the fitting's progress and the result on stderr.
pub(crate) fn prepare_basis(
    engine: &Engine<'_>,
    low: &lowdim::LowDim,
    identity: &ModelIdentity,
    fit: &[(usize, Vec<u32>)],
    file: &Path,
    show: bool,
) -> anyhow::Result<(lowdim::Basis, BasisRef)> {
    let basis = lowdim::prepare(
        engine,
        low,
        &identity.weights_sha256,
        fit,
        file,
        |step, acc| {
            if show && step % 50 == 0 {
                eprintln!("basis: step {step}, mean accuracy {acc:.4}");
            }
        },
    )?;
    if show {
        eprintln!(
            "basis {} ({}, k {}): {} fitting step(s)",
            file.display(),
            low.basis,
            low.k,
            basis.fit_steps
        );
    }
    let r = BasisRef {
        file: file
            .file_name()
            .expect("a basis file has a name")
            .to_string_lossy()
            .into_owned(),
        sha256: basis.sha256(),
    };
    Ok((basis, r))
}

/// Reports a text whose output file already held its vectors.
fn report_kept(i: usize, path: &Path, meta: &MemMeta, json: bool, quiet: bool) {
    if json {
        let mut v = serde_json::to_value(&meta.metrics).unwrap_or_default();
        v["index"] = i.into();
        v["file"] = path.display().to_string().into();
        v["n_tokens"] = meta.n_tokens.into();
        v["n_mem"] = meta.n_mem.into();
        v["kept"] = true.into();
        println!("{v}");
    } else if !quiet {
        println!(
            "text {i}: already crammed into {} (accuracy {:.4}, {} steps); kept",
            path.display(),
            meta.metrics.best_accuracy,
            meta.metrics.steps
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    i: usize,
    path: &Path,
    r: &CramResult,
    m: &LoadedModel,
    cfg: &CramConfig,
    layout: &Layout,
    json: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    if json {
        let mut v = serde_json::to_value(r)?;
        v["index"] = i.into();
        v["file"] = path.display().to_string().into();
        v["adds_bos"] = m.tokenizer.adds_bos().into();
        v["layout"] = serde_json::to_value(layout)?;
        v["config"] = serde_json::to_value(cfg)?;
        println!("{v}");
    } else if !quiet {
        println!(
            "text {i}: {} tokens, {} vector(s): accuracy {:.4} (without vectors {:.4}), loss {:.4} (without {:.4}), {} steps ({:?}), {:.1}s, decode {} -> {}",
            r.n_tokens,
            r.n_mem,
            r.best_accuracy,
            r.original_accuracy,
            r.best_loss,
            r.original_loss,
            r.steps,
            r.stop_reason,
            r.wall_time_s,
            if r.exact { "exact" } else { "differs" },
            path.display()
        );
    }
    Ok(())
}

/// Runs `cram decompress`: prints the decoded text (or JSON).
pub fn decompress(m: &LoadedModel, file: &Path, json: bool) -> anyhow::Result<()> {
    let d = memfile::decode(m, file)?;
    if d.non_finite > 0 {
        eprintln!(
            "warning: {}: {} vector component(s) are NaN or infinite (the optimisation diverged); the decoding is meaningless",
            file.display(),
            d.non_finite
        );
    }
    let text = m.tokenizer.decode(&d.ids, true)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"token_ids": d.ids, "text": text, "matches_original": d.matches_original})
        );
    } else {
        println!("{text}");
        if !d.matches_original {
            eprintln!("warning: the decoded tokens differ from the original text's tokens");
        }
    }
    Ok(())
}
