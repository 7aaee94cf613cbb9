//! GPT-2: learned absolute positions, pre-norm LayerNorm layers, `Conv1D`
//! projections (weights stored `[in, out]`) with a fused `[q; k; v]`
//! attention input, and an output head tied to the token embeddings.

use candle_core::{DType, Device, Tensor};

use crate::blocks::{
    run_ln_layers, Activation, Attention, Embedding, LearnedPositions, Linear, LnLayer, Mlp, Norm,
    Residual,
};
use crate::error::{CramError, Result};
use crate::hparams::{Gguf, Json};
use crate::memory::{stack_kept, StepShape};
use crate::registry::{Architecture, GgufArchitecture};
use crate::weights::{map_gguf_name, Weights};
use crate::{tensor_std, AttentionStack, DecodeState, ModelInfo, Pass};

/// The Gpt2 entry in the [`crate::registry`].
pub const ARCHITECTURE: Architecture = Architecture {
    model_type: "gpt2",
    from_config: |c, w| Ok(Box::new(Gpt2::load(&Gpt2Config::from_json(c)?, w)?)),
    gguf: Some(GgufArchitecture {
        name: "gpt2",
        tensor_name: hf_name_for_gguf,
        from_metadata: |g, w| Ok(Box::new(Gpt2::load(&Gpt2Config::from_gguf(g)?, w)?)),
    }),
};

/// Hyper-parameters of a GPT-2 model.
#[derive(Debug, Clone)]
pub struct Gpt2Config {
    /// `n_embd`.
    pub hidden_size: usize,
    /// `n_inner` (default `4 * n_embd`).
    pub inner_size: usize,
    /// `n_layer`.
    pub num_layers: usize,
    /// `n_head`.
    pub num_heads: usize,
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `n_positions`.
    pub max_positions: usize,
    /// `layer_norm_epsilon`.
    pub layer_norm_eps: f64,
    /// `activation_function`.
    pub act: Activation,
    /// `scale_attn_weights`: scale scores by `1/sqrt(head_dim)`.
    pub scale_attn_weights: bool,
    /// `scale_attn_by_inverse_layer_idx`: also divide scores by `layer + 1`.
    pub scale_attn_by_inverse_layer_idx: bool,
    /// `tie_word_embeddings` (default true): the head is `wte`.
    pub tie_word_embeddings: bool,
}

impl Gpt2Config {
    /// Reads a `transformers` `config.json`.
    pub fn from_json(c: &Json) -> Result<Self> {
        let source = c.path().display().to_string();
        let hidden_size = c.usize("n_embd")?;
        if c.opt_bool("add_cross_attention")? == Some(true) {
            return Err(CramError::bad_config(
                &source,
                "add_cross_attention",
                "cross-attention (an encoder-decoder GPT-2) is not supported",
            ));
        }
        let act_name = c
            .opt_str("activation_function")?
            .unwrap_or_else(|| "gelu_new".into());
        let cfg = Self {
            hidden_size,
            inner_size: c.opt_usize("n_inner")?.unwrap_or(4 * hidden_size),
            num_layers: c.usize("n_layer")?,
            num_heads: c.usize("n_head")?,
            vocab_size: c.usize("vocab_size")?,
            max_positions: c.usize("n_positions")?,
            layer_norm_eps: c.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
            act: Activation::from_config(&act_name, &source, "activation_function")?,
            scale_attn_weights: c.opt_bool("scale_attn_weights")?.unwrap_or(true),
            scale_attn_by_inverse_layer_idx: c
                .opt_bool("scale_attn_by_inverse_layer_idx")?
                .unwrap_or(false),
            tie_word_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(true),
        };
        cfg.validate(&source)?;
        Ok(cfg)
    }

    /// Reads GGUF metadata (`gpt2.*`); llama.cpp runs GPT-2 with the tanh
    /// GELU and scaled attention.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let hidden_size = g.usize("embedding_length")?;
        let cfg = Self {
            hidden_size,
            inner_size: g
                .opt_usize("feed_forward_length")?
                .unwrap_or(4 * hidden_size),
            num_layers: g.usize("block_count")?,
            num_heads: g.usize("attention.head_count")?,
            vocab_size: g.vocab_size()?,
            max_positions: g.usize("context_length")?,
            layer_norm_eps: g.opt_f64("attention.layer_norm_epsilon")?.unwrap_or(1e-5),
            act: Activation::GeluTanh,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            tie_word_embeddings: !g.content().tensor_infos.contains_key("output.weight"),
        };
        cfg.validate(&format!("{} (GGUF metadata)", g.path().display()))?;
        Ok(cfg)
    }

    fn validate(&self, source: &str) -> Result<()> {
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(CramError::bad_config(
                source,
                "n_head",
                format!(
                    "{} does not divide the hidden size {}",
                    self.num_heads, self.hidden_size
                ),
            ));
        }
        Ok(())
    }
}

/// The Hugging Face name of a tensor of a llama.cpp GPT-2 GGUF.
pub fn hf_name_for_gguf(name: &str) -> Option<String> {
    map_gguf_name(
        name,
        "transformer.h",
        &[
            ("attn_norm", "ln_1"),
            ("attn_qkv", "attn.c_attn"),
            ("attn_output", "attn.c_proj"),
            ("ffn_norm", "ln_2"),
            ("ffn_up", "mlp.c_fc"),
            ("ffn_down", "mlp.c_proj"),
        ],
        &[
            ("token_embd", "transformer.wte"),
            ("position_embd", "transformer.wpe"),
            ("output_norm", "transformer.ln_f"),
            ("output", "lm_head"),
        ],
    )
}

/// A GPT-2 model.
pub struct Gpt2 {
    wte: Embedding,
    wpe: LearnedPositions,
    layers: Vec<LnLayer>,
    ln_f: Norm,
    lm_head: Linear,
    info: ModelInfo,
    device: Device,
    dtype: DType,
}

impl Gpt2 {
    /// Builds the model from its config and weights (`transformer.*` names,
    /// or the bare names of checkpoints saved from `GPT2Model`).
    pub fn load(cfg: &Gpt2Config, w: &Weights) -> Result<Self> {
        let h = cfg.hidden_size;
        let p = if w.contains("wte.weight") {
            ""
        } else {
            "transformer."
        };
        // A GGUF stores the Conv1D weights already transposed to [out, in].
        let proj = |name: &str, in_d: usize, out_d: usize| -> Result<Linear> {
            if w.is_gguf() {
                Linear::load(w, name, in_d, out_d, true)
            } else {
                Linear::load_conv1d(w, name, in_d, out_d, true)
            }
        };
        let emb_f32 = w.get_f32(&format!("{p}wte.weight"), &[cfg.vocab_size, h])?;
        let embedding_std = tensor_std(&emb_f32)?;
        let wte = Embedding {
            w: w.place(&emb_f32)?,
        };
        let wpe = LearnedPositions {
            emb: Embedding {
                w: w.get(&format!("{p}wpe.weight"), &[cfg.max_positions, h])?,
            },
            offset: 0,
        };
        let head_dim = h / cfg.num_heads;
        let mut layers = Vec::new();
        for i in 0..cfg.num_layers {
            let l = format!("{p}h.{i}");
            let qkv = proj(&format!("{l}.attn.c_attn"), h, 3 * h)?.split_rows(&[h, h, h])?;
            let [q, k, v]: [Linear; 3] = qkv.try_into().expect("three parts");
            let mut scale = if cfg.scale_attn_weights {
                1.0 / (head_dim as f64).sqrt()
            } else {
                1.0
            };
            if cfg.scale_attn_by_inverse_layer_idx {
                scale /= (i + 1) as f64;
            }
            let norm =
                |name: &str| Norm::layer(w, &format!("{l}.{name}"), h, cfg.layer_norm_eps, true);
            layers.push(LnLayer {
                attn_norm: norm("ln_1")?,
                attn: Attention {
                    q,
                    k,
                    v,
                    o: proj(&format!("{l}.attn.c_proj"), h, h)?,
                    num_heads: cfg.num_heads,
                    num_kv_heads: cfg.num_heads,
                    head_dim,
                    scale,
                    q_norm: None,
                    k_norm: None,
                    window: None,
                },
                mlp_norm: norm("ln_2")?,
                mlp: Mlp {
                    fc: proj(&format!("{l}.mlp.c_fc"), h, cfg.inner_size)?,
                    proj: proj(&format!("{l}.mlp.c_proj"), cfg.inner_size, h)?,
                    act: cfg.act,
                },
                residual: Residual::PreNorm,
            });
        }
        let ln_f = Norm::layer(w, &format!("{p}ln_f"), h, cfg.layer_norm_eps, true)?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::from_weight(wte.w.clone(), w.kernels())
        } else {
            Linear::load(w, "lm_head", h, cfg.vocab_size, false)?
        };
        let num_parameters = wte.w.elem_count()
            + wpe.emb.w.elem_count()
            + layers.iter().map(LnLayer::num_params).sum::<usize>()
            + ln_f.num_params()
            + if cfg.tie_word_embeddings {
                0
            } else {
                lm_head.num_params()
            };
        let info = ModelInfo {
            architecture: "gpt2".into(),
            num_layers: cfg.num_layers,
            hidden_size: h,
            input_size: h,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_heads,
            vocab_size: cfg.vocab_size,
            context_length: cfg.max_positions,
            num_parameters,
            weights_dtype: w.storage_dtype(),
            compute_dtype: format!("{:?}", w.dtype()).to_lowercase(),
            device: crate::device_name(w.device()),
            kernels: w.kernels(),
            embedding_std,
        };
        Ok(Self {
            wte,
            wpe,
            layers,
            ln_f,
            lm_head,
            info,
            device: w.device().clone(),
            dtype: w.dtype(),
        })
    }

    fn run(
        &self,
        x: &Tensor,
        start: usize,
        bias: &Tensor,
        state: Option<&mut DecodeState>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let pos = self
            .wpe
            .forward(&LearnedPositions::consecutive(b, start, t))?;
        let x = x.to_dtype(self.dtype)?.broadcast_add(&pos)?;
        let x = run_ln_layers(&self.layers, x, None, bias, state)?;
        let x = self.ln_f.forward(&x)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }
}

impl AttentionStack for Gpt2 {
    fn base(&self) -> (&ModelInfo, &Device, DType) {
        (&self.info, &self.device, self.dtype)
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.wte.forward(ids)
    }

    fn stack(&self, embeds: &Tensor, pass: Pass<'_>) -> Result<Tensor> {
        self.run(embeds, pass.start, &pass.bias, pass.state)
    }

    fn kept_bytes(&self, s: StepShape) -> Option<usize> {
        // The position embeddings' sum, then the layers.
        let h = self.info.hidden_size;
        let layers = self
            .layers
            .iter()
            .map(|l| l.kept_bytes(s, None))
            .sum::<usize>();
        Some(s.act(h) + stack_kept(s, layers, Some(&self.ln_f), &self.lm_head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_hf_names() {
        assert_eq!(
            hf_name_for_gguf("blk.1.attn_qkv.bias").as_deref(),
            Some("transformer.h.1.attn.c_attn.bias")
        );
        assert_eq!(
            hf_name_for_gguf("position_embd.weight").as_deref(),
            Some("transformer.wpe.weight")
        );
        assert_eq!(hf_name_for_gguf("blk.0.attn_q.weight"), None);
    }

    #[test]
    fn missing_field_is_named() {
        let v = serde_json::json!({"model_type": "gpt2", "n_embd": 64, "n_head": 4,
            "n_positions": 32, "vocab_size": 10});
        let e = Gpt2Config::from_json(&Json::new(&v, std::path::Path::new("config.json")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("n_layer") && e.contains("missing"), "{e}");
    }
}
