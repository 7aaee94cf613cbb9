//! The report's figures, each written as PNG and SVG.
//!
//! Drawn with `plotters`; text goes through `ab_glyph` with DejaVu Sans
//! compiled into the binary (`assets/fonts/DejaVuSans.ttf`, registered as
//! `sans-serif`), so figures render the same on a machine without any
//! system font. Sizes are chosen for a figure printed one column wide
//! (8.5 cm): in a 1000-pixel-wide image one pixel prints at 0.24 pt, and
//! text is set at 27–35 pixels per em (plotters' sizes are 1.24 em), so
//! tick labels and legends print at 6.5–7 pt and axis titles at 8 pt.
//!
//! | file stem | content |
//! |---|---|
//! | `max_lossless` | maximum lossless length per model (the paper's Figure 1) |
//! | `accuracy_vs_length` | mean accuracy against length per model, threshold line |
//! | `ce_<group>` | compressed against original CE, coloured by length, both fits (Figures 3 and 6) |
//! | `vectors` | maximum lossless length against the number of vectors (Figure 4) |
//! | `capacity` | empirical (token gain) against theoretical capacity (Figure 5) |
//! | `curves` | loss and accuracy over optimisation steps for chosen texts |

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;

use super::ReportCell;
use cram::error::{CramError, Result};

pub mod capacity;
use cram::metrics::{Cell, GroupSummary, MetricsConfig};

/// DejaVu Sans (Bitstream Vera license, `assets/fonts/LICENSE_DEJAVU`).
static FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

/// Font family name the figures use (and SVG files name).
pub const FONT_FAMILY: &str = "sans-serif";

pub(crate) const W: u32 = 1000;
pub(crate) const H: u32 = 760;
/// Text sizes in plotters' units (1.24 × pixels per em).
const TITLE_PX: f64 = 44.0;
pub(crate) const AXIS_PX: f64 = 41.0;
pub(crate) const TICK_PX: f64 = 36.0;
pub(crate) const LEGEND_PX: f64 = 33.0;

/// Tableau 10, the series colours.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One figure of the report: `<stem>.png` and `<stem>.svg`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    /// File name without extension.
    pub stem: String,
    /// Short title.
    pub title: String,
    /// What it shows, for the page.
    pub caption: String,
}

/// Registers the bundled font with plotters (once per process).
pub fn register_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(CramError::Input(
            "the bundled font DejaVuSans.ttf could not be loaded".into(),
        ))
    }
}

pub(crate) type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Something drawn the same way on any backend.
pub(crate) trait Plot {
    fn size(&self) -> (u32, u32) {
        (W, H)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

pub(crate) fn render(dir: &Path, stem: &str, p: &impl Plot) -> Result<()> {
    let png = dir.join(format!("{stem}.png"));
    {
        let root = BitMapBackend::new(&png, p.size()).into_drawing_area();
        let err = |e: DrawingAreaErrorKind<_>| CramError::bad_file(&png, e);
        root.fill(&WHITE).map_err(err)?;
        p.draw(&root).map_err(err)?;
        root.present().map_err(err)?;
    }
    let svg = dir.join(format!("{stem}.svg"));
    {
        let root = SVGBackend::new(&svg, p.size()).into_drawing_area();
        let err = |e: DrawingAreaErrorKind<_>| CramError::bad_file(&svg, e);
        root.fill(&WHITE).map_err(err)?;
        p.draw(&root).map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(())
}

pub(crate) fn font(px: f64) -> TextStyle<'static> {
    TextStyle::from(FontDesc::new(FontFamily::SansSerif, px, FontStyle::Normal))
}

pub(crate) fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Viridis from dark purple to green (its light yellow end is left out: it
/// does not show on white), `t` in [0, 1].
pub(crate) fn viridis(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 5] = [
        (68, 1, 84),
        (59, 82, 139),
        (33, 145, 140),
        (53, 183, 121),
        (144, 215, 67),
    ];
    let t = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// What a legend shows next to a label.
#[derive(Clone, Copy)]
enum Key {
    /// A line, solid or dashed.
    Line(ShapeStyle, bool),
    /// A dot.
    Dot(ShapeStyle),
    /// A filled box.
    Bar(ShapeStyle),
}

/// One legend row.
pub(crate) struct Entry {
    label: String,
    key: Key,
}

impl Entry {
    pub(crate) fn line(label: impl Into<String>, style: ShapeStyle) -> Entry {
        Entry {
            label: label.into(),
            key: Key::Line(style, false),
        }
    }
    pub(crate) fn dashed(label: impl Into<String>, style: ShapeStyle) -> Entry {
        Entry {
            label: label.into(),
            key: Key::Line(style, true),
        }
    }
    pub(crate) fn dot(label: impl Into<String>, style: ShapeStyle) -> Entry {
        Entry {
            label: label.into(),
            key: Key::Dot(style),
        }
    }
    pub(crate) fn bar(label: impl Into<String>, style: ShapeStyle) -> Entry {
        Entry {
            label: label.into(),
            key: Key::Bar(style),
        }
    }
}

/// Legends longer than this go to a panel right of the plot.
const MAX_INLINE_ENTRIES: usize = 7;
pub(crate) const ROW: i32 = (LEGEND_PX * 1.45) as i32;
const KEY_W: i32 = 34;

/// Width of a legend panel for `entries` (estimated from the labels).
fn panel_width(entries: &[Entry]) -> u32 {
    let chars = entries
        .iter()
        .map(|e| e.label.chars().count())
        .max()
        .unwrap_or(0);
    (chars as f64 * LEGEND_PX * 0.5) as u32 + KEY_W as u32 + 60
}

/// Height of a two-column legend band of `n` entries under a plot.
pub(crate) fn band_height(n: usize) -> u32 {
    ROW as u32 * n.div_ceil(2) as u32 + 20
}

/// Size of a figure whose legend has `entries`: a band under the plot, or
/// for a long legend a panel right of it (the figure as tall as it).
pub(crate) fn size_with_legend(entries: &[Entry], base: (u32, u32)) -> (u32, u32) {
    if entries.len() > MAX_INLINE_ENTRIES {
        (
            base.0 + panel_width(entries),
            base.1.max(ROW as u32 * entries.len() as u32 + 80),
        )
    } else {
        (base.0, base.1 + band_height(entries.len()))
    }
}

/// Where [`split_for_legend`] put the legend.
pub(crate) enum LegendArea<DB: DrawingBackend> {
    Panel(DrawingArea<DB, Shift>),
    Band(DrawingArea<DB, Shift>),
}

/// Splits `root` (sized by [`size_with_legend`]) into the plot and the
/// legend's panel or band.
pub(crate) fn split_for_legend<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    entries: &[Entry],
) -> (DrawingArea<DB, Shift>, LegendArea<DB>) {
    let (w, h) = root.dim_in_pixel();
    if entries.len() > MAX_INLINE_ENTRIES {
        let (plot, panel) = root.split_horizontally(w - panel_width(entries));
        (plot, LegendArea::Panel(panel))
    } else {
        let (plot, band) = root.split_vertically(h - band_height(entries.len()));
        (plot, LegendArea::Band(band))
    }
}

/// Draws `entries` where [`split_for_legend`] put them.
pub(crate) fn finish_legend<DB: DrawingBackend, CT: CoordTranslate>(
    chart: &ChartContext<DB, CT>,
    at: &LegendArea<DB>,
    entries: &[Entry],
) -> DrawResult<DB> {
    match at {
        LegendArea::Panel(p) => draw_legend(chart, Some(p), entries),
        LegendArea::Band(b) => draw_legend_columns(b, entries, 2),
    }
}

/// Draws `entries` in a framed box: in the panel when there is one, else in
/// the upper left corner of the chart's plotting area.
fn draw_legend<DB: DrawingBackend, CT: CoordTranslate>(
    chart: &ChartContext<DB, CT>,
    panel: Option<&DrawingArea<DB, Shift>>,
    entries: &[Entry],
) -> DrawResult<DB> {
    if entries.is_empty() {
        return Ok(());
    }
    let area = match panel {
        Some(p) => p.clone(),
        None => chart.plotting_area().strip_coord_spec(),
    };
    let style = font(LEGEND_PX);
    let mut text_w = 0;
    for e in entries {
        text_w = text_w.max(area.estimate_text_size(&e.label, &style)?.0 as i32);
    }
    let pad = 12;
    let (bw, bh) = (
        KEY_W + 12 + text_w + 2 * pad,
        ROW * entries.len() as i32 + 2 * pad - 6,
    );
    let (x0, y0) = if panel.is_some() { (10, 20) } else { (10, 10) };
    area.draw(&Rectangle::new(
        [(x0, y0), (x0 + bw, y0 + bh)],
        WHITE.mix(0.88).filled(),
    ))?;
    area.draw(&Rectangle::new(
        [(x0, y0), (x0 + bw, y0 + bh)],
        BLACK.mix(0.4).stroke_width(1),
    ))?;
    for (i, e) in entries.iter().enumerate() {
        let y = y0 + pad + ROW * i as i32 + ROW / 2 - 3;
        let x = x0 + pad;
        draw_key(&area, e.key, x, y)?;
        area.draw(&Text::new(
            e.label.clone(),
            (x + KEY_W + 12, y),
            style.pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    Ok(())
}

/// Draws `entries` in `cols` columns (filled top to bottom) across `area`,
/// a band of its own under a plot.
pub(crate) fn draw_legend_columns<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[Entry],
    cols: usize,
) -> DrawResult<DB> {
    let rows = entries.len().div_ceil(cols.max(1)).max(1);
    let col_w = area.dim_in_pixel().0 as i32 / cols.max(1) as i32;
    let style = font(LEGEND_PX).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, e) in entries.iter().enumerate() {
        let (c, r) = (i / rows, i % rows);
        let x = 20 + col_w * c as i32;
        let y = 10 + ROW * r as i32 + ROW / 2;
        draw_key(area, e.key, x, y)?;
        area.draw(&Text::new(
            e.label.clone(),
            (x + KEY_W + 12, y),
            style.clone(),
        ))?;
    }
    Ok(())
}

/// Draws a legend key with its left end at `(x, y)`.
fn draw_key<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    key: Key,
    x: i32,
    y: i32,
) -> DrawResult<DB> {
    match key {
        Key::Line(s, false) => area.draw(&PathElement::new(vec![(x, y), (x + KEY_W, y)], s)),
        Key::Line(s, true) => {
            area.draw(&PathElement::new(vec![(x, y), (x + 13, y)], s))?;
            area.draw(&PathElement::new(vec![(x + 21, y), (x + KEY_W, y)], s))
        }
        Key::Dot(s) => area.draw(&Circle::new((x + KEY_W / 2, y), 8, s)),
        Key::Bar(s) => area.draw(&Rectangle::new(
            [(x + 4, y - 10), (x + KEY_W - 4, y + 10)],
            s,
        )),
    }
}

/// Places text labels next to points (pixel coordinates) without overlaps:
/// each label tries right-above, left-above, right-below and left-below
/// its point and is left out when all four collide with a placed label or
/// leave `bounds`. Returns (label index, anchor pixel, position).
fn place_labels(
    points: &[(i32, i32)],
    sizes: &[(u32, u32)],
    bounds: (i32, i32, i32, i32),
) -> Vec<(usize, (i32, i32), Pos)> {
    let mut placed: Vec<(i32, i32, i32, i32)> = Vec::new();
    let mut out = Vec::new();
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| (points[i].1, points[i].0));
    for i in order {
        let (px, py) = points[i];
        let (w, h) = (sizes[i].0 as i32, sizes[i].1 as i32);
        for (dx, dy, hp, vp) in [
            (12, -8, HPos::Left, VPos::Bottom),
            (-12, -8, HPos::Right, VPos::Bottom),
            (12, 8, HPos::Left, VPos::Top),
            (-12, 8, HPos::Right, VPos::Top),
        ] {
            let (ax, ay) = (px + dx, py + dy);
            let x0 = if matches!(hp, HPos::Left) { ax } else { ax - w };
            let y0 = if matches!(vp, VPos::Top) { ay } else { ay - h };
            let b = (x0, y0, x0 + w, y0 + h);
            let inside = b.0 >= bounds.0 && b.1 >= bounds.1 && b.2 <= bounds.2 && b.3 <= bounds.3;
            let free = placed
                .iter()
                .all(|p| b.2 <= p.0 || b.0 >= p.2 || b.3 <= p.1 || b.1 >= p.3);
            if inside && free {
                placed.push(b);
                out.push((i, (ax, ay), Pos::new(hp, vp)));
                break;
            }
        }
    }
    out
}

fn tick(v: f64, span: f64) -> String {
    let digits = if span >= 20.0 {
        0
    } else if span >= 2.0 {
        1
    } else if span >= 0.2 {
        2
    } else {
        3
    };
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// ` + v` or ` − |v|` with one decimal.
fn signed(v: f64) -> String {
    if v < 0.0 {
        format!(" − {:.1}", -v)
    } else {
        format!(" + {v:.1}")
    }
}

/// A numeric axis: linear, or log2 (values are drawn at `log2(v)` and
/// labelled with `2^x`).
pub(crate) struct Axis {
    pub(crate) desc: String,
    pub(crate) log2: bool,
    /// Counts: label only whole numbers.
    pub(crate) integer: bool,
    pub(crate) lo: f64,
    pub(crate) hi: f64,
}

impl Axis {
    /// Linear from `lo` to `hi` (widened when they are equal).
    pub(crate) fn linear(desc: &str, lo: f64, hi: f64) -> Axis {
        let (lo, hi) = if hi > lo {
            (lo, hi)
        } else {
            (lo - 0.5 * lo.abs().max(1.0), hi + 0.5 * hi.abs().max(1.0))
        };
        Axis {
            desc: desc.into(),
            log2: false,
            integer: false,
            lo,
            hi,
        }
    }

    /// The same axis labelled with whole numbers only.
    pub(crate) fn counts(self) -> Axis {
        Axis {
            integer: true,
            ..self
        }
    }

    /// An axis for positive `values`: log2 when they span a factor of 8 or
    /// more, linear from 0 otherwise; padded on both sides.
    pub(crate) fn for_positive(desc: &str, values: impl Iterator<Item = f64>) -> Axis {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if !(lo.is_finite() && hi.is_finite()) {
            return Axis::linear(desc, 0.0, 1.0);
        }
        if lo > 0.0 && hi / lo >= 8.0 {
            let (a, b) = (lo.log2(), hi.log2());
            let pad = 0.06 * (b - a);
            Axis {
                desc: desc.into(),
                log2: true,
                integer: false,
                lo: a - pad,
                hi: b + pad,
            }
        } else {
            Axis::linear(desc, 0.0, hi * 1.08)
        }
    }

    pub(crate) fn fwd(&self, v: f64) -> f64 {
        if self.log2 {
            v.log2()
        } else {
            v
        }
    }

    pub(crate) fn label(&self, v: f64) -> String {
        if self.log2 {
            let x = v.exp2();
            if x >= 10.0 {
                format!("{x:.0}")
            } else {
                tick(x, x)
            }
        } else if self.integer {
            if (v - v.round()).abs() < 1e-9 {
                format!("{v:.0}")
            } else {
                String::new()
            }
        } else {
            tick(v, self.hi - self.lo)
        }
    }

    pub(crate) fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }

    /// Tick count: every power of two on a log2 axis (at most 12).
    pub(crate) fn ticks(&self) -> usize {
        let span = self.hi - self.lo;
        if self.log2 {
            (span.floor() as usize + 1).clamp(2, 12)
        } else if self.integer && span < 8.0 {
            (span.floor() as usize + 1).max(2)
        } else {
            8
        }
    }
}

pub(crate) fn chart<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
    x: &Axis,
    y: &Axis,
) -> std::result::Result<Chart<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    let mut b = ChartBuilder::on(root);
    if !title.is_empty() {
        b.caption(title, font(TITLE_PX));
    }
    let mut c = b
        .margin(20)
        .margin_right(45)
        .x_label_area_size(110)
        .y_label_area_size(150)
        .build_cartesian_2d(x.range(), y.range())?;
    let (xf, yf) = (|v: &f64| x.label(*v), |v: &f64| y.label(*v));
    c.configure_mesh()
        .x_desc(x.desc.as_str())
        .y_desc(y.desc.as_str())
        .axis_desc_style(font(AXIS_PX))
        .label_style(font(TICK_PX))
        .x_labels(x.ticks())
        .y_labels(y.ticks())
        .x_label_formatter(&xf)
        .y_label_formatter(&yf)
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(RGBColor(245, 245, 245))
        .axis_style(BLACK.stroke_width(2))
        .draw()?;
    Ok(c)
}

/// The part of `y = a x + b` inside the box, if any.
fn clip_line(a: f64, b: f64, x: (f64, f64), y: (f64, f64)) -> Option<Vec<(f64, f64)>> {
    let (mut x0, mut x1) = x;
    if a != 0.0 {
        let (u, v) = ((y.0 - b) / a, (y.1 - b) / a);
        let (u, v) = (u.min(v), u.max(v));
        x0 = x0.max(u);
        x1 = x1.min(v);
    } else if b < y.0 || b > y.1 {
        return None;
    }
    (x1 > x0).then(|| vec![(x0, a * x0 + b), (x1, a * x1 + b)])
}

/// "1 vector", "2 vectors", ...
pub(crate) fn vectors(n: usize) -> String {
    if n == 1 {
        "1 vector".into()
    } else {
        format!("{n} vectors")
    }
}

/// How groups are named in legends: only the keys that vary.
struct Namer {
    dataset: bool,
    n_mem: bool,
}

impl Namer {
    fn of<'a>(keys: impl Iterator<Item = (&'a str, usize)> + Clone) -> Namer {
        let ds: BTreeSet<&str> = keys.clone().map(|k| k.0).collect();
        let ms: BTreeSet<usize> = keys.map(|k| k.1).collect();
        Namer {
            dataset: ds.len() > 1,
            n_mem: ms.len() > 1 || ms.iter().any(|&m| m != 1),
        }
    }

    fn name(&self, model: &str, dataset: &str, n_mem: usize) -> String {
        let mut s = model.to_string();
        if self.dataset {
            s += &format!(" · {dataset}");
        }
        if self.n_mem {
            s += &format!(" · {}", vectors(n_mem));
        }
        s
    }
}

// ---------------------------------------------------------------- Figure 1

struct MaxLossless {
    /// Bar labels (models), top to bottom.
    models: Vec<String>,
    datasets: Vec<String>,
    /// `values[model][dataset]`; `None` where the model has no such group.
    values: Vec<Vec<Option<f64>>>,
}

const BAR_PX: u32 = 40;

impl MaxLossless {
    fn slot(&self) -> u32 {
        BAR_PX * self.datasets.len() as u32 + 26
    }
}

impl MaxLossless {
    /// Height of the bar chart without its legend band.
    fn chart_height(&self) -> u32 {
        (200 + self.slot() * self.models.len() as u32).max(H / 2)
    }
}

impl Plot for MaxLossless {
    fn size(&self) -> (u32, u32) {
        let legend = ROW as u32 * self.datasets.len().div_ceil(2) as u32 + 20;
        (W, self.chart_height() + legend)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let (root, below) = root.split_vertically(self.chart_height());
        let root = &root;
        let n = self.models.len() as i32;
        let k = self.datasets.len();
        let mut label_w = 0;
        for m in &self.models {
            label_w = label_w.max(root.estimate_text_size(m, &font(TICK_PX))?.0);
        }
        let vmax = self
            .values
            .iter()
            .flatten()
            .flatten()
            .fold(4.0, |a: f64, &b| a.max(b));
        let xmax = vmax * 1.2;
        let mut c = ChartBuilder::on(root)
            .margin(20)
            .margin_right(45)
            .x_label_area_size(110)
            .y_label_area_size(label_w + 30)
            .build_cartesian_2d(0f64..xmax, 0f64..n as f64)?;
        let xf = |v: &f64| {
            if (v - v.round()).abs() < 1e-9 {
                format!("{v:.0}")
            } else {
                String::new()
            }
        };
        c.configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc("Max lossless length, tokens")
            .axis_desc_style(font(AXIS_PX))
            .label_style(font(TICK_PX))
            .x_label_formatter(&xf)
            .x_labels(6)
            .bold_line_style(RGBColor(225, 225, 225))
            .light_line_style(RGBColor(245, 245, 245))
            .axis_style(BLACK.stroke_width(2))
            .draw()?;
        // Model i (from the top) owns the band [n-1-i, n-i) of the y axis;
        // its datasets' bars share 76% of it, the first on top.
        let text = font(TICK_PX).pos(Pos::new(HPos::Left, VPos::Center));
        let name = font(TICK_PX).pos(Pos::new(HPos::Right, VPos::Center));
        let h = 0.76 / k.max(1) as f64;
        for (i, row) in self.values.iter().enumerate() {
            let top = (n - i as i32) as f64 - 0.12;
            let (px, py) = c.backend_coord(&(0.0, top - 0.38));
            root.draw(&Text::new(
                self.models[i].clone(),
                (px - 12, py),
                name.clone(),
            ))?;
            for (d, v) in row.iter().enumerate() {
                let Some(v) = *v else { continue };
                let (y0, y1) = (top - (d + 1) as f64 * h, top - d as f64 * h);
                c.draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y0), (v, y1)],
                    color(d).filled(),
                )))?;
                c.draw_series(std::iter::once(
                    EmptyElement::at((v, 0.5 * (y0 + y1)))
                        + Text::new(format!("{v:.0}"), (10, 0), text.clone()),
                ))?;
            }
        }
        let entries: Vec<Entry> = self
            .datasets
            .iter()
            .enumerate()
            .map(|(d, name)| Entry::bar(name.as_str(), color(d).filled()))
            .collect();
        draw_legend_columns(&below, &entries, 2)
    }
}

// ---------------------------------------------------------------- accuracy

struct AccuracyVsLength<'a> {
    groups: &'a [GroupSummary],
    threshold: f64,
}

impl AccuracyVsLength<'_> {
    fn entries(&self) -> Vec<Entry> {
        let namer = Namer::of(self.groups.iter().map(|g| (g.dataset.as_str(), g.n_mem)));
        let mut e = vec![Entry::dashed(
            format!("threshold {}", self.threshold),
            BLACK.mix(0.55).stroke_width(3),
        )];
        for (i, g) in self.groups.iter().enumerate() {
            e.push(Entry::line(
                namer.name(&g.model, &g.dataset, g.n_mem),
                color(i).stroke_width(4),
            ));
        }
        e.push(Entry::dashed(
            "without vectors",
            BLACK.mix(0.7).stroke_width(2),
        ));
        e
    }
}

impl Plot for AccuracyVsLength<'_> {
    fn size(&self) -> (u32, u32) {
        size_with_legend(&self.entries(), (W, H))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let entries = self.entries();
        let (plot, panel) = split_for_legend(root, &entries);
        let x = Axis::for_positive(
            "Text length, tokens",
            self.groups
                .iter()
                .flat_map(|g| g.lengths.iter().map(|l| l.length as f64)),
        );
        let x = if x.log2 { x } else { x.counts() };
        let y = Axis::linear("Mean accuracy", 0.0, 1.04);
        let mut c = chart(&plot, "", &x, &y)?;
        c.draw_series(DashedLineSeries::new(
            vec![(x.lo, self.threshold), (x.hi, self.threshold)],
            14,
            8,
            BLACK.mix(0.55).stroke_width(3),
        ))?;
        for (i, g) in self.groups.iter().enumerate() {
            let col = color(i);
            let pts: Vec<(f64, f64)> = g
                .lengths
                .iter()
                .map(|l| (x.fwd(l.length as f64), l.mean_best_accuracy))
                .collect();
            let orig: Vec<(f64, f64)> = g
                .lengths
                .iter()
                .map(|l| (x.fwd(l.length as f64), l.mean_original_accuracy))
                .collect();
            c.draw_series(LineSeries::new(pts.clone(), col.stroke_width(4)))?;
            c.draw_series(pts.iter().map(|&p| Circle::new(p, 7, col.filled())))?;
            c.draw_series(DashedLineSeries::new(orig, 8, 8, col.stroke_width(2)))?;
        }
        finish_legend(&c, &panel, &entries)
    }
}

// ---------------------------------------------------------------- CE

struct CeScatter<'a> {
    group: &'a GroupSummary,
    cells: Vec<&'a Cell>,
    title: String,
    threshold: f64,
}

/// The colour bin of length `l` among the ascending `lengths`.
fn bin_of(lengths: &[usize], n_bins: usize, l: usize) -> usize {
    let i = lengths.binary_search(&l).unwrap_or(0);
    i * n_bins / lengths.len().max(1)
}

/// Most colours (length bins) in a CE figure.
const MAX_LENGTH_BINS: usize = 6;

impl CeScatter<'_> {
    /// Rows of the two-column legend under the plot: the no-gain line,
    /// lossless texts, one per length bin, two fits (at most).
    fn legend_rows(&self) -> u32 {
        let t = self.threshold;
        let lossless = self.cells.iter().any(|c| c.best_accuracy >= t);
        let (lengths, n_bins) = self.lengths();
        let bins: BTreeSet<usize> = self
            .cells
            .iter()
            .filter(|c| c.best_accuracy < t)
            .map(|c| bin_of(&lengths, n_bins, c.length))
            .collect();
        let fits = usize::from(self.group.ce_fit_unit_slope.is_some())
            + usize::from(self.group.ce_fit_free.is_some());
        let n = 1 + usize::from(lossless) + bins.len() + fits;
        n.div_ceil(2) as u32
    }

    /// The distinct lengths, ascending, and how many colour bins they get.
    fn lengths(&self) -> (Vec<usize>, usize) {
        let lengths: Vec<usize> = self
            .cells
            .iter()
            .map(|c| c.length)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let n_bins = lengths.len().min(MAX_LENGTH_BINS);
        (lengths, n_bins)
    }
}

impl Plot for CeScatter<'_> {
    fn size(&self) -> (u32, u32) {
        (W, H + 30 + ROW as u32 * self.legend_rows())
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let (root, below) = root.split_vertically(H);
        let root = &root;
        let t = self.threshold;
        let xs = self.cells.iter().map(|c| c.original_ce());
        let ys = self.cells.iter().map(|c| c.compressed_ce());
        let xmax = xs.fold(0.0, f64::max).max(1e-9) * 1.06;
        let ymax = ys.fold(0.0, f64::max).max(1e-9) * 1.12;
        let x = Axis::linear("Original cross-entropy H, nats", 0.0, xmax);
        let y = Axis::linear("Compressed cross-entropy, nats", 0.0, ymax);
        let mut c = chart(root, &self.title, &x, &y)?;
        let mut entries = Vec::new();

        // Lengths to colours: every length, or bins of neighbouring lengths.
        let (lengths, n_bins) = self.lengths();
        let bin_of = |l: usize| bin_of(&lengths, n_bins, l);
        let bin_colour = |b: usize| {
            viridis(if n_bins > 1 {
                b as f64 / (n_bins - 1) as f64
            } else {
                0.0
            })
        };
        let mut bins: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
        for &l in &lengths {
            let e = bins.entry(bin_of(l)).or_insert((l, l));
            e.0 = e.0.min(l);
            e.1 = e.1.max(l);
        }

        let diag = BLACK.mix(0.45).stroke_width(2);
        if let Some(p) = clip_line(1.0, 0.0, (x.lo, x.hi), (y.lo, y.hi)) {
            c.draw_series(DashedLineSeries::new(p, 6, 6, diag))?;
            entries.push(Entry::dashed("y = x (no gain)", diag));
        }
        let lossless: Vec<&&Cell> = self.cells.iter().filter(|c| c.best_accuracy >= t).collect();
        if !lossless.is_empty() {
            let hollow = BLACK.mix(0.5).stroke_width(2);
            c.draw_series(
                lossless
                    .iter()
                    .map(|c| Circle::new((c.original_ce(), c.compressed_ce()), 7, hollow)),
            )?;
            entries.push(Entry::dot(format!("accuracy ≥ {t} (not fitted)"), hollow));
        }
        for (b, (lo, hi)) in &bins {
            let col = bin_colour(*b);
            let pts: Vec<(f64, f64)> = self
                .cells
                .iter()
                .filter(|c| c.best_accuracy < t && bin_of(c.length) == *b)
                .map(|c| (c.original_ce(), c.compressed_ce()))
                .collect();
            if pts.is_empty() {
                continue;
            }
            c.draw_series(pts.into_iter().map(|p| Circle::new(p, 8, col.filled())))?;
            entries.push(Entry::dot(
                if lo == hi {
                    format!("{lo} tokens")
                } else {
                    format!("{lo}–{hi} tokens")
                },
                col.filled(),
            ));
        }
        // The fits' long labels fill the legend's first column.
        let mut fits = Vec::new();
        let g = self.group;
        if let Some(f) = g.ce_fit_unit_slope {
            let style = RGBColor(200, 30, 30).stroke_width(4);
            if let Some(p) = clip_line(1.0, f.intercept, (x.lo, x.hi), (y.lo, y.hi)) {
                c.draw_series(LineSeries::new(p, style))?;
                fits.push(Entry::line(
                    format!("fit, slope 1: y = x{}", signed(f.intercept)),
                    style,
                ));
            }
        }
        if let Some(f) = g.ce_fit_free {
            let style = RGBColor(30, 30, 30).stroke_width(3);
            if let Some(p) = clip_line(f.slope, f.intercept, (x.lo, x.hi), (y.lo, y.hi)) {
                c.draw_series(DashedLineSeries::new(p, 14, 8, style))?;
                fits.push(Entry::dashed(
                    format!(
                        "fit: y = {:.2} x{}, R² {:.2}",
                        f.slope,
                        signed(f.intercept),
                        f.r_squared
                    ),
                    style,
                ));
            }
        }
        fits.extend(entries);
        draw_legend_columns(&below, &fits, 2)
    }
}

// ---------------------------------------------------------------- Figure 4

struct Vectors {
    /// (label, [(n_mem, max lossless length)]).
    series: Vec<(String, Vec<(usize, f64)>)>,
}

impl Vectors {
    fn entries(&self) -> Vec<Entry> {
        self.series
            .iter()
            .enumerate()
            .map(|(i, (name, _))| Entry::line(name.as_str(), color(i).stroke_width(4)))
            .collect()
    }
}

impl Plot for Vectors {
    fn size(&self) -> (u32, u32) {
        size_with_legend(&self.entries(), (W, H))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let entries = self.entries();
        let (plot, panel) = split_for_legend(root, &entries);
        let x = Axis::for_positive(
            "Number of [mem] vectors",
            self.series
                .iter()
                .flat_map(|s| s.1.iter().map(|p| p.0 as f64)),
        );
        let x = if x.log2 { x } else { x.counts() };
        let ymax = self
            .series
            .iter()
            .flat_map(|s| s.1.iter().map(|p| p.1))
            .fold(1.0, f64::max);
        let y = Axis::linear("Max lossless length, tokens", 0.0, ymax * 1.15).counts();
        let mut c = chart(&plot, "", &x, &y)?;
        for (i, (_, pts)) in self.series.iter().enumerate() {
            let col = color(i);
            let pts: Vec<(f64, f64)> = pts.iter().map(|&(m, v)| (x.fwd(m as f64), v)).collect();
            c.draw_series(LineSeries::new(pts.clone(), col.stroke_width(4)))?;
            c.draw_series(pts.into_iter().map(|p| Circle::new(p, 8, col.filled())))?;
        }
        finish_legend(&c, &panel, &entries)
    }
}

// ---------------------------------------------------------------- Figure 5

struct Capacity {
    /// (point label, dataset index, theoretical, empirical).
    points: Vec<(String, usize, f64, f64)>,
    datasets: Vec<String>,
}

impl Capacity {
    fn entries(&self) -> Vec<Entry> {
        let mut e = vec![Entry::dashed(
            "equal utilisation",
            BLACK.mix(0.35).stroke_width(2),
        )];
        for (d, name) in self.datasets.iter().enumerate() {
            if self.points.iter().any(|p| p.1 == d) {
                e.push(Entry::dot(name.as_str(), color(d).filled()));
            }
        }
        e
    }
}

impl Plot for Capacity {
    fn size(&self) -> (u32, u32) {
        size_with_legend(&self.entries(), (W, H))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let entries = self.entries();
        let (plot, legend_at) = split_for_legend(root, &entries);
        let root = &plot;
        let xmax = self.points.iter().map(|p| p.2).fold(1.0, f64::max) * 1.2;
        let ymax = self.points.iter().map(|p| p.3).fold(1.0, f64::max) * 1.3;
        let x = Axis::linear("Theoretical capacity, tokens", 0.0, xmax);
        let y = Axis::linear("Empirical capacity, tokens", 0.0, ymax);
        let mut c = chart(root, "", &x, &y)?;
        // Lines of equal utilisation near the points' utilisations, each
        // labelled at the end where it leaves the box.
        let utils = self.points.iter().map(|p| p.3 / p.2);
        let (umin, umax) = utils.fold((f64::INFINITY, 0.0f64), |(a, b), u| (a.min(u), b.max(u)));
        let grey = BLACK.mix(0.35).stroke_width(2);
        let soft = BLACK.mix(0.6);
        for u in [1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005] {
            if u < umin / 2.5 || u > umax * 2.5 {
                continue;
            }
            let Some(p) = clip_line(u, 0.0, (x.lo, x.hi), (y.lo, y.hi)) else {
                continue;
            };
            let end = p[1];
            c.draw_series(DashedLineSeries::new(p, 6, 6, grey))?;
            // Leaves through the top: label below its end; else above.
            let (v, dy) = if end.1 >= y.hi * 0.999 {
                (VPos::Top, 8)
            } else {
                (VPos::Bottom, -6)
            };
            let style = font(LEGEND_PX).color(&soft).pos(Pos::new(HPos::Right, v));
            c.draw_series(std::iter::once(
                EmptyElement::at(end) + Text::new(format!("{}%", u * 100.0), (-8, dy), style),
            ))?;
        }
        for d in 0..self.datasets.len() {
            let style = color(d).filled();
            let pts: Vec<(f64, f64)> = self
                .points
                .iter()
                .filter(|p| p.1 == d)
                .map(|p| (p.2, p.3))
                .collect();
            if pts.is_empty() {
                continue;
            }
            c.draw_series(pts.into_iter().map(|p| Circle::new(p, 9, style)))?;
        }
        // Point labels where they fit without overlapping.
        let area = c.plotting_area().strip_coord_spec();
        let (aw, ah) = area.dim_in_pixel();
        let style = font(LEGEND_PX);
        let mut px = Vec::new();
        let mut sizes = Vec::new();
        for p in &self.points {
            let (bx, by) = c.backend_coord(&(p.2, p.3));
            let (ox, oy) = area.get_base_pixel();
            px.push((bx - ox, by - oy));
            sizes.push(area.estimate_text_size(&p.0, &style)?);
        }
        for (i, at, pos) in place_labels(&px, &sizes, (0, 0, aw as i32, ah as i32)) {
            area.draw(&Text::new(self.points[i].0.clone(), at, style.pos(pos)))?;
        }
        finish_legend(&c, &legend_at, &entries)
    }
}

// ---------------------------------------------------------------- curves

/// Height of the two curve panels.
const CURVES_H: u32 = 1230;

struct Curves<'a> {
    cells: &'a [&'a ReportCell],
}

impl Curves<'_> {
    fn entries(&self) -> Vec<Entry> {
        let namer = Namer::of(
            self.cells
                .iter()
                .map(|c| (c.cell.dataset.as_str(), c.cell.n_mem)),
        );
        let models: BTreeSet<&str> = self.cells.iter().map(|c| c.cell.model.as_str()).collect();
        self.cells
            .iter()
            .enumerate()
            .map(|(i, rc)| {
                let c = &rc.cell;
                let mut s = format!("text {}, {} tokens", c.sample_id, rc.tokens());
                if models.len() > 1 || namer.dataset || namer.n_mem {
                    s = format!("{} · {s}", namer.name(&c.model, &c.dataset, c.n_mem));
                }
                Entry::line(s, color(i).stroke_width(3))
            })
            .collect()
    }
}

impl Plot for Curves<'_> {
    fn size(&self) -> (u32, u32) {
        let legend = ROW as u32 * self.cells.len().div_ceil(2) as u32 + 20;
        (W, CURVES_H + legend)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let steps = self
            .cells
            .iter()
            .map(|c| c.loss_curve.len().max(c.accuracy_curve.len()))
            .max()
            .unwrap_or(1)
            .max(2) as f64;
        let loss_max = self
            .cells
            .iter()
            .flat_map(|c| c.loss_curve.iter().map(|&v| v as f64))
            .filter(|v| v.is_finite())
            .fold(1e-6, f64::max);
        let (panels, below) = root.split_vertically(CURVES_H);
        let (top, bottom) = panels.split_vertically(CURVES_H / 2);
        let x = Axis::linear("Optimisation step", 0.0, steps).counts();
        let series = |curve: &[f32]| -> Vec<(f64, f64)> {
            curve
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(s, &v)| ((s + 1) as f64, v as f64))
                .collect()
        };
        let y = Axis::linear("Loss, nats per token", 0.0, loss_max * 1.05);
        let mut c = chart(&top, "", &x, &y)?;
        for (i, rc) in self.cells.iter().enumerate() {
            c.draw_series(LineSeries::new(
                series(&rc.loss_curve),
                color(i).stroke_width(3),
            ))?;
        }
        let y = Axis::linear("Accuracy", 0.0, 1.04);
        let mut c = chart(&bottom, "", &x, &y)?;
        for (i, rc) in self.cells.iter().enumerate() {
            c.draw_series(LineSeries::new(
                series(&rc.accuracy_curve),
                color(i).stroke_width(3),
            ))?;
        }
        draw_legend_columns(&below, &self.entries(), 2)
    }
}

// ---------------------------------------------------------------- all

/// A file-name-safe form of `s`.
pub(crate) fn slug(s: &str) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        if ch.is_ascii_alphanumeric() || ch == '.' {
            out.push(ch.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// Draws every figure that has data into `dir` (`.png` and `.svg` each) and
/// returns them in page order. `groups` are [`cram::metrics::summarise`]'s
/// output for `cells`; `curves` are the texts whose curves are drawn.
pub fn draw_all(
    dir: &Path,
    groups: &[GroupSummary],
    cells: &[Cell],
    curves: &[&ReportCell],
    cfg: &MetricsConfig,
) -> Result<Vec<Figure>> {
    register_font()?;
    let t = cfg.threshold;
    let mut figs = Vec::new();
    let mut add = |stem: String, title: String, caption: String, p: &dyn Fn(&str) -> Result<()>| {
        p(&stem)?;
        figs.push(Figure {
            stem,
            title,
            caption,
        });
        Ok::<(), CramError>(())
    };
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let datasets: Vec<String> = groups
        .iter()
        .map(|g| g.dataset.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let ds_index = |d: &str| datasets.iter().position(|x| x == d).unwrap_or(0);

    // Figure 1: each (model, dataset) at its fewest vectors.
    let mut fewest: BTreeMap<(&str, &str), &GroupSummary> = BTreeMap::new();
    for g in groups {
        let e = fewest.entry((&g.model, &g.dataset)).or_insert(g);
        if g.n_mem < e.n_mem {
            *e = g;
        }
    }
    let models: Vec<&str> = fewest
        .keys()
        .map(|k| k.0)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let fig1 = MaxLossless {
        models: models
            .iter()
            .map(|m| {
                let n = fewest
                    .iter()
                    .filter(|(k, _)| k.0 == *m)
                    .map(|(_, g)| g.n_mem)
                    .min()
                    .unwrap_or(1);
                if n == 1 {
                    m.to_string()
                } else {
                    format!("{m} ({})", vectors(n))
                }
            })
            .collect(),
        values: models
            .iter()
            .map(|m| {
                datasets
                    .iter()
                    .map(|d| {
                        fewest
                            .get(&(*m, d.as_str()))
                            .map(|g| g.max_lossless_length.unwrap_or(0) as f64)
                    })
                    .collect()
            })
            .collect(),
        datasets: datasets.clone(),
    };
    add(
        "max_lossless".into(),
        "Maximum lossless length".into(),
        format!("Longest text length whose mean accuracy over texts is at least {t}, per model and dataset (0: no length reaches it). The paper's Figure 1."),
        &|s| render(dir, s, &fig1),
    )?;

    add(
        "accuracy_vs_length".into(),
        "Accuracy against length".into(),
        format!("Mean accuracy of the decoded text over the texts of each length, with the vectors (solid) and without (dashed); the dashed grey line is the threshold {t}."),
        &|s| render(dir, s, &AccuracyVsLength { groups, threshold: t }),
    )?;

    let namer = Namer::of(groups.iter().map(|g| (g.dataset.as_str(), g.n_mem)));
    for g in groups {
        let gc: Vec<&Cell> = cells
            .iter()
            .filter(|c| c.model == g.model && c.dataset == g.dataset && c.n_mem == g.n_mem)
            .collect();
        let name = namer.name(&g.model, &g.dataset, g.n_mem);
        let stem = format!(
            "ce_{}",
            slug(&format!("{}-{}-{}", g.model, g.dataset, g.n_mem))
        );
        let p = CeScatter {
            group: g,
            cells: gc,
            title: name.clone(),
            threshold: t,
        };
        add(
            stem,
            format!("Cross-entropy: {name}"),
            format!("Total cross-entropy of each text with the vectors against without, coloured by length. Fits over the texts with accuracy < {t}: slope fixed to 1 (solid red; its intercept is minus the mean information gain of those texts) and free slope (dashed). The paper's Figures 3 and 6."),
            &|s| render(dir, s, &p),
        )?;
    }

    // Figure 4: per (model, dataset), max lossless length per n_mem.
    let mut by_md: BTreeMap<(&str, &str), Vec<(usize, f64)>> = BTreeMap::new();
    for g in groups {
        by_md
            .entry((&g.model, &g.dataset))
            .or_default()
            .push((g.n_mem, g.max_lossless_length.unwrap_or(0) as f64));
    }
    let multi_ds = datasets.len() > 1;
    let vectors = Vectors {
        series: by_md
            .into_iter()
            .map(|((m, d), pts)| {
                (
                    if multi_ds {
                        format!("{m} · {d}")
                    } else {
                        m.to_string()
                    },
                    pts,
                )
            })
            .collect(),
    };
    add(
        "vectors".into(),
        "Decoded tokens against vectors".into(),
        format!("Maximum lossless length (accuracy ≥ {t}) against the number of [mem] vectors. The paper's Figure 4."),
        &|s| render(dir, s, &vectors),
    )?;

    let cap_points: Vec<(String, usize, f64, f64)> = groups
        .iter()
        .filter_map(|g| {
            let gain = g.token_gain?.mean;
            let mut label = g.model.clone();
            if namer.n_mem {
                label += &format!(" ×{}", g.n_mem);
            }
            Some((label, ds_index(&g.dataset), g.capacity_tokens, gain))
        })
        .collect();
    if !cap_points.is_empty() {
        let cap = Capacity {
            points: cap_points,
            datasets: datasets.clone(),
        };
        add(
            "capacity".into(),
            "Theoretical and empirical capacity".into(),
            format!("Mean token gain over the texts with accuracy ≤ {t} against the theoretical capacity n_mem · hidden · {} / log2(vocabulary). The paper's Figure 5.", cfg.bits),
            &|s| render(dir, s, &cap),
        )?;
    }

    if !curves.is_empty() {
        add(
            "curves".into(),
            "Optimisation curves".into(),
            "Loss (top) and accuracy (bottom) of the chosen texts at every optimisation step."
                .into(),
            &|s| render(dir, s, &Curves { cells: curves }),
        )?;
    }
    Ok(figs)
}
