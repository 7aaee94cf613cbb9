//! The sweep runner as a library: resume, shards and merge, and one model
//! load per model, without spawning the binary.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use cram::model::{self, LoadOptions, LoadedModel};
use cram::store::load_run;
use cram::sweep::{self, Plan, Quiet, RunOptions, Shard};
use tempfile::TempDir;

fn fixture(name: &str) -> PathBuf {
    Path::new(cram_testkit::REPO_ROOT)
        .join("tests/fixtures")
        .join(name)
}

const TEXTS_CSV: &str = "id,text\n\
a,The keeper of the lighthouse walked along the rocky shore. He counted the boats. The gulls cried over the harbour.\n\
b,A small boat drifted past the harbour. The fishermen waved. The wind rose and the waves grew higher until night fell.\n\
c,In the morning the village woke. Bread was baking. The smell of wet grass came in through every open window.\n";

/// Two models x lengths {4, 6} x n_mem {1, 2} x 3 texts = 24 cells.
fn setup(models: &[&str]) -> (TempDir, PathBuf) {
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join("texts.csv"), TEXTS_CSV).unwrap();
    let models: Vec<String> = models
        .iter()
        .map(|m| format!("\"{}\"", fixture(m).display()))
        .collect();
    let cfg = format!(
        r#"models = [{}]
lengths = [4, 6]
n_mem = [1, 2]
samples = 3
batch_size = 2

[optimizer]
lr = 0.05
max_steps = 4

[[datasets]]
name = "texts"
source = {{ kind = "csv", path = "texts.csv" }}
chunk = "whole"
"#,
        models.join(", ")
    );
    let path = dir.path().join("sweep.toml");
    fs::write(&path, cfg).unwrap();
    (dir, path)
}

/// A loader that counts the loads of each model.
struct Counting {
    loads: RefCell<HashMap<String, usize>>,
}

impl Counting {
    fn new() -> Self {
        Self {
            loads: RefCell::new(HashMap::new()),
        }
    }

    fn load(&self, spec: &str, dtype: &str) -> cram::Result<LoadedModel> {
        assert_eq!(dtype, "f32");
        *self.loads.borrow_mut().entry(spec.to_string()).or_default() += 1;
        model::load(spec, &LoadOptions::default())
    }

    fn run(&self, p: &Plan, opts: &RunOptions) -> sweep::RunSummary {
        let mut load = |s: &str, d: &str| self.load(s, d);
        sweep::run(p, opts, &mut load, &mut Quiet).unwrap()
    }
}

fn opts(out: &Path, shard: Option<Shard>) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        shard,
        new: false,
        wait: false,
    }
}

#[test]
fn each_model_is_loaded_once_and_a_rerun_resumes() {
    let (dir, cfg) = setup(&["llama_gqa_tied", "olmo_plain"]);
    let p = Plan::load(&cfg).unwrap();
    let out = dir.path().join("run");
    let loader = Counting::new();
    let s = loader.run(&p, &opts(&out, None));
    assert_eq!((s.total, s.new_cells, s.already), (24, 24, 0));
    let loads = loader.loads.borrow().clone();
    assert_eq!(loads.len(), 2, "{loads:?}");
    assert!(loads.values().all(|&n| n == 1), "{loads:?}");

    let run = load_run(&out).unwrap();
    assert_eq!(run.cells.len(), 24);
    let backend = run.cells[0]
        .backend
        .as_deref()
        .expect("the backend is recorded");
    assert!(
        backend.contains("\"device\":\"cpu\"") && backend.contains("\"kernels\""),
        "{backend}"
    );

    // Run again: nothing new, nothing lost.
    let again = loader.run(&p, &opts(&out, None));
    assert_eq!((again.new_cells, again.already), (0, 24));
    assert_eq!(load_run(&out).unwrap().cells.len(), 24);
}

#[test]
fn shards_cover_the_grid_once_and_merge_into_one_run() {
    let (dir, cfg) = setup(&["llama_gqa_tied"]);
    let p = Plan::load(&cfg).unwrap();
    let out = dir.path().join("run");
    let loader = Counting::new();
    let mut total = 0;
    for i in 0..3 {
        let s = loader.run(&p, &opts(&out, Some(Shard::new(i, 3).unwrap())));
        assert_eq!(s.new_cells, s.total);
        assert_eq!(s.grid_cells, 12);
        total += s.total;
    }
    assert_eq!(total, 12, "the shards partition the grid");
    let merged = dir.path().join("merged");
    let m = sweep::merge(std::slice::from_ref(&out), &merged).unwrap();
    assert_eq!((m.cells, m.added, m.databases), (12, 12, 3));
    // Merging again adds nothing.
    assert_eq!(sweep::merge(&[out], &merged).unwrap().added, 0);
    let c = sweep::check(&merged, Some(&cfg)).unwrap();
    assert_eq!((c.cells, c.grid_cells), (12, Some(12)));
}

#[test]
fn a_changed_configuration_is_refused_with_the_keys_that_differ() {
    let (dir, cfg) = setup(&["llama_gqa_tied"]);
    let out = dir.path().join("run");
    let loader = Counting::new();
    loader.run(
        &Plan::load(&cfg).unwrap(),
        &opts(&out, Some(Shard::new(0, 4).unwrap())),
    );
    let text = fs::read_to_string(&cfg)
        .unwrap()
        .replace("max_steps = 4", "max_steps = 5");
    fs::write(&cfg, text).unwrap();
    let p = Plan::load(&cfg).unwrap();
    let mut load = |s: &str, d: &str| loader.load(s, d);
    let e = sweep::run(
        &p,
        &opts(&out, Some(Shard::new(0, 4).unwrap())),
        &mut load,
        &mut Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("optimizer.max_steps"), "{e}");
    // With `new`, the old database moves aside and the run starts afresh.
    let s = sweep::run(
        &p,
        &RunOptions {
            new: true,
            ..opts(&out, Some(Shard::new(0, 4).unwrap()))
        },
        &mut load,
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(s.already, 0);
    assert_eq!(fs::read_dir(out.join("old")).unwrap().count(), 1);
}

/// `sink` in a configuration: the layout is recorded with every cell, a BOS
/// that moves in front of the vectors is not one of a cell's tokens, and
/// the default is the paper's layout.
#[test]
fn a_sweeps_sink_is_recorded_with_every_cell() {
    for (fixture_name, sink) in [("gemma3_swa_softcap", "auto"), ("llama_gqa_tied", "none")] {
        let (dir, cfg) = setup(&[fixture_name]);
        let text = fs::read_to_string(&cfg).unwrap();
        let text = if sink == "none" {
            text
        } else {
            format!("sink = \"{sink}\"\n{text}")
        };
        fs::write(&cfg, text).unwrap();
        let p = Plan::load(&cfg).unwrap();
        let out = dir.path().join("run");
        Counting::new().run(&p, &opts(&out, None));
        let m = model::load(
            fixture(fixture_name).to_str().unwrap(),
            &LoadOptions::default(),
        )
        .unwrap();
        let want = p.cfg.sink.resolve(&m.tokenizer).unwrap();
        assert_eq!(want.moves_bos, sink == "auto", "{fixture_name}");
        let run = load_run(&out).unwrap();
        for c in &run.cells {
            let got: cram::layout::Layout =
                serde_json::from_str(c.layout.as_deref().expect("the layout is recorded")).unwrap();
            assert_eq!(got, want);
            assert_eq!(c.token_ids.len(), c.grid_length, "{fixture_name}");
            if want.moves_bos {
                assert_ne!(c.token_ids.first().copied(), m.tokenizer.bos_id());
            }
        }
    }
}

/// `protocol` in a configuration fills the engine keys the file leaves out;
/// the keys it gives win; without it, the paper's optimiser and layout.
#[test]
fn a_sweeps_protocol_fills_the_keys_it_leaves_out() {
    use cram::engine::LossConvention;
    use cram::layout::Sink;
    use cram::protocol::Protocol;
    let body = "models = [\"m\"]\nlengths = [4]\nn_mem = [1]\nsamples = 1\n\
                [[datasets]]\nname = \"r\"\nrandom = { seed = 0 }\n";
    let with = format!("protocol = \"cram\"\nloss = \"paper\"\n{body}[optimizer]\nlr = 0.05\n");
    let c = sweep::SweepConfig::from_toml_str(&with, "with.toml").unwrap();
    let cram = Protocol::Cram.config();
    assert_eq!(c.optimizer.lr, 0.05);
    assert_eq!(c.optimizer.min_lr, cram.optimizer.min_lr);
    assert_eq!(c.optimizer.max_steps, cram.optimizer.max_steps);
    assert_eq!(c.optimizer.warmup_steps, cram.optimizer.warmup_steps);
    assert_eq!(
        (c.sink.clone(), c.loss),
        (Sink::Auto, LossConvention::Paper)
    );
    assert_eq!(c.cram_config(1).protocol, Some(Protocol::Cram));
    let without = sweep::SweepConfig::from_toml_str(body, "without.toml").unwrap();
    assert_eq!(without.optimizer, cram::engine::OptimizerConfig::default());
    assert_eq!(without.sink, Sink::None);
    assert_eq!(without.cram_config(1).protocol, None);
    let bad = format!("protocol = \"cram\"\n{body}[optimizer]\nlearning_rate = 0.05\n");
    let err = sweep::SweepConfig::from_toml_str(&bad, "bad.toml").unwrap_err();
    assert!(err.to_string().contains("learning_rate"), "{err}");
}
