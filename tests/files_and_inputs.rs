//! `rnnk` as a careful user's tool: it never destroys a file (an output that
//! is an input, a device, a FIFO, a directory; a temporary left behind by a
//! signal), never guesses silently (unknown input tensors, the facts a
//! `state_dict` does not record), reads only regular files, and blames the
//! right tensor. (Unix: links, modes, FIFOs and signals.)
#![cfg(unix)]

mod common;

use common::{fixtures_dir, rnnk, rnnk_path, Run};
use rnn_kernels::tensor_file::{self, OwnedTensor};
use rnn_kernels::{reference, ForwardInput, RnnConfig, StoredDtype, Tensor, TensorFile, Weights};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// An empty directory for one test.
fn temp_dir(test: &str) -> PathBuf {
    let dir = common::temp_dir("files", test);
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn forward(model: &Path, input: &Path, output: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    args.extend(extra);
    rnnk(&args)
}

/// A model without metadata (as PyTorch saves one) and an input for it.
fn model_and_input(dir: &Path, config: RnnConfig, input_shape: &[usize]) -> (PathBuf, PathBuf, Weights<f64>) {
    let weights = Weights::<f64>::random(config, 3).unwrap();
    let model = dir.join("model.safetensors");
    let tensors: Vec<(String, OwnedTensor)> = weights
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, OwnedTensor::float(t, StoredDtype::F32)))
        .collect();
    tensor_file::write(&model, &tensors, HashMap::new()).unwrap();
    let mut rng = rnn_kernels::rng::SplitMix64::new(4);
    let input = common::random_tensor::<f64>(input_shape, &mut rng);
    let input_path = dir.join("input.safetensors");
    write(
        &input_path,
        vec![("input", OwnedTensor::float(&input, StoredDtype::F64))],
    );
    (model, input_path, weights)
}

fn write(path: &Path, tensors: Vec<(&str, OwnedTensor)>) {
    let named: Vec<(String, OwnedTensor)> = tensors.into_iter().map(|(n, t)| (n.to_string(), t)).collect();
    tensor_file::write(path, &named, HashMap::new()).unwrap();
}

fn lstm_case(dir: &Path) -> (PathBuf, PathBuf) {
    let (model, input, _) = model_and_input(dir, RnnConfig::lstm(3, 5), &[4, 2, 3]);
    (model, input)
}

#[track_caller]
fn refused(run: &Run, needle: &str) {
    assert!(!run.ok && run.code == Some(1), "accepted: {}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "one line: {}", run.stderr);
    assert!(run.stderr.contains(needle), "{needle:?} not in: {}", run.stderr);
}

#[test]
fn the_output_may_not_be_the_model_or_the_input_by_any_name() {
    let dir = temp_dir("same-file");
    let (model, input) = lstm_case(&dir);
    let before = std::fs::read(&model).unwrap();
    let link = dir.join("link.safetensors");
    std::os::unix::fs::symlink(&model, &link).unwrap();
    let hard = dir.join("hard.safetensors");
    std::fs::hard_link(&input, &hard).unwrap();
    for (output, other) in [
        (&model, &model),
        (&input, &input),
        (&link, &model),
        (&hard, &input),
    ] {
        let run = forward(&model, &input, output, &[]);
        refused(&run, "refusing to overwrite");
        assert!(
            run.stderr.contains(&other.display().to_string()),
            "names the input: {}",
            run.stderr
        );
    }
    assert_eq!(std::fs::read(&model).unwrap(), before, "the model is untouched");
}

#[test]
fn outputs_are_written_through_links_and_never_over_special_files() {
    let dir = temp_dir("destinations");
    let (model, input) = lstm_case(&dir);
    // A symbolic link is written through to its target, as cp does.
    let target = dir.join("target.safetensors");
    std::fs::write(&target, b"old").unwrap();
    let link = dir.join("out-link.safetensors");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(forward(&model, &input, &link, &[]).ok);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert!(TensorFile::open(&target)
        .unwrap()
        .shape("output")
        .unwrap()
        .is_some());
    // Not a regular file: refused, left as it is.
    let fifo = dir.join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for (path, kind) in [
        (Path::new("/dev/null"), "character device"),
        (fifo.as_path(), "FIFO"),
        (dir.as_path(), "directory"),
    ] {
        refused(&forward(&model, &input, path, &[]), kind);
    }
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo_like());
    // The failed writes left no temporaries.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("rnnk-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}

impl FifoLike for std::fs::FileType {
    fn is_fifo_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_fifo()
    }
}

#[test]
fn new_outputs_follow_the_umask_and_existing_ones_keep_their_mode() {
    let dir = temp_dir("modes");
    let (model, input) = lstm_case(&dir);
    let run_with_umask = |umask: &str, out: &Path| {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask {umask} && exec \"$0\" forward --model \"$1\" --input \"$2\" --output \"$3\" --device cpu"
            ))
            .arg(rnnk_path())
            .args([&model, &input, &out.to_path_buf()])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    };
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let fresh = dir.join("fresh.safetensors");
    run_with_umask("027", &fresh);
    assert_eq!(mode(&fresh), 0o640);
    let fresh = dir.join("fresh2.safetensors");
    run_with_umask("022", &fresh);
    assert_eq!(mode(&fresh), 0o644);
    let existing = dir.join("existing.safetensors");
    std::fs::write(&existing, b"old").unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o600)).unwrap();
    run_with_umask("022", &existing);
    assert_eq!(mode(&existing), 0o600, "an existing file keeps its mode");
    assert!(TensorFile::open(&existing).is_ok());
}

#[test]
fn a_signal_mid_write_leaves_the_destination_and_no_temporary() {
    let dir = temp_dir("signals");
    let (model, input) = lstm_case(&dir);
    for signal in ["TERM", "INT"] {
        let out = dir.join(format!("out-{signal}.safetensors"));
        std::fs::write(&out, b"previous results").unwrap();
        let mut child = Command::new(rnnk_path())
            .args(["forward", "--device", "cpu", "--model"])
            .args([&model])
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&out)
            .env("RNNK_TEST_WRITE_DELAY_MS", "3000")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the temporary exists, then signal.
        let temporary = dir.join(format!(".out-{signal}.safetensors.rnnk-tmp-{}", child.id()));
        let start = std::time::Instant::now();
        while !temporary.exists() {
            assert!(
                start.elapsed().as_secs() < 20,
                "no temporary {}",
                temporary.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "SIG{signal}");
        assert!(!temporary.exists(), "SIG{signal} left {}", temporary.display());
        assert_eq!(std::fs::read(&out).unwrap(), b"previous results", "SIG{signal}");
    }
}

#[test]
fn unknown_input_tensors_are_errors_that_list_the_names() {
    let dir = temp_dir("unknown");
    let (model, input) = lstm_case(&dir);
    let x = TensorFile::open(&input)
        .unwrap()
        .float::<f32>("input")
        .unwrap()
        .unwrap();
    for extra in ["lenghts", "h_0", "expected.output"] {
        let bad = dir.join("bad.safetensors");
        write(
            &bad,
            vec![
                ("input", OwnedTensor::float(&x, StoredDtype::F32)),
                (extra, OwnedTensor::i64(vec![2], &[4, 4])),
            ],
        );
        let run = forward(&model, &bad, &dir.join("out.safetensors"), &[]);
        refused(&run, &format!("{extra}: is not an input of rnnk forward"));
        assert!(run.stderr.contains("input, lengths, h0, c0"), "{}", run.stderr);
    }
}

#[test]
fn info_says_what_it_uses_ignores_and_how_it_reads_the_input() {
    let icu = fixtures_dir().join("icu_model.safetensors");
    let run = rnnk(&["info", "--model", icu.to_str().unwrap()]);
    assert!(run.ok, "{}", run.stderr);
    let text = &run.stdout;
    assert!(text.contains("reads input as [B, T, I] (batch-first)"), "{text}");
    let used = text.split("ignored:").next().unwrap();
    assert!(
        used.contains("lstm.weight_hh_l1") && used.contains("F32"),
        "{text}"
    );
    let ignored = text.split("ignored:").nth(1).expect("an ignored section");
    assert!(
        ignored.contains("head.1.weight") && ignored.contains("input"),
        "{text}"
    );
    assert!(ignored.contains("I64"), "the stored dtype of lengths: {text}");
}

#[test]
fn batch_first_cell_and_gru_variant_come_from_flags_when_the_file_does_not_say() {
    let dir = temp_dir("facts");
    let out = dir.join("out.safetensors");
    // batch_first: a [B, T, I] input to a model saved without metadata.
    let config = RnnConfig {
        batch_first: true,
        ..RnnConfig::lstm(3, 4)
    };
    let (model, input, weights) = model_and_input(&dir, config.clone(), &[2, 5, 3]);
    let run = forward(&model, &input, &out, &[]);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr.contains("note: ") && run.stderr.contains("--batch-first"),
        "the guess is said: {}",
        run.stderr
    );
    let run = forward(&model, &input, &out, &["--batch-first"]);
    assert!(run.ok && !run.stderr.contains("note"), "{}", run.stderr);
    let x = TensorFile::open(&input)
        .unwrap()
        .float::<f64>("input")
        .unwrap()
        .unwrap();
    let want = reference::forward(&weights, &ForwardInput::new(&x)).unwrap();
    let got = TensorFile::open(&out)
        .unwrap()
        .float::<f64>("output")
        .unwrap()
        .unwrap();
    assert_eq!(got.shape(), &[2, 5, 4]);
    assert!(got.max_abs_diff(&want.output) < 1e-5);
    // A flag that contradicts the file's metadata is an error.
    let with_metadata = dir.join("with_metadata.safetensors");
    Weights::from_named(
        RnnConfig {
            batch_first: false,
            ..config
        },
        weights
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (n, t.clone()))
            .collect(),
    )
    .unwrap()
    .save(&with_metadata, StoredDtype::F32, None)
    .unwrap();
    refused(
        &forward(&with_metadata, &input, &out, &["--batch-first"]),
        "contradicts",
    );

    // rnn_relu: the shapes say "rnn", the flag says which.
    let (model, input, weights) = model_and_input(&dir, RnnConfig::rnn_relu(3, 4), &[5, 2, 3]);
    let run = forward(&model, &input, &out, &[]);
    assert!(run.stderr.contains("--cell rnn_relu"), "{}", run.stderr);
    assert!(forward(&model, &input, &out, &["--cell", "rnn_relu"]).ok);
    let x = TensorFile::open(&input)
        .unwrap()
        .float::<f64>("input")
        .unwrap()
        .unwrap();
    let want = reference::forward(&weights, &ForwardInput::new(&x)).unwrap();
    let got = TensorFile::open(&out)
        .unwrap()
        .float::<f64>("output")
        .unwrap()
        .unwrap();
    assert!(got.max_abs_diff(&want.output) < 1e-5, "relu, as flagged");
    refused(
        &forward(&model, &input, &out, &["--cell", "lstm"]),
        "cell = lstm: lstm has 4 gates",
    );
    refused(
        &forward(&model, &input, &out, &["--gru-original"]),
        "gru_original applies to a GRU",
    );

    // The original GRU.
    let original = RnnConfig {
        gru_linear_before_reset: false,
        ..RnnConfig::gru(3, 4)
    };
    let (model, input, weights) = model_and_input(&dir, original, &[5, 2, 3]);
    assert!(forward(&model, &input, &out, &["--gru-original"]).ok);
    let x = TensorFile::open(&input)
        .unwrap()
        .float::<f64>("input")
        .unwrap()
        .unwrap();
    let want = reference::forward(&weights, &ForwardInput::new(&x)).unwrap();
    let got = TensorFile::open(&out)
        .unwrap()
        .float::<f64>("output")
        .unwrap()
        .unwrap();
    assert!(
        got.max_abs_diff(&want.output) < 1e-5,
        "the original GRU, as flagged"
    );
    let run = rnnk(&["info", "--model", model.to_str().unwrap(), "--gru-original"]);
    assert!(
        run.ok && run.stdout.contains("the original GRU"),
        "{}",
        run.stdout
    );
}

#[test]
fn messages_blame_the_tensor_at_fault() {
    let dir = temp_dir("blame");
    let (model, input) = lstm_case(&dir);
    let file = TensorFile::open(&model).unwrap();
    let rewrite = |drop: &str, add: Option<(&str, Tensor<f32>)>| -> PathBuf {
        let path = dir.join(format!("model-{drop}.safetensors"));
        let mut tensors: Vec<(String, OwnedTensor)> = file
            .names()
            .unwrap()
            .into_iter()
            .filter(|n| n != drop)
            .map(|n| {
                let t = file.float::<f32>(&n).unwrap().unwrap();
                (n, OwnedTensor::float(&t, StoredDtype::F32))
            })
            .collect();
        if let Some((name, t)) = add {
            tensors.push((name.to_string(), OwnedTensor::float(&t, StoredDtype::F32)));
        }
        tensor_file::write(&path, &tensors, HashMap::new()).unwrap();
        path
    };
    let out = dir.join("out.safetensors");
    // weight_hh with the wrong hidden size: weight_hh is named, not weight_ih.
    let bad = rewrite("weight_hh_l0", Some(("weight_hh_l0", Tensor::zeros([20, 6]))));
    refused(
        &forward(&bad, &input, &out, &[]),
        "weight_hh_l0: expected shape [20, H] with H = 5 (lstm) or 20 (rnn)",
    );
    let bad = rewrite("weight_hh_l0", Some(("weight_hh_l0", Tensor::zeros([19, 5]))));
    refused(
        &forward(&bad, &input, &out, &[]),
        "weight_hh_l0: expected shape [20, Hout]",
    );
    // A missing bias_ih beside a present bias_hh.
    let bad = rewrite("bias_ih_l0", None);
    refused(
        &forward(&bad, &input, &out, &[]),
        "bias_ih_l0: missing (biases come in pairs, and the file has bias_hh_l0)",
    );
    // A header with a tensor listed twice.
    let dup = dir.join("dup.safetensors");
    let header = br#"{"input":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"input":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 4]);
    std::fs::write(&dup, bytes).unwrap();
    refused(&forward(&model, &dup, &out, &[]), "lists \"input\" twice");
    // A failed write names the destination, not the temporary.
    let run = forward(&model, &input, &dir.join("no/such/dir/out.safetensors"), &[]);
    refused(&run, "no/such/dir/out.safetensors");
    assert!(!run.stderr.contains("rnnk-tmp"), "{}", run.stderr);
}

#[test]
fn only_regular_files_are_read() {
    let dir = temp_dir("readers");
    let (model, input) = lstm_case(&dir);
    let out = dir.join("out.safetensors");
    refused(
        &forward(&model, Path::new("/dev/zero"), &out, &[]),
        "/dev/zero: is not a regular file (a character device)",
    );
    refused(
        &forward(Path::new("/dev/zero"), &input, &out, &[]),
        "is not a regular file",
    );
    let fifo = dir.join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // Refused at once: nothing writes to the FIFO, so reading it would hang.
    refused(
        &forward(&model, &fifo, &out, &[]),
        "is not a regular file (a FIFO)",
    );
    refused(
        &forward(&model, &dir, &out, &[]),
        "is not a regular file (a directory)",
    );
    assert!(!out.exists());
}

#[test]
fn every_option_of_every_subcommand_has_a_help_line() {
    for sub in ["forward", "backward", "info"] {
        let run = rnnk(&[sub, "-h"]);
        assert!(run.ok, "{}", run.stderr);
        let options: Vec<&str> = run
            .stdout
            .lines()
            .map(str::trim_start)
            .filter(|l| l.starts_with("--"))
            .collect();
        assert!(options.len() >= 4, "{sub}: {}", run.stdout);
        for line in options {
            let flag = line.split_whitespace().next().unwrap();
            if flag == "--help" || flag == "--version" {
                continue;
            }
            let described = line.split("  ").filter(|p| !p.trim().is_empty()).count() >= 2;
            assert!(described, "{sub} {flag} has no help: {line:?}\n{}", run.stdout);
        }
    }
}
