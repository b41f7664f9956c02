//! The launch sequences of training: a forward pass that keeps what the
//! backward needs (the reserve), and the backward. As with inference
//! ([`super::plan`]) they are plain data, executed by the CUDA backend and,
//! in tests, by the host emulation.
//!
//! Per layer the forward runs the input projection and the recurrence
//! (which also writes the gate activations into the reserve), then dropout
//! into the next layer's input. The backward runs, from the last layer down:
//! the reverse-time recurrence (gate gradients and `dh_{t-1}`), then the
//! weight gradients as products over all timesteps, `dW_ih = dGᵢᵀ·X`,
//! `dW_hh = dGₕᵀ·H_prev` (and `dW_hr`), the bias gradients as column sums,
//! and `dX = dGᵢ·W_ih`, which (through dropout) is the layer below's `dy`.

use super::layout::WeightLayout;
use super::params::{
    backward_exchange_floats, cell_code, exchange_floats, DropoutParams, Gather, GatherParams, GemmParams,
    PermuteParams, RecurrenceBackwardParams,
};
use super::plan::{
    forward_layer_launches, gemm_launch, optional_word, to_i32, word, ForwardBuffers, KernelParams, Launch,
    LayerLaunch, RecurrencePlan, Step,
};
use crate::config::{CellKind, RnnConfig};
use crate::dropout::Dropout;
use crate::error::Result;

/// Where everything of a training step lives: the reserve (kept from the
/// forward for the backward) and the workspace, in 4-byte words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainingLayout {
    /// Per layer: its output `[T, B, D*Hout]` (time-major), before dropout.
    pub outputs: Vec<usize>,
    /// Per layer `l >= 1`: its input after dropout (when dropout is on).
    pub dropped: Vec<Option<usize>>,
    /// Per layer: gate activations `[T*B, D*G*H]` then one `[T*B, D, H]` vector.
    pub gates: Vec<usize>,
    pub reserve_words: usize,

    pub projection: usize,
    pub forward_exchange: usize,
    pub forward_barrier: usize,
    pub backward_exchange: usize,
    pub backward_barrier: usize,
    pub d_gi: usize,
    pub d_gh: usize,
    pub d_h: usize,
    pub gathered_h: usize,
    pub gathered_aux: usize,
    pub dx: usize,
    pub input_time_major: usize,
    pub dy_time_major: usize,
    pub ones: usize,
    pub lengths: usize,
    pub workspace_words: usize,
}

impl TrainingLayout {
    pub fn new(
        config: &RnnConfig,
        forward: &RecurrencePlan,
        backward: &RecurrencePlan,
        seq_len: usize,
        batch: usize,
        dropout: bool,
    ) -> Self {
        let rows = seq_len * batch;
        let (dirs, h, ho) = (config.num_directions(), config.hidden_size, config.output_size());
        let gate_rows = dirs * config.gates() * h;
        let width = config.output_width();
        let mut reserve_words = 0;
        let mut take = |n: usize| {
            let at = reserve_words;
            reserve_words += n;
            at
        };
        let mut outputs = Vec::new();
        let mut dropped = Vec::new();
        let mut gates = Vec::new();
        for l in 0..config.num_layers {
            outputs.push(take(rows * width));
            dropped.push((l > 0 && dropout).then(|| take(rows * width)));
            gates.push(take(rows * (gate_rows + dirs * h)));
        }
        let mut words = 0;
        let mut take = |n: usize| {
            let at = words;
            words += n;
            at
        };
        let widest_input = config.input_size.max(width);
        TrainingLayout {
            outputs,
            dropped,
            gates,
            reserve_words,
            projection: take(rows * gate_rows),
            forward_exchange: take(forward.groups(config) * exchange_floats(forward.batch_tile, h, ho)),
            forward_barrier: super::plan::take_lines(&mut take, forward.groups(config)),
            backward_exchange: take(
                backward.groups(config)
                    * backward_exchange_floats(backward.batch_tile, config.gates() * h, h, ho),
            ),
            backward_barrier: super::plan::take_lines(&mut take, backward.groups(config)),
            d_gi: take(rows * gate_rows),
            d_gh: take(rows * gate_rows),
            d_h: take(if config.proj_size > 0 { rows * width } else { 0 }),
            gathered_h: take(rows * width),
            gathered_aux: take(rows * dirs * h),
            dx: take(rows * widest_input),
            input_time_major: take(if config.batch_first {
                rows * config.input_size
            } else {
                0
            }),
            dy_time_major: take(if config.batch_first { rows * width } else { 0 }),
            ones: take(1),
            lengths: take(batch),
            workspace_words: words,
        }
    }
}

/// Device addresses of a training step's buffers; 0 for an absent optional one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrainingBuffers {
    pub input: u64,
    pub lengths: u64,
    pub h0: u64,
    pub c0: u64,
    pub output: u64,
    pub h_n: u64,
    pub c_n: u64,
    pub grad_output: u64,
    pub grad_h_n: u64,
    pub grad_c_n: u64,
    pub grad_input: u64,
    pub grad_h0: u64,
    pub grad_c0: u64,
    /// Gradients of the weights, packed as [`WeightLayout`] packs the weights.
    pub grad_weights: u64,
    pub weights: u64,
    pub reserve: u64,
    pub workspace: u64,
}

fn elementwise(kernel: &'static str, count: usize, params: KernelParams) -> Step {
    Step::Launch(Launch {
        kernel,
        grid: [count.div_ceil(256).clamp(1, 8192) as u32, 1, 1],
        block: 256,
        smem_bytes: 0,
        cooperative: false,
        params,
    })
}

fn permute(src: u64, dst: u64, a: usize, b: usize, width: usize) -> Step {
    let params = PermuteParams {
        src,
        dst,
        a: a as i32,
        b: b as i32,
        width: width as i32,
        pad_: 0,
    };
    elementwise("rnn_permute_f32", a * b * width, KernelParams::Permute(params))
}

/// `C(m, n) = Σ_k A(m, k) B(k, n)` with the strides of [`GemmParams`].
fn gemm(p: GemmParams) -> Result<Step> {
    gemm_launch("rnn_gemm_f32", p.m as usize, p.n as usize, KernelParams::Gemm(p))
}

/// The forward pass of training. `dropout` applies between layers.
#[allow(clippy::too_many_arguments)]
pub fn forward_train_steps(
    config: &RnnConfig,
    plan: &RecurrencePlan,
    weights: &WeightLayout,
    layout: &TrainingLayout,
    seq_len: usize,
    batch: usize,
    dropout: Option<Dropout>,
    b: &TrainingBuffers,
) -> Result<Vec<Step>> {
    super::plan::check_barrier_count(super::Pass::Forward, config, plan, seq_len)?;
    let ws = |offset| word(b.workspace, offset);
    let rs = |offset| word(b.reserve, offset);
    let width = config.output_width();
    let state_buffers = ForwardBuffers {
        input: b.input,
        lengths: b.lengths,
        h0: b.h0,
        c0: b.c0,
        output: b.output,
        h_n: b.h_n,
        c_n: b.c_n,
        weights: b.weights,
        workspace: b.workspace,
    };
    let mut steps = Vec::new();
    for l in 0..config.num_layers {
        let x = match l {
            0 => b.input,
            _ => rs(layout.dropped[l].unwrap_or(layout.outputs[l - 1])),
        };
        let layer = LayerLaunch {
            layer: l,
            x,
            x_batch_first: l == 0 && config.batch_first,
            y: rs(layout.outputs[l]),
            y_batch_first: false,
            projection: ws(layout.projection),
            exchange: ws(layout.forward_exchange),
            barrier: ws(layout.forward_barrier),
            reserve: rs(layout.gates[l]),
        };
        steps.extend(forward_layer_launches(
            config,
            plan,
            weights,
            seq_len,
            batch,
            &layer,
            &state_buffers,
        )?);
        if let (Some(d), true) = (dropout, l + 1 < config.num_layers) {
            let params = DropoutParams {
                src: rs(layout.outputs[l]),
                dst: rs(layout.dropped[l + 1].expect("laid out with dropout")),
                p: d.p,
                seed: d.seed,
                layer: l as i32,
                seq_len: seq_len as i32,
                batch: batch as i32,
                width: width as i32,
            };
            steps.push(elementwise(
                "rnn_dropout_f32",
                seq_len * batch * width,
                KernelParams::Dropout(params),
            ));
        }
    }
    let last = rs(layout.outputs[config.num_layers - 1]);
    steps.push(if config.batch_first {
        permute(last, b.output, seq_len, batch, width)
    } else {
        permute(last, b.output, seq_len * batch, 1, width) // a copy
    });
    Ok(steps)
}

/// The backward pass, through the forward that `forward_train_steps` ran
/// with the same buffers.
#[allow(clippy::too_many_arguments)]
pub fn backward_steps(
    config: &RnnConfig,
    plan: &RecurrencePlan,
    weights: &WeightLayout,
    layout: &TrainingLayout,
    seq_len: usize,
    batch: usize,
    dropout: Option<Dropout>,
    b: &TrainingBuffers,
) -> Result<Vec<Step>> {
    super::plan::check_barrier_count(super::Pass::Backward, config, plan, seq_len)?;
    let ws = |offset| word(b.workspace, offset);
    let rs = |offset| word(b.reserve, offset);
    let w = |offset| word(b.weights, offset);
    let gw = |offset| word(b.grad_weights, offset);
    let (dirs, h, ho, g) = (
        config.num_directions(),
        config.hidden_size,
        config.output_size(),
        config.gates(),
    );
    let (gh, width) = (g * h, config.output_width());
    let dgh = dirs * gh;
    let rows = seq_len * batch;
    let k = to_i32("T*B", rows)?;
    let mut steps = vec![Step::FillWords {
        addr: ws(layout.ones),
        count: 1,
        value: 1.0f32.to_bits(),
    }];
    let mut dy = b.grad_output;
    if config.batch_first {
        steps.push(permute(
            b.grad_output,
            ws(layout.dy_time_major),
            batch,
            seq_len,
            width,
        ));
        dy = ws(layout.dy_time_major);
        steps.push(permute(
            b.input,
            ws(layout.input_time_major),
            batch,
            seq_len,
            config.input_size,
        ));
    }
    let original_gru = config.cell == CellKind::Gru && !config.gru_linear_before_reset;
    for l in (0..config.num_layers).rev() {
        let offsets = weights.layers[l];
        let state = l * dirs * batch;
        let in_width = config.layer_input_size(l);
        if plan.cooperative() {
            steps.push(Step::FillWords {
                addr: ws(layout.backward_barrier),
                count: plan.groups(config) * super::params::BARRIER_STRIDE,
                value: 0,
            });
        }
        let params = RecurrenceBackwardParams {
            w_hh: w(offsets.w_hh),
            w_hr: offsets.w_hr.map_or(0, w),
            reserve: rs(layout.gates[l]),
            y: rs(layout.outputs[l]),
            h0: optional_word(b.h0, state * ho),
            c0: optional_word(b.c0, state * h),
            lengths: b.lengths,
            dy,
            dh_n: optional_word(b.grad_h_n, state * ho),
            dc_n: optional_word(b.grad_c_n, state * h),
            d_gi: ws(layout.d_gi),
            d_gh: ws(layout.d_gh),
            d_h: if config.proj_size > 0 { ws(layout.d_h) } else { 0 },
            dh0: word(b.grad_h0, state * ho),
            dc0: optional_word(b.grad_c0, state * h),
            exchange: ws(layout.backward_exchange),
            barrier: ws(layout.backward_barrier),
            seq_len: to_i32("T", seq_len)?,
            batch: to_i32("B", batch)?,
            hidden: h as i32,
            out_size: ho as i32,
            cell: cell_code(config.cell),
            linear_before_reset: i32::from(config.gru_linear_before_reset),
            y_batch_first: 0,
            ctas_per_group: plan.ctas_per_group as i32,
            units_per_cta: plan.units_per_cta as i32,
            outputs_per_cta: plan.outputs_per_cta as i32,
            batch_tile: plan.batch_tile as i32,
            weights_in_smem: i32::from(plan.weights_in_smem),
        };
        steps.push(Step::Launch(Launch {
            kernel: plan.kernel,
            grid: [plan.ctas_per_group as u32, plan.tiles as u32, dirs as u32],
            block: plan.threads as u32,
            smem_bytes: plan.smem_bytes as u32,
            cooperative: plan.cooperative(),
            params: KernelParams::RecurrenceBackward(params),
        }));

        // This layer's input, as the forward's projection read it (time-major).
        let x = match l {
            0 if config.batch_first => ws(layout.input_time_major),
            0 => b.input,
            _ => rs(layout.dropped[l].unwrap_or(layout.outputs[l - 1])),
        };
        let iw = in_width as i64;
        // dW_ih (both directions stacked) = dGᵢᵀ·X; the biases are column sums.
        let transposed = |a: u64, c: u64, c_m: i64, m: usize, b_: u64, b_k: i64, n: usize| GemmParams {
            a,
            b: b_,
            c,
            a_m: 1,
            a_k: dgh as i64,
            b_k,
            b_n: 1,
            c_m,
            m: m as i32,
            n: n as i32,
            k,
            accumulate: 0,
        };
        steps.push(gemm(transposed(
            ws(layout.d_gi),
            gw(offsets.w_ih),
            iw,
            dgh,
            x,
            iw,
            in_width,
        ))?);
        let column_sums = |src: u64, dst: u64| GemmParams {
            a: ws(layout.ones),
            b: src,
            c: dst,
            a_m: 0,
            a_k: 0,
            b_k: dgh as i64,
            b_n: 1,
            c_m: dgh as i64,
            m: 1,
            n: dgh as i32,
            k,
            accumulate: 0,
        };
        if let (Some(bi), Some(bh)) = (offsets.b_ih, offsets.b_hh) {
            steps.push(gemm(column_sums(ws(layout.d_gi), gw(bi)))?);
            steps.push(gemm(column_sums(ws(layout.d_gh), gw(bh)))?);
        }
        // dW_hh per direction = dGₕᵀ·H_prev (the original GRU's n rows saw r⊙h).
        let gather = |what: Gather, out: u64| {
            let params = GatherParams {
                y: rs(layout.outputs[l]),
                h0: optional_word(b.h0, state * ho),
                reserve: rs(layout.gates[l]),
                lengths: b.lengths,
                out,
                seq_len: seq_len as i32,
                batch: batch as i32,
                hidden: h as i32,
                out_size: ho as i32,
                dirs: dirs as i32,
                cell: cell_code(config.cell),
                what: what as i32,
                pad_: 0,
            };
            let count = rows * dirs * if what == Gather::HPrev { ho } else { h };
            elementwise("rnn_gather_states_f32", count, KernelParams::Gather(params))
        };
        steps.push(gather(Gather::HPrev, ws(layout.gathered_h)));
        let recurrent_rows = if original_gru { 2 * h } else { gh };
        for d in 0..dirs {
            let a = word(ws(layout.d_gh), d * gh);
            let hp = word(ws(layout.gathered_h), d * ho);
            let c = gw(offsets.w_hh + d * gh * ho);
            steps.push(gemm(transposed(
                a,
                c,
                ho as i64,
                recurrent_rows,
                hp,
                width as i64,
                ho,
            ))?);
        }
        if original_gru {
            steps.push(gather(Gather::ResetH, ws(layout.gathered_aux)));
            for d in 0..dirs {
                let a = word(ws(layout.d_gh), d * gh + 2 * h);
                let rh = word(ws(layout.gathered_aux), d * h);
                let c = gw(offsets.w_hh + d * gh * ho + 2 * h * ho);
                steps.push(gemm(transposed(a, c, ho as i64, h, rh, (dirs * h) as i64, ho))?);
            }
        }
        if let Some(w_hr) = offsets.w_hr {
            // dW_hr per direction = dHᵀ·(o ⊙ tanh c).
            steps.push(gather(Gather::HFull, ws(layout.gathered_aux)));
            for d in 0..dirs {
                let params = GemmParams {
                    a: word(ws(layout.d_h), d * ho),
                    b: word(ws(layout.gathered_aux), d * h),
                    c: gw(w_hr + d * ho * h),
                    a_m: 1,
                    a_k: width as i64,
                    b_k: (dirs * h) as i64,
                    b_n: 1,
                    c_m: h as i64,
                    m: ho as i32,
                    n: h as i32,
                    k,
                    accumulate: 0,
                };
                steps.push(gemm(params)?);
            }
        }
        // dX = dGᵢ·W_ih: the gradient of this layer's input.
        let dx = if l == 0 && !config.batch_first {
            b.grad_input
        } else {
            ws(layout.dx)
        };
        steps.push(gemm(GemmParams {
            a: ws(layout.d_gi),
            b: w(offsets.w_ih),
            c: dx,
            a_m: dgh as i64,
            a_k: 1,
            b_k: iw,
            b_n: 1,
            c_m: iw,
            m: k,
            n: in_width as i32,
            k: dgh as i32,
            accumulate: 0,
        })?);
        if l == 0 {
            if config.batch_first {
                steps.push(permute(
                    ws(layout.dx),
                    b.grad_input,
                    seq_len,
                    batch,
                    config.input_size,
                ));
            }
        } else {
            if let Some(d) = dropout {
                let params = DropoutParams {
                    src: dx,
                    dst: dx,
                    p: d.p,
                    seed: d.seed,
                    layer: (l - 1) as i32,
                    seq_len: seq_len as i32,
                    batch: batch as i32,
                    width: width as i32,
                };
                steps.push(elementwise(
                    "rnn_dropout_f32",
                    rows * width,
                    KernelParams::Dropout(params),
                ));
            }
            dy = dx;
        }
    }
    Ok(steps)
}
