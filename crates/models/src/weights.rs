//! Weight stores: tensors by their Hugging Face names, from safetensors files
//! or from a GGUF file (dequantised), with shapes checked.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use cram_kernels::Kernels;

use crate::candle_message;
use crate::error::{CramError, Result};

/// Where the tensors come from.
enum Store {
    Safetensors {
        files: MmapedSafetensors,
        names: Vec<String>,
    },
    Gguf {
        content: Arc<gguf_file::Content>,
        /// GGUF tensor name for each Hugging Face name.
        by_hf_name: HashMap<String, String>,
    },
}

/// Read-only access to a model's weights by Hugging Face tensor name.
///
/// Every tensor is returned in the store's compute dtype on its device. GGUF
/// tensors are dequantised to f32 first.
pub struct Weights {
    store: Store,
    path: PathBuf,
    device: Device,
    dtype: DType,
    kernels: Kernels,
}

/// The Hugging Face name of a GGUF tensor through a table of per-layer
/// names (`blk.{i}.{gguf}` becomes `{layer_prefix}.{i}.{hf}`) and one of
/// whole-model names; the `.weight`/`.bias` suffix is kept.
pub fn map_gguf_name(
    name: &str,
    layer_prefix: &str,
    layer_names: &[(&str, &str)],
    global_names: &[(&str, &str)],
) -> Option<String> {
    let (stem, suffix) = match name.rsplit_once('.') {
        Some((s, suf @ ("weight" | "bias"))) => (s, format!(".{suf}")),
        _ => (name, String::new()),
    };
    let lookup = |table: &[(&str, &str)], key: &str| {
        table
            .iter()
            .find(|(g, _)| *g == key)
            .map(|(_, hf)| hf.to_string())
    };
    let hf = match stem.strip_prefix("blk.") {
        Some(rest) => {
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            format!("{layer_prefix}.{layer}.{}", lookup(layer_names, part)?)
        }
        None => lookup(global_names, stem)?,
    };
    Some(format!("{hf}{suffix}"))
}

impl Weights {
    /// Opens safetensors files (one, or every shard of a sharded model).
    pub fn from_safetensors(files: &[PathBuf], device: &Device, dtype: DType) -> Result<Self> {
        let first = files
            .first()
            .cloned()
            .ok_or_else(|| CramError::Model("no weight files given".into()))?;
        for f in files {
            if !f.exists() {
                return Err(CramError::NotFound { path: f.clone() });
            }
        }
        // SAFETY: the files are memory-mapped read-only; cram never writes to
        // a weights file while a model is loaded.
        let st = unsafe { MmapedSafetensors::multi(files) }.map_err(|e| {
            CramError::bad_file(
                &first,
                format!("not a valid safetensors file: {}", candle_message(e)),
            )
        })?;
        let names = st.tensors().into_iter().map(|(n, _)| n).collect();
        let path = if files.len() == 1 {
            first
        } else {
            first.parent().map(Path::to_path_buf).unwrap_or(first)
        };
        Ok(Self {
            store: Store::Safetensors { files: st, names },
            path,
            device: device.clone(),
            dtype,
            kernels: Kernels::for_device(device),
        })
    }

    /// Opens a GGUF file's tensor directory, naming each tensor by
    /// `hf_name(gguf_name)` (tensors it maps to `None` are left out).
    pub fn from_gguf_named(
        path: &Path,
        content: Arc<gguf_file::Content>,
        hf_name: impl Fn(&str) -> Option<String>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let by_hf_name = content
            .tensor_infos
            .keys()
            .filter_map(|g| hf_name(g).map(|h| (h, g.clone())))
            .collect();
        Ok(Self {
            store: Store::Gguf {
                content,
                by_hf_name,
            },
            path: path.to_path_buf(),
            device: device.clone(),
            dtype,
            kernels: Kernels::for_device(device),
        })
    }

    /// The same store, its layers to run with `kernels` (composed ones on a
    /// device other than the CPU, where no fused kernel exists).
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = if self.device.is_cpu() {
            kernels
        } else {
            Kernels::composed()
        };
        self
    }

    /// The kernels the layers built from this store run with.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// The file (or folder of shards) the weights come from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the weights come from a GGUF file (whose Llama Q/K rows are
    /// permuted by llama.cpp's converter).
    pub fn is_gguf(&self) -> bool {
        matches!(self.store, Store::Gguf { .. })
    }

    /// The compute dtype tensors are returned in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device tensors are placed on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether a tensor of this Hugging Face name exists.
    pub fn contains(&self, name: &str) -> bool {
        match &self.store {
            Store::Safetensors { names, .. } => names.iter().any(|n| n == name),
            Store::Gguf { by_hf_name, .. } => by_hf_name.contains_key(name),
        }
    }

    /// The tensor names in the store (Hugging Face names).
    pub fn names(&self) -> Vec<String> {
        match &self.store {
            Store::Safetensors { names, .. } => names.clone(),
            Store::Gguf { by_hf_name, .. } => by_hf_name.keys().cloned().collect(),
        }
    }

    /// The storage dtype of the weights, for display (e.g. `bf16`, `Q4_1`).
    pub fn storage_dtype(&self) -> String {
        let mut kinds: Vec<String> = match &self.store {
            Store::Safetensors { files, .. } => files
                .tensors()
                .iter()
                .map(|(_, v)| format!("{:?}", v.dtype()).to_lowercase())
                .collect(),
            Store::Gguf { content, .. } => content
                .tensor_infos
                .values()
                .map(|t| format!("{:?}", t.ggml_dtype))
                .collect(),
        };
        kinds.sort();
        kinds.dedup();
        kinds.join("+")
    }

    fn bad_tensor(&self, name: &str, msg: impl Into<String>) -> CramError {
        CramError::BadTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
            msg: msg.into(),
        }
    }

    /// Loads a tensor in f32 on the CPU, without a shape check.
    fn load_f32(&self, name: &str) -> Result<Option<Tensor>> {
        match &self.store {
            Store::Safetensors { files, names } => {
                if !names.iter().any(|n| n == name) {
                    return Ok(None);
                }
                let t = files
                    .load(name, &Device::Cpu)
                    .map_err(|e| self.bad_tensor(name, candle_message(e)))?;
                Ok(Some(t.to_dtype(DType::F32)?))
            }
            Store::Gguf {
                content,
                by_hf_name,
            } => {
                let Some(gname) = by_hf_name.get(name) else {
                    return Ok(None);
                };
                let mut f = File::open(&self.path).map_err(|e| CramError::io(&self.path, e))?;
                let q = content.tensor(&mut f, gname, &Device::Cpu).map_err(|e| {
                    self.bad_tensor(gname, format!("cannot read: {}", candle_message(e)))
                })?;
                let t = q.dequantize(&Device::Cpu).map_err(|e| {
                    self.bad_tensor(gname, format!("cannot dequantise: {}", candle_message(e)))
                })?;
                Ok(Some(t))
            }
        }
    }

    /// Loads an optional tensor, checking its shape, in f32 on the CPU.
    pub fn get_f32_opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        let Some(t) = self.load_f32(name)? else {
            return Ok(None);
        };
        let t = if t.dims() == shape {
            t
        } else if t.elem_count() == shape.iter().product::<usize>()
            && t.dims()
                .iter()
                .filter(|&&d| d != 1)
                .eq(shape.iter().filter(|&&d| d != 1))
        {
            // GGUF stores 1-d tensors that HF keeps as [1, n] (and vice versa).
            t.reshape(shape)?
        } else {
            return Err(self.bad_tensor(
                name,
                format!("expected shape {shape:?}, found {:?}", t.dims()),
            ));
        };
        Ok(Some(t))
    }

    /// Loads a required tensor in f32 on the CPU, checking its shape.
    pub fn get_f32(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get_f32_opt(name, shape)?
            .ok_or_else(|| self.bad_tensor(name, "missing"))
    }

    /// Moves a CPU f32 tensor to the store's device and compute dtype.
    pub fn place(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.to_device(&self.device)?.to_dtype(self.dtype)?)
    }

    /// A required tensor on the device, in the compute dtype.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.place(&self.get_f32(name, shape)?)
    }

    /// An optional tensor on the device, in the compute dtype.
    pub fn get_opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        self.get_f32_opt(name, shape)?
            .map(|t| self.place(&t))
            .transpose()
    }
}
