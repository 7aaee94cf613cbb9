//! Mamba against the `transformers` reference fixtures (`tests/fixtures/mamba_*`,
//! written by `scripts/make_fixtures_mamba.py`): token ids, logits, a padded
//! batch, greedy generation, the gradient with respect to a prepended vector
//! and the model's sizes; the same model read from GGUF; padding that leaves
//! each text's logits as when run alone; cached decoding; cramming a text
//! into one vector and decoding it back. Run with `--nocapture` for figures.

// Not every shared helper is used here.
#[allow(dead_code)]
use cram_testkit as common;

use candle_core::Tensor;
use common::reference::*;
use cram::engine::{CramConfig, Engine, LossConvention, OptimizerConfig, StopReason};
use cram::model::LoadedModel;

const FIXTURES: [&str; 2] = ["mamba_tied", "mamba_untied_bias"];

fn run_all(name: &str, m: &LoadedModel, r: &Reference) {
    let mut c = Checks {
        model: name.to_string(),
        ..Default::default()
    };
    check_outputs(&mut c, name, m, r, false);
    let info = m.model.info();
    let cfg = &r.json["config"];
    let field = |k: &str| cfg[k].as_u64().unwrap_or_else(|| panic!("config.{k}")) as usize;
    for (what, got, want) in [
        ("hidden_size", info.hidden_size, field("hidden_size")),
        ("num_layers", info.num_layers, field("num_hidden_layers")),
        ("vocab_size", info.vocab_size, field("vocab_size")),
        (
            "num_parameters",
            info.num_parameters,
            field("num_parameters"),
        ),
        ("num_heads", info.num_heads, 0),
        ("num_kv_heads", info.num_kv_heads, 0),
    ] {
        c.check(got == want, || {
            format!("info.{what} = {got}, config says {want}")
        });
    }
    c.check(info.architecture == "mamba", || {
        format!("architecture {}", info.architecture)
    });
    let want = num(&r.json["grad"]["emb_std"]);
    let rel = (info.embedding_std - want).abs() / want;
    println!(
        "[{name}] embedding std {:.7} (reference {want:.7}, relative diff {rel:.2e})",
        info.embedding_std
    );
    c.check(rel <= EMB_STD_REL_TOL, || {
        format!("embedding_std {} vs emb_std {want}", info.embedding_std)
    });
    c.finish();
}

#[test]
fn mamba_tied_matches_transformers() {
    let m = load(&fixture_dir("mamba_tied"));
    run_all("mamba_tied", &m, &Reference::load("mamba_tied"));
}

#[test]
fn mamba_untied_bias_matches_transformers() {
    let m = load(&fixture_dir("mamba_untied_bias"));
    run_all(
        "mamba_untied_bias",
        &m,
        &Reference::load("mamba_untied_bias"),
    );
}

/// The GGUF written from `mamba_tied`'s weights (llama.cpp's layout: `ssm_a`
/// holds `-exp(A_log)`, the convolution is `[inner, kernel]`, no `output`)
/// gives the folder's logits and passes the same reference checks.
#[test]
fn mamba_gguf_matches_folder() {
    let dir = fixture_dir("mamba_tied");
    let folder = load(&dir);
    let gguf = load(&dir.join("model.gguf"));
    let r = Reference::load("mamba_tied");
    let ids = ids(&r.json["logits"][0]["ids"]);
    let a = logits_for(folder.model.as_ref(), &ids);
    let b = logits_for(gguf.model.as_ref(), &ids);
    let diff = max_abs_diff(&a, &b);
    println!(
        "[mamba_tied GGUF] logits_0 vs folder: max |diff| = {diff:.3e}; weights {}",
        gguf.model.info().weights_dtype
    );
    assert!(diff <= 1e-5, "GGUF and folder logits differ by {diff}");
    assert_eq!(
        gguf.model.info().num_parameters,
        folder.model.info().num_parameters
    );
    run_all("mamba_tied GGUF", &gguf, &r);
}

/// Right padding does not change any text's logits at its real positions
/// (exactly, up to float noise), whatever is in the padding.
#[test]
fn padded_batch_equals_each_text_alone() {
    for name in FIXTURES {
        let m = load(&fixture_dir(name));
        let model = m.model.as_ref();
        let texts = [
            "The keeper climbed the narrow stairs to light the lamp.",
            "Deer come to drink.",
            "A good programmer learns to think about the data first, and then the steps.",
        ];
        let seqs: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| m.tokenizer.encode(t, true).unwrap())
            .collect();
        let t = seqs.iter().map(Vec::len).max().unwrap();
        let b = seqs.len();
        // Padding with arbitrary ids, not one fixed token.
        let mut flat = Vec::new();
        let mut mask = Vec::new();
        for s in &seqs {
            for p in 0..t {
                flat.push(s.get(p).copied().unwrap_or((p * 37 % 400) as u32));
                mask.push(u32::from(p < s.len()));
            }
        }
        let dev = model.device();
        let ids_t = Tensor::from_vec(flat, (b, t), dev).unwrap();
        let mask_t = Tensor::from_vec(mask, (b, t), dev).unwrap();
        let logits = model
            .forward(&model.embed(&ids_t).unwrap(), Some(&mask_t))
            .unwrap();
        for (i, s) in seqs.iter().enumerate() {
            let alone = logits_for(model, s);
            let batched = logits.get(i).unwrap().narrow(0, 0, s.len()).unwrap();
            let diff = max_abs_diff(&batched, &alone);
            println!(
                "[{name}] text {i} (T = {} of {t}): batched vs alone max |diff| = {diff:.3e}",
                s.len()
            );
            assert!(diff <= 1e-4, "{name}: text {i} differs by {diff}");
        }
    }
}

/// Decoding with the recurrent state, one position at a time and in
/// chunks, gives the full forward's logits.
#[test]
fn stepwise_decoding_matches_full_forward() {
    for name in FIXTURES {
        let m = load(&fixture_dir(name));
        let model = m.model.as_ref();
        let ids = m
            .tokenizer
            .encode(
                "The river runs quietly through the forest, past tall trees.",
                true,
            )
            .unwrap();
        let full = logits_for(model, &ids);
        let e = model
            .embed(
                &Tensor::new(ids.as_slice(), model.device())
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
            )
            .unwrap();
        for chunk in [1, 3, 5] {
            let mut state = model.new_state();
            let mut parts = Vec::new();
            let mut s = 0;
            while s < ids.len() {
                let l = chunk.min(ids.len() - s);
                parts.push(
                    model
                        .forward_step(&e.narrow(1, s, l).unwrap(), &mut state)
                        .unwrap(),
                );
                s += l;
            }
            assert_eq!(state.pos, ids.len());
            let stepped = Tensor::cat(&parts, 1).unwrap().squeeze(0).unwrap();
            let diff = max_abs_diff(&stepped, &full);
            println!("[{name}] chunks of {chunk}: stepwise vs full max |diff| = {diff:.3e}");
            assert!(diff <= 1e-4, "{name}: chunks of {chunk} differ by {diff}");
        }
    }
}

/// A short text crammed into one vector of the small Mamba decodes back
/// exactly. (The random 64-wide Mamba forgets fast: one vector holds about
/// 4 tokens; 5 or 6 stall at accuracy 0.8 or below.)
#[test]
fn mamba_crams_a_short_text_into_one_vector() {
    let m = load(&fixture_dir("mamba_tied"));
    let mut t = m
        .tokenizer
        .encode("The keeper of the lighthouse walked along the shore.", true)
        .unwrap();
    t.truncate(4);
    let cfg = CramConfig {
        loss: LossConvention::Full,
        n_mem: 1,
        optimizer: OptimizerConfig {
            lr: 0.1,
            beta2: 0.99,
            max_steps: 400,
            ..OptimizerConfig::default()
        },
        ..CramConfig::default()
    };
    let r = &Engine::new(&m, cfg)
        .unwrap()
        .run(std::slice::from_ref(&t), 0, |_| {})
        .unwrap()[0];
    println!(
        "[mamba_tied] cram {} tokens into 1 vector: {} steps, accuracy {}, stop {:?}",
        t.len(),
        r.steps,
        r.best_accuracy,
        r.stop_reason
    );
    assert_eq!(r.stop_reason, StopReason::Converged);
    assert_eq!(r.best_accuracy, 1.0);
    assert!(r.exact, "decode-back differs at {:?}", r.first_mismatch);
    assert_eq!(r.decoded_ids, t);
}

/// Input embeddings of the wrong width are refused.
#[test]
fn wrong_width_is_an_error() {
    let m = load(&fixture_dir("mamba_untied_bias"));
    let x = Tensor::zeros((1, 3, 65), candle_core::DType::F32, m.model.device()).unwrap();
    let e = m.model.forward(&x, None).unwrap_err().to_string();
    assert!(e.contains("65") && e.contains("64"), "{e}");
}

/// Compute in bf16 (the residual stream and the scan stay in f32) runs and
/// stays close to f32.
#[test]
fn bf16_compute_is_close_to_f32() {
    let dir = fixture_dir("mamba_untied_bias");
    let f32_model = load(&dir);
    let opts = cram::model::LoadOptions {
        dtype: candle_core::DType::BF16,
        ..Default::default()
    };
    let bf16 = cram::model::load(dir.to_str().unwrap(), &opts).unwrap();
    let r = Reference::load("mamba_untied_bias");
    let ids = ids(&r.json["logits"][0]["ids"]);
    let a = logits_for(f32_model.model.as_ref(), &ids);
    let b = logits_for(bf16.model.as_ref(), &ids);
    let diff = max_abs_diff(&a, &b);
    let scale = a
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    println!(
        "[mamba_untied_bias] bf16 vs f32 logits: max |diff| = {diff:.3e} (max |logit| {scale:.2})"
    );
    // bf16 keeps about 3 significant digits; two layers of weights drawn
    // with std 0.2 compound that to a few percent of the logits' range.
    assert!(diff < 0.1 * scale, "bf16 logits differ by {diff}");
}

/// Older checkpoints call the embedding matrix `backbone.embedding`; they
/// load to the same model.
#[test]
fn old_embedding_name_loads() {
    let src = fixture_dir("mamba_tied");
    let tmp = tempfile::TempDir::new().unwrap();
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let e = tensors.remove("backbone.embeddings.weight").unwrap();
    tensors.insert("backbone.embedding.weight".into(), e);
    candle_core::safetensors::save(&tensors, tmp.path().join("model.safetensors")).unwrap();
    let old = load(tmp.path());
    let new = load(&src);
    let ids = [0u32, 311, 383, 302, 81];
    let diff = max_abs_diff(
        &logits_for(old.model.as_ref(), &ids),
        &logits_for(new.model.as_ref(), &ids),
    );
    assert_eq!(diff, 0.0);
}
