//! cram against the `transformers` reference fixtures (`tests/fixtures/*`,
//! written by `scripts/make_fixtures.py`): token ids, logits, a padded batch,
//! greedy generation, the gradient with respect to a prepended input vector,
//! and the model's sizes.
//!
//! Each model is loaded once, by the one test that checks it; the test runs
//! every check, prints the figures, and fails with the list of the checks
//! that did not pass. Run with `--nocapture` to see the figures.

use cram_testkit as common;

use candle_core::{DType, Device};
use common::reference::*;
use serde_json::Value as Json;

const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[test]
fn smollm2_matches_transformers() {
    let path = common::smollm2_gguf();
    let r = Reference::load("smollm2");
    assert_eq!(r.json["gguf_file"].as_str(), Some(SMOLLM2_FILE));
    let m = load(&path);
    run_all("smollm2", &m, &r, false);
}

#[test]
fn llama_gqa_tied_matches_transformers() {
    let dir = fixture_dir("llama_gqa_tied");
    let m = load(&dir);
    run_all(
        "llama_gqa_tied",
        &m,
        &Reference::load("llama_gqa_tied"),
        true,
    );
}

#[test]
fn llama_rope3_bias_matches_transformers() {
    let dir = fixture_dir("llama_rope3_bias");
    let m = load(&dir);
    run_all(
        "llama_rope3_bias",
        &m,
        &Reference::load("llama_rope3_bias"),
        true,
    );
}

/// The llama3 rope scaling of `llama_rope3_bias` is read from its config and
/// matters: the same weights without it miss the reference logits.
#[test]
fn llama3_rope_scaling_is_active() {
    use cram::model::hparams::Json as HpJson;
    use cram::model::llama::{Llama, LlamaConfig};
    use cram::weights::Weights;

    let dir = fixture_dir("llama_rope3_bias");
    let config_path = dir.join("config.json");
    let config: Json =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let cfg = LlamaConfig::from_json(&HpJson::new(&config, &config_path)).unwrap();
    let s = cfg
        .llama3_scaling
        .expect("llama3 rope scaling is read from config.json");
    assert_eq!(s.factor, 8.0);
    assert_eq!(s.low_freq_factor, 1.0);
    assert_eq!(s.high_freq_factor, 4.0);
    assert_eq!(s.original_max_position_embeddings, 64.0);
    assert_eq!(cfg.rope_theta, 500000.0);

    let r = Reference::load("llama_rope3_bias");
    let ids = ids(&r.json["logits"][1]["ids"]);
    let want = r.tensor("logits_1");
    let w = Weights::from_safetensors(&[dir.join("model.safetensors")], &Device::Cpu, DType::F32)
        .unwrap();
    let with = Llama::load(&cfg, &w).unwrap();
    let diff_with = max_abs_diff(&logits_for(&with, &ids), want);
    let mut plain = cfg.clone();
    plain.llama3_scaling = None;
    let without = Llama::load(&plain, &w).unwrap();
    let diff_without = max_abs_diff(&logits_for(&without, &ids), want);
    println!(
        "[llama_rope3_bias] logits_1 max |diff|: {diff_with:.3e} with llama3 scaling, \
         {diff_without:.3e} without"
    );
    assert!(diff_with <= LOGITS_TOL, "with scaling: {diff_with}");
    assert!(
        diff_without > 100.0 * LOGITS_TOL,
        "dropping the scaling should change the logits, but max |diff| is only {diff_without}"
    );
}
