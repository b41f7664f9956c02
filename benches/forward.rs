//! Latency over the shapes of `../shared/gpu/shapes.json`, in the modes of
//! that file: `infer` (forward only) and `train` (the forward that keeps
//! what backward needs, then backward for input, initial state and weights).
//!
//! Variants: `rnn_kernels` (the CUDA path, when there is a GPU: each call
//! timed between CUDA events with a sync, as `torch_anchor.py` times
//! cuDNN); `cpu_1t`, `cpu_2t` (the fast CPU path, `cpu::CpuRnn`, on every
//! shape, with 1 and 2 threads — `RNN_BENCH_THREADS=1,2,4` for others — as
//! `../shared/bench/cpu_anchor.py` times PyTorch and ONNX Runtime);
//! `cpu_int8_1t`, `cpu_f16_2t`, … (inference in int8 and f16, dtype `int8`
//! / `f16` in the records; `RNN_BENCH_PRECISIONS=f32,int8` to choose, as
//! `../shared/bench/quant_anchor.py` times the anchors' quantized LSTMs); and
//! `cpu_reference` (the reference, on shapes small enough to time in
//! seconds). Each timed sample is kept, and when `BENCH_JSON_DIR` is set the
//! medians are written to `$BENCH_JSON_DIR/rnn_kernels.json` as records
//! `{shape, mode, dtype, variant, median_us, p10_us, p90_us, reps}`, the
//! format the anchors write, so the two line up; `info` adds the CPU, the
//! instruction set and the machine's SGEMM rate (the `gemm` crate, 1024³) at
//! each thread count.
//!
//! On a GPU, each whole-sequence shape without varying lengths also gets
//! the records `infer_per_step` and `infer_fixed`: its forward's time split
//! into a cost per step and a fixed cost, from calls at T and 2T.
//!
//! `RNN_BENCH_SHAPES=icu,stream_b1` runs only the shapes it names.
//!
//! `RNN_BENCH_BLOCKING=K,R` forces the forward recurrence's blocking (K
//! lanes per dot product, R batch rows per thread) instead of the planner's,
//! to measure one against the other; its records are the variant
//! `rnn_kernels_blocking_KxR`.

mod common;

use common::{load_shapes, percentile, random, shape_input, Shape};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaSlice;
use rnn_kernels::cpu::CpuRnn;
use rnn_kernels::cuda::launch::Blocking;
use rnn_kernels::cuda::{CudaDevice, CudaRnn, DeviceGradOutputs, DeviceGradients, DeviceInput, DeviceOutput};
use rnn_kernels::rng::SplitMix64;
use rnn_kernels::GradOutputs;
use rnn_kernels::{reference, ForwardInput, Precision, State, Tensor, Weights};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One benchmark's per-call times (µs), for the JSON summary.
struct Samples {
    shape: String,
    mode: &'static str,
    dtype: &'static str,
    variant: &'static str,
    per_call_us: Vec<f64>,
}

static SAMPLES: Mutex<Vec<Samples>> = Mutex::new(Vec::new());

/// Criterion's samples per benchmark: each one a batch of calls.
const SAMPLES_PER_BENCH: usize = 10;

/// Times `call` (which returns how long one call took) through criterion,
/// and keeps each sample's per-call time.
fn bench(
    c: &mut Criterion,
    shape: &Shape,
    mode: &'static str,
    variant: &'static str,
    call: impl FnMut() -> Duration,
) {
    bench_dtype(c, shape, mode, "f32", variant, call)
}

/// [`bench`], recording the weights' format as the record's dtype.
fn bench_dtype(
    c: &mut Criterion,
    shape: &Shape,
    mode: &'static str,
    dtype: &'static str,
    variant: &'static str,
    mut call: impl FnMut() -> Duration,
) {
    let mut group = c.benchmark_group(&shape.name);
    group.throughput(Throughput::Elements(shape.flops()));
    group
        .sample_size(SAMPLES_PER_BENCH)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let mut per_iter_us = Vec::new();
    group.bench_function(format!("{variant}/{mode}"), |b| {
        b.iter_custom(|iters| {
            let elapsed: Duration = (0..iters).map(|_| call()).sum();
            per_iter_us.push(elapsed.as_secs_f64() * 1e6 / iters as f64);
            elapsed
        })
    });
    group.finish();
    // Criterion calls the routine during warm-up too: the measured samples are the last ones.
    let measured = per_iter_us.split_off(per_iter_us.len().saturating_sub(SAMPLES_PER_BENCH));
    SAMPLES.lock().unwrap().push(Samples {
        shape: shape.name.clone(),
        mode,
        dtype,
        variant,
        per_call_us: measured,
    });
}

/// The reference is timed where one call takes well under a second.
const REFERENCE_MAX_FLOPS: u64 = 600_000_000;

/// Thread counts for the fast CPU path: `RNN_BENCH_THREADS` (default 1,2).
fn cpu_thread_counts() -> Vec<usize> {
    let spec = std::env::var("RNN_BENCH_THREADS").unwrap_or_else(|_| "1,2".into());
    spec.split(',')
        .map(|n| {
            n.trim()
                .parse()
                .unwrap_or_else(|_| panic!("RNN_BENCH_THREADS={spec}: expected N,N,..."))
        })
        .collect()
}

/// `cpu_{n}t`, as the anchors name their variants.
fn threads_variant(threads: usize) -> &'static str {
    Box::leak(format!("cpu_{threads}t").into_boxed_str())
}

/// The formats inference is timed in: `RNN_BENCH_PRECISIONS` (default f32,int8,f16).
fn cpu_precisions() -> Vec<Precision> {
    let spec = std::env::var("RNN_BENCH_PRECISIONS").unwrap_or_else(|_| "f32,int8,f16".into());
    spec.split(',')
        .map(|p| {
            p.trim()
                .parse()
                .unwrap_or_else(|e| panic!("RNN_BENCH_PRECISIONS={spec}: {e}"))
        })
        .collect()
}

/// `cpu_{n}t` for f32, `cpu_int8_{n}t` and `cpu_f16_{n}t` for the others.
fn precision_variant(precision: Precision, threads: usize) -> &'static str {
    match precision {
        Precision::F32 => threads_variant(threads),
        _ => Box::leak(format!("cpu_{precision}_{threads}t").into_boxed_str()),
    }
}

/// Inference: the fast path on every shape (one step on step shapes, the
/// state carried), the reference on the small ones.
fn cpu_forward(c: &mut Criterion) {
    for shape in load_shapes() {
        let cfg = &shape.config;
        let weights = Weights::<f32>::random(cfg.clone(), 1).unwrap();
        let input = shape_input(&shape, 2);
        let args = ForwardInput {
            input: &input,
            lengths: shape.lengths.as_deref(),
            h0: None,
            c0: None,
        };
        let x = Tensor::new(
            [shape.batch, cfg.input_size],
            input.data()[..shape.batch * cfg.input_size].to_vec(),
        )
        .unwrap();
        for (precision, threads) in cpu_precisions()
            .into_iter()
            .flat_map(|p| cpu_thread_counts().into_iter().map(move |t| (p, t)))
        {
            let mut model = CpuRnn::with_precision(&weights, threads, precision).unwrap();
            let (dtype, variant) = (precision.name(), precision_variant(precision, threads));
            if shape.step {
                let mut state = State::zeros(cfg, shape.batch);
                let mut h = Tensor::zeros([shape.batch, cfg.output_size()]);
                bench_dtype(c, &shape, "infer", dtype, variant, || {
                    let start = Instant::now();
                    model.step_into(&x, &mut state, &mut h).unwrap();
                    start.elapsed()
                });
            } else {
                let mut out = model.forward(&args).unwrap();
                bench_dtype(c, &shape, "infer", dtype, variant, || {
                    let start = Instant::now();
                    model.forward_into(&args, &mut out).unwrap();
                    start.elapsed()
                });
            }
        }
        if shape.flops() > REFERENCE_MAX_FLOPS {
            continue;
        }
        if shape.step {
            let mut state = State::zeros(cfg, shape.batch);
            bench(c, &shape, "infer", "cpu_reference", || {
                let start = Instant::now();
                reference::step(&weights, &x, &mut state).unwrap();
                start.elapsed()
            });
        } else {
            bench(c, &shape, "infer", "cpu_reference", || {
                let start = Instant::now();
                reference::forward(&weights, &args).unwrap();
                start.elapsed()
            });
        }
    }
}

/// Training (the forward that keeps what backward needs, then backward for
/// input, initial state and every weight, with `output.sum()`'s gradient,
/// as the anchors' train mode does): the fast path on every shape, the
/// reference on the small ones.
fn cpu_train(c: &mut Criterion) {
    for shape in load_shapes().into_iter().filter(|s| !s.step) {
        let cfg = &shape.config;
        let weights = Weights::<f32>::random(cfg.clone(), 1).unwrap();
        let input = shape_input(&shape, 3);
        let args = ForwardInput {
            input: &input,
            lengths: shape.lengths.as_deref(),
            h0: None,
            c0: None,
        };
        let ones = Tensor::full([shape.seq_len, shape.batch, cfg.output_width()], 1.0f32);
        let grads = GradOutputs {
            output: &ones,
            h_n: None,
            c_n: None,
        };
        for threads in cpu_thread_counts() {
            // As a training loop runs it: the outputs and the reserve are
            // allocated once and reused.
            let mut model = CpuRnn::with_threads(&weights, threads).unwrap();
            let (mut out, mut reserve) = model.forward_train(&args, None).unwrap();
            bench(c, &shape, "train", threads_variant(threads), || {
                let start = Instant::now();
                model
                    .forward_train_into(&args, &mut out, &mut reserve, None)
                    .unwrap();
                model.backward(&args, &reserve, &grads).unwrap();
                start.elapsed()
            });
        }
        if 3 * shape.flops() > REFERENCE_MAX_FLOPS {
            continue;
        }
        bench(c, &shape, "train", "cpu_reference", || {
            let start = Instant::now();
            let (_, reserve) = reference::forward_train(&weights, &args, None).unwrap();
            reference::backward(&weights, &args, &reserve, &grads).unwrap();
            start.elapsed()
        });
    }
}

/// The machine's SGEMM rate (GFLOP/s) with `threads` threads: the best of a
/// few 1024³ products by the `gemm` crate, each thread a block of rows.
fn sgemm_gflops(threads: usize) -> f64 {
    let n = 1024;
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut dst = vec![0.0f32; n * n];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        std::thread::scope(|scope| {
            for (i, block) in dst.chunks_mut(n * n.div_ceil(threads)).enumerate() {
                let a = &a[i * n * n.div_ceil(threads)..];
                let b = &b;
                scope.spawn(move || {
                    let m = block.len() / n;
                    // SAFETY: block is m × n, a holds m × n rows from here, b is n × n.
                    unsafe {
                        gemm::gemm(
                            m,
                            n,
                            n,
                            block.as_mut_ptr(),
                            1,
                            n as isize,
                            false,
                            a.as_ptr(),
                            1,
                            n as isize,
                            b.as_ptr(),
                            1,
                            n as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                });
            }
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / best / 1e9
}

/// What the records ran on.
fn machine_info() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|text| {
        text.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, name)| name.trim().to_string())
    });
    let sgemm: serde_json::Map<String, Value> = cpu_thread_counts()
        .into_iter()
        .map(|t| (format!("{t}t"), json!((sgemm_gflops(t) * 10.0).round() / 10.0)))
        .collect();
    json!({
        "device": "cpu",
        "cpu": cpu,
        "cpu_count": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "isa": rnn_kernels::cpu::Isa::detect().name(),
        "sgemm_gflops": sgemm,
        "commit": std::env::var("RNN_BENCH_COMMIT").ok(),
    })
}

/// The GPU variant's name, and the blocking `RNN_BENCH_BLOCKING` forces.
fn gpu_variant() -> (&'static str, Option<Blocking>) {
    let Ok(spec) = std::env::var("RNN_BENCH_BLOCKING") else {
        return ("rnn_kernels", None);
    };
    let parse = |part: Option<&str>| part.and_then(|v| v.trim().parse::<usize>().ok());
    let mut parts = spec.split(',');
    let (Some(k_lanes), Some(rows_per_thread)) = (parse(parts.next()), parse(parts.next())) else {
        panic!("RNN_BENCH_BLOCKING={spec}: expected K,R (lanes per product, rows per thread)");
    };
    let name = format!("rnn_kernels_blocking_{k_lanes}x{rows_per_thread}");
    let blocking = Blocking {
        k_lanes,
        rows_per_thread,
    };
    (Box::leak(name.into_boxed_str()), Some(blocking))
}

/// GPU 0; without one the GPU variants are skipped, saying so, unless
/// `RNN_REQUIRE_GPU=1` (as CI sets on the driver stand-in) makes it an error.
fn gpu_device() -> Option<std::sync::Arc<CudaDevice>> {
    match CudaDevice::new(0) {
        Ok(device) => Some(device),
        Err(e) if std::env::var("RNN_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("RNN_REQUIRE_GPU=1 but no usable GPU: {e}")
        }
        Err(e) => {
            eprintln!("GPU benches skipped: {e}");
            None
        }
    }
}

/// The CUDA path on every shape, through the device API (no copies).
fn gpu_forward(c: &mut Criterion) {
    let Some(device) = gpu_device() else { return };
    eprintln!("GPU: {} ({:?})", device.name(), device.limits());
    let (variant, blocking) = gpu_variant();
    for shape in load_shapes() {
        let cfg = shape.config.clone();
        let weights = Weights::<f32>::random(cfg.clone(), 1).unwrap();
        let mut model = CudaRnn::new(&device, &weights).unwrap();
        model.set_blocking(blocking);
        let stream = model.stream().clone();
        match model.plan(shape.batch) {
            Ok(plan) => eprintln!("{}: {plan:?}", shape.name),
            Err(e) => {
                eprintln!("{}: skipped: {e}", shape.name);
                continue;
            }
        }
        let mut rng = SplitMix64::new(2);
        let (t, b) = (shape.seq_len, shape.batch);
        let input = stream
            .clone_htod(&random(&mut rng, t * b * cfg.input_size))
            .unwrap();
        let lengths: Option<CudaSlice<i32>> = shape.lengths.as_ref().map(|l| {
            stream
                .clone_htod(&l.iter().map(|&v| v as i32).collect::<Vec<_>>())
                .unwrap()
        });
        let zeros = |n: usize| stream.alloc_zeros::<f32>(n).unwrap();
        let mut output = zeros(t * b * cfg.output_width());
        let mut h = zeros(cfg.num_states() * b * cfg.output_size());
        let mut c_state = cfg
            .has_cell_state()
            .then(|| zeros(cfg.num_states() * b * cfg.hidden_size));
        let h0 = zeros(h.len());
        let c0 = c_state.as_ref().map(|c| zeros(c.len()));
        let context = device.context().clone();
        let event = || context.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).unwrap();
        let (start, end) = (event(), event());
        let timed = |run: &mut dyn FnMut()| {
            start.record(&stream).unwrap();
            run();
            end.record(&stream).unwrap();
            end.synchronize().unwrap();
            Duration::from_secs_f64(f64::from(start.elapsed_ms(&end).unwrap()) / 1e3)
        };
        if shape.step {
            bench(c, &shape, "infer", variant, || {
                timed(&mut || {
                    model
                        .step_device(&input, b, &mut h, c_state.as_mut(), &mut output)
                        .unwrap()
                })
            });
        } else {
            bench(c, &shape, "infer", variant, || {
                timed(&mut || {
                    let args = DeviceInput {
                        input: &input,
                        seq_len: t,
                        batch: b,
                        lengths: lengths.as_ref(),
                        h0: Some(&h0),
                        c0: c0.as_ref(),
                    };
                    let mut out = DeviceOutput {
                        output: &mut output,
                        h_n: &mut h,
                        c_n: c_state.as_mut(),
                    };
                    model.forward_device(&args, &mut out).unwrap()
                })
            });
            if shape.lengths.is_none() {
                gpu_step_and_fixed_costs(&mut model, &shape, variant);
            }
        }
    }
}

/// How a forward's time splits into a cost per step (the recurrence's
/// products, gate math and barriers) and a fixed cost (launches, the weight
/// fill, the input projection's ramp): the forward timed at T and at 2T,
/// call after call; per step = (t(2T) − t(T)) / T, fixed = t(T) − T · per
/// step. Records with modes `infer_per_step` and `infer_fixed`; under
/// `cargo test` (no `--bench`: CI, on the driver stand-in) one pair of
/// calls as a smoke test, on the shorter shapes only.
fn gpu_step_and_fixed_costs(model: &mut CudaRnn, shape: &Shape, variant: &'static str) {
    let cfg = model.config().clone();
    let (t, b) = (shape.seq_len, shape.batch);
    let benching = std::env::args().any(|a| a == "--bench");
    if !benching && t > 100 {
        return;
    }
    let stream = model.stream().clone();
    let mut rng = SplitMix64::new(5);
    let zeros = |n: usize| stream.alloc_zeros::<f32>(n).unwrap();
    let buffers = |seq_len: usize, rng: &mut SplitMix64| {
        let input = stream
            .clone_htod(&random(rng, seq_len * b * cfg.input_size))
            .unwrap();
        (input, zeros(seq_len * b * cfg.output_width()))
    };
    let (mut short, mut long) = (buffers(t, &mut rng), buffers(2 * t, &mut rng));
    let mut h_n = zeros(cfg.num_states() * b * cfg.output_size());
    let mut c_n = cfg
        .has_cell_state()
        .then(|| zeros(cfg.num_states() * b * cfg.hidden_size));
    let context = model.device().context().clone();
    let event = || context.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).unwrap();
    let (start, end) = (event(), event());
    let mut time_us = |seq_len: usize, (input, output): &mut (CudaSlice<f32>, CudaSlice<f32>)| {
        start.record(&stream).unwrap();
        let args = DeviceInput {
            input,
            seq_len,
            batch: b,
            lengths: None,
            h0: None,
            c0: None,
        };
        let mut out = DeviceOutput {
            output,
            h_n: &mut h_n,
            c_n: c_n.as_mut(),
        };
        model.forward_device(&args, &mut out).unwrap();
        end.record(&stream).unwrap();
        end.synchronize().unwrap();
        f64::from(start.elapsed_ms(&end).unwrap()) * 1e3
    };
    // The first calls size the workspace.
    time_us(t, &mut short);
    time_us(2 * t, &mut long);
    let reps = if benching { 31 } else { 1 };
    let (mut per_step, mut fixed) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let (one, two) = (time_us(t, &mut short), time_us(2 * t, &mut long));
        let step = (two - one) / t as f64;
        per_step.push(step);
        fixed.push(one - step * t as f64);
    }
    let median = |v: &[f64]| {
        let mut sorted = v.to_vec();
        sorted.sort_by(f64::total_cmp);
        percentile(&sorted, 0.5)
    };
    eprintln!(
        "{}: {:.3} µs a step, {:.1} µs fixed (T = {t} and {})",
        shape.name,
        median(&per_step),
        median(&fixed),
        2 * t
    );
    let mut samples = SAMPLES.lock().unwrap();
    for (mode, per_call_us) in [("infer_per_step", per_step), ("infer_fixed", fixed)] {
        samples.push(Samples {
            shape: shape.name.clone(),
            mode,
            dtype: "f32",
            variant,
            per_call_us,
        });
    }
}

/// Training on the GPU through the device API: the forward that keeps the
/// reserve, then backward for input, initial state and every weight, with
/// `output.sum()`'s gradient, as torch_anchor.py's train mode does.
fn gpu_train(c: &mut Criterion) {
    let Some(device) = gpu_device() else { return };
    let (variant, blocking) = gpu_variant();
    for shape in load_shapes().into_iter().filter(|s| !s.step) {
        let cfg = shape.config.clone();
        let weights = Weights::<f32>::random(cfg.clone(), 1).unwrap();
        let mut model = CudaRnn::new(&device, &weights).unwrap();
        model.set_blocking(blocking);
        if let Err(e) = model.plan(shape.batch) {
            eprintln!("{}: skipped: {e}", shape.name);
            continue;
        }
        let stream = model.stream().clone();
        let (t, b) = (shape.seq_len, shape.batch);
        let mut rng = SplitMix64::new(3);
        let input = stream
            .clone_htod(&random(&mut rng, t * b * cfg.input_size))
            .unwrap();
        let lengths: Option<CudaSlice<i32>> = shape.lengths.as_ref().map(|l| {
            stream
                .clone_htod(&l.iter().map(|&v| v as i32).collect::<Vec<_>>())
                .unwrap()
        });
        let zeros = |n: usize| stream.alloc_zeros::<f32>(n).unwrap();
        let (h_len, c_len) = (
            cfg.num_states() * b * cfg.output_size(),
            cfg.num_states() * b * cfg.hidden_size,
        );
        let lstm = cfg.has_cell_state();
        let (mut output, mut h_n, mut c_n) = (
            zeros(t * b * cfg.output_width()),
            zeros(h_len),
            lstm.then(|| zeros(c_len)),
        );
        let mut reserve = zeros(model.reserve_bytes(t, b, false).unwrap() / 4);
        let ones = stream
            .clone_htod(&vec![1.0f32; t * b * cfg.output_width()])
            .unwrap();
        let (mut grad_input, mut grad_h0) = (zeros(t * b * cfg.input_size), zeros(h_len));
        let mut grad_c0 = lstm.then(|| zeros(c_len));
        let mut grad_weights = zeros(model.gradient_len());
        let context = device.context().clone();
        let event = || context.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).unwrap();
        let (start, end) = (event(), event());
        bench(c, &shape, "train", variant, || {
            let args = DeviceInput {
                input: &input,
                seq_len: t,
                batch: b,
                lengths: lengths.as_ref(),
                h0: None,
                c0: None,
            };
            start.record(&stream).unwrap();
            let mut out = DeviceOutput {
                output: &mut output,
                h_n: &mut h_n,
                c_n: c_n.as_mut(),
            };
            model
                .forward_train_device(&args, &mut out, &mut reserve, None)
                .unwrap();
            let grads = DeviceGradOutputs {
                output: &ones,
                h_n: None,
                c_n: None,
            };
            let mut into = DeviceGradients {
                input: &mut grad_input,
                h0: &mut grad_h0,
                c0: grad_c0.as_mut(),
                weights: &mut grad_weights,
            };
            model
                .backward_device(&args, &reserve, None, &grads, &mut into)
                .unwrap();
            end.record(&stream).unwrap();
            end.synchronize().unwrap();
            Duration::from_secs_f64(f64::from(start.elapsed_ms(&end).unwrap()) / 1e3)
        });
    }
}

/// Writes `$BENCH_JSON_DIR/rnn_kernels.json` (DESIGN §5) when that variable is set.
fn write_json(_: &mut Criterion) {
    let Ok(dir) = std::env::var("BENCH_JSON_DIR") else {
        return;
    };
    let records: Vec<Value> = SAMPLES
        .lock()
        .unwrap()
        .iter()
        .filter(|s| !s.per_call_us.is_empty())
        .map(|s| {
            let mut sorted = s.per_call_us.clone();
            sorted.sort_by(f64::total_cmp);
            json!({
                "shape": s.shape, "mode": s.mode, "dtype": s.dtype, "variant": s.variant,
                "median_us": percentile(&sorted, 0.5), "p10_us": percentile(&sorted, 0.1),
                "p90_us": percentile(&sorted, 0.9), "reps": sorted.len(),
            })
        })
        .collect();
    let path = PathBuf::from(dir).join("rnn_kernels.json");
    let info = machine_info();
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json!({ "info": info, "records": records })).unwrap(),
    )
    .unwrap();
    eprintln!("wrote {} records to {}", records.len(), path.display());
}

criterion_group!(
    benches,
    gpu_forward,
    gpu_train,
    cpu_forward,
    cpu_train,
    write_json
);
criterion_main!(benches);
