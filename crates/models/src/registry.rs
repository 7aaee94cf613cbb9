//! The architectures cram implements: the one table a new architecture is
//! added to ([`ARCHITECTURES`]). Each architecture's file owns its config
//! reading, its defaults and its GGUF tensor names, and exports an
//! [`Architecture`] value that says how to load it.

use crate::arch::{gemma3, gpt2, gpt_neox, llama, mamba, olmo, opt};
use crate::error::Result;
use crate::hparams::{Gguf, Json};
use crate::weights::Weights;
use crate::CausalLm;

/// How to load one architecture.
pub struct Architecture {
    /// `model_type` in a Hugging Face `config.json`.
    pub model_type: &'static str,
    /// Builds the model from its `config.json` and safetensors weights.
    pub from_config: fn(&Json, &Weights) -> Result<Box<dyn CausalLm>>,
    /// The llama.cpp GGUF side, where llama.cpp has the architecture.
    pub gguf: Option<GgufArchitecture>,
}

/// How to load one architecture from a llama.cpp GGUF file.
pub struct GgufArchitecture {
    /// `general.architecture` in the GGUF metadata.
    pub name: &'static str,
    /// The Hugging Face name of each GGUF tensor (`None`: not used).
    pub tensor_name: fn(&str) -> Option<String>,
    /// Builds the model from the GGUF metadata and its weights (named by
    /// `tensor_name`).
    pub from_metadata: fn(&Gguf, &Weights) -> Result<Box<dyn CausalLm>>,
}

/// Every architecture cram implements.
pub const ARCHITECTURES: &[&Architecture] = &[
    &llama::ARCHITECTURE,
    &mamba::ARCHITECTURE,
    &gpt_neox::ARCHITECTURE,
    &gpt2::ARCHITECTURE,
    &opt::ARCHITECTURE,
    &olmo::ARCHITECTURE,
    &gemma3::ARCHITECTURE,
];

/// The `model_type` names of [`ARCHITECTURES`], in order.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &{
    let mut names = [""; ARCHITECTURES.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = ARCHITECTURES[i].model_type;
        i += 1;
    }
    names
};

/// The architecture of a `config.json`'s `model_type`.
pub fn by_model_type(model_type: &str) -> Option<&'static Architecture> {
    ARCHITECTURES
        .iter()
        .copied()
        .find(|a| a.model_type == model_type)
}

/// The architecture (and its GGUF side) of a GGUF `general.architecture`.
pub fn by_gguf_name(name: &str) -> Option<(&'static Architecture, &'static GgufArchitecture)> {
    ARCHITECTURES
        .iter()
        .find_map(|a| a.gguf.as_ref().filter(|g| g.name == name).map(|g| (*a, g)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut hf: Vec<_> = SUPPORTED_ARCHITECTURES.to_vec();
        hf.sort();
        hf.dedup();
        assert_eq!(hf.len(), ARCHITECTURES.len());
        let mut gguf: Vec<_> = ARCHITECTURES
            .iter()
            .filter_map(|a| a.gguf.as_ref().map(|g| g.name))
            .collect();
        let n = gguf.len();
        gguf.sort();
        gguf.dedup();
        assert_eq!(gguf.len(), n);
        assert!(by_gguf_name("gptneox").is_some() && by_model_type("gpt_neox").is_some());
        assert!(by_model_type("bert").is_none());
    }

    #[test]
    fn gguf_names_map_to_hf_names() {
        assert_eq!(
            llama::hf_name_for_gguf("blk.3.attn_q.weight").as_deref(),
            Some("model.layers.3.self_attn.q_proj.weight")
        );
        assert_eq!(
            llama::hf_name_for_gguf("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(
            gemma3::hf_name_for_gguf("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.pre_feedforward_layernorm.weight")
        );
        assert_eq!(
            llama::hf_name_for_gguf("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(llama::hf_name_for_gguf("blk.x.attn_q.weight"), None);
        assert_eq!(
            mamba::hf_name_for_gguf("blk.1.ssm_a").as_deref(),
            Some("model.layers.1.mixer.A")
        );
    }
}
