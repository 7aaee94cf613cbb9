//! Principal components of a set of vectors and the distances within and
//! between groups of them (the notebook `test_mem_pca` of the paper's code,
//! which uses scikit-learn's `PCA`).
//!
//! The points are few (tens to hundreds) and wide (the model's input
//! width), so the components come from the eigenvectors of the centred
//! Gram matrix `X Xᵀ` (cyclic Jacobi rotations): component `j` is
//! `Xᵀ u_j / sqrt(λ_j)` and its variance `λ_j / (n - 1)`, as scikit-learn
//! computes from the SVD of `X`. Each component's sign is fixed so that its
//! largest coordinate is positive.

/// The first principal components of a set of points.
#[derive(Debug, Clone, PartialEq)]
pub struct Pca {
    /// The points' mean.
    pub mean: Vec<f64>,
    /// Unit components, largest variance first.
    pub components: Vec<Vec<f64>>,
    /// The variance along each component (divided by `n - 1`).
    pub variance: Vec<f64>,
}

/// Eigenvalues and eigenvectors (columns of the returned matrix, row-major)
/// of a symmetric `n × n` matrix, by cyclic Jacobi rotations.
fn symmetric_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        let scale: f64 = (0..n).map(|i| a[i * n + i].powi(2)).sum::<f64>() + off;
        if off <= 1e-24 * scale.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

impl Pca {
    /// The first `k` components of `points` (all of one width); `None` with
    /// fewer than two points or mismatched widths. Fewer than `k`
    /// components come back when the points span fewer dimensions.
    pub fn fit(points: &[Vec<f64>], k: usize) -> Option<Pca> {
        let n = points.len();
        let d = points.first()?.len();
        if n < 2 || points.iter().any(|p| p.len() != d) {
            return None;
        }
        let mut mean = vec![0.0; d];
        for p in points {
            for (m, x) in mean.iter_mut().zip(p) {
                *m += x / n as f64;
            }
        }
        let x: Vec<Vec<f64>> = points
            .iter()
            .map(|p| p.iter().zip(&mean).map(|(a, m)| a - m).collect())
            .collect();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(u, v)| u * v).sum::<f64>();
        let mut gram = vec![0.0; n * n];
        for i in 0..n {
            for j in i..n {
                let g = dot(&x[i], &x[j]);
                gram[i * n + j] = g;
                gram[j * n + i] = g;
            }
        }
        let (vals, vecs) = symmetric_eigen(gram, n);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
        let top = vals[order[0]].max(0.0);
        let mut components = Vec::new();
        let mut variance = Vec::new();
        for &j in order.iter().take(k) {
            let lambda = vals[j];
            if lambda <= 1e-12 * top.max(1e-300) {
                break;
            }
            let mut c = vec![0.0; d];
            for (i, xi) in x.iter().enumerate() {
                let u = vecs[i * n + j];
                for (cv, xv) in c.iter_mut().zip(xi) {
                    *cv += u * xv;
                }
            }
            let norm = lambda.sqrt();
            c.iter_mut().for_each(|v| *v /= norm);
            let big = c
                .iter()
                .fold(0.0f64, |a, &b| if b.abs() > a.abs() { b } else { a });
            if big < 0.0 {
                c.iter_mut().for_each(|v| *v = -*v);
            }
            components.push(c);
            variance.push(lambda / (n - 1) as f64);
        }
        Some(Pca {
            mean,
            components,
            variance,
        })
    }

    /// The coordinates of `p` along the components.
    pub fn project(&self, p: &[f64]) -> Vec<f64> {
        self.components
            .iter()
            .map(|c| {
                c.iter()
                    .zip(p.iter().zip(&self.mean))
                    .map(|(cv, (x, m))| cv * (x - m))
                    .sum()
            })
            .collect()
    }
}

/// Euclidean distance.
pub fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Mean distance between two points of one group (over every group's
/// pairs) and between two points of different groups; `None` where there
/// is no such pair.
pub fn within_between(groups: &[Vec<Vec<f64>>]) -> (Option<f64>, Option<f64>) {
    let (mut w, mut nw, mut b, mut nb) = (0.0, 0usize, 0.0, 0usize);
    for (gi, g) in groups.iter().enumerate() {
        for (i, p) in g.iter().enumerate() {
            for q in &g[i + 1..] {
                w += distance(p, q);
                nw += 1;
            }
            for h in &groups[gi + 1..] {
                for q in h {
                    b += distance(p, q);
                    nb += 1;
                }
            }
        }
    }
    (
        (nw > 0).then(|| w / nw as f64),
        (nb > 0).then(|| b / nb as f64),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    /// Four points on the axes: covariance diag(8/3, 2/3, 0), computed by hand.
    #[test]
    fn components_of_a_hand_computed_set() {
        let pts = vec![
            vec![2.0, 0.0, 5.0],
            vec![-2.0, 0.0, 5.0],
            vec![0.0, 1.0, 5.0],
            vec![0.0, -1.0, 5.0],
        ];
        let p = Pca::fit(&pts, 3).unwrap();
        assert_eq!(p.components.len(), 2, "the points span a plane");
        close(p.variance[0], 8.0 / 3.0);
        close(p.variance[1], 2.0 / 3.0);
        for (c, want) in p.components.iter().zip([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) {
            for (a, b) in c.iter().zip(want) {
                close(*a, b);
            }
        }
        assert_eq!(p.mean, vec![0.0, 0.0, 5.0]);
        let x = p.project(&[2.0, 0.0, 5.0]);
        close(x[0], 2.0);
        close(x[1], 0.0);
    }

    /// Points along (1, 2, 2)/3: one component, that direction.
    #[test]
    fn a_line_has_one_component() {
        let pts: Vec<Vec<f64>> = (0..5)
            .map(|t| {
                let t = t as f64 - 2.0;
                vec![1.0 + t, 2.0 * t, -1.0 + 2.0 * t]
            })
            .collect();
        let p = Pca::fit(&pts, 3).unwrap();
        assert_eq!(p.components.len(), 1);
        for (a, b) in p.components[0]
            .iter()
            .zip([1.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0])
        {
            close(*a, b);
        }
        // Variance of t·3 over t = -2..2: 9 · 10 / 4.
        close(p.variance[0], 22.5);
        assert!(Pca::fit(&pts[..1], 3).is_none());
    }

    #[test]
    fn within_and_between_distances() {
        let a = vec![vec![0.0, 0.0], vec![0.0, 2.0]];
        let b = vec![vec![3.0, 0.0]];
        let (w, bt) = within_between(&[a, b]);
        close(w.unwrap(), 2.0);
        close(bt.unwrap(), (3.0 + 13f64.sqrt()) / 2.0);
        assert_eq!(within_between(&[vec![vec![1.0]]]), (None, None));
    }
}
