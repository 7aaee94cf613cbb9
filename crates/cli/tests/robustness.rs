//! Hostile input to every command family: crashes, hangs, NaN settings and
//! data loss that a sweep of malformed inputs found. Each case asserts the
//! exit code, the words of the message, that no panic text appears, and
//! that every existing output and store is unchanged byte for byte.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use support::*;
use tempfile::TempDir;

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The files that differ between two snapshots.
fn changed(a: &BTreeMap<PathBuf, Vec<u8>>, b: &BTreeMap<PathBuf, Vec<u8>>) -> Vec<PathBuf> {
    let keys: std::collections::BTreeSet<&PathBuf> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// Runs `cram` and checks the error contract and that `dir` is unchanged.
fn refused(dir: &Path, args: &[&str], needles: &[&str]) -> String {
    let before = snapshot(dir);
    let out = cram(args, &[]);
    let msg = expect_error(&out, needles);
    let diff = changed(&before, &snapshot(dir));
    assert!(diff.is_empty(), "{args:?} changed {diff:?}");
    msg
}

/// A command-line usage error (clap's: exit 2, the value named, no panic),
/// and `dir` unchanged.
fn refused_usage(dir: &Path, args: &[&str], needles: &[&str]) {
    let before = snapshot(dir);
    let out = cram(args, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{stderr:?} lacks {n:?}");
    }
    let diff = changed(&before, &snapshot(dir));
    assert!(diff.is_empty(), "{args:?} changed {diff:?}");
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    stderr
}

/// A GGUF file with one f32 tensor `token_embd.weight` `[4, 256]`, whose
/// two dimensions (u64, innermost first) are then overwritten with `dims`.
fn gguf_with_dims(path: &Path, dims: [u64; 2]) {
    use candle_core::quantized::QTensor;
    let t =
        candle_core::Tensor::zeros((4, 256), candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
    let q = QTensor::quantize(&t, candle_core::quantized::GgmlDType::F32).unwrap();
    cram_testkit::write_one_tensor_gguf(path, &q);
    let mut bytes = fs::read(path).unwrap();
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 2);
    for (i, d) in dims.iter().enumerate() {
        let o = at + 4 + 8 * i;
        bytes[o..o + 8].copy_from_slice(&d.to_le_bytes());
    }
    fs::write(path, bytes).unwrap();
}

#[test]
fn model_files_that_would_crash_or_exhaust_memory_are_refused() {
    let tmp = TempDir::new().unwrap();
    let over = tmp.path().join("overflow.gguf");
    gguf_with_dims(&over, [1 << 33, 1 << 33]);
    let zero = tmp.path().join("zero.gguf");
    gguf_with_dims(&zero, [256, 0]);
    let (_t1, layers) = fixture_copy("llama_gqa_tied");
    edit_config(&layers, |c| {
        c.insert("num_hidden_layers".into(), Json::from(1_000_000_000_000u64));
    });
    let (_t2, kv) = fixture_copy("llama_gqa_tied");
    edit_config(&kv, |c| {
        c.insert("num_key_value_heads".into(), Json::from(0));
    });
    let (_t3, hidden) = fixture_copy("llama_gqa_tied");
    edit_config(&hidden, |c| {
        c.insert("hidden_size".into(), Json::from(1u64 << 40));
    });
    let cases: &[(&Path, &[&str])] = &[
        (&over, &["overflow.gguf", "token_embd.weight", "overflows"]),
        (
            &zero,
            &["zero.gguf", "token_embd.weight", "a dimension is 0"],
        ),
        (&layers, &["config.json", "num_hidden_layers", "too large"]),
        (
            &kv,
            &["config.json", "`num_key_value_heads`", "must be positive"],
        ),
        (&hidden, &["config.json", "hidden_size", "too large"]),
    ];
    for (model, needles) in cases {
        for cmd in ["inspect", "generate"] {
            let mut args = vec![cmd, "--model", path_str(model)];
            if cmd == "generate" {
                args.extend(["--prompt", "hello"]);
            }
            refused(model.parent().unwrap(), &args, needles);
        }
    }
}

#[test]
fn devices_that_cannot_be_opened_are_errors() {
    let model = fixture_dir("llama_gqa_tied");
    let tmp = TempDir::new().unwrap();
    // This build has no CUDA (or this machine no driver): a clear error, never
    // a panic inside the CUDA loader.
    for (dev, needle) in [
        ("cuda", "cuda"),
        ("cuda:x", "cuda:N"),
        ("gpu", "unknown device"),
    ] {
        refused(
            tmp.path(),
            &["inspect", "--model", path_str(&model), "--device", dev],
            &["--device", needle],
        );
    }
}

/// `--text ... --tokens 8 --max-steps 10` on the tiny fixture, into `out`.
fn compress_args<'a>(model: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "compress",
        "--model",
        model,
        "--text",
        "hello world this is a test of the robustness",
        "--tokens",
        "8",
        "--max-steps",
        "10",
        "-o",
        out,
    ];
    if extra.contains(&"--max-steps") {
        a.retain(|x| *x != "--max-steps" && *x != "10");
    }
    a.extend_from_slice(extra);
    a
}

#[test]
fn compress_refuses_bad_settings_and_texts() {
    let model = fixture_dir("llama_gqa_tied");
    let model = path_str(&model);
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("x.safetensors");
    let out_s = path_str(&out);
    let bom = tmp.path().join("bom_empty.jsonl");
    fs::write(&bom, "\u{feff}{\"text\": \"first\"}\n{\"text\": \"   \"}\n").unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (&["--lr", "inf"], &["lr", "finite"]),
        (&["--lr", "NaN"], &["lr", "finite"]),
        (&["--lr=-1"], &["lr", "> 0"]),
        (&["--weight-decay", "nan"], &["weight_decay", "finite"]),
        (&["--min-lr", "nan"], &["min_lr", "finite"]),
        (&["--eps", "0"], &["eps", "> 0"]),
        (&["--beta1", "1"], &["beta1", "[0, 1)"]),
        (&["--max-steps", "0"], &["max_steps", "at least 1"]),
        (&["--sink", "no such token"], &["sink", "not a token"]),
        (&["--sink", "99999999"], &["sink", "outside the vocabulary"]),
        (
            &["--init", "token:99999999"],
            &["initialisation", "outside the vocabulary"],
        ),
    ];
    for (extra, needles) in cases {
        refused(tmp.path(), &compress_args(model, out_s, extra), needles);
        assert!(!out.exists());
    }
    // An empty text inside a file names the file and the line (the BOM of
    // the first line is accepted).
    let dir_out = tmp.path().join("outs");
    refused(
        tmp.path(),
        &[
            "compress",
            "--model",
            model,
            "--input",
            path_str(&bom),
            "--max-steps",
            "2",
            "-o",
            path_str(&dir_out),
        ],
        &["bom_empty.jsonl", "line 2", "empty text"],
    );
}

#[test]
fn jsonl_with_a_byte_order_mark_is_read() {
    let model = fixture_dir("llama_gqa_tied");
    let tmp = TempDir::new().unwrap();
    let input = tmp.path().join("bom.jsonl");
    fs::write(&input, "\u{feff}{\"text\": \"a first short text\"}\n").unwrap();
    let out = tmp.path().join("outs");
    ok(&cram(
        &[
            "compress",
            "--model",
            path_str(&model),
            "--input",
            path_str(&input),
            "--tokens",
            "6",
            "--max-steps",
            "2",
            "-o",
            path_str(&out),
        ],
        &[],
    ));
    assert!(out.join("00000.safetensors").exists());
}

/// Rewrites a vector file: its metadata through `meta`, its vectors
/// through `data`.
fn edit_memfile(path: &Path, meta: impl FnOnce(&mut Json), data: impl Fn(f32) -> f32) {
    use safetensors::tensor::{SafeTensors, TensorView};
    let bytes = fs::read(path).unwrap();
    let (_, md) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut info = md.metadata().clone().unwrap();
    let mut m: Json = serde_json::from_str(&info["cram"]).unwrap();
    meta(&mut m);
    info.insert("cram".into(), m.to_string());
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor("mem").unwrap();
    let vals: Vec<u8> = view
        .data()
        .chunks_exact(4)
        .flat_map(|c| data(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
        .collect();
    let v = TensorView::new(view.dtype(), view.shape().to_vec(), &vals).unwrap();
    let out = safetensors::serialize([("mem", v)], Some(info)).unwrap();
    fs::write(path, out).unwrap();
}

#[test]
fn decompress_checks_the_token_count_and_warns_of_non_finite_vectors() {
    let model = fixture_dir("llama_gqa_tied");
    let model = path_str(&model);
    let tmp = TempDir::new().unwrap();
    let good = tmp.path().join("good.safetensors");
    ok(&cram(&compress_args(model, path_str(&good), &[]), &[]));
    let f = tmp.path().join("sink.safetensors");
    fs::copy(&good, &f).unwrap();
    edit_memfile(&f, |m| m["layout"]["sink"] = 99_999_999.into(), |x| x);
    refused(
        tmp.path(),
        &["decompress", "--model", model, path_str(&f)],
        &["sink.safetensors", "layout.sink", "vocabulary"],
    );
    for n in [1_000_000_000u64, 5000, 0] {
        let f = tmp.path().join(format!("n{n}.safetensors"));
        fs::copy(&good, &f).unwrap();
        edit_memfile(&f, |m| m["n_tokens"] = n.into(), |x| x);
        refused(
            tmp.path(),
            &["decompress", "--model", model, path_str(&f)],
            &[&format!("n{n}.safetensors"), "n_tokens", "context length"],
        );
    }
    let nan = tmp.path().join("nan.safetensors");
    fs::copy(&good, &nan).unwrap();
    edit_memfile(&nan, |_| {}, |_| f32::NAN);
    let err = ok(&cram(
        &["decompress", "--model", model, path_str(&nan)],
        &[],
    ));
    assert!(
        err.contains("warning") && err.contains("NaN or infinite"),
        "{err}"
    );
}

#[test]
fn a_diverging_optimisation_stops_with_its_reason_and_the_file_stays_readable() {
    let model = fixture_dir("llama_gqa_tied");
    let model = path_str(&model);
    let tmp = TempDir::new().unwrap();
    // A huge learning rate, and a model whose weights hold a NaN.
    let (_t, nan_model) = fixture_copy("llama_gqa_tied");
    {
        use safetensors::tensor::{SafeTensors, TensorView};
        let path = nan_model.join("model.safetensors");
        let bytes = fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut data: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = Vec::new();
        for (name, v) in st.tensors() {
            let mut d = v.data().to_vec();
            if name == "model.norm.weight" {
                d[..4].copy_from_slice(&f32::NAN.to_le_bytes());
            }
            data.push((name, d, v.shape().to_vec(), v.dtype()));
        }
        let views: Vec<(String, TensorView)> = data
            .iter()
            .map(|(n, d, s, t)| (n.clone(), TensorView::new(*t, s.clone(), d).unwrap()))
            .collect();
        fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    }
    for (m, extra) in [
        (model, vec!["--lr", "1e30"]),
        (path_str(&nan_model), vec![]),
    ] {
        let out = tmp.path().join("d.safetensors");
        let _ = fs::remove_file(&out);
        let o = cram(
            &compress_args(m, path_str(&out), &[&extra[..], &["--json"]].concat()),
            &[],
        );
        ok(&o);
        let r: Json = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["stop_reason"], "diverged", "{r}");
        ok(&cram(&["decompress", "--model", m, path_str(&out)], &[]));
    }
}

#[test]
fn compress_resumes_and_never_overwrites_other_work() {
    let model = fixture_dir("llama_gqa_tied");
    let model = path_str(&model);
    let tmp = TempDir::new().unwrap();
    let input = tmp.path().join("texts.jsonl");
    fs::write(
        &input,
        "{\"text\": \"the first text\"}\n{\"text\": \"a second one\"}\n{\"text\": \"and a third\"}\n",
    )
    .unwrap();
    let out = tmp.path().join("outs");
    let args = [
        "compress",
        "--model",
        model,
        "--input",
        path_str(&input),
        "--max-steps",
        "3",
        "--json",
        "-o",
        path_str(&out),
    ];
    ok(&cram(&args, &[]));
    let first = snapshot(&out);
    assert_eq!(first.len(), 3);
    // As if interrupted after two texts: the third is done again, the first
    // two are kept as they are.
    let third = fs::read(out.join("00002.safetensors")).unwrap();
    fs::remove_file(out.join("00002.safetensors")).unwrap();
    let o = cram(&args, &[]);
    ok(&o);
    let kept: Vec<bool> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Json>(l).unwrap()["kept"] == true)
        .collect();
    assert_eq!(kept, [true, true, false]);
    let again = snapshot(&out);
    // The kept files are untouched; the third is the same vectors again
    // (its metadata holds its own timing).
    assert_eq!(changed(&first, &again), [out.join("00002.safetensors")]);
    let vectors = |b: &[u8]| b[b.len() - 64 * 4..].to_vec();
    assert_eq!(
        vectors(&third),
        vectors(&again[&out.join("00002.safetensors")])
    );
    // Other settings: refused, nothing changes; --overwrite replaces.
    let mut other = args.to_vec();
    other.extend(["--lr", "0.02"]);
    refused(
        tmp.path(),
        &other,
        &["00000.safetensors", "other settings", "--overwrite"],
    );
    other.push("--overwrite");
    ok(&cram(&other, &[]));
    assert_eq!(changed(&first, &snapshot(&out)).len(), 3);
    // A failed write leaves no temporary file behind (the target is a folder).
    let target = tmp.path().join("t.safetensors");
    fs::create_dir(&target).unwrap();
    let o = cram(
        &compress_args(model, path_str(&target), &["--overwrite"]),
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(!tmp.path().join("t.safetensors.tmp").exists());
}

/// A sweep configuration on the tiny fixture: 2 texts at length 6 (and 40,
/// longer than the texts), `extra` in `[optimizer]`.
fn sweep_config(dir: &Path, name: &str, optimizer: &str) -> PathBuf {
    fs::write(
        dir.join("texts.csv"),
        "id,text\na,The first text of the sweep.\nb,The second text of the sweep.\n",
    )
    .unwrap();
    let cfg = dir.join(name);
    fs::write(
        &cfg,
        format!(
            "models = [\"{}\"]\nlengths = [6, 40]\nn_mem = [1]\nsamples = 2\n\n[optimizer]\nmax_steps = 3\n{optimizer}\n\n[[datasets]]\nname = \"d\"\nsource = {{ kind = \"csv\", path = \"texts.csv\" }}\nchunk = \"whole\"\n",
            path_str(&fixture_dir("llama_gqa_tied"))
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn sweeps_store_diverged_cells_and_export_and_report_round_trip() {
    let tmp = TempDir::new().unwrap();
    let cfg = sweep_config(tmp.path(), "a.toml", "lr = 1e30");
    let text = fs::read_to_string(&cfg)
        .unwrap()
        .replace("max_steps = 3", "max_steps = 10");
    fs::write(&cfg, text).unwrap();
    let run = tmp.path().join("run");
    let err = ok(&cram(
        &["sweep", path_str(&cfg), "--out", path_str(&run)],
        &[],
    ));
    assert!(err.contains("fewer tokens than the length"), "{err}");
    let o = cram(&["check", path_str(&run), "--config", path_str(&cfg)], &[]);
    ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("diverged") && out.contains("shorter than their length"),
        "{out}"
    );
    // Resuming finds every cell there.
    let o = cram(&["sweep", path_str(&cfg), "--out", path_str(&run)], &[]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("(0 new, 4 already there)"));
    // Export and report read what the store holds, and their own exports.
    let jsonl = tmp.path().join("cells.jsonl");
    ok(&cram(
        &[
            "export",
            path_str(&run),
            "--format",
            "jsonl",
            "-o",
            path_str(&jsonl),
        ],
        &[],
    ));
    assert!(fs::read_to_string(&jsonl).unwrap().contains("null"));
    for input in [&run, &jsonl] {
        let rep = tmp.path().join("report");
        let _ = fs::remove_dir_all(&rep);
        ok(&cram(
            &["report", path_str(input), "-o", path_str(&rep)],
            &[],
        ));
        assert!(rep.join("index.html").exists());
    }
}

#[test]
fn run_folders_are_never_overwritten_or_written_by_readers() {
    let tmp = TempDir::new().unwrap();
    let a = sweep_config(tmp.path(), "a.toml", "");
    let b = sweep_config(tmp.path(), "b.toml", "lr = 0.02");
    let run = tmp.path().join("run");
    let run_s = path_str(&run);
    ok(&cram(&["sweep", path_str(&a), "--out", run_s], &[]));
    // Five `--new` runs in quick succession keep five old databases.
    for cfg in [&b, &a, &b, &a, &b] {
        ok(&cram(
            &["sweep", path_str(cfg), "--out", run_s, "--new"],
            &[],
        ));
    }
    let old = fs::read_dir(run.join("old")).unwrap().count();
    assert_eq!(old, 5);
    // The export does not write over the run's store.
    let db = run.join("results.sqlite");
    for target in [db.clone(), run.join("results.sqlite-wal")] {
        if target.exists() || target == db {
            refused(
                &run,
                &["export", run_s, "--format", "csv", "-o", path_str(&target)],
                &["refusing to overwrite"],
            );
        }
    }
    // Readers never write: a 0-byte store stays 0 bytes.
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    fs::write(empty.join("results.sqlite"), b"").unwrap();
    for args in [
        vec!["check", path_str(&empty)],
        vec!["export", path_str(&empty), "--format", "csv", "-o", "x.csv"],
        vec!["report", path_str(&empty), "-o", "rep"],
    ] {
        refused(
            &empty,
            &args,
            &["results.sqlite", "not a cram results database"],
        );
    }
    // `--new` moves a corrupt store aside and starts afresh.
    let bad = tmp.path().join("bad");
    fs::create_dir(&bad).unwrap();
    fs::write(
        bad.join("results.sqlite"),
        b"this is not a database at all, not even close",
    )
    .unwrap();
    ok(&cram(
        &["sweep", path_str(&a), "--out", path_str(&bad), "--new"],
        &[],
    ));
    let moved: Vec<_> = fs::read_dir(bad.join("old")).unwrap().collect();
    assert_eq!(moved.len(), 1);
    ok(&cram(
        &["check", path_str(&bad), "--config", path_str(&a)],
        &[],
    ));
    // Report thresholds outside (0, 1] are refused.
    for t in [
        "--threshold=2",
        "--threshold=-1",
        "--threshold=0",
        "--threshold=nan",
    ] {
        refused_usage(
            &run,
            &["report", run_s, "-o", path_str(&tmp.path().join("r")), t],
            &["--threshold", "(0, 1]"],
        );
    }
}

#[test]
fn a_second_sweep_on_the_same_run_is_refused_at_once_or_waits() {
    let tmp = TempDir::new().unwrap();
    let cfg = sweep_config(tmp.path(), "slow.toml", "lr = 0.01\npatience = 100000");
    // Slow enough to overlap: many steps.
    let text = fs::read_to_string(&cfg)
        .unwrap()
        .replace("max_steps = 3", "max_steps = 400");
    fs::write(&cfg, text).unwrap();
    let run = tmp.path().join("run");
    fs::create_dir(&run).unwrap();
    let bin = env!("CARGO_BIN_EXE_cram");
    let mut first = Command::new(bin)
        .args(["--quiet", "sweep", path_str(&cfg), "--out", path_str(&run)])
        .env("HF_HUB_OFFLINE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the first holds the lock (it writes its PID).
    let lock = run.join("results.sqlite.lock");
    let t0 = Instant::now();
    while fs::read_to_string(&lock)
        .unwrap_or_default()
        .trim()
        .is_empty()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the first sweep never locked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = first.id().to_string();
    let o = cram(&["sweep", path_str(&cfg), "--out", path_str(&run)], &[]);
    expect_error(&o, &["another cram process", &pid, "--wait"]);
    // With --wait, the second runs after the first and finds its cells.
    let o = cram(
        &["sweep", path_str(&cfg), "--out", path_str(&run), "--wait"],
        &[],
    );
    let status = first.wait().unwrap();
    assert!(status.success());
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("(0 new, 4 already there)"));
}
