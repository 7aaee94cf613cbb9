//! Resolving `--model` specs: GGUF paths, model folders, aliases and hub ids.

use std::fs;
use std::path::Path;
use std::sync::Mutex;

use cram::source::{resolve, HfFiles, ModelSource, KNOWN_MODELS};
use cram::CramError;

/// Environment variables are process-global: tests touching them take this.
static ENV: Mutex<()> = Mutex::new(());

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn folder(dir: &Path) {
    write(&dir.join("config.json"), "{}");
    write(&dir.join("tokenizer.json"), "{}");
    write(&dir.join("model.safetensors"), "dummy");
}

#[test]
fn gguf_path() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m.gguf");
    write(&path, "not really gguf");
    let src = resolve(path.to_str().unwrap()).unwrap();
    assert_eq!(src, ModelSource::Gguf { path: path.clone() });

    // A folder holding exactly one .gguf resolves to it.
    let src = resolve(tmp.path().to_str().unwrap()).unwrap();
    assert_eq!(src, ModelSource::Gguf { path });

    // Two are ambiguous.
    write(&tmp.path().join("n.gguf"), "x");
    let err = resolve(tmp.path().to_str().unwrap()).unwrap_err();
    assert!(err.to_string().contains("2 .gguf files"), "{err}");
}

#[test]
fn gguf_by_magic() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("weights.bin");
    write(&path, "GGUF....");
    assert_eq!(
        resolve(path.to_str().unwrap()).unwrap(),
        ModelSource::Gguf { path: path.clone() }
    );
    let other = tmp.path().join("notes.txt");
    write(&other, "hello");
    let err = resolve(other.to_str().unwrap()).unwrap_err();
    assert!(err.to_string().contains("not a GGUF file"), "{err}");
}

#[test]
fn hf_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    folder(dir);
    write(&dir.join("generation_config.json"), "{}");
    let ModelSource::Folder(files) = resolve(dir.to_str().unwrap()).unwrap() else {
        panic!("expected a folder")
    };
    assert_eq!(files.root, dir);
    assert_eq!(files.config, dir.join("config.json"));
    assert_eq!(files.tokenizer, dir.join("tokenizer.json"));
    assert_eq!(files.weights, vec![dir.join("model.safetensors")]);
    assert_eq!(files.tokenizer_config, None);
    assert_eq!(
        files.generation_config,
        Some(dir.join("generation_config.json"))
    );
}

#[test]
fn sharded_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(&dir.join("config.json"), "{}");
    write(&dir.join("tokenizer.json"), "{}");
    write(&dir.join("tokenizer_config.json"), "{}");
    let index = r#"{
        "metadata": {"total_size": 10},
        "weight_map": {
            "b.weight": "model-00002-of-00002.safetensors",
            "a.weight": "model-00001-of-00002.safetensors",
            "c.weight": "model-00002-of-00002.safetensors",
            "d.weight": "model-00001-of-00002.safetensors"
        }
    }"#;
    write(&dir.join("model.safetensors.index.json"), index);
    write(&dir.join("model-00001-of-00002.safetensors"), "x");
    write(&dir.join("model-00002-of-00002.safetensors"), "y");
    let files = HfFiles::from_dir(dir).unwrap();
    assert_eq!(
        files.weights,
        vec![
            dir.join("model-00001-of-00002.safetensors"),
            dir.join("model-00002-of-00002.safetensors"),
        ]
    );
    assert_eq!(
        files.tokenizer_config,
        Some(dir.join("tokenizer_config.json"))
    );

    // A missing shard is named.
    fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = HfFiles::from_dir(dir).unwrap_err();
    assert!(
        err.to_string().contains("model-00002-of-00002.safetensors"),
        "{err}"
    );

    // A corrupt index names the index file.
    write(&dir.join("model.safetensors.index.json"), "{ not json");
    let err = HfFiles::from_dir(dir).unwrap_err();
    assert!(matches!(err, CramError::BadFile { .. }), "{err:?}");
    assert!(
        err.to_string().contains("model.safetensors.index.json"),
        "{err}"
    );

    // Shard names may not escape the folder.
    write(
        &dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"a": "../evil.safetensors"}}"#,
    );
    let err = HfFiles::from_dir(dir).unwrap_err();
    assert!(err.to_string().contains("../evil.safetensors"), "{err}");
}

#[test]
fn missing_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    folder(dir);
    fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let err = resolve(dir.to_str().unwrap()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("tokenizer.json"), "{msg}");
    assert!(msg.contains(dir.to_str().unwrap()), "{msg}");

    folder(dir);
    fs::remove_file(dir.join("model.safetensors")).unwrap();
    let msg = resolve(dir.to_str().unwrap()).unwrap_err().to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");

    folder(dir);
    fs::remove_file(dir.join("config.json")).unwrap();
    let msg = HfFiles::from_dir(dir).unwrap_err().to_string();
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn nonexistent_path() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("nope").join("model.gguf");
    let err = resolve(path.to_str().unwrap()).unwrap_err();
    match err {
        CramError::NotFound { path: p } => assert_eq!(p, path),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A bare word that is no alias, path or hub id.
    assert!(matches!(
        resolve("no-such-model-xyz").unwrap_err(),
        CramError::NotFound { .. }
    ));
}

/// Alias and hub-id resolution depend on environment variables.
#[test]
fn env_dependent() {
    let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let hub = tmp.path().join("hub");
    // Every test that touches the environment holds ENV.
    std::env::set_var("CRAM_MODELS_DIR", &models);
    std::env::set_var("HF_HUB_CACHE", &hub);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    assert_eq!(cram::source::models_dir(), models);

    // An alias whose file is absent tells the user to fetch it.
    let err = resolve("smollm2-135m").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cram fetch smollm2-135m"), "{msg}");

    // ... and resolves once the file is there.
    let known = KNOWN_MODELS
        .iter()
        .find(|m| m.alias == "gemma3-270m")
        .unwrap();
    write(&models.join(known.file_name), "x");
    assert_eq!(
        resolve("gemma3-270m").unwrap(),
        ModelSource::Gguf {
            path: models.join(known.file_name)
        }
    );

    // A hub id from a cache laid out by hand.
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = hub.join("models--owner--name");
    write(&repo.join("refs").join("main"), &format!("{commit}\n"));
    let snapshot = repo.join("snapshots").join(commit);
    folder(&snapshot);
    let ModelSource::Folder(files) = resolve("owner/name").unwrap() else {
        panic!("expected a folder")
    };
    assert_eq!(files.root, snapshot);
    assert_eq!(files.weights, vec![snapshot.join("model.safetensors")]);
    // The same snapshot by commit hash.
    let ModelSource::Folder(files) = resolve(&format!("owner/name@{commit}")).unwrap() else {
        panic!("expected a folder")
    };
    assert_eq!(files.root, snapshot);

    // A hub id that is not in the cache, offline: a clear error.
    let err = resolve("owner/missing").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("owner/missing"), "{msg}");
    assert!(msg.contains("not in the local Hugging Face cache"), "{msg}");
    assert!(msg.contains(hub.to_str().unwrap()), "{msg}");
    assert!(msg.contains("HF_HUB_OFFLINE"), "{msg}");

    // A partly cached snapshot, offline: the missing file is named.
    fs::remove_file(snapshot.join("tokenizer.json")).unwrap();
    let msg = resolve("owner/name").unwrap_err().to_string();
    assert!(msg.contains("tokenizer.json"), "{msg}");
    assert!(msg.contains("HF_HUB_OFFLINE"), "{msg}");

    // Without CRAM_MODELS_DIR, CRAM_CACHE_DIR/models.
    std::env::remove_var("CRAM_MODELS_DIR");
    std::env::set_var("CRAM_CACHE_DIR", tmp.path());
    assert_eq!(cram::source::models_dir(), tmp.path().join("models"));
    std::env::remove_var("CRAM_CACHE_DIR");
    std::env::remove_var("HF_HUB_CACHE");
    std::env::remove_var("HF_HUB_OFFLINE");
}
