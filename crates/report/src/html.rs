//! The report's `index.html`: one self-contained page (no network, no
//! other file needed) with the tables, every figure as a base64 PNG data
//! URI, and each run's configuration.

use std::path::Path;

use base64::Engine as _;

use super::ablations::Section;
use super::figures::Figure;
use super::tables::{self, Table};
use super::{ReportConfig, RunData};
use crate::capacity::CapacityRun;
use cram::error::{CramError, Result};
use cram::metrics::{Cell, GroupSummary};

/// File name of the page.
pub const INDEX: &str = "index.html";

/// `s` with `&`, `<`, `>`, `"` and `'` escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            '"' => out += "&quot;",
            '\'' => out += "&#39;",
            c => out.push(c),
        }
    }
    out
}

fn table_html(t: &Table, text_cols: usize) -> String {
    let mut s = String::from("<div class=\"scroll\"><table>\n<thead><tr>");
    for h in &t.header {
        s += &format!("<th>{}</th>", escape(h));
    }
    s += "</tr></thead>\n<tbody>\n";
    for r in &t.rows {
        s += "<tr>";
        for (i, v) in r.iter().enumerate() {
            let class = if i < text_cols { "" } else { " class=\"num\"" };
            s += &format!("<td{class}>{}</td>", escape(v));
        }
        s += "</tr>\n";
    }
    s + "</tbody></table></div>\n"
}

const STYLE: &str = "body{font-family:'DejaVu Sans',Verdana,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.3em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;vertical-align:top}th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.scroll{overflow-x:auto}
figure{margin:1.5em 0;display:inline-block;vertical-align:top;width:48%;min-width:420px}
figure img{width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#444}
pre{background:#f7f7f7;border:1px solid #ddd;padding:.7em;overflow-x:auto;font-size:.8em}
.meta{color:#555}";

/// The capacity runs of a report, their figures and the sweeps' cells
/// (for the comparison with a fixed grid).
pub struct CapacityPart<'a> {
    /// The runs.
    pub runs: &'a [CapacityRun],
    /// Their figures (drawn by [`crate::capacity::draw`]).
    pub figures: &'a [Figure],
    /// Every sweep cell of the report.
    pub cells: &'a [Cell],
}

/// A figure as an `<img>` with its PNG inlined, and its caption.
fn figure_html(dir: &Path, f: &Figure) -> Result<String> {
    let png = dir.join(format!("{}.png", f.stem));
    let bytes = std::fs::read(&png).map_err(|e| CramError::io(&png, e))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(format!(
        "<figure id=\"{stem}\"><img alt=\"{title}\" src=\"data:image/png;base64,{b64}\"><figcaption><b>{title}.</b> {caption} (<a href=\"{stem}.png\">PNG</a>, <a href=\"{stem}.svg\">SVG</a>)</figcaption></figure>\n",
        stem = escape(&f.stem),
        title = escape(&f.title),
        caption = escape(&f.caption),
    ))
}

/// The page's section on capacity runs.
fn capacity_html(dir: &Path, part: &CapacityPart<'_>) -> Result<String> {
    let mut s = String::from("<h2 id=\"capacity\">Capacity search</h2>\n<p>Per text, the horizon: the longest prefix that greedy decoding reproduces exactly from the vectors (and the layout's fixed prefix) alone, found by <code>cram capacity</code>'s stage search with warm starts. Files: <a href=\"capacity.md\">capacity.md</a>, <a href=\"capacity.csv\">capacity.csv</a>.</p>\n");
    s += &table_html(&crate::capacity::summary(part.runs), 3);
    for f in part.figures {
        s += &figure_html(dir, f)?;
    }
    s += "<h3>Horizon per text</h3>\n<p>Beside each text, where the report's sweeps hold it (same model, text id and vector count), the longest grid length its vectors reproduce exactly (accuracy 1) and the grid's lengths (<a href=\"capacity_texts.csv\">capacity_texts.csv</a>).</p>\n";
    s += &table_html(&crate::capacity::texts(part.runs, part.cells), 2);
    for r in part.runs {
        s += &format!(
            "<h3>{}</h3>\n<p class=\"meta\">{} text(s), {} done, {} stages.</p>\n<pre class=\"config\">{}</pre>\n",
            escape(&r.name),
            r.texts.len(),
            r.done().count(),
            r.stages.len(),
            escape(&serde_json::to_string_pretty(&r.settings).unwrap_or_default())
        );
    }
    Ok(s)
}

/// Writes `index.html` into `dir`; the figures' PNG files must already be
/// there. The sweeps' sections are left out when there are no cells.
pub fn write_index(
    dir: &Path,
    runs: &[RunData],
    capacity: &CapacityPart<'_>,
    groups: &[GroupSummary],
    figs: &[Figure],
    sections: &[Section],
    cfg: &ReportConfig,
) -> Result<()> {
    let m = &cfg.metrics;
    let n_cells: usize = runs.iter().map(|r| r.cells.len()).sum();
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{t}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{t}</h1>\n<p class=\"meta\">{n_runs} run(s), {n_cells} texts, {n_groups} (model, dataset, vectors) group(s). Accuracy threshold {th}; theoretical capacity at {bits} bits per component. Cross-entropies are totals over a text, in nats unless marked bits.</p>\n",
        t = escape(&cfg.title),
        n_runs = runs.len(),
        n_groups = groups.len(),
        th = m.threshold,
        bits = m.bits,
    );
    let diverged = runs
        .iter()
        .flat_map(|r| &r.cells)
        .filter(|c| !c.cell.best_loss.is_finite())
        .count();
    if diverged > 0 {
        s += &format!(
            "<p class=\"meta\"><b>{diverged} text(s) diverged</b>: their loss with the vectors is not finite (stop reason <code>diverged</code>), which makes the cross-entropy aggregates of their groups non-finite.</p>\n"
        );
    }
    if !groups.is_empty() {
        s += "<h2>Table 1: capacity per model</h2>\n<p>Token and information gain: mean ± sample standard deviation over the texts with accuracy ≤ the threshold; utilisation: mean token gain / theoretical capacity. Files: <a href=\"table1.md\">table1.md</a>, <a href=\"table1.csv\">table1.csv</a>, <a href=\"cells.csv\">cells.csv</a>.</p>\n";
        s += &table_html(&tables::table1(groups, m), 2);

        s += "<h2>Figures</h2>\n";
        for f in figs {
            s += &figure_html(dir, f)?;
        }

        s += "<h2>Cross-entropy fits</h2>\n<p>Compressed against original cross-entropy over the texts with accuracy &lt; the threshold (<a href=\"fits.csv\">fits.csv</a>).</p>\n";
        s += &table_html(&tables::fits(groups, true), 2);
        s += "<h2>Accuracy per length</h2>\n<p>(<a href=\"lengths.csv\">lengths.csv</a>)</p>\n";
        s += &table_html(&tables::lengths(groups, true), 2);

        for sec in sections {
            s += &format!(
                "<h2 id=\"section-{stem}\">{title}</h2>\n<p>Table: <a href=\"{csv}\">{csv}</a> (every row of these experiments: <a href=\"ablations.csv\">ablations.csv</a>).</p>\n",
                stem = escape(&sec.figure.stem),
                title = escape(&sec.title),
                csv = escape(&sec.csv),
            );
            s += &table_html(&sec.table, 2);
            s += &figure_html(dir, &sec.figure)?;
        }
    }
    if !capacity.runs.is_empty() {
        s += &capacity_html(dir, capacity)?;
    }
    if !runs.is_empty() {
        s += "<h2>Runs</h2>\n";
    }
    for r in runs {
        s += &format!(
            "<h3>{}</h3>\n<p class=\"meta\">{} texts.</p>\n",
            escape(&r.name),
            r.cells.len()
        );
        if r.config_toml.trim().is_empty() {
            s += "<p class=\"meta\">(no configuration recorded)</p>\n";
        } else {
            s += &format!("<pre class=\"config\">{}</pre>\n", escape(&r.config_toml));
        }
    }
    s += "</body>\n</html>\n";
    let p = dir.join(INDEX);
    std::fs::write(&p, s).map_err(|e| CramError::io(&p, e))
}
