//! Layouts (what stands in front of the vectors) and the batched decoder,
//! on the small random fixtures of every architecture.

use candle_core::Tensor;
use cram::engine::{
    decode_batch, decode_vectors, initial_vectors, CramConfig, DecodeItem, Engine, LossConvention,
    OptimizerConfig,
};
use cram::layout::{Layout, Sink};
use cram::memfile::{self, MemMeta, ModelIdentity};
use cram::model::LoadedModel;
use cram::protocol::Protocol;

fn fixture(name: &str) -> LoadedModel {
    cram_testkit::reference::load(&cram_testkit::reference::fixture_dir(name))
}

const FIXTURES: [&str; 7] = [
    "llama_gqa_tied",
    "gemma3_swa_softcap",
    "olmo_clip",
    "gpt2_gelu_new",
    "opt_proj",
    "pythia_parallel",
    "mamba_tied",
];

const TEXT: &str = "The keeper of the lighthouse walked along the rocky shore every evening.";

fn some_vectors(m: &LoadedModel, n_mem: usize, stream: usize) -> Vec<f32> {
    let info = m.model.info();
    // Larger than the embeddings, so that the vectors steer the model.
    initial_vectors(7, stream, n_mem * info.input_size, 4.0 * info.embedding_std)
}

#[test]
fn a_batch_decodes_as_each_text_alone_with_a_plain_kv_cache() {
    for name in FIXTURES {
        let m = fixture(name);
        let model = m.model.as_ref();
        let layout = Sink::Token("3".into()).resolve(&m.tokenizer).unwrap();
        for loss in [LossConvention::Full, LossConvention::Paper] {
            let vecs: Vec<Vec<f32>> = (0..3).map(|i| some_vectors(&m, 2, i)).collect();
            let counts = [5, 2, 7];
            let firsts = [Some(10), Some(11), Some(12)];
            let items: Vec<DecodeItem<'_>> = (0..3)
                .map(|i| DecodeItem {
                    vectors: &vecs[i],
                    first_token: firsts[i],
                    count: counts[i],
                })
                .collect();
            let batch = decode_batch(model, &layout, 2, loss, &items).unwrap();
            for i in 0..3 {
                // The same prefix built by hand, decoded on its own.
                let dev = model.device();
                let h = model.info().input_size;
                let mut parts = vec![model.embed(&Tensor::new(&[[3u32]], dev).unwrap()).unwrap()];
                parts.push(Tensor::from_slice(&vecs[i], (1, 2, h), dev).unwrap());
                if loss == LossConvention::Paper {
                    let f = [[firsts[i].unwrap()]];
                    parts.push(model.embed(&Tensor::new(&f, dev).unwrap()).unwrap());
                }
                let prefix = Tensor::cat(&parts, 1).unwrap();
                let alone =
                    cram::generate::greedy_from_embeds(model, &prefix, counts[i], &[]).unwrap();
                assert_eq!(batch[i], alone, "[{name}] {loss} text {i}");
                let one = decode_vectors(model, &layout, &vecs[i], 2, loss, firsts[i], counts[i])
                    .unwrap();
                assert_eq!(one, alone, "[{name}] {loss} text {i} alone");
            }
        }
    }
}

/// The engine's first loss is the cross-entropy of the text after
/// `[sink, mem]`, computed here from the model's logits by hand.
#[test]
fn the_sink_stands_in_front_of_the_vectors_in_every_step() {
    let m = fixture("llama_gqa_tied");
    let model = m.model.as_ref();
    let mut ids = m.tokenizer.encode(TEXT, true).unwrap();
    ids.truncate(6);
    for loss in [LossConvention::Full, LossConvention::Paper] {
        let cfg = CramConfig {
            n_mem: 2,
            sink: Sink::Token("3".into()),
            loss,
            optimizer: OptimizerConfig {
                max_steps: 1,
                ..OptimizerConfig::default()
            },
            ..CramConfig::default()
        };
        let e = Engine::new(&m, cfg.clone()).unwrap();
        assert_eq!(e.layout().sink, Some(3));
        let r = &e.run(std::slice::from_ref(&ids), 0, |_| {}).unwrap()[0];
        let dev = model.device();
        let h = model.info().input_size;
        let v0 = initial_vectors(cfg.seed, 0, 2 * h, model.info().embedding_std);
        let x = Tensor::cat(
            &[
                model.embed(&Tensor::new(&[[3u32]], dev).unwrap()).unwrap(),
                Tensor::from_slice(&v0, (1, 2, h), dev).unwrap(),
                model
                    .embed(
                        &Tensor::new(ids.as_slice(), dev)
                            .unwrap()
                            .unsqueeze(0)
                            .unwrap(),
                    )
                    .unwrap(),
            ],
            1,
        )
        .unwrap();
        let logits: Vec<Vec<f32>> = model
            .forward(&x, None)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        // Position 1 + 2 - 1 (the last vector) predicts the first token.
        let (first_pos, first_label) = match loss {
            LossConvention::Full => (2, 0),
            LossConvention::Paper => (3, 1),
        };
        let mut nll = 0.0f64;
        for (j, &label) in ids[first_label..].iter().enumerate() {
            let row = &logits[first_pos + j];
            let max = row.iter().copied().fold(f32::MIN, f32::max) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&z| (z as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            nll += lse - row[label as usize] as f64;
        }
        let want = nll / (ids.len() - first_label) as f64;
        let got = r.loss_curve[0] as f64;
        assert!((got - want).abs() < 1e-4, "{loss}: {got} vs {want}");
    }
}

#[test]
fn auto_puts_bos_in_front_where_the_tokenizer_adds_it_and_end_of_text_elsewhere() {
    for name in FIXTURES {
        let m = fixture(name);
        let t = &m.tokenizer;
        let l = Sink::Auto.resolve(t).unwrap();
        if t.adds_bos() && t.bos_id().is_some() {
            assert_eq!(l.sink, t.bos_id(), "[{name}]");
            assert!(l.moves_bos, "[{name}]");
            let ids = t.encode(TEXT, true).unwrap();
            assert_eq!(l.text_ids(ids.clone()), ids[1..], "[{name}]");
        } else {
            let eot = t.inner().token_to_id("<|endoftext|>");
            assert_eq!(l.sink, eot.or(t.eos_id()).or(t.bos_id()), "[{name}]");
            assert!(!l.moves_bos, "[{name}]");
        }
        assert_eq!(Sink::None.resolve(t).unwrap(), Layout::default());
        let err = Sink::Token("no such token".into()).resolve(t).unwrap_err();
        assert!(err.to_string().contains("not a token"), "{err}");
        let err = Sink::Token("99999999".into()).resolve(t).unwrap_err();
        assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    }
}

/// A file records its layout and decodes with it; a file written before
/// layouts existed (no `layout` key) decodes as it was made, with nothing in
/// front of the vectors.
#[test]
fn files_keep_their_layout_and_old_files_still_decode() {
    let m = fixture("llama_gqa_tied");
    let mut ids = m.tokenizer.encode(TEXT, true).unwrap();
    ids.truncate(4);
    let dir = tempfile::tempdir().unwrap();
    let identity = ModelIdentity::of(&m).unwrap();
    for (sink, old) in [(Sink::Token("3".into()), false), (Sink::None, true)] {
        let cfg = CramConfig {
            n_mem: 2,
            sink,
            optimizer: OptimizerConfig {
                lr: 0.1,
                max_steps: 300,
                ..OptimizerConfig::default()
            },
            ..CramConfig::default()
        };
        let e = Engine::new(&m, cfg.clone()).unwrap();
        let r = &e.run(std::slice::from_ref(&ids), 0, |_| {}).unwrap()[0];
        assert!(r.exact, "{:?} did not converge", cfg.sink);
        let meta = MemMeta::new(&m, &identity, &cfg, e.layout(), &ids, r);
        let path = dir.path().join(format!("{old}.safetensors"));
        memfile::write(&path, &r.vectors, &meta).unwrap();
        if old {
            // Rewrite the metadata as cram wrote it before layouts.
            let mut v = serde_json::to_value(&meta).unwrap();
            v.as_object_mut().unwrap().remove("layout");
            v["config"].as_object_mut().unwrap().remove("sink");
            v["config"].as_object_mut().unwrap().remove("init");
            v["config"].as_object_mut().unwrap().remove("protocol");
            let back: MemMeta = serde_json::from_value(v).unwrap();
            assert_eq!(back.layout, Layout::default());
            assert_eq!(back.config.sink, Sink::None);
            memfile::write(&path, &r.vectors, &back).unwrap();
        }
        let (_, read) = memfile::read(&path).unwrap();
        assert_eq!(&read.layout, e.layout());
        let d = memfile::decode(&m, &path).unwrap();
        assert!(d.matches_original, "{:?}", cfg.sink);
        assert_eq!(d.ids, ids);
    }
}

#[test]
fn the_protocols_run_on_every_architecture() {
    for name in ["llama_gqa_tied", "gemma3_swa_softcap", "mamba_tied"] {
        let m = fixture(name);
        for p in Protocol::ALL {
            let mut cfg = p.config();
            cfg.optimizer.max_steps = 2;
            let e = Engine::new(&m, cfg).unwrap();
            let ids = e.layout().text_ids(m.tokenizer.encode(TEXT, true).unwrap());
            let r = &e.run(&[ids[..5].to_vec()], 0, |_| {}).unwrap()[0];
            assert_eq!(r.steps, 2, "[{name}] {p}");
            assert!(r.loss_curve.iter().all(|l| l.is_finite()), "[{name}] {p}");
        }
    }
}
