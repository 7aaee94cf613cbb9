//! Gemma 3 text models (`gemma3_text`; GGUF architecture `gemma3`, e.g.
//! Gemma 3 270M): sliding-window ("local") and global attention layers with
//! their own rotary bases, per-head q/k RMSNorms, norms before and after
//! both attention and MLP, RMSNorm scaled by `1 + w`, token embeddings
//! scaled by `sqrt(hidden_size)`, a tanh-GELU gated MLP and optional final
//! logit soft-capping.
//!
//! As in `transformers`, the embedding scale belongs to the token embedding:
//! [`CausalLm::embed`] returns scaled embeddings, and vectors given to
//! [`CausalLm::forward`] are used as they are.

use candle_core::{DType, Device, Tensor};

use crate::blocks::{
    attention_bias, Activation, Attention, Embedding, GatedMlp, Linear, Norm, Rotary,
};
use crate::error::{CramError, Result};
use crate::hparams::{Gguf, Json};
use crate::memory::{bias_bytes, layer_kept, stack_kept, StepShape, F32};
use crate::registry::{Architecture, GgufArchitecture};
use crate::weights::{map_gguf_name, Weights};
use crate::{tensor_std, AttentionStack, ModelInfo, Pass};

/// The Hugging Face name of a tensor of a llama.cpp Gemma 3 GGUF (its
/// `ffn_norm` is the pre-feed-forward norm, its `post_attention_norm` the
/// post-attention one).
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
            ("attn_q_norm", "self_attn.q_norm"),
            ("attn_k_norm", "self_attn.k_norm"),
            ("post_attention_norm", "post_attention_layernorm"),
            ("ffn_norm", "pre_feedforward_layernorm"),
            ("ffn_gate", "mlp.gate_proj"),
            ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
            ("post_ffw_norm", "post_feedforward_layernorm"),
        ],
        &[
            ("token_embd", "model.embed_tokens"),
            ("output_norm", "model.norm"),
            ("output", "lm_head"),
            ("rope_freqs", "rope_freqs"),
        ],
    )
}

/// Gemma 3's entry in the [`crate::registry`].
pub const ARCHITECTURE: Architecture = Architecture {
    model_type: "gemma3_text",
    from_config: |c, w| Ok(Box::new(Gemma3::load(&Gemma3Config::from_json(c)?, w)?)),
    gguf: Some(GgufArchitecture {
        name: "gemma3",
        tensor_name: hf_name_for_gguf,
        from_metadata: |g, w| Ok(Box::new(Gemma3::load(&Gemma3Config::from_gguf(g)?, w)?)),
    }),
};

/// Rotary base and linear scaling factor of one kind of layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeSpec {
    /// `rope_theta`.
    pub theta: f64,
    /// Linear scaling factor (`rope_type = "linear"`), if any.
    pub linear_factor: Option<f64>,
}

impl RopeSpec {
    fn rotary(&self, head_dim: usize) -> Rotary {
        let r = Rotary::new(self.theta, head_dim);
        match self.linear_factor {
            Some(f) => r.scale_by(&vec![f as f32; head_dim / 2]),
            None => r,
        }
    }
}

/// Hyper-parameters of a Gemma 3 text model.
#[derive(Debug, Clone)]
pub struct Gemma3Config {
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
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Attention scores are scaled by `query_pre_attn_scalar^-0.5`.
    pub query_pre_attn_scalar: f64,
    /// Window of the sliding-window layers, in tokens (`None`: unlimited).
    pub sliding_window: Option<usize>,
    /// Per layer: whether it is a sliding-window (local) layer.
    pub sliding: Vec<bool>,
    /// Rotary of the global (full-attention) layers.
    pub rope_global: RopeSpec,
    /// Rotary of the sliding-window layers.
    pub rope_local: RopeSpec,
    /// `tanh` soft-capping of the final logits, if any.
    pub final_logit_softcapping: Option<f64>,
    /// Context length.
    pub max_position_embeddings: usize,
    /// Output head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v/o.
    pub attention_bias: bool,
    /// MLP activation.
    pub act: Activation,
    /// Norm weights are stored as `1 + w` (GGUF files written by llama.cpp)
    /// rather than `w`.
    pub norms_include_one: bool,
}

/// `transformers`' default sliding-window pattern (every sixth layer is global).
const DEFAULT_PATTERN: usize = 6;

/// Layer kinds from the legacy `sliding_window_pattern`: layer `i` is global
/// when `(i + 1) % pattern == 0`.
fn sliding_from_pattern(n: usize, pattern: usize) -> Vec<bool> {
    (0..n).map(|i| (i + 1) % pattern != 0).collect()
}

impl Gemma3Config {
    /// Reads a `transformers` `config.json` (`model_type = "gemma3_text"`).
    pub fn from_json(c: &Json) -> Result<Self> {
        let src = c.path().display().to_string();
        let bad = |field: &str, msg: String| CramError::bad_config(&src, field, msg);
        let num_layers = c.usize("num_hidden_layers")?;
        let num_heads = c.usize("num_attention_heads")?;
        let head_dim = c.opt_usize("head_dim")?.unwrap_or(256);
        if c.opt_bool("use_bidirectional_attention")? == Some(true) {
            return Err(bad(
                "use_bidirectional_attention",
                "bidirectional attention is not a causal language model".into(),
            ));
        }
        let sliding = match c.raw("layer_types") {
            Some(v) => {
                let kinds = v
                    .as_array()
                    .ok_or_else(|| bad("layer_types", "expected a list of strings".into()))?;
                if kinds.len() != num_layers {
                    return Err(bad(
                        "layer_types",
                        format!(
                            "has {} entries for {num_layers} layers (num_hidden_layers)",
                            kinds.len()
                        ),
                    ));
                }
                kinds
                    .iter()
                    .map(|k| match k.as_str() {
                        Some("sliding_attention") => Ok(true),
                        Some("full_attention") => Ok(false),
                        _ => Err(bad(
                            "layer_types",
                            format!(
                                "unsupported layer type {k} \
                                 (supported: sliding_attention, full_attention)"
                            ),
                        )),
                    })
                    .collect::<Result<Vec<bool>>>()?
            }
            None => {
                let p = c
                    .opt_usize("sliding_window_pattern")?
                    .unwrap_or(DEFAULT_PATTERN);
                if p == 0 {
                    return Err(bad("sliding_window_pattern", "must be positive".into()));
                }
                sliding_from_pattern(num_layers, p)
            }
        };
        let (rope_global, rope_local) = Self::rope_from_json(c)?;
        let act_name = match c.opt_str("hidden_activation")? {
            Some(a) => a,
            None => c
                .opt_str("hidden_act")?
                .unwrap_or_else(|| "gelu_pytorch_tanh".into()),
        };
        let act = Activation::from_hf(&act_name)
            .ok_or_else(|| bad("hidden_activation", format!("unsupported `{act_name}`")))?;
        let cfg = Self {
            hidden_size: c.usize("hidden_size")?,
            intermediate_size: c.usize("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads: c.opt_usize("num_key_value_heads")?.unwrap_or(num_heads),
            head_dim,
            vocab_size: c.usize("vocab_size")?,
            rms_norm_eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            query_pre_attn_scalar: c.opt_f64("query_pre_attn_scalar")?.unwrap_or(256.0),
            sliding_window: c.opt_usize("sliding_window")?,
            sliding,
            rope_global,
            rope_local,
            final_logit_softcapping: c.opt_f64("final_logit_softcapping")?,
            max_position_embeddings: c.opt_usize("max_position_embeddings")?.unwrap_or(131_072),
            tie_word_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(true),
            attention_bias: c.opt_bool("attention_bias")?.unwrap_or(false),
            act,
            norms_include_one: false,
        };
        cfg.validate(&src)?;
        Ok(cfg)
    }

    /// The global and local rotary: transformers v5's `rope_parameters`
    /// (one entry per layer type), or the classic `rope_theta` (global,
    /// default 1e6), `rope_local_base_freq` (local, default 1e4) and
    /// `rope_scaling` (global layers only).
    fn rope_from_json(c: &Json) -> Result<(RopeSpec, RopeSpec)> {
        let src = c.path().display().to_string();
        let spec = |key: String, obj: Option<&serde_json::Value>, theta: f64| -> Result<RopeSpec> {
            let Some(o) = obj.filter(|o| !o.is_null()) else {
                return Ok(RopeSpec {
                    theta,
                    linear_factor: None,
                });
            };
            let kind = o
                .get("rope_type")
                .or_else(|| o.get("type"))
                .and_then(|v| v.as_str())
                .unwrap_or("default");
            let theta = o
                .get("rope_theta")
                .and_then(|v| v.as_f64())
                .unwrap_or(theta);
            let linear_factor = match kind {
                "default" => None,
                "linear" => Some(o.get("factor").and_then(|v| v.as_f64()).ok_or_else(|| {
                    CramError::bad_config(&src, format!("{key}.factor"), "missing or not a number")
                })?),
                other => {
                    return Err(CramError::bad_config(
                        &src,
                        format!("{key}.rope_type"),
                        format!("unsupported rope scaling `{other}` (supported: linear)"),
                    ))
                }
            };
            Ok(RopeSpec {
                theta,
                linear_factor,
            })
        };
        let theta = c.opt_f64("rope_theta")?.unwrap_or(1e6);
        let local_theta = c.opt_f64("rope_local_base_freq")?.unwrap_or(1e4);
        let per_type = c
            .raw("rope_parameters")
            .filter(|o| o.get("full_attention").is_some() || o.get("sliding_attention").is_some());
        match per_type {
            Some(o) => Ok((
                spec(
                    "rope_parameters.full_attention".into(),
                    o.get("full_attention"),
                    theta,
                )?,
                spec(
                    "rope_parameters.sliding_attention".into(),
                    o.get("sliding_attention"),
                    local_theta,
                )?,
            )),
            None => Ok((
                spec("rope_scaling".into(), c.raw("rope_scaling"), theta)?,
                RopeSpec {
                    theta: local_theta,
                    linear_factor: None,
                },
            )),
        }
    }

    /// Reads GGUF metadata (`gemma3.*`), with the defaults `transformers`
    /// uses for what llama.cpp does not store: every sixth layer global,
    /// local rotary base 1e4. The score scale is `head_dim^-0.5`, and a
    /// linear `rope.scaling` applies to the global layers, as in llama.cpp.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let num_layers = g.usize("block_count")?;
        let num_heads = g.usize("attention.head_count")?;
        let head_dim = g.opt_usize("attention.key_length")?.unwrap_or(256);
        let scaling_type = g
            .content()
            .metadata
            .get("gemma3.rope.scaling.type")
            .and_then(|v| v.to_string().ok().cloned());
        let linear_factor = match scaling_type.as_deref() {
            Some("linear") => g.opt_f64("rope.scaling.factor")?,
            Some("none") | None => None,
            Some(other) => {
                return Err(CramError::bad_config(
                    format!("{} (GGUF metadata)", g.path().display()),
                    "gemma3.rope.scaling.type",
                    format!("unsupported rope scaling `{other}` (supported: linear)"),
                ))
            }
        };
        let cfg = Self {
            hidden_size: g.usize("embedding_length")?,
            intermediate_size: g.usize("feed_forward_length")?,
            num_layers,
            num_heads,
            num_kv_heads: g.opt_usize("attention.head_count_kv")?.unwrap_or(num_heads),
            head_dim,
            vocab_size: g.vocab_size()?,
            rms_norm_eps: g
                .opt_f64("attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-6),
            query_pre_attn_scalar: head_dim as f64,
            sliding_window: Some(g.opt_usize("attention.sliding_window")?.unwrap_or(4096)),
            sliding: sliding_from_pattern(num_layers, DEFAULT_PATTERN),
            rope_global: RopeSpec {
                theta: g.opt_f64("rope.freq_base")?.unwrap_or(1e6),
                linear_factor,
            },
            rope_local: RopeSpec {
                theta: 1e4,
                linear_factor: None,
            },
            final_logit_softcapping: g.opt_f64("final_logit_softcapping")?,
            max_position_embeddings: g.opt_usize("context_length")?.unwrap_or(131_072),
            tie_word_embeddings: !g.content().tensor_infos.contains_key("output.weight"),
            attention_bias: g.content().tensor_infos.contains_key("blk.0.attn_q.bias"),
            act: Activation::GeluTanh,
            norms_include_one: true,
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
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(
                "head_dim",
                format!(
                    "{} is not a positive even number, as rotary needs",
                    self.head_dim
                ),
            );
        }
        if self.query_pre_attn_scalar <= 0.0 {
            return bad("query_pre_attn_scalar", "must be positive".into());
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window", "must be positive".into());
        }
        Ok(())
    }
}

struct Layer {
    input_norm: Norm,
    attn: Attention,
    post_attn_norm: Norm,
    pre_ffn_norm: Norm,
    post_ffn_norm: Norm,
    mlp: GatedMlp,
    sliding: bool,
}

impl Layer {
    fn num_params(&self) -> usize {
        self.input_norm.num_params()
            + self.attn.num_params()
            + self.post_attn_norm.num_params()
            + self.pre_ffn_norm.num_params()
            + self.post_ffn_norm.num_params()
            + self.mlp.num_params()
    }
}

/// A Gemma 3 text model.
pub struct Gemma3 {
    embed: Embedding,
    embed_scale: f64,
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: Linear,
    rotary_global: Rotary,
    rotary_local: Rotary,
    window: Option<usize>,
    final_logit_softcapping: Option<f64>,
    info: ModelInfo,
    device: Device,
    dtype: DType,
}

impl Gemma3 {
    /// Builds the model from its config and weights.
    pub fn load(cfg: &Gemma3Config, w: &Weights) -> Result<Self> {
        let h = cfg.hidden_size;
        let qd = cfg.num_heads * cfg.head_dim;
        let kvd = cfg.num_kv_heads * cfg.head_dim;
        // transformers multiplies by `torch.tensor(hidden ** 0.5)`: an f32.
        let embed_scale = (h as f64).sqrt() as f32 as f64;
        let emb_f32 = w.get_f32("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        // The input embeddings are the scaled rows.
        let embedding_std = tensor_std(&emb_f32)? * embed_scale;
        let embed = Embedding {
            w: w.place(&emb_f32)?,
        };
        drop(emb_f32);
        let add_one = !cfg.norms_include_one;
        let norm = |name: &str, dim: usize| Norm::rms(w, name, dim, cfg.rms_norm_eps, add_one);
        let mut layers = Vec::new();
        for (i, &sliding) in cfg.sliding.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let proj = |name: &str, in_d: usize, out_d: usize| {
                Linear::load(
                    w,
                    &format!("{p}.self_attn.{name}"),
                    in_d,
                    out_d,
                    cfg.attention_bias,
                )
            };
            layers.push(Layer {
                input_norm: norm(&format!("{p}.input_layernorm"), h)?,
                attn: Attention {
                    q: proj("q_proj", h, qd)?,
                    k: proj("k_proj", h, kvd)?,
                    v: proj("v_proj", h, kvd)?,
                    o: proj("o_proj", qd, h)?,
                    num_heads: cfg.num_heads,
                    num_kv_heads: cfg.num_kv_heads,
                    head_dim: cfg.head_dim,
                    scale: 1.0 / cfg.query_pre_attn_scalar.sqrt(),
                    q_norm: Some(norm(&format!("{p}.self_attn.q_norm"), cfg.head_dim)?),
                    k_norm: Some(norm(&format!("{p}.self_attn.k_norm"), cfg.head_dim)?),
                    window: if sliding { cfg.sliding_window } else { None },
                },
                post_attn_norm: norm(&format!("{p}.post_attention_layernorm"), h)?,
                pre_ffn_norm: norm(&format!("{p}.pre_feedforward_layernorm"), h)?,
                post_ffn_norm: norm(&format!("{p}.post_feedforward_layernorm"), h)?,
                mlp: GatedMlp::load(
                    w,
                    &format!("{p}.mlp"),
                    h,
                    cfg.intermediate_size,
                    false,
                    cfg.act,
                )?,
                sliding,
            });
        }
        let final_norm = norm("model.norm", h)?;
        let tied = cfg.tie_word_embeddings;
        let lm_head = if tied {
            Linear::from_weight(embed.w.clone(), w.kernels())
        } else {
            Linear::load(w, "lm_head", h, cfg.vocab_size, false)?
        };
        let num_parameters = embed.w.elem_count()
            + layers.iter().map(Layer::num_params).sum::<usize>()
            + final_norm.num_params()
            + if tied { 0 } else { lm_head.num_params() };
        let info = ModelInfo {
            architecture: "gemma3_text".into(),
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
            embed_scale,
            layers,
            norm: final_norm,
            lm_head,
            rotary_global: cfg.rope_global.rotary(cfg.head_dim),
            rotary_local: cfg.rope_local.rotary(cfg.head_dim),
            window: cfg.sliding_window,
            final_logit_softcapping: cfg.final_logit_softcapping,
            info,
            device: w.device().clone(),
            dtype: w.dtype(),
        })
    }

    /// Runs the blocks on `x` at positions `start..`; `mask` is `[B, start
    /// + T]` (or none).
    fn run(&self, x: &Tensor, pass: Pass<'_>) -> Result<Tensor> {
        let Pass {
            start,
            mask,
            bias: global_bias,
            mut state,
        } = pass;
        let mut x = x.to_dtype(self.dtype)?;
        let (b, t, _) = x.dims3()?;
        let (dev, dt) = (&self.device, self.dtype);
        let local_bias = attention_bias(b, t, start, mask, self.window, dt, dev)?;
        let rope_global = self.rotary_global.tables(start, t, dt, dev)?;
        let rope_local = self.rotary_local.tables(start, t, dt, dev)?;
        for (i, l) in self.layers.iter().enumerate() {
            let st = state.as_deref_mut().map(|s| &mut s.layers[i]);
            let (rope, bias) = if l.sliding {
                (&rope_local, &local_bias)
            } else {
                (&rope_global, &global_bias)
            };
            let a = l
                .attn
                .forward(&l.input_norm.forward(&x)?, Some(rope), bias, st)?;
            x = (x + l.post_attn_norm.forward(&a)?)?;
            let m = l.mlp.forward(&l.pre_ffn_norm.forward(&x)?)?;
            x = (x + l.post_ffn_norm.forward(&m)?)?;
        }
        let x = self.norm.forward(&x)?;
        let logits = self.lm_head.forward(&x)?.to_dtype(DType::F32)?;
        Ok(match self.final_logit_softcapping {
            Some(c) => ((logits / c)?.tanh()? * c)?,
            None => logits,
        })
    }
}

impl AttentionStack for Gemma3 {
    fn base(&self) -> (&ModelInfo, &Device, DType) {
        (&self.info, &self.device, self.dtype)
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok((self.embed.forward(ids)? * self.embed_scale)?)
    }

    fn kept_bytes(&self, s: StepShape) -> Option<usize> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let rotary = if l.sliding {
                    &self.rotary_local
                } else {
                    &self.rotary_global
                };
                let norms = [
                    &l.input_norm,
                    &l.post_attn_norm,
                    &l.pre_ffn_norm,
                    &l.post_ffn_norm,
                ];
                let attn = l.attn.kept_bytes(s, Some(2 * rotary.inv_freq.len()), false);
                layer_kept(s, &l.attn, &norms, attn + l.mlp.kept_bytes(s))
            })
            .sum();
        // The sliding layers' own mask, and the soft-capping's three
        // logits-sized f32 tensors.
        let v = self.info.vocab_size;
        let softcap = self
            .final_logit_softcapping
            .map_or(0, |_| 3 * s.rows() * v * F32);
        Some(bias_bytes(s) + softcap + stack_kept(s, layers, Some(&self.norm), &self.lm_head))
    }

    fn stack(&self, embeds: &Tensor, pass: Pass<'_>) -> Result<Tensor> {
        self.run(embeds, pass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Result<Gemma3Config> {
        let mut v = serde_json::json!({
            "model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "vocab_size": 100
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        Gemma3Config::from_json(&Json::new(&v, std::path::Path::new("config.json")))
    }

    #[test]
    fn layer_kinds_come_from_layer_types_or_the_pattern() {
        let c = config(serde_json::json!({})).unwrap();
        assert_eq!(c.sliding, [true, true, true, true, true, false]);
        let c = config(serde_json::json!({"sliding_window_pattern": 2})).unwrap();
        assert_eq!(c.sliding, [true, false, true, false, true, false]);
        let types = ["full_attention", "sliding_attention"].repeat(3);
        let c = config(serde_json::json!({ "layer_types": types })).unwrap();
        assert_eq!(c.sliding, [false, true, false, true, false, true]);
        let e = config(serde_json::json!({"layer_types": ["full_attention"]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer_types"), "{e}");
    }

    #[test]
    fn rope_of_both_layer_kinds_is_read_in_both_conventions() {
        let c = config(serde_json::json!({"rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}))
        .unwrap();
        assert_eq!(c.rope_global.linear_factor, Some(8.0));
        assert_eq!(c.rope_global.theta, 1e6);
        assert_eq!(c.rope_local.theta, 1e4);
        assert_eq!(c.rope_local.linear_factor, None);
        let c = config(
            serde_json::json!({"rope_theta": 5e5, "rope_local_base_freq": 2e4,
            "rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
        )
        .unwrap();
        assert_eq!(c.rope_global.theta, 5e5);
        assert_eq!(c.rope_global.linear_factor, Some(4.0));
        assert_eq!(c.rope_local.theta, 2e4);
        let e = config(serde_json::json!({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rope_scaling.rope_type") && e.contains("yarn"),
            "{e}"
        );
    }
}
