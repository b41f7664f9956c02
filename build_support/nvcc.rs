//! Shared by build.rs and emu/driver/build.rs: where nvcc is, and what
//! ptxas says each kernel uses.

use std::path::{Path, PathBuf};

/// nvcc from `NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, `/usr/local/cuda/bin`,
/// `PATH`, then `local` (where scripts/install-nvcc puts one).
pub fn find(local: &Path) -> Option<PathBuf> {
    let exe = |dir: PathBuf| dir.join("nvcc");
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("NVCC") {
        candidates.push(p.into());
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(dir) = std::env::var(var) {
            candidates.push(exe(PathBuf::from(dir).join("bin")));
        }
    }
    candidates.push("/usr/local/cuda/bin/nvcc".into());
    if let Ok(path) = std::env::var("PATH") {
        candidates.extend(std::env::split_paths(&path).map(exe));
    }
    candidates.push(local.to_path_buf());
    candidates.into_iter().find(|p| p.is_file())
}

/// Registers per thread of each kernel compiled for `arch` (`sm_90`), from
/// a `ptxas -v` report: `(kernel, registers)`.
#[allow(dead_code)] // build.rs keeps the whole report; the driver stand-in parses it
pub fn registers(report: &str, arch: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let (name, tail) = rest.split_once('\'').unwrap_or((rest, ""));
            current = tail.contains(&format!("'{arch}'")).then(|| name.to_string());
        } else if let (Some(name), Some(rest)) = (&current, line.split("Used ").nth(1)) {
            if let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
                out.push((name.clone(), n));
                current = None;
            }
        }
    }
    out
}
