//! The Llama family: Llama 2/3 (with `llama3` rope scaling), SmolLM2,
//! TinyLlama, Sheared-LLaMA; grouped-query attention, tied or untied
//! embeddings, optional attention/MLP bias.

use candle_core::{DType, Device, Tensor};

use crate::blocks::{
    run_gated_layers, Activation, Attention, Embedding, GatedLayer, GatedMlp, Linear,
    Llama3Scaling, Norm, Rotary,
};
use crate::error::{CramError, Result};
use crate::hparams::{Gguf, Json};
use crate::memory::{stack_kept, StepShape};
use crate::registry::{Architecture, GgufArchitecture};
use crate::weights::{map_gguf_name, Weights};
use crate::{tensor_std, AttentionStack, DecodeState, ModelInfo, Pass};

/// The Hugging Face name of a tensor of a llama.cpp Llama (or OLMo) GGUF.
pub fn hf_name_for_gguf(name: &str) -> Option<String> {
    map_gguf_name(
        name,
        "model.layers",
        &[
            ("attn_norm", "input_layernorm"),
            ("attn_q", "self_attn.q_proj"),
            ("attn_k", "self_attn.k_proj"),
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("ffn_norm", "post_attention_layernorm"),
            ("ffn_gate", "mlp.gate_proj"),
            ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
        ],
        &[
            ("token_embd", "model.embed_tokens"),
            ("output_norm", "model.norm"),
            ("output", "lm_head"),
            ("rope_freqs", "rope_freqs"),
        ],
    )
}

/// Llama's entry in the [`crate::registry`].
pub const ARCHITECTURE: Architecture = Architecture {
    model_type: "llama",
    from_config: |c, w| Ok(Box::new(Llama::load(&LlamaConfig::from_json(c)?, w)?)),
    gguf: Some(GgufArchitecture {
        name: "llama",
        tensor_name: hf_name_for_gguf,
        from_metadata: |g, w| Ok(Box::new(Llama::load(&LlamaConfig::from_gguf(g)?, w)?)),
    }),
};

/// Hyper-parameters of a Llama model.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    /// Residual width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding matrix).
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    /// Llama 3 rope scaling, if any.
    pub llama3_scaling: Option<Llama3Scaling>,
    /// Linear rope scaling factor, if any.
    pub linear_scaling: Option<f64>,
    /// Context length.
    pub max_position_embeddings: usize,
    /// Output head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v/o.
    pub attention_bias: bool,
    /// Biases on the MLP.
    pub mlp_bias: bool,
    /// MLP activation.
    pub act: Activation,
}

impl LlamaConfig {
    /// Reads a `transformers` `config.json`.
    pub fn from_json(c: &Json) -> Result<Self> {
        let hidden_size = c.usize("hidden_size")?;
        let num_heads = c.usize("num_attention_heads")?;
        let num_kv_heads = c.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = c
            .opt_usize("head_dim")?
            .unwrap_or(hidden_size / num_heads.max(1));
        let mut llama3_scaling = None;
        let mut linear_scaling = None;
        // transformers v5 writes `rope_parameters`; earlier versions
        // `rope_scaling` (plus a top-level `rope_theta`).
        let rope_key = if c.raw("rope_scaling").is_some() {
            "rope_scaling"
        } else {
            "rope_parameters"
        };
        if c.raw(rope_key).is_some() {
            let kind = c
                .raw(rope_key)
                .and_then(|o| o.get("rope_type").or_else(|| o.get("type")))
                .and_then(|v| v.as_str())
                .unwrap_or("default")
                .to_string();
            match kind.as_str() {
                "llama3" => {
                    llama3_scaling = Some(Llama3Scaling {
                        factor: c.nested_f64(rope_key, "factor")?,
                        low_freq_factor: c.nested_f64(rope_key, "low_freq_factor")?,
                        high_freq_factor: c.nested_f64(rope_key, "high_freq_factor")?,
                        original_max_position_embeddings: c
                            .nested_f64(rope_key, "original_max_position_embeddings")?,
                    })
                }
                "linear" => linear_scaling = Some(c.nested_f64(rope_key, "factor")?),
                "default" => {}
                other => {
                    return Err(CramError::bad_config(
                        c.path().display(),
                        format!("{rope_key}.rope_type"),
                        format!("unsupported rope scaling `{other}` (supported: llama3, linear)"),
                    ))
                }
            }
        }
        let act_name = c.opt_str("hidden_act")?.unwrap_or_else(|| "silu".into());
        let act = Activation::from_hf(&act_name).ok_or_else(|| {
            CramError::bad_config(
                c.path().display(),
                "hidden_act",
                format!("unsupported `{act_name}`"),
            )
        })?;
        let cfg = Self {
            hidden_size,
            intermediate_size: c.usize("intermediate_size")?,
            num_layers: c.usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: c.usize("vocab_size")?,
            rms_norm_eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: match c.opt_f64("rope_theta")? {
                Some(t) => t,
                None => c
                    .raw("rope_parameters")
                    .and_then(|o| o.get("rope_theta"))
                    .and_then(|v| v.as_f64())
                    .unwrap_or(10000.0),
            },
            llama3_scaling,
            linear_scaling,
            max_position_embeddings: c.opt_usize("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: c.opt_bool("attention_bias")?.unwrap_or(false),
            mlp_bias: c.opt_bool("mlp_bias")?.unwrap_or(false),
            act,
        };
        cfg.validate(&c.path().display().to_string())?;
        Ok(cfg)
    }

    /// Reads GGUF metadata (`llama.*`). Tied embeddings are detected later
    /// from the absence of `output.weight`.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let hidden_size = g.usize("embedding_length")?;
        let num_heads = g.usize("attention.head_count")?;
        let num_kv_heads = g.opt_usize("attention.head_count_kv")?.unwrap_or(num_heads);
        let head_dim = g
            .opt_usize("attention.key_length")?
            .unwrap_or(hidden_size / num_heads.max(1));
        let vocab_size = match g.opt_usize("vocab_size")? {
            Some(v) => v,
            None => g
                .content()
                .tensor_infos
                .get("token_embd.weight")
                .map(|t| t.shape.dims()[0])
                .ok_or_else(|| CramError::BadTensor {
                    path: g.path().to_path_buf(),
                    tensor: "token_embd.weight".into(),
                    msg: "missing".into(),
                })?,
        };
        let cfg = Self {
            hidden_size,
            intermediate_size: g.usize("feed_forward_length")?,
            num_layers: g.usize("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: g
                .opt_f64("attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-5),
            rope_theta: g.opt_f64("rope.freq_base")?.unwrap_or(10000.0),
            llama3_scaling: None,
            linear_scaling: g.opt_f64("rope.scaling.factor")?.filter(|_| {
                g.content()
                    .metadata
                    .get("llama.rope.scaling.type")
                    .is_some_and(|v| v.to_string().map(|s| s == "linear").unwrap_or(false))
            }),
            max_position_embeddings: g.opt_usize("context_length")?.unwrap_or(2048),
            tie_word_embeddings: !g.content().tensor_infos.contains_key("output.weight"),
            attention_bias: g.content().tensor_infos.contains_key("blk.0.attn_q.bias"),
            mlp_bias: g.content().tensor_infos.contains_key("blk.0.ffn_up.bias"),
            act: Activation::Silu,
        };
        cfg.validate(&format!("{} (GGUF metadata)", g.path().display()))?;
        Ok(cfg)
    }

    fn validate(&self, source: &str) -> Result<()> {
        let bad = |field: &str, msg: String| Err(CramError::bad_config(source, field, msg));
        if self.num_heads == 0 {
            return bad("num_attention_heads", "must be positive".into());
        }
        if self.num_kv_heads == 0 {
            return bad("num_key_value_heads", "must be positive".into());
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_kv_heads, self.num_heads
                ),
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(
                "head_dim",
                format!("{} is odd; rotary needs an even head width", self.head_dim),
            );
        }
        Ok(())
    }
}

/// A Llama-family model (also OLMo's, see [`super::olmo`]).
pub struct Llama {
    embed: Embedding,
    layers: Vec<GatedLayer>,
    norm: Norm,
    lm_head: Linear,
    rotary: Rotary,
    /// Clamp of the projected queries, keys and values (OLMo).
    clip_qkv: Option<f64>,
    info: ModelInfo,
    device: Device,
    dtype: DType,
}

/// What sets a Llama-shaped family apart from Llama in [`Llama::load_variant`].
pub struct Variant<'a> {
    /// The architecture name reported by `cram inspect`.
    pub architecture: &'a str,
    /// Builds the norm whose weights are at the given prefix (e.g.
    /// `model.layers.0.input_layernorm`).
    pub norm: &'a dyn Fn(&str) -> Result<Norm>,
    /// Clamp of the projected queries, keys and values, if any.
    pub clip_qkv: Option<f64>,
}

impl Llama {
    /// Builds the model from its config and weights.
    pub fn load(cfg: &LlamaConfig, w: &Weights) -> Result<Self> {
        let rms = |prefix: &str| Norm::rms(w, prefix, cfg.hidden_size, cfg.rms_norm_eps, false);
        Self::load_variant(
            cfg,
            w,
            Variant {
                architecture: "llama",
                norm: &rms,
                clip_qkv: None,
            },
        )
    }

    /// Builds a Llama-shaped model whose norms and q/k/v clamp are `variant`'s.
    pub fn load_variant(cfg: &LlamaConfig, w: &Weights, variant: Variant) -> Result<Self> {
        let h = cfg.hidden_size;
        let qd = cfg.num_heads * cfg.head_dim;
        let kvd = cfg.num_kv_heads * cfg.head_dim;
        let emb_f32 = w.get_f32("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let embedding_std = tensor_std(&emb_f32)?;
        let embed = Embedding {
            w: w.place(&emb_f32)?,
        };
        let mut rotary = Rotary::new(cfg.rope_theta, cfg.head_dim);
        if let Some(s) = cfg.llama3_scaling {
            rotary = rotary.llama3(s);
        }
        if let Some(f) = cfg.linear_scaling {
            rotary = rotary.scale_by(&vec![f as f32; cfg.head_dim / 2]);
        }
        if let Some(f) = w.get_f32_opt("rope_freqs.weight", &[cfg.head_dim / 2])? {
            rotary = rotary.scale_by(&f.to_vec1::<f32>()?);
        }
        let mut layers = Vec::new();
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let proj = |name: &str, in_d: usize, out_d: usize, heads: Option<usize>| {
                let prefix = format!("{p}.self_attn.{name}");
                Linear::load_rotary(w, &prefix, in_d, out_d, cfg.attention_bias, heads)
            };
            let attn = Attention {
                q: proj("q_proj", h, qd, Some(cfg.num_heads))?,
                k: proj("k_proj", h, kvd, Some(cfg.num_kv_heads))?,
                v: proj("v_proj", h, kvd, None)?,
                o: proj("o_proj", qd, h, None)?,
                num_heads: cfg.num_heads,
                num_kv_heads: cfg.num_kv_heads,
                head_dim: cfg.head_dim,
                scale: 1.0 / (cfg.head_dim as f64).sqrt(),
                q_norm: None,
                k_norm: None,
                window: None,
            };
            layers.push(GatedLayer {
                input_norm: (variant.norm)(&format!("{p}.input_layernorm"))?,
                attn,
                post_norm: (variant.norm)(&format!("{p}.post_attention_layernorm"))?,
                mlp: GatedMlp::load(
                    w,
                    &format!("{p}.mlp"),
                    h,
                    cfg.intermediate_size,
                    cfg.mlp_bias,
                    cfg.act,
                )?,
            });
        }
        let norm = (variant.norm)("model.norm")?;
        let tied = cfg.tie_word_embeddings || !w.contains("lm_head.weight");
        let lm_head = if tied {
            Linear::from_weight(embed.w.clone(), w.kernels())
        } else {
            Linear::load(w, "lm_head", h, cfg.vocab_size, false)?
        };
        let num_parameters = embed.w.elem_count()
            + layers
                .iter()
                .map(|l| {
                    l.input_norm.num_params()
                        + l.attn.num_params()
                        + l.post_norm.num_params()
                        + l.mlp.num_params()
                })
                .sum::<usize>()
            + norm.num_params()
            + if tied { 0 } else { lm_head.num_params() };
        let info = ModelInfo {
            architecture: variant.architecture.into(),
            num_layers: cfg.num_layers,
            hidden_size: h,
            input_size: h,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
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
            layers,
            norm,
            lm_head,
            rotary,
            clip_qkv: variant.clip_qkv,
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
        let x = x.to_dtype(self.dtype)?;
        // One set of rotary tables serves every layer.
        let rope = self
            .rotary
            .tables(start, x.dim(1)?, self.dtype, &self.device)?;
        let x = run_gated_layers(&self.layers, x, &rope, bias, state, self.clip_qkv)?;
        let x = self.norm.forward(&x)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }
}

impl AttentionStack for Llama {
    fn base(&self) -> (&ModelInfo, &Device, DType) {
        (&self.info, &self.device, self.dtype)
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed.forward(ids)
    }

    fn stack(&self, embeds: &Tensor, pass: Pass<'_>) -> Result<Tensor> {
        self.run(embeds, pass.start, &pass.bias, pass.state)
    }

    fn kept_bytes(&self, s: StepShape) -> Option<usize> {
        let rot = Some(2 * self.rotary.inv_freq.len());
        let clip = self.clip_qkv.is_some();
        let layers = self.layers.iter().map(|l| l.kept_bytes(s, rot, clip)).sum();
        Some(stack_kept(s, layers, Some(&self.norm), &self.lm_head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Result<LlamaConfig> {
        let mut v = serde_json::json!({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        LlamaConfig::from_json(&Json::new(&v, std::path::Path::new("config.json")))
    }

    #[test]
    fn rope_parameters_of_transformers_v5_are_read() {
        let c = config(serde_json::json!({"rope_parameters": {
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}}))
        .unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.llama3_scaling.unwrap().factor, 8.0);
        let c = config(serde_json::json!({"rope_scaling": null, "rope_theta": 1e5})).unwrap();
        assert!(c.llama3_scaling.is_none());
        assert_eq!(c.rope_theta, 1e5);
    }

    #[test]
    fn bad_rope_type_and_heads_are_errors_naming_the_field() {
        let e = config(serde_json::json!({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rope_scaling.rope_type") && e.contains("yarn"),
            "{e}"
        );
        let e = config(serde_json::json!({"num_key_value_heads": 3}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
    }
}
