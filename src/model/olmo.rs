//! OLMo (`olmo`, e.g. `allenai/OLMo-1B-0724-hf`): a Llama-shaped decoder
//! with non-parametric LayerNorms (no weight, no bias, epsilon 1e-5) and
//! queries, keys and values optionally clamped to `±clip_qkv`.

use candle_core::{DType, Device, Tensor};

use super::blocks::{
    attention_bias, expect_width, Attention, Embedding, GatedMlp, Linear, Norm, Rotary,
};
use super::hparams::{Gguf, Json};
use super::llama::LlamaConfig;
use super::{tensor_std, CausalLm, DecodeState, ModelInfo};
use crate::error::{CramError, Result};
use crate::weights::Weights;

/// Epsilon of OLMo's LayerNorm, fixed in `transformers`' `OlmoLayerNorm`.
const OLMO_LAYER_NORM_EPS: f64 = 1e-5;

/// Hyper-parameters of an OLMo model: those it shares with Llama (read by
/// the same `config.json` parser) and `clip_qkv`.
#[derive(Debug, Clone)]
pub struct OlmoConfig {
    /// Sizes, rotary, tying and biases, as for Llama (its `rms_norm_eps` is
    /// unused: OLMo's norm epsilon is fixed).
    pub base: LlamaConfig,
    /// Clamp of the projected queries, keys and values, if any.
    pub clip_qkv: Option<f64>,
}

impl OlmoConfig {
    /// Reads a `transformers` `config.json` with `model_type = "olmo"`.
    pub fn from_json(c: &Json) -> Result<Self> {
        let base = LlamaConfig::from_json(c)?;
        let clip_qkv = c.opt_f64("clip_qkv")?;
        if let Some(v) = clip_qkv {
            if v.is_nan() || v <= 0.0 {
                return Err(CramError::bad_config(
                    c.path().display(),
                    "clip_qkv",
                    format!("must be positive, got {v}"),
                ));
            }
        }
        Ok(Self { base, clip_qkv })
    }

    /// Reads GGUF metadata (`olmo.*`, as llama.cpp's converter writes it:
    /// the Llama keys plus `attention.clamp_kqv`).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        Ok(Self {
            base: LlamaConfig::from_gguf(g)?,
            clip_qkv: g.opt_f64("attention.clamp_kqv")?,
        })
    }
}

struct Layer {
    input_norm: Norm,
    attn: Attention,
    post_norm: Norm,
    mlp: GatedMlp,
}

/// An OLMo model.
pub struct Olmo {
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: Linear,
    rotary: Rotary,
    clip_qkv: Option<f64>,
    info: ModelInfo,
    device: Device,
    dtype: DType,
}

impl Olmo {
    /// Builds the model from its config and weights.
    pub fn load(cfg: &OlmoConfig, w: &Weights) -> Result<Self> {
        let c = &cfg.base;
        let h = c.hidden_size;
        let qd = c.num_heads * c.head_dim;
        let kvd = c.num_kv_heads * c.head_dim;
        let emb_f32 = w.get_f32("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let embedding_std = tensor_std(&emb_f32)?;
        let embed = Embedding {
            w: w.place(&emb_f32)?,
        };
        let mut rotary = Rotary::new(c.rope_theta, c.head_dim);
        if let Some(s) = c.llama3_scaling {
            rotary = rotary.llama3(s);
        }
        if let Some(f) = c.linear_scaling {
            rotary = rotary.scale_by(&vec![f as f32; c.head_dim / 2]);
        }
        let layer_norm = || Norm::Layer {
            w: None,
            b: None,
            eps: OLMO_LAYER_NORM_EPS,
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            // llama.cpp permutes the q/k rows of OLMo GGUFs as of Llama's.
            let proj = |name: &str, in_d: usize, out_d: usize, heads: Option<usize>| {
                let prefix = format!("{p}.self_attn.{name}");
                Linear::load_rotary(w, &prefix, in_d, out_d, c.attention_bias, heads)
            };
            layers.push(Layer {
                input_norm: layer_norm(),
                attn: Attention {
                    q: proj("q_proj", h, qd, Some(c.num_heads))?,
                    k: proj("k_proj", h, kvd, Some(c.num_kv_heads))?,
                    v: proj("v_proj", h, kvd, None)?,
                    o: proj("o_proj", qd, h, None)?,
                    num_heads: c.num_heads,
                    num_kv_heads: c.num_kv_heads,
                    head_dim: c.head_dim,
                    scale: 1.0 / (c.head_dim as f64).sqrt(),
                    q_norm: None,
                    k_norm: None,
                    window: None,
                },
                post_norm: layer_norm(),
                mlp: GatedMlp::load(
                    w,
                    &format!("{p}.mlp"),
                    h,
                    c.intermediate_size,
                    c.mlp_bias,
                    c.act,
                )?,
            });
        }
        let tied = c.tie_word_embeddings;
        let lm_head = if tied {
            Linear::from_weight(embed.w.clone())
        } else {
            Linear::load(w, "lm_head", h, c.vocab_size, false)?
        };
        let num_parameters = embed.w.elem_count()
            + layers
                .iter()
                .map(|l| l.attn.num_params() + l.mlp.num_params())
                .sum::<usize>()
            + if tied { 0 } else { lm_head.num_params() };
        let info = ModelInfo {
            architecture: "olmo".into(),
            num_layers: c.num_layers,
            hidden_size: h,
            input_size: h,
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            vocab_size: c.vocab_size,
            context_length: c.max_position_embeddings,
            num_parameters,
            weights_dtype: w.storage_dtype(),
            compute_dtype: format!("{:?}", w.dtype()).to_lowercase(),
            embedding_std,
        };
        Ok(Self {
            embed,
            layers,
            norm: layer_norm(),
            lm_head,
            rotary,
            clip_qkv: cfg.clip_qkv,
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
        mut state: Option<&mut DecodeState>,
    ) -> Result<Tensor> {
        let mut x = x.to_dtype(self.dtype)?;
        let rope = self
            .rotary
            .tables(start, x.dim(1)?, self.dtype, &self.device)?;
        for (i, l) in self.layers.iter().enumerate() {
            let st = state.as_deref_mut().map(|s| &mut s.layers[i]);
            let a = l.attn.forward_clipped(
                &l.input_norm.forward(&x)?,
                Some(&rope),
                bias,
                st,
                self.clip_qkv,
            )?;
            x = (x + a)?;
            let m = l.mlp.forward(&l.post_norm.forward(&x)?)?;
            x = (x + m)?;
        }
        let x = self.norm.forward(&x)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }
}

impl CausalLm for Olmo {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed.forward(ids)
    }

    fn forward(&self, embeds: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        expect_width(embeds, self.info.input_size)?;
        let (b, t, _) = embeds.dims3()?;
        let bias = attention_bias(b, t, 0, mask, None, self.dtype, &self.device)?;
        self.run(embeds, 0, &bias, None)
    }

    fn forward_step(&self, embeds: &Tensor, state: &mut DecodeState) -> Result<Tensor> {
        expect_width(embeds, self.info.input_size)?;
        let (b, t, _) = embeds.dims3()?;
        let start = state.pos;
        let bias = attention_bias(b, t, start, None, None, self.dtype, &self.device)?;
        let out = self.run(embeds, start, &bias, Some(state))?;
        state.pos += t;
        Ok(out)
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn dtype(&self) -> DType {
        self.dtype
    }
}
