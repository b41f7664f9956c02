//! The fast CPU path's promise to streaming callers: once a call of a size
//! has been made, `step_into` and `forward_into` allocate nothing (an
//! allocation per step is a lock and a page fault away from a missed
//! deadline). A counting global allocator sees every allocation of the
//! process, the model's workers included, so this binary holds one test.

use rnn_kernels::cpu::CpuRnn;
use rnn_kernels::rng::SplitMix64;
use rnn_kernels::{CellKind, ForwardInput, ForwardOutput, RnnConfig, State, Tensor, Weights};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

mod common;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; the counter has no other effect.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as the caller's contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as the caller's contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as the caller's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as the caller's contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made while `f` runs.
fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    f();
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

/// The shared varied configurations (every cell and variant at odd,
/// padded sizes), and unpadded ones, whose `h` lives in the output rows.
fn configs() -> Vec<RnnConfig> {
    let mut configs = common::varied_configs();
    configs.extend([
        RnnConfig {
            num_layers: 2,
            ..RnnConfig::lstm(6, 64)
        },
        RnnConfig {
            num_layers: 2,
            bidirectional: true,
            ..RnnConfig::gru(10, 32)
        },
        RnnConfig::new(CellKind::RnnTanh, 7, 48),
        RnnConfig {
            num_layers: 3,
            ..RnnConfig::lstm(64, 256)
        },
    ]);
    configs
}

#[test]
fn steps_and_forwards_allocate_nothing_once_warm() {
    let mut rng = SplitMix64::new(7);
    for config in configs() {
        let weights = Weights::<f32>::random(config.clone(), 11).unwrap();
        for threads in [1, 2] {
            let mut model = CpuRnn::with_threads(&weights, threads).unwrap();
            let what = format!("{} on {threads} threads", rnn_kernels::weights::describe(&config));
            for batch in [1, 4, 37] {
                let mut state = State::zeros(&config, batch);
                // A bidirectional network cannot step.
                if !config.bidirectional {
                    let x: Tensor<f32> = common::random_tensor(&[batch, config.input_size], &mut rng);
                    let mut out = Tensor::zeros([batch, config.output_size()]);
                    model.step_into(&x, &mut state, &mut out).unwrap();
                    let n = allocations_during(|| {
                        for _ in 0..5 {
                            model.step_into(&x, &mut state, &mut out).unwrap();
                        }
                    });
                    assert_eq!(n, 0, "{what}: 5 steps of B = {batch} allocated {n} times");
                }

                let seq_len = 9;
                let shape = if config.batch_first {
                    [batch, seq_len, config.input_size]
                } else {
                    [seq_len, batch, config.input_size]
                };
                let input: Tensor<f32> = common::random_tensor(&shape, &mut rng);
                let lengths: Vec<usize> = (0..batch).map(|b| seq_len - b % seq_len).collect();
                let args = ForwardInput {
                    input: &input,
                    lengths: Some(&lengths),
                    h0: Some(&state.h),
                    c0: state.c.as_ref(),
                };
                let mut output: ForwardOutput<f32> = model.forward(&args).unwrap();
                let n = allocations_during(|| {
                    for _ in 0..3 {
                        model.forward_into(&args, &mut output).unwrap();
                    }
                });
                assert_eq!(
                    n, 0,
                    "{what}: 3 forwards of T = {seq_len}, B = {batch} allocated {n} times"
                );
            }
        }
    }
}
