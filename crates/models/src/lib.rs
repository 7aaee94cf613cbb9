//! Causal language models run forward from input embeddings.
//!
//! [`CausalLm`] is the interface the rest of cram uses; [`load`] turns the
//! string a user types after `--model` into a model and its tokenizer. One
//! file per architecture, built on the shared blocks in [`blocks`].

#![warn(missing_docs)]

pub mod arch;
pub mod blocks;
pub mod error;
pub mod fetch;
pub mod generate;
pub mod hparams;
pub mod memory;
pub mod registry;
pub mod source;
pub mod tokenizer;
pub mod weights;

pub use arch::{gemma3, gpt2, gpt_neox, llama, mamba, olmo, opt};
pub use error::{CramError, Result};

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};

use crate::source::ModelSource;
use crate::tokenizer::TextTokenizer;
use crate::weights::Weights;
pub use cram_kernels::Kernels;

/// What a model is, for display and for the rest of the pipeline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// Architecture name as `transformers` spells its `model_type`.
    pub architecture: String,
    /// Number of blocks.
    pub num_layers: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the input embeddings (differs from `hidden_size` for OPT).
    pub input_size: usize,
    /// Attention heads (0 for attention-free models).
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_kv_heads: usize,
    /// Output vocabulary size.
    pub vocab_size: usize,
    /// Maximum context length in tokens.
    pub context_length: usize,
    /// Number of parameters (tied matrices counted once).
    pub num_parameters: usize,
    /// How the weights are stored on disk (e.g. `Q4_1+F32`, `bf16`).
    pub weights_dtype: String,
    /// The dtype computations run in.
    pub compute_dtype: String,
    /// The device computations run on (`cpu`, `cuda:0`, ...).
    pub device: String,
    /// The kernels the layers run with.
    pub kernels: Kernels,
    /// Unbiased standard deviation of the input-embedding matrix.
    pub embedding_std: f64,
}

impl ModelInfo {
    /// Where and how the model computes, as recorded with every result.
    pub fn backend(&self) -> Backend {
        Backend {
            device: self.device.clone(),
            dtype: self.compute_dtype.clone(),
            kernels: self.kernels.record(),
        }
    }
}

/// Where and how a result was computed: the settings besides the
/// configuration that change its numbers in the last bits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Backend {
    /// `cpu`, `cuda:0`, ...
    pub device: String,
    /// The compute dtype.
    pub dtype: String,
    /// The kernels.
    pub kernels: cram_kernels::KernelsRecord,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}, {}", self.device, self.dtype, self.kernels)
    }
}

/// Per-layer state carried between decoding steps.
#[derive(Debug, Clone, Default)]
pub enum LayerState {
    /// Nothing cached yet.
    #[default]
    Empty,
    /// Keys and values of the positions seen so far: `[B, T, kv_heads * D]`
    /// on the CPU in f32 (the fused attention's layout), `[B, kv_heads, T, D]`
    /// elsewhere.
    Kv {
        /// Cached keys.
        k: Tensor,
        /// Cached values.
        v: Tensor,
    },
    /// A state-space layer's recurrent state (Mamba).
    Ssm {
        /// The last `conv_kernel - 1` inputs of the causal convolution,
        /// `[B, K - 1, inner]`.
        conv: Tensor,
        /// The selective-scan state `[B, inner, state_size]`.
        ssm: Tensor,
    },
}

/// State for incremental (cached) decoding.
#[derive(Debug, Clone)]
pub struct DecodeState {
    /// Number of positions already processed.
    pub pos: usize,
    /// One entry per layer.
    pub layers: Vec<LayerState>,
}

impl DecodeState {
    /// A fresh state for a model of `n` layers.
    pub fn new(n: usize) -> Self {
        Self {
            pos: 0,
            layers: vec![LayerState::Empty; n],
        }
    }
}

/// A frozen causal language model that runs from input embeddings.
pub trait CausalLm {
    /// Sizes and identity.
    fn info(&self) -> &ModelInfo;

    /// Input embeddings for token ids `[B, T]` (u32): `[B, T, input_size]`.
    fn embed(&self, ids: &Tensor) -> Result<Tensor>;

    /// Logits `[B, T, vocab]` (f32) for input embeddings `[B, T, input_size]`.
    ///
    /// `mask` is `[B, T]` with 1 for real positions and 0 for right padding.
    /// Differentiable with respect to `embeds`; weights get no gradient.
    fn forward(&self, embeds: &Tensor, mask: Option<&Tensor>) -> Result<Tensor>;

    /// Logits for the next `t` positions given the cached state (batch 1
    /// or an unpadded batch); updates the state.
    fn forward_step(&self, embeds: &Tensor, state: &mut DecodeState) -> Result<Tensor>;

    /// A fresh decoding state.
    fn new_state(&self) -> DecodeState {
        DecodeState::new(self.info().num_layers)
    }

    /// The device the model runs on.
    fn device(&self) -> &Device;

    /// The compute dtype.
    fn dtype(&self) -> DType;

    /// The estimated memory of one cramming step (forward and backward to
    /// the inputs) on `batch` texts of `len` positions, on the composed path
    /// (see [`memory`]); `None` where the architecture has no estimate.
    fn memory(&self, batch: usize, len: usize) -> Option<memory::MemoryEstimate> {
        let _ = (batch, len);
        None
    }
}

/// One forward pass of an attention model, as [`CausalLm`] hands it to
/// [`AttentionStack::stack`].
pub struct Pass<'a> {
    /// Position of the first input (the number of cached positions).
    pub start: usize,
    /// Padding mask `[B, start + T]` (1 for real tokens), if any.
    pub mask: Option<&'a Tensor>,
    /// The additive causal and padding mask of global attention,
    /// `[B, 1, T, start + T]` (from [`blocks::attention_bias`]).
    pub bias: Tensor,
    /// The decoding state to read and extend, when decoding step by step.
    pub state: Option<&'a mut DecodeState>,
}

/// A transformer with attention layers: what an architecture provides for
/// [`CausalLm`], which follows from it (the width check, the attention mask
/// and the decoding position are the same for every such model).
pub trait AttentionStack {
    /// Sizes and identity, the device and the compute dtype.
    fn base(&self) -> (&ModelInfo, &Device, DType);

    /// Input embeddings for token ids `[B, T]`: `[B, T, input_size]`.
    fn embed(&self, ids: &Tensor) -> Result<Tensor>;

    /// Logits `[B, T, vocab]` (f32) for input embeddings `[B, T, input_size]`.
    fn stack(&self, embeds: &Tensor, pass: Pass<'_>) -> Result<Tensor>;

    /// What [`AttentionStack::stack`] leaves in the autograd graph for a
    /// step of shape `s`, on the composed path (see [`memory`]), logits
    /// included; `None` where it is not estimated.
    fn kept_bytes(&self, s: memory::StepShape) -> Option<usize> {
        let _ = s;
        None
    }
}

impl<M: AttentionStack> CausalLm for M {
    fn info(&self) -> &ModelInfo {
        self.base().0
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        AttentionStack::embed(self, ids)
    }

    fn forward(&self, embeds: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let bias = self.pass_bias(embeds, 0, mask)?;
        self.stack(
            embeds,
            Pass {
                start: 0,
                mask,
                bias,
                state: None,
            },
        )
    }

    fn forward_step(&self, embeds: &Tensor, state: &mut DecodeState) -> Result<Tensor> {
        let start = state.pos;
        let bias = self.pass_bias(embeds, start, None)?;
        let pass = Pass {
            start,
            mask: None,
            bias,
            state: Some(&mut *state),
        };
        let out = self.stack(embeds, pass)?;
        state.pos += embeds.dim(1)?;
        Ok(out)
    }

    fn device(&self) -> &Device {
        self.base().1
    }

    fn dtype(&self) -> DType {
        self.base().2
    }

    fn memory(&self, batch: usize, len: usize) -> Option<memory::MemoryEstimate> {
        let (info, _, dtype) = self.base();
        let s = memory::StepShape {
            batch,
            len,
            elem: dtype.size_in_bytes(),
        };
        Some(memory::MemoryEstimate {
            weights: info.num_parameters * s.elem,
            kept: self.kept_bytes(s)? + memory::bias_bytes(s),
            transient: memory::transient_bytes(
                s,
                info.vocab_size,
                info.num_heads,
                info.hidden_size,
            ),
        })
    }
}

/// Checks the width of `embeds` and builds the attention mask of a pass.
trait PassBias {
    fn pass_bias(&self, embeds: &Tensor, start: usize, mask: Option<&Tensor>) -> Result<Tensor>;
}

impl<M: AttentionStack> PassBias for M {
    fn pass_bias(&self, embeds: &Tensor, start: usize, mask: Option<&Tensor>) -> Result<Tensor> {
        let (info, dev, dtype) = self.base();
        blocks::expect_width(embeds, info.input_size)?;
        let (b, t, _) = embeds.dims3()?;
        Ok(blocks::attention_bias(b, t, start, mask, None, dtype, dev)?)
    }
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where to run.
    pub device: Device,
    /// Compute dtype (f32 on CPU; bf16/f16 on GPU).
    pub dtype: DType,
    /// The kernels the layers run with (composed ones on a device other than
    /// the CPU, whatever this says).
    pub kernels: Kernels,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            kernels: Kernels::default(),
        }
    }
}

/// Opens the device `spec` names: `cpu`, `cuda` or `cuda:N`.
///
/// # Errors
/// An unknown name; a CUDA device in a build without the `cuda` feature, on
/// a machine without the NVIDIA driver (`libcuda`), or that cannot be opened.
pub fn open_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        d if d == "cuda" || d.starts_with("cuda:") => {
            let idx = match d.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n
                    .parse()
                    .map_err(|_| CramError::Input(format!("`{d}`: expected cuda or cuda:N")))?,
            };
            if cfg!(feature = "cuda") {
                // The CUDA libraries are loaded at run time, and a missing
                // driver library would abort inside the loader: look first.
                const DRIVER: &[&str] = &["libcuda.so.1", "libcuda.so"];
                // SAFETY: loading the driver runs its initialisers, which have
                // no preconditions; the handle is dropped at once.
                let found = DRIVER
                    .iter()
                    .any(|n| unsafe { libloading::Library::new(*n) }.is_ok());
                if !found {
                    return Err(CramError::Input(format!(
                        "`{d}`: no NVIDIA driver here (libcuda.so.1 cannot be loaded)"
                    )));
                }
            }
            Device::new_cuda(idx).map_err(|e| {
                CramError::Input(format!(
                    "`{d}`: cannot open the CUDA device: {}",
                    candle_message(e)
                ))
            })
        }
        other => Err(CramError::Input(format!(
            "unknown device `{other}` (expected cpu or cuda[:N])"
        ))),
    }
}

/// A device's name as cram writes it: `cpu`, `cuda:N`, `metal:N`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// A model, its tokenizer, and where they came from.
pub struct LoadedModel {
    /// The network.
    pub model: Box<dyn CausalLm>,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// The string the user gave.
    pub spec: String,
    /// The files the weights were read from.
    pub weight_files: Vec<PathBuf>,
}

pub use registry::SUPPORTED_ARCHITECTURES;

fn unsupported(path: &Path, arch: &str) -> CramError {
    CramError::UnsupportedArchitecture {
        path: path.to_path_buf(),
        arch: arch.to_string(),
        supported: SUPPORTED_ARCHITECTURES.join(", "),
    }
}

/// The message of a candle error, without the backtrace candle appends
/// when `RUST_BACKTRACE` is set, so that it fits on one line.
pub(crate) fn candle_message(e: candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(*inner),
        e => e.to_string(),
    }
}

/// Reads a GGUF file's header and metadata, with a clear error for a file
/// that is not GGUF or is truncated.
pub fn read_gguf(path: &Path) -> Result<gguf_file::Content> {
    let mut f = std::fs::File::open(path).map_err(|e| CramError::io(path, e))?;
    let content = gguf_file::Content::read(&mut f).map_err(|e| {
        CramError::bad_file(
            path,
            format!(
                "not a valid GGUF file (truncated or corrupt header): {}",
                candle_message(e)
            ),
        )
    })?;
    // A truncated file has a complete header but not all of its tensor data.
    let len = f.metadata().map_err(|e| CramError::io(path, e))?.len();
    // Every tensor's size, checked before anything multiplies its
    // dimensions: a zero dimension or a product past u64 is a corrupt file.
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut ends = Vec::with_capacity(names.len());
    for name in names {
        let info = &content.tensor_infos[name];
        let dims = info.shape.dims();
        let bad = |what: &str| {
            CramError::bad_file(
                path,
                format!("tensor `{name}` has dimensions {dims:?}: {what}"),
            )
        };
        if dims.contains(&0) {
            return Err(bad("a dimension is 0"));
        }
        let elems = dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .ok_or_else(|| bad("their product overflows"))?;
        let bytes = (elems / info.ggml_dtype.block_size() as u64)
            .checked_mul(info.ggml_dtype.type_size() as u64);
        let end = bytes
            .and_then(|b| b.checked_add(info.offset))
            .and_then(|e| e.checked_add(content.tensor_data_offset))
            .ok_or_else(|| bad("its data would end past 2^64 bytes"))?;
        ends.push((end, name));
    }
    // Report the tensor that ends last, so the message does not depend on
    // the order of the tensor map.
    let last = ends.into_iter().max();
    if let Some((end, name)) = last.filter(|(end, _)| *end > len) {
        return Err(CramError::bad_file(
            path,
            format!(
                "truncated GGUF file: it has {len} bytes but its tensor data needs {end} \
                 (tensor `{name}` ends there)"
            ),
        ));
    }
    Ok(content)
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| CramError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| CramError::bad_file(path, format!("invalid JSON: {e}")))
}

/// Resolves `spec` (alias, path or hub id) and loads the model and tokenizer.
///
/// Loading has no global side effects: the kernels come with `opts`.
pub fn load(spec: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    match source::resolve(spec)? {
        ModelSource::Gguf { path } => {
            let content = std::sync::Arc::new(read_gguf(&path)?);
            let meta = hparams::Gguf::new(&content, &path);
            let name = meta.architecture()?;
            let (_, gguf) =
                registry::by_gguf_name(&name).ok_or_else(|| unsupported(&path, &name))?;
            let tokenizer = TextTokenizer::from_gguf(&content, &path)?;
            let w = Weights::from_gguf_named(
                &path,
                content.clone(),
                gguf.tensor_name,
                &opts.device,
                opts.dtype,
            )?
            .with_kernels(opts.kernels);
            let model = (gguf.from_metadata)(&meta, &w)?;
            Ok(LoadedModel {
                model,
                tokenizer,
                spec: spec.to_string(),
                weight_files: vec![path],
            })
        }
        ModelSource::Folder(files) => {
            let config = read_json(&files.config)?;
            let hp = hparams::Json::new(&config, &files.config);
            let arch = hp.architecture()?;
            let entry =
                registry::by_model_type(&arch).ok_or_else(|| unsupported(&files.config, &arch))?;
            let tokenizer = TextTokenizer::from_hf_files(
                &files.tokenizer,
                files.tokenizer_config.as_deref(),
                Some(&files.config),
                files.generation_config.as_deref(),
            )?;
            let w = Weights::from_safetensors(&files.weights, &opts.device, opts.dtype)?
                .with_kernels(opts.kernels);
            let model = (entry.from_config)(&hp, &w)?;
            Ok(LoadedModel {
                model,
                tokenizer,
                spec: spec.to_string(),
                weight_files: files.weights.clone(),
            })
        }
    }
}

/// Unbiased standard deviation of a matrix's entries (as `torch.std`).
pub fn tensor_std(t: &Tensor) -> Result<f64> {
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
    Ok(var.sqrt())
}

/// The paper's bound on how many tokens `n_vectors` vectors of
/// `hidden_size` numbers at `bits` bits each can hold:
/// `n * hidden * bits / log2(vocab)`.
pub fn theoretical_capacity(
    hidden_size: usize,
    vocab_size: usize,
    n_vectors: usize,
    bits: f64,
) -> f64 {
    n_vectors as f64 * hidden_size as f64 * bits / (vocab_size as f64).log2()
}
