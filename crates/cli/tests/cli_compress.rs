//! `cram compress` / `cram decompress` through the binary, on the small
//! Llama fixtures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> String {
    PathBuf::from(cram_testkit::REPO_ROOT)
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

fn cram(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cram"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run cram")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Settings under which the random 64-wide fixture model crams 6 tokens
/// into 2 vectors in well under 400 steps.
const FAST: &[&str] = &[
    "--mem",
    "2",
    "--lr",
    "0.1",
    "--beta2",
    "0.99",
    "--max-steps",
    "400",
    "--tokens",
    "6",
];

fn compress(dir: &Path, model: &str, extra: &[&str]) -> (PathBuf, serde_json::Value) {
    let out = dir.join("mem.safetensors");
    let mut args = vec![
        "compress",
        "--model",
        model,
        "-o",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(FAST);
    args.extend_from_slice(extra);
    let o = cram(&args);
    assert!(o.status.success(), "compress failed: {}", stderr(&o));
    let stdout = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "--json prints one object per text and nothing else: {stdout}"
    );
    (out, serde_json::from_str(lines[0]).unwrap())
}

#[test]
fn compress_then_decompress_gives_the_text_back() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("llama_gqa_tied");
    let text = "The keeper of the lighthouse walked along the rocky shore.";
    for loss in ["full", "paper"] {
        // One folder per convention: compress never overwrites other work.
        let sub = dir.path().join(loss);
        std::fs::create_dir(&sub).unwrap();
        let (file, v) = compress(&sub, &model, &["--text", text, "--loss", loss]);
        assert_eq!(v["exact"], true, "{v}");
        assert_eq!(v["best_accuracy"], 1.0);
        assert_eq!(v["adds_bos"], true);
        assert!(v["loss_curve"].as_array().unwrap().len() == v["steps"].as_u64().unwrap() as usize);
        let o = cram(&[
            "decompress",
            "--model",
            &model,
            file.to_str().unwrap(),
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(d["matches_original"], true, "{loss}: {d}");
        let ids: Vec<u64> = d["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(ids.len(), 6);
        // The 6 tokens are BOS plus the start of the text.
        assert!(text.starts_with(d["text"].as_str().unwrap().trim()), "{d}");
    }
}

#[test]
fn many_texts_from_jsonl_go_to_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts.jsonl");
    std::fs::write(
        &input,
        "{\"text\": \"A small boat drifted past the harbour.\"}\n{\"text\": \"In the morning the village woke.\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let model = fixture("llama_gqa_tied");
    let mut args = vec![
        "compress",
        "--model",
        &model,
        "--input",
        input.to_str().unwrap(),
        "--batch",
        "2",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(FAST);
    let o = cram(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8(o.stdout).unwrap().lines().count(), 2);
    assert!(out.join("00000.safetensors").exists());
    assert!(out.join("00001.safetensors").exists());
}

#[test]
fn decompress_refuses_another_model_and_corrupt_files() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = compress(
        dir.path(),
        &fixture("llama_gqa_tied"),
        &["--text", "The keeper of the light."],
    );
    let o = cram(&[
        "decompress",
        "--model",
        &fixture("llama_rope3_bias"),
        file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.starts_with("error:") && e.contains("weights sha256"),
        "{e}"
    );
    assert!(!e.contains("panicked"));

    let bad = dir.path().join("corrupt.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let o = cram(&[
        "decompress",
        "--model",
        &fixture("llama_gqa_tied"),
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("corrupt.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );

    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"hello").unwrap();
    let o = cram(&[
        "decompress",
        "--model",
        &fixture("llama_gqa_tied"),
        junk.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("junk.safetensors"));
}

#[test]
fn bad_texts_are_clear_errors() {
    let model = fixture("llama_gqa_tied");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let o = cram(&[
        "compress",
        "--model",
        &model,
        "--text",
        "   ",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("empty text"), "{}", stderr(&o));
    let long = "word ".repeat(400);
    let o = cram(&[
        "compress",
        "--model",
        &model,
        "--text",
        &long,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("context length"), "{}", stderr(&o));
    assert!(!out.exists(), "nothing is written for a refused text");
}
