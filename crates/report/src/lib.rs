//! The report stage: the paper's tables and figures from cramming results,
//! written by one call ([`write_report`]).
//!
//! Input is one or more runs ([`RunData`]), each a list of per-text results
//! ([`ReportCell`]: a [`Cell`] and its optimisation curves) and the run's
//! configuration. All runs are merged into one report: shards of a sweep,
//! or runs of several models. The arithmetic is [`cram::metrics`]'s; this
//! module lays it out:
//!
//! * tables ([`tables`]), Markdown and CSV: the paper's Table 1 per
//!   (model, dataset, vectors), the CE fits, accuracy per length, and every
//!   cell's metrics;
//! * figures ([`figures`]), PNG and SVG, drawn with `plotters` and a bundled
//!   font (DejaVu Sans, `assets/fonts`), so no system font is needed;
//! * one self-contained `index.html` ([`html`]) with the tables, the
//!   figures as base64 PNG data URIs, and the run configurations.

#![warn(missing_docs)]

pub mod ablations;
pub mod capacity;
pub mod export;
pub mod figures;
pub mod html;
pub mod tables;

pub use cram::metrics;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use cram::error::{CramError, Result};
use cram::metrics::{summarise, Cell, GroupSummary, MetricsConfig};

/// One text's result as the report reads it: the metrics' [`Cell`] and the
/// loss and accuracy at every optimisation step. In JSON the cell's fields
/// sit at the top level next to the two curves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportCell {
    /// The per-text numbers every table and most figures use.
    #[serde(flatten)]
    pub cell: Cell,
    /// Loss (nats per predicted token) at every step; may be empty.
    #[serde(default, deserialize_with = "cram::nonfinite::vec_f32")]
    pub loss_curve: Vec<f32>,
    /// Accuracy at every step; may be empty.
    #[serde(default, deserialize_with = "cram::nonfinite::vec_f32")]
    pub accuracy_curve: Vec<f32>,
    /// The text's own token count where it differs from `cell.length`: in a
    /// sweep's report `cell.length` is the grid length the text was cut to
    /// (the paper's `max_length`, by which cells are grouped), and a text
    /// shorter than that (or a random text of variable length) has fewer
    /// tokens. `None`: `cell.length` is the token count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_tokens: Option<usize>,
}

impl ReportCell {
    /// The text's token count.
    pub fn tokens(&self) -> usize {
        self.n_tokens.unwrap_or(self.cell.length)
    }
}

/// One run: a name to show, its configuration as written, and its cells.
#[derive(Debug, Clone, PartialEq)]
pub struct RunData {
    /// Name shown in the report (e.g. the run folder's name).
    pub name: String,
    /// The run's configuration file, shown verbatim (may be empty).
    pub config_toml: String,
    /// The run's results.
    pub cells: Vec<ReportCell>,
    /// The rows of the paper's other experiments (empty for runs that
    /// have none, and for JSON-lines runs).
    pub ablations: cram::store::RunAblations,
}

/// Picks cells by any of their keys; a key left `None` matches every cell.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellSelector {
    /// Model name.
    pub model: Option<String>,
    /// Dataset name.
    pub dataset: Option<String>,
    /// Text identifier.
    pub sample_id: Option<String>,
    /// Number of vectors.
    pub n_mem: Option<usize>,
    /// Text length in tokens.
    pub length: Option<usize>,
}

impl CellSelector {
    /// Whether `c` has every key this selector names.
    pub fn matches(&self, c: &Cell) -> bool {
        self.model.as_ref().is_none_or(|m| *m == c.model)
            && self.dataset.as_ref().is_none_or(|d| *d == c.dataset)
            && self.sample_id.as_ref().is_none_or(|s| *s == c.sample_id)
            && self.n_mem.is_none_or(|n| n == c.n_mem)
            && self.length.is_none_or(|l| l == c.length)
    }
}

/// Parses `key=value[,key=value...]` with keys `model`, `dataset`,
/// `sample` (or `sample_id`), `mem` (or `n_mem`) and `length`; e.g.
/// `sample=3,length=256`.
impl FromStr for CellSelector {
    type Err = CramError;
    fn from_str(s: &str) -> Result<Self> {
        let mut sel = CellSelector::default();
        let bad = |msg: String| CramError::Input(format!("cell selector `{s}`: {msg}"));
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("`{part}` is not key=value")))?;
            let (k, v) = (k.trim(), v.trim().to_string());
            let num = |v: &str| {
                v.parse::<usize>()
                    .map_err(|_| bad(format!("`{k}` must be a whole number, got `{v}`")))
            };
            match k {
                "model" => sel.model = Some(v),
                "dataset" => sel.dataset = Some(v),
                "sample" | "sample_id" => sel.sample_id = Some(v),
                "mem" | "n_mem" => sel.n_mem = Some(num(&v)?),
                "length" => sel.length = Some(num(&v)?),
                other => {
                    return Err(bad(format!(
                        "unknown key `{other}` (expected model, dataset, sample, mem, length)"
                    )))
                }
            }
        }
        if sel == CellSelector::default() {
            return Err(bad("names no key".into()));
        }
        Ok(sel)
    }
}

/// Which texts get their optimisation curves drawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CurveChoice {
    /// Up to this many texts, chosen by the report: one text of the first
    /// group at lengths spread from its shortest to its longest.
    Auto(usize),
    /// Every cell (with a curve) that any selector matches.
    Select(Vec<CellSelector>),
}

/// Settings of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportConfig {
    /// Threshold and bits of the aggregates.
    pub metrics: MetricsConfig,
    /// Which texts' curves to draw.
    pub curves: CurveChoice,
    /// Heading of `index.html`.
    pub title: String,
}

/// Default number of texts whose curves are drawn.
pub const DEFAULT_CURVES: usize = 4;

/// Most curves drawn in one figure (more would not be readable).
pub const MAX_CURVES: usize = 10;

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            metrics: MetricsConfig::default(),
            curves: CurveChoice::Auto(DEFAULT_CURVES),
            title: "Cramming report".into(),
        }
    }
}

/// What [`write_report`] did.
#[derive(Debug, Clone)]
pub struct ReportSummary {
    /// Runs merged.
    pub n_runs: usize,
    /// Cells over all runs.
    pub n_cells: usize,
    /// Cells whose loss with the vectors is not finite (their optimisation
    /// diverged); their cross-entropies make the CE aggregates non-finite.
    pub n_diverged: usize,
    /// The aggregates, one per (model, dataset, vectors).
    pub groups: Vec<GroupSummary>,
    /// Files written, relative to the output folder, `index.html` last.
    pub files: Vec<PathBuf>,
    /// Figures drawn (each as `.png` and `.svg`).
    pub figures: Vec<figures::Figure>,
    /// Cells whose curves were drawn, as `model/dataset/sample/n_mem/length`.
    pub curve_cells: Vec<String>,
}

/// Identity of a cell: (model, dataset, sample id, vectors, length).
pub(crate) fn cell_key(c: &Cell) -> String {
    format!(
        "{}/{}/{}/{}/{}",
        c.model, c.dataset, c.sample_id, c.n_mem, c.length
    )
}

impl fmt::Display for CellSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(m) = &self.model {
            parts.push(format!("model={m}"));
        }
        if let Some(d) = &self.dataset {
            parts.push(format!("dataset={d}"));
        }
        if let Some(s) = &self.sample_id {
            parts.push(format!("sample={s}"));
        }
        if let Some(n) = self.n_mem {
            parts.push(format!("mem={n}"));
        }
        if let Some(l) = self.length {
            parts.push(format!("length={l}"));
        }
        write!(f, "{}", parts.join(","))
    }
}

/// The cells whose curves are drawn (only cells with a non-empty curve).
pub(crate) fn choose_curves<'a>(
    cells: &[&'a ReportCell],
    choice: &CurveChoice,
) -> Vec<&'a ReportCell> {
    let with: Vec<&ReportCell> = cells
        .iter()
        .copied()
        .filter(|c| !c.loss_curve.is_empty() || !c.accuracy_curve.is_empty())
        .collect();
    match choice {
        CurveChoice::Select(sels) => with
            .into_iter()
            .filter(|c| sels.iter().any(|s| s.matches(&c.cell)))
            .take(MAX_CURVES)
            .collect(),
        CurveChoice::Auto(n) => {
            let n = (*n).min(MAX_CURVES);
            // The first (model, dataset, vectors) group with curves, and in
            // it the first text (by id) measured at the most lengths.
            let Some(first) = with
                .iter()
                .map(|c| (&c.cell.model, &c.cell.dataset, c.cell.n_mem))
                .min()
            else {
                return Vec::new();
            };
            let group: Vec<&ReportCell> = with
                .iter()
                .copied()
                .filter(|c| (&c.cell.model, &c.cell.dataset, c.cell.n_mem) == first)
                .collect();
            let mut by_id: BTreeMap<&str, Vec<&ReportCell>> = BTreeMap::new();
            for c in &group {
                by_id.entry(&c.cell.sample_id).or_default().push(c);
            }
            let Some(mut text) = by_id
                .into_values()
                .max_by_key(|v| (v.len(), std::cmp::Reverse(v[0].cell.sample_id.clone())))
            else {
                return Vec::new();
            };
            text.sort_by_key(|c| c.cell.length);
            if n == 0 {
                return Vec::new();
            }
            if text.len() <= n {
                return text;
            }
            // n lengths spread evenly from the shortest to the longest.
            let k = text.len() - 1;
            let mut idx: Vec<usize> = (0..n)
                .map(|i| {
                    if n == 1 {
                        0
                    } else {
                        (i * k + (n - 1) / 2) / (n - 1)
                    }
                })
                .collect();
            idx.dedup();
            idx.into_iter().map(|i| text[i]).collect()
        }
    }
}

/// Writes the report of `runs` into `out_dir` (created if needed): tables,
/// figures and `index.html`.
///
/// Errors: no cells at all, a cell that appears twice (in one run or in
/// two), a cell [`summarise`] rejects, or a file that cannot be written.
pub fn write_report(runs: &[RunData], out_dir: &Path, cfg: &ReportConfig) -> Result<ReportSummary> {
    write_report_with(runs, &[], out_dir, cfg)
}

/// [`write_report`] with capacity runs beside the sweeps: their section
/// (tables `capacity.md`/`.csv`, `capacity_texts.md`/`.csv` and two
/// figures) follows the sweeps' on the page. A report of capacity runs
/// alone has only that section.
pub fn write_report_with(
    runs: &[RunData],
    capacity_runs: &[capacity::CapacityRun],
    out_dir: &Path,
    cfg: &ReportConfig,
) -> Result<ReportSummary> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut cells: Vec<&ReportCell> = Vec::new();
    for run in runs {
        for c in &run.cells {
            let key = cell_key(&c.cell);
            if let Some(prev) = seen.insert(key.clone(), &run.name) {
                return Err(CramError::Input(format!(
                    "cell {key} appears twice (runs `{prev}` and `{}`)",
                    run.name
                )));
            }
            cells.push(c);
        }
    }
    let capacity_texts: usize = capacity_runs.iter().map(|r| r.done().count()).sum();
    if cells.is_empty() && capacity_texts == 0 {
        return Err(CramError::Input(format!(
            "no results in {} run(s): nothing to report",
            runs.len() + capacity_runs.len()
        )));
    }
    let flat: Vec<Cell> = cells.iter().map(|c| c.cell.clone()).collect();
    let groups = summarise(&flat, &cfg.metrics)?;

    std::fs::create_dir_all(out_dir).map_err(|e| CramError::io(out_dir, e))?;
    let mut files = if cells.is_empty() {
        Vec::new()
    } else {
        tables::write_tables(out_dir, &groups, &flat, &cfg.metrics)?
    };
    let curves = choose_curves(&cells, &cfg.curves);
    let mut figs = figures::draw_all(out_dir, &groups, &flat, &curves, &cfg.metrics)?;
    let capacity_figs = capacity::draw(out_dir, capacity_runs)?;
    if !capacity_runs.is_empty() {
        files.extend(tables::write_pair(
            out_dir,
            "capacity",
            &capacity::summary(capacity_runs),
            3,
        )?);
        files.extend(tables::write_pair(
            out_dir,
            "capacity_texts",
            &capacity::texts(capacity_runs, &flat),
            2,
        )?);
    }
    for f in figs.iter().chain(&capacity_figs) {
        files.push(PathBuf::from(format!("{}.png", f.stem)));
        files.push(PathBuf::from(format!("{}.svg", f.stem)));
    }
    let mut ab = cram::store::RunAblations::default();
    for r in runs {
        ab.rows.extend(r.ablations.rows.iter().cloned());
        ab.pca_cells.extend(r.ablations.pca_cells.iter().cloned());
    }
    let (sections, ab_files) =
        ablations::write_sections(out_dir, &ab, &flat, cfg.metrics.threshold)?;
    files.extend(ab_files);
    html::write_index(
        out_dir,
        runs,
        &html::CapacityPart {
            runs: capacity_runs,
            figures: &capacity_figs,
            cells: &flat,
        },
        &groups,
        &figs,
        &sections,
        cfg,
    )?;
    files.push(PathBuf::from(html::INDEX));
    figs.extend(capacity_figs);
    Ok(ReportSummary {
        n_runs: runs.len() + capacity_runs.len(),
        n_cells: cells.len(),
        n_diverged: flat.iter().filter(|c| !c.best_loss.is_finite()).count(),
        groups,
        files,
        figures: figs
            .into_iter()
            .chain(sections.into_iter().map(|s| s.figure))
            .collect(),
        curve_cells: curves.iter().map(|c| cell_key(&c.cell)).collect(),
    })
}

/// File of cells inside a run folder read by [`read_jsonl_run`].
pub const CELLS_FILE: &str = "cells.jsonl";

/// Configuration file inside a run folder read by [`read_jsonl_run`].
pub const CONFIG_FILE: &str = "config.toml";

/// Reads one run: a sweep's run folder (its SQLite results, all shards in
/// it), or a folder with `cells.jsonl` (or a `.jsonl` file) of
/// [`ReportCell`]s ([`read_jsonl_run`]). Cells of a sweep are grouped by
/// the grid length they were cut to (the paper's lengths); their own token
/// counts are kept in [`ReportCell::n_tokens`].
pub fn read_run(path: &Path) -> Result<RunData> {
    let jsonl = if path.is_dir() {
        path.join(CELLS_FILE).is_file()
    } else {
        true
    };
    if jsonl {
        return read_jsonl_run(path);
    }
    let run = cram::store::load_run(path)?;
    let name = path
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| path.display().to_string());
    let cells = run
        .cells
        .into_iter()
        .map(|r| {
            let n_tokens = r.cell.length;
            let mut cell = r.cell;
            cell.length = r.grid_length;
            ReportCell {
                cell,
                loss_curve: r.loss_curve,
                accuracy_curve: r.accuracy_curve,
                n_tokens: (n_tokens != r.grid_length).then_some(n_tokens),
            }
        })
        .collect();
    Ok(RunData {
        name,
        config_toml: run.config_toml,
        cells,
        ablations: cram::store::load_ablations(path)?,
    })
}

/// Reads a run from JSON lines: `path` is a folder holding `cells.jsonl`
/// (one [`ReportCell`] per line) and optionally `config.toml`, or a
/// `.jsonl` file itself. The run is named after the folder or the file.
pub fn read_jsonl_run(path: &Path) -> Result<RunData> {
    let (cells_path, config_path) = if path.is_dir() {
        (path.join(CELLS_FILE), Some(path.join(CONFIG_FILE)))
    } else {
        (path.to_path_buf(), None)
    };
    let name = path
        .file_stem()
        .or_else(|| path.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let text = std::fs::read_to_string(&cells_path).map_err(|e| CramError::io(&cells_path, e))?;
    let mut cells = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let c: ReportCell = serde_json::from_str(line)
            .map_err(|e| CramError::bad_file(&cells_path, format!("line {}: {e}", i + 1)))?;
        cells.push(c);
    }
    let config_toml = match config_path.filter(|p| p.exists()) {
        Some(p) => std::fs::read_to_string(&p).map_err(|e| CramError::io(&p, e))?,
        None => String::new(),
    };
    Ok(RunData {
        name,
        config_toml,
        cells,
        ablations: Default::default(),
    })
}

/// Writes `cells` as JSON lines, one [`ReportCell`] per line (the format
/// [`read_jsonl_run`] reads).
pub fn write_jsonl(path: &Path, cells: &[ReportCell]) -> Result<()> {
    let mut s = String::new();
    for c in cells {
        s += &serde_json::to_string(c).map_err(|e| CramError::bad_file(path, e))?;
        s.push('\n');
    }
    std::fs::write(path, s).map_err(|e| CramError::io(path, e))
}
