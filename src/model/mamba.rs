//! Mamba (selective state-space model, `state-spaces/mamba-*-hf`,
//! `transformers`' `MambaForCausalLM`): RMSNorm blocks whose mixer is a
//! gated causal depthwise convolution followed by a selective scan.
//!
//! The scan runs on the CPU as a custom op with a hand-written backward
//! (recomputing the states per channel), and elsewhere as a loop of candle
//! ops; the convolution is a sum of shifted, scaled copies of its input.
//! Both are differentiable with respect to the input embeddings.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::blocks::{expect_width, Activation, Embedding, Linear, Norm};
use super::hparams::{Gguf, Json};
use super::{tensor_std, CausalLm, DecodeState, LayerState, ModelInfo};
use crate::error::{CramError, Result};
use crate::weights::Weights;

/// The context length reported for Mamba, which has none (the value
/// llama.cpp's converter writes).
pub const MAMBA_CONTEXT_LENGTH: usize = 1 << 20;

/// Hyper-parameters of a Mamba model.
#[derive(Debug, Clone)]
pub struct MambaConfig {
    /// Residual width (`d_model`).
    pub hidden_size: usize,
    /// Width of the mixer (`d_inner = expand * d_model`).
    pub intermediate_size: usize,
    /// State size per channel (`d_state`).
    pub state_size: usize,
    /// Width of the causal convolution (`d_conv`).
    pub conv_kernel: usize,
    /// Rank of the time-step projection (`dt_rank`).
    pub time_step_rank: usize,
    /// Blocks.
    pub num_layers: usize,
    /// Vocabulary size (rows of the embedding matrix).
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub layer_norm_epsilon: f64,
    /// Biases on the input and output projections.
    pub use_bias: bool,
    /// Bias on the convolution.
    pub use_conv_bias: bool,
    /// Keep the residual stream in f32 whatever the compute dtype.
    pub residual_in_fp32: bool,
    /// Output head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Activation after the convolution (`hidden_act`).
    pub act: Activation,
}

impl MambaConfig {
    /// Reads a `transformers` `config.json` (`model_type = "mamba"`).
    pub fn from_json(c: &Json) -> Result<Self> {
        let hidden_size = c.usize("hidden_size")?;
        // transformers always derives intermediate_size from expand.
        let intermediate_size = match c.opt_usize("expand")? {
            Some(e) => e * hidden_size,
            None => c.opt_usize("intermediate_size")?.unwrap_or(2 * hidden_size),
        };
        let time_step_rank = match c.raw("time_step_rank") {
            None => hidden_size.div_ceil(16),
            Some(serde_json::Value::String(s)) if s == "auto" => hidden_size.div_ceil(16),
            Some(_) => c.usize("time_step_rank").map_err(|_| {
                CramError::bad_config(
                    c.path().display(),
                    "time_step_rank",
                    "expected a positive integer or \"auto\"",
                )
            })?,
        };
        let act_name = c.opt_str("hidden_act")?.unwrap_or_else(|| "silu".into());
        let act = Activation::from_hf(&act_name).ok_or_else(|| {
            CramError::bad_config(
                c.path().display(),
                "hidden_act",
                format!("unsupported `{act_name}`"),
            )
        })?;
        let cfg = Self {
            hidden_size,
            intermediate_size,
            state_size: c.opt_usize("state_size")?.unwrap_or(16),
            conv_kernel: c.opt_usize("conv_kernel")?.unwrap_or(4),
            time_step_rank,
            num_layers: c.usize("num_hidden_layers")?,
            vocab_size: c.usize("vocab_size")?,
            layer_norm_epsilon: c.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
            use_bias: c.opt_bool("use_bias")?.unwrap_or(false),
            use_conv_bias: c.opt_bool("use_conv_bias")?.unwrap_or(true),
            residual_in_fp32: c.opt_bool("residual_in_fp32")?.unwrap_or(true),
            tie_word_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(true),
            act,
        };
        cfg.validate(&c.path().display().to_string())?;
        Ok(cfg)
    }

    /// Reads GGUF metadata (`mamba.*`, as llama.cpp's converter writes it).
    /// Biases and tied embeddings are detected from the tensors present.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let tensors = &g.content().tensor_infos;
        let vocab_size = tensors
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| CramError::BadTensor {
                path: g.path().to_path_buf(),
                tensor: "token_embd.weight".into(),
                msg: "missing".into(),
            })?;
        let cfg = Self {
            hidden_size: g.usize("embedding_length")?,
            intermediate_size: g.usize("ssm.inner_size")?,
            state_size: g.usize("ssm.state_size")?,
            conv_kernel: g.usize("ssm.conv_kernel")?,
            time_step_rank: g.usize("ssm.time_step_rank")?,
            num_layers: g.usize("block_count")?,
            vocab_size,
            layer_norm_epsilon: g
                .opt_f64("attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-5),
            use_bias: tensors.contains_key("blk.0.ssm_in.bias"),
            use_conv_bias: tensors.contains_key("blk.0.ssm_conv1d.bias"),
            residual_in_fp32: true,
            tie_word_embeddings: !tensors.contains_key("output.weight"),
            act: Activation::Silu,
        };
        cfg.validate(&format!("{} (GGUF metadata)", g.path().display()))?;
        Ok(cfg)
    }

    fn validate(&self, source: &str) -> Result<()> {
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("state_size", self.state_size),
            ("conv_kernel", self.conv_kernel),
            ("time_step_rank", self.time_step_rank),
        ] {
            if v == 0 {
                return Err(CramError::bad_config(source, field, "must be positive"));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Selective scan
// ---------------------------------------------------------------------------

/// Sizes of a packed scan input `[B, T, 2 * di + 2 * n]` holding, per
/// position, `u` (`di`), `delta` (`di`), `B` (`n`) and `C` (`n`).
#[derive(Debug, Clone, Copy)]
struct ScanDims {
    b: usize,
    t: usize,
    di: usize,
    n: usize,
}

impl ScanDims {
    fn width(&self) -> usize {
        2 * self.di + 2 * self.n
    }

    fn row(&self, b: usize, t: usize) -> usize {
        (b * self.t + t) * self.width()
    }
}

/// The float types the scan kernel runs in: f32 (as `transformers`), or
/// f64 for the finite-difference tests.
trait Real:
    Copy
    + Default
    + Send
    + Sync
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::AddAssign
    + std::ops::MulAssign
    + candle_core::WithDType
{
    fn exp(self) -> Self;
    fn of(x: f64) -> Self;
}

impl Real for f32 {
    fn exp(self) -> Self {
        exp_f32(self)
    }
    fn of(x: f64) -> Self {
        x as f32
    }
}

impl Real for f64 {
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn of(x: f64) -> Self {
        x
    }
}

/// `exp(x)` in f32 to about one ulp, branch-free so that the scan's inner
/// loop vectorises (libm's `expf` is a call per element): Cephes' range
/// reduction `x = k ln2 + r` and degree-6 polynomial. Arguments below -87
/// give `exp(-87)` (about 1.6e-38) instead of a subnormal.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

/// Channels per task of the scan kernel: a block's inputs at one position
/// are contiguous in memory.
const CHANNEL_BLOCK: usize = 32;

/// Channels `d0..d1` of batch row `b`, from `h0` (`[d1 - d0, n]`, zero when
/// absent): the outputs `y_t = h_t . C_t` (`[T, d1 - d0]`) and the last
/// states (`[d1 - d0, n]`, `h0` when `T = 0`); with `keep`, also every state
/// `h_t` and decay `exp(delta_t A)` (`[T, d1 - d0, n]` each) for the
/// backward.
#[allow(clippy::too_many_arguments)]
fn block_scan<F: Real>(
    p: &[F],
    a: &[F],
    s: ScanDims,
    b: usize,
    (d0, d1): (usize, usize),
    h0: Option<&[F]>,
    keep: bool,
) -> (Vec<F>, Vec<F>, Vec<F>, Vec<F>) {
    let (n, nb) = (s.n, d1 - d0);
    let (mut hs, mut decays) = if keep {
        (
            vec![F::default(); s.t * nb * n],
            vec![F::default(); s.t * nb * n],
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let mut ys = vec![F::default(); s.t * nb];
    let mut h: Vec<F> = h0.map_or_else(|| vec![F::default(); nb * n], <[F]>::to_vec);
    let mut dec = vec![F::default(); n];
    for t in 0..s.t {
        let r = s.row(b, t);
        let bt = &p[r + 2 * s.di..r + 2 * s.di + n];
        let ct = &p[r + 2 * s.di + n..r + 2 * s.di + 2 * n];
        for k in 0..nb {
            let d = d0 + k;
            let (u, dt) = (p[r + d], p[r + s.di + d]);
            let du = dt * u;
            let ad = &a[d * n..(d + 1) * n];
            let hk = &mut h[k * n..(k + 1) * n];
            // Separate loops without a carried dependency vectorise.
            for (e, &aj) in dec.iter_mut().zip(ad) {
                *e = (dt * aj).exp();
            }
            for ((hj, &e), &bj) in hk.iter_mut().zip(&dec).zip(bt) {
                *hj = e * *hj + du * bj;
            }
            let mut acc = F::default();
            for (&hj, &cj) in hk.iter().zip(ct) {
                acc += hj * cj;
            }
            if keep {
                decays[(t * nb + k) * n..(t * nb + k + 1) * n].copy_from_slice(&dec);
            }
            ys[t * nb + k] = acc;
        }
        if keep {
            hs[t * nb * n..(t + 1) * nb * n].copy_from_slice(&h);
        }
    }
    (ys, h, hs, decays)
}

/// The channel blocks of a scan over `di` channels.
fn blocks(di: usize) -> Vec<(usize, usize)> {
    (0..di)
        .step_by(CHANNEL_BLOCK)
        .map(|d0| (d0, (d0 + CHANNEL_BLOCK).min(di)))
        .collect()
}

/// The scan forward on packed data: `y` `[B, T, di]` and the last states
/// `[B, di, n]`.
fn scan_forward<F: Real>(p: &[F], a: &[F], s: ScanDims, h0: Option<&[F]>) -> (Vec<F>, Vec<F>) {
    let (n, di) = (s.n, s.di);
    let mut y = vec![F::default(); s.b * s.t * di];
    let mut last = vec![F::default(); s.b * di * n];
    for b in 0..s.b {
        // Channels are independent: one task per block of channels.
        let parts: Vec<(Vec<F>, Vec<F>)> = blocks(di)
            .into_par_iter()
            .map(|(d0, d1)| {
                let h0b = h0.map(|h| &h[(b * di + d0) * n..(b * di + d1) * n]);
                let (ys, h, _, _) = block_scan(p, a, s, b, (d0, d1), h0b, false);
                (ys, h)
            })
            .collect();
        for ((d0, d1), (ys, h)) in blocks(di).into_iter().zip(parts) {
            let nb = d1 - d0;
            for t in 0..s.t {
                let o = (b * s.t + t) * di + d0;
                y[o..o + nb].copy_from_slice(&ys[t * nb..(t + 1) * nb]);
            }
            last[(b * di + d0) * n..(b * di + d1) * n].copy_from_slice(&h);
        }
    }
    (y, last)
}

/// The gradient of the packed input given the gradient `g` `[B, T, di]` of
/// `y`, for a scan from zero states.
fn scan_backward<F: Real>(p: &[F], a: &[F], s: ScanDims, g: &[F]) -> Vec<F> {
    let (n, di, w) = (s.n, s.di, s.width());
    let mut grad = vec![F::default(); s.b * s.t * w];
    for b in 0..s.b {
        // Per block: the d u and d delta columns (`[T, 2, nb]`), and the
        // block's contributions to d B and d C (`[T, 2, n]`), summed over
        // blocks below.
        let parts: Vec<(Vec<F>, Vec<F>)> = blocks(di)
            .into_par_iter()
            .map(|(d0, d1)| {
                let nb = d1 - d0;
                let (_, _, hs, decays) = block_scan(p, a, s, b, (d0, d1), None, true);
                let mut gh = vec![F::default(); nb * n];
                let mut gud = vec![F::default(); s.t * 2 * nb];
                let mut gbc = vec![F::default(); s.t * 2 * n];
                for t in (0..s.t).rev() {
                    let r = s.row(b, t);
                    let bt = &p[r + 2 * di..r + 2 * di + n];
                    let ct = &p[r + 2 * di + n..r + 2 * di + 2 * n];
                    for k in 0..nb {
                        let d = d0 + k;
                        let (u, dt) = (p[r + d], p[r + di + d]);
                        let gy = g[(b * s.t + t) * di + d];
                        let ad = &a[d * n..(d + 1) * n];
                        let at = (t * nb + k) * n;
                        let (mut gdt, mut gu) = (F::default(), F::default());
                        for j in 0..n {
                            let h_prev = if t > 0 {
                                hs[at - nb * n + j]
                            } else {
                                F::default()
                            };
                            let decay = decays[at + j];
                            let ghj = &mut gh[k * n + j];
                            // ghj: the gradient of h_t (from y_t and h_{t+1}).
                            *ghj += gy * ct[j];
                            gbc[(2 * t + 1) * n + j] += gy * hs[at + j];
                            gdt += *ghj * (h_prev * decay * ad[j] + bt[j] * u);
                            gu += *ghj * dt * bt[j];
                            gbc[2 * t * n + j] += *ghj * dt * u;
                            *ghj *= decay;
                        }
                        gud[(2 * t) * nb + k] = gu;
                        gud[(2 * t + 1) * nb + k] = gdt;
                    }
                }
                (gud, gbc)
            })
            .collect();
        for ((d0, d1), (gud, gbc)) in blocks(di).into_iter().zip(parts) {
            let nb = d1 - d0;
            for t in 0..s.t {
                let r = s.row(b, t);
                grad[r + d0..r + d1].copy_from_slice(&gud[2 * t * nb..(2 * t + 1) * nb]);
                grad[r + di + d0..r + di + d1]
                    .copy_from_slice(&gud[(2 * t + 1) * nb..(2 * t + 2) * nb]);
                for j in 0..2 * n {
                    grad[r + 2 * di + j] += gbc[2 * t * n + j];
                }
            }
        }
    }
    grad
}

/// A contiguous CPU tensor's data as a vector of `F`.
fn cpu_vec<F: Real>(t: &Tensor) -> candle_core::Result<Vec<F>> {
    t.flatten_all()?.to_vec1::<F>()
}

/// The forward of [`SelectiveScan`] in `F`.
fn fwd_in<F: Real>(x: &[F], a: &[f64], dims: ScanDims) -> Vec<F> {
    let a: Vec<F> = a.iter().map(|&v| F::of(v)).collect();
    scan_forward(x, &a, dims, None).0
}

/// The backward of [`SelectiveScan`] in `F`.
fn bwd_in<F: Real>(
    a: &[f64],
    dims: ScanDims,
    arg: &Tensor,
    grad: &Tensor,
) -> candle_core::Result<Tensor> {
    let a: Vec<F> = a.iter().map(|&v| F::of(v)).collect();
    let dp = scan_backward(&cpu_vec::<F>(arg)?, &a, dims, &cpu_vec::<F>(grad)?);
    Tensor::from_vec(dp, arg.shape(), arg.device())
}

/// The selective scan from zero states as a CPU custom op on the packed
/// input, with an explicit backward.
struct SelectiveScan {
    /// `A` `[di, n]`.
    a: Vec<f64>,
    dims: ScanDims,
}

impl CustomOp1 for SelectiveScan {
    fn name(&self) -> &'static str {
        "selective-scan"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((o0, o1)) = l.contiguous_offsets() else {
            candle_core::bail!("selective-scan: expected a contiguous input");
        };
        let ScanDims { b, t, di, .. } = self.dims;
        let out = match s {
            CpuStorage::F32(x) => CpuStorage::F32(fwd_in(&x[o0..o1], &self.a, self.dims)),
            CpuStorage::F64(x) => CpuStorage::F64(fwd_in(&x[o0..o1], &self.a, self.dims)),
            _ => candle_core::bail!("selective-scan: expected f32 or f64"),
        };
        Ok((out, Shape::from((b, t, di))))
    }

    fn bwd(&self, arg: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.to_dtype(arg.dtype())?;
        Ok(Some(match arg.dtype() {
            DType::F64 => bwd_in::<f64>(&self.a, self.dims, arg, &grad)?,
            _ => bwd_in::<f32>(&self.a, self.dims, arg, &grad)?,
        }))
    }
}

/// The selective scan `h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t`,
/// `y_t = h_t . C_t` per channel.
///
/// `u`, `delta`: `[B, T, di]`; `bm`, `cm`: `[B, T, n]`; `a`: `[di, n]`;
/// `h0`: `[B, di, n]` (zero when absent). Computed in f32 (f64 for f64
/// input). Returns `y` `[B, T, di]` and, when `want_state`, the last states
/// `[B, di, n]`. Differentiable in `u`, `delta`, `bm` and `cm` when
/// `h0` is absent and `want_state` is false; on the CPU that case runs the
/// custom op, everything else a loop of candle ops ([`scan_reference`]) or,
/// for the CPU decoding path, the same kernel without a graph.
pub fn selective_scan(
    u: &Tensor,
    delta: &Tensor,
    a: &Tensor,
    bm: &Tensor,
    cm: &Tensor,
    h0: Option<&Tensor>,
    want_state: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let sd = if u.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    if !u.device().is_cpu() {
        return scan_reference(u, delta, a, bm, cm, h0);
    }
    let (b, t, di) = u.dims3()?;
    let n = a.dim(1)?;
    let dims = ScanDims { b, t, di, n };
    let a_v = cpu_vec::<f64>(&a.to_dtype(DType::F64)?)?;
    let packed = Tensor::cat(
        &[
            &u.to_dtype(sd)?,
            &delta.to_dtype(sd)?,
            &bm.to_dtype(sd)?,
            &cm.to_dtype(sd)?,
        ],
        D::Minus1,
    )?
    .contiguous()?;
    if h0.is_none() && !want_state {
        let op = SelectiveScan { a: a_v, dims };
        return Ok((packed.apply_op1(op)?, None));
    }
    // Decoding: the same kernel from the given states, without a graph.
    let (y, last) = if sd == DType::F64 {
        let h0 = h0.map(|h| cpu_vec::<f64>(&h.to_dtype(sd)?)).transpose()?;
        let (y, last) = scan_forward(&cpu_vec::<f64>(&packed)?, &a_v, dims, h0.as_deref());
        (
            Tensor::from_vec(y, (b, t, di), u.device())?,
            Tensor::from_vec(last, (b, di, n), u.device())?,
        )
    } else {
        let a32: Vec<f32> = a_v.iter().map(|&v| v as f32).collect();
        let h0 = h0.map(|h| cpu_vec::<f32>(&h.to_dtype(sd)?)).transpose()?;
        let (y, last) = scan_forward(&cpu_vec::<f32>(&packed)?, &a32, dims, h0.as_deref());
        (
            Tensor::from_vec(y, (b, t, di), u.device())?,
            Tensor::from_vec(last, (b, di, n), u.device())?,
        )
    };
    Ok((y, Some(last)))
}

/// The selective scan as a loop over positions of candle ops (any device,
/// differentiable through candle's own backward); same arguments as
/// [`selective_scan`], always returns the last states.
pub fn scan_reference(
    u: &Tensor,
    delta: &Tensor,
    a: &Tensor,
    bm: &Tensor,
    cm: &Tensor,
    h0: Option<&Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    let sd = if u.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let (b, t, di) = u.dims3()?;
    let n = a.dim(1)?;
    let (u, delta, bm, cm, a) = (
        u.to_dtype(sd)?,
        delta.to_dtype(sd)?,
        bm.to_dtype(sd)?,
        cm.to_dtype(sd)?,
        a.to_dtype(sd)?,
    );
    // [B, T, di, n]
    let decay = delta.unsqueeze(3)?.broadcast_mul(&a)?.exp()?;
    let inject = (&delta * &u)?
        .unsqueeze(3)?
        .broadcast_mul(&bm.unsqueeze(2)?)?;
    let mut h = match h0 {
        Some(h) => h.to_dtype(sd)?,
        None => Tensor::zeros((b, di, n), sd, u.device())?,
    };
    let mut ys = Vec::with_capacity(t);
    for i in 0..t {
        h = (decay.narrow(1, i, 1)?.squeeze(1)? * &h)?.add(&inject.narrow(1, i, 1)?.squeeze(1)?)?;
        let c = cm.narrow(1, i, 1)?.reshape((b, n, 1))?;
        ys.push(h.matmul(&c)?.reshape((b, 1, di))?);
    }
    Ok((Tensor::cat(&ys, 1)?, Some(h)))
}

/// `log(1 + exp(x))`, differentiable and stable for large `|x|`.
fn softplus(x: &Tensor) -> Result<Tensor> {
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((x.relu()? + tail)?)
}

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

struct Mixer {
    in_proj: Linear,
    /// Convolution taps `[di]`, oldest position first.
    conv_taps: Vec<Tensor>,
    conv_bias: Option<Tensor>,
    x_proj: Linear,
    dt_proj: Linear,
    /// `A = -exp(A_log)`, `[di, n]`, f32 (f64 for an f64 model).
    a: Tensor,
    /// `[di]`.
    d: Tensor,
    out_proj: Linear,
    act: Activation,
    di: usize,
    n: usize,
    rank: usize,
    kernel: usize,
}

impl Mixer {
    fn num_params(&self) -> usize {
        self.in_proj.num_params()
            + self.conv_taps.len() * self.di
            + self.conv_bias.as_ref().map_or(0, Tensor::elem_count)
            + self.x_proj.num_params()
            + self.dt_proj.num_params()
            + self.a.elem_count()
            + self.d.elem_count()
            + self.out_proj.num_params()
    }

    /// The mixer on normalised input `x` `[B, T, hidden]`; `mask` `[B, T, 1]`
    /// (compute dtype) zeroes padding as `transformers` does; `state`, when
    /// given, holds the convolution and scan states and is advanced.
    fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        state: Option<&mut LayerState>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let apply_mask = |v: Tensor| -> Result<Tensor> {
            Ok(match mask {
                Some(m) => v.broadcast_mul(m)?,
                None => v,
            })
        };
        let x = apply_mask(x.clone())?;
        let xz = self.in_proj.forward(&x)?;
        let xs = xz.narrow(D::Minus1, 0, self.di)?;
        let z = xz.narrow(D::Minus1, self.di, self.di)?;

        let (prev_conv, prev_ssm) = match state.as_deref() {
            Some(LayerState::Ssm { conv, ssm }) => (Some(conv.clone()), Some(ssm.clone())),
            _ => (None, None),
        };
        // Causal depthwise convolution: K - 1 earlier inputs (zeros at the
        // start) precede the T new ones.
        let k = self.kernel;
        let prev = match prev_conv {
            Some(c) => c,
            None => Tensor::zeros((b, k - 1, self.di), xs.dtype(), xs.device())?,
        };
        let padded = Tensor::cat(&[&prev, &xs], 1)?;
        let mut conv = match &self.conv_bias {
            Some(bias) => bias
                .reshape((1, 1, self.di))?
                .broadcast_as((b, t, self.di))?
                .contiguous()?,
            None => Tensor::zeros((b, t, self.di), xs.dtype(), xs.device())?,
        };
        for (i, tap) in self.conv_taps.iter().enumerate() {
            conv = (conv + padded.narrow(1, i, t)?.broadcast_mul(tap)?)?;
        }
        let xs = apply_mask(self.act.forward(&conv)?)?;

        let dbc = self.x_proj.forward(&xs)?;
        let dt = dbc.narrow(D::Minus1, 0, self.rank)?;
        let bm = dbc.narrow(D::Minus1, self.rank, self.n)?;
        let cm = dbc.narrow(D::Minus1, self.rank + self.n, self.n)?;
        let sd = self.a.dtype();
        let delta = softplus(&self.dt_proj.forward(&dt)?.to_dtype(sd)?)?;
        let (y, last) = selective_scan(
            &xs,
            &delta,
            &self.a,
            &bm,
            &cm,
            prev_ssm.as_ref(),
            state.is_some(),
        )?;
        if let Some(st) = state {
            let conv_state = padded.narrow(1, t, k - 1)?.contiguous()?;
            *st = LayerState::Ssm {
                conv: conv_state,
                ssm: last.ok_or_else(|| CramError::Model("scan returned no state".into()))?,
            };
        }
        let y = (y + xs.to_dtype(sd)?.broadcast_mul(&self.d)?)?;
        let y = (y * z.to_dtype(sd)?.silu()?)?.to_dtype(xs.dtype())?;
        self.out_proj.forward(&y)
    }
}

struct Block {
    norm: Norm,
    mixer: Mixer,
}

/// A Mamba model.
pub struct Mamba {
    embed: Embedding,
    layers: Vec<Block>,
    norm_f: Norm,
    lm_head: Linear,
    residual_in_fp32: bool,
    info: ModelInfo,
    device: Device,
    dtype: DType,
}

impl Mamba {
    /// Builds the model from its config and weights (a `transformers`
    /// folder or a llama.cpp GGUF file, whose names and `A` differ).
    pub fn load(cfg: &MambaConfig, w: &Weights) -> Result<Self> {
        let h = cfg.hidden_size;
        let di = cfg.intermediate_size;
        let n = cfg.state_size;
        let k = cfg.conv_kernel;
        let gguf = w.is_gguf();
        let (embed_name, layers_name, norm_name, norm_f_name) = if gguf {
            (
                "model.embed_tokens",
                "model.layers",
                "input_layernorm",
                "model.norm",
            )
        } else {
            (
                "backbone.embeddings",
                "backbone.layers",
                "norm",
                "backbone.norm_f",
            )
        };
        // Older checkpoints name it `backbone.embedding` (transformers
        // renames it on load).
        let embed_name = if !gguf
            && !w.contains("backbone.embeddings.weight")
            && w.contains("backbone.embedding.weight")
        {
            "backbone.embedding"
        } else {
            embed_name
        };
        let emb_f32 = w.get_f32(&format!("{embed_name}.weight"), &[cfg.vocab_size, h])?;
        let embedding_std = tensor_std(&emb_f32)?;
        let embed = Embedding {
            w: w.place(&emb_f32)?,
        };
        let scan_dtype = if w.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("{layers_name}.{i}");
            let m = format!("{p}.mixer");
            let conv_w = w.get(&format!("{m}.conv1d.weight"), &[di, 1, k])?;
            let conv_taps = (0..k)
                .map(|j| Ok(conv_w.narrow(2, j, 1)?.reshape(di)?.contiguous()?))
                .collect::<Result<Vec<_>>>()?;
            let conv_bias = if cfg.use_conv_bias {
                Some(w.get(&format!("{m}.conv1d.bias"), &[di])?)
            } else {
                None
            };
            let a = if gguf {
                w.get_f32(&format!("{m}.A"), &[di, n])?
            } else {
                w.get_f32(&format!("{m}.A_log"), &[di, n])?.exp()?.neg()?
            };
            let a = a.to_device(w.device())?.to_dtype(scan_dtype)?;
            let d = w
                .get_f32(&format!("{m}.D"), &[di])?
                .to_device(w.device())?
                .to_dtype(scan_dtype)?;
            let mixer = Mixer {
                in_proj: Linear::load(w, &format!("{m}.in_proj"), h, 2 * di, cfg.use_bias)?,
                conv_taps,
                conv_bias,
                x_proj: Linear::load(
                    w,
                    &format!("{m}.x_proj"),
                    di,
                    cfg.time_step_rank + 2 * n,
                    false,
                )?,
                dt_proj: Linear::load(w, &format!("{m}.dt_proj"), cfg.time_step_rank, di, true)?,
                a,
                d,
                out_proj: Linear::load(w, &format!("{m}.out_proj"), di, h, cfg.use_bias)?,
                act: cfg.act,
                di,
                n,
                rank: cfg.time_step_rank,
                kernel: k,
            };
            layers.push(Block {
                norm: Norm::rms(
                    w,
                    &format!("{p}.{norm_name}"),
                    h,
                    cfg.layer_norm_epsilon,
                    false,
                )?,
                mixer,
            });
        }
        let norm_f = Norm::rms(w, norm_f_name, h, cfg.layer_norm_epsilon, false)?;
        let tied = cfg.tie_word_embeddings || !w.contains("lm_head.weight");
        let lm_head = if tied {
            Linear::from_weight(embed.w.clone())
        } else {
            Linear::load(w, "lm_head", h, cfg.vocab_size, false)?
        };
        let num_parameters = embed.w.elem_count()
            + layers
                .iter()
                .map(|l| l.norm.num_params() + l.mixer.num_params())
                .sum::<usize>()
            + norm_f.num_params()
            + if tied { 0 } else { lm_head.num_params() };
        let info = ModelInfo {
            architecture: "mamba".into(),
            num_layers: cfg.num_layers,
            hidden_size: h,
            input_size: h,
            num_heads: 0,
            num_kv_heads: 0,
            vocab_size: cfg.vocab_size,
            context_length: MAMBA_CONTEXT_LENGTH,
            num_parameters,
            weights_dtype: w.storage_dtype(),
            compute_dtype: format!("{:?}", w.dtype()).to_lowercase(),
            embedding_std,
        };
        Ok(Self {
            embed,
            layers,
            norm_f,
            lm_head,
            residual_in_fp32: cfg.residual_in_fp32,
            info,
            device: w.device().clone(),
            dtype: w.dtype(),
        })
    }

    fn run(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        mut state: Option<&mut DecodeState>,
    ) -> Result<Tensor> {
        let res_dtype = if self.residual_in_fp32 && self.dtype != DType::F64 {
            DType::F32
        } else {
            self.dtype
        };
        let mask = match mask {
            Some(m) => Some(m.to_dtype(self.dtype)?.unsqueeze(2)?),
            None => None,
        };
        let mut res = x.to_dtype(res_dtype)?;
        for (i, l) in self.layers.iter().enumerate() {
            let st = state.as_deref_mut().map(|s| &mut s.layers[i]);
            let hdn = l.norm.forward(&res.to_dtype(self.dtype)?)?;
            let m = l.mixer.forward(&hdn, mask.as_ref(), st)?;
            res = (res + m.to_dtype(res_dtype)?)?;
        }
        let x = self.norm_f.forward(&res.to_dtype(self.dtype)?)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }
}

impl CausalLm for Mamba {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed.forward(ids)
    }

    fn forward(&self, embeds: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        expect_width(embeds, self.info.input_size)?;
        self.run(embeds, mask, None)
    }

    fn forward_step(&self, embeds: &Tensor, state: &mut DecodeState) -> Result<Tensor> {
        expect_width(embeds, self.info.input_size)?;
        let t = embeds.dim(1)?;
        let out = self.run(embeds, None, Some(state))?;
        state.pos += t;
        Ok(out)
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn dtype(&self) -> DType {
        self.dtype
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn config(extra: serde_json::Value) -> Result<MambaConfig> {
        let mut v = serde_json::json!({
            "model_type": "mamba", "hidden_size": 40, "num_hidden_layers": 2, "vocab_size": 100
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        MambaConfig::from_json(&Json::new(&v, std::path::Path::new("config.json")))
    }

    #[test]
    fn config_defaults_and_auto_rank() {
        let c = config(serde_json::json!({"time_step_rank": "auto"})).unwrap();
        assert_eq!(c.time_step_rank, 3);
        assert_eq!(c.intermediate_size, 80);
        assert_eq!((c.state_size, c.conv_kernel), (16, 4));
        assert!(c.tie_word_embeddings && c.use_conv_bias && !c.use_bias);
        let c = config(serde_json::json!({"expand": 3, "time_step_rank": 7})).unwrap();
        assert_eq!((c.intermediate_size, c.time_step_rank), (120, 7));
        let e = config(serde_json::json!({"time_step_rank": "big"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("time_step_rank"), "{e}");
        let e = config(serde_json::json!({"state_size": 0}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("state_size"), "{e}");
    }

    fn randn(shape: &[usize], scale: f64) -> Tensor {
        (Tensor::randn(0f64, 1.0, shape, &Device::Cpu).unwrap() * scale).unwrap()
    }

    /// The inputs of a small scan: u, delta (positive), B, C, A (negative).
    fn scan_inputs(b: usize, t: usize, di: usize, n: usize) -> [Tensor; 5] {
        let delta = softplus(&randn(&[b, t, di], 1.0)).unwrap();
        let a = randn(&[di, n], 0.5).exp().unwrap().neg().unwrap();
        [
            randn(&[b, t, di], 1.0),
            delta,
            randn(&[b, t, n], 1.0),
            randn(&[b, t, n], 1.0),
            a,
        ]
    }

    fn max_diff(x: &Tensor, y: &Tensor) -> f64 {
        (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn scan_kernel_matches_candle_loop_forward_and_backward() {
        let [u, dl, bm, cm, a] = scan_inputs(2, 7, 70, 3);
        let vars: Vec<Var> = [&u, &dl, &bm, &cm]
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let r = randn(&[2, 7, 70], 1.0);
        let (v0, v1, v2, v3) = (
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
            vars[3].as_tensor(),
        );
        let (y1, _) = selective_scan(v0, v1, &a, v2, v3, None, false).unwrap();
        let (y2, _) = scan_reference(v0, v1, &a, v2, v3, None).unwrap();
        assert!(max_diff(&y1, &y2) < 1e-12);
        let g1 = (y1 * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in &vars {
            let d = max_diff(
                g1.get(v.as_tensor()).unwrap(),
                g2.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-10, "gradient differs by {d}");
        }
    }

    #[test]
    fn scan_gradient_matches_finite_differences() {
        let [u, dl, bm, cm, a] = scan_inputs(1, 6, 3, 4);
        let r = randn(&[1, 6, 3], 1.0);
        let loss = |x: [&Tensor; 4]| -> Tensor {
            let (y, _) = selective_scan(x[0], x[1], &a, x[2], x[3], None, false).unwrap();
            (y * &r).unwrap().sum_all().unwrap()
        };
        let inputs = [u, dl, bm, cm];
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let grads = loss([
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
            vars[3].as_tensor(),
        ])
        .backward()
        .unwrap();
        let eps = 1e-6;
        let mut worst = 0f64;
        for k in 0..4 {
            let g: Vec<f64> = grads
                .get(vars[k].as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let base: Vec<f64> = inputs[k].flatten_all().unwrap().to_vec1().unwrap();
            for i in 0..base.len() {
                let eval = |s: f64| {
                    let mut v = base.clone();
                    v[i] += s;
                    let mut x = inputs.clone();
                    x[k] = Tensor::from_vec(v, inputs[k].shape(), &Device::Cpu).unwrap();
                    loss([&x[0], &x[1], &x[2], &x[3]])
                        .to_scalar::<f64>()
                        .unwrap()
                };
                let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
                worst = worst.max((fd - g[i]).abs() / (1.0 + fd.abs()));
            }
        }
        assert!(worst < 1e-7, "finite-difference mismatch {worst}");
    }

    #[test]
    fn scan_in_pieces_with_state_equals_one_scan() {
        let [u, dl, bm, cm, a] = scan_inputs(2, 9, 40, 3);
        let (whole, last) = selective_scan(&u, &dl, &a, &bm, &cm, None, true).unwrap();
        let part = |x: &Tensor, s: usize, l: usize| x.narrow(1, s, l).unwrap();
        let (y1, h1) = selective_scan(
            &part(&u, 0, 4),
            &part(&dl, 0, 4),
            &a,
            &part(&bm, 0, 4),
            &part(&cm, 0, 4),
            None,
            true,
        )
        .unwrap();
        let (y2, h2) = selective_scan(
            &part(&u, 4, 5),
            &part(&dl, 4, 5),
            &a,
            &part(&bm, 4, 5),
            &part(&cm, 4, 5),
            h1.as_ref(),
            true,
        )
        .unwrap();
        let joined = Tensor::cat(&[&y1, &y2], 1).unwrap();
        assert!(max_diff(&whole, &joined) < 1e-12);
        assert!(max_diff(last.as_ref().unwrap(), h2.as_ref().unwrap()) < 1e-12);
        let (_, h_ref) = scan_reference(&u, &dl, &a, &bm, &cm, None).unwrap();
        assert!(max_diff(last.as_ref().unwrap(), h_ref.as_ref().unwrap()) < 1e-12);
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -90.0 + i as f32 * (100.0 / 200_000.0);
            let want = (x as f64).exp().max(f64::from(-87f32).exp());
            let got = exp_f32(x) as f64;
            worst = worst.max((got - want).abs() / want);
        }
        println!("exp_f32 worst relative error {worst:e}");
        assert!(worst < 3e-7, "exp_f32 relative error {worst}");
    }

    #[test]
    fn softplus_matches_definition_and_is_stable() {
        let x = Tensor::new(&[-30f64, -1.0, 0.0, 2.0, 50.0], &Device::Cpu).unwrap();
        let got: Vec<f64> = softplus(&x).unwrap().to_vec1().unwrap();
        for (g, x) in got.iter().zip([-30f64, -1.0, 0.0, 2.0, 50.0]) {
            assert!((g - (1.0 + x.exp()).ln()).abs() < 1e-12, "{x}: {g}");
        }
    }
}
