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
use crate::generate::greedy_from_embeds;
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

impl std::str::FromStr for LossConvention {
    type Err = CramError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "full" => Ok(Self::Full),
            "paper" => Ok(Self::Paper),
            other => Err(CramError::Input(format!(
                "unknown loss convention `{other}` (expected full or paper)"
            ))),
        }
    }
}

impl std::fmt::Display for LossConvention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl LossConvention {
    /// Name as written in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Paper => "paper",
        }
    }

    /// Number of predicted tokens for a text of `t` tokens.
    pub fn n_predicted(self, t: usize) -> usize {
        match self {
            Self::Full => t,
            Self::Paper => t.saturating_sub(1),
        }
    }
}

/// AdamW and stopping settings, the one home of their defaults (the
/// paper's: lr 1e-2, betas (0.9, 0.9), weight decay 0.01, at most 5000
/// steps, patience 2000). A sweep configuration's `[optimizer]` table and
/// `cram compress`'s flags are this struct.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct OptimizerConfig {
    /// AdamW learning rate.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = OptimizerConfig::default().lr))]
    pub lr: f64,
    /// AdamW first-moment decay.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = OptimizerConfig::default().beta1))]
    pub beta1: f64,
    /// AdamW second-moment decay.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = OptimizerConfig::default().beta2))]
    pub beta2: f64,
    /// AdamW epsilon.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = OptimizerConfig::default().eps))]
    pub eps: f64,
    /// AdamW decoupled weight decay.
    #[cfg_attr(
        feature = "clap",
        arg(long, default_value_t = OptimizerConfig::default().weight_decay)
    )]
    pub weight_decay: f64,
    /// Linear learning-rate warm-up over this many steps (0: none).
    #[cfg_attr(
        feature = "clap",
        arg(long = "warmup", value_name = "STEPS", default_value_t = OptimizerConfig::default().warmup_steps)
    )]
    pub warmup_steps: usize,
    /// If set, the learning rate follows a cosine from `lr` down to this
    /// value over `max_steps` (after the warm-up); constant otherwise.
    #[cfg_attr(feature = "clap", arg(long))]
    pub min_lr: Option<f64>,
    /// Most optimisation steps per text (the paper's `num_iterations`).
    #[cfg_attr(
        feature = "clap",
        arg(long, default_value_t = OptimizerConfig::default().max_steps)
    )]
    pub max_steps: usize,
    /// Stop a text after this many steps without an accuracy improvement.
    #[cfg_attr(
        feature = "clap",
        arg(long, default_value_t = OptimizerConfig::default().patience)
    )]
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

/// Engine settings: the vectors, the loss, the seed and the optimiser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct CramConfig {
    /// Number of trainable vectors per text.
    #[cfg_attr(feature = "clap", arg(long = "mem", value_name = "N", default_value_t = CramConfig::default().n_mem))]
    pub n_mem: usize,
    /// AdamW and stopping settings (stored flat beside the other fields).
    #[serde(flatten)]
    #[cfg_attr(feature = "clap", command(flatten))]
    pub optimizer: OptimizerConfig,
    /// Which positions the loss covers: full (the vectors alone decode the
    /// text) or paper (the first text token is given).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = CramConfig::default().loss))]
    pub loss: LossConvention,
    /// Seed of the initial vectors.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = CramConfig::default().seed))]
    pub seed: u64,
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
            n_mem: 1,
            optimizer: OptimizerConfig::default(),
            loss: LossConvention::Full,
            seed: 42,
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
    /// The kept vectors, row-major `[n_mem, input_size]`.
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

/// Per-text optimisation state: f32 master vectors and AdamW moments.
struct Slot {
    ids: Vec<u32>,
    params: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    t: usize,
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

/// Greedy decoding from vectors `[n_mem, input_size]` alone (`full`), or
/// from the vectors and the text's first token (`paper`): `count` token ids.
pub fn decode_vectors(
    model: &dyn CausalLm,
    vectors: &[f32],
    n_mem: usize,
    loss: LossConvention,
    first_token: Option<u32>,
    count: usize,
) -> Result<Vec<u32>> {
    let dev = model.device();
    let h = model.info().input_size;
    if vectors.len() != n_mem * h {
        return Err(CramError::Input(format!(
            "{} vectors of width {} do not fit a model whose input width is {h}",
            n_mem,
            vectors.len() / n_mem.max(1)
        )));
    }
    let mem = Tensor::from_slice(vectors, (1, n_mem, h), dev)?.to_dtype(model.dtype())?;
    let prefix = match loss {
        LossConvention::Full => mem,
        LossConvention::Paper => {
            let first = first_token.ok_or_else(|| {
                CramError::Input("the paper convention needs the text's first token".into())
            })?;
            let e = model.embed(&Tensor::new(&[[first]], dev)?)?;
            Tensor::cat(&[&mem, &e], 1)?
        }
    };
    greedy_from_embeds(model, &prefix, count, &[])
}

/// The engine: a model and settings.
pub struct Engine<'a> {
    model: &'a dyn CausalLm,
    cfg: CramConfig,
}

impl<'a> Engine<'a> {
    /// An engine for `model` with settings `cfg`.
    pub fn new(model: &'a dyn CausalLm, cfg: CramConfig) -> Result<Self> {
        if cfg.n_mem == 0 {
            return Err(CramError::Input("n_mem must be at least 1".into()));
        }
        if let Some((field, msg)) = cfg.optimizer.invalid() {
            return Err(CramError::Input(format!(
                "invalid optimiser setting {field}: {msg}"
            )));
        }
        Ok(Self { model, cfg })
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
        if ids.len() + self.cfg.n_mem > ctx {
            return Err(CramError::Input(format!(
                "text has {} tokens; with {} vectors that exceeds the model's context length {ctx}",
                ids.len(),
                self.cfg.n_mem
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
        let model = self.model;
        let info = model.info();
        let h = info.input_size;
        let n = self.cfg.n_mem;
        let dev = model.device().clone();
        let mut slots: Vec<Slot> = texts
            .iter()
            .enumerate()
            .map(|(i, ids)| Slot {
                ids: ids.clone(),
                params: initial_vectors(self.cfg.seed, first_index + i, n * h, info.embedding_std),
                m: vec![0.0; n * h],
                v: vec![0.0; n * h],
                t: 0,
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
            .map(|ids| -> Result<Tensor> {
                Ok(model
                    .embed(&Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?)?
                    .squeeze(0)?)
            })
            .collect::<Result<_>>()?;
        let mut step = 0usize;
        loop {
            let live: Vec<usize> = (0..slots.len())
                .filter(|&i| slots[i].done.is_none())
                .collect();
            if live.is_empty() {
                break;
            }
            let (losses, accs, grads) = self.step(&slots, &live, &token_embeds)?;
            let elapsed = start.elapsed().as_secs_f64();
            for (k, &i) in live.iter().enumerate() {
                let s = &mut slots[i];
                let (loss, acc) = (losses[k], accs[k]);
                s.loss_curve.push(loss as f32);
                s.acc_curve.push(acc as f32);
                if !loss.is_finite() {
                    if s.best.is_none() {
                        // Not even the initial vectors had a finite loss.
                        s.best = Some((0.0, f64::INFINITY, step, s.params.clone()));
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
                    s.best = Some((acc, loss, step, s.params.clone()));
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
                    None => self.adamw(s, &grads[k]),
                }
            }
            step += 1;
            let nl = live.len() as f64;
            progress(&StepReport {
                step,
                live: slots.iter().filter(|s| s.done.is_none()).count(),
                total: slots.len(),
                mean_loss: losses.iter().sum::<f64>() / nl,
                mean_accuracy: accs.iter().sum::<f64>() / nl,
            });
        }
        slots.into_iter().map(|s| self.finish(s)).collect()
    }

    /// One forward/backward over the live texts: per-text loss, accuracy,
    /// and gradient of the text's mean loss with respect to its vectors.
    #[allow(clippy::type_complexity)]
    fn step(
        &self,
        slots: &[Slot],
        live: &[usize],
        token_embeds: &[Tensor],
    ) -> Result<(Vec<f64>, Vec<f64>, Vec<Vec<f32>>)> {
        let model = self.model;
        let dev = model.device();
        let dtype = model.dtype();
        let h = model.info().input_size;
        let n = self.cfg.n_mem;
        let seq = live.iter().map(|&i| slots[i].ids.len()).max().unwrap_or(0) + n;
        let mut vars = Vec::with_capacity(live.len());
        let mut rows = Vec::with_capacity(live.len());
        let mut mask = Vec::with_capacity(live.len() * seq);
        let mut gather = Vec::new();
        let mut labels = Vec::new();
        let mut owner = Vec::new();
        for (k, &i) in live.iter().enumerate() {
            let s = &slots[i];
            let t = s.ids.len();
            let var = Var::from_tensor(&Tensor::from_slice(&s.params, (n, h), dev)?)?;
            let mut parts = vec![var.as_tensor().to_dtype(dtype)?, token_embeds[i].clone()];
            if t + n < seq {
                parts.push(Tensor::zeros((seq - t - n, h), dtype, dev)?);
            }
            rows.push(Tensor::cat(&parts, 0)?);
            vars.push(var);
            mask.extend((0..seq).map(|p| if p < t + n { 1u32 } else { 0 }));
            let (first_pos, first_label) = match self.cfg.loss {
                LossConvention::Full => (n - 1, 0),
                LossConvention::Paper => (n, 1),
            };
            for (j, label) in (first_label..t).enumerate() {
                gather.push((k * seq + first_pos + j) as u32);
                labels.push(s.ids[label]);
                owner.push(k);
            }
        }
        let b = live.len();
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
        for ((&r, l), &o) in gather.iter().zip(&labels).zip(&owner) {
            if pred[r as usize] == *l {
                correct[o] += 1;
            }
        }
        let accs = (0..b)
            .map(|k| correct[k] as f64 / counts[k] as f64)
            .collect();
        let gs = vars
            .iter()
            .map(|var| -> Result<Vec<f32>> {
                let g = grads.get(var.as_tensor()).ok_or_else(|| {
                    CramError::Input("internal: no gradient reached the vectors".into())
                })?;
                Ok(g.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
            })
            .collect::<Result<_>>()?;
        Ok((losses.iter().map(|&x| x as f64).collect(), accs, gs))
    }

    /// One AdamW update (PyTorch's formulation, decoupled weight decay).
    fn adamw(&self, s: &mut Slot, g: &[f32]) {
        let c = &self.cfg.optimizer;
        s.t += 1;
        let t = s.t as f64;
        let lr = c.lr_at(s.t);
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

    /// Original metrics and decode-back for a stopped text.
    fn finish(&self, s: Slot) -> Result<CramResult> {
        let model = self.model;
        let n = self.cfg.n_mem;
        let (stop_reason, wall) = s.done.expect("every slot stops before finish");
        let (best_acc, best_loss, best_step, vectors) = s.best.expect("every slot ran a step");
        let (original_loss, original_accuracy, original_n_predicted) =
            original_metrics(model, &s.ids)?;
        let t = s.ids.len();
        let target = match self.cfg.loss {
            LossConvention::Full => &s.ids[..],
            LossConvention::Paper => &s.ids[1..],
        };
        let decoded_ids = decode_vectors(
            model,
            &vectors,
            n,
            self.cfg.loss,
            s.ids.first().copied(),
            target.len(),
        )?;
        let first_mismatch = decoded_ids
            .iter()
            .zip(target)
            .position(|(a, b)| a != b)
            .map(|p| p + t - target.len());
        Ok(CramResult {
            n_tokens: t,
            n_mem: n,
            n_predicted: self.cfg.loss.n_predicted(t),
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
            vectors,
            exact: first_mismatch.is_none() && decoded_ids.len() == target.len(),
            decoded_ids,
            first_mismatch,
        })
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
