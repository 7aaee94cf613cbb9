//! Cramming on the small GPT-NeoX, GPT-2 and OPT fixtures: a short text goes
//! into one trainable vector to accuracy 1.0 and decodes back exactly.
//!
//! The random 64-wide fixture models hold only a few tokens per vector, and
//! how many depends on the model and the text (with 1 vector and 5 tokens
//! some pairs stall at accuracy 0.4-0.8 where 2 vectors converge); the pairs
//! below converge within a few hundred steps.

use std::path::PathBuf;

use cram::engine::{CramConfig, Engine, OptimizerConfig, StopReason};
use cram::model::{load, LoadOptions, LoadedModel};

fn fixture(name: &str) -> LoadedModel {
    let dir = PathBuf::from(cram_testkit::REPO_ROOT)
        .join("tests/fixtures")
        .join(name);
    load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

const TEXTS: [&str; 3] = [
    "The keeper of the lighthouse walked along the rocky shore every evening.",
    "In the morning the village woke to the smell of bread and wet grass.",
    "Computers store numbers as bits.",
];

/// Crams the first `n` tokens of `text` into `n_mem` vectors.
fn crams(name: &str, text: &str, n: usize, n_mem: usize) {
    let m = fixture(name);
    let mut t = m.tokenizer.encode(text, true).unwrap();
    t.truncate(n);
    let cfg = CramConfig {
        n_mem,
        optimizer: OptimizerConfig {
            lr: 0.1,
            beta2: 0.99,
            max_steps: 600,
            ..OptimizerConfig::default()
        },
        ..CramConfig::default()
    };
    let r = &Engine::new(&m, cfg)
        .unwrap()
        .run(std::slice::from_ref(&t), 0, |_| {})
        .unwrap()[0];
    let info = m.model.info();
    println!(
        "[{name}] {n} tokens into {n_mem} vector(s) of {} numbers (hidden {}): {} steps, \
         accuracy {}, exact decode {}",
        info.input_size, info.hidden_size, r.steps, r.best_accuracy, r.exact
    );
    assert_eq!(r.vectors.len(), n_mem * info.input_size);
    assert_eq!(r.stop_reason, StopReason::Converged);
    assert_eq!(r.best_accuracy, 1.0);
    assert!(r.exact, "decode-back differs at {:?}", r.first_mismatch);
    assert_eq!(r.decoded_ids, t);
}

#[test]
fn gpt_neox_crams_a_short_text_into_one_vector() {
    crams("pythia_serial", TEXTS[1], 5, 1);
}

#[test]
fn gpt2_crams_a_short_text_into_one_vector() {
    crams("gpt2_gelu_new", TEXTS[0], 4, 1);
}

#[test]
fn opt_crams_a_short_text_into_one_vector() {
    crams("opt_postln", TEXTS[0], 5, 1);
}

/// OPT with `word_embed_proj_dim` 32 < `hidden_size` 64: the vectors live
/// in the 32-wide word-embedding space, before `project_in`.
#[test]
fn opt_with_projection_crams_into_narrow_vectors() {
    crams("opt_proj", TEXTS[2], 5, 2);
}

/// In bf16 the three architectures run and stay close to f32: the mean
/// absolute logit difference is a small fraction of the logits' spread.
#[test]
fn bf16_logits_track_f32() {
    use candle_core::{DType, Tensor};
    for name in ["pythia_parallel", "gpt2_gelu_new", "opt_proj"] {
        let dir = PathBuf::from(cram_testkit::REPO_ROOT)
            .join("tests/fixtures")
            .join(name);
        let opts = LoadOptions {
            dtype: DType::BF16,
            ..LoadOptions::default()
        };
        let m16 = load(dir.to_str().unwrap(), &opts).unwrap();
        let m32 = fixture(name);
        let ids = m32.tokenizer.encode(TEXTS[0], true).unwrap();
        let logits = |m: &LoadedModel| {
            let t = Tensor::new(ids.as_slice(), m.model.device())
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let e = m.model.embed(&t).unwrap();
            m.model.forward(&e, None).unwrap()
        };
        let (a, b) = (logits(&m16), logits(&m32));
        assert_eq!(a.dtype(), DType::F32, "logits come back in f32");
        let mean = |t: Tensor| t.mean_all().unwrap().to_scalar::<f32>().unwrap();
        let diff = mean((&a - &b).unwrap().abs().unwrap());
        let spread = mean(
            (&b - b.mean_all().unwrap().to_scalar::<f32>().unwrap() as f64)
                .unwrap()
                .abs()
                .unwrap(),
        );
        println!("[{name}] bf16 vs f32: mean |diff| {diff:.3e}, mean |logit - mean| {spread:.3}");
        assert!(diff > 0.0, "bf16 must actually compute in bf16");
        assert!(
            diff < 0.05 * spread,
            "bf16 far from f32: {diff} vs spread {spread}"
        );
    }
}
