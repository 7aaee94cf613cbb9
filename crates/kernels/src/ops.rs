//! Differentiable building blocks.
//!
//! Everything here has a backward pass with respect to its *input* tensor:
//! candle's fused `softmax_last_dim`, `rms_norm`, `layer_norm` and rotary
//! kernels have none, so these are written either as compositions of candle
//! ops that do, or as custom ops with an explicit backward. Weights are
//! constants: no gradient is ever computed for them.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor, D,
};

use crate::cpu::{contiguous_f32, with_cpu_f32};

use crate::Kernels;

pub use crate::Result;

/// The storage of `y` (a freshly computed, contiguous tensor), for a custom
/// op's forward to hand back as its own result.
fn storage_of(y: &Tensor, op: &str) -> candle_core::Result<(Storage, Shape)> {
    if !y.is_contiguous() || y.layout().start_offset() != 0 {
        candle_core::bail!("{op}: internal: the precomputed result is a strided view");
    }
    let (storage, layout) = y.storage_and_layout();
    Ok((storage.try_clone(layout)?, layout.shape().clone()))
}

/// A graph node whose value was computed outside the graph and whose
/// backward is written by hand, on any device.
///
/// The forward runs on detached tensors, so its intermediates (an
/// attention layer's raw scores, a softmax's exponentials) are freed as soon
/// as it returns instead of being kept by the graph until the backward;
/// only what `bwd` captures is kept. The op hands the precomputed value
/// back as its result (one copy, freed with the op's own reference).
struct Attached<F> {
    name: &'static str,
    /// The detached result, taken by the forward.
    y: std::sync::Mutex<Option<Tensor>>,
    bwd: F,
}

impl<F> Attached<F> {
    fn new(name: &'static str, y: Tensor, bwd: F) -> Self {
        Self {
            name,
            y: std::sync::Mutex::new(Some(y)),
            bwd,
        }
    }

    fn take(&self) -> candle_core::Result<(Storage, Shape)> {
        let y = self
            .y
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{}: lock", self.name)))?
            .take();
        match y {
            Some(y) => storage_of(&y, self.name),
            None => candle_core::bail!("{}: internal: the forward ran twice", self.name),
        }
    }

    fn cpu(&self) -> candle_core::Result<(CpuStorage, Shape)> {
        match self.take()? {
            (Storage::Cpu(s), shape) => Ok((s, shape)),
            _ => candle_core::bail!("{}: result is not on the cpu", self.name),
        }
    }

    fn cuda(&self) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        match self.take()? {
            (Storage::Cuda(s), shape) => Ok((s, shape)),
            _ => candle_core::bail!("{}: result is not on the gpu", self.name),
        }
    }
}

/// The backward of a one-input [`Attached`] node: `(input, grad) -> input grad`.
type Bwd1 = dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> + Send + Sync;

impl CustomOp1 for Attached<Box<Bwd1>> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu()
    }

    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.cuda()
    }

    fn bwd(&self, arg: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some((self.bwd)(arg, grad)?))
    }
}

/// The backward of a three-input [`Attached`] node.
type Bwd3 = dyn Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)>
    + Send
    + Sync;

impl CustomOp3 for Attached<Box<Bwd3>> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu()
    }

    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.cuda()
    }

    #[allow(clippy::type_complexity)]
    fn bwd(
        &self,
        a1: &Tensor,
        a2: &Tensor,
        a3: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (g1, g2, g3) = (self.bwd)(a1, a2, a3, grad)?;
        Ok((Some(g1), Some(g2), Some(g3)))
    }
}

/// `x` with the value `y` (computed from it outside the graph) and the
/// input gradient `bwd(x, grad)`.
fn attach1(
    name: &'static str,
    x: &Tensor,
    y: Tensor,
    bwd: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    let bwd: Box<Bwd1> = Box::new(bwd);
    x.apply_op1(Attached::new(name, y, bwd))
}

/// `y = x @ w.T + b` on the CPU through BLAS, backward to `x` only.
struct BlasLinear {
    /// `[out, in]`, contiguous f32.
    w: Tensor,
    b: Option<Tensor>,
    blas: &'static crate::blas::Blas,
    /// Split products of few rows over the rayon pool.
    split: bool,
}

impl CustomOp1 for BlasLinear {
    fn name(&self) -> &'static str {
        "blas-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s, l)?;
        let (out, inp) = self.w.dims2()?;
        let rows = x.len() / inp;
        let shape = with_last_dim(l.shape(), out);
        let mut y = with_cpu_f32(&self.w, |w| {
            self.blas.product(self.split, rows, out, inp, x, w, true)
        })?;
        if let Some(b) = &self.b {
            with_cpu_f32(b, |b| {
                for r in y.chunks_exact_mut(out) {
                    r.iter_mut().zip(b).for_each(|(y, b)| *y += b);
                }
            })?;
        }
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let op = BlasMatmul {
            w: self.w.clone(),
            blas: self.blas,
            split: self.split,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// `shape` with its last dimension replaced by `n`.
fn with_last_dim(shape: &Shape, n: usize) -> Shape {
    let mut dims = shape.dims().to_vec();
    match dims.last_mut() {
        Some(d) => *d = n,
        None => dims.push(n),
    }
    Shape::from(dims)
}

/// `g @ w` for `g` `[..., out]` and `w` `[out, in]`: the input gradient of
/// [`BlasLinear`].
struct BlasMatmul {
    w: Tensor,
    blas: &'static crate::blas::Blas,
    /// Split products of few rows over the rayon pool.
    split: bool,
}

impl CustomOp1 for BlasMatmul {
    fn name(&self) -> &'static str {
        "blas-linear-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(self.name(), s, l)?;
        let (out, inp) = self.w.dims2()?;
        let rows = g.len() / out;
        let dx = with_cpu_f32(&self.w, |w| {
            self.blas.product(self.split, rows, inp, out, g, w, false)
        })?;
        Ok((CpuStorage::F32(dx), with_last_dim(l.shape(), inp)))
    }
}

/// A linear layer on constant weights: `y = x @ w.T + b` for `x` of shape
/// `[..., in]` and `w` of shape `[out, in]`.
///
/// When `x` is part of a graph being differentiated, the backward computes the
/// gradient of `x` only.
pub fn linear(k: &Kernels, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_dim = dims[dims.len() - 1];
    let out_dim = w.dim(0)?;
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((rows, in_dim))?;
    let mut out_dims = dims.clone();
    *out_dims.last_mut().expect("x has at least one dim") = out_dim;
    let product = |x2: &Tensor| -> Result<Tensor> {
        let y = x2.matmul(&w.t()?)?;
        Ok(match b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    };
    if let (true, DType::F32, Some(blas)) = (x.device().is_cpu(), x.dtype(), k.blas()) {
        if w.is_contiguous() && b.is_none_or(|b| b.is_contiguous()) {
            let op = BlasLinear {
                w: w.clone(),
                b: b.cloned(),
                blas,
                split: k.blas_split(),
            };
            // One graph node on the input's own shape: no reshapes around
            // it, whose backward would cost a zero-fill and an add each.
            return x.contiguous()?.apply_op1(op);
        }
    }
    if !x.track_op() {
        return product(x2.as_ref())?.reshape(out_dims);
    }
    // candle's `matmul` backward would also compute the weight gradient: a
    // weight-sized product per layer per step that cramming never uses.
    let y = product(&x2.detach())?.contiguous()?;
    let w = w.clone();
    attach1("input-only-linear", &x2, y, move |_, g| g.matmul(&w))?.reshape(out_dims)
}

/// The dtype statistics are computed in: f64 stays f64 (used by the
/// finite-difference tests), everything else is computed in f32.
fn stat_dtype(x: &Tensor) -> DType {
    if x.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Softmax over the last dimension, differentiable.
///
/// The row maximum is subtracted for stability; since softmax does not depend
/// on a per-row shift, the maximum is detached and costs no backward work.
/// Computed in f32 whatever the input dtype; the result has the input's dtype.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(stat_dtype(x))?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)?.to_dtype(dtype)
}

/// Scaled dot-product attention of the composed path: `softmax(q k^T *
/// scale + bias) v` for `q` `[B, heads, T, d]`, `k` and `v` `[B, heads, S,
/// d]` and the additive `bias` `[B, 1, T, S]`; differentiable in `q`, `k`,
/// `v` on every device.
///
/// The graph keeps one `[B, heads, T, S]` tensor per layer, the
/// probabilities the backward needs; the raw, scaled and masked scores and
/// the softmax's intermediates live only while the layer's forward (or its
/// backward) runs. Written as candle ops, the scores would be kept about
/// six times over in every layer until the backward (the memory that
/// limits the length on a GPU). Products run in the input dtype, the
/// softmax in f32 (as `transformers`' eager attention).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    let dtype = q.dtype();
    // Written statement by statement so that each step frees the tensor
    // before it: at most two score-sized tensors are alive at once.
    let probs = |q: &Tensor, k: &Tensor| -> Result<Tensor> {
        let mut x = q.matmul(&k.t()?.contiguous()?)?;
        x = (x * scale)?;
        x = x.broadcast_add(bias)?.to_dtype(stat_dtype(q))?;
        let max = x.max_keepdim(D::Minus1)?;
        x = x.broadcast_sub(&max)?;
        x = x.exp()?;
        let sum = x.sum_keepdim(D::Minus1)?;
        x = x.broadcast_div(&sum)?;
        x.to_dtype(dtype)
    };
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let tracked = q.track_op() || k.track_op() || v.track_op();
    if !tracked {
        return probs(&q, &k)?.matmul(&v);
    }
    let p = probs(&q.detach(), &k.detach())?;
    let out = p.matmul(&v.detach())?;
    let bwd: Box<Bwd3> = Box::new(move |q, k, v, g| {
        // Detached, or every step below would keep the one before it.
        let (q, k, v) = (q.detach(), k.detach(), v.detach());
        let g = g.contiguous()?;
        let dv = p.t()?.contiguous()?.matmul(&g)?;
        // Softmax backward, in f32: ds = p * (dp - sum(dp * p)).
        let pf = p.to_dtype(stat_dtype(&p))?;
        let mut ds = g.matmul(&v.t()?.contiguous()?)?.to_dtype(pf.dtype())?;
        let dot = (&ds * &pf)?.sum_keepdim(D::Minus1)?;
        ds = ds.broadcast_sub(&dot)?;
        ds = (ds * pf)?.to_dtype(dtype)?;
        let dq = (ds.matmul(&k)? * scale)?;
        ds = ds.t()?.contiguous()?;
        let dk = (ds.matmul(&q)? * scale)?;
        Ok((dq, dk, dv))
    });
    q.apply_op3(&k, &v, Attached::new("attention", out, bwd))
}

/// `f(x)` with the backward `grad * df(x)`, the derivative computed on the
/// detached input so that none of its temporaries outlives it (candle's own
/// backward of these functions keeps every temporary of the derivative
/// until the input's gradient is used: a dozen activation-sized tensors).
fn pointwise(
    name: &'static str,
    x: &Tensor,
    f: fn(&Tensor) -> Result<Tensor>,
    df: fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    if !x.track_op() {
        return f(x);
    }
    let y = f(&x.detach())?.contiguous()?;
    attach1(name, x, y, move |x, g| g * df(&x.detach())?)
}

/// SiLU, `x * sigmoid(x)`, differentiable: `d/dx = s (1 + x (1 - s))` with
/// `s = sigmoid(x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    pointwise(
        "silu",
        x,
        |x| x.silu(),
        |x| {
            let s = (x.neg()?.exp()? + 1.)?.recip()?;
            let t = ((x * (1. - &s)?)? + 1.)?;
            s * t
        },
    )
}

/// Tanh-approximated GELU, differentiable (candle's derivative).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    pointwise(
        "gelu-tanh",
        x,
        |x| x.gelu(),
        |x| {
            let cube = x.powf(3.)?;
            let tanh = (0.0356774 * &cube + (0.797885 * x)?)?.tanh()?;
            ((0.5 * &tanh)? + (0.0535161 * cube + (0.398942 * x)?)? * (1. - tanh.powf(2.)?))? + 0.5
        },
    )
}

/// Exact (erf) GELU, differentiable (candle's derivative:
/// `0.5 + 0.398942 x exp(-x^2 / 2) + 0.5 erf(x / sqrt(2))`).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    pointwise(
        "gelu-erf",
        x,
        |x| x.gelu_erf(),
        |x| {
            let e = (0.398942 * (x.sqr()?.neg()? / 2.)?.exp()? * x)?;
            let erf = (0.5 * (x / 2f64.sqrt())?.erf()?)?;
            (0.5 + e + erf)?.contiguous()
        },
    )
}

/// `max(x, 0)`, differentiable (gradient 1 where `x >= 0`, as candle's).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    pointwise(
        "relu",
        x,
        |x| x.relu(),
        |x| x.ge(&x.zeros_like()?)?.to_dtype(x.dtype()),
    )
}

/// Log-softmax over the last dimension, differentiable (f32 result, f64 for
/// f64 input).
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(stat_dtype(x))?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// RMSNorm, `x / sqrt(mean(x^2) + eps) * w`, differentiable in `x`.
///
/// `w` may be `None` (no scale). `add_one` scales by `1 + w` (Gemma's
/// convention). The statistics are computed in f32.
pub fn rms_norm(
    k: &Kernels,
    x: &Tensor,
    w: Option<&Tensor>,
    eps: f64,
    add_one: bool,
) -> Result<Tensor> {
    if k.applies(x) {
        return crate::fused::rms_norm(x, w, eps, add_one);
    }
    let dtype = x.dtype();
    let sd = stat_dtype(x);
    let xf = x.to_dtype(sd)?;
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    let mut y = xf.broadcast_mul(&inv)?;
    if let Some(w) = w {
        let w = w.to_dtype(sd)?;
        let w = if add_one { (w + 1.0)? } else { w };
        y = y.broadcast_mul(&w)?;
    }
    y.to_dtype(dtype)
}

/// LayerNorm over the last dimension, differentiable in `x`; `w`/`b` optional
/// (OLMo's non-parametric norm has neither).
pub fn layer_norm(x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let sd = stat_dtype(x);
    let xf = x.to_dtype(sd)?;
    let mean = xf.mean_keepdim(D::Minus1)?;
    let centered = xf.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let mut y = centered.broadcast_mul(&(var + eps)?.sqrt()?.recip()?)?;
    if let Some(w) = w {
        y = y.broadcast_mul(&w.to_dtype(sd)?)?;
    }
    if let Some(b) = b {
        y = y.broadcast_add(&b.to_dtype(sd)?)?;
    }
    y.to_dtype(dtype)
}

/// Rotary tables for positions `start..start + len`: `(cos, sin)`, each of
/// shape `[len, rot_dim]`, in the half-split layout of `transformers`
/// (`rotate_half`), built from the inverse frequencies `inv_freq`
/// (`rot_dim / 2` entries).
pub fn rope_tables(
    inv_freq: &[f32],
    start: usize,
    len: usize,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(len * half * 2);
    let mut sin = Vec::with_capacity(len * half * 2);
    for p in start..start + len {
        for _ in 0..2 {
            for &f in inv_freq {
                // Match torch: the angle is computed in f32.
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    let cos = Tensor::from_vec(cos, (len, 2 * half), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (len, 2 * half), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

/// Applies rotary embeddings to `x` of shape `[B, heads, T, head_dim]` with
/// tables of shape `[T, rot_dim]`; only the first `rot_dim` channels rotate
/// (partial rotary, as GPT-NeoX's `rotary_pct`). Differentiable.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let head_dim = x.dim(D::Minus1)?;
    let rot = cos.dim(D::Minus1)?;
    let (x_rot, x_pass) = if rot < head_dim {
        (
            x.narrow(D::Minus1, 0, rot)?,
            Some(x.narrow(D::Minus1, rot, head_dim - rot)?),
        )
    } else {
        (x.clone(), None)
    };
    let half = rot / 2;
    let x1 = x_rot.narrow(D::Minus1, 0, half)?;
    let x2 = x_rot.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    let y = (x_rot.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?;
    Ok(match x_pass {
        Some(p) => Tensor::cat(&[&y, &p], D::Minus1)?,
        None => y,
    })
}

/// Clamps `x` to `[lo, hi]`, differentiable: the gradient passes unchanged
/// where `lo <= x <= hi` (bounds included, as `torch.clamp`) and is zero
/// outside.
///
/// Written as `x * m + detach(clamp(x) - x * m)` with the constant mask `m`,
/// so the forward value is exactly `clamp(x)` and the backward is `grad * m`
/// on every device (candle's own `clamp` halves the gradient at the bounds).
pub fn clamp(x: &Tensor, lo: f64, hi: f64) -> Result<Tensor> {
    let m = x.ge(lo)?.mul(&x.le(hi)?)?.to_dtype(x.dtype())?;
    let xm = (x * &m)?;
    let rest = (x.detach().clamp(lo, hi)? - xm.detach())?;
    xm + rest
}

/// Per-row negative log-likelihood of `labels` under `logits`.
///
/// `logits`: `[N, V]`; `labels`: `[N]` u32. Returns the losses `[N]` (f32,
/// differentiable) so callers can reduce them per text.
pub fn token_nll(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logp = log_softmax_last_dim(logits)?;
    let picked = logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    picked.neg()
}

/// A label that [`token_nll_argmax`] skips: its row has loss 0 and no
/// gradient.
pub const IGNORE_LABEL: u32 = u32::MAX;

/// Per-row negative log-likelihood of `labels` under `logits` `[N, V]`, and
/// each row's argmax (the first maximum, as `torch.argmax`).
///
/// Rows labelled [`IGNORE_LABEL`] get loss 0 and no gradient. On the CPU in
/// f32 this is one fused, multi-threaded pass over the logits whose backward
/// writes `(softmax - onehot) * grad` directly: the composition of candle
/// ops it replaces makes several logits-sized temporaries (and their
/// gradients) on one thread, which dominated a step with a large vocabulary.
/// Elsewhere (or with the fused kernels off) it falls back to that
/// composition.
pub fn token_nll_argmax(
    k: &Kernels,
    logits: &Tensor,
    labels: &[u32],
) -> Result<(Tensor, Vec<u32>)> {
    let (n, _v) = logits.dims2()?;
    if labels.len() != n {
        return Err(candle_core::Error::Msg(format!(
            "internal: {} labels for {n} rows of logits",
            labels.len()
        )));
    }
    if k.applies(logits) {
        let argmax = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let op = FusedNll {
            labels: labels.to_vec(),
            argmax: argmax.clone(),
            shifts: std::sync::Mutex::new(Vec::new()),
        };
        let nll = logits.contiguous()?.apply_op1(op)?;
        let pred = std::mem::take(&mut *argmax.lock().expect("argmax lock"));
        return Ok((nll, pred));
    }
    let keep: Vec<f32> = labels
        .iter()
        .map(|&l| if l == IGNORE_LABEL { 0.0 } else { 1.0 })
        .collect();
    let safe: Vec<u32> = labels
        .iter()
        .map(|&l| if l == IGNORE_LABEL { 0 } else { l })
        .collect();
    let dev = logits.device();
    let safe = Tensor::new(safe.as_slice(), dev)?.unsqueeze(1)?;
    let keep = Tensor::new(keep.as_slice(), dev)?.to_dtype(stat_dtype(logits))?;
    let pred = logits.argmax(D::Minus1)?.to_vec1()?;
    // Computed outside the graph, which keeps only the logits and the row
    // shifts: the composition would keep three more logits-sized tensors
    // until the backward.
    let x = logits.detach().to_dtype(stat_dtype(logits))?;
    let max = x.max_keepdim(D::Minus1)?;
    let mut e = x.broadcast_sub(&max)?;
    e = e.exp()?;
    let shift = (e.sum_keepdim(D::Minus1)?.log()? + max)?;
    drop(e);
    let picked = x.gather(&safe, 1)?;
    let nll = ((shift.clone() - picked)?.squeeze(1)? * &keep)?.contiguous()?;
    let nll = attach1("nll", logits, nll, move |x, g| {
        // d nll / d x = (softmax(x) - onehot(label)) * keep * grad, one
        // logits-sized tensor replacing the last.
        let gk = (g.to_dtype(keep.dtype())? * &keep)?.unsqueeze(1)?;
        let mut d = x.detach().to_dtype(keep.dtype())?.broadcast_sub(&shift)?;
        d = d.exp()?;
        d = d.broadcast_mul(&gk)?;
        d = d.scatter_add(&safe, &gk.neg()?, 1)?;
        d.to_dtype(x.dtype())
    })?;
    Ok((nll, pred))
}

/// The fused CPU kernel of [`token_nll_argmax`].
struct FusedNll {
    labels: Vec<u32>,
    /// Filled by the forward with each row's argmax.
    argmax: std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
    /// Filled by the forward with each row's `max + log(sum(exp(x - max)))`,
    /// so that the backward computes the softmax in one pass.
    shifts: std::sync::Mutex<Vec<f32>>,
}

/// Row maximum, its first index, and `log(sum(exp(x - max)))`.
fn row_stats(x: &[f32]) -> (f32, u32, f32) {
    crate::cpu::simd(|| {
        // Eight lanes so that the loops vectorise; NaN entries are skipped
        // (`v > m` is false), as in a scalar `if v > max` scan.
        let mut lanes = [f32::NEG_INFINITY; 8];
        let (body, tail) = x.split_at(x.len() / 8 * 8);
        for c in body.chunks_exact(8) {
            for i in 0..8 {
                lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
            }
        }
        let mut max = f32::NEG_INFINITY;
        for &v in lanes.iter().chain(tail) {
            if v > max {
                max = v;
            }
        }
        let arg = x.iter().position(|&v| v == max).unwrap_or(0) as u32;
        // Accumulate in f64 (eight partial sums): a long f32 sum loses
        // digits of the loss.
        let mut acc = [0f64; 8];
        for c in body.chunks_exact(8) {
            for i in 0..8 {
                acc[i] += crate::cpu::exp(c[i] - max) as f64;
            }
        }
        let mut sum = acc.iter().sum::<f64>();
        for &v in tail {
            sum += crate::cpu::exp(v - max) as f64;
        }
        (max, arg, sum.ln() as f32)
    })
}

impl CustomOp1 for FusedNll {
    fn name(&self) -> &'static str {
        "fused-nll"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let x = contiguous_f32(self.name(), s, l)?;
        let (n, v) = l.shape().dims2()?;
        if let Some(bad) = self
            .labels
            .iter()
            .find(|&&l| l != IGNORE_LABEL && l as usize >= v)
        {
            candle_core::bail!("fused-nll: label {bad} outside the vocabulary of {v}");
        }
        let out: Vec<(f32, u32, f32)> = x
            .par_chunks(v)
            .zip(self.labels.par_iter())
            .map(|(row, &label)| {
                let (max, arg, lse) = row_stats(row);
                let nll = if label == IGNORE_LABEL {
                    0.0
                } else {
                    lse + max - row[label as usize]
                };
                (nll, arg, max + lse)
            })
            .collect();
        *self.argmax.lock().expect("argmax lock") = out.iter().map(|o| o.1).collect();
        *self.shifts.lock().expect("shifts lock") = out.iter().map(|o| o.2).collect();
        let nll = out.into_iter().map(|o| o.0).collect();
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(&self, arg: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        use rayon::prelude::*;
        let (n, v) = arg.dims2()?;
        let g: Vec<f32> = grad.to_dtype(DType::F32)?.to_vec1()?;
        let mut dx = vec![0f32; n * v];
        let mut shifts = self.shifts.lock().expect("shifts lock").clone();
        if shifts.len() != n {
            shifts = Vec::new();
        }
        with_cpu_f32(arg, |x| {
            dx.par_chunks_mut(v)
                .zip(x.par_chunks(v))
                .zip(self.labels.par_iter().zip(g.par_iter()))
                .enumerate()
                .for_each(|(r, ((d, row), (&label, &gr)))| {
                    if label == IGNORE_LABEL || gr == 0.0 {
                        return;
                    }
                    let shift = match shifts.get(r) {
                        Some(&s) => s,
                        None => {
                            let (max, _, lse) = row_stats(row);
                            max + lse
                        }
                    };
                    crate::cpu::simd(|| {
                        for (di, &xi) in d.iter_mut().zip(row) {
                            *di = crate::cpu::exp(xi - shift) * gr;
                        }
                    });
                    d[label as usize] -= gr;
                });
        })?;
        Ok(Some(Tensor::from_vec(dx, (n, v), arg.device())?))
    }
}

/// Additive attention bias `[B, 1, T, start + T]`: 0 where query `i` may see
/// key `j` (causal, key not padding, within the sliding window), `-inf`
/// elsewhere. `mask` is `[B, start + T]` with 1 for real tokens.
///
/// A query that would see no key at all (a padding position whose window
/// holds only padding) sees itself instead, so that its softmax has no NaN
/// to spread through the values; padding outputs are never used.
pub fn attention_bias(
    b: usize,
    t: usize,
    start: usize,
    mask: Option<&Tensor>,
    window: Option<usize>,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let total = start + t;
    let keep: Option<Vec<Vec<f32>>> = match mask {
        Some(m) => Some(m.to_dtype(DType::F32)?.to_vec2()?),
        None => None,
    };
    let mut v = vec![0f32; b * t * total];
    for bi in 0..b {
        for i in 0..t {
            let qpos = start + i;
            for j in 0..total {
                let causal = j <= qpos;
                let in_window = window.is_none_or(|w| j + w > qpos);
                let real = keep.as_ref().is_none_or(|k| k[bi][j] > 0.5);
                if !(causal && in_window && real) {
                    v[(bi * t + i) * total + j] = f32::NEG_INFINITY;
                }
            }
            let row = &mut v[(bi * t + i) * total..(bi * t + i + 1) * total];
            if row.iter().all(|x| x.is_infinite()) {
                row[qpos] = 0.0;
            }
        }
    }
    Tensor::from_vec(v, (b, 1, t, total), dev)?.to_dtype(dtype)
}

/// `log(1 + exp(x))`, differentiable and stable for large `|x|`.
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    x.relu()? + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// `max |a - b|` of two f64 tensors.
    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        d.to_scalar::<f64>().unwrap()
    }

    /// Central finite differences of `sum(f(x) * r)` against autograd.
    fn check_grad(f: impl Fn(&Tensor) -> Result<Tensor>, shape: &[usize]) {
        let dev = Device::Cpu;
        let x0 = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let x0 = x0.to_dtype(DType::F64).unwrap();
        let r = Tensor::randn(0f32, 1.0, f(&x0).unwrap().shape(), &dev)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let x = Var::from_tensor(&x0).unwrap();
        let loss = (f(x.as_tensor()).unwrap() * &r).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let g = g.get(x.as_tensor()).unwrap().flatten_all().unwrap();
        let g: Vec<f64> = g.to_vec1().unwrap();
        let base: Vec<f64> = x0.flatten_all().unwrap().to_vec1().unwrap();
        let eps = 1e-5;
        let eval = |v: &[f64]| -> f64 {
            let t = Tensor::from_slice(v, shape, &dev).unwrap();
            (f(&t).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let mut max_err = 0f64;
        for i in 0..base.len() {
            let mut p = base.clone();
            p[i] += eps;
            let mut m = base.clone();
            m[i] -= eps;
            let fd = (eval(&p) - eval(&m)) / (2.0 * eps);
            max_err = max_err.max((fd - g[i]).abs() / (1.0 + fd.abs()));
        }
        assert!(max_err < 1e-6, "finite-difference mismatch {max_err}");
    }

    #[test]
    fn softmax_grad_matches_finite_differences() {
        check_grad(softmax_last_dim, &[3, 5]);
    }

    #[test]
    fn log_softmax_grad_matches_finite_differences() {
        check_grad(log_softmax_last_dim, &[2, 7]);
    }

    #[test]
    fn rms_norm_grad_matches_finite_differences() {
        let w = Tensor::new(&[0.5f64, -1.0, 2.0, 1.5], &Device::Cpu).unwrap();
        check_grad(
            |x| rms_norm(&Kernels::default(), x, Some(&w), 1e-6, false),
            &[3, 4],
        );
        check_grad(
            |x| rms_norm(&Kernels::default(), x, Some(&w), 1e-6, true),
            &[3, 4],
        );
    }

    #[test]
    fn layer_norm_grad_matches_finite_differences() {
        let w = Tensor::new(&[0.5f64, -1.0, 2.0, 1.5], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.1f64, 0.2, -0.3, 0.0], &Device::Cpu).unwrap();
        check_grad(|x| layer_norm(x, Some(&w), Some(&b), 1e-5), &[3, 4]);
        check_grad(|x| layer_norm(x, None, None, 1e-5), &[2, 4]);
    }

    #[test]
    fn rope_grad_matches_finite_differences() {
        let (c, s) = rope_tables(&[1.0, 0.1], 3, 4, DType::F64, &Device::Cpu).unwrap();
        check_grad(|x| apply_rope(x, &c, &s), &[1, 2, 4, 4]);
        check_grad(|x| apply_rope(x, &c, &s), &[1, 1, 4, 6]);
    }

    #[test]
    fn attention_grad_matches_finite_differences_in_q_k_and_v() {
        let dev = Device::Cpu;
        let rand = |shape: &[usize]| {
            Tensor::randn(0f32, 1.0, shape, &dev)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
        };
        let (q, k, v) = (
            rand(&[2, 3, 4, 5]),
            rand(&[2, 3, 4, 5]),
            rand(&[2, 3, 4, 5]),
        );
        // Causal, with the second text's last key masked as padding.
        let mask = Tensor::new(&[[1f32, 1., 1., 1.], [1., 1., 1., 0.]], &dev).unwrap();
        let bias = attention_bias(2, 4, 0, Some(&mask), None, DType::F64, &dev).unwrap();
        let s = 0.4;
        check_grad(|x| attention(x, &k, &v, &bias, s), &[2, 3, 4, 5]);
        check_grad(|x| attention(&q, x, &v, &bias, s), &[2, 3, 4, 5]);
        check_grad(|x| attention(&q, &k, x, &bias, s), &[2, 3, 4, 5]);
        // The value is the plain composition's, tracked or not.
        let plain = softmax_last_dim(
            &(q.matmul(&k.t().unwrap()).unwrap() * s)
                .unwrap()
                .broadcast_add(&bias)
                .unwrap(),
        )
        .unwrap()
        .matmul(&v)
        .unwrap();
        let qv = Var::from_tensor(&q).unwrap();
        for out in [
            attention(&q, &k, &v, &bias, s).unwrap(),
            attention(qv.as_tensor(), &k, &v, &bias, s).unwrap(),
        ] {
            assert!(max_diff(&out, &plain) < 1e-12);
        }
    }

    #[test]
    fn activation_grads_match_finite_differences_and_candle() {
        type Act = fn(&Tensor) -> Result<Tensor>;
        let ours: [(Act, Act); 4] = [
            (silu, |x| x.silu()),
            (gelu_tanh, |x| x.gelu()),
            (gelu_erf, |x| x.gelu_erf()),
            (relu, |x| x.relu()),
        ];
        let x = (Tensor::randn(0f32, 2.0, (3, 7), &Device::Cpu).unwrap() + 0.01).unwrap();
        let x = x.to_dtype(DType::F64).unwrap();
        for (f, candle) in ours {
            check_grad(f, &[3, 7]);
            // Value and gradient as candle's own op.
            let v = Var::from_tensor(&x).unwrap();
            let (a, b) = (f(v.as_tensor()).unwrap(), candle(v.as_tensor()).unwrap());
            let ga = a.sum_all().unwrap().backward().unwrap();
            let gb = b.sum_all().unwrap().backward().unwrap();
            assert!(max_diff(&a, &b) < 1e-12);
            let (ga, gb) = (
                ga.get(v.as_tensor()).unwrap(),
                gb.get(v.as_tensor()).unwrap(),
            );
            assert!(max_diff(ga, gb) < 1e-12);
        }
    }

    #[test]
    fn linear_grad_matches_finite_differences_and_matmul() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 3), &dev)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let b = Tensor::new(&[0.1f64, 0.2, -0.3, 0.0, 1.0], &dev).unwrap();
        check_grad(|x| linear(&Kernels::default(), x, &w, Some(&b)), &[2, 4, 3]);
        let x = Tensor::randn(0f32, 1.0, (4, 3), &dev)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let a = linear(&Kernels::default(), &x, &w, None).unwrap();
        let e = x.matmul(&w.t().unwrap()).unwrap();
        assert!(max_diff(&a, &e) < 1e-12);
    }

    #[test]
    fn composed_nll_grad_matches_finite_differences() {
        let labels = [3u32, IGNORE_LABEL, 0, 10];
        check_grad(
            |x| Ok(token_nll_argmax(&Kernels::composed(), x, &labels)?.0),
            &[4, 11],
        );
        // The value is `-log_softmax` at the label.
        let x = Tensor::randn(0f32, 1.0, (4, 11), &Device::Cpu).unwrap();
        let (nll, _) = token_nll_argmax(&Kernels::composed(), &x, &labels).unwrap();
        let want = token_nll(&x, &Tensor::new(&[3u32, 0, 0, 10], &Device::Cpu).unwrap()).unwrap();
        let (nll, want): (Vec<f32>, Vec<f32>) = (nll.to_vec1().unwrap(), want.to_vec1().unwrap());
        for i in [0, 2, 3] {
            assert!((nll[i] - want[i]).abs() < 1e-6);
        }
        assert_eq!(nll[1], 0.0);
    }

    #[test]
    fn fused_nll_matches_the_composition_in_value_gradient_and_argmax() {
        let dev = Device::Cpu;
        let (n, v) = (6, 11);
        let x0 = (Tensor::randn(0f32, 1.0, (n, v), &dev).unwrap() * 3.0).unwrap();
        let labels = [3u32, IGNORE_LABEL, 0, 10, 7, 7];
        let weights = Tensor::new(&[0.5f32, 2.0, -1.0, 1.5, 0.25, 3.0], &dev).unwrap();
        let run = |fused: bool| {
            let x = Var::from_tensor(&x0).unwrap();
            let (nll, pred) = if fused {
                token_nll_argmax(&Kernels::default(), x.as_tensor(), &labels).unwrap()
            } else {
                // The composition, through the f64 fallback.
                let (nll, pred) = token_nll_argmax(
                    &Kernels::default(),
                    &x.as_tensor().to_dtype(DType::F64).unwrap(),
                    &labels,
                )
                .unwrap();
                (nll.to_dtype(DType::F32).unwrap(), pred)
            };
            let loss = (nll.clone() * &weights).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            let g: Vec<f32> = g
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let nll: Vec<f32> = nll.to_vec1().unwrap();
            (nll, pred, g)
        };
        let (a_nll, a_pred, a_g) = run(true);
        let (b_nll, b_pred, b_g) = run(false);
        assert_eq!(a_pred, b_pred);
        assert_eq!(a_nll[1], 0.0, "ignored row has no loss");
        for (a, b) in a_nll.iter().zip(&b_nll).chain(a_g.iter().zip(&b_g)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert!(
            a_g[v..2 * v].iter().all(|&g| g == 0.0),
            "ignored row has no gradient"
        );
        assert!(a_g.iter().any(|&g| g.abs() > 1e-3));
    }

    #[test]
    fn fused_nll_rejects_a_label_outside_the_vocabulary() {
        let x = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(token_nll_argmax(&Kernels::default(), &x, &[1, 4]).is_err());
        assert!(token_nll_argmax(&Kernels::default(), &x, &[1]).is_err());
    }

    #[test]
    fn clamp_grad_matches_finite_differences_and_torch_at_the_bounds() {
        check_grad(|x| clamp(x, -0.5, 0.7), &[4, 5]);
        let dev = Device::Cpu;
        let x = Var::new(&[-2.0f32, -0.5, 0.1, 0.7, 3.0], &dev).unwrap();
        let y = clamp(x.as_tensor(), -0.5, 0.7).unwrap();
        let v: Vec<f32> = y.to_vec1().unwrap();
        assert_eq!(v, [-0.5, -0.5, 0.1, 0.7, 0.7]);
        let g = y.sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = g.get(x.as_tensor()).unwrap().to_vec1().unwrap();
        assert_eq!(g, [0.0, 1.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn token_nll_matches_definition() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1f32, 2.0, 3.0], [0.0, 0.0, 0.0]], &dev).unwrap();
        let labels = Tensor::new(&[2u32, 1], &dev).unwrap();
        let l: Vec<f32> = token_nll(&logits, &labels).unwrap().to_vec1().unwrap();
        let lse = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        assert!((l[0] - (lse - 3.0)).abs() < 1e-6);
        assert!((l[1] - 3f32.ln()).abs() < 1e-6);
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
