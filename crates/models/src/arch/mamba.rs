//! Mamba (selective state-space model, `state-spaces/mamba-*-hf`,
//! `transformers`' `MambaForCausalLM`): RMSNorm blocks whose mixer is a
//! gated causal depthwise convolution followed by a selective scan.
//!
//! The scan runs on the CPU as a custom op with a hand-written backward
//! (recomputing the states per channel), and elsewhere as a loop of candle
//! ops; the convolution is a sum of shifted, scaled copies of its input.
//! Both are differentiable with respect to the input embeddings.

use candle_core::{DType, Device, Tensor, D};
use cram_kernels::ops;
use cram_kernels::scan::selective_scan;
use cram_kernels::Kernels;

use crate::blocks::{expect_width, Activation, Embedding, Linear, Norm};
use crate::error::{CramError, Result};
use crate::hparams::{Gguf, Json};
use crate::registry::{Architecture, GgufArchitecture};
use crate::weights::{map_gguf_name, Weights};
use crate::{tensor_std, CausalLm, DecodeState, LayerState, ModelInfo};

/// The Hugging Face name of a tensor of a llama.cpp Mamba GGUF (`ssm_a`
/// holds `A = -exp(A_log)` itself).
pub fn hf_name_for_gguf(name: &str) -> Option<String> {
    map_gguf_name(
        name,
        "model.layers",
        &[
            ("attn_norm", "input_layernorm"),
            ("ssm_in", "mixer.in_proj"),
            ("ssm_conv1d", "mixer.conv1d"),
            ("ssm_x", "mixer.x_proj"),
            ("ssm_dt", "mixer.dt_proj"),
            ("ssm_a", "mixer.A"),
            ("ssm_d", "mixer.D"),
            ("ssm_out", "mixer.out_proj"),
        ],
        &[
            ("token_embd", "model.embed_tokens"),
            ("output_norm", "model.norm"),
            ("output", "lm_head"),
        ],
    )
}

/// Mamba's entry in the [`crate::registry`].
pub const ARCHITECTURE: Architecture = Architecture {
    model_type: "mamba",
    from_config: |c, w| Ok(Box::new(Mamba::load(&MambaConfig::from_json(c)?, w)?)),
    gguf: Some(GgufArchitecture {
        name: "mamba",
        tensor_name: hf_name_for_gguf,
        from_metadata: |g, w| Ok(Box::new(Mamba::load(&MambaConfig::from_gguf(g)?, w)?)),
    }),
};

/// The context length reported for Mamba, which has none (the value
/// llama.cpp's converter writes).
pub const MAMBA_CONTEXT_LENGTH: usize = 1 << 20;

/// Hyper-parameters of a Mamba model.
#[derive(Debug, Clone)]
pub struct MambaConfig {
    /// Residual width (`d_model`).
    pub hidden_size: usize,
    /// Width of the mixer (`d_inner = expand * d_model`).
    pub intermediate_size: usize,
    /// State size per channel (`d_state`).
    pub state_size: usize,
    /// Width of the causal convolution (`d_conv`).
    pub conv_kernel: usize,
    /// Rank of the time-step projection (`dt_rank`).
    pub time_step_rank: usize,
    /// Blocks.
    pub num_layers: usize,
    /// Vocabulary size (rows of the embedding matrix).
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub layer_norm_epsilon: f64,
    /// Biases on the input and output projections.
    pub use_bias: bool,
    /// Bias on the convolution.
    pub use_conv_bias: bool,
    /// Keep the residual stream in f32 whatever the compute dtype.
    pub residual_in_fp32: bool,
    /// Output head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Activation after the convolution (`hidden_act`).
    pub act: Activation,
}

impl MambaConfig {
    /// Reads a `transformers` `config.json` (`model_type = "mamba"`).
    pub fn from_json(c: &Json) -> Result<Self> {
        let hidden_size = c.usize("hidden_size")?;
        // transformers always derives intermediate_size from expand.
        let intermediate_size = match c.opt_usize("expand")? {
            Some(e) => e * hidden_size,
            None => c.opt_usize("intermediate_size")?.unwrap_or(2 * hidden_size),
        };
        let time_step_rank = match c.raw("time_step_rank") {
            None => hidden_size.div_ceil(16),
            Some(serde_json::Value::String(s)) if s == "auto" => hidden_size.div_ceil(16),
            Some(_) => c.usize("time_step_rank").map_err(|_| {
                CramError::bad_config(
                    c.path().display(),
                    "time_step_rank",
                    "expected a positive integer or \"auto\"",
                )
            })?,
        };
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
            intermediate_size,
            state_size: c.opt_usize("state_size")?.unwrap_or(16),
            conv_kernel: c.opt_usize("conv_kernel")?.unwrap_or(4),
            time_step_rank,
            num_layers: c.usize("num_hidden_layers")?,
            vocab_size: c.usize("vocab_size")?,
            layer_norm_epsilon: c.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
            use_bias: c.opt_bool("use_bias")?.unwrap_or(false),
            use_conv_bias: c.opt_bool("use_conv_bias")?.unwrap_or(true),
            residual_in_fp32: c.opt_bool("residual_in_fp32")?.unwrap_or(true),
            tie_word_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(true),
            act,
        };
        cfg.validate(&c.path().display().to_string())?;
        Ok(cfg)
    }

    /// Reads GGUF metadata (`mamba.*`, as llama.cpp's converter writes it).
    /// Biases and tied embeddings are detected from the tensors present.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let tensors = &g.content().tensor_infos;
        let vocab_size = tensors
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| CramError::BadTensor {
                path: g.path().to_path_buf(),
                tensor: "token_embd.weight".into(),
                msg: "missing".into(),
            })?;
        let cfg = Self {
            hidden_size: g.usize("embedding_length")?,
            intermediate_size: g.usize("ssm.inner_size")?,
            state_size: g.usize("ssm.state_size")?,
            conv_kernel: g.usize("ssm.conv_kernel")?,
            time_step_rank: g.usize("ssm.time_step_rank")?,
            num_layers: g.usize("block_count")?,
            vocab_size,
            layer_norm_epsilon: g
                .opt_f64("attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-5),
            use_bias: tensors.contains_key("blk.0.ssm_in.bias"),
            use_conv_bias: tensors.contains_key("blk.0.ssm_conv1d.bias"),
            residual_in_fp32: true,
            tie_word_embeddings: !tensors.contains_key("output.weight"),
            act: Activation::Silu,
        };
        cfg.validate(&format!("{} (GGUF metadata)", g.path().display()))?;
        Ok(cfg)
    }

    fn validate(&self, source: &str) -> Result<()> {
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("state_size", self.state_size),
            ("conv_kernel", self.conv_kernel),
            ("time_step_rank", self.time_step_rank),
        ] {
            if v == 0 {
                return Err(CramError::bad_config(source, field, "must be positive"));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

struct Mixer {
    in_proj: Linear,
    /// Convolution taps `[di]`, oldest position first.
    conv_taps: Vec<Tensor>,
    conv_bias: Option<Tensor>,
    x_proj: Linear,
    dt_proj: Linear,
    /// `A = -exp(A_log)`, `[di, n]`, f32 (f64 for an f64 model).
    a: Tensor,
    /// `[di]`.
    d: Tensor,
    out_proj: Linear,
    act: Activation,
    di: usize,
    n: usize,
    rank: usize,
    kernel: usize,
    /// Which scan kernel runs.
    kernels: Kernels,
}

impl Mixer {
    fn num_params(&self) -> usize {
        self.in_proj.num_params()
            + self.conv_taps.len() * self.di
            + self.conv_bias.as_ref().map_or(0, Tensor::elem_count)
            + self.x_proj.num_params()
            + self.dt_proj.num_params()
            + self.a.elem_count()
            + self.d.elem_count()
            + self.out_proj.num_params()
    }

    /// The mixer on normalised input `x` `[B, T, hidden]`; `mask` `[B, T, 1]`
    /// (compute dtype) zeroes padding as `transformers` does; `state`, when
    /// given, holds the convolution and scan states and is advanced.
    fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        state: Option<&mut LayerState>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let apply_mask = |v: Tensor| -> Result<Tensor> {
            Ok(match mask {
                Some(m) => v.broadcast_mul(m)?,
                None => v,
            })
        };
        let x = apply_mask(x.clone())?;
        let xz = self.in_proj.forward(&x)?;
        let xs = xz.narrow(D::Minus1, 0, self.di)?;
        let z = xz.narrow(D::Minus1, self.di, self.di)?;

        let (prev_conv, prev_ssm) = match state.as_deref() {
            Some(LayerState::Ssm { conv, ssm }) => (Some(conv.clone()), Some(ssm.clone())),
            _ => (None, None),
        };
        // Causal depthwise convolution: K - 1 earlier inputs (zeros at the
        // start) precede the T new ones.
        let k = self.kernel;
        let prev = match prev_conv {
            Some(c) => c,
            None => Tensor::zeros((b, k - 1, self.di), xs.dtype(), xs.device())?,
        };
        let padded = Tensor::cat(&[&prev, &xs], 1)?;
        let mut conv = match &self.conv_bias {
            Some(bias) => bias
                .reshape((1, 1, self.di))?
                .broadcast_as((b, t, self.di))?
                .contiguous()?,
            None => Tensor::zeros((b, t, self.di), xs.dtype(), xs.device())?,
        };
        for (i, tap) in self.conv_taps.iter().enumerate() {
            conv = (conv + padded.narrow(1, i, t)?.broadcast_mul(tap)?)?;
        }
        let xs = apply_mask(self.act.forward(&conv)?)?;

        let dbc = self.x_proj.forward(&xs)?;
        let dt = dbc.narrow(D::Minus1, 0, self.rank)?;
        let bm = dbc.narrow(D::Minus1, self.rank, self.n)?;
        let cm = dbc.narrow(D::Minus1, self.rank + self.n, self.n)?;
        let sd = self.a.dtype();
        let delta = ops::softplus(&self.dt_proj.forward(&dt)?.to_dtype(sd)?)?;
        let (y, last) = selective_scan(
            &self.kernels,
            &xs,
            &delta,
            &self.a,
            &bm,
            &cm,
            prev_ssm.as_ref(),
            state.is_some(),
        )?;
        if let Some(st) = state {
            let conv_state = padded.narrow(1, t, k - 1)?.contiguous()?;
            *st = LayerState::Ssm {
                conv: conv_state,
                ssm: last.ok_or_else(|| CramError::Model("scan returned no state".into()))?,
            };
        }
        let y = (y + xs.to_dtype(sd)?.broadcast_mul(&self.d)?)?;
        let y = (y * cram_kernels::ops::silu(&z.to_dtype(sd)?)?)?.to_dtype(xs.dtype())?;
        self.out_proj.forward(&y)
    }
}

struct Block {
    norm: Norm,
    mixer: Mixer,
}

/// A Mamba model.
pub struct Mamba {
    embed: Embedding,
    layers: Vec<Block>,
    norm_f: Norm,
    lm_head: Linear,
    residual_in_fp32: bool,
    info: ModelInfo,
    device: Device,
    dtype: DType,
}

impl Mamba {
    /// Builds the model from its config and weights (a `transformers`
    /// folder or a llama.cpp GGUF file, whose names and `A` differ).
    pub fn load(cfg: &MambaConfig, w: &Weights) -> Result<Self> {
        let h = cfg.hidden_size;
        let di = cfg.intermediate_size;
        let n = cfg.state_size;
        let k = cfg.conv_kernel;
        let gguf = w.is_gguf();
        let (embed_name, layers_name, norm_name, norm_f_name) = if gguf {
            (
                "model.embed_tokens",
                "model.layers",
                "input_layernorm",
                "model.norm",
            )
        } else {
            (
                "backbone.embeddings",
                "backbone.layers",
                "norm",
                "backbone.norm_f",
            )
        };
        // Older checkpoints name it `backbone.embedding` (transformers
        // renames it on load).
        let embed_name = if !gguf
            && !w.contains("backbone.embeddings.weight")
            && w.contains("backbone.embedding.weight")
        {
            "backbone.embedding"
        } else {
            embed_name
        };
        let emb_f32 = w.get_f32(&format!("{embed_name}.weight"), &[cfg.vocab_size, h])?;
        let embedding_std = tensor_std(&emb_f32)?;
        let embed = Embedding {
            w: w.place(&emb_f32)?,
        };
        let scan_dtype = if w.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let mut layers = Vec::new();
        for i in 0..cfg.num_layers {
            let p = format!("{layers_name}.{i}");
            let m = format!("{p}.mixer");
            let conv_w = w.get(&format!("{m}.conv1d.weight"), &[di, 1, k])?;
            let conv_taps = (0..k)
                .map(|j| Ok(conv_w.narrow(2, j, 1)?.reshape(di)?.contiguous()?))
                .collect::<Result<Vec<_>>>()?;
            let conv_bias = if cfg.use_conv_bias {
                Some(w.get(&format!("{m}.conv1d.bias"), &[di])?)
            } else {
                None
            };
            let a = if gguf {
                w.get_f32(&format!("{m}.A"), &[di, n])?
            } else {
                w.get_f32(&format!("{m}.A_log"), &[di, n])?.exp()?.neg()?
            };
            let a = a.to_device(w.device())?.to_dtype(scan_dtype)?;
            let d = w
                .get_f32(&format!("{m}.D"), &[di])?
                .to_device(w.device())?
                .to_dtype(scan_dtype)?;
            let mixer = Mixer {
                in_proj: Linear::load(w, &format!("{m}.in_proj"), h, 2 * di, cfg.use_bias)?,
                conv_taps,
                conv_bias,
                x_proj: Linear::load(
                    w,
                    &format!("{m}.x_proj"),
                    di,
                    cfg.time_step_rank + 2 * n,
                    false,
                )?,
                dt_proj: Linear::load(w, &format!("{m}.dt_proj"), cfg.time_step_rank, di, true)?,
                a,
                d,
                out_proj: Linear::load(w, &format!("{m}.out_proj"), di, h, cfg.use_bias)?,
                act: cfg.act,
                di,
                n,
                rank: cfg.time_step_rank,
                kernels: w.kernels(),
                kernel: k,
            };
            layers.push(Block {
                norm: Norm::rms(
                    w,
                    &format!("{p}.{norm_name}"),
                    h,
                    cfg.layer_norm_epsilon,
                    false,
                )?,
                mixer,
            });
        }
        let norm_f = Norm::rms(w, norm_f_name, h, cfg.layer_norm_epsilon, false)?;
        let tied = cfg.tie_word_embeddings || !w.contains("lm_head.weight");
        let lm_head = if tied {
            Linear::from_weight(embed.w.clone(), w.kernels())
        } else {
            Linear::load(w, "lm_head", h, cfg.vocab_size, false)?
        };
        let num_parameters = embed.w.elem_count()
            + layers
                .iter()
                .map(|l| l.norm.num_params() + l.mixer.num_params())
                .sum::<usize>()
            + norm_f.num_params()
            + if tied { 0 } else { lm_head.num_params() };
        let info = ModelInfo {
            architecture: "mamba".into(),
            num_layers: cfg.num_layers,
            hidden_size: h,
            input_size: h,
            num_heads: 0,
            num_kv_heads: 0,
            vocab_size: cfg.vocab_size,
            context_length: MAMBA_CONTEXT_LENGTH,
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
            norm_f,
            lm_head,
            residual_in_fp32: cfg.residual_in_fp32,
            info,
            device: w.device().clone(),
            dtype: w.dtype(),
        })
    }

    fn run(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        mut state: Option<&mut DecodeState>,
    ) -> Result<Tensor> {
        let res_dtype = if self.residual_in_fp32 && self.dtype != DType::F64 {
            DType::F32
        } else {
            self.dtype
        };
        let mask = match mask {
            Some(m) => Some(m.to_dtype(self.dtype)?.unsqueeze(2)?),
            None => None,
        };
        let mut res = x.to_dtype(res_dtype)?;
        for (i, l) in self.layers.iter().enumerate() {
            let st = state.as_deref_mut().map(|s| &mut s.layers[i]);
            let hdn = l.norm.forward(&res.to_dtype(self.dtype)?)?;
            let m = l.mixer.forward(&hdn, mask.as_ref(), st)?;
            res = (res + m.to_dtype(res_dtype)?)?;
        }
        let x = self.norm_f.forward(&res.to_dtype(self.dtype)?)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }
}

impl CausalLm for Mamba {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed.forward(ids)
    }

    fn forward(&self, embeds: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        expect_width(embeds, self.info.input_size)?;
        self.run(embeds, mask, None)
    }

    fn forward_step(&self, embeds: &Tensor, state: &mut DecodeState) -> Result<Tensor> {
        expect_width(embeds, self.info.input_size)?;
        let t = embeds.dim(1)?;
        let out = self.run(embeds, None, Some(state))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Result<MambaConfig> {
        let mut v = serde_json::json!({
            "model_type": "mamba", "hidden_size": 40, "num_hidden_layers": 2, "vocab_size": 100
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        MambaConfig::from_json(&Json::new(&v, std::path::Path::new("config.json")))
    }

    #[test]
    fn config_defaults_and_auto_rank() {
        let c = config(serde_json::json!({"time_step_rank": "auto"})).unwrap();
        assert_eq!(c.time_step_rank, 3);
        assert_eq!(c.intermediate_size, 80);
        assert_eq!((c.state_size, c.conv_kernel), (16, 4));
        assert!(c.tie_word_embeddings && c.use_conv_bias && !c.use_bias);
        let c = config(serde_json::json!({"expand": 3, "time_step_rank": 7})).unwrap();
        assert_eq!((c.intermediate_size, c.time_step_rank), (120, 7));
        let e = config(serde_json::json!({"time_step_rank": "big"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("time_step_rank"), "{e}");
        let e = config(serde_json::json!({"state_size": 0}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("state_size"), "{e}");
    }
}
