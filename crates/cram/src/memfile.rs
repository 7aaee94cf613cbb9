//! The `.safetensors` file that holds a text's `[mem]` vectors and
//! everything needed to decode them: model identity, conventions, metrics.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::engine::{CramConfig, CramResult, LossConvention, StopReason};
use crate::error::{CramError, Result};
use crate::layout::Layout;
use crate::model::LoadedModel;

/// Format tag written into every file.
pub const FORMAT: &str = "cram-mem/1";
/// Name of the vectors tensor.
pub const TENSOR: &str = "mem";
/// Metadata key holding the JSON metadata.
pub const META_KEY: &str = "cram";

/// Which model a file was made with. Decoding with any other model fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// What the user passed as `--model`.
    pub name: String,
    /// Architecture (`model_type`).
    pub architecture: String,
    /// SHA-256 of the weights (of the file, or of the shards' hashes in order).
    pub weights_sha256: String,
    /// SHA-256 of the tokenizer.
    pub tokenizer_sha256: String,
}

impl ModelIdentity {
    /// Computes a loaded model's identity (hashes its weight files).
    pub fn of(m: &LoadedModel) -> Result<Self> {
        let mut hashes = Vec::new();
        for f in &m.weight_files {
            hashes.push(crate::fetch::sha256_file(f)?);
        }
        let weights_sha256 = if hashes.len() == 1 {
            hashes.remove(0)
        } else {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            for x in &hashes {
                h.update(x.as_bytes());
            }
            format!("{:x}", h.finalize())
        };
        Ok(Self {
            name: m.spec.clone(),
            architecture: m.model.info().architecture.clone(),
            weights_sha256,
            tokenizer_sha256: m.tokenizer.sha256(),
        })
    }

    /// Whether two identities name the same weights and tokenizer (the name
    /// the user typed may differ).
    pub fn same_model(&self, other: &Self) -> bool {
        self.weights_sha256 == other.weights_sha256
            && self.tokenizer_sha256 == other.tokenizer_sha256
    }
}

impl MemMeta {
    /// The metadata of a text's vectors: `ids` are its tokens, `r` the
    /// engine's result for it, `cfg` the settings it was crammed with.
    pub fn new(
        m: &LoadedModel,
        identity: &ModelIdentity,
        cfg: &CramConfig,
        layout: &Layout,
        ids: &[u32],
        r: &CramResult,
    ) -> Self {
        Self {
            format: FORMAT.into(),
            cram_version: env!("CARGO_PKG_VERSION").into(),
            model: identity.clone(),
            n_tokens: ids.len(),
            n_mem: cfg.n_mem,
            input_size: m.model.info().input_size,
            loss: cfg.loss,
            adds_bos: m.tokenizer.adds_bos(),
            bos_id: m.tokenizer.bos_id(),
            first_token: ids.first().copied(),
            dtype: m.model.info().compute_dtype.clone(),
            tokens_sha256: tokens_sha256(ids),
            config: cfg.clone(),
            layout: layout.clone(),
            metrics: Metrics::from(r),
            backend: Some(m.model.info().backend()),
            basis: None,
        }
    }
}

/// Everything in a file besides the vectors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemMeta {
    /// [`FORMAT`].
    pub format: String,
    /// cram's version.
    pub cram_version: String,
    /// The model.
    pub model: ModelIdentity,
    /// Tokens in the text (BOS included when the tokenizer adds it).
    pub n_tokens: usize,
    /// Vectors.
    pub n_mem: usize,
    /// Width of a vector.
    pub input_size: usize,
    /// Loss convention the vectors were trained with.
    pub loss: LossConvention,
    /// Whether the text starts with the tokenizer's BOS token.
    pub adds_bos: bool,
    /// The BOS id, if any.
    pub bos_id: Option<u32>,
    /// The first token, needed to decode with the `paper` convention.
    pub first_token: Option<u32>,
    /// Compute dtype used while cramming.
    pub dtype: String,
    /// SHA-256 of the token ids (little-endian u32), to check a decoding.
    pub tokens_sha256: String,
    /// Engine settings (protocol, sink setting, optimiser, ...).
    pub config: crate::engine::CramConfig,
    /// What stood in front of the vectors (files written before layouts
    /// existed read as none, which is what they used).
    #[serde(default)]
    pub layout: Layout,
    /// Metrics.
    pub metrics: Metrics,
    /// Where and how the vectors were computed (device, dtype, kernels);
    /// absent in files written before cram recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<cram_models::Backend>,
    /// The basis low-dimensional vectors are expanded with (absent for
    /// full vectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<BasisRef>,
}

/// Where a low-dimensional vector file's basis is: a file in the same
/// folder, and its numbers' SHA-256 ([`crate::lowdim::Basis::sha256`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasisRef {
    /// The basis file's name, beside the vector file.
    pub file: String,
    /// SHA-256 of its numbers.
    pub sha256: String,
}

impl MemMeta {
    /// The low-dimensional setting whose files hold `z` under a shared
    /// basis (an own basis's files hold the vectors themselves).
    fn shared_low_dim(&self) -> Option<&crate::lowdim::LowDim> {
        self.config.low_dim.as_ref().filter(|l| l.basis.is_shared())
    }

    /// Numbers per vector in the file: `k` for `z` under a shared basis,
    /// the model's input width otherwise.
    pub fn row_width(&self) -> usize {
        self.shared_low_dim().map_or(self.input_size, |l| l.k)
    }

    /// The vectors of a file's numbers `params`: expanded with the basis
    /// it names (read from beside `file` and checked against its SHA-256),
    /// or `params` themselves for full vectors (and an own basis's).
    pub fn expand(&self, file: &Path, params: Vec<f32>) -> Result<Vec<f32>> {
        if self.shared_low_dim().is_none() {
            return Ok(params);
        }
        let r = self.basis.as_ref().ok_or_else(|| {
            CramError::bad_file(
                file,
                "metadata field `basis`: missing (the file holds low-dimensional vectors)",
            )
        })?;
        let path = file.parent().unwrap_or_else(|| Path::new("")).join(&r.file);
        if !path.is_file() {
            return Err(CramError::bad_file(
                file,
                format!(
                    "its basis {} is missing (low-dimensional vectors decode only with the basis they were made with)",
                    path.display()
                ),
            ));
        }
        let (basis, _, _) = crate::lowdim::Basis::read(&path)?;
        if basis.sha256() != r.sha256 || basis.width != self.input_size {
            return Err(CramError::bad_file(
                &path,
                format!(
                    "is not the basis {} was made with (sha256 {}, expected {})",
                    file.display(),
                    basis.sha256(),
                    r.sha256
                ),
            ));
        }
        Ok(basis.expand(&params))
    }
}

/// The metrics stored with the vectors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metrics {
    /// Mean cross-entropy without vectors.
    #[serde(deserialize_with = "crate::nonfinite::f64")]
    pub original_loss: f64,
    /// Accuracy without vectors.
    #[serde(deserialize_with = "crate::nonfinite::f64")]
    pub original_accuracy: f64,
    /// Loss with the kept vectors.
    #[serde(deserialize_with = "crate::nonfinite::f64")]
    pub best_loss: f64,
    /// Accuracy with the kept vectors.
    #[serde(deserialize_with = "crate::nonfinite::f64")]
    pub best_accuracy: f64,
    /// Steps taken.
    pub steps: usize,
    /// Why optimisation stopped.
    pub stop_reason: StopReason,
    /// Seconds spent.
    #[serde(deserialize_with = "crate::nonfinite::f64")]
    pub wall_time_s: f64,
    /// Whether greedy decoding reproduced the text.
    pub exact: bool,
    /// First differing position, if any.
    pub first_mismatch: Option<usize>,
    /// Loss per step.
    #[serde(deserialize_with = "crate::nonfinite::vec_f32")]
    pub loss_curve: Vec<f32>,
    /// Accuracy per step.
    #[serde(deserialize_with = "crate::nonfinite::vec_f32")]
    pub accuracy_curve: Vec<f32>,
}

impl From<&CramResult> for Metrics {
    fn from(r: &CramResult) -> Self {
        Self {
            original_loss: r.original_loss,
            original_accuracy: r.original_accuracy,
            best_loss: r.best_loss,
            best_accuracy: r.best_accuracy,
            steps: r.steps,
            stop_reason: r.stop_reason,
            wall_time_s: r.wall_time_s,
            exact: r.exact,
            first_mismatch: r.first_mismatch,
            loss_curve: r.loss_curve.clone(),
            accuracy_curve: r.accuracy_curve.clone(),
        }
    }
}

/// SHA-256 of token ids.
pub fn tokens_sha256(ids: &[u32]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for id in ids {
        h.update(id.to_le_bytes());
    }
    format!("{:x}", h.finalize())
}

/// An f32 tensor to write into a safetensors file.
pub(crate) struct F32View<'a> {
    shape: Vec<usize>,
    data: &'a [f32],
}

impl<'a> F32View<'a> {
    /// `data`, row-major, of `shape`.
    pub(crate) fn new(shape: Vec<usize>, data: &'a [f32]) -> Self {
        Self { shape, data }
    }
}

impl safetensors::View for F32View<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

/// Writes vectors `[n_mem, input_size]` and metadata, atomically (a temp
/// file renamed into place).
pub fn write(path: &Path, vectors: &[f32], meta: &MemMeta) -> Result<()> {
    let width = meta.row_width();
    if vectors.len() != meta.n_mem * width {
        return Err(CramError::Input(format!(
            "internal: {} numbers for {} vectors of width {width}",
            vectors.len(),
            meta.n_mem,
        )));
    }
    let json = serde_json::to_string(meta).map_err(|e| CramError::bad_file(path, e))?;
    let info = HashMap::from([(META_KEY.to_string(), json)]);
    write_tensors(
        path,
        vec![(TENSOR, F32View::new(vec![meta.n_mem, width], vectors))],
        info,
    )
}

/// Writes f32 tensors and metadata to a safetensors file, atomically.
pub(crate) fn write_tensors(
    path: &Path,
    tensors: Vec<(&str, F32View<'_>)>,
    info: HashMap<String, String>,
) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    // Written aside and renamed: a file at `path` is always whole. A failed
    // write (a full disk) leaves no partial file behind.
    let written = safetensors::serialize_to_file(tensors, Some(info), &tmp)
        .map_err(|e| CramError::bad_file(&tmp, format!("cannot write: {e}")))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| CramError::io(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// What `path` holds for a text about to be crammed: nothing, or the vectors
/// of this very text (tokens `ids`, settings `cfg`, the model of
/// `identity`, the basis of SHA-256 `basis_sha256`), whose metadata is returned so that the work is not done
/// again.
///
/// # Errors
/// A file that holds something else (another text, other settings,
/// another model, or not a vector file): overwriting it would lose it.
pub fn existing(
    path: &Path,
    identity: &ModelIdentity,
    cfg: &CramConfig,
    basis_sha256: Option<&str>,
    ids: &[u32],
) -> Result<Option<MemMeta>> {
    if !path.exists() {
        return Ok(None);
    }
    let refuse = |why: &str| {
        CramError::bad_file(
            path,
            format!("already exists and holds {why}; pass --overwrite to replace it"),
        )
    };
    let (_, meta) = read(path).map_err(|_| refuse("no readable cram vectors"))?;
    if !meta.model.same_model(identity) {
        return Err(refuse("vectors of another model"));
    }
    if meta.tokens_sha256 != tokens_sha256(ids) {
        return Err(refuse("the vectors of another text"));
    }
    if meta.config != *cfg {
        return Err(refuse("vectors made with other settings"));
    }
    if meta.basis.as_ref().map(|b| b.sha256.as_str()) != basis_sha256 {
        return Err(refuse("vectors made with another basis"));
    }
    Ok(Some(meta))
}

/// Reads a file written by [`write`]: vectors (row-major; each `z` for
/// low-dimensional vectors) and metadata.
pub fn read(path: &Path) -> Result<(Vec<f32>, MemMeta)> {
    let bad = |msg: String| CramError::bad_file(path, msg);
    let (mut tensors, json) = read_tensors(path, META_KEY, "cram compress")?;
    let meta: MemMeta =
        serde_json::from_str(&json).map_err(|e| bad(format!("invalid cram metadata: {e}")))?;
    if meta.format != FORMAT {
        return Err(bad(format!(
            "unsupported format `{}` (expected {FORMAT})",
            meta.format
        )));
    }
    let (shape, vectors) = tensors
        .remove(TENSOR)
        .ok_or_else(|| bad(format!("no `{TENSOR}` tensor")))?;
    let width = meta.row_width();
    if shape != [meta.n_mem, width] {
        return Err(bad(format!(
            "tensor `{TENSOR}` is {shape:?}, expected [{}, {width}]",
            meta.n_mem
        )));
    }
    Ok((vectors, meta))
}

/// A safetensors file's f32 tensors by name: shape and numbers.
pub(crate) type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// The f32 tensors (by name: shape, numbers) and the metadata entry `key`
/// of a safetensors file written by `writer` (named in errors).
pub(crate) fn read_tensors(path: &Path, key: &str, writer: &str) -> Result<(Tensors, String)> {
    let bytes = std::fs::read(path).map_err(|e| CramError::io(path, e))?;
    let bad = |msg: String| CramError::bad_file(path, msg);
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(key))
        .ok_or_else(|| {
            bad(format!(
                "no `{key}` metadata: not a file written by {writer}"
            ))
        })?
        .clone();
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let mut out = HashMap::new();
    for (name, t) in st.tensors() {
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(bad(format!(
                "tensor `{name}` is {:?}, expected F32",
                t.dtype()
            )));
        }
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, (t.shape().to_vec(), v));
    }
    Ok((out, json))
}

/// A file's text regenerated from its vectors alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The decoded token ids (the given first token included under the
    /// paper's convention).
    pub ids: Vec<u32>,
    /// Whether they are the original text's tokens.
    pub matches_original: bool,
    /// Components of the vectors that are NaN or infinite (the file's
    /// optimisation diverged).
    pub non_finite: usize,
}

/// Reads `file` and regenerates its text by greedy decoding from the
/// vectors (and the layout's given tokens) with `m`, which must be the model
/// the file was made with.
///
/// # Errors
/// A file made with another model, or whose token count with its vectors
/// exceeds the model's context (a corrupt or hand-edited file), names the
/// file and the field.
pub fn decode(m: &LoadedModel, file: &Path) -> Result<Decoded> {
    let (params, meta) = read(file)?;
    let identity = ModelIdentity::of(m)?;
    if !identity.same_model(&meta.model) {
        return Err(CramError::bad_file(
            file,
            format!(
                "made with model `{}` (weights sha256 {}, tokenizer sha256 {}), but --model `{}` has weights sha256 {} and tokenizer sha256 {}",
                meta.model.name,
                meta.model.weights_sha256,
                meta.model.tokenizer_sha256,
                identity.name,
                identity.weights_sha256,
                identity.tokenizer_sha256
            ),
        ));
    }
    let ctx = m.model.info().context_length;
    if meta.n_mem == 0 || meta.n_tokens == 0 || meta.n_tokens.saturating_add(meta.n_mem) > ctx {
        return Err(CramError::bad_file(
            file,
            format!(
                "metadata field `n_tokens`: {} tokens with {} vector(s) do not fit the model's context length {ctx} (a text needs at least 1 token and 1 vector)",
                meta.n_tokens, meta.n_mem
            ),
        ));
    }
    if let Some(id) = meta.layout.sink {
        let vocab = m.model.info().vocab_size;
        if id as usize >= vocab {
            return Err(CramError::bad_file(
                file,
                format!("metadata field `layout.sink`: token id {id} is outside the model's vocabulary ({vocab} tokens)"),
            ));
        }
    }
    if meta.n_tokens + meta.n_mem + meta.layout.prefix_len() > ctx {
        return Err(CramError::bad_file(
            file,
            format!("metadata field `n_tokens`: {} tokens with {} vector(s) and the layout's fixed token do not fit the model's context length {ctx}", meta.n_tokens, meta.n_mem),
        ));
    }
    let vectors = meta.expand(file, params)?;
    let non_finite = vectors.iter().filter(|v| !v.is_finite()).count();
    let count = meta.loss.n_predicted(meta.n_tokens);
    let mut ids = crate::engine::decode_vectors(
        m.model.as_ref(),
        &meta.layout,
        &vectors,
        meta.n_mem,
        meta.loss,
        meta.first_token,
        count,
    )?;
    if meta.loss == LossConvention::Paper {
        if let Some(f) = meta.first_token {
            ids.insert(0, f);
        }
    }
    Ok(Decoded {
        matches_original: tokens_sha256(&ids) == meta.tokens_sha256,
        ids,
        non_finite,
    })
}
