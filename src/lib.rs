//! cram: measure and exploit how much text fits into the input embeddings of
//! a causal language model.
//!
//! The pipeline runs one way: a model is resolved ([`source`]) and loaded
//! ([`model`]), texts are tokenised ([`tokenizer`]), batches of trainable
//! `[mem]` vectors are optimised against the frozen model, and the results are
//! stored and reported.

pub mod alloc;
pub mod blas;
pub mod datasets;
pub mod engine;
pub mod error;
pub mod export;
pub mod fetch;
pub mod fused;
pub mod generate;
pub mod memfile;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod report;
pub mod sentences;
pub mod source;
pub mod store;
pub mod sweep;
pub mod texts;
pub mod tokenizer;
pub mod weights;

pub use error::{CramError, Result};
