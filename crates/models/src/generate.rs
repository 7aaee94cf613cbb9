//! Greedy decoding with a KV cache, from token ids or from input embeddings.

use candle_core::Tensor;

use crate::error::Result;
use crate::CausalLm;

/// Index of the largest value; the first one on ties, as `torch.argmax`.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy continuation of a prefix of input embeddings `[1, T, input_size]`:
/// up to `max_new` token ids, stopping after any id in `stop` (which is
/// included, as `transformers`' `generate` does).
pub fn greedy_from_embeds(
    model: &dyn CausalLm,
    prefix: &Tensor,
    max_new: usize,
    stop: &[u32],
) -> Result<Vec<u32>> {
    let mut state = model.new_state();
    let mut out = Vec::with_capacity(max_new);
    if max_new == 0 {
        return Ok(out);
    }
    let mut logits = model.forward_step(&prefix.detach(), &mut state)?;
    loop {
        let last = logits
            .narrow(1, logits.dim(1)? - 1, 1)?
            .squeeze(1)?
            .squeeze(0)?;
        let next = argmax(&last.to_vec1::<f32>()?);
        out.push(next);
        if out.len() >= max_new || stop.contains(&next) {
            return Ok(out);
        }
        let ids = Tensor::new(&[[next]], model.device())?;
        let e = model.embed(&ids)?;
        logits = model.forward_step(&e, &mut state)?;
    }
}

/// Greedy continuation of a prompt of token ids.
pub fn greedy(
    model: &dyn CausalLm,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
) -> Result<Vec<u32>> {
    let ids = Tensor::new(prompt, model.device())?.unsqueeze(0)?;
    let e = model.embed(&ids)?;
    greedy_from_embeds(model, &e, max_new, stop)
}

/// Greedy continuations of a batch of prefixes of equal length,
/// `[B, T, input_size]`, decoded together with one KV cache: `max_new` token
/// ids per row (no stop tokens). Row `i` of the result is what
/// [`greedy_from_embeds`] gives for row `i` alone.
pub fn greedy_batch_from_embeds(
    model: &dyn CausalLm,
    prefix: &Tensor,
    max_new: usize,
) -> Result<Vec<Vec<u32>>> {
    let b = prefix.dim(0)?;
    let mut out = vec![Vec::with_capacity(max_new); b];
    if max_new == 0 || b == 0 {
        return Ok(out);
    }
    let mut state = model.new_state();
    let mut logits = model.forward_step(&prefix.detach(), &mut state)?;
    loop {
        let last = logits.narrow(1, logits.dim(1)? - 1, 1)?.squeeze(1)?;
        let rows: Vec<Vec<f32>> = last.to_vec2()?;
        let next: Vec<u32> = rows.iter().map(|r| argmax(r)).collect();
        for (o, &n) in out.iter_mut().zip(&next) {
            o.push(n);
        }
        if out[0].len() >= max_new {
            return Ok(out);
        }
        let ids = Tensor::from_vec(next, (b, 1), model.device())?;
        logits = model.forward_step(&model.embed(&ids)?, &mut state)?;
    }
}
