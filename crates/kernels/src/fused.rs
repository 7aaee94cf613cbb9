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
//! [`crate::Kernels::applies`] says when they are used (on, and a CPU tensor
//! in f32); the callers in [`crate::ops`] and the models' blocks fall back
//! to the composed ops elsewhere (CUDA, bf16/f16, f64 in the finite-difference tests). The
//! tests at the end check values and gradients against those compositions.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{contiguous_f32 as data, exp, simd};
use crate::Result;

/// The f32 values of a tensor, made contiguous (a gradient may be strided).
fn values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// Calls `f` with the f32 values of `t`: borrowed when `t` is a contiguous
/// CPU f32 tensor (an op's saved inputs are), else copied (a gradient may be
/// strided).
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    if t.is_contiguous() && t.dtype() == DType::F32 && t.device().is_cpu() {
        crate::cpu::with_cpu_f32(t, f)
    } else {
        Ok(f(&values(t)?))
    }
}

/// A CPU f32 tensor of `shape` from `v`.
fn tensor(v: Vec<f32>, shape: &Shape, like: &Tensor) -> candle_core::Result<Tensor> {
    Tensor::from_vec(v, shape.clone(), like.device())
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
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
        let h = arg.dims().last().copied().unwrap_or(1);
        let mut dx = vec![0f32; arg.elem_count()];
        let mut pass = |x: &[f32], g: &[f32]| {
            dx.par_chunks_mut(h)
                .zip(x.par_chunks(h).zip(g.par_chunks(h)))
                .for_each(|(dx, (x, g))| {
                    simd(|| {
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
                    })
                })
        };
        with_values(arg, |x| with_values(grad, |g| pass(x, g)))??;
        Ok(Some(tensor(dx, arg.shape(), arg)?))
    }
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) * w`, with
/// `1 + w` as the scale when `add_one` (Gemma). CPU f32 only (see
/// [`crate::Kernels::applies`]).
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
    x.contiguous()?.apply_op1(op)
}

// ---------------------------------------------------------------------------
// silu(g) * u

struct SiluMul;

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
                simd(|| {
                    for ((yi, &gi), ui) in y.iter_mut().zip(g).zip(u) {
                        *yi = gi * sigmoid(gi) * ui;
                    }
                })
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
        let mut dg = vec![0f32; g_arg.elem_count()];
        let mut du = vec![0f32; g_arg.elem_count()];
        let mut pass = |g: &[f32], u: &[f32], d: &[f32]| {
            dg.par_chunks_mut(4096)
                .zip(du.par_chunks_mut(4096))
                .zip(
                    g.par_chunks(4096)
                        .zip(u.par_chunks(4096))
                        .zip(d.par_chunks(4096)),
                )
                .for_each(|((dg, du), ((g, u), d))| {
                    simd(|| {
                        for ((((dg, du), &g), &u), &d) in
                            dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(d)
                        {
                            let s = sigmoid(g);
                            *du = d * g * s;
                            *dg = d * u * s * (1.0 + g * (1.0 - s));
                        }
                    })
                })
        };
        with_values(g_arg, |g| {
            with_values(u_arg, |u| with_values(grad, |d| pass(g, u, d)))
        })???;
        Ok((
            Some(tensor(dg, g_arg.shape(), g_arg)?),
            Some(tensor(du, u_arg.shape(), u_arg)?),
        ))
    }
}

/// `silu(g) * u`, element-wise, for `g` and `u` of one shape. CPU f32 only.
pub fn silu_mul(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    g.contiguous()?.apply_op2(&u.contiguous()?, SiluMul)
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
    x.contiguous()?.apply_op1(op)
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

    /// The view from row `r` on.
    fn skip_rows(self, r: usize) -> Self {
        View {
            off: self.off + r * self.rs,
            ..self
        }
    }

    /// The view from column `c` on.
    fn skip_cols(self, c: usize) -> Self {
        View {
            off: self.off + c * self.cs,
            ..self
        }
    }

    /// Index of element `(r - 1, c - 1)`, the last of an `[r, c]` block.
    fn last(&self, r: usize, c: usize) -> usize {
        self.off + (r.max(1) - 1) * self.rs + (c.max(1) - 1) * self.cs
    }
}

/// The attention kernel's products: single-threaded OpenBLAS calls when the
/// library is loaded (about twice as fast as the `gemm` crate at these
/// sizes, a few dozen rows by a head's width), else the `gemm` crate.
#[derive(Clone, Copy)]
struct Mm<'a>(Option<&'a crate::blas::Single<'a>>);

/// Runs `f` with the products of [`Mm`] (holding the BLAS lock when BLAS is
/// used, see [`crate::blas::Blas::single_threaded`]).
fn with_mm<R>(blas: Option<&crate::blas::Blas>, f: impl FnOnce(Mm) -> R) -> R {
    match blas {
        Some(b) => b.single_threaded(|s| f(Mm(Some(s)))),
        None => f(Mm(None)),
    }
}

impl Mm<'_> {
    /// `c = scale * a @ b` (`c += ...` when `accumulate`) for `a` `[m, k]`
    /// and `b` `[k, n]` (strided views), with `c` row-major `[m, n]` at row
    /// stride `ldc`, on the calling thread.
    ///
    /// # Safety
    /// `c` must be valid for reads and writes of the `m` rows of `n`
    /// elements at stride `ldc`, and no other thread may access them
    /// meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn product(
        self,
        c: *mut f32,
        ldc: usize,
        (m, n, k): (usize, usize, usize),
        a: View,
        b: View,
        scale: f32,
        accumulate: bool,
    ) {
        assert!(a.last(m, k) < a.data.len() && b.last(k, n) < b.data.len() && n <= ldc);
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            if !accumulate {
                for r in 0..m {
                    std::ptr::write_bytes(c.add(r * ldc), 0, n);
                }
            }
            return;
        }
        let beta = if accumulate { 1.0 } else { 0.0 };
        // A view as BLAS takes it: (transposed, leading dimension) of a
        // `[rows, cols]` operand, when one stride is 1 and the other large
        // enough.
        let blas_form = |v: &View, rows: usize, cols: usize| {
            if v.cs == 1 && v.rs >= cols.max(1) {
                Some((false, v.rs))
            } else if v.rs == 1 && v.cs >= rows.max(1) {
                Some((true, v.cs))
            } else {
                None
            }
        };
        if let (Some(blas), Some((ta, lda)), Some((tb, ldb))) =
            (self.0, blas_form(&a, m, k), blas_form(&b, k, n))
        {
            // SAFETY: the operands lie inside their slices (checked above)
            // with the leading dimensions BLAS requires; the caller vouches
            // for `c`.
            blas.sgemm(
                (ta, tb),
                (m, n, k),
                scale,
                (a.data.as_ptr().add(a.off), lda),
                (b.data.as_ptr().add(b.off), ldb),
                beta,
                (c, ldc),
            );
            return;
        }
        // SAFETY: every element the views address lies inside their slices
        // (the largest index is checked above, all strides are
        // non-negative); the caller vouches for `c`.
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr().add(a.off),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr().add(b.off),
            b.cs as isize,
            b.rs as isize,
            beta,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Query rows per block: a causal row block reads only the keys up to its
/// last row, so blocks skip most of the masked upper triangle of the scores
/// (a third of the work at 129 positions, in three blocks), and give the
/// threads more tasks than one per head. Smaller blocks skip more but run
/// slower products (32 measured slower than 64 on SmolLM2).
const ROW_BLOCK: usize = 64;

/// `n` rows in about `n / ROW_BLOCK` blocks of (nearly) equal size, as
/// `(start, end)`.
fn row_blocks(n: usize) -> Vec<(usize, usize)> {
    let nb = n.div_ceil(ROW_BLOCK).max(1);
    (0..nb)
        .map(|i| (i * n / nb, (i + 1) * n / nb))
        .filter(|(a, b)| b > a)
        .collect()
}

/// One past the last key any of a block's query rows sees (their
/// [`Attention::key_ends`]).
fn block_key_end(ends: &[usize]) -> usize {
    ends.iter().copied().max().unwrap_or(0)
}

/// Bound on the probabilities and score gradients the backward keeps at
/// once (bytes); heads beyond it are processed in further rounds.
const BWD_BUFFER_BYTES: usize = 64 << 20;

struct Attention {
    /// Additive mask `[B, T, S]` (0 or `-inf`).
    bias: Vec<f32>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f32,
    /// The library of the per-head products (else the `gemm` crate).
    blas: Option<&'static crate::blas::Blas>,
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

    /// For each batch row, and each of its query rows, one past the row's
    /// last unmasked key.
    fn key_ends(&self, dm: Dims) -> Vec<Vec<usize>> {
        self.bias
            .chunks_exact(dm.t * dm.s)
            .map(|rows| {
                rows.chunks_exact(dm.s)
                    .map(|row| {
                        row.iter()
                            .rposition(|&x| x != f32::NEG_INFINITY)
                            .map_or(0, |j| j + 1)
                    })
                    .collect()
            })
            .collect()
    }

    /// The softmax probabilities of query rows `r0..r0 + m` of unit `(b, h)`
    /// over keys `0..ke`, written to `p` (row stride `ldp`); masked keys get
    /// exactly 0.
    #[allow(clippy::too_many_arguments)]
    fn probs(
        &self,
        mm: Mm,
        p: &mut [f32],
        ldp: usize,
        (q, k): (&[f32], &[f32]),
        dm: Dims,
        (b, h): (usize, usize),
        (r0, m, ke): (usize, usize, usize),
    ) {
        if m == 0 || ke == 0 {
            return;
        }
        let kvh = h / (self.heads / self.kv_heads);
        let qh = self.head(q, b, dm.t, self.heads, h).skip_rows(r0);
        let kh = self.head(k, b, dm.s, self.kv_heads, kvh);
        assert!(p.len() >= (m.max(1) - 1) * ldp + ke);
        // SAFETY: `p` holds `m` rows of `ke` at stride `ldp` (checked) and is
        // exclusively borrowed.
        unsafe {
            mm.product(
                p.as_mut_ptr(),
                ldp,
                (m, ke, self.head_dim),
                qh,
                kh.t(),
                self.scale,
                false,
            )
        };
        let bias = &self.bias[(b * dm.t + r0) * dm.s..];
        simd(|| {
            for (row, brow) in p.chunks_mut(ldp).take(m).zip(bias.chunks_exact(dm.s)) {
                let row = &mut row[..ke];
                let mut max = f32::NEG_INFINITY;
                for (x, &bj) in row.iter_mut().zip(brow) {
                    *x += bj;
                    max = max.max(*x);
                }
                // Exponentials first (a loop that vectorises), then their
                // sum in order.
                for x in row.iter_mut() {
                    *x = if *x == f32::NEG_INFINITY {
                        0.0
                    } else {
                        exp(*x - max)
                    };
                }
                let sum: f32 = row.iter().sum();
                let inv = 1.0 / sum;
                for x in row.iter_mut() {
                    *x *= inv;
                }
            }
        });
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
        let (d, heads) = (self.head_dim, self.heads);
        let rep = heads / self.kv_heads;
        let ends = self.key_ends(dm);
        let blocks = row_blocks(dm.t);
        let mut out = vec![0f32; dm.b * dm.t * heads * d];
        let op = crate::blas::SendPtr(out.as_mut_ptr());
        with_mm(self.blas, |mm| {
            (0..dm.b * heads * blocks.len())
                .into_par_iter()
                .for_each(|task| {
                    let (u, (r0, r1)) = (task / blocks.len(), blocks[task % blocks.len()]);
                    let (b, h) = (u / heads, u % heads);
                    let ke = block_key_end(&ends[b][r0..r1]);
                    let m = r1 - r0;
                    if ke == 0 {
                        // Every key masked (the mask never does this): zeros.
                        return;
                    }
                    let mut p = vec![0f32; m * ke];
                    self.probs(mm, &mut p, ke, (q, k), dm, (b, h), (r0, m, ke));
                    let vh = self.head(v, b, dm.s, self.kv_heads, h / rep);
                    // SAFETY: rows r0..r1 of head h of batch row b in `out`
                    // (stride heads * d): no other task writes them.
                    unsafe {
                        mm.product(
                            op.at(((b * dm.t + r0) * heads + h) * d),
                            heads * d,
                            (m, d, ke),
                            View::rows(&p, ke),
                            vh,
                            1.0,
                            false,
                        )
                    }
                })
        });
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
        let dm = self.dims(q_arg.shape(), k_arg.shape(), v_arg.shape())?;
        // The inputs were made contiguous before the op (borrowed); the
        // gradient is copied only when strided.
        let (dq, dk, dv) = with_values(q_arg, |q| {
            with_values(k_arg, |k| {
                with_values(v_arg, |v| {
                    with_values(grad, |g| {
                        with_mm(self.blas, |mm| self.backward(mm, dm, q, k, v, g))
                    })
                })
            })
        })????;
        Ok((
            Some(tensor(dq, q_arg.shape(), q_arg)?),
            Some(tensor(dk, k_arg.shape(), k_arg)?),
            Some(tensor(dv, v_arg.shape(), v_arg)?),
        ))
    }
}

impl Attention {
    /// Gradients of q, k and v from the output gradient `g` (all in the
    /// projections' layout), in rounds of groups of query heads that share
    /// a kv head: first, per group head and block of query rows, the
    /// probabilities (recomputed), the score gradients and those rows of
    /// dq; then, per group and block of keys, dk and dv summed over the
    /// group's heads, from the query rows that see those keys.
    fn backward(
        &self,
        mm: Mm,
        dm: Dims,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        g: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (d, heads, kvh_n) = (self.head_dim, self.heads, self.kv_heads);
        let rep = heads / kvh_n;
        let (t, s) = (dm.t, dm.s);
        let ends = self.key_ends(dm);
        let rows = row_blocks(t);
        let keys = row_blocks(s);
        let mut dq = vec![0f32; dm.b * t * heads * d];
        let mut dk = vec![0f32; dm.b * s * kvh_n * d];
        let mut dv = vec![0f32; dm.b * s * kvh_n * d];
        let (dqp, dkp, dvp) = (
            crate::blas::SendPtr(dq.as_mut_ptr()),
            crate::blas::SendPtr(dk.as_mut_ptr()),
            crate::blas::SendPtr(dv.as_mut_ptr()),
        );
        // Groups (b, kv head) per round, so that P and dS of a round fit
        // the buffer bound.
        let group_bytes = rep * t * s * 2 * std::mem::size_of::<f32>();
        let per_round = (BWD_BUFFER_BYTES / group_bytes.max(1)).max(1);
        let groups = dm.b * kvh_n;
        for first in (0..groups).step_by(per_round) {
            let n_groups = per_round.min(groups - first);
            // P and dS of every head of the round, [T, S] each; entries a
            // row block does not reach stay 0.
            let mut p_buf = vec![0f32; n_groups * rep * t * s];
            let mut ds_buf = vec![0f32; n_groups * rep * t * s];
            let (pp, dsp) = (
                crate::blas::SendPtr(p_buf.as_mut_ptr()),
                crate::blas::SendPtr(ds_buf.as_mut_ptr()),
            );
            (0..n_groups * rep * rows.len())
                .into_par_iter()
                .for_each(|task| {
                    let (unit, (r0, r1)) = (task / rows.len(), rows[task % rows.len()]);
                    let grp = first + unit / rep;
                    let (b, h) = (grp / kvh_n, (grp % kvh_n) * rep + unit % rep);
                    let ke = block_key_end(&ends[b][r0..r1]);
                    let m = r1 - r0;
                    // SAFETY: rows r0..r1 of this unit's P and dS, which no
                    // other task of this pass touches.
                    let (p, ds) = unsafe {
                        let off = (unit * t + r0) * s;
                        (
                            std::slice::from_raw_parts_mut(pp.at(off), m * s),
                            std::slice::from_raw_parts_mut(dsp.at(off), m * s),
                        )
                    };
                    self.probs(mm, p, s, (q, k), dm, (b, h), (r0, m, ke));
                    let kvh = h / rep;
                    let gh = self.head(g, b, t, heads, h).skip_rows(r0);
                    let (kh, vh) = (
                        self.head(k, b, s, kvh_n, kvh),
                        self.head(v, b, s, kvh_n, kvh),
                    );
                    // dP = dO V^T; dS = P * (dP - rowsum(P * dP)) * scale.
                    // SAFETY: `ds` holds m rows of ke at stride s.
                    unsafe { mm.product(ds.as_mut_ptr(), s, (m, ke, d), gh, vh.t(), 1.0, false) };
                    simd(|| {
                        for (dr, pr) in ds.chunks_exact_mut(s).zip(p.chunks_exact(s)) {
                            let (dr, pr) = (&mut dr[..ke], &pr[..ke]);
                            let c = dot(dr, pr);
                            for (x, &pj) in dr.iter_mut().zip(pr) {
                                *x = pj * (*x - c) * self.scale;
                            }
                        }
                    });
                    // dQ rows r0..r1 = dS K.
                    // SAFETY: rows r0..r1 of head h of batch row b in dq
                    // (stride heads * d): no other task writes them.
                    unsafe {
                        mm.product(
                            dqp.at(((b * t + r0) * heads + h) * d),
                            heads * d,
                            (m, d, ke),
                            View::rows(ds, s),
                            kh,
                            1.0,
                            false,
                        )
                    }
                });
            let (p_buf, ds_buf) = (&p_buf, &ds_buf);
            (0..n_groups * keys.len()).into_par_iter().for_each(|task| {
                let (gi, (c0, c1)) = (task / keys.len(), keys[task % keys.len()]);
                let grp = first + gi;
                let (b, kvh) = (grp / kvh_n, grp % kvh_n);
                // Query rows before `r` do not see keys c0..c1.
                let Some(r) = ends[b].iter().position(|&e| e > c0) else {
                    return;
                };
                let off = ((b * s + c0) * kvh_n + kvh) * d;
                for j in 0..rep {
                    let unit = gi * rep + j;
                    let h = kvh * rep + j;
                    let ds = View::rows(&ds_buf[unit * t * s..(unit + 1) * t * s], s)
                        .skip_rows(r)
                        .skip_cols(c0)
                        .t();
                    let p = View::rows(&p_buf[unit * t * s..(unit + 1) * t * s], s)
                        .skip_rows(r)
                        .skip_cols(c0)
                        .t();
                    let qh = self.head(q, b, t, heads, h).skip_rows(r);
                    let gh = self.head(g, b, t, heads, h).skip_rows(r);
                    // SAFETY: rows c0..c1 of kv head kvh of batch row b
                    // in dk and dv (stride kv_heads * d): no other task
                    // writes them.
                    unsafe {
                        let shape = (c1 - c0, d, t - r);
                        mm.product(dkp.at(off), kvh_n * d, shape, ds, qh, 1.0, j > 0);
                        mm.product(dvp.at(off), kvh_n * d, shape, p, gh, 1.0, j > 0);
                    }
                }
            });
        }
        (dq, dk, dv)
    }
}

/// Scaled dot-product attention for all heads at once.
///
/// `q`: `[B, T, heads * head_dim]`; `k`, `v`: `[B, S, kv_heads * head_dim]`
/// (query head `h` reads kv head `h / (heads / kv_heads)`, as
/// `transformers`' `repeat_kv`); `bias`: the additive mask `[B, 1, T, S]`
/// of [`crate::ops::attention_bias`]. Returns
/// `softmax(q k^T * scale + bias) v` as `[B, T, heads * head_dim]`.
/// Differentiable in `q`, `k` and `v`. CPU f32 only.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    kernels: &crate::Kernels,
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
        blas: kernels.blas(),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attention_bias;
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
    fn attention_products_agree_between_blas_and_gemm() {
        let Some(blas) = crate::blas::load(&crate::BlasChoice::Auto).unwrap() else {
            return; // no BLAS library here: only the gemm crate runs
        };
        let data: Vec<f32> = rand(64 * 64, 7).iter().map(|&x| x as f32).collect();
        let (m, n, k) = (5, 7, 9);
        // Each operand plain and transposed, with row strides wider than
        // the matrix, as the kernel's head views are.
        let view = |off: usize, rows: usize, cols: usize, t: bool| {
            if t {
                View {
                    data: &data,
                    off,
                    rs: 1,
                    cs: rows + 3,
                }
            } else {
                View {
                    data: &data,
                    off,
                    rs: cols + 2,
                    cs: 1,
                }
            }
        };
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let (a, b) = (view(3, m, k, ta), view(700, k, n, tb));
            let run = |mm: Mm, acc: bool| {
                let mut c: Vec<f32> = (0..m * 10).map(|i| i as f32 * 0.5).collect();
                // SAFETY: `c` holds m rows of n at stride 10.
                unsafe { mm.product(c.as_mut_ptr(), 10, (m, n, k), a, b, 0.7, acc) };
                c
            };
            for acc in [false, true] {
                let want = run(Mm(None), acc);
                let got = blas.single_threaded(|s| run(Mm(Some(s)), acc));
                for (x, y) in got.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-5, "{ta} {tb} {acc}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (f64::from(exp(x)), f64::from(x).exp());
            worst = worst.max((got - want).abs() / want);
            x += 0.001_37;
        }
        assert!(
            worst < 2.0 * f64::from(f32::EPSILON),
            "relative error {worst}"
        );
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(-1000.0) < 1.3e-38 && exp(-1000.0) > 0.0);
        assert_eq!(exp(0.0), 1.0);
        // Vectorised and scalar calls agree.
        let xs: Vec<f32> = (0..1000).map(|i| i as f32 * 0.173 - 80.0).collect();
        let mut ys = vec![0f32; xs.len()];
        simd(|| {
            for (y, &x) in ys.iter_mut().zip(&xs) {
                *y = exp(x);
            }
        });
        for (y, &x) in ys.iter().zip(&xs) {
            assert_eq!(y.to_bits(), exp(x).to_bits(), "{x}");
        }
    }

    #[test]
    fn rms_norm_matches_the_composition() {
        for add_one in [false, true] {
            check(
                &[&[2, 3, 20], &[20]],
                1,
                |t| rms_norm(&t[0], Some(&t[1]), 1e-6, add_one),
                |t| {
                    crate::ops::rms_norm(
                        &crate::Kernels::composed(),
                        &t[0],
                        Some(&t[1].detach()),
                        1e-6,
                        add_one,
                    )
                },
            );
        }
        check(
            &[&[5, 9]],
            1,
            |t| rms_norm(&t[0], None, 1e-5, false),
            |t| crate::ops::rms_norm(&crate::Kernels::composed(), &t[0], None, 1e-5, false),
        );
    }

    #[test]
    fn silu_mul_matches_the_composition() {
        check(
            &[&[3, 4, 37], &[3, 4, 37]],
            2,
            |t| silu_mul(&(&t[0] * 4.0)?, &t[1]),
            |t| (&t[0] * 4.0)?.silu()? * &t[1],
        );
    }

    /// `[B, T, heads * d]` to `[B, heads, T, d]` and back.
    fn heads(x: &Tensor, h: usize) -> Result<Tensor> {
        let (b, t, w) = x.dims3()?;
        x.reshape((b, t, h, w / h))?.transpose(1, 2)?.contiguous()
    }
    fn unheads(x: &Tensor) -> Result<Tensor> {
        let (b, h, t, d) = x.dims4()?;
        x.transpose(1, 2)?.contiguous()?.reshape((b, t, h * d))
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
            x.unsqueeze(2)?
                .broadcast_as((b, kvh, h / kvh, s, d))?
                .reshape((b, h, s, d))
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
        // Longer: several blocks of query rows and keys (`ROW_BLOCK`), a
        // padded second text, and a cached decode of 37 rows with a window.
        // (the second text's last 15 positions are padding)
        let long: Vec<u32> = (0..140).map(|i| u32::from(i < 125)).collect();
        let long = Tensor::from_vec(long, (2, 70), &dev).unwrap();
        for (t, start, window, mask, h, kvh) in [
            (6, 0, None, Some(&mask), 6, 2),
            (2, 4, Some(3), None, 4, 4),
            (70, 0, None, Some(&long), 6, 2),
            (37, 40, Some(50), None, 4, 2),
        ] {
            let s = start + t;
            let d = 8;
            let bias = |dt| attention_bias(2, t, start, mask, window, dt, &dev).unwrap();
            let (b32, b64) = (bias(DType::F32), bias(DType::F64));
            check(
                &[&[2, t, h * d], &[2, s, kvh * d], &[2, s, kvh * d]],
                3,
                |x| {
                    attention(
                        &crate::Kernels::default(),
                        &x[0],
                        &x[1],
                        &x[2],
                        &b32,
                        h,
                        kvh,
                        0.3,
                    )
                },
                |x| attention_reference(&x[0], &x[1], &x[2], &b64, h, kvh, 0.3),
            );
        }
    }
}
