//! GPT-NeoX (Pythia): LayerNorm with bias, partial rotary embeddings
//! (`rotary_pct`), parallel or sequential residuals, a fused
//! `query_key_value` projection whose rows are interleaved per head
//! (`[q_h; k_h; v_h]` for each head h), and an untied output head
//! (`embed_out`).

use candle_core::{DType, Device, Tensor};

use crate::blocks::{
    run_ln_layers, Activation, Attention, Embedding, Linear, LnLayer, Mlp, Norm, Residual, Rotary,
};
use crate::error::{CramError, Result};
use crate::hparams::{Gguf, Json};
use crate::memory::{stack_kept, StepShape};
use crate::registry::{Architecture, GgufArchitecture};
use crate::weights::{map_gguf_name, Weights};
use crate::{tensor_std, AttentionStack, DecodeState, ModelInfo, Pass};

/// The GptNeoX entry in the [`crate::registry`].
pub const ARCHITECTURE: Architecture = Architecture {
    model_type: "gpt_neox",
    from_config: |c, w| Ok(Box::new(GptNeoX::load(&GptNeoXConfig::from_json(c)?, w)?)),
    gguf: Some(GgufArchitecture {
        name: "gptneox",
        tensor_name: hf_name_for_gguf,
        from_metadata: |g, w| Ok(Box::new(GptNeoX::load(&GptNeoXConfig::from_gguf(g)?, w)?)),
    }),
};

/// Hyper-parameters of a GPT-NeoX model.
#[derive(Debug, Clone)]
pub struct GptNeoXConfig {
    /// `hidden_size`.
    pub hidden_size: usize,
    /// `intermediate_size`.
    pub intermediate_size: usize,
    /// `num_hidden_layers`.
    pub num_layers: usize,
    /// `num_attention_heads`.
    pub num_heads: usize,
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `max_position_embeddings`.
    pub max_position_embeddings: usize,
    /// Channels of each head that rotate: `int(head_dim * rotary_pct)`.
    pub rotary_dim: usize,
    /// Rotary base (`rotary_emb_base`, `rope_theta`).
    pub rope_theta: f64,
    /// `layer_norm_eps`.
    pub layer_norm_eps: f64,
    /// `use_parallel_residual`.
    pub use_parallel_residual: bool,
    /// `hidden_act`.
    pub act: Activation,
    /// `attention_bias` (default true).
    pub attention_bias: bool,
    /// `tie_word_embeddings` (default false: the head is `embed_out`).
    pub tie_word_embeddings: bool,
}

impl GptNeoXConfig {
    /// Reads a `transformers` `config.json`: the rotary settings either as
    /// Pythia's `rotary_pct` / `rotary_emb_base` or as transformers v5's
    /// `rope_parameters` (`partial_rotary_factor`, `rope_theta`).
    pub fn from_json(c: &Json) -> Result<Self> {
        let source = c.path().display().to_string();
        let hidden_size = c.usize("hidden_size")?;
        let num_heads = c.usize("num_attention_heads")?;
        let rope = |key: &str| {
            c.raw("rope_parameters")
                .and_then(|o| o.get(key))
                .and_then(|v| v.as_f64())
        };
        if let Some(kind) = c
            .raw("rope_parameters")
            .and_then(|o| o.get("rope_type"))
            .and_then(|v| v.as_str())
            .filter(|k| *k != "default")
        {
            return Err(CramError::bad_config(
                &source,
                "rope_parameters.rope_type",
                format!("unsupported rope scaling `{kind}` (supported: default)"),
            ));
        }
        // transformers' defaults when neither spelling is present.
        let rotary_pct = match rope("partial_rotary_factor") {
            Some(x) => x,
            None => c.opt_f64("rotary_pct")?.unwrap_or(0.25),
        };
        let rope_theta = match rope("rope_theta") {
            Some(x) => x,
            None => match c.opt_f64("rotary_emb_base")? {
                Some(x) => x,
                None => c.opt_f64("rope_theta")?.unwrap_or(10000.0),
            },
        };
        let act_name = c.opt_str("hidden_act")?.unwrap_or_else(|| "gelu".into());
        let act = Activation::from_config(&act_name, &source, "hidden_act")?;
        let head_dim = hidden_size / num_heads.max(1);
        let cfg = Self {
            hidden_size,
            intermediate_size: c.usize("intermediate_size")?,
            num_layers: c.usize("num_hidden_layers")?,
            num_heads,
            vocab_size: c.usize("vocab_size")?,
            max_position_embeddings: c.opt_usize("max_position_embeddings")?.unwrap_or(2048),
            rotary_dim: (head_dim as f64 * rotary_pct) as usize,
            rope_theta,
            layer_norm_eps: c.opt_f64("layer_norm_eps")?.unwrap_or(1e-5),
            use_parallel_residual: c.opt_bool("use_parallel_residual")?.unwrap_or(true),
            act,
            attention_bias: c.opt_bool("attention_bias")?.unwrap_or(true),
            tie_word_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        };
        cfg.validate(&source, "rotary_pct")?;
        Ok(cfg)
    }

    /// Reads GGUF metadata (`gptneox.*`).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let hidden_size = g.usize("embedding_length")?;
        let num_heads = g.usize("attention.head_count")?;
        let has = |name: &str| g.content().tensor_infos.contains_key(name);
        let cfg = Self {
            hidden_size,
            intermediate_size: g.usize("feed_forward_length")?,
            num_layers: g.usize("block_count")?,
            num_heads,
            vocab_size: g.vocab_size()?,
            max_position_embeddings: g.opt_usize("context_length")?.unwrap_or(2048),
            // llama.cpp rotates whole heads when the key is absent.
            rotary_dim: match g.opt_usize("rope.dimension_count")? {
                Some(d) => d,
                None => hidden_size / num_heads.max(1),
            },
            rope_theta: g.opt_f64("rope.freq_base")?.unwrap_or(10000.0),
            layer_norm_eps: g.opt_f64("attention.layer_norm_epsilon")?.unwrap_or(1e-5),
            use_parallel_residual: g.opt_bool("use_parallel_residual")?.unwrap_or(true),
            // Pythia was trained with the exact GELU (llama.cpp runs its
            // tanh approximation).
            act: Activation::Gelu,
            attention_bias: has("blk.0.attn_qkv.bias"),
            tie_word_embeddings: !has("output.weight"),
        };
        cfg.validate(
            &format!("{} (GGUF metadata)", g.path().display()),
            "gptneox.rope.dimension_count",
        )?;
        Ok(cfg)
    }

    /// Checks the heads and the rotary width (`rotary_field` names where it
    /// came from).
    fn validate(&self, source: &str, rotary_field: &str) -> Result<()> {
        let bad = |field: &str, msg: String| Err(CramError::bad_config(source, field, msg));
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return bad(
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_heads, self.hidden_size
                ),
            );
        }
        let head_dim = self.hidden_size / self.num_heads;
        if self.rotary_dim > head_dim || !self.rotary_dim.is_multiple_of(2) {
            return bad(
                rotary_field,
                format!(
                    "gives {} rotary channels of a {head_dim}-wide head; they must be \
                     an even number no larger than the head",
                    self.rotary_dim
                ),
            );
        }
        Ok(())
    }
}

/// The Hugging Face name of a tensor of a llama.cpp GPT-NeoX GGUF.
pub fn hf_name_for_gguf(name: &str) -> Option<String> {
    map_gguf_name(
        name,
        "gpt_neox.layers",
        &[
            ("attn_norm", "input_layernorm"),
            ("attn_qkv", "attention.query_key_value"),
            ("attn_output", "attention.dense"),
            ("ffn_norm", "post_attention_layernorm"),
            ("ffn_up", "mlp.dense_h_to_4h"),
            ("ffn_down", "mlp.dense_4h_to_h"),
        ],
        &[
            ("token_embd", "gpt_neox.embed_in"),
            ("output_norm", "gpt_neox.final_layer_norm"),
            ("output", "embed_out"),
        ],
    )
}

/// Reorders the rows of transformers' fused projection, `[q_h; k_h; v_h]`
/// per head h, into `[q; k; v]` (llama.cpp's converter does the same).
/// `t` is `[heads * 3 * head_dim, in]`.
fn deinterleave_qkv(t: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    let t = t.reshape((heads, 3, head_dim, cols))?;
    let parts = (0..3)
        .map(|j| Ok(t.narrow(1, j, 1)?.reshape((heads * head_dim, cols))?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?.reshape((rows, cols))?)
}

/// A GPT-NeoX model.
pub struct GptNeoX {
    embed: Embedding,
    layers: Vec<LnLayer>,
    final_norm: Norm,
    head: Linear,
    rotary: Rotary,
    info: ModelInfo,
    device: Device,
    dtype: DType,
}

impl GptNeoX {
    /// Builds the model from its config and weights.
    pub fn load(cfg: &GptNeoXConfig, w: &Weights) -> Result<Self> {
        let h = cfg.hidden_size;
        let head_dim = h / cfg.num_heads;
        let emb_f32 = w.get_f32("gpt_neox.embed_in.weight", &[cfg.vocab_size, h])?;
        let embedding_std = tensor_std(&emb_f32)?;
        let embed = Embedding {
            w: w.place(&emb_f32)?,
        };
        let mut layers = Vec::new();
        for i in 0..cfg.num_layers {
            let p = format!("gpt_neox.layers.{i}");
            let qkv_name = format!("{p}.attention.query_key_value");
            let mut wf = w.get_f32(&format!("{qkv_name}.weight"), &[3 * h, h])?;
            let mut bf = if cfg.attention_bias {
                Some(w.get_f32(&format!("{qkv_name}.bias"), &[3 * h])?)
            } else {
                None
            };
            if !w.is_gguf() {
                wf = deinterleave_qkv(&wf, cfg.num_heads, head_dim)?;
                bf = match bf {
                    Some(b) => Some(
                        deinterleave_qkv(&b.reshape((3 * h, 1))?, cfg.num_heads, head_dim)?
                            .reshape(3 * h)?,
                    ),
                    None => None,
                };
            }
            let qkv = Linear {
                w: w.place(&wf)?,
                b: bf.map(|b| w.place(&b)).transpose()?,
                kernels: w.kernels(),
            };
            let [q, k, v]: [Linear; 3] =
                qkv.split_rows(&[h, h, h])?.try_into().expect("three parts");
            let norm =
                |name: &str| Norm::layer(w, &format!("{p}.{name}"), h, cfg.layer_norm_eps, true);
            let lin = |name: &str, i: usize, o: usize| {
                Linear::load(w, &format!("{p}.{name}"), i, o, cfg.attention_bias)
            };
            layers.push(LnLayer {
                attn_norm: norm("input_layernorm")?,
                attn: Attention {
                    q,
                    k,
                    v,
                    o: lin("attention.dense", h, h)?,
                    num_heads: cfg.num_heads,
                    num_kv_heads: cfg.num_heads,
                    head_dim,
                    scale: 1.0 / (head_dim as f64).sqrt(),
                    q_norm: None,
                    k_norm: None,
                    window: None,
                },
                mlp_norm: norm("post_attention_layernorm")?,
                mlp: Mlp {
                    fc: Linear::load(
                        w,
                        &format!("{p}.mlp.dense_h_to_4h"),
                        h,
                        cfg.intermediate_size,
                        true,
                    )?,
                    proj: Linear::load(
                        w,
                        &format!("{p}.mlp.dense_4h_to_h"),
                        cfg.intermediate_size,
                        h,
                        true,
                    )?,
                    act: cfg.act,
                },
                residual: if cfg.use_parallel_residual {
                    Residual::Parallel
                } else {
                    Residual::PreNorm
                },
            });
        }
        let final_norm = Norm::layer(w, "gpt_neox.final_layer_norm", h, cfg.layer_norm_eps, true)?;
        let head = if cfg.tie_word_embeddings {
            Linear::from_weight(embed.w.clone(), w.kernels())
        } else {
            Linear::load(w, "embed_out", h, cfg.vocab_size, false)?
        };
        let num_parameters = embed.w.elem_count()
            + layers.iter().map(LnLayer::num_params).sum::<usize>()
            + final_norm.num_params()
            + if cfg.tie_word_embeddings {
                0
            } else {
                head.num_params()
            };
        let info = ModelInfo {
            architecture: "gpt_neox".into(),
            num_layers: cfg.num_layers,
            hidden_size: h,
            input_size: h,
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
            layers,
            final_norm,
            head,
            rotary: Rotary::new(cfg.rope_theta, cfg.rotary_dim),
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
        let rope = self
            .rotary
            .tables(start, x.dim(1)?, self.dtype, &self.device)?;
        let rope = (!self.rotary.inv_freq.is_empty()).then_some(&rope);
        let x = run_ln_layers(&self.layers, x, rope, bias, state)?;
        let x = self.final_norm.forward(&x)?;
        Ok(self.head.forward(&x)?.to_dtype(DType::F32)?)
    }
}

impl AttentionStack for GptNeoX {
    fn base(&self) -> (&ModelInfo, &Device, DType) {
        (&self.info, &self.device, self.dtype)
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed.forward(ids)
    }

    fn kept_bytes(&self, s: StepShape) -> Option<usize> {
        let rot = (!self.rotary.inv_freq.is_empty()).then_some(2 * self.rotary.inv_freq.len());
        let layers = self.layers.iter().map(|l| l.kept_bytes(s, rot)).sum();
        Some(stack_kept(s, layers, Some(&self.final_norm), &self.head))
    }

    fn stack(&self, embeds: &Tensor, pass: Pass<'_>) -> Result<Tensor> {
        self.run(embeds, pass.start, &pass.bias, pass.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qkv_rows_are_deinterleaved_per_head() {
        // 2 heads of width 2: rows q0 q0 k0 k0 v0 v0 q1 q1 k1 k1 v1 v1.
        let rows: Vec<f32> = (0..12).map(|r| r as f32).collect();
        let t = Tensor::from_vec(rows, (12, 1), &Device::Cpu).unwrap();
        let d: Vec<f32> = deinterleave_qkv(&t, 2, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(d, [0., 1., 6., 7., 2., 3., 8., 9., 4., 5., 10., 11.]);
    }

    #[test]
    fn rotary_settings_are_read_in_both_spellings() {
        let path = std::path::Path::new("config.json");
        let base = serde_json::json!({"model_type": "gpt_neox", "hidden_size": 64,
            "num_attention_heads": 4, "intermediate_size": 128, "num_hidden_layers": 2,
            "vocab_size": 10});
        let mut v = base.clone();
        v["rotary_pct"] = 0.5.into();
        v["rotary_emb_base"] = 1000.into();
        let c = GptNeoXConfig::from_json(&Json::new(&v, path)).unwrap();
        assert_eq!((c.rotary_dim, c.rope_theta), (8, 1000.0));
        let mut v = base.clone();
        v["rope_parameters"] = serde_json::json!({"rope_type": "default",
            "rope_theta": 500.0, "partial_rotary_factor": 1.0});
        let c = GptNeoXConfig::from_json(&Json::new(&v, path)).unwrap();
        assert_eq!((c.rotary_dim, c.rope_theta), (16, 500.0));
        let c = GptNeoXConfig::from_json(&Json::new(&base, path)).unwrap();
        assert_eq!((c.rotary_dim, c.rope_theta), (4, 10000.0));
        let mut v = base;
        v["rotary_pct"] = 0.1.into();
        let e = GptNeoXConfig::from_json(&Json::new(&v, path))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rotary_pct"), "{e}");
    }
}
