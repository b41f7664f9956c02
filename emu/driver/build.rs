//! `rnn_kernels_built`: whether nvcc is here, so that rnn-kernels embeds
//! the fatbins this crate's tests load (tests that need them are ignored,
//! with the reason, when it is not).

#[path = "../../build_support/nvcc.rs"]
mod nvcc;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(rnn_kernels_built)");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cuda/nvidia/cu13/bin/nvcc");
    if nvcc::find(&local).is_some() {
        println!("cargo::rustc-cfg=rnn_kernels_built");
    }
}
