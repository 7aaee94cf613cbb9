//! Fused CPU kernels (f32) with hand-written backward passes.
//!
//! A transformer layer written as a composition of candle ops runs dozens of
//! element-wise passes (and as many again in the backward), most of them on
//! one thread, each allocating a fresh activation-sized tensor. On the CPU
//! these kernels replace the hottest compositions with one multi-threaded
//! (rayon) pass each, forward and backward:
//!
//! - [`rms_norm`]: RMSNorm over the last dimension;
//! - [`silu_mul`]: the gated MLP's `silu(gate) * up`;
//! - [`rope`]: rotary embeddings on `[B, T, heads * head_dim]` rows;
//! - [`attention`]: scores, mask, softmax and the weighted sum of values for
//!   all heads (grouped-query heads included), reading queries, keys and
//!   values in the layout the projections write (`[B, T, heads * head_dim]`),
//!   so no head transposes or key/value repeats are materialised; the
//!   backward recomputes the probabilities instead of storing them.
//!
//! [`applies`] says when they can be used (a CPU tensor in f32); the callers
//! in [`crate::ops`] and [`crate::model::blocks`] fall back to the composed
//! ops elsewhere (CUDA, bf16/f16, f64 in the finite-difference tests). The
//! tests at the end check values and gradients against those compositions.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;
use crate::ops::contiguous_f32 as data;

/// Whether the fused kernels apply to `x`: an f32 tensor on the CPU, unless
/// the environment sets `CRAM_FUSED=off` (to compare with the composed ops).
pub fn applies(x: &Tensor) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| !matches!(std::env::var("CRAM_FUSED").as_deref(), Ok("off" | "0")));
    on && x.device().is_cpu() && x.dtype() == DType::F32
}

/// The f32 values of a tensor, made contiguous (a gradient may be strided).
fn values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// A CPU f32 tensor of `shape` from `v`.
fn tensor(v: Vec<f32>, shape: &Shape, like: &Tensor) -> candle_core::Result<Tensor> {
    Tensor::from_vec(v, shape.clone(), like.device())
}

/// Runs `f` compiled for AVX2 and FMA where the CPU has them (the crate is
/// built for the baseline x86-64, whose vectors are half as wide): the
/// kernels' loops are written to vectorise, and are inlined into this
/// function with its target features.
#[inline(always)]
fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features `run` is compiled for.
            return unsafe { run(f) };
        }
    }
    f()
}

/// Dot product with eight independent accumulators, so that it vectorises.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// `y += a * x`.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

// ---------------------------------------------------------------------------
// RMSNorm

struct RmsNorm {
    /// The scale (already `1 + w` for Gemma), or none.
    w: Option<Vec<f32>>,
    eps: f32,
}

impl RmsNorm {
    /// `1 / sqrt(mean(x^2) + eps)` of one row.
    fn inv(&self, x: &[f32]) -> f32 {
        let ms = dot(x, x) / x.len() as f32;
        1.0 / (ms + self.eps).sqrt()
    }
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = data(self.name(), s, l)?;
        let h = l.shape().dims().last().copied().unwrap_or(1);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(h).zip(x.par_chunks(h)).for_each(|(y, x)| {
            let inv = self.inv(x);
            match &self.w {
                Some(w) => {
                    for ((yi, xi), wi) in y.iter_mut().zip(x).zip(w) {
                        *yi = xi * inv * wi;
                    }
                }
                None => {
                    for (yi, xi) in y.iter_mut().zip(x) {
                        *yi = xi * inv;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let x = values(arg)?;
        let g = values(grad)?;
        let h = arg.dims().last().copied().unwrap_or(1);
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(h)
            .zip(x.par_chunks(h).zip(g.par_chunks(h)))
            .for_each(|(dx, (x, g))| {
                let inv = self.inv(x);
                // gw = g * w; dx = inv * gw - x * inv^3 * <gw, x> / h
                let gw: Vec<f32> = match &self.w {
                    Some(w) => g.iter().zip(w).map(|(a, b)| a * b).collect(),
                    None => g.to_vec(),
                };
                let c = dot(&gw, x) * inv * inv * inv / h as f32;
                for ((d, gi), xi) in dx.iter_mut().zip(&gw).zip(x) {
                    *d = inv * gi - c * xi;
                }
            });
        Ok(Some(tensor(dx, arg.shape(), arg)?))
    }
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) * w`, with
/// `1 + w` as the scale when `add_one` (Gemma). CPU f32 only (see
/// [`applies`]).
pub fn rms_norm(x: &Tensor, w: Option<&Tensor>, eps: f64, add_one: bool) -> Result<Tensor> {
    let w = match w {
        Some(w) => {
            let mut v: Vec<f32> = values(w)?;
            if add_one {
                v.iter_mut().for_each(|x| *x += 1.0);
            }
            Some(v)
        }
        None => None,
    };
    let op = RmsNorm { w, eps: eps as f32 };
    Ok(x.contiguous()?.apply_op1(op)?)
}

// ---------------------------------------------------------------------------
// silu(g) * u

struct SiluMul;

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "fused-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = data(self.name(), s1, l1)?;
        let u = data(self.name(), s2, l2)?;
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "fused-silu-mul: shapes {:?} and {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(4096)
            .zip(g.par_chunks(4096).zip(u.par_chunks(4096)))
            .for_each(|(y, (g, u))| {
                for ((yi, gi), ui) in y.iter_mut().zip(g).zip(u) {
                    *yi = gi / (1.0 + (-gi).exp()) * ui;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        g_arg: &Tensor,
        u_arg: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = values(g_arg)?;
        let u = values(u_arg)?;
        let d = values(grad)?;
        let mut dg = vec![0f32; g.len()];
        let mut du = vec![0f32; g.len()];
        dg.par_chunks_mut(4096)
            .zip(du.par_chunks_mut(4096))
            .zip(
                g.par_chunks(4096)
                    .zip(u.par_chunks(4096))
                    .zip(d.par_chunks(4096)),
            )
            .for_each(|((dg, du), ((g, u), d))| {
                for i in 0..g.len() {
                    let s = sigmoid(g[i]);
                    du[i] = d[i] * g[i] * s;
                    dg[i] = d[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                }
            });
        Ok((
            Some(tensor(dg, g_arg.shape(), g_arg)?),
            Some(tensor(du, u_arg.shape(), u_arg)?),
        ))
    }
}

/// `silu(g) * u`, element-wise, for `g` and `u` of one shape. CPU f32 only.
pub fn silu_mul(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    Ok(g.contiguous()?.apply_op2(&u.contiguous()?, SiluMul)?)
}

// ---------------------------------------------------------------------------
// Rotary embeddings on [B, T, heads * head_dim]

struct Rope {
    /// `[T, rot]` tables in the half-split layout of `transformers`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    rot: usize,
    head_dim: usize,
}

impl Rope {
    /// Rotates every head of one token row; `sign` = -1 applies the inverse
    /// rotation (the backward).
    fn row(&self, y: &mut [f32], x: &[f32], pos: usize, sign: f32) {
        let half = self.rot / 2;
        let c = &self.cos[pos * self.rot..(pos + 1) * self.rot];
        let s = &self.sin[pos * self.rot..(pos + 1) * self.rot];
        for (yh, xh) in y
            .chunks_exact_mut(self.head_dim)
            .zip(x.chunks_exact(self.head_dim))
        {
            for j in 0..half {
                let (x1, x2) = (xh[j], xh[j + half]);
                if sign > 0.0 {
                    yh[j] = x1 * c[j] - x2 * s[j];
                    yh[j + half] = x2 * c[j + half] + x1 * s[j + half];
                } else {
                    yh[j] = x1 * c[j] + x2 * s[j + half];
                    yh[j + half] = x2 * c[j + half] - x1 * s[j];
                }
            }
            yh[self.rot..].copy_from_slice(&xh[self.rot..]);
        }
    }

    /// Rotates `x` of shape `[B, T, heads * head_dim]` (row `r` is position
    /// `r % T`).
    fn apply(&self, x: &[f32], shape: &Shape, sign: f32) -> candle_core::Result<Vec<f32>> {
        let (_, t, width) = shape.dims3()?;
        if self.cos.len() != t * self.rot || width % self.head_dim != 0 {
            candle_core::bail!(
                "fused-rope: input {shape:?} does not fit tables of {} x {} (head width {})",
                self.cos.len() / self.rot.max(1),
                self.rot,
                self.head_dim
            );
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(width)
            .zip(x.par_chunks(width))
            .enumerate()
            .for_each(|(r, (y, x))| self.row(y, x, r % t, sign));
        Ok(y)
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = data(self.name(), s, l)?;
        Ok((
            CpuStorage::F32(self.apply(x, l.shape(), 1.0)?),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, arg: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = values(grad)?;
        let dx = self.apply(&g, arg.shape(), -1.0)?;
        Ok(Some(tensor(dx, arg.shape(), arg)?))
    }
}

/// Rotary embeddings on `x` of shape `[B, T, heads * head_dim]` with
/// `(cos, sin)` tables of shape `[T, rot]` (half-split layout, the first
/// `rot` channels of each head rotate). CPU f32 only.
pub fn rope(x: &Tensor, head_dim: usize, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let rot = cos.dim(1)?;
    let op = Rope {
        cos: values(cos)?,
        sin: values(sin)?,
        rot,
        head_dim,
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

// ---------------------------------------------------------------------------
// Attention

/// A strided view of a matrix inside a slice: element `(r, c)` is at
/// `off + r * rs + c * cs`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    off: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// A row-major `[rows, cols]` matrix.
    fn rows(data: &'a [f32], cols: usize) -> Self {
        View {
            data,
            off: 0,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose.
    fn t(self) -> Self {
        View {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// `c = scale * a @ b` for `a` `[m, k]`, `b` `[k, n]` (strided views) and
/// `c` row-major `[m, n]`, on the calling thread (the `gemm` crate picks its
/// SIMD kernels at run time).
fn matmul(c: &mut [f32], m: usize, n: usize, k: usize, a: View, b: View, scale: f32) {
    let last =
        |v: &View, r: usize, cl: usize| v.off + (r.max(1) - 1) * v.rs + (cl.max(1) - 1) * v.cs;
    assert!(c.len() >= m * n && last(&a, m, k) < a.data.len() && last(&b, k, n) < b.data.len());
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: every element the views address lies inside their slices
    // (the largest index is checked above, all strides are non-negative), and
    // `c` is an exclusively borrowed `[m, n]` row-major buffer.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data.as_ptr().add(a.off),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr().add(b.off),
            b.cs as isize,
            b.rs as isize,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

struct Attention {
    /// Additive mask `[B, T, S]` (0 or `-inf`).
    bias: Vec<f32>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f32,
}

/// The sizes of one attention call.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    s: usize,
}

impl Attention {
    fn dims(&self, q: &Shape, k: &Shape, v: &Shape) -> candle_core::Result<Dims> {
        let (b, t, qw) = q.dims3()?;
        let (kb, s, kw) = k.dims3()?;
        let d = self.head_dim;
        if qw != self.heads * d
            || kw != self.kv_heads * d
            || kb != b
            || k != v
            || self.kv_heads == 0
            || !self.heads.is_multiple_of(self.kv_heads)
            || self.bias.len() != b * t * s
        {
            candle_core::bail!(
                "fused-attention: q {q:?}, k {k:?}, v {v:?} do not fit {} heads, {} kv heads of {d} \
                 and a mask of {} entries",
                self.heads,
                self.kv_heads,
                self.bias.len()
            );
        }
        Ok(Dims { b, t, s })
    }

    /// Head `h` of batch row `b` in a `[B, T, heads * d]` tensor, `[T, d]`.
    fn head<'a>(&self, x: &'a [f32], b: usize, t: usize, heads: usize, h: usize) -> View<'a> {
        let d = self.head_dim;
        View {
            data: x,
            off: (b * t * heads + h) * d,
            rs: heads * d,
            cs: 1,
        }
    }

    /// The softmax probabilities `[T, S]` of unit `(b, h)`; masked keys get
    /// exactly 0.
    fn probs(&self, q: &[f32], k: &[f32], dm: Dims, b: usize, h: usize) -> Vec<f32> {
        let d = self.head_dim;
        let kvh = h / (self.heads / self.kv_heads);
        let mut p = vec![0f32; dm.t * dm.s];
        let qh = self.head(q, b, dm.t, self.heads, h);
        let kh = self.head(k, b, dm.s, self.kv_heads, kvh);
        matmul(&mut p, dm.t, dm.s, d, qh, kh.t(), self.scale);
        let bias = &self.bias[b * dm.t * dm.s..(b + 1) * dm.t * dm.s];
        simd(|| {
            for (row, brow) in p.chunks_exact_mut(dm.s).zip(bias.chunks_exact(dm.s)) {
                let mut max = f32::NEG_INFINITY;
                for (x, &bj) in row.iter_mut().zip(brow) {
                    *x += bj;
                    max = max.max(*x);
                }
                let mut sum = 0f32;
                for x in row.iter_mut() {
                    *x = if *x == f32::NEG_INFINITY {
                        0.0
                    } else {
                        (*x - max).exp()
                    };
                    sum += *x;
                }
                let inv = 1.0 / sum;
                for x in row.iter_mut() {
                    *x *= inv;
                }
            }
        });
        p
    }

    /// Writes per-unit rows `[B * heads][T][d]` into `[B, T, heads * d]`.
    fn gather_units(&self, units: &[Vec<f32>], b: usize, t: usize, heads: usize) -> Vec<f32> {
        let d = self.head_dim;
        let mut out = vec![0f32; b * t * heads * d];
        out.par_chunks_mut(heads * d)
            .enumerate()
            .for_each(|(row, o)| {
                let (bi, i) = (row / t, row % t);
                for (h, oh) in o.chunks_exact_mut(d).enumerate() {
                    oh.copy_from_slice(&units[bi * heads + h][i * d..][..d]);
                }
            });
        out
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            data(self.name(), s1, l1)?,
            data(self.name(), s2, l2)?,
            data(self.name(), s3, l3)?,
        );
        let dm = self.dims(l1.shape(), l2.shape(), l3.shape())?;
        let d = self.head_dim;
        let rep = self.heads / self.kv_heads;
        let units: Vec<Vec<f32>> = (0..dm.b * self.heads)
            .into_par_iter()
            .map(|u| {
                let (b, h) = (u / self.heads, u % self.heads);
                let p = self.probs(q, k, dm, b, h);
                let mut o = vec![0f32; dm.t * d];
                let vh = self.head(v, b, dm.s, self.kv_heads, h / rep);
                matmul(&mut o, dm.t, d, dm.s, View::rows(&p, dm.s), vh, 1.0);
                o
            })
            .collect();
        let out = self.gather_units(&units, dm.b, dm.t, self.heads);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q_arg: &Tensor,
        k_arg: &Tensor,
        v_arg: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v, g) = (
            values(q_arg)?,
            values(k_arg)?,
            values(v_arg)?,
            values(grad)?,
        );
        let dm = self.dims(q_arg.shape(), k_arg.shape(), v_arg.shape())?;
        let d = self.head_dim;
        let rep = self.heads / self.kv_heads;
        // Per unit (b, h): dq [T, d], dk [S, d], dv [S, d].
        let units: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..dm.b * self.heads)
            .into_par_iter()
            .map(|u| {
                let (b, h) = (u / self.heads, u % self.heads);
                let kvh = h / rep;
                let p = self.probs(&q, &k, dm, b, h);
                let (qh, gh) = (
                    self.head(&q, b, dm.t, self.heads, h),
                    self.head(&g, b, dm.t, self.heads, h),
                );
                let (kh, vh) = (
                    self.head(&k, b, dm.s, self.kv_heads, kvh),
                    self.head(&v, b, dm.s, self.kv_heads, kvh),
                );
                // dP = dO V^T; dS = P * (dP - rowsum(P * dP)) * scale.
                let mut ds = vec![0f32; dm.t * dm.s];
                matmul(&mut ds, dm.t, dm.s, d, gh, vh.t(), 1.0);
                simd(|| {
                    for (dr, pr) in ds.chunks_exact_mut(dm.s).zip(p.chunks_exact(dm.s)) {
                        let c = dot(dr, pr);
                        for (x, &pj) in dr.iter_mut().zip(pr) {
                            *x = pj * (*x - c) * self.scale;
                        }
                    }
                });
                let (mut dq, mut dk, mut dv) = (
                    vec![0f32; dm.t * d],
                    vec![0f32; dm.s * d],
                    vec![0f32; dm.s * d],
                );
                let ds_v = View::rows(&ds, dm.s);
                matmul(&mut dq, dm.t, d, dm.s, ds_v, kh, 1.0);
                matmul(&mut dk, dm.s, d, dm.t, ds_v.t(), qh, 1.0);
                matmul(&mut dv, dm.s, d, dm.t, View::rows(&p, dm.s).t(), gh, 1.0);
                (dq, dk, dv)
            })
            .collect();
        let (dq, (dk, dv)): (Vec<_>, (Vec<_>, Vec<_>)) =
            units.into_iter().map(|(a, b, c)| (a, (b, c))).unzip();
        let dq = self.gather_units(&dq, dm.b, dm.t, self.heads);
        // Keys and values: sum the query heads that share a kv head.
        let kv_sum = |parts: &[Vec<f32>]| -> Vec<f32> {
            let mut out = vec![0f32; dm.b * dm.s * self.kv_heads * d];
            out.par_chunks_mut(self.kv_heads * d)
                .enumerate()
                .for_each(|(row, o)| {
                    let (bi, j) = (row / dm.s, row % dm.s);
                    for (kvh, oh) in o.chunks_exact_mut(d).enumerate() {
                        for r in 0..rep {
                            let part = &parts[bi * self.heads + kvh * rep + r][j * d..][..d];
                            axpy(oh, 1.0, part);
                        }
                    }
                });
            out
        };
        let (dk, dv) = (kv_sum(&dk), kv_sum(&dv));
        Ok((
            Some(tensor(dq, q_arg.shape(), q_arg)?),
            Some(tensor(dk, k_arg.shape(), k_arg)?),
            Some(tensor(dv, v_arg.shape(), v_arg)?),
        ))
    }
}

/// Scaled dot-product attention for all heads at once.
///
/// `q`: `[B, T, heads * head_dim]`; `k`, `v`: `[B, S, kv_heads * head_dim]`
/// (query head `h` reads kv head `h / (heads / kv_heads)`, as
/// `transformers`' `repeat_kv`); `bias`: the additive mask `[B, 1, T, S]`
/// of [`crate::model::blocks::attention_bias`]. Returns
/// `softmax(q k^T * scale + bias) v` as `[B, T, heads * head_dim]`.
/// Differentiable in `q`, `k` and `v`. CPU f32 only.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    heads: usize,
    kv_heads: usize,
    scale: f64,
) -> Result<Tensor> {
    let head_dim = q.dim(2)? / heads.max(1);
    let op = Attention {
        bias: values(bias)?,
        heads,
        kv_heads,
        head_dim,
        scale: scale as f32,
    };
    Ok(q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::blocks::attention_bias;
    use candle_core::{Device, Var};

    /// Random values from a fixed linear congruential sequence.
    fn rand(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    /// Runs `fused` on f32 copies of `inputs` and `reference` (candle's
    /// composed ops) on f64 copies; compares the outputs and the gradients of
    /// `sum(out * r)` with respect to the first `grads` inputs (the others
    /// are constants, as weights are).
    fn check(
        shapes: &[&[usize]],
        grads: usize,
        fused: impl Fn(&[Tensor]) -> Result<Tensor>,
        reference: impl Fn(&[Tensor]) -> Result<Tensor>,
    ) {
        let dev = Device::Cpu;
        let mk = |dtype: DType| -> Vec<Var> {
            shapes
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let n = s.iter().product();
                    let t = Tensor::from_vec(rand(n, i as u64 + 1), *s, &dev).unwrap();
                    Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()
                })
                .collect()
        };
        let (v32, v64) = (mk(DType::F32), mk(DType::F64));
        let t32: Vec<Tensor> = v32.iter().map(|v| v.as_tensor().clone()).collect();
        let t64: Vec<Tensor> = v64.iter().map(|v| v.as_tensor().clone()).collect();
        let y32 = fused(&t32).unwrap();
        let y64 = reference(&t64).unwrap();
        assert_eq!(y32.dims(), y64.dims());
        let r = Tensor::from_vec(rand(y64.elem_count(), 99), y64.shape(), &dev).unwrap();
        let max_diff = |a: &Tensor, b: &Tensor| -> f64 {
            let a: Vec<f64> = a
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let b: Vec<f64> = b.flatten_all().unwrap().to_vec1().unwrap();
            a.iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max)
        };
        let dy = max_diff(&y32, &y64);
        assert!(dy < 1e-5, "output differs by {dy}");
        let g32 = (y32 * r.to_dtype(DType::F32).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g64 = (y64 * r).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, (a, b)) in t32.iter().zip(&t64).enumerate().take(grads) {
            let (ga, gb) = (g32.get(a).unwrap(), g64.get(b).unwrap());
            let d = max_diff(ga, gb);
            assert!(d < 1e-4, "gradient of input {i} differs by {d}");
        }
    }

    #[test]
    fn rms_norm_matches_the_composition() {
        for add_one in [false, true] {
            check(
                &[&[2, 3, 20], &[20]],
                1,
                |t| rms_norm(&t[0], Some(&t[1]), 1e-6, add_one),
                |t| crate::ops::rms_norm(&t[0], Some(&t[1].detach()), 1e-6, add_one),
            );
        }
        check(
            &[&[5, 9]],
            1,
            |t| rms_norm(&t[0], None, 1e-5, false),
            |t| crate::ops::rms_norm(&t[0], None, 1e-5, false),
        );
    }

    #[test]
    fn silu_mul_matches_the_composition() {
        check(
            &[&[3, 4, 37], &[3, 4, 37]],
            2,
            |t| silu_mul(&(&t[0] * 4.0)?, &t[1]),
            |t| Ok(((&t[0] * 4.0)?.silu()? * &t[1])?),
        );
    }

    /// `[B, T, heads * d]` to `[B, heads, T, d]` and back.
    fn heads(x: &Tensor, h: usize) -> Result<Tensor> {
        let (b, t, w) = x.dims3()?;
        Ok(x.reshape((b, t, h, w / h))?.transpose(1, 2)?.contiguous()?)
    }
    fn unheads(x: &Tensor) -> Result<Tensor> {
        let (b, h, t, d) = x.dims4()?;
        Ok(x.transpose(1, 2)?.contiguous()?.reshape((b, t, h * d))?)
    }

    #[test]
    fn rope_matches_the_composition() {
        for (rot, d) in [(8usize, 8usize), (4, 10)] {
            let inv: Vec<f32> = (0..rot / 2)
                .map(|i| 1.0 / 100f32.powf(i as f32 / rot as f32))
                .collect();
            let tables = |dt| crate::ops::rope_tables(&inv, 3, 5, dt, &Device::Cpu).unwrap();
            let (c32, s32) = tables(DType::F32);
            let (c64, s64) = tables(DType::F64);
            check(
                &[&[2, 5, 3 * d]],
                1,
                |t| rope(&t[0], d, &c32, &s32),
                |t| unheads(&crate::ops::apply_rope(&heads(&t[0], 3)?, &c64, &s64)?),
            );
        }
    }

    /// The composed attention of `transformers`: repeat kv heads, scores,
    /// mask, softmax, weighted values.
    fn attention_reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: &Tensor,
        h: usize,
        kvh: usize,
        scale: f64,
    ) -> Result<Tensor> {
        let rep = |x: &Tensor| -> Result<Tensor> {
            let x = heads(x, kvh)?;
            let (b, _, s, d) = x.dims4()?;
            Ok(x.unsqueeze(2)?
                .broadcast_as((b, kvh, h / kvh, s, d))?
                .reshape((b, h, s, d))?)
        };
        let scores = (heads(q, h)?.matmul(&rep(k)?.t()?)? * scale)?.broadcast_add(bias)?;
        let p = crate::ops::softmax_last_dim(&scores)?;
        unheads(&p.matmul(&rep(v)?)?)
    }

    #[test]
    fn attention_matches_the_composition() {
        let dev = Device::Cpu;
        // Grouped heads with padding; then a cached decode (S > T) with a window.
        let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], &dev).unwrap();
        for (t, start, window, mask, h, kvh) in
            [(6, 0, None, Some(&mask), 6, 2), (2, 4, Some(3), None, 4, 4)]
        {
            let s = start + t;
            let d = 8;
            let bias = |dt| attention_bias(2, t, start, mask, window, dt, &dev).unwrap();
            let (b32, b64) = (bias(DType::F32), bias(DType::F64));
            check(
                &[&[2, t, h * d], &[2, s, kvh * d], &[2, s, kvh * d]],
                3,
                |x| attention(&x[0], &x[1], &x[2], &b32, h, kvh, 0.3),
                |x| attention_reference(&x[0], &x[1], &x[2], &b64, h, kvh, 0.3),
            );
        }
    }
}
