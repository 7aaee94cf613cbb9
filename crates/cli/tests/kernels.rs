//! The kernels the program runs with, as `cram inspect` reports them.

mod support;

use std::process::Command;

use support::*;

/// `cram inspect`'s kernels line, run with `coretype` as
/// `OPENBLAS_CORETYPE` (None: the variable unset).
fn kernels_line(coretype: Option<&str>) -> String {
    let model = fixture_dir("llama_gqa_tied");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cram"));
    cmd.args(["inspect", "--model", path_str(&model)])
        .env_remove("RUST_LOG")
        .env_remove("CRAM_BLAS")
        .env_remove("OPENBLAS_CORETYPE");
    if let Some(c) = coretype {
        cmd.env("OPENBLAS_CORETYPE", c);
    }
    let out = cmd.output().expect("cannot run the cram binary");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("kernels:"))
        .expect("inspect prints the kernels")
        .to_string()
}

/// An OpenBLAS older than the CPU falls back to its SSE3 `Prescott` kernels
/// (Debian 12's 0.3.21 on this project's Emerald Rapids machines, several
/// times slower): the program restarts itself with the kernels the CPU runs,
/// and leaves a core the user asked for alone.
#[test]
fn openblas_runs_the_kernels_the_cpu_supports() {
    let line = kernels_line(None);
    if !line.contains("libopenblas") {
        eprintln!("no system OpenBLAS: {line}");
        return;
    }
    let Some(cpu) = cram::kernels::blas::cpu_core() else {
        eprintln!("a CPU without AVX2: {line}");
        return;
    };
    assert!(
        !line.contains("(Prescott kernels"),
        "OpenBLAS left on its generic kernels on a CPU that runs {cpu}'s: {line}"
    );
    assert!(line.contains(" kernels"), "the core is named: {line}");
    let forced = kernels_line(Some("Prescott"));
    assert!(
        forced.contains("(Prescott kernels"),
        "OPENBLAS_CORETYPE=Prescott was overridden: {forced}"
    );
}
