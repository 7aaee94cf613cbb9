//! Capacity search (`cram capacity`): per text, the horizon, the longest
//! prefix that greedy decoding reproduces exactly from the vectors (and the
//! layout's fixed prefix) alone.
//!
//! A text's search runs in stages. A stage optimises the text's vectors
//! towards one target length, warm-started from the checkpoint of the
//! longest prefix verified so far (the vectors *and* AdamW's moments and
//! step count), and ends when teacher-forced accuracy on the target
//! reaches 1 and greedy decoding confirms it (success), or after
//! `stage_steps` steps, `stage_patience` steps in which neither the correct
//! prefix nor the accuracy grew (counted from the stage's first update by
//! default, [`PatienceFrom`]), or when the text's total `budget` is spent
//! (failure). Either way
//! the stage's best vectors are decoded and the prefix they reproduce is
//! verified: a failed stage can still raise the horizon. The [`Search`]
//! picks the next target from what the stages found ([`SearchState`]).
//!
//! The texts of a batch advance their own stages together in one
//! forward/backward (mixed lengths); a text that finishes leaves the batch
//! and the next text takes its place. Every finished stage is committed to
//! the run's store ([`store::CapacityStore`]) with the text's checkpoint,
//! so a killed run loses only the stages in flight and resumes from the
//! last finished stage of every text.

pub mod search;
pub mod store;

use std::collections::VecDeque;
use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::engine::{
    original_metrics, DecodeItem, Engine, LossConvention, OptState, OptimizerConfig, StepItem,
};
use crate::error::{CramError, Result};
use crate::memfile::tokens_sha256;

pub use search::{Search, SearchState};
pub use store::CapacityStore;

/// How the learning rate moves during a capacity search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The protocol's warm-up and cosine, spanned over the text's whole
    /// `budget` and indexed by its AdamW step count (which the checkpoint
    /// carries, so a restored probe also restores its learning rate), as
    /// progressive cramming does.
    Text,
    /// The protocol's cosine restarted at every stage and spanned over
    /// `stage_steps`; the warm-up only over the text's first updates.
    /// `CapacityConfig::new`'s: with a warm start's ramp (`stage_warmup`
    /// 10) it reached longer horizons than `Text` in fewer steps
    /// (docs/capacity.md).
    Stage,
}

string_enum!(Schedule, "schedule", { Text => "text", Stage => "stage" });

/// What a stage's patience counts progress against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatienceFrom {
    /// The stage's best evaluation, its start included. A later stage
    /// starts from the shorter prefix's checkpoint, whose accuracy on the
    /// longer target is already near 1: a stage that needs more than
    /// `stage_patience` updates to climb above it is ended, though given
    /// the steps it reaches its target (docs/capacity.md, "Warm starts").
    /// The behaviour of runs made before this setting existed.
    #[default]
    Start,
    /// The best evaluation after the stage's first update: the start is
    /// still a candidate for the stage's best vectors, but progress is
    /// measured among the stage's own updates (the default of new runs).
    Update,
}

string_enum!(PatienceFrom, "patience baseline", { Update => "update", Start => "start" });

/// Settings of a capacity search, recorded with the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityConfig {
    /// How the next target is chosen.
    pub search: Search,
    /// The first stage's target length in tokens.
    pub start: usize,
    /// Each text is truncated to this many tokens (its horizon cannot
    /// exceed it); `None`: as many as the model's context allows.
    pub max_tokens: Option<usize>,
    /// Most steps of one stage.
    pub stage_steps: usize,
    /// A stage fails after this many steps in which neither its longest
    /// correct prefix nor its accuracy grew.
    pub stage_patience: usize,
    /// What the patience counts progress against. Runs made before this
    /// setting have none (`start`); `start` is not written, so they resume.
    #[serde(default, skip_serializing_if = "is_start")]
    pub patience_from: PatienceFrom,
    /// gallop and climb stop once the shortest failed target is within this
    /// many percent of the verified prefix (`hi - lo <= lo * tolerance /
    /// 100`); 0 (the default): bisect to adjacent lengths, the exact
    /// horizon. Not written when 0, so older runs resume.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tolerance: usize,
    /// Most steps per text, all stages together.
    pub budget: usize,
    /// The learning-rate schedule.
    pub schedule: Schedule,
    /// The learning rate ramps up linearly over the first this many steps
    /// of every stage after a text's first (whose ramp is the protocol's
    /// warm-up); 0: no ramp; 10 by default. Meant for a warm start, which
    /// sits at the optimum of a shorter prefix where a full-size first
    /// update can throw the vectors out of it (docs/capacity.md measures
    /// it). 0 is not written, so stores from before this setting resume
    /// (with `--stage-warmup 0`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stage_warmup: usize,
}

impl CapacityConfig {
    /// The default settings of `search`.
    pub fn new(search: Search) -> Self {
        Self {
            search,
            start: search.default_start(),
            max_tokens: None,
            stage_steps: 300,
            stage_patience: 100,
            patience_from: PatienceFrom::Update,
            tolerance: 0,
            budget: 3000,
            schedule: Schedule::Stage,
            stage_warmup: 10,
        }
    }

    /// The first invalid setting, as (field, what is wrong).
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        for (field, v) in [
            ("start", self.start),
            ("stage_steps", self.stage_steps),
            ("stage_patience", self.stage_patience),
            ("budget", self.budget),
        ] {
            if v == 0 {
                return Some((field, "must be at least 1".into()));
            }
        }
        if self.max_tokens == Some(0) {
            return Some(("max_tokens", "must be at least 1".into()));
        }
        None
    }

    /// The learning rate of a text's next update: `t_next` is its AdamW
    /// update count after the update, `stage_step` the step's 1-based
    /// number within its stage.
    pub fn lr(&self, opt: &OptimizerConfig, t_next: usize, stage_step: usize) -> f64 {
        if t_next < opt.warmup_steps {
            // A text's first updates: the protocol's warm-up.
            return opt.lr_at(t_next);
        }
        let lr = match self.schedule {
            Schedule::Text => OptimizerConfig {
                max_steps: self.budget,
                ..opt.clone()
            }
            .lr_at(t_next),
            Schedule::Stage => OptimizerConfig {
                warmup_steps: 0,
                max_steps: self.stage_steps,
                ..opt.clone()
            }
            .lr_at(stage_step),
        };
        // A later stage's ramp (the first stage's steps are the text's
        // first updates: t_next == stage_step).
        if stage_step < self.stage_warmup && t_next > stage_step {
            lr * stage_step as f64 / self.stage_warmup as f64
        } else {
            lr
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_start(p: &PatienceFrom) -> bool {
    *p == PatienceFrom::Start
}

/// One text to search: its position in the input, its id and its tokens
/// (already truncated to the run's `max_tokens`).
#[derive(Debug, Clone)]
pub struct CapacityText {
    /// Position in the input (selects the seed stream of `randn` starts).
    pub index: usize,
    /// The text's id in its data set.
    pub id: String,
    /// Its tokens.
    pub ids: Vec<u32>,
}

/// What a finished search found about a text's horizon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Horizon {
    /// Mean loss of the horizon's vectors over the horizon's prefix (none
    /// when the prefix predicts no token).
    pub loss: Option<f64>,
    /// Their teacher-forced accuracy over it.
    pub accuracy: Option<f64>,
    /// Mean cross-entropy (nats/token) of the horizon's prefix without
    /// vectors.
    pub original_loss: f64,
    /// Teacher-forced accuracy of the prefix without vectors.
    pub original_accuracy: f64,
    /// Mean cross-entropy of the whole searched text without vectors.
    pub text_loss: f64,
}

/// Where one text's search stands: what the store keeps and the reports
/// read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextProgress {
    /// Position in the input.
    pub index: usize,
    /// The text's id in its data set.
    pub id: String,
    /// SHA-256 of the searched tokens.
    pub tokens_sha256: String,
    /// Tokens searched (the horizon is at most this).
    pub n_tokens: usize,
    /// The search.
    pub search: SearchState,
    /// Stages finished.
    pub stages: usize,
    /// Optimisation steps, all stages together.
    pub steps: usize,
    /// Seconds the text spent in a batch.
    pub seconds: f64,
    /// The state that reproduces the first `search.lo` tokens (the start
    /// while `lo` is 0).
    #[serde(skip)]
    pub checkpoint: OptState,
    /// Set when the search is over.
    pub result: Option<Horizon>,
}

impl TextProgress {
    /// The horizon found so far (final once `search.done`).
    pub fn horizon(&self) -> usize {
        self.search.lo
    }

    /// Whether the horizon is the whole searched text (it may be longer).
    pub fn saturated(&self) -> bool {
        self.search.lo >= self.n_tokens
    }
}

/// One finished stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// The text's position in the input.
    pub index: usize,
    /// The stage's number within the text's search (0-based).
    pub stage: usize,
    /// Its target length.
    pub target: usize,
    /// The prefix its best vectors decode exactly.
    pub prefix: usize,
    /// Whether it reached its target.
    pub exact: bool,
    /// Steps it took.
    pub steps: usize,
    /// Its best vectors' loss over the target.
    pub loss: f64,
    /// Their teacher-forced accuracy over the target.
    pub accuracy: f64,
    /// The horizon after the stage.
    pub lo: usize,
    /// The shortest failed target after the stage.
    pub hi: Option<usize>,
}

/// One text's step of a stage, as `cram capacity --trace` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTrace {
    /// The text's position in the input.
    pub index: usize,
    /// The stage's number within the text's search (0-based).
    pub stage: usize,
    /// The step's number within the stage (1: the evaluation of its start).
    pub stage_step: usize,
    /// The stage's target length.
    pub target: usize,
    /// Mean loss over the target, of the vectors before this step's update.
    pub loss: f64,
    /// Their teacher-forced accuracy.
    pub accuracy: f64,
    /// Their leading tokens predicted right (teacher-forced).
    pub correct_prefix: usize,
    /// Steps without progress, as the stage patience counts them.
    pub stalled: usize,
    /// The learning rate of the update that followed; none when the stage
    /// ended at this step.
    pub lr: Option<f64>,
}

/// What [`search`] reports while it runs.
pub enum Event<'e> {
    /// The texts' evaluations of one batch step.
    Trace(&'e [StepTrace]),
    /// A step of the batch: texts in it, and their mean accuracy.
    Step {
        /// Texts in the batch.
        live: usize,
        /// Texts finished so far (this run and earlier ones).
        done: usize,
        /// Mean teacher-forced accuracy of the batch.
        accuracy: f64,
    },
    /// A stage finished.
    Stage(&'e StageRecord),
    /// A text's search finished.
    Text(&'e TextProgress),
}

/// A text in the batch.
struct Job {
    p: TextProgress,
    embeds: Tensor,
    ids: Vec<u32>,
    cur: OptState,
    stage_step: usize,
    /// The stage's best so far: correct prefix, loss, accuracy, state.
    best: Option<(usize, f64, f64, OptState)>,
    /// The stage's progress, as its patience counts it.
    patience: Patience,
}

/// A stage's patience: the steps since its longest correct prefix or its
/// teacher-forced accuracy last grew, among the evaluations it counts.
#[derive(Debug, Clone, Default)]
struct Patience {
    /// The longest correct prefix and the highest accuracy counted.
    seen: Option<(usize, f64)>,
    /// Counted evaluations since either grew.
    since: usize,
}

impl Patience {
    /// Counts the evaluation of the stage's `stage_step`-th step (1: its
    /// start) and returns the steps without progress.
    fn observe(&mut self, from: PatienceFrom, stage_step: usize, prefix: usize, acc: f64) -> usize {
        // The first evaluation is of the stage's start (a warm start's
        // checkpoint); `update` counts from the next.
        if stage_step > 1 || from == PatienceFrom::Start {
            let progressed = self.seen.is_none_or(|(p, a)| prefix > p || acc > a);
            self.seen = Some(
                self.seen
                    .map_or((prefix, acc), |(p, a)| (p.max(prefix), a.max(acc))),
            );
            self.since = if progressed { 0 } else { self.since + 1 };
        }
        self.since
    }
}

/// What a step decided for a text.
#[derive(Clone, Copy, PartialEq)]
enum Next {
    Update,
    Verify,
    End,
}

/// The prefix of `target` that `decoded` reproduces (counting the `paper`
/// convention's given first token).
fn verified_prefix(loss: LossConvention, target: &[u32], decoded: &[u32]) -> usize {
    let skip = usize::from(loss == LossConvention::Paper);
    skip + decoded
        .iter()
        .zip(&target[skip..])
        .take_while(|(a, b)| a == b)
        .count()
}

/// The fewest tokens a target may have under the loss convention.
fn min_target(loss: LossConvention) -> usize {
    match loss {
        LossConvention::Full => 1,
        LossConvention::Paper => 2,
    }
}

/// The settings a capacity run records and resumes only with
/// ([`CapacityStore::adopt_settings`]): the model's identity, its backend,
/// the engine's settings and layout, the search's, and the basis of
/// low-dimensional vectors.
pub fn run_settings(
    identity: &crate::memfile::ModelIdentity,
    backend: &crate::model::Backend,
    engine: &Engine<'_>,
    cfg: &CapacityConfig,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "model": {
            "architecture": identity.architecture,
            "weights_sha256": identity.weights_sha256,
            "tokenizer_sha256": identity.tokenizer_sha256,
        },
        "backend": backend,
        "engine": engine.config(),
        "layout": engine.layout(),
        "capacity": cfg,
    });
    if let Some(b) = engine.basis() {
        v["basis_sha256"] = b.sha256().into();
    }
    v
}

/// A fresh search for `t`.
pub fn fresh(engine: &Engine<'_>, cfg: &CapacityConfig, t: &CapacityText) -> TextProgress {
    let start = cfg.start.max(min_target(engine.config().loss));
    TextProgress {
        index: t.index,
        id: t.id.clone(),
        tokens_sha256: tokens_sha256(&t.ids),
        n_tokens: t.ids.len(),
        search: SearchState::new(start, t.ids.len()),
        stages: 0,
        steps: 0,
        seconds: 0.0,
        checkpoint: engine.initial_state(t.index, &t.ids),
        result: None,
    }
}

/// Runs the searches of `texts`, `batch` at a time, continuing those the
/// store already holds (their tokens must match) and skipping finished
/// ones. Returns every text's progress, in input order.
///
/// # Errors
/// A text whose stored tokens differ from `texts` (another input in the
/// same run folder), a text that does not fit the model, and the engine's
/// and store's errors. Everything committed before an error is kept.
pub fn search(
    engine: &Engine<'_>,
    cfg: &CapacityConfig,
    texts: &[CapacityText],
    batch: usize,
    store: &mut CapacityStore,
    mut on_event: impl FnMut(Event<'_>) -> Result<()>,
) -> Result<Vec<TextProgress>> {
    if let Some((field, msg)) = cfg.invalid() {
        return Err(CramError::Input(format!(
            "invalid capacity setting {field}: {msg}"
        )));
    }
    if batch == 0 {
        return Err(CramError::Input(
            "the batch must hold at least 1 text".into(),
        ));
    }
    let loss = engine.config().loss;
    for t in texts {
        if t.ids.len() < min_target(loss) {
            return Err(CramError::Input(format!(
                "text {} ({}): {} token(s); the {} loss convention needs at least {}",
                t.index,
                t.id,
                t.ids.len(),
                loss.as_str(),
                min_target(loss)
            )));
        }
        engine.check_text(&t.ids)?;
    }
    let mut stored: std::collections::HashMap<usize, TextProgress> =
        store.load()?.into_iter().map(|p| (p.index, p)).collect();
    let mut progress = Vec::with_capacity(texts.len());
    let params = engine.params()?;
    let width = engine.model().info().input_size;
    for t in texts {
        let p = match stored.remove(&t.index) {
            Some(p) if p.tokens_sha256 != tokens_sha256(&t.ids) || p.id != t.id => {
                return Err(CramError::bad_file(
                    store.path(),
                    format!(
                        "text {} of this run is `{}` with other tokens than the input's `{}`: the run folder belongs to another input; use another --out",
                        t.index, p.id, t.id
                    ),
                ))
            }
            Some(p) => p,
            None => fresh(engine, cfg, t),
        };
        let want = params.count(engine.config().n_mem, width);
        if p.checkpoint.params.len() != want {
            return Err(CramError::bad_file(
                store.path(),
                format!(
                    "text {}'s checkpoint holds {} numbers where these settings have {want} (a damaged run)",
                    t.index,
                    p.checkpoint.params.len()
                ),
            ));
        }
        progress.push(p);
    }
    let mut done = progress.iter().filter(|p| p.search.done).count();
    for p in progress.iter().filter(|p| p.search.done) {
        on_event(Event::Text(p))?;
    }
    let mut queue: VecDeque<usize> = (0..texts.len())
        .filter(|&i| !progress[i].search.done)
        .collect();
    let mut pool: Vec<Job> = Vec::new();
    loop {
        while pool.len() < batch {
            let Some(i) = queue.pop_front() else { break };
            let p = progress[i].clone();
            pool.push(Job {
                embeds: engine.embed_tokens(&texts[i].ids)?,
                ids: texts[i].ids.clone(),
                cur: p.checkpoint.clone(),
                p,
                stage_step: 0,
                best: None,
                patience: Patience::default(),
            });
        }
        if pool.is_empty() {
            break;
        }
        let clock = Instant::now();
        let (stages, finished, trace) = step(engine, cfg, &mut pool)?;
        on_event(Event::Trace(&trace))?;
        let dt = clock.elapsed().as_secs_f64();
        for j in &mut pool {
            j.p.seconds += dt;
        }
        let mut finished_progress: Vec<TextProgress> = Vec::new();
        for &k in finished.iter().rev() {
            let mut j = pool.remove(k);
            j.p.result = Some(horizon_metrics(engine, &j.ids, &j.p)?);
            finished_progress.push(j.p);
        }
        finished_progress.reverse();
        if !stages.is_empty() {
            let changed: Vec<&TextProgress> = pool
                .iter()
                .map(|j| &j.p)
                .filter(|p| stages.iter().any(|s| s.index == p.index))
                .chain(finished_progress.iter())
                .collect();
            store.commit(&changed, &stages)?;
        }
        for s in &stages {
            on_event(Event::Stage(s))?;
        }
        for p in finished_progress {
            done += 1;
            on_event(Event::Text(&p))?;
            let i = texts
                .iter()
                .position(|t| t.index == p.index)
                .expect("a finished text is one of the inputs");
            progress[i] = p;
        }
        let n = pool.len().max(1) as f64;
        on_event(Event::Step {
            live: pool.len(),
            done,
            accuracy: pool
                .iter()
                .map(|j| j.best.as_ref().map_or(0.0, |b| b.2))
                .sum::<f64>()
                / n,
        })?;
    }
    Ok(progress)
}

/// One forward/backward of the batch, the decodings that verify the stages
/// that end, the search moves and the updates. Returns the finished stages,
/// the positions (ascending) of the texts whose search is over, and the
/// step's trace.
fn step(
    engine: &Engine<'_>,
    cfg: &CapacityConfig,
    pool: &mut [Job],
) -> Result<(Vec<StageRecord>, Vec<usize>, Vec<StepTrace>)> {
    let loss = engine.config().loss;
    let targets: Vec<Tensor> = pool
        .iter()
        .map(|j| j.embeds.narrow(0, 0, j.p.search.target))
        .collect::<std::result::Result<_, _>>()?;
    let items: Vec<StepItem<'_>> = pool
        .iter()
        .zip(&targets)
        .map(|(j, e)| StepItem {
            params: &j.cur.params,
            ids: &j.ids[..j.p.search.target],
            embeds: e,
        })
        .collect();
    let outs = engine.step_batch(&items)?;
    drop(items);
    let mut next = Vec::with_capacity(pool.len());
    let mut trace = Vec::with_capacity(pool.len());
    for (j, o) in pool.iter_mut().zip(&outs) {
        j.p.steps += 1;
        j.stage_step += 1;
        let target = j.p.search.target;
        trace.push(StepTrace {
            index: j.p.index,
            stage: j.p.stages,
            stage_step: j.stage_step,
            target,
            loss: o.loss,
            accuracy: o.accuracy,
            correct_prefix: o.correct_prefix,
            stalled: 0,
            lr: None,
        });
        if !o.loss.is_finite() {
            next.push(Next::End);
            continue;
        }
        let longer = j.best.as_ref().is_none_or(|b| o.correct_prefix > b.0);
        let better = longer
            || j.best
                .as_ref()
                .is_some_and(|b| o.correct_prefix == b.0 && o.loss < b.1);
        if better {
            j.best = Some((o.correct_prefix, o.loss, o.accuracy, j.cur.clone()));
        }
        let stalled = j.patience.observe(
            cfg.patience_from,
            j.stage_step,
            o.correct_prefix,
            o.accuracy,
        );
        trace.last_mut().expect("pushed above").stalled = stalled;
        next.push(if o.correct_prefix >= target {
            Next::Verify
        } else if j.stage_step >= cfg.stage_steps
            || stalled >= cfg.stage_patience
            || j.p.steps >= cfg.budget
        {
            Next::End
        } else {
            Next::Update
        });
    }
    // Verify by greedy decoding: the current vectors of the texts that
    // reached their target, the best vectors of the stages that end.
    let skip = usize::from(loss == LossConvention::Paper);
    let checked: Vec<usize> = (0..pool.len())
        .filter(|&k| next[k] != Next::Update)
        .collect();
    let decode_items: Vec<DecodeItem<'_>> = checked
        .iter()
        .map(|&k| {
            let j = &pool[k];
            let vectors = match (next[k], &j.best) {
                (Next::End, Some(b)) => &b.3.params,
                _ => &j.cur.params,
            };
            DecodeItem {
                vectors,
                first_token: j.ids.first().copied(),
                count: j.p.search.target - skip,
            }
        })
        .collect();
    let decoded = engine.decode(&decode_items)?;
    drop(decode_items);
    let mut stages = Vec::new();
    let mut finished = Vec::new();
    for (k, j) in pool.iter_mut().enumerate() {
        let target = j.p.search.target;
        let verified = checked
            .iter()
            .position(|&c| c == k)
            .map(|c| verified_prefix(loss, &j.ids[..target], &decoded[c]));
        let mut ended = next[k] == Next::End;
        if next[k] == Next::Verify {
            if verified == Some(target) {
                j.best = Some((target, outs[k].loss, outs[k].accuracy, j.cur.clone()));
                ended = true;
            } else if j.stage_step >= cfg.stage_steps || j.p.steps >= cfg.budget {
                // Teacher-forced right but not by generation (ties in the
                // logits): keep what generation reproduces.
                ended = true;
                j.best = Some((0, outs[k].loss, outs[k].accuracy, j.cur.clone()));
            }
        }
        if !ended {
            let lr = cfg.lr(&engine.config().optimizer, j.cur.t + 1, j.stage_step);
            engine.update(&mut j.cur, &outs[k].grad, lr);
            trace[k].lr = Some(lr);
            continue;
        }
        let prefix = verified.unwrap_or(0);
        let (b_loss, b_acc) = j.best.as_ref().map_or((f64::INFINITY, 0.0), |b| (b.1, b.2));
        let before = j.p.search.lo;
        if prefix > before {
            if let Some(b) = j.best.take() {
                j.p.checkpoint = b.3;
            }
        }
        j.p.search
            .record(cfg.search, cfg.tolerance, j.ids.len(), prefix);
        if j.p.steps >= cfg.budget {
            j.p.search.done = true;
        }
        stages.push(StageRecord {
            index: j.p.index,
            stage: j.p.stages,
            target,
            prefix,
            exact: prefix >= target,
            steps: j.stage_step,
            loss: b_loss,
            accuracy: b_acc,
            lo: j.p.search.lo,
            hi: j.p.search.hi,
        });
        j.p.stages += 1;
        j.cur = j.p.checkpoint.clone();
        j.stage_step = 0;
        j.best = None;
        j.patience = Patience::default();
        if j.p.search.done {
            finished.push(k);
        }
    }
    Ok((stages, finished, trace))
}

/// The metrics of a finished search of the text `ids`: the horizon's
/// vectors on its prefix, and the cross-entropy of the prefix and of the
/// whole text without vectors.
fn horizon_metrics(engine: &Engine<'_>, ids: &[u32], p: &TextProgress) -> Result<Horizon> {
    let model = engine.model();
    let h = p.search.lo;
    let (loss, accuracy) = if h >= min_target(engine.config().loss) {
        let embeds = engine.embed_tokens(&ids[..h])?;
        let out = engine.step_batch(&[StepItem {
            params: &p.checkpoint.params,
            ids: &ids[..h],
            embeds: &embeds,
        }])?;
        (Some(out[0].loss), Some(out[0].accuracy))
    } else {
        (None, None)
    };
    let (original_loss, original_accuracy, _) = original_metrics(model, &ids[..h])?;
    Ok(Horizon {
        loss,
        accuracy,
        original_loss,
        original_accuracy,
        text_loss: original_metrics(model, ids)?.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verified_prefix_counts_leading_matches_and_the_given_first_token() {
        let target = [5, 6, 7, 8];
        assert_eq!(
            verified_prefix(LossConvention::Full, &target, &[5, 6, 9, 8]),
            2
        );
        assert_eq!(
            verified_prefix(LossConvention::Full, &target, &[5, 6, 7, 8]),
            4
        );
        assert_eq!(
            verified_prefix(LossConvention::Full, &target, &[1, 6, 7, 8]),
            0
        );
        // The paper convention decodes from the given first token.
        assert_eq!(
            verified_prefix(LossConvention::Paper, &target, &[6, 7, 0]),
            3
        );
        assert_eq!(
            verified_prefix(LossConvention::Paper, &target, &[0, 7, 8]),
            1
        );
    }

    #[test]
    fn schedules_follow_the_text_budget_or_restart_per_stage() {
        let opt = OptimizerConfig {
            lr: 0.3,
            warmup_steps: 10,
            min_lr: Some(0.03),
            max_steps: 500,
            ..OptimizerConfig::default()
        };
        let mut cfg = CapacityConfig::new(Search::Gallop);
        cfg.budget = 1010;
        cfg.stage_steps = 100;
        cfg.schedule = Schedule::Text;
        cfg.stage_warmup = 0;
        // Text: warm-up, then one cosine over the budget, whatever the stage.
        assert!((cfg.lr(&opt, 5, 5) - 0.15).abs() < 1e-12);
        assert!((cfg.lr(&opt, 510, 1) - 0.165).abs() < 1e-12);
        assert!((cfg.lr(&opt, 1010, 3) - 0.03).abs() < 1e-12);
        // Stage: the warm-up over the text's first updates, then a cosine
        // over each stage.
        cfg.schedule = Schedule::Stage;
        assert!((cfg.lr(&opt, 5, 5) - 0.15).abs() < 1e-12);
        assert!((cfg.lr(&opt, 700, 0) - 0.3).abs() < 1e-12);
        assert!((cfg.lr(&opt, 700, 50) - 0.165).abs() < 1e-12);
        assert!((cfg.lr(&opt, 700, 100) - 0.03).abs() < 1e-12);
        // A ramp over a later stage's first steps, on either schedule; the
        // first stage keeps the protocol's warm-up alone.
        let no_ramp = cfg.clone();
        cfg.stage_warmup = 10;
        assert!((cfg.lr(&opt, 5, 5) - 0.15).abs() < 1e-12);
        assert_eq!(cfg.lr(&opt, 12, 12), no_ramp.lr(&opt, 12, 12));
        assert!((cfg.lr(&opt, 700, 2) - 0.2 * no_ramp.lr(&opt, 700, 2)).abs() < 1e-12);
        assert!((cfg.lr(&opt, 700, 50) - 0.165).abs() < 1e-12);
        cfg.schedule = Schedule::Text;
        assert!((cfg.lr(&opt, 510, 5) - 0.5 * 0.165).abs() < 1e-12);
        assert!((cfg.lr(&opt, 510, 10) - 0.165).abs() < 1e-12);
    }

    #[test]
    fn runs_from_before_the_stage_defaults_resume_with_text_and_no_ramp() {
        let cfg = CapacityConfig::new(Search::Gallop);
        let now = serde_json::to_value(&cfg).unwrap();
        assert_eq!(now["schedule"], "stage");
        assert_eq!(now["stage_warmup"], 10);
        // A store from before: schedule `text`, no `stage_warmup` key.
        let mut before = now.clone();
        before.as_object_mut().unwrap().remove("stage_warmup");
        before["schedule"] = "text".into();
        let old: CapacityConfig = serde_json::from_value(before.clone()).unwrap();
        assert_eq!((old.schedule, old.stage_warmup), (Schedule::Text, 0));
        // `--schedule text --stage-warmup 0` write the same settings back,
        // so the store takes them.
        let resumed = CapacityConfig {
            schedule: Schedule::Text,
            stage_warmup: 0,
            ..cfg
        };
        assert_eq!(serde_json::to_value(&resumed).unwrap(), before);
    }

    #[test]
    fn the_patience_counts_from_the_first_update_or_from_the_start() {
        // A warm start at 0.95 whose updates climb from 0.5 and never pass
        // it: `start` sees no progress after step 1, `update` sees the climb.
        let accs = [0.95, 0.5, 0.6, 0.6, 0.7, 0.7, 0.7];
        let run = |from| {
            let mut p = Patience::default();
            accs.iter()
                .enumerate()
                .map(|(i, &a)| p.observe(from, i + 1, 3, a))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(PatienceFrom::Start), vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(run(PatienceFrom::Update), vec![0, 0, 0, 1, 0, 1, 2]);
        // A longer correct prefix is progress too.
        let mut p = Patience::default();
        assert_eq!(p.observe(PatienceFrom::Update, 2, 3, 0.7), 0);
        assert_eq!(p.observe(PatienceFrom::Update, 3, 3, 0.7), 1);
        assert_eq!(p.observe(PatienceFrom::Update, 4, 4, 0.6), 0);
    }

    #[test]
    fn runs_from_before_the_patience_baseline_and_tolerance_resume() {
        // New runs count from the update and write it; a stored setting
        // without the field (an older run) reads as `start`, the behaviour
        // it ran with, and `start` and a zero tolerance are not written.
        let new = CapacityConfig::new(Search::Gallop);
        assert_eq!(new.patience_from, PatienceFrom::Update);
        let v = serde_json::to_value(&new).unwrap();
        assert_eq!(v["patience_from"], "update");
        assert!(v.get("tolerance").is_none(), "{v}");
        let mut old = v.clone();
        old.as_object_mut().unwrap().remove("patience_from");
        let read: CapacityConfig = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(read.patience_from, PatienceFrom::Start);
        assert_eq!(serde_json::to_value(&read).unwrap(), old);
        let tol = CapacityConfig {
            tolerance: 12,
            ..new
        };
        assert_eq!(serde_json::to_value(&tol).unwrap()["tolerance"], 12);
        for s in ["start", "update"] {
            assert_eq!(s.parse::<PatienceFrom>().unwrap().to_string(), s);
        }
        assert!("first".parse::<PatienceFrom>().is_err());
    }

    #[test]
    fn capacity_settings_are_checked() {
        let ok = CapacityConfig::new(Search::Step(4));
        assert_eq!(ok.start, 4);
        assert!(ok.invalid().is_none());
        for (field, c) in [
            (
                "budget",
                CapacityConfig {
                    budget: 0,
                    ..ok.clone()
                },
            ),
            (
                "start",
                CapacityConfig {
                    start: 0,
                    ..ok.clone()
                },
            ),
            (
                "max_tokens",
                CapacityConfig {
                    max_tokens: Some(0),
                    ..ok.clone()
                },
            ),
        ] {
            assert_eq!(c.invalid().map(|x| x.0), Some(field));
        }
    }
}
