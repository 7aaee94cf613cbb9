//! The report's tables, each as Markdown (to paste into a paper or an
//! issue) and CSV (full precision, one value per column).
//!
//! * `table1`: the paper's Table 1 per (model, dataset, vectors): maximum
//!   lossless length, token gain, information gain, theoretical capacity,
//!   utilisation and the slope-1 CE fit's intercept;
//! * `fits`: both CE fits (slope 1 and free) with their R²;
//! * `lengths`: mean accuracy per text length;
//! * `cells` (CSV only): every cell's metrics.

use std::path::{Path, PathBuf};

use cram::error::{CramError, Result};
use cram::metrics::{Cell, GroupSummary, MeanStd, MetricsConfig};

/// A table of strings: header and rows of the same width.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Column names.
    pub header: Vec<String>,
    /// Rows, each as wide as the header.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// GitHub-flavoured Markdown; `|` in a value is escaped. Columns after
    /// the first `text_cols` are right-aligned.
    pub fn to_markdown(&self, text_cols: usize) -> String {
        let esc = |s: &str| s.replace('|', "\\|");
        let mut out = format!(
            "| {} |\n|",
            self.header
                .iter()
                .map(|h| esc(h))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        for i in 0..self.header.len() {
            out += if i < text_cols { "---|" } else { "---:|" };
        }
        out.push('\n');
        for r in &self.rows {
            out += &format!(
                "| {} |\n",
                r.iter().map(|v| esc(v)).collect::<Vec<_>>().join(" | ")
            );
        }
        out
    }

    /// Writes the table as CSV.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        let err = |e: csv::Error| CramError::bad_file(path, e);
        let mut w = csv::Writer::from_path(path).map_err(err)?;
        w.write_record(&self.header).map_err(err)?;
        for r in &self.rows {
            w.write_record(r).map_err(err)?;
        }
        w.flush().map_err(|e| CramError::io(path, e))
    }
}

/// A value for CSV: full precision, empty when missing.
pub(crate) fn num(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_default()
}

/// A value for Markdown: `digits` decimals, an en dash when missing.
pub(crate) fn fixed(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

/// `mean ± std` for Markdown (`mean` alone for one value).
fn mean_pm(m: Option<MeanStd>, digits: usize) -> String {
    match m {
        None => "–".into(),
        Some(MeanStd {
            mean, std: None, ..
        }) => format!("{mean:.digits$}"),
        Some(MeanStd {
            mean, std: Some(s), ..
        }) => format!("{mean:.digits$} ± {s:.digits$}"),
    }
}

/// The paper's Table 1 for reading: one row per (model, dataset, vectors).
pub fn table1(groups: &[GroupSummary], cfg: &MetricsConfig) -> Table {
    let lossless = format!("Max lossless length (acc ≥ {}), tokens", cfg.threshold);
    let capacity = format!("Capacity ({} bits), tokens", cfg.bits);
    let mut t = Table::new(&[
        "Model",
        "Dataset",
        "Vectors",
        "Texts",
        &lossless,
        "Token gain",
        "Info gain, nats",
        "Info gain, bits",
        &capacity,
        "Utilisation",
        "CE fit intercept (slope 1), nats",
    ]);
    for g in groups {
        t.rows.push(vec![
            g.model.clone(),
            g.dataset.clone(),
            g.n_mem.to_string(),
            format!("{} ({} at capacity)", g.n_cells, g.n_at_capacity),
            g.max_lossless_length
                .map(|l| l.to_string())
                .unwrap_or_else(|| "–".into()),
            mean_pm(g.token_gain, 1),
            mean_pm(g.info_gain_nats, 1),
            mean_pm(g.info_gain_bits, 1),
            format!("{:.0}", g.capacity_tokens),
            fixed(g.capacity_utilisation, 3),
            fixed(g.ce_fit_unit_slope.map(|f| f.intercept), 1),
        ]);
    }
    t
}

/// The paper's Table 1 with every number at full precision.
pub fn table1_csv(groups: &[GroupSummary], cfg: &MetricsConfig) -> Table {
    let mut t = Table::new(&[
        "model",
        "dataset",
        "n_mem",
        "n_cells",
        "n_at_capacity",
        "threshold",
        "max_lossless_length",
        "token_gain_mean",
        "token_gain_std",
        "info_gain_nats_mean",
        "info_gain_nats_std",
        "info_gain_bits_mean",
        "info_gain_bits_std",
        "bits",
        "hidden_size",
        "vocab_size",
        "capacity_tokens",
        "capacity_utilisation",
        "ce_fit_unit_slope_intercept",
    ]);
    for g in groups {
        let ms = |m: Option<MeanStd>| (num(m.map(|m| m.mean)), num(m.and_then(|m| m.std)));
        let (tg, tgs) = ms(g.token_gain);
        let (ign, igns) = ms(g.info_gain_nats);
        let (igb, igbs) = ms(g.info_gain_bits);
        t.rows.push(vec![
            g.model.clone(),
            g.dataset.clone(),
            g.n_mem.to_string(),
            g.n_cells.to_string(),
            g.n_at_capacity.to_string(),
            cfg.threshold.to_string(),
            g.max_lossless_length
                .map(|l| l.to_string())
                .unwrap_or_default(),
            tg,
            tgs,
            ign,
            igns,
            igb,
            igbs,
            cfg.bits.to_string(),
            g.hidden_size.to_string(),
            g.vocab_size.to_string(),
            num(Some(g.capacity_tokens)),
            num(g.capacity_utilisation),
            num(g.ce_fit_unit_slope.map(|f| f.intercept)),
        ]);
    }
    t
}

/// Both CE fits per group; `md` selects rounded values for reading.
pub fn fits(groups: &[GroupSummary], md: bool) -> Table {
    let mut t = Table::new(if md {
        &[
            "Model",
            "Dataset",
            "Vectors",
            "Points",
            "Intercept (slope 1), nats",
            "R² (slope 1)",
            "Slope (free)",
            "Intercept (free), nats",
            "R² (free)",
        ]
    } else {
        &[
            "model",
            "dataset",
            "n_mem",
            "n_points",
            "unit_slope_intercept",
            "unit_slope_r_squared",
            "free_slope",
            "free_intercept",
            "free_r_squared",
        ]
    });
    for g in groups {
        let (u, f) = (g.ce_fit_unit_slope, g.ce_fit_free);
        let v = |x: Option<f64>, d: usize| if md { fixed(x, d) } else { num(x) };
        t.rows.push(vec![
            g.model.clone(),
            g.dataset.clone(),
            g.n_mem.to_string(),
            u.map(|u| u.n).unwrap_or(0).to_string(),
            v(u.map(|u| u.intercept), 1),
            v(u.map(|u| u.r_squared), 3),
            v(f.map(|f| f.slope), 3),
            v(f.map(|f| f.intercept), 1),
            v(f.map(|f| f.r_squared), 3),
        ]);
    }
    t
}

/// Mean accuracy per length, with and without vectors.
pub fn lengths(groups: &[GroupSummary], md: bool) -> Table {
    let mut t = Table::new(if md {
        &[
            "Model",
            "Dataset",
            "Vectors",
            "Length, tokens",
            "Texts",
            "Mean accuracy",
            "Mean accuracy without vectors",
        ]
    } else {
        &[
            "model",
            "dataset",
            "n_mem",
            "length",
            "n_cells",
            "mean_best_accuracy",
            "mean_original_accuracy",
        ]
    });
    for g in groups {
        for l in &g.lengths {
            let v = |x: f64| if md { format!("{x:.4}") } else { num(Some(x)) };
            t.rows.push(vec![
                g.model.clone(),
                g.dataset.clone(),
                g.n_mem.to_string(),
                l.length.to_string(),
                l.n_cells.to_string(),
                v(l.mean_best_accuracy),
                v(l.mean_original_accuracy),
            ]);
        }
    }
    t
}

/// Every cell's inputs and computed metrics, full precision.
pub fn cells(cells: &[Cell], cfg: &MetricsConfig) -> Table {
    let mut t = Table::new(&[
        "model",
        "dataset",
        "sample_id",
        "n_mem",
        "length",
        "original_loss",
        "original_accuracy",
        "original_n_predicted",
        "best_loss",
        "best_accuracy",
        "n_predicted",
        "original_ce_nats",
        "compressed_ce_nats",
        "info_gain_nats",
        "info_gain_bits",
        "token_gain",
        "capacity_tokens",
    ]);
    let mut sorted: Vec<&Cell> = cells.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.model, &a.dataset, a.n_mem, a.length, &a.sample_id).cmp(&(
            &b.model,
            &b.dataset,
            b.n_mem,
            b.length,
            &b.sample_id,
        ))
    });
    for c in sorted {
        t.rows.push(vec![
            c.model.clone(),
            c.dataset.clone(),
            c.sample_id.clone(),
            c.n_mem.to_string(),
            c.length.to_string(),
            num(Some(c.original_loss)),
            num(Some(c.original_accuracy)),
            c.original_n_predicted.to_string(),
            num(Some(c.best_loss)),
            num(Some(c.best_accuracy)),
            c.n_predicted.to_string(),
            num(Some(c.original_ce())),
            num(Some(c.compressed_ce())),
            num(Some(c.info_gain_nats())),
            num(Some(c.info_gain_bits())),
            num(Some(c.token_gain())),
            num(Some(c.capacity_tokens(cfg.bits))),
        ]);
    }
    t
}

/// Writes `t` as `dir/<stem>.md` (the first `text_cols` columns
/// left-aligned) and `dir/<stem>.csv`; returns both names.
pub fn write_pair(dir: &Path, stem: &str, t: &Table, text_cols: usize) -> Result<Vec<PathBuf>> {
    let md = dir.join(format!("{stem}.md"));
    std::fs::write(&md, t.to_markdown(text_cols)).map_err(|e| CramError::io(&md, e))?;
    t.write_csv(&dir.join(format!("{stem}.csv")))?;
    Ok(vec![
        PathBuf::from(format!("{stem}.md")),
        PathBuf::from(format!("{stem}.csv")),
    ])
}

/// Writes `table1`, `fits` and `lengths` (`.md` and `.csv`) and
/// `cells.csv` into `dir`; returns the file names.
pub fn write_tables(
    dir: &Path,
    groups: &[GroupSummary],
    all: &[Cell],
    cfg: &MetricsConfig,
) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut put_md = |name: &str, t: &Table, text_cols: usize| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, t.to_markdown(text_cols)).map_err(|e| CramError::io(&p, e))?;
        files.push(PathBuf::from(name));
        Ok(())
    };
    put_md("table1.md", &table1(groups, cfg), 2)?;
    put_md("fits.md", &fits(groups, true), 2)?;
    put_md("lengths.md", &lengths(groups, true), 2)?;
    for (name, t) in [
        ("table1.csv", table1_csv(groups, cfg)),
        ("fits.csv", fits(groups, false)),
        ("lengths.csv", lengths(groups, false)),
        ("cells.csv", cells(all, cfg)),
    ] {
        t.write_csv(&dir.join(name))?;
        files.push(PathBuf::from(name));
    }
    Ok(files)
}
