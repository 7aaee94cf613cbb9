//! The paper's other experiments (the notebooks of its analysis code), run
//! by a sweep for the cells it has and stored beside them:
//!
//! | kind | notebook | what one row holds |
//! |---|---|---|
//! | `context` | `ablations_context_length` | the text scored after `p` real tokens of preceding context (the last `p` tokens of the chunk's first half, the half the sentence-split protocol drops) |
//! | `copy` | `ablations_repeat_text` | a random text scored after `text: {T}\nrepeat previous text: ` |
//! | `bits_per_byte` | `get_bits_per_byte` | the tokenizer's tokens and UTF-8 bytes over a data set's texts |
//! | `entropy_bound` | `text_compression_upper_bound` | `H`, `H_max`, `H_eq`, `H_opt` of the text without vectors ([`bounds`]) |
//! | `pca` | `test_mem_pca` | one optimisation run of a text from another seed, with its vectors ([`pca`] does the analysis) |
//!
//! Scoring rows (`context`, `copy`) hold the cross-entropy sum, the
//! correct count and the number of scored tokens: the text's tokens after
//! its first (BOS aside), as the notebooks score them; `base_*` are the same
//! tokens scored from the text alone. The settings are the `[ablations]`
//! table of the sweep configuration ([`AblationsConfig`]), recorded with the
//! configuration.

pub mod bounds;
pub mod pca;

use std::collections::{BTreeMap, HashMap, HashSet};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::{CramError, Result};
use crate::model::{CausalLm, LoadedModel};
use crate::store::Store;
use crate::sweep::{Chunk, Plan, Progress, Shard};

/// Which of the experiments a sweep runs, and their settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AblationsConfig {
    /// Context baseline: numbers of real context tokens `p` (the paper's
    /// 64, 128, 512, 1024); a `p` with `p + length` beyond the model's
    /// context is skipped. Empty: not run.
    #[serde(default)]
    pub context: Vec<usize>,
    /// Copy baseline on the random data sets' texts.
    #[serde(default)]
    pub copy: bool,
    /// Tokens per UTF-8 byte of each model's tokenizer on each data set
    /// from files.
    #[serde(default)]
    pub bits_per_byte: bool,
    /// `H`, `H_max`, `H_eq`, `H_opt` of every text.
    #[serde(default)]
    pub entropy_bound: bool,
    /// Solution geometry: many runs of a few texts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pca: Option<PcaConfig>,
}

/// The solution-geometry experiment: `seeds` optimisation runs of each of
/// the first `texts` texts of `dataset` at (`length`, `n_mem`), which must
/// be a cell of the grid (its other texts give one run each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcaConfig {
    /// The data set's name.
    pub dataset: String,
    /// Grid length.
    pub length: usize,
    /// Number of vectors.
    pub n_mem: usize,
    /// Texts run from many seeds.
    pub texts: usize,
    /// Runs per text.
    pub seeds: usize,
    /// Seed of the runs: run `r` of text `s` starts from stream
    /// `seed + s * seeds + r` (the sweep's cells use `sweep seed + s`).
    #[serde(default = "default_pca_seed")]
    pub seed: u64,
}

fn default_pca_seed() -> u64 {
    1_000_000
}

impl AblationsConfig {
    /// Whether anything is to be run.
    pub fn any(&self) -> bool {
        !self.context.is_empty()
            || self.copy
            || self.bits_per_byte
            || self.entropy_bound
            || self.pca.is_some()
    }

    /// Checks the settings against the sweep's grid axes; `name` is the
    /// configuration file.
    pub fn check(
        &self,
        name: &str,
        lengths: &[usize],
        n_mem: &[usize],
        samples: usize,
        datasets: &[&str],
    ) -> Result<()> {
        let bad = |field: &str, msg: String| {
            Err(CramError::bad_config(
                name,
                format!("ablations.{field}"),
                msg,
            ))
        };
        let mut seen = HashSet::new();
        for (i, &p) in self.context.iter().enumerate() {
            if p == 0 {
                return bad("context", format!("entry {i} is 0; it must be at least 1"));
            }
            if !seen.insert(p) {
                return bad("context", format!("{p} appears twice"));
            }
        }
        if let Some(p) = &self.pca {
            if !datasets.contains(&p.dataset.as_str()) {
                return bad(
                    "pca.dataset",
                    format!(
                        "`{}` is not one of the data sets ({})",
                        p.dataset,
                        datasets.join(", ")
                    ),
                );
            }
            if !lengths.contains(&p.length) {
                return bad(
                    "pca.length",
                    format!("{} is not one of `lengths`", p.length),
                );
            }
            if !n_mem.contains(&p.n_mem) || p.n_mem > p.length {
                return bad(
                    "pca.n_mem",
                    format!("{} is not one of `n_mem` at length {}", p.n_mem, p.length),
                );
            }
            if p.texts == 0 || p.texts > samples {
                return bad(
                    "pca.texts",
                    format!("{} must be in 1..={samples} (samples)", p.texts),
                );
            }
            if p.seeds < 2 {
                return bad(
                    "pca.seeds",
                    format!("{}: at least 2 runs per text", p.seeds),
                );
            }
        }
        Ok(())
    }
}

/// The experiment a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Context baseline.
    Context,
    /// Copy baseline.
    Copy,
    /// Tokens per byte.
    BitsPerByte,
    /// `H_opt` and the looser bounds.
    EntropyBound,
    /// A run from another seed.
    Pca,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 5] = [
        Kind::Context,
        Kind::Copy,
        Kind::BitsPerByte,
        Kind::EntropyBound,
        Kind::Pca,
    ];

    /// The name stored in the results database.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Context => "context",
            Kind::Copy => "copy",
            Kind::BitsPerByte => "bits_per_byte",
            Kind::EntropyBound => "entropy_bound",
            Kind::Pca => "pca",
        }
    }

    /// The kind of a stored name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What identifies a row: unique within a run. Rows that do not depend on
/// the vectors have `n_mem` 0; per-data-set rows have an empty `sample_id`
/// and `length` 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AblationKey {
    /// The experiment.
    pub kind: Kind,
    /// The model, as the configuration names it.
    pub model: String,
    /// The data set.
    pub dataset: String,
    /// The text.
    pub sample_id: String,
    /// Grid length.
    pub length: usize,
    /// Number of vectors.
    pub n_mem: usize,
    /// Context tokens `p` (context), the run's index (pca), else 0.
    pub param: usize,
}

/// One stored result of an experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct AblationRow {
    /// Its key.
    pub key: AblationKey,
    /// Named numbers (see the module's table); non-finite values are
    /// stored as JSON `null` and read back as NaN.
    pub values: BTreeMap<String, f64>,
    /// The vectors of a `pca` run, `[n_mem, input_size]`; empty otherwise.
    pub vectors: Vec<f32>,
}

impl AblationRow {
    /// Value `name`, NaN when absent.
    pub fn get(&self, name: &str) -> f64 {
        self.values.get(name).copied().unwrap_or(f64::NAN)
    }

    /// The values as JSON text.
    pub fn values_json(&self) -> String {
        let m: serde_json::Map<String, serde_json::Value> = self
            .values
            .iter()
            .map(|(k, &v)| {
                let j = serde_json::Number::from_f64(v)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number);
                (k.clone(), j)
            })
            .collect();
        serde_json::Value::Object(m).to_string()
    }

    /// Values from [`AblationRow::values_json`]'s text.
    pub fn parse_values(text: &str) -> std::result::Result<BTreeMap<String, f64>, String> {
        let v: BTreeMap<String, Option<f64>> =
            serde_json::from_str(text).map_err(|e| e.to_string())?;
        Ok(v.into_iter()
            .map(|(k, x)| (k, x.unwrap_or(f64::NAN)))
            .collect())
    }
}

/// Cross-entropy and correct predictions of some tokens of a sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Score {
    /// Tokens scored.
    pub n: usize,
    /// Sum of their cross-entropies, nats.
    pub ce_sum: f64,
    /// How many were the argmax (the first maximum).
    pub correct: usize,
}

/// The logits predicting `ids[from..]` (rows `from - 1 .. len - 1` of the
/// forward pass over `ids`), one `Vec` per predicted token.
fn logits_predicting(model: &dyn CausalLm, ids: &[u32], from: usize) -> Result<Vec<Vec<f32>>> {
    if from == 0 || from >= ids.len() {
        return Ok(Vec::new());
    }
    let dev = model.device();
    let x = model.embed(&Tensor::new(ids, dev)?.unsqueeze(0)?)?;
    let logits = model.forward(&x, None)?.squeeze(0)?;
    let rows = logits.narrow(0, from - 1, ids.len() - from)?;
    Ok(rows.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?)
}

/// Scores one row of logits against `target`.
pub fn score_row(logits: &[f32], target: u32, s: &mut Score) {
    let b = bounds::token_bounds(logits, target as usize);
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    s.n += 1;
    s.ce_sum += b.h;
    s.correct += usize::from(best == target as usize);
}

/// Scores `ids[from..]` under the model given `ids[..from]`.
pub fn score(model: &dyn CausalLm, ids: &[u32], from: usize) -> Result<Score> {
    let mut s = Score::default();
    for (row, &t) in logits_predicting(model, ids, from)?
        .iter()
        .zip(&ids[from..])
    {
        score_row(row, t, &mut s);
    }
    Ok(s)
}

/// The entropy bounds of `ids[1..]` given the text alone.
pub fn text_bounds(model: &dyn CausalLm, ids: &[u32]) -> Result<bounds::TextBounds> {
    let mut t = bounds::TextBounds::default();
    for (row, &id) in logits_predicting(model, ids, 1)?.iter().zip(&ids[1..]) {
        t.add(bounds::token_bounds(row, id as usize));
    }
    Ok(t)
}

/// The text's tokens without the BOS the tokenizer put first.
fn strip_bos(lm: &LoadedModel, ids: &[u32]) -> Vec<u32> {
    match (lm.tokenizer.adds_bos(), lm.tokenizer.bos_id(), ids.first()) {
        (true, Some(b), Some(&f)) if f == b => ids[1..].to_vec(),
        _ => ids.to_vec(),
    }
}

/// The context baseline's input: the last `p` tokens of `prefix` followed
/// by a space (tokenised with the model's special tokens, as the notebook
/// does), then the text's tokens without BOS. Returns the input and the
/// number of context tokens in it.
pub fn context_input(
    lm: &LoadedModel,
    prefix: &str,
    text: &[u32],
    p: usize,
) -> Result<(Vec<u32>, usize)> {
    let ctx = lm.tokenizer.encode(&format!("{prefix} "), true)?;
    let ctx = &ctx[ctx.len().saturating_sub(p)..];
    let mut ids = ctx.to_vec();
    ids.extend(strip_bos(lm, text));
    Ok((ids, ctx.len()))
}

/// The copy baseline's input: `text: {T}\nrepeat previous text: ` (with the
/// model's special tokens) followed by T's tokens (without BOS). Returns the
/// input and the prompt's length.
pub fn copy_input(lm: &LoadedModel, text: &[u32]) -> Result<(Vec<u32>, usize)> {
    let t = strip_bos(lm, text);
    let decoded = lm.tokenizer.decode(&t, false)?;
    let mut ids = lm
        .tokenizer
        .encode(&format!("text: {decoded}\nrepeat previous text: "), true)?;
    let prompt = ids.len();
    ids.extend(t);
    Ok((ids, prompt))
}

/// A scoring row: `s` (with context) beside `base` (the text alone).
fn score_values(s: Score, base: Score, n_input: usize) -> BTreeMap<String, f64> {
    let n = s.n.max(1) as f64;
    BTreeMap::from([
        ("n_scored".into(), s.n as f64),
        ("ce_sum".into(), s.ce_sum),
        ("ce".into(), s.ce_sum / n),
        ("correct".into(), s.correct as f64),
        ("accuracy".into(), s.correct as f64 / n),
        ("base_ce_sum".into(), base.ce_sum),
        ("base_ce".into(), base.ce_sum / base.n.max(1) as f64),
        (
            "base_accuracy".into(),
            base.correct as f64 / base.n.max(1) as f64,
        ),
        ("n_input".into(), n_input as f64),
    ])
}

/// Scores `text[from_text..]` after a context: `input` ends with the text
/// (without BOS) and the scored tokens are its tokens after the first.
fn with_context(
    model: &dyn CausalLm,
    text: &[u32],
    bare: usize,
    input: &[u32],
) -> Result<BTreeMap<String, f64>> {
    // `bare` is the text's length without BOS; its first token is not scored.
    let base = score(model, text, text.len() - bare + 1)?;
    let s = score(model, input, input.len() - bare + 1)?;
    Ok(score_values(s, base, input.len()))
}

/// The rows a finished sweep of `p` holds for its `cells`, of the
/// experiments whose rows do not depend on the model: the entropy bound of
/// every text of two tokens or more, the tokens per byte of every (model,
/// data set from files), and every solution-geometry run. (Context and
/// copy rows also depend on the model's context length and tokenizer.)
pub fn expected_keys(p: &Plan, cells: &[crate::store::CellRecord]) -> HashSet<AblationKey> {
    let mut out = HashSet::new();
    let Some(cfg) = &p.cfg.ablations else {
        return out;
    };
    let key =
        |kind, c: &crate::store::CellRecord, sample: &str, length, n_mem, param| AblationKey {
            kind,
            model: c.cell.model.clone(),
            dataset: c.cell.dataset.clone(),
            sample_id: sample.to_string(),
            length,
            n_mem,
            param,
        };
    for c in cells {
        if cfg.entropy_bound && c.token_ids.len() >= 2 {
            out.insert(key(
                Kind::EntropyBound,
                c,
                &c.cell.sample_id,
                c.grid_length,
                0,
                0,
            ));
        }
        let fixed = p
            .datasets
            .iter()
            .any(|d| d.name == c.cell.dataset && d.raw_texts().is_some());
        if cfg.bits_per_byte && fixed {
            out.insert(key(Kind::BitsPerByte, c, "", 0, 0, 0));
        }
        if let Some(pc) = &cfg.pca {
            let ids = p
                .datasets
                .iter()
                .find(|d| d.name == pc.dataset)
                .map(|d| d.sample_ids())
                .unwrap_or_default();
            if c.cell.dataset == pc.dataset
                && ids[..pc.texts.min(ids.len())].contains(&c.cell.sample_id)
            {
                for r in 0..pc.seeds {
                    out.insert(key(Kind::Pca, c, &c.cell.sample_id, pc.length, pc.n_mem, r));
                }
            }
        }
    }
    out
}

/// The sample indices of the solution-geometry texts a shard runs: text
/// `s` belongs to shard `s % count`.
fn pca_texts(cfg: &PcaConfig, shard: Option<Shard>) -> Vec<usize> {
    (0..cfg.texts)
        .filter(|s| shard.is_none_or(|sh| s % sh.count == sh.index))
        .collect()
}

/// Runs the configured experiments for one model over the cells of
/// `chunks` (this shard's, already crammed), storing every row the store
/// lacks, one transaction per experiment and text group; returns the rows
/// added. `tokens` are the texts' ids keyed by (dataset, length).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_model(
    p: &Plan,
    lm: &LoadedModel,
    chunks: &[&Chunk],
    tokens: &HashMap<(usize, usize), Vec<Vec<u32>>>,
    layout: &crate::layout::Layout,
    shard: Option<Shard>,
    st: &mut Store,
    progress: &mut dyn Progress,
) -> Result<usize> {
    let Some(cfg) = &p.cfg.ablations else {
        return Ok(0);
    };
    let mut done = st.ablation_keys()?;
    let model = lm.model.as_ref();
    let ctx_len = model.info().context_length;
    let spec = &p.cfg.models[chunks.first().map_or(0, |c| c.model)];
    let key = |kind, dataset: &str, sample_id: &str, length, n_mem, param| AblationKey {
        kind,
        model: spec.clone(),
        dataset: dataset.to_string(),
        sample_id: sample_id.to_string(),
        length,
        n_mem,
        param,
    };
    let mut added = 0;
    let mut texts_seen = HashSet::new();
    for c in chunks {
        if !texts_seen.insert((c.dataset, c.length)) {
            continue;
        }
        let ds = &p.datasets[c.dataset];
        let ids_all = &tokens[&(c.dataset, c.length)];
        let ids_of: Vec<String> = ds.sample_ids();
        let mut rows = Vec::new();
        // The text group's samples (all of the data set's: shards that
        // share a text compute the same row, and merging keeps one).
        for (s, ids) in ids_all.iter().enumerate() {
            let sid = &ids_of[s];
            let bare = strip_bos(lm, ids).len();
            if cfg.entropy_bound && ids.len() >= 2 {
                let k = key(Kind::EntropyBound, &ds.name, sid, c.length, 0, 0);
                if !done.contains(&k) {
                    let b = text_bounds(model, ids)?;
                    let values = BTreeMap::from([
                        ("n".into(), b.n as f64),
                        ("h".into(), b.h),
                        ("h_max".into(), b.h_max),
                        ("h_eq".into(), b.h_eq),
                        ("h_opt".into(), b.h_opt),
                    ]);
                    rows.push(AblationRow {
                        key: k,
                        values,
                        vectors: Vec::new(),
                    });
                }
            }
            if bare < 2 {
                continue;
            }
            if cfg.copy && ds.is_random() {
                let k = key(Kind::Copy, &ds.name, sid, c.length, 0, 0);
                if !done.contains(&k) {
                    let (input, _) = copy_input(lm, ids)?;
                    if input.len() <= ctx_len {
                        let v = with_context(model, ids, bare, &input)?;
                        rows.push(AblationRow {
                            key: k,
                            values: v,
                            vectors: Vec::new(),
                        });
                    }
                }
            }
            if let Some(prefix) = ds.paper_prefix(s)? {
                for &pc in &cfg.context {
                    let k = key(Kind::Context, &ds.name, sid, c.length, 0, pc);
                    if done.contains(&k) || pc + ids.len() > ctx_len {
                        continue;
                    }
                    let (input, got) = context_input(lm, &prefix, ids, pc)?;
                    let mut v = with_context(model, ids, bare, &input)?;
                    v.insert("n_context".into(), got as f64);
                    rows.push(AblationRow {
                        key: k,
                        values: v,
                        vectors: Vec::new(),
                    });
                }
            }
        }
        if cfg.bits_per_byte {
            let k = key(Kind::BitsPerByte, &ds.name, "", 0, 0, 0);
            if let (false, Some(texts)) = (done.contains(&k), ds.raw_texts()) {
                let (mut n_tok, mut n_bytes) = (0usize, 0usize);
                for t in &texts {
                    n_tok += lm.tokenizer.encode(t, false)?.len();
                    n_bytes += t.len();
                }
                let values = BTreeMap::from([
                    ("texts".into(), texts.len() as f64),
                    ("tokens".into(), n_tok as f64),
                    ("bytes".into(), n_bytes as f64),
                    (
                        "tokens_per_byte".into(),
                        n_tok as f64 / n_bytes.max(1) as f64,
                    ),
                ]);
                rows.push(AblationRow {
                    key: k,
                    values,
                    vectors: Vec::new(),
                });
            }
        }
        if !rows.is_empty() {
            progress.group(&format!(
                "{spec} / {} / length {}: scoring passes ({} rows)",
                ds.name,
                c.length,
                rows.len()
            ));
            st.insert_ablations(&rows)?;
            added += rows.len();
            done.extend(rows.into_iter().map(|r| r.key));
        }
    }
    if let Some(pc) = &cfg.pca {
        added += run_pca(p, lm, pc, tokens, layout, shard, st, &done, spec, progress)?;
    }
    Ok(added)
}

#[allow(clippy::too_many_arguments)]
fn run_pca(
    p: &Plan,
    lm: &LoadedModel,
    pc: &PcaConfig,
    tokens: &HashMap<(usize, usize), Vec<Vec<u32>>>,
    layout: &crate::layout::Layout,
    shard: Option<Shard>,
    st: &mut Store,
    done: &HashSet<AblationKey>,
    spec: &str,
    progress: &mut dyn Progress,
) -> Result<usize> {
    let Some(d) = p.datasets.iter().position(|d| d.name == pc.dataset) else {
        return Ok(0);
    };
    let drawn;
    let ids_all = match tokens.get(&(d, pc.length)) {
        Some(t) => t,
        None => {
            drawn = p.datasets[d].tokens(&lm.tokenizer, layout, pc.length)?;
            &drawn
        }
    };
    let mut cc = p.cfg.cram_config(pc.n_mem);
    cc.seed = pc.seed;
    let engine = Engine::with_layout(lm.model.as_ref(), cc, layout.clone())?;
    let sample_ids = p.datasets[d].sample_ids();
    let mut added = 0;
    for s in pca_texts(pc, shard) {
        let k = |r| AblationKey {
            kind: Kind::Pca,
            model: spec.to_string(),
            dataset: pc.dataset.clone(),
            sample_id: sample_ids[s].clone(),
            length: pc.length,
            n_mem: pc.n_mem,
            param: r,
        };
        let pending: Vec<usize> = (0..pc.seeds).filter(|&r| !done.contains(&k(r))).collect();
        for batch in pending.chunk_by(|a, b| a + 1 == *b) {
            for part in batch.chunks(p.cfg.batch_size) {
                progress.group(&format!(
                    "{spec} / {} / length {} / {} vector(s): text {} from seeds {}..{} (PCA of the solutions)",
                    pc.dataset, pc.length, pc.n_mem, sample_ids[s], part[0], part[part.len() - 1] + 1
                ));
                let texts = vec![ids_all[s].clone(); part.len()];
                progress.batch_start(p.cfg.optimizer.max_steps);
                let results = engine.run(&texts, s * pc.seeds + part[0], |r| progress.step(r))?;
                let rows: Vec<AblationRow> = part
                    .iter()
                    .zip(results)
                    .map(|(&r, res)| AblationRow {
                        key: k(r),
                        values: BTreeMap::from([
                            ("best_loss".into(), res.best_loss),
                            ("best_accuracy".into(), res.best_accuracy),
                            ("steps".into(), res.steps as f64),
                            ("exact".into(), f64::from(u8::from(res.exact))),
                        ]),
                        vectors: res.vectors,
                    })
                    .collect();
                st.insert_ablations(&rows)?;
                added += rows.len();
                progress.batch_done(rows.len());
            }
        }
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_with_nan() {
        let row = AblationRow {
            key: AblationKey {
                kind: Kind::Copy,
                model: "m".into(),
                dataset: "d".into(),
                sample_id: "s".into(),
                length: 4,
                n_mem: 0,
                param: 0,
            },
            values: BTreeMap::from([("a".into(), 1.5), ("b".into(), f64::NAN)]),
            vectors: Vec::new(),
        };
        let back = AblationRow::parse_values(&row.values_json()).unwrap();
        assert_eq!(back["a"], 1.5);
        assert!(back["b"].is_nan());
        assert!(row.get("missing").is_nan());
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
    }

    #[test]
    fn score_row_counts_first_maximum() {
        let mut s = Score::default();
        score_row(&[1.0, 3.0, 3.0], 2, &mut s);
        score_row(&[1.0, 3.0, 3.0], 1, &mut s);
        assert_eq!((s.n, s.correct), (2, 1));
        let lse = (1f64.exp() + 2.0 * 3f64.exp()).ln();
        assert!((s.ce_sum - 2.0 * (lse - 3.0)).abs() < 1e-9);
    }

    #[test]
    fn pca_texts_split_over_shards() {
        let cfg = PcaConfig {
            dataset: "d".into(),
            length: 8,
            n_mem: 1,
            texts: 5,
            seeds: 2,
            seed: 0,
        };
        assert_eq!(pca_texts(&cfg, None), vec![0, 1, 2, 3, 4]);
        assert_eq!(pca_texts(&cfg, Some(Shard::new(1, 2).unwrap())), vec![1, 3]);
    }
}
