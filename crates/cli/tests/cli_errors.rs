//! Bad input through the `cram` binary: every case exits with code 2 and one
//! `error:` line on stderr that names the file and the problem, never a
//! panic. Also the good paths those cases are variations of: a model folder,
//! generation, and a model found in a hand-made Hugging Face hub cache.

use cram_testkit as common;

mod support;
use support::*;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value as Json;
use tempfile::TempDir;

const DROPPED: &str = "model.layers.1.mlp.up_proj.weight";

#[test]
fn truncated_gguf() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("truncated.gguf");
    copy_prefix(&common::smollm2_gguf(), &path, 5 << 20);
    let out = inspect(&path);
    expect_error(
        &out,
        &[path_str(&path), "truncated", &(5u64 << 20).to_string()],
    );
}

#[test]
fn gguf_cut_inside_header() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("header.gguf");
    copy_prefix(&common::smollm2_gguf(), &path, 1000);
    let out = inspect(&path);
    expect_error(&out, &[path_str(&path), "GGUF", "truncated"]);
}

#[test]
fn missing_tensor() {
    let (_tmp, dir) = tiny_model_copy();
    rewrite_weights(&dir, |name, shape| {
        (name != DROPPED).then(|| shape.to_vec())
    });
    let out = inspect(&dir);
    let weights = dir.join("model.safetensors");
    expect_error(&out, &[path_str(&weights), DROPPED, "missing"]);
}

#[test]
fn tensor_of_the_wrong_shape() {
    let (_tmp, dir) = tiny_model_copy();
    rewrite_weights(&dir, |name, shape| {
        if name == DROPPED {
            assert_eq!(shape, [128, 64]);
            Some(vec![64, 128])
        } else {
            Some(shape.to_vec())
        }
    });
    let out = inspect(&dir);
    let weights = dir.join("model.safetensors");
    expect_error(
        &out,
        &[path_str(&weights), DROPPED, "[128, 64]", "[64, 128]"],
    );
}

#[test]
fn unsupported_architecture() {
    let (_tmp, dir) = tiny_model_copy();
    edit_config(&dir, |c| {
        c.insert("model_type".into(), "transformer-xl".into());
    });
    let out = inspect(&dir);
    let config = dir.join("config.json");
    let msg = expect_error(&out, &[path_str(&config), "transformer-xl", "supported"]);
    for arch in cram::model::SUPPORTED_ARCHITECTURES {
        assert!(msg.contains(arch), "{msg:?} does not list `{arch}`");
    }
}

#[test]
fn config_without_hidden_size() {
    let (_tmp, dir) = tiny_model_copy();
    edit_config(&dir, |c| {
        assert!(c.remove("hidden_size").is_some());
    });
    let out = inspect(&dir);
    let config = dir.join("config.json");
    expect_error(&out, &[path_str(&config), "hidden_size", "missing"]);
}

#[test]
fn folder_without_tokenizer() {
    let (_tmp, dir) = tiny_model_copy();
    fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let out = inspect(&dir);
    expect_error(&out, &[path_str(&dir), "tokenizer.json", "missing"]);
}

#[test]
fn nonexistent_path() {
    let out = inspect(Path::new("/nonexistent/model.gguf"));
    expect_error(&out, &["/nonexistent/model.gguf", "no such file"]);
}

#[test]
fn corrupt_tokenizer_json() {
    let (_tmp, dir) = tiny_model_copy();
    let tok = dir.join("tokenizer.json");
    let text = fs::read_to_string(&tok).unwrap();
    fs::write(&tok, &text[..text.len() / 2]).unwrap();
    let out = inspect(&dir);
    expect_error(&out, &[path_str(&tok), "not a valid tokenizer.json"]);
}

// ---- the good paths -----------------------------------------------------------

fn expect_success(out: &Output) -> Json {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status.code()
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\nstdout:\n{stdout}"))
}

fn reference(name: &str) -> Json {
    let path = fixture_dir(name).join("reference.json");
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn inspect_fixture_folder_as_json() {
    for name in ["llama_gqa_tied", "llama_rope3_bias"] {
        let dir = fixture_dir(name);
        let v = expect_success(&cram(
            &["inspect", "--model", path_str(&dir), "--json"],
            &[],
        ));
        let cfg = &reference(name)["config"];
        assert_eq!(v["architecture"], "llama", "{name}: {v}");
        assert_eq!(v["hidden_size"], cfg["hidden_size"], "{name}: {v}");
        assert_eq!(v["num_layers"], cfg["num_hidden_layers"], "{name}: {v}");
        assert_eq!(v["vocab_size"], cfg["vocab_size"], "{name}: {v}");
        assert_eq!(v["num_parameters"], cfg["num_parameters"], "{name}: {v}");
        assert_eq!(v["model"], path_str(&dir), "{name}: {v}");
    }
}

#[test]
fn generate_matches_fixture() {
    let dir = fixture_dir("llama_gqa_tied");
    let r = reference("llama_gqa_tied");
    let case = r["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["prompt"] == "The keeper")
        .expect("a greedy case for \"The keeper\"")
        .clone();
    let v = expect_success(&cram(
        &[
            "generate",
            "--model",
            path_str(&dir),
            "--prompt",
            "The keeper",
            "--max-new-tokens",
            "20",
            "--json",
        ],
        &[],
    ));
    assert_eq!(v["prompt_ids"], case["prompt_ids"], "{v}");
    assert_eq!(v["token_ids"], case["token_ids"], "{v}");
    assert!(v["text"].is_string(), "{v}");
}

/// A hub cache laid out by hand, as `huggingface_hub` does it.
fn fake_hub_cache() -> TempDir {
    let hub = TempDir::new().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = hub.path().join("models--test-org--tiny-llama");
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs").join("main"), commit).unwrap();
    copy_tiny_model(&repo.join("snapshots").join(commit));
    hub
}

#[test]
fn hub_id_from_local_cache() {
    let hub = fake_hub_cache();
    let env = [("HF_HUB_CACHE", hub.path())];
    let v = expect_success(&cram(
        &["inspect", "--model", "test-org/tiny-llama", "--json"],
        &env,
    ));
    assert_eq!(v["hidden_size"], 64, "{v}");
    assert_eq!(v["model"], "test-org/tiny-llama", "{v}");

    let out = cram(&["inspect", "--model", "test-org/absent"], &env);
    expect_error(&out, &["test-org/absent", "HF_HUB_OFFLINE"]);
}

// ---- Mamba ----------------------------------------------------------------------

#[test]
fn inspect_mamba_folder_and_gguf_as_json() {
    for name in ["mamba_tied", "mamba_untied_bias"] {
        let dir = fixture_dir(name);
        let cfg = &reference(name)["config"];
        let mut specs = vec![dir.clone()];
        if name == "mamba_tied" {
            specs.push(dir.join("model.gguf"));
        }
        for spec in specs {
            let v = expect_success(&cram(
                &["inspect", "--model", path_str(&spec), "--json"],
                &[],
            ));
            assert_eq!(v["architecture"], "mamba", "{name}: {v}");
            assert_eq!(v["hidden_size"], cfg["hidden_size"], "{name}: {v}");
            assert_eq!(v["num_layers"], cfg["num_hidden_layers"], "{name}: {v}");
            assert_eq!(v["vocab_size"], cfg["vocab_size"], "{name}: {v}");
            assert_eq!(v["num_parameters"], cfg["num_parameters"], "{name}: {v}");
            assert_eq!(v["num_heads"], 0, "{name}: {v}");
        }
    }
    // The plain-text form too.
    let out = cram(
        &["inspect", "--model", path_str(&fixture_dir("mamba_tied"))],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("mamba"), "{stdout}");
    assert!(stdout.contains("none (attention-free)"), "{stdout}");
}

#[test]
fn generate_mamba_matches_fixture() {
    for name in ["mamba_tied", "mamba_untied_bias"] {
        let dir = fixture_dir(name);
        let r = reference(name);
        for case in r["greedy"].as_array().unwrap() {
            let prompt = case["prompt"].as_str().unwrap();
            let v = expect_success(&cram(
                &[
                    "generate",
                    "--model",
                    path_str(&dir),
                    "--prompt",
                    prompt,
                    "--max-new-tokens",
                    "20",
                    "--json",
                ],
                &[],
            ));
            assert_eq!(v["prompt_ids"], case["prompt_ids"], "{name}: {v}");
            assert_eq!(v["token_ids"], case["token_ids"], "{name}: {v}");
        }
    }
}

// ---- GPT-NeoX, GPT-2 and OPT; bad configs and tensors of every architecture ----
// `inspect`, `generate` and `compress`/`decompress` on a fixture of each
// architecture (folders and GGUF files), and bad input naming the field or
// tensor.

/// One fixture per architecture, with its `model_type`.
const LN_MODELS: &[(&str, &str)] = &[
    ("pythia_parallel", "gpt_neox"),
    ("gpt2_gelu_new", "gpt2"),
    ("opt_proj", "opt"),
];

fn ln_gguf(name: &str) -> PathBuf {
    fixture_dir("gguf").join(format!("{name}.gguf"))
}

/// Every model spec to run: the folders, then the GGUF files.
fn ln_specs() -> Vec<(String, PathBuf, &'static str)> {
    let mut v: Vec<_> = LN_MODELS
        .iter()
        .map(|(name, arch)| (name.to_string(), fixture_dir(name), *arch))
        .collect();
    v.push(("gpt2_gelu_new".into(), ln_gguf("gpt2_gelu_new"), "gpt2"));
    v.push(("pythia_serial".into(), ln_gguf("pythia_serial"), "gpt_neox"));
    v
}

#[test]
fn inspect_reports_every_architecture() {
    for (name, path, arch) in ln_specs() {
        let v = expect_success(&cram(
            &["inspect", "--model", path_str(&path), "--json"],
            &[],
        ));
        let cfg = &reference(&name)["config"];
        println!(
            "{}: {} layers, hidden {}, input {}, {} parameters, weights {}",
            path.display(),
            v["num_layers"],
            v["hidden_size"],
            v["input_size"],
            v["num_parameters"],
            v["weights_dtype"]
        );
        assert_eq!(v["architecture"], arch, "{name}: {v}");
        for (ours, theirs) in [
            ("hidden_size", "hidden_size"),
            ("input_size", "input_size"),
            ("num_layers", "num_hidden_layers"),
            ("num_heads", "num_attention_heads"),
            ("vocab_size", "vocab_size"),
            ("context_length", "max_position_embeddings"),
            ("num_parameters", "num_parameters"),
        ] {
            assert_eq!(v[ours], cfg[theirs], "{name}: {ours}: {v}");
        }
        assert_eq!(v["adds_bos"], true, "{name}: {v}");
        // The text form runs too.
        let out = inspect(&path);
        assert!(out.status.success(), "{name}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(arch), "{name}: {text}");
    }
}

#[test]
fn generate_matches_transformers_on_every_architecture() {
    for (name, path, _) in ln_specs() {
        let r = reference(&name);
        for case in r["greedy"].as_array().unwrap() {
            let prompt = case["prompt"].as_str().unwrap();
            let v = expect_success(&cram(
                &[
                    "generate",
                    "--model",
                    path_str(&path),
                    "--prompt",
                    prompt,
                    "--max-new-tokens",
                    "20",
                    "--json",
                ],
                &[],
            ));
            assert_eq!(v["prompt_ids"], case["prompt_ids"], "{name}: {v}");
            assert_eq!(v["token_ids"], case["token_ids"], "{name} {prompt:?}: {v}");
            assert!(v["text"].is_string(), "{v}");
        }
        println!("{}: greedy ids equal transformers'", path.display());
    }
}

/// `cram compress` then `cram decompress` give the text back; the settings
/// are those under which tests/cram_ln.rs converges.
#[test]
fn compress_then_decompress_on_every_architecture() {
    let cases: &[(&str, &Path, &str, &str, &str)] = &[
        (
            "pythia_serial",
            &fixture_dir("pythia_serial"),
            "In the morning the village woke to the smell of bread and wet grass.",
            "5",
            "1",
        ),
        (
            "gpt2_gelu_new",
            &ln_gguf("gpt2_gelu_new"),
            "The keeper of the lighthouse walked along the rocky shore every evening.",
            "4",
            "1",
        ),
        (
            "opt_proj",
            &fixture_dir("opt_proj"),
            "Computers store numbers as bits.",
            "5",
            "2",
        ),
    ];
    for (name, model, text, tokens, mem) in cases {
        let tmp = TempDir::new().unwrap();
        let file = tmp.path().join("mem.safetensors");
        let model = path_str(model);
        let v = expect_success(&cram(
            &[
                "compress",
                "--model",
                model,
                "--text",
                text,
                "--tokens",
                tokens,
                "--mem",
                mem,
                "--lr",
                "0.1",
                "--beta2",
                "0.99",
                "--max-steps",
                "600",
                // The settings these random fixtures were tuned with: the
                // paper's optimiser and layout with the full loss (the
                // layouts are tested in crates/cram/tests/layout.rs).
                "--protocol",
                "paper",
                "--loss",
                "full",
                "-o",
                path_str(&file),
                "--json",
            ],
            &[],
        ));
        assert_eq!(v["exact"], true, "{name}: {v}");
        assert_eq!(v["best_accuracy"], 1.0, "{name}: {v}");
        let d = expect_success(&cram(
            &["decompress", "--model", model, path_str(&file), "--json"],
            &[],
        ));
        println!(
            "{name}: {tokens} tokens into {mem} vector(s) in {} steps, decoded {:?}",
            v["steps"], d["text"]
        );
        assert_eq!(d["matches_original"], true, "{name}: {d}");
    }
}

#[test]
fn config_without_a_required_field_is_named() {
    for (name, field) in [
        ("pythia_parallel", "intermediate_size"),
        ("gpt2_gelu_new", "n_layer"),
        ("gpt2_gelu_new", "n_positions"),
        ("opt_proj", "ffn_dim"),
        ("mamba_tied", "num_hidden_layers"),
        ("olmo_clip", "intermediate_size"),
        ("gemma3_plain", "vocab_size"),
        ("gemma3_swa_softcap", "num_attention_heads"),
    ] {
        let (_tmp, dir) = fixture_copy(name);
        edit_config(&dir, |c| {
            assert!(c.remove(field).is_some(), "{name} has {field}");
        });
        let config = dir.join("config.json");
        expect_error(&inspect(&dir), &[path_str(&config), field, "missing"]);
    }
}

#[test]
fn tensor_of_the_wrong_shape_is_named() {
    for (name, tensor, right, wrong) in [
        (
            "pythia_parallel",
            "gpt_neox.layers.1.attention.query_key_value.weight",
            vec![192, 64],
            vec![64, 192],
        ),
        (
            "gpt2_gelu_new",
            "transformer.h.0.attn.c_attn.weight",
            vec![64, 192],
            vec![192, 64],
        ),
        (
            "opt_proj",
            "model.decoder.project_in.weight",
            vec![64, 32],
            vec![32, 64],
        ),
        // time_step_rank 6 + 2 * state_size 8 rows of intermediate 192.
        (
            "mamba_untied_bias",
            "backbone.layers.1.mixer.x_proj.weight",
            vec![22, 192],
            vec![11, 384],
        ),
        (
            "olmo_plain",
            "model.layers.1.mlp.up_proj.weight",
            vec![128, 64],
            vec![64, 128],
        ),
        (
            "gemma3_swa_softcap",
            "model.layers.1.self_attn.q_norm.weight",
            vec![16],
            vec![2, 8],
        ),
        (
            "gemma3_plain",
            "model.layers.0.post_feedforward_layernorm.weight",
            vec![64],
            vec![8, 8],
        ),
    ] {
        let (_tmp, dir) = fixture_copy(name);
        rewrite_weights(&dir, |n, shape| {
            if n == tensor {
                assert_eq!(shape, right.as_slice(), "{name}: {tensor}");
                Some(wrong.clone())
            } else {
                Some(shape.to_vec())
            }
        });
        let weights = dir.join("model.safetensors");
        expect_error(
            &inspect(&dir),
            &[
                path_str(&weights),
                tensor,
                &format!("{right:?}"),
                &format!("{wrong:?}"),
            ],
        );
    }
}

#[test]
fn missing_tensor_is_named() {
    for (name, tensor) in [
        ("pythia_parallel", "embed_out.weight"),
        ("gpt2_gelu_new", "transformer.wpe.weight"),
        ("opt_proj", "model.decoder.embed_positions.weight"),
        ("mamba_tied", "backbone.layers.0.mixer.A_log"),
    ] {
        let (_tmp, dir) = fixture_copy(name);
        rewrite_weights(&dir, |n, s| (n != tensor).then(|| s.to_vec()));
        let weights = dir.join("model.safetensors");
        expect_error(&inspect(&dir), &[path_str(&weights), tensor, "missing"]);
    }
}

// ---- OLMo and Gemma 3 -----------------------------------------------------------

/// The OLMo and Gemma 3 fixtures.
const OLMO_GEMMA_FIXTURES: [&str; 4] = [
    "olmo_clip",
    "olmo_plain",
    "gemma3_swa_softcap",
    "gemma3_plain",
];

#[test]
fn gemma3_config_with_a_bad_switch() {
    let (_tmp, dir) = fixture_copy("gemma3_swa_softcap");
    edit_config(&dir, |c| {
        c.insert(
            "layer_types".into(),
            serde_json::json!(["sliding_attention", "chunked_attention", "full_attention"]),
        );
    });
    let config = dir.join("config.json");
    expect_error(
        &inspect(&dir),
        &[path_str(&config), "layer_types", "chunked_attention"],
    );
}

#[test]
fn inspect_olmo_and_gemma3_fixture_folders() {
    for name in OLMO_GEMMA_FIXTURES {
        let dir = fixture_dir(name);
        let v = expect_success(&cram(
            &["inspect", "--model", path_str(&dir), "--json"],
            &[],
        ));
        let r = reference(name);
        let cfg = &r["config"];
        assert_eq!(v["architecture"], r["architecture"], "{name}: {v}");
        assert_eq!(v["hidden_size"], cfg["hidden_size"], "{name}: {v}");
        assert_eq!(v["num_layers"], cfg["num_hidden_layers"], "{name}: {v}");
        assert_eq!(v["vocab_size"], cfg["vocab_size"], "{name}: {v}");
        assert_eq!(v["num_parameters"], cfg["num_parameters"], "{name}: {v}");
    }
}

/// `cram generate --json` gives the reference's greedy continuation.
fn generate_like_reference(model: &Path, fixture: &str, prompt: &str) {
    let r = reference(fixture);
    let case = r["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["prompt"] == prompt)
        .unwrap_or_else(|| panic!("{fixture}: no greedy case for {prompt:?}"))
        .clone();
    let v = expect_success(&cram(
        &[
            "generate",
            "--model",
            path_str(model),
            "--prompt",
            prompt,
            "--max-new-tokens",
            "20",
            "--json",
        ],
        &[],
    ));
    assert_eq!(v["prompt_ids"], case["prompt_ids"], "{fixture}: {v}");
    assert_eq!(v["token_ids"], case["token_ids"], "{fixture}: {v}");
    println!("{fixture}: {prompt:?} -> {}", v["text"]);
}

#[test]
fn generate_olmo_and_gemma3_fixture_folders() {
    for name in OLMO_GEMMA_FIXTURES {
        generate_like_reference(&fixture_dir(name), name, "The keeper");
    }
}

#[test]
fn inspect_and_generate_gemma3_gguf() {
    let gguf = common::gemma3_gguf();
    let v = expect_success(&cram(
        &["inspect", "--model", path_str(&gguf), "--json"],
        &[],
    ));
    assert_eq!(v["architecture"], "gemma3_text", "{v}");
    assert_eq!(v["hidden_size"], 640, "{v}");
    assert_eq!(v["num_layers"], 18, "{v}");
    assert_eq!(v["vocab_size"], 262144, "{v}");
    generate_like_reference(&gguf, "gemma3_270m", "The capital of France is");
}
