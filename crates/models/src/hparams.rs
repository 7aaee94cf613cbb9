//! Hyper-parameter readers for `config.json` and GGUF metadata, with errors
//! that name the file and the field.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use serde_json::Value;

use crate::error::{CramError, Result};

/// The largest size a configuration may give (vocabulary, widths, layers,
/// context): 2^26. Larger values come from corrupt files, and would be
/// allocated before any weight is read.
pub const MAX_SIZE: u64 = 1 << 26;

/// `x` as a size, or what is wrong with it.
fn check_size(x: u64) -> std::result::Result<usize, String> {
    if x > MAX_SIZE {
        return Err(format!(
            "{x} is too large (sizes above 2^26 = {MAX_SIZE} cannot fit in memory; is the file corrupt?)"
        ));
    }
    Ok(x as usize)
}
/// Fields of a Hugging Face `config.json`.
pub struct Json<'a> {
    value: &'a Value,
    path: PathBuf,
}

impl<'a> Json<'a> {
    /// Wraps a parsed `config.json` read from `path`.
    pub fn new(value: &'a Value, path: &Path) -> Self {
        Self {
            value,
            path: path.to_path_buf(),
        }
    }

    /// The file name, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, field: &str, msg: &str) -> CramError {
        CramError::bad_config(self.path.display(), field, msg)
    }

    /// The raw value of a field, treating JSON `null` as absent.
    pub fn raw(&self, field: &str) -> Option<&'a Value> {
        self.value.get(field).filter(|v| !v.is_null())
    }

    /// `model_type`.
    pub fn architecture(&self) -> Result<String> {
        self.str("model_type")
    }

    /// A required string.
    pub fn str(&self, field: &str) -> Result<String> {
        self.opt_str(field)?
            .ok_or_else(|| self.err(field, "missing required field"))
    }

    /// An optional string.
    pub fn opt_str(&self, field: &str) -> Result<Option<String>> {
        match self.raw(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(field, "expected a string")),
        }
    }

    /// A required non-negative integer.
    pub fn usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?
            .ok_or_else(|| self.err(field, "missing required field"))
    }

    /// An optional non-negative integer.
    pub fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        match self.raw(field) {
            None => Ok(None),
            Some(v) => {
                let x = v
                    .as_u64()
                    .ok_or_else(|| self.err(field, "expected a non-negative integer"))?;
                check_size(x).map(Some).map_err(|m| self.err(field, &m))
            }
        }
    }

    /// An optional number.
    pub fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        match self.raw(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(field, "expected a number")),
        }
    }

    /// An optional boolean.
    pub fn opt_bool(&self, field: &str) -> Result<Option<bool>> {
        match self.raw(field) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(field, "expected true or false")),
        }
    }

    /// A field inside a nested object (e.g. `rope_scaling.factor`).
    pub fn nested_f64(&self, obj: &str, field: &str) -> Result<f64> {
        self.raw(obj)
            .and_then(|o| o.get(field))
            .and_then(Value::as_f64)
            .ok_or_else(|| self.err(&format!("{obj}.{field}"), "missing or not a number"))
    }
}

/// Metadata of a GGUF file, keyed `<arch>.<field>`.
pub struct Gguf<'a> {
    content: &'a gguf_file::Content,
    path: PathBuf,
}

impl<'a> Gguf<'a> {
    /// Wraps a GGUF file's metadata.
    pub fn new(content: &'a gguf_file::Content, path: &Path) -> Self {
        Self {
            content,
            path: path.to_path_buf(),
        }
    }

    /// The file name, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying content.
    pub fn content(&self) -> &'a gguf_file::Content {
        self.content
    }

    fn err(&self, field: &str, msg: &str) -> CramError {
        CramError::bad_config(
            format!("{} (GGUF metadata)", self.path.display()),
            field,
            msg,
        )
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<String> {
        match self.content.metadata.get("general.architecture") {
            Some(v) => v
                .to_string()
                .cloned()
                .map_err(|_| self.err("general.architecture", "expected a string")),
            None => Err(self.err("general.architecture", "missing required field")),
        }
    }

    fn key(&self, field: &str) -> Result<String> {
        Ok(format!("{}.{field}", self.architecture()?))
    }

    /// A required integer `<arch>.<field>`.
    pub fn usize(&self, field: &str) -> Result<usize> {
        let key = self.key(field)?;
        self.opt_usize(field)?
            .ok_or_else(|| self.err(&key, "missing required field"))
    }

    /// An optional integer `<arch>.<field>` (any integer width).
    pub fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        let key = self.key(field)?;
        let Some(v) = self.content.metadata.get(&key) else {
            return Ok(None);
        };
        use gguf_file::Value as V;
        let n = match v {
            V::U8(x) => *x as i64,
            V::I8(x) => *x as i64,
            V::U16(x) => *x as i64,
            V::I16(x) => *x as i64,
            V::U32(x) => *x as i64,
            V::I32(x) => *x as i64,
            V::U64(x) => *x as i64,
            V::I64(x) => *x,
            _ => return Err(self.err(&key, "expected an integer")),
        };
        let n = u64::try_from(n).map_err(|_| self.err(&key, "expected a non-negative integer"))?;
        check_size(n).map(Some).map_err(|m| self.err(&key, &m))
    }

    /// An optional float `<arch>.<field>`.
    pub fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        let key = self.key(field)?;
        let Some(v) = self.content.metadata.get(&key) else {
            return Ok(None);
        };
        use gguf_file::Value as V;
        match v {
            V::F32(x) => Ok(Some(*x as f64)),
            V::F64(x) => Ok(Some(*x)),
            _ => self
                .opt_usize(field)?
                .map(|x| Some(x as f64))
                .ok_or_else(|| self.err(&key, "expected a number")),
        }
    }

    /// The vocabulary size: `<arch>.vocab_size`, or else the rows of
    /// `token_embd.weight`.
    pub fn vocab_size(&self) -> Result<usize> {
        if let Some(v) = self.opt_usize("vocab_size")? {
            return Ok(v);
        }
        self.content
            .tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| CramError::BadTensor {
                path: self.path.clone(),
                tensor: "token_embd.weight".into(),
                msg: "missing".into(),
            })
    }
}

// ---------------------------------------------------------------------------
// Readers shared by the LayerNorm-family architectures (GPT-2, GPT-NeoX).
// ---------------------------------------------------------------------------

impl Gguf<'_> {
    /// An optional boolean `<arch>.<field>`.
    pub fn opt_bool(&self, field: &str) -> Result<Option<bool>> {
        let key = self.key(field)?;
        match self.content.metadata.get(&key) {
            None => Ok(None),
            Some(gguf_file::Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.err(&key, "expected true or false")),
        }
    }
}
