//! Bad sweep configurations through the `cram` binary: each is refused with
//! one `error:` line naming the problem and exit code 2, before any compute
//! (no results database is created).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

fn fixture_model() -> PathBuf {
    Path::new(cram_testkit::REPO_ROOT).join("tests/fixtures/llama_gqa_tied")
}

/// A valid configuration on the fixture model, with `dataset` as its data
/// set table and `extra` appended to the top-level keys.
fn config(top: &str, dataset: &str) -> String {
    format!(
        r#"models = ["{}"]
lengths = [4]
n_mem = [1]
samples = 2
{top}

[optimizer]
max_steps = 3

[[datasets]]
name = "d"
{dataset}
"#,
        fixture_model().display()
    )
}

const GOOD_DATASET: &str = r#"source = { kind = "csv", path = "texts.csv" }"#;

/// Writes `toml` as `sweep.toml` next to a small `texts.csv`, runs
/// `cram sweep`, checks the error contract, that nothing was written, and
/// that the message has every needle.
fn expect_refused(toml: &str, needles: &[&str]) {
    let dir = TempDir::new().unwrap();
    fs::write(
        dir.path().join("texts.csv"),
        "id,text\na,The first text. It has two sentences.\nb,The second text. It also has two.\n",
    )
    .unwrap();
    fs::write(dir.path().join("empty.csv"), "id,text\n").unwrap();
    let cfg = dir.path().join("sweep.toml");
    fs::write(&cfg, toml).unwrap();
    let out_dir = dir.path().join("run");
    let out: Output = Command::new(env!("CARGO_BIN_EXE_cram"))
        .args([
            "sweep",
            cfg.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .env_remove("RUST_LOG")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env("RUST_BACKTRACE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "{:?} lacks {n:?}", lines[0]);
    }
    assert!(
        !out_dir.join("results.sqlite").exists(),
        "a database was created before the error"
    );
    println!("{}", lines[0]);
}

#[test]
fn the_good_configuration_runs() {
    // The base of every case below is valid.
    let dir = TempDir::new().unwrap();
    fs::write(
        dir.path().join("texts.csv"),
        "id,text\na,The first text. It has two sentences.\nb,The second text. It also has two.\n",
    )
    .unwrap();
    let cfg = dir.path().join("sweep.toml");
    fs::write(&cfg, config("", GOOD_DATASET)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cram"))
        .args(["sweep", cfg.to_str().unwrap(), "--out"])
        .arg(dir.path().join("run"))
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("run/results.sqlite").is_file());
}

#[test]
fn malformed_toml() {
    expect_refused(&config("lr = ", GOOD_DATASET), &["sweep.toml", "line 5"]);
}

#[test]
fn unknown_top_level_key() {
    expect_refused(
        &config("lenghts = [8]", GOOD_DATASET),
        &["sweep.toml", "unknown field `lenghts`", "line 5"],
    );
}

#[test]
fn unknown_optimizer_key() {
    expect_refused(
        &config("", GOOD_DATASET).replace("max_steps = 3", "max_step = 3"),
        &["sweep.toml", "unknown field `max_step`"],
    );
}

#[test]
fn unknown_dataset_key() {
    expect_refused(
        &config(
            "",
            r#"source = { kind = "csv", path = "texts.csv", colum = "text" }"#,
        ),
        &["sweep.toml", "unknown field `colum`"],
    );
}

#[test]
fn missing_data_file() {
    expect_refused(
        &config("", r#"source = { kind = "csv", path = "nope.csv" }"#),
        &["data set `d`", "nope.csv", "no such file"],
    );
}

#[test]
fn missing_column() {
    expect_refused(
        &config(
            "",
            r#"source = { kind = "csv", path = "texts.csv", column = "body" }"#,
        ),
        &["data set `d`", "texts.csv", "no column `body`", "`text`"],
    );
}

#[test]
fn empty_dataset() {
    expect_refused(
        &config("", r#"source = { kind = "csv", path = "empty.csv" }"#),
        &["data set `d`", "empty.csv", "empty data set"],
    );
}

#[test]
fn fewer_texts_than_samples() {
    expect_refused(
        &config("", GOOD_DATASET).replace("samples = 2", "samples = 5"),
        &["data set `d` has 2 texts, fewer than samples = 5"],
    );
}

#[test]
fn length_beyond_the_context() {
    expect_refused(
        &config("", GOOD_DATASET).replace("lengths = [4]", "lengths = [4, 256]"),
        &["length 256 with 1 vector(s) exceeds the context length 256"],
    );
    // With a sink token in front of the vectors, one position less fits.
    expect_refused(
        &config(r#"sink = "auto""#, GOOD_DATASET).replace("lengths = [4]", "lengths = [4, 255]"),
        &["length 255 with 1 vector(s) and the sink token exceeds the context length 256"],
    );
}

#[test]
fn zero_vectors() {
    expect_refused(
        &config("", GOOD_DATASET).replace("n_mem = [1]", "n_mem = [1, 0]"),
        &["sweep.toml", "field `n_mem`", "entry 1 is 0"],
    );
}

#[test]
fn missing_model() {
    expect_refused(
        &config("", GOOD_DATASET).replace(
            &format!("[\"{}\"]", fixture_model().display()),
            "[\"/no/such/model\"]",
        ),
        &["model `/no/such/model`"],
    );
}

#[test]
fn dataset_without_texts() {
    expect_refused(
        &config("", ""),
        &["needs exactly one of `builtin`, `source`, `random`"],
    );
}
