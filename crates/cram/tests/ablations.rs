//! The paper's other experiments as a sweep runs them (a fixture model):
//! every scoring row checked against the engine's own scoring of the same
//! tokens, the tokens per byte counted by hand, the solution-geometry runs
//! resumed and split over shards, and bad settings refused by name.

use std::fs;
use std::path::{Path, PathBuf};

use cram::ablations::Kind;
use cram::engine::original_metrics;
use cram::model::{self, LoadOptions, LoadedModel};
use cram::store::{load_ablations, load_run};
use cram::sweep::{self, Plan, Quiet, RunOptions, Shard, SweepConfig};
use tempfile::TempDir;

fn fixture() -> PathBuf {
    Path::new(cram_testkit::REPO_ROOT).join("tests/fixtures/llama_gqa_tied")
}

const TEXTS_CSV: &str = "id,text\n\
a,The keeper of the lighthouse walked along the rocky shore. He counted the boats. The gulls cried over the harbour. Night came.\n\
b,A small boat drifted past the harbour. The fishermen waved. The wind rose and the waves grew higher. Then night fell.\n";

fn setup(extra: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join("texts.csv"), TEXTS_CSV).unwrap();
    let cfg = format!(
        r#"models = ["{}"]
lengths = [5]
n_mem = [1]
samples = 2
batch_size = 2

[optimizer]
lr = 0.05
max_steps = 3

[[datasets]]
name = "texts"
source = {{ kind = "csv", path = "texts.csv" }}

[[datasets]]
name = "random"
random = {{ seed = 1 }}

[ablations]
context = [2, 3]
copy = true
bits_per_byte = true
entropy_bound = true
{extra}
"#,
        fixture().display()
    );
    let path = dir.path().join("sweep.toml");
    fs::write(&path, cfg).unwrap();
    (dir, path)
}

const PCA: &str =
    "[ablations.pca]\ndataset = \"texts\"\nlength = 5\nn_mem = 1\ntexts = 2\nseeds = 3\n";

fn load(spec: &str, _dtype: &str) -> cram::Result<LoadedModel> {
    model::load(spec, &LoadOptions::default())
}

fn run(p: &Plan, out: &Path, shard: Option<Shard>) -> sweep::RunSummary {
    let opts = RunOptions {
        out: out.to_path_buf(),
        shard,
        new: false,
        wait: false,
    };
    sweep::run(p, &opts, &mut load, &mut Quiet).unwrap()
}

/// Sum of the cross-entropies of `ids[from..]` given what precedes them,
/// from the engine's mean losses of two prefixes (the model is causal).
fn ce_sum_from(lm: &LoadedModel, ids: &[u32], from: usize) -> f64 {
    let (all, _, n_all) = original_metrics(lm.model.as_ref(), ids).unwrap();
    let (head, _, n_head) = original_metrics(lm.model.as_ref(), &ids[..from]).unwrap();
    all * n_all as f64 - head * n_head as f64
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
        "{what}: {a} vs {b}"
    );
}

#[test]
fn every_scoring_row_matches_the_engines_scoring_of_the_same_tokens() {
    let (dir, cfg) = setup("");
    let p = Plan::load(&cfg).unwrap();
    let out = dir.path().join("run");
    let summary = run(&p, &out, None);
    let cells = load_run(&out).unwrap().cells;
    let ab = load_ablations(&out).unwrap();
    assert_eq!(summary.ablation_rows, ab.rows.len());
    let lm = load(&fixture().display().to_string(), "f32").unwrap();
    let count = |k: Kind| ab.rows.iter().filter(|r| r.key.kind == k).count();
    // Entropy: every text; context: the two texts from a file at 2 p's;
    // copy: the random texts; tokens per byte: the data set from a file.
    assert_eq!(count(Kind::EntropyBound), 4);
    assert_eq!(count(Kind::Context), 4);
    assert_eq!(count(Kind::Copy), 2);
    assert_eq!(count(Kind::BitsPerByte), 1);
    assert_eq!(count(Kind::Pca), 0);

    for r in &ab.rows {
        let k = &r.key;
        let cell = cells
            .iter()
            .find(|c| c.cell.dataset == k.dataset && c.cell.sample_id == k.sample_id);
        match k.kind {
            Kind::EntropyBound => {
                // H over the text is the engine's cross-entropy without vectors.
                let c = &cell.unwrap().cell;
                assert_eq!(r.get("n") as usize, c.original_n_predicted);
                close(r.get("h"), c.original_ce(), "h");
                assert!(r.get("h_max") <= r.get("h_opt") && r.get("h_opt") <= r.get("h_eq"));
                assert!(r.get("h_eq") <= r.get("h") + 1e-9);
            }
            Kind::Context | Kind::Copy => {
                let ids = &cell.unwrap().token_ids;
                // The text without the BOS the tokenizer put first.
                let tok = &lm.tokenizer;
                let bos = tok.adds_bos() && ids.first() == tok.bos_id().as_ref();
                let bare = &ids[usize::from(bos)..];
                let prefix = if k.kind == Kind::Context {
                    let text = TEXTS_CSV
                        .lines()
                        .find(|l| l.starts_with(&format!("{},", k.sample_id)))
                        .unwrap();
                    let (first, _) = cram::datasets::paper_halves(&text[2..]).unwrap();
                    let mut c = lm.tokenizer.encode(&format!("{first} "), true).unwrap();
                    let c = c.split_off(c.len().saturating_sub(k.param));
                    assert_eq!(r.get("n_context") as usize, c.len());
                    c
                } else {
                    let decoded = lm.tokenizer.decode(bare, false).unwrap();
                    lm.tokenizer
                        .encode(&format!("text: {decoded}\nrepeat previous text: "), true)
                        .unwrap()
                };
                let mut input = prefix.clone();
                input.extend(bare);
                assert_eq!(r.get("n_input") as usize, input.len());
                assert_eq!(r.get("n_scored") as usize, bare.len() - 1);
                close(
                    r.get("ce_sum"),
                    ce_sum_from(&lm, &input, prefix.len() + 1),
                    "ce_sum",
                );
                let first = ids.len() - bare.len() + 1;
                close(
                    r.get("base_ce_sum"),
                    ce_sum_from(&lm, ids, first),
                    "base_ce_sum",
                );
                assert!((0.0..=1.0).contains(&r.get("accuracy")));
            }
            Kind::BitsPerByte => {
                let texts: Vec<&str> = TEXTS_CSV.lines().skip(1).map(|l| &l[2..]).collect();
                let tokens: usize = texts
                    .iter()
                    .map(|t| lm.tokenizer.encode(t, false).unwrap().len())
                    .sum();
                let bytes: usize = texts.iter().map(|t| t.len()).sum();
                assert_eq!(r.get("tokens") as usize, tokens);
                assert_eq!(r.get("bytes") as usize, bytes);
                close(
                    r.get("tokens_per_byte"),
                    tokens as f64 / bytes as f64,
                    "ratio",
                );
            }
            Kind::Pca => unreachable!(),
        }
    }
}

#[test]
fn solution_geometry_runs_resume_and_split_over_shards() {
    let (dir, cfg) = setup(PCA);
    let p = Plan::load(&cfg).unwrap();
    let whole = dir.path().join("whole");
    run(&p, &whole, None);
    let ab = load_ablations(&whole).unwrap();
    let pca: Vec<_> = ab.rows.iter().filter(|r| r.key.kind == Kind::Pca).collect();
    assert_eq!(pca.len(), 6, "2 texts x 3 seeds");
    let hidden = pca[0].vectors.len();
    assert!(hidden > 0 && pca.iter().all(|r| r.vectors.len() == hidden));
    assert_ne!(pca[0].vectors, pca[1].vectors, "seeds differ");
    assert_eq!(ab.pca_cells.len(), 2, "the sweep's own run of each text");
    // A rerun computes nothing.
    let before = ab.rows.len();
    assert_eq!(run(&p, &whole, None).ablation_rows, 0);
    assert_eq!(load_ablations(&whole).unwrap().rows.len(), before);

    // Two shards together hold the same rows.
    let sharded = dir.path().join("sharded");
    run(&p, &sharded, Some(Shard::new(0, 2).unwrap()));
    run(&p, &sharded, Some(Shard::new(1, 2).unwrap()));
    let both = load_ablations(&sharded).unwrap();
    let keys = |a: &cram::store::RunAblations| -> Vec<_> {
        a.rows.iter().map(|r| r.key.clone()).collect()
    };
    assert_eq!(keys(&both), keys(&ab));
    for (a, b) in both.rows.iter().zip(&ab.rows) {
        assert_eq!(a.vectors, b.vectors, "{:?}", a.key);
    }
    // Merged into one database, too.
    let merged = dir.path().join("merged");
    sweep::merge(std::slice::from_ref(&sharded), &merged).unwrap();
    assert_eq!(keys(&load_ablations(&merged).unwrap()), keys(&ab));
}

#[test]
fn bad_ablation_settings_are_refused_by_name() {
    let base = "models = [\"m\"]\nlengths = [8]\nn_mem = [1]\nsamples = 2\n[[datasets]]\nname = \"d\"\nbuiltin = \"pg19\"\n";
    for (extra, field) in [
        ("[ablations]\ncontext = [0]\n", "ablations.context"),
        ("[ablations]\ncontext = [4, 4]\n", "ablations.context"),
        ("[ablations]\ncopy = 1\n", "line 9"),
        ("[ablations]\ncopyy = true\n", "copyy"),
        (
            "[ablations.pca]\ndataset = \"x\"\nlength = 8\nn_mem = 1\ntexts = 1\nseeds = 2\n",
            "ablations.pca.dataset",
        ),
        (
            "[ablations.pca]\ndataset = \"d\"\nlength = 9\nn_mem = 1\ntexts = 1\nseeds = 2\n",
            "ablations.pca.length",
        ),
        (
            "[ablations.pca]\ndataset = \"d\"\nlength = 8\nn_mem = 1\ntexts = 3\nseeds = 2\n",
            "ablations.pca.texts",
        ),
        (
            "[ablations.pca]\ndataset = \"d\"\nlength = 8\nn_mem = 1\ntexts = 1\nseeds = 1\n",
            "ablations.pca.seeds",
        ),
    ] {
        let e = SweepConfig::from_toml_str(&format!("{base}{extra}"), "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml") && e.contains(field), "{extra}: {e}");
    }
    // Without [ablations] the configuration's hash is what it was.
    let plain = SweepConfig::from_toml_str(base, "ok.toml").unwrap();
    assert!(!plain.canonical_json().contains("ablations"));
}

#[test]
fn a_database_from_before_the_experiments_reads_as_having_none() {
    let (dir, cfg) = setup("");
    let p = Plan::load(&cfg).unwrap();
    let out = dir.path().join("run");
    run(&p, &out, None);
    let db = out.join("results.sqlite");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("DROP TABLE ablations", []).unwrap();
    drop(conn);
    assert!(load_ablations(&out).unwrap().rows.is_empty());
    // `cram check` with the configuration finds the experiments' rows missing.
    let e = sweep::check(&out, Some(&cfg)).unwrap_err().to_string();
    assert!(e.contains("expected rows of the other experiments"), "{e}");
    assert_eq!(load_run(&out).unwrap().cells.len(), 4);
    // Opened for writing, it gets the table and the rows are computed.
    run(&p, &out, None);
    assert_eq!(load_ablations(&out).unwrap().rows.len(), 11);
    sweep::check(&out, Some(&cfg)).unwrap();
}

/// SmolLM2's tokenizer on the shipped PG-19 stand-in (300 chunks) gives
/// tokens per byte near the paper's ratios for its tokenizers on PG-19
/// (`data/paper_tokens_to_bytes.json`: 0.229 to 0.253): English prose with
/// a byte-level BPE of about 50k tokens.
#[test]
fn smollm2_tokens_per_byte_is_near_the_papers_ratios() {
    let path = cram_testkit::smollm2_gguf();
    let content = cram::model::read_gguf(&path).unwrap();
    let tok = cram::tokenizer::TextTokenizer::from_gguf(&content, &path).unwrap();
    let texts = cram::datasets::load_texts(&cram::datasets::builtin("pg19").unwrap()).unwrap();
    let (mut tokens, mut bytes) = (0usize, 0usize);
    for t in &texts {
        tokens += tok.encode(&t.text, false).unwrap().len();
        bytes += t.text.len();
    }
    let ratio = tokens as f64 / bytes as f64;
    let paper: std::collections::BTreeMap<String, f64> = serde_json::from_str(
        &fs::read_to_string(cram::datasets::data_file("paper_tokens_to_bytes.json")).unwrap(),
    )
    .unwrap();
    let lo = paper.values().copied().fold(f64::INFINITY, f64::min);
    let hi = paper.values().copied().fold(0.0, f64::max);
    println!(
        "SmolLM2 tokens per byte on {} texts: {ratio:.4} (paper: {lo:.4}..{hi:.4})",
        texts.len()
    );
    assert!(
        (0.9 * lo..=1.1 * hi).contains(&ratio),
        "{ratio} vs {lo}..{hi}"
    );
}
