//! The architectures, one file each.

pub mod gemma3;
pub mod gpt2;
pub mod gpt_neox;
pub mod llama;
pub mod mamba;
pub mod olmo;
pub mod opt;
