//! Low-dimensional vectors (`--low-dim K --basis learned|pca:DIR|random|own`):
//! each of a text's vectors is `W z + b`, with `z` of size `K` the text's
//! own parameters and the basis `(W, b)` shared by every text of a run (or
//! the text's own, `own`), as progressive cramming's low-dimensional
//! parametrisation.
//!
//! The columns of `W` are orthogonal and of norm `sqrt(width / K)`, so an
//! AdamW step of a given size in `z` moves the vector about as far as the
//! same step does in the full space; `z` starts at 0 (the vector at `b`)
//! unless the initialisation is `randn` (then `z` is `randn × std`, which
//! gives the vector's coordinates the same spread as a full-space `randn`
//! start).
//!
//! - `random`: `W` orthonormalised Gaussian columns from the run's seed, `b`
//!   the initialisation's shared start (the mean or a token's embedding; 0
//!   for `randn`).
//! - `pca:DIR`: `W` the first `K` principal directions of the vectors of an
//!   earlier full-dimensional run (a folder of `compress` files or a
//!   capacity run folder), `b` their mean.
//! - `learned`: starts as `random`; then `W`, `b` and the `z` of the run's
//!   first texts (`fit_texts`, cut to `fit_tokens`) are optimised jointly
//!   until those texts are all right teacher-forced or the protocol's
//!   `max_steps` ([`learn`]). The basis is then frozen, and every text of
//!   the run, the fitting texts included, is crammed into its `z` under it:
//!   a basis that kept moving after a text's decoding was verified would
//!   no longer decode that text. The basis keeps the fitting texts' last
//!   `z`, and with `z_start = fitted` (the default) those texts start from
//!   it instead of 0 ([`ZStart`]); `cram capacity` then starts its search
//!   at the fitting length ([`LowDim::default_start`]).
//!
//! - `own`: no shared basis. Each text has its own `W` and `b`, started
//!   as `random`'s, and trained with its `z` through the whole search:
//!   progressive cramming's projection in its one-text (geometric) search,
//!   a fresh `nn.Linear` per text. A text's parameters are then `[z, W,
//!   b]` ([`Params::Own`]), its checkpoints hold all three, and its vector
//!   files hold the vectors `W z + b` themselves, which decode without any
//!   basis file.
//!
//! A shared basis is saved beside the vectors ([`BASIS_FILE`]); a vector
//! file records its name and SHA-256, and `decompress` reads it.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, OptState, StepItem};
use crate::error::{CramError, Result};
use crate::memfile::{self, F32View};

/// The basis file's name in a run or vector folder.
pub const BASIS_FILE: &str = "basis.safetensors";
/// The basis file's format tag.
pub const BASIS_FORMAT: &str = "cram-basis/1";
const META_KEY: &str = "cram-basis";
/// The fitting length of a learned basis in `cram capacity` and capacity
/// sweeps when none is given: on SmolLM2-135M a basis fitted at 32 tokens
/// held 32–34, one fitted at 64 held 64 of each text (docs/capacity.md).
pub const CAPACITY_FIT_TOKENS: usize = 64;

/// Where a basis comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BasisKind {
    /// Trained jointly with the `z` of the run's first texts, then frozen.
    Learned,
    /// Fixed orthonormal random directions.
    Random,
    /// The principal directions of an earlier run's vectors.
    Pca(PathBuf),
    /// Every text its own `W` and `b`, trained with its `z`.
    Own,
}

impl BasisKind {
    /// Whether the basis is shared by the run's texts (and saved in a
    /// basis file); `own` is not.
    pub fn is_shared(&self) -> bool {
        *self != Self::Own
    }
}

impl std::str::FromStr for BasisKind {
    type Err = CramError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "learned" => Ok(Self::Learned),
            "random" => Ok(Self::Random),
            "own" => Ok(Self::Own),
            other => match other.strip_prefix("pca:") {
                Some(p) if !p.is_empty() => Ok(Self::Pca(PathBuf::from(p))),
                _ => Err(CramError::Input(format!(
                    "unknown basis `{other}` (expected learned, random, own or pca:RUN_DIR)"
                ))),
            },
        }
    }
}

impl std::fmt::Display for BasisKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Learned => f.write_str("learned"),
            Self::Random => f.write_str("random"),
            Self::Own => f.write_str("own"),
            Self::Pca(p) => write!(f, "pca:{}", p.display()),
        }
    }
}

serde_as_string!(BasisKind);

impl BasisKind {
    /// The first of the fitting settings `given` (name, whether it was
    /// given) that this basis would drop, with what is wrong: an own basis
    /// fits nothing before the search ([`LowDim::new`] records it as
    /// fitting nothing). `learned` is how the caller spells a learned
    /// basis, which fits one. Random and PCA bases record the settings.
    pub fn refuses_fitting<'a>(
        &self,
        given: [(&'a str, bool); 2],
        learned: &str,
    ) -> Option<(&'a str, String)> {
        let (name, _) = given.into_iter().find(|(_, given)| *given)?;
        (*self == Self::Own).then(|| {
            (
                name,
                format!(
                    "does not apply to an own basis, which fits nothing before the search ({learned} fits one)"
                ),
            )
        })
    }
}

/// Where a text's `z` starts under a basis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZStart {
    /// 0 (or `randn × std` for the `randn` initialisation) for every text.
    /// Runs recorded before this setting existed started so.
    #[default]
    Zero,
    /// The texts that fitted a learned basis start from their `z` at the
    /// end of the fit (which decodes them teacher-forced when the fit
    /// converged); every other text as `zero`.
    Fitted,
}

string_enum!(ZStart, "z start", { Fitted => "fitted", Zero => "zero" });

serde_as_string!(ZStart);

/// The low-dimensional setting, recorded with the engine's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LowDim {
    /// Size of each vector's `z`.
    pub k: usize,
    /// Where the basis comes from.
    pub basis: BasisKind,
    /// `learned`: how many of the run's first texts fit the basis.
    pub fit_texts: usize,
    /// `learned`: the fitting texts are cut to this many tokens (`None`:
    /// whole).
    pub fit_tokens: Option<usize>,
    /// Where a text's `z` starts (absent in settings recorded before it
    /// existed: `zero`, as those runs started).
    #[serde(default)]
    pub z_start: ZStart,
}

impl LowDim {
    /// The setting of these values. An own basis fits on nothing and
    /// starts every `z` from 0, so its fitting values are recorded as
    /// 1 text, whole texts and `zero`, whatever was asked.
    pub fn new(
        k: usize,
        basis: BasisKind,
        fit_texts: usize,
        fit_tokens: Option<usize>,
        z_start: ZStart,
    ) -> Self {
        let own = basis == BasisKind::Own;
        Self {
            k,
            basis,
            fit_texts: if own { 1 } else { fit_texts },
            fit_tokens: fit_tokens.filter(|_| !own),
            z_start: if own { ZStart::Zero } else { z_start },
        }
    }

    /// The first invalid setting for a model of input width `width`, as
    /// (field, what is wrong).
    pub fn invalid(&self, width: usize) -> Option<(&'static str, String)> {
        if self.k == 0 || self.k > width {
            return Some((
                "low_dim",
                format!("must be between 1 and the model's input width {width}"),
            ));
        }
        if self.fit_texts == 0 {
            return Some(("fit_texts", "must be at least 1".into()));
        }
        if self.fit_tokens == Some(0) {
            return Some(("fit_tokens", "must be at least 1".into()));
        }
        None
    }

    /// What of a text a learned basis fits on: its first `fit_tokens`
    /// tokens (all without a cut).
    pub fn fit_cut<'i>(&self, ids: &'i [u32]) -> &'i [u32] {
        &ids[..self.fit_tokens.map_or(ids.len(), |t| t.min(ids.len()))]
    }

    /// The first stage's target of a capacity search when none is given:
    /// the fitting length of a learned basis whose fitted texts start from
    /// their fitted `z` (which decode that prefix), none otherwise.
    pub fn default_start(&self) -> Option<usize> {
        (self.basis == BasisKind::Learned && self.z_start == ZStart::Fitted)
            .then_some(self.fit_tokens)
            .flatten()
    }
}

/// A basis: vector `r` of a text is `w z_r + b`, `w` row-major
/// `[width, k]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Basis {
    /// Size of `z`.
    pub k: usize,
    /// The model's input width.
    pub width: usize,
    /// The directions, row-major `[width, k]`.
    pub w: Vec<f32>,
    /// The offset.
    pub b: Vec<f32>,
    /// Joint optimisation steps that fitted it (0 for fixed bases).
    pub fit_steps: usize,
    /// A learned basis: the fitting texts' `z` at the end of the fit, by
    /// the text's index in the run.
    pub fitted_z: BTreeMap<usize, Vec<f32>>,
    /// The SHA-256 of the tokens each fitting text fitted on
    /// ([`memfile::tokens_sha256`] of the cut text), by index; empty in
    /// basis files written before it was recorded.
    pub fitted_tokens: BTreeMap<usize, String>,
}

/// What a basis file records beside the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BasisMeta {
    format: String,
    k: usize,
    width: usize,
    settings: LowDim,
    weights_sha256: String,
    fit_steps: usize,
    sha256: String,
    /// The indices of the rows of tensor `z` (the fitted `z`), absent when
    /// none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    fit_indices: Vec<usize>,
    /// SHA-256 of the fitted `z` and their indices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fitted_sha256: Option<String>,
    /// The tokens' SHA-256 of each text of `fit_indices`, in their order
    /// (absent in files written before it was recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    fit_tokens_sha256: Vec<String>,
}

/// The map `z ↦ W z + b` of a basis, over borrowed `W` (`[width, k]`,
/// row-major) and `b` (`[width]`): the one home of its arithmetic, for a
/// shared [`Basis`] and a text's own parameters alike.
#[derive(Debug, Clone, Copy)]
struct Linear<'a> {
    k: usize,
    width: usize,
    w: &'a [f32],
    b: &'a [f32],
}

impl Linear<'_> {
    /// `n` vectors from their `z`, row-major `[n, k]`.
    fn expand(&self, z: &[f32]) -> Vec<f32> {
        let (k, wd) = (self.k, self.width);
        let mut out = Vec::with_capacity(z.len() / k * wd);
        for zr in z.chunks_exact(k) {
            for (row, &bd) in self.w.chunks_exact(k).zip(self.b) {
                out.push(bd + row.iter().zip(zr).map(|(a, b)| a * b).sum::<f32>());
            }
        }
        out
    }

    /// `Wᵀ g`, row by row.
    fn project(&self, g: &[f32]) -> Vec<f32> {
        let k = self.k;
        let mut out = Vec::with_capacity(g.len() / self.width * k);
        for gr in g.chunks_exact(self.width) {
            let mut acc = vec![0f32; k];
            for (row, &gd) in self.w.chunks_exact(k).zip(gr) {
                for (a, &wv) in acc.iter_mut().zip(row) {
                    *a += wv * gd;
                }
            }
            out.extend(acc);
        }
        out
    }

    /// Adds the gradient with respect to `w` and `b` of a gradient `g` with
    /// respect to the vectors of `z` into `gw` and `gb`.
    fn accumulate(&self, z: &[f32], g: &[f32], gw: &mut [f32], gb: &mut [f32]) {
        let k = self.k;
        for (zr, gr) in z.chunks_exact(k).zip(g.chunks_exact(self.width)) {
            for ((row, b), &gd) in gw.chunks_exact_mut(k).zip(gb.iter_mut()).zip(gr) {
                *b += gd;
                for (wv, &zj) in row.iter_mut().zip(zr) {
                    *wv += gd * zj;
                }
            }
        }
    }
}

impl Basis {
    fn linear(&self) -> Linear<'_> {
        Linear {
            k: self.k,
            width: self.width,
            w: &self.w,
            b: &self.b,
        }
    }

    /// `n` vectors from their `z`, row-major `[n, k]`.
    pub fn expand(&self, z: &[f32]) -> Vec<f32> {
        self.linear().expand(z)
    }

    /// The gradient with respect to `z` of a gradient `g` with respect to
    /// the vectors (`Wᵀ g`, row by row).
    pub fn project(&self, g: &[f32]) -> Vec<f32> {
        self.linear().project(g)
    }

    /// Adds the gradient with respect to `w` and `b` of a gradient `g` with
    /// respect to the vectors of `z` into `gw` and `gb`.
    fn accumulate(&self, z: &[f32], g: &[f32], gw: &mut [f32], gb: &mut [f32]) {
        self.linear().accumulate(z, g, gw, gb)
    }

    /// Orthonormalised Gaussian columns from `seed`, scaled to norm
    /// `sqrt(width / k)`, around the offset `b`.
    pub fn random(seed: u64, width: usize, k: usize, b: Vec<f32>) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x6261_7369_735f_7731);
        let mut cols: Vec<Vec<f64>> = Vec::with_capacity(k);
        while cols.len() < k {
            let mut c: Vec<f64> = (0..width)
                .map(|_| StandardNormal.sample(&mut rng))
                .collect();
            for prev in &cols {
                let d: f64 = c.iter().zip(prev).map(|(a, b)| a * b).sum();
                c.iter_mut().zip(prev).for_each(|(a, p)| *a -= d * p);
            }
            let n = c.iter().map(|a| a * a).sum::<f64>().sqrt();
            if n > 1e-6 {
                c.iter_mut().for_each(|a| *a /= n);
                cols.push(c);
            }
        }
        Self::from_columns(&cols, b, width)
    }

    /// The first `k` principal directions of `points` (full vectors of
    /// width `width`) around their mean; `source` names them in errors.
    pub fn pca(points: &[Vec<f64>], k: usize, width: usize, source: &Path) -> Result<Self> {
        let bad = |msg: String| CramError::bad_file(source, msg);
        if points.iter().any(|p| p.len() != width) {
            return Err(bad(format!(
                "its vectors are not of this model's input width {width}"
            )));
        }
        let pca = crate::ablations::pca::Pca::fit(points, k).ok_or_else(|| {
            bad(format!(
                "{} vector(s): a PCA basis needs at least 2",
                points.len()
            ))
        })?;
        if pca.components.len() < k {
            return Err(bad(format!(
                "its {} vector(s) span only {} dimension(s), fewer than --low-dim {k} (a PCA basis of K directions needs at least K + 1 vectors)",
                points.len(),
                pca.components.len()
            )));
        }
        let b = pca.mean.iter().map(|&x| x as f32).collect();
        Ok(Self::from_columns(&pca.components, b, width))
    }

    fn from_columns(cols: &[Vec<f64>], b: Vec<f32>, width: usize) -> Self {
        let k = cols.len();
        let scale = (width as f64 / k as f64).sqrt();
        let mut w = vec![0f32; width * k];
        for (j, c) in cols.iter().enumerate() {
            for (d, &x) in c.iter().enumerate() {
                w[d * k + j] = (x * scale) as f32;
            }
        }
        Self {
            k,
            width,
            w,
            b,
            fit_steps: 0,
            fitted_z: BTreeMap::new(),
            fitted_tokens: BTreeMap::new(),
        }
    }

    /// The fitted `z` of text `index` of the run, if it fitted the basis
    /// on tokens of SHA-256 `tokens` (another text at the same index, in a
    /// run that reuses the basis, did not fit it; a basis file that does
    /// not record the tokens trusts the index).
    pub fn fitted(&self, index: usize, tokens: &str) -> Option<&[f32]> {
        let same = self.fitted_tokens.is_empty()
            || self.fitted_tokens.get(&index).is_some_and(|t| t == tokens);
        self.fitted_z
            .get(&index)
            .filter(|_| same)
            .map(Vec::as_slice)
    }

    /// SHA-256 of the fitted `z` and their indices.
    fn fitted_sha256(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for (i, z) in &self.fitted_z {
            h.update((*i as u64).to_le_bytes());
            h.update((z.len() as u64).to_le_bytes());
            for x in z {
                h.update(x.to_le_bytes());
            }
        }
        // Files without the tokens' SHA-256 keep the hash they were
        // written with.
        for t in self.fitted_tokens.values() {
            h.update(t.as_bytes());
        }
        format!("{:x}", h.finalize())
    }

    /// SHA-256 of the shape and numbers of `w` and `b` (the basis's
    /// identity, which vector files and run settings record).
    pub fn sha256(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update((self.k as u64).to_le_bytes());
        h.update((self.width as u64).to_le_bytes());
        for x in self.w.iter().chain(&self.b) {
            h.update(x.to_le_bytes());
        }
        format!("{:x}", h.finalize())
    }

    /// Writes the basis with the settings and model (weights SHA-256) it
    /// was made for (aside, then renamed).
    pub fn write(&self, path: &Path, settings: &LowDim, weights_sha256: &str) -> Result<()> {
        let meta = BasisMeta {
            format: BASIS_FORMAT.into(),
            k: self.k,
            width: self.width,
            settings: settings.clone(),
            weights_sha256: weights_sha256.into(),
            fit_steps: self.fit_steps,
            sha256: self.sha256(),
            fit_indices: self.fitted_z.keys().copied().collect(),
            fitted_sha256: (!self.fitted_z.is_empty()).then(|| self.fitted_sha256()),
            fit_tokens_sha256: self.fitted_tokens.values().cloned().collect(),
        };
        if !self.fitted_tokens.is_empty() && !self.fitted_tokens.keys().eq(self.fitted_z.keys()) {
            return Err(CramError::bad_file(
                path,
                "internal: fitted tokens of other texts than the fitted z",
            ));
        }
        let json = serde_json::to_string(&meta).map_err(|e| CramError::bad_file(path, e))?;
        let info = HashMap::from([(META_KEY.to_string(), json)]);
        let z: Vec<f32> = self.fitted_z.values().flatten().copied().collect();
        let len = self.fitted_z.values().next().map_or(0, Vec::len);
        if self.fitted_z.values().any(|r| r.len() != len) {
            return Err(CramError::bad_file(
                path,
                "internal: fitted z of different sizes",
            ));
        }
        let mut tensors = vec![
            ("w", F32View::new(vec![self.width, self.k], &self.w)),
            ("b", F32View::new(vec![self.width], &self.b)),
        ];
        if !z.is_empty() {
            tensors.push(("z", F32View::new(vec![self.fitted_z.len(), len], &z)));
        }
        memfile::write_tensors(path, tensors, info)
    }

    /// Reads a basis file, checking its numbers against its SHA-256.
    /// Returns the basis, the settings and the model's weights SHA-256 it
    /// was made for.
    pub fn read(path: &Path) -> Result<(Self, LowDim, String)> {
        let bad = |msg: String| CramError::bad_file(path, msg);
        let (tensors, info) = memfile::read_tensors(path, META_KEY, "cram (a basis file)")?;
        let meta: BasisMeta =
            serde_json::from_str(&info).map_err(|e| bad(format!("invalid basis metadata: {e}")))?;
        if meta.format != BASIS_FORMAT {
            return Err(bad(format!(
                "unsupported format `{}` (expected {BASIS_FORMAT})",
                meta.format
            )));
        }
        let take = |name: &str, shape: Vec<usize>| -> Result<Vec<f32>> {
            match tensors.get(name) {
                Some((s, v)) if *s == shape => Ok(v.clone()),
                Some((s, _)) => Err(bad(format!(
                    "tensor `{name}` has shape {s:?}, expected {shape:?}"
                ))),
                None => Err(bad(format!("no `{name}` tensor"))),
            }
        };
        let w = take("w", vec![meta.width, meta.k])?;
        let b = take("b", vec![meta.width])?;
        let mut fitted_z = BTreeMap::new();
        if !meta.fit_indices.is_empty() {
            let n = meta.fit_indices.len();
            let len = tensors
                .get("z")
                .map_or(0, |(s, _)| s.get(1).copied().unwrap_or(0));
            let z = take("z", vec![n, len])?;
            if len == 0 {
                return Err(bad("tensor `z` is empty".into()));
            }
            for (i, row) in meta.fit_indices.iter().zip(z.chunks_exact(len)) {
                fitted_z.insert(*i, row.to_vec());
            }
            if fitted_z.len() != n {
                return Err(bad("`fit_indices` repeats a text".into()));
            }
        }
        if !meta.fit_tokens_sha256.is_empty()
            && meta.fit_tokens_sha256.len() != meta.fit_indices.len()
        {
            return Err(bad(format!(
                "`fit_tokens_sha256` has {} entries for {} fitted texts",
                meta.fit_tokens_sha256.len(),
                meta.fit_indices.len()
            )));
        }
        let fitted_tokens = meta
            .fit_indices
            .iter()
            .copied()
            .zip(meta.fit_tokens_sha256.iter().cloned())
            .collect();
        let basis = Self {
            k: meta.k,
            width: meta.width,
            w,
            b,
            fit_steps: meta.fit_steps,
            fitted_z,
            fitted_tokens,
        };
        let damaged = |what: &str, sha: &str| {
            bad(format!(
                "its {what} do not match its recorded sha256 {sha} (a damaged file)"
            ))
        };
        if basis.sha256() != meta.sha256 {
            return Err(damaged("numbers", &meta.sha256));
        }
        match &meta.fitted_sha256 {
            Some(sha) if basis.fitted_sha256() != *sha => {
                return Err(damaged("fitted z", sha));
            }
            None if !basis.fitted_z.is_empty() => {
                return Err(bad("fitted z without `fitted_sha256`".into()));
            }
            _ => {}
        }
        Ok((basis, meta.settings, meta.weights_sha256))
    }
}

/// The basis file of a capacity database: `basis.safetensors` beside
/// `capacity.sqlite`, `basis-shard-I-of-N.safetensors` beside
/// `capacity-shard-I-of-N.sqlite`.
pub fn basis_file(db: &Path) -> PathBuf {
    let name = db.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let shard = name
        .strip_prefix("capacity-shard-")
        .and_then(|r| r.strip_suffix(".sqlite"));
    db.with_file_name(match shard {
        Some(s) => format!("basis-shard-{s}.safetensors"),
        None => BASIS_FILE.to_string(),
    })
}

/// A text's `z` at the start: `randn × std` from the text's seed stream for
/// the `randn` initialisation, 0 otherwise.
pub fn initial_z(engine: &Engine<'_>, index: usize, k: usize) -> Vec<f32> {
    let cfg = engine.config();
    let n = cfg.n_mem * k;
    match cfg.init {
        crate::engine::Init::Randn => {
            crate::engine::initial_vectors(cfg.seed, index, n, engine.model().info().embedding_std)
        }
        _ => vec![0.0; n],
    }
}

/// The full vectors of an earlier run, one point per vector: a capacity
/// run folder (its texts' horizon checkpoints) or a folder of `compress`
/// files.
pub fn points_of(dir: &Path) -> Result<Vec<Vec<f64>>> {
    let full_only = |what: &Path| {
        CramError::bad_file(
            what,
            "holds low-dimensional vectors; a PCA basis is fitted on full vectors",
        )
    };
    let db = dir.join(crate::capacity::store::CAPACITY_DB);
    let mut points = Vec::new();
    if db.is_file() {
        let store = crate::capacity::CapacityStore::open_read(&db)?;
        let settings = store.settings()?;
        let engine = settings.as_ref().map(|s| &s["engine"]);
        let low = engine.map(|e| &e["low_dim"]).filter(|l| !l.is_null());
        // An own basis's parameters hold their vectors.
        let own = match low {
            None => None,
            Some(l) if l["basis"] == "own" => l["k"].as_u64().map(|k| k as usize),
            Some(_) => return Err(full_only(&db)),
        };
        let n_mem = engine.and_then(|e| e["n_mem"].as_u64()).unwrap_or(1).max(1) as usize;
        for p in store.load()? {
            if p.horizon() == 0 {
                continue;
            }
            let params = &p.checkpoint.params;
            let vectors = match own {
                Some(k) => {
                    let width = Params::own_width(params.len(), n_mem, k);
                    Params::Own { k, width }.vectors(params)
                }
                None => Cow::Borrowed(params.as_slice()),
            };
            let w = vectors.len() / n_mem;
            points.extend(
                vectors
                    .chunks_exact(w.max(1))
                    .map(|r| r.iter().map(|&x| x as f64).collect()),
            );
        }
        return Ok(points);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| CramError::io(dir, e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "safetensors")
                && p.file_name().is_some_and(|n| n != BASIS_FILE)
        })
        .collect();
    files.sort();
    for f in files {
        let (v, meta) = memfile::read(&f)?;
        if meta
            .config
            .low_dim
            .as_ref()
            .is_some_and(|l| l.basis.is_shared())
        {
            return Err(full_only(&f));
        }
        points.extend(
            v.chunks_exact(meta.input_size)
                .map(|r| r.iter().map(|&x| x as f64).collect()),
        );
    }
    Ok(points)
}

/// What [`joint_grads`] finds.
#[derive(Debug, Clone)]
pub struct JointGrads {
    /// Per text, its mean loss.
    pub losses: Vec<f64>,
    /// Per text, its teacher-forced accuracy.
    pub accuracies: Vec<f64>,
    /// Per text, the gradient with respect to its `z`.
    pub z: Vec<Vec<f32>>,
    /// The gradient with respect to `w` and `b` (concatenated) of the sum of
    /// the texts' mean losses.
    pub basis: Vec<f32>,
}

/// One joint forward/backward of texts (tokens, embeddings) with their `z`
/// under `basis`.
pub fn joint_grads(
    engine: &Engine<'_>,
    basis: &Basis,
    zs: &[&[f32]],
    texts: &[(&[u32], &candle_core::Tensor)],
) -> Result<JointGrads> {
    let vectors: Vec<Vec<f32>> = zs.iter().map(|z| basis.expand(z)).collect();
    let items: Vec<StepItem<'_>> = vectors
        .iter()
        .zip(texts)
        .map(|(v, (ids, embeds))| StepItem {
            params: v,
            ids,
            embeds,
        })
        .collect();
    let outs = engine.step_vectors(&items)?;
    let mut gwb = vec![0f32; basis.w.len() + basis.b.len()];
    let (gw, gb) = gwb.split_at_mut(basis.w.len());
    let mut gz = Vec::with_capacity(zs.len());
    for (o, z) in outs.iter().zip(zs) {
        basis.accumulate(z, &o.grad, gw, gb);
        gz.push(basis.project(&o.grad));
    }
    Ok(JointGrads {
        losses: outs.iter().map(|o| o.loss).collect(),
        accuracies: outs.iter().map(|o| o.accuracy).collect(),
        z: gz,
        basis: gwb,
    })
}

/// Fits a learned basis from `start`: the `z` of `texts` (input position,
/// tokens) and the basis are optimised jointly with the engine's optimiser
/// and schedule until every text is right teacher-forced, the loss is not
/// finite, or the protocol's `max_steps`. The texts' last `z` (finite ones)
/// are kept in the basis's `fitted_z`, their tokens' SHA-256 in
/// `fitted_tokens`. `progress` gets the step and the
/// texts' mean accuracy.
pub fn learn(
    engine: &Engine<'_>,
    start: Basis,
    texts: &[(usize, Vec<u32>)],
    mut progress: impl FnMut(usize, f64),
) -> Result<Basis> {
    let mut basis = start;
    let embeds: Vec<candle_core::Tensor> = texts
        .iter()
        .map(|(_, ids)| engine.embed_tokens(ids))
        .collect::<Result<_>>()?;
    let mut zs: Vec<OptState> = texts
        .iter()
        .map(|(i, _)| OptState::start(initial_z(engine, *i, basis.k)))
        .collect();
    let mut wb = OptState::start([basis.w.clone(), basis.b.clone()].concat());
    let refs: Vec<(&[u32], &candle_core::Tensor)> = texts
        .iter()
        .zip(&embeds)
        .map(|((_, ids), e)| (ids.as_slice(), e))
        .collect();
    let max_steps = engine.config().optimizer.max_steps;
    for step in 0..max_steps {
        let z: Vec<&[f32]> = zs.iter().map(|s| s.params.as_slice()).collect();
        let g = joint_grads(engine, &basis, &z, &refs)?;
        basis.fit_steps = step + 1;
        let n = g.accuracies.len().max(1) as f64;
        progress(step + 1, g.accuracies.iter().sum::<f64>() / n);
        if g.accuracies.iter().all(|&a| a >= 1.0) || g.losses.iter().any(|l| !l.is_finite()) {
            break;
        }
        let lr = engine.config().lr_at(wb.t + 1);
        for (s, gz) in zs.iter_mut().zip(&g.z) {
            engine.update(s, gz, lr);
        }
        engine.update(&mut wb, &g.basis, lr);
        let (w, b) = wb.params.split_at(basis.w.len());
        basis.w = w.to_vec();
        basis.b = b.to_vec();
    }
    let kept: Vec<_> = texts
        .iter()
        .zip(zs)
        .filter(|(_, s)| s.params.iter().all(|x| x.is_finite()))
        .collect();
    basis.fitted_tokens = kept
        .iter()
        .map(|((i, ids), _)| (*i, memfile::tokens_sha256(ids)))
        .collect();
    basis.fitted_z = kept.into_iter().map(|((i, _), s)| (*i, s.params)).collect();
    Ok(basis)
}

/// The basis of `low` for `engine` (whose settings hold `low`): read from
/// `file` when it holds one made with the same settings for the same model
/// (so a resumed run keeps its basis), otherwise made (`learned` fitting on
/// `fit`, the run's first texts) and written to `file`.
pub fn prepare(
    engine: &Engine<'_>,
    low: &LowDim,
    weights_sha256: &str,
    fit: &[(usize, Vec<u32>)],
    file: &Path,
    progress: impl FnMut(usize, f64),
) -> Result<Basis> {
    let width = engine.model().info().input_size;
    if let Some((field, msg)) = low.invalid(width) {
        return Err(CramError::Input(format!(
            "invalid low-dimensional setting {field}: {msg}"
        )));
    }
    if file.exists() {
        let (basis, settings, sha) = Basis::read(file)?;
        if settings == *low && sha == weights_sha256 && basis.width == width {
            return Ok(basis);
        }
        return Err(CramError::bad_file(
            file,
            format!(
                "holds a basis made with other settings ({}, k {}) or for another model; use another output folder or remove it",
                settings.basis, settings.k
            ),
        ));
    }
    let offset = start_offset(engine);
    let basis = match &low.basis {
        BasisKind::Random => Basis::random(engine.config().seed, width, low.k, offset),
        BasisKind::Pca(dir) => Basis::pca(&points_of(dir)?, low.k, width, dir)?,
        BasisKind::Own => {
            return Err(CramError::Input(
                "internal: an own basis is every text's, not a shared one to prepare".into(),
            ))
        }
        BasisKind::Learned => {
            let start = Basis::random(engine.config().seed, width, low.k, offset);
            let texts: Vec<(usize, Vec<u32>)> = fit
                .iter()
                .take(low.fit_texts)
                .map(|(i, ids)| (*i, low.fit_cut(ids).to_vec()))
                .collect();
            if texts.is_empty() {
                return Err(CramError::Input(
                    "a learned basis needs at least one text to fit it".into(),
                ));
            }
            learn(engine, start, &texts, progress)?
        }
    };
    basis.write(file, low, weights_sha256)?;
    Ok(basis)
}

/// How a text's parameters are its vectors.
#[derive(Debug, Clone, Copy)]
pub enum Params<'b> {
    /// The parameters are the vectors.
    Full,
    /// Each vector's `z` under a basis shared by the run's texts.
    Shared(&'b Basis),
    /// `[z (n_mem × k), W (width × k, row-major), b (width)]`: the text's
    /// own basis ([`BasisKind::Own`]).
    Own {
        /// Size of each vector's `z`.
        k: usize,
        /// The model's input width.
        width: usize,
    },
}

impl Params<'_> {
    /// Own parameters as their basis (borrowed) and `z`.
    fn own_split(params: &[f32], k: usize, width: usize) -> (Linear<'_>, &[f32]) {
        let basis_len = (width * k + width).min(params.len());
        let (z, wb) = params.split_at(params.len() - basis_len);
        let (w, b) = wb.split_at((width * k).min(wb.len()));
        (Linear { k, width, w, b }, z)
    }

    /// The number of parameters of `n_mem` vectors of a model of input
    /// width `width`.
    pub fn count(&self, n_mem: usize, width: usize) -> usize {
        match self {
            Self::Full => n_mem * width,
            Self::Shared(b) => n_mem * b.k,
            Self::Own { k, width } => n_mem * k + width * k + width,
        }
    }

    /// The input width of own parameters of `len` numbers for `n_mem`
    /// vectors with `z` of size `k` (the inverse of [`Params::count`]).
    pub fn own_width(len: usize, n_mem: usize, k: usize) -> usize {
        len.saturating_sub(n_mem * k) / (k + 1)
    }

    /// The vectors of `params`.
    pub fn vectors<'p>(&self, params: &'p [f32]) -> Cow<'p, [f32]> {
        match self {
            Self::Full => Cow::Borrowed(params),
            Self::Shared(b) => Cow::Owned(b.expand(params)),
            Self::Own { k, width } => {
                let (b, z) = Self::own_split(params, *k, *width);
                Cow::Owned(b.expand(z))
            }
        }
    }

    /// The gradient with respect to `params` of a gradient `g` with
    /// respect to their vectors.
    pub fn pull_back(&self, params: &[f32], g: Vec<f32>) -> Vec<f32> {
        match self {
            Self::Full => g,
            Self::Shared(b) => b.project(&g),
            Self::Own { k, width } => {
                let (b, z) = Self::own_split(params, *k, *width);
                let mut out = b.project(&g);
                let mut gwb = vec![0f32; b.w.len() + b.b.len()];
                let (gw, gb) = gwb.split_at_mut(b.w.len());
                b.accumulate(z, &g, gw, gb);
                out.extend(gwb);
                out
            }
        }
    }

    /// What a vector file holds of `params`: the `z` under a shared basis
    /// (expanded with the basis file when read), the vectors otherwise.
    pub fn file_numbers<'p>(&self, params: &'p [f32]) -> Cow<'p, [f32]> {
        match self {
            Self::Shared(_) => Cow::Borrowed(params),
            _ => self.vectors(params),
        }
    }
}

/// The offset a `random` or learned basis starts from: the
/// initialisation's shared start (one vector), 0 for `randn`.
fn start_offset(engine: &Engine<'_>) -> Vec<f32> {
    let width = engine.model().info().input_size;
    match engine.shared_start() {
        Some(s) => s[..width].to_vec(),
        None => vec![0.0; width],
    }
}

/// The parameters text `index` starts from under its own basis: `z` as
/// [`initial_z`], `W` and `b` as the run's `random` basis (the same for
/// every text), so that its vectors start where a full vector starts.
pub fn own_start(engine: &Engine<'_>, index: usize, k: usize) -> Vec<f32> {
    let width = engine.model().info().input_size;
    let basis = Basis::random(engine.config().seed, width, k, start_offset(engine));
    let mut p = initial_z(engine, index, k);
    p.extend(basis.w);
    p.extend(basis.b);
    p
}

/// What a command runs when `--low-dim` and `--basis` are not given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowDimDefaults {
    /// The size of `z`; 0: full vectors.
    pub k: usize,
    /// The basis of low-dimensional vectors.
    pub basis: BasisKind,
    /// A learned basis fits on this many tokens of its texts (`None`:
    /// whole texts).
    pub fit_tokens: Option<usize>,
    /// Where a text's `z` starts under a learned basis.
    pub z_start: ZStart,
}

impl LowDimDefaults {
    /// `cram compress`: full vectors, the paper's measurement; with
    /// `--low-dim K` a learned basis fitted on whole texts.
    pub fn compress() -> Self {
        Self {
            k: 0,
            basis: BasisKind::Learned,
            fit_tokens: None,
            z_start: ZStart::Fitted,
        }
    }

    /// `cram capacity` and capacity sweeps: every text its own basis with
    /// `z` of size 32 (progressive cramming's default size). On SmolLM2-135M
    /// it reached 117.0 tokens on average where full vectors reached 45.1,
    /// in fewer steps, every horizon a plain vector (docs/capacity.md,
    /// *Every text its own basis*); a learned basis fits on
    /// [`CAPACITY_FIT_TOKENS`] tokens.
    pub fn capacity() -> Self {
        Self {
            k: 32,
            basis: BasisKind::Own,
            fit_tokens: Some(CAPACITY_FIT_TOKENS),
            z_start: ZStart::Fitted,
        }
    }
}

/// The `--low-dim` flags of `cram compress` and `cram capacity`.
#[cfg(feature = "clap")]
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LowDimArgs {
    /// Low-dimensional vectors: each vector is `W z + b` with `z` of size
    /// K, the basis `(W, b)` shared by the run's texts and saved with them
    /// (or, with --basis own, every text's own, trained with its z); 0:
    /// full vectors [default: full vectors for compress, 32 for capacity].
    #[arg(long = "low-dim", value_name = "K")]
    pub low_dim: Option<usize>,
    /// The basis: learned (fitted jointly with the run's first --batch
    /// texts, then frozen), random (fixed orthonormal directions),
    /// pca:DIR (the principal directions of the full vectors of an earlier
    /// compress folder or capacity run), or own (every text its own W and
    /// b, trained with its z; its files hold the vectors themselves)
    /// [default: learned for compress, own for capacity].
    #[arg(long, value_name = "BASIS")]
    pub basis: Option<BasisKind>,
    /// A learned basis is fitted on the first TOKENS tokens of its texts
    /// [default: whole texts for compress, 64 for capacity].
    #[arg(long, value_name = "TOKENS")]
    pub fit_tokens: Option<usize>,
    /// Where a text's `z` starts under a learned basis: fitted (the texts
    /// that fitted it start from their fitted `z`, the others from 0) or
    /// zero (every text from 0, as runs made before this flag)
    /// [default: fitted].
    #[arg(long, value_name = "START")]
    pub z_start: Option<ZStart>,
}

#[cfg(feature = "clap")]
impl LowDimArgs {
    /// The setting these flags ask for over the command's `defaults` (none:
    /// full vectors); a learned basis fits on `fit_texts` texts. A flag
    /// that the resulting setting would drop (a basis for full vectors,
    /// fitting flags for an own basis, which [`LowDim::new`] records as
    /// fitting nothing) is an error naming it. Random and PCA bases record
    /// the fitting flags as they always did, so their runs resume.
    pub fn setting(
        &self,
        fit_texts: usize,
        defaults: &LowDimDefaults,
    ) -> std::result::Result<Option<LowDim>, String> {
        let k = self.low_dim.unwrap_or(defaults.k);
        let fitting = [
            ("--fit-tokens", self.fit_tokens.is_some()),
            ("--z-start", self.z_start.is_some()),
        ];
        if k == 0 {
            let given = [("--basis", self.basis.is_some())]
                .into_iter()
                .chain(fitting)
                .find(|(_, given)| *given);
            return match given {
                Some((flag, _)) => Err(format!(
                    "{flag} applies to low-dimensional vectors, and --low-dim is 0 (full vectors)"
                )),
                None => Ok(None),
            };
        }
        let basis = self.basis.clone().unwrap_or(defaults.basis.clone());
        if let Some((flag, msg)) = basis.refuses_fitting(fitting, "--basis learned") {
            return Err(format!("{flag} {msg}"));
        }
        Ok(Some(LowDim::new(
            k,
            basis,
            fit_texts.max(1),
            self.fit_tokens.or(defaults.fit_tokens),
            self.z_start.unwrap_or(defaults.z_start),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Basis {
        Basis::random(7, 12, 3, (0..12).map(|i| i as f32 * 0.1).collect())
    }

    #[test]
    fn random_columns_are_orthogonal_with_the_full_space_step_norm() {
        let b = small();
        for i in 0..3 {
            for j in 0..3 {
                let d: f32 = (0..12).map(|r| b.w[r * 3 + i] * b.w[r * 3 + j]).sum();
                let want = if i == j { 12.0 / 3.0 } else { 0.0 };
                assert!((d - want).abs() < 1e-4, "column {i}·{j} = {d}");
            }
        }
        assert_eq!(b, Basis::random(7, 12, 3, b.b.clone()), "seeded");
        assert_ne!(b.w, Basis::random(8, 12, 3, b.b.clone()).w);
    }

    #[test]
    fn expansion_and_projection_are_adjoint() {
        let b = small();
        let z: Vec<f32> = (0..6).map(|i| (i as f32 - 2.5) * 0.3).collect();
        let g: Vec<f32> = (0..24).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.1).collect();
        let v = b.expand(&z);
        assert_eq!(v.len(), 24);
        // <expand(z) - b, g> = <z, project(g)>
        let lhs: f32 = v
            .iter()
            .zip(b.b.iter().cycle())
            .zip(&g)
            .map(|((v, b), g)| (v - b) * g)
            .sum();
        let rhs: f32 = z.iter().zip(b.project(&g)).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
        // d<expand(z), g>/dw = sum_r g_r z_rᵀ, d/db = sum_r g_r.
        let (mut gw, mut gb) = (vec![0f32; 36], vec![0f32; 12]);
        b.accumulate(&z, &g, &mut gw, &mut gb);
        assert!((gw[5 * 3 + 2] - (g[5] * z[2] + g[12 + 5] * z[5])).abs() < 1e-6);
        assert!((gb[4] - (g[4] + g[16])).abs() < 1e-6);
    }

    #[test]
    fn pca_bases_span_the_points_and_refuse_too_few() {
        let pts: Vec<Vec<f64>> = (0..5)
            .map(|i| {
                let t = i as f64;
                vec![1.0 + t, 2.0 - t, 3.0 + 2.0 * t, 0.5]
            })
            .collect();
        let src = Path::new("earlier-run");
        let b = Basis::pca(&pts, 1, 4, src).unwrap();
        // The points lie on one line: mean + z · w reproduces each.
        for p in &pts {
            let dir: Vec<f64> = (0..4).map(|d| b.w[d] as f64).collect();
            let n2: f64 = dir.iter().map(|x| x * x).sum();
            let z: f64 = p
                .iter()
                .zip(&b.b)
                .zip(&dir)
                .map(|((x, m), w)| (x - *m as f64) * w)
                .sum::<f64>()
                / n2;
            let back = b.expand(&[z as f32]);
            for (x, y) in p.iter().zip(back) {
                assert!((x - y as f64).abs() < 1e-4);
            }
        }
        let e = Basis::pca(&pts, 2, 4, src).unwrap_err().to_string();
        assert!(
            e.contains("earlier-run") && e.contains("span only 1"),
            "{e}"
        );
    }

    #[test]
    fn basis_files_round_trip_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BASIS_FILE);
        let mut b = small();
        let low = LowDim {
            k: 3,
            basis: BasisKind::Random,
            fit_texts: 1,
            fit_tokens: None,
            z_start: ZStart::Zero,
        };
        b.write(&path, &low, "abc").unwrap();
        let (back, settings, sha) = Basis::read(&path).unwrap();
        assert_eq!(
            (back, settings, sha.as_str()),
            (b.clone(), low.clone(), "abc")
        );
        // A learned basis keeps its texts' fitted z, by index, for the
        // tokens they fitted on.
        b.fitted_z = BTreeMap::from([(4, vec![0.5, -1.0, 2.0]), (9, vec![1.5, 0.0, -0.25])]);
        // As written before the tokens were recorded: the index is trusted.
        b.write(&path, &low, "abc").unwrap();
        let (back, _, _) = Basis::read(&path).unwrap();
        assert_eq!(back.fitted(9, "any"), Some(&[1.5, 0.0, -0.25][..]));
        assert_eq!(back, b);
        b.fitted_tokens = BTreeMap::from([(4, "t4".to_string()), (9, "t9".to_string())]);
        b.write(&path, &low, "abc").unwrap();
        let (back, _, _) = Basis::read(&path).unwrap();
        assert_eq!(back.fitted(9, "t9"), Some(&[1.5, 0.0, -0.25][..]));
        assert_eq!(back.fitted(9, "t4"), None, "another text at index 9");
        assert_eq!(back.fitted(5, "t9"), None);
        assert_eq!(back, b);
        let bytes = std::fs::read(&path).unwrap();
        // Damage at the file's end, then in a fitted z's numbers.
        let at = |pat: &[u8]| bytes.windows(pat.len()).position(|w| w == pat).unwrap();
        for pos in [
            bytes.len() - 3,
            at(&1.5f32.to_le_bytes()) + 3,
            at(b"t9") + 1,
        ] {
            let mut bad = bytes.clone();
            bad[pos] ^= 0x40;
            std::fs::write(&path, bad).unwrap();
            let e = Basis::read(&path).unwrap_err().to_string();
            assert!(e.contains(BASIS_FILE) && e.contains("sha256"), "{e}");
        }
    }

    #[test]
    fn a_learned_basis_starts_capacity_searches_at_its_fitting_length() {
        let mut low = LowDim {
            k: 3,
            basis: BasisKind::Learned,
            fit_texts: 2,
            fit_tokens: Some(64),
            z_start: ZStart::Fitted,
        };
        assert_eq!(low.default_start(), Some(64));
        low.z_start = ZStart::Zero;
        assert_eq!(low.default_start(), None);
        low.z_start = ZStart::Fitted;
        low.basis = BasisKind::Random;
        assert_eq!(low.default_start(), None);
        // Settings recorded before `z_start` existed read as `zero`.
        let old: LowDim =
            serde_json::from_str(r#"{"k":3,"basis":"learned","fit_texts":2,"fit_tokens":64}"#)
                .unwrap();
        assert_eq!(old.z_start, ZStart::Zero);
        assert_eq!("fitted".parse::<ZStart>().unwrap(), ZStart::Fitted);
        assert!("warm".parse::<ZStart>().is_err());
    }

    #[test]
    fn a_capacity_database_names_its_basis_file() {
        assert_eq!(
            basis_file(Path::new("run/capacity.sqlite")),
            Path::new("run/basis.safetensors")
        );
        assert_eq!(
            basis_file(Path::new("u/capacity-shard-1-of-3.sqlite")),
            Path::new("u/basis-shard-1-of-3.safetensors")
        );
    }

    #[test]
    fn an_own_basis_records_no_fitting() {
        let own = LowDim::new(32, BasisKind::Own, 8, Some(64), ZStart::Fitted);
        assert_eq!(
            (own.fit_texts, own.fit_tokens, own.z_start),
            (1, None, ZStart::Zero)
        );
        assert_eq!(own.default_start(), None);
        let learned = LowDim::new(32, BasisKind::Learned, 8, Some(64), ZStart::Fitted);
        assert_eq!(
            (learned.fit_texts, learned.fit_tokens, learned.z_start),
            (8, Some(64), ZStart::Fitted)
        );
    }

    #[cfg(feature = "clap")]
    #[test]
    fn flags_resolve_over_each_commands_defaults_and_refuse_what_they_would_ignore() {
        let flags =
            |low_dim, basis: Option<&str>, fit_tokens, z_start: Option<ZStart>| LowDimArgs {
                low_dim,
                basis: basis.map(|b| b.parse().unwrap()),
                fit_tokens,
                z_start,
            };
        let (compress, capacity) = (LowDimDefaults::compress(), LowDimDefaults::capacity());
        let none = LowDimArgs::default();
        assert_eq!(none.setting(8, &compress), Ok(None));
        let own = none.setting(8, &capacity).unwrap().unwrap();
        assert_eq!(own, LowDim::new(32, BasisKind::Own, 1, None, ZStart::Zero));
        assert_eq!(
            flags(Some(0), None, None, None).setting(8, &capacity),
            Ok(None)
        );
        let learned = flags(None, Some("learned"), None, None).setting(8, &capacity);
        assert_eq!(
            learned,
            Ok(Some(LowDim::new(
                32,
                BasisKind::Learned,
                8,
                Some(64),
                ZStart::Fitted
            )))
        );
        let cut = flags(Some(16), None, Some(32), Some(ZStart::Zero)).setting(4, &compress);
        assert_eq!(
            cut,
            Ok(Some(LowDim::new(
                16,
                BasisKind::Learned,
                4,
                Some(32),
                ZStart::Zero
            )))
        );
        let e = flags(Some(0), Some("own"), None, None).setting(8, &capacity);
        assert!(e.unwrap_err().contains("--basis"));
        let e = flags(None, Some("learned"), None, None).setting(8, &compress);
        assert!(e.unwrap_err().contains("--low-dim is 0"));
        let e = flags(None, None, Some(32), None)
            .setting(8, &capacity)
            .unwrap_err();
        assert!(e.contains("--fit-tokens") && e.contains("own"), "{e}");
        let e = flags(Some(8), Some("own"), None, Some(ZStart::Zero)).setting(8, &compress);
        assert!(e.unwrap_err().contains("--z-start"));
        // A random or PCA basis records them, as runs made before did.
        let random = flags(Some(8), Some("random"), Some(6), Some(ZStart::Zero));
        let low = random.setting(8, &capacity).unwrap().unwrap();
        assert_eq!((low.fit_tokens, low.z_start), (Some(6), ZStart::Zero));
    }

    #[test]
    fn own_parameters_expand_and_pull_back_as_their_basis() {
        let b = small();
        let z = [0.5f32, -1.0, 2.0, 0.25, 0.0, -0.5];
        let params: Vec<f32> = z.iter().chain(&b.w).chain(&b.b).copied().collect();
        let own = Params::Own { k: 3, width: 12 };
        assert_eq!(own.count(2, 12), params.len());
        assert_eq!(Params::own_width(params.len(), 2, 3), 12);
        assert_eq!(own.vectors(&params).as_ref(), b.expand(&z).as_slice());
        let g: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin()).collect();
        let back = own.pull_back(&params, g.clone());
        assert_eq!(&back[..6], b.project(&g).as_slice());
        let (mut gw, mut gb) = (vec![0f32; 36], vec![0f32; 12]);
        b.accumulate(&z, &g, &mut gw, &mut gb);
        assert_eq!(&back[6..42], gw.as_slice());
        assert_eq!(&back[42..], gb.as_slice());
        // Too few numbers: no panic, whatever comes out.
        let _ = own.vectors(&params[..5]);
    }

    #[test]
    fn basis_kinds_parse() {
        assert_eq!("learned".parse::<BasisKind>().unwrap(), BasisKind::Learned);
        assert_eq!(
            "pca:runs/a".parse::<BasisKind>().unwrap(),
            BasisKind::Pca("runs/a".into())
        );
        assert_eq!(BasisKind::Pca("x".into()).to_string(), "pca:x");
        assert_eq!("own".parse::<BasisKind>().unwrap(), BasisKind::Own);
        assert_eq!(BasisKind::Own.to_string(), "own");
        assert!(!BasisKind::Own.is_shared() && BasisKind::Learned.is_shared());
        assert!("pca:".parse::<BasisKind>().is_err());
        assert!("svd".parse::<BasisKind>().is_err());
    }
}
