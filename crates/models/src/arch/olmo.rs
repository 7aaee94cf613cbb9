//! OLMo (`olmo`, e.g. `allenai/OLMo-1B-0724-hf`): a Llama-shaped decoder
//! with non-parametric LayerNorms (no weight, no bias, epsilon 1e-5) and
//! queries, keys and values optionally clamped to `±clip_qkv`.

use super::llama::{Llama, LlamaConfig, Variant};
use crate::blocks::Norm;
use crate::error::{CramError, Result};
use crate::hparams::{Gguf, Json};
use crate::registry::{Architecture, GgufArchitecture};
use crate::weights::Weights;

/// OLMo's entry in the [`crate::registry`] (llama.cpp's OLMo GGUFs use the
/// Llama tensor names).
pub const ARCHITECTURE: Architecture = Architecture {
    model_type: "olmo",
    from_config: |c, w| Ok(Box::new(load(&OlmoConfig::from_json(c)?, w)?)),
    gguf: Some(GgufArchitecture {
        name: "olmo",
        tensor_name: super::llama::hf_name_for_gguf,
        from_metadata: |g, w| Ok(Box::new(load(&OlmoConfig::from_gguf(g)?, w)?)),
    }),
};

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

/// Builds an OLMo model from its config and weights: Llama's layers with
/// non-parametric LayerNorms and the q/k/v clamp. llama.cpp permutes the q/k
/// rows of OLMo GGUFs as it does Llama's, which Llama's loader undoes.
pub fn load(cfg: &OlmoConfig, w: &Weights) -> Result<Llama> {
    let layer_norm = |_: &str| {
        Ok(Norm::Layer {
            w: None,
            b: None,
            eps: OLMO_LAYER_NORM_EPS,
        })
    };
    Llama::load_variant(
        &cfg.base,
        w,
        Variant {
            architecture: "olmo",
            norm: &layer_norm,
            clip_qkv: cfg.clip_qkv,
        },
    )
}
