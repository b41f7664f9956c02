//! The CUDA kernels, run on the CPU through the host SIMT emulation
//! (`emu/`), against the CPU reference. The launch plan is the one the CUDA
//! backend executes; fake device limits force every path: one CTA per group,
//! groups of several CTAs meeting at barriers (with and without the LSTM
//! projection / original-GRU second phase), and `W_hh` read from L2 when it
//! does not fit on chip; forced blockings take every way of sharing the dot
//! products (lanes per product, rows per thread, partial row blocks, work
//! items that end mid-warp). Outputs start as NaN, so an element no kernel
//! wrote fails the comparison.

mod common;

use common::{
    assert_close, emulated_occupancy as occupancy, random_tensor, varied_configs, EMULATED_LIMITS as LIMITS,
};
use rnn_kernels::cuda::launch::plan::WorkspaceLayout;
use rnn_kernels::cuda::launch::{
    forward_steps, plan_recurrence, Blocking, DeviceLimits, ForwardBuffers, RecurrencePlan, Strategy,
    WeightLayout,
};
use rnn_kernels::rng::SplitMix64;
use rnn_kernels::{reference, ForwardInput, RnnConfig, State, Tensor, Weights};

/// The strategies (and blockings) that between them take every kernel path
/// on the emulated device.
fn plans(config: &RnnConfig, batch: usize) -> Vec<RecurrencePlan> {
    let strategies = [
        Strategy::Auto,
        Strategy::OnChip { ctas_per_group: 2 },
        Strategy::OnChip { ctas_per_group: 3 },
        Strategy::OffChip { ctas_per_group: 1 },
        Strategy::OffChip { ctas_per_group: 2 },
    ];
    let mut plans: Vec<RecurrencePlan> = strategies
        .into_iter()
        .map(|s| plan_recurrence(config, batch, &LIMITS, &occupancy, s).unwrap())
        .collect();
    // The whole batch in one tile, so that threads get several rows.
    let blocked = |plan: &RecurrencePlan, k_lanes, rows_per_thread| {
        let whole_batch = RecurrencePlan {
            batch_tile: batch,
            tiles: 1,
            ..*plan
        };
        whole_batch
            .with_blocking(
                config,
                Blocking {
                    k_lanes,
                    rows_per_thread,
                },
            )
            .unwrap()
    };
    let (auto, split, off_chip) = (plans[0], plans[2], plans[4]);
    plans.extend([
        blocked(&auto, 1, 1),
        blocked(&auto, 2, 4),
        blocked(&auto, 32, 2),
        blocked(&split, 8, 4),
        blocked(&off_chip, 4, 2),
        blocked(&off_chip, 32, 4),
    ]);
    plans
}

/// Runs a forward pass through the emulated kernels.
fn emulated_forward(
    weights: &Weights<f32>,
    plan: &RecurrencePlan,
    args: &ForwardInput<'_, f32>,
) -> (Tensor<f32>, Tensor<f32>, Option<Tensor<f32>>) {
    let config = weights.config();
    let shape = args.input.shape();
    let (seq_len, batch) = if config.batch_first {
        (shape[1], shape[0])
    } else {
        (shape[0], shape[1])
    };
    let layout = WeightLayout::new(config);
    let packed = layout.pack(weights);
    let mut workspace = vec![f32::NAN; WorkspaceLayout::new(config, plan, seq_len, batch).words];
    let lengths: Option<Vec<i32>> = args.lengths.map(|l| l.iter().map(|&v| v as i32).collect());
    let out_shape = if config.batch_first {
        [batch, seq_len, config.output_width()]
    } else {
        [seq_len, batch, config.output_width()]
    };
    let mut output = Tensor::full(out_shape, f32::NAN);
    let mut h_n = Tensor::full(rnn_kernels::sequence::h_shape(config, batch), f32::NAN);
    let mut c_n = config
        .has_cell_state()
        .then(|| Tensor::full(rnn_kernels::sequence::c_shape(config, batch), f32::NAN));
    let addr = |p: *const f32| p as u64;
    let buffers = ForwardBuffers {
        input: addr(args.input.data().as_ptr()),
        lengths: lengths.as_ref().map_or(0, |l| l.as_ptr() as u64),
        h0: args.h0.map_or(0, |t| addr(t.data().as_ptr())),
        c0: args.c0.map_or(0, |t| addr(t.data().as_ptr())),
        output: addr(output.data_mut().as_mut_ptr()),
        h_n: addr(h_n.data_mut().as_mut_ptr()),
        c_n: c_n.as_mut().map_or(0, |t| addr(t.data_mut().as_mut_ptr())),
        weights: addr(packed.as_ptr()),
        workspace: addr(workspace.as_mut_ptr()),
    };
    common::run_emulated(&forward_steps(config, plan, &layout, seq_len, batch, &buffers).unwrap());
    (output, h_n, c_n)
}

fn check(config: &RnnConfig, seq_len: usize, lengths: Option<&[usize]>, with_state: bool, seed: u64) {
    let batch = lengths.map_or(3, <[usize]>::len);
    let weights64 = Weights::<f64>::random(config.clone(), seed).unwrap();
    let weights = weights64.cast::<f32>();
    let mut rng = SplitMix64::new(seed + 1);
    let shape = if config.batch_first {
        [batch, seq_len, config.input_size]
    } else {
        [seq_len, batch, config.input_size]
    };
    let input: Tensor<f32> = random_tensor(&shape, &mut rng);
    let zeros = State::<f32>::zeros(config, batch);
    let h0: Tensor<f32> = random_tensor(zeros.h.shape(), &mut rng);
    let c0: Option<Tensor<f32>> = zeros.c.map(|c| random_tensor(c.shape(), &mut rng));
    let args = ForwardInput {
        input: &input,
        lengths,
        h0: with_state.then_some(&h0),
        c0: if with_state { c0.as_ref() } else { None },
    };
    let (input64, h064, c064) = (
        input.cast::<f64>(),
        h0.cast::<f64>(),
        c0.as_ref().map(|c| c.cast::<f64>()),
    );
    let args64 = ForwardInput {
        input: &input64,
        lengths,
        h0: with_state.then_some(&h064),
        c0: if with_state { c064.as_ref() } else { None },
    };
    let expected = reference::forward(&weights64.cast::<f64>(), &args64).unwrap();
    for plan in plans(config, batch) {
        let (output, h_n, c_n) = emulated_forward(&weights, &plan, &args);
        let what = |t: &str| format!("{} ({plan:?}): {t}", rnn_kernels::weights::describe(config));
        assert_close(&what("output"), &output, &expected.output, 2e-5);
        assert_close(&what("h_n"), &h_n, &expected.h_n, 2e-5);
        if let (Some(got), Some(want)) = (&c_n, &expected.c_n) {
            assert_close(&what("c_n"), got, want, 2e-5);
        }
    }
}

#[test]
fn auto_keeps_small_weights_in_one_cta_and_splits_large_ones() {
    let small = RnnConfig {
        num_layers: 2,
        ..RnnConfig::lstm(6, 48)
    }; // 4·48·49 floats: 37 KiB
    let auto = plan_recurrence(&small, 32, &LIMITS, &occupancy, Strategy::Auto).unwrap();
    assert_eq!(
        (auto.ctas_per_group, auto.weights_in_smem, auto.batch_tile),
        (1, true, 1),
        "{auto:?}"
    );
    // 4·256·257 floats = 1 MiB: at least 22 CTAs of 48 KiB.
    let large = RnnConfig::lstm(6, 256);
    let auto = plan_recurrence(&large, 4, &LIMITS, &occupancy, Strategy::Auto).unwrap();
    assert!(
        auto.weights_in_smem && auto.ctas_per_group >= 22 && auto.smem_bytes <= LIMITS.max_smem_per_block
    );
    assert!(
        auto.ctas_per_group * auto.tiles
            <= LIMITS.sm_count * occupancy("", auto.threads, auto.smem_bytes).unwrap()
    );
    // Too large for the whole device's shared memory: read from L2.
    let huge = RnnConfig::lstm(6, 1024);
    let auto = plan_recurrence(&huge, 4, &LIMITS, &occupancy, Strategy::Auto).unwrap();
    assert!(!auto.weights_in_smem, "{auto:?}");
}

#[test]
fn every_configuration_matches_the_reference() {
    for (k, config) in varied_configs().into_iter().enumerate() {
        check(&config, 5, Some(&[3, 1, 5]), k % 2 == 0, 10 + k as u64);
    }
}

#[test]
fn full_lengths_and_no_lengths() {
    let config = RnnConfig {
        num_layers: 2,
        ..RnnConfig::gru(3, 9)
    };
    check(&config, 4, None, true, 40);
    check(&config, 4, Some(&[4, 4]), false, 41);
}

#[test]
fn odd_sizes_single_row_and_single_step() {
    check(&RnnConfig::lstm(1, 1), 3, Some(&[3]), true, 50);
    check(
        &RnnConfig {
            bidirectional: true,
            ..RnnConfig::gru(2, 33)
        },
        1,
        Some(&[1, 1]),
        true,
        51,
    );
    check(
        &RnnConfig {
            proj_size: 1,
            ..RnnConfig::lstm(5, 10)
        },
        6,
        Some(&[2, 6, 1, 4]),
        true,
        52,
    );
    // A forced split of 3 CTAs launches 2 (4 units, 2 a CTA): each must
    // take 2 of the 3 projected outputs, not 1.
    check(
        &RnnConfig {
            proj_size: 3,
            ..RnnConfig::lstm(5, 4)
        },
        3,
        Some(&[3, 1, 2]),
        true,
        53,
    );
}

/// Seven rows: a full block of four rows per thread and a partial one,
/// hidden sizes whose work items end mid-warp, both phases of the LSTM
/// projection and of the original GRU.
#[test]
fn full_and_partial_row_blocks() {
    let lengths = [5, 2, 7, 1, 7, 3, 6];
    check(
        &RnnConfig {
            proj_size: 7,
            ..RnnConfig::lstm(3, 19)
        },
        7,
        Some(&lengths),
        true,
        60,
    );
    check(
        &RnnConfig {
            bidirectional: true,
            gru_linear_before_reset: false,
            ..RnnConfig::gru(4, 17)
        },
        7,
        Some(&lengths),
        false,
        61,
    );
    check(&RnnConfig::rnn_relu(2, 40), 7, None, true, 62);
}

/// With k_lanes lanes per row and 32 / k_lanes groups of a warp on
/// consecutive rows, a warp's loads from shared memory hit 32 distinct banks.
#[test]
fn padded_weight_rows_keep_a_warp_on_distinct_banks() {
    for k_lanes in [1, 2, 4, 8, 16, 32] {
        let blocking = Blocking {
            k_lanes,
            rows_per_thread: 1,
        };
        for len in 1..=300 {
            let stride = blocking.weight_stride(len);
            assert!(
                stride >= len && stride <= len + 2 * k_lanes,
                "{k_lanes} lanes, {len}: {stride}"
            );
            for k0 in [0, k_lanes, 5 * k_lanes] {
                let mut banks: Vec<usize> = (0..32)
                    .map(|lane| ((lane / k_lanes) * stride + k0 + lane % k_lanes) % 32)
                    .collect();
                banks.sort_unstable();
                banks.dedup();
                assert_eq!(
                    banks.len(),
                    32,
                    "{k_lanes} lanes, row length {len}, stride {stride}"
                );
            }
        }
    }
}

#[test]
fn blockings_the_kernel_cannot_run_are_errors() {
    let config = RnnConfig::lstm(3, 20);
    let plan = plan_recurrence(&config, 5, &LIMITS, &occupancy, Strategy::Auto).unwrap();
    for (k_lanes, rows_per_thread) in [(3, 1), (64, 1), (0, 1), (4, 3), (4, 8), (1, 0)] {
        let err = plan
            .with_blocking(
                &config,
                Blocking {
                    k_lanes,
                    rows_per_thread,
                },
            )
            .unwrap_err();
        assert!(err.to_string().contains("k_lanes must be"), "{err}");
    }
}

/// The planner on an H100 (132 SMs, 227 KiB opt-in per block less the
/// sm_90 cubins' 1 KiB of static shared memory, as `CudaDevice` reports it;
/// occupancy as the driver computes it from threads, shared memory and ~128
/// registers).
#[test]
fn benchmark_shapes_get_the_intended_plans() {
    let h100 = DeviceLimits {
        sm_count: 132,
        max_smem_per_block: 232_448 - 1024,
        max_threads_per_block: 1024,
    };
    let occupancy = |_: &'static str, threads: usize, smem: usize| {
        Ok((65_536 / (threads * 128))
            .min((228 << 10) / (smem + 1024))
            .min(32))
    };
    let plan = |config: RnnConfig, batch| {
        plan_recurrence(&config, batch, &h100, &occupancy, Strategy::Auto).unwrap()
    };
    let icu = RnnConfig {
        num_layers: 2,
        ..RnnConfig::lstm(6, 64)
    };
    // Latency-bound: one CTA per sequence, each product split over 4 lanes.
    let p = plan(icu, 32);
    assert_eq!(
        (p.ctas_per_group, p.batch_tile, p.weights_in_smem),
        (1, 1, true),
        "{p:?}"
    );
    assert_eq!((p.blocking.k_lanes, p.blocking.rows_per_thread), (4, 1), "{p:?}");
    // Wide and few rows: W_hh spread over ~80 CTAs' shared memory, a warp per product.
    let p = plan(RnnConfig::lstm(1024, 1024), 4);
    assert!(
        p.weights_in_smem && p.tiles == 1 && p.ctas_per_group <= 132,
        "{p:?}"
    );
    assert_eq!((p.blocking.k_lanes, p.blocking.rows_per_thread), (32, 4), "{p:?}");
    // Mid-sized: every weight loaded serves four batch rows.
    let p = plan(
        RnnConfig {
            num_layers: 2,
            ..RnnConfig::lstm(256, 512)
        },
        64,
    );
    assert!(p.weights_in_smem && p.blocking.rows_per_thread == 4, "{p:?}");
    assert!(p.ctas_per_group * p.tiles <= 132, "{p:?}");
}
