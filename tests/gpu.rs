//! The CUDA path against the CPU reference, on a GPU. Ignored where there is
//! none: run with `cargo test -- --include-ignored` (`RNN_REQUIRE_GPU=1`
//! makes a missing GPU an error, as `.gpu/run` sets it). Every output buffer
//! starts as NaN, so an element no kernel wrote fails.

mod common;

use common::{assert_close, gpu, random_tensor, varied_configs};
use cudarc::driver::CudaSlice;
use rnn_kernels::cuda::launch::{Blocking, Strategy};
use rnn_kernels::cuda::{CudaDevice, CudaRnn, DeviceGradOutputs, DeviceGradients, DeviceInput, DeviceOutput};
use rnn_kernels::rng::SplitMix64;
use rnn_kernels::sequence::{c_shape, h_shape};
use rnn_kernels::{reference, ForwardInput, ForwardOutput, RnnConfig, State, Tensor, Weights};
use std::sync::Arc;

/// This run's seed, mixed into every case's: fresh each run, unless
/// `RNN_TEST_SEED` replays one. Each case prints it (shown on failure).
fn run_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| match std::env::var("RNN_TEST_SEED") {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("RNN_TEST_SEED={v}: expected an integer"))
        }
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    })
}

/// Random inputs for a shape, as f32, and the f64 reference's answer.
struct Case {
    weights: Weights<f64>,
    input: Tensor<f32>,
    lengths: Option<Vec<usize>>,
    state: State<f32>,
    expected: ForwardOutput<f64>,
}

impl Case {
    fn new(config: &RnnConfig, seq_len: usize, batch: usize, varlen: bool, seed: u64) -> Case {
        eprintln!(
            "case {seed} of run seed {:#x} (RNN_TEST_SEED={:#x} replays it)",
            run_seed(),
            run_seed()
        );
        let seed = seed ^ run_seed();
        let weights = Weights::<f64>::random(config.clone(), seed).unwrap();
        let mut rng = SplitMix64::new(seed ^ 0xC0FFEE);
        let shape = if config.batch_first {
            [batch, seq_len, config.input_size]
        } else {
            [seq_len, batch, config.input_size]
        };
        let input: Tensor<f32> = random_tensor(&shape, &mut rng);
        let lengths = varlen.then(|| {
            let mut l: Vec<usize> = (0..batch).map(|_| rng.int_inclusive(1, seq_len)).collect();
            l[0] = seq_len;
            if batch > 1 {
                l[batch - 1] = 1;
            }
            l
        });
        let mut state = State::zeros(config, batch);
        state.h = random_tensor(state.h.shape(), &mut rng);
        state.c = state.c.map(|c| random_tensor(c.shape(), &mut rng));
        let (input64, h64, c64) = (input.cast(), state.h.cast(), state.c.as_ref().map(|c| c.cast()));
        let args = ForwardInput {
            input: &input64,
            lengths: lengths.as_deref(),
            h0: Some(&h64),
            c0: c64.as_ref(),
        };
        let expected = reference::forward(&weights, &args).unwrap();
        Case {
            weights,
            input,
            lengths,
            state,
            expected,
        }
    }

    /// Runs on the device API with NaN-poisoned outputs.
    fn run(&self, model: &mut CudaRnn) -> ForwardOutput<f32> {
        let config = model.config().clone();
        let stream = model.stream().clone();
        let shape = self.input.shape();
        let (t, b) = if config.batch_first {
            (shape[1], shape[0])
        } else {
            (shape[0], shape[1])
        };
        let up = |v: &[f32]| stream.clone_htod(v).unwrap();
        let nan = |n: usize| stream.clone_htod(&vec![f32::NAN; n]).unwrap();
        let input = up(self.input.data());
        let lengths: Option<CudaSlice<i32>> = self.lengths.as_ref().map(|l| {
            stream
                .clone_htod(&l.iter().map(|&v| v as i32).collect::<Vec<_>>())
                .unwrap()
        });
        let h0 = up(self.state.h.data());
        let c0 = self.state.c.as_ref().map(|c| up(c.data()));
        let mut output = nan(self.expected.output.len());
        let mut h_n = nan(self.expected.h_n.len());
        let mut c_n = self.expected.c_n.as_ref().map(|c| nan(c.len()));
        model
            .forward_device(
                &DeviceInput {
                    input: &input,
                    seq_len: t,
                    batch: b,
                    lengths: lengths.as_ref(),
                    h0: Some(&h0),
                    c0: c0.as_ref(),
                },
                &mut DeviceOutput {
                    output: &mut output,
                    h_n: &mut h_n,
                    c_n: c_n.as_mut(),
                },
            )
            .unwrap();
        let down =
            |s: &CudaSlice<f32>, shape: &[usize]| Tensor::new(shape, stream.clone_dtoh(s).unwrap()).unwrap();
        ForwardOutput {
            output: down(&output, self.expected.output.shape()),
            h_n: down(&h_n, &h_shape(&config, b)),
            c_n: c_n.as_ref().map(|c| down(c, &c_shape(&config, b))),
        }
    }

    fn check(&self, what: &str, got: &ForwardOutput<f32>, tol: f64) {
        assert_close(&format!("{what} output"), &got.output, &self.expected.output, tol);
        assert_close(&format!("{what} h_n"), &got.h_n, &self.expected.h_n, tol);
        if let (Some(g), Some(e)) = (&got.c_n, &self.expected.c_n) {
            assert_close(&format!("{what} c_n"), g, e, tol);
        }
    }
}

fn model(device: &Arc<CudaDevice>, case: &Case) -> CudaRnn {
    CudaRnn::new(device, &case.weights).unwrap()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn every_configuration_matches_the_reference() {
    let Some(device) = gpu() else { return };
    for (k, config) in varied_configs().into_iter().enumerate() {
        for (t, b, varlen) in [(7, 5, true), (1, 1, false), (12, 3, false)] {
            let case = Case::new(&config, t, b, varlen, 100 + k as u64);
            let got = case.run(&mut model(&device, &case));
            case.check(
                &format!("{} T={t} B={b}", rnn_kernels::weights::describe(&config)),
                &got,
                2e-5,
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn odd_sizes_long_sequences_and_wide_batches() {
    let Some(device) = gpu() else { return };
    let shapes: Vec<(RnnConfig, usize, usize)> = vec![
        (RnnConfig::lstm(1, 1), 1, 1),
        (RnnConfig::lstm(6, 33), 1000, 3),
        (
            RnnConfig {
                num_layers: 2,
                ..RnnConfig::gru(6, 100)
            },
            50,
            257,
        ),
        (
            RnnConfig {
                bidirectional: true,
                ..RnnConfig::rnn_tanh(300, 257)
            },
            20,
            5,
        ),
        (
            RnnConfig {
                proj_size: 100,
                bidirectional: true,
                ..RnnConfig::lstm(300, 257)
            },
            30,
            4,
        ),
        (
            RnnConfig {
                gru_linear_before_reset: false,
                bidirectional: true,
                ..RnnConfig::gru(1, 257)
            },
            40,
            7,
        ),
        (RnnConfig::lstm(300, 1024), 30, 4),
        (RnnConfig::gru(6, 1024), 10, 257),
    ];
    for (k, (config, t, b)) in shapes.into_iter().enumerate() {
        let case = Case::new(&config, t, b, true, 200 + k as u64);
        let got = case.run(&mut model(&device, &case));
        case.check(
            &format!("{} T={t} B={b}", rnn_kernels::weights::describe(&config)),
            &got,
            1e-4,
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn every_split_strategy_gives_the_same_answer() {
    let Some(device) = gpu() else { return };
    let config = RnnConfig {
        num_layers: 2,
        proj_size: 40,
        ..RnnConfig::lstm(32, 160)
    };
    let case = Case::new(&config, 25, 9, true, 300);
    for strategy in [
        Strategy::Auto,
        Strategy::OnChip { ctas_per_group: 1 },
        Strategy::OnChip { ctas_per_group: 3 },
        Strategy::OnChip { ctas_per_group: 16 },
        Strategy::OffChip { ctas_per_group: 1 },
        Strategy::OffChip { ctas_per_group: 5 },
    ] {
        let mut m = model(&device, &case);
        m.set_strategy(strategy);
        // W_hh on chip in few CTAs needs shared memory a smaller chip (an
        // L4's 99 KiB) lacks: the planner must say so; nothing else may fail.
        let plan = match (strategy, m.plan(9)) {
            (_, Ok(plan)) => plan,
            (Strategy::OnChip { ctas_per_group }, Err(rnn_kernels::Error::Unsupported(why)))
                if ctas_per_group < 16 =>
            {
                eprintln!("{strategy:?} does not fit {}: {why}", device.name());
                continue;
            }
            (_, Err(e)) => panic!("{strategy:?}: {e}"),
        };
        case.check(&format!("{strategy:?} {plan:?}"), &case.run(&mut m), 2e-5);
    }
    // Every way of sharing the dot products, on the planner's split.
    for (k_lanes, rows_per_thread) in [(1, 1), (2, 4), (8, 2), (32, 4)] {
        let mut m = model(&device, &case);
        m.set_blocking(Some(Blocking {
            k_lanes,
            rows_per_thread,
        }));
        let plan = m.plan(9).unwrap();
        case.check(&format!("{plan:?}"), &case.run(&mut m), 2e-5);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn repeated_runs_are_bitwise_identical() {
    let Some(device) = gpu() else { return };
    let config = RnnConfig {
        num_layers: 2,
        bidirectional: true,
        ..RnnConfig::gru(10, 64)
    };
    let case = Case::new(&config, 50, 32, true, 400);
    let mut m = model(&device, &case);
    let first = case.run(&mut m);
    for _ in 0..3 {
        assert_eq!(case.run(&mut m), first);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn host_api_and_stepping_match_the_reference() {
    let Some(device) = gpu() else { return };
    for config in varied_configs().into_iter().filter(|c| !c.bidirectional) {
        let case = Case::new(&config, 6, 4, false, 500);
        let mut m = model(&device, &case);
        let args = ForwardInput {
            input: &case.input,
            lengths: None,
            h0: Some(&case.state.h),
            c0: case.state.c.as_ref(),
        };
        case.check("host api", &m.forward(&args).unwrap(), 2e-5);
        // Step by step from the same state: each step equals the whole run's row.
        let mut state = case.state.clone();
        let t_axis = usize::from(config.batch_first);
        for t in 0..6 {
            let x: Vec<f32> = (0..4)
                .flat_map(|b| {
                    let (tt, bb) = if t_axis == 0 { (t, b) } else { (b, t) };
                    let row = (tt * if t_axis == 0 { 4 } else { 6 } + bb) * config.input_size;
                    case.input.data()[row..row + config.input_size].to_vec()
                })
                .collect();
            let out = m
                .step(&Tensor::new([4, config.input_size], x).unwrap(), &mut state)
                .unwrap();
            for b in 0..4 {
                let w = config.output_width();
                let row = if t_axis == 0 { t * 4 + b } else { b * 6 + t };
                for j in 0..w {
                    let (g, e) = (
                        out.data()[b * w + j] as f64,
                        case.expected.output.data()[row * w + j],
                    );
                    assert!((g - e).abs() <= 2e-5, "step {t} row {b} unit {j}: {g} vs {e}");
                }
            }
        }
        assert_close("stepped h", &state.h, &case.expected.h_n, 2e-5);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn models_on_separate_threads_and_streams_agree() {
    let Some(device) = gpu() else { return };
    let config = RnnConfig {
        num_layers: 2,
        ..RnnConfig::lstm(6, 64)
    };
    let case = Arc::new(Case::new(&config, 48, 32, true, 600));
    // Half of them on a cooperative multi-CTA split: cooperative kernels on
    // several streams at once.
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let (device, case) = (device.clone(), case.clone());
            std::thread::spawn(move || {
                let mut m = model(&device, &case);
                if i % 2 == 1 {
                    m.set_strategy(Strategy::OnChip { ctas_per_group: 3 });
                    let plan = m.plan(32).unwrap();
                    assert!(plan.cooperative(), "{plan:?}");
                }
                (0..5).map(|_| case.run(&mut m)).collect::<Vec<_>>()
            })
        })
        .collect();
    for h in handles {
        for got in h.join().unwrap() {
            case.check("threaded", &got, 2e-5);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn device_lengths_out_of_range_are_clamped_not_out_of_bounds() {
    let Some(device) = gpu() else { return };
    let config = RnnConfig::lstm(3, 8);
    let case = Case::new(&config, 5, 3, false, 700);
    let mut m = model(&device, &case);
    let stream = m.stream().clone();
    let input = stream.clone_htod(case.input.data()).unwrap();
    let lengths = stream.clone_htod(&[0i32, 99, -4]).unwrap();
    let mut output = stream.clone_htod(&vec![f32::NAN; 5 * 3 * 8]).unwrap();
    let mut h_n = stream.clone_htod(&vec![f32::NAN; 3 * 8]).unwrap();
    let mut c_n = stream.clone_htod(&vec![f32::NAN; 3 * 8]).unwrap();
    m.forward_device(
        &DeviceInput {
            input: &input,
            seq_len: 5,
            batch: 3,
            lengths: Some(&lengths),
            h0: None,
            c0: None,
        },
        &mut DeviceOutput {
            output: &mut output,
            h_n: &mut h_n,
            c_n: Some(&mut c_n),
        },
    )
    .unwrap();
    let out = stream.clone_dtoh(&output).unwrap();
    let h = stream.clone_dtoh(&h_n).unwrap();
    for t in 0..5 {
        for j in 0..8 {
            assert_eq!(out[(t * 3) * 8 + j], 0.0, "length 0: zero output");
            assert_eq!(out[(t * 3 + 2) * 8 + j], 0.0, "negative length: zero output");
        }
    }
    assert!(
        h[..8].iter().chain(&h[16..]).all(|&v| v == 0.0),
        "rows that never ran keep h0 = 0"
    );
    assert!(
        h[8..16].iter().all(|v| v.is_finite()),
        "length 99 ran all 5 steps"
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn wrong_device_buffer_sizes_are_errors() {
    let Some(device) = gpu() else { return };
    let config = RnnConfig::gru(3, 8);
    let mut m = CudaRnn::new(&device, &Weights::<f32>::random(config, 0).unwrap()).unwrap();
    let stream = m.stream().clone();
    let input = stream.alloc_zeros::<f32>(5 * 2 * 3).unwrap();
    let mut output = stream.alloc_zeros::<f32>(5 * 2 * 8 - 1).unwrap();
    let mut h_n = stream.alloc_zeros::<f32>(2 * 8).unwrap();
    let err = m
        .forward_device(
            &DeviceInput {
                input: &input,
                seq_len: 5,
                batch: 2,
                lengths: None,
                h0: None,
                c0: None,
            },
            &mut DeviceOutput {
                output: &mut output,
                h_n: &mut h_n,
                c_n: None,
            },
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("output") && err.to_string().contains("79"),
        "{err}"
    );
}

/// A training step's inputs and the CPU reference's answer (f64):
/// forward_train's outputs and backward's gradients.
struct TrainingCase {
    case: Case,
    config: RnnConfig,
    seq_len: usize,
    batch: usize,
    dropout_seed: Option<u64>,
    grad_output: Tensor<f32>,
    grad_h_n: Tensor<f32>,
    grad_c_n: Option<Tensor<f32>>,
    expected: ForwardOutput<f64>,
    expected_grads: rnn_kernels::Gradients<f64>,
}

impl TrainingCase {
    fn new(
        config: &RnnConfig,
        seq_len: usize,
        batch: usize,
        dropout_seed: Option<u64>,
        seed: u64,
    ) -> TrainingCase {
        let case = Case::new(config, seq_len, batch, true, seed);
        let mut rng = SplitMix64::new(seed ^ run_seed() ^ 0xBAC);
        let grad_output: Tensor<f32> = random_tensor(case.expected.output.shape(), &mut rng);
        let grad_h_n: Tensor<f32> = random_tensor(case.expected.h_n.shape(), &mut rng);
        let grad_c_n: Option<Tensor<f32>> = case
            .expected
            .c_n
            .as_ref()
            .map(|c| random_tensor(c.shape(), &mut rng));
        let w64 = case.weights.cast::<f32>().cast::<f64>();
        let (x64, h64, c64) = (
            case.input.cast::<f64>(),
            case.state.h.cast::<f64>(),
            case.state.c.as_ref().map(|c| c.cast::<f64>()),
        );
        let (go64, gh64, gc64) = (
            grad_output.cast::<f64>(),
            grad_h_n.cast::<f64>(),
            grad_c_n.as_ref().map(|c| c.cast::<f64>()),
        );
        let args64 = ForwardInput {
            input: &x64,
            lengths: case.lengths.as_deref(),
            h0: Some(&h64),
            c0: c64.as_ref(),
        };
        let (expected, reserve) = reference::forward_train(&w64, &args64, dropout_seed).unwrap();
        let grads64 = rnn_kernels::GradOutputs {
            output: &go64,
            h_n: Some(&gh64),
            c_n: gc64.as_ref(),
        };
        let expected_grads = reference::backward(&w64, &args64, &reserve, &grads64).unwrap();
        TrainingCase {
            case,
            config: config.clone(),
            seq_len,
            batch,
            dropout_seed,
            grad_output,
            grad_h_n,
            grad_c_n,
            expected,
            expected_grads,
        }
    }

    fn what(&self, m: &mut CudaRnn, t: &str) -> String {
        format!(
            "{} T={} B={} {:?} train: {t}",
            rnn_kernels::weights::describe(&self.config),
            self.seq_len,
            self.batch,
            m.plan(self.batch).ok()
        )
    }

    fn check(&self, m: &mut CudaRnn, out: &ForwardOutput<f32>, got: &rnn_kernels::Gradients<f32>) {
        assert_close(&self.what(m, "output"), &out.output, &self.expected.output, 2e-5);
        assert_close(&self.what(m, "h_n"), &out.h_n, &self.expected.h_n, 2e-5);
        if let (Some(g), Some(e)) = (&out.c_n, &self.expected.c_n) {
            assert_close(&self.what(m, "c_n"), g, e, 2e-5);
        }
        let e = &self.expected_grads;
        let tol = 1e-4 * (1.0 + self.seq_len as f64 / 50.0);
        assert_close(&self.what(m, "grad_input"), &got.input, &e.input, tol);
        assert_close(&self.what(m, "grad_h0"), &got.h0, &e.h0, tol);
        if let (Some(g), Some(e)) = (&got.c0, &e.c0) {
            assert_close(&self.what(m, "grad_c0"), g, e, tol);
        }
        for ((name, g), (_, e)) in got
            .weights
            .named_parameters()
            .into_iter()
            .zip(e.weights.named_parameters())
        {
            // Weight gradients sum over T*B terms: scale the tolerance with them.
            let scale = e.data().iter().fold(1.0f64, |a, v| a.max(v.abs()));
            assert_close(&self.what(m, &format!("grad.{name}")), g, e, tol * scale);
        }
    }

    /// The inference forward (`what` names the run), then a training step
    /// through the device API.
    fn check_forward_and_device(&self, what: &str, m: &mut CudaRnn) {
        self.case.check(what, &self.case.run(m), 2e-5);
        self.check_device(m);
    }

    /// Through the host-tensor API.
    fn check_host(&self, m: &mut CudaRnn) {
        let case = &self.case;
        let args = ForwardInput {
            input: &case.input,
            lengths: case.lengths.as_deref(),
            h0: Some(&case.state.h),
            c0: case.state.c.as_ref(),
        };
        let grads = rnn_kernels::GradOutputs {
            output: &self.grad_output,
            h_n: Some(&self.grad_h_n),
            c_n: self.grad_c_n.as_ref(),
        };
        let (out, state) = m.forward_train(&args, self.dropout_seed).unwrap();
        let got = m.backward(&state, &grads).unwrap();
        self.check(m, &out, &got);
        let dropout = self.dropout_seed.is_some() && self.config.dropout > 0.0;
        assert_eq!(
            m.reserve_bytes(self.seq_len, self.batch, dropout).unwrap(),
            state.reserve_bytes()
        );
    }

    /// Through the device API, into outputs, reserve and gradients that
    /// start as NaN (the stand-in's workspace does too).
    fn check_device(&self, m: &mut CudaRnn) {
        let (case, c, t, b) = (&self.case, &self.config, self.seq_len, self.batch);
        let stream = m.stream().clone();
        let up = |v: &[f32]| stream.clone_htod(v).unwrap();
        let nan = |n: usize| stream.clone_htod(&vec![f32::NAN; n]).unwrap();
        let down =
            |s: &CudaSlice<f32>, shape: &[usize]| Tensor::new(shape, stream.clone_dtoh(s).unwrap()).unwrap();
        let input = up(case.input.data());
        let lengths: Option<CudaSlice<i32>> = case.lengths.as_ref().map(|l| {
            stream
                .clone_htod(&l.iter().map(|&v| v as i32).collect::<Vec<_>>())
                .unwrap()
        });
        let h0 = up(case.state.h.data());
        let c0 = case.state.c.as_ref().map(|c| up(c.data()));
        let args = DeviceInput {
            input: &input,
            seq_len: t,
            batch: b,
            lengths: lengths.as_ref(),
            h0: Some(&h0),
            c0: c0.as_ref(),
        };
        let (mut output, mut h_n) = (nan(self.expected.output.len()), nan(self.expected.h_n.len()));
        let mut c_n = self.expected.c_n.as_ref().map(|e| nan(e.len()));
        let dropout = self.dropout_seed.is_some() && c.dropout > 0.0;
        let mut reserve = nan(m.reserve_bytes(t, b, dropout).unwrap() / 4);
        m.forward_train_device(
            &args,
            &mut DeviceOutput {
                output: &mut output,
                h_n: &mut h_n,
                c_n: c_n.as_mut(),
            },
            &mut reserve,
            self.dropout_seed,
        )
        .unwrap();
        let (go, gh) = (up(self.grad_output.data()), up(self.grad_h_n.data()));
        let gc = self.grad_c_n.as_ref().map(|g| up(g.data()));
        let (mut gi, mut gh0, mut gw) = (
            nan(case.input.len()),
            nan(self.expected_grads.h0.len()),
            nan(m.gradient_len()),
        );
        let mut gc0 = self.expected_grads.c0.as_ref().map(|g| nan(g.len()));
        m.backward_device(
            &args,
            &reserve,
            self.dropout_seed,
            &DeviceGradOutputs {
                output: &go,
                h_n: Some(&gh),
                c_n: gc.as_ref(),
            },
            &mut DeviceGradients {
                input: &mut gi,
                h0: &mut gh0,
                c0: gc0.as_mut(),
                weights: &mut gw,
            },
        )
        .unwrap();
        let out = ForwardOutput {
            output: down(&output, self.expected.output.shape()),
            h_n: down(&h_n, &h_shape(c, b)),
            c_n: c_n.as_ref().map(|x| down(x, &c_shape(c, b))),
        };
        let got = rnn_kernels::Gradients {
            input: down(&gi, case.input.shape()),
            h0: down(&gh0, self.expected_grads.h0.shape()),
            c0: (gc0.as_ref().zip(self.expected_grads.c0.as_ref())).map(|(g, e)| down(g, e.shape())),
            weights: m.unpack_gradients(&gw).unwrap(),
        };
        self.check(m, &out, &got);
    }
}

/// A training step on the GPU through the host API against the reference.
fn check_training(
    device: &Arc<CudaDevice>,
    config: &RnnConfig,
    seq_len: usize,
    batch: usize,
    dropout_seed: Option<u64>,
    seed: u64,
) {
    let training = TrainingCase::new(config, seq_len, batch, dropout_seed, seed);
    training.check_host(&mut model(device, &training.case));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn training_matches_the_reference_for_every_configuration() {
    let Some(device) = gpu() else { return };
    for (k, config) in varied_configs().into_iter().enumerate() {
        check_training(&device, &config, 7, 5, None, 800 + k as u64);
    }
    let dropout = RnnConfig {
        num_layers: 3,
        dropout: 0.3,
        ..RnnConfig::lstm(6, 64)
    };
    check_training(&device, &dropout, 48, 32, Some(5), 820);
    check_training(
        &device,
        &RnnConfig {
            num_layers: 2,
            ..RnnConfig::lstm(6, 64)
        },
        48,
        32,
        None,
        821,
    );
    check_training(
        &device,
        &RnnConfig {
            bidirectional: true,
            num_layers: 2,
            ..RnnConfig::gru(10, 64)
        },
        50,
        32,
        None,
        822,
    );
    check_training(
        &device,
        &RnnConfig {
            proj_size: 100,
            ..RnnConfig::lstm(300, 257)
        },
        20,
        4,
        None,
        823,
    );
    check_training(&device, &RnnConfig::lstm(32, 512), 30, 8, None, 824);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn training_gradients_are_bitwise_reproducible() {
    let Some(device) = gpu() else { return };
    let config = RnnConfig {
        num_layers: 2,
        bidirectional: true,
        dropout: 0.2,
        ..RnnConfig::lstm(10, 96)
    };
    let case = Case::new(&config, 40, 16, true, 900);
    let grad_output = Tensor::full(case.expected.output.shape(), 1.0f32);
    let grads = rnn_kernels::GradOutputs {
        output: &grad_output,
        h_n: None,
        c_n: None,
    };
    let args = ForwardInput {
        input: &case.input,
        lengths: case.lengths.as_deref(),
        h0: None,
        c0: None,
    };
    let mut m = model(&device, &case);
    let run = |m: &mut CudaRnn| {
        let (_, state) = m.forward_train(&args, Some(3)).unwrap();
        m.backward(&state, &grads).unwrap()
    };
    let first = run(&mut m);
    for _ in 0..3 {
        assert_eq!(run(&mut m), first, "gradients differ between identical runs");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn device_training_checks_its_buffers() {
    let Some(device) = gpu() else { return };
    let config = RnnConfig {
        num_layers: 2,
        ..RnnConfig::lstm(3, 8)
    };
    let mut m = CudaRnn::new(&device, &Weights::<f32>::random(config, 0).unwrap()).unwrap();
    let stream = m.stream().clone();
    let zeros = |n: usize| stream.alloc_zeros::<f32>(n).unwrap();
    let input = zeros(5 * 2 * 3);
    let args = DeviceInput {
        input: &input,
        seq_len: 5,
        batch: 2,
        lengths: None,
        h0: None,
        c0: None,
    };
    let (mut output, mut h_n, mut c_n) = (zeros(5 * 2 * 8), zeros(2 * 2 * 8), zeros(2 * 2 * 8));
    let words = m.reserve_bytes(5, 2, false).unwrap() / 4;
    let mut short = zeros(words - 1);
    let mut out = DeviceOutput {
        output: &mut output,
        h_n: &mut h_n,
        c_n: Some(&mut c_n),
    };
    let err = m
        .forward_train_device(&args, &mut out, &mut short, None)
        .unwrap_err();
    assert!(err.to_string().contains("reserve"), "{err}");
    let mut reserve = zeros(words);
    m.forward_train_device(&args, &mut out, &mut reserve, None)
        .unwrap();
    let ones = zeros(5 * 2 * 8);
    let (mut gi, mut gh0, mut gc0, mut gw) = (zeros(30), zeros(32), zeros(32), zeros(m.gradient_len() - 1));
    let grads = rnn_kernels::cuda::DeviceGradOutputs {
        output: &ones,
        h_n: None,
        c_n: None,
    };
    let mut into = rnn_kernels::cuda::DeviceGradients {
        input: &mut gi,
        h0: &mut gh0,
        c0: Some(&mut gc0),
        weights: &mut gw,
    };
    let err = m
        .backward_device(&args, &reserve, None, &grads, &mut into)
        .unwrap_err();
    assert!(err.to_string().contains("grad weights"), "{err}");
}

/// Every cell on the splits small shapes rarely get from the automatic
/// plan — several CTAs per group with `W_hh` on chip, and `W_hh` read from
/// L2 — forward and backward (a forced strategy forces both), through the
/// device API into NaN-poisoned buffers.
#[test]
#[ignore = "needs a CUDA GPU"]
fn every_cell_on_multi_cta_and_l2_splits_forward_and_backward() {
    let Some(device) = gpu() else { return };
    let cells = [
        RnnConfig::rnn_tanh(7, 48),
        RnnConfig::rnn_relu(7, 48),
        RnnConfig {
            bidirectional: true,
            ..RnnConfig::lstm(7, 48)
        },
        RnnConfig {
            proj_size: 20,
            ..RnnConfig::lstm(7, 48)
        },
        RnnConfig {
            num_layers: 2,
            ..RnnConfig::gru(7, 48)
        },
        RnnConfig {
            gru_linear_before_reset: false,
            ..RnnConfig::gru(7, 48)
        },
    ];
    for (k, config) in cells.iter().enumerate() {
        let training = TrainingCase::new(config, 9, 5, None, 1000 + k as u64);
        for strategy in [
            Strategy::OnChip { ctas_per_group: 3 },
            Strategy::OffChip { ctas_per_group: 1 },
            Strategy::OffChip { ctas_per_group: 4 },
        ] {
            let mut m = model(&device, &training.case);
            m.set_strategy(strategy);
            let plan = m.plan(5).unwrap();
            let (ctas, on_chip) = match strategy {
                Strategy::OnChip { ctas_per_group } => (ctas_per_group, true),
                Strategy::OffChip { ctas_per_group } => (ctas_per_group, false),
                Strategy::Auto => unreachable!(),
            };
            assert_eq!(
                (plan.ctas_per_group, plan.weights_in_smem),
                (ctas, on_chip),
                "{plan:?}"
            );
            training.check_forward_and_device(&format!("{strategy:?} {plan:?}"), &mut m);
        }
    }
}

/// stream_b1's shape — one stream, H = 256 — plans to several CTAs per
/// group: `step_device` updates `h` and `c` in place across them.
#[test]
#[ignore = "needs a CUDA GPU"]
fn stepping_in_place_on_a_multi_cta_plan() {
    let Some(device) = gpu() else { return };
    let config = RnnConfig {
        num_layers: 2,
        ..RnnConfig::lstm(16, 256)
    };
    let steps = 5;
    let case = Case::new(&config, steps, 1, false, 1100);
    let mut m = model(&device, &case);
    let plan = m.plan(1).unwrap();
    assert!(plan.ctas_per_group > 1, "{plan:?}");
    let stream = m.stream().clone();
    let mut h = stream.clone_htod(case.state.h.data()).unwrap();
    let mut c = stream.clone_htod(case.state.c.as_ref().unwrap().data()).unwrap();
    let mut out = stream.clone_htod(&vec![f32::NAN; config.output_size()]).unwrap();
    let width = config.input_size;
    for t in 0..steps {
        let x = stream
            .clone_htod(&case.input.data()[t * width..(t + 1) * width])
            .unwrap();
        m.step_device(&x, 1, &mut h, Some(&mut c), &mut out).unwrap();
        let got = stream.clone_dtoh(&out).unwrap();
        let row = &case.expected.output.data()[t * config.output_size()..(t + 1) * config.output_size()];
        for (j, (g, e)) in got.iter().zip(row).enumerate() {
            assert!(
                (*g as f64 - e).abs() <= 2e-5,
                "{plan:?} step {t} unit {j}: {g} vs {e}"
            );
        }
    }
    let h_n = Tensor::new(case.expected.h_n.shape(), stream.clone_dtoh(&h).unwrap()).unwrap();
    assert_close("stepped h", &h_n, &case.expected.h_n, 2e-5);
    let c_n = Tensor::new(case.expected.h_n.shape(), stream.clone_dtoh(&c).unwrap()).unwrap();
    assert_close("stepped c", &c_n, case.expected.c_n.as_ref().unwrap(), 2e-5);
}

/// Four batch rows per thread, over several batch tiles of four or more
/// rows (the last one not full), forward and backward: the batch is the
/// smallest of a few that the planner tiles so.
#[test]
#[ignore = "needs a CUDA GPU"]
fn four_rows_per_thread_over_several_batch_tiles() {
    let Some(device) = gpu() else { return };
    let blocking = Blocking {
        k_lanes: 4,
        rows_per_thread: 4,
    };
    for (k, config) in [RnnConfig::gru(10, 64), RnnConfig::lstm(10, 64)]
        .into_iter()
        .enumerate()
    {
        let probe = CudaRnn::new(&device, &Weights::<f32>::random(config.clone(), 0).unwrap());
        let mut probe = probe.unwrap();
        probe.set_blocking(Some(blocking));
        let batch = [37, 301, 1001, 2001, 4001]
            .into_iter()
            .find(|&b| {
                let plan = probe.plan(b).unwrap();
                plan.batch_tile >= 4 && plan.tiles > 1 && b % plan.batch_tile != 0
            })
            .unwrap_or_else(|| panic!("no batch tiles of 4 rows or more on {}", device.name()));
        let training = TrainingCase::new(&config, 4, batch, None, 1200 + k as u64);
        let mut m = model(&device, &training.case);
        m.set_blocking(Some(blocking));
        let plan = m.plan(batch).unwrap();
        eprintln!("B={batch}: {plan:?}");
        training.check_forward_and_device(&format!("B={batch} {plan:?}"), &mut m);
    }
}

/// Bitwise the same, run to run, where CTAs exchange `h` through L2: the
/// multi-CTA splits, on chip and off.
#[test]
#[ignore = "needs a CUDA GPU"]
fn multi_cta_plans_are_bitwise_repeatable() {
    let Some(device) = gpu() else { return };
    let config = RnnConfig {
        bidirectional: true,
        ..RnnConfig::gru(10, 96)
    };
    let case = Case::new(&config, 20, 6, true, 1300);
    for strategy in [
        Strategy::OnChip { ctas_per_group: 3 },
        Strategy::OffChip { ctas_per_group: 4 },
    ] {
        let mut m = model(&device, &case);
        m.set_strategy(strategy);
        let first = case.run(&mut m);
        for _ in 0..2 {
            assert_eq!(case.run(&mut m), first, "{strategy:?}");
        }
    }
}

/// A projection wider than most: proj_size 384 of H = 512, forward and
/// backward.
#[test]
#[ignore = "needs a CUDA GPU"]
fn a_large_projection() {
    let Some(device) = gpu() else { return };
    let config = RnnConfig {
        proj_size: 384,
        ..RnnConfig::lstm(24, 512)
    };
    let training = TrainingCase::new(&config, 6, 3, None, 1400);
    let mut m = model(&device, &training.case);
    let plan = m.plan(3).unwrap();
    training.check_forward_and_device(&format!("{plan:?}"), &mut m);
}

/// More batch rows than a grid's y or z dimension may hold (65,535): they
/// run and match the reference, or the error says why.
#[test]
#[ignore = "needs a CUDA GPU"]
fn batches_beyond_65535_rows() {
    let Some(device) = gpu() else { return };
    let config = RnnConfig::rnn_tanh(2, 3);
    let case = Case::new(&config, 2, 70_000, false, 1500);
    let mut m = model(&device, &case);
    let args = ForwardInput {
        input: &case.input,
        lengths: None,
        h0: Some(&case.state.h),
        c0: None,
    };
    match m.forward(&args) {
        Ok(got) => case.check(&format!("B=70000 {:?}", m.plan(70_000)), &got, 2e-5),
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains("batch") && message.contains("70000"),
                "{message}"
            );
        }
    }
}

/// Bitwise equal, or the first element that differs.
fn same(got: &[f32], expected: &[f32], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != expected[i].to_bits()) {
        panic!(
            "{what}: element {i} is {} where {} was expected",
            got[i], expected[i]
        );
    }
}

/// `forward_device` and `step_device` captured into CUDA graphs (after a
/// first call of the shape has sized the workspace) and replayed on new
/// inputs in the same buffers: bitwise what direct calls give. Both with
/// the planner's one-CTA groups and with a cooperative plan (two CTAs a
/// group at a barrier, its counter zeroed by a memset node in the graph).
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_graphs_replay_forward_and_step() {
    let Some(device) = gpu() else { return };
    for (strategy, cooperative) in [
        (Strategy::Auto, false),
        (Strategy::OnChip { ctas_per_group: 2 }, true),
    ] {
        eprintln!("{strategy:?}");
        replay_forward_and_step(&device, strategy, cooperative);
    }
}

fn replay_forward_and_step(device: &Arc<CudaDevice>, strategy: Strategy, cooperative: bool) {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let config = RnnConfig {
        num_layers: 2,
        ..RnnConfig::lstm(8, 48)
    };
    let (t, b) = (10, 4);
    let case = Case::new(&config, t, b, true, 1600);
    let mut m = model(device, &case);
    m.set_strategy(strategy);
    assert_eq!(m.plan(b).unwrap().cooperative(), cooperative, "{strategy:?}");
    let stream = m.stream().clone();
    let mut rng = SplitMix64::new(run_seed() ^ 1601);
    let up = |v: &[f32]| stream.clone_htod(v).unwrap();
    let nan = |n: usize| up(&vec![f32::NAN; n]);
    let mut input = up(case.input.data());
    let lengths: CudaSlice<i32> = stream
        .clone_htod(
            &case
                .lengths
                .as_ref()
                .unwrap()
                .iter()
                .map(|&v| v as i32)
                .collect::<Vec<_>>(),
        )
        .unwrap();
    let (h0, c0) = (up(case.state.h.data()), up(case.state.c.as_ref().unwrap().data()));
    let (mut output, mut h_n, mut c_n) = (
        nan(case.expected.output.len()),
        nan(case.expected.h_n.len()),
        nan(case.expected.h_n.len()),
    );
    let forward = |m: &mut CudaRnn,
                   input: &CudaSlice<f32>,
                   output: &mut CudaSlice<f32>,
                   h_n: &mut CudaSlice<f32>,
                   c_n: &mut CudaSlice<f32>| {
        let args = DeviceInput {
            input,
            seq_len: t,
            batch: b,
            lengths: Some(&lengths),
            h0: Some(&h0),
            c0: Some(&c0),
        };
        let mut out = DeviceOutput {
            output,
            h_n,
            c_n: Some(c_n),
        };
        m.forward_device(&args, &mut out).unwrap();
    };
    forward(&mut m, &input, &mut output, &mut h_n, &mut c_n);
    let direct = stream.clone_dtoh(&output).unwrap();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    forward(&mut m, &input, &mut output, &mut h_n, &mut c_n);
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("a graph of the forward");
    // Replayed into NaN: the same as the direct call.
    stream
        .memcpy_htod(&vec![f32::NAN; direct.len()], &mut output)
        .unwrap();
    graph.launch().unwrap();
    same(&stream.clone_dtoh(&output).unwrap(), &direct, "replayed forward");
    // A new input in the same buffer: the graph reads it, as a direct call does.
    let other: Tensor<f32> = random_tensor(case.input.shape(), &mut rng);
    stream.memcpy_htod(other.data(), &mut input).unwrap();
    graph.launch().unwrap();
    let replayed = stream.clone_dtoh(&output).unwrap();
    forward(&mut m, &input, &mut output, &mut h_n, &mut c_n);
    assert_eq!(
        replayed,
        stream.clone_dtoh(&output).unwrap(),
        "replayed forward on a new input"
    );
    assert!(replayed != direct, "the new input changed the output");

    // One step, captured once, replayed step after step: the state advances
    // in place as direct steps advance it.
    let step_case = Case::new(&config, 3, b, false, 1602);
    let mut stepper = model(device, &step_case);
    stepper.set_strategy(strategy);
    let s = stepper.stream().clone();
    let width = config.input_size;
    let rows = b * width;
    let xs: Vec<CudaSlice<f32>> = (0..3)
        .map(|k| {
            let at = k * rows;
            s.clone_htod(&step_case.input.data()[at..at + rows]).unwrap()
        })
        .collect();
    let fresh = |s: &Arc<cudarc::driver::CudaStream>| {
        (
            s.clone_htod(step_case.state.h.data()).unwrap(),
            s.clone_htod(step_case.state.c.as_ref().unwrap().data()).unwrap(),
            s.clone_htod(&vec![f32::NAN; b * config.output_size()]).unwrap(),
        )
    };
    let (mut h, mut c, mut out) = fresh(&s);
    let mut x = s.clone_htod(&vec![0f32; rows]).unwrap();
    stepper
        .step_device(&x, b, &mut h, Some(&mut c), &mut out)
        .unwrap();
    let (mut h, mut c, mut out) = fresh(&s);
    s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    stepper
        .step_device(&x, b, &mut h, Some(&mut c), &mut out)
        .unwrap();
    let step_graph = s
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("a graph of the step");
    let mut replayed = Vec::new();
    for x_t in &xs {
        s.memcpy_dtod(x_t, &mut x).unwrap();
        step_graph.launch().unwrap();
        replayed.push(s.clone_dtoh(&out).unwrap());
    }
    let (replayed_h, replayed_c) = (s.clone_dtoh(&h).unwrap(), s.clone_dtoh(&c).unwrap());
    let (mut h, mut c, mut out) = fresh(&s);
    for (k, x_t) in xs.iter().enumerate() {
        stepper
            .step_device(x_t, b, &mut h, Some(&mut c), &mut out)
            .unwrap();
        same(
            &s.clone_dtoh(&out).unwrap(),
            &replayed[k],
            &format!("replayed step {k}"),
        );
    }
    same(&s.clone_dtoh(&h).unwrap(), &replayed_h, "replayed steps' h");
    same(&s.clone_dtoh(&c).unwrap(), &replayed_c, "replayed steps' c");
}

/// The driver stand-in's record of this thread's driver calls
/// (emu/driver/src/calls.rs); `None` on a real driver.
struct CallRecord {
    record: unsafe extern "C" fn(std::ffi::c_int),
    recorded: unsafe extern "C" fn(*mut std::ffi::c_char, usize) -> usize,
}

impl CallRecord {
    /// The stand-in's hooks, if the process's libcuda.so is the stand-in
    /// (scripts/emulated-gpu names its folder).
    fn find() -> Option<CallRecord> {
        let dir = std::env::var("RNN_EMU_DRIVER_DIR").ok()?;
        let path = std::ffi::CString::new(format!("{dir}/libcuda.so")).ok()?;
        // SAFETY: only looks up the library the process already loaded, and
        // two symbols whose signatures calls.rs defines.
        unsafe {
            let lib = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
            if lib.is_null() {
                return None;
            }
            let record = libc::dlsym(lib, c"rnnkStandInRecordCalls".as_ptr());
            let recorded = libc::dlsym(lib, c"rnnkStandInRecordedCalls".as_ptr());
            if record.is_null() || recorded.is_null() {
                return None;
            }
            Some(CallRecord {
                record: std::mem::transmute::<*mut libc::c_void, unsafe extern "C" fn(std::ffi::c_int)>(
                    record,
                ),
                recorded: std::mem::transmute::<
                    *mut libc::c_void,
                    unsafe extern "C" fn(*mut std::ffi::c_char, usize) -> usize,
                >(recorded),
            })
        }
    }

    /// The driver calls `f` makes on this thread, by name, in order.
    fn during(&self, f: impl FnOnce()) -> Vec<String> {
        // SAFETY: the stand-in's hooks, called with a buffer of the size asked.
        unsafe {
            (self.record)(1);
            f();
            let needed = (self.recorded)(std::ptr::null_mut(), 0);
            let mut buf = vec![0u8; needed];
            (self.recorded)(buf.as_mut_ptr().cast(), needed);
            (self.record)(0);
            let text = std::ffi::CStr::from_bytes_until_nul(&buf)
                .unwrap()
                .to_str()
                .unwrap();
            text.lines().map(str::to_string).collect()
        }
    }
}

/// Once a shape has been planned and its workspace sized, a step or a
/// forward costs the plan's own driver calls (its launches, and the
/// counter fills of a cooperative plan) and one context check: no event
/// waits or records per buffer, no allocation, no synchronisation.
#[test]
#[ignore = "needs a CUDA GPU"]
fn steady_state_calls_make_only_their_launches() {
    let Some(device) = gpu() else { return };
    let Some(calls) = CallRecord::find() else {
        eprintln!("skipped: counting driver calls needs the stand-in (scripts/emulated-gpu)");
        return;
    };
    let config = RnnConfig {
        num_layers: 2,
        ..RnnConfig::lstm(8, 48)
    };
    let b = 3;
    for (strategy, cooperative) in [
        (Strategy::Auto, false),
        (Strategy::OnChip { ctas_per_group: 2 }, true),
    ] {
        let case = Case::new(&config, 5, b, false, 1700);
        let mut m = model(&device, &case);
        m.set_strategy(strategy);
        let s = m.stream().clone();
        let input = s.clone_htod(case.input.data()).unwrap();
        let x = s.clone_htod(&case.input.data()[..b * config.input_size]).unwrap();
        let mut h = s.clone_htod(case.state.h.data()).unwrap();
        let mut c = s.clone_htod(case.state.c.as_ref().unwrap().data()).unwrap();
        let mut out = s.alloc_zeros::<f32>(b * config.output_size()).unwrap();
        let mut output = s.alloc_zeros::<f32>(case.expected.output.len()).unwrap();
        let mut h_n = s.alloc_zeros::<f32>(h.len()).unwrap();
        let mut c_n = s.alloc_zeros::<f32>(c.len()).unwrap();
        let mut forward = |m: &mut CudaRnn| {
            let args = DeviceInput {
                input: &input,
                seq_len: 5,
                batch: b,
                lengths: None,
                h0: None,
                c0: None,
            };
            let mut outputs = DeviceOutput {
                output: &mut output,
                h_n: &mut h_n,
                c_n: Some(&mut c_n),
            };
            m.forward_device(&args, &mut outputs).unwrap();
        };
        // The first calls plan and size the workspace.
        m.step_device(&x, b, &mut h, Some(&mut c), &mut out).unwrap();
        forward(&mut m);
        let stepped = calls.during(|| {
            for _ in 0..3 {
                m.step_device(&x, b, &mut h, Some(&mut c), &mut out).unwrap();
            }
        });
        let forwarded = calls.during(|| forward(&mut m));
        s.synchronize().unwrap();
        for (what, made, per) in [("3 steps", &stepped, 3), ("a forward", &forwarded, 1)] {
            let count = |name: &str| made.iter().filter(|c| *c == name).count();
            let launch = if cooperative {
                "cuLaunchCooperativeKernel"
            } else {
                "cuLaunchKernel"
            };
            let own = [
                "cuCtxGetCurrent",
                "cuLaunchKernel",
                "cuLaunchCooperativeKernel",
                "cuMemsetD32Async",
            ];
            assert!(
                made.iter().all(|c| own.contains(&c.as_str())),
                "{strategy:?}: {what} made {made:?}"
            );
            assert_eq!(
                count("cuCtxGetCurrent"),
                per,
                "{strategy:?}: {what}: one context check a call"
            );
            assert!(
                count(launch) >= per * config.num_layers,
                "{strategy:?}: {what}: each layer's recurrence is a {launch}: {made:?}"
            );
            assert_eq!(
                count("cuMemsetD32Async") > 0,
                cooperative,
                "{strategy:?}: {what}: counters are zeroed exactly when CTAs meet at barriers: {made:?}"
            );
        }
    }
}
