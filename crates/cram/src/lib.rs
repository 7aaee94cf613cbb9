//! cram: measure and exploit how much text fits into the input embeddings of
//! a causal language model.
//!
//! The pipeline runs one way: a text source ([`datasets`], [`texts`]) gives
//! texts, a model ([`model`], the `cram-models` crate) turns them into tokens,
//! the [`engine`] optimises batches of trainable `[mem]` vectors against the
//! frozen model, and the results go to `.safetensors` files ([`memfile`]) or,
//! for a grid of runs ([`sweep`]), to the results store ([`store`]), from
//! which the `cram-report` crate draws the paper's tables and figures.

#![warn(missing_docs)]

/// Implements `Serialize` as the type's `Display` string and `Deserialize`
/// through its `FromStr` (settings written as `--flag` values: `auto`,
/// `token:0`).
macro_rules! serde_as_string {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

pub mod ablations;
pub mod capacity;
pub mod datasets;
pub mod engine;
pub mod layout;
pub mod lowdim;
pub mod memfile;
pub mod metrics;
pub mod nonfinite;
pub mod protocol;
pub mod sentences;
pub mod store;
pub mod sweep;
pub mod texts;

pub use cram_kernels as kernels;
pub use cram_kernels::{alloc, blas, fused, ops};
pub use cram_models as model;
pub use cram_models::{error, fetch, generate, source, tokenizer, weights};
pub use cram_models::{CramError, Result};
