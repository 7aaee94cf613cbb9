//! Real results for `cram report`: crams the first texts of a file at
//! several lengths and numbers of vectors and writes a run folder
//! (`cells.jsonl`, one `cram_report::ReportCell` per line, and
//! `config.toml`) that `cram report` reads.
//!
//! ```sh
//! cargo run --release --example report_data -- --model tests/fixtures/llama_gqa_tied \
//!     --texts data/modern_prose.csv --n-texts 3 --lengths 8,16,32,64 --mem 1,2 \
//!     --max-steps 300 --lr 0.1 --min-lr 0.01 -o runs/fixture
//! cargo run --release -- report runs/fixture -o report
//! ```
//!
//! Until the sweep runner and its results store exist, this is the way to
//! get a report of real cramming runs.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use serde::Serialize;

use cram::engine::{CramConfig, Engine, LossConvention, OptimizerConfig};
use cram::metrics::Cell;
use cram::model::{load, LoadOptions};
use cram_report::{write_jsonl, ReportCell, CELLS_FILE, CONFIG_FILE};

#[derive(Parser, Serialize)]
struct Args {
    /// Model (anything `--model` takes).
    #[arg(long)]
    model: String,
    /// Texts: .jsonl / .csv with a `text` field.
    #[arg(long)]
    texts: PathBuf,
    /// Dataset name in the report (default: the texts file's stem).
    #[arg(long)]
    dataset: Option<String>,
    /// Model name in the report (default: the model's file or folder name).
    #[arg(long)]
    name: Option<String>,
    /// Use the first N texts.
    #[arg(long, default_value_t = 3)]
    n_texts: usize,
    /// Text lengths in tokens, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    lengths: Vec<usize>,
    /// Numbers of vectors, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    mem: Vec<usize>,
    /// Loss convention.
    #[arg(long, default_value = "full")]
    #[serde(serialize_with = "convention")]
    loss: LossConvention,
    /// Most optimisation steps.
    #[arg(long, default_value_t = 300)]
    max_steps: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// Cosine decay to this learning rate at --max-steps.
    #[arg(long)]
    min_lr: Option<f64>,
    /// Seed of the initial vectors.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output run folder.
    #[arg(short, long)]
    #[serde(skip)]
    output: PathBuf,
}

fn convention<S: serde::Serializer>(l: &LossConvention, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(l.as_str())
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let m = load(&a.model, &LoadOptions::default())?;
    let info = m.model.info().clone();
    let texts = cram::texts::read_texts(&a.texts, "text")?;
    let texts = &texts[..a.n_texts.min(texts.len())];
    let stem = |p: &std::path::Path| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string())
    };
    let model_name = a
        .name
        .clone()
        .unwrap_or_else(|| stem(std::path::Path::new(&a.model)));
    let dataset = a.dataset.clone().unwrap_or_else(|| stem(&a.texts));
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| m.tokenizer.encode(t, true))
        .collect::<Result<_, _>>()?;

    let mut cells = Vec::new();
    let t0 = std::time::Instant::now();
    for &n_mem in &a.mem {
        let cfg = CramConfig {
            n_mem,
            loss: a.loss,
            seed: a.seed,
            optimizer: OptimizerConfig {
                lr: a.lr,
                min_lr: a.min_lr,
                max_steps: a.max_steps,
                ..OptimizerConfig::default()
            },
            ..CramConfig::default()
        };
        let engine = Engine::new(&m, cfg)?;
        for &len in &a.lengths {
            // Texts shorter than `len` are left out at that length.
            let (which, batch): (Vec<usize>, Vec<Vec<u32>>) = ids
                .iter()
                .enumerate()
                .filter(|(_, v)| v.len() >= len)
                .map(|(i, v)| (i, v[..len].to_vec()))
                .unzip();
            if batch.is_empty() {
                continue;
            }
            let results = engine
                .run(&batch, 0, |_| {})
                .with_context(|| format!("{n_mem} vectors, {len} tokens"))?;
            for (i, r) in which.iter().zip(&results) {
                eprintln!(
                    "{n_mem} vec, {len} tokens, text {i}: accuracy {:.3} (without {:.3}), {} steps, {:.0}s",
                    r.best_accuracy,
                    r.original_accuracy,
                    r.steps,
                    t0.elapsed().as_secs_f64()
                );
                cells.push(ReportCell {
                    cell: Cell::from_result(
                        &model_name,
                        &dataset,
                        &i.to_string(),
                        info.input_size,
                        info.vocab_size,
                        r,
                    ),
                    loss_curve: r.loss_curve.clone(),
                    accuracy_curve: r.accuracy_curve.clone(),
                    n_tokens: None,
                });
            }
        }
    }
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("{}: cannot create folder", a.output.display()))?;
    write_jsonl(&a.output.join(CELLS_FILE), &cells)?;
    let config = toml::to_string(&a)?;
    std::fs::write(a.output.join(CONFIG_FILE), config)?;
    eprintln!(
        "{} cells -> {}",
        cells.len(),
        a.output.join(CELLS_FILE).display()
    );
    Ok(())
}
