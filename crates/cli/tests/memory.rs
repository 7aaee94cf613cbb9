//! `cram bench memory`: the estimate from shapes against the peak the
//! allocator measures during a real step on the CPU (composed path), on the
//! fixture models of every attention architecture.

mod support;
use support::*;

/// Runs `cram --kernels composed bench memory --measure --json` and returns
/// its JSON lines.
fn measure(fixture: &str, dtype: &str, batch: &str, len: &str) -> Vec<serde_json::Value> {
    let model = fixture_dir(fixture);
    let out = cram(
        &[
            "--quiet",
            "--kernels",
            "composed",
            "bench",
            "memory",
            "--model",
            path_str(&model),
            "--dtype",
            dtype,
            "--batch",
            batch,
            "--len",
            len,
            "--measure",
            "--json",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{fixture}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn estimate_is_within_20_percent_of_the_measured_peak() {
    // Sizes where activations, not fixed costs, make the peak: B=4 at 128
    // positions, and B=2 at 256 where the attention scores dominate (the
    // estimate counts one score tensor per layer: the composed attention
    // keeping the raw, scaled and masked scores too would be far above).
    // (The GPT-2, Pythia and OPT fixtures have a context of 128.)
    let long: &[(&str, &str)] = &[("4", "128"), ("2", "256")];
    let short: &[(&str, &str)] = &[("4", "128")];
    let cases = [
        ("llama_gqa_tied", "f32", long),
        ("llama_gqa_tied", "bf16", long),
        ("olmo_clip", "f32", long),
        ("gemma3_plain", "f32", long),
        ("gemma3_swa_softcap", "f32", long),
        ("gpt2_gelu_new", "f32", short),
        ("pythia_parallel", "f32", short),
        ("opt_postln", "f32", short),
    ];
    for (fixture, dtype, sizes) in cases {
        for &(batch, len) in sizes {
            for r in measure(fixture, dtype, batch, len) {
                let ratio = r["estimate_over_measured"].as_f64().unwrap();
                let measured = r["measured_activation_bytes"].as_u64().unwrap();
                assert!(measured > 1 << 20, "{fixture}: measured {measured} bytes");
                assert!(
                    (0.8..=1.2).contains(&ratio),
                    "{fixture} {dtype} B={batch} L={len}: estimate/measured = {ratio}"
                );
            }
        }
    }
}

#[test]
fn estimate_grows_with_batch_and_length_and_needs_no_measure() {
    let model = fixture_dir("llama_gqa_tied");
    let out = cram(
        &[
            "--quiet",
            "bench",
            "memory",
            "--model",
            path_str(&model),
            "--batch",
            "1,2",
            "--len",
            "64,128",
            "--json",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4);
    let act = |i: usize| rows[i]["estimate_activation_bytes"].as_u64().unwrap();
    // Rows: (L=64, B=1), (64, 2), (128, 1), (128, 2).
    assert_eq!(act(1), 2 * act(0), "linear in the batch");
    assert!(
        act(2) > 2 * act(0),
        "more than linear in the length (the scores)"
    );
    assert!(rows
        .iter()
        .all(|r| r["measured_activation_bytes"].is_null()));
}

#[test]
fn bad_requests_are_clear_errors() {
    let model = fixture_dir("llama_gqa_tied");
    let m = path_str(&model);
    // The fused CPU path is not the path the estimate describes.
    let out = cram(&["bench", "memory", "--model", m, "--measure"], &[]);
    expect_error(&out, &["--measure", "--kernels composed"]);
    let mamba = fixture_dir("mamba_tied");
    let out = cram(&["bench", "memory", "--model", path_str(&mamba)], &[]);
    expect_error(&out, &["no memory estimate", "mamba"]);
    let out = cram(&["bench", "memory", "--model", m, "--len", "100000"], &[]);
    expect_error(&out, &["--len", "context length"]);
}
