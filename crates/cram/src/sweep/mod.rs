//! Sweep configurations: which models, data sets, lengths and vector counts
//! a cramming experiment covers, the grid of cells they make, and how the
//! grid is split into shards.
//!
//! A configuration is a TOML file ([`SweepConfig`]); unknown keys are
//! errors. The grid ([`Grid`]) lists, in a fixed order, every
//! (model, dataset, length, `n_mem`, sample) cell, skipping cells with more
//! vectors than tokens (`n_mem > length`) as the paper's `train.py` does. It
//! is cut into [`Chunk`]s: up to `batch_size` consecutive samples of one
//! (model, dataset, length, `n_mem`), crammed together in one engine batch
//! and committed together. Shard `i` of `n` takes the chunks whose position
//! in the grid is `i` modulo `n`, so shards are deterministic, disjoint, and
//! together make the grid.
//!
//! ```
//! use cram::sweep::SweepConfig;
//! let cfg = SweepConfig::from_toml_str(
//!     r#"
//!     models = ["smollm2-135m"]
//!     lengths = [8, 16]
//!     n_mem = [1, 2]
//!     samples = 2
//!     [[datasets]]
//!     name = "random"
//!     random = { seed = 0 }
//!     "#,
//!     "example.toml",
//! )
//! .unwrap();
//! assert_eq!(cfg.optimizer.lr, 1e-2); // the paper's defaults
//! assert!(SweepConfig::from_toml_str("lenghts = [8]", "bad.toml")
//!     .unwrap_err()
//!     .to_string()
//!     .contains("lenghts"));
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

pub mod capacity;
pub mod check;
pub mod merge;
pub mod runner;

pub use check::{check, CheckSummary};
pub use merge::{merge, MergeSummary};
pub use runner::{run, Plan, Progress, Quiet, RunOptions, RunSummary};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ablations::AblationsConfig;
use crate::datasets::{
    builtin, data_file, load_texts, paper_chunk, random_texts, read_vocab, Sample, TextSource,
};
use crate::engine::{CramConfig, Init, LossConvention, OptimizerConfig};
use crate::error::{CramError, Result};
use crate::layout::{Layout, Sink};
use crate::protocol::Protocol;
use crate::tokenizer::TextTokenizer;

/// A sweep: the grid's axes and the settings every cell shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// A free-form name for the run (not used by the computation).
    #[serde(default)]
    pub name: Option<String>,
    /// Models, as `--model` takes them (packaged name, path, hub id).
    pub models: Vec<String>,
    /// Data sets.
    pub datasets: Vec<DatasetConfig>,
    /// Text lengths in tokens (BOS included where the tokenizer adds one):
    /// each text is truncated to this many tokens (the paper's
    /// `max_length`). None in a capacity sweep.
    #[serde(default)]
    pub lengths: Vec<usize>,
    /// Numbers of trainable vectors.
    pub n_mem: Vec<usize>,
    /// Texts per (model, dataset, length, `n_mem`): the data set's first
    /// `samples` texts (the paper's `num_samples`).
    pub samples: usize,
    /// Texts optimised together in one engine batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Compute dtype: `f32`, `bf16` or `f16`.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Seed of the initial vectors (text `i` of a data set uses stream
    /// `seed + i`).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Loss convention: `full` or `paper`.
    #[serde(default)]
    pub loss: LossConvention,
    /// What stands in front of the vectors: `auto`, `none` (the default,
    /// the paper's layout), a token or a token id.
    #[serde(default = "Sink::none")]
    pub sink: Sink,
    /// How the vectors start: `randn` (the default), `mean` or `token:ID`.
    #[serde(default)]
    pub init: Init,
    /// Optimiser and stopping settings.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// A protocol (`paper` or `cram`) whose settings fill every engine key
    /// the file leaves out (`loss`, `sink`, `init`, `seed` and each key of
    /// `[optimizer]`); without one, the defaults above apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// A capacity sweep: instead of a grid of lengths, a `cram capacity`
    /// search per (model, data set, `n_mem`, search) over the data set's
    /// first `samples` texts (see [`capacity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<capacity::CapacitySweep>,
    /// The paper's other experiments, run for the cells of the grid (see
    /// [`crate::ablations`]); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ablations: Option<AblationsConfig>,
}

fn default_batch_size() -> usize {
    1
}

fn default_dtype() -> String {
    "f32".to_string()
}

fn default_seed() -> u64 {
    CramConfig::default().seed
}

/// One data set of a sweep: a name and exactly one of `builtin`, `source`
/// or `random`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// The name cells are stored under.
    pub name: String,
    /// A shipped data set: `pg19`, `modern`/`fanfic` (texts), or `random`
    /// (random texts with the settings of [`RandomConfig::default`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
    /// Texts from files (see [`TextSource`]; `kind = "random"` is not
    /// allowed here, use `random`). Relative paths are relative to the
    /// configuration file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<TextSource>,
    /// Random word sequences, drawn afresh for each length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random: Option<RandomConfig>,
    /// How a text from a file becomes tokens: `paper` (default: the second
    /// half of its sentences, see [`paper_chunk`]) or `whole` (the whole
    /// text). Either way it is truncated to the cell's length.
    #[serde(default)]
    pub chunk: ChunkMode,
}

/// Settings of a random-text data set (the paper's `--shuffled` runs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomConfig {
    /// Vocabulary file, one word a line (default: the shipped
    /// `data/vocab_100k.txt`). Relative to the configuration file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab: Option<PathBuf>,
    /// Draw each text's token budget uniformly from `[2, length]` (the
    /// paper's random texts) instead of using `length`.
    #[serde(default)]
    pub variable_length: bool,
    /// Seed of the words (and budgets).
    #[serde(default)]
    pub seed: u64,
}

/// How a text from a file becomes the tokens that are crammed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkMode {
    /// The paper's protocol: the second half of the text's sentences.
    #[default]
    Paper,
    /// The whole text.
    Whole,
}

/// Compute dtypes a sweep accepts.
pub const DTYPES: &[&str] = &["f32", "bf16", "f16"];

impl SweepConfig {
    /// Reads and checks a configuration file.
    ///
    /// # Errors
    ///
    /// [`CramError::NotFound`] for a missing file, [`CramError::BadFile`]
    /// for malformed TOML or an unknown key (the message names the file,
    /// the line and the key), [`CramError::BadConfig`] for an invalid value.
    pub fn from_file(path: &Path) -> Result<(Self, String)> {
        let text = std::fs::read_to_string(path).map_err(|e| CramError::io(path, e))?;
        let cfg = Self::from_toml_str(&text, &path.display().to_string())?;
        Ok((cfg, text))
    }

    /// Parses and checks a configuration; `name` (the file) is used in
    /// messages.
    pub fn from_toml_str(text: &str, name: &str) -> Result<Self> {
        let cfg: SweepConfig = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let before = &text[..s.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let col = before.len() - before.rfind('\n').map_or(0, |p| p + 1) + 1;
                    format!("line {line}, column {col}: ")
                })
                .unwrap_or_default();
            CramError::bad_file(name, format!("{at}{}", e.message().replace('\n', " ")))
        })?;
        let cfg = match cfg.protocol {
            Some(p) => cfg.with_protocol_defaults(p, text, name)?,
            None => cfg,
        };
        cfg.check(name)?;
        Ok(cfg)
    }

    /// Fills the engine keys that `text` leaves out with protocol `p`'s
    /// values.
    fn with_protocol_defaults(mut self, p: Protocol, text: &str, name: &str) -> Result<Self> {
        let given: toml::Table =
            toml::from_str(text).map_err(|e| CramError::bad_file(name, e.to_string()))?;
        let base = p.config();
        let has = |k: &str| given.contains_key(k);
        if !has("loss") {
            self.loss = base.loss;
        }
        if !has("sink") {
            self.sink = base.sink.clone();
        }
        if !has("init") {
            self.init = base.init;
        }
        if !has("seed") {
            self.seed = base.seed;
        }
        let mut opt = serde_json::to_value(&base.optimizer).expect("settings serialise");
        if let Some(t) = given.get("optimizer") {
            let t = serde_json::to_value(t).expect("TOML converts to JSON");
            for (k, v) in t.as_object().into_iter().flatten() {
                opt[k] = v.clone();
            }
        }
        self.optimizer = serde_json::from_value(opt)
            .map_err(|e| CramError::bad_file(name, format!("optimizer: {e}")))?;
        Ok(self)
    }

    fn check(&self, name: &str) -> Result<()> {
        let bad = |field: &str, msg: String| Err(CramError::bad_config(name, field, msg));
        if self.models.is_empty() {
            return bad("models", "no models".into());
        }
        if self.datasets.is_empty() {
            return bad("datasets", "no data sets".into());
        }
        if let Some(c) = &self.capacity {
            if !self.lengths.is_empty() {
                return bad(
                    "lengths",
                    "a capacity sweep searches each text's length itself: leave `lengths` out"
                        .into(),
                );
            }
            if let Some((field, msg)) = c.invalid() {
                return bad(&format!("capacity.{field}"), msg);
            }
            if self.ablations.is_some() {
                return bad(
                    "ablations",
                    "the other experiments run for the cells of a grid; a capacity sweep has none"
                        .into(),
                );
            }
        }
        let lists: &[(&str, &Vec<usize>)] = if self.capacity.is_some() {
            &[("n_mem", &self.n_mem)]
        } else {
            &[("lengths", &self.lengths), ("n_mem", &self.n_mem)]
        };
        for &(field, list) in lists {
            if list.is_empty() {
                return bad(field, "empty list".into());
            }
            if let Some(i) = list.iter().position(|&x| x == 0) {
                return bad(field, format!("entry {i} is 0; it must be at least 1"));
            }
            let mut seen = HashSet::new();
            if let Some(x) = list.iter().find(|x| !seen.insert(**x)) {
                return bad(field, format!("{x} appears twice"));
            }
        }
        let mut seen = HashSet::new();
        if let Some(m) = self.models.iter().find(|m| !seen.insert(m.as_str())) {
            return bad("models", format!("`{m}` appears twice"));
        }
        if self.samples == 0 {
            return bad("samples", "must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if !DTYPES.contains(&self.dtype.as_str()) {
            return bad(
                "dtype",
                format!("unknown dtype `{}` (expected f32, bf16 or f16)", self.dtype),
            );
        }
        if let Some((field, msg)) = self.optimizer.invalid() {
            return bad(&format!("optimizer.{field}"), msg);
        }
        let mut names = HashSet::new();
        for (i, d) in self.datasets.iter().enumerate() {
            let field = format!("datasets[{i}]");
            if d.name.trim().is_empty() {
                return bad(&format!("{field}.name"), "empty name".into());
            }
            if !names.insert(d.name.as_str()) {
                return bad(
                    &format!("{field}.name"),
                    format!("`{}` appears twice", d.name),
                );
            }
            let given = [d.builtin.is_some(), d.source.is_some(), d.random.is_some()];
            if given.iter().filter(|&&g| g).count() != 1 {
                return bad(
                    &field,
                    format!(
                        "data set `{}` needs exactly one of `builtin`, `source`, `random`",
                        d.name
                    ),
                );
            }
            if let Some(b) = &d.builtin {
                if builtin(b).is_none() {
                    return bad(
                        &format!("{field}.builtin"),
                        format!(
                            "unknown data set `{b}` (known: {})",
                            crate::datasets::BUILTIN_NAMES.join(", ")
                        ),
                    );
                }
            }
            if let Some(TextSource::Random { .. }) = d.source {
                return bad(
                    &format!("{field}.source"),
                    "random texts are drawn per length: use `random = { ... }` instead of a random source"
                        .into(),
                );
            }
        }
        if let Some(a) = &self.ablations {
            let names: Vec<&str> = self.datasets.iter().map(|d| d.name.as_str()).collect();
            a.check(name, &self.lengths, &self.n_mem, self.samples, &names)?;
        }
        Ok(())
    }

    /// The engine settings of cells with `n_mem` vectors.
    pub fn cram_config(&self, n_mem: usize) -> CramConfig {
        CramConfig {
            protocol: self.protocol,
            n_mem,
            sink: self.sink.clone(),
            init: self.init,
            optimizer: self.optimizer.clone(),
            loss: self.loss,
            seed: self.seed,
            low_dim: None,
        }
    }

    /// The canonical form of the configuration: its parsed value as JSON
    /// with sorted keys and every default filled in. Two files that differ
    /// only in layout, comments or spelled-out defaults have the same
    /// canonical form.
    pub fn canonical_json(&self) -> String {
        let v = serde_json::to_value(self).expect("a configuration serialises");
        serde_json::to_string(&sort_keys(v)).expect("JSON serialises")
    }

    /// SHA-256 of [`SweepConfig::canonical_json`], hex.
    pub fn hash(&self) -> String {
        format!("{:x}", Sha256::digest(self.canonical_json().as_bytes()))
    }

    /// Loads every data set's texts (relative paths against `base`, the
    /// configuration file's folder), checking each has at least `samples`
    /// texts.
    ///
    /// # Errors
    ///
    /// Those of [`load_texts`] (missing file, missing column, empty data
    /// set), prefixed with the data set's name, and [`CramError::Input`]
    /// when a data set has fewer texts than `samples`.
    pub fn load_datasets(&self, base: &Path) -> Result<Vec<Dataset>> {
        self.datasets
            .iter()
            .map(|d| Dataset::load(d, base, self.samples))
            .collect()
    }
}

fn sort_keys(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let sorted: BTreeMap<String, serde_json::Value> =
                m.into_iter().map(|(k, v)| (k, sort_keys(v))).collect();
            serde_json::Value::Object(sorted.into_iter().collect())
        }
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(sort_keys).collect())
        }
        other => other,
    }
}

/// The keys (dotted paths such as `optimizer.lr` or `lengths`) at which two
/// canonical configurations differ, sorted.
pub fn differing_keys(a: &str, b: &str) -> Vec<String> {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value::Object;
        match (a, b) {
            (Object(x), Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    match (x.get(k), y.get(k)) {
                        (Some(u), Some(v)) => walk(&p, u, v, out),
                        _ => out.push(p),
                    }
                }
            }
            (u, v) if u != v => out.push(if prefix.is_empty() {
                "(whole configuration)".into()
            } else {
                prefix.to_string()
            }),
            _ => {}
        }
    }
    let parse = |s: &str| serde_json::from_str(s).unwrap_or(serde_json::Value::String(s.into()));
    let mut out = Vec::new();
    walk("", &parse(a), &parse(b), &mut out);
    out
}

/// A data set ready for the grid: its sample ids and how to make each
/// sample's tokens at a given length.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The name cells are stored under.
    pub name: String,
    texts: Texts,
}

#[derive(Debug, Clone)]
enum Texts {
    Fixed {
        samples: Vec<Sample>,
        chunk: ChunkMode,
    },
    Random {
        vocab: Vec<String>,
        n: usize,
        variable_length: bool,
        seed: u64,
    },
}

fn rebase(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl Dataset {
    /// Whether the texts are random word sequences (whose token budgets may
    /// be below the cell's length by design).
    pub fn is_random(&self) -> bool {
        matches!(self.texts, Texts::Random { .. })
    }

    fn load(d: &DatasetConfig, base: &Path, samples: usize) -> Result<Self> {
        let ctx = |e: CramError| CramError::Input(format!("data set `{}`: {e}", d.name));
        let random = match (&d.builtin, &d.random) {
            (Some(b), _) if b == "random" => Some(RandomConfig::default()),
            (_, Some(r)) => Some(r.clone()),
            _ => None,
        };
        let texts = if let Some(r) = random {
            let vocab_path = r
                .vocab
                .as_deref()
                .map(|p| rebase(base, p))
                .unwrap_or_else(|| data_file("vocab_100k.txt"));
            Texts::Random {
                vocab: read_vocab(&vocab_path).map_err(ctx)?,
                n: samples,
                variable_length: r.variable_length,
                seed: r.seed,
            }
        } else {
            let src = match (&d.builtin, &d.source) {
                (Some(b), _) => builtin(b).ok_or_else(|| {
                    CramError::Input(format!("data set `{}`: unknown built-in `{b}`", d.name))
                })?,
                (None, Some(s)) => match s.clone() {
                    TextSource::Csv { path, column } => TextSource::Csv {
                        path: rebase(base, &path),
                        column,
                    },
                    TextSource::Jsonl { path, field } => TextSource::Jsonl {
                        path: rebase(base, &path),
                        field,
                    },
                    TextSource::TxtFolder { path } => TextSource::TxtFolder {
                        path: rebase(base, &path),
                    },
                    TextSource::TextFile { path } => TextSource::TextFile {
                        path: rebase(base, &path),
                    },
                    r @ TextSource::Random { .. } => r,
                },
                (None, None) => {
                    return Err(CramError::Input(format!(
                        "data set `{}` has no texts (give builtin, source or random)",
                        d.name
                    )))
                }
            };
            let mut all = load_texts(&src).map_err(ctx)?;
            if all.len() < samples {
                return Err(CramError::Input(format!(
                    "data set `{}` has {} texts, fewer than samples = {samples}",
                    d.name,
                    all.len()
                )));
            }
            all.truncate(samples);
            Texts::Fixed {
                samples: all,
                chunk: d.chunk,
            }
        };
        Ok(Self {
            name: d.name.clone(),
            texts,
        })
    }

    /// The first half of sample `s`'s sentences (the context the paper's
    /// protocol drops), for a data set from files cut with `chunk =
    /// "paper"`; `None` for other data sets.
    ///
    /// # Errors
    ///
    /// [`CramError::Input`] for a blank text.
    pub fn paper_prefix(&self, s: usize) -> Result<Option<String>> {
        match &self.texts {
            Texts::Fixed {
                samples,
                chunk: ChunkMode::Paper,
            } => Ok(Some(crate::datasets::paper_halves(&samples[s].text)?.0)),
            _ => Ok(None),
        }
    }

    /// The whole texts of a data set from files; `None` for random texts.
    pub fn raw_texts(&self) -> Option<Vec<&str>> {
        match &self.texts {
            Texts::Fixed { samples, .. } => Some(samples.iter().map(|s| s.text.as_str()).collect()),
            Texts::Random { .. } => None,
        }
    }

    /// The ids of the samples the sweep uses, in order.
    pub fn sample_ids(&self) -> Vec<String> {
        match &self.texts {
            Texts::Fixed { samples, .. } => samples.iter().map(|s| s.id.clone()).collect(),
            Texts::Random { n, .. } => (0..*n).map(|i| format!("random-{i}")).collect(),
        }
    }

    /// The token ids of every sample at `length` tokens (random texts are
    /// drawn for this length).
    ///
    /// # Errors
    ///
    /// [`CramError::Input`] naming the data set and sample when a text
    /// gives no tokens; tokenizer errors.
    pub fn tokens(
        &self,
        tokenizer: &TextTokenizer,
        layout: &Layout,
        length: usize,
    ) -> Result<Vec<Vec<u32>>> {
        // A BOS that moves in front of the vectors is not one of the
        // text's `length` tokens.
        let moved = usize::from(layout.moves_bos);
        let out: Vec<(String, Vec<u32>)> = match &self.texts {
            Texts::Fixed { samples, chunk } => samples
                .iter()
                .map(|s| {
                    let ids = match chunk {
                        ChunkMode::Paper => paper_chunk(&s.text, tokenizer, length + moved)
                            .map(|ids| layout.text_ids(ids)),
                        ChunkMode::Whole => tokenizer.encode(&s.text, true).map(|ids| {
                            let mut ids = layout.text_ids(ids);
                            ids.truncate(length);
                            ids
                        }),
                    };
                    ids.map(|ids| (s.id.clone(), ids)).map_err(|e| {
                        CramError::Input(format!("data set `{}`, text `{}`: {e}", self.name, s.id))
                    })
                })
                .collect::<Result<_>>()?,
            Texts::Random {
                vocab,
                n,
                variable_length,
                seed,
            } => {
                let texts =
                    random_texts(vocab, *n, length, *variable_length && length >= 2, *seed)?;
                texts
                    .into_iter()
                    .map(|s| {
                        let mut ids = layout.text_ids(tokenizer.encode(&s.text, true)?);
                        ids.truncate(s.max_tokens.unwrap_or(length));
                        Ok((s.id, ids))
                    })
                    .collect::<Result<_>>()?
            }
        };
        out.into_iter()
            .map(|(id, ids)| {
                if ids.is_empty() {
                    Err(CramError::Input(format!(
                        "data set `{}`, text `{id}`: no tokens",
                        self.name
                    )))
                } else {
                    Ok(ids)
                }
            })
            .collect()
    }
}

/// What identifies a cell: unique within a run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CellKey {
    /// The model, as the configuration names it.
    pub model: String,
    /// The data set's name.
    pub dataset: String,
    /// The sample's id within the data set.
    pub sample_id: String,
    /// Number of vectors.
    pub n_mem: usize,
    /// The grid length (tokens the text is truncated to).
    pub length: usize,
}

/// Up to `batch_size` consecutive samples of one (model, dataset, length,
/// `n_mem`): one engine batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Index into the configuration's `models`.
    pub model: usize,
    /// Index into the configuration's `datasets`.
    pub dataset: usize,
    /// Grid length.
    pub length: usize,
    /// Number of vectors.
    pub n_mem: usize,
    /// Sample indices (into the data set's samples), consecutive.
    pub samples: std::ops::Range<usize>,
}

/// The cells of a sweep, in chunks.
#[derive(Debug, Clone)]
pub struct Grid {
    /// The chunks, in grid order: model, dataset, length, `n_mem`, samples.
    pub chunks: Vec<Chunk>,
    /// (length, `n_mem`) pairs skipped because `n_mem > length`.
    pub skipped: Vec<(usize, usize)>,
    models: Vec<String>,
    datasets: Vec<(String, Vec<String>)>,
}

impl Grid {
    /// The grid of `cfg` over the loaded `datasets`.
    pub fn new(cfg: &SweepConfig, datasets: &[Dataset]) -> Self {
        let mut chunks = Vec::new();
        let mut skipped = Vec::new();
        for &length in &cfg.lengths {
            for &n_mem in &cfg.n_mem {
                if n_mem > length {
                    skipped.push((length, n_mem));
                }
            }
        }
        let ds: Vec<(String, Vec<String>)> = datasets
            .iter()
            .map(|d| (d.name.clone(), d.sample_ids()))
            .collect();
        for model in 0..cfg.models.len() {
            for (dataset, (_, ids)) in ds.iter().enumerate() {
                for &length in &cfg.lengths {
                    for &n_mem in &cfg.n_mem {
                        if n_mem > length {
                            continue;
                        }
                        let mut start = 0;
                        while start < ids.len() {
                            let end = (start + cfg.batch_size).min(ids.len());
                            chunks.push(Chunk {
                                model,
                                dataset,
                                length,
                                n_mem,
                                samples: start..end,
                            });
                            start = end;
                        }
                    }
                }
            }
        }
        Self {
            chunks,
            skipped,
            models: cfg.models.clone(),
            datasets: ds,
        }
    }

    /// The chunks of one shard (all of them for `None`).
    pub fn shard(&self, shard: Option<Shard>) -> Vec<Chunk> {
        self.chunks
            .iter()
            .enumerate()
            .filter(|(i, _)| shard.is_none_or(|s| i % s.count == s.index))
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// The key of sample `i` of chunk `c`.
    pub fn key(&self, c: &Chunk, sample: usize) -> CellKey {
        CellKey {
            model: self.models[c.model].clone(),
            dataset: self.datasets[c.dataset].0.clone(),
            sample_id: self.datasets[c.dataset].1[sample].clone(),
            n_mem: c.n_mem,
            length: c.length,
        }
    }

    /// Every cell key of `chunks`, in order.
    pub fn keys(&self, chunks: &[Chunk]) -> Vec<CellKey> {
        chunks
            .iter()
            .flat_map(|c| c.samples.clone().map(move |s| self.key(c, s)))
            .collect()
    }

    /// Number of cells in `chunks`.
    pub fn count(chunks: &[Chunk]) -> usize {
        chunks.iter().map(|c| c.samples.len()).sum()
    }
}

/// One part of a grid split `count` ways: chunks `index`, `index + count`,
/// ... (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Which part, from 0.
    pub index: usize,
    /// How many parts.
    pub count: usize,
}

impl Shard {
    /// A shard, checked: `count >= 1` and `index < count`.
    pub fn new(index: usize, count: usize) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(CramError::Input(format!(
                "shard {index}/{count}: the index must be in 0..{count} and the count at least 1"
            )));
        }
        Ok(Self { index, count })
    }

    /// The shard's database file name (`results-shard-I-of-N.sqlite`).
    pub fn file_name(&self) -> String {
        format!("results-shard-{}-of-{}.sqlite", self.index, self.count)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = CramError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || CramError::Input(format!("shard `{s}`: expected I/N, e.g. 0/4"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        Shard::new(
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        )
    }
}

/// The shard a process should run: `explicit` (`--shard I/N`) when given;
/// else from a Slurm job array (`SLURM_ARRAY_TASK_ID` minus
/// `SLURM_ARRAY_TASK_MIN`, default 0, of `SLURM_ARRAY_TASK_COUNT`); else,
/// with `shards` (`--shards N`), from a Kubernetes indexed Job
/// (`JOB_COMPLETION_INDEX` of `N`); else none (the whole grid). `env` reads
/// an environment variable.
///
/// # Errors
///
/// [`CramError::Input`] for an unparsable variable, an index out of range,
/// or `shards` without `JOB_COMPLETION_INDEX` or a Slurm array.
pub fn shard_from_env(
    explicit: Option<Shard>,
    shards: Option<usize>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Shard>> {
    if explicit.is_some() {
        return Ok(explicit);
    }
    let num = |name: &str| -> Result<Option<usize>> {
        env(name)
            .map(|v| {
                v.trim().parse::<usize>().map_err(|_| {
                    CramError::Input(format!("{name}={v}: not a non-negative integer"))
                })
            })
            .transpose()
    };
    if let (Some(id), Some(count)) = (num("SLURM_ARRAY_TASK_ID")?, num("SLURM_ARRAY_TASK_COUNT")?) {
        let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let index = id.checked_sub(min).ok_or_else(|| {
            CramError::Input(format!(
                "SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"
            ))
        })?;
        if let Some(n) = shards.filter(|&n| n != count) {
            return Err(CramError::Input(format!(
                "--shards {n} disagrees with SLURM_ARRAY_TASK_COUNT {count}"
            )));
        }
        return Shard::new(index, count).map(Some);
    }
    match (shards, num("JOB_COMPLETION_INDEX")?) {
        (Some(n), Some(i)) => Shard::new(i, n).map(Some),
        (Some(n), None) => Err(CramError::Input(format!(
            "--shards {n} needs JOB_COMPLETION_INDEX (a Kubernetes indexed Job) or a Slurm job array; use --shard I/{n} otherwise"
        ))),
        (None, _) => Ok(None),
    }
}
