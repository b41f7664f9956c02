//! Compiles `kernels/*.cu` with nvcc into one fatbin per file (cubins for
//! each target arch plus PTX for newer chips), written to OUT_DIR and
//! embedded by `src/cuda/module.rs`.
//!
//! nvcc is looked for in `NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`,
//! `/usr/local/cuda/bin`, `PATH`, and `.cuda/` (where `scripts/install-nvcc`
//! puts a pinned one). Without nvcc the crate still builds, CPU only, with a
//! warning; `RNN_KERNELS_REQUIRE_NVCC=1` makes that an error.
//! `RNN_KERNELS_ARCHS` (e.g. `90` or `80,90`) replaces the default archs.
//!
//! ptxas's report (registers and spills per kernel and arch) goes to
//! `OUT_DIR/ptxas.txt`; a test fails if any shipped kernel spills.

#[path = "build_support/entry_points.rs"]
mod entry_points;
#[path = "build_support/nvcc.rs"]
mod nvcc;

use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_ARCHS: &[&str] = &["80", "86", "89", "90"];

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let kernels = root.join("kernels");
    println!("cargo:rerun-if-changed={}", kernels.display());
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(&kernels).expect("kernels/") {
        let path = entry.unwrap().path();
        println!("cargo:rerun-if-changed={}", path.display());
        if path.extension().is_some_and(|e| e == "cu") {
            sources.push(path);
        }
    }
    sources.sort();
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "RNN_KERNELS_REQUIRE_NVCC",
        "RNN_KERNELS_ARCHS",
        "PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let local = root.join(".cuda/nvidia/cu13/bin/nvcc");
    // Watch the local toolkit's tools where they exist. A missing path
    // would make cargo rerun this script, and recompile the crate, on every
    // build; scripts/install-nvcc touches this file instead when it installs
    // them.
    for tool in ["nvcc", "cuobjdump", "nvdisasm"] {
        let path = local.with_file_name(tool);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");

    let required = std::env::var("RNN_KERNELS_REQUIRE_NVCC").is_ok_and(|v| v == "1");
    let Some(nvcc) = nvcc::find(&local) else {
        let message = "nvcc not found: building without CUDA kernels (CPU only). \
                       Run scripts/install-nvcc, or set NVCC or CUDA_HOME.";
        if required {
            panic!("RNN_KERNELS_REQUIRE_NVCC=1: {message}");
        }
        println!("cargo:warning={message}");
        write_index(&out, &[], None);
        return;
    };

    let archs: Vec<String> = match std::env::var("RNN_KERNELS_ARCHS") {
        Ok(list) if !list.trim().is_empty() => list.split(',').map(|a| a.trim().to_string()).collect(),
        _ => DEFAULT_ARCHS.iter().map(|a| a.to_string()).collect(),
    };
    let lowest = archs
        .iter()
        .min_by_key(|a| a.parse::<u32>().unwrap_or(u32::MAX))
        .unwrap()
        .clone();
    let mut report = String::new();
    let mut built: Vec<(String, PathBuf, Vec<String>)> = Vec::new();
    for source in &sources {
        let stem = source.file_stem().unwrap().to_string_lossy().into_owned();
        let fatbin = out.join(format!("{stem}.fatbin"));
        let mut cmd = Command::new(&nvcc);
        cmd.arg("-fatbin")
            .args(["-O3", "-std=c++17", "-Xptxas", "-v", "-lineinfo"]);
        for arch in &archs {
            cmd.arg("-gencode")
                .arg(format!("arch=compute_{arch},code=sm_{arch}"));
        }
        // PTX of the lowest arch, which the driver JIT-compiles for chips newer than any cubin.
        cmd.arg("-gencode")
            .arg(format!("arch=compute_{lowest},code=compute_{lowest}"));
        cmd.arg("-I").arg(&kernels).arg("-o").arg(&fatbin).arg(source);
        let output = cmd
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", nvcc.display()));
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            panic!("nvcc failed on {}:\n{stderr}", source.display());
        }
        report.push_str(&format!("== {}\n{stderr}", source.display()));
        let names = entry_points::entry_points(&std::fs::read_to_string(source).unwrap());
        built.push((stem, fatbin, names));
    }
    std::fs::write(out.join("ptxas.txt"), &report).unwrap();
    write_index(&out, &built, Some(&nvcc));
}

/// `kernels.rs`: per kernel file, its fatbin and entry points; and whether nvcc ran.
fn write_index(out: &Path, built: &[(String, PathBuf, Vec<String>)], nvcc: Option<&Path>) {
    // `rnn_kernels_built`: tests that need the compiled kernels are ignored,
    // with the reason, when there are none (never silently passed).
    println!("cargo::rustc-check-cfg=cfg(rnn_kernels_built)");
    println!("cargo::rustc-check-cfg=cfg(rnn_kernels_cuobjdump)");
    if nvcc.is_some() {
        println!("cargo::rustc-cfg=rnn_kernels_built");
    }
    // cuobjdump (and the nvdisasm it runs) beside nvcc: the static checks
    // of the compiled kernels.
    let cuobjdump = nvcc
        .and_then(|n| n.parent())
        .filter(|bin| bin.join("nvdisasm").is_file())
        .map(|bin| bin.join("cuobjdump"))
        .filter(|p| p.is_file());
    if cuobjdump.is_some() {
        println!("cargo::rustc-cfg=rnn_kernels_cuobjdump");
    }
    let mut index = String::from("// Generated by build.rs.\n");
    index.push_str(&format!(
        "pub const NVCC: Option<&str> = {:?};\n",
        nvcc.map(|p| p.display().to_string())
    ));
    index.push_str(&format!(
        "pub const CUOBJDUMP: Option<&str> = {:?};\n",
        cuobjdump.map(|p| p.display().to_string())
    ));
    index.push_str("pub const FATBINS: &[(&str, &[u8], &[&str])] = &[\n");
    for (stem, path, names) in built {
        let path = path.display().to_string();
        index.push_str(&format!(
            "    ({stem:?}, include_bytes!({path:?}), &{names:?}),\n"
        ));
    }
    index.push_str("];\n");
    let ptxas = out.join("ptxas.txt");
    if nvcc.is_none() {
        std::fs::write(&ptxas, "").unwrap();
    }
    index.push_str(&format!(
        "pub const PTXAS_REPORT: &str = include_str!({:?});\n",
        ptxas.display().to_string()
    ));
    std::fs::write(out.join("kernels.rs"), index).unwrap();
}
