//! Helpers shared by the integration tests: the PyTorch fixtures and tolerant comparisons.
#![allow(dead_code)] // each test binary uses its own subset

use rnn_kernels::{Element, Tensor, TensorFile, Weights};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory of this process for test binary `kind`'s files named `name`
/// (tests that share a name share it, so it is created, never emptied).
pub fn temp_dir(kind: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rnnk-{kind}-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `rnnk` binary: cargo's, or on a GPU machine (where tests run from
/// `.gpu/bin/` and `target/` did not travel) the one `pack` put in `.gpu/examples/`.
pub fn rnnk_path() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_rnnk"));
    if built.exists() {
        return built;
    }
    let exe = std::env::current_exe().unwrap();
    let packed = exe.parent().unwrap().join("../examples/rnnk");
    assert!(
        packed.exists(),
        "no rnnk binary at {} or {}",
        built.display(),
        packed.display()
    );
    packed
}

/// What one run of `rnnk` did.
pub struct Run {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `rnnk` with `args`; a panic is never an acceptable answer.
pub fn rnnk(args: &[&str]) -> Run {
    let out = Command::new(rnnk_path()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "rnnk panicked: {stderr}");
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    }
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The `.safetensors` files directly in `dir`, sorted by name.
pub fn safetensors_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    files
}

/// Every per-case fixture written by `tests/fixtures/generate.py` (all but the ICU model).
pub fn case_files() -> Vec<PathBuf> {
    let mut files = safetensors_files(&fixtures_dir());
    files.retain(|p| !p.file_stem().unwrap().to_string_lossy().starts_with("icu_"));
    // The generator writes 19 cases; fewer means fixtures went missing.
    assert!(
        files.len() >= 19,
        "expected at least 19 fixture cases, found {}",
        files.len()
    );
    files
}

pub fn case_name(path: &Path) -> String {
    path.file_stem().unwrap().to_string_lossy().into_owned()
}

/// One fixture case read as `T`.
pub struct Case<T> {
    pub name: String,
    pub weights: Weights<T>,
    pub input: Tensor<T>,
    pub lengths: Option<Vec<usize>>,
    pub h0: Option<Tensor<T>>,
    pub c0: Option<Tensor<T>>,
    pub output: Tensor<f64>,
    pub h_n: Tensor<f64>,
    pub c_n: Option<Tensor<f64>>,
}

impl<T: Element> Case<T> {
    pub fn load(path: &Path) -> Self {
        let file = TensorFile::open(path).unwrap();
        let name = case_name(path);
        let get = |n: &str| file.float::<T>(n).unwrap();
        let expect = |n: &str| {
            file.float::<f64>(n)
                .unwrap()
                .unwrap_or_else(|| panic!("{name}: {n}"))
        };
        Case {
            weights: Weights::from_tensor_file(&file, None).unwrap(),
            input: get("input").unwrap(),
            lengths: file
                .integer("lengths")
                .unwrap()
                .map(|(_, v)| v.into_iter().map(|l| l as usize).collect()),
            h0: get("h0"),
            c0: get("c0"),
            output: expect("expected.output"),
            h_n: expect("expected.h_n"),
            c_n: file.float::<f64>("expected.c_n").unwrap(),
            name,
        }
    }

    pub fn args(&self) -> rnn_kernels::ForwardInput<'_, T> {
        rnn_kernels::ForwardInput {
            input: &self.input,
            lengths: self.lengths.as_deref(),
            h0: self.h0.as_ref(),
            c0: self.c0.as_ref(),
        }
    }
}

/// Asserts `actual` is within `tol` of `expected` (absolute), naming the
/// first offending element; NaN never passes.
#[track_caller]
pub fn assert_close<A: Element, B: Element>(what: &str, actual: &Tensor<A>, expected: &Tensor<B>, tol: f64) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shapes differ");
    let bad = actual
        .data()
        .iter()
        .zip(expected.data())
        .enumerate()
        .find(|(_, (a, e))| {
            let diff = (a.as_f64() - e.as_f64()).abs();
            diff.is_nan() || diff > tol
        });
    if let Some((i, (a, e))) = bad {
        panic!(
            "{what}: element {i} is {a}, expected {e} (tolerance {tol}; max abs diff {:e})",
            actual.max_abs_diff(expected)
        );
    }
}

/// A tensor of standard normal values from a seeded generator.
pub fn random_tensor<T: Element>(shape: &[usize], rng: &mut rnn_kernels::rng::SplitMix64) -> Tensor<T> {
    let count = shape.iter().product();
    Tensor::new(shape, (0..count).map(|_| T::from_f64(rng.normal())).collect()).unwrap()
}

/// Configurations that between them exercise every cell, both GRU variants,
/// depth, both directions, both layouts, no bias and projections, at sizes
/// that are multiples of nothing.
pub fn varied_configs() -> Vec<rnn_kernels::RnnConfig> {
    use rnn_kernels::RnnConfig;
    vec![
        RnnConfig::lstm(3, 5),
        RnnConfig {
            num_layers: 2,
            bidirectional: true,
            ..RnnConfig::lstm(4, 7)
        },
        RnnConfig {
            num_layers: 2,
            proj_size: 3,
            bidirectional: true,
            ..RnnConfig::lstm(5, 6)
        },
        RnnConfig {
            num_layers: 3,
            batch_first: true,
            bias: false,
            ..RnnConfig::lstm(2, 3)
        },
        RnnConfig {
            num_layers: 2,
            bidirectional: true,
            ..RnnConfig::gru(3, 5)
        },
        RnnConfig {
            num_layers: 2,
            gru_linear_before_reset: false,
            batch_first: true,
            ..RnnConfig::gru(4, 6)
        },
        RnnConfig {
            bidirectional: true,
            gru_linear_before_reset: false,
            bias: false,
            ..RnnConfig::gru(2, 3)
        },
        RnnConfig {
            num_layers: 2,
            ..RnnConfig::rnn_tanh(3, 4)
        },
        RnnConfig {
            num_layers: 2,
            bidirectional: true,
            batch_first: true,
            ..RnnConfig::rnn_relu(5, 3)
        },
    ]
}

/// The GPU for `#[ignore = "needs a CUDA GPU"]` tests: `None` (the test
/// then returns early, saying so) when there is none, unless
/// `RNN_REQUIRE_GPU=1`, which makes a missing GPU a failure.
pub fn gpu() -> Option<std::sync::Arc<rnn_kernels::cuda::CudaDevice>> {
    match rnn_kernels::cuda::CudaDevice::new(0) {
        Ok(device) => Some(device),
        Err(e) if std::env::var("RNN_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("RNN_REQUIRE_GPU=1 but no usable GPU: {e}")
        }
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// The small device the emulated kernels are planned for: its 48 KiB of
/// shared memory per block and 16 SMs force every split (one CTA per group,
/// groups at barriers, W_hh from L2) on small shapes.
pub const EMULATED_LIMITS: rnn_kernels::cuda::launch::DeviceLimits =
    rnn_kernels::cuda::launch::DeviceLimits {
        sm_count: 16,
        max_smem_per_block: 48 << 10,
        max_threads_per_block: 1024,
    };

/// A rule of thumb that stands in for the driver's occupancy query there.
pub fn emulated_occupancy(_: &'static str, threads: usize, smem: usize) -> rnn_kernels::Result<usize> {
    Ok((2048 / threads).min((96 << 10) / smem.max(1)).min(32))
}

/// Executes a launch plan on the host SIMT emulation. Every address in it
/// must point into live host memory the caller owns.
pub fn run_emulated(steps: &[rnn_kernels::cuda::launch::Step]) {
    use rnn_kernels::cuda::launch::Step;
    for step in steps {
        match *step {
            Step::FillWords { addr, count, value } => {
                // SAFETY: the caller's plan addresses its own host buffers.
                unsafe { std::slice::from_raw_parts_mut(addr as *mut u32, count).fill(value) };
            }
            Step::Launch(launch) => {
                let emu_launch = rnn_kernels_emu::Launch {
                    grid: launch.grid,
                    block: [launch.block, 1, 1],
                    smem_bytes: launch.smem_bytes as u64,
                    cooperative: i32::from(launch.cooperative),
                };
                // SAFETY: as above; the params are the kernel's own struct.
                let result =
                    unsafe { rnn_kernels_emu::launch(launch.kernel, &emu_launch, launch.params.as_ptr()) };
                result.unwrap();
            }
        }
    }
}

/// A fresh seed per run (printed on failure), or `RNN_TEST_SEED`.
pub fn seed() -> u64 {
    let seed = std::env::var("RNN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
        });
    eprintln!("seed {seed} (rerun with RNN_TEST_SEED={seed})");
    seed
}

/// An f32 output shaped like `like`, every element NaN: a path that leaves
/// any element unwritten fails the comparison that follows.
pub fn nan_output<T: Element>(like: &rnn_kernels::ForwardOutput<T>) -> rnn_kernels::ForwardOutput<f32> {
    rnn_kernels::ForwardOutput {
        output: Tensor::full(like.output.shape(), f32::NAN),
        h_n: Tensor::full(like.h_n.shape(), f32::NAN),
        c_n: like.c_n.as_ref().map(|c| Tensor::full(c.shape(), f32::NAN)),
    }
}
