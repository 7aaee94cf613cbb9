//! Peak memory of a cramming step, estimated from the model's shapes.
//!
//! A step runs the model forward on `B` texts of `T` positions, then
//! backward to the input embeddings. The autograd graph keeps the output of
//! every op that the backward reads until the backward is done; on top of
//! that, the largest transient (an attention layer's scores while its
//! forward or backward runs, the logits' softmax in the loss) sets the peak.
//! The estimate counts both for the **composed path**, the compositions of
//! candle ops that a GPU runs (and the CPU with `--kernels composed`), block
//! by block, from the same shapes the forward uses: each block's
//! `kept_bytes` lists the tensors its forward leaves in the graph. The CPU's
//! fused kernels keep less (their attention keeps no scores at all).
//!
//! `cram bench memory` prints the estimate and, with `--measure`, the peak
//! the process's allocator saw during a real step on the CPU.

use crate::blocks::{Attention, GatedLayer, GatedMlp, Linear, LnLayer, Mlp, Norm};

/// Bytes of one f32 value: statistics (norms, softmax) and logits are f32.
pub const F32: usize = 4;

/// The sizes of one step's activations: `rows = B * T` positions of `T`
/// each, in a compute dtype of `elem` bytes.
#[derive(Debug, Clone, Copy)]
pub struct StepShape {
    /// Texts in the batch.
    pub batch: usize,
    /// Positions per text (vectors, fixed prefix and text).
    pub len: usize,
    /// Bytes of one value in the compute dtype.
    pub elem: usize,
}

impl StepShape {
    /// `B * T`.
    pub fn rows(&self) -> usize {
        self.batch * self.len
    }

    /// Bytes of a `[B, T, width]` tensor in the compute dtype.
    pub fn act(&self, width: usize) -> usize {
        self.rows() * width * self.elem
    }

    /// Bytes of a `[B, T, width]` statistics tensor: in f32, plus the copy
    /// in the compute dtype when that is not f32 (the casts in and out).
    fn stat(&self, width: usize, tensors: usize) -> usize {
        let copies = if self.elem == F32 { 0 } else { 1 };
        self.rows() * width * (tensors * F32 + copies * (F32 + self.elem))
    }

    /// Bytes of one attention layer's `[B, heads, T, T]` scores.
    pub fn scores(&self, heads: usize) -> usize {
        self.batch * heads * self.len * self.len * self.elem
    }
}

/// The estimate for one step.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct MemoryEstimate {
    /// The model's weights.
    pub weights: usize,
    /// What the graph keeps from the forward until the backward is done.
    pub kept: usize,
    /// The largest transient on top of it (scores, the loss's softmax, the
    /// gradients in flight).
    pub transient: usize,
}

impl MemoryEstimate {
    /// Bytes a step needs beyond the weights.
    pub fn activations(&self) -> usize {
        self.kept + self.transient
    }

    /// The estimated peak: weights and activations.
    pub fn peak(&self) -> usize {
        self.weights + self.activations()
    }
}

/// The transient peak of a step on top of what the graph keeps: the
/// largest of the loss's softmax over the logits (two `[B*T, vocab]` f32
/// tensors alive at once, forward and backward) and one attention layer's
/// scores (at most three score-sized f32 tensors alive at once), plus a few
/// hidden-sized gradients in flight.
pub fn transient_bytes(s: StepShape, vocab: usize, heads: usize, hidden: usize) -> usize {
    let loss = 2 * s.rows() * vocab * F32;
    let attn = 3 * s.batch * heads * s.len * s.len * F32;
    loss.max(attn) + 4 * s.rows() * hidden * F32
}

/// The logits' share of what the graph keeps: the head's output, and its
/// f32 copy when the compute dtype is not f32 (the loss keeps nothing of
/// its own).
pub fn logits_bytes(s: StepShape, head: &Linear) -> usize {
    let v = head.w.dim(0).unwrap_or(0);
    head.kept_bytes(s) + if s.elem == F32 { 0 } else { s.rows() * v * F32 }
}

/// The additive attention mask `[B, 1, T, T]` of a pass, held while it runs.
pub fn bias_bytes(s: StepShape) -> usize {
    s.batch * s.len * s.len * s.elem
}

impl Linear {
    /// What a linear layer keeps: its output.
    pub fn kept_bytes(&self, s: StepShape) -> usize {
        s.act(self.w.dim(0).unwrap_or(0))
    }
}

impl Norm {
    /// Width of the normalised dimension.
    fn width(&self) -> usize {
        match self {
            Norm::Rms { w, .. } => w.elem_count(),
            Norm::Layer { w, .. } => w.as_ref().map_or(0, |w| w.elem_count()),
        }
    }

    /// What the norm keeps for the rows of `s`, of its weights' width (or
    /// `width`, for a norm without weights).
    pub fn kept_bytes(&self, s: StepShape, width: usize) -> usize {
        let w = match self.width() {
            0 => width,
            n => n,
        };
        match self {
            // x², x * rsqrt(mean), its product with the scale.
            Norm::Rms { .. } => s.stat(w, 3),
            // x - mean, its square, the normalised x, then the scale and
            // the shift when present.
            Norm::Layer { w: sc, b, .. } => {
                s.stat(w, 3 + usize::from(sc.is_some()) + usize::from(b.is_some()))
            }
        }
    }
}

impl Attention {
    /// What one attention layer keeps, with rotary embeddings on `rot`
    /// channels of each head (`None`: no rotary) and its projections
    /// clamped (`clip`, OLMo).
    pub fn kept_bytes(&self, s: StepShape, rot: Option<usize>, clip: bool) -> usize {
        let d = self.head_dim;
        let (q, kv) = (self.num_heads * d, self.num_kv_heads * d);
        // The projections (and the clamp's mask, masked and rest parts, and
        // sum: four more per projection).
        let clamp = if clip { 4 } else { 0 };
        let mut bytes = s.act(q + 2 * kv) * (1 + clamp);
        // Per-head norms (Gemma 3) on `[B, heads, T, d]`.
        if let Some(n) = &self.q_norm {
            bytes += n.kept_bytes(s, d) * self.num_heads;
        }
        if let Some(n) = &self.k_norm {
            bytes += n.kept_bytes(s, d) * self.num_kv_heads;
        }
        // Rotary: the negated half, the rotated copy, the two products and
        // their sum on the rotated channels, and the concatenation with the
        // rest when only part of a head rotates.
        let rope = |heads: usize| match rot {
            Some(r) => s.act(heads * r) * 9 / 2 + if r < d { s.act(heads * d) } else { 0 },
            None => 0,
        };
        bytes += rope(self.num_heads) + rope(self.num_kv_heads);
        // Contiguous copies of the transposed heads: q and k when no rotary
        // made them contiguous, v always; with grouped-query attention the
        // repeated keys and values are the copies.
        let strided = if rot.is_some() { 0 } else { 1 };
        bytes += s.act(q) * strided;
        if self.num_heads == self.num_kv_heads {
            bytes += s.act(kv) * (strided + 1);
        } else {
            bytes += 2 * s.act(q);
        }
        // The probabilities, the attention's output and its copy back to
        // `[B, T, heads * d]`, the output projection.
        bytes + s.scores(self.num_heads) + 2 * s.act(q) + self.o.kept_bytes(s)
    }
}

impl GatedMlp {
    /// What the gated MLP keeps: gate, up, the activation, the product,
    /// down.
    pub fn kept_bytes(&self, s: StepShape) -> usize {
        let i = self.gate.w.dim(0).unwrap_or(0);
        self.gate.kept_bytes(s) + self.up.kept_bytes(s) + 2 * s.act(i) + self.down.kept_bytes(s)
    }
}

impl Mlp {
    /// What the MLP keeps: up, the activation, down.
    pub fn kept_bytes(&self, s: StepShape) -> usize {
        let i = self.fc.w.dim(0).unwrap_or(0);
        self.fc.kept_bytes(s) + s.act(i) + self.proj.kept_bytes(s)
    }
}

/// What a transformer layer keeps: its `norms` on the residual width (that
/// of `attn`'s output), its attention and MLP (`branches` bytes), and the
/// two residual sums.
pub fn layer_kept(s: StepShape, attn: &Attention, norms: &[&Norm], branches: usize) -> usize {
    let h = attn.o.w.dim(0).unwrap_or(0);
    norms.iter().map(|n| n.kept_bytes(s, h)).sum::<usize>() + branches + 2 * s.act(h)
}

impl GatedLayer {
    /// What a pre-norm gated layer keeps: two norms, attention, MLP and the
    /// two residual sums.
    pub fn kept_bytes(&self, s: StepShape, rot: Option<usize>, clip: bool) -> usize {
        let branches = self.attn.kept_bytes(s, rot, clip) + self.mlp.kept_bytes(s);
        layer_kept(
            s,
            &self.attn,
            &[&self.input_norm, &self.post_norm],
            branches,
        )
    }
}

impl LnLayer {
    /// What a LayerNorm-family layer keeps: two norms, attention, MLP and
    /// the two residual sums (whatever the residual scheme).
    pub fn kept_bytes(&self, s: StepShape, rot: Option<usize>) -> usize {
        let branches = self.attn.kept_bytes(s, rot, false) + self.mlp.kept_bytes(s);
        layer_kept(s, &self.attn, &[&self.attn_norm, &self.mlp_norm], branches)
    }
}

/// What a stack of `layers` (their kept bytes summed), a final norm and
/// the head keep: the model-level share every architecture adds.
pub fn stack_kept(s: StepShape, layers: usize, norm: Option<&Norm>, head: &Linear) -> usize {
    let h = head.w.dim(1).unwrap_or(0);
    layers + norm.map_or(0, |n| n.kept_bytes(s, h)) + logits_bytes(s, head)
}
