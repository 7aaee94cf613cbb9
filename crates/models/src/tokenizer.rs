//! Tokenisation: a [`tokenizers::Tokenizer`] plus the BOS/EOS conventions of
//! its model.
//!
//! Two sources are supported:
//!
//! * a GGUF file's metadata ([`TextTokenizer::from_gguf`]), rebuilt the way
//!   Hugging Face `transformers` rebuilds it when a tokenizer is loaded with
//!   `AutoTokenizer.from_pretrained(dir, gguf_file=...)` (see
//!   `transformers/integrations/gguf/gguf_tokenizer_mapping.py`), so that both
//!   give the same ids for the same text;
//! * a Hugging Face folder ([`TextTokenizer::from_hf_files`]): `tokenizer.json`
//!   plus the optional `tokenizer_config.json`, `config.json` and
//!   `generation_config.json`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{CramError, Result};

/// A tokenizer plus the BOS/EOS conventions of its model.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    eos_ids: Vec<u32>,
    adds_bos: bool,
    sha256: String,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("eos_ids", &self.eos_ids)
            .field("adds_bos", &self.adds_bos)
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl TextTokenizer {
    /// Rebuild the tokenizer from GGUF metadata so that it gives exactly the
    /// ids the Hugging Face `transformers` tokenizer gives when loading the
    /// same GGUF file (`gguf_file=...`).
    ///
    /// Supported `tokenizer.ggml.model` values: `gpt2` (byte-level BPE, with
    /// the pre-tokenizer picked by `tokenizer.ggml.pre`), `llama`
    /// (SentencePiece-style BPE with byte fallback; Gemma and Phi-3
    /// architectures get their own variants) and `gemma4`. `path` is only used
    /// in error messages.
    ///
    /// # Errors
    ///
    /// [`CramError::BadConfig`] naming the key when the tokenizer metadata is
    /// missing, mistyped or inconsistent, or the tokenizer type is unsupported.
    pub fn from_gguf(content: &Content, path: &Path) -> Result<Self> {
        let meta = GgufMeta {
            content,
            source: path.display().to_string(),
        };
        let architecture = meta.string("general.architecture")?.unwrap_or("");
        let tokenizer_type = meta
            .string("tokenizer.ggml.model")?
            .ok_or_else(|| meta.missing("tokenizer.ggml.model"))?;
        let pre = meta.string("tokenizer.ggml.pre")?;
        let tokens = meta
            .string_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| meta.missing("tokenizer.ggml.tokens"))?;
        if tokens.is_empty() {
            return Err(CramError::bad_config(
                &meta.source,
                "tokenizer.ggml.tokens",
                "the vocabulary is empty",
            ));
        }
        let scores = meta.f64_array("tokenizer.ggml.scores")?;
        let token_types = meta.int_array("tokenizer.ggml.token_type")?;
        let merges = meta.string_array("tokenizer.ggml.merges")?;
        let dict = TokenizerDict {
            source: &meta.source,
            tokens: &tokens,
            scores: scores.as_deref(),
            merges: merges.as_deref(),
        };

        // The builder transformers picks (`select_tokenizer_builder`).
        let kind = match (tokenizer_type, architecture) {
            ("llama", "gemma" | "gemma2" | "gemma3") => Builder::Gemma,
            ("llama", "phi3") => Builder::Phi3,
            ("llama", _) => Builder::Llama,
            ("gpt2", _) => Builder::ByteLevel,
            ("gemma4", _) => Builder::Gemma4,
            (other, _) => {
                return Err(CramError::bad_config(
                    &meta.source,
                    "tokenizer.ggml.model",
                    format!(
                        "unsupported tokenizer type `{other}` (supported: gpt2, llama, gemma4)"
                    ),
                ))
            }
        };
        let mut tokenizer = match kind {
            Builder::ByteLevel => byte_level_tokenizer(&dict)?,
            Builder::Llama => sentencepiece_tokenizer(&dict, Flavour::Llama)?,
            Builder::Phi3 => {
                let mut t = sentencepiece_tokenizer(&dict, Flavour::Llama)?;
                t.with_normalizer(Some(component::<NormalizerWrapper>(json!({
                    "type": "Sequence",
                    "normalizers": [
                        {"type": "Prepend", "prepend": "\u{2581}"},
                        {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}
                    ]
                }))?));
                t.with_pre_tokenizer(None::<PreTokenizerWrapper>);
                t
            }
            Builder::Gemma => gemma_tokenizer(&dict)?,
            Builder::Gemma4 => sentencepiece_tokenizer(&dict, Flavour::Gemma)?,
        };

        // `add_gguf_special_tokens`: control tokens become special added
        // tokens, user-defined ones plain added tokens.
        if let Some(types) = &token_types {
            let spelled: Option<HashSet<char>> =
                (tokenizer_type == "gpt2").then(|| bytes_to_unicode().into_iter().collect());
            let control: Vec<AddedToken> = tokens
                .iter()
                .zip(types.iter())
                .filter(|(token, ty)| {
                    **ty == 3
                        && spelled
                            .as_ref()
                            .is_none_or(|alphabet| token.chars().all(|c| alphabet.contains(&c)))
                })
                .map(|(token, _)| AddedToken::from(token.as_str(), true).normalized(false))
                .collect();
            if !control.is_empty() {
                tokenizer.add_special_tokens(&control);
            }
            let vocab = tokenizer.get_vocab(true);
            let user_defined: Vec<AddedToken> = tokens
                .iter()
                .zip(types.iter())
                .filter(|(token, ty)| **ty == 4 && vocab.contains_key(token.as_str()))
                .map(|(token, _)| AddedToken::from(token.as_str(), false).normalized(false))
                .collect();
            if !user_defined.is_empty() {
                tokenizer.add_tokens(&user_defined);
            }
        }

        // `set_split_regex`: byte-level vocabularies split text the way their
        // merges were learned.
        if let Some(split) = pre.and_then(split_regex) {
            tokenizer.with_pre_tokenizer(Some(component::<PreTokenizerWrapper>(json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
                ]
            }))?));
        }

        // `get_gguf_tokenizer`: the named special tokens and the BOS/EOS flags.
        let token_at = |key: &str| -> Result<Option<String>> {
            match meta.uint(key)? {
                None => Ok(None),
                Some(id) => tokens.get(id as usize).cloned().map(Some).ok_or_else(|| {
                    CramError::bad_config(
                        &meta.source,
                        key,
                        format!(
                            "id {id} is outside the vocabulary of {} tokens",
                            tokens.len()
                        ),
                    )
                }),
            }
        };
        let bos = token_at("tokenizer.ggml.bos_token_id")?;
        let eos = token_at("tokenizer.ggml.eos_token_id")?;
        let unk = token_at("tokenizer.ggml.unknown_token_id")?;
        let pad = token_at("tokenizer.ggml.padding_token_id")?;
        let mut add_bos = meta.bool("tokenizer.ggml.add_bos_token")?;
        let add_eos = meta.bool("tokenizer.ggml.add_eos_token")?;
        match tokenizer_type {
            "llama" => {
                add_bos.get_or_insert(true);
            }
            "gemma4" => add_bos = Some(false),
            _ => {}
        }

        // The class `AutoTokenizer` wraps the result in adds its own default
        // special tokens; Gemma's is `<mask>`.
        let mut named: Vec<String> = [&bos, &eos, &unk, &pad]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        if matches!(
            architecture,
            "gemma" | "gemma2" | "gemma3" | "gemma3n" | "gemma4"
        ) {
            named.push("<mask>".to_string());
        }
        add_named_special_tokens(&mut tokenizer, &named);

        let bos_id = bos.as_deref().and_then(|t| tokenizer.token_to_id(t));
        let eos_id = eos.as_deref().and_then(|t| tokenizer.token_to_id(t));
        let add_bos = add_bos.unwrap_or(false) && bos_id.is_some();
        let add_eos = add_eos.unwrap_or(false) && eos_id.is_some();
        set_template(
            &mut tokenizer,
            bos.as_deref().zip(bos_id).filter(|_| add_bos),
            eos.as_deref().zip(eos_id).filter(|_| add_eos),
        )?;

        // Generation stops at EOS and at llama.cpp's end-of-turn tokens.
        let mut eos_ids = Vec::new();
        push_unique(&mut eos_ids, eos_id);
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(id) = meta.uint(key)? {
                let id = u32::try_from(id)
                    .ok()
                    .filter(|&id| (id as usize) < tokens.len());
                push_unique(&mut eos_ids, id);
            }
        }

        Self::finish(tokenizer, bos_id, eos_id, eos_ids, add_bos, path)
    }

    /// Load from a Hugging Face folder's files: `tokenizer.json`, plus
    /// `tokenizer_config.json`, `config.json` and `generation_config.json`
    /// where present.
    ///
    /// The BOS/EOS tokens come from `tokenizer_config.json` (`bos_token`,
    /// `eos_token`), falling back to the ids in `config.json` and then
    /// `generation_config.json`. When `tokenizer_config.json` sets
    /// `add_bos_token` or `add_eos_token`, the post-processor is rebuilt to
    /// follow them (as `transformers` does); otherwise the one in
    /// `tokenizer.json` is kept.
    ///
    /// # Errors
    ///
    /// [`CramError::NotFound`] / [`CramError::Io`] when a file cannot be read,
    /// [`CramError::BadFile`] when one cannot be parsed.
    pub fn from_hf_files(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
        config_json: Option<&Path>,
        generation_config: Option<&Path>,
    ) -> Result<Self> {
        let text = std::fs::read(tokenizer_json).map_err(|e| CramError::io(tokenizer_json, e))?;
        let mut tokenizer = Tokenizer::from_bytes(&text).map_err(|e| {
            CramError::bad_file(tokenizer_json, format!("not a valid tokenizer.json: {e}"))
        })?;
        let tok_config = tokenizer_config.map(read_json).transpose()?;
        let config = config_json.map(read_json).transpose()?;
        let gen_config = generation_config.map(read_json).transpose()?;

        let token_field = |name: &str| -> Option<String> {
            let value = tok_config.as_ref()?.1.get(name)?;
            match value {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        let bos_token = token_field("bos_token");
        let eos_token = token_field("eos_token");
        let resolve =
            |token: &Option<String>, file: &Option<(PathBuf, serde_json::Value)>, key: &str| {
                match token {
                    Some(t) => tokenizer.token_to_id(t),
                    None => json_ids(file.as_ref(), key).first().copied(),
                }
            };
        let bos_id = resolve(&bos_token, &config, "bos_token_id").or_else(|| {
            json_ids(gen_config.as_ref(), "bos_token_id")
                .first()
                .copied()
        });
        let eos_id = resolve(&eos_token, &config, "eos_token_id").or_else(|| {
            json_ids(gen_config.as_ref(), "eos_token_id")
                .first()
                .copied()
        });
        let mut eos_ids = Vec::new();
        push_unique(&mut eos_ids, eos_id);
        for id in json_ids(gen_config.as_ref(), "eos_token_id")
            .into_iter()
            .chain(json_ids(config.as_ref(), "eos_token_id"))
        {
            push_unique(&mut eos_ids, Some(id));
        }

        if let Some((path, cfg)) = &tok_config {
            let flag = |key: &str| -> Result<Option<bool>> {
                match cfg.get(key) {
                    None | Some(serde_json::Value::Null) => Ok(None),
                    Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
                    Some(_) => Err(CramError::bad_config(
                        path.display(),
                        key,
                        "expected true or false",
                    )),
                }
            };
            let (add_bos, add_eos) = (flag("add_bos_token")?, flag("add_eos_token")?);
            if add_bos.is_some() || add_eos.is_some() {
                // `update_post_processor`, with the tokens the config names.
                let bos = bos_token
                    .as_deref()
                    .and_then(|t| Some(t).zip(tokenizer.token_to_id(t)));
                let eos = eos_token
                    .as_deref()
                    .and_then(|t| Some(t).zip(tokenizer.token_to_id(t)));
                set_template(
                    &mut tokenizer,
                    bos.filter(|_| add_bos.unwrap_or(false)),
                    eos.filter(|_| add_eos.unwrap_or(false)),
                )?;
            }
        }

        // Whatever the post-processor is, see whether it prepends BOS.
        let adds_bos = match bos_id {
            None => false,
            Some(bos) => {
                let with = tokenizer
                    .encode("a", true)
                    .map_err(|e| CramError::Tokenizer(e.to_string()))?;
                let without = tokenizer
                    .encode("a", false)
                    .map_err(|e| CramError::Tokenizer(e.to_string()))?;
                with.get_ids().first() == Some(&bos)
                    && without.get_ids().first() != Some(&bos)
                    && with.get_ids().len() > without.get_ids().len()
            }
        };
        Self::finish(tokenizer, bos_id, eos_id, eos_ids, adds_bos, tokenizer_json)
    }

    fn finish(
        inner: Tokenizer,
        bos_id: Option<u32>,
        eos_id: Option<u32>,
        eos_ids: Vec<u32>,
        adds_bos: bool,
        path: &Path,
    ) -> Result<Self> {
        let serialised = inner.to_string(false).map_err(|e| {
            CramError::bad_file(path, format!("cannot serialise the tokenizer: {e}"))
        })?;
        let conventions = json!({
            "bos_id": bos_id,
            "eos_id": eos_id,
            "eos_ids": eos_ids,
            "adds_bos": adds_bos,
        });
        let mut hasher = Sha256::new();
        hasher.update(serialised.as_bytes());
        hasher.update(b"\n");
        hasher.update(conventions.to_string().as_bytes());
        let sha256 = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self {
            inner,
            bos_id,
            eos_id,
            eos_ids,
            adds_bos,
            sha256,
        })
    }

    /// Token ids as `tokenizer(text)["input_ids"]` gives them when
    /// `add_special` is true (BOS prepended if the model's convention says
    /// so), and as `add_special_tokens=False` gives them when false.
    ///
    /// # Errors
    ///
    /// [`CramError::Tokenizer`] if the tokenizer fails.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special)
            .map_err(|e| CramError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text for `ids`; `skip_special` drops special tokens. Ids outside the
    /// vocabulary are ignored.
    ///
    /// # Errors
    ///
    /// [`CramError::Tokenizer`] if the tokenizer fails.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| CramError::Tokenizer(e.to_string()))
    }

    /// The beginning-of-sequence token id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The primary end-of-sequence token id, if the model has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// All ids that stop generation: the primary EOS first, then any others
    /// (`generation_config.json` may list several; a GGUF may name
    /// end-of-turn tokens).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether `encode(_, true)` prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.adds_bos
    }

    /// Number of distinct tokens, added tokens included (what
    /// `len(tokenizer)` gives in `transformers`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// SHA-256 hex of a canonical serialisation of the tokenizer (its
    /// `tokenizer.json` form plus the BOS/EOS conventions), for model identity
    /// in output files.
    pub fn sha256(&self) -> String {
        self.sha256.clone()
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Which of transformers' GGUF tokenizer builders applies.
enum Builder {
    ByteLevel,
    Llama,
    Phi3,
    Gemma,
    Gemma4,
}

/// The two SentencePiece-style tokenizer classes: `LlamaTokenizer` and
/// `GemmaTokenizer`.
#[derive(Clone, Copy, PartialEq)]
enum Flavour {
    Llama,
    Gemma,
}

/// The tokenizer fields of a GGUF file.
struct TokenizerDict<'a> {
    source: &'a str,
    tokens: &'a [String],
    scores: Option<&'a [f64]>,
    merges: Option<&'a [String]>,
}

/// Typed access to GGUF metadata, with errors that name the file and key.
struct GgufMeta<'a> {
    content: &'a Content,
    source: String,
}

impl GgufMeta<'_> {
    fn missing(&self, key: &str) -> CramError {
        CramError::bad_config(&self.source, key, "missing from the GGUF metadata")
    }

    fn wrong(&self, key: &str, expected: &str) -> CramError {
        CramError::bad_config(&self.source, key, format!("expected {expected}"))
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(self.wrong(key, "a string")),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => match int_value(v) {
                Some(i) => Ok(Some(i != 0)),
                None => Err(self.wrong(key, "a boolean")),
            },
        }
    }

    fn uint(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match int_value(v).and_then(|i| u64::try_from(i).ok()) {
                Some(i) => Ok(Some(i)),
                None => Err(self.wrong(key, "a non-negative integer")),
            },
        }
    }

    fn array(&self, key: &str) -> Result<Option<&Vec<Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(self.wrong(key, "an array")),
        }
    }

    fn string_array(&self, key: &str) -> Result<Option<Vec<String>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(self.wrong(key, "an array of strings")),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn f64_array(&self, key: &str) -> Result<Option<Vec<f64>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| match v {
                Value::F32(x) => Ok(f64::from(*x)),
                Value::F64(x) => Ok(*x),
                other => int_value(other)
                    .map(|i| i as f64)
                    .ok_or_else(|| self.wrong(key, "an array of numbers")),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn int_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| int_value(v).ok_or_else(|| self.wrong(key, "an array of integers")))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// Any GGUF integer as an `i64` (a `u64` past `i64::MAX` gives `None`).
fn int_value(v: &Value) -> Option<i64> {
    match v {
        Value::U8(x) => Some(i64::from(*x)),
        Value::I8(x) => Some(i64::from(*x)),
        Value::U16(x) => Some(i64::from(*x)),
        Value::I16(x) => Some(i64::from(*x)),
        Value::U32(x) => Some(i64::from(*x)),
        Value::I32(x) => Some(i64::from(*x)),
        Value::U64(x) => i64::try_from(*x).ok(),
        Value::I64(x) => Some(*x),
        _ => None,
    }
}

/// Deserialise one tokenizer component from its `tokenizer.json` form.
fn component<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| CramError::Tokenizer(e.to_string()))
}

fn push_unique(ids: &mut Vec<u32>, id: Option<u32>) {
    if let Some(id) = id {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
}

/// GPT-2's map from bytes to printable characters, indexed by byte.
fn bytes_to_unicode() -> Vec<char> {
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut extra = 0u32;
    (0u32..256)
        .map(|b| {
            let code = if printable(b) {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(code).unwrap_or('\u{FFFD}')
        })
        .collect()
}

/// A vocabulary as Python's `{token: index for index, token in enumerate(tokens)}`
/// builds it: a repeated token keeps the last index. Also returns the distinct
/// tokens in first-seen order (a Python dict's iteration order).
fn index_vocab<'a>(
    tokens: impl IntoIterator<Item = &'a str>,
) -> (HashMap<&'a str, u32>, Vec<&'a str>) {
    let mut vocab: HashMap<&str, u32> = HashMap::new();
    let mut order = Vec::new();
    for (index, token) in tokens.into_iter().enumerate() {
        if vocab.insert(token, index as u32).is_none() {
            order.push(token);
        }
    }
    (vocab, order)
}

/// `transformers`' `generate_merges`: every split of every token into two
/// tokens of the vocabulary, sorted by the token's score (descending when
/// `scores` is given, else by ascending index), then by the pieces' lengths.
///
/// `scores[i]` belongs to `tokens[i]`; as with a Python dict, a repeated
/// token takes its last score.
fn generate_merges(tokens: &[String], scores: Option<&[f64]>) -> Vec<(String, String)> {
    let (vocab, order) = index_vocab(tokens.iter().map(String::as_str));
    let reverse = scores.is_some();
    let score_of: HashMap<&str, f64> = match scores {
        Some(scores) => tokens
            .iter()
            .map(String::as_str)
            .zip(scores.iter().copied())
            .collect(),
        None => vocab.iter().map(|(t, i)| (*t, f64::from(*i))).collect(),
    };

    // (left, right, score, chars in left, chars in right)
    let mut merges: Vec<(&str, &str, f64, usize, usize)> = Vec::new();
    let mut local: Vec<(&str, &str, u32, u32)> = Vec::new();
    for merge in order {
        let Some(&score) = score_of.get(merge) else {
            continue;
        };
        local.clear();
        for (split, _) in merge.char_indices().skip(1) {
            let (left, right) = merge.split_at(split);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                local.push((left, right, l, r));
            }
        }
        local.sort_by_key(|&(_, _, l, r)| (l, r));
        merges.extend(local.iter().map(|&(left, right, _, _)| {
            (
                left,
                right,
                score,
                left.chars().count(),
                right.chars().count(),
            )
        }));
    }
    let key_cmp = |a: &(&str, &str, f64, usize, usize), b: &(&str, &str, f64, usize, usize)| {
        a.2.partial_cmp(&b.2)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.3.cmp(&b.3))
            .then(a.4.cmp(&b.4))
    };
    if reverse {
        merges.sort_by(|a, b| key_cmp(b, a));
    } else {
        merges.sort_by(key_cmp);
    }
    merges
        .into_iter()
        .map(|(l, r, _, _, _)| (l.to_string(), r.to_string()))
        .collect()
}

/// `get_merges`: the merges the file gives, or the ones its vocabulary implies.
fn get_merges(
    dict: &TokenizerDict<'_>,
    scores_override: Option<&[f64]>,
) -> Result<Vec<(String, String)>> {
    if let Some(merges) = dict.merges {
        return merges
            .iter()
            .map(|merge| {
                let mut parts = merge.split(' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(a), Some(b), None) => Ok((a.to_string(), b.to_string())),
                    _ => Err(CramError::bad_config(
                        dict.source,
                        "tokenizer.ggml.merges",
                        format!("merge {merge:?} is not two tokens separated by one space"),
                    )),
                }
            })
            .collect();
    }
    let scores = match scores_override {
        Some(s) => s,
        None => dict.scores.ok_or_else(|| {
            CramError::bad_config(
                dict.source,
                "tokenizer.ggml.scores",
                "the file has neither merges nor scores to derive them from",
            )
        })?,
    };
    if scores.len() != dict.tokens.len() {
        return Err(CramError::bad_config(
            dict.source,
            "tokenizer.ggml.scores",
            format!("{} scores for {} tokens", scores.len(), dict.tokens.len()),
        ));
    }
    Ok(generate_merges(dict.tokens, Some(scores)))
}

fn build_bpe(
    dict: &TokenizerDict<'_>,
    vocab: HashMap<String, u32>,
    merges: Vec<(String, String)>,
    configure: impl FnOnce(tokenizers::models::bpe::BpeBuilder) -> tokenizers::models::bpe::BpeBuilder,
) -> Result<Tokenizer> {
    let vocab: tokenizers::models::bpe::Vocab = vocab.into_iter().collect();
    let bpe = configure(BPE::builder().vocab_and_merges(vocab, merges))
        .build()
        .map_err(|e| CramError::bad_config(dict.source, "tokenizer.ggml.merges", e))?;
    Ok(Tokenizer::new(bpe))
}

/// `byte_level_tokenizer` + `GPT2Tokenizer`.
fn byte_level_tokenizer(dict: &TokenizerDict<'_>) -> Result<Tokenizer> {
    let spelling = bytes_to_unicode();
    let alphabet: HashSet<char> = spelling.iter().copied().collect();
    let mut vocab = HashMap::with_capacity(dict.tokens.len());
    for (index, token) in dict.tokens.iter().enumerate() {
        let key = if token.chars().all(|c| alphabet.contains(&c)) {
            token.clone()
        } else {
            token.bytes().map(|b| spelling[usize::from(b)]).collect()
        };
        vocab.insert(key, index as u32);
    }
    let merges = get_merges(dict, None)?;
    let mut tokenizer = build_bpe(dict, vocab, merges, |b| {
        b.continuing_subword_prefix(String::new())
            .end_of_word_suffix(String::new())
            .fuse_unk(false)
    })?;
    tokenizer.with_pre_tokenizer(Some(component::<PreTokenizerWrapper>(json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    }))?));
    tokenizer.with_decoder(Some(component::<DecoderWrapper>(json!({
        "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true
    }))?));
    // GPT2Tokenizer's own defaults: unk, bos and eos are all `<|endoftext|>`.
    add_named_special_tokens(&mut tokenizer, &["<|endoftext|>".to_string()]);
    Ok(tokenizer)
}

/// `sentencepiece_tokenizer` with `LlamaTokenizer` or `GemmaTokenizer`.
fn sentencepiece_tokenizer(dict: &TokenizerDict<'_>, flavour: Flavour) -> Result<Tokenizer> {
    sentencepiece_with_merges(dict, flavour, get_merges(dict, None)?)
}

fn sentencepiece_with_merges(
    dict: &TokenizerDict<'_>,
    flavour: Flavour,
    merges: Vec<(String, String)>,
) -> Result<Tokenizer> {
    let (vocab, _) = index_vocab(dict.tokens.iter().map(String::as_str));
    let vocab: HashMap<String, u32> = vocab.into_iter().map(|(t, i)| (t.to_string(), i)).collect();
    let mut tokenizer = build_bpe(dict, vocab, merges, |b| {
        let b = b.fuse_unk(true).byte_fallback(true);
        match flavour {
            Flavour::Llama => b,
            Flavour::Gemma => b.unk_token("<unk>".to_string()),
        }
    })?;
    let strip = json!({"type": "Strip", "content": " ", "start": 1, "stop": 0});
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    let defaults: &[&str] = match flavour {
        Flavour::Llama => {
            tokenizer.with_pre_tokenizer(Some(component::<PreTokenizerWrapper>(json!({
                "type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false
            }))?));
            decoders.push(strip);
            &["<s>", "</s>", "<unk>"]
        }
        Flavour::Gemma => {
            tokenizer.with_normalizer(Some(component::<NormalizerWrapper>(json!({
                "type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"
            }))?));
            tokenizer.with_pre_tokenizer(Some(component::<PreTokenizerWrapper>(json!({
                "type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false
            }))?));
            &["<bos>", "<eos>", "<unk>", "<pad>", "<mask>"]
        }
    };
    tokenizer.with_decoder(Some(component::<DecoderWrapper>(json!({
        "type": "Sequence", "decoders": decoders
    }))?));
    let defaults: Vec<String> = defaults.iter().map(|s| s.to_string()).collect();
    add_named_special_tokens(&mut tokenizer, &defaults);
    Ok(tokenizer)
}

/// `gemma_tokenizer`: tokens made only of whitespace with a space in them are
/// respelled with `▁`, and merges (Gemma files have none) follow the order
/// of the tokens in the file rather than their scores.
fn gemma_tokenizer(dict: &TokenizerDict<'_>) -> Result<Tokenizer> {
    let respelled: Vec<String> = dict
        .tokens
        .iter()
        .map(|t| {
            if t.contains(' ') && t.chars().all(py_isspace) {
                "\u{2581}".repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect();
    let positions: Vec<f64> = (0..respelled.len()).map(|i| -(i as f64)).collect();
    let dict = TokenizerDict {
        source: dict.source,
        tokens: &respelled,
        scores: dict.scores,
        merges: dict.merges,
    };
    let merges = get_merges(&dict, Some(&positions))?;
    sentencepiece_with_merges(&dict, Flavour::Gemma, merges)
}

/// Python's `str.isspace` for one character.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Add a tokenizer's named special tokens (BOS, EOS, ...) the way
/// `transformers` does: each becomes a special added token, at its vocabulary
/// id if the model knows it, else at a new id.
fn add_named_special_tokens(tokenizer: &mut Tokenizer, names: &[String]) {
    let mut seen = HashSet::new();
    let tokens: Vec<AddedToken> = names
        .iter()
        .filter(|n| seen.insert(n.as_str()))
        .map(|n| AddedToken::from(n.as_str(), true).normalized(false))
        .collect();
    if !tokens.is_empty() {
        tokenizer.add_tokens(&tokens);
    }
}

/// `update_post_processor`: a template that adds BOS and/or EOS.
fn set_template(
    tokenizer: &mut Tokenizer,
    bos: Option<(&str, u32)>,
    eos: Option<(&str, u32)>,
) -> Result<()> {
    let special =
        |token: &str, type_id: u32| json!({"SpecialToken": {"id": token, "type_id": type_id}});
    let sequence = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    for (seq, type_id) in [("A", 0), ("B", 1)] {
        let mut part = Vec::new();
        if let Some((token, _)) = bos {
            part.push(special(token, type_id));
        }
        part.push(sequence(seq, type_id));
        if let Some((token, _)) = eos {
            part.push(special(token, type_id));
        }
        if seq == "A" {
            single = part.clone();
        }
        pair.extend(part);
    }
    let mut special_tokens = serde_json::Map::new();
    for (token, id) in bos.into_iter().chain(eos) {
        special_tokens.insert(
            token.to_string(),
            json!({"id": token, "ids": [id], "tokens": [token]}),
        );
    }
    let processor = component::<PostProcessorWrapper>(json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": special_tokens,
    }))?;
    tokenizer.with_post_processor(Some(processor));
    Ok(())
}

/// The regex `set_split_regex` uses for a `tokenizer.ggml.pre` value.
fn split_regex(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = concat!(
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}",
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    );
    const TEKKEN: &str = concat!(
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
        r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    );
    const GPT4O: &str = concat!(
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    );
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3,
        "tekken" => TEKKEN,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2,
        "qwen35" => QWEN35,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O,
        _ => return None,
    })
}

fn read_json(path: &Path) -> Result<(PathBuf, serde_json::Value)> {
    let text = std::fs::read(path).map_err(|e| CramError::io(path, e))?;
    let value = serde_json::from_slice(&text).map_err(|e| CramError::bad_file(path, e))?;
    Ok((path.to_path_buf(), value))
}

/// Token ids under `key` in a JSON config: a single id or a list of them.
fn json_ids(file: Option<&(PathBuf, serde_json::Value)>, key: &str) -> Vec<u32> {
    let Some((_, value)) = file else {
        return Vec::new();
    };
    let as_id = |v: &serde_json::Value| v.as_u64().and_then(|i| u32::try_from(i).ok());
    match value.get(key) {
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(as_id).collect(),
        Some(v) => as_id(v).into_iter().collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_gpt2s() {
        let map = bytes_to_unicode();
        assert_eq!(map[usize::from(b' ')], 'Ġ');
        assert_eq!(map[usize::from(b'\n')], 'Ċ');
        assert_eq!(map[usize::from(b'a')], 'a');
        assert_eq!(map.iter().collect::<HashSet<_>>().len(), 256);
    }

    #[test]
    fn merges_follow_scores_then_lengths() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0];
        let merges = generate_merges(&tokens, Some(&scores));
        let pairs: Vec<(&str, &str)> = merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        // What `transformers`' `generate_merges` gives for the same input: with
        // scores the sort is descending, so the longer left piece comes first.
        assert_eq!(pairs, [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]);
    }
}
