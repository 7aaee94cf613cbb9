//! An optional fast `sgemm` from the system's OpenBLAS, loaded at run time.
//!
//! candle's own CPU matmul reaches about half the throughput of OpenBLAS on
//! the machines we measured, and linear layers dominate a cramming step. When
//! `libopenblas.so.0` can be loaded (Debian/Ubuntu: `libopenblas0`), f32
//! linear layers on the CPU use it; otherwise candle's matmul is used. Set
//! `CRAM_BLAS=off` to force candle's matmul, or `CRAM_BLAS=/path/to/lib.so`
//! to load a specific library.

use std::os::raw::c_int;
use std::sync::OnceLock;

type SgemmFn = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// A loaded BLAS library.
pub struct Blas {
    sgemm: SgemmFn,
    name: String,
    // Keeps the library mapped for as long as `sgemm` may be called.
    _lib: libloading::Library,
}

static BLAS: OnceLock<Option<Blas>> = OnceLock::new();

fn load() -> Option<Blas> {
    let choice = std::env::var("CRAM_BLAS").unwrap_or_default();
    if choice == "off" || choice == "0" {
        return None;
    }
    let candidates: Vec<String> = if choice.is_empty() {
        ["libopenblas.so.0", "libopenblas.so", "libopenblas.dylib"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        vec![choice]
    };
    for name in candidates {
        // SAFETY: loading a BLAS library runs its initialisers, which have no
        // preconditions; the symbol has the standard CBLAS signature.
        unsafe {
            let Ok(lib) = libloading::Library::new(&name) else {
                continue;
            };
            let Ok(sym) = lib.get::<SgemmFn>(b"cblas_sgemm\0") else {
                continue;
            };
            let sgemm = *sym;
            tracing::debug!("using {name} for f32 matmuls");
            // OpenBLAS's threads spin after each call while candle's CPU
            // pool spins waiting for work: on few cores they starve each
            // other. Park candle's workers quickly unless the user chose.
            if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
                std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
            }
            return Some(Blas {
                sgemm,
                name,
                _lib: lib,
            });
        }
    }
    None
}

/// The BLAS library, if one could be loaded.
pub fn get() -> Option<&'static Blas> {
    BLAS.get_or_init(load).as_ref()
}

/// Name of the matmul backend used for f32 linear layers on the CPU.
pub fn backend_name() -> String {
    match get() {
        Some(b) => format!("OpenBLAS ({})", b.name),
        None => "candle gemm".to_string(),
    }
}

impl Blas {
    /// `c = a @ op(b) + beta * c` for row-major `a` `[m, k]`, `c` `[m, n]`,
    /// and `b` `[n, k]` when `b_transposed` (so `op(b) = b.T`) or `[k, n]`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        b: &[f32],
        b_transposed: bool,
        beta: f32,
        c: &mut [f32],
    ) {
        assert!(a.len() >= m * k && b.len() >= n * k && c.len() >= m * n);
        let ldb = if b_transposed { k } else { n };
        let tb = if b_transposed { TRANS } else { NO_TRANS };
        // SAFETY: the slices are at least as long as the dimensions require
        // (checked above) and do not alias (`c` is borrowed mutably).
        unsafe {
            (self.sgemm)(
                ROW_MAJOR,
                NO_TRANS,
                tb,
                m as c_int,
                n as c_int,
                k as c_int,
                1.0,
                a.as_ptr(),
                k as c_int,
                b.as_ptr(),
                ldb as c_int,
                beta,
                c.as_mut_ptr(),
                n as c_int,
            )
        }
    }
}
