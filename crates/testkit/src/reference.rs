//! The `transformers` reference fixtures (`tests/fixtures/*`, written by
//! `scripts/make_fixtures*.py`) and the checks that every architecture
//! shares: token ids, logits, a padded batch, greedy generation and the
//! gradient with respect to a prepended input vector.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var, D};
use cram::model::{self, CausalLm, LoadOptions, LoadedModel};
use serde_json::Value as Json;

/// Largest allowed absolute difference between our logits and the reference.
pub const LOGITS_TOL: f32 = 1e-3;
/// Largest allowed relative error of the gradient.
pub const GRAD_REL_TOL: f64 = 1e-3;
/// Largest allowed absolute difference of the loss.
pub const LOSS_TOL: f64 = 1e-4;
/// Largest allowed relative difference of the embedding standard deviation.
pub const EMB_STD_REL_TOL: f64 = 1e-4;

/// `tests/fixtures/<name>`.
pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(crate::REPO_ROOT)
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// A model's reference: the JSON and the tensors.
pub struct Reference {
    /// `reference.json`.
    pub json: Json,
    /// `reference.safetensors`.
    pub tensors: HashMap<String, Tensor>,
}

impl Reference {
    /// Reads `tests/fixtures/<name>/reference.{json,safetensors}`.
    pub fn load(name: &str) -> Self {
        let dir = fixture_dir(name);
        let path = dir.join("reference.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let json =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let path = dir.join("reference.safetensors");
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self { json, tensors }
    }

    /// A reference tensor; panics naming it when absent.
    pub fn tensor(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("reference.safetensors has no tensor `{name}`"))
    }
}

/// A JSON array of token ids.
pub fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array of ids, got {v}"))
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

/// A JSON string.
pub fn text(v: &Json) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

/// A JSON number.
pub fn num(v: &Json) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("expected a number, got {v}"))
}

/// Largest absolute difference of two f32 tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Euclidean norm.
pub fn l2(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

/// Collects failed checks so one run reports all of them.
#[derive(Default)]
pub struct Checks {
    /// The model's name, for messages.
    pub model: String,
    /// The failed checks.
    pub failures: Vec<String>,
}

impl Checks {
    /// Records a failure when `ok` is false.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let msg = what();
            println!("[{}] FAILED: {msg}", self.model);
            self.failures.push(msg);
        }
    }

    /// Fails the test listing every failed check.
    pub fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{}: {} check(s) failed:\n{}",
            self.model,
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

/// Loads `spec` on the CPU in float32, the way the command line does.
pub fn load(spec: &Path) -> LoadedModel {
    load_with(spec, cram::kernels::Kernels::default())
}

/// Loads `spec` on the CPU in float32 with the given kernels
/// ([`cram::kernels::Kernels::composed`]: the path a GPU runs).
pub fn load_with(spec: &Path, kernels: cram::kernels::Kernels) -> LoadedModel {
    let spec = spec.to_str().expect("a UTF-8 path");
    let opts = LoadOptions {
        kernels,
        ..LoadOptions::default()
    };
    model::load(spec, &opts).unwrap_or_else(|e| panic!("cannot load {spec}: {e}"))
}

/// Logits `[T, V]` of one unpadded sequence.
pub fn logits_for(m: &dyn CausalLm, ids: &[u32]) -> Tensor {
    let t = Tensor::new(ids, m.device()).unwrap().unsqueeze(0).unwrap();
    let e = m.embed(&t).unwrap();
    m.forward(&e, None).unwrap().squeeze(0).unwrap()
}

/// Our logits restricted to the reference's vocabulary slice.
pub fn slice_like(ours: &Tensor, reference: &Tensor) -> Tensor {
    let v = reference.dim(1).unwrap();
    ours.narrow(1, 0, v).unwrap()
}

/// The checks every architecture shares: token ids (and, when
/// `check_tokenizer_list`, the reference's tokenizer list), logits, a
/// right-padded batch, greedy generation and the gradient with respect to a
/// prepended vector. Prints the figures; failures go to `c`.
pub fn check_outputs(
    c: &mut Checks,
    name: &str,
    m: &LoadedModel,
    r: &Reference,
    check_tokenizer_list: bool,
) {
    let model = m.model.as_ref();
    let tok = &m.tokenizer;
    let j = &r.json;

    // ---- token ids ------------------------------------------------------
    // SmolLM2's full tokenizer list is checked by tests/tokenizer_gguf.rs;
    // the small models' lists are checked here.
    if check_tokenizer_list {
        for e in j["tokenizer"].as_array().expect("tokenizer list") {
            let s = text(&e["text"]);
            let got = tok.encode(s, true).unwrap();
            let want = ids(&e["ids"]);
            c.check(got == want, || {
                format!("tokenizer {s:?}: ids {got:?}, want {want:?}")
            });
            let got = tok.encode(s, false).unwrap();
            let want = ids(&e["ids_no_special"]);
            c.check(got == want, || {
                format!("tokenizer {s:?}: ids_no_special {got:?}, want {want:?}")
            });
        }
    }
    let mut id_cases: Vec<(String, Vec<u32>)> = Vec::new();
    for e in j["logits"].as_array().expect("logits list") {
        id_cases.push((text(&e["text"]).into(), ids(&e["ids"])));
    }
    for e in j["greedy"].as_array().expect("greedy list") {
        id_cases.push((text(&e["prompt"]).into(), ids(&e["prompt_ids"])));
    }
    id_cases.push((text(&j["grad"]["text"]).into(), ids(&j["grad"]["ids"])));
    for (s, ids) in j["batch"]["texts"]
        .as_array()
        .expect("batch texts")
        .iter()
        .zip(j["batch"]["ids"].as_array().expect("batch ids"))
    {
        id_cases.push((text(s).into(), self::ids(ids)));
    }
    for (s, want) in &id_cases {
        let got = tok.encode(s, true).unwrap();
        c.check(&got == want, || {
            format!("ids of {s:?}: {got:?}, want {want:?}")
        });
    }

    // ---- logits -----------------------------------------------------------
    for (i, e) in j["logits"].as_array().unwrap().iter().enumerate() {
        let ids = ids(&e["ids"]);
        let ours = logits_for(model, &ids);
        let want = r.tensor(&format!("logits_{i}"));
        let diff = max_abs_diff(&slice_like(&ours, want), want);
        println!(
            "[{name}] logits_{i}: T = {}, max |diff| = {diff:.3e}",
            ids.len()
        );
        c.check(diff <= LOGITS_TOL, || {
            format!("logits_{i}: max abs difference {diff:e} > {LOGITS_TOL:e}")
        });
        if let Some(am) = r.tensors.get(&format!("argmax_{i}")) {
            let want: Vec<i64> = am.to_vec1().unwrap();
            let got: Vec<i64> = ours
                .argmax(D::Minus1)
                .unwrap()
                .to_dtype(DType::I64)
                .unwrap()
                .to_vec1()
                .unwrap();
            c.check(got == want, || {
                format!("argmax_{i} over the full vocabulary: {got:?}, want {want:?}")
            });
        }
    }

    // ---- one right-padded batch ---------------------------------------------
    {
        let seqs: Vec<Vec<u32>> = j["batch"]["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids)
            .collect();
        let pad = j["batch"]["pad_id"].as_u64().expect("pad_id") as u32;
        let t = seqs.iter().map(Vec::len).max().unwrap();
        let b = seqs.len();
        let mut flat = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        for s in &seqs {
            for p in 0..t {
                flat.push(s.get(p).copied().unwrap_or(pad));
                mask.push(u32::from(p < s.len()));
            }
        }
        let dev = model.device();
        let ids_t = Tensor::from_vec(flat, (b, t), dev).unwrap();
        let mask_t = Tensor::from_vec(mask, (b, t), dev).unwrap();
        let e = model.embed(&ids_t).unwrap();
        let logits = model.forward(&e, Some(&mask_t)).unwrap();
        assert_eq!(logits.dims(), &[b, t, model.info().vocab_size]);
        for (i, s) in seqs.iter().enumerate() {
            let want = r.tensor(&format!("batch_logits_{i}"));
            let ours = logits.get(i).unwrap().narrow(0, 0, s.len()).unwrap();
            let diff = max_abs_diff(&slice_like(&ours, want), want);
            println!(
                "[{name}] batch_logits_{i}: T = {} of {t}, max |diff| = {diff:.3e}",
                s.len()
            );
            c.check(diff <= LOGITS_TOL, || {
                format!("batch_logits_{i}: max abs difference {diff:e} > {LOGITS_TOL:e}")
            });
        }
    }

    // ---- greedy generation --------------------------------------------------
    for e in j["greedy"].as_array().unwrap() {
        let prompt = ids(&e["prompt_ids"]);
        let want = ids(&e["token_ids"]);
        let stopped = e["stopped_at_eos"].as_bool().expect("stopped_at_eos");
        let got = cram::generate::greedy(model, &prompt, 20, tok.eos_ids()).unwrap();
        let p = text(&e["prompt"]);
        println!(
            "[{name}] greedy {p:?}: {} new tokens, {} the reference (stopped at EOS: {stopped})",
            got.len(),
            if got == want {
                "equal to"
            } else {
                "DIFFERENT from"
            }
        );
        c.check(got == want, || {
            format!("greedy {p:?}: {got:?}, want {want:?}")
        });
        // The fixture's own consistency: EOS ends the list exactly when
        // generation stopped early.
        let ends_in_eos = want.last().is_some_and(|x| tok.eos_ids().contains(x));
        c.check(
            ends_in_eos == stopped && (stopped || want.len() == 20),
            || format!("greedy {p:?}: stopped_at_eos = {stopped} but token_ids = {want:?}"),
        );
    }

    // ---- gradient with respect to a prepended vector ---------------------------
    {
        let g = &j["grad"];
        let ids = ids(&g["ids"]);
        let n = ids.len();
        let dev = model.device();
        let h = model.info().input_size;
        let v0 = r.tensor("grad_vector");
        assert_eq!(v0.dims(), &[h]);
        let var = Var::from_tensor(v0).unwrap();
        let ids_t = Tensor::new(ids.as_slice(), dev).unwrap();
        let emb = model.embed(&ids_t.unsqueeze(0).unwrap()).unwrap();
        let x = Tensor::cat(&[&var.as_tensor().reshape((1, 1, h)).unwrap(), &emb], 1).unwrap();
        let logits = model.forward(&x, None).unwrap(); // [1, n + 1, V]
        let logits = logits.squeeze(0).unwrap().narrow(0, 0, n).unwrap();
        let nll = cram::ops::token_nll(&logits, &ids_t).unwrap();
        let loss = nll.mean_all().unwrap();
        let grads = loss.backward().unwrap();
        let grad: Vec<f32> = grads
            .get(var.as_tensor())
            .expect("a gradient for the vector")
            .to_vec1()
            .unwrap();
        let want: Vec<f32> = r.tensor("grad").to_vec1().unwrap();
        let diff: Vec<f32> = grad.iter().zip(&want).map(|(a, b)| a - b).collect();
        let rel = l2(&diff) / l2(&want);
        let loss = loss.to_scalar::<f32>().unwrap() as f64;
        let want_loss = num(&g["loss"]);
        println!(
            "[{name}] grad: loss {loss:.7} (reference {want_loss:.7}, |diff| {:.3e}), \
             gradient relative error {rel:.3e} (|g_ref| = {:.4e})",
            (loss - want_loss).abs(),
            l2(&want)
        );
        c.check(grad.len() == want.len(), || {
            format!("gradient has {} entries, want {}", grad.len(), want.len())
        });
        c.check(rel <= GRAD_REL_TOL, || {
            format!("gradient relative error {rel:e} > {GRAD_REL_TOL:e}")
        });
        c.check((loss - want_loss).abs() <= LOSS_TOL, || {
            format!("loss {loss} vs reference {want_loss}")
        });
    }
}

/// The size and identity checks of a model whose reference `config` holds
/// `transformers`' names (hidden_size, num_hidden_layers,
/// num_attention_heads, num_key_value_heads, vocab_size,
/// max_position_embeddings, num_parameters and, when the input embeddings
/// are narrower than the residual stream, input_size): those, the
/// architecture, the embedding standard deviation and the tokenizer's
/// BOS/EOS.
pub fn check_sizes(c: &mut Checks, name: &str, m: &LoadedModel, r: &Reference, arch: &str) {
    let info = m.model.info();
    let tok = &m.tokenizer;
    let j = &r.json;
    let cfg = &j["config"];
    let field = |k: &str| cfg[k].as_u64().unwrap_or_else(|| panic!("config.{k}")) as usize;
    let input_size = cfg["input_size"]
        .as_u64()
        .map_or(field("hidden_size"), |x| x as usize);
    for (what, got, want) in [
        ("hidden_size", info.hidden_size, field("hidden_size")),
        ("input_size", info.input_size, input_size),
        ("num_layers", info.num_layers, field("num_hidden_layers")),
        ("num_heads", info.num_heads, field("num_attention_heads")),
        (
            "num_kv_heads",
            info.num_kv_heads,
            field("num_key_value_heads"),
        ),
        ("vocab_size", info.vocab_size, field("vocab_size")),
        (
            "context_length",
            info.context_length,
            field("max_position_embeddings"),
        ),
        (
            "num_parameters",
            info.num_parameters,
            field("num_parameters"),
        ),
    ] {
        c.check(got == want, || {
            format!("info.{what} = {got}, config says {want}")
        });
    }
    c.check(info.architecture == arch, || {
        format!("architecture {}, want {arch}", info.architecture)
    });
    let want = num(&j["grad"]["emb_std"]);
    let rel = (info.embedding_std - want).abs() / want;
    println!(
        "[{name}] embedding std {:.7} (reference {want:.7}, relative diff {rel:.2e})",
        info.embedding_std
    );
    c.check(rel <= EMB_STD_REL_TOL, || {
        format!("embedding_std {} vs emb_std {want}", info.embedding_std)
    });
    let as_id = |k: &str| j[k].as_u64().map(|x| x as u32);
    c.check(tok.bos_id() == as_id("bos_id"), || {
        format!("bos_id {:?}, want {}", tok.bos_id(), j["bos_id"])
    });
    c.check(tok.eos_id() == as_id("eos_id"), || {
        format!("eos_id {:?}, want {}", tok.eos_id(), j["eos_id"])
    });
    c.check(Some(tok.adds_bos()) == j["add_bos"].as_bool(), || {
        format!("adds_bos {}, want {}", tok.adds_bos(), j["add_bos"])
    });
}

/// Every check of a fixture: outputs against `transformers` and sizes, for
/// the architecture the fixture names (its `architecture`, else its
/// config's `model_type`, else Llama).
pub fn run_all(name: &str, m: &LoadedModel, r: &Reference, check_tokenizer_list: bool) {
    let mut c = Checks {
        model: name.to_string(),
        ..Default::default()
    };
    let arch = r.json["architecture"]
        .as_str()
        .or(r.json["config"]["model_type"].as_str())
        .unwrap_or("llama")
        .to_string();
    check_outputs(&mut c, name, m, r, check_tokenizer_list);
    check_sizes(&mut c, name, m, r, &arch);
    c.finish();
}
