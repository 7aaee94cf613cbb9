//! The selective scan of state-space models (Mamba): `h_t = exp(delta_t A)
//! h_{t-1} + delta_t B_t u_t`, `y_t = h_t . C_t` per channel.
//!
//! On the CPU, with the fused kernels on, it runs as a custom op with a
//! hand-written backward (recomputing the states per block of channels);
//! elsewhere as a loop of candle ops ([`scan_reference`]), differentiable
//! through candle's own backward.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::Kernels;
use crate::Result;

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
        crate::cpu::exp(self)
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
#[allow(clippy::too_many_arguments)]
pub fn selective_scan(
    kernels: &Kernels,
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
    if !kernels.fused || !u.device().is_cpu() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn randn(shape: &[usize], scale: f64) -> Tensor {
        (Tensor::randn(0f64, 1.0, shape, &Device::Cpu).unwrap() * scale).unwrap()
    }

    /// The inputs of a small scan: u, delta (positive), B, C, A (negative).
    fn scan_inputs(b: usize, t: usize, di: usize, n: usize) -> [Tensor; 5] {
        let delta = crate::ops::softplus(&randn(&[b, t, di], 1.0)).unwrap();
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
        let (y1, _) = selective_scan(&Kernels::default(), v0, v1, &a, v2, v3, None, false).unwrap();
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
            let (y, _) =
                selective_scan(&Kernels::default(), x[0], x[1], &a, x[2], x[3], None, false)
                    .unwrap();
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
        let (whole, last) =
            selective_scan(&Kernels::default(), &u, &dl, &a, &bm, &cm, None, true).unwrap();
        let part = |x: &Tensor, s: usize, l: usize| x.narrow(1, s, l).unwrap();
        let (y1, h1) = selective_scan(
            &Kernels::default(),
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
            &Kernels::default(),
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
}
