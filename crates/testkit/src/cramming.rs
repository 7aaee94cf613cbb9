//! Cramming texts and checking that they decode back exactly, shared by the
//! cramming tests of every model.

use cram::engine::{CramConfig, CramResult, Engine, StopReason};
use cram::memfile::{self, MemMeta, ModelIdentity};
use cram::model::LoadedModel;

/// The first `len` tokens the vectors must reproduce for `text` under the
/// layout of `cfg` (the tokenizer's ids, less a BOS moved in front of the
/// vectors).
pub fn text_ids(m: &LoadedModel, cfg: &CramConfig, text: &str, len: usize) -> Vec<u32> {
    let layout = cfg.sink.resolve(&m.tokenizer).unwrap();
    let mut ids = layout.text_ids(m.tokenizer.encode(text, true).unwrap());
    ids.truncate(len);
    ids
}

/// Crams `texts` (token ids, from [`text_ids`]) in one batch with `cfg`,
/// prints each result, checks each reaches accuracy 1.0, and that its file
/// (written and read back) decodes to exactly its tokens with
/// `memfile::decode`; returns the results.
pub fn cram_and_check(m: &LoadedModel, texts: &[Vec<u32>], cfg: &CramConfig) -> Vec<CramResult> {
    let engine = Engine::new(m, cfg.clone()).unwrap();
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
        let meta = MemMeta::new(m, &identity, cfg, engine.layout(), ids, r);
        let path = dir.path().join(format!("{i}.safetensors"));
        memfile::write(&path, &r.vectors, &meta).unwrap();
        let (vectors, back) = memfile::read(&path).unwrap();
        assert_eq!(vectors, r.vectors);
        assert_eq!(&back.layout, engine.layout());
        let decoded = memfile::decode(m, &path).unwrap();
        assert!(
            decoded.matches_original,
            "text {i} does not decode back from its file"
        );
        assert_eq!(decoded.ids[..], ids[..], "text {i}: decoded ids");
    }
    assert!(
        failures.is_empty(),
        "texts {failures:?} did not cram exactly"
    );
    results
}
