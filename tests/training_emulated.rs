//! Training on the CUDA kernels, run on the CPU through the host SIMT
//! emulation: the forward that keeps a reserve, the reverse-time recurrence
//! and the gradient products, against the CPU reference's forward_train and
//! backward. Every split strategy, dropout, every cell and configuration;
//! every output and gradient buffer starts as NaN.

mod common;

use common::{
    assert_close, emulated_occupancy as occupancy, random_tensor, run_emulated, varied_configs,
    EMULATED_LIMITS as LIMITS,
};
use rnn_kernels::cuda::launch::train::{
    backward_steps, forward_train_steps, TrainingBuffers, TrainingLayout,
};
use rnn_kernels::cuda::launch::{plan_pass, Blocking, Pass, RecurrencePlan, Strategy, WeightLayout};
use rnn_kernels::dropout::Dropout;
use rnn_kernels::reference;
use rnn_kernels::rng::SplitMix64;
use rnn_kernels::sequence::{c_shape, h_shape};
use rnn_kernels::GradOutputs;
use rnn_kernels::{ForwardInput, RnnConfig, Tensor, Weights};

fn nan(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}

fn check(config: &RnnConfig, seq_len: usize, lengths: &[usize], dropout_seed: Option<u64>, seed: u64) {
    let batch = lengths.len();
    let weights = Weights::<f64>::random(config.clone(), seed)
        .unwrap()
        .cast::<f32>();
    let mut rng = SplitMix64::new(seed + 1);
    let in_shape = if config.batch_first {
        [batch, seq_len, config.input_size]
    } else {
        [seq_len, batch, config.input_size]
    };
    let out_shape = if config.batch_first {
        [batch, seq_len, config.output_width()]
    } else {
        [seq_len, batch, config.output_width()]
    };
    let input: Tensor<f32> = random_tensor(&in_shape, &mut rng);
    let h0: Tensor<f32> = random_tensor(&h_shape(config, batch), &mut rng);
    let c0: Option<Tensor<f32>> = config
        .has_cell_state()
        .then(|| random_tensor(&c_shape(config, batch), &mut rng));
    let grad_output: Tensor<f32> = random_tensor(&out_shape, &mut rng);
    let grad_h_n: Tensor<f32> = random_tensor(&h_shape(config, batch), &mut rng);
    let grad_c_n: Option<Tensor<f32>> = c0.as_ref().map(|c| random_tensor(c.shape(), &mut rng));

    // The reference, in f64 from the same f32 values.
    let w64 = weights.cast::<f64>();
    let (x64, h064, c064) = (
        input.cast::<f64>(),
        h0.cast::<f64>(),
        c0.as_ref().map(|c| c.cast::<f64>()),
    );
    let (go64, gh64, gc64) = (
        grad_output.cast::<f64>(),
        grad_h_n.cast::<f64>(),
        grad_c_n.as_ref().map(|c| c.cast::<f64>()),
    );
    let args = ForwardInput {
        input: &x64,
        lengths: Some(lengths),
        h0: Some(&h064),
        c0: c064.as_ref(),
    };
    let (expected, reserve) = reference::forward_train(&w64, &args, dropout_seed).unwrap();
    let grads = GradOutputs {
        output: &go64,
        h_n: Some(&gh64),
        c_n: gc64.as_ref(),
    };
    let expected_grads = reference::backward(&w64, &args, &reserve, &grads).unwrap();
    let dropout = dropout_seed.filter(|_| config.dropout > 0.0).map(|seed| Dropout {
        p: config.dropout,
        seed,
    });

    let layout = WeightLayout::new(config);
    let packed = layout.pack(&weights);
    let lengths_i32: Vec<i32> = lengths.iter().map(|&l| l as i32).collect();
    for strategy in [
        Strategy::Auto,
        Strategy::OnChip { ctas_per_group: 2 },
        Strategy::OffChip { ctas_per_group: 3 },
    ] {
        let mut forward = plan_pass(Pass::Forward, config, batch, &LIMITS, &occupancy, strategy).unwrap();
        if let Strategy::OnChip { .. } = strategy {
            // The training forward with several rows per thread and lanes per product.
            let whole_batch = RecurrencePlan {
                batch_tile: batch,
                tiles: 1,
                ..forward
            };
            let blocking = Blocking {
                k_lanes: 8,
                rows_per_thread: 2,
            };
            forward = whole_batch.with_blocking(config, blocking).unwrap();
        }
        let backward = plan_pass(Pass::Backward, config, batch, &LIMITS, &occupancy, strategy).unwrap();
        let tl = TrainingLayout::new(config, &forward, &backward, seq_len, batch, dropout.is_some());
        let mut reserve = nan(tl.reserve_words);
        let mut workspace = nan(tl.workspace_words);
        let mut output = nan(expected.output.len());
        let mut h_n = nan(expected.h_n.len());
        let mut c_n = nan(expected.c_n.as_ref().map_or(0, |c| c.len()));
        let mut grad_input = nan(input.len());
        let mut grad_h0 = nan(h0.len());
        let mut grad_c0 = nan(c0.as_ref().map_or(0, |c| c.len()));
        let mut grad_weights = nan(layout.len);
        let addr = |v: &[f32]| if v.is_empty() { 0 } else { v.as_ptr() as u64 };
        let addr_mut = |v: &mut [f32]| if v.is_empty() { 0 } else { v.as_mut_ptr() as u64 };
        let buffers = TrainingBuffers {
            input: addr(input.data()),
            lengths: lengths_i32.as_ptr() as u64,
            h0: addr(h0.data()),
            c0: c0.as_ref().map_or(0, |c| addr(c.data())),
            output: addr_mut(&mut output),
            h_n: addr_mut(&mut h_n),
            c_n: addr_mut(&mut c_n),
            grad_output: addr(grad_output.data()),
            grad_h_n: addr(grad_h_n.data()),
            grad_c_n: grad_c_n.as_ref().map_or(0, |c| addr(c.data())),
            grad_input: addr_mut(&mut grad_input),
            grad_h0: addr_mut(&mut grad_h0),
            grad_c0: addr_mut(&mut grad_c0),
            grad_weights: addr_mut(&mut grad_weights),
            weights: addr(&packed),
            reserve: addr_mut(&mut reserve),
            workspace: addr_mut(&mut workspace),
        };
        let mut steps =
            forward_train_steps(config, &forward, &layout, &tl, seq_len, batch, dropout, &buffers).unwrap();
        steps.extend(
            backward_steps(config, &backward, &layout, &tl, seq_len, batch, dropout, &buffers).unwrap(),
        );
        run_emulated(&steps);

        let what = |t: &str| {
            format!(
                "{} {strategy:?} dropout {dropout_seed:?}: {t}",
                rnn_kernels::weights::describe(config)
            )
        };
        let tensor = |shape: &[usize], data: Vec<f32>| Tensor::new(shape, data).unwrap();
        assert_close(
            &what("output"),
            &tensor(expected.output.shape(), output),
            &expected.output,
            2e-5,
        );
        assert_close(
            &what("h_n"),
            &tensor(expected.h_n.shape(), h_n),
            &expected.h_n,
            2e-5,
        );
        if let Some(e) = &expected.c_n {
            assert_close(&what("c_n"), &tensor(e.shape(), c_n), e, 2e-5);
        }
        assert_close(
            &what("grad_input"),
            &tensor(input.shape(), grad_input),
            &expected_grads.input,
            1e-4,
        );
        assert_close(
            &what("grad_h0"),
            &tensor(h0.shape(), grad_h0),
            &expected_grads.h0,
            1e-4,
        );
        if let Some(e) = &expected_grads.c0 {
            assert_close(&what("grad_c0"), &tensor(e.shape(), grad_c0), e, 1e-4);
        }
        let got = layout.unpack(config, &grad_weights).unwrap();
        for ((name, g), (_, e)) in got
            .named_parameters()
            .into_iter()
            .zip(expected_grads.weights.named_parameters())
        {
            assert_close(&what(&format!("grad.{name}")), g, e, 1e-4);
        }
    }
}

#[test]
fn every_configuration_trains_like_the_reference() {
    for (k, config) in varied_configs().into_iter().enumerate() {
        check(&config, 5, &[3, 1, 5], None, 10 + k as u64);
    }
}

#[test]
fn dropout_between_layers_matches_the_reference() {
    let configs = [
        RnnConfig {
            num_layers: 3,
            dropout: 0.3,
            ..RnnConfig::lstm(3, 5)
        },
        RnnConfig {
            num_layers: 2,
            dropout: 0.5,
            bidirectional: true,
            batch_first: true,
            ..RnnConfig::gru(2, 4)
        },
    ];
    for (k, config) in configs.into_iter().enumerate() {
        check(&config, 4, &[4, 2], Some(77), 30 + k as u64);
    }
}

#[test]
fn odd_sizes_single_step_and_single_row() {
    check(&RnnConfig::lstm(1, 1), 1, &[1], None, 50);
    check(
        &RnnConfig {
            proj_size: 2,
            bidirectional: true,
            ..RnnConfig::lstm(4, 9)
        },
        6,
        &[6, 2, 1, 5],
        None,
        51,
    );
    check(
        &RnnConfig {
            gru_linear_before_reset: false,
            num_layers: 2,
            ..RnnConfig::gru(3, 7)
        },
        4,
        &[4, 3],
        None,
        52,
    );
}
