//! A request too large for the machine is an error that names what needed
//! the memory, never an abort: for `rnnk` (one line, exit status 1, no
//! output written) and for the library (an error, after which the same
//! model serves a normal call). Each case runs in a child process under an
//! address-space limit (`ulimit -v`), so that "too large" does not depend
//! on how much memory the test machine has. On a GPU (or the driver
//! stand-in, as CI runs it), `rnnk --device cuda` asks for more than an
//! H200 holds.

mod common;

use common::{random_tensor, rnnk_path, temp_dir};
use rnn_kernels::cpu::CpuRnn;
use rnn_kernels::rng::SplitMix64;
use rnn_kernels::tensor_file::{write, OwnedTensor};
use rnn_kernels::{reference, Error, ForwardInput, RnnConfig, StoredDtype, Tensor, Weights};
use std::path::Path;
use std::process::Command;

/// The address-space limit of the children: room for the program, its
/// threads and the test's own tensors, far below what the requests need.
const LIMIT_KIB: u64 = 3 << 20;

/// Runs `program args` under the limit: (exit code, stdout, stderr).
fn limited(program: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {LIMIT_KIB} && exec \"$0\" \"$@\""))
        .arg(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// An LSTM with `H = 1024` and one input channel, and an input of `steps`
/// steps of one sequence (`steps · 4` bytes on disk; its output is 4 KiB
/// a step).
fn big_case(dir: &Path, steps: usize) -> (String, String) {
    let config = RnnConfig::lstm(1, 1024);
    let weights = Weights::<f32>::random(config, 5).unwrap();
    let model = dir.join("model.safetensors");
    weights.save(&model, StoredDtype::F32, None).unwrap();
    let input = Tensor::<f32>::zeros([steps, 1, 1]);
    let path = dir.join("input.safetensors");
    let tensors = [("input".to_string(), OwnedTensor::float(&input, StoredDtype::F32))];
    write(&path, &tensors, Default::default()).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    (s(&model), s(&path))
}

#[test]
fn rnnk_says_what_would_not_fit_and_writes_nothing() {
    let dir = temp_dir("oom", "cli");
    let _cleanup = RemoveOnDrop(dir.clone());
    // 2,000,000 steps: an output of 7.6 GiB (f32), 15.3 GiB in f64.
    let (model, input) = big_case(&dir, 2_000_000);
    let output = dir.join("out.safetensors");
    let out = output.to_str().unwrap();
    let cases: [(&[&str], &str); 2] = [
        (
            &["--device", "cpu"],
            "the output needs 7.6 GiB ([2000000, 1, 1024] f32)",
        ),
        (
            &["--device", "cpu", "--precision", "f64"],
            "the output needs 15.3 GiB ([1, 2000000, 1024] f64)",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["forward", "--model", &model, "--input", &input, "--output", out];
        args.extend_from_slice(extra);
        let (code, _, stderr) = limited(&rnnk_path(), &args, &[]);
        assert_eq!(code, Some(1), "{extra:?}: {stderr}");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
        assert!(stderr.starts_with("rnnk: error: "), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(!output.exists(), "nothing written");
    }
}

/// The library half, run in a child of this test binary (see below).
fn library_case() {
    let config = RnnConfig {
        num_layers: 2,
        ..RnnConfig::lstm(1, 1024)
    };
    let weights = Weights::<f32>::random(config.clone(), 9).unwrap();
    let mut model = CpuRnn::with_threads(&weights, 2).unwrap();
    let huge = Tensor::<f32>::zeros([2_000_000, 1, 1]);
    let args = ForwardInput::new(&huge);
    let blamed = |e: Error, what: &str| match e {
        // (The request that failed: the one that crossed the limit.)
        Error::OutOfMemory { what: w, bytes, .. } => {
            assert_eq!(w, what);
            assert!(bytes.unwrap() > 100 << 20);
        }
        other => panic!("expected running out of memory for {what}, got {other}"),
    };
    blamed(model.forward(&args).unwrap_err(), "the output");
    blamed(reference::forward(&weights, &args).unwrap_err(), "the output");
    let mut train_err =
        |input: &Tensor<f32>| match CpuRnn::forward_train(&mut model, &ForwardInput::new(input), None) {
            Ok(_) => panic!("training on {:?} steps fitted", input.shape()),
            Err(e) => e,
        };
    blamed(train_err(&huge), "the output");
    // An output that fits, and a training reserve (the gate activations,
    // four times as wide) that does not.
    let long = Tensor::<f32>::zeros([150_000, 1, 1]);
    blamed(train_err(&long), "the training reserve");
    // The model serves the next call, and gives the reference's answer.
    let mut rng = SplitMix64::new(3);
    let small = random_tensor::<f32>(&[7, 3, 1], &mut rng);
    let small = ForwardInput::new(&small);
    let got = model.forward(&small).unwrap();
    let want = reference::forward(&weights, &small).unwrap();
    assert!(got.output.max_abs_diff(&want.output) < 1e-5);
    println!("library case done");
}

#[test]
fn the_library_returns_an_error_and_serves_the_next_call() {
    if std::env::var_os("RNN_OOM_CHILD").is_some() {
        return library_case();
    }
    let exe = std::env::current_exe().unwrap();
    let args = [
        "the_library_returns_an_error_and_serves_the_next_call",
        "--exact",
        "--nocapture",
    ];
    let (code, stdout, stderr) = limited(&exe, &args, &[("RNN_OOM_CHILD", "1")]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("library case done"), "{stdout}{stderr}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn rnnk_on_the_gpu_says_what_would_not_fit() {
    if common::gpu().is_none() {
        return;
    }
    let dir = temp_dir("oom", "gpu");
    let _cleanup = RemoveOnDrop(dir.clone());
    // 40,000,000 steps: an output of 153 GiB, more than an H200 holds.
    let (model, input) = big_case(&dir, 40_000_000);
    let output = dir.join("out.safetensors");
    let out = output.to_str().unwrap();
    let args = [
        "forward", "--model", &model, "--input", &input, "--output", out, "--device", "cuda",
    ];
    let run = common::rnnk(&args);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the output needs 153 GiB (40960000000 f32 on the GPU)"),
        "{}",
        run.stderr
    );
    assert!(!output.exists());
}

/// Removes a test's directory (its input files are large) when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
