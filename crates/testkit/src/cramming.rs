//! Cramming texts and checking that they decode back exactly, shared by the
//! cramming tests of every model.

use cram::engine::{decode_vectors, CramConfig, CramResult, Engine, LossConvention, StopReason};
use cram::memfile::{self, MemMeta, ModelIdentity};
use cram::model::LoadedModel;

/// Crams `texts` (token ids) in one batch with `cfg`, prints each result,
/// checks each reaches accuracy 1.0, survives a write/read of the file
/// format, and decodes back to exactly its tokens; returns the results.
pub fn cram_and_check(m: &LoadedModel, texts: &[Vec<u32>], cfg: &CramConfig) -> Vec<CramResult> {
    let engine = Engine::new(m.model.as_ref(), cfg.clone()).unwrap();
    let results = engine.run(texts, 0, |_| {}).unwrap();
    let identity = ModelIdentity::of(m).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, (r, ids)) in results.iter().zip(texts).enumerate() {
        println!(
            "text {i}: {} tokens, {} steps to accuracy {} ({:?}), loss {:.4} (without vectors {:.4}), exact {}",
            r.n_tokens, r.steps, r.best_accuracy, r.stop_reason, r.best_loss, r.original_loss, r.exact
        );
        if r.stop_reason != StopReason::Converged || !r.exact {
            failures.push(i);
            continue;
        }
        let meta = MemMeta::new(m, &identity, cfg, ids, r);
        let path = dir.path().join(format!("{i}.safetensors"));
        memfile::write(&path, &r.vectors, &meta).unwrap();
        let (vectors, back) = memfile::read(&path).unwrap();
        assert_eq!(vectors, r.vectors);
        let decoded = decode_vectors(
            m.model.as_ref(),
            &vectors,
            back.n_mem,
            back.loss,
            back.first_token,
            back.loss.n_predicted(back.n_tokens),
        )
        .unwrap();
        let target = match back.loss {
            LossConvention::Full => &ids[..],
            LossConvention::Paper => &ids[1..],
        };
        assert_eq!(
            decoded[..],
            target[..],
            "text {i} does not decode back from its file"
        );
    }
    assert!(
        failures.is_empty(),
        "texts {failures:?} did not cram exactly"
    );
    results
}
