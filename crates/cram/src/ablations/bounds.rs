//! How much cross-entropy the vectors must remove (the notebook
//! `text_compression_upper_bound` of the paper's code): from the model's own
//! next-token distribution `p` at a position whose target is `t`,
//!
//! * `h = -ln p_t`, the cross-entropy of the text without vectors;
//! * `h_max = -ln max p`, what is left if the target took the largest
//!   probability (the loosest bound);
//! * `h_eq = -ln((max p + p_t) / 2)`, the target and the most likely token
//!   meeting half way;
//! * `h_opt = -ln θ`, the least change of `p` (in total variation) that
//!   makes `t` an argmax: the tokens more likely than `t` are lowered and
//!   `t` raised to a common level `θ = (p_t + S_k) / (k + 1)`, where `S_k`
//!   is the sum of the `k` largest other probabilities and `k` is the least
//!   count with `θ ≥` the `(k+1)`-th largest (water filling).
//!
//! `h - h_opt` summed over a text is the least cross-entropy reduction that
//! makes every target token the greedy choice.

/// The four entropies of one position, nats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBounds {
    /// `-ln p_t`.
    pub h: f64,
    /// `-ln max p`.
    pub h_max: f64,
    /// `-ln((max p + p_t) / 2)`.
    pub h_eq: f64,
    /// `-ln θ` (see the module's documentation).
    pub h_opt: f64,
}

/// The bounds of one position from its logits and target token.
///
/// # Panics
///
/// If `target` is not an index into `logits` (the caller checks tokens
/// against the vocabulary).
pub fn token_bounds(logits: &[f32], target: usize) -> TokenBounds {
    let m = logits
        .iter()
        .fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
    let lse = m + logits
        .iter()
        .map(|&l| (l as f64 - m).exp())
        .sum::<f64>()
        .ln();
    let lt = logits[target] as f64;
    let p_t = (lt - lse).exp();
    let p_max = (m - lse).exp();
    // The probabilities above the target's, largest first.
    let mut above: Vec<f64> = logits
        .iter()
        .enumerate()
        .filter(|&(i, &l)| i != target && (l as f64) > lt)
        .map(|(_, &l)| (l as f64 - lse).exp())
        .collect();
    above.sort_by(|a, b| b.total_cmp(a));
    let mut sum = p_t;
    let mut theta = p_t;
    for (k, &q) in above.iter().enumerate() {
        if theta >= q {
            break;
        }
        sum += q;
        theta = sum / (k + 2) as f64;
    }
    TokenBounds {
        h: lse - lt,
        h_max: lse - m,
        h_eq: -((p_max + p_t) / 2.0).ln(),
        h_opt: -theta.ln(),
    }
}

/// The bounds summed over the positions of a text.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TextBounds {
    /// Positions summed.
    pub n: usize,
    /// Sum of `h`, nats.
    pub h: f64,
    /// Sum of `h_max`, nats.
    pub h_max: f64,
    /// Sum of `h_eq`, nats.
    pub h_eq: f64,
    /// Sum of `h_opt`, nats.
    pub h_opt: f64,
}

impl TextBounds {
    /// Adds one position.
    pub fn add(&mut self, b: TokenBounds) {
        self.n += 1;
        self.h += b.h;
        self.h_max += b.h_max;
        self.h_eq += b.h_eq;
        self.h_opt += b.h_opt;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(p: &[f64]) -> Vec<f32> {
        p.iter().map(|&x| x.max(1e-30).ln() as f32).collect()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }

    /// The notebook's own example (`adj_distr`): three rows, target 3.
    #[test]
    fn water_filling_matches_the_notebook_example() {
        // 0.2 is raised, 0.4 and 0.35 lowered: θ = (0.2 + 0.4 + 0.35) / 3.
        let b = token_bounds(&logits(&[0.05, 0.4, 0.35, 0.2]), 3);
        close(b.h_opt, -(0.95f64 / 3.0).ln());
        close(b.h, -(0.2f64).ln());
        close(b.h_max, -(0.4f64).ln());
        close(b.h_eq, -(0.3f64).ln());
        // Already the argmax: nothing moves.
        let b = token_bounds(&logits(&[0.0, 0.0, 0.0, 1.0]), 3);
        close(b.h_opt, 0.0);
        close(b.h_max, 0.0);
        // Two tied above the target.
        let b = token_bounds(&logits(&[0.05, 0.35, 0.35, 0.25]), 3);
        close(b.h_opt, -(0.95f64 / 3.0).ln());
    }

    /// `adjust_distribution`'s example: the target has probability 0 and
    /// only the two largest are lowered (θ = 0.75 / 3 ≥ 0.2).
    #[test]
    fn water_filling_stops_at_the_first_level_above_the_rest() {
        let b = token_bounds(&logits(&[0.05, 0.4, 0.35, 0.2, 0.0]), 4);
        close(b.h_opt, -(0.25f64).ln());
        // One token above: they meet half way, so h_opt = h_eq.
        let b = token_bounds(&logits(&[0.6, 0.3, 0.1]), 1);
        close(b.h_opt, -(0.45f64).ln());
        close(b.h_eq, b.h_opt);
    }

    #[test]
    fn bounds_are_ordered_and_sum() {
        let l = [0.3f32, -1.0, 2.0, 0.5, 1.9];
        let mut t = TextBounds::default();
        for target in 0..l.len() {
            let b = token_bounds(&l, target);
            assert!(b.h_max <= b.h_opt + 1e-12, "{b:?}");
            assert!(b.h_opt <= b.h_eq + 1e-12, "{b:?}");
            assert!(b.h_eq <= b.h + 1e-12, "{b:?}");
            t.add(b);
        }
        assert_eq!(t.n, 5);
        let lse = l.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        let h: f64 = l.iter().map(|&x| lse - x as f64).sum();
        close(t.h, h);
    }
}
