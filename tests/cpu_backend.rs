//! The fast CPU backend (`cpu::CpuRnn`) against the reference: on every
//! PyTorch fixture, and on fresh random configurations, sizes that are
//! multiples of nothing (and of every vector width), lengths of 1 and T,
//! B = 1, initial states, every instruction set this machine has and
//! several thread counts; outputs poisoned with NaN before each call, so
//! that an element the fast path forgets to write fails.

mod common;

use common::{assert_close, case_files, nan_output, random_tensor, seed, varied_configs, Case};
use rnn_kernels::cpu::{CpuRnn, Isa};
use rnn_kernels::rng::SplitMix64;
use rnn_kernels::{reference, ForwardInput, ForwardOutput, RnnConfig, State, Tensor, Weights};

/// f32 against the f64 reference: each element within this of the reference,
/// scaled by the size of the values (outputs are O(1)).
const TOL: f64 = 3e-5;

fn check_against(what: &str, got: &ForwardOutput<f32>, want: &ForwardOutput<f64>, tol: f64) {
    assert_close(&format!("{what}: output"), &got.output, &want.output, tol);
    assert_close(&format!("{what}: h_n"), &got.h_n, &want.h_n, tol);
    match (&got.c_n, &want.c_n) {
        (Some(g), Some(w)) => assert_close(&format!("{what}: c_n"), g, w, tol),
        (None, None) => {}
        _ => panic!("{what}: c_n on one side only"),
    }
}

/// One forward through the fast path (into NaN-poisoned outputs) against
/// the f64 reference.
#[allow(clippy::too_many_arguments)]
fn check_forward(
    what: &str,
    model: &mut CpuRnn,
    weights: &Weights<f64>,
    input: &Tensor<f64>,
    lengths: Option<&[usize]>,
    h0: Option<&Tensor<f64>>,
    c0: Option<&Tensor<f64>>,
) {
    let args64 = ForwardInput {
        input,
        lengths,
        h0,
        c0,
    };
    let want = reference::forward(weights, &args64).unwrap();
    let (input32, h0_32, c0_32) = (input.cast::<f32>(), h0.map(Tensor::cast), c0.map(Tensor::cast));
    let args = ForwardInput {
        input: &input32,
        lengths,
        h0: h0_32.as_ref(),
        c0: c0_32.as_ref(),
    };
    let mut got = nan_output(&want);
    model.forward_into(&args, &mut got).unwrap();
    check_against(what, &got, &want, TOL);
    // A second call on the same model (reused workspace) gives the same bits.
    let again = model.forward(&args).unwrap();
    assert_eq!(got, again, "{what}: a second call differs");
}

/// [`check_forward`] on fresh random inputs of `T = t`, `B = b`, with random
/// lengths and a random initial state.
fn check_random_forward(
    what: &str,
    model: &mut CpuRnn,
    weights: &Weights<f64>,
    t: usize,
    b: usize,
    rng: &mut SplitMix64,
) {
    let (input, state) = random_inputs(weights.config(), t, b, rng);
    let lengths = random_lengths(t, b, rng);
    check_forward(
        what,
        model,
        weights,
        &input,
        Some(&lengths),
        Some(&state.h),
        state.c.as_ref(),
    );
}

fn random_inputs(config: &RnnConfig, t: usize, b: usize, rng: &mut SplitMix64) -> (Tensor<f64>, State<f64>) {
    let shape = if config.batch_first {
        [b, t, config.input_size]
    } else {
        [t, b, config.input_size]
    };
    let input = random_tensor(&shape, rng);
    let mut state = State::zeros(config, b);
    state.h = random_tensor(state.h.shape(), rng);
    state.c = state.c.map(|c| random_tensor(c.shape(), rng));
    (input, state)
}

fn random_lengths(t: usize, b: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut lengths: Vec<usize> = (0..b).map(|_| rng.int_inclusive(1, t)).collect();
    lengths[0] = t;
    if b > 1 {
        lengths[b - 1] = 1;
    }
    lengths
}

#[test]
fn every_fixture_runs_through_the_fast_path() {
    for path in case_files() {
        let case = Case::<f64>::load(&path);
        let mut model = CpuRnn::new(&case.weights).unwrap();
        let want = ForwardOutput {
            output: case.output.clone(),
            h_n: case.h_n.clone(),
            c_n: case.c_n.clone(),
        };
        let input = case.input.cast::<f32>();
        let (h0, c0) = (
            case.h0.as_ref().map(Tensor::cast),
            case.c0.as_ref().map(Tensor::cast),
        );
        let args = ForwardInput {
            input: &input,
            lengths: case.lengths.as_deref(),
            h0: h0.as_ref(),
            c0: c0.as_ref(),
        };
        let mut got = nan_output(&want);
        model.forward_into(&args, &mut got).unwrap();
        check_against(&case.name, &got, &want, TOL);
    }
}

#[test]
fn varied_configurations_match_the_reference_on_every_isa_and_thread_count() {
    let mut rng = SplitMix64::new(seed());
    for config in varied_configs() {
        let weights = Weights::<f64>::random(config.clone(), rng.next_u64()).unwrap();
        for isa in Isa::available() {
            for threads in [1, 2, 3] {
                let mut model = CpuRnn::with_isa(&weights, threads, isa).unwrap();
                for (t, b) in [(7, 5), (1, 1), (3, 1), (1, 9), (6, 14)] {
                    let what = format!(
                        "{} {isa} threads={threads} T={t} B={b}",
                        rnn_kernels::weights::describe(&config)
                    );
                    let (input, state) = random_inputs(&config, t, b, &mut rng);
                    let lengths = random_lengths(t, b, &mut rng);
                    check_forward(&what, &mut model, &weights, &input, None, None, None);
                    check_forward(
                        &format!("{what} lengths={lengths:?} h0"),
                        &mut model,
                        &weights,
                        &input,
                        Some(&lengths),
                        Some(&state.h),
                        state.c.as_ref(),
                    );
                }
            }
        }
    }
}

/// Hidden and input sizes around every vector width and tile size, with
/// batches that leave partial tiles and split across threads both ways,
/// and single steps.
#[test]
fn sizes_around_vector_widths_and_tiles() {
    let mut rng = SplitMix64::new(seed());
    let sizes = [(1, 1), (8, 16), (17, 15), (33, 32), (64, 65), (100, 3), (257, 31)];
    for (i, &(hidden, input)) in sizes.iter().enumerate() {
        let cell = rnn_kernels::CellKind::ALL[i % 4];
        let mut config = RnnConfig::new(cell, input, hidden);
        config.num_layers = 1 + i % 2;
        if cell == rnn_kernels::CellKind::Lstm && hidden > 2 {
            config.proj_size = hidden / 2;
        }
        let weights = Weights::<f64>::random(config.clone(), rng.next_u64()).unwrap();
        for threads in [1, 2] {
            let mut model = CpuRnn::with_threads(&weights, threads).unwrap();
            // T = 1: a step's projection fused into its product (forward.rs).
            for (t, b) in [(4, 1), (3, 4), (5, 13), (2, 40), (1, 1), (1, 13)] {
                let what = format!(
                    "{} threads={threads} T={t} B={b}",
                    rnn_kernels::weights::describe(&config)
                );
                check_random_forward(&what, &mut model, &weights, t, b, &mut rng);
            }
        }
    }
}

/// Stepping equals the whole sequence, for the reference's step and the
/// fast one, with the state carried in place between calls.
#[test]
fn stepping_matches_the_reference_step() {
    let mut rng = SplitMix64::new(seed());
    for config in varied_configs().into_iter().filter(|c| !c.bidirectional) {
        let weights = Weights::<f64>::random(config.clone(), rng.next_u64()).unwrap();
        for threads in [1, 2] {
            let mut model = CpuRnn::with_threads(&weights, threads).unwrap();
            let b = 3;
            let (_, start) = random_inputs(&config, 1, b, &mut rng);
            let mut state64 = start.clone();
            let mut state32 = State {
                h: start.h.cast::<f32>(),
                c: start.c.as_ref().map(Tensor::cast),
            };
            let mut out = Tensor::full([b, config.output_size()], f32::NAN);
            for step in 0..5 {
                let x = random_tensor::<f64>(&[b, config.input_size], &mut rng);
                let want = reference::step(&weights, &x, &mut state64).unwrap();
                model.step_into(&x.cast(), &mut state32, &mut out).unwrap();
                let what = format!("{} step {step}", rnn_kernels::weights::describe(&config));
                assert_close(&format!("{what}: out"), &out, &want, TOL);
                assert_close(&format!("{what}: h"), &state32.h, &state64.h, TOL);
                if let (Some(got), Some(want)) = (&state32.c, &state64.c) {
                    assert_close(&format!("{what}: c"), got, want, TOL);
                }
            }
        }
    }
}

#[test]
fn results_are_bitwise_the_same_run_to_run_and_across_thread_counts_per_row() {
    let config = RnnConfig {
        num_layers: 2,
        ..RnnConfig::lstm(6, 64)
    };
    let weights = Weights::<f32>::random(config.clone(), 3).unwrap();
    let mut rng = SplitMix64::new(4);
    let input = random_tensor::<f32>(&[48, 32, 6], &mut rng);
    let lengths: Vec<usize> = (0..32).map(|b| 12 + b).collect();
    let args = ForwardInput::new(&input).lengths(&lengths);
    let mut one = CpuRnn::with_threads(&weights, 1).unwrap();
    let first = one.forward(&args).unwrap();
    assert_eq!(first, one.forward(&args).unwrap());
    // Threads split rows or units, never a sum: the answer is the same bits.
    for threads in [2, 3, 4] {
        let mut model = CpuRnn::with_threads(&weights, threads).unwrap();
        assert_eq!(first, model.forward(&args).unwrap(), "threads={threads}");
    }
}

#[test]
fn bad_arguments_get_the_reference_errors() {
    let config = RnnConfig::lstm(3, 4);
    let weights = Weights::<f32>::random(config.clone(), 0).unwrap();
    let mut model = CpuRnn::new(&weights).unwrap();
    let input = Tensor::<f32>::zeros([2, 3, 5]);
    let fast = model.forward(&ForwardInput::new(&input)).unwrap_err().to_string();
    let slow = reference::forward(&weights, &ForwardInput::new(&input))
        .unwrap_err()
        .to_string();
    assert_eq!(fast, slow);
    let input = Tensor::<f32>::zeros([2, 3, 3]);
    let mut out = model.forward(&ForwardInput::new(&input)).unwrap();
    out.h_n = Tensor::zeros([1, 2, 4]);
    let err = model
        .forward_into(&ForwardInput::new(&input), &mut out)
        .unwrap_err();
    assert_eq!(err.to_string(), "h_n: expected shape [1, 3, 4], found [1, 2, 4]");
    let mut state = State::zeros(&config, 2);
    let mut h = Tensor::zeros([3, 4]);
    let err = model
        .step_into(&Tensor::zeros([2, 3]), &mut state, &mut h)
        .unwrap_err();
    assert_eq!(err.to_string(), "out: expected shape [2, 4], found [3, 4]");
}

/// `actual` within `rel` of `expected`, relative to the largest |expected|
/// (gradients of long sums grow with T and B).
#[track_caller]
fn assert_close_scaled(what: &str, actual: &Tensor<f32>, expected: &Tensor<f64>, rel: f64) {
    let scale = expected.data().iter().fold(1.0f64, |m, v| m.max(v.abs()));
    assert_close(what, actual, expected, rel * scale);
}

/// Training through the fast path against the f64 reference: outputs and
/// every gradient, with random output gradients, h0/c0, varlen, dropout.
#[allow(clippy::too_many_arguments)]
fn check_training(
    what: &str,
    model: &mut CpuRnn,
    weights: &Weights<f64>,
    input: &Tensor<f64>,
    lengths: Option<&[usize]>,
    state: Option<&State<f64>>,
    dropout_seed: Option<u64>,
    rng: &mut SplitMix64,
) {
    let config = weights.config();
    let args64 = ForwardInput {
        input,
        lengths,
        h0: state.map(|s| &s.h),
        c0: state.and_then(|s| s.c.as_ref()),
    };
    let (want, reserve64) = reference::forward_train(weights, &args64, dropout_seed).unwrap();
    let grad_output = random_tensor::<f64>(want.output.shape(), rng);
    let grad_h_n = random_tensor::<f64>(want.h_n.shape(), rng);
    let grad_c_n = want.c_n.as_ref().map(|c| random_tensor::<f64>(c.shape(), rng));
    let grads64 = rnn_kernels::GradOutputs {
        output: &grad_output,
        h_n: Some(&grad_h_n),
        c_n: grad_c_n.as_ref(),
    };
    let want_grads = reference::backward(weights, &args64, &reserve64, &grads64).unwrap();

    let input32 = input.cast::<f32>();
    let h0 = state.map(|s| s.h.cast::<f32>());
    let c0 = state.and_then(|s| s.c.as_ref().map(Tensor::cast::<f32>));
    let args = ForwardInput {
        input: &input32,
        lengths,
        h0: h0.as_ref(),
        c0: c0.as_ref(),
    };
    let (got, reserve) = model.forward_train(&args, dropout_seed).unwrap();
    check_against(&format!("{what} forward_train"), &got, &want, TOL);
    let (go, gh, gc) = (
        grad_output.cast::<f32>(),
        grad_h_n.cast::<f32>(),
        grad_c_n.as_ref().map(Tensor::cast::<f32>),
    );
    let grads = rnn_kernels::GradOutputs {
        output: &go,
        h_n: Some(&gh),
        c_n: gc.as_ref(),
    };
    let got_grads = model.backward(&args, &reserve, &grads).unwrap();
    let rel = 2e-4;
    assert_close_scaled(
        &format!("{what}: grad input"),
        &got_grads.input,
        &want_grads.input,
        rel,
    );
    assert_close_scaled(&format!("{what}: grad h0"), &got_grads.h0, &want_grads.h0, rel);
    if let (Some(g), Some(w)) = (&got_grads.c0, &want_grads.c0) {
        assert_close_scaled(&format!("{what}: grad c0"), g, w, rel);
    }
    for ((name, g), (_, w)) in got_grads
        .weights
        .named_parameters()
        .into_iter()
        .zip(want_grads.weights.named_parameters())
    {
        assert_close_scaled(&format!("{what}: grad {name}"), g, w, rel);
    }
    // Bitwise the same when run again.
    let again = model.backward(&args, &reserve, &grads).unwrap();
    assert_eq!(got_grads, again, "{what}: a second backward differs");
    let _ = config;
}

#[test]
fn training_matches_the_reference_on_every_isa_and_thread_count() {
    let mut rng = SplitMix64::new(seed());
    for mut config in varied_configs() {
        if config.num_layers > 1 {
            config.dropout = 0.3;
        }
        let weights = Weights::<f64>::random(config.clone(), rng.next_u64()).unwrap();
        for isa in Isa::available() {
            for threads in [1, 2, 3] {
                let mut model = CpuRnn::with_isa(&weights, threads, isa).unwrap();
                for (t, b) in [(5, 4), (1, 1), (4, 9)] {
                    let what = format!(
                        "{} {isa} threads={threads} T={t} B={b}",
                        rnn_kernels::weights::describe(&config)
                    );
                    let (input, state) = random_inputs(&config, t, b, &mut rng);
                    let lengths = random_lengths(t, b, &mut rng);
                    check_training(&what, &mut model, &weights, &input, None, None, None, &mut rng);
                    check_training(
                        &format!("{what} varlen h0 dropout"),
                        &mut model,
                        &weights,
                        &input,
                        Some(&lengths),
                        Some(&state),
                        Some(rng.next_u64()),
                        &mut rng,
                    );
                }
            }
        }
    }
}

#[test]
fn training_at_sizes_around_vector_widths() {
    let mut rng = SplitMix64::new(seed());
    for (i, &(hidden, input)) in [(1, 2), (17, 15), (33, 32), (64, 6), (100, 3)].iter().enumerate() {
        let cell = rnn_kernels::CellKind::ALL[i % 4];
        let mut config = RnnConfig::new(cell, input, hidden);
        config.num_layers = 2;
        if cell == rnn_kernels::CellKind::Lstm && hidden > 2 {
            config.proj_size = hidden / 3;
        }
        let weights = Weights::<f64>::random(config.clone(), rng.next_u64()).unwrap();
        let mut model = CpuRnn::with_threads(&weights, 2).unwrap();
        for (t, b) in [(3, 1), (4, 13)] {
            let what = format!("{} T={t} B={b}", rnn_kernels::weights::describe(&config));
            let (input, state) = random_inputs(&config, t, b, &mut rng);
            let lengths = random_lengths(t, b, &mut rng);
            check_training(
                &what,
                &mut model,
                &weights,
                &input,
                Some(&lengths),
                Some(&state),
                None,
                &mut rng,
            );
        }
    }
}

#[test]
fn a_reserve_from_other_inputs_is_refused() {
    let weights = Weights::<f32>::random(RnnConfig::lstm(3, 4), 0).unwrap();
    let mut model = CpuRnn::new(&weights).unwrap();
    let input = Tensor::<f32>::zeros([2, 3, 3]);
    let (out, reserve) = model.forward_train(&ForwardInput::new(&input), None).unwrap();
    let grads = rnn_kernels::GradOutputs {
        output: &out.output,
        h_n: None,
        c_n: None,
    };
    let other = Tensor::<f32>::zeros([3, 3, 3]);
    let err = model
        .backward(&ForwardInput::new(&other), &reserve, &grads)
        .unwrap_err();
    assert!(err.to_string().starts_with("reserve:"), "{err}");
    let lengths = [1, 2, 2];
    let err = model
        .backward(&ForwardInput::new(&input).lengths(&lengths), &reserve, &grads)
        .unwrap_err();
    assert!(err.to_string().starts_with("reserve:"), "{err}");
}

/// A reserve and the model's buffers reused across calls of different
/// sizes, after a call whose inputs were NaN: nothing stale may leak in
/// (rows past a sequence's end are summed over by the weight gradients).
#[test]
fn reused_reserves_and_workspaces_leak_nothing_between_calls() {
    let mut rng = SplitMix64::new(seed());
    for config in varied_configs() {
        let weights = Weights::<f64>::random(config.clone(), rng.next_u64()).unwrap();
        let mut model = CpuRnn::with_threads(&weights, 2).unwrap();
        let mut reserve = rnn_kernels::cpu::CpuReserve::empty();
        for (t, b, poison) in [(6, 5, true), (6, 5, false), (3, 7, false), (7, 2, false)] {
            let (input, _) = random_inputs(&config, t, b, &mut rng);
            let lengths = random_lengths(t, b, &mut rng);
            let input32 = if poison {
                Tensor::full(input.shape(), f32::NAN)
            } else {
                input.cast::<f32>()
            };
            let args = ForwardInput::new(&input32).lengths(&lengths);
            let mut out = model.forward(&args).unwrap();
            model
                .forward_train_into(&args, &mut out, &mut reserve, None)
                .unwrap();
            let ones = Tensor::full(out.output.shape(), 1.0f32);
            let grads = rnn_kernels::GradOutputs {
                output: &ones,
                h_n: None,
                c_n: None,
            };
            let got = model.backward(&args, &reserve, &grads).unwrap();
            if poison {
                continue;
            }
            let args64 = ForwardInput::new(&input).lengths(&lengths);
            let (want_out, reserve64) = reference::forward_train(&weights, &args64, None).unwrap();
            let ones64 = Tensor::full(want_out.output.shape(), 1.0f64);
            let grads64 = rnn_kernels::GradOutputs {
                output: &ones64,
                h_n: None,
                c_n: None,
            };
            let want = reference::backward(&weights, &args64, &reserve64, &grads64).unwrap();
            let what = format!("{} T={t} B={b}", rnn_kernels::weights::describe(&config));
            check_against(&what, &out, &want_out, TOL);
            assert_close_scaled(&format!("{what}: grad input"), &got.input, &want.input, 2e-4);
            for ((name, g), (_, w)) in got
                .weights
                .named_parameters()
                .into_iter()
                .zip(want.weights.named_parameters())
            {
                assert_close_scaled(&format!("{what}: grad {name}"), g, w, 2e-4);
            }
        }
    }
}

/// A long sequence whose input projection is made a stretch of steps at a
/// time (a task's whole projection would exceed the caches): both
/// directions, variable lengths from 1 to T, one and two threads. A GRU:
/// an LSTM this narrow sums its projection into each step's product instead.
#[test]
fn long_sequences_projected_in_stretches_match_the_reference() {
    let mut rng = SplitMix64::new(seed());
    let config = RnnConfig {
        bidirectional: true,
        ..RnnConfig::gru(6, 64)
    };
    let weights = Weights::<f64>::random(config.clone(), rng.next_u64()).unwrap();
    // 800 steps of 16 rows of 3 · 64 gate columns: 9.8 MB of projection.
    let (t, b) = (800, 16);
    let (input, state) = random_inputs(&config, t, b, &mut rng);
    let lengths = random_lengths(t, b, &mut rng);
    for threads in [1, 2] {
        let mut model = CpuRnn::with_threads(&weights, threads).unwrap();
        let what = format!("bidirectional gru T={t} B={b} threads={threads}");
        check_forward(
            &what,
            &mut model,
            &weights,
            &input,
            Some(&lengths),
            Some(&state.h),
            state.c.as_ref(),
        );
    }
}

/// Layers that project apart and layers that sum their projection into each
/// step (forward.rs, `FusedInput::pays`) in one network: a first layer too
/// wide to fuse, then narrow ones, with the workspace reused across shapes
/// that fuse differently (one step, many steps, a batch too small to fuse).
#[test]
fn fused_and_separate_projections_in_one_network() {
    let mut rng = SplitMix64::new(seed());
    for cell in [rnn_kernels::CellKind::Lstm, rnn_kernels::CellKind::RnnTanh] {
        let config = RnnConfig {
            num_layers: 3,
            ..RnnConfig::new(cell, 3000, 48)
        };
        let weights = Weights::<f64>::random(config.clone(), rng.next_u64()).unwrap();
        for threads in [1, 2] {
            let mut model = CpuRnn::with_threads(&weights, threads).unwrap();
            for (t, b) in [(5, 24), (1, 24), (9, 3), (5, 24)] {
                let what = format!("{cell:?} I=3000 H=48 L=3 threads={threads} T={t} B={b}");
                check_random_forward(&what, &mut model, &weights, t, b, &mut rng);
            }
        }
    }
}
