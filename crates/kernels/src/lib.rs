//! cram's CPU kernels and their settings.
//!
//! - [`fused`]: f32 CPU kernels with hand-written backward passes (RMSNorm,
//!   the SiLU gate, rotary embeddings, attention);
//! - [`ops`]: the ops the models are written in (linear layers, norms,
//!   softmax, rotary tables, the cross-entropy), each dispatching to a fused
//!   kernel or to a composition of candle ops;
//! - [`blas`]: the system's OpenBLAS, loaded at run time, for f32 products;
//! - [`alloc`]: the allocator settings that keep freed memory in the process.

#![warn(missing_docs)]

pub mod alloc;
pub mod blas;
pub mod cpu;
pub mod fused;
pub mod ops;
pub mod scan;

/// The kernels' result type: candle's.
pub type Result<T> = candle_core::Result<T>;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

pub use blas::{Blas, BlasChoice};

/// Which kernels to run, as a user asks for them (on the command line, in a
/// sweep configuration). Every setting changes the numbers in the last bits,
/// so the resolved [`Kernels`] are recorded with every result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelSettings {
    /// The fused CPU kernels (f32 on the CPU); off: compositions of candle
    /// ops everywhere, exactly the path a GPU runs.
    pub fused: bool,
    /// Which BLAS library runs f32 products on the CPU.
    pub blas: BlasChoice,
    /// Split products of few rows into single-threaded column blocks over
    /// the rayon pool (OpenBLAS only).
    pub blas_split: bool,
}

impl Default for KernelSettings {
    fn default() -> Self {
        Self {
            fused: true,
            blas: BlasChoice::Auto,
            blas_split: true,
        }
    }
}

/// The kernels a model runs with: [`KernelSettings`] resolved (the BLAS
/// library loaded). Cheap to copy; every layer holds one.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// Use the fused CPU kernels where they apply (f32 on the CPU).
    pub fused: bool,
    blas: Option<&'static Blas>,
    split: bool,
}

impl Kernels {
    /// Resolves `settings`: loads the BLAS library they name.
    ///
    /// # Errors
    /// A named BLAS library that cannot be loaded.
    pub fn new(settings: &KernelSettings) -> std::result::Result<Self, String> {
        let blas = blas::load(&settings.blas)?;
        Ok(Self {
            fused: settings.fused,
            blas,
            split: settings.blas_split,
        })
    }

    /// Compositions of candle ops only, no BLAS: the path every non-CPU
    /// device runs.
    pub fn composed() -> Self {
        Self {
            fused: false,
            blas: None,
            split: false,
        }
    }

    /// Whether the fused kernels apply to `x`: on, and `x` an f32 tensor on
    /// the CPU.
    pub fn applies(&self, x: &Tensor) -> bool {
        self.fused && x.device().is_cpu() && x.dtype() == DType::F32
    }

    /// The BLAS library for f32 products on the CPU, if any.
    pub fn blas(&self) -> Option<&'static Blas> {
        self.blas
    }

    /// Whether BLAS products of few rows are split over the rayon pool.
    pub fn blas_split(&self) -> bool {
        self.split && self.blas.is_some_and(Blas::can_split)
    }

    /// What ran, for results and `cram inspect`.
    pub fn record(&self) -> KernelsRecord {
        KernelsRecord {
            fused: self.fused,
            blas: self
                .blas
                .map_or("off".to_string(), |b| b.name().to_string()),
            blas_core: self.blas.and_then(|b| b.core().map(str::to_string)),
            blas_split: self.blas_split(),
        }
    }
}

impl Default for Kernels {
    /// [`KernelSettings::default`] resolved (BLAS when the system has it).
    fn default() -> Self {
        Self::new(&KernelSettings::default()).expect("automatic BLAS choice never fails")
    }
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.record().fmt(f)
    }
}

impl Serialize for Kernels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.record().serialize(s)
    }
}

/// The kernels that produced a result, as stored with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelsRecord {
    /// The fused CPU kernels were on.
    pub fused: bool,
    /// The BLAS library (as loaded), or `off`.
    pub blas: String,
    /// The BLAS library's kernel family (OpenBLAS's core name), when it
    /// says (absent in records written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blas_core: Option<String>,
    /// Small BLAS products were split over the rayon pool.
    pub blas_split: bool,
}

impl std::fmt::Display for KernelsRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fused = if self.fused { "fused" } else { "composed" };
        match self.blas.as_str() {
            "off" => write!(f, "{fused} kernels, candle matmul"),
            lib => write!(
                f,
                "{fused} kernels, BLAS {lib}{}",
                match (&self.blas_core, self.blas_split) {
                    (Some(c), true) => format!(" ({c} kernels, split)"),
                    (Some(c), false) => format!(" ({c} kernels)"),
                    (None, true) => " (split)".to_string(),
                    (None, false) => String::new(),
                }
            ),
        }
    }
}

impl Kernels {
    /// The default kernels on the CPU, composed ones on any other device.
    pub fn for_device(device: &candle_core::Device) -> Self {
        if device.is_cpu() {
            Self::default()
        } else {
            Self::composed()
        }
    }
}
