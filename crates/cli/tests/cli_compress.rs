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

/// Runs `cram compress --model MODEL -o OUT --json` with [`FAST`] and
/// `extra`: its JSON lines, or the failed output.
fn run_compress(model: &str, out: &Path, extra: &[&str]) -> Result<Vec<serde_json::Value>, Output> {
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
    if !o.status.success() {
        return Err(o);
    }
    Ok(String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect())
}

fn compress(dir: &Path, model: &str, extra: &[&str]) -> (PathBuf, serde_json::Value) {
    let out = dir.join("mem.safetensors");
    let mut lines = run_compress(model, &out, extra)
        .unwrap_or_else(|o| panic!("compress failed: {}", stderr(&o)));
    assert_eq!(
        lines.len(),
        1,
        "--json prints one object per text and nothing else: {lines:?}"
    );
    (out, lines.remove(0))
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
    let input = two_texts(dir.path());
    let out = dir.path().join("out");
    let model = fixture("llama_gqa_tied");
    let lines = compress_many(&input, &out, &model, &[]).unwrap();
    assert_eq!(lines.len(), 2);
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

/// Two short texts in `dir/texts.jsonl`.
fn two_texts(dir: &Path) -> PathBuf {
    let input = dir.join("texts.jsonl");
    std::fs::write(
        &input,
        "{\"text\": \"A small boat drifted past the harbour.\"}\n{\"text\": \"In the morning the village woke.\"}\n",
    )
    .unwrap();
    input
}

/// Compresses `input` into the folder `out` with `extra` flags; the JSON
/// lines, or the failed output.
fn compress_many(
    input: &Path,
    out: &Path,
    model: &str,
    extra: &[&str],
) -> Result<Vec<serde_json::Value>, Output> {
    let mut args = vec!["--input", input.to_str().unwrap(), "--batch", "2"];
    args.extend_from_slice(extra);
    run_compress(model, out, &args)
}

#[test]
fn low_dimensional_vectors_decode_with_the_basis_saved_beside_them() {
    let dir = tempfile::tempdir().unwrap();
    let input = two_texts(dir.path());
    let model = fixture("llama_gqa_tied");
    let full = dir.path().join("full");
    compress_many(&input, &full, &model, &[]).unwrap();
    let mut exact = 0;
    for basis in [
        "random",
        "learned",
        "own",
        &format!("pca:{}", full.display()),
    ] {
        let k = if basis.starts_with("pca") { "3" } else { "24" };
        let out = dir.path().join(basis.split(':').next().unwrap());
        let extra = ["--low-dim", k, "--basis", basis];
        let lines = compress_many(&input, &out, &model, &extra).unwrap();
        assert_eq!(lines.len(), 2);
        // An own basis is every text's: its files hold the vectors.
        assert_eq!(
            out.join("basis.safetensors").exists(),
            basis != "own",
            "{basis}"
        );
        for l in &lines {
            assert_eq!(l["config"]["low_dim"]["basis"], basis, "{l}");
            let file = l["file"].as_str().unwrap();
            let o = cram(&["decompress", "--model", &model, file, "--json"]);
            assert!(o.status.success(), "{}", stderr(&o));
            let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(d["matches_original"], l["exact"], "{basis}: {d} {l}");
            assert_eq!(d["token_ids"], l["decoded_ids"], "{basis}");
            exact += usize::from(l["exact"] == true);
        }
        // A second run keeps every file (and the basis).
        let again = compress_many(&input, &out, &model, &extra).unwrap();
        assert!(again.iter().all(|l| l["kept"] == true), "{again:?}");
    }
    assert!(
        exact >= 2,
        "low-dimensional vectors decode some texts exactly"
    );
    // Another --low-dim in the same folder: the basis is not replaced.
    let out = dir.path().join("random");
    let o = compress_many(
        &input,
        &out,
        &model,
        &["--low-dim", "8", "--basis", "random"],
    )
    .unwrap_err();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("basis.safetensors"), "{}", stderr(&o));
    // A damaged or missing basis: decompress names it.
    let file = out.join("00000.safetensors");
    let basis = out.join("basis.safetensors");
    let mut bytes = std::fs::read(&basis).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0x20;
    std::fs::write(&basis, bytes).unwrap();
    let o = cram(&["decompress", "--model", &model, file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("sha256"), "{}", stderr(&o));
    std::fs::remove_file(&basis).unwrap();
    let o = cram(&["decompress", "--model", &model, file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("basis.safetensors is missing"),
        "{}",
        stderr(&o)
    );
    // Bad settings.
    for (extra, want) in [
        (vec!["--low-dim", "0", "--basis", "random"], "--basis"),
        (
            vec!["--low-dim", "4", "--basis", "own", "--fit-tokens", "4"],
            "--fit-tokens",
        ),
        (vec!["--low-dim", "65"], "input width 64"),
        (vec!["--low-dim", "4", "--basis", "svd"], "unknown basis"),
        (vec!["--basis", "random"], "--low-dim"),
        (
            vec!["--low-dim", "4", "--basis", "pca:/no/such/dir"],
            "/no/such/dir",
        ),
        (
            vec![
                "--low-dim",
                "4",
                "--basis",
                &format!("pca:{}", full.display()),
            ],
            "span only 3",
        ),
    ] {
        let out = dir.path().join("bad");
        let o = compress_many(&input, &out, &model, &extra).unwrap_err();
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{extra:?}: {}", stderr(&o));
    }
}
