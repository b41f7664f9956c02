//! The clinical examples end to end, through their command lines: both
//! scorers against PyTorch's own scores (tests/fixtures/clinical/, written by
//! tests/fixtures/generate.py), the monitor's hour-by-hour replay against the
//! whole-stay scorer, and every bad cohort or model answered by one line on
//! stderr, a non-zero exit and no output file.

mod common;

use rnn_kernels::tensor_file::{self, OwnedTensor};
use rnn_kernels::{StoredDtype, Tensor, TensorFile};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// PyTorch's scores, f64, against ours: `prob` within this.
const PROB_TOL: f64 = 1e-5;

fn fixtures() -> PathBuf {
    common::fixtures_dir().join("clinical")
}

fn temp_dir(test: &str) -> PathBuf {
    common::temp_dir("clinical", test)
}

/// An example's binary: cargo builds examples beside the test harnesses
/// (`target/<profile>/examples/`); on a GPU machine `pack` puts them in
/// `.gpu/examples/`.
fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let dir = deps.parent().unwrap();
    let candidates = [
        dir.join("../examples").join(name),
        dir.join("../../examples").join(name),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "no {name} binary beside {} (cargo test builds examples)",
                dir.display()
            )
        })
        .clone()
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run(name: &str, args: &[&str]) -> Run {
    let out = Command::new(example(name)).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{name} panicked: {stderr}");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    }
}

fn score(name: &str, model: &Path, input: &Path, output: &Path) -> Run {
    score_with(name, model, input, output, &["--device", "cpu"])
}

/// [`score`] with other options than `--device cpu`.
fn score_with(name: &str, model: &Path, input: &Path, output: &Path, options: &[&str]) -> Run {
    let mut args = vec![
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(options);
    run(name, &args)
}

fn read(path: &Path, name: &str) -> Tensor<f64> {
    TensorFile::open(path)
        .unwrap()
        .float::<f64>(name)
        .unwrap()
        .unwrap_or_else(|| panic!("{}: no {name}", path.display()))
}

fn case(name: &str, part: &str) -> PathBuf {
    fixtures().join(format!("{name}.{part}.safetensors"))
}

#[track_caller]
fn assert_close(what: &str, got: &Tensor<f64>, want: &Tensor<f64>, tol: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shapes");
    let diff = got.max_abs_diff(want);
    assert!(diff <= tol, "{what}: max |difference| {diff:e} > {tol:e}");
}

const ICU_CASES: [&str; 3] = ["icu_seed", "icu_seed_varlen", "icu_wide_l3"];
const HYBRID_CASES: [&str; 2] = ["hybrid_bert", "hybrid_minilm"];
/// Each scoring example and the fixture cases it scores.
const SCORERS: [(&str, &[&str]); 2] = [("icu_mortality", &ICU_CASES), ("hybrid_clinical", &HYBRID_CASES)];

#[test]
fn both_scorers_reproduce_pytorch_with_and_without_lengths() {
    let dir = temp_dir("pytorch");
    for (example_name, cases) in SCORERS {
        for name in cases {
            let out = dir.join(format!("{name}.scores.safetensors"));
            let r = score(example_name, &case(name, "model"), &case(name, "cohort"), &out);
            assert!(r.ok, "{example_name} {name}: {}", r.stderr);
            let expected = case(name, "expected");
            assert_close(
                &format!("{name} prob"),
                &read(&out, "prob"),
                &read(&expected, "prob"),
                PROB_TOL,
            );
            assert_close(
                &format!("{name} logit"),
                &read(&out, "logit"),
                &read(&expected, "logit"),
                1e-4,
            );
        }
    }
}

#[test]
fn a_stay_stepped_hour_by_hour_scores_as_the_whole_stay() {
    let dir = temp_dir("replay");
    for name in ICU_CASES {
        let whole = dir.join(format!("{name}.whole.safetensors"));
        let stepped = dir.join(format!("{name}.stepped.safetensors"));
        let (model, cohort) = (case(name, "model"), case(name, "cohort"));
        assert!(score("icu_mortality", &model, &cohort, &whole).ok);
        let r = score("icu_monitor", &model, &cohort, &stepped);
        assert!(r.ok, "icu_monitor {name}: {}", r.stderr);
        assert_close(
            &format!("{name}: stepped vs whole"),
            &read(&stepped, "prob"),
            &read(&whole, "prob"),
            1e-6,
        );
        assert_close(
            &format!("{name}: stepped vs PyTorch"),
            &read(&stepped, "prob"),
            &read(&case(name, "expected"), "prob"),
            PROB_TOL,
        );
    }
}

#[test]
fn the_demos_run_without_files() {
    let r = run("icu_mortality", &["--patients", "16", "--device", "cpu"]);
    assert!(r.ok && r.stdout.contains("P(death)"), "{}{}", r.stdout, r.stderr);
    // The committed trained model ranks a cohort it never saw far above chance.
    let r = run("icu_mortality", &["--device", "cpu"]);
    let auroc: f64 = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("AUROC: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no AUROC in {}{}", r.stdout, r.stderr));
    assert!(auroc > 0.7, "{}", r.stdout);
    assert!(r.stdout.contains("calibration: predicted"), "{}", r.stdout);
    let r = run(
        "hybrid_clinical",
        &["--patients", "16", "--embed", "384", "--device", "cpu"],
    );
    assert!(
        r.ok && r.stdout.contains("mean P(death)"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    let r = run(
        "icu_monitor",
        &["--beds", "40", "--hours", "4", "--device", "cpu"],
    );
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        r.stdout.lines().filter(|l| l.trim_end().ends_with(" ms")).count(),
        4,
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("p50") && r.stdout.contains("p99"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_cohort_without_its_model_or_output_is_refused() {
    let dir = temp_dir("half_asked");
    let (input, out) = (case("icu_seed_varlen", "cohort"), dir.join("scores.safetensors"));
    for example in ["icu_mortality", "hybrid_clinical"] {
        let r = run(
            example,
            &[
                "--input",
                input.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
            ],
        );
        assert!(!r.ok, "{example} scored a cohort without a model");
        let line = r.stderr.trim_end();
        assert_eq!(line, format!("{example}: error: invalid configuration: --input needs --model: the model file gives the sizes the cohort must have"));
        // clap's own refusal: the demo must not run in place of the scoring.
        let r = run(example, &["--input", input.to_str().unwrap()]);
        assert!(!r.ok && r.stderr.contains("--output"), "{example}: {}", r.stderr);
        assert!(!out.exists(), "{example} wrote {}", out.display());
    }
}

fn write(path: &Path, tensors: Vec<(&str, OwnedTensor)>) {
    let named = tensors
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect::<Vec<_>>();
    tensor_file::write(path, &named, HashMap::new()).unwrap();
}

fn f32_tensor(shape: &[usize], value: f32) -> OwnedTensor {
    OwnedTensor::float(&Tensor::full(shape, value), StoredDtype::F32)
}

/// Runs the scorer on a bad file and checks for one line naming `needle`,
/// a failure, and no output.
#[track_caller]
fn refused(example_name: &str, model: &Path, input: &Path, dir: &Path, needle: &str) {
    let out = dir.join("scores.safetensors");
    let r = score(example_name, model, input, &out);
    assert!(!r.ok, "{example_name} accepted {}", input.display());
    let line = r.stderr.trim_end();
    assert_eq!(line.lines().count(), 1, "one line: {line}");
    assert!(line.starts_with(&format!("{example_name}: error: ")), "{line}");
    assert!(line.contains(needle), "expected {needle:?} in: {line}");
    assert!(!out.exists(), "an output was written for {}", input.display());
}

#[test]
fn bad_cohort_files_get_one_line_and_no_output() {
    let dir = temp_dir("bad-cohorts");
    let model = case("icu_seed", "model");
    let bad = dir.join("bad.safetensors");
    let lengths = |values: &[i64]| OwnedTensor::i64(vec![values.len()], values);
    let cases: Vec<(Vec<(&str, OwnedTensor)>, &str)> = vec![
        (vec![("lengths", lengths(&[3, 4]))], "vitals: missing"),
        (
            vec![("vitals", f32_tensor(&[2, 5, 7], 0.0))],
            "vitals: expected shape [B, T, 6]",
        ),
        (
            vec![("vitals", f32_tensor(&[2, 5], 0.0))],
            "vitals: expected shape [B, T, 6]",
        ),
        (
            vec![("vitals", OwnedTensor::i64(vec![1, 1, 6], &[0; 6]))],
            "vitals: dtype I64 is not a float type",
        ),
        (
            vec![
                ("vitals", f32_tensor(&[2, 5, 6], 0.0)),
                ("lengths", lengths(&[3, 6])),
            ],
            "lengths[1] = 6 is outside 1..=5",
        ),
        (
            vec![
                ("vitals", f32_tensor(&[2, 5, 6], 0.0)),
                ("lengths", lengths(&[0, 2])),
            ],
            "lengths[0] = 0 is outside 1..=5",
        ),
        (
            vec![
                ("vitals", f32_tensor(&[2, 5, 6], 0.0)),
                ("lengths", lengths(&[-1, 2])),
            ],
            "lengths[0] = -1",
        ),
        (
            vec![
                ("vitals", f32_tensor(&[2, 5, 6], 0.0)),
                ("lengths", lengths(&[3])),
            ],
            "lengths: expected shape [2]",
        ),
        (
            vec![
                ("vitals", f32_tensor(&[2, 5, 6], 0.0)),
                ("lenghts", lengths(&[3, 4])),
            ],
            "lenghts: is not a cohort tensor",
        ),
        (
            vec![
                ("vitals", f32_tensor(&[2, 5, 6], 0.0)),
                ("text_embed", f32_tensor(&[2, 768], 0.0)),
            ],
            "text_embed: is not a cohort tensor",
        ),
    ];
    for (tensors, needle) in cases {
        write(&bad, tensors);
        refused("icu_mortality", &model, &bad, &dir, needle);
    }
    // The hybrid model's note embeddings.
    let hybrid = case("hybrid_minilm", "model");
    write(&bad, vec![("vitals", f32_tensor(&[2, 5, 8], 0.0))]);
    refused("hybrid_clinical", &hybrid, &bad, &dir, "text_embed: missing");
    write(
        &bad,
        vec![
            ("vitals", f32_tensor(&[2, 5, 8], 0.0)),
            ("text_embed", f32_tensor(&[2, 768], 0.0)),
        ],
    );
    refused(
        "hybrid_clinical",
        &hybrid,
        &bad,
        &dir,
        "text_embed: expected shape [2, 384]",
    );
    write(
        &bad,
        vec![
            ("vitals", f32_tensor(&[2, 5, 8], 0.0)),
            ("text_embed", f32_tensor(&[3, 384], 0.0)),
        ],
    );
    refused(
        "hybrid_clinical",
        &hybrid,
        &bad,
        &dir,
        "text_embed: expected shape [2, 384]",
    );
    // Not a safetensors file at all.
    std::fs::write(&bad, b"hello").unwrap();
    refused(
        "icu_mortality",
        &model,
        &bad,
        &dir,
        "not a valid safetensors file",
    );
}

#[test]
fn a_head_that_does_not_fit_the_lstm_is_named() {
    let dir = temp_dir("bad-models");
    let file = TensorFile::open(case("icu_seed", "model")).unwrap();
    let cohort = case("icu_seed", "cohort");
    let tensors = |replace: &str, with: Option<Tensor<f32>>| -> Vec<(String, OwnedTensor)> {
        let mut out: Vec<(String, OwnedTensor)> = file
            .names()
            .unwrap()
            .into_iter()
            .filter(|n| n != replace)
            .map(|n| {
                let t = file.float::<f32>(&n).unwrap().unwrap();
                (n, OwnedTensor::float(&t, StoredDtype::F32))
            })
            .collect();
        if let Some(t) = with {
            out.push((replace.to_string(), OwnedTensor::float(&t, StoredDtype::F32)));
        }
        out
    };
    let bad = dir.join("model.safetensors");
    for (name, with, needle) in [
        (
            "head.1.weight",
            Some(Tensor::zeros([32, 48])),
            "head.1.weight: expected shape [32, 64]",
        ),
        (
            "head.3.weight",
            Some(Tensor::zeros([2, 32])),
            "head.3.bias: expected shape [2] (one per row of head.3.weight)",
        ),
        (
            "head.1.bias",
            Some(Tensor::zeros([31])),
            "head.1.bias: expected shape [32]",
        ),
        ("head.3.bias", None, "head.3.bias: missing"),
        ("lstm.weight_hh_l1", None, "lstm.weight_hh_l1: missing"),
    ] {
        tensor_file::write(&bad, &tensors(name, with), HashMap::new()).unwrap();
        refused("icu_mortality", &bad, &cohort, &dir, needle);
    }
}

#[test]
fn the_output_may_not_be_the_model_or_the_input() {
    let dir = temp_dir("overwrite");
    let model = dir.join("model.safetensors");
    let cohort = dir.join("cohort.safetensors");
    std::fs::copy(case("icu_seed", "model"), &model).unwrap();
    std::fs::copy(case("icu_seed", "cohort"), &cohort).unwrap();
    let before = std::fs::read(&model).unwrap();
    for target in [&model, &cohort] {
        let r = score("icu_mortality", &model, &cohort, target);
        assert!(!r.ok, "overwrote {}", target.display());
        assert!(r.stderr.contains("refusing to overwrite"), "{}", r.stderr);
    }
    assert_eq!(
        std::fs::read(&model).unwrap(),
        before,
        "the model file is untouched"
    );
}

/// Runs `example args` again and again, each run killed with SIGKILL at a
/// random moment of its work (between hours or in the middle of writing
/// the state file: each write waits 15 ms between its synced temporary and
/// the rename), until one run finishes. Between runs the state file, if
/// there is one yet, must load: never torn, never lost. Returns how many
/// runs were killed after resuming from a state file.
fn kill_until_done(name: &str, args: &[&str], state: &Path, lstm: &rnn_kernels::Weights<f32>) -> usize {
    let mut rng = rnn_kernels::rng::SplitMix64::new(0xC0FFEE ^ std::process::id() as u64);
    let start = || {
        Command::new(example(name))
            .args(args)
            .env("RNNK_TEST_WRITE_DELAY_MS", "15")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // How long a whole run takes, from scratch (then started over).
    let _ = std::fs::remove_file(state);
    let began = std::time::Instant::now();
    assert!(start().wait().unwrap().success());
    let whole_ms = began.elapsed().as_millis() as usize;
    std::fs::remove_file(state).unwrap();
    let mut resumed_and_killed = 0;
    for attempt in 0..200 {
        let resuming = state.exists();
        let mut child = start();
        let wait_ms = rng.int_inclusive(0, whole_ms / 3);
        std::thread::sleep(std::time::Duration::from_millis(wait_ms as u64));
        let killed = child.try_wait().unwrap().is_none();
        if killed {
            child.kill().unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{name} panicked: {stderr}");
        if state.exists() {
            rnn_kernels::State::<f32>::load(state, lstm)
                .unwrap_or_else(|e| panic!("after attempt {attempt}, the state file does not load: {e}"));
        }
        if killed && resuming {
            resumed_and_killed += 1;
        }
        if out.status.success() {
            return resumed_and_killed;
        }
        assert!(out.status.code().is_none(), "{name} failed by itself: {stderr}");
    }
    panic!("{name} never finished in 200 attempts");
}

fn icu_lstm(model: &Path) -> rnn_kernels::Weights<f32> {
    rnn_kernels::Weights::load(model, Some("lstm")).unwrap()
}

#[test]
fn the_monitor_killed_at_any_moment_resumes_with_nothing_lost() {
    let dir = temp_dir("kill");
    // The replay: its scores after any number of kills and restarts are
    // the bits of a run never killed.
    let name = "icu_seed_varlen";
    let (model, cohort) = (case(name, "model"), case(name, "cohort"));
    let straight = dir.join("straight.safetensors");
    assert!(score("icu_monitor", &model, &cohort, &straight).ok);
    let (resumed, state) = (dir.join("resumed.safetensors"), dir.join("replay.state"));
    let args = [
        "--model",
        model.to_str().unwrap(),
        "--input",
        cohort.to_str().unwrap(),
        "--output",
        resumed.to_str().unwrap(),
        "--device",
        "cpu",
        "--state",
        state.to_str().unwrap(),
    ];
    let restarts = kill_until_done("icu_monitor", &args, &state, &icu_lstm(&model));
    assert!(
        restarts >= 2,
        "{restarts} runs resumed and were killed: the test proves little"
    );
    for tensor in ["logit", "prob"] {
        assert_eq!(read(&resumed, tensor), read(&straight, tensor), "{tensor}");
    }
    // The simulated ward: its final state file (every bed's LSTM state,
    // stays and hours, the generator) is the bytes of a run never killed.
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/icu_model.safetensors");
    let ward = |state: &Path| {
        [
            "--model".to_string(),
            model.to_str().unwrap().to_string(),
            "--beds".into(),
            "300".into(),
            "--hours".into(),
            "40".into(),
            "--device".into(),
            "cpu".into(),
            "--state".into(),
            state.to_str().unwrap().to_string(),
        ]
    };
    let straight = dir.join("ward-straight.state");
    let args = ward(&straight);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(run("icu_monitor", &args).ok);
    let resumed = dir.join("ward-resumed.state");
    let args = ward(&resumed);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let restarts = kill_until_done("icu_monitor", &args, &resumed, &icu_lstm(&model));
    assert!(
        restarts >= 2,
        "{restarts} runs resumed and were killed: the test proves little"
    );
    assert!(std::fs::read(&resumed).unwrap() == std::fs::read(&straight).unwrap());
    // No killed write left its temporary behind (each start removes those
    // of processes gone).
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".rnnk-tmp-"))
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_state_file_of_another_ward_or_cohort_is_refused() {
    let dir = temp_dir("state-refused");
    let name = "icu_seed_varlen";
    let (model, cohort) = (case(name, "model"), case(name, "cohort"));
    let state = dir.join("ward.state");
    let ward = |beds: &str| {
        run(
            "icu_monitor",
            &[
                "--model",
                model.to_str().unwrap(),
                "--beds",
                beds,
                "--hours",
                "2",
                "--device",
                "cpu",
                "--state",
                state.to_str().unwrap(),
            ],
        )
    };
    assert!(ward("20").ok);
    let r = ward("21");
    assert!(
        !r.ok && r.stderr.contains("holds a ward of 20 beds, this one has 21"),
        "{}",
        r.stderr
    );
    // The ward's state is not a replay's.
    let out = dir.join("scores.safetensors");
    let r = run(
        "icu_monitor",
        &[
            "--model",
            model.to_str().unwrap(),
            "--input",
            cohort.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--device",
            "cpu",
            "--state",
            state.to_str().unwrap(),
        ],
    );
    assert!(!r.ok, "{}", r.stdout);
    assert!(!out.exists());
    // Another model's state (the same sizes, other weights).
    let other = common::fixtures_dir().join("icu_model.safetensors");
    let r = run(
        "icu_monitor",
        &[
            "--model",
            other.to_str().unwrap(),
            "--beds",
            "20",
            "--hours",
            "2",
            "--device",
            "cpu",
            "--state",
            state.to_str().unwrap(),
        ],
    );
    assert!(!r.ok && r.stderr.contains("holds the state of"), "{}", r.stderr);
    // The state file may not be the model.
    let r = run(
        "icu_monitor",
        &[
            "--model",
            model.to_str().unwrap(),
            "--beds",
            "20",
            "--device",
            "cpu",
            "--state",
            model.to_str().unwrap(),
        ],
    );
    assert!(!r.ok, "{}", r.stdout);
}

/// `--precision int8|f16` on every clinical fixture: no decision at 0.5
/// differs from PyTorch's f32 model (≥ 99% of them may not), and the
/// probabilities stay close (int8 within 2e-2, f16 within 2e-3; the test
/// prints the largest change of each).
#[test]
fn reduced_precision_scores_keep_the_decisions_of_f32() {
    let dir = temp_dir("precision");
    for (example_name, cases) in SCORERS {
        for name in cases {
            let want = read(&case(name, "expected"), "prob");
            for (precision, bound) in [("int8", 2e-2), ("f16", 2e-3)] {
                let out = dir.join(format!("{name}.{precision}.safetensors"));
                let (model, cohort) = (case(name, "model"), case(name, "cohort"));
                let r = score_with(example_name, &model, &cohort, &out, &["--precision", precision]);
                assert!(r.ok, "{example_name} {name} {precision}: {}", r.stderr);
                assert!(
                    r.stdout.contains(&format!("CPU, {precision}")),
                    "{name}: the backend line names the format: {}",
                    r.stdout
                );
                let got = read(&out, "prob");
                let same = got
                    .data()
                    .iter()
                    .zip(want.data())
                    .filter(|(g, w)| (**g >= 0.5) == (**w >= 0.5))
                    .count();
                let change = got.max_abs_diff(&want);
                eprintln!(
                    "{name} {precision}: {same}/{} decisions as f32's, largest probability change {change:.2e}",
                    want.len()
                );
                assert!(
                    same as f64 >= 0.99 * want.len() as f64,
                    "{name} {precision}: {same} decisions kept"
                );
                assert!(
                    change <= bound,
                    "{name} {precision}: probability moved by {change:e} > {bound:e}"
                );
            }
        }
    }
}
