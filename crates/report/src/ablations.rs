//! The report of the paper's other experiments ([`cram::ablations`]): one
//! section of `index.html` each, with its table (Markdown on the page, CSV
//! beside it) and figure (PNG and SVG).
//!
//! | section | figure stem | table |
//! |---|---|---|
//! | context baseline | `context_baseline` | `context_baseline.csv` |
//! | copy baseline | `copy_baseline` | `copy_baseline.csv` |
//! | bits per byte | `bits_per_byte` | `bits_per_byte.csv` |
//! | PCA of the solutions | `pca_solutions` | `pca_solutions.csv` |
//! | entropy bound H_opt | `entropy_bound` | `entropy_bound.csv` |
//!
//! Every row of the experiments is also written to `ablations.csv`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use cram::ablations::pca::{within_between, Pca};
use cram::ablations::{AblationRow, Kind};
use cram::error::Result;
use cram::metrics::{fit_line, Cell, LineFit};
use cram::store::RunAblations;

use crate::figures::{
    chart, color, finish_legend, font, render, size_with_legend, split_for_legend, Axis,
    DrawResult, Entry, Figure, Plot, AXIS_PX, H, TICK_PX, W,
};
use crate::tables::{fixed, num, Table};

/// The figure stems of the five sections, in page order.
pub const SECTION_STEMS: [&str; 5] = [
    "context_baseline",
    "copy_baseline",
    "bits_per_byte",
    "pca_solutions",
    "entropy_bound",
];

/// Accuracy at which the copy baseline counts a text as reproduced by the
/// vectors (the notebook's `compression_accuracy >= 0.99`).
pub const COPY_REPRODUCED: f64 = 0.99;

/// One section of the page.
#[derive(Debug, Clone)]
pub struct Section {
    /// Heading.
    pub title: String,
    /// What was run and how to read it (plain text).
    pub intro: String,
    /// The table shown (also written as `<csv>`).
    pub table: Table,
    /// Its CSV file.
    pub csv: String,
    /// The section's figure.
    pub figure: Figure,
}

/// Rows joined with the cells of their text.
type Pairs<'a> = Vec<(&'a AblationRow, &'a Cell)>;

fn mean(v: impl IntoIterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = v.into_iter().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn of_kind(ab: &RunAblations, k: Kind) -> Vec<&AblationRow> {
    ab.rows.iter().filter(|r| r.key.kind == k).collect()
}

/// The cells of (model, dataset, sample, grid length), every vector count.
fn cells_of<'a>(cells: &'a [Cell], r: &AblationRow) -> impl Iterator<Item = &'a Cell> + 'a {
    let k = r.key.clone();
    cells.iter().filter(move |c| {
        c.model == k.model
            && c.dataset == k.dataset
            && c.sample_id == k.sample_id
            && c.length == k.length
    })
}

/// The texts of a figure's caption: "N texts of dataset(s) D at lengths L".
fn what(rows: &[&AblationRow]) -> String {
    let models: BTreeSet<&str> = rows.iter().map(|r| r.key.model.as_str()).collect();
    let ds: BTreeSet<&str> = rows.iter().map(|r| r.key.dataset.as_str()).collect();
    let lengths: BTreeSet<usize> = rows.iter().map(|r| r.key.length).collect();
    let texts: BTreeSet<(&str, &str)> = rows
        .iter()
        .map(|r| (r.key.dataset.as_str(), r.key.sample_id.as_str()))
        .collect();
    let join = |v: Vec<String>| v.join(", ");
    format!(
        "model {}; {} text(s) of {} at length(s) {}",
        join(models.iter().map(|s| s.to_string()).collect()),
        texts.len(),
        join(ds.iter().map(|s| s.to_string()).collect()),
        join(lengths.iter().map(|l| l.to_string()).collect()),
    )
}

/// Writes the sections that have rows into `dir`: figures, CSV tables and
/// `ablations.csv`. `cells` are the runs' cells (length = grid length);
/// `threshold` is the report's accuracy threshold (converged texts of the
/// entropy bound have accuracy at least it).
pub fn write_sections(
    dir: &Path,
    ab: &RunAblations,
    cells: &[Cell],
    threshold: f64,
) -> Result<(Vec<Section>, Vec<PathBuf>)> {
    let mut out = Vec::new();
    if ab.rows.is_empty() {
        return Ok((out, Vec::new()));
    }
    crate::figures::register_font()?;
    if let Some(s) = context_section(dir, ab, cells)? {
        out.push(s);
    }
    if let Some(s) = copy_section(dir, ab, cells)? {
        out.push(s);
    }
    if let Some(s) = bpb_section(dir, ab, cells)? {
        out.push(s);
    }
    if let Some(s) = pca_section(dir, ab)? {
        out.push(s);
    }
    if let Some(s) = entropy_section(dir, ab, cells, threshold)? {
        out.push(s);
    }
    let mut files = Vec::new();
    for s in &out {
        s.table.write_csv(&dir.join(&s.csv))?;
        files.push(PathBuf::from(&s.csv));
        files.push(PathBuf::from(format!("{}.png", s.figure.stem)));
        files.push(PathBuf::from(format!("{}.svg", s.figure.stem)));
    }
    all_rows(ab).write_csv(&dir.join("ablations.csv"))?;
    files.push(PathBuf::from("ablations.csv"));
    Ok((out, files))
}

/// Every row, one column per value name.
pub fn all_rows(ab: &RunAblations) -> Table {
    let names: BTreeSet<&str> = ab
        .rows
        .iter()
        .flat_map(|r| r.values.keys().map(|k| k.as_str()))
        .collect();
    let mut head = vec![
        "kind",
        "model",
        "dataset",
        "sample_id",
        "length",
        "n_mem",
        "param",
    ];
    head.extend(names.iter());
    let mut t = Table::new(&head);
    for r in &ab.rows {
        let k = &r.key;
        let mut row = vec![
            k.kind.as_str().to_string(),
            k.model.clone(),
            k.dataset.clone(),
            k.sample_id.clone(),
            k.length.to_string(),
            k.n_mem.to_string(),
            k.param.to_string(),
        ];
        row.extend(names.iter().map(|n| num(r.values.get(*n).copied())));
        t.rows.push(row);
    }
    t
}

// ---------------------------------------------------------------- context

/// A line of the context figure: (label, points (p, mean CE), no-context
/// CE, vectors' CE).
type ContextSeries = (String, Vec<(f64, f64)>, Option<f64>, Option<f64>);

struct ContextFig {
    series: Vec<ContextSeries>,
}

impl ContextFig {
    fn entries(&self) -> Vec<Entry> {
        let mut e: Vec<Entry> = self
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| Entry::line(s.0.clone(), color(i).stroke_width(4)))
            .collect();
        e.push(Entry::dashed("no context", BLACK.mix(0.6).stroke_width(3)));
        e.push(Entry::line(
            "with the vectors (fewest)",
            BLACK.mix(0.6).stroke_width(1),
        ));
        e
    }
}

impl Plot for ContextFig {
    fn size(&self) -> (u32, u32) {
        size_with_legend(&self.entries(), (W, H))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let entries = self.entries();
        let (plot, panel) = split_for_legend(root, &entries);
        let x = Axis::for_positive(
            "Context tokens p",
            self.series.iter().flat_map(|s| s.1.iter().map(|p| p.0)),
        );
        let ymax = self
            .series
            .iter()
            .flat_map(|s| s.1.iter().map(|p| p.1).chain(s.2).chain(s.3))
            .filter(|v| v.is_finite())
            .fold(0.1, f64::max);
        let y = Axis::linear("Mean cross-entropy, nats per token", 0.0, ymax * 1.08);
        let mut c = chart(&plot, "", &x, &y)?;
        for (i, (_, pts, base, vecs)) in self.series.iter().enumerate() {
            let col = color(i);
            let pts: Vec<(f64, f64)> = pts.iter().map(|&(p, v)| (x.fwd(p), v)).collect();
            c.draw_series(LineSeries::new(pts.clone(), col.stroke_width(4)))?;
            c.draw_series(pts.iter().map(|&p| Circle::new(p, 7, col.filled())))?;
            if let Some(b) = base {
                c.draw_series(DashedLineSeries::new(
                    vec![(x.lo, *b), (x.hi, *b)],
                    14,
                    8,
                    col.stroke_width(3),
                ))?;
            }
            if let Some(v) = vecs {
                c.draw_series(LineSeries::new(
                    vec![(x.lo, *v), (x.hi, *v)],
                    col.stroke_width(1),
                ))?;
            }
        }
        finish_legend(&c, &panel, &entries)
    }
}

fn context_section(dir: &Path, ab: &RunAblations, cells: &[Cell]) -> Result<Option<Section>> {
    let rows = of_kind(ab, Kind::Context);
    if rows.is_empty() {
        return Ok(None);
    }
    let mut groups: BTreeMap<(String, String, usize), BTreeMap<usize, Vec<&AblationRow>>> =
        BTreeMap::new();
    for r in &rows {
        groups
            .entry((r.key.model.clone(), r.key.dataset.clone(), r.key.length))
            .or_default()
            .entry(r.key.param)
            .or_default()
            .push(r);
    }
    let mut t = Table::new(&[
        "model",
        "dataset",
        "length",
        "p",
        "texts",
        "context tokens",
        "CE no context",
        "CE with context",
        "acc no context",
        "acc with context",
        "vectors",
        "CE vectors",
        "acc vectors",
    ]);
    let mut series = Vec::new();
    let mut worth = Vec::new();
    for ((m, d, l), by_p) in &groups {
        let gc: Vec<&Cell> = cells
            .iter()
            .filter(|c| &c.model == m && &c.dataset == d && c.length == *l)
            .collect();
        let fewest = gc.iter().map(|c| c.n_mem).min();
        let vc: Vec<&&Cell> = gc.iter().filter(|c| Some(c.n_mem) == fewest).collect();
        let v_ce = mean(vc.iter().map(|c| c.best_loss));
        let v_acc = mean(vc.iter().map(|c| c.best_accuracy));
        let mut pts = Vec::new();
        let mut base = None;
        let mut first_worth = None;
        for (p, rs) in by_p {
            let ce = mean(rs.iter().map(|r| r.get("ce")));
            base = mean(rs.iter().map(|r| r.get("base_ce")));
            if let Some(ce) = ce {
                pts.push((*p as f64, ce));
                if first_worth.is_none() && v_ce.is_some_and(|v| ce <= v) {
                    first_worth = Some(*p);
                }
            }
            t.rows.push(vec![
                m.clone(),
                d.clone(),
                l.to_string(),
                p.to_string(),
                rs.len().to_string(),
                fixed(mean(rs.iter().map(|r| r.get("n_context"))), 1),
                fixed(base, 3),
                fixed(ce, 3),
                fixed(mean(rs.iter().map(|r| r.get("base_accuracy"))), 3),
                fixed(mean(rs.iter().map(|r| r.get("accuracy"))), 3),
                fewest.map_or("–".into(), |n| n.to_string()),
                fixed(v_ce, 3),
                fixed(v_acc, 3),
            ]);
        }
        let pmax = by_p.keys().max().copied().unwrap_or(0);
        let got = by_p
            .get(&pmax)
            .and_then(|rs| mean(rs.iter().map(|r| r.get("n_context"))))
            .unwrap_or(0.0);
        worth.push(format!(
            "{d} at length {l}: {}",
            match (first_worth, fewest) {
                (Some(p), Some(n)) => format!("{p} context tokens reach the CE of {n} vector(s)"),
                (None, Some(n)) =>
                    format!("more than the most context tried (p = {pmax}, {got:.0} tokens on average) for the CE of {n} vector(s)"),
                _ => "no cells with vectors".into(),
            }
        ));
        series.push((format!("{d} · length {l}"), pts, base, v_ce));
    }
    let fig = Figure {
        stem: "context_baseline".into(),
        title: "Context baseline".into(),
        caption: format!(
            "Mean cross-entropy of the text (its first token excluded) after p real tokens of preceding context (the last p tokens of the first half of the chunk's sentences, which the protocol drops; solid), without context (dashed) and with the vectors (thin, the fewest vectors run; its loss covers every text token). {}. A chunk's first half may hold fewer than p tokens (see the context tokens column); p + length beyond the model's context is skipped. How many tokens of context one vector is worth: {}.",
            what(&rows),
            worth.join("; ")
        ),
    };
    render(dir, &fig.stem, &ContextFig { series })?;
    Ok(Some(Section {
        title: "Context baseline".into(),
        intro: fig.caption.clone(),
        table: t,
        csv: "context_baseline.csv".into(),
        figure: fig,
    }))
}

// ---------------------------------------------------------------- scatter

/// A scatter series: label, colour index, points (x, y, filled).
struct Series {
    label: String,
    color: usize,
    points: Vec<(f64, f64, bool)>,
    /// Fitted lines drawn in the series' colour: (fit, dashed).
    fits: Vec<(LineFit, bool)>,
}

struct Scatter {
    x: String,
    y: String,
    series: Vec<Series>,
    /// Legend label of the hollow markers.
    hollow: &'static str,
}

impl Scatter {
    fn entries(&self) -> Vec<Entry> {
        let mut e: Vec<Entry> = self
            .series
            .iter()
            .map(|s| Entry::dot(s.label.clone(), color(s.color).filled()))
            .collect();
        e.push(Entry::dashed("y = x", BLACK.mix(0.5).stroke_width(2)));
        e.push(Entry::dot(self.hollow, BLACK.mix(0.6).stroke_width(3)));
        e
    }
}

impl Plot for Scatter {
    fn size(&self) -> (u32, u32) {
        size_with_legend(&self.entries(), (W, H))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let entries = self.entries();
        let (plot, panel) = split_for_legend(root, &entries);
        let all = || self.series.iter().flat_map(|s| s.points.iter());
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        for &(x, y, _) in all() {
            for v in [x, y] {
                if v.is_finite() {
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
            }
        }
        let pad = 0.06 * (hi - lo);
        let x = Axis::linear(&self.x, lo - pad, hi + pad);
        let y = Axis::linear(&self.y, lo - pad, hi + pad);
        let mut c = chart(&plot, "", &x, &y)?;
        c.draw_series(DashedLineSeries::new(
            vec![(x.lo, x.lo), (x.hi, x.hi)],
            12,
            8,
            BLACK.mix(0.5).stroke_width(2),
        ))?;
        for s in &self.series {
            let col = color(s.color);
            c.draw_series(
                s.points
                    .iter()
                    .filter(|p| p.0.is_finite() && p.1.is_finite())
                    .map(|&(px, py, filled)| {
                        let style = if filled {
                            col.filled()
                        } else {
                            col.stroke_width(3)
                        };
                        Circle::new((px, py), 8, style)
                    }),
            )?;
            for (f, dashed) in &s.fits {
                let line = vec![
                    (x.lo, f.slope * x.lo + f.intercept),
                    (x.hi, f.slope * x.hi + f.intercept),
                ];
                if *dashed {
                    c.draw_series(DashedLineSeries::new(line, 14, 8, col.stroke_width(3)))?;
                } else {
                    c.draw_series(LineSeries::new(line, col.stroke_width(3)))?;
                }
            }
        }
        finish_legend(&c, &panel, &entries)
    }
}

// ---------------------------------------------------------------- copy

fn copy_section(dir: &Path, ab: &RunAblations, cells: &[Cell]) -> Result<Option<Section>> {
    let rows = of_kind(ab, Kind::Copy);
    if rows.is_empty() {
        return Ok(None);
    }
    // One point per (copy row, cell of that text) at every vector count.
    let mut by: BTreeMap<(String, String, usize, usize), Pairs> = BTreeMap::new();
    for r in &rows {
        for c in cells_of(cells, r) {
            by.entry((
                r.key.model.clone(),
                r.key.dataset.clone(),
                r.key.length,
                c.n_mem,
            ))
            .or_default()
            .push((r, c));
        }
    }
    let mut t = Table::new(&[
        "model",
        "dataset",
        "length",
        "vectors",
        "texts",
        "reproduced (acc ≥ 0.99)",
        "copy accuracy",
        "vectors accuracy",
        "copy CE reduction",
        "vectors CE reduction",
        "copy / vectors",
    ]);
    let mut series: BTreeMap<usize, Series> = BTreeMap::new();
    let lengths: Vec<usize> = by
        .keys()
        .map(|k| k.2)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for ((m, d, l, n), pairs) in &by {
        let red = |r: &AblationRow| r.get("base_ce_sum") - r.get("ce_sum");
        let ok: Vec<&(&AblationRow, &Cell)> = pairs
            .iter()
            .filter(|(_, c)| c.best_accuracy >= COPY_REPRODUCED)
            .collect();
        let copy_red = mean(ok.iter().map(|(r, _)| red(r)));
        let vec_red = mean(ok.iter().map(|(_, c)| c.info_gain_nats()));
        t.rows.push(vec![
            m.clone(),
            d.clone(),
            l.to_string(),
            n.to_string(),
            pairs.len().to_string(),
            ok.len().to_string(),
            fixed(mean(pairs.iter().map(|(r, _)| r.get("accuracy"))), 3),
            fixed(mean(pairs.iter().map(|(_, c)| c.best_accuracy)), 3),
            fixed(copy_red, 2),
            fixed(vec_red, 2),
            fixed(copy_red.zip(vec_red).map(|(a, b)| a / b), 3),
        ]);
        let li = lengths.iter().position(|x| x == l).unwrap_or(0);
        let s = series.entry(li).or_insert_with(|| Series {
            label: format!("length {l}"),
            color: li,
            points: Vec::new(),
            fits: Vec::new(),
        });
        for (r, c) in pairs {
            s.points.push((
                c.info_gain_nats(),
                red(r),
                c.best_accuracy >= COPY_REPRODUCED,
            ));
        }
    }
    let fig = Figure {
        stem: "copy_baseline".into(),
        title: "Copy baseline".into(),
        caption: format!(
            "Cross-entropy reduction (nats per text, the text's first token excluded) of copying the text given in context as `text: {{T}}\\nrepeat previous text: ` followed by T, against that of the vectors (their information gain), one point per text and vector count; filled: texts the vectors reproduce (accuracy ≥ {COPY_REPRODUCED}), the ones the table's reductions average. {}.",
            what(&rows)
        ),
    };
    let sc = Scatter {
        x: "CE reduction by the vectors, nats".into(),
        y: "CE reduction by copying, nats".into(),
        series: series.into_values().collect(),
        hollow: "hollow: not reproduced",
    };
    render(dir, &fig.stem, &sc)?;
    Ok(Some(Section {
        title: "Copy baseline".into(),
        intro: fig.caption.clone(),
        table: t,
        csv: "copy_baseline.csv".into(),
        figure: fig,
    }))
}

// ---------------------------------------------------------------- bits per byte

/// The paper's tokens per byte (`get_bits_per_byte`, PG-19 chunks), from
/// `data/paper_tokens_to_bytes.json`; empty when the file is missing.
pub fn paper_ratios() -> Vec<(String, f64)> {
    let p = cram::datasets::data_file("paper_tokens_to_bytes.json");
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| serde_json::from_str::<BTreeMap<String, f64>>(&s).ok())
        .map(|m| m.into_iter().collect())
        .unwrap_or_default()
}

struct Bars {
    /// (label, value, ours).
    bars: Vec<(String, f64, bool)>,
}

impl Plot for Bars {
    fn size(&self) -> (u32, u32) {
        (W, (160 + 58 * self.bars.len() as u32).max(H / 2))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let n = self.bars.len();
        let mut label_w = 0;
        for b in &self.bars {
            label_w = label_w.max(root.estimate_text_size(&b.0, &font(TICK_PX))?.0);
        }
        let vmax = self.bars.iter().map(|b| b.1).fold(0.1, f64::max) * 1.25;
        let mut c = ChartBuilder::on(root)
            .margin(20)
            .margin_right(45)
            .x_label_area_size(110)
            .y_label_area_size(label_w + 30)
            .build_cartesian_2d(0f64..vmax, 0f64..n as f64)?;
        c.configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc("Tokens per UTF-8 byte")
            .axis_desc_style(font(AXIS_PX))
            .label_style(font(TICK_PX))
            .x_labels(6)
            .bold_line_style(RGBColor(225, 225, 225))
            .light_line_style(RGBColor(245, 245, 245))
            .axis_style(BLACK.stroke_width(2))
            .draw()?;
        let name = font(TICK_PX).pos(Pos::new(HPos::Right, VPos::Center));
        let text = font(TICK_PX).pos(Pos::new(HPos::Left, VPos::Center));
        for (i, (label, v, ours)) in self.bars.iter().enumerate() {
            let top = (n - i) as f64 - 0.15;
            let bottom = top - 0.7;
            let col = if *ours {
                color(0)
            } else {
                RGBColor(170, 170, 170)
            };
            c.draw_series(std::iter::once(Rectangle::new(
                [(0.0, bottom), (*v, top)],
                col.filled(),
            )))?;
            let (px, py) = c.backend_coord(&(0.0, 0.5 * (top + bottom)));
            root.draw(&Text::new(label.clone(), (px - 12, py), name.clone()))?;
            c.draw_series(std::iter::once(
                EmptyElement::at((*v, 0.5 * (top + bottom)))
                    + Text::new(format!("{v:.4}"), (10, 0), text.clone()),
            ))?;
        }
        Ok(())
    }
}

fn bpb_section(dir: &Path, ab: &RunAblations, cells: &[Cell]) -> Result<Option<Section>> {
    let rows = of_kind(ab, Kind::BitsPerByte);
    if rows.is_empty() {
        return Ok(None);
    }
    let mut t = Table::new(&[
        "model",
        "dataset",
        "texts",
        "tokens",
        "bytes",
        "tokens/byte",
        "vectors",
        "max lossless tokens",
        "max lossless bytes",
        "mean token gain",
        "token gain in bytes",
        "info gain, bits per byte of text",
    ]);
    let mut bars = Vec::new();
    for r in &rows {
        let k = &r.key;
        let tpb = r.get("tokens_per_byte");
        bars.push((format!("{} · {}", k.model, k.dataset), tpb, true));
        let gc: Vec<&Cell> = cells
            .iter()
            .filter(|c| c.model == k.model && c.dataset == k.dataset)
            .collect();
        let mems: BTreeSet<usize> = gc.iter().map(|c| c.n_mem).collect();
        for n in mems {
            let mc: Vec<&&Cell> = gc.iter().filter(|c| c.n_mem == n).collect();
            // Longest grid length all of whose texts are reproduced.
            let lengths: BTreeSet<usize> = mc.iter().map(|c| c.length).collect();
            let lossless = lengths
                .iter()
                .filter(|&&l| {
                    mc.iter()
                        .filter(|c| c.length == l)
                        .all(|c| c.best_accuracy >= 1.0)
                })
                .max()
                .copied();
            let gain = mean(mc.iter().map(|c| c.token_gain()));
            let bits_per_byte = mean(
                mc.iter()
                    .map(|c| c.info_gain_bits() / (c.length as f64 / tpb).max(1e-9)),
            );
            t.rows.push(vec![
                k.model.clone(),
                k.dataset.clone(),
                num(Some(r.get("texts"))),
                num(Some(r.get("tokens"))),
                num(Some(r.get("bytes"))),
                fixed(Some(tpb), 4),
                n.to_string(),
                lossless.map_or("–".into(), |l| l.to_string()),
                fixed(lossless.map(|l| l as f64 / tpb), 1),
                fixed(gain, 2),
                fixed(gain.map(|g| g / tpb), 1),
                fixed(bits_per_byte, 3),
            ]);
        }
    }
    let paper = paper_ratios();
    // One bar per ratio: the paper's models that share a tokenizer share it.
    let mut by_ratio: Vec<(f64, Vec<&str>)> = Vec::new();
    for (m, v) in &paper {
        let short = m.rsplit('/').next().unwrap_or(m);
        match by_ratio.iter_mut().find(|(r, _)| r == v) {
            Some((_, names)) => names.push(short),
            None => by_ratio.push((*v, vec![short])),
        }
    }
    for (v, names) in &by_ratio {
        let label = match names.len() {
            1 => format!("paper: {}", names[0]),
            k => format!("paper: {} +{}", names[0], k - 1),
        };
        bars.push((label, *v, false));
    }
    let fig = Figure {
        stem: "bits_per_byte".into(),
        title: "Bits per byte".into(),
        caption: format!(
            "Tokens per UTF-8 byte of each model's tokenizer over the whole texts of each data set from files (no special tokens), blue; grey: the paper's ratios on its PG-19 chunks (data/paper_tokens_to_bytes.json, {} models; models with one ratio share a bar, +k: k more models). The table converts lengths and gains to bytes (bytes = tokens / ratio; 'max lossless' is the longest length whose every text is reproduced) and gives the information gain per byte of text. {}.",
            paper.len(),
            rows.iter()
                .map(|r| format!(
                    "model {}, {}: {} texts",
                    r.key.model,
                    r.key.dataset,
                    r.get("texts")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    };
    render(dir, &fig.stem, &Bars { bars })?;
    Ok(Some(Section {
        title: "Bits per byte".into(),
        intro: fig.caption.clone(),
        table: t,
        csv: "bits_per_byte.csv".into(),
        figure: fig,
    }))
}

// ---------------------------------------------------------------- PCA

/// Height of one of the PCA figure's three panels (stacked).
const PCA_PANEL_H: u32 = 480;

struct PcaFig {
    /// Per group: label, colour (None: grey), 3-D points.
    groups: Vec<(String, Option<usize>, Vec<Vec<f64>>)>,
    dims: usize,
}

impl PcaFig {
    fn entries(&self) -> Vec<Entry> {
        self.groups
            .iter()
            .map(|(l, c, _)| {
                let col = c.map_or(RGBColor(150, 150, 150), color);
                Entry::dot(l.clone(), col.filled())
            })
            .collect()
    }
}

impl Plot for PcaFig {
    fn size(&self) -> (u32, u32) {
        size_with_legend(&self.entries(), (W, PCA_PANEL_H * 3))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let entries = self.entries();
        let (plot, panel) = split_for_legend(root, &entries);
        let pairs: Vec<(usize, usize)> = match self.dims {
            0 | 1 => vec![(0, 0)],
            2 => vec![(0, 1)],
            _ => vec![(0, 1), (0, 2), (1, 2)],
        };
        let areas = plot.split_evenly((pairs.len(), 1));
        let mut last = None;
        for (area, &(a, b)) in areas.iter().zip(&pairs) {
            let range = |i: usize| {
                let v = self
                    .groups
                    .iter()
                    .flat_map(|g| g.2.iter().map(move |p| p.get(i).copied().unwrap_or(0.0)));
                let (lo, hi) = v.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| {
                    (l.min(x), h.max(x))
                });
                let pad = 0.08 * (hi - lo).max(1e-9);
                (lo - pad, hi + pad)
            };
            let (xl, xh) = range(a);
            let (yl, yh) = range(b);
            let x = Axis::linear(&format!("PC{}", a + 1), xl, xh);
            let y = Axis::linear(&format!("PC{}", b + 1), yl, yh);
            let mut c = chart(area, "", &x, &y)?;
            for (_, col, pts) in &self.groups {
                let col = col.map_or(RGBColor(150, 150, 150), color);
                c.draw_series(pts.iter().map(|p| {
                    Circle::new(
                        (
                            p.get(a).copied().unwrap_or(0.0),
                            p.get(b).copied().unwrap_or(0.0),
                        ),
                        7,
                        col.mix(0.85).filled(),
                    )
                }))?;
            }
            last = Some(c);
        }
        match last {
            Some(c) => finish_legend(&c, &panel, &entries),
            None => Ok(()),
        }
    }
}

fn pca_section(dir: &Path, ab: &RunAblations) -> Result<Option<Section>> {
    let rows = of_kind(ab, Kind::Pca);
    if rows.is_empty() {
        return Ok(None);
    }
    let to64 = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| x as f64).collect() };
    let mut t = Table::new(&[
        "model",
        "dataset",
        "length",
        "vectors",
        "texts from seeds",
        "runs per text",
        "other texts",
        "var PC1",
        "var PC2",
        "var PC3",
        "within-text distance",
        "between-text distance",
        "between / within",
    ]);
    let mut groups_of: BTreeMap<(String, String, usize, usize), Vec<&AblationRow>> =
        BTreeMap::new();
    for r in &rows {
        groups_of
            .entry((
                r.key.model.clone(),
                r.key.dataset.clone(),
                r.key.length,
                r.key.n_mem,
            ))
            .or_default()
            .push(r);
    }
    let mut fig_groups = Vec::new();
    let mut dims = 0;
    let mut caption_bits = Vec::new();
    for (gi, ((m, d, l, n), rs)) in groups_of.iter().enumerate() {
        // Every run is a point: its n vectors end to end (the paper runs
        // one vector). The sweep's own run of a seeded text joins its
        // cluster; the other texts' runs are the background.
        let mut by_text: BTreeMap<&str, Vec<Vec<f64>>> = BTreeMap::new();
        for r in rs {
            by_text
                .entry(r.key.sample_id.as_str())
                .or_default()
                .push(to64(&r.vectors));
        }
        let mut others: Vec<Vec<f64>> = Vec::new();
        for (k, v) in &ab.pca_cells {
            if &k.model != m || &k.dataset != d || k.length != *l || k.n_mem != *n {
                continue;
            }
            match by_text.get_mut(k.sample_id.as_str()) {
                Some(g) => g.push(to64(v)),
                None => others.push(to64(v)),
            }
        }
        let all: Vec<Vec<f64>> = by_text.values().flatten().chain(&others).cloned().collect();
        let Some(p) = Pca::fit(&all, 3) else { continue };
        let groups: Vec<Vec<Vec<f64>>> = by_text.values().cloned().collect();
        let (w, b) = within_between(&groups);
        let var = |i: usize| p.variance.get(i).copied();
        let runs = by_text.values().map(Vec::len).max().unwrap_or(0);
        t.rows.push(vec![
            m.clone(),
            d.clone(),
            l.to_string(),
            n.to_string(),
            by_text.len().to_string(),
            runs.to_string(),
            others.len().to_string(),
            fixed(var(0), 4),
            fixed(var(1), 4),
            fixed(var(2), 4),
            fixed(w, 3),
            fixed(b, 3),
            fixed(w.zip(b).map(|(w, b)| b / w), 2),
        ]);
        caption_bits.push(format!(
            "{m}, {d}, length {l}, {}: {} text(s) × {runs} runs from different seeds (the sweep's run among them) and {} other text(s) with one run each; a point is one run's vectors end to end",
            if *n == 1 { "1 vector".to_string() } else { format!("{n} vectors") },
            by_text.len(),
            others.len()
        ));
        if gi == 0 {
            dims = p.components.len();
            for (i, (sid, pts)) in by_text.iter().enumerate() {
                fig_groups.push((
                    format!("{sid} ×{}", pts.len()),
                    Some(i),
                    pts.iter().map(|x| p.project(x)).collect(),
                ));
            }
            if !others.is_empty() {
                fig_groups.push((
                    "other texts ×1".to_string(),
                    None,
                    others.iter().map(|x| p.project(x)).collect(),
                ));
            }
        }
    }
    if fig_groups.is_empty() {
        return Ok(None);
    }
    let fig = Figure {
        stem: "pca_solutions".into(),
        title: "PCA of the solutions".into(),
        caption: format!(
            "The first three principal components of all the vectors found (the first group of the table): {}. Each text's runs from different seeds form their own cluster if the between-text distance (mean Euclidean distance between runs of two different texts) is well above the within-text one (between two runs of one text).",
            caption_bits.join("; ")
        ),
    };
    render(
        dir,
        &fig.stem,
        &PcaFig {
            groups: fig_groups,
            dims,
        },
    )?;
    Ok(Some(Section {
        title: "PCA of the solutions".into(),
        intro: fig.caption.clone(),
        table: t,
        csv: "pca_solutions.csv".into(),
        figure: fig,
    }))
}

// ---------------------------------------------------------------- entropy

fn entropy_section(
    dir: &Path,
    ab: &RunAblations,
    cells: &[Cell],
    threshold: f64,
) -> Result<Option<Section>> {
    let rows = of_kind(ab, Kind::EntropyBound);
    if rows.is_empty() {
        return Ok(None);
    }
    let bounds = [
        ("h_opt", "H − H_opt"),
        ("h_eq", "H − H_eq"),
        ("h_max", "H − H_max"),
    ];
    let mut t = Table::new(&[
        "model",
        "dataset",
        "vectors",
        "bound",
        "texts",
        "converged",
        "mean required (conv.)",
        "mean achieved (conv.)",
        "fit conv.: slope",
        "intercept",
        "R²",
        "fit failed: slope",
        "intercept",
        "R²",
    ]);
    let mut by: BTreeMap<(String, String, usize), Pairs> = BTreeMap::new();
    for r in &rows {
        for c in cells_of(cells, r) {
            by.entry((r.key.model.clone(), r.key.dataset.clone(), c.n_mem))
                .or_default()
                .push((r, c));
        }
    }
    let mut series: Vec<Series> = bounds
        .iter()
        .enumerate()
        .map(|(i, (_, label))| Series {
            label: label.to_string(),
            color: i,
            points: Vec::new(),
            fits: Vec::new(),
        })
        .collect();
    let fit = |pairs: &[&(&AblationRow, &Cell)], b: &str| {
        let xs: Vec<f64> = pairs.iter().map(|(_, c)| c.info_gain_nats()).collect();
        let ys: Vec<f64> = pairs.iter().map(|(r, _)| r.get("h") - r.get(b)).collect();
        fit_line(&xs, &ys)
    };
    let fit_cols = |f: Option<LineFit>| {
        vec![
            fixed(f.map(|f| f.slope), 3),
            fixed(f.map(|f| f.intercept), 2),
            fixed(f.map(|f| f.r_squared), 3),
        ]
    };
    for (gi, ((m, d, n), pairs)) in by.iter().enumerate() {
        let conv: Vec<&(&AblationRow, &Cell)> = pairs
            .iter()
            .filter(|(_, c)| c.best_accuracy >= threshold)
            .collect();
        let fail: Vec<&(&AblationRow, &Cell)> = pairs
            .iter()
            .filter(|(_, c)| c.best_accuracy < threshold)
            .collect();
        for (bi, (b, label)) in bounds.iter().enumerate() {
            let (fc, ff) = (fit(&conv, b), fit(&fail, b));
            let mut row = vec![
                m.clone(),
                d.clone(),
                n.to_string(),
                label.to_string(),
                pairs.len().to_string(),
                conv.len().to_string(),
                fixed(mean(conv.iter().map(|(r, _)| r.get("h") - r.get(b))), 2),
                fixed(mean(conv.iter().map(|(_, c)| c.info_gain_nats())), 2),
            ];
            row.extend(fit_cols(fc));
            row.extend(fit_cols(ff));
            t.rows.push(row);
            if gi == 0 {
                let s = &mut series[bi];
                s.label = label.to_string();
                for (r, c) in pairs {
                    s.points.push((
                        c.info_gain_nats(),
                        r.get("h") - r.get(b),
                        c.best_accuracy >= threshold,
                    ));
                }
                if bi == 0 {
                    s.fits.extend(fc.map(|f| (f, false)));
                    s.fits.extend(ff.map(|f| (f, true)));
                }
            }
        }
    }
    let fig = Figure {
        stem: "entropy_bound".into(),
        title: "Entropy bound H_opt".into(),
        caption: format!(
            "Cross-entropy the vectors must remove for every target token to be the model's argmax, from its own predictions on the text without vectors (H − H_opt, the least change of each distribution; and the notebook's two simpler estimates, H − H_eq, target and top token meeting half way, and H − H_max, the target taking the top probability), against the reduction the vectors achieved (their information gain), nats per text; filled: converged (accuracy ≥ {threshold}), hollow: failed. Lines: least-squares fits of H − H_opt over the converged (solid) and failed (dashed) texts of the first group. {}.",
            what(&rows)
        ),
    };
    let sc = Scatter {
        x: "CE reduction achieved by the vectors, nats".into(),
        y: "CE reduction required, nats".into(),
        series,
        hollow: "hollow: failed",
    };
    render(dir, &fig.stem, &sc)?;
    Ok(Some(Section {
        title: "Entropy bound H_opt".into(),
        intro: fig.caption.clone(),
        table: t,
        csv: "entropy_bound.csv".into(),
        figure: fig,
    }))
}
