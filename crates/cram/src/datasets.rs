//! Text sources for cramming experiments: where the texts come from and how
//! they are cut into the chunks the paper compresses.
//!
//! A [`TextSource`] names a data set (a CSV column, a JSONL field, a folder of
//! `.txt` files, one text file, or random word sequences); [`load_texts`]
//! turns it into [`Sample`]s. [`builtin`] gives the data sets shipped in the
//! repository's `data/` folder (see `data/PROVENANCE.md`), and [`paper_chunk`]
//! applies the paper's protocol for book and fan-fiction chunks (Kuratov et
//! al. 2025): keep the second half of the chunk's sentences, tokenise,
//! truncate.
//!
//! Sources deserialise from configuration files, tagged by `kind`:
//!
//! ```
//! use cram::datasets::TextSource;
//! let src: TextSource = toml::from_str(
//!     r#"
//!     kind = "random"
//!     n_texts = 4
//!     max_len = 64
//!     variable_length = true
//!     seed = 7
//!     "#,
//! )
//! .unwrap();
//! assert_eq!(
//!     src,
//!     TextSource::Random { vocab: None, n_texts: 4, max_len: 64, variable_length: true, seed: 7 }
//! );
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::error::{CramError, Result};
use crate::sentences::split_sentences;
use crate::tokenizer::TextTokenizer;

/// Where the texts of an experiment come from.
///
/// Deserialises from a table with a `kind` field (`csv`, `jsonl`,
/// `txt_folder`, `text_file`, `random`) and the variant's fields; unknown
/// fields are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TextSource {
    /// One text per row of a CSV file (header required). The sample id is the
    /// `id` column where there is one, the row index (from 0) otherwise.
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// The column holding the texts (default `text`).
        #[serde(default = "default_field")]
        column: String,
    },
    /// One text per line of a JSON Lines file (blank lines skipped). The
    /// sample id is the `id` field (string or number) where there is one, the
    /// record index (from 0) otherwise.
    Jsonl {
        /// The JSONL file.
        path: PathBuf,
        /// The field holding the texts (default `text`).
        #[serde(default = "default_field")]
        field: String,
    },
    /// Every `.txt` file of a folder (not recursive), sorted by file name,
    /// one text each; the sample id is the file name.
    TxtFolder {
        /// The folder.
        path: PathBuf,
    },
    /// One file, one text; the sample id is the file name.
    TextFile {
        /// The file.
        path: PathBuf,
    },
    /// Random word sequences as in the paper: words drawn uniformly (with
    /// replacement) from a vocabulary, `5 * L` of them joined by spaces, so
    /// that the caller's truncation to `L` tokens never runs short.
    Random {
        /// A vocabulary file, one word a line; `None` for the shipped
        /// `data/vocab_100k.txt` (the paper's: the 100k most frequent GloVe
        /// words).
        #[serde(default)]
        vocab: Option<PathBuf>,
        /// How many texts.
        n_texts: usize,
        /// `L`: the token budget of each text.
        max_len: usize,
        /// Draw each text's budget uniformly from `[2, max_len]` instead.
        #[serde(default)]
        variable_length: bool,
        /// The seed; the same seed gives the same texts.
        #[serde(default)]
        seed: u64,
    },
}

fn default_field() -> String {
    "text".to_string()
}

/// One text of a data set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// A name unique within the data set (CSV/JSONL `id`, row index, file
    /// name, `random-{i}`).
    pub id: String,
    /// The text.
    pub text: String,
    /// The token budget the sample comes with: `L` (fixed or drawn) for
    /// random texts, which the caller truncates to it; `None` for texts from
    /// files, which use the experiment's budget.
    pub max_tokens: Option<usize>,
}

/// Names accepted by [`builtin`].
pub const BUILTIN_NAMES: &[&str] = &["pg19", "modern", "fanfic", "random"];

/// Number of texts and token budget of the `random` built-in (the paper's
/// random-text experiments go up to a few thousand tokens; callers override
/// `max_len` for their sweep).
const RANDOM_DEFAULT: (usize, usize) = (50, 1568);

/// A data set shipped in the repository's `data/` folder:
///
/// * `pg19`: 300 chunks of 12 public-domain books (25 per book), a stand-in
///   for the paper's PG-19 validation chunks (column `text` of
///   `data/pg19_standin_sample.csv`);
/// * `modern` / `fanfic`: 63 chunks of 2025–2026 English prose, a stand-in
///   for the paper's fan-fiction set, written after the models' training
///   data (`data/modern_prose.csv`);
/// * `random`: 50 random texts with a budget of 1568 tokens, words from
///   `data/vocab_100k.txt`, seed 0.
///
/// Paths are absolute: `data/` is looked up in the repository the crate was
/// built from (`CARGO_MANIFEST_DIR/../..` at build time), then in the current
/// directory.
/// Returns `None` for an unknown name (see [`BUILTIN_NAMES`]).
pub fn builtin(name: &str) -> Option<TextSource> {
    let csv = |file: &str| TextSource::Csv {
        path: data_file(file),
        column: "text".to_string(),
    };
    match name {
        "pg19" => Some(csv("pg19_standin_sample.csv")),
        "modern" | "fanfic" => Some(csv("modern_prose.csv")),
        "random" => Some(TextSource::Random {
            vocab: None,
            n_texts: RANDOM_DEFAULT.0,
            max_len: RANDOM_DEFAULT.1,
            variable_length: false,
            seed: 0,
        }),
        _ => None,
    }
}

/// The repository the crate was built from (its `data/` and `configs/`).
pub const REPO_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// The path of `name` in the shipped `data/` folder: under the repository
/// the crate was built from when it is there (tests, `cargo run`), else
/// under the current directory.
pub fn data_file(name: &str) -> PathBuf {
    let in_crate = Path::new(REPO_ROOT).join("data").join(name);
    if in_crate.exists() {
        return in_crate;
    }
    let here = Path::new("data").join(name);
    std::path::absolute(&here).unwrap_or(here)
}

/// The texts of `src`, in order.
///
/// # Errors
///
/// [`CramError::NotFound`] naming a missing file or folder;
/// [`CramError::BadFile`] for a file that cannot be parsed, a missing CSV
/// column (the message lists the columns there are) or JSONL field, an empty
/// text, a duplicate id, or a data set without texts; [`CramError::Input`]
/// for invalid random-text settings.
pub fn load_texts(src: &TextSource) -> Result<Vec<Sample>> {
    let samples = match src {
        TextSource::Csv { path, column } => load_csv(path, column)?,
        TextSource::Jsonl { path, field } => load_jsonl(path, field)?,
        TextSource::TxtFolder { path } => load_folder(path)?,
        TextSource::TextFile { path } => vec![load_file(path)?],
        TextSource::Random {
            vocab,
            n_texts,
            max_len,
            variable_length,
            seed,
        } => {
            let vocab_path = vocab.clone().unwrap_or_else(|| data_file("vocab_100k.txt"));
            let words = read_vocab(&vocab_path)?;
            random_texts(&words, *n_texts, *max_len, *variable_length, *seed)?
        }
    };
    Ok(samples)
}

/// Reads a vocabulary file: one word a line, surrounding whitespace and blank
/// lines ignored.
///
/// # Errors
///
/// [`CramError::NotFound`] / [`CramError::Io`] when it cannot be read,
/// [`CramError::BadFile`] when it holds no words.
pub fn read_vocab(path: &Path) -> Result<Vec<String>> {
    let data = std::fs::read_to_string(path).map_err(|e| CramError::io(path, e))?;
    let words: Vec<String> = data
        .lines()
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    if words.is_empty() {
        return Err(CramError::bad_file(path, "empty vocabulary: no words"));
    }
    Ok(words)
}

/// `n_texts` random texts from `vocab`, reproducible from `seed`.
///
/// Text `i` gets the id `random-{i}` and a budget `L`: `max_len`, or, with
/// `variable_length`, drawn uniformly from `[2, max_len]`. Its text is `5 * L`
/// words drawn uniformly (with replacement) from `vocab`, joined by single
/// spaces. One ChaCha20 stream seeded with `seed` draws, text by text, the
/// budget then the words, so the first texts do not depend on `n_texts`.
///
/// # Errors
///
/// [`CramError::Input`] when `vocab` is empty, `n_texts` or `max_len` is 0,
/// or `variable_length` is set with `max_len < 2`.
pub fn random_texts(
    vocab: &[String],
    n_texts: usize,
    max_len: usize,
    variable_length: bool,
    seed: u64,
) -> Result<Vec<Sample>> {
    if vocab.is_empty() {
        return Err(CramError::Input("random texts: empty vocabulary".into()));
    }
    if n_texts == 0 {
        return Err(CramError::Input(
            "random texts: n_texts must be at least 1".into(),
        ));
    }
    let min_len = if variable_length { 2 } else { 1 };
    if max_len < min_len {
        return Err(CramError::Input(format!(
            "random texts: max_len must be at least {min_len}{}, got {max_len}",
            if variable_length {
                " with variable_length"
            } else {
                ""
            }
        )));
    }
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n_texts);
    for i in 0..n_texts {
        let len = if variable_length {
            rng.random_range(2..=max_len)
        } else {
            max_len
        };
        let words: Vec<&str> = (0..5 * len)
            .map(|_| vocab[rng.random_range(0..vocab.len())].as_str())
            .collect();
        out.push(Sample {
            id: format!("random-{i}"),
            text: words.join(" "),
            max_tokens: Some(len),
        });
    }
    Ok(out)
}

/// The text the paper compresses from a book or fan-fiction chunk: the second
/// half of its sentences (`sentences[n / 2..]`, see
/// [`split_sentences`]), joined by single spaces.
///
/// # Errors
///
/// [`CramError::Input`] when the text has no sentences (it is blank).
pub fn paper_chunk_text(text: &str) -> Result<String> {
    paper_halves(text).map(|h| h.1)
}

/// The two halves of the paper's sentence split: the first `n / 2` of the
/// `n` sentences (the context the protocol drops) and the rest
/// ([`paper_chunk_text`]), each joined by single spaces.
///
/// # Errors
///
/// [`CramError::Input`] when the text has no sentences (it is blank).
pub fn paper_halves(text: &str) -> Result<(String, String)> {
    let sentences = split_sentences(text);
    if sentences.is_empty() {
        return Err(CramError::Input(
            "cannot take the second half of a blank text: it has no sentences".into(),
        ));
    }
    let (a, b) = sentences.split_at(sentences.len() / 2);
    Ok((a.join(" "), b.join(" ")))
}

/// The paper's protocol for book and fan-fiction chunks: the token ids of
/// [`paper_chunk_text`]`(text)`, tokenised with the model's special-token
/// convention (`encode(_, true)`: BOS first where the model adds one) and
/// truncated to `max_tokens` (BOS included). Not for random texts, which are
/// only truncated.
///
/// # Errors
///
/// [`CramError::Input`] when the text is blank or `max_tokens` is 0;
/// [`CramError::Tokenizer`] if tokenisation fails.
pub fn paper_chunk(text: &str, tokenizer: &TextTokenizer, max_tokens: usize) -> Result<Vec<u32>> {
    if max_tokens == 0 {
        return Err(CramError::Input("max_tokens must be at least 1".into()));
    }
    let mut ids = tokenizer.encode(&paper_chunk_text(text)?, true)?;
    ids.truncate(max_tokens);
    Ok(ids)
}

/// Checks that a data set has texts, that none is blank and that ids are
/// unique; `what(i)` names sample `i` in messages.
fn check_samples(path: &Path, samples: &[Sample], what: impl Fn(usize) -> String) -> Result<()> {
    if samples.is_empty() {
        return Err(CramError::bad_file(path, "empty data set: no texts"));
    }
    let mut seen = HashSet::new();
    for (i, s) in samples.iter().enumerate() {
        if s.text.trim().is_empty() {
            return Err(CramError::bad_file(
                path,
                format!("{} (id `{}`): empty text", what(i), s.id),
            ));
        }
        if !seen.insert(s.id.as_str()) {
            return Err(CramError::bad_file(
                path,
                format!("{}: duplicate id `{}`", what(i), s.id),
            ));
        }
    }
    Ok(())
}

fn load_csv(path: &Path, column: &str) -> Result<Vec<Sample>> {
    let file = std::fs::File::open(path).map_err(|e| CramError::io(path, e))?;
    let mut rdr = csv::Reader::from_reader(std::io::BufReader::new(file));
    let headers = rdr
        .headers()
        .map_err(|e| CramError::bad_file(path, e))?
        .clone();
    if headers.iter().all(|h| h.trim().is_empty()) {
        return Err(CramError::bad_file(path, "empty file: no header, no texts"));
    }
    let col = headers.iter().position(|h| h == column).ok_or_else(|| {
        CramError::bad_file(
            path,
            format!(
                "no column `{column}` (columns: {})",
                headers
                    .iter()
                    .map(|h| format!("`{h}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let id_col = headers.iter().position(|h| h == "id");
    let mut samples = Vec::new();
    let mut lines = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| CramError::bad_file(path, e))?;
        // The file line the record starts on (fields may span lines).
        let line = rec.position().map_or(i as u64 + 2, |p| p.line());
        let text = rec.get(col).ok_or_else(|| {
            CramError::bad_file(path, format!("line {line}: no field for column `{column}`"))
        })?;
        let id = match id_col.and_then(|c| rec.get(c)) {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => i.to_string(),
        };
        samples.push(Sample {
            id,
            text: text.to_string(),
            max_tokens: None,
        });
        lines.push(line);
    }
    check_samples(path, &samples, |i| format!("line {}", lines[i]))?;
    Ok(samples)
}

fn load_jsonl(path: &Path, field: &str) -> Result<Vec<Sample>> {
    let data = std::fs::read_to_string(path).map_err(|e| CramError::io(path, e))?;
    let data = data.strip_prefix('\u{feff}').unwrap_or(&data);
    let mut samples = Vec::new();
    let mut lines = Vec::new();
    for (i, line) in data.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| CramError::bad_file(path, format!("line {}: invalid JSON: {e}", i + 1)))?;
        let obj = v.as_object().ok_or_else(|| {
            CramError::bad_file(path, format!("line {}: not a JSON object", i + 1))
        })?;
        let text = match obj.get(field) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(CramError::bad_file(
                    path,
                    format!("line {}: field `{field}` is not a string", i + 1),
                ))
            }
            None => {
                let keys: Vec<String> = obj.keys().map(|k| format!("`{k}`")).collect();
                return Err(CramError::bad_file(
                    path,
                    format!(
                        "line {}: no field `{field}` (fields: {})",
                        i + 1,
                        keys.join(", ")
                    ),
                ));
            }
        };
        let id = match obj.get("id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => samples.len().to_string(),
        };
        samples.push(Sample {
            id,
            text,
            max_tokens: None,
        });
        lines.push(i + 1);
    }
    check_samples(path, &samples, |i| format!("line {}", lines[i]))?;
    Ok(samples)
}

fn load_folder(path: &Path) -> Result<Vec<Sample>> {
    let meta = std::fs::metadata(path).map_err(|e| CramError::io(path, e))?;
    if !meta.is_dir() {
        return Err(CramError::bad_file(
            path,
            "not a folder (use a text_file source for one file)",
        ));
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| CramError::io(path, e))? {
        let entry = entry.map_err(|e| CramError::io(path, e))?;
        let p = entry.path();
        let is_txt = p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("txt"));
        if is_txt && p.is_file() {
            files.push(p);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    if files.is_empty() {
        return Err(CramError::bad_file(
            path,
            "empty data set: no .txt files in the folder",
        ));
    }
    files.iter().map(|f| load_file(f)).collect()
}

fn load_file(path: &Path) -> Result<Sample> {
    let text = std::fs::read_to_string(path).map_err(|e| CramError::io(path, e))?;
    let text = match text.strip_prefix('\u{feff}') {
        Some(t) => t.to_string(),
        None => text,
    };
    if text.trim().is_empty() {
        return Err(CramError::bad_file(path, "empty text"));
    }
    let id = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    Ok(Sample {
        id,
        text,
        max_tokens: None,
    })
}
