//! An optional fast `sgemm` from the system's OpenBLAS, loaded at run time.
//!
//! candle's own CPU matmul reaches about half the throughput of OpenBLAS on
//! the machines we measured, and linear layers dominate a cramming step. When
//! `libopenblas.so.0` can be loaded (Debian/Ubuntu: `libopenblas0`), f32
//! linear layers on the CPU use it; otherwise candle's matmul is used. Which
//! library (or none) is the caller's choice ([`BlasChoice`], part of
//! [`crate::KernelSettings`]); a library is loaded once per process and kept.
//!
//! OpenBLAS's threads spin after each call while candle's CPU pool spins
//! waiting for work: on few cores they starve each other. Programs should
//! set `CANDLE_BARRIER_POOL_SPIN_LIMIT` (the `cram` program sets 100) before
//! any thread starts; the library never changes the environment.

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::raw::{c_char, c_int};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

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

type SetThreadsFn = unsafe extern "C" fn(c_int);

type CoreNameFn = unsafe extern "C" fn() -> *const c_char;

/// The kernels OpenBLAS falls back to on an x86 CPU it does not recognise
/// (one newer than the library, such as Debian 12's OpenBLAS 0.3.21 on
/// Emerald Rapids): SSE3 only, several times slower than the AVX2 or
/// AVX-512 kernels the CPU could run.
const FALLBACK_CORE: &str = "Prescott";

/// Products with fewer rows than this are split into column blocks over the
/// rayon pool (one single-threaded BLAS call per block); larger ones run as
/// one call on OpenBLAS's own threads, which share packed panels and scale
/// better there (measured on SmolLM2 at 129 and 1,032 rows).
const SPLIT_MAX_ROWS: usize = 512;

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// Which BLAS library f32 products on the CPU use.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlasChoice {
    /// The system's OpenBLAS when it can be loaded, else none.
    #[default]
    Auto,
    /// None: candle's own matmul.
    Off,
    /// This library (a file name or path); an error when it cannot be loaded.
    Library(String),
}

impl std::str::FromStr for BlasChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("expected auto, off or a library path".to_string()),
            "auto" => Ok(Self::Auto),
            "off" | "0" => Ok(Self::Off),
            path => Ok(Self::Library(path.to_string())),
        }
    }
}

/// A loaded BLAS library.
pub struct Blas {
    sgemm: SgemmFn,
    /// `openblas_set_num_threads`, when the library has it.
    set_threads: Option<SetThreadsFn>,
    /// The thread count last given to `set_threads` (0: never set).
    threads: AtomicUsize,
    /// `openblas_get_corename`: the kernel family the library chose for
    /// this CPU, when the library says.
    core: Option<String>,
    /// Held for the whole of each product: OpenBLAS's thread count is one
    /// process-wide setting, and its results depend on it for some shapes, so
    /// concurrent callers (tests, or several engines in one process) take
    /// turns and every product runs with the count its shape chose.
    lock: Mutex<()>,
    name: String,
    // Keeps the library mapped for as long as `sgemm` may be called.
    _lib: libloading::Library,
}

impl std::fmt::Debug for Blas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blas({})", self.name)
    }
}

/// The libraries loaded so far, by the name they were asked for (`None`:
/// that name could not be loaded). Loaded libraries stay mapped for the
/// life of the process.
static LOADED: Mutex<Option<HashMap<String, Option<&'static Blas>>>> = Mutex::new(None);

/// The library names [`BlasChoice::Auto`] tries, in order.
const AUTO_CANDIDATES: &[&str] = &["libopenblas.so.0", "libopenblas.so", "libopenblas.dylib"];

/// Loads (once per process and name) the library `choice` asks for.
///
/// # Errors
/// A [`BlasChoice::Library`] that cannot be loaded or has no `cblas_sgemm`.
pub fn load(choice: &BlasChoice) -> Result<Option<&'static Blas>, String> {
    match choice {
        BlasChoice::Off => Ok(None),
        BlasChoice::Auto => Ok(AUTO_CANDIDATES.iter().find_map(|n| load_name(n))),
        BlasChoice::Library(name) => load_name(name).map(Some).ok_or_else(|| {
            format!("BLAS library `{name}` cannot be loaded (or has no cblas_sgemm)")
        }),
    }
}

fn load_name(name: &str) -> Option<&'static Blas> {
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    *loaded
        .get_or_insert_with(HashMap::new)
        .entry(name.to_string())
        .or_insert_with(|| open(name).map(|b| &*Box::leak(Box::new(b))))
}

fn open(name: &str) -> Option<Blas> {
    // SAFETY: loading a BLAS library runs its initialisers, which have no
    // preconditions; the symbol has the standard CBLAS signature.
    unsafe {
        let lib = libloading::Library::new(name).ok()?;
        let sgemm = *lib.get::<SgemmFn>(b"cblas_sgemm\0").ok()?;
        tracing::debug!("using {name} for f32 matmuls");
        let set_threads = lib
            .get::<SetThreadsFn>(b"openblas_set_num_threads\0")
            .ok()
            .map(|f| *f);
        let core = lib
            .get::<CoreNameFn>(b"openblas_get_corename\0")
            .ok()
            .and_then(|f| {
                let p = f();
                (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
            });
        Some(Blas {
            sgemm,
            set_threads,
            core,
            threads: AtomicUsize::new(0),
            lock: Mutex::new(()),
            name: name.to_string(),
            _lib: lib,
        })
    }
}

impl Blas {
    /// The name the library was loaded by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kernel family OpenBLAS chose for this CPU (`Haswell`,
    /// `SkylakeX`, ...), when the library says.
    pub fn core(&self) -> Option<&str> {
        self.core.as_deref()
    }

    /// When the library fell back to its generic kernels on a CPU that runs
    /// AVX2 or AVX-512 ones: the core to ask for with `OPENBLAS_CORETYPE`
    /// (read by OpenBLAS when it is loaded, so only a program starting
    /// afresh can act on it).
    pub fn better_core(&self) -> Option<&'static str> {
        better_core(self.core(), cpu_core())
    }

    /// Whether products can be split into single-threaded column blocks
    /// (the library's thread count can be set).
    pub fn can_split(&self) -> bool {
        self.set_threads.is_some()
    }
}

/// The OpenBLAS kernel family whose `sgemm` this CPU runs: `SkylakeX` with
/// AVX-512 (F, CD, BW, DQ, VL), `Haswell` with AVX2 and FMA, else none.
pub fn cpu_core() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f")
            && has!("avx512cd")
            && has!("avx512bw")
            && has!("avx512dq")
            && has!("avx512vl")
        {
            return Some("SkylakeX");
        }
        if has!("avx2") && has!("fma") {
            return Some("Haswell");
        }
    }
    None
}

/// For programs, after the kernels are resolved and before any work: when
/// `blas` is an OpenBLAS that fell back to its generic kernels on a CPU
/// that runs AVX2 or AVX-512 ones ([`Blas::better_core`]; several times
/// slower products), replaces the process with a fresh start of the same
/// program (same arguments and standard streams) under
/// `OPENBLAS_CORETYPE`, which OpenBLAS reads only when it is loaded. A
/// variable the user set is left alone; the library itself never calls
/// this. Returns when there is nothing to do, or when the restart failed
/// (with a warning).
pub fn restart_with_better_core(blas: Option<&'static Blas>) {
    if std::env::var_os("OPENBLAS_CORETYPE").is_some() {
        return;
    }
    let Some((blas, core)) = blas.and_then(|b| b.better_core().map(|c| (b, c))) else {
        return;
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        tracing::info!(
            "{} chose its generic {FALLBACK_CORE} kernels on this CPU; restarting with OPENBLAS_CORETYPE={core}",
            blas.name()
        );
        let err = match std::env::current_exe() {
            Ok(exe) => std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env("OPENBLAS_CORETYPE", core)
                .exec(),
            Err(e) => e,
        };
        tracing::warn!(
            "could not restart with OPENBLAS_CORETYPE={core} ({err}): f32 products run on {}'s generic kernels",
            blas.name()
        );
    }
}

/// The core to ask for instead of `core` on a CPU that runs `cpu`'s
/// kernels: only when `core` is OpenBLAS's fallback.
fn better_core(core: Option<&str>, cpu: Option<&'static str>) -> Option<&'static str> {
    core.filter(|c| c.eq_ignore_ascii_case(FALLBACK_CORE))
        .and(cpu)
}

/// A raw pointer that may cross threads; each thread writes its own block.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: used only to hand disjoint column blocks of one output to threads.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer `off` elements further (a method, so that closures
    /// capture the whole `SendPtr`, not its raw field).
    pub(crate) fn at(self, off: usize) -> *mut f32 {
        self.0.wrapping_add(off)
    }
}

/// Single-threaded BLAS products from any number of threads at once, handed
/// out by [`Blas::single_threaded`].
pub(crate) struct Single<'a>(&'a Blas);

impl Single<'_> {
    /// Row-major `c = alpha * op(a) @ op(b) + beta * c` with CBLAS's
    /// arguments (`op(x)` is `x.T` when its flag is set), on the calling
    /// thread.
    ///
    /// # Safety
    /// The pointers, leading dimensions and sizes must describe matrices
    /// inside live allocations, as for `cblas_sgemm`, and no other thread may
    /// access `c`'s elements meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn sgemm(
        &self,
        (ta, tb): (bool, bool),
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        (a, lda): (*const f32, usize),
        (b, ldb): (*const f32, usize),
        beta: f32,
        (c, ldc): (*mut f32, usize),
    ) {
        let t = |x: bool| if x { TRANS } else { NO_TRANS };
        (self.0.sgemm)(
            ROW_MAJOR,
            t(ta),
            t(tb),
            m as c_int,
            n as c_int,
            k as c_int,
            alpha,
            a,
            lda as c_int,
            b,
            ldb as c_int,
            beta,
            c,
            ldc as c_int,
        )
    }
}

impl Blas {
    /// Runs `f` with BLAS set to one thread per call, holding the product
    /// lock, so that `f` may run many small [`Single::sgemm`] products on the
    /// rayon pool at once. Not to be called from inside a rayon task.
    pub(crate) fn single_threaded<R>(&self, f: impl FnOnce(&Single) -> R) -> R {
        let _turn = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.use_threads(1);
        f(&Single(self))
    }

    /// Sets OpenBLAS's thread count, when it can be set and has changed.
    fn use_threads(&self, n: usize) {
        if let Some(set) = self.set_threads {
            if self.threads.swap(n, Ordering::Relaxed) != n {
                // SAFETY: `openblas_set_num_threads` takes any positive count.
                unsafe { set(n as c_int) };
            }
        }
    }

    /// `a @ op(b)` as a new row-major `[m, n]` vector, for row-major `a`
    /// `[m, k]` and `b` `[n, k]` when `b_transposed` (so `op(b) = b.T`) or
    /// `[k, n]`. The output is not zeroed first: BLAS sets every element.
    ///
    /// With `split` and few rows (fewer than `SPLIT_MAX_ROWS`), the columns of the output
    /// are split into one block per thread of the rayon pool, each computed
    /// by a single-threaded BLAS call: the fused kernels' work runs on the
    /// same pool, so no second set of BLAS threads spins beside it. Larger
    /// products run as one call on as many OpenBLAS threads as the pool has.
    #[allow(clippy::too_many_arguments)]
    pub fn product(
        &self,
        split: bool,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        b: &[f32],
        b_transposed: bool,
    ) -> Vec<f32> {
        if k == 0 {
            return vec![0.0; m * n];
        }
        use rayon::prelude::*;
        assert!(a.len() >= m * k && b.len() >= n * k);
        let mut out = Vec::with_capacity(m * n);
        let ldb = if b_transposed { k } else { n };
        let tb = if b_transposed { TRANS } else { NO_TRANS };
        // Products are never started from inside a rayon task (the fused
        // kernels call `Single::sgemm`), so a caller waiting here never
        // holds a worker that the holder's column blocks need.
        let _turn = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let pool = rayon::current_num_threads();
        // Blocks (row start, rows, column start, columns).
        let blocks: Vec<(usize, usize, usize, usize)> =
            if split && self.can_split() && m < SPLIT_MAX_ROWS {
                let parts = pool.min(n / 64).max(1);
                let width = n.div_ceil(parts).div_ceil(16) * 16;
                (0..n.div_ceil(width))
                    .map(|b| (0, m, b * width, width.min(n - b * width)))
                    .collect()
            } else {
                vec![(0, m, 0, n)]
            };
        // One block: OpenBLAS threads it; several: each block single-threaded.
        self.use_threads(if blocks.len() > 1 { 1 } else { pool });
        let cp = SendPtr(out.as_mut_ptr());
        blocks.into_par_iter().for_each(|(m0, mb, n0, nb)| {
            // Column block n0..n0+nb of op(b): rows of b when transposed,
            // columns otherwise.
            let boff = if b_transposed { n0 * k } else { n0 };
            // SAFETY: the slices are at least as long as the dimensions
            // require (checked above); each block writes only its own rows
            // m0..m0+mb and columns n0..n0+nb of `out` (allocated for m * n
            // elements), which no other block touches. (Row blocks are not
            // used: splitting rows measured slower than OpenBLAS's own
            // threads.)
            unsafe {
                (self.sgemm)(
                    ROW_MAJOR,
                    NO_TRANS,
                    tb,
                    mb as c_int,
                    nb as c_int,
                    k as c_int,
                    1.0,
                    a.as_ptr().add(m0 * k),
                    k as c_int,
                    b.as_ptr().add(boff),
                    ldb as c_int,
                    0.0,
                    cp.at(m0 * n + n0),
                    n as c_int,
                )
            }
        });
        // SAFETY: with `beta = 0` the calls above wrote all `m * n` elements
        // (the blocks cover every column) and read none before writing.
        unsafe { out.set_len(m * n) };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_fallback_core_is_replaced_and_only_by_a_better_one() {
        assert_eq!(
            better_core(Some("Prescott"), Some("SkylakeX")),
            Some("SkylakeX")
        );
        assert_eq!(
            better_core(Some("PRESCOTT"), Some("Haswell")),
            Some("Haswell")
        );
        // A CPU without AVX2: the fallback is what it runs.
        assert_eq!(better_core(Some("Prescott"), None), None);
        // A core the library chose itself, or a library that does not say.
        assert_eq!(better_core(Some("Haswell"), Some("SkylakeX")), None);
        assert_eq!(better_core(Some("Zen"), Some("Haswell")), None);
        assert_eq!(better_core(None, Some("SkylakeX")), None);
    }
}
