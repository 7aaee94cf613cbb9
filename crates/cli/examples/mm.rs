use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let d = Device::Cpu;
    for &(m, k, n) in &[
        (128usize, 576usize, 1536usize),
        (128, 1536, 576),
        (128, 576, 49152),
        (1024, 576, 1536),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &d)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &d)?;
        let wt = w.t()?.contiguous()?;
        for (name, rhs) in [("w.t() view", w.t()?), ("contig [k,n]", wt.clone())] {
            let _ = x.matmul(&rhs)?;
            let t = Instant::now();
            let r = 5;
            for _ in 0..r {
                let _ = x.matmul(&rhs)?;
            }
            let s = t.elapsed().as_secs_f64() / r as f64;
            println!(
                "{m}x{k}x{n} {name}: {:.2} ms, {:.1} GFLOP/s",
                s * 1e3,
                2.0 * (m * k * n) as f64 / s / 1e9
            );
        }
    }
    Ok(())
}
