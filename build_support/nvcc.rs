//! Where nvcc is.

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
