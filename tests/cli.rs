//! `rnnk` end to end: every fixture through the binary, and every bad input
//! answered by one clear line and a non-zero exit, never a panic or a file.

mod common;

use common::{assert_close, case_files, fixtures_dir, rnnk, rnnk_path, Case, Run};
use rnn_kernels::tensor_file::{self, OwnedTensor};
use rnn_kernels::{StoredDtype, Tensor, TensorFile};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn temp_dir(test: &str) -> PathBuf {
    common::temp_dir("cli", test)
}

/// A fixture's inputs (what `rnnk forward` takes, and with `grads` what
/// `backward` adds), as an input file of their own: an input file may hold
/// nothing else.
fn inputs_of(case: &Path, grads: bool) -> PathBuf {
    let file = TensorFile::open(case).unwrap();
    let mut names = vec!["input", "lengths", "h0", "c0"];
    if grads {
        names.extend(["grad_output", "grad_h_n", "grad_c_n"]);
    }
    let tensors: Vec<(String, OwnedTensor)> = names
        .into_iter()
        .filter_map(|name| {
            let tensor = if name == "lengths" {
                let (shape, values) = file.integer(name).unwrap()?;
                OwnedTensor::i64(shape, &values)
            } else {
                OwnedTensor::float(&file.float::<f64>(name).unwrap()?, StoredDtype::F64)
            };
            Some((name.to_string(), tensor))
        })
        .collect();
    let dir = temp_dir("inputs");
    let stem = case.file_stem().unwrap().to_string_lossy();
    let path = dir.join(format!(
        "{stem}{}.inputs.safetensors",
        if grads { ".grads" } else { "" }
    ));
    tensor_file::write(&path, &tensors, HashMap::new()).unwrap();
    path
}

fn forward(model: &Path, input: &Path, output: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ];
    args.extend(["--output", output.to_str().unwrap()]);
    args.extend(extra);
    rnnk(&args)
}

#[test]
fn forward_reproduces_pytorch_on_every_fixture() {
    forward_matches_every_fixture("fixtures", &[("f32", 2e-5), ("f64", 1e-6)]);
}

/// `rnnk forward --precision P` on every PyTorch fixture: output, `h_n` and
/// `c_n` within `tol` of PyTorch's, for each `(P, tol)`.
fn forward_matches_every_fixture(dir_name: &str, precisions: &[(&str, f64)]) {
    let dir = temp_dir(dir_name);
    for path in case_files() {
        let case = Case::<f64>::load(&path);
        for &(precision, tol) in precisions {
            let out_path = dir.join(format!("{}-{precision}.safetensors", case.name));
            let run = forward(
                &path,
                &inputs_of(&path, false),
                &out_path,
                &["--precision", precision],
            );
            assert!(run.ok, "{} {precision}: {}", case.name, run.stderr);
            let out = TensorFile::open(&out_path).unwrap();
            let get = |n: &str| out.float::<f64>(n).unwrap();
            let ctx = |t: &str| format!("{} {precision} {t}", case.name);
            assert_close(&ctx("output"), &get("output").unwrap(), &case.output, tol);
            assert_close(&ctx("h_n"), &get("h_n").unwrap(), &case.h_n, tol);
            match &case.c_n {
                Some(c_n) => assert_close(&ctx("c_n"), &get("c_n").unwrap(), c_n, tol),
                None => assert!(get("c_n").is_none(), "{}: c_n only for an LSTM", case.name),
            }
        }
    }
}

/// `--precision int8|f16`: the fast CPU path in that format, close to
/// PyTorch's f32 (the schemes' own accuracy is tests/quantized.rs's); for
/// inference only, and on the CPU only.
#[test]
fn forward_runs_int8_and_f16_and_refuses_them_elsewhere() {
    forward_matches_every_fixture("quantized", &[("int8", 5e-2), ("f16", 5e-3)]);
    let dir = temp_dir("quantized-refused");
    let case = fixtures_dir().join("lstm_basic.safetensors");
    let out = dir.join("refused.safetensors");
    let refused = [
        (
            forward(
                &case,
                &inputs_of(&case, false),
                &out,
                &["--device", "cuda", "--precision", "int8"],
            ),
            "--device cpu",
        ),
        (
            backward(&case, &inputs_of(&case, true), &out, &["--precision", "f16"]),
            "inference",
        ),
    ];
    for (run, needle) in refused {
        assert!(!run.ok && run.code == Some(1), "{}", run.stderr);
        assert!(
            run.stderr.contains(needle),
            "{:?} should contain {needle:?}",
            run.stderr
        );
        assert_eq!(run.stderr.trim().lines().count(), 1, "{:?}", run.stderr);
    }
    assert!(!out.exists());
}

/// Without a GPU (or without kernels in this build) `--device cuda` says why,
/// in one line, with status 1; with one it must pass the fixtures.
#[test]
fn forward_on_cuda_fails_cleanly_without_a_gpu() {
    if rnn_kernels::cuda::CudaDevice::new(0).is_ok() {
        return; // covered by forward_on_cuda_reproduces_pytorch
    }
    let dir = temp_dir("no-gpu");
    let case = fixtures_dir().join("gru_basic.safetensors");
    let out = dir.join("out.safetensors");
    let run = forward(&case, &inputs_of(&case, false), &out, &["--device", "cuda"]);
    assert!(!run.ok && run.code == Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("CUDA") || run.stderr.contains("nvcc"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.trim().lines().count(), 1, "{:?}", run.stderr);
    assert!(!out.exists());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn forward_on_cuda_reproduces_pytorch() {
    if common::gpu().is_none() {
        return;
    }
    let dir = temp_dir("cuda");
    for path in case_files() {
        let case = Case::<f64>::load(&path);
        let out_path = dir.join(format!("{}.safetensors", case.name));
        let run = forward(&path, &inputs_of(&path, false), &out_path, &["--device", "cuda"]);
        assert!(run.ok, "{}: {}", case.name, run.stderr);
        let out = TensorFile::open(&out_path).unwrap();
        let get = |n: &str| out.float::<f64>(n).unwrap().unwrap();
        assert_close(
            &format!("{} cuda output", case.name),
            &get("output"),
            &case.output,
            2e-5,
        );
        assert_close(&format!("{} cuda h_n", case.name), &get("h_n"), &case.h_n, 2e-5);
        if let Some(c_n) = &case.c_n {
            assert_close(&format!("{} cuda c_n", case.name), &get("c_n"), c_n, 2e-5);
        }
    }
    // Bad input on the GPU path gets the same errors as on the CPU.
    let lstm = fixtures_dir().join("lstm_l2_bi_varlen_state.safetensors");
    let bad = input_file(&dir, "h0_shape", &lstm, vec![("h0", floats(&[2, 5, 6]))]);
    let run = forward(
        &lstm,
        &bad,
        &dir.join("bad.out.safetensors"),
        &["--device", "cuda"],
    );
    assert!(
        !run.ok && run.stderr.contains("h0: expected shape [4, 5, 6]"),
        "{}",
        run.stderr
    );
}

#[test]
fn forward_takes_a_prefix_of_a_whole_model() {
    let dir = temp_dir("prefix");
    let icu = fixtures_dir().join("icu_model.safetensors");
    let out = dir.join("out.safetensors");
    let inputs = inputs_of(&icu, false);
    for extra in [&["--prefix", "lstm"][..], &["--prefix", "lstm."][..], &[][..]] {
        let run = forward(&icu, &inputs, &out, extra);
        assert!(run.ok, "{extra:?}: {}", run.stderr);
        let file = TensorFile::open(&out).unwrap();
        assert_eq!(file.shape("h_n").unwrap(), Some(vec![2, 9, 64]));
        assert_eq!(
            file.shape("output").unwrap(),
            Some(vec![9, 48, 64]),
            "batch-first from metadata"
        );
    }
    let run = forward(&icu, &inputs, &out, &["--prefix", "head"]);
    assert!(
        !run.ok && run.stderr.contains("head.weight_ih_l0"),
        "{}",
        run.stderr
    );
}

#[test]
fn info_prints_the_configuration() {
    let path = fixtures_dir().join("lstm_proj_l2_bi_varlen.safetensors");
    let out = Command::new(rnnk_path())
        .args(["info", "--model", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("lstm input_size=3 hidden_size=8 num_layers=2 bidirectional proj_size=5"),
        "{text}"
    );
    assert!(text.contains("weight_hr_l1_reverse"), "{text}");
    assert!(
        text.contains("the weights take: f32 ") && text.contains(", int8 ") && text.contains(", f16 "),
        "{text}"
    );
}

/// A case's inputs with some tensors replaced (`Some`) or removed (`None`),
/// written as a new input file.
fn input_file(dir: &Path, name: &str, case: &Path, change: Vec<(&str, Option<OwnedTensor>)>) -> PathBuf {
    let file = TensorFile::open(case).unwrap();
    let mut tensors: HashMap<String, OwnedTensor> = HashMap::new();
    for n in ["input", "h0", "c0"] {
        if let Some(t) = file.float::<f64>(n).unwrap() {
            tensors.insert(n.to_string(), OwnedTensor::float(&t, StoredDtype::F32));
        }
    }
    if let Some((shape, v)) = file.integer("lengths").unwrap() {
        tensors.insert("lengths".into(), OwnedTensor::i64(shape, &v));
    }
    for (n, replacement) in change {
        tensors.remove(n);
        if let Some(t) = replacement {
            tensors.insert(n.to_string(), t);
        }
    }
    let path = dir.join(format!("{name}.safetensors"));
    let list: Vec<(String, OwnedTensor)> = tensors.into_iter().collect();
    tensor_file::write(&path, &list, HashMap::new()).unwrap();
    path
}

fn floats(shape: &[usize]) -> Option<OwnedTensor> {
    Some(OwnedTensor::float(&Tensor::<f32>::zeros(shape), StoredDtype::F32))
}

fn ints(values: &[i64]) -> Option<OwnedTensor> {
    Some(OwnedTensor::i64(vec![values.len()], values))
}

#[test]
fn bad_inputs_fail_with_one_clear_line_and_no_output_file() {
    let dir = temp_dir("bad");
    // lstm: I=4, H=6, L=2, bidirectional, T=7, B=5 (so h0 is [4, 5, 6]).
    let lstm = fixtures_dir().join("lstm_l2_bi_varlen_state.safetensors");
    let gru = fixtures_dir().join("gru_basic.safetensors"); // I=5, H=7, T=5, B=3
    let inputs_only = input_file(&dir, "inputs_only", &gru, vec![]);
    let bad: Vec<(&str, &Path, PathBuf, &[&str])> = vec![
        (
            "no_input",
            &lstm,
            input_file(&dir, "no_input", &lstm, vec![("input", None)]),
            &["input: missing"],
        ),
        (
            "input_2d",
            &lstm,
            input_file(&dir, "input_2d", &lstm, vec![("input", floats(&[7, 4]))]),
            &["input: expected shape [T, B, 4]", "found [7, 4]"],
        ),
        (
            "input_width",
            &lstm,
            input_file(&dir, "input_width", &lstm, vec![("input", floats(&[7, 5, 3]))]),
            &["input", "[T, B, 4]", "[7, 5, 3]"],
        ),
        (
            "input_int",
            &lstm,
            input_file(&dir, "input_int", &lstm, vec![("input", ints(&[1, 2]))]),
            &["input", "not a float type"],
        ),
        (
            "lengths_zero",
            &lstm,
            input_file(
                &dir,
                "lengths_zero",
                &lstm,
                vec![("lengths", ints(&[1, 2, 0, 4, 5]))],
            ),
            &["lengths[2] = 0", "1..=7"],
        ),
        (
            "lengths_long",
            &lstm,
            input_file(
                &dir,
                "lengths_long",
                &lstm,
                vec![("lengths", ints(&[1, 2, 8, 4, 5]))],
            ),
            &["lengths[2] = 8"],
        ),
        (
            "lengths_negative",
            &lstm,
            input_file(
                &dir,
                "lengths_negative",
                &lstm,
                vec![("lengths", ints(&[1, -2, 3, 4, 5]))],
            ),
            &["lengths[1] = -2"],
        ),
        (
            "lengths_count",
            &lstm,
            input_file(&dir, "lengths_count", &lstm, vec![("lengths", ints(&[1, 2, 3]))]),
            &["lengths: expected shape [5]", "found [3]"],
        ),
        (
            "lengths_float",
            &lstm,
            input_file(&dir, "lengths_float", &lstm, vec![("lengths", floats(&[5]))]),
            &["lengths", "not an integer type"],
        ),
        (
            "h0_shape",
            &lstm,
            input_file(&dir, "h0_shape", &lstm, vec![("h0", floats(&[2, 5, 6]))]),
            &["h0: expected shape [4, 5, 6]", "found [2, 5, 6]"],
        ),
        (
            "c0_shape",
            &lstm,
            input_file(&dir, "c0_shape", &lstm, vec![("c0", floats(&[4, 5, 7]))]),
            &["c0: expected shape [4, 5, 6]"],
        ),
        (
            "c0_for_gru",
            &gru,
            input_file(&dir, "c0_for_gru", &gru, vec![("c0", floats(&[1, 3, 7]))]),
            &["c0: given, but a gru has no cell state"],
        ),
        (
            "model_is_input",
            &inputs_only,
            gru.clone(),
            &["weight_ih_l0", "missing"],
        ),
    ];
    for (name, model, input, needles) in bad {
        let out = dir.join(format!("{name}.out.safetensors"));
        let run = forward(model, &input, &out, &[]);
        assert!(
            !run.ok && run.code == Some(1),
            "{name} should fail with status 1: {}",
            run.stderr
        );
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "{name}: one line, got {:?}",
            run.stderr
        );
        for needle in needles {
            assert!(
                run.stderr.contains(needle),
                "{name}: {:?} should contain {needle:?}",
                run.stderr
            );
        }
        assert!(!out.exists(), "{name}: no output file on failure");
    }
}

#[test]
fn bad_files_and_devices_fail_cleanly() {
    let dir = temp_dir("files");
    let case = fixtures_dir().join("gru_basic.safetensors");
    let inputs = inputs_of(&case, false);
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}").unwrap();
    let out = dir.join("out.safetensors");
    let runs = [
        (
            forward(&garbage, &inputs, &out, &[]),
            "not a valid safetensors file",
        ),
        (
            forward(&case, &garbage, &out, &[]),
            "not a valid safetensors file",
        ),
        (
            forward(&dir.join("absent.safetensors"), &inputs, &out, &[]),
            "absent.safetensors",
        ),
        (
            forward(&case, &inputs, &dir.join("no/such/dir/out.safetensors"), &[]),
            "out.safetensors",
        ),
        (
            forward(&case, &inputs, &out, &["--device", "cuda", "--precision", "f64"]),
            "--precision f64",
        ),
    ];
    for (run, needle) in runs {
        assert!(!run.ok && run.code == Some(1), "{}", run.stderr);
        assert!(
            run.stderr.contains(needle),
            "{:?} should contain {needle:?}",
            run.stderr
        );
        assert_eq!(run.stderr.trim().lines().count(), 1, "{:?}", run.stderr);
    }
    assert!(!out.exists());
    // A bad flag is clap's business: usage and status 2.
    let run = forward(&case, &inputs, &out, &["--device", "tpu"]);
    assert_eq!(run.code, Some(2));
}

#[test]
fn a_failed_run_leaves_an_existing_output_untouched() {
    let dir = temp_dir("untouched");
    let case = fixtures_dir().join("gru_basic.safetensors");
    let out = dir.join("out.safetensors");
    std::fs::write(&out, b"previous results").unwrap();
    let bad = input_file(&dir, "bad", &case, vec![("input", floats(&[1, 1, 1]))]);
    assert!(!forward(&case, &bad, &out, &[]).ok);
    assert_eq!(std::fs::read(&out).unwrap(), b"previous results");
}

/// Compares every `expected.*` tensor of a fixture with the output file of
/// `rnnk backward` (where `expected.grad/<param>` is `grad.<param>`);
/// returns how many were compared.
fn check_against_fixture(fixture: &TensorFile, out_path: &Path, label: &str, tol: f64) -> usize {
    let out = TensorFile::open(out_path).unwrap();
    let mut checked = 0;
    for expected_name in fixture.names().unwrap() {
        let Some(key) = expected_name.strip_prefix("expected.") else {
            continue;
        };
        let key = key.replace("grad/", "grad.");
        let got = out
            .float::<f64>(&key)
            .unwrap()
            .unwrap_or_else(|| panic!("{label}: no {key}"));
        let want = fixture.float::<f64>(&expected_name).unwrap().unwrap();
        assert_close(&format!("{label} {key}"), &got, &want, tol);
        checked += 1;
    }
    checked
}

fn backward(model: &Path, input: &Path, output: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "backward",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ];
    args.extend(["--output", output.to_str().unwrap()]);
    args.extend(extra);
    rnnk(&args)
}

#[test]
fn backward_reproduces_pytorch_autograd_on_every_fixture() {
    let dir = temp_dir("backward");
    for path in case_files() {
        let fixture = TensorFile::open(&path).unwrap();
        let name = common::case_name(&path);
        for (precision, tol) in [("f32", 1e-4), ("f64", 1e-6)] {
            let out_path = dir.join(format!("{name}-{precision}.safetensors"));
            let run = backward(
                &path,
                &inputs_of(&path, true),
                &out_path,
                &["--precision", precision],
            );
            assert!(run.ok, "{name}: {}", run.stderr);
            let checked = check_against_fixture(&fixture, &out_path, &format!("{name} {precision}"), tol);
            // At least output, h_n, grad_input, grad_h0 and two weight gradients.
            assert!(checked >= 6, "{name}: only {checked} tensors checked");
        }
    }
}

#[test]
fn backward_dropout_is_off_without_a_seed_and_reproducible_with_one() {
    let dir = temp_dir("dropout");
    let icu = fixtures_dir().join("icu_model.safetensors"); // dropout 0.2 between its 2 layers
    let file = TensorFile::open(&icu).unwrap();
    let input = file.float::<f64>("input").unwrap().unwrap();
    let grad = Tensor::<f64>::full([9, 48, 64], 1.0);
    let inputs = dir.join("inputs.safetensors");
    let (lengths_shape, lengths) = file.integer("lengths").unwrap().unwrap();
    let tensors = vec![
        ("input".to_string(), OwnedTensor::float(&input, StoredDtype::F32)),
        ("lengths".to_string(), OwnedTensor::i64(lengths_shape, &lengths)),
        (
            "grad_output".to_string(),
            OwnedTensor::float(&grad, StoredDtype::F32),
        ),
    ];
    tensor_file::write(&inputs, &tensors, HashMap::new()).unwrap();
    let model = dir.join("model.safetensors");
    // The ICU fixture's metadata has no dropout; give the model p = 0.2.
    let weights = rnn_kernels::Weights::<f64>::load(&icu, Some("lstm")).unwrap();
    let config = rnn_kernels::RnnConfig {
        dropout: 0.2,
        ..weights.config().clone()
    };
    let named = weights
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.clone()))
        .collect();
    rnn_kernels::Weights::from_named(config, named)
        .unwrap()
        .save(&model, StoredDtype::F32, None)
        .unwrap();

    let run_to = |name: &str, extra: &[&str]| {
        let out = dir.join(name);
        let run = backward(&model, &inputs, &out, extra);
        assert!(run.ok, "{}", run.stderr);
        TensorFile::open(out)
            .unwrap()
            .float::<f64>("grad.weight_ih_l1")
            .unwrap()
            .unwrap()
    };
    let off = run_to("off.safetensors", &[]);
    let seeded = run_to("a.safetensors", &["--dropout-seed", "7"]);
    assert_eq!(seeded, run_to("b.safetensors", &["--dropout-seed", "7"]));
    assert_ne!(seeded, run_to("c.safetensors", &["--dropout-seed", "8"]));
    assert_ne!(seeded, off);

    let forward_out = dir.join("forward.safetensors");
    let forward_inputs = dir.join("forward_inputs.safetensors");
    tensor_file::write(&forward_inputs, &tensors[..2], HashMap::new()).unwrap();
    assert!(forward(&model, &forward_inputs, &forward_out, &[]).ok);
    let out_forward = TensorFile::open(&forward_out)
        .unwrap()
        .float::<f32>("output")
        .unwrap();
    let out_backward = TensorFile::open(dir.join("off.safetensors"))
        .unwrap()
        .float::<f32>("output")
        .unwrap();
    assert_eq!(
        out_forward, out_backward,
        "without a seed the training forward is the inference forward"
    );
}

/// The CLI's backward on the GPU reproduces autograd as the CPU does
/// (`--device cuda` without a GPU is covered by forward's test).
#[test]
#[ignore = "needs a CUDA GPU"]
fn backward_on_cuda_reproduces_pytorch_autograd() {
    if common::gpu().is_none() {
        return;
    }
    let dir = temp_dir("backward-cuda");
    for path in case_files() {
        let fixture = TensorFile::open(&path).unwrap();
        let name = common::case_name(&path);
        let out_path = dir.join(format!("{name}.safetensors"));
        let run = backward(&path, &inputs_of(&path, true), &out_path, &["--device", "cuda"]);
        assert!(run.ok, "{name}: {}", run.stderr);
        check_against_fixture(&fixture, &out_path, &format!("{name} cuda"), 1e-4);
    }
}

#[test]
fn backward_bad_inputs_fail_with_one_clear_line() {
    let dir = temp_dir("backward-bad");
    let lstm = fixtures_dir().join("lstm_l2_bi_varlen_state.safetensors"); // T=7, B=5, D*Hout = 12
    let gru = fixtures_dir().join("gru_basic.safetensors");
    let with_grads = |name: &str, case: &Path, change: Vec<(&str, Option<OwnedTensor>)>| {
        let file = TensorFile::open(case).unwrap();
        let mut all: Vec<(&str, Option<OwnedTensor>)> = ["grad_output", "grad_h_n", "grad_c_n"]
            .into_iter()
            .filter_map(|n| {
                file.float::<f64>(n)
                    .unwrap()
                    .map(|t| (n, Some(OwnedTensor::float(&t, StoredDtype::F32))))
            })
            .collect();
        all.extend(change);
        input_file(&dir, name, case, all)
    };
    let cases: Vec<(&str, &Path, PathBuf, &[&str], &str)> = vec![
        (
            "no_grad",
            &lstm,
            with_grads("no_grad", &lstm, vec![("grad_output", None)]),
            &[],
            "grad_output: missing",
        ),
        (
            "grad_shape",
            &lstm,
            with_grads("grad_shape", &lstm, vec![("grad_output", floats(&[7, 5, 6]))]),
            &[],
            "grad_output: expected shape [7, 5, 12]",
        ),
        (
            "grad_h_n_shape",
            &lstm,
            with_grads("grad_h_n_shape", &lstm, vec![("grad_h_n", floats(&[4, 5, 7]))]),
            &[],
            "grad_h_n: expected shape [4, 5, 6]",
        ),
        (
            "grad_c_n_gru",
            &gru,
            with_grads("grad_c_n_gru", &gru, vec![("grad_c_n", floats(&[1, 3, 7]))]),
            &[],
            "grad_c_n: given, but a gru has no cell state",
        ),
    ];
    for (name, model, input, extra, needle) in cases {
        let out = dir.join(format!("{name}.out.safetensors"));
        let run = backward(model, &input, &out, extra);
        assert!(!run.ok && run.code == Some(1), "{name}: {}", run.stderr);
        assert_eq!(run.stderr.trim().lines().count(), 1, "{name}: {:?}", run.stderr);
        assert!(
            run.stderr.contains(needle),
            "{name}: {:?} should contain {needle:?}",
            run.stderr
        );
        assert!(!out.exists(), "{name}: no output on failure");
    }
}
