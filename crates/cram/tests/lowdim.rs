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

/// The engine's gradient with respect to `params` (one text, `ids`),
/// checked along a direction against a central finite difference.
fn checked_gradient(engine: &Engine<'_>, ids: &[u32], params: &[f32], salt: usize) -> Vec<f32> {
    let embeds = engine.embed_tokens(ids).unwrap();
    let loss_at = |p: &[f32]| {
        engine
            .step_batch(&[StepItem {
                params: p,
                ids,
                embeds: &embeds,
            }])
            .unwrap()
            .remove(0)
    };
    let out = loss_at(params);
    assert_eq!(out.grad.len(), params.len(), "one gradient per parameter");
    let d = direction(params.len(), salt);
    let eps = 1e-2f32;
    let plus: Vec<f32> = params.iter().zip(&d).map(|(a, b)| a + eps * b).collect();
    let minus: Vec<f32> = params.iter().zip(&d).map(|(a, b)| a - eps * b).collect();
    let fd = (loss_at(&plus).loss - loss_at(&minus).loss) / (2.0 * eps as f64);
    let an = dot(&out.grad, &d);
    assert!(
        (fd - an).abs() <= 0.02 * an.abs().max(1e-3),
        "finite difference {fd} vs gradient {an}"
    );
    out.grad
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
    let z: Vec<f32> = direction(2 * k, 1).iter().map(|x| x * 0.3).collect();
    // 2 vectors: the gradient is with respect to their z.
    checked_gradient(&engine, ids, &z, 2);
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
    let z3 = learned.fitted_z[&3].clone();
    assert_eq!(
        learned.fitted_tokens[&3],
        cram::memfile::tokens_sha256(&fit[0].1),
        "the tokens it fitted on"
    );
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
    let (a, b) = (&fit[0].1, &fit[1].1);
    assert_eq!(fitted.initial_state(3, a).params, z3);
    assert_eq!(
        fitted.initial_state(0, a).params,
        vec![0.0; 2 * k],
        "not fitted"
    );
    assert_eq!(
        fitted.initial_state(3, b).params,
        vec![0.0; 2 * k],
        "another text at a fitted index"
    );
    assert_eq!(
        with(ZStart::Zero).initial_state(3, a).params,
        vec![0.0; 2 * k]
    );
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

#[test]
fn an_own_basis_starts_at_the_full_start_and_its_gradients_match_finite_differences() {
    let m = fixture();
    let k = 4;
    let width = m.model.info().input_size;
    let engine = Engine::new(&m, config(k, BasisKind::Own, 10)).unwrap();
    let params = engine.params().unwrap();
    let ids = &texts(&m)[0];
    let start = engine.initial_state(0, ids).params;
    assert_eq!(start.len(), 2 * k + width * k + width, "[z, W, b]");
    assert_eq!(params.count(2, width), start.len());
    // z = 0: the vectors start where full vectors start (the mean).
    let full = Engine::new(
        &m,
        CramConfig {
            low_dim: None,
            ..config(k, BasisKind::Own, 10)
        },
    )
    .unwrap()
    .initial_state(0, ids)
    .params;
    assert_eq!(params.vectors(&start).as_ref(), full.as_slice());
    assert_eq!(params.file_numbers(&start).as_ref(), full.as_slice());
    // Away from z = 0 every part of the parameters has a gradient.
    let p: Vec<f32> = start
        .iter()
        .zip(direction(start.len(), 5))
        .map(|(a, d)| a + 0.2 * d)
        .collect();
    let grad = checked_gradient(&engine, ids, &p, 6);
    let (gz, gwb) = grad.split_at(2 * k);
    let (gw, gb) = gwb.split_at(width * k);
    for (part, g) in [("z", gz), ("W", gw), ("b", gb)] {
        assert!(g.iter().any(|x| *x != 0.0), "{part} has no gradient");
    }
}

#[test]
fn an_own_basis_run_keeps_vectors_that_decode_without_a_basis() {
    let m = fixture();
    let k = 8;
    let engine = Engine::new(&m, config(k, BasisKind::Own, 80)).unwrap();
    assert!(
        Engine::new(&m, config(k, BasisKind::Own, 80))
            .unwrap()
            .with_basis(random_basis(&m, k))
            .is_err(),
        "an own basis takes no shared one"
    );
    let all = texts(&m);
    let results = engine.run(&all, 0, |_| {}).unwrap();
    let width = m.model.info().input_size;
    let full = Engine::new(
        &m,
        CramConfig {
            low_dim: None,
            ..config(k, BasisKind::Own, 80)
        },
    )
    .unwrap();
    for (r, ids) in results.iter().zip(&all) {
        assert_eq!(
            r.vectors.len(),
            2 * width,
            "the kept vectors, not [z, W, b]"
        );
        assert!(r.best_accuracy > 0.5, "it learned: {}", r.best_accuracy);
        // A full-vector engine decodes the kept vectors as the run did.
        let decoded = full
            .decode(&[cram::engine::DecodeItem {
                vectors: &r.vectors,
                first_token: ids.first().copied(),
                count: ids.len(),
            }])
            .unwrap()
            .remove(0);
        assert_eq!(decoded, r.decoded_ids);
    }
}
