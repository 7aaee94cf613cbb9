//! Shared building blocks of the architectures: linear layers, norms,
//! rotary position embeddings, attention with a KV cache, and MLPs.

use candle_core::{DType, Device, Tensor, D};

use crate::error::Result;
use crate::weights::Weights;
use crate::LayerState;
use cram_kernels::{fused, ops, Kernels};

/// A linear layer on constant weights (`[out, in]` plus optional bias).
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`.
    pub w: Tensor,
    /// `[out]`.
    pub b: Option<Tensor>,
    /// The kernels of the product.
    pub kernels: Kernels,
}

impl Linear {
    /// Loads `{prefix}.weight` (and `{prefix}.bias` when `bias`) of shape `[out, in]`.
    pub fn load(
        w: &Weights,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = w.get(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        let b = if bias {
            Some(w.get(&format!("{prefix}.bias"), &[out_dim])?)
        } else {
            None
        };
        Ok(Self {
            w: weight,
            b,
            kernels: w.kernels(),
        })
    }

    /// Wraps an existing weight (e.g. a tied embedding matrix).
    pub fn from_weight(w: Tensor, kernels: Kernels) -> Self {
        Self {
            w,
            b: None,
            kernels,
        }
    }

    /// `x @ w.T + b`; differentiable in `x` only.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::linear(&self.kernels, x, &self.w, self.b.as_ref())?)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.w.elem_count() + self.b.as_ref().map_or(0, Tensor::elem_count)
    }
}

/// Which normalisation a block uses.
#[derive(Debug, Clone)]
pub enum Norm {
    /// RMSNorm; `add_one` scales by `1 + w` (Gemma).
    Rms {
        /// Scale.
        w: Tensor,
        /// Epsilon.
        eps: f64,
        /// Scale by `1 + w`.
        add_one: bool,
        /// Fused or composed.
        kernels: Kernels,
    },
    /// LayerNorm with optional affine parameters.
    Layer {
        /// Scale.
        w: Option<Tensor>,
        /// Shift.
        b: Option<Tensor>,
        /// Epsilon.
        eps: f64,
    },
}

impl Norm {
    /// Loads an RMSNorm scale `{prefix}.weight` of shape `[dim]`.
    pub fn rms(w: &Weights, prefix: &str, dim: usize, eps: f64, add_one: bool) -> Result<Self> {
        Ok(Norm::Rms {
            w: w.get(&format!("{prefix}.weight"), &[dim])?,
            eps,
            add_one,
            kernels: w.kernels(),
        })
    }

    /// Loads a LayerNorm `{prefix}.weight`/`{prefix}.bias` of shape `[dim]`
    /// (`affine = false` for a non-parametric norm).
    pub fn layer(w: &Weights, prefix: &str, dim: usize, eps: f64, affine: bool) -> Result<Self> {
        let (weight, bias) = if affine {
            (
                Some(w.get(&format!("{prefix}.weight"), &[dim])?),
                w.get_opt(&format!("{prefix}.bias"), &[dim])?,
            )
        } else {
            (None, None)
        };
        Ok(Norm::Layer {
            w: weight,
            b: bias,
            eps,
        })
    }

    /// Applies the norm over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Rms {
                w,
                eps,
                add_one,
                kernels,
            } => Ok(ops::rms_norm(kernels, x, Some(w), *eps, *add_one)?),
            Norm::Layer { w, b, eps } => Ok(ops::layer_norm(x, w.as_ref(), b.as_ref(), *eps)?),
        }
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        match self {
            Norm::Rms { w, .. } => w.elem_count(),
            Norm::Layer { w, b, .. } => {
                w.as_ref().map_or(0, Tensor::elem_count) + b.as_ref().map_or(0, Tensor::elem_count)
            }
        }
    }
}

/// Rotary position embedding: inverse frequencies for the rotated part of
/// each head.
#[derive(Debug, Clone)]
pub struct Rotary {
    /// `rot_dim / 2` inverse frequencies.
    pub inv_freq: Vec<f32>,
}

/// Parameters of Llama 3's frequency-dependent rope scaling.
#[derive(Debug, Clone, Copy)]
pub struct Llama3Scaling {
    /// `factor`.
    pub factor: f64,
    /// `low_freq_factor`.
    pub low_freq_factor: f64,
    /// `high_freq_factor`.
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings`.
    pub original_max_position_embeddings: f64,
}

impl Rotary {
    /// Standard frequencies `base^(-2i/rot_dim)`, computed as `transformers`
    /// does (integer exponents, f32 result).
    pub fn new(base: f64, rot_dim: usize) -> Self {
        let inv_freq = (0..rot_dim)
            .step_by(2)
            .map(|i| (1.0 / base.powf(i as f64 / rot_dim as f64)) as f32)
            .collect();
        Self { inv_freq }
    }

    /// Divides every frequency by a factor (linear scaling, GGUF `rope_freqs`).
    pub fn scale_by(mut self, factors: &[f32]) -> Self {
        for (f, s) in self.inv_freq.iter_mut().zip(factors) {
            *f /= s;
        }
        self
    }

    /// Applies Llama 3's rope scaling (`rope_type = "llama3"`).
    pub fn llama3(mut self, s: Llama3Scaling) -> Self {
        let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
        let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
        for f in self.inv_freq.iter_mut() {
            let freq = *f as f64;
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let scaled = if wavelen > low_wavelen {
                freq / s.factor
            } else if wavelen < high_wavelen {
                freq
            } else {
                let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * freq / s.factor + smooth * freq
            };
            *f = scaled as f32;
        }
        self
    }

    /// `(cos, sin)` tables for positions `start..start + len`.
    pub fn tables(
        &self,
        start: usize,
        len: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<(Tensor, Tensor)> {
        Ok(ops::rope_tables(&self.inv_freq, start, len, dtype, dev)?)
    }
}

pub use cram_kernels::ops::attention_bias;

/// Appends new keys and values to a layer's cache along the position
/// dimension `dim` and returns all of them; without a cache, returns them
/// as they are.
fn cache_kv(
    state: Option<&mut LayerState>,
    k: Tensor,
    v: Tensor,
    dim: usize,
) -> Result<(Tensor, Tensor)> {
    let Some(st) = state else {
        return Ok((k, v));
    };
    let (k, v) = match std::mem::take(st) {
        LayerState::Kv { k: pk, v: pv } => {
            (Tensor::cat(&[&pk, &k], dim)?, Tensor::cat(&[&pv, &v], dim)?)
        }
        // An attention layer never holds a state-space state.
        LayerState::Empty | LayerState::Ssm { .. } => (k, v),
    };
    *st = LayerState::Kv {
        k: k.clone(),
        v: v.clone(),
    };
    Ok((k, v))
}

/// Multi-head attention with grouped-query heads, rotary embeddings, optional
/// per-head q/k norms and logit scaling.
#[derive(Debug, Clone)]
pub struct Attention {
    /// Query projection.
    pub q: Linear,
    /// Key projection.
    pub k: Linear,
    /// Value projection.
    pub v: Linear,
    /// Output projection.
    pub o: Linear,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Scale applied to the scores (`1/sqrt(head_dim)` by default).
    pub scale: f64,
    /// Per-head RMSNorm on queries (Gemma 3).
    pub q_norm: Option<Norm>,
    /// Per-head RMSNorm on keys (Gemma 3).
    pub k_norm: Option<Norm>,
    /// Sliding window size in tokens, if this layer is local.
    pub window: Option<usize>,
}

impl Attention {
    fn split_heads(&self, x: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        Ok(x.reshape((b, t, heads, self.head_dim))?.transpose(1, 2)?)
    }

    /// Repeats key/value heads for grouped-query attention.
    fn repeat_kv(&self, x: Tensor) -> Result<Tensor> {
        let rep = self.num_heads / self.num_kv_heads;
        if rep == 1 {
            return Ok(x);
        }
        let (b, kv, t, d) = x.dims4()?;
        Ok(x.unsqueeze(2)?
            .broadcast_as((b, kv, rep, t, d))?
            .reshape((b, kv * rep, t, d))?)
    }

    /// Attention over `x` `[B, T, hidden]`.
    ///
    /// `rope` holds the rotary `(cos, sin)` tables of the T positions (from
    /// [`Rotary::tables`], built once per forward by the model), if the model
    /// uses rotary embeddings; `bias` is the additive mask from
    /// [`attention_bias`]; `state`, when given, holds earlier keys/values
    /// and is extended.
    pub fn forward(
        &self,
        x: &Tensor,
        rope: Option<&(Tensor, Tensor)>,
        bias: &Tensor,
        state: Option<&mut LayerState>,
    ) -> Result<Tensor> {
        self.forward_clipped(x, rope, bias, state, None)
    }

    /// [`Attention::forward`], with the projected queries, keys and values
    /// clamped to `[-clip, clip]` when `clip_qkv` is given (OLMo's
    /// `clip_qkv`), before the heads are split and rotated.
    pub fn forward_clipped(
        &self,
        x: &Tensor,
        rope: Option<&(Tensor, Tensor)>,
        bias: &Tensor,
        state: Option<&mut LayerState>,
        clip_qkv: Option<f64>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let project = |l: &Linear| -> Result<Tensor> {
            let y = l.forward(x)?;
            match clip_qkv {
                Some(c) => Ok(ops::clamp(&y, -c, c)?),
                None => Ok(y),
            }
        };
        if self.q.kernels.applies(x) {
            return self.forward_fused(x, project, rope, bias, state);
        }
        let mut q = self.split_heads(&project(&self.q)?, self.num_heads)?;
        let mut k = self.split_heads(&project(&self.k)?, self.num_kv_heads)?;
        let v = self.split_heads(&project(&self.v)?, self.num_kv_heads)?;
        if let Some(n) = &self.q_norm {
            q = n.forward(&q)?;
        }
        if let Some(n) = &self.k_norm {
            k = n.forward(&k)?;
        }
        if let Some((cos, sin)) = rope {
            q = ops::apply_rope(&q, cos, sin)?;
            k = ops::apply_rope(&k, cos, sin)?;
        }
        let (k, v) = cache_kv(state, k, v, 2)?;
        let k = self.repeat_kv(k)?;
        let v = self.repeat_kv(v)?;
        let out = ops::attention(&q, &k, &v, bias, self.scale)?;
        let out = out
            .transpose(1, 2)?
            .reshape((b, t, self.num_heads * self.head_dim))?;
        self.o.forward(&out)
    }

    /// The CPU f32 path: queries, keys and values stay in the projections'
    /// `[B, T, heads * head_dim]` layout (and so does the KV cache), and the
    /// fused kernels of [`crate::fused`] do the rest.
    fn forward_fused(
        &self,
        x: &Tensor,
        project: impl Fn(&Linear) -> Result<Tensor>,
        rope: Option<&(Tensor, Tensor)>,
        bias: &Tensor,
        state: Option<&mut LayerState>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let d = self.head_dim;
        let per_head = |y: Tensor, norm: &Option<Norm>, heads: usize| -> Result<Tensor> {
            let y = match norm {
                Some(n) => n
                    .forward(&y.reshape((b, t, heads, d))?)?
                    .reshape((b, t, heads * d))?,
                None => y,
            };
            match rope {
                Some((cos, sin)) => Ok(fused::rope(&y, d, cos, sin)?),
                None => Ok(y),
            }
        };
        let q = per_head(project(&self.q)?, &self.q_norm, self.num_heads)?;
        let k = per_head(project(&self.k)?, &self.k_norm, self.num_kv_heads)?;
        let v = project(&self.v)?;
        let (k, v) = cache_kv(state, k, v, 1)?;
        let out = fused::attention(
            &self.q.kernels,
            &q,
            &k,
            &v,
            bias,
            self.num_heads,
            self.num_kv_heads,
            self.scale,
        )?;
        self.o.forward(&out)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        [&self.q, &self.k, &self.v, &self.o]
            .iter()
            .map(|l| l.num_params())
            .sum::<usize>()
            + self.q_norm.as_ref().map_or(0, Norm::num_params)
            + self.k_norm.as_ref().map_or(0, Norm::num_params)
    }
}

/// Activation functions used by the MLPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(x)`.
    Silu,
    /// Exact (erf) GELU.
    Gelu,
    /// Tanh-approximated GELU (`gelu_pytorch_tanh`, `gelu_new`).
    GeluTanh,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// Parses a `transformers` activation name.
    pub fn from_hf(name: &str) -> Option<Self> {
        Some(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            _ => return None,
        })
    }

    /// Applies the activation (differentiable).
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Silu => ops::silu(x)?,
            Activation::Gelu => ops::gelu_erf(x)?,
            Activation::GeluTanh => ops::gelu_tanh(x)?,
            Activation::Relu => ops::relu(x)?,
        })
    }
}

/// A gated MLP: `down(act(gate(x)) * up(x))` (Llama, Gemma).
#[derive(Debug, Clone)]
pub struct GatedMlp {
    /// Gate projection.
    pub gate: Linear,
    /// Up projection.
    pub up: Linear,
    /// Down projection.
    pub down: Linear,
    /// Activation on the gate.
    pub act: Activation,
}

impl GatedMlp {
    /// Loads `{prefix}.gate_proj`, `.up_proj`, `.down_proj`.
    pub fn load(
        w: &Weights,
        prefix: &str,
        hidden: usize,
        inter: usize,
        bias: bool,
        act: Activation,
    ) -> Result<Self> {
        Ok(Self {
            gate: Linear::load(w, &format!("{prefix}.gate_proj"), hidden, inter, bias)?,
            up: Linear::load(w, &format!("{prefix}.up_proj"), hidden, inter, bias)?,
            down: Linear::load(w, &format!("{prefix}.down_proj"), inter, hidden, bias)?,
            act,
        })
    }

    /// Applies the MLP.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.gate.forward(x)?;
        let u = self.up.forward(x)?;
        if self.act == Activation::Silu && self.down.kernels.applies(&g) {
            return self.down.forward(&fused::silu_mul(&g, &u)?);
        }
        self.down.forward(&(self.act.forward(&g)? * u)?)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.gate.num_params() + self.up.num_params() + self.down.num_params()
    }
}

/// Token embeddings: a lookup into a `[vocab, dim]` matrix.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// `[vocab, dim]`.
    pub w: Tensor,
}

impl Embedding {
    /// Embeddings of ids `[B, T]` (u32): `[B, T, dim]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = self.w.index_select(&ids.flatten_all()?, 0)?;
        Ok(flat.reshape((b, t, self.w.dim(1)?))?)
    }
}

/// Checks that the last dimension of `x` is `dim`.
pub fn expect_width(x: &Tensor, dim: usize) -> Result<()> {
    let got = x.dim(D::Minus1)?;
    if got != dim {
        return Err(crate::error::CramError::Input(format!(
            "input embeddings have width {got}, the model expects {dim}"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Blocks of the LayerNorm family (GPT-2, GPT-NeoX, OPT): fused and
// transposed projections, a plain two-layer MLP, learned absolute positions,
// and a transformer layer with pre-norm, post-norm or parallel residuals.
// ---------------------------------------------------------------------------

impl Activation {
    /// Parses the activation named by config field `field` of `source`, with
    /// an error naming both when it is not one cram implements.
    pub fn from_config(name: &str, source: &str, field: &str) -> Result<Self> {
        Self::from_hf(name).ok_or_else(|| {
            crate::error::CramError::bad_config(
                source,
                field,
                format!("unsupported activation `{name}`"),
            )
        })
    }
}

impl Linear {
    /// Loads a GPT-2 `Conv1D`: `{prefix}.weight` stored `[in, out]`
    /// (transposed relative to a linear layer) and optional `{prefix}.bias`.
    pub fn load_conv1d(
        w: &Weights,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = w.get_f32(&format!("{prefix}.weight"), &[in_dim, out_dim])?;
        let b = if bias {
            Some(w.get(&format!("{prefix}.bias"), &[out_dim])?)
        } else {
            None
        };
        Ok(Self {
            w: w.place(&weight.t()?.contiguous()?)?,
            b,
            kernels: w.kernels(),
        })
    }

    /// Splits a fused projection into consecutive blocks of output rows
    /// (e.g. a `[q; k; v]` projection into three).
    pub fn split_rows(&self, sizes: &[usize]) -> Result<Vec<Linear>> {
        let mut start = 0;
        let mut parts = Vec::with_capacity(sizes.len());
        for &n in sizes {
            parts.push(Linear {
                w: self.w.narrow(0, start, n)?.contiguous()?,
                b: match &self.b {
                    Some(b) => Some(b.narrow(0, start, n)?.contiguous()?),
                    None => None,
                },
                kernels: self.kernels,
            });
            start += n;
        }
        Ok(parts)
    }
}

/// A two-layer MLP: `proj(act(fc(x)))` (GPT-2, GPT-NeoX, OPT).
#[derive(Debug, Clone)]
pub struct Mlp {
    /// Up projection.
    pub fc: Linear,
    /// Down projection.
    pub proj: Linear,
    /// Activation between them.
    pub act: Activation,
}

impl Mlp {
    /// Applies the MLP.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj.forward(&self.act.forward(&self.fc.forward(x)?)?)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.fc.num_params() + self.proj.num_params()
    }
}

/// How a layer combines its attention and MLP with the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residual {
    /// `x += attn(n1(x)); x += mlp(n2(x))` (GPT-2, OPT by default, GPT-NeoX
    /// with `use_parallel_residual = false`).
    PreNorm,
    /// `x = n1(x + attn(x)); x = n2(x + mlp(x))` (OPT with
    /// `do_layer_norm_before = false`).
    PostNorm,
    /// `x += attn(n1(x)) + mlp(n2(x))` (GPT-NeoX's parallel residual).
    Parallel,
}

/// A transformer layer of the LayerNorm family: attention and a plain MLP,
/// each with its norm, joined by a [`Residual`] scheme.
#[derive(Debug, Clone)]
pub struct LnLayer {
    /// Norm of the attention branch.
    pub attn_norm: Norm,
    /// Self-attention.
    pub attn: Attention,
    /// Norm of the MLP branch.
    pub mlp_norm: Norm,
    /// The MLP.
    pub mlp: Mlp,
    /// How the branches join the residual stream.
    pub residual: Residual,
}

impl LnLayer {
    /// Applies the layer to `x` `[B, T, hidden]`; `rope`, `bias` and `state`
    /// as in [`Attention::forward`].
    pub fn forward(
        &self,
        x: &Tensor,
        rope: Option<&(Tensor, Tensor)>,
        bias: &Tensor,
        state: Option<&mut LayerState>,
    ) -> Result<Tensor> {
        Ok(match self.residual {
            Residual::PreNorm => {
                let a = self
                    .attn
                    .forward(&self.attn_norm.forward(x)?, rope, bias, state)?;
                let x = (x + a)?;
                let m = self.mlp.forward(&self.mlp_norm.forward(&x)?)?;
                (x + m)?
            }
            Residual::PostNorm => {
                let a = self.attn.forward(x, rope, bias, state)?;
                let x = self.attn_norm.forward(&(x + a)?)?;
                let m = self.mlp.forward(&x)?;
                self.mlp_norm.forward(&(x + m)?)?
            }
            Residual::Parallel => {
                let a = self
                    .attn
                    .forward(&self.attn_norm.forward(x)?, rope, bias, state)?;
                let m = self.mlp.forward(&self.mlp_norm.forward(x)?)?;
                ((x + a)? + m)?
            }
        })
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.attn_norm.num_params()
            + self.attn.num_params()
            + self.mlp_norm.num_params()
            + self.mlp.num_params()
    }
}

/// A pre-norm layer with a gated MLP (Llama, OLMo): `x + attn(norm(x))`,
/// then `x + mlp(norm(x))`.
#[derive(Debug, Clone)]
pub struct GatedLayer {
    /// Norm before attention.
    pub input_norm: Norm,
    /// Self-attention.
    pub attn: Attention,
    /// Norm before the MLP.
    pub post_norm: Norm,
    /// The gated MLP.
    pub mlp: GatedMlp,
}

/// Runs `x` through pre-norm gated `layers` with the rotary tables `rope`,
/// each with its entry of `state` when decoding incrementally; queries, keys
/// and values are clamped to `clip_qkv` when given (OLMo).
pub fn run_gated_layers(
    layers: &[GatedLayer],
    mut x: Tensor,
    rope: &(Tensor, Tensor),
    bias: &Tensor,
    mut state: Option<&mut crate::DecodeState>,
    clip_qkv: Option<f64>,
) -> Result<Tensor> {
    for (i, l) in layers.iter().enumerate() {
        let st = state.as_deref_mut().map(|s| &mut s.layers[i]);
        let h = l.input_norm.forward(&x)?;
        let a = l.attn.forward_clipped(&h, Some(rope), bias, st, clip_qkv)?;
        x = (x + a)?;
        let m = l.mlp.forward(&l.post_norm.forward(&x)?)?;
        x = (x + m)?;
    }
    Ok(x)
}

/// Runs `x` through `layers` in order, each with its entry of `state` when
/// decoding incrementally.
pub fn run_ln_layers(
    layers: &[LnLayer],
    mut x: Tensor,
    rope: Option<&(Tensor, Tensor)>,
    bias: &Tensor,
    mut state: Option<&mut crate::DecodeState>,
) -> Result<Tensor> {
    for (i, l) in layers.iter().enumerate() {
        let st = state.as_deref_mut().map(|s| &mut s.layers[i]);
        x = l.forward(&x, rope, bias, st)?;
    }
    Ok(x)
}

/// Learned absolute position embeddings (GPT-2's `wpe`, OPT's
/// `embed_positions`, whose first `offset` = 2 rows are never used by
/// real positions).
#[derive(Debug, Clone)]
pub struct LearnedPositions {
    /// `[offset + max_positions, dim]`.
    pub emb: Embedding,
    /// Row of position 0.
    pub offset: usize,
}

impl LearnedPositions {
    /// Number of positions the table covers.
    pub fn max_positions(&self) -> Result<usize> {
        Ok(self.emb.w.dim(0)? - self.offset)
    }

    /// Embeddings `[B, T, dim]` of positions `[B, T]` (i64; `-offset..`
    /// are valid, as OPT gives padding position -1).
    pub fn forward(&self, positions: &[Vec<i64>]) -> Result<Tensor> {
        let max = self.max_positions()?;
        let b = positions.len();
        let t = positions.first().map_or(0, Vec::len);
        let mut rows = Vec::with_capacity(b * t);
        for p in positions.iter().flatten() {
            let row = p + self.offset as i64;
            if row < 0 || *p >= max as i64 {
                return Err(crate::error::CramError::Input(format!(
                    "position {p} is beyond the model's {max} learned positions"
                )));
            }
            rows.push(row as u32);
        }
        let ids = Tensor::from_vec(rows, (b, t), self.emb.w.device())?;
        self.emb.forward(&ids)
    }

    /// Positions `start..start + t` for each of `b` rows.
    pub fn consecutive(b: usize, start: usize, t: usize) -> Vec<Vec<i64>> {
        vec![(start as i64..(start + t) as i64).collect(); b]
    }
}

// ---- Loading helpers shared by the Llama-layout architectures (Llama, OLMo) ----

/// Undoes llama.cpp's Q/K row permutation (interleaved rotary layout) so the
/// weights match `transformers`' half-split layout.
pub fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    Ok(w.reshape((heads, out / heads / 2, 2, inp))?
        .transpose(1, 2)?
        .reshape((out, inp))?)
}

impl Linear {
    /// [`Linear::load`] for a projection whose rows llama.cpp's converter
    /// permutes in GGUF files (Llama's and OLMo's q/k, `heads` given): from
    /// a GGUF store the permutation is undone. `heads = None` loads as is.
    pub fn load_rotary(
        w: &Weights,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        heads: Option<usize>,
    ) -> Result<Self> {
        let mut lin = Self::load(w, prefix, in_dim, out_dim, bias)?;
        if let (Some(heads), true) = (heads, w.is_gguf()) {
            let wf = w.get_f32(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
            lin.w = w.place(&unpermute(&wf, heads)?)?;
            if let Some(b) = w.get_f32_opt(&format!("{prefix}.bias"), &[out_dim])? {
                let b = unpermute(&b.reshape((out_dim, 1))?, heads)?.reshape(out_dim)?;
                lin.b = Some(w.place(&b)?);
            }
        }
        Ok(lin)
    }
}
