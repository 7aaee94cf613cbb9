//! `cram capacity` through the binary, on the small random Llama fixture:
//! verified horizons, vector files that decompress to the horizon's
//! prefix, resuming, and the error contract.

mod support;

use std::path::Path;

use serde_json::Value as Json;
use support::{cram, fixture_dir};

/// Settings under which the 64-wide fixture model crams short texts into
/// 2 vectors in a few dozen steps.
const FAST: &[&str] = &["--mem", "2", "--lr", "0.1", "--beta2", "0.99"];

fn model() -> String {
    fixture_dir("llama_gqa_tied").display().to_string()
}

/// Three short texts in a JSONL file.
fn texts(dir: &Path) -> String {
    let path = dir.join("texts.jsonl");
    let lines = [
        r#"{"id": "a", "text": "The cat sat on the mat and looked at the door for a long time."}"#,
        r#"{"id": "b", "text": "A quick brown fox jumps over the lazy dog near the river bank."}"#,
        r#"{"id": "c", "text": "Rain fell on the old town while the bells rang out at noon."}"#,
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    path.display().to_string()
}

fn run(args: &[&str]) -> Vec<Json> {
    let o = cram(args, &[]);
    assert!(
        o.status.success(),
        "cram {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn capacity_args<'a>(input: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["capacity", "--input", input, "--out", out, "--json"];
    a.extend_from_slice(FAST);
    a.extend_from_slice(&["--max-tokens", "10", "--start", "2", "--batch", "2"]);
    a.extend_from_slice(extra);
    a
}

/// The run's JSON lines without the timings, by text.
fn stable(lines: &[Json]) -> Vec<Json> {
    let mut v: Vec<Json> = lines
        .iter()
        .map(|l| {
            let mut l = l.clone();
            l.as_object_mut().unwrap().remove("seconds");
            l.as_object_mut().unwrap().remove("file");
            l
        })
        .collect();
    v.sort_by_key(|l| l["index"].as_u64());
    v
}

/// Every file decompresses to exactly its horizon's prefix.
fn check_files(lines: &[Json]) {
    for l in lines {
        let h = l["horizon"].as_u64().unwrap() as usize;
        let Some(file) = l["file"].as_str() else {
            assert_eq!(h, 0, "a text with a horizon has a file: {l}");
            continue;
        };
        let d = run(&["decompress", "--model", &model(), file, "--json"]);
        assert_eq!(d[0]["matches_original"], true, "{file}: {}", d[0]);
        assert_eq!(d[0]["token_ids"].as_array().unwrap().len(), h, "{file}");
    }
}

#[test]
fn capacity_reports_verified_horizons_writes_decodable_vectors_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let input = texts(tmp.path());
    let out = tmp.path().join("run").display().to_string();
    let vecs = tmp.path().join("vecs").display().to_string();
    let model = model();
    let mut args = capacity_args(&input, &out, &["-o", &vecs]);
    args.extend_from_slice(&["--model", &model]);
    let first = run(&args);
    assert_eq!(first.len(), 3);
    for l in &first {
        for key in ["id", "horizon", "steps", "seconds", "stages", "n_tokens"] {
            assert!(!l[key].is_null(), "{key} missing: {l}");
        }
        let (h, n) = (
            l["horizon"].as_u64().unwrap(),
            l["n_tokens"].as_u64().unwrap(),
        );
        assert!(h >= 2 && h <= n && n == 10, "{l}");
        assert_eq!(l["saturated"], h == n);
    }
    check_files(&first);
    // Running again resumes: nothing left to do, the same results.
    let again = run(&args);
    assert_eq!(stable(&again), stable(&first));
    let check = cram(&["check", &out], &[]);
    assert!(check.status.success());
    assert!(String::from_utf8_lossy(&check.stdout).contains("3 done"));
    // The report's capacity section.
    let report = tmp.path().join("report");
    let o = cram(&["report", &out, "-o", report.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(page.contains("Capacity search") && page.contains("capacity_horizon"));
    let md = std::fs::read_to_string(report.join("capacity.md")).unwrap();
    let mean = first
        .iter()
        .map(|l| l["horizon"].as_f64().unwrap())
        .sum::<f64>()
        / 3.0;
    assert!(md.contains(&format!("| {mean:.1} |")), "{md}");
    // By default every text has its own basis with z of size 32.
    assert!(md.contains("low-dim 32 (own)"), "{md}");
    // Other settings in the same run folder are refused, naming the setting.
    let mut other = args.clone();
    other.extend_from_slice(&["--search", "step:1"]);
    let o = cram(&other, &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("capacity.search") && err.contains("another --out"),
        "{err}"
    );
    for (flag, value, key) in [
        ("--stage-warmup", "5", "capacity.stage_warmup"),
        ("--schedule", "text", "capacity.schedule"),
        ("--patience-from", "start", "capacity.patience_from"),
        ("--tolerance", "10", "capacity.tolerance"),
        ("--low-dim", "0", "low_dim"),
    ] {
        let mut other = args.clone();
        other.extend_from_slice(&[flag, value]);
        let o = cram(&other, &[]);
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn stages_that_fail_still_yield_verified_prefixes() {
    // Budgets far too small to reach 10 tokens: every horizon comes from
    // the decoding of a stage's best vectors, and still decodes exactly
    // (later stages with the learning rate's ramp).
    let tmp = tempfile::tempdir().unwrap();
    let input = texts(tmp.path());
    let model = model();
    for search in ["gallop", "climb", "step:3"] {
        let out = tmp
            .path()
            .join(search.replace(':', ""))
            .display()
            .to_string();
        let vecs = tmp.path().join(format!("v-{}", search.replace(':', "")));
        let vecs = vecs.display().to_string();
        let mut args = capacity_args(
            &input,
            &out,
            &[
                "--stage-steps",
                "3",
                "--stage-patience",
                "2",
                "--budget",
                "12",
                "--stage-warmup",
                "2",
            ],
        );
        args.extend_from_slice(&["--model", &model, "--search", search, "-o", &vecs]);
        // The other patience baseline and a tolerance work the same way.
        match search {
            "gallop" => args.extend_from_slice(&["--tolerance", "20"]),
            "step:3" => args.extend_from_slice(&["--patience-from", "start"]),
            _ => {}
        }
        let trace = tmp
            .path()
            .join(format!("trace-{}.jsonl", search.replace(':', "")));
        let trace_arg = trace.display().to_string();
        args.extend_from_slice(&["--trace", &trace_arg]);
        let lines = run(&args);
        assert_eq!(lines.len(), 3);
        for l in &lines {
            assert!(l["steps"].as_u64().unwrap() <= 12, "{l}");
        }
        check_files(&lines);
        check_trace(&trace, &lines, 2);
    }
}

/// The trace holds every step of every text: as many lines as the texts'
/// steps, each stage's steps numbered from 1, a learning rate on every
/// step but a stage's last, and no stage going on past its patience.
fn check_trace(trace: &Path, texts: &[Json], patience: u64) {
    let rows: Vec<Json> = std::fs::read_to_string(trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: u64 = texts.iter().map(|l| l["steps"].as_u64().unwrap()).sum();
    assert_eq!(rows.len() as u64, steps);
    let mut stages: std::collections::BTreeMap<(u64, u64), Vec<&Json>> = Default::default();
    for r in &rows {
        let key = (r["index"].as_u64().unwrap(), r["stage"].as_u64().unwrap());
        stages.entry(key).or_default().push(r);
    }
    for l in texts {
        let index = l["index"].as_u64().unwrap();
        let n = stages.keys().filter(|k| k.0 == index).count() as u64;
        assert_eq!(n, l["stages"].as_u64().unwrap(), "{l}");
    }
    for (key, rs) in &stages {
        for (i, r) in rs.iter().enumerate() {
            assert_eq!(r["stage_step"].as_u64().unwrap(), i as u64 + 1, "{key:?}");
            assert_eq!(r["lr"].is_null(), i + 1 == rs.len(), "{key:?}: {r}");
            assert!(r["stalled"].as_u64().unwrap() <= patience, "{r}");
            assert!(r["correct_prefix"].as_u64().unwrap() <= r["target"].as_u64().unwrap());
        }
    }
}

#[test]
fn bad_capacity_settings_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let input = texts(tmp.path());
    let out = tmp.path().join("run").display().to_string();
    let model = model();
    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.display().to_string();
    for (extra, input, want) in [
        (vec!["--search", "bisect"], &input, "unknown search"),
        (vec!["--search", "step:0"], &input, "step:K"),
        (vec!["--budget", "0"], &input, "--budget"),
        (
            vec!["--patience-from", "first"],
            &input,
            "patience baseline",
        ),
        (vec!["--max-tokens", "0"], &input, "--max-tokens"),
        (vec!["--batch", "0"], &input, "--batch"),
        (vec!["--texts", "0"], &input, "--texts"),
        (vec!["--lr", "NaN"], &input, "lr"),
        (vec!["--low-dim", "0", "--basis", "own"], &input, "--basis"),
        (vec!["--fit-tokens", "6"], &input, "--fit-tokens"),
        (vec![], &empty, "empty.jsonl"),
    ] {
        let mut args = vec![
            "capacity", "--model", &model, "--input", input, "--out", &out,
        ];
        args.extend_from_slice(&extra);
        let o = cram(&args, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_capacity_sweep_runs_its_units_in_shards_and_reports_them() {
    let tmp = tempfile::tempdir().unwrap();
    texts(tmp.path());
    let config = tmp.path().join("capacity.toml");
    std::fs::write(
        &config,
        format!(
            r#"models = ["{}"]
n_mem = [2]
samples = 3
batch_size = 2
protocol = "cram"
[optimizer]
lr = 0.1
beta2 = 0.99
[capacity]
search = ["gallop", "step:2"]
max_tokens = 10
start = 2
low_dim = [0, 16]
basis = "learned"
fit_tokens = 6
[[datasets]]
name = "short"
chunk = "whole"
source = {{ kind = "jsonl", path = "texts.jsonl" }}
"#,
            model().replace('\\', "/")
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let out = tmp.path().join("run").display().to_string();
    for shard in ["0/2", "1/2"] {
        let o = cram(
            &["--quiet", "sweep", &config, "--out", &out, "--shard", shard],
            &[],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // Four units (searches × full and low-dimensional vectors), each with
    // two shard databases; both shards of a low-dimensional unit fitted the
    // same basis.
    let units: Vec<_> = std::fs::read_dir(tmp.path().join("run/capacity"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(units.len(), 4, "{units:?}");
    let low: Vec<_> = units
        .iter()
        .filter(|u| u.to_string_lossy().ends_with("__k16-learned"))
        .collect();
    assert_eq!(low.len(), 2, "{units:?}");
    for u in low {
        let a = std::fs::read(u.join("basis-shard-0-of-2.safetensors")).unwrap();
        let b = std::fs::read(u.join("basis-shard-1-of-2.safetensors")).unwrap();
        assert_eq!(a, b, "{}", u.display());
    }
    for u in &units {
        assert_eq!(
            std::fs::read_dir(u)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".sqlite")
                })
                .count(),
            2
        );
    }
    let o = cram(&["check", &out, "--config", &config], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("12 done"));
    let report = tmp.path().join("report");
    let o = cram(&["report", &out, "-o", report.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(report.join("capacity.md")).unwrap();
    assert_eq!(md.lines().count(), 6, "four units: {md}");
    assert!(
        md.contains("gallop · cram · 2 vectors · lr")
            && md.contains("step:2 · cram")
            && md.contains("2 vectors · low-dim 16 (learned)"),
        "{md}"
    );
    // `lengths` in a capacity sweep is a configuration error.
    let bad = tmp.path().join("bad.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &bad,
        text.replace("samples = 3", "samples = 3\nlengths = [8]"),
    )
    .unwrap();
    let o = cram(&["sweep", bad.to_str().unwrap(), "--out", &out], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("lengths"));
    // An own basis fits nothing: the fitting fields are refused by name,
    // as their flags are, and nothing of the run is touched.
    let db = units[0].join("capacity-shard-0-of-2.sqlite");
    let before = std::fs::read(&db).unwrap();
    for (fit, field) in [
        ("fit_tokens = 6", "capacity.fit_tokens"),
        ("z_start = \"zero\"", "capacity.z_start"),
    ] {
        let own = text
            .replace("basis = \"learned\"", "basis = \"own\"")
            .replace("fit_tokens = 6", fit);
        std::fs::write(&bad, own).unwrap();
        let o = cram(&["sweep", bad.to_str().unwrap(), "--out", &out], &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains(field) && err.contains("bad.toml") && err.contains("own basis"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

#[test]
fn low_dimensional_capacity_runs_keep_their_basis_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let input = texts(tmp.path());
    let model = model();
    let full = tmp.path().join("full").display().to_string();
    let mut args = capacity_args(&input, &full, &["--low-dim", "0"]);
    args.extend_from_slice(&["--model", &model]);
    run(&args);
    let pca = format!("pca:{full}");
    for (basis, k, fit) in [("learned", "16", "6"), (pca.as_str(), "4", "")] {
        let name = basis.split(':').next().unwrap();
        let out = tmp.path().join(name).display().to_string();
        let vecs = tmp.path().join(format!("v-{name}")).display().to_string();
        let mut args = capacity_args(&input, &out, &["-o", &vecs]);
        args.extend_from_slice(&["--model", &model, "--low-dim", k, "--basis", basis]);
        if !fit.is_empty() {
            args.extend_from_slice(&["--fit-tokens", fit]);
        }
        let first = run(&args);
        assert_eq!(first.len(), 3);
        assert!(
            first.iter().any(|l| l["horizon"].as_u64().unwrap() >= 2),
            "{basis}: {first:?}"
        );
        assert!(Path::new(&out).join("basis.safetensors").exists());
        check_files(&first);
        let again = run(&args);
        assert_eq!(stable(&again), stable(&first), "{basis}");
        let check = cram(&["check", &out], &[]);
        assert!(check.status.success(), "{basis}");
        // Another basis in the same run folder is refused.
        let mut other = args.clone();
        let at = other.iter().position(|a| *a == k).unwrap();
        other[at] = "3";
        let o = cram(&other, &[]);
        assert_eq!(o.status.code(), Some(2), "{basis}");
        // The run's checkpoints need its basis: `cram check` names a
        // damaged one.
        let file = Path::new(&out).join("basis.safetensors");
        let mut bytes = std::fs::read(&file).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0x10;
        std::fs::write(&file, bytes).unwrap();
        let o = cram(&["check", &out], &[]);
        assert_eq!(o.status.code(), Some(2), "{basis}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("basis.safetensors"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn a_learned_basis_starts_its_fitted_texts_from_their_fitted_z_at_the_fitting_length() {
    let tmp = tempfile::tempdir().unwrap();
    let input = texts(tmp.path());
    let model = model();
    // A run (name, z start, extra flags): its lines and, per text, its
    // first traced step.
    let go = |name: &str, z_start: &str, extra: &[&str]| {
        let out = tmp.path().join(name).display().to_string();
        let trace = tmp.path().join(format!("{name}.trace"));
        let trace_s = trace.display().to_string();
        let mut args = vec!["capacity", "--model", &model, "--input", &input];
        args.extend_from_slice(&["--out", &out, "--json", "--trace", &trace_s]);
        args.extend_from_slice(FAST);
        args.extend_from_slice(&["--max-tokens", "10", "--batch", "2", "--low-dim", "16"]);
        args.extend_from_slice(&["--basis", "learned"]);
        args.extend_from_slice(&["--fit-tokens", "6", "--z-start", z_start]);
        args.extend_from_slice(extra);
        let lines = run(&args);
        let first: std::collections::BTreeMap<u64, Json> = std::fs::read_to_string(&trace)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Json>(l).unwrap())
            .filter(|r| r["stage"] == 0 && r["stage_step"] == 1)
            .map(|r| (r["index"].as_u64().unwrap(), r))
            .collect();
        (lines, first)
    };
    let vecs = tmp.path().join("vectors").display().to_string();
    let (fitted_lines, fitted) = go("fitted", "fitted", &["-o", &vecs]);
    let (_, zero) = go("zero", "zero", &[]);
    let (_, zero6) = go("zero6", "zero", &["--start", "6"]);
    assert_eq!(fitted.len(), 3);
    // Under `fitted` the search starts at the fitting length; under `zero`
    // at gallop's 8 (the texts are 10 tokens at most).
    for r in fitted.values() {
        assert_eq!(r["target"], 6, "{r}");
    }
    for r in zero.values() {
        assert_eq!(r["target"], 8, "{r}");
    }
    // The two fitting texts (the first --batch) start where the fit left
    // them: below the loss of z = 0 on the same 6 tokens; the third did
    // not fit the basis and starts from 0 either way.
    let loss = |r: &Json| r["loss"].as_f64().unwrap();
    for i in [0, 1] {
        assert!(
            loss(&fitted[&i]) < loss(&zero6[&i]),
            "text {i}: fitted {} vs zero {}",
            fitted[&i],
            zero6[&i]
        );
    }
    // (equal up to the batch's rounding: its batch mates differ)
    let (a, b) = (loss(&fitted[&2]), loss(&zero6[&2]));
    assert!((a - b).abs() <= 1e-5 * b, "text 2 did not fit: {a} vs {b}");
    check_files(&fitted_lines);
}

#[test]
fn an_own_basis_run_writes_plain_vector_files_resumes_and_feeds_a_pca_basis() {
    let tmp = tempfile::tempdir().unwrap();
    let input = texts(tmp.path());
    let model = model();
    let out = tmp.path().join("own").display().to_string();
    let vecs = tmp.path().join("v-own").display().to_string();
    let mut args = capacity_args(&input, &out, &["-o", &vecs]);
    args.extend_from_slice(&["--model", &model, "--low-dim", "8", "--basis", "own"]);
    let first = run(&args);
    assert_eq!(first.len(), 3);
    assert!(
        first.iter().any(|l| l["horizon"].as_u64().unwrap() >= 2),
        "{first:?}"
    );
    // Every text has its own basis: no shared basis file anywhere, and
    // the vector files decode alone.
    assert!(!Path::new(&out).join("basis.safetensors").exists());
    assert!(!Path::new(&vecs).join("basis.safetensors").exists());
    check_files(&first);
    let again = run(&args);
    assert_eq!(stable(&again), stable(&first));
    assert!(cram(&["check", &out], &[]).status.success());
    // The report names the own basis.
    let report = tmp.path().join("report");
    let o = cram(&["report", &out, "-o", report.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(report.join("capacity.md")).unwrap();
    assert!(md.contains("low-dim 8 (own)"), "{md}");
    // A checkpoint of another size than the settings' [z, W, b] (a damaged
    // run) is an error naming the database, not a panic.
    let copy = tmp.path().join("own-damaged");
    std::fs::create_dir_all(&copy).unwrap();
    let db = copy.join("capacity.sqlite");
    std::fs::copy(Path::new(&out).join("capacity.sqlite"), &db).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE texts SET params = substr(params, 1, 16) WHERE text_index = 1",
        [],
    )
    .unwrap();
    drop(conn);
    let damaged = copy.display().to_string();
    let mut again = capacity_args(&input, &damaged, &[]);
    again.extend_from_slice(&["--model", &model, "--low-dim", "8", "--basis", "own"]);
    let o = cram(&again, &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("capacity.sqlite") && err.contains("checkpoint holds 4 numbers"),
        "{err}"
    );
    // The run's vectors are full vectors: a PCA basis fits on them.
    let pca_out = tmp.path().join("pca").display().to_string();
    let pca = format!("pca:{out}");
    let mut args = capacity_args(&input, &pca_out, &[]);
    args.extend_from_slice(&["--model", &model, "--low-dim", "1", "--basis", &pca]);
    let lines = run(&args);
    assert_eq!(lines.len(), 3);
}
