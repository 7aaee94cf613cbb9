//! OPT: learned positions with an offset of 2 (positions counted from the
//! attention mask, as `transformers` does), pre- or post-norm layers
//! (`do_layer_norm_before`), optional biases (`enable_bias`) and LayerNorm
//! parameters (`layer_norm_elementwise_affine`), and word embeddings of
//! width `word_embed_proj_dim` projected in and out of the residual stream.
//!
//! The input embeddings cram trains live in the `word_embed_proj_dim` space:
//! [`CausalLm::embed`] returns the word embeddings before `project_in`, and
//! [`CausalLm::forward`] applies `project_in` to whatever it is given.

use candle_core::{DType, Device, Tensor};

use crate::blocks::{
    run_ln_layers, Activation, Attention, Embedding, LearnedPositions, Linear, LnLayer, Mlp, Norm,
    Residual,
};
use crate::error::{CramError, Result};
use crate::hparams::Json;
use crate::memory::{stack_kept, StepShape};
use crate::registry::Architecture;
use crate::weights::Weights;
use crate::{tensor_std, AttentionStack, DecodeState, ModelInfo, Pass};

/// OPT's entry in the [`crate::registry`] (llama.cpp has no OPT GGUF).
pub const ARCHITECTURE: Architecture = Architecture {
    model_type: "opt",
    from_config: |c, w| Ok(Box::new(Opt::load(&OptConfig::from_json(c)?, w)?)),
    gguf: None,
};

/// Row of position 0 in OPT's position table.
const POSITION_OFFSET: usize = 2;
/// `nn.LayerNorm`'s default epsilon, which OPT uses.
const LAYER_NORM_EPS: f64 = 1e-5;

/// Hyper-parameters of an OPT model.
#[derive(Debug, Clone)]
pub struct OptConfig {
    /// `hidden_size`.
    pub hidden_size: usize,
    /// `word_embed_proj_dim` (default `hidden_size`).
    pub word_embed_proj_dim: usize,
    /// `ffn_dim`.
    pub ffn_dim: usize,
    /// `num_hidden_layers`.
    pub num_layers: usize,
    /// `num_attention_heads`.
    pub num_heads: usize,
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `max_position_embeddings`.
    pub max_position_embeddings: usize,
    /// `do_layer_norm_before` (default true).
    pub do_layer_norm_before: bool,
    /// The decoder ends in a LayerNorm: `do_layer_norm_before` and not
    /// `_remove_final_layer_norm`.
    pub final_layer_norm: bool,
    /// `enable_bias` (default true).
    pub enable_bias: bool,
    /// `layer_norm_elementwise_affine` (default true).
    pub layer_norm_elementwise_affine: bool,
    /// `activation_function` (default relu).
    pub act: Activation,
    /// `tie_word_embeddings` (default true).
    pub tie_word_embeddings: bool,
}

impl OptConfig {
    /// Reads a `transformers` `config.json`.
    pub fn from_json(c: &Json) -> Result<Self> {
        let source = c.path().display().to_string();
        let hidden_size = c.usize("hidden_size")?;
        let do_layer_norm_before = c.opt_bool("do_layer_norm_before")?.unwrap_or(true);
        let act_name = c
            .opt_str("activation_function")?
            .unwrap_or_else(|| "relu".into());
        let act = Activation::from_config(&act_name, &source, "activation_function")?;
        let num_heads = c.usize("num_attention_heads")?;
        if num_heads == 0 || !hidden_size.is_multiple_of(num_heads) {
            return Err(CramError::bad_config(
                &source,
                "num_attention_heads",
                format!("{num_heads} does not divide hidden_size {hidden_size}"),
            ));
        }
        Ok(Self {
            hidden_size,
            word_embed_proj_dim: c.opt_usize("word_embed_proj_dim")?.unwrap_or(hidden_size),
            ffn_dim: c.usize("ffn_dim")?,
            num_layers: c.usize("num_hidden_layers")?,
            num_heads,
            vocab_size: c.usize("vocab_size")?,
            max_position_embeddings: c.usize("max_position_embeddings")?,
            do_layer_norm_before,
            final_layer_norm: do_layer_norm_before
                && !c.opt_bool("_remove_final_layer_norm")?.unwrap_or(false),
            enable_bias: c.opt_bool("enable_bias")?.unwrap_or(true),
            layer_norm_elementwise_affine: c
                .opt_bool("layer_norm_elementwise_affine")?
                .unwrap_or(true),
            act,
            tie_word_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(true),
        })
    }
}

/// Positions as `transformers` derives them from the attention mask:
/// `cumsum(mask) * mask - 1` (real tokens count from 0, padding gets -1).
fn positions_from_mask(mask: &Tensor) -> Result<Vec<Vec<i64>>> {
    let m: Vec<Vec<f32>> = mask.to_dtype(DType::F32)?.to_vec2()?;
    Ok(m.iter()
        .map(|row| {
            let mut seen = 0i64;
            row.iter()
                .map(|&x| {
                    let real = i64::from(x > 0.5);
                    seen += real;
                    seen * real - 1
                })
                .collect()
        })
        .collect())
}

/// An OPT model.
pub struct Opt {
    embed: Embedding,
    positions: LearnedPositions,
    project_in: Option<Linear>,
    layers: Vec<LnLayer>,
    final_norm: Option<Norm>,
    project_out: Option<Linear>,
    lm_head: Linear,
    info: ModelInfo,
    device: Device,
    dtype: DType,
}

impl Opt {
    /// Builds the model from its config and weights (`model.decoder.*`
    /// names, or the bare `decoder.*` of checkpoints saved from `OPTModel`).
    pub fn load(cfg: &OptConfig, w: &Weights) -> Result<Self> {
        let h = cfg.hidden_size;
        let e = cfg.word_embed_proj_dim;
        let p = if w.contains("decoder.embed_tokens.weight") {
            "decoder"
        } else {
            "model.decoder"
        };
        let emb_f32 = w.get_f32(&format!("{p}.embed_tokens.weight"), &[cfg.vocab_size, e])?;
        let embedding_std = tensor_std(&emb_f32)?;
        let embed = Embedding {
            w: w.place(&emb_f32)?,
        };
        let positions = LearnedPositions {
            emb: Embedding {
                w: w.get(
                    &format!("{p}.embed_positions.weight"),
                    &[cfg.max_position_embeddings + POSITION_OFFSET, h],
                )?,
            },
            offset: POSITION_OFFSET,
        };
        let (project_in, project_out) = if e == h {
            (None, None)
        } else {
            (
                Some(Linear::load(w, &format!("{p}.project_in"), e, h, false)?),
                Some(Linear::load(w, &format!("{p}.project_out"), h, e, false)?),
            )
        };
        let norm = |name: &str| {
            Norm::layer(
                w,
                name,
                h,
                LAYER_NORM_EPS,
                cfg.layer_norm_elementwise_affine,
            )
        };
        let head_dim = h / cfg.num_heads;
        let mut layers = Vec::new();
        for i in 0..cfg.num_layers {
            let l = format!("{p}.layers.{i}");
            let lin = |name: &str, i: usize, o: usize| {
                Linear::load(w, &format!("{l}.{name}"), i, o, cfg.enable_bias)
            };
            layers.push(LnLayer {
                attn_norm: norm(&format!("{l}.self_attn_layer_norm"))?,
                attn: Attention {
                    q: lin("self_attn.q_proj", h, h)?,
                    k: lin("self_attn.k_proj", h, h)?,
                    v: lin("self_attn.v_proj", h, h)?,
                    o: lin("self_attn.out_proj", h, h)?,
                    num_heads: cfg.num_heads,
                    num_kv_heads: cfg.num_heads,
                    head_dim,
                    scale: 1.0 / (head_dim as f64).sqrt(),
                    q_norm: None,
                    k_norm: None,
                    window: None,
                },
                mlp_norm: norm(&format!("{l}.final_layer_norm"))?,
                mlp: Mlp {
                    fc: lin("fc1", h, cfg.ffn_dim)?,
                    proj: lin("fc2", cfg.ffn_dim, h)?,
                    act: cfg.act,
                },
                residual: if cfg.do_layer_norm_before {
                    Residual::PreNorm
                } else {
                    Residual::PostNorm
                },
            });
        }
        let final_norm = if cfg.final_layer_norm {
            Some(norm(&format!("{p}.final_layer_norm"))?)
        } else {
            None
        };
        let lm_head = if cfg.tie_word_embeddings {
            Linear::from_weight(embed.w.clone(), w.kernels())
        } else {
            Linear::load(w, "lm_head", e, cfg.vocab_size, false)?
        };
        let num_parameters = embed.w.elem_count()
            + positions.emb.w.elem_count()
            + [&project_in, &project_out]
                .iter()
                .map(|l| l.as_ref().map_or(0, Linear::num_params))
                .sum::<usize>()
            + layers.iter().map(LnLayer::num_params).sum::<usize>()
            + final_norm.as_ref().map_or(0, Norm::num_params)
            + if cfg.tie_word_embeddings {
                0
            } else {
                lm_head.num_params()
            };
        let info = ModelInfo {
            architecture: "opt".into(),
            num_layers: cfg.num_layers,
            hidden_size: h,
            input_size: e,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_heads,
            vocab_size: cfg.vocab_size,
            context_length: cfg.max_position_embeddings,
            num_parameters,
            weights_dtype: w.storage_dtype(),
            compute_dtype: format!("{:?}", w.dtype()).to_lowercase(),
            device: crate::device_name(w.device()),
            kernels: w.kernels(),
            embedding_std,
        };
        Ok(Self {
            embed,
            positions,
            project_in,
            layers,
            final_norm,
            project_out,
            lm_head,
            info,
            device: w.device().clone(),
            dtype: w.dtype(),
        })
    }

    fn run(
        &self,
        x: &Tensor,
        positions: &[Vec<i64>],
        bias: &Tensor,
        state: Option<&mut DecodeState>,
    ) -> Result<Tensor> {
        let mut x = x.to_dtype(self.dtype)?;
        if let Some(p) = &self.project_in {
            x = p.forward(&x)?;
        }
        let x = (x + self.positions.forward(positions)?)?;
        let mut x = run_ln_layers(&self.layers, x, None, bias, state)?;
        if let Some(n) = &self.final_norm {
            x = n.forward(&x)?;
        }
        if let Some(p) = &self.project_out {
            x = p.forward(&x)?;
        }
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }
}

impl AttentionStack for Opt {
    fn base(&self) -> (&ModelInfo, &Device, DType) {
        (&self.info, &self.device, self.dtype)
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed.forward(ids)
    }

    fn kept_bytes(&self, s: StepShape) -> Option<usize> {
        // The projections in and out, the position embeddings' sum, the
        // layers.
        let projections = [&self.project_in, &self.project_out]
            .into_iter()
            .flatten()
            .map(|p| p.kept_bytes(s))
            .sum::<usize>();
        let layers = self
            .layers
            .iter()
            .map(|l| l.kept_bytes(s, None))
            .sum::<usize>();
        let sum = s.act(self.info.hidden_size);
        Some(projections + sum + stack_kept(s, layers, self.final_norm.as_ref(), &self.lm_head))
    }

    fn stack(&self, embeds: &Tensor, pass: Pass<'_>) -> Result<Tensor> {
        let (b, t, _) = embeds.dims3()?;
        // Positions follow the padding mask (OPT's cumulative-sum positions).
        let positions = match pass.mask {
            Some(m) => positions_from_mask(m)?,
            None => LearnedPositions::consecutive(b, pass.start, t),
        };
        self.run(embeds, &positions, &pass.bias, pass.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_real_tokens() {
        let m = Tensor::new(&[[1u32, 1, 1, 0], [0, 1, 1, 1]], &Device::Cpu).unwrap();
        assert_eq!(
            positions_from_mask(&m).unwrap(),
            vec![vec![0, 1, 2, -1], vec![-1, 0, 1, 2]]
        );
    }

    #[test]
    fn missing_field_is_named() {
        let v = serde_json::json!({"model_type": "opt", "hidden_size": 64,
            "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 10,
            "max_position_embeddings": 32});
        let e = OptConfig::from_json(&Json::new(&v, std::path::Path::new("config.json")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ffn_dim") && e.contains("missing"), "{e}");
    }
}
