//! The one place where the program's environment and flags become library
//! settings: the kernels (`--kernels`, `--blas`, `--blas-split`, with the
//! `CRAM_FUSED`, `CRAM_BLAS`, `CRAM_BLAS_SPLIT` variables as their
//! defaults) and the process-wide allocator and thread-pool settings
//! (`CRAM_MALLOC`, `CANDLE_BARRIER_POOL_SPIN_LIMIT`). The library reads no
//! environment variable of its own.

use std::sync::OnceLock;

use anyhow::Context;
use clap::Args;
use cram::kernels::{BlasChoice, KernelSettings, Kernels};

/// The kernel flags, global to every command.
#[derive(Args, Clone, Debug, Default)]
pub struct KernelArgs {
    /// CPU kernels: fused (multi-threaded kernels with hand-written backward
    /// passes) or composed (candle ops only, the path a GPU runs) [env:
    /// CRAM_FUSED=off for composed; default fused].
    #[arg(long, global = true, value_parser = ["fused", "composed"])]
    pub kernels: Option<String>,
    /// f32 products on the CPU: auto (the system's OpenBLAS if present), off
    /// (candle's matmul) or a library path [env: CRAM_BLAS; default auto].
    #[arg(long, global = true)]
    pub blas: Option<String>,
    /// Split small BLAS products over the thread pool: on or off [env:
    /// CRAM_BLAS_SPLIT; default on].
    #[arg(long, global = true, value_parser = ["on", "off"])]
    pub blas_split: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A setting that is on unless `value` says off: `on`/`1` or the word `on`
/// for on, `off`/`0` or the word `off` for off; `var` names the variable in
/// the error.
fn switch(var: &str, value: Option<&str>, on: &str, off: &str) -> anyhow::Result<bool> {
    match value {
        None => Ok(true),
        Some(v) if v == on || v == "on" || v == "1" => Ok(true),
        Some(v) if v == off || v == "off" || v == "0" => Ok(false),
        Some(other) => anyhow::bail!("{var}: unknown value `{other}` (expected on or off)"),
    }
}

impl KernelArgs {
    /// The settings: each flag, else its environment variable, else the
    /// default.
    pub fn settings(&self) -> anyhow::Result<KernelSettings> {
        let d = KernelSettings::default();
        let kernels = self.kernels.clone().or_else(|| env("CRAM_FUSED"));
        let fused = switch("CRAM_FUSED", kernels.as_deref(), "fused", "composed")?;
        let blas = match self.blas.clone().or_else(|| env("CRAM_BLAS")) {
            None => d.blas,
            Some(s) => s
                .parse::<BlasChoice>()
                .map_err(|e| anyhow::anyhow!("--blas: {e}"))?,
        };
        let split = self.blas_split.clone().or_else(|| env("CRAM_BLAS_SPLIT"));
        let blas_split = switch("CRAM_BLAS_SPLIT", split.as_deref(), "on", "off")?;
        Ok(KernelSettings {
            fused,
            blas,
            blas_split,
        })
    }
}

static KERNELS: OnceLock<Kernels> = OnceLock::new();

/// Resolves the kernel settings once, for every model the command loads.
pub fn init_kernels(args: &KernelArgs) -> anyhow::Result<()> {
    let k = Kernels::new(&args.settings()?)
        .map_err(anyhow::Error::msg)
        .context("--blas")?;
    KERNELS.set(k).ok();
    Ok(())
}

/// The kernels models run with (the defaults until [`init_kernels`] ran).
pub fn kernels() -> Kernels {
    *KERNELS.get_or_init(Kernels::default)
}

/// Process-wide settings, applied first thing in `main` while no other
/// thread exists: keep freed memory in the process (unless
/// `CRAM_MALLOC=default`), and park candle's idle CPU workers quickly so
/// that they do not spin against OpenBLAS's threads (unless the user set
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT`).
pub fn setup_process() {
    if env("CRAM_MALLOC").as_deref() != Some("default") {
        cram::alloc::tune();
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY (edition 2024 terms): called at the start of `main`,
        // before any other thread is started.
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
    }
}
