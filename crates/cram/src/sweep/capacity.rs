//! Capacity sweeps: a configuration with a `[capacity]` table runs a
//! `cram capacity` search ([`crate::capacity`]) for every (model, data set,
//! `n_mem`, search) over the data set's first `samples` texts, instead of
//! a grid of lengths.
//!
//! ```toml
//! models = ["smollm2-135m"]
//! n_mem = [1]
//! samples = 8
//! batch_size = 8
//! protocol = "cram"
//! [capacity]
//! search = ["gallop", "step:1"]
//! max_tokens = 128
//! low_dim = [0, 32]   # 0: full vectors; K: W z + b with z of size K [32]
//! basis = "own"       # every text its own W, b [own]; or learned, random, pca:RUN_DIR
//! [[datasets]]
//! name = "pg19"
//! builtin = "pg19"
//! ```
//!
//! Each (model, data set, `n_mem`, search, low-dim) is a *unit* with its
//! own folder `RUN_DIR/capacity/<model>__<dataset>__m<n_mem>__<search>/`
//! (`...__<search>__k<K>-<basis>/` for low-dimensional vectors, with a
//! shared basis in `basis[-shard-I-of-N].safetensors`: every shard fits the
//! same learned basis, on the data set's first `batch_size` texts) holding
//! `capacity.sqlite`, or with shards one `capacity-shard-I-of-N.sqlite` per
//! shard: shard `i` of `n` searches the texts whose position in the data
//! set is `i` modulo `n`, so shards are disjoint and together cover every
//! text. A unit resumes like `cram capacity`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::runner::{ModelLoader, Plan, Progress, RunOptions};
use super::Shard;
use crate::capacity::{
    self, CapacityConfig, CapacityStore, CapacityText, Event, PatienceFrom, Schedule, Search,
};
use crate::engine::Engine;
use crate::error::{CramError, Result};
use crate::lowdim::{BasisKind, LowDim, LowDimDefaults, ZStart};
use crate::memfile::ModelIdentity;
use crate::store::RunLock;

/// The `[capacity]` table of a sweep configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacitySweep {
    /// The searches, each a unit of its own (`gallop`, `climb`, `step:K`).
    #[serde(default = "default_search")]
    pub search: Vec<Search>,
    /// Each text is truncated to this many tokens.
    pub max_tokens: usize,
    /// The first stage's target [default: `fit_tokens` for a unit with a
    /// learned basis and `z_start = "fitted"`, the search's otherwise].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<usize>,
    /// Most steps of one stage.
    #[serde(default = "default_stage_steps")]
    pub stage_steps: usize,
    /// A stage fails after this many steps without progress.
    #[serde(default = "default_stage_patience")]
    pub stage_patience: usize,
    /// What the patience counts progress against [default: update].
    #[serde(default = "default_patience_from")]
    pub patience_from: PatienceFrom,
    /// gallop and climb stop once the shortest failed target is within
    /// this many percent of the horizon [default: 0, the exact horizon].
    #[serde(default)]
    pub tolerance: usize,
    /// Most steps per text.
    #[serde(default = "default_budget")]
    pub budget: usize,
    /// The learning-rate schedule [default: stage].
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    /// The learning rate's ramp at the start of every later stage, in steps
    /// [default: 10; 0: none].
    #[serde(default = "default_stage_warmup")]
    pub stage_warmup: usize,
    /// Sizes of `z`, each a unit of its own; 0: full vectors [default: 32].
    #[serde(default = "default_low_dim")]
    pub low_dim: Vec<usize>,
    /// The basis of low-dimensional units [default: own].
    #[serde(default = "default_basis")]
    pub basis: BasisKind,
    /// A learned basis fits on this many tokens of its texts [default: 64;
    /// refused with an own basis, which fits nothing]. The canonical form
    /// spells the default out, as it did when the field was a plain value.
    #[serde(default, serialize_with = "filled_fit_tokens")]
    pub fit_tokens: Option<usize>,
    /// Where a text's `z` starts [default: fitted; refused with an own
    /// basis]. Spelled out in the canonical form.
    #[serde(default, serialize_with = "filled_z_start")]
    pub z_start: Option<ZStart>,
}

fn filled_fit_tokens<S: serde::Serializer>(
    v: &Option<usize>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    v.or(LowDimDefaults::capacity().fit_tokens).serialize(s)
}

fn filled_z_start<S: serde::Serializer>(
    v: &Option<ZStart>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    v.unwrap_or(LowDimDefaults::capacity().z_start).serialize(s)
}

fn default_low_dim() -> Vec<usize> {
    vec![LowDimDefaults::capacity().k]
}

fn default_basis() -> BasisKind {
    LowDimDefaults::capacity().basis
}

fn default_search() -> Vec<Search> {
    vec![Search::Gallop]
}

fn default_stage_steps() -> usize {
    CapacityConfig::new(Search::Gallop).stage_steps
}

fn default_stage_patience() -> usize {
    CapacityConfig::new(Search::Gallop).stage_patience
}

fn default_patience_from() -> PatienceFrom {
    CapacityConfig::new(Search::Gallop).patience_from
}

fn default_schedule() -> Schedule {
    CapacityConfig::new(Search::Gallop).schedule
}

fn default_stage_warmup() -> usize {
    CapacityConfig::new(Search::Gallop).stage_warmup
}

fn default_budget() -> usize {
    CapacityConfig::new(Search::Gallop).budget
}

impl CapacitySweep {
    /// The search settings of one unit, of low-dimensional setting `low`
    /// (whose learned basis may set the default start).
    pub fn config(&self, search: Search, low: Option<&LowDim>) -> CapacityConfig {
        CapacityConfig {
            search,
            start: self
                .start
                .or(low.and_then(LowDim::default_start))
                .unwrap_or(search.default_start()),
            max_tokens: Some(self.max_tokens),
            stage_steps: self.stage_steps,
            stage_patience: self.stage_patience,
            patience_from: self.patience_from,
            tolerance: self.tolerance,
            budget: self.budget,
            schedule: self.schedule,
            stage_warmup: self.stage_warmup,
        }
    }

    /// Units per (model, data set, `n_mem`): searches × low-dim sizes.
    pub fn units_per_cell(&self) -> usize {
        self.search.len() * self.low_dim.len()
    }

    /// The low-dimensional setting of a unit with `z` of size `k` (none for
    /// 0) whose learned basis fits on `fit_texts` texts.
    pub fn low_dim(&self, k: usize, fit_texts: usize) -> Option<LowDim> {
        (k > 0).then(|| {
            let defaults = LowDimDefaults::capacity();
            LowDim::new(
                k,
                self.basis.clone(),
                fit_texts,
                self.fit_tokens.or(defaults.fit_tokens),
                self.z_start.unwrap_or(defaults.z_start),
            )
        })
    }

    /// The first invalid setting, as (field, what is wrong).
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        if self.search.is_empty() {
            return Some(("search", "no search".into()));
        }
        if self.low_dim.is_empty() {
            return Some(("low_dim", "no size (0 for full vectors)".into()));
        }
        let mut sizes = std::collections::HashSet::new();
        if let Some(k) = self.low_dim.iter().find(|k| !sizes.insert(**k)) {
            return Some(("low_dim", format!("{k} appears twice")));
        }
        if self.fit_tokens == Some(0) {
            return Some(("fit_tokens", "must be at least 1".into()));
        }
        let fitting = [
            ("fit_tokens", self.fit_tokens.is_some()),
            ("z_start", self.z_start.is_some()),
        ];
        if let Some(refused) = self.basis.refuses_fitting(fitting, "basis = \"learned\"") {
            return Some(refused);
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(s) = self.search.iter().find(|s| !seen.insert(s.to_string())) {
            return Some(("search", format!("`{s}` appears twice")));
        }
        self.config(self.search[0], None).invalid()
    }
}

/// The folder of a unit's databases.
pub fn unit_dir(
    run_dir: &Path,
    model: &str,
    dataset: &str,
    n_mem: usize,
    search: Search,
    low: Option<&LowDim>,
) -> PathBuf {
    let slug = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let low = low.map_or(String::new(), |l| {
        let kind = match &l.basis {
            BasisKind::Pca(_) => "pca".to_string(),
            b => b.to_string(),
        };
        format!("__k{}-{kind}", l.k)
    });
    run_dir.join("capacity").join(format!(
        "{}__{}__m{n_mem}__{}{low}",
        slug(model),
        slug(dataset),
        slug(&search.to_string())
    ))
}

/// A unit's database for `shard`.
pub fn unit_db(dir: &Path, shard: Option<Shard>) -> PathBuf {
    match shard {
        Some(s) if s.count > 1 => {
            dir.join(format!("capacity-shard-{}-of-{}.sqlite", s.index, s.count))
        }
        _ => dir.join(capacity::store::CAPACITY_DB),
    }
}

/// The units of a capacity sweep's run folder: each unit folder's name and
/// its databases (sorted); none when the folder holds no capacity sweep.
pub fn units(run_dir: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let root = run_dir.join("capacity");
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| CramError::io(&root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for d in dirs {
        let mut dbs: Vec<PathBuf> = std::fs::read_dir(&d)
            .map_err(|e| CramError::io(&d, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                n.starts_with("capacity") && n.ends_with(".sqlite")
            })
            .collect();
        dbs.sort();
        let name = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push((name, dbs));
    }
    Ok(out)
}

/// What a capacity sweep did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacitySweepSummary {
    /// Units run (model × data set × `n_mem` × search × low-dim).
    pub units: usize,
    /// Texts of this shard over all units.
    pub texts: usize,
    /// Texts whose search was already over before this run.
    pub already: usize,
}

/// Runs the capacity searches of `opts.shard` of `p` into `opts.out`,
/// resuming each unit's store. Each model is loaded once (by `load`); the
/// texts of every unit are tokenised and checked before its first step.
pub fn run(
    p: &Plan,
    opts: &RunOptions,
    load: &mut ModelLoader<'_>,
    progress: &mut dyn Progress,
) -> Result<CapacitySweepSummary> {
    let cap = p
        .cfg
        .capacity
        .as_ref()
        .ok_or_else(|| CramError::Input("not a capacity sweep (no [capacity] table)".into()))?;
    if opts.new {
        return Err(CramError::Input(
            "--new: a capacity sweep resumes its units; to start afresh use another --out".into(),
        ));
    }
    let shard = opts.shard;
    let mine = |s: usize| shard.is_none_or(|sh| s % sh.count == sh.index);
    let n_texts = (0..p.cfg.samples).filter(|&s| mine(s)).count();
    let n_units = p.cfg.models.len() * p.datasets.len() * p.cfg.n_mem.len() * cap.units_per_cell();
    let mut summary = CapacitySweepSummary {
        units: n_units,
        texts: n_units * n_texts,
        already: 0,
    };
    let mut started = false;
    for spec in &p.cfg.models {
        let lm = load(spec, &p.cfg.dtype)
            .map_err(|e| CramError::Input(format!("{}: model `{spec}`: {e}", p.path.display())))?;
        let layout = p.cfg.sink.resolve(&lm.tokenizer)?;
        let identity = ModelIdentity::of(&lm)?;
        let backend = lm.model.info().backend();
        let room = lm
            .model
            .info()
            .context_length
            .saturating_sub(layout.prefix_len());
        for d in &p.datasets {
            let ids = d.tokens(&lm.tokenizer, &layout, cap.max_tokens)?;
            let sample_ids = d.sample_ids();
            for (&n_mem, &k) in p
                .cfg
                .n_mem
                .iter()
                .flat_map(|n| cap.low_dim.iter().map(move |k| (n, k)))
            {
                let low = cap.low_dim(k, p.cfg.batch_size.min(p.cfg.samples));
                let mut ecfg = p.cfg.cram_config(n_mem);
                ecfg.low_dim = low.clone();
                let base = Engine::with_layout(lm.model.as_ref(), ecfg, layout.clone())?;
                let cut = |s: usize| {
                    let mut t = ids[s].clone();
                    t.truncate(room.saturating_sub(n_mem));
                    t
                };
                let texts: Vec<CapacityText> = (0..p.cfg.samples)
                    .filter(|&s| mine(s))
                    .map(|s| CapacityText {
                        index: s,
                        id: sample_ids[s].clone(),
                        ids: cut(s),
                    })
                    .collect();
                // Every shard fits the same basis: on the data set's first
                // texts, whatever the shard.
                let fit: Vec<(usize, Vec<u32>)> = (0..p.cfg.samples).map(|s| (s, cut(s))).collect();
                let mut basis: Option<crate::lowdim::Basis> = None;
                for &search in &cap.search {
                    let cfg = cap.config(search, low.as_ref());
                    let dir = unit_dir(&opts.out, spec, &d.name, n_mem, search, low.as_ref());
                    std::fs::create_dir_all(&dir).map_err(|e| {
                        CramError::bad_file(&dir, format!("cannot create folder: {e}"))
                    })?;
                    let db = unit_db(&dir, shard);
                    let _lock = RunLock::acquire(&db, opts.wait)?;
                    let mut store = CapacityStore::open(&db)?;
                    let engine = match &low {
                        Some(l) if l.basis.is_shared() => {
                            let file = crate::lowdim::basis_file(&db);
                            let b = match basis.take() {
                                Some(b) if !file.exists() => {
                                    b.write(&file, l, &identity.weights_sha256)?;
                                    b
                                }
                                _ => crate::lowdim::prepare(
                                    &base,
                                    l,
                                    &identity.weights_sha256,
                                    &fit,
                                    &file,
                                    |_, _| {},
                                )?,
                            };
                            basis = Some(b.clone());
                            base.clone().with_basis(b)?
                        }
                        _ => base.clone(),
                    };
                    let mut settings = capacity::run_settings(&identity, &backend, &engine, &cfg);
                    settings["dataset"] = d.name.clone().into();
                    store.adopt_settings(&settings)?;
                    store.set_meta("model_name", spec)?;
                    let unit_already = store.load()?.iter().filter(|t| t.search.done).count();
                    summary.already += unit_already;
                    if !started {
                        progress.start(summary.texts, summary.already);
                        started = true;
                    }
                    let what = low.as_ref().map_or(String::new(), |l| {
                        format!(", z of size {} ({} basis)", l.k, l.basis)
                    });
                    progress.group(&format!(
                        "{spec} / {} / {n_mem} vector(s){what} / {search}",
                        d.name
                    ));
                    // The texts done before are reported first: not new.
                    let mut skip = unit_already;
                    capacity::search(&engine, &cfg, &texts, p.cfg.batch_size, &mut store, |e| {
                        if let Event::Text(_) = e {
                            if skip > 0 {
                                skip -= 1;
                            } else {
                                progress.batch_done(1);
                            }
                        }
                        Ok(())
                    })?;
                }
            }
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capacity_table_without_search_settings_takes_the_commands_defaults() {
        let sweep: CapacitySweep = toml::from_str("max_tokens = 64").unwrap();
        // One unit per search, of `cram capacity`'s default vectors: every
        // text its own basis, z of size 32.
        assert_eq!(sweep.low_dim, [32]);
        assert_eq!(
            sweep.low_dim(32, 8),
            Some(LowDim::new(32, BasisKind::Own, 1, None, ZStart::Zero))
        );
        let learned: CapacitySweep =
            toml::from_str("max_tokens = 64\nbasis = \"learned\"").unwrap();
        for search in [Search::Gallop, Search::Climb, Search::Step(3)] {
            let cfg = sweep.config(search, None);
            assert_eq!(
                cfg,
                CapacityConfig {
                    max_tokens: Some(64),
                    ..CapacityConfig::new(search)
                }
            );
            // A unit with a learned basis (fitted z start): from the
            // fitting length, as `cram capacity`.
            let low = learned.low_dim(32, 8).unwrap();
            assert_eq!(low.z_start, ZStart::Fitted);
            assert_eq!(low.fit_tokens, Some(crate::lowdim::CAPACITY_FIT_TOKENS));
            assert_eq!(
                learned.config(search, Some(&low)).start,
                crate::lowdim::CAPACITY_FIT_TOKENS
            );
        }
    }

    #[test]
    fn fitting_fields_are_refused_for_an_own_basis_and_spelled_out_when_absent() {
        let parse = |t: &str| -> CapacitySweep { toml::from_str(t).unwrap() };
        for field in ["fit_tokens = 64", "z_start = \"fitted\""] {
            let own = parse(&format!("max_tokens = 64\n{field}"));
            let (name, msg) = own.invalid().expect("refused");
            assert!(
                field.starts_with(name) && msg.contains("own basis"),
                "{name}: {msg}"
            );
            // A learned basis takes them.
            let learned = parse(&format!("max_tokens = 64\nbasis = \"learned\"\n{field}"));
            assert_eq!(learned.invalid(), None);
        }
        // The canonical form (and so a run's configuration hash) is that
        // of the defaults spelled out, as when the fields were plain values.
        let absent = parse("max_tokens = 64\nbasis = \"learned\"");
        let spelled =
            parse("max_tokens = 64\nbasis = \"learned\"\nfit_tokens = 64\nz_start = \"fitted\"");
        assert_ne!(absent, spelled);
        let json = serde_json::to_value(&absent).unwrap();
        assert_eq!(json, serde_json::to_value(&spelled).unwrap());
        assert_eq!(
            (&json["fit_tokens"], &json["z_start"]),
            (&64.into(), &"fitted".into())
        );
        assert_eq!(absent.low_dim(32, 8), spelled.low_dim(32, 8));
    }

    #[test]
    fn an_own_basis_unit_fits_nothing_and_starts_as_its_search() {
        let sweep: CapacitySweep =
            toml::from_str("max_tokens = 64\nlow_dim = [0, 16]\nbasis = \"own\"").unwrap();
        assert_eq!(sweep.invalid(), None);
        let low = sweep.low_dim(16, 8).unwrap();
        assert_eq!(low.basis, BasisKind::Own);
        assert_eq!((low.fit_texts, low.fit_tokens), (1, None));
        let search = Search::Gallop;
        assert_eq!(
            sweep.config(search, Some(&low)).start,
            CapacityConfig::new(search).start
        );
        let dir = unit_dir(Path::new("r"), "m", "d", 1, search, Some(&low));
        assert!(
            dir.ends_with("m__d__m1__gallop__k16-own"),
            "{}",
            dir.display()
        );
    }
}
