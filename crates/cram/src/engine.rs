//! The optimiser engine: find, for each text of a batch, `n_mem` input
//! vectors from which the frozen model reproduces the text.
//!
//! Each text's vectors are prepended to its token embeddings and trained with
//! AdamW on the mean next-token cross-entropy over the text. Texts of
//! different lengths share a batch (right padding and an attention mask); a
//! text leaves the batch as soon as it stops, so later steps compute only
//! the live texts.

use std::time::Instant;

use candle_core::{DType, Tensor, Var, D};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::error::{CramError, Result};
use crate::layout::{Layout, Sink};
use crate::model::CausalLm;
use crate::ops;

/// Which positions the loss (and accuracy) covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LossConvention {
    /// The last vector predicts the first text token too: the vectors alone
    /// decode the whole text.
    #[default]
    Full,
    /// The paper's protocol: logits at the vector positions are dropped, so
    /// the first text token is given, not predicted.
    Paper,
}

string_enum!(LossConvention, "loss convention", { Full => "full", Paper => "paper" });

impl LossConvention {
    /// Number of predicted tokens for a text of `t` tokens.
    pub fn n_predicted(self, t: usize) -> usize {
        match self {
            Self::Full => t,
            Self::Paper => t.saturating_sub(1),
        }
    }
}

/// AdamW and stopping settings. `Default` is the paper's (and so the
/// `paper` protocol's) optimiser: lr 1e-2, betas (0.9, 0.9), weight decay
/// 0.01, at most 5000 steps, patience 2000. A sweep configuration's `[optimizer]` table is
/// this struct; `cram compress`'s flags override a protocol's values of it
/// ([`crate::protocol::CramArgs`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW first-moment decay.
    pub beta1: f64,
    /// AdamW second-moment decay.
    pub beta2: f64,
    /// AdamW epsilon.
    pub eps: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Linear learning-rate warm-up over this many steps (0: none).
    pub warmup_steps: usize,
    /// If set, the learning rate follows a cosine from `lr` down to this
    /// value over `max_steps` (after the warm-up); constant otherwise.
    pub min_lr: Option<f64>,
    /// Most optimisation steps per text (the paper's `num_iterations`).
    pub max_steps: usize,
    /// Stop a text after this many steps without an accuracy improvement.
    pub patience: usize,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.9,
            eps: 1e-8,
            weight_decay: 0.01,
            warmup_steps: 0,
            min_lr: None,
            max_steps: 5000,
            patience: 2000,
        }
    }
}

impl OptimizerConfig {
    /// The learning rate of update number `t` (1-based): linear warm-up over
    /// `warmup_steps`, then constant or a cosine down to `min_lr` at
    /// `max_steps`.
    pub fn lr_at(&self, t: usize) -> f64 {
        let t = t as f64;
        if self.warmup_steps > 0 && t < self.warmup_steps as f64 {
            return self.lr * t / self.warmup_steps as f64;
        }
        match self.min_lr {
            None => self.lr,
            Some(min) => {
                let span = (self.max_steps.saturating_sub(self.warmup_steps)).max(1) as f64;
                let x = ((t - self.warmup_steps as f64) / span).clamp(0.0, 1.0);
                min + 0.5 * (self.lr - min) * (1.0 + (std::f64::consts::PI * x).cos())
            }
        }
    }

    /// The first invalid setting, as (field, what is wrong): every number
    /// must be finite, `lr` and `eps` positive, `min_lr` and `weight_decay`
    /// non-negative, the betas in [0, 1).
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        if !self.lr.is_finite() || self.lr <= 0.0 {
            return Some(("lr", format!("{} must be a finite number > 0", self.lr)));
        }
        if let Some(m) = self.min_lr.filter(|m| !m.is_finite() || *m < 0.0) {
            return Some(("min_lr", format!("{m} must be a finite number >= 0")));
        }
        for (f, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Some((f, format!("{b} must be in [0, 1)")));
            }
        }
        if !self.eps.is_finite() || self.eps <= 0.0 {
            return Some(("eps", format!("{} must be a finite number > 0", self.eps)));
        }
        if !self.weight_decay.is_finite() || self.weight_decay < 0.0 {
            return Some((
                "weight_decay",
                format!("{} must be a finite number >= 0", self.weight_decay),
            ));
        }
        if self.max_steps == 0 {
            return Some(("max_steps", "must be at least 1".into()));
        }
        None
    }
}

/// How the vectors start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Init {
    /// `randn * std` of the token embeddings, a stream per text (the paper).
    #[default]
    Randn,
    /// The mean of all token embeddings, the same for every text.
    Mean,
    /// The embedding of this token id.
    Token(u32),
}

impl std::str::FromStr for Init {
    type Err = CramError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "randn" => Ok(Self::Randn),
            "mean" => Ok(Self::Mean),
            t => t
                .strip_prefix("token:")
                .and_then(|id| id.parse().ok())
                .map(Self::Token)
                .ok_or_else(|| {
                    CramError::Input(format!(
                        "unknown initialisation `{t}` (expected randn, mean or token:ID)"
                    ))
                }),
        }
    }
}

impl std::fmt::Display for Init {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Randn => f.write_str("randn"),
            Self::Mean => f.write_str("mean"),
            Self::Token(id) => write!(f, "token:{id}"),
        }
    }
}

serde_as_string!(Init);

/// Engine settings: the protocol they started from, the vectors, the
/// layout, the loss, the seed, the initialisation and the optimiser.
///
/// `Default` is the paper's optimiser with the `full` loss, no sink and
/// `randn` initialisation (the settings before protocols existed); programs
/// start from a [`Protocol`](crate::protocol::Protocol) instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CramConfig {
    /// The protocol these settings started from (`None` in files written
    /// before protocols existed); individual settings may differ from it.
    pub protocol: Option<crate::protocol::Protocol>,
    /// Number of trainable vectors per text.
    pub n_mem: usize,
    /// What stands in front of the vectors (files written before sinks
    /// existed read as `none`).
    #[serde(default = "Sink::none")]
    pub sink: Sink,
    /// How the vectors start.
    pub init: Init,
    /// AdamW and stopping settings (stored flat beside the other fields).
    #[serde(flatten)]
    pub optimizer: OptimizerConfig,
    /// Which positions the loss covers: full (the vectors alone decode the
    /// text) or paper (the first text token is given).
    pub loss: LossConvention,
    /// Seed of the initial vectors.
    pub seed: u64,
    /// Low-dimensional vectors (`W z + b`): none in full-dimensional runs
    /// (and then absent from the recorded settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_dim: Option<crate::lowdim::LowDim>,
}

impl CramConfig {
    /// The learning rate of update number `t` (1-based), see
    /// [`OptimizerConfig::lr_at`].
    pub fn lr_at(&self, t: usize) -> f64 {
        self.optimizer.lr_at(t)
    }
}

impl Default for CramConfig {
    fn default() -> Self {
        Self {
            protocol: None,
            n_mem: 1,
            sink: Sink::None,
            init: Init::Randn,
            optimizer: OptimizerConfig::default(),
            loss: LossConvention::Full,
            seed: 42,
            low_dim: None,
        }
    }
}

/// Why a text stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Accuracy reached 1.0.
    Converged,
    /// `max_steps` reached.
    MaxSteps,
    /// `patience` steps without an accuracy improvement.
    Patience,
    /// The loss became NaN or infinite (the kept vectors are those of the
    /// last finite step, or the initial ones).
    Diverged,
}

/// Everything the engine learns about one text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CramResult {
    /// Tokens in the text (BOS included when the tokenizer adds one).
    pub n_tokens: usize,
    /// Number of vectors.
    pub n_mem: usize,
    /// Tokens the loss covers.
    pub n_predicted: usize,
    /// Mean cross-entropy of the text without vectors (nats/token, over the
    /// `n_tokens - 1` tokens that have a preceding token).
    pub original_loss: f64,
    /// Accuracy without vectors over the same tokens.
    pub original_accuracy: f64,
    /// Tokens predicted without vectors.
    pub original_n_predicted: usize,
    /// Loss of the kept vectors.
    pub best_loss: f64,
    /// Accuracy of the kept vectors.
    pub best_accuracy: f64,
    /// Optimisation steps taken (forward passes with vectors).
    pub steps: usize,
    /// Step at which the kept vectors were seen (0-based).
    pub best_step: usize,
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// Seconds from the start of the batch to this text's stop.
    pub wall_time_s: f64,
    /// Loss at every step.
    pub loss_curve: Vec<f32>,
    /// Accuracy at every step.
    pub accuracy_curve: Vec<f32>,
    /// What a vector file holds of the kept parameters
    /// ([`crate::lowdim::Params::file_numbers`]): the vectors, row-major
    /// `[n_mem, input_size]`, or their `z` `[n_mem, k]` under a shared
    /// basis.
    #[serde(skip)]
    pub vectors: Vec<f32>,
    /// Greedy decoding from the vectors (and, for the paper convention, the
    /// first text token).
    pub decoded_ids: Vec<u32>,
    /// Whether the decoding equals the text.
    pub exact: bool,
    /// First decoded position (index into the text's tokens) that differs.
    pub first_mismatch: Option<usize>,
}

/// Progress of a batch, reported after every step.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// Steps done so far.
    pub step: usize,
    /// Texts still optimising.
    pub live: usize,
    /// Texts in the batch.
    pub total: usize,
    /// Mean loss of the live texts at this step.
    pub mean_loss: f64,
    /// Mean accuracy of the live texts at this step.
    pub mean_accuracy: f64,
}

/// The optimisation state of one text's vectors: the f32 master vectors
/// (row-major `[n_mem, input_size]`), AdamW's moments and its update count.
/// A warm start (`cram capacity`) carries it from one target to the next.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OptState {
    /// The vectors.
    pub params: Vec<f32>,
    /// AdamW's first moment.
    pub m: Vec<f32>,
    /// AdamW's second moment.
    pub v: Vec<f32>,
    /// Updates done so far (AdamW's bias corrections use it).
    pub t: usize,
}

impl OptState {
    /// Fresh moments around the vectors `params`.
    pub fn start(params: Vec<f32>) -> Self {
        let n = params.len();
        Self {
            params,
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }
}

/// One text of a forward/backward ([`Engine::step_batch`]): its vectors, its
/// token ids and their embeddings `[len, input_size]` (see
/// [`Engine::embed_tokens`]).
pub struct StepItem<'a> {
    /// The vectors, row-major `[n_mem, input_size]`.
    pub params: &'a [f32],
    /// The target tokens.
    pub ids: &'a [u32],
    /// Their embeddings.
    pub embeds: &'a Tensor,
}

/// What one forward/backward tells about one text.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// Mean loss over the predicted tokens.
    pub loss: f64,
    /// Teacher-forced accuracy over the predicted tokens.
    pub accuracy: f64,
    /// Leading tokens of the text predicted right (teacher-forced; the
    /// `paper` convention's given first token counts as right): the length
    /// of the prefix a greedy decoding reproduces, up to ties in the
    /// logits.
    pub correct_prefix: usize,
    /// Gradient of the mean loss with respect to the vectors.
    pub grad: Vec<f32>,
}

/// Per-text state of [`Engine::run`].
struct Slot {
    ids: Vec<u32>,
    state: OptState,
    best: Option<(f64, f64, usize, Vec<f32>)>,
    best_acc_step: usize,
    loss_curve: Vec<f32>,
    acc_curve: Vec<f32>,
    done: Option<(StopReason, f64)>,
}

/// Initial vectors: `randn * std`, from a seeded generator of our own (the
/// CPU device's generator cannot be seeded). Text `i` of a call uses the
/// stream `seed + i`, so a text gets the same start whatever batch it is in.
pub fn initial_vectors(seed: u64, index: usize, n: usize, std: f64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_add(index as u64));
    (0..n)
        .map(|_| {
            let z: f64 = StandardNormal.sample(&mut rng);
            (z * std) as f32
        })
        .collect()
}

/// Loss and accuracy of a text under the model without any vectors.
pub fn original_metrics(model: &dyn CausalLm, ids: &[u32]) -> Result<(f64, f64, usize)> {
    if ids.len() < 2 {
        return Ok((0.0, 1.0, 0));
    }
    let dev = model.device();
    let x = model.embed(&Tensor::new(ids, dev)?.unsqueeze(0)?)?;
    let logits = model.forward(&x, None)?.squeeze(0)?;
    let t = ids.len();
    let rows = logits.narrow(0, 0, t - 1)?;
    let (nll, pred) = ops::token_nll_argmax(&model.info().kernels, &rows, &ids[1..])?;
    let nll: Vec<f32> = nll.to_vec1()?;
    let correct = pred.iter().zip(&ids[1..]).filter(|(a, b)| a == b).count();
    let n = t - 1;
    Ok((
        nll.iter().map(|&x| x as f64).sum::<f64>() / n as f64,
        correct as f64 / n as f64,
        n,
    ))
}

/// One text to decode back: its vectors `[n_mem, input_size]` (row-major),
/// the text's first token (the `paper` convention gives it) and the number
/// of ids to decode.
pub struct DecodeItem<'v> {
    /// The vectors.
    pub vectors: &'v [f32],
    /// The text's first token, for the `paper` convention.
    pub first_token: Option<u32>,
    /// Ids to decode.
    pub count: usize,
}

/// Greedy decoding of a batch of texts from the layout's fixed prefix and
/// each text's vectors (`full`), or from these and the text's first token
/// (`paper`), all texts at once with one KV cache: each item's `count` ids.
pub fn decode_batch(
    model: &dyn CausalLm,
    layout: &Layout,
    n_mem: usize,
    loss: LossConvention,
    items: &[DecodeItem<'_>],
) -> Result<Vec<Vec<u32>>> {
    let dev = model.device();
    let h = model.info().input_size;
    let Some(max) = items.iter().map(|it| it.count).max() else {
        return Ok(Vec::new());
    };
    // `[1, H]` embedding of one token.
    let embed = |id: u32| -> Result<Tensor> {
        Ok(model
            .embed(&Tensor::new(&[id], dev)?.unsqueeze(0)?)?
            .squeeze(0)?)
    };
    let sink = layout.sink.map(embed).transpose()?;
    let mut rows = Vec::with_capacity(items.len());
    for it in items {
        if it.vectors.len() != n_mem * h {
            return Err(CramError::Input(format!(
                "{} vectors of width {} do not fit a model whose input width is {h}",
                n_mem,
                it.vectors.len() / n_mem.max(1)
            )));
        }
        let mem = Tensor::from_slice(it.vectors, (n_mem, h), dev)?.to_dtype(model.dtype())?;
        let mut parts: Vec<Tensor> = sink.iter().cloned().collect();
        parts.push(mem);
        if loss == LossConvention::Paper {
            let first = it.first_token.ok_or_else(|| {
                CramError::Input("the paper convention needs the text's first token".into())
            })?;
            parts.push(embed(first)?);
        }
        rows.push(Tensor::cat(&parts, 0)?);
    }
    let prefix = Tensor::stack(&rows, 0)?;
    let mut out = crate::generate::greedy_batch_from_embeds(model, &prefix, max)?;
    for (o, it) in out.iter_mut().zip(items) {
        o.truncate(it.count);
    }
    Ok(out)
}

/// Greedy decoding of one text, see [`decode_batch`].
pub fn decode_vectors(
    model: &dyn CausalLm,
    layout: &Layout,
    vectors: &[f32],
    n_mem: usize,
    loss: LossConvention,
    first_token: Option<u32>,
    count: usize,
) -> Result<Vec<u32>> {
    let item = DecodeItem {
        vectors,
        first_token,
        count,
    };
    Ok(decode_batch(model, layout, n_mem, loss, &[item])?
        .pop()
        .unwrap_or_default())
}

/// The mean of the model's input embeddings over its whole vocabulary.
pub fn mean_embedding(model: &dyn CausalLm) -> Result<Vec<f32>> {
    let info = model.info();
    let (v, h) = (info.vocab_size, info.input_size);
    let dev = model.device();
    let mut sum = Tensor::zeros(h, DType::F32, dev)?;
    let chunk = 4096;
    for start in (0..v).step_by(chunk) {
        let ids: Vec<u32> = (start..(start + chunk).min(v)).map(|i| i as u32).collect();
        let e = model.embed(&Tensor::new(ids.as_slice(), dev)?.unsqueeze(0)?)?;
        sum = (sum + e.to_dtype(DType::F32)?.squeeze(0)?.sum(0)?)?;
    }
    Ok((sum / v as f64)?.to_vec1()?)
}

/// The engine: a model, its layout and settings.
#[derive(Clone)]
pub struct Engine<'a> {
    model: &'a dyn CausalLm,
    cfg: CramConfig,
    layout: Layout,
    /// The sink's embedding `[1, input_size]`, if there is a sink.
    sink: Option<Tensor>,
    /// The start shared by every text (`mean` and `token` initialisation).
    start: Option<Vec<f32>>,
    /// The basis of low-dimensional settings, once attached.
    basis: Option<crate::lowdim::Basis>,
}

impl<'a> Engine<'a> {
    /// An engine for a loaded model with settings `cfg`; the sink setting
    /// is resolved with the model's tokenizer.
    pub fn new(m: &'a crate::model::LoadedModel, cfg: CramConfig) -> Result<Self> {
        let layout = cfg.sink.resolve(&m.tokenizer)?;
        Self::with_layout(m.model.as_ref(), cfg, layout)
    }

    /// An engine for `model` with settings `cfg` and `layout`, the
    /// resolution of `cfg.sink` for the model's tokenizer.
    pub fn with_layout(model: &'a dyn CausalLm, cfg: CramConfig, layout: Layout) -> Result<Self> {
        if cfg.n_mem == 0 {
            return Err(CramError::Input("n_mem must be at least 1".into()));
        }
        if let Some((field, msg)) = cfg.optimizer.invalid() {
            return Err(CramError::Input(format!(
                "invalid optimiser setting {field}: {msg}"
            )));
        }
        let info = model.info();
        let dev = model.device();
        let embed_one = |id: u32, what: &str| -> Result<Tensor> {
            if id as usize >= info.vocab_size {
                return Err(CramError::Input(format!(
                    "{what} token id {id} is outside the vocabulary ({} tokens)",
                    info.vocab_size
                )));
            }
            Ok(model.embed(&Tensor::new(&[[id]], dev)?)?.squeeze(0)?)
        };
        let sink = layout.sink.map(|id| embed_one(id, "sink")).transpose()?;
        let one = match cfg.init {
            Init::Randn => None,
            Init::Mean => Some(mean_embedding(model)?),
            Init::Token(id) => Some(
                embed_one(id, "initialisation")?
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1()?,
            ),
        };
        let start = one.map(|v| v.repeat(cfg.n_mem));
        Ok(Self {
            model,
            cfg,
            layout,
            sink,
            start,
            basis: None,
        })
    }

    /// Attaches the basis of the settings' low-dimensional vectors: the
    /// texts' parameters are then their `z`, expanded by every step and
    /// decode.
    pub fn with_basis(mut self, basis: crate::lowdim::Basis) -> Result<Self> {
        let width = self.model.info().input_size;
        match &self.cfg.low_dim {
            Some(l) if !l.basis.is_shared() => Err(CramError::Input(
                "an own basis is every text's; there is no shared basis to attach".into(),
            )),
            Some(l) if l.k == basis.k && basis.width == width => {
                self.basis = Some(basis);
                Ok(self)
            }
            Some(l) => Err(CramError::Input(format!(
                "the basis is {} × {}, but the settings ask for --low-dim {} on a model of input width {width}",
                basis.width, basis.k, l.k
            ))),
            None => Err(CramError::Input(
                "a basis needs low-dimensional settings (--low-dim)".into(),
            )),
        }
    }

    /// The attached basis (low-dimensional settings only).
    pub fn basis(&self) -> Option<&crate::lowdim::Basis> {
        self.basis.as_ref()
    }

    /// The start every text shares (`mean`, `token:ID`), one vector per
    /// `n_mem`, if the initialisation has one.
    pub fn shared_start(&self) -> Option<&[f32]> {
        self.start.as_deref()
    }

    /// How a text's parameters are its vectors under these settings; an
    /// error if a shared basis is needed and none is attached yet.
    pub fn params(&self) -> Result<crate::lowdim::Params<'_>> {
        use crate::lowdim::Params;
        match (&self.cfg.low_dim, &self.basis) {
            (None, _) => Ok(Params::Full),
            (Some(l), _) if !l.basis.is_shared() => Ok(Params::Own {
                k: l.k,
                width: self.model.info().input_size,
            }),
            (Some(_), Some(b)) => Ok(Params::Shared(b)),
            (Some(_), None) => Err(CramError::Input(
                "internal: low-dimensional settings but no basis attached (Engine::with_basis)"
                    .into(),
            )),
        }
    }

    /// The layout: what stands in front of the vectors.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The settings.
    pub fn config(&self) -> &CramConfig {
        &self.cfg
    }

    /// Checks a text's token ids before any compute.
    pub fn check_text(&self, ids: &[u32]) -> Result<()> {
        let min = match self.cfg.loss {
            LossConvention::Full => 1,
            LossConvention::Paper => 2,
        };
        if ids.len() < min {
            return Err(CramError::Input(format!(
                "text has {} tokens; the {} loss convention needs at least {min}",
                ids.len(),
                self.cfg.loss.as_str()
            )));
        }
        let ctx = self.model.info().context_length;
        if ids.len() + self.cfg.n_mem + self.layout.prefix_len() > ctx {
            return Err(CramError::Input(format!(
                "text has {} tokens; with {} vectors (and the layout's {} fixed token(s)) that exceeds the model's context length {ctx}",
                ids.len(),
                self.cfg.n_mem,
                self.layout.prefix_len()
            )));
        }
        Ok(())
    }

    /// Crams a batch of tokenised texts. `first_index` is the position of
    /// the batch's first text in the whole input (it selects the seed
    /// stream). `progress` is called after every step.
    pub fn run(
        &self,
        texts: &[Vec<u32>],
        first_index: usize,
        mut progress: impl FnMut(&StepReport),
    ) -> Result<Vec<CramResult>> {
        for ids in texts {
            self.check_text(ids)?;
        }
        let start = Instant::now();
        let mut slots: Vec<Slot> = texts
            .iter()
            .enumerate()
            .map(|(i, ids)| Slot {
                ids: ids.clone(),
                state: self.initial_state(first_index + i, ids),
                best: None,
                best_acc_step: 0,
                loss_curve: Vec::new(),
                acc_curve: Vec::new(),
                done: None,
            })
            .collect();
        // Token embeddings never change: compute them once per text.
        let token_embeds: Vec<Tensor> = texts
            .iter()
            .map(|ids| self.embed_tokens(ids))
            .collect::<Result<_>>()?;
        let mut step = 0usize;
        loop {
            let live: Vec<usize> = (0..slots.len())
                .filter(|&i| slots[i].done.is_none())
                .collect();
            if live.is_empty() {
                break;
            }
            let items: Vec<StepItem<'_>> = live
                .iter()
                .map(|&i| StepItem {
                    params: &slots[i].state.params,
                    ids: &slots[i].ids,
                    embeds: &token_embeds[i],
                })
                .collect();
            let outs = self.step_batch(&items)?;
            drop(items);
            let elapsed = start.elapsed().as_secs_f64();
            for (k, &i) in live.iter().enumerate() {
                let s = &mut slots[i];
                let (loss, acc) = (outs[k].loss, outs[k].accuracy);
                s.loss_curve.push(loss as f32);
                s.acc_curve.push(acc as f32);
                if !loss.is_finite() {
                    if s.best.is_none() {
                        // Not even the initial vectors had a finite loss.
                        s.best = Some((0.0, f64::INFINITY, step, s.state.params.clone()));
                    }
                    s.done = Some((StopReason::Diverged, elapsed));
                    continue;
                }
                let improved_acc = s.best.as_ref().is_none_or(|b| acc > b.0);
                let better = s
                    .best
                    .as_ref()
                    .is_none_or(|b| acc > b.0 || (acc == b.0 && loss < b.1));
                if improved_acc {
                    s.best_acc_step = step;
                }
                if better {
                    s.best = Some((acc, loss, step, s.state.params.clone()));
                }
                let stop = if acc >= 1.0 {
                    Some(StopReason::Converged)
                } else if step + 1 >= self.cfg.optimizer.max_steps {
                    Some(StopReason::MaxSteps)
                } else if step - s.best_acc_step >= self.cfg.optimizer.patience {
                    Some(StopReason::Patience)
                } else {
                    None
                };
                match stop {
                    Some(r) => s.done = Some((r, elapsed)),
                    None => {
                        let lr = self.cfg.lr_at(s.state.t + 1);
                        self.update(&mut s.state, &outs[k].grad, lr);
                    }
                }
            }
            step += 1;
            let nl = live.len() as f64;
            progress(&StepReport {
                step,
                live: slots.iter().filter(|s| s.done.is_none()).count(),
                total: slots.len(),
                mean_loss: outs.iter().map(|o| o.loss).sum::<f64>() / nl,
                mean_accuracy: outs.iter().map(|o| o.accuracy).sum::<f64>() / nl,
            });
        }
        self.finish(slots)
    }

    /// The starting state of text `index` of the input: the shared start
    /// (`mean`, `token:ID`) or `randn * std` from the text's seed stream;
    /// under low-dimensional settings its `z` (the fitted one when the
    /// settings ask for it and the text, of tokens `ids`, fitted the
    /// basis), or its own basis's parameters.
    pub fn initial_state(&self, index: usize, ids: &[u32]) -> OptState {
        let info = self.model.info();
        if let Some(l) = &self.cfg.low_dim {
            if !l.basis.is_shared() {
                return OptState::start(crate::lowdim::own_start(self, index, l.k));
            }
            let n = self.cfg.n_mem * l.k;
            let fitted = (l.z_start == crate::lowdim::ZStart::Fitted)
                .then(|| {
                    let tokens = crate::memfile::tokens_sha256(l.fit_cut(ids));
                    self.basis.as_ref().and_then(|b| b.fitted(index, &tokens))
                })
                .flatten()
                .filter(|z| z.len() == n);
            return OptState::start(match fitted {
                Some(z) => z.to_vec(),
                None => crate::lowdim::initial_z(self, index, l.k),
            });
        }
        OptState::start(match &self.start {
            Some(v) => v.clone(),
            None => initial_vectors(
                self.cfg.seed,
                index,
                self.cfg.n_mem * info.input_size,
                info.embedding_std,
            ),
        })
    }

    /// The embeddings `[len, input_size]` of token ids.
    pub fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        let dev = self.model.device();
        Ok(self
            .model
            .embed(&Tensor::new(ids, dev)?.unsqueeze(0)?)?
            .squeeze(0)?)
    }

    /// One forward/backward over a batch of texts (of any lengths): per
    /// text the loss, accuracy, correct prefix and gradient of the text's
    /// mean loss with respect to its parameters (its vectors, or its `z`
    /// under low-dimensional settings).
    pub fn step_batch(&self, items: &[StepItem<'_>]) -> Result<Vec<StepOutput>> {
        let params = self.params()?;
        if let crate::lowdim::Params::Full = params {
            return self.step_vectors(items);
        }
        let vectors: Vec<_> = items.iter().map(|it| params.vectors(it.params)).collect();
        let full: Vec<StepItem<'_>> = items
            .iter()
            .zip(&vectors)
            .map(|(it, v)| StepItem {
                params: v,
                ids: it.ids,
                embeds: it.embeds,
            })
            .collect();
        let mut outs = self.step_vectors(&full)?;
        for (o, it) in outs.iter_mut().zip(items) {
            o.grad = params.pull_back(it.params, std::mem::take(&mut o.grad));
        }
        Ok(outs)
    }

    /// [`Engine::step_batch`] on full vectors (`params` are vectors
    /// whatever the settings), the gradient with respect to them.
    pub fn step_vectors(&self, items: &[StepItem<'_>]) -> Result<Vec<StepOutput>> {
        let model = self.model;
        let dev = model.device();
        let dtype = model.dtype();
        let h = model.info().input_size;
        let n = self.cfg.n_mem;
        let p = self.layout.prefix_len();
        let seq = items.iter().map(|it| it.ids.len()).max().unwrap_or(0) + n + p;
        let mut vars = Vec::with_capacity(items.len());
        let mut rows = Vec::with_capacity(items.len());
        let mut mask = Vec::with_capacity(items.len() * seq);
        let mut gather = Vec::new();
        let mut labels = Vec::new();
        let mut owner = Vec::new();
        let (first_pos, first_label) = match self.cfg.loss {
            LossConvention::Full => (p + n - 1, 0),
            LossConvention::Paper => (p + n, 1),
        };
        for (k, it) in items.iter().enumerate() {
            let t = it.ids.len();
            let var = Var::from_tensor(&Tensor::from_slice(it.params, (n, h), dev)?)?;
            let mut parts: Vec<Tensor> = self.sink.iter().cloned().collect();
            parts.push(var.as_tensor().to_dtype(dtype)?);
            parts.push(it.embeds.clone());
            if t + n + p < seq {
                parts.push(Tensor::zeros((seq - t - n - p, h), dtype, dev)?);
            }
            rows.push(Tensor::cat(&parts, 0)?);
            vars.push(var);
            mask.extend((0..seq).map(|q| u32::from(q < t + n + p)));
            for (j, label) in (first_label..t).enumerate() {
                gather.push((k * seq + first_pos + j) as u32);
                labels.push(it.ids[label]);
                owner.push(k);
            }
        }
        let b = items.len();
        let x = Tensor::stack(&rows, 0)?;
        let mask = Tensor::from_vec(mask, (b, seq), dev)?;
        let logits = model.forward(&x, Some(&mask))?;
        let v = logits.dim(D::Minus1)?;
        // Every position gets a label; those that predict nothing (earlier
        // vectors, padding, the last token) are ignored by the fused loss.
        let mut row_labels = vec![ops::IGNORE_LABEL; b * seq];
        for (&r, &l) in gather.iter().zip(&labels) {
            row_labels[r as usize] = l;
        }
        let (nll, pred) = ops::token_nll_argmax(
            &model.info().kernels,
            &logits.reshape((b * seq, v))?,
            &row_labels,
        )?;
        // Per-text mean: a [b, b * seq] matrix of 1/count weights.
        let mut counts = vec![0usize; b];
        for &o in &owner {
            counts[o] += 1;
        }
        let m = b * seq;
        let mut w = vec![0f32; b * m];
        for (&r, &o) in gather.iter().zip(&owner) {
            w[o * m + r as usize] = 1.0 / counts[o] as f32;
        }
        let w = Tensor::from_vec(w, (b, m), dev)?;
        let per_text = w.matmul(&nll.unsqueeze(1)?)?.squeeze(1)?;
        let total = per_text.sum_all()?;
        let grads = total.backward()?;
        let losses: Vec<f32> = per_text.to_vec1()?;
        let mut correct = vec![0usize; b];
        // The first wrong label of each text (a text index), if any.
        let mut first_wrong: Vec<Option<usize>> = vec![None; b];
        let mut seen = vec![0usize; b];
        for ((&r, l), &o) in gather.iter().zip(&labels).zip(&owner) {
            if pred[r as usize] == *l {
                correct[o] += 1;
            } else if first_wrong[o].is_none() {
                first_wrong[o] = Some(first_label + seen[o]);
            }
            seen[o] += 1;
        }
        vars.iter()
            .enumerate()
            .map(|(k, var)| -> Result<StepOutput> {
                let g = grads.get(var.as_tensor()).ok_or_else(|| {
                    CramError::Input("internal: no gradient reached the vectors".into())
                })?;
                Ok(StepOutput {
                    loss: losses[k] as f64,
                    accuracy: correct[k] as f64 / counts[k] as f64,
                    correct_prefix: first_wrong[k].unwrap_or(items[k].ids.len()),
                    grad: g.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                })
            })
            .collect()
    }

    /// One AdamW update at learning rate `lr` (PyTorch's formulation,
    /// decoupled weight decay; the protocol's schedule gives `lr` as
    /// [`CramConfig::lr_at`] of `s.t + 1`).
    pub fn update(&self, s: &mut OptState, g: &[f32], lr: f64) {
        let c = &self.cfg.optimizer;
        s.t += 1;
        let t = s.t as f64;
        let bc1 = 1.0 - c.beta1.powf(t);
        let bc2 = 1.0 - c.beta2.powf(t);
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let step = (lr / bc1) as f32;
        let decay = (1.0 - lr * c.weight_decay) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let eps = c.eps as f32;
        for (((p, m), v), &gj) in s.params.iter_mut().zip(&mut s.m).zip(&mut s.v).zip(g) {
            *p *= decay;
            *m = b1 * *m + (1.0 - b1) * gj;
            *v = b2 * *v + (1.0 - b2) * gj * gj;
            let denom = v.sqrt() / bc2_sqrt + eps;
            *p -= step * *m / denom;
        }
    }

    /// Greedy decoding of a batch of texts from their vectors with this
    /// engine's layout, vector count and loss convention ([`decode_batch`]).
    pub fn decode(&self, items: &[DecodeItem<'_>]) -> Result<Vec<Vec<u32>>> {
        let params = self.params()?;
        let vectors: Vec<_> = items.iter().map(|it| params.vectors(it.vectors)).collect();
        let full: Vec<DecodeItem<'_>> = items
            .iter()
            .zip(&vectors)
            .map(|(it, v)| DecodeItem {
                vectors: v,
                first_token: it.first_token,
                count: it.count,
            })
            .collect();
        decode_batch(
            self.model,
            &self.layout,
            self.cfg.n_mem,
            self.cfg.loss,
            &full,
        )
    }

    /// The model.
    pub fn model(&self) -> &'a dyn CausalLm {
        self.model
    }

    /// Original metrics and decode-back (all texts at once) for the
    /// stopped texts.
    fn finish(&self, slots: Vec<Slot>) -> Result<Vec<CramResult>> {
        let model = self.model;
        let n = self.cfg.n_mem;
        let loss = self.cfg.loss;
        let skip = usize::from(loss == LossConvention::Paper);
        let items: Vec<DecodeItem<'_>> = slots
            .iter()
            .map(|s| DecodeItem {
                vectors: &s.best.as_ref().expect("every slot ran a step").3,
                first_token: s.ids.first().copied(),
                count: s.ids.len() - skip,
            })
            .collect();
        let decoded = self.decode(&items)?;
        drop(items);
        slots
            .into_iter()
            .zip(decoded)
            .map(|(s, decoded_ids)| {
                let (stop_reason, wall) = s.done.expect("every slot stops before finish");
                let (best_acc, best_loss, best_step, vectors) =
                    s.best.expect("every slot ran a step");
                let (original_loss, original_accuracy, original_n_predicted) =
                    original_metrics(model, &s.ids)?;
                let t = s.ids.len();
                let target = &s.ids[skip..];
                let first_mismatch = decoded_ids
                    .iter()
                    .zip(target)
                    .position(|(a, b)| a != b)
                    .map(|p| p + skip);
                Ok(CramResult {
                    n_tokens: t,
                    n_mem: n,
                    n_predicted: loss.n_predicted(t),
                    original_loss,
                    original_accuracy,
                    original_n_predicted,
                    best_loss,
                    best_accuracy: best_acc,
                    steps: s.loss_curve.len(),
                    best_step,
                    stop_reason,
                    wall_time_s: wall,
                    loss_curve: s.loss_curve,
                    accuracy_curve: s.acc_curve,
                    vectors: self.params()?.file_numbers(&vectors).into_owned(),
                    exact: first_mismatch.is_none() && decoded_ids.len() == target.len(),
                    decoded_ids,
                    first_mismatch,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{CramConfig, OptimizerConfig};

    #[test]
    fn learning_rate_schedule_warms_up_then_decays_along_a_cosine() {
        let c = CramConfig {
            optimizer: OptimizerConfig {
                lr: 0.1,
                warmup_steps: 10,
                max_steps: 110,
                min_lr: Some(0.01),
                ..OptimizerConfig::default()
            },
            ..CramConfig::default()
        };
        assert!((c.lr_at(5) - 0.05).abs() < 1e-12);
        assert!((c.lr_at(10) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(60) - 0.055).abs() < 1e-12, "half-way is the mean");
        assert!((c.lr_at(110) - 0.01).abs() < 1e-12);
        assert!((c.lr_at(500) - 0.01).abs() < 1e-12);
        let constant = CramConfig::default();
        assert_eq!(constant.lr_at(1), 0.01);
        assert_eq!(constant.lr_at(4000), 0.01);
    }
}
