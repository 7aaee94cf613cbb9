//! The optimiser engine on the small random Llama fixtures: batching,
//! stopping rules, conventions, determinism and bad input.

use std::path::PathBuf;

use cram::engine::{CramConfig, CramResult, Engine, LossConvention, OptimizerConfig, StopReason};
use cram::model::{load, LoadOptions, LoadedModel};

fn fixture(name: &str) -> LoadedModel {
    let dir = PathBuf::from(cram_testkit::REPO_ROOT)
        .join("tests/fixtures")
        .join(name);
    load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn ids(m: &LoadedModel, text: &str, n: usize) -> Vec<u32> {
    let mut v = m.tokenizer.encode(text, true).unwrap();
    assert!(v.len() >= n, "text too short: {} < {n}", v.len());
    v.truncate(n);
    v
}

fn run(m: &LoadedModel, cfg: &CramConfig, texts: &[Vec<u32>], first: usize) -> Vec<CramResult> {
    Engine::new(m, cfg.clone())
        .unwrap()
        .run(texts, first, |_| {})
        .unwrap()
}

const TEXTS: [&str; 3] = [
    "The keeper of the lighthouse walked along the rocky shore every evening.",
    "A small boat drifted past the harbour while gulls circled overhead and cried.",
    "In the morning the village woke to the smell of bread and wet grass.",
];

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn mixed_lengths_in_one_batch_match_each_text_alone() {
    let m = fixture("llama_gqa_tied");
    let cfg = CramConfig {
        n_mem: 2,
        optimizer: OptimizerConfig {
            max_steps: 15,
            lr: 0.05,
            ..OptimizerConfig::default()
        },
        ..CramConfig::default()
    };
    let texts: Vec<Vec<u32>> = TEXTS
        .iter()
        .zip([5, 9, 13])
        .map(|(t, n)| ids(&m, t, n))
        .collect();
    let together = run(&m, &cfg, &texts, 0);
    for (i, t) in texts.iter().enumerate() {
        let alone = run(&m, &cfg, std::slice::from_ref(t), i);
        let r = &together[i];
        let a = &alone[0];
        assert_eq!(r.steps, a.steps);
        let dl = max_diff(&r.loss_curve, &a.loss_curve);
        let dv = max_diff(&r.vectors, &a.vectors);
        println!("text {i}: max loss-curve diff {dl:.2e}, max vector diff {dv:.2e}");
        assert!(dl < 1e-4, "loss curves differ by {dl}");
        assert!(dv < 1e-4, "vectors differ by {dv}");
        assert_eq!(r.accuracy_curve, a.accuracy_curve);
    }
}

#[test]
fn same_seed_gives_bit_identical_results() {
    let m = fixture("llama_rope3_bias");
    let cfg = CramConfig {
        optimizer: OptimizerConfig {
            max_steps: 10,
            lr: 0.05,
            ..OptimizerConfig::default()
        },
        ..CramConfig::default()
    };
    let texts: Vec<Vec<u32>> = TEXTS.iter().map(|t| ids(&m, t, 8)).collect();
    let a = run(&m, &cfg, &texts, 0);
    let b = run(&m, &cfg, &texts, 0);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.vectors, y.vectors);
        assert_eq!(x.loss_curve, y.loss_curve);
        assert_eq!(x.accuracy_curve, y.accuracy_curve);
        assert_eq!(x.best_loss.to_bits(), y.best_loss.to_bits());
    }
    let other = run(&m, &CramConfig { seed: 7, ..cfg }, &texts, 0);
    assert_ne!(a[0].vectors, other[0].vectors, "the seed must matter");
}

#[test]
fn short_text_crams_and_decodes_back_with_both_conventions() {
    let m = fixture("llama_gqa_tied");
    for loss in [LossConvention::Full, LossConvention::Paper] {
        // The random 64-wide model holds about 5 tokens per vector.
        let cfg = CramConfig {
            loss,
            n_mem: 2,
            optimizer: OptimizerConfig {
                lr: 0.1,
                beta2: 0.99,
                max_steps: 400,
                ..OptimizerConfig::default()
            },
            ..CramConfig::default()
        };
        let t = ids(&m, TEXTS[0], 8);
        let r = &run(&m, &cfg, std::slice::from_ref(&t), 0)[0];
        println!("{loss:?}: {} steps, accuracy {}", r.steps, r.best_accuracy);
        assert_eq!(r.stop_reason, StopReason::Converged);
        assert_eq!(r.best_accuracy, 1.0);
        assert!(r.exact, "decode-back differs at {:?}", r.first_mismatch);
        match loss {
            LossConvention::Full => {
                assert_eq!(r.n_predicted, 8);
                assert_eq!(r.decoded_ids, t);
            }
            LossConvention::Paper => {
                assert_eq!(r.n_predicted, 7);
                assert_eq!(r.decoded_ids, t[1..]);
            }
        }
        // The kept vectors are those of the converging step: the last point
        // of the curve is 1.0 and no update followed it.
        assert_eq!(*r.accuracy_curve.last().unwrap(), 1.0);
        assert_eq!(r.best_step + 1, r.steps);
    }
}

#[test]
fn converged_text_keeps_its_vectors_while_others_go_on() {
    let m = fixture("llama_gqa_tied");
    let cfg = CramConfig {
        optimizer: OptimizerConfig {
            lr: 0.1,
            beta2: 0.99,
            max_steps: 150,
            ..OptimizerConfig::default()
        },
        ..CramConfig::default()
    };
    // A 4-token text converges quickly; a 40-token text cannot within 150 steps.
    let easy = ids(&m, TEXTS[1], 4);
    let hard = ids(&m, &TEXTS.join(" "), 40);
    let both = run(&m, &cfg, &[easy.clone(), hard.clone()], 0);
    assert_eq!(both[0].stop_reason, StopReason::Converged);
    assert!(
        both[1].steps > both[0].steps,
        "the hard text must outlive the easy one"
    );
    // The same batch stopped at the step the easy text converged computes
    // exactly the same steps up to there: its vectors are bit-identical, so
    // nothing moved them after convergence.
    let cut = run(
        &m,
        &CramConfig {
            optimizer: OptimizerConfig {
                max_steps: both[0].steps,
                ..cfg.optimizer
            },
            ..cfg
        },
        &[easy, hard],
        0,
    );
    assert_eq!(cut[1].stop_reason, StopReason::MaxSteps);
    assert_eq!(
        both[0].vectors, cut[0].vectors,
        "vectors moved after convergence"
    );
}

#[test]
fn text_that_cannot_converge_stops_at_patience() {
    let m = fixture("llama_gqa_tied");
    let cfg = CramConfig {
        optimizer: OptimizerConfig {
            lr: 1e-9,
            patience: 5,
            max_steps: 100,
            ..OptimizerConfig::default()
        },
        ..CramConfig::default()
    };
    let t = ids(&m, &TEXTS.join(" "), 30);
    let r = &run(&m, &cfg, &[t], 0)[0];
    assert_eq!(r.stop_reason, StopReason::Patience);
    assert_eq!(r.steps, 6, "stops after 5 steps without improvement");
    let cfg = CramConfig {
        optimizer: OptimizerConfig {
            lr: 1e-9,
            patience: 1000,
            max_steps: 7,
            ..OptimizerConfig::default()
        },
        ..CramConfig::default()
    };
    let t = ids(&m, &TEXTS.join(" "), 30);
    let r = &run(&m, &cfg, &[t], 0)[0];
    assert_eq!(r.stop_reason, StopReason::MaxSteps);
    assert_eq!(r.steps, 7);
}

#[test]
fn bad_texts_are_refused_before_any_compute() {
    let m = fixture("llama_gqa_tied");
    let e = Engine::new(&m, CramConfig::default()).unwrap();
    let err = e.check_text(&[]).unwrap_err().to_string();
    assert!(err.contains("0 tokens"), "{err}");
    let ctx = m.model.info().context_length;
    let long = vec![5u32; ctx];
    let err = e.check_text(&long).unwrap_err().to_string();
    assert!(err.contains("context length"), "{err}");
    let paper = Engine::new(
        &m,
        CramConfig {
            loss: LossConvention::Paper,
            ..CramConfig::default()
        },
    )
    .unwrap();
    assert!(paper.check_text(&[5]).is_err(), "paper needs two tokens");
    assert!(Engine::new(
        &m,
        CramConfig {
            n_mem: 0,
            ..CramConfig::default()
        }
    )
    .is_err());
}

#[test]
fn bf16_compute_keeps_f32_master_vectors_and_tracks_f32() {
    let dir = PathBuf::from(cram_testkit::REPO_ROOT).join("tests/fixtures/llama_gqa_tied");
    let opts = LoadOptions {
        dtype: candle_core::DType::BF16,
        ..LoadOptions::default()
    };
    let m16 = load(dir.to_str().unwrap(), &opts).unwrap();
    let m32 = fixture("llama_gqa_tied");
    let cfg = CramConfig {
        optimizer: OptimizerConfig {
            max_steps: 5,
            lr: 0.05,
            ..OptimizerConfig::default()
        },
        ..CramConfig::default()
    };
    let t = ids(&m32, TEXTS[2], 8);
    let a = &run(&m16, &cfg, std::slice::from_ref(&t), 0)[0];
    let b = &run(&m32, &cfg, std::slice::from_ref(&t), 0)[0];
    let d = max_diff(&a.loss_curve, &b.loss_curve);
    println!("bf16 vs f32 loss curves: max diff {d:.3e}");
    assert!(d < 0.1, "bf16 loss curve far from f32: {d}");
    assert!(d > 0.0, "bf16 must actually compute in bf16");
    // Master vectors stay f32: the update is not rounded to bf16.
    assert!(a
        .vectors
        .iter()
        .any(|&x| half::bf16::from_f32(x).to_f32() != x));
}
