//! GPT-NeoX (Pythia), GPT-2 and OPT against the `transformers` reference
//! fixtures written by `scripts/make_fixtures_ln.py`, from their Hugging Face
//! folders and (GPT-2, GPT-NeoX) from GGUF files with llama.cpp's tensor
//! names: token ids, logits, a right-padded batch, greedy generation, the
//! gradient with respect to a prepended input vector, and the model's sizes
//! (the checks are in `common/reference.rs`). Run with `--nocapture` to see
//! the figures.

use cram_testkit as common;

use std::path::PathBuf;

use candle_core::{DType, Device};
use common::reference::{fixture_dir, ids, load, logits_for, max_abs_diff, Reference, LOGITS_TOL};
use cram::model::hparams::Json as HpJson;
use cram::model::LoadedModel;
use cram::weights::Weights;
use serde_json::Value as Json;

/// Every reference check of `m` against fixture `r`.
fn run_all(name: &str, m: &LoadedModel, r: &Reference) {
    common::reference::run_all(name, m, r, true);
}

fn check_folder(name: &str) {
    let m = load(&fixture_dir(name));
    run_all(name, &m, &Reference::load(name));
}

fn gguf_path(name: &str) -> PathBuf {
    fixture_dir("gguf").join(format!("{name}.gguf"))
}

/// The GGUF model (weights, hyper-parameters and tokenizer all from the
/// file) passes every check of the folder model, and its logits equal the
/// folder model's.
fn check_gguf(name: &str) {
    let g = load(&gguf_path(name));
    let f = load(&fixture_dir(name));
    let r = Reference::load(name);
    let ids = ids(&r.json["logits"][1]["ids"]);
    let d = max_abs_diff(
        &logits_for(g.model.as_ref(), &ids),
        &logits_for(f.model.as_ref(), &ids),
    );
    println!(
        "[{name}.gguf] logits_1 max |GGUF - safetensors| = {d:.3e} (weights {})",
        g.model.info().weights_dtype
    );
    assert!(d <= 1e-5, "GGUF and folder logits differ by {d}");
    run_all(&format!("{name}.gguf"), &g, &r);
}

#[test]
fn pythia_parallel_matches_transformers() {
    check_folder("pythia_parallel");
}

#[test]
fn pythia_serial_matches_transformers() {
    check_folder("pythia_serial");
}

#[test]
fn gpt2_gelu_new_matches_transformers() {
    check_folder("gpt2_gelu_new");
}

#[test]
fn gpt2_relu_unscaled_matches_transformers() {
    check_folder("gpt2_relu_unscaled");
}

#[test]
fn opt_proj_matches_transformers() {
    check_folder("opt_proj");
}

#[test]
fn opt_postln_matches_transformers() {
    check_folder("opt_postln");
}

#[test]
fn gpt2_gguf_matches_transformers() {
    check_gguf("gpt2_gelu_new");
}

#[test]
fn pythia_gguf_matches_transformers() {
    check_gguf("pythia_serial");
}

/// The switches the fixtures cover are read and matter: flipping
/// `use_parallel_residual` or dropping partial rotary moves the logits far
/// from the reference.
#[test]
fn neox_switches_are_active() {
    use cram::model::gpt_neox::{GptNeoX, GptNeoXConfig};
    for name in ["pythia_parallel", "pythia_serial"] {
        let dir = fixture_dir(name);
        let path = dir.join("config.json");
        let config: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let cfg = GptNeoXConfig::from_json(&HpJson::new(&config, &path)).unwrap();
        assert_eq!(cfg.rotary_dim, 4, "{name}: rotary_pct 0.25 of 16");
        assert_eq!(cfg.use_parallel_residual, name == "pythia_parallel");
        let r = Reference::load(name);
        let ids = ids(&r.json["logits"][0]["ids"]);
        let want = r.tensor("logits_0");
        let w =
            Weights::from_safetensors(&[dir.join("model.safetensors")], &Device::Cpu, DType::F32)
                .unwrap();
        let diff = |c: &GptNeoXConfig| {
            max_abs_diff(&logits_for(&GptNeoX::load(c, &w).unwrap(), &ids), want)
        };
        let as_is = diff(&cfg);
        let mut flipped = cfg.clone();
        flipped.use_parallel_residual = !cfg.use_parallel_residual;
        let flipped = diff(&flipped);
        let mut full = cfg.clone();
        full.rotary_dim = 16;
        let full = diff(&full);
        println!(
            "[{name}] logits_0 max |diff|: {as_is:.3e} as configured, {flipped:.3e} with \
             use_parallel_residual flipped, {full:.3e} with full rotary"
        );
        assert!(as_is <= LOGITS_TOL);
        assert!(flipped > 100.0 * LOGITS_TOL && full > 100.0 * LOGITS_TOL);
    }
}

/// GGUF metadata without a key the architecture needs is an error naming
/// the key.
#[test]
fn gguf_metadata_errors_name_the_key() {
    use cram::model::gpt2::Gpt2Config;
    use cram::model::gpt_neox::GptNeoXConfig;
    use cram::model::hparams::Gguf;
    for (name, key) in [
        ("pythia_serial", "gptneox.attention.head_count"),
        ("pythia_serial", "gptneox.feed_forward_length"),
        ("gpt2_gelu_new", "gpt2.context_length"),
        ("gpt2_gelu_new", "gpt2.block_count"),
    ] {
        let path = gguf_path(name);
        let mut content = cram::model::read_gguf(&path).unwrap();
        assert!(content.metadata.remove(key).is_some(), "{name} has {key}");
        let g = Gguf::new(&content, &path);
        let e = if name.starts_with("gpt2") {
            Gpt2Config::from_gguf(&g).map(|_| ())
        } else {
            GptNeoXConfig::from_gguf(&g).map(|_| ())
        }
        .unwrap_err()
        .to_string();
        println!("{e}");
        assert!(e.contains(key) && e.contains("missing"), "{e}");
    }
}

/// Checkpoints saved from the base classes (`GPT2Model`, `OPTModel`) name
/// their tensors without the `transformer.` / `model.` prefix; they load to
/// the same model.
#[test]
fn tensors_without_the_base_model_prefix_load() {
    use cram::model::gpt2::{Gpt2, Gpt2Config};
    use cram::model::opt::{Opt, OptConfig};
    use cram::model::CausalLm;
    let tmp = tempfile::TempDir::new().unwrap();
    for (name, prefix) in [("gpt2_gelu_new", "transformer."), ("opt_proj", "model.")] {
        let dir = fixture_dir(name);
        let st = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
        let renamed: std::collections::HashMap<String, candle_core::Tensor> = tensors
            .into_iter()
            .map(|(k, v)| (k.strip_prefix(prefix).unwrap_or(&k).to_string(), v))
            .collect();
        assert!(renamed.keys().all(|k| !k.starts_with(prefix)));
        let bare = tmp.path().join(format!("{name}.safetensors"));
        candle_core::safetensors::save(&renamed, &bare).unwrap();
        let path = dir.join("config.json");
        let config: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let hp = HpJson::new(&config, &path);
        let open = |p: &std::path::Path| {
            Weights::from_safetensors(&[p.to_path_buf()], &Device::Cpu, DType::F32).unwrap()
        };
        let (a, b): (Box<dyn CausalLm>, Box<dyn CausalLm>) = if name == "opt_proj" {
            let cfg = OptConfig::from_json(&hp).unwrap();
            (
                Box::new(Opt::load(&cfg, &open(&st)).unwrap()),
                Box::new(Opt::load(&cfg, &open(&bare)).unwrap()),
            )
        } else {
            let cfg = Gpt2Config::from_json(&hp).unwrap();
            (
                Box::new(Gpt2::load(&cfg, &open(&st)).unwrap()),
                Box::new(Gpt2::load(&cfg, &open(&bare)).unwrap()),
            )
        };
        let ids = [0u32, 5, 17, 42, 7];
        let d = max_abs_diff(&logits_for(a.as_ref(), &ids), &logits_for(b.as_ref(), &ids));
        assert_eq!(d, 0.0, "{name}");
    }
}
