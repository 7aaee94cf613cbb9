//! Property tests of the parsers that read untrusted files: GGUF headers,
//! safetensors headers (model weights and vector files) and sweep
//! configurations. Whatever the bytes, each returns a value or an error;
//! none panics or aborts. Cases are bounded (a few seconds each in all).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use cram::model::{self, LoadOptions};
use cram::sweep::SweepConfig;
use cram::weights::Weights;
use proptest::prelude::*;

fn fixture(rel: &str) -> PathBuf {
    Path::new(cram_testkit::REPO_ROOT)
        .join("tests/fixtures")
        .join(rel)
}

/// `base` with the mutations applied: (position, byte) overwrites, then a
/// truncation to `keep` bytes (`None`: whole).
fn mutate(base: &[u8], edits: &[(usize, u8)], keep: Option<usize>, window: usize) -> Vec<u8> {
    let mut v = base.to_vec();
    for &(at, b) in edits {
        let i = at % window.min(v.len());
        v[i] = b;
    }
    if let Some(k) = keep {
        v.truncate(k % (v.len() + 1));
    }
    v
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Mutated GGUF files (header bytes overwritten, truncated) read and load
    /// as a model or fail with an error.
    #[test]
    fn gguf_headers_never_panic(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        keep in prop::option::of(any::<usize>()),
    ) {
        let base = std::fs::read(fixture("gguf/pythia_serial.gguf")).unwrap();
        // The header (metadata, vocabulary, tensor directory) is in the
        // first ~64 KiB of this file.
        let bytes = mutate(&base, &edits, keep, 64 << 10);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, &bytes).unwrap();
        if model::read_gguf(&path).is_ok() {
            let _ = model::load(path.to_str().unwrap(), &LoadOptions::default());
        }
    }

    /// Random bytes as a GGUF file.
    #[test]
    fn random_gguf_bytes_never_panic(
        head in prop::sample::select(vec![&b"GGUF\x03\x00\x00\x00"[..], &b"GGUF\x02\x00\x00\x00"[..], &b"XXXX"[..]]),
        rest in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.gguf");
        std::fs::write(&path, [head, &rest[..]].concat()).unwrap();
        let _ = model::read_gguf(&path);
    }

    /// Mutated safetensors weights (the 8-byte header length and the JSON
    /// header) open and are read, or fail with an error.
    #[test]
    fn safetensors_headers_never_panic(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        keep in prop::option::of(any::<usize>()),
    ) {
        let base = std::fs::read(fixture("llama_gqa_tied/model.safetensors")).unwrap();
        let header = 8 + u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
        let bytes = mutate(&base, &edits, keep, header);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(w) = Weights::from_safetensors(std::slice::from_ref(&path), &Device::Cpu, DType::F32) {
            for name in w.names() {
                let _ = w.get_f32(&name, &[1]);
            }
        }
        // The same bytes as a vector file.
        let _ = cram::memfile::read(&path);
    }

    /// Sweep configurations with characters inserted, replaced or removed
    /// parse and validate, or fail with an error.
    #[test]
    fn sweep_configs_never_panic(
        edits in prop::collection::vec((any::<usize>(), prop::option::of(any::<char>())), 1..6),
    ) {
        let base = std::fs::read_to_string(
            Path::new(cram_testkit::REPO_ROOT).join("configs/small-smollm2.toml"),
        )
        .unwrap();
        let mut chars: Vec<char> = base.chars().collect();
        for (at, c) in edits {
            let i = at % (chars.len() + 1);
            match c {
                Some(c) if i < chars.len() => chars[i] = c,
                Some(c) => chars.push(c),
                None if i < chars.len() => {
                    chars.remove(i);
                }
                None => {}
            }
        }
        let text: String = chars.into_iter().collect();
        let _ = SweepConfig::from_toml_str(&text, "fuzz.toml");
    }

    /// Arbitrary TOML-looking text as a sweep configuration.
    #[test]
    fn arbitrary_sweep_text_never_panics(text in "[a-z_=\\[\\]{}\"., 0-9\n#-]{0,200}") {
        let _ = SweepConfig::from_toml_str(&text, "fuzz.toml");
    }
}
