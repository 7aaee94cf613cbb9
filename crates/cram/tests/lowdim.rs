//! Low-dimensional vectors on the small random Llama fixture: the gradients
//! with respect to `z` and to the basis against central finite
//! differences, and a learned basis that fits its texts better than the
//! random basis it starts from.

use std::path::PathBuf;

use cram::engine::{CramConfig, Engine, Init, OptimizerConfig, StepItem};
use cram::lowdim::{self, Basis, BasisKind, LowDim, ZStart};
use cram::model::{load, LoadOptions, LoadedModel};

fn fixture() -> LoadedModel {
    let dir = PathBuf::from(cram_testkit::REPO_ROOT).join("tests/fixtures/llama_gqa_tied");
    load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

const TEXTS: [&str; 2] = [
    "The keeper of the lighthouse walked along the rocky shore every evening.",
    "A small boat drifted past the harbour while gulls circled overhead and cried.",
];

fn config(k: usize, basis: BasisKind, max_steps: usize) -> CramConfig {
    CramConfig {
        n_mem: 2,
        init: Init::Mean,
        optimizer: OptimizerConfig {
            lr: 0.1,
            beta2: 0.99,
            max_steps,
            ..OptimizerConfig::default()
        },
        low_dim: Some(LowDim {
            k,
            basis,
            fit_texts: 2,
            fit_tokens: None,
            z_start: ZStart::Fitted,
        }),
        ..CramConfig::default()
    }
}

fn texts(m: &LoadedModel) -> Vec<Vec<u32>> {
    TEXTS
        .iter()
        .map(|t| {
            let mut v = m.tokenizer.encode(t, true).unwrap();
            v.truncate(9);
            v
        })
        .collect()
}

/// A deterministic direction with entries in [-1, 1].
fn direction(n: usize, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7919 + salt * 104_729) % 2001) as f32 / 1000.0) - 1.0)
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

fn random_basis(m: &LoadedModel, k: usize) -> Basis {
    let w = m.model.info().input_size;
    Basis::random(3, w, k, direction(w, 9).iter().map(|x| x * 0.05).collect())
}

#[test]
fn z_gradients_match_finite_differences() {
    let m = fixture();
    let k = 6;
    let engine = Engine::new(&m, config(k, BasisKind::Random, 10))
        .unwrap()
        .with_basis(random_basis(&m, k))
        .unwrap();
    let ids = &texts(&m)[0];
    let embeds = engine.embed_tokens(ids).unwrap();
    let z: Vec<f32> = direction(2 * k, 1).iter().map(|x| x * 0.3).collect();
    let loss_at = |z: &[f32]| {
        engine
            .step_batch(&[StepItem {
                params: z,
                ids,
                embeds: &embeds,
            }])
            .unwrap()
            .remove(0)
    };
    let out = loss_at(&z);
    assert_eq!(out.grad.len(), 2 * k, "the gradient is with respect to z");
    let d = direction(2 * k, 2);
    let eps = 1e-2f32;
    let plus: Vec<f32> = z.iter().zip(&d).map(|(a, b)| a + eps * b).collect();
    let minus: Vec<f32> = z.iter().zip(&d).map(|(a, b)| a - eps * b).collect();
    let fd = (loss_at(&plus).loss - loss_at(&minus).loss) / (2.0 * eps as f64);
    let an = dot(&out.grad, &d);
    assert!(
        (fd - an).abs() <= 0.02 * an.abs().max(1e-3),
        "finite difference {fd} vs gradient {an}"
    );
}

#[test]
fn basis_gradients_match_finite_differences() {
    let m = fixture();
    let k = 5;
    let engine = Engine::new(&m, config(k, BasisKind::Learned, 10)).unwrap();
    let all = texts(&m);
    let embeds: Vec<_> = all
        .iter()
        .map(|t| engine.embed_tokens(t).unwrap())
        .collect();
    let refs: Vec<(&[u32], &candle_core::Tensor)> =
        all.iter().map(|t| t.as_slice()).zip(&embeds).collect();
    let zs_owned: Vec<Vec<f32>> = (0..2)
        .map(|i| direction(2 * k, 3 + i).iter().map(|x| x * 0.5).collect())
        .collect();
    let zs: Vec<&[f32]> = zs_owned.iter().map(|z| z.as_slice()).collect();
    let basis = random_basis(&m, k);
    let total = |b: &Basis| -> f64 {
        lowdim::joint_grads(&engine, b, &zs, &refs)
            .unwrap()
            .losses
            .iter()
            .sum()
    };
    let gwb = lowdim::joint_grads(&engine, &basis, &zs, &refs)
        .unwrap()
        .basis;
    let n = basis.w.len();
    let d = direction(n + basis.b.len(), 4);
    let eps = 1e-2f32;
    let moved = |sign: f32| {
        let mut b = basis.clone();
        b.w.iter_mut()
            .zip(&d[..n])
            .for_each(|(w, x)| *w += sign * eps * x);
        b.b.iter_mut()
            .zip(&d[n..])
            .for_each(|(w, x)| *w += sign * eps * x);
        b
    };
    let fd = (total(&moved(1.0)) - total(&moved(-1.0))) / (2.0 * eps as f64);
    let an = dot(&gwb, &d);
    assert!(
        (fd - an).abs() <= 0.02 * an.abs().max(1e-3),
        "finite difference {fd} vs gradient {an}"
    );
}

#[test]
fn a_learned_basis_fits_its_texts_better_than_its_random_start() {
    let m = fixture();
    let k = 8;
    let engine = Engine::new(&m, config(k, BasisKind::Learned, 60)).unwrap();
    let fit: Vec<(usize, Vec<u32>)> = texts(&m).into_iter().enumerate().collect();
    let start = random_basis(&m, k);
    let mut accs = Vec::new();
    let learned = lowdim::learn(&engine, start.clone(), &fit, |_, a| accs.push(a)).unwrap();
    assert_eq!(learned.fit_steps, accs.len());
    assert_ne!(learned.w, start.w, "the basis moved");
    // The z of the same texts, optimised alone under each frozen basis.
    let frozen = |b: Basis| {
        let e = Engine::new(&m, config(k, BasisKind::Learned, 60))
            .unwrap()
            .with_basis(b)
            .unwrap();
        let r = e
            .run(
                &fit.iter().map(|f| f.1.clone()).collect::<Vec<_>>(),
                0,
                |_| {},
            )
            .unwrap();
        r.iter().map(|r| r.best_loss).sum::<f64>()
    };
    let (with_start, with_learned) = (frozen(start), frozen(learned));
    assert!(
        with_learned < with_start,
        "learned {with_learned} vs its random start {with_start}"
    );
}

#[test]
fn fitted_texts_start_from_their_fitted_z_when_asked() {
    let m = fixture();
    let k = 8;
    let engine = Engine::new(&m, config(k, BasisKind::Learned, 60)).unwrap();
    // Text indices 3 and 7 of a run fit the basis.
    let fit: Vec<(usize, Vec<u32>)> = [3, 7].into_iter().zip(texts(&m)).collect();
    let learned = lowdim::learn(&engine, random_basis(&m, k), &fit, |_, _| {}).unwrap();
    assert_eq!(
        learned.fitted_z.keys().copied().collect::<Vec<_>>(),
        vec![3, 7]
    );
    let z3 = learned.fitted(3).unwrap().to_vec();
    assert_eq!(z3.len(), 2 * k, "n_mem × k");
    assert!(z3.iter().any(|x| *x != 0.0), "the fit moved z");
    let with = |z_start: ZStart| {
        let mut cfg = config(k, BasisKind::Learned, 60);
        cfg.low_dim.as_mut().unwrap().z_start = z_start;
        Engine::new(&m, cfg)
            .unwrap()
            .with_basis(learned.clone())
            .unwrap()
    };
    let fitted = with(ZStart::Fitted);
    assert_eq!(fitted.initial_state(3).params, z3);
    assert_eq!(
        fitted.initial_state(0).params,
        vec![0.0; 2 * k],
        "not fitted"
    );
    assert_eq!(with(ZStart::Zero).initial_state(3).params, vec![0.0; 2 * k]);
    // The fitted z is the fit's own: its loss under the learned basis is
    // the fit's last, below the loss at z = 0.
    let ids = &fit[0].1;
    let embeds = fitted.embed_tokens(ids).unwrap();
    let loss = |z: &[f32]| {
        fitted
            .step_batch(&[StepItem {
                params: z,
                ids,
                embeds: &embeds,
            }])
            .unwrap()[0]
            .loss
    };
    assert!(loss(&z3) < loss(&vec![0.0; 2 * k]));
}
