//! Times forward and forward+backward to the input embeddings.
//! Usage: cargo run --release --example fwd_bwd -- MODEL B L [REPS]
use candle_core::{Tensor, Var, D};
use cram::model::{load, LoadOptions};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let m = load(&args[1], &LoadOptions::default())?;
    let b: usize = args[2].parse()?;
    let l: usize = args[3].parse()?;
    let reps: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let model = m.model.as_ref();
    let h = model.info().input_size;
    let v = model.info().vocab_size;
    let x = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (b, l, h), model.device())? * 0.1)?)?;
    let labels = vec![0u32; b * l];
    for _ in 0..reps {
        let t0 = Instant::now();
        let logits = model.forward(x.as_tensor(), None)?;
        let t1 = Instant::now();
        let (nll, _) = cram::ops::token_nll_argmax(
            &model.info().kernels,
            &logits.reshape((b * l, v))?,
            &labels,
        )?;
        let loss = nll.mean(D::Minus1)?;
        let t2 = Instant::now();
        let g = loss.backward()?;
        let _ = g
            .get(x.as_tensor())
            .unwrap()
            .sum_all()?
            .to_scalar::<f32>()?;
        let t3 = Instant::now();
        println!(
            "fwd {:.1} ms  loss {:.1} ms  bwd {:.1} ms  total {:.1} ms",
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            (t3 - t2).as_secs_f64() * 1e3,
            (t3 - t0).as_secs_f64() * 1e3
        );
    }
    Ok(())
}
