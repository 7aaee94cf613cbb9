//! The report stage's arithmetic: per-text metrics of a cramming run and the
//! paper's per-model aggregates (Kuratov et al. 2025, Table 1 and Figures
//! 3 and 6).
//!
//! The input is a flat list of [`Cell`]s, one per (model, dataset, text,
//! `n_mem`, length) run, built from an engine result with
//! [`Cell::from_result`] or read back from a results file. Per-cell metrics
//! are methods of [`Cell`]; [`summarise`] groups cells and computes the
//! aggregates ([`GroupSummary`]).
//!
//! # Definitions
//!
//! All cross-entropies are **totals over a text in nats** (the engine's
//! losses are mean nats per predicted token); `_bits` variants divide by
//! `ln 2`.
//!
//! * original CE `H = original_loss * original_n_predicted`;
//! * compressed CE `H' = best_loss * n_predicted`;
//! * information gain (the paper's "cross-entropy reduction") `H - H'`;
//! * token gain (the paper's "gain, tokens") `best_accuracy * n_predicted -
//!   original_accuracy * original_n_predicted`: correctly predicted tokens
//!   with the vectors minus without;
//! * theoretical capacity `n_mem * hidden * bits / log2(vocab)` tokens
//!   ([`crate::model::theoretical_capacity`]); the paper's table uses
//!   `bits = 16` and prints it rounded to the nearest integer.
//!
//! Each loss is multiplied by the number of tokens it was averaged over. The
//! paper's notebook multiplies both by the text length `L` instead; under
//! the paper's loss convention both counts are `L - 1`, so our totals are
//! the paper's times `(L - 1) / L`.
//!
//! # Which cells each aggregate uses
//!
//! With `t` the accuracy threshold (default 0.99), following the paper's
//! analysis notebook (`notebooks/ablations_analyze_results.ipynb` of
//! yurakuratov/hidden_capacity):
//!
//! * **maximum lossless length**: per length, the mean of `best_accuracy`
//!   over that length's cells; the largest length whose mean is `>= t`.
//! * **token gain and information gain** (Table 1): mean (and sample
//!   standard deviation) over the cells with `best_accuracy <= t`, pooled
//!   across lengths. A text that is decoded (almost) perfectly gains only as
//!   many tokens as it has, so its gain says how long the text was, not how
//!   much the vector can hold; only texts the vector could not reproduce
//!   measure the vector's capacity. The paper's Table 1 cell writes `<=`,
//!   so a cell exactly at the threshold counts as at capacity.
//! * **capacity utilisation**: mean token gain / theoretical capacity of the
//!   group's `n_mem` vectors (one vector in the paper).
//! * **CE fits** (Figures 3 and 6, compressed CE against original CE): least
//!   squares over the cells with `best_accuracy < t` (the figure's code
//!   writes `<`), with the slope fixed to 1 (intercept `mean(y - x)`) and
//!   with a free slope.
//!
//! All comparisons are exact, as in the paper's pandas code.

use std::collections::BTreeMap;
use std::f64::consts::LN_2;

use serde::{Deserialize, Serialize};

use crate::engine::CramResult;
use crate::error::{CramError, Result};
use crate::model::theoretical_capacity;

/// The paper's accuracy threshold for "lossless".
pub const DEFAULT_THRESHOLD: f64 = 0.99;

/// The paper's bits per vector component (bf16/fp16 storage).
pub const DEFAULT_BITS: f64 = 16.0;

/// One cramming run: a text of `length` tokens crammed into `n_mem` vectors
/// of one model. Everything the report stage needs, nothing more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Model name (grouping key).
    pub model: String,
    /// Dataset name (grouping key).
    pub dataset: String,
    /// Identifier of the text within the dataset.
    pub sample_id: String,
    /// Number of trained vectors.
    pub n_mem: usize,
    /// Text length in tokens, BOS included when the tokenizer adds one (the
    /// paper's `max_length`).
    pub length: usize,
    /// Width of the model's input embeddings.
    pub hidden_size: usize,
    /// Vocabulary size of the model.
    pub vocab_size: usize,
    /// Mean cross-entropy without vectors, nats per predicted token.
    #[serde(deserialize_with = "crate::nonfinite::f64")]
    pub original_loss: f64,
    /// Accuracy without vectors.
    #[serde(deserialize_with = "crate::nonfinite::f64")]
    pub original_accuracy: f64,
    /// Tokens `original_loss` and `original_accuracy` are averaged over.
    pub original_n_predicted: usize,
    /// Mean cross-entropy with the kept vectors, nats per predicted token.
    #[serde(deserialize_with = "crate::nonfinite::f64")]
    pub best_loss: f64,
    /// Accuracy with the kept vectors.
    #[serde(deserialize_with = "crate::nonfinite::f64")]
    pub best_accuracy: f64,
    /// Tokens `best_loss` and `best_accuracy` are averaged over.
    pub n_predicted: usize,
}

impl Cell {
    /// The cell of one engine result. `hidden_size` is the model's input
    /// width and `vocab_size` its vocabulary size; `length` is the result's
    /// `n_tokens`.
    pub fn from_result(
        model: &str,
        dataset: &str,
        sample_id: &str,
        hidden_size: usize,
        vocab_size: usize,
        r: &CramResult,
    ) -> Cell {
        Cell {
            model: model.to_string(),
            dataset: dataset.to_string(),
            sample_id: sample_id.to_string(),
            n_mem: r.n_mem,
            length: r.n_tokens,
            hidden_size,
            vocab_size,
            original_loss: r.original_loss,
            original_accuracy: r.original_accuracy,
            original_n_predicted: r.original_n_predicted,
            best_loss: r.best_loss,
            best_accuracy: r.best_accuracy,
            n_predicted: r.n_predicted,
        }
    }

    /// Total cross-entropy of the text without vectors, nats.
    pub fn original_ce(&self) -> f64 {
        self.original_loss * self.original_n_predicted as f64
    }

    /// Total cross-entropy of the text with the kept vectors, nats.
    pub fn compressed_ce(&self) -> f64 {
        self.best_loss * self.n_predicted as f64
    }

    /// Information gain (cross-entropy reduction) of the vectors, nats.
    pub fn info_gain_nats(&self) -> f64 {
        self.original_ce() - self.compressed_ce()
    }

    /// Information gain of the vectors, bits.
    pub fn info_gain_bits(&self) -> f64 {
        self.info_gain_nats() / LN_2
    }

    /// Correctly predicted tokens without vectors.
    pub fn original_correct(&self) -> f64 {
        self.original_accuracy * self.original_n_predicted as f64
    }

    /// Correctly predicted tokens with the kept vectors.
    pub fn best_correct(&self) -> f64 {
        self.best_accuracy * self.n_predicted as f64
    }

    /// Token gain: correct tokens with the vectors minus without.
    pub fn token_gain(&self) -> f64 {
        self.best_correct() - self.original_correct()
    }

    /// Theoretical capacity of the cell's vectors in tokens at `bits` bits
    /// per component.
    pub fn capacity_tokens(&self, bits: f64) -> f64 {
        theoretical_capacity(self.hidden_size, self.vocab_size, self.n_mem, bits)
    }

    fn check(&self) -> Result<()> {
        let bad = |what: &str, v: f64| {
            Err(CramError::Input(format!(
                "cell {}/{}/{} (n_mem {}, length {}): {what} is {v}",
                self.model, self.dataset, self.sample_id, self.n_mem, self.length
            )))
        };
        for (what, v) in [
            ("original_loss", self.original_loss),
            ("original_accuracy", self.original_accuracy),
            ("best_loss", self.best_loss),
            ("best_accuracy", self.best_accuracy),
        ] {
            if !v.is_finite() {
                return bad(what, v);
            }
        }
        if self.hidden_size == 0 || self.vocab_size < 2 {
            return Err(CramError::Input(format!(
                "cell {}/{}/{}: hidden size {} and vocabulary size {} give no capacity",
                self.model, self.dataset, self.sample_id, self.hidden_size, self.vocab_size
            )));
        }
        Ok(())
    }
}

/// Settings of the aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricsConfig {
    /// Accuracy threshold for "lossless" (default [`DEFAULT_THRESHOLD`]).
    pub threshold: f64,
    /// Bits per vector component in the theoretical capacity (default
    /// [`DEFAULT_BITS`]).
    pub bits: f64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            threshold: DEFAULT_THRESHOLD,
            bits: DEFAULT_BITS,
        }
    }
}

/// Mean and sample standard deviation of some values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    /// Number of values.
    pub n: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation (`n - 1` denominator, as pandas); `None`
    /// for fewer than two values.
    pub std: Option<f64>,
}

impl MeanStd {
    /// Mean and standard deviation of `values`; `None` when empty.
    pub fn of(values: &[f64]) -> Option<MeanStd> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = (n > 1).then(|| {
            let ss: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
            (ss / (n - 1) as f64).sqrt()
        });
        Some(MeanStd { n, mean, std })
    }
}

/// Least-squares line `y = slope * x + intercept`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LineFit {
    /// Points fitted.
    pub n: usize,
    /// Slope (exactly 1 for [`fit_unit_slope`]).
    pub slope: f64,
    /// Intercept.
    pub intercept: f64,
    /// Coefficient of determination `1 - SS_res / SS_tot`; 1 when the `y`
    /// values do not vary and the line passes through them all.
    pub r_squared: f64,
}

fn r_squared(xs: &[f64], ys: &[f64], slope: f64, intercept: f64) -> f64 {
    let my = ys.iter().sum::<f64>() / ys.len() as f64;
    let ss_tot: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
    let ss_res: f64 = xs
        .iter()
        .zip(ys)
        .map(|(x, y)| (y - slope * x - intercept).powi(2))
        .sum();
    if ss_tot == 0.0 {
        if ss_res == 0.0 {
            1.0
        } else {
            f64::NEG_INFINITY
        }
    } else {
        1.0 - ss_res / ss_tot
    }
}

/// Least squares with the slope fixed to 1: intercept `mean(y - x)`.
/// `None` when there are no points or the lengths differ.
pub fn fit_unit_slope(xs: &[f64], ys: &[f64]) -> Option<LineFit> {
    if xs.is_empty() || xs.len() != ys.len() {
        return None;
    }
    let n = xs.len();
    let intercept = xs.iter().zip(ys).map(|(x, y)| y - x).sum::<f64>() / n as f64;
    Some(LineFit {
        n,
        slope: 1.0,
        intercept,
        r_squared: r_squared(xs, ys, 1.0, intercept),
    })
}

/// Ordinary least squares `y = a x + b`: `a = S_xy / S_xx`,
/// `b = mean(y) - a mean(x)`. `None` with fewer than two points, lengths
/// that differ, or `x` values that are all equal.
pub fn fit_line(xs: &[f64], ys: &[f64]) -> Option<LineFit> {
    if xs.len() < 2 || xs.len() != ys.len() {
        return None;
    }
    let n = xs.len();
    let mx = xs.iter().sum::<f64>() / n as f64;
    let my = ys.iter().sum::<f64>() / n as f64;
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    Some(LineFit {
        n,
        slope,
        intercept,
        r_squared: r_squared(xs, ys, slope, intercept),
    })
}

/// One length of a group: how well its texts were reproduced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LengthSummary {
    /// Text length in tokens.
    pub length: usize,
    /// Cells (texts) of this length.
    pub n_cells: usize,
    /// Mean accuracy with the kept vectors.
    pub mean_best_accuracy: f64,
    /// Mean accuracy without vectors.
    pub mean_original_accuracy: f64,
}

/// The aggregates of one (model, dataset, `n_mem`) group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// Model name.
    pub model: String,
    /// Dataset name.
    pub dataset: String,
    /// Number of vectors.
    pub n_mem: usize,
    /// The model's input width.
    pub hidden_size: usize,
    /// The model's vocabulary size.
    pub vocab_size: usize,
    /// Cells in the group.
    pub n_cells: usize,
    /// Per length, ascending.
    pub lengths: Vec<LengthSummary>,
    /// Largest length whose mean best accuracy is `>= threshold`; `None`
    /// when no length reaches it.
    pub max_lossless_length: Option<usize>,
    /// Cells with `best_accuracy <= threshold`: the ones the gains average.
    pub n_at_capacity: usize,
    /// Token gain over those cells; `None` when there are none.
    pub token_gain: Option<MeanStd>,
    /// Information gain in nats over those cells.
    pub info_gain_nats: Option<MeanStd>,
    /// Information gain in bits over those cells.
    pub info_gain_bits: Option<MeanStd>,
    /// Theoretical capacity of `n_mem` vectors, tokens.
    pub capacity_tokens: f64,
    /// Mean token gain / `capacity_tokens`.
    pub capacity_utilisation: Option<f64>,
    /// Compressed CE against original CE with slope 1, over the cells with
    /// `best_accuracy < threshold`.
    pub ce_fit_unit_slope: Option<LineFit>,
    /// The same with a free slope (needs two distinct original CEs).
    pub ce_fit_free: Option<LineFit>,
}

/// Aggregates of `cells` grouped by (model, dataset, `n_mem`), sorted by
/// that key. See the module documentation for which cells each aggregate
/// uses.
///
/// Errors: a threshold or bit width that is not finite (or bits `<= 0`), a
/// cell with a non-finite loss or accuracy, or cells of one model that
/// disagree on hidden or vocabulary size.
pub fn summarise(cells: &[Cell], cfg: &MetricsConfig) -> Result<Vec<GroupSummary>> {
    if !cfg.threshold.is_finite() {
        return Err(CramError::Input(format!(
            "accuracy threshold {} is not a number",
            cfg.threshold
        )));
    }
    if !(cfg.bits.is_finite() && cfg.bits > 0.0) {
        return Err(CramError::Input(format!(
            "bits per component must be positive, got {}",
            cfg.bits
        )));
    }
    let mut sizes: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut groups: BTreeMap<(&str, &str, usize), Vec<&Cell>> = BTreeMap::new();
    for c in cells {
        c.check()?;
        let s = *sizes
            .entry(&c.model)
            .or_insert((c.hidden_size, c.vocab_size));
        if s != (c.hidden_size, c.vocab_size) {
            return Err(CramError::Input(format!(
                "model {}: cells disagree on (hidden, vocab): {:?} and {:?}",
                c.model,
                s,
                (c.hidden_size, c.vocab_size)
            )));
        }
        groups
            .entry((&c.model, &c.dataset, c.n_mem))
            .or_default()
            .push(c);
    }
    Ok(groups
        .into_iter()
        .map(|((model, dataset, n_mem), g)| summarise_group(model, dataset, n_mem, &g, cfg))
        .collect())
}

fn summarise_group(
    model: &str,
    dataset: &str,
    n_mem: usize,
    cells: &[&Cell],
    cfg: &MetricsConfig,
) -> GroupSummary {
    let t = cfg.threshold;
    let (hidden_size, vocab_size) = (cells[0].hidden_size, cells[0].vocab_size);

    let mut by_len: BTreeMap<usize, Vec<&Cell>> = BTreeMap::new();
    for &c in cells {
        by_len.entry(c.length).or_default().push(c);
    }
    let lengths: Vec<LengthSummary> = by_len
        .iter()
        .map(|(&length, cs)| {
            let n = cs.len() as f64;
            LengthSummary {
                length,
                n_cells: cs.len(),
                mean_best_accuracy: cs.iter().map(|c| c.best_accuracy).sum::<f64>() / n,
                mean_original_accuracy: cs.iter().map(|c| c.original_accuracy).sum::<f64>() / n,
            }
        })
        .collect();
    let max_lossless_length = lengths
        .iter()
        .filter(|l| l.mean_best_accuracy >= t)
        .map(|l| l.length)
        .max();

    let at_capacity: Vec<&Cell> = cells
        .iter()
        .copied()
        .filter(|c| c.best_accuracy <= t)
        .collect();
    let gains: Vec<f64> = at_capacity.iter().map(|c| c.token_gain()).collect();
    let nats: Vec<f64> = at_capacity.iter().map(|c| c.info_gain_nats()).collect();
    let bits: Vec<f64> = at_capacity.iter().map(|c| c.info_gain_bits()).collect();
    let token_gain = MeanStd::of(&gains);
    let capacity_tokens = theoretical_capacity(hidden_size, vocab_size, n_mem, cfg.bits);

    let (xs, ys): (Vec<f64>, Vec<f64>) = cells
        .iter()
        .filter(|c| c.best_accuracy < t)
        .map(|c| (c.original_ce(), c.compressed_ce()))
        .unzip();

    GroupSummary {
        model: model.to_string(),
        dataset: dataset.to_string(),
        n_mem,
        hidden_size,
        vocab_size,
        n_cells: cells.len(),
        lengths,
        max_lossless_length,
        n_at_capacity: at_capacity.len(),
        capacity_utilisation: token_gain.map(|g| g.mean / capacity_tokens),
        token_gain,
        info_gain_nats: MeanStd::of(&nats),
        info_gain_bits: MeanStd::of(&bits),
        capacity_tokens,
        ce_fit_unit_slope: fit_unit_slope(&xs, &ys),
        ce_fit_free: fit_line(&xs, &ys),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_std_matches_pandas() {
        // [1, 2, 4]: mean 7/3, sample variance ((4/3)^2 + (1/3)^2 + (5/3)^2) / 2 = 7/3.
        let m = MeanStd::of(&[1.0, 2.0, 4.0]).unwrap();
        assert_eq!(m.n, 3);
        assert!((m.mean - 7.0 / 3.0).abs() < 1e-15);
        assert!((m.std.unwrap() - (7.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert_eq!(MeanStd::of(&[5.0]).unwrap().std, None);
        assert!(MeanStd::of(&[]).is_none());
    }

    #[test]
    fn fits_degenerate_inputs() {
        assert!(fit_line(&[1.0], &[2.0]).is_none());
        assert!(fit_line(&[1.0, 1.0], &[2.0, 3.0]).is_none());
        assert!(fit_unit_slope(&[], &[]).is_none());
        // y = x + 2 exactly: both fits recover it with r² = 1.
        let f = fit_line(&[0.0, 1.0, 3.0], &[2.0, 3.0, 5.0]).unwrap();
        assert!((f.slope - 1.0).abs() < 1e-12 && (f.intercept - 2.0).abs() < 1e-12);
        assert!((f.r_squared - 1.0).abs() < 1e-12);
        let u = fit_unit_slope(&[0.0, 1.0, 3.0], &[2.0, 3.0, 5.0]).unwrap();
        assert_eq!((u.slope, u.intercept, u.r_squared), (1.0, 2.0, 1.0));
        // constant y on the fitted line: r² defined as 1.
        let c = fit_line(&[0.0, 1.0], &[4.0, 4.0]).unwrap();
        assert_eq!((c.slope, c.intercept, c.r_squared), (0.0, 4.0, 1.0));
    }
}
