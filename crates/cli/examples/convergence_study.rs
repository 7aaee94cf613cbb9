//! The convergence study that chooses cram's default protocol
//! (`docs/convergence.md`).
//!
//! For each model, length and variant, it crams the same texts (one engine
//! batch) and records per text whether greedy decoding from the layout's
//! fixed prefix and the vectors alone gives the text back exactly, and in how
//! many steps. A variant is a name and `cram compress` flags
//! (`name=--protocol paper --max-steps 500`); its settings are the protocol's
//! with those flags applied. Results go, one JSON line per text, to `--out`;
//! rows already there are kept, so an interrupted study resumes. `--table`
//! prints the Markdown tables of `docs/convergence.md` from such a file.
//!
//! ```sh
//! cargo run --example convergence_study -- --model smollm2-135m \
//!     --input ../shared/data/pg19_standin.csv --texts 8 --tokens 16,32 \
//!     --variant 'cram=' --variant 'paper=--protocol paper --max-steps 500' \
//!     --out docs/study/convergence.jsonl
//! cargo run --example convergence_study -- --table docs/study/convergence.jsonl
//! ```

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use cram::engine::Engine;
use cram::model::{load, LoadOptions};
use cram::protocol::CramArgs;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// Model (packaged name or path).
    #[arg(long)]
    model: Option<String>,
    /// CSV or JSONL texts; the study uses `--texts` of them, evenly spread.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Number of texts per cell.
    #[arg(long, default_value_t = 8)]
    texts: usize,
    /// Lengths in tokens (comma-separated).
    #[arg(long, value_delimiter = ',')]
    tokens: Vec<usize>,
    /// `NAME=FLAGS`: a variant of the settings (repeatable).
    #[arg(long)]
    variant: Vec<String>,
    /// JSON lines to append to.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the tables of a results file and exit.
    #[arg(long)]
    table: Option<PathBuf>,
}

/// A variant's flags, parsed as `cram compress` parses them.
#[derive(Parser)]
struct VariantFlags {
    #[command(flatten)]
    cram: CramArgs,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    cram::blas::restart_with_better_core(cram::kernels::Kernels::default().blas());
    if let Some(t) = &a.table {
        print!("{}", table(t)?);
        return Ok(());
    }
    let (model, input, out) = match (&a.model, &a.input, &a.out) {
        (Some(m), Some(i), Some(o)) => (m, i, o),
        _ => anyhow::bail!("give --model, --input and --out (or --table FILE)"),
    };
    let all = cram::texts::read_texts(input, "text")?;
    anyhow::ensure!(all.len() >= a.texts, "{}: too few texts", input.display());
    let picked: Vec<(usize, &String)> = (0..a.texts)
        .map(|k| k * all.len() / a.texts)
        .map(|i| (i, &all[i]))
        .collect();
    let done = done_rows(out)?;
    let m = load(model, &LoadOptions::default())?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .with_context(|| format!("{}: cannot open", out.display()))?;
    for v in &a.variant {
        let (name, flags) = v.split_once('=').context("a variant is NAME=FLAGS")?;
        let argv = std::iter::once("variant").chain(flags.split_whitespace());
        let cfg = VariantFlags::try_parse_from(argv)?.cram.config();
        for &len in &a.tokens {
            if done.contains(&(model.clone(), name.to_string(), len)) {
                eprintln!("{model} / {name} / {len} tokens: done, kept");
                continue;
            }
            let engine = Engine::new(&m, cfg.clone())?;
            let layout = engine.layout().clone();
            let ids: Vec<Vec<u32>> = picked
                .iter()
                .map(|(_, t)| -> anyhow::Result<Vec<u32>> {
                    let mut ids = layout.text_ids(m.tokenizer.encode(t, true)?);
                    ids.truncate(len);
                    Ok(ids)
                })
                .collect::<anyhow::Result<_>>()?;
            let t0 = std::time::Instant::now();
            let results = engine.run(&ids, 0, |r| {
                if r.step % 50 == 0 {
                    eprintln!(
                        "{model} / {name} / {len}: step {} live {}/{} acc {:.3}",
                        r.step, r.live, r.total, r.mean_accuracy
                    );
                }
            })?;
            let secs = t0.elapsed().as_secs_f64();
            for ((i, _), r) in picked.iter().zip(&results) {
                let row = json!({
                    "model": model, "variant": name, "flags": flags, "tokens": len,
                    "text_index": i, "n_tokens": r.n_tokens, "exact": r.exact,
                    "steps": r.steps, "max_steps": cfg.optimizer.max_steps,
                    "stop_reason": r.stop_reason, "best_accuracy": r.best_accuracy,
                    "first_mismatch": r.first_mismatch, "original_loss": r.original_loss,
                    "batch_seconds": secs, "layout": layout, "config": cfg,
                });
                writeln!(file, "{row}")?;
            }
            file.flush()?;
            let exact = results.iter().filter(|r| r.exact).count();
            eprintln!(
                "{model} / {name} / {len}: {exact}/{} exact, {secs:.0} s",
                results.len()
            );
        }
    }
    Ok(())
}

fn rows(path: &Path) -> anyhow::Result<Vec<Value>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    std::fs::read_to_string(path)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("{}: bad line", path.display())))
        .collect()
}

fn done_rows(path: &Path) -> anyhow::Result<HashSet<(String, String, usize)>> {
    Ok(rows(path)?
        .iter()
        .map(|r| {
            (
                r["model"].as_str().unwrap_or_default().to_string(),
                r["variant"].as_str().unwrap_or_default().to_string(),
                r["tokens"].as_u64().unwrap_or_default() as usize,
            )
        })
        .collect())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One table per model: a row per variant, a column group per length.
fn table(path: &Path) -> anyhow::Result<String> {
    let rows = rows(path)?;
    // model -> variant (in first-seen order) -> tokens -> rows
    let mut order: Vec<(String, String, String)> = Vec::new();
    let mut cells: BTreeMap<(String, String, usize), Vec<&Value>> = BTreeMap::new();
    let mut lengths: BTreeMap<String, std::collections::BTreeSet<usize>> = BTreeMap::new();
    for r in &rows {
        let model = r["model"].as_str().unwrap_or_default().to_string();
        let variant = r["variant"].as_str().unwrap_or_default().to_string();
        let flags = r["flags"].as_str().unwrap_or_default().to_string();
        let len = r["tokens"].as_u64().unwrap_or_default() as usize;
        if !order.iter().any(|(m, v, _)| *m == model && *v == variant) {
            order.push((model.clone(), variant.clone(), flags));
        }
        lengths.entry(model.clone()).or_default().insert(len);
        cells.entry((model, variant, len)).or_default().push(r);
    }
    // The default first, then the paper protocol, then the variants.
    order.sort_by_key(|(_, v, _)| (v != "cram", v != "paper"));
    let mut s = String::new();
    for (model, lens) in &lengths {
        s.push_str(&format!("**{model}**, one vector: exact decodes / texts, and median (max) steps to an exact decode, failures counted at the variant's step limit\n\n"));
        s.push_str("| variant | flags |");
        for l in lens {
            s.push_str(&format!(" {l} tokens: exact | steps |"));
        }
        s.push_str("\n|---|---|");
        for _ in lens {
            s.push_str("---:|---:|");
        }
        s.push('\n');
        for (m, variant, flags) in order.iter().filter(|(m, _, _)| m == model) {
            let shown = if flags.trim().is_empty() {
                "(defaults)".to_string()
            } else {
                format!("`{}`", flags.trim())
            };
            // A `|` (as in `<|endoftext|>`) would end the table cell.
            let cell = |x: &str| x.replace('|', "\\|");
            s.push_str(&format!("| {} | {} |", cell(variant), cell(&shown)));
            for &l in lens {
                match cells.get(&(m.clone(), variant.clone(), l)) {
                    None => s.push_str(" | |"),
                    Some(rs) => {
                        let exact = rs.iter().filter(|r| r["exact"] == true).count();
                        let mut steps: Vec<f64> = rs
                            .iter()
                            .map(|r| {
                                if r["exact"] == true {
                                    r["steps"].as_f64().unwrap_or(f64::NAN)
                                } else {
                                    r["max_steps"].as_f64().unwrap_or(f64::NAN)
                                }
                            })
                            .collect();
                        let max_ok = rs
                            .iter()
                            .filter(|r| r["exact"] == true)
                            .filter_map(|r| r["steps"].as_u64())
                            .max();
                        let med = median(&mut steps);
                        let max = max_ok.map_or("–".into(), |x| x.to_string());
                        s.push_str(&format!(" {exact}/{} | {med:.0} ({max}) |", rs.len()));
                    }
                }
            }
            s.push('\n');
        }
        s.push('\n');
    }
    Ok(s)
}
