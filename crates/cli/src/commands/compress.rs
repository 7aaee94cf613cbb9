//! `cram compress` and `cram decompress`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use cram::engine::{CramConfig, CramResult, Engine, LossConvention};
use cram::memfile::{self, MemMeta, ModelIdentity};
use cram::model::LoadedModel;

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
    /// Truncate each text to its first L tokens (BOS included when the tokenizer adds it).
    #[arg(long)]
    pub tokens: Option<usize>,
    /// Texts optimised together.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// The engine settings (vectors, loss, seed, optimiser).
    #[command(flatten)]
    pub cram: CramConfig,
    /// Output: a .safetensors file (one text) or a folder (many texts).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print one JSON object per text, nothing else.
    #[arg(long)]
    pub json: bool,
}

/// Runs `cram compress`.
pub fn compress(m: &LoadedModel, args: &CompressArgs, quiet: bool) -> anyhow::Result<()> {
    let texts = match (&args.text, &args.input) {
        (Some(t), _) => vec![t.clone()],
        (None, Some(p)) => cram::texts::read_texts(p, &args.field)?,
        (None, None) => anyhow::bail!("give --text or --input"),
    };
    let many = args.input.as_ref().is_some_and(|p| {
        matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("jsonl" | "csv")
        )
    });
    if args.batch == 0 {
        anyhow::bail!("--batch must be at least 1");
    }
    let engine = Engine::new(m.model.as_ref(), args.cram.clone())?;
    // Tokenise and check everything before any compute.
    let mut all_ids = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        if t.trim().is_empty() {
            anyhow::bail!("text {i}: empty text");
        }
        let mut ids = m.tokenizer.encode(t, true)?;
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
    let cfg = engine.config().clone();
    for (b, chunk) in all_ids.chunks(args.batch).enumerate() {
        let first = b * args.batch;
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
        let results = engine.run(chunk, first, |r| {
            bar.set_position(r.step as u64);
            bar.set_message(format!(
                "live {}/{} loss {:.4} acc {:.4}",
                r.live, r.total, r.mean_loss, r.mean_accuracy
            ));
        })?;
        bar.finish_and_clear();
        for (k, r) in results.iter().enumerate() {
            let i = first + k;
            let path = if many {
                args.output.join(format!("{i:05}.safetensors"))
            } else {
                args.output.clone()
            };
            let meta = MemMeta::new(m, &identity, &cfg, &chunk[k], r);
            memfile::write(&path, &r.vectors, &meta)?;
            report(i, &path, r, m, args.json, quiet)?;
        }
    }
    Ok(())
}

fn report(
    i: usize,
    path: &Path,
    r: &CramResult,
    m: &LoadedModel,
    json: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    if json {
        let mut v = serde_json::to_value(r)?;
        v["index"] = i.into();
        v["file"] = path.display().to_string().into();
        v["adds_bos"] = m.tokenizer.adds_bos().into();
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
    let (vectors, meta) = memfile::read(file)?;
    let identity = ModelIdentity::of(m)?;
    if !identity.same_model(&meta.model) {
        anyhow::bail!(
            "{}: made with model `{}` (weights sha256 {}, tokenizer sha256 {}), but --model `{}` has weights sha256 {} and tokenizer sha256 {}",
            file.display(),
            meta.model.name,
            meta.model.weights_sha256,
            meta.model.tokenizer_sha256,
            identity.name,
            identity.weights_sha256,
            identity.tokenizer_sha256
        );
    }
    let count = meta.loss.n_predicted(meta.n_tokens);
    let mut ids = cram::engine::decode_vectors(
        m.model.as_ref(),
        &vectors,
        meta.n_mem,
        meta.loss,
        meta.first_token,
        count,
    )?;
    if meta.loss == LossConvention::Paper {
        if let Some(f) = meta.first_token {
            ids.insert(0, f);
        }
    }
    let matches = memfile::tokens_sha256(&ids) == meta.tokens_sha256;
    let text = m.tokenizer.decode(&ids, true)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"token_ids": ids, "text": text, "matches_original": matches})
        );
    } else {
        println!("{text}");
        if !matches {
            eprintln!("warning: the decoded tokens differ from the original text's tokens");
        }
    }
    Ok(())
}
