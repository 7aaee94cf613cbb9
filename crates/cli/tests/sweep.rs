//! Sweeps on the small Llama fixture: the grid, the results store, resume,
//! shards and merge, export, and the configuration's rules.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cram::store::{load_run, CellRecord, RunRecords, Store};
use cram::sweep::{differing_keys, shard_from_env, CellKey, Grid, Shard, SweepConfig};
use tempfile::TempDir;

fn fixture_model() -> PathBuf {
    Path::new(cram_testkit::REPO_ROOT).join("tests/fixtures/llama_gqa_tied")
}

const TEXTS_CSV: &str = "id,text\n\
a,The keeper of the lighthouse walked along the rocky shore. He counted the boats. The gulls cried over the harbour all evening long.\n\
b,A small boat drifted past the harbour. The fishermen waved. The wind rose and the waves grew higher until night fell on the bay.\n\
c,In the morning the village woke. Bread was baking. The smell of wet grass came in through every open window of the houses.\n\
d,The train left the station late. Nobody minded. The passengers read their papers and watched the fields roll past the windows.\n";

/// A configuration on the fixture model: 2 data sets x (length 4: n_mem 1,
/// 2; length 8: n_mem 1, 2, 8; n_mem 8 > 4 is skipped) x 3 samples = 30
/// cells, in batches of 2.
fn config(lr: f64, lengths: &str) -> String {
    format!(
        r#"
name = "fixture"
models = ["{model}"]
lengths = {lengths}
n_mem = [1, 2, 8]
samples = 3
batch_size = 2
seed = 7
loss = "full"

[optimizer]
lr = {lr}
max_steps = 12
patience = 100

[[datasets]]
name = "texts"
source = {{ kind = "csv", path = "texts.csv", column = "text" }}

[[datasets]]
name = "random"
random = {{ variable_length = true, seed = 3 }}
"#,
        model = fixture_model().display()
    )
}

/// A folder with `sweep.toml` (the default configuration) and its data.
fn setup() -> (TempDir, PathBuf) {
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join("texts.csv"), TEXTS_CSV).unwrap();
    let cfg = dir.path().join("sweep.toml");
    fs::write(&cfg, config(0.05, "[4, 8]")).unwrap();
    (dir, cfg)
}

fn cram(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cram"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("SLURM_ARRAY_TASK_COUNT")
        .env_remove("SLURM_ARRAY_TASK_MIN")
        .env_remove("JOB_COMPLETION_INDEX")
        .env("HF_HUB_OFFLINE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("cannot run the cram binary")
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "cram failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn err_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit status; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line expected:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    println!("{}", lines[0]);
    lines[0].to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn sweep(cfg: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec!["sweep", s(cfg), "--out", s(out), "--quiet"];
    args.extend_from_slice(extra);
    cram(&args, env)
}

/// The grid of a configuration file, computed by the library.
fn grid_keys(cfg: &Path) -> HashSet<CellKey> {
    let (c, _) = SweepConfig::from_file(cfg).unwrap();
    let datasets = c.load_datasets(cfg.parent().unwrap()).unwrap();
    let g = Grid::new(&c, &datasets);
    g.keys(&g.chunks).into_iter().collect()
}

fn keys(run: &RunRecords) -> HashSet<CellKey> {
    run.cells.iter().map(CellRecord::key).collect()
}

#[test]
fn sweep_fills_the_grid_and_resumes_without_redoing_cells() {
    let (dir, cfg) = setup();
    let out = dir.path().join("run");
    let stdout = ok(sweep(&cfg, &out, &[], &[]));
    let _ = stdout;
    let run = load_run(&out).unwrap();
    let want = grid_keys(&cfg);
    assert_eq!(
        want.len(),
        30,
        "2 datasets x 5 (length, n_mem) pairs x 3 samples"
    );
    assert_eq!(run.cells.len(), 30);
    assert_eq!(keys(&run), want);
    assert!(
        run.cells.iter().all(|c| c.cell.n_mem <= c.grid_length),
        "cells with more vectors than tokens are skipped"
    );
    assert_eq!(run.config_toml, fs::read_to_string(&cfg).unwrap());
    for c in &run.cells {
        assert_eq!(c.loss_curve.len(), c.steps, "{:?}", c.key());
        assert_eq!(c.accuracy_curve.len(), c.steps);
        assert!(c.steps >= 1 && c.steps <= 12);
        assert_eq!(c.token_ids.len(), c.cell.length);
        assert!(c.cell.length <= c.grid_length);
        assert_eq!(c.text_hash, cram::memfile::tokens_sha256(&c.token_ids));
        assert_eq!(c.decoded_ids.len(), c.cell.n_predicted);
        assert_eq!(c.cell.hidden_size, 64);
        assert_eq!(c.cell.vocab_size, 400);
        assert!((0.0..=1.0).contains(&c.cell.best_accuracy));
        assert_eq!(
            c.cell.best_accuracy as f32,
            c.accuracy_curve.iter().cloned().fold(0.0f32, f32::max),
            "the kept vectors have the best accuracy of the curve"
        );
        assert_eq!(c.cram_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(c.config_hash, run.config_hash);
        assert_eq!(c.exact, c.first_mismatch.is_none());
    }
    // Fixed texts are the CSV's first 3 rows; random texts get variable
    // budgets.
    let ids: HashSet<&str> = run
        .cells
        .iter()
        .filter(|c| c.cell.dataset == "texts")
        .map(|c| c.cell.sample_id.as_str())
        .collect();
    assert_eq!(ids, HashSet::from(["a", "b", "c"]));
    // The vectors are stored: [n_mem, 64].
    let st = Store::open_existing(&out.join("results.sqlite")).unwrap();
    let v = st.vectors(&run.cells[0].key()).unwrap().unwrap();
    assert_eq!(v.len(), run.cells[0].cell.n_mem * 64);
    drop(st);

    // Resume: nothing to do, nothing changes.
    let stdout = ok(cram(&["sweep", s(&cfg), "--out", s(&out)], &[]));
    assert!(stdout.contains("(0 new, 30 already there)"), "{stdout}");
    let again = load_run(&out).unwrap();
    assert_eq!(again.cells, run.cells);
    let check = ok(cram(&["check", s(&out), "--config", s(&cfg)], &[]));
    assert!(check.contains("the grid's 30 cells complete"), "{check}");
}

#[test]
fn a_resumed_run_finishes_only_the_missing_cells() {
    let (dir, cfg) = setup();
    let out = dir.path().join("run");
    ok(sweep(&cfg, &out, &[], &[]));
    let full = load_run(&out).unwrap();
    // Delete some cells, as if the run had been killed.
    let db = out.join("results.sqlite");
    {
        let conn = rusqlite_delete(&db);
        assert_eq!(conn, 10);
    }
    assert_eq!(load_run(&out).unwrap().cells.len(), 20);
    let stdout = ok(cram(&["sweep", s(&cfg), "--out", s(&out)], &[]));
    assert!(stdout.contains("(10 new, 20 already there)"), "{stdout}");
    let resumed = load_run(&out).unwrap();
    assert_eq!(keys(&resumed), keys(&full));
    // Same seeds, same batches: the redone cells give the same results.
    for (a, b) in resumed.cells.iter().zip(&full.cells) {
        assert_eq!(a.key(), b.key());
        assert_eq!(a.text_hash, b.text_hash);
        assert_eq!(a.steps, b.steps, "{:?}", a.key());
        assert!((a.cell.best_loss - b.cell.best_loss).abs() < 1e-5);
    }
}

/// Deletes the `length = 8, n_mem = 2` cells and one more; returns how many.
fn rusqlite_delete(db: &Path) -> usize {
    // The store has no delete API (cells are only ever added); go through
    // SQLite directly, as a crash would leave the file.
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute(
        "DELETE FROM cells WHERE (length = 8 AND n_mem = 2) OR id IN (SELECT id FROM cells WHERE length = 4 ORDER BY id LIMIT 4)",
        [],
    )
    .unwrap()
}

#[test]
fn a_changed_configuration_is_refused_unless_new() {
    let (dir, cfg) = setup();
    let out = dir.path().join("run");
    ok(sweep(&cfg, &out, &[], &[]));
    let changed = dir.path().join("changed.toml");
    fs::write(&changed, config(0.07, "[4, 8, 16]")).unwrap();
    let line = err_line(&sweep(&changed, &out, &[], &[]));
    assert!(
        line.contains("differing keys: lengths, optimizer.lr"),
        "{line}"
    );
    assert!(line.contains("--new"), "{line}");
    // Layout and comments do not matter; the canonical configuration does.
    let same = dir.path().join("same.toml");
    fs::write(
        &same,
        format!("# a comment\n{}", config(0.05, "[4,  8]")).replace("seed = 7", "seed = 7 # seed"),
    )
    .unwrap();
    ok(sweep(&same, &out, &[], &[]));
    // --new moves the old database aside and starts again.
    ok(sweep(&changed, &out, &["--new"], &[]));
    let run = load_run(&out).unwrap();
    assert_eq!(keys(&run), grid_keys(&changed));
    let old: Vec<_> = fs::read_dir(out.join("old")).unwrap().collect();
    assert_eq!(old.len(), 1);
    let old_path = old[0].as_ref().unwrap().path();
    let st = Store::open_existing(&old_path).unwrap();
    assert_eq!(st.count().unwrap(), 30, "the old run is kept whole");
}

#[test]
fn three_shards_merge_into_exactly_the_unsharded_grid() {
    let (dir, cfg) = setup();
    let whole = dir.path().join("whole");
    ok(sweep(&cfg, &whole, &[], &[]));
    let whole_run = load_run(&whole).unwrap();
    // Three shards at once, as separate processes, each choosing its shard
    // another way.
    let shard_dirs: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("s{i}"))).collect();
    let spawn = |i: usize, extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cram"));
        cmd.args(["sweep", s(&cfg), "--out", s(&shard_dirs[i]), "--quiet"])
            .args(extra)
            .env_remove("SLURM_ARRAY_TASK_ID")
            .env_remove("SLURM_ARRAY_TASK_COUNT")
            .env_remove("SLURM_ARRAY_TASK_MIN")
            .env_remove("JOB_COMPLETION_INDEX");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    };
    let children = vec![
        spawn(0, &["--shard", "0/3"], &[]),
        spawn(
            1,
            &[],
            &[
                ("SLURM_ARRAY_TASK_ID", "2"),
                ("SLURM_ARRAY_TASK_MIN", "1"),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
            ],
        ),
        spawn(2, &["--shards", "3"], &[("JOB_COMPLETION_INDEX", "2")]),
    ];
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let mut total = 0;
    let mut union = HashSet::new();
    for (i, d) in shard_dirs.iter().enumerate() {
        let db = d.join(format!("results-shard-{i}-of-3.sqlite"));
        assert!(db.is_file(), "{}", db.display());
        let run = load_run(d).unwrap();
        assert!(!run.cells.is_empty());
        assert!(run
            .cells
            .iter()
            .all(|c| c.shard.as_deref() == Some(&format!("{i}/3")[..])));
        total += run.cells.len();
        union.extend(keys(&run));
    }
    assert_eq!(total, 30, "shards are disjoint");
    assert_eq!(union, keys(&whole_run));

    let merged = dir.path().join("merged");
    let mut args = vec!["merge"];
    args.extend(shard_dirs.iter().map(|d| s(d)));
    args.extend(["-o", s(&merged)]);
    let stdout = ok(cram(&args, &[]));
    assert!(stdout.contains("30 cells (30 added"), "{stdout}");
    // Idempotent.
    let stdout = ok(cram(&args, &[]));
    assert!(stdout.contains("30 cells (0 added"), "{stdout}");
    let m = load_run(&merged).unwrap();
    assert_eq!(m.config_hash, whole_run.config_hash);
    assert_eq!(m.cells.len(), 30);
    for (a, b) in m.cells.iter().zip(&whole_run.cells) {
        assert_eq!(a.key(), b.key());
        assert_eq!(a.text_hash, b.text_hash);
        assert_eq!(a.steps, b.steps, "{:?}", a.key());
        assert_eq!(a.cell.best_accuracy, b.cell.best_accuracy);
        assert!((a.cell.best_loss - b.cell.best_loss).abs() < 1e-5);
    }
    ok(cram(&["check", s(&merged), "--config", s(&cfg)], &[]));
    // load_run also reads shards side by side in one folder.
    let side = dir.path().join("side");
    fs::create_dir_all(&side).unwrap();
    for (i, d) in shard_dirs.iter().enumerate() {
        let name = format!("results-shard-{i}-of-3.sqlite");
        let st = Store::open_existing(&d.join(&name)).unwrap();
        st.checkpoint_and_close().unwrap();
        fs::copy(d.join(&name), side.join(&name)).unwrap();
    }
    assert_eq!(keys(&load_run(&side).unwrap()), keys(&whole_run));

    // A run of another configuration is refused.
    let other_cfg = dir.path().join("other.toml");
    fs::write(&other_cfg, config(0.05, "[4]")).unwrap();
    let other = dir.path().join("other");
    ok(sweep(&other_cfg, &other, &[], &[]));
    let line = err_line(&cram(
        &["merge", s(&whole), s(&other), "-o", s(&merged)],
        &[],
    ));
    assert!(line.contains("different configurations"), "{line}");
    assert!(line.contains("lengths"), "{line}");
}

#[test]
fn export_writes_one_row_per_cell_in_every_format() {
    let (dir, cfg) = setup();
    let out = dir.path().join("run");
    ok(sweep(&cfg, &out, &[], &[]));
    let run = load_run(&out).unwrap();
    let n = run.cells.len();

    let csv_path = dir.path().join("cells.csv");
    ok(cram(
        &["export", s(&out), "--format", "csv", "-o", s(&csv_path)],
        &[],
    ));
    let mut rdr = csv::Reader::from_path(&csv_path).unwrap();
    let headers = rdr.headers().unwrap().clone();
    assert_eq!(headers.len(), cram_report::export::COLUMNS.len());
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), n);
    for (r, c) in rows.iter().zip(&run.cells) {
        assert_eq!(&r[col("sample_id")], c.cell.sample_id);
        assert_eq!(
            r[col("best_accuracy")].parse::<f64>().unwrap(),
            c.cell.best_accuracy
        );
        assert_eq!(r[col("length")].parse::<usize>().unwrap(), c.grid_length);
        let curve: Vec<f32> = serde_json::from_str(&r[col("loss_curve")]).unwrap();
        assert_eq!(curve, c.loss_curve);
    }

    let jsonl = dir.path().join("cells.jsonl");
    ok(cram(
        &["export", s(&out), "--format", "jsonl", "-o", s(&jsonl)],
        &[],
    ));
    let lines: Vec<serde_json::Value> = fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), n);
    assert_eq!(lines[0]["n_mem"], run.cells[0].cell.n_mem);
    assert_eq!(
        lines[0]["token_gain"].as_f64().unwrap(),
        run.cells[0].cell.token_gain()
    );

    let pq = dir.path().join("cells.parquet");
    ok(cram(
        &["export", s(&out), "--format", "parquet", "-o", s(&pq)],
        &[],
    ));
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let reader = SerializedFileReader::new(fs::File::open(&pq).unwrap()).unwrap();
    assert_eq!(reader.metadata().file_metadata().num_rows() as usize, n);
    let mut rows = 0;
    for (row, c) in reader.get_row_iter(None).unwrap().zip(&run.cells) {
        let row = row.unwrap();
        let fields: BTreeMap<String, Field> = row
            .get_column_iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(fields.len(), cram_report::export::COLUMNS.len());
        assert_eq!(fields["model"], Field::Str(c.cell.model.clone()));
        assert_eq!(fields["n_mem"], Field::Long(c.cell.n_mem as i64));
        assert_eq!(fields["best_accuracy"], Field::Double(c.cell.best_accuracy));
        assert_eq!(fields["exact"], Field::Bool(c.exact));
        match &fields["first_mismatch"] {
            Field::Null => assert!(c.first_mismatch.is_none()),
            Field::Long(x) => assert_eq!(Some(*x as usize), c.first_mismatch),
            other => panic!("first_mismatch: {other:?}"),
        }
        let Field::ListInternal(list) = &fields["loss_curve"] else {
            panic!("loss_curve is not a list: {:?}", fields["loss_curve"]);
        };
        let curve: Vec<f32> = list
            .elements()
            .iter()
            .map(|f| match f {
                Field::Float(x) => *x,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(curve, c.loss_curve);
        rows += 1;
    }
    assert_eq!(rows, n);
}

#[test]
fn the_store_refuses_a_duplicate_cell_and_keeps_batches_whole() {
    let (dir, cfg) = setup();
    let out = dir.path().join("run");
    ok(sweep(&cfg, &out, &[], &[]));
    let run = load_run(&out).unwrap();
    let mut st = Store::open_existing(&out.join("results.sqlite")).unwrap();
    let fresh = {
        let mut c = run.cells[1].clone();
        c.cell.sample_id = "new-sample".into();
        c
    };
    // A batch with a new cell and a duplicate fails as a whole.
    let err = st
        .insert_batch(&[
            (fresh.clone(), vec![0.0; 64]),
            (run.cells[0].clone(), vec![0.0; 64]),
        ])
        .unwrap_err()
        .to_string();
    assert!(err.contains("UNIQUE"), "{err}");
    assert_eq!(
        st.count().unwrap(),
        30,
        "nothing of the failed batch is stored"
    );
    st.insert_batch(&[(fresh, vec![0.0; 64])]).unwrap();
    assert_eq!(st.count().unwrap(), 31);
    assert_eq!(st.integrity_check().unwrap(), "ok");
}

#[test]
fn shards_partition_the_grid() {
    let (_dir, cfg) = setup();
    let (c, _) = SweepConfig::from_file(&cfg).unwrap();
    let g = Grid::new(&c, &c.load_datasets(cfg.parent().unwrap()).unwrap());
    assert_eq!(g.skipped, [(4, 8)]);
    for n in 1..=5 {
        let mut seen = Vec::new();
        for i in 0..n {
            let part = g.shard(Some(Shard::new(i, n).unwrap()));
            // Chunks are batches of consecutive samples of one cell group.
            assert!(part.iter().all(|ch| ch.samples.len() <= 2));
            seen.extend(g.keys(&part));
        }
        let all = g.keys(&g.chunks);
        assert_eq!(seen.len(), all.len());
        assert_eq!(
            seen.into_iter().collect::<HashSet<_>>(),
            all.into_iter().collect()
        );
    }
    assert_eq!("1/4".parse::<Shard>().unwrap(), Shard::new(1, 4).unwrap());
    for bad in ["4/4", "1", "a/3", "0/0"] {
        assert!(bad.parse::<Shard>().is_err(), "{bad}");
    }
}

#[test]
fn shards_come_from_slurm_or_kubernetes_variables() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let sh = |i, n| Some(Shard::new(i, n).unwrap());
    assert_eq!(shard_from_env(None, None, env(&[])).unwrap(), None);
    assert_eq!(
        shard_from_env(sh(1, 2), None, env(&[("JOB_COMPLETION_INDEX", "0")])).unwrap(),
        sh(1, 2)
    );
    let slurm = &[
        ("SLURM_ARRAY_TASK_ID", "3"),
        ("SLURM_ARRAY_TASK_COUNT", "4"),
    ];
    assert_eq!(shard_from_env(None, None, env(slurm)).unwrap(), sh(3, 4));
    let slurm1 = &[
        ("SLURM_ARRAY_TASK_ID", "4"),
        ("SLURM_ARRAY_TASK_COUNT", "4"),
        ("SLURM_ARRAY_TASK_MIN", "1"),
    ];
    assert_eq!(shard_from_env(None, None, env(slurm1)).unwrap(), sh(3, 4));
    let k8s = &[("JOB_COMPLETION_INDEX", "2")];
    assert_eq!(shard_from_env(None, Some(5), env(k8s)).unwrap(), sh(2, 5));
    assert_eq!(shard_from_env(None, None, env(k8s)).unwrap(), None);
    assert!(
        shard_from_env(None, Some(2), env(k8s)).is_err(),
        "index 2 of 2"
    );
    assert!(shard_from_env(None, Some(3), env(&[])).is_err());
    assert!(shard_from_env(
        None,
        None,
        env(&[
            ("SLURM_ARRAY_TASK_ID", "x"),
            ("SLURM_ARRAY_TASK_COUNT", "2")
        ])
    )
    .is_err());
}

#[test]
fn differing_keys_name_nested_fields() {
    let (_dir, cfg) = setup();
    let a = SweepConfig::from_file(&cfg).unwrap().0;
    let mut b = a.clone();
    b.optimizer.max_steps = 99;
    b.samples = 4;
    assert_eq!(
        differing_keys(&a.canonical_json(), &b.canonical_json()),
        ["optimizer.max_steps", "samples"]
    );
    assert_ne!(a.hash(), b.hash());
    assert!(differing_keys(&a.canonical_json(), &a.canonical_json()).is_empty());
}

#[test]
fn shipped_configurations_parse() {
    let dir = Path::new(cram_testkit::REPO_ROOT).join("configs");
    let mut n = 0;
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let (c, _) = SweepConfig::from_file(&p).unwrap_or_else(|e| panic!("{e}"));
            c.load_datasets(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 10, "{n} configurations");
    let small = SweepConfig::from_file(&dir.join("small-smollm2.toml"))
        .unwrap()
        .0;
    let g = Grid::new(&small, &small.load_datasets(&dir).unwrap());
    assert_eq!(g.keys(&g.chunks).len(), 16);
}

#[test]
fn a_sweep_killed_with_sigkill_resumes_to_the_complete_grid() {
    let (dir, _) = setup();
    // Slow cells (no convergence at this learning rate): a kill lands
    // while cells are crammed or committed.
    let cfg = dir.path().join("slow.toml");
    fs::write(
        &cfg,
        config(1e-4, "[4]")
            .replace("max_steps = 12", "max_steps = 40")
            .replace("batch_size = 2", "batch_size = 1"),
    )
    .unwrap();
    let out = dir.path().join("run");
    let db = out.join("results.sqlite");
    let mut kills = 0;
    for round in 0..3 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cram"))
            .args(["sweep", s(&cfg), "--out", s(&out), "--quiet"])
            .spawn()
            .unwrap();
        let before = if db.exists() {
            Store::open_existing(&db).unwrap().count().unwrap()
        } else {
            0
        };
        // Wait for this process's first commit, then kill it (SIGKILL).
        let t0 = std::time::Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            let n = db
                .exists()
                .then(|| Store::open_existing(&db).ok()?.count().ok())
                .flatten()
                .unwrap_or(0);
            if n > before {
                std::thread::sleep(std::time::Duration::from_millis(7 * round as u64));
                break;
            }
            assert!(t0.elapsed().as_secs() < 300, "no commit within 5 minutes");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        let st = Store::open_existing(&db).unwrap();
        assert_eq!(st.integrity_check().unwrap(), "ok");
        println!(
            "round {round}: {} cells after the kill",
            st.count().unwrap()
        );
    }
    assert!(kills >= 2, "only {kills} kills landed");
    ok(sweep(&cfg, &out, &[], &[]));
    let run = load_run(&out).unwrap();
    assert_eq!(run.cells.len(), 12);
    assert_eq!(keys(&run), grid_keys(&cfg));
    ok(cram(&["check", s(&out), "--config", s(&cfg)], &[]));
}

/// A sweep with every experiment of `[ablations]`, its report (the five
/// sections) and `cram export --ablations` in CSV and Parquet; a bad
/// setting there is one error line naming the field, exit status 2.
#[test]
fn ablations_run_report_and_export() {
    let (dir, _) = setup();
    let cfg = dir.path().join("ablations.toml");
    let text = config(0.05, "[4]")
        .replace("n_mem = [1, 2, 8]", "n_mem = [1]")
        .replace("variable_length = true", "variable_length = false")
        + "\n[ablations]\ncontext = [2, 4]\ncopy = true\nbits_per_byte = true\nentropy_bound = true\n\
           [ablations.pca]\ndataset = \"texts\"\nlength = 4\nn_mem = 1\ntexts = 2\nseeds = 2\n";
    fs::write(&cfg, &text).unwrap();
    let out = dir.path().join("run");
    ok(sweep(&cfg, &out, &[], &[]));
    ok(cram(&["check", s(&out), "--config", s(&cfg)], &[]));
    let report = dir.path().join("report");
    ok(cram(&["report", s(&out), "-o", s(&report)], &[]));
    let html = fs::read_to_string(report.join("index.html")).unwrap();
    for stem in cram_report::ablations::SECTION_STEMS {
        assert!(report.join(format!("{stem}.png")).is_file(), "{stem}");
        assert!(html.contains(&format!("id=\"{stem}\"")), "{stem}");
    }

    let ab = cram::store::load_ablations(&out).unwrap();
    // 3 + 3 entropy, 3 x 2 context, 3 copy, 1 tokens per byte, 2 x 2 PCA.
    assert_eq!(ab.rows.len(), 6 + 6 + 3 + 1 + 4);
    let values: usize = ab.rows.iter().map(|r| r.values.len()).sum();
    let csv_path = dir.path().join("ablations.csv");
    ok(cram(
        &[
            "export",
            s(&out),
            "--ablations",
            "--format",
            "csv",
            "-o",
            s(&csv_path),
        ],
        &[],
    ));
    let mut rdr = csv::Reader::from_path(&csv_path).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), values);
    let pq = dir.path().join("ablations.parquet");
    ok(cram(
        &[
            "export",
            s(&out),
            "--ablations",
            "--format",
            "parquet",
            "-o",
            s(&pq),
        ],
        &[],
    ));
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(fs::File::open(&pq).unwrap()).unwrap();
    assert_eq!(
        reader.metadata().file_metadata().num_rows() as usize,
        values
    );

    fs::write(&cfg, text.replace("texts = 2", "texts = 9")).unwrap();
    let e = err_line(&sweep(&cfg, &dir.path().join("bad"), &[], &[]));
    assert!(e.contains("ablations.pca.texts"), "{e}");
}
