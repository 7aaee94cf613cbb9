//! Helpers of the binary's tests: fixture copies to break, running `cram`,
//! and the error contract (exit code 2, one `error:` line, no panic).

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value as Json;
use tempfile::TempDir;

/// The files of a Hugging Face model folder in the fixtures (not the
/// reference outputs).
pub const HF_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(cram_testkit::REPO_ROOT)
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// A copy of the `llama_gqa_tied` fixture's model files in `dir`.
pub fn copy_tiny_model(dir: &Path) {
    copy_fixture_model("llama_gqa_tied", dir);
}

/// A copy of a fixture's model files in `dir`.
pub fn copy_fixture_model(fixture: &str, dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let src = fixture_dir(fixture);
    for name in HF_FILES {
        fs::copy(src.join(name), dir.join(name)).unwrap_or_else(|e| panic!("copy {name}: {e}"));
    }
}

/// A temporary copy of a fixture's model, to be broken by the caller.
pub fn fixture_copy(fixture: &str) -> (TempDir, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join(fixture);
    copy_fixture_model(fixture, &dir);
    (tmp, dir)
}

/// A temporary copy of the tiny model, to be broken by the caller.
pub fn tiny_model_copy() -> (TempDir, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("tiny-llama");
    copy_tiny_model(&dir);
    (tmp, dir)
}

/// Runs `cram ARGS` in an empty working folder, offline (with an empty hub
/// cache unless `env` names one), with the given extra environment.
pub fn cram(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let cwd = TempDir::new().unwrap();
    let empty_hub = cwd.path().join("hub");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cram"));
    cmd.args(args)
        .current_dir(cwd.path())
        .env_remove("RUST_LOG")
        // Backtraces asked for must not spill into the one-line message.
        .env("RUST_BACKTRACE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", &empty_hub);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("cannot run the cram binary")
}

pub fn inspect(model: &Path) -> Output {
    cram(&["inspect", "--model", model.to_str().unwrap()], &[])
}

/// Checks the error contract and that the message contains every needle;
/// returns the message.
pub fn expect_error(out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ctx = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "the program panicked\n{ctx}");
    assert_eq!(out.status.code(), Some(2), "exit status\n{ctx}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr\n{ctx}");
    let line = lines[0];
    assert!(line.starts_with("error: "), "no `error:` prefix\n{ctx}");
    assert!(
        line.len() > "error: ".len() + 10,
        "the message says nothing\n{ctx}"
    );
    for needle in needles {
        assert!(line.contains(needle), "the message lacks {needle:?}\n{ctx}");
    }
    println!("{line}");
    line.to_string()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Rewrites `dir/model.safetensors`, letting `edit` drop (None) or replace
/// each tensor's shape.
pub fn rewrite_weights(dir: &Path, edit: impl Fn(&str, &[usize]) -> Option<Vec<usize>>) {
    use safetensors::tensor::{SafeTensors, TensorView};
    let path = dir.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut kept = Vec::new();
    for (name, view) in st.tensors() {
        if let Some(shape) = edit(&name, view.shape()) {
            let v = TensorView::new(view.dtype(), shape, view.data()).unwrap();
            kept.push((name, v));
        }
    }
    let out = safetensors::serialize(kept, None).unwrap();
    fs::write(&path, out).unwrap();
}

pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Json>)) {
    let path = dir.join("config.json");
    let mut v: Json = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

pub fn copy_prefix(src: &Path, dst: &Path, n: usize) {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    fs::File::open(src).unwrap().read_exact(&mut buf).unwrap();
    fs::write(dst, buf).unwrap();
}

// ---- bad input ----------------------------------------------------------------
