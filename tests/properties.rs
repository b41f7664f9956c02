//! Identities the reference must satisfy for any weights: they catch what a
//! fixed set of fixtures might miss (row mixing, length handling, direction
//! bookkeeping, state carrying).

mod common;

use common::{assert_close, random_tensor, varied_configs};
use rnn_kernels::rng::SplitMix64;
use rnn_kernels::{reference, ForwardInput, ForwardOutput, RnnConfig, State, Tensor, Weights};

const T: usize = 7;
const B: usize = 5;
const LENGTHS: [usize; B] = [4, 1, 7, 2, 6];

/// Input, `h0` and `c0` for `config` (time-major or batch-first as configured).
fn random_args(config: &RnnConfig, seq_len: usize, batch: usize, seed: u64) -> (Tensor<f64>, State<f64>) {
    let mut rng = SplitMix64::new(seed);
    let shape = if config.batch_first {
        [batch, seq_len, config.input_size]
    } else {
        [seq_len, batch, config.input_size]
    };
    let input = random_tensor(&shape, &mut rng);
    let mut state = State::zeros(config, batch);
    state.h = random_tensor(state.h.shape(), &mut rng);
    state.c = state.c.map(|c| random_tensor(c.shape(), &mut rng));
    (input, state)
}

fn run(
    weights: &Weights<f64>,
    input: &Tensor<f64>,
    lengths: Option<&[usize]>,
    s: &State<f64>,
) -> ForwardOutput<f64> {
    let args = ForwardInput {
        input,
        lengths,
        h0: Some(&s.h),
        c0: s.c.as_ref(),
    };
    reference::forward(weights, &args).unwrap()
}

/// Rows `rows` along axis `axis` (0 or 1) of a 3-D tensor, the others kept.
fn select(t: &Tensor<f64>, axis: usize, rows: std::ops::Range<usize>) -> Tensor<f64> {
    let s = t.shape();
    let (a, b, c) = (s[0], s[1], s[2]);
    let mut data = Vec::new();
    for i in 0..a {
        for j in 0..b {
            let keep = if axis == 0 {
                rows.contains(&i)
            } else {
                rows.contains(&j)
            };
            if keep {
                data.extend_from_slice(&t.data()[(i * b + j) * c..(i * b + j + 1) * c]);
            }
        }
    }
    let mut shape = s.to_vec();
    shape[axis] = rows.len();
    Tensor::new(shape, data).unwrap()
}

fn time_axis(config: &RnnConfig) -> usize {
    usize::from(config.batch_first)
}

fn state_row(s: &State<f64>, b: usize) -> State<f64> {
    State {
        h: select(&s.h, 1, b..b + 1),
        c: s.c.as_ref().map(|c| select(c, 1, b..b + 1)),
    }
}

const TOL: f64 = 1e-12;

#[test]
fn each_sequence_alone_equals_it_in_a_varlen_batch_truncated_to_its_length() {
    for (k, config) in varied_configs().into_iter().enumerate() {
        let weights = Weights::<f64>::random(config.clone(), k as u64).unwrap();
        let (input, state) = random_args(&config, T, B, 100 + k as u64);
        let batch = run(&weights, &input, Some(&LENGTHS), &state);
        let (t_axis, b_axis) = (time_axis(&config), 1 - time_axis(&config));
        for (b, &len) in LENGTHS.iter().enumerate() {
            let alone_input = select(&select(&input, b_axis, b..b + 1), t_axis, 0..len);
            let alone = run(&weights, &alone_input, None, &state_row(&state, b));
            let ctx = |what: &str| format!("config {k} row {b} {what}");
            let batch_rows = select(&batch.output, b_axis, b..b + 1);
            assert_close(
                &ctx("output"),
                &select(&batch_rows, t_axis, 0..len),
                &alone.output,
                TOL,
            );
            let padding = select(&batch_rows, t_axis, len..T);
            assert!(
                padding.data().iter().all(|&v| v == 0.0),
                "{}",
                ctx("padding is zero")
            );
            assert_close(&ctx("h_n"), &select(&batch.h_n, 1, b..b + 1), &alone.h_n, TOL);
            if let (Some(c), Some(c_alone)) = (&batch.c_n, &alone.c_n) {
                assert_close(&ctx("c_n"), &select(c, 1, b..b + 1), c_alone, TOL);
            }
        }
    }
}

#[test]
fn full_lengths_equal_no_lengths() {
    for (k, config) in varied_configs().into_iter().enumerate() {
        let weights = Weights::<f64>::random(config.clone(), k as u64).unwrap();
        let (input, state) = random_args(&config, T, B, 200 + k as u64);
        let with = run(&weights, &input, Some(&[T; B]), &state);
        assert_eq!(with, run(&weights, &input, None, &state), "config {k}");
    }
}

/// The reverse direction of a one-layer bidirectional network is the forward
/// cell, with the reverse weights, run on each sequence's valid steps flipped.
#[test]
fn reverse_direction_equals_forward_cell_on_flipped_sequence() {
    for (k, config) in varied_configs().into_iter().enumerate() {
        let config = RnnConfig {
            num_layers: 1,
            bidirectional: true,
            batch_first: false,
            ..config
        };
        let weights = Weights::<f64>::random(config.clone(), 300 + k as u64).unwrap();
        let (input, state) = random_args(&config, T, B, 400 + k as u64);
        let both = run(&weights, &input, Some(&LENGTHS), &state);

        let forward_only = RnnConfig {
            bidirectional: false,
            ..config.clone()
        };
        let reverse_as_forward = Weights::<f64>::from_named(
            forward_only.clone(),
            weights
                .named_parameters()
                .into_iter()
                .filter_map(|(n, t)| n.strip_suffix("_reverse").map(|n| (n.to_string(), t.clone())))
                .collect(),
        )
        .unwrap();
        let hout = config.output_size();
        for (b, &len) in LENGTHS.iter().enumerate() {
            let row = select(&input, 1, b..b + 1);
            let flipped: Vec<f64> = (0..len)
                .rev()
                .flat_map(|t| select(&row, 0, t..t + 1).into_data())
                .collect();
            let flipped = Tensor::new([len, 1, config.input_size], flipped).unwrap();
            let s = State {
                h: select(&state.h, 0, 1..2),
                c: state.c.as_ref().map(|c| select(c, 0, 1..2)),
            };
            let alone = run(&reverse_as_forward, &flipped, None, &state_row(&s, b));
            for t in 0..len {
                let got = &both.output.data()[(t * B + b) * 2 * hout + hout..][..hout];
                let want = &alone.output.data()[(len - 1 - t) * hout..][..hout];
                for (g, w) in got.iter().zip(want) {
                    assert!((g - w).abs() <= TOL, "config {k} row {b} t {t}: {g} vs {w}");
                }
            }
            let reverse_h_n = select(&select(&both.h_n, 0, 1..2), 1, b..b + 1);
            assert_close(&format!("config {k} row {b} h_n"), &reverse_h_n, &alone.h_n, TOL);
        }
    }
}

#[test]
fn stepping_one_timestep_at_a_time_equals_the_whole_sequence() {
    for (k, config) in varied_configs()
        .into_iter()
        .filter(|c| !c.bidirectional)
        .enumerate()
    {
        let weights = Weights::<f64>::random(config.clone(), 500 + k as u64).unwrap();
        let (input, state) = random_args(&config, T, B, 600 + k as u64);
        let whole = run(&weights, &input, None, &state);
        let t_axis = time_axis(&config);
        let mut stepped = state.clone();
        for t in 0..T {
            let x = select(&input, t_axis, t..t + 1);
            let x = Tensor::new([B, config.input_size], x.into_data()).unwrap();
            let out = reference::step(&weights, &x, &mut stepped).unwrap();
            let want = select(&whole.output, t_axis, t..t + 1);
            assert_eq!(out.data(), want.data(), "config {k} step {t}");
        }
        assert_eq!(stepped.h, whole.h_n, "config {k} h");
        assert_eq!(stepped.c, whole.c_n, "config {k} c");
    }
}

#[test]
fn stepping_a_bidirectional_network_is_an_error() {
    let config = RnnConfig {
        bidirectional: true,
        ..RnnConfig::gru(2, 3)
    };
    let weights = Weights::<f64>::random(config.clone(), 0).unwrap();
    let mut state = State::zeros(&config, 1);
    let err = reference::step(&weights, &Tensor::zeros([1, 2]), &mut state).unwrap_err();
    assert!(err.to_string().contains("bidirectional"), "{err}");
}

#[test]
fn batch_first_equals_time_major_transposed() {
    for (k, config) in varied_configs().into_iter().enumerate() {
        let tm = RnnConfig {
            batch_first: false,
            ..config.clone()
        };
        let bf = RnnConfig {
            batch_first: true,
            ..config
        };
        let weights_tm = Weights::<f64>::random(tm.clone(), 700 + k as u64).unwrap();
        let weights_bf = Weights::from_named(
            bf.clone(),
            weights_tm
                .named_parameters()
                .into_iter()
                .map(|(n, t)| (n, t.clone()))
                .collect(),
        )
        .unwrap();
        let (input, state) = random_args(&tm, T, B, 800 + k as u64);
        let a = run(&weights_tm, &input, Some(&LENGTHS), &state);
        let b = run(
            &weights_bf,
            &input.swap_leading_axes().unwrap(),
            Some(&LENGTHS),
            &state,
        );
        assert_eq!(a.output, b.output.swap_leading_axes().unwrap(), "config {k}");
        assert_eq!((a.h_n, a.c_n), (b.h_n, b.c_n), "config {k}");
    }
}

/// f32 arithmetic stays within f32 precision of f64 on typical inputs,
/// including a long sequence where errors could accumulate.
#[test]
fn f32_is_within_tolerance_of_f64() {
    for (k, config) in varied_configs().into_iter().enumerate() {
        let weights = Weights::<f64>::random(config.clone(), 900 + k as u64).unwrap();
        for seq_len in [T, 300] {
            let (input, state) = random_args(&config, seq_len, 3, 1000 + k as u64);
            let lengths = [seq_len, 1, seq_len / 2];
            let exact = run(&weights, &input, Some(&lengths), &state);
            let weights32 = weights.cast::<f32>();
            let (input32, h0, c0) = (
                input.cast::<f32>(),
                state.h.cast::<f32>(),
                state.c.as_ref().map(|c| c.cast()),
            );
            let args = ForwardInput {
                input: &input32,
                lengths: Some(&lengths),
                h0: Some(&h0),
                c0: c0.as_ref(),
            };
            let approx = reference::forward(&weights32, &args).unwrap();
            // tanh and sigmoid bound every output near 1: relu networks may grow.
            let scale = exact.output.data().iter().fold(1.0f64, |m, v| m.max(v.abs()));
            assert_close(
                &format!("config {k} T {seq_len}"),
                &approx.output,
                &exact.output,
                1e-5 * scale,
            );
            assert_close(
                &format!("config {k} T {seq_len} h_n"),
                &approx.h_n,
                &exact.h_n,
                1e-5 * scale,
            );
        }
    }
}

/// Large enough that the reference splits rows across threads: the split must
/// not change a single bit.
#[test]
fn threaded_rows_equal_row_by_row() {
    let config = RnnConfig {
        num_layers: 2,
        bidirectional: true,
        ..RnnConfig::lstm(16, 64)
    };
    let weights = Weights::<f64>::random(config.clone(), 1).unwrap();
    let batch = 24;
    let (input, state) = random_args(&config, 40, batch, 2);
    let whole = run(&weights, &input, None, &state);
    for b in [0, 7, batch - 1] {
        let alone = run(
            &weights,
            &select(&input, 1, b..b + 1),
            None,
            &state_row(&state, b),
        );
        assert_eq!(select(&whole.output, 1, b..b + 1), alone.output, "row {b}");
    }
}
