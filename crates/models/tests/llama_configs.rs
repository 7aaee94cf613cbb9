//! Real Llama-family `config.json` files (SmolLM2, TinyLlama, Sheared-LLaMA,
//! Llama 2, Llama 3.1, Llama 3.2) parse into the right hyper-parameters, and
//! their one-vector capacity matches the paper's table.

use std::path::PathBuf;

use cram::model::hparams::Json;
use cram::model::llama::LlamaConfig;
use cram::model::theoretical_capacity;

fn config(name: &str) -> LlamaConfig {
    let path = PathBuf::from(cram_testkit::REPO_ROOT)
        .join("tests/fixtures/configs")
        .join(format!("{name}.json"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    LlamaConfig::from_json(&Json::new(&v, &path)).unwrap()
}

#[test]
fn real_llama_configs_load() {
    // (name, hidden, layers, heads, kv heads, head dim, vocab, tied, llama3 factor)
    let cases = [
        ("smollm2-135m", 576, 30, 9, 3, 64, 49152, true, None),
        ("tinyllama-1.1b", 2048, 22, 32, 4, 64, 32000, false, None),
        (
            "sheared-llama-1.3b",
            2048,
            24,
            16,
            16,
            128,
            32000,
            false,
            None,
        ),
        ("llama-2-7b", 4096, 32, 32, 32, 128, 32000, false, None),
        (
            "llama-3.1-8b",
            4096,
            32,
            32,
            8,
            128,
            128256,
            false,
            Some(8.0),
        ),
        (
            "llama-3.2-1b",
            2048,
            16,
            32,
            8,
            64,
            128256,
            true,
            Some(32.0),
        ),
    ];
    for (name, hidden, layers, heads, kv, hd, vocab, tied, factor) in cases {
        let c = config(name);
        assert_eq!(
            (
                c.hidden_size,
                c.num_layers,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim,
                c.vocab_size
            ),
            (hidden, layers, heads, kv, hd, vocab),
            "{name}"
        );
        assert_eq!(c.tie_word_embeddings, tied, "{name}");
        assert_eq!(c.llama3_scaling.map(|s| s.factor), factor, "{name}");
    }
}

#[test]
fn capacity_of_one_vector_matches_the_paper_for_llama_models() {
    // "Max capacity, tokens" of the paper's table, rounded to an integer.
    for (name, expected) in [
        ("sheared-llama-1.3b", 2190.0),
        ("llama-3.1-8b", 3862.0),
        ("llama-3.2-1b", 1931.0),
    ] {
        let c = config(name);
        let cap = theoretical_capacity(c.hidden_size, c.vocab_size, 1, 16.0);
        assert_eq!(cap.round(), expected, "{name}: {cap}");
    }
}
