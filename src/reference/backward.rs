//! Backpropagation through time on the CPU: the reference every GPU gradient
//! is checked against. Rows run independently, steps in reverse; each step
//! recomputes its gate activations from the states the training forward
//! kept (one extra forward's arithmetic, in exchange for a reserve of only
//! `h` and `c` per step) and differentiates them ([`CellStep::backward`]).

use super::cell::{CellStep, ParamGrads};
use super::{batch_major, DirectionRun};
use crate::dropout::Dropout;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::sequence::{self, ForwardInput, GradOutputs, Gradients};
use crate::tensor::Tensor;
use crate::weights::{ParamKind, Weights};

/// What the training forward keeps for backward: every layer's output
/// (before dropout) and, for an LSTM, its cell state after every step.
#[derive(Clone, Debug)]
pub struct Reserve<T> {
    pub(crate) seq_len: usize,
    pub(crate) batch: usize,
    pub(crate) lengths: Vec<usize>,
    pub(crate) dropout: Option<Dropout>,
    /// Per layer, `[B, T, D*Hout]`.
    pub(crate) outputs: Vec<Vec<T>>,
    /// Per layer, `[B, T, D*H]` (LSTM), else empty.
    pub(crate) cells: Vec<Vec<T>>,
}

impl<T> Reserve<T> {
    /// Its size in bytes.
    pub fn bytes(&self) -> usize {
        let values: usize = self.outputs.iter().chain(&self.cells).map(Vec::len).sum();
        values * std::mem::size_of::<T>()
    }

    /// The dropout the forward pass applied, if any.
    pub fn dropout(&self) -> Option<Dropout> {
        self.dropout
    }
}

/// Backward through the forward pass `forward_train(weights, args)` that
/// produced `reserve`, given the gradients of its outputs.
pub fn backward<T: Element>(
    weights: &Weights<T>,
    args: &ForwardInput<'_, T>,
    reserve: &Reserve<T>,
    grads: &GradOutputs<'_, T>,
) -> Result<Gradients<T>> {
    let config = weights.config();
    let dims = sequence::check_forward(config, args)?;
    let (seq_len, batch) = (dims.seq_len, dims.batch);
    let lengths: Vec<usize> = args
        .lengths
        .map_or_else(|| vec![seq_len; batch], <[usize]>::to_vec);
    let rows = seq_len * batch;
    let cells_len = if config.has_cell_state() {
        rows * config.num_directions() * config.hidden_size
    } else {
        0
    };
    let matches = (reserve.seq_len, reserve.batch, &reserve.lengths) == (seq_len, batch, &lengths)
        && reserve.outputs.len() == config.num_layers
        && reserve
            .outputs
            .iter()
            .all(|o| o.len() == rows * config.output_width())
        && reserve.cells.iter().all(|c| c.len() == cells_len);
    if !matches {
        return Err(Error::invalid(
            "reserve",
            "was not produced by a forward pass of this model on these inputs",
        ));
    }
    sequence::check_grad_outputs(config, dims, grads.output, grads.h_n, grads.c_n)?;
    let h_shape = sequence::h_shape(config, batch);
    let c_shape = sequence::c_shape(config, batch);

    let (hidden, out_size, dirs) = (config.hidden_size, config.output_size(), config.num_directions());
    let zeros_h = Tensor::zeros(h_shape);
    let zeros_c = Tensor::zeros(c_shape);
    let h0 = args.h0.unwrap_or(&zeros_h).data();
    let c0 = args.c0.unwrap_or(&zeros_c).data();
    // The state gradients flowing backward: start from d h_n, d c_n; end as d h0, d c0.
    let mut dh_state = grads.h_n.map_or_else(|| zeros_h.clone(), Tensor::clone);
    let mut dc_state = grads.c_n.map_or_else(|| zeros_c.clone(), Tensor::clone);
    let mut param_grads: Vec<Option<ParamGrads<T>>> = (0..config.num_states()).map(|_| None).collect();

    let input = batch_major(config, args.input)?;
    let mut dy = batch_major(config, grads.output)?.into_data();
    let mut d_input = Vec::new();
    for layer in (0..config.num_layers).rev() {
        let x: Vec<T> = if layer == 0 {
            input.data().to_vec()
        } else {
            let mut x = reserve.outputs[layer - 1].clone();
            if let Some(dropout) = reserve.dropout {
                dropout.apply(layer - 1, &mut x, seq_len, batch, config.output_width(), true);
            }
            x
        };
        let in_width = config.layer_input_size(layer);
        let dx_len = batch * seq_len * in_width;
        let mut dx = crate::memory::zeros(dx_len, || {
            ("grad_input".to_string(), format!("{dx_len} {}", T::NAME))
        })?;
        for direction in 0..dirs {
            let state = layer * dirs + direction;
            let run = DirectionRun::new(config, weights, layer, direction, seq_len);
            let cell: &CellStep<'_, T> = &run.cell;
            let mut pg = cell.param_grads();
            let mut scratch = cell.scratch();
            let outputs = &reserve.outputs[layer];
            let cells = &reserve.cells[layer];
            for (b, &len) in lengths.iter().enumerate() {
                let hs = (state * batch + b) * out_size;
                let cs = (state * batch + b) * hidden;
                let mut dh = dh_state.data()[hs..hs + out_size].to_vec();
                let mut dc = dc_state.data()[cs..cs + hidden].to_vec();
                for s in (0..len).rev() {
                    let row = b * seq_len + run.time(s, len);
                    let (h_prev, c_prev) = if s == 0 {
                        (&h0[hs..hs + out_size], &c0[cs..cs + hidden])
                    } else {
                        let prev = b * seq_len + run.time(s - 1, len);
                        let h = &outputs[prev * run.out_width + run.out_offset..][..out_size];
                        let c = if cells.is_empty() {
                            &c0[cs..cs + hidden] // unused by cells without a cell state
                        } else {
                            &cells[prev * run.cell_width + run.cell_offset..][..hidden]
                        };
                        (h, c)
                    };
                    for (d, &g) in dh
                        .iter_mut()
                        .zip(&dy[row * run.out_width + run.out_offset..][..out_size])
                    {
                        *d = *d + g;
                    }
                    let x_t = &x[row * in_width..(row + 1) * in_width];
                    let dx_t = &mut dx[row * in_width..(row + 1) * in_width];
                    cell.backward(x_t, h_prev, c_prev, &mut dh, &mut dc, dx_t, &mut pg, &mut scratch);
                }
                dh_state.data_mut()[hs..hs + out_size].copy_from_slice(&dh);
                dc_state.data_mut()[cs..cs + hidden].copy_from_slice(&dc);
            }
            param_grads[state] = Some(pg);
        }
        if layer > 0 {
            // Through the dropout between layer - 1 and this one.
            if let Some(dropout) = reserve.dropout {
                dropout.apply(layer - 1, &mut dx, seq_len, batch, config.output_width(), true);
            }
            dy = dx;
        } else {
            d_input = dx;
        }
    }

    let input_grad = Tensor::new([batch, seq_len, config.input_size], d_input)?;
    let grad_weights = Weights::from_fn(config.clone(), |spec| {
        let pg = param_grads[spec.layer * dirs + spec.direction]
            .as_ref()
            .expect("every state ran");
        let data = match spec.kind {
            ParamKind::WeightIh => &pg.w_ih,
            ParamKind::WeightHh => &pg.w_hh,
            ParamKind::BiasIh => &pg.b_ih,
            ParamKind::BiasHh => &pg.b_hh,
            ParamKind::WeightHr => &pg.w_hr,
        };
        Tensor::new(spec.shape.clone(), data.clone())
    })?;
    Ok(Gradients {
        input: if config.batch_first {
            input_grad
        } else {
            input_grad.swap_leading_axes()?
        },
        h0: dh_state,
        c0: config.has_cell_state().then_some(dc_state),
        weights: grad_weights,
    })
}
