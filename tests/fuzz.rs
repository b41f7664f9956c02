//! No input may panic: the public API's corner cases, and a mutation fuzzer
//! over what a user's files and arguments reach — safetensors loading, the
//! configuration inferred from names, shapes and metadata, and the
//! forward / step / backward argument checks of the reference and the fast
//! CPU path.
//!
//! The fuzzer mutates the committed fixtures (bit flips, truncations,
//! insertions, and edits of the JSON header: shapes, dtypes, offsets,
//! duplicated and removed entries, metadata values) and calls everything on
//! each mutant with random, often wrong, argument shapes. It runs for
//! `RNN_FUZZ_SECS` seconds (default 3; CI gives it 60) from `RNN_FUZZ_SEED`
//! (default: the clock, printed), and saves any input that panics under
//! `target/fuzz-failures/`.

mod common;

use rnn_kernels::cpu::CpuRnn;
use rnn_kernels::rng::SplitMix64;
use rnn_kernels::{reference, ForwardInput, GradOutputs, RnnConfig, State, Tensor, TensorFile, Weights};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[test]
fn public_api_corner_cases_return_errors() {
    // A shape whose element count overflows.
    assert!(Tensor::<f32>::new([usize::MAX, 2], vec![]).is_err());
    assert!(Tensor::<f32>::try_zeros([1 << 40, 1 << 40]).is_err());
    // Fewer than two axes to swap.
    assert!(Tensor::<f32>::zeros([3]).swap_leading_axes().is_err());
    // A layer or direction the network does not have.
    let weights = Weights::<f32>::random(RnnConfig::lstm(2, 3), 0).unwrap();
    assert!(weights.layer(0, 0).is_ok());
    assert!(weights.layer(1, 0).is_err() && weights.layer(0, 1).is_err());
    // Bounds in either order.
    let mut rng = SplitMix64::new(1);
    for _ in 0..100 {
        let x = rng.uniform(5.0, 1.0);
        assert!((1.0..5.0).contains(&x));
        let n = rng.int_inclusive(9, 3);
        assert!((3..=9).contains(&n));
    }
    let _ = rng.int_inclusive(0, usize::MAX);
    // A stream the state does not have.
    let mut state = State::<f32>::zeros(weights.config(), 2);
    assert!(state.reset_rows(&[1]).is_ok());
    assert!(state.reset_rows(&[2]).is_err());
    state.h = Tensor::zeros([2]);
    assert!(state.reset_rows(&[0]).is_err());
}

fn fixture_files() -> Vec<PathBuf> {
    let root = common::fixtures_dir();
    let mut files: Vec<PathBuf> = [root.clone(), root.join("clinical")]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    files
}

/// The JSON header of a safetensors file, and what follows it.
fn split(bytes: &[u8]) -> Option<(serde_json::Value, &[u8])> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = serde_json::from_slice(bytes.get(8..8 + n)?).ok()?;
    Some((header, &bytes[8 + n..]))
}

fn join(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// One mutant of `bytes`.
fn mutate(bytes: &[u8], rng: &mut SplitMix64) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if out.is_empty() {
        return out;
    }
    match rng.int_inclusive(0, 9) {
        0 => {
            for _ in 0..rng.int_inclusive(1, 8) {
                let i = rng.int_inclusive(0, out.len() - 1);
                out[i] ^= 1 << rng.int_inclusive(0, 7);
            }
        }
        1 => out.truncate(rng.int_inclusive(0, out.len())),
        2 => {
            let i = rng.int_inclusive(0, out.len());
            let junk: Vec<u8> = (0..rng.int_inclusive(1, 16))
                .map(|_| rng.next_u64() as u8)
                .collect();
            out.splice(i..i, junk);
        }
        3 => {
            let i = rng.int_inclusive(0, out.len() - 1);
            let j = rng.int_inclusive(i, out.len());
            out.drain(i..j.min(i + 64));
        }
        _ => {
            if let Some((mut header, data)) = split(bytes) {
                edit_header(&mut header, rng);
                let text = header.to_string();
                let text = match (text.find('{'), text.find("},\"")) {
                    // A tensor listed twice.
                    (Some(open), Some(k)) if rng.next_f64() < 0.1 => {
                        format!("{}}},{}", &text[..k], &text[open + 1..])
                    }
                    _ => text,
                };
                out = join(&text, data);
            }
        }
    }
    out
}

/// Edits one entry of a header: a shape, a dtype, offsets, metadata, or drops it.
fn edit_header(header: &mut serde_json::Value, rng: &mut SplitMix64) {
    use serde_json::{json, Value};
    let Some(map) = header.as_object_mut() else { return };
    let keys: Vec<String> = map.keys().cloned().collect();
    if keys.is_empty() {
        return;
    }
    let key = &keys[rng.int_inclusive(0, keys.len() - 1)];
    if key == "__metadata__" || rng.next_f64() < 0.15 {
        let metadata = map.entry("__metadata__").or_insert_with(|| json!({}));
        let entries = [
            ("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu", "transformer", ""]),
            ("batch_first", ["true", "false", "True", "0", "maybe", ""]),
            ("gru_linear_before_reset", ["true", "false", "1", "no", "", "x"]),
            ("num_layers", ["0", "1", "2", "3", "-1", "999999999999999999999"]),
            ("hidden_size", ["0", "1", "5", "64", "1e3", ""]),
            ("proj_size", ["0", "1", "2", "100", "-3", ""]),
            ("dropout", ["0", "0.5", "1", "2", "nan", "-0.1"]),
            ("bidirectional", ["true", "false", "", "2", "yes", "False"]),
        ];
        let (name, values) = entries[rng.int_inclusive(0, entries.len() - 1)];
        metadata[name] = json!(values[rng.int_inclusive(0, values.len() - 1)]);
        return;
    }
    if rng.next_f64() < 0.1 {
        map.remove(key);
        return;
    }
    let Some(info) = map.get_mut(key).and_then(Value::as_object_mut) else {
        return;
    };
    match rng.int_inclusive(0, 3) {
        0 => {
            let dtypes = [
                "F32", "F64", "F16", "BF16", "I64", "I32", "U8", "BOOL", "F8_E4M3", "X",
            ];
            info.insert(
                "dtype".into(),
                json!(dtypes[rng.int_inclusive(0, dtypes.len() - 1)]),
            );
        }
        1 => {
            let mut shape: Vec<u64> = info
                .get("shape")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            match rng.int_inclusive(0, 4) {
                0 if !shape.is_empty() => {
                    let i = rng.int_inclusive(0, shape.len() - 1);
                    shape[i] = [0, 1, u32::MAX as u64, u64::MAX / 3, shape[i] + 1][rng.int_inclusive(0, 4)];
                }
                1 => shape.push(rng.int_inclusive(0, 3) as u64),
                2 => {
                    shape.pop();
                }
                3 => shape.reverse(),
                _ => shape = vec![],
            }
            info.insert("shape".into(), json!(shape));
        }
        2 => {
            let offsets = [
                json!([0, 0]),
                json!([4, 0]),
                json!([0, u64::MAX]),
                json!([1, 5]),
                json!("x"),
            ];
            info.insert(
                "data_offsets".into(),
                offsets[rng.int_inclusive(0, offsets.len() - 1)].clone(),
            );
        }
        _ => {
            let renamed = [
                key.replace("_l0", "_l7"),
                key.replace("weight", "bias"),
                format!("{key}_reverse"),
            ];
            let value = map.remove(key).unwrap();
            map.insert(renamed[rng.int_inclusive(0, 2)].clone(), value);
        }
    }
}

/// A tensor of `shape` (one dimension perturbed, sometimes), small values.
fn tensor(shape: Vec<usize>, rng: &mut SplitMix64, perturb: bool) -> Tensor<f32> {
    let mut shape = shape;
    if perturb && !shape.is_empty() && rng.next_f64() < 0.3 {
        let i = rng.int_inclusive(0, shape.len() - 1);
        shape[i] = rng.int_inclusive(0, shape[i] + 2);
    }
    let count: usize = shape.iter().product();
    Tensor::new(shape, (0..count).map(|_| rng.uniform(-2.0, 2.0) as f32).collect()).unwrap()
}

/// How far the mutants got: parsed, loaded as weights, through a forward.
static REACHED: [std::sync::atomic::AtomicU64; 3] = [const { std::sync::atomic::AtomicU64::new(0) }; 3];

fn reached(stage: usize) {
    REACHED[stage].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Everything a user's file and arguments reach, on one (mutated) file.
fn exercise(bytes: Vec<u8>, rng: &mut SplitMix64) {
    let Ok(file) = TensorFile::from_bytes("fuzzed.safetensors", bytes) else {
        return;
    };
    reached(0);
    let names = file.names().unwrap_or_default();
    let _ = file.metadata();
    for name in &names {
        let _ = (file.shape(name), file.stored_dtype(name), file.integer(name));
        let _ = (file.float::<f32>(name), file.float::<f64>(name));
    }
    for prefix in [None, Some("rnn"), Some("lstm"), Some("nope")] {
        let Ok(weights) = Weights::<f32>::from_tensor_file(&file, prefix) else {
            continue;
        };
        reached(1);
        run_calls(&weights, rng);
    }
}

/// Forward, step and backward on `weights` with random, often wrong, arguments.
fn run_calls(weights: &Weights<f32>, rng: &mut SplitMix64) {
    let config = weights.config().clone();
    if config.input_size > 4096 || config.hidden_size > 4096 {
        return; // a valid but huge model: nothing new to learn, much to allocate
    }
    let (t, b) = (rng.int_inclusive(1, 3), rng.int_inclusive(1, 3));
    let batch_shape = if config.batch_first { [b, t] } else { [t, b] };
    let input = tensor(vec![batch_shape[0], batch_shape[1], config.input_size], rng, true);
    let lengths: Vec<usize> = (0..rng.int_inclusive(b.saturating_sub(1), b + 1))
        .map(|_| rng.int_inclusive(0, t + 1))
        .collect();
    let state = State::<f32>::zeros(&config, b);
    let h0 = tensor(state.h.shape().to_vec(), rng, true);
    let c0 = state.c.as_ref().map(|c| tensor(c.shape().to_vec(), rng, true));
    let args = ForwardInput {
        input: &input,
        lengths: (rng.next_f64() < 0.5).then_some(&lengths[..]),
        h0: (rng.next_f64() < 0.5).then_some(&h0),
        c0: if rng.next_f64() < 0.5 { c0.as_ref() } else { None },
    };
    let Ok(mut model) = CpuRnn::with_threads(weights, rng.int_inclusive(1, 2)) else {
        return;
    };
    let slow = reference::forward(weights, &args);
    let fast = model.forward(&args);
    assert_eq!(slow.is_ok(), fast.is_ok(), "the paths agree on what they accept");
    if fast.is_ok() {
        reached(2);
    }
    let mut step_state = state.clone();
    let x = tensor(vec![b, config.input_size], rng, true);
    let _ = (
        model.step(&x, &mut step_state),
        reference::step(weights, &x, &mut state.clone()),
    );
    let Ok((out, reserve)) = model.forward_train(&args, Some(rng.next_u64())) else {
        return;
    };
    let grad = tensor(out.output.shape().to_vec(), rng, true);
    let grad_h = tensor(out.h_n.shape().to_vec(), rng, true);
    let grads = GradOutputs {
        output: &grad,
        h_n: (rng.next_f64() < 0.5).then_some(&grad_h),
        c_n: None,
    };
    let _ = model.backward(&args, &reserve, &grads);
    if let Ok((_, reserve64)) = reference::forward_train(weights, &args, None) {
        let _ = reference::backward(weights, &args, &reserve64, &grads);
    }
}

#[test]
fn no_mutated_file_or_argument_panics() {
    let secs: u64 = std::env::var("RNN_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("RNN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(11, |d| d.as_nanos() as u64)
        });
    eprintln!("fuzzing for {secs} s from seed {seed} (rerun with RNN_FUZZ_SEED={seed})");
    let corpus: Vec<Vec<u8>> = fixture_files()
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let mut rng = SplitMix64::new(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut runs, mut failures) = (0u64, Vec::new());
    // The default hook would print every caught panic's backtrace.
    let hook = std::panic::take_hook();
    if std::env::var_os("RNN_FUZZ_LOUD").is_none() {
        std::panic::set_hook(Box::new(|_| {}));
    }
    while Instant::now() < deadline {
        let base = &corpus[rng.int_inclusive(0, corpus.len() - 1)];
        let case_seed = rng.next_u64();
        let mut bytes = Vec::new();
        // The mutation is inside too: a panic of the harness itself is reported, not lost.
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut case_rng = SplitMix64::new(case_seed);
            bytes = mutate(base, &mut case_rng);
            if case_rng.next_f64() < 0.3 {
                bytes = mutate(&bytes, &mut case_rng);
            }
            exercise(bytes.clone(), &mut case_rng)
        }));
        if let Err(panic) = result {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{seed}-{runs}.safetensors"));
            std::fs::write(&path, &bytes).unwrap();
            failures.push(format!("{} (case seed {case_seed}): {message}", path.display()));
        }
        runs += 1;
    }
    std::panic::set_hook(hook);
    let [parsed, loaded, ran] = REACHED
        .each_ref()
        .map(|r| r.load(std::sync::atomic::Ordering::Relaxed));
    eprintln!(
        "{runs} mutants: {parsed} parsed, {loaded} loaded as weights, {ran} through a forward; {} panics",
        failures.len()
    );
    assert!(failures.is_empty(), "panics:\n{}", failures.join("\n"));
}
