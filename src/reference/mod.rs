//! The reference: PyTorch's `nn.RNN` / `nn.LSTM` / `nn.GRU`, forward and
//! backward, generic over f32 and f64 and written for clarity first. It is
//! the oracle every other path (the fast CPU backend in [`crate::cpu`], the
//! CUDA backend in [`crate::cuda`]) is checked against; it never gets clever.
//!
//! Internally rows are batch-major (`[B, T, *]`): every batch row is an
//! independent recurrence, so rows split across threads with disjoint
//! slices of the input, the output and the state.

mod backward;
mod cell;

pub use backward::{backward, Reserve};

use crate::dropout::Dropout;
use crate::element::Element;
use crate::error::Result;
use crate::quant::{self, Int8Layer, Precision};
use crate::sequence::{self, ForwardInput, ForwardOutput, State};
use crate::tensor::Tensor;
use crate::weights::Weights;
use cell::CellStep;

/// Runs the whole sequence through every layer and direction (inference:
/// no dropout, nothing kept).
pub fn forward<T: Element>(weights: &Weights<T>, args: &ForwardInput<'_, T>) -> Result<ForwardOutput<T>> {
    run(weights, args, None, None).map(|(output, _)| output)
}

/// Inference under a reduced-precision scheme ([`crate::quant`]): the
/// oracle of [`CpuRnn::with_precision`](crate::cpu::CpuRnn::with_precision),
/// which matches it to f32 rounding of the gate math (the integer sums and
/// the scales are the same). [`Precision::F32`] is [`forward`].
pub fn forward_quantized(
    weights: &Weights<f32>,
    precision: Precision,
    args: &ForwardInput<'_, f32>,
) -> Result<ForwardOutput<f32>> {
    match precision {
        Precision::F32 => forward(weights, args),
        Precision::F16 => forward(&quant::f16_weights(weights)?, args),
        Precision::Int8 => {
            let int8 = Int8Layer::all(weights)?;
            run(weights, args, None, Some(&int8)).map(|(output, _)| output)
        }
    }
}

/// The forward pass of training: applies inter-layer dropout when `dropout_seed`
/// is given (and the configuration's `dropout` is positive), and keeps what
/// [`backward`] needs.
pub fn forward_train<T: Element>(
    weights: &Weights<T>,
    args: &ForwardInput<'_, T>,
    dropout_seed: Option<u64>,
) -> Result<(ForwardOutput<T>, Reserve<T>)> {
    let p = weights.config().dropout;
    let dropout = dropout_seed.filter(|_| p > 0.0).map(|seed| Dropout { p, seed });
    let (output, reserve) = run(weights, args, Some(dropout), None)?;
    Ok((output, reserve.expect("training keeps a reserve")))
}

/// The forward pass; with `training` (its dropout, if any), also the
/// reserve; with `int8`, every product under the int8 scheme.
fn run<T: Element>(
    weights: &Weights<T>,
    args: &ForwardInput<'_, T>,
    training: Option<Option<Dropout>>,
    int8: Option<&[Int8Layer]>,
) -> Result<(ForwardOutput<T>, Option<Reserve<T>>)> {
    let config = weights.config();
    let dims = sequence::check_forward(config, args)?;
    let (seq_len, batch) = (dims.seq_len, dims.batch);
    let lengths: Vec<usize> = args
        .lengths
        .map_or_else(|| vec![seq_len; batch], <[usize]>::to_vec);

    let (hidden, out_size, dirs) = (config.hidden_size, config.output_size(), config.num_directions());
    let mut h = args
        .h0
        .map_or_else(|| Tensor::zeros(sequence::h_shape(config, batch)), Tensor::clone);
    // Every cell gets a `c` buffer so that rows split the same way for all
    // cells; only an LSTM reads it or returns it.
    let mut c = args
        .c0
        .map_or_else(|| Tensor::zeros(sequence::c_shape(config, batch)), Tensor::clone);
    let record_cells = training.is_some() && config.has_cell_state();
    let mut reserve = training.map(|dropout| Reserve {
        seq_len,
        batch,
        lengths: lengths.clone(),
        dropout,
        outputs: Vec::new(),
        cells: Vec::new(),
    });

    let mut layer_input = batch_major(config, args.input)?;
    for layer in 0..config.num_layers {
        let mut layer_output = Tensor::try_zeros([batch, seq_len, config.output_width()])
            .map_err(|e| e.needed_by("the output"))?;
        let cells_len = if record_cells {
            batch * seq_len * dirs * hidden
        } else {
            0
        };
        let mut cells = crate::memory::zeros(cells_len, || {
            (
                "the training reserve".to_string(),
                format!("{cells_len} {}", T::NAME),
            )
        })?;
        for direction in 0..dirs {
            let state = layer * dirs + direction;
            let h_state = &mut h.data_mut()[state * batch * out_size..(state + 1) * batch * out_size];
            let c_state = &mut c.data_mut()[state * batch * hidden..(state + 1) * batch * hidden];
            let mut run = DirectionRun::new(config, weights, layer, direction, seq_len);
            run.cell = run.cell.int8(int8.map(|layers| &layers[state]));
            run.run_rows_parallel(
                layer_input.data(),
                &lengths,
                h_state,
                c_state,
                layer_output.data_mut(),
                &mut cells,
            );
        }
        layer_input = layer_output;
        if let Some(reserve) = reserve.as_mut() {
            let mut kept = Vec::new();
            crate::memory::reserve(&mut kept, layer_input.len(), || {
                (
                    "the training reserve".to_string(),
                    format!("{} {}", layer_input.len(), T::NAME),
                )
            })?;
            kept.extend_from_slice(layer_input.data());
            reserve.outputs.push(kept);
            reserve.cells.push(cells);
            if let (Some(dropout), false) = (reserve.dropout, layer + 1 == config.num_layers) {
                dropout.apply(
                    layer,
                    layer_input.data_mut(),
                    seq_len,
                    batch,
                    config.output_width(),
                    true,
                );
            }
        }
    }

    let output = if config.batch_first {
        layer_input
    } else {
        layer_input.swap_leading_axes()?
    };
    let output = ForwardOutput {
        output,
        h_n: h,
        c_n: config.has_cell_state().then_some(c),
    };
    Ok((output, reserve))
}

/// A `[T, B, *]` or `[B, T, *]` tensor (as configured) in the batch-major
/// layout the reference computes in.
fn batch_major<T: Element>(config: &crate::RnnConfig, t: &Tensor<T>) -> Result<Tensor<T>> {
    if config.batch_first {
        Ok(t.clone())
    } else {
        t.swap_leading_axes()
    }
}

/// Advances `B` streams by one timestep: `x` is `[B, I]`, `state` is updated
/// in place, and the last layer's new `h` (`[B, Hout]`) is returned. Repeated
/// calls equal one whole-sequence [`forward`] (unidirectional networks only).
pub fn step<T: Element>(weights: &Weights<T>, x: &Tensor<T>, state: &mut State<T>) -> Result<Tensor<T>> {
    step_with(weights.config(), x, state, |args| forward(weights, args))
}

/// [`step`] under a reduced-precision scheme (see [`forward_quantized`]).
pub fn step_quantized(
    weights: &Weights<f32>,
    precision: Precision,
    x: &Tensor<f32>,
    state: &mut State<f32>,
) -> Result<Tensor<f32>> {
    step_with(weights.config(), x, state, |args| {
        forward_quantized(weights, precision, args)
    })
}

/// One step as a one-step sequence through `forward`.
fn step_with<T: Element>(
    config: &crate::RnnConfig,
    x: &Tensor<T>,
    state: &mut State<T>,
    forward: impl FnOnce(&ForwardInput<'_, T>) -> Result<ForwardOutput<T>>,
) -> Result<Tensor<T>> {
    let batch = sequence::check_step(config, x, state)?;
    // A one-step sequence: time-major and batch-first are then the same bytes.
    let shape = if config.batch_first {
        [batch, 1, config.input_size]
    } else {
        [1, batch, config.input_size]
    };
    let input = Tensor::new(shape, x.data().to_vec())?;
    let mut args = ForwardInput::new(&input).h0(&state.h);
    if let Some(c) = &state.c {
        args = args.c0(c);
    }
    let result = forward(&args)?;
    state.h = result.h_n;
    state.c = result.c_n;
    Tensor::new([batch, config.output_size()], result.output.into_data())
}

/// One layer in one direction over all rows.
pub(crate) struct DirectionRun<'w, T> {
    cell: CellStep<'w, T>,
    reverse: bool,
    seq_len: usize,
    in_width: usize,
    out_width: usize,
    out_offset: usize,
    hidden: usize,
    out_size: usize,
    /// Where this direction's `c` goes in a recorded `[rows, T, D*H]` buffer.
    cell_offset: usize,
    cell_width: usize,
}

impl<'w, T: Element> DirectionRun<'w, T> {
    pub(crate) fn new(
        config: &crate::RnnConfig,
        weights: &'w Weights<T>,
        layer: usize,
        direction: usize,
        seq_len: usize,
    ) -> Self {
        DirectionRun {
            cell: CellStep::new(config, weights.layer_in_range(layer, direction)),
            reverse: direction == 1,
            seq_len,
            in_width: config.layer_input_size(layer),
            out_offset: direction * config.output_size(),
            out_width: config.output_width(),
            hidden: config.hidden_size,
            out_size: config.output_size(),
            cell_offset: direction * config.hidden_size,
            cell_width: config.num_directions() * config.hidden_size,
        }
    }

    /// The time index of processing step `s` of a row of length `len`.
    pub(crate) fn time(&self, s: usize, len: usize) -> usize {
        if self.reverse {
            len - 1 - s
        } else {
            s
        }
    }
}

/// Below this many multiply-adds a layer runs on the calling thread: spawning
/// costs more than it saves.
const PARALLEL_MIN_WORK: usize = 1 << 20;

impl<T: Element> DirectionRun<'_, T> {
    /// Runs every row, split across threads when the work pays for it.
    /// `cells` (`[rows, T, D*H]`, or empty) records `c` after every step.
    fn run_rows_parallel(
        &self,
        x: &[T],
        lengths: &[usize],
        h: &mut [T],
        c: &mut [T],
        out: &mut [T],
        cells: &mut [T],
    ) {
        let batch = lengths.len();
        let rows_work = self.seq_len * self.cell.rows() * (self.in_width + self.out_size);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = threads
            .min(batch)
            .min((batch * rows_work / PARALLEL_MIN_WORK).max(1));
        if threads <= 1 {
            return self.run_rows(x, lengths, h, c, out, cells);
        }
        let rows = batch.div_ceil(threads);
        std::thread::scope(|scope| {
            let chunks = x
                .chunks(rows * self.seq_len * self.in_width)
                .zip(lengths.chunks(rows))
                .zip(h.chunks_mut(rows * self.out_size))
                .zip(c.chunks_mut(rows * self.hidden))
                .zip(out.chunks_mut(rows * self.seq_len * self.out_width));
            let cell_chunk = rows * self.seq_len * self.cell_width;
            let mut cells = cells.chunks_mut(cell_chunk.max(1));
            for ((((x, lengths), h), c), out) in chunks {
                let cells = cells.next().unwrap_or_default();
                scope.spawn(move || self.run_rows(x, lengths, h, c, out, cells));
            }
        });
    }

    /// Rows `0..lengths.len()` of `x` (`[rows, T, in]`), their states and
    /// their output (`[rows, T, out_width]`).
    fn run_rows(&self, x: &[T], lengths: &[usize], h: &mut [T], c: &mut [T], out: &mut [T], cells: &mut [T]) {
        let mut scratch = self.cell.scratch();
        for (b, &len) in lengths.iter().enumerate() {
            let h = &mut h[b * self.out_size..(b + 1) * self.out_size];
            let c = &mut c[b * self.hidden..(b + 1) * self.hidden];
            for s in 0..len {
                let row = b * self.seq_len + self.time(s, len);
                let x_t = &x[row * self.in_width..(row + 1) * self.in_width];
                self.cell.advance(x_t, h, c, &mut scratch);
                let o = row * self.out_width + self.out_offset;
                out[o..o + self.out_size].copy_from_slice(h);
                if !cells.is_empty() {
                    let o = row * self.cell_width + self.cell_offset;
                    cells[o..o + self.hidden].copy_from_slice(c);
                }
            }
        }
    }
}
