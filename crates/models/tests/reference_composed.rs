//! The composed path, the one every non-CPU device runs (candle ops only: no
//! fused kernel, no BLAS, no custom scan), against the same `transformers`
//! references and tolerances as the default CPU path: token ids, logits, a
//! right-padded batch, greedy generation with a KV cache, and the gradient
//! with respect to a prepended input vector, for every architecture.

use cram_testkit as common;

use common::reference::{check_outputs, fixture_dir, load_with, run_all, Checks, Reference};
use cram::kernels::Kernels;

/// Every fixture folder, and whether its checks include the tokenizer list
/// and the sizes (Mamba's sizes are checked by its own tests).
const FIXTURES: &[(&str, bool)] = &[
    ("llama_gqa_tied", true),
    ("llama_rope3_bias", true),
    ("olmo_plain", true),
    ("olmo_clip", true),
    ("gemma3_plain", true),
    ("gemma3_swa_softcap", true),
    ("pythia_parallel", true),
    ("pythia_serial", true),
    ("gpt2_gelu_new", true),
    ("gpt2_relu_unscaled", true),
    ("opt_proj", true),
    ("opt_postln", true),
    ("mamba_tied", false),
    ("mamba_untied_bias", false),
];

#[test]
fn every_fixture_matches_transformers_on_the_composed_path() {
    for &(name, full) in FIXTURES {
        let m = load_with(&fixture_dir(name), Kernels::composed());
        let k = m.model.info().kernels.record();
        assert!(!k.fused && k.blas == "off", "{name}: {k}");
        let r = Reference::load(name);
        let label = format!("{name} (composed)");
        if full {
            run_all(&label, &m, &r, true);
        } else {
            let mut c = Checks {
                model: label.clone(),
                ..Default::default()
            };
            check_outputs(&mut c, &label, &m, &r, false);
            c.finish();
        }
    }
}

#[test]
fn gguf_models_match_transformers_on_the_composed_path() {
    let ggufs = [
        (common::smollm2_gguf(), "smollm2", false),
        (common::gemma3_gguf(), "gemma3_270m", true),
        (
            fixture_dir("gguf").join("gpt2_gelu_new.gguf"),
            "gpt2_gelu_new",
            true,
        ),
        (
            fixture_dir("olmo_clip_gguf").join("olmo_clip.gguf"),
            "olmo_clip",
            true,
        ),
    ];
    for (path, reference, tokenizer_list) in ggufs {
        let m = load_with(&path, Kernels::composed());
        run_all(
            &format!("{} (composed)", path.display()),
            &m,
            &Reference::load(reference),
            tokenizer_list,
        );
    }
}
