//! Training on the fast CPU path: a forward that keeps each step's gate
//! activations (so backward needs no second forward), and backpropagation
//! through time.
//!
//! Backward, per layer (top down) and direction: the recurrence in reverse
//! time, per step the gate derivatives from the kept activations (`L` units
//! at a time) and one product `dgates · W_hh` for `dh_{t-1}`, rows split
//! between threads as in the forward. Then, over all `T·B` rows at once, the
//! weight gradients as matrix products (`dW_ih = dgiᵀ X`, `dW_hh = dghᵀ
//! H_prev`, `dW_hr`, through the `gemm` crate: both operands are
//! activations, so there is nothing to pack ahead), the bias gradients as
//! column sums, and `dX = dgi · W_ih` with our own kernel (weights packed
//! once). Nothing is summed in an order that depends on the threads: the
//! results are the same bits for a given thread count, run to run.

use super::cells::StoreRows;
use super::forward::{share, KeepPtrs, RowLists};
use super::kernel::{gemm_rows, AlignedBuf, Operands};
use super::model::{CpuRnn, TrainingSink};
use super::packed::{BackwardPanels, Dims, PackedLayer};
use super::simd::{dispatch, Simd};
use super::threads::{SharedPtr, Workers};
use crate::config::CellKind;
use crate::dropout::Dropout;
use crate::error::{Error, Result};
use crate::sequence::{self, ForwardInput, ForwardOutput, GradOutputs, Gradients, SequenceDims};
use crate::tensor::Tensor;
use crate::weights::{ParamKind, Weights};

/// What [`CpuRnn::forward_train`] keeps for [`CpuRnn::backward`].
pub struct CpuReserve {
    dims: SequenceDims,
    lengths: Vec<usize>,
    dropout: Option<Dropout>,
    /// Per layer-direction: activations `[T·B, G·Hp]`, the cell's extra
    /// `[T·B, Hp]`, `h_{t-1}` `[T·B, Hout_p]`, `h` before the projection
    /// `[T·B, Hp]` (projection only).
    keeps: Vec<[AlignedBuf; 4]>,
    /// Per layer but the last: its output `[T·B, D·Hout]`, and with dropout
    /// the next layer's input (the output times its mask).
    outputs: Vec<AlignedBuf>,
    dropped: Vec<AlignedBuf>,
}

impl CpuReserve {
    /// A reserve with nothing in it yet, for [`CpuRnn::forward_train_into`].
    pub fn empty() -> Self {
        CpuReserve {
            dims: SequenceDims { seq_len: 0, batch: 0 },
            lengths: Vec::new(),
            dropout: None,
            keeps: Vec::new(),
            outputs: Vec::new(),
            dropped: Vec::new(),
        }
    }

    /// Its size in bytes.
    pub fn bytes(&self) -> usize {
        let bufs = self
            .keeps
            .iter()
            .flatten()
            .chain(&self.outputs)
            .chain(&self.dropped);
        bufs.map(|b| 4 * b.len()).sum()
    }

    /// The dropout the forward pass applied, if any.
    pub fn dropout(&self) -> Option<Dropout> {
        self.dropout
    }

    fn keep_ptrs(&mut self) -> Vec<KeepPtrs> {
        self.keeps
            .iter_mut()
            .map(|[act, extra, h_prev, h_new]| KeepPtrs {
                act: SharedPtr(act.as_mut_ptr()),
                extra: SharedPtr(extra.as_mut_ptr()),
                h_prev: SharedPtr(h_prev.as_mut_ptr()),
                h_new: SharedPtr(h_new.as_mut_ptr()),
            })
            .collect()
    }

    /// The input of layer `layer > 0` (`[T·B, D·Hout]`).
    fn layer_input(&self, layer: usize) -> &[f32] {
        match self.dropout {
            Some(_) => self.dropped[layer - 1].as_slice(),
            None => self.outputs[layer - 1].as_slice(),
        }
    }
}

/// What the training forward's and backward's buffers are called in an
/// out-of-memory error.
const RESERVE: &str = "the training reserve";
const BACKWARD: &str = "backward's workspace";
const WEIGHT_GRADS: &str = "the weight gradients";

impl CpuRnn {
    fn dropout(&self, seed: Option<u64>) -> Option<Dropout> {
        let p = self.config().dropout;
        seed.filter(|_| p > 0.0).map(|seed| Dropout { p, seed })
    }

    /// The forward pass of training, as [`crate::reference::forward_train`]:
    /// inter-layer dropout from `dropout_seed` (when the configuration has
    /// dropout; the same masks as the reference's), and a reserve for
    /// [`CpuRnn::backward`].
    pub fn forward_train(
        &mut self,
        args: &ForwardInput<'_, f32>,
        dropout_seed: Option<u64>,
    ) -> Result<(ForwardOutput<f32>, CpuReserve)> {
        let mut out = self.empty_output(args)?;
        let mut reserve = CpuReserve::empty();
        self.forward_train_into(args, &mut out, &mut reserve, dropout_seed)?;
        Ok((out, reserve))
    }

    /// [`CpuRnn::forward_train`] into caller-owned outputs and a reserve
    /// that is reused (a training loop's reserve is allocated once, not per
    /// step; start from [`CpuReserve::empty`]).
    pub fn forward_train_into(
        &mut self,
        args: &ForwardInput<'_, f32>,
        out: &mut ForwardOutput<f32>,
        reserve: &mut CpuReserve,
        dropout_seed: Option<u64>,
    ) -> Result<()> {
        self.net.f32_weights()?;
        let run = self.checked_run(args, out)?;
        let d = self.net.dims;
        let rows = run.rows.rows();
        let (seq_len, batch) = (run.rows.seq_len, run.rows.batch);
        let dropout = self.dropout(dropout_seed);
        reserve.dims = SequenceDims { seq_len, batch };
        reserve.lengths.clear();
        match args.lengths {
            Some(l) => reserve.lengths.extend_from_slice(l),
            None => reserve.lengths.resize(batch, seq_len),
        }
        reserve.dropout = dropout;
        let between = d.layers - 1;
        let widths = [
            d.gate_width(),
            d.hidden_padded,
            d.out_padded,
            if d.projects() { d.hidden_padded } else { 0 },
        ];
        reserve.keeps.resize_with(d.layers * d.dirs, Default::default);
        // Rows past a sequence's end are never written, and the weight
        // gradients sum over every row: they must read as zero.
        let dead: Vec<usize> = (0..batch)
            .flat_map(|b| (reserve.lengths[b]..seq_len).map(move |t| run.rows.row(t, b)))
            .collect();
        for keep in &mut reserve.keeps {
            for (buf, width) in keep.iter_mut().zip(widths) {
                buf.resize(rows * width, RESERVE)?;
                buf.zero_rows(width, dead.iter().copied());
            }
        }
        let sized = |bufs: &mut Vec<AlignedBuf>, count: usize| {
            bufs.resize_with(count, AlignedBuf::default);
            bufs.iter_mut()
                .try_for_each(|b| b.resize(rows * d.out_width(), RESERVE))
        };
        sized(&mut reserve.outputs, between)?;
        sized(&mut reserve.dropped, if dropout.is_some() { between } else { 0 })?;
        let keep_ptrs = reserve.keep_ptrs();
        let pointers = |bufs: &mut Vec<AlignedBuf>| -> Vec<SharedPtr> {
            bufs.iter_mut().map(|o| SharedPtr(o.as_mut_ptr())).collect()
        };
        let outputs = pointers(&mut reserve.outputs);
        let dropped = pointers(&mut reserve.dropped);
        self.run_forward(
            &run,
            Some(TrainingSink {
                keep: &keep_ptrs,
                outputs: &outputs,
                dropout: dropout.map(|p| (p, &dropped[..])),
            }),
        )
    }

    /// Backward through the training forward that produced `reserve` (on the
    /// same `args`), as [`crate::reference::backward`].
    pub fn backward(
        &mut self,
        args: &ForwardInput<'_, f32>,
        reserve: &CpuReserve,
        grads: &GradOutputs<'_, f32>,
    ) -> Result<Gradients<f32>> {
        self.net.f32_weights()?;
        let config = self.config().clone();
        let dims = sequence::check_forward(&config, args)?;
        let d = self.net.dims;
        let lengths: Vec<usize> = args
            .lengths
            .map_or_else(|| vec![dims.seq_len; dims.batch], <[usize]>::to_vec);
        let rows = dims.seq_len * dims.batch;
        let matches = reserve.dims == dims
            && reserve.lengths == lengths
            && reserve.keeps.len() == d.layers * d.dirs
            && reserve.keeps.iter().all(|k| k[0].len() == rows * d.gate_width())
            && reserve.outputs.len() + 1 == d.layers
            && reserve.outputs.iter().all(|o| o.len() == rows * d.out_width());
        if !matches {
            return Err(Error::invalid(
                "reserve",
                "was not produced by a forward pass of this model on these inputs",
            ));
        }
        sequence::check_grad_outputs(&config, dims, grads.output, grads.h_n, grads.c_n)?;
        let layout = super::forward::RowLayout {
            seq_len: dims.seq_len,
            batch: dims.batch,
            batch_first: config.batch_first,
        };
        let zeros = |shape: &[usize], name: &str| Tensor::try_zeros(shape).map_err(|e| e.needed_by(name));
        let mut grad_input = zeros(args.input.shape(), "grad_input")?;
        let mut grad_h0 = zeros(&sequence::h_shape(&config, dims.batch), "grad_h0")?;
        let mut grad_c0 = match config.has_cell_state() {
            true => Some(zeros(&sequence::c_shape(&config, dims.batch), "grad_c0")?),
            false => None,
        };
        let mut param_grads: Vec<Option<LayerGrads>> = (0..d.layers * d.dirs).map(|_| None).collect();
        let lengths_ref = &lengths;
        let live_rows: Vec<usize> = (0..dims.seq_len)
            .flat_map(|t| {
                (0..dims.batch)
                    .filter(move |&b| t < lengths_ref[b])
                    .map(move |b| layout.row(t, b))
            })
            .collect();
        let varlen = live_rows.len() < rows;

        // Buffers kept between calls: the gate gradients (whose rows past a
        // sequence's end must read as zero: the weight gradients sum over
        // every row), and the gradient flowing into each layer's output.
        let mut bufs = std::mem::take(&mut self.ws.train);
        let dead: Vec<usize> = (0..dims.batch)
            .flat_map(|b| (lengths[b]..dims.seq_len).map(move |t| layout.row(t, b)))
            .collect();
        let two_gate_grads = d.cell == CellKind::Gru;
        let per_direction = |list: &mut Vec<AlignedBuf>, count: usize, width: usize| -> Result<()> {
            list.resize_with(count, AlignedBuf::default);
            for buf in list.iter_mut() {
                buf.resize(rows * width, BACKWARD)?;
                buf.zero_rows(width, dead.iter().copied());
            }
            Ok(())
        };
        per_direction(&mut bufs.dgi, d.dirs, d.gate_width())?;
        per_direction(
            &mut bufs.dgh,
            if two_gate_grads { d.dirs } else { 0 },
            d.gate_width(),
        )?;
        per_direction(
            &mut bufs.dproj,
            if d.projects() { d.dirs } else { 0 },
            d.out_padded,
        )?;
        let TrainScratch {
            dgi: dgi_bufs,
            dgh: dgh_bufs,
            dproj: dproj_bufs,
            dy: dy_buf,
            input: input_copy,
        } = &mut bufs;
        // Only the rows the recurrence reads are ever read: no zeroing.
        dy_buf.resize(rows * d.out_width(), BACKWARD)?;
        let mut dy: *const f32 = grads.output.data().as_ptr();
        let zeros_state = zeros(&sequence::h_shape(&config, dims.batch), "h_n's zero gradient")?;
        let zeros_cell = zeros(&sequence::c_shape(&config, dims.batch), "c_n's zero gradient")?;
        let h_n_grad = grads.h_n.unwrap_or(&zeros_state).data();
        let c_n_grad = grads.c_n.unwrap_or(&zeros_cell).data();
        let c0 = args.c0.unwrap_or(&zeros_cell).data();
        self.ws
            .ensure_scratch(d.dirs * self.workers.threads(), dims.batch);

        for layer in (0..d.layers).rev() {
            let in_size = d.layer_input(layer);
            let layer_input: &[f32] = if layer == 0 {
                args.input.data()
            } else {
                reserve.layer_input(layer)
            };
            // The reverse-time recurrences of every direction.
            for dir in 0..d.dirs {
                let net = &self.net;
                net.layer(layer, dir)
                    .prepare_backward(&d, net.f32_weights()?.layer_in_range(layer, dir))?;
            }
            let backward_panels: Vec<&BackwardPanels> = (0..d.dirs)
                .map(|dir| self.net.layer(layer, dir).backward())
                .collect();
            let runs: Vec<BackwardRecurrence<'_>> = (0..d.dirs)
                .map(|dir| {
                    let state = layer * d.dirs + dir;
                    let keep = &reserve.keeps[state];
                    let dgi = SharedPtr(dgi_bufs[dir].as_mut_ptr());
                    let dgh = if two_gate_grads {
                        SharedPtr(dgh_bufs[dir].as_mut_ptr())
                    } else {
                        dgi
                    };
                    BackwardRecurrence {
                        dims: &d,
                        panels: backward_panels[dir],
                        reverse: dir == 1,
                        lengths: &lengths,
                        layout,
                        dy: SharedPtr(dy.cast_mut()),
                        dy_width: d.out_width(),
                        dy_offset: dir * d.out,
                        act: keep[0].as_ptr(),
                        extra: keep[1].as_ptr(),
                        h_prev: keep[2].as_ptr(),
                        dgi,
                        dgh,
                        dproj: dproj_bufs
                            .get_mut(dir)
                            .map_or(SharedPtr::null(), |b| SharedPtr(b.as_mut_ptr())),
                        h_n_grad: &h_n_grad[state * dims.batch * d.out..][..dims.batch * d.out],
                        c_n_grad: if config.has_cell_state() {
                            &c_n_grad[state * dims.batch * d.hidden..][..dims.batch * d.hidden]
                        } else {
                            &[]
                        },
                        c0: if config.has_cell_state() {
                            &c0[state * dims.batch * d.hidden..][..dims.batch * d.hidden]
                        } else {
                            &[]
                        },
                        grad_h0: SharedPtr(grad_h0.data_mut()[state * dims.batch * d.out..].as_mut_ptr()),
                        grad_c0: grad_c0.as_mut().map_or(SharedPtr::null(), |g| {
                            SharedPtr(g.data_mut()[state * dims.batch * d.hidden..].as_mut_ptr())
                        }),
                    }
                })
                .collect();
            let chunks = backward_chunks(&d, self.workers.threads(), dims.batch);
            let scratch = &self.ws.scratch;
            let failed = std::sync::Mutex::new(None);
            self.workers.run(runs.len() * chunks, |task| {
                let (run, chunk) = (&runs[task / chunks], task % chunks);
                let mut lists = scratch[task].lock();
                if let Err(e) = run.run(share(dims.batch, chunk, chunks), &mut lists) {
                    *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                }
            });
            drop(runs);
            if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
                return Err(e);
            }

            // Weight gradients over all rows at once.
            let x: &[f32] = if layer == 0 && varlen {
                // Padded steps of the caller's input may hold anything; their
                // gate gradients are zero, and 0 · NaN is not.
                input_copy.resize(rows * in_size, BACKWARD)?;
                input_copy.as_mut_slice().copy_from_slice(layer_input);
                input_copy.zero_rows(in_size, dead.iter().copied());
                input_copy.as_slice()
            } else {
                layer_input
            };
            for dir in 0..d.dirs {
                let state = layer * d.dirs + dir;
                let keep = &reserve.keeps[state];
                let dgi = dgi_bufs[dir].as_slice();
                let dgh = if two_gate_grads {
                    dgh_bufs[dir].as_slice()
                } else {
                    dgi
                };
                let grads = {
                    layer_grads(
                        &self.workers,
                        &d,
                        rows,
                        in_size,
                        x,
                        dgi,
                        dgh,
                        keep,
                        dproj_bufs.get(dir).map(AlignedBuf::as_slice),
                    )?
                };
                param_grads[state] = Some(grads);
            }

            // dX = Σ_dir dgi · W_ih, into the layer below's dy (or grad_input).
            let (dx_ptr, dx_width): (*mut f32, usize) = if layer == 0 {
                (grad_input.data_mut().as_mut_ptr(), in_size)
            } else {
                // This layer's recurrence has read dy: dX may take its place.
                (dy_buf.as_mut_ptr(), d.out_width())
            };
            let dx = SharedPtr(dx_ptr);
            let products: Vec<DxProduct<'_>> = (0..d.dirs)
                .map(|dir| DxProduct {
                    dims: &d,
                    w_ih_t: &backward_panels[dir].w_ih_t,
                    dgi: dgi_bufs[dir].as_ptr(),
                    dx,
                    dx_width,
                    accumulate: dir > 0,
                })
                .collect();
            let chunks = dx_chunks(
                &d,
                self.workers.threads(),
                live_rows.len(),
                self.net.layer(layer, 0),
            );
            // Each task owns a slice of the rows; directions accumulate in
            // order within a task, so the sum's order never depends on threads.
            self.workers.run(chunks, |chunk| {
                let mut lists = scratch[chunk].lock();
                for product in &products {
                    product.run(&live_rows[share(live_rows.len(), chunk, chunks)], &mut lists);
                }
            });
            if layer > 0 {
                if let Some(dropout) = reserve.dropout {
                    dropout.apply(
                        layer - 1,
                        dy_buf.as_mut_slice(),
                        dims.seq_len,
                        dims.batch,
                        d.out_width(),
                        config.batch_first,
                    );
                }
                dy = dy_buf.as_ptr();
            }
        }

        let weights = Weights::from_fn(config.clone(), |spec| {
            let g = param_grads[spec.layer * d.dirs + spec.direction]
                .as_ref()
                .expect("every layer-direction ran");
            let data = match spec.kind {
                ParamKind::WeightIh => &g.w_ih,
                ParamKind::WeightHh => &g.w_hh,
                ParamKind::BiasIh => &g.b_ih,
                ParamKind::BiasHh => &g.b_hh,
                ParamKind::WeightHr => &g.w_hr,
            };
            Tensor::new(spec.shape.clone(), data.clone())
        })?;
        self.ws.train = bufs;
        Ok(Gradients {
            input: grad_input,
            h0: grad_h0,
            c0: grad_c0,
            weights,
        })
    }
}

/// Backward's buffers, kept in the model's workspace between calls.
#[derive(Default)]
pub(super) struct TrainScratch {
    /// Per direction, the gate gradients `[T·B, G·Hp]` (of the input
    /// projection; of the recurrent product, GRU only).
    dgi: Vec<AlignedBuf>,
    dgh: Vec<AlignedBuf>,
    /// Per direction (projection only), `dh` before `W_hrᵀ`, `[T·B, Hout_p]`.
    dproj: Vec<AlignedBuf>,
    /// The gradient of a layer's output below the top, `[T·B, D·Hout]`.
    dy: AlignedBuf,
    /// The first layer's input with the rows past each end zeroed.
    input: AlignedBuf,
}

/// Row chunks per direction for the backward recurrence.
fn backward_chunks(d: &Dims, threads: usize, batch: usize) -> usize {
    let mr = d.isa.rows_per_tile(4);
    (threads / d.dirs).max(1).min(batch.div_ceil(mr)).max(1)
}

/// Row chunks for `dX`.
fn dx_chunks(d: &Dims, threads: usize, rows: usize, layer: &PackedLayer) -> usize {
    let work = rows * d.gate_width() * layer.in_size;
    (work >> 17).clamp(1, threads).min(rows.max(1))
}

/// One layer-direction's parameter gradients, in PyTorch's shapes.
struct LayerGrads {
    w_ih: Vec<f32>,
    w_hh: Vec<f32>,
    b_ih: Vec<f32>,
    b_hh: Vec<f32>,
    w_hr: Vec<f32>,
}

/// `dst[m × n] = gradᵀ · src` over `rows` rows (`grad` rows `grad_stride`
/// apart, `m` wide; `src` rows `src_stride` apart, `n` wide): a weight
/// gradient, summed over every row of the call.
struct GradProduct<'a> {
    m: usize,
    n: usize,
    grad: &'a [f32],
    grad_stride: usize,
    src: &'a [f32],
    src_stride: usize,
    /// `m × n`, row-major.
    dst: SharedPtr,
}

// SAFETY: grad and src are only read; each task writes its own dst rows.
unsafe impl Sync for GradProduct<'_> {}

/// `dst[m × n] = gradᵀ · src`, the strides as [`GradProduct`]'s.
fn product<'a>(
    m: usize,
    n: usize,
    grad: &'a [f32],
    grad_stride: usize,
    src: &'a [f32],
    src_stride: usize,
    dst: *mut f32,
) -> GradProduct<'a> {
    GradProduct {
        m,
        n,
        grad,
        grad_stride,
        src,
        src_stride,
        dst: SharedPtr(dst),
    }
}

impl GradProduct<'_> {
    /// Output rows `out_rows` of the product, by the `gemm` crate on this
    /// thread (the model's workers split the rows: deterministic, and no
    /// second pool competing for the cores).
    fn run(&self, rows: usize, out_rows: std::ops::Range<usize>) {
        let (m, n) = (out_rows.len(), self.n);
        if rows == 0 || m == 0 || n == 0 {
            return;
        }
        assert!(
            self.grad.len() >= (rows - 1) * self.grad_stride + out_rows.end
                && self.src.len() >= (rows - 1) * self.src_stride + n
        );
        // SAFETY: dst rows out_rows are this task's (m × n floats at
        // out_rows.start · n); lhs(i, k) = grad[k·grad_stride + start + i]
        // and rhs(k, j) = src[k·src_stride + j] stay inside the slices
        // (asserted).
        unsafe {
            gemm::gemm(
                m,
                n,
                rows,
                self.dst.at(out_rows.start * n),
                1,
                n as isize,
                false,
                self.grad.as_ptr().add(out_rows.start),
                self.grad_stride as isize,
                1,
                self.src.as_ptr(),
                1,
                self.src_stride as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

/// The parameter gradients of one layer-direction from its gate gradients,
/// on `workers`: every product and the bias sums split by output rows.
#[allow(clippy::too_many_arguments)]
fn layer_grads(
    workers: &Workers,
    d: &Dims,
    rows: usize,
    in_size: usize,
    x: &[f32],
    dgi: &[f32],
    dgh: &[f32],
    keep: &[AlignedBuf; 4],
    dproj: Option<&[f32]>,
) -> Result<LayerGrads> {
    let (gw, hp) = (d.gate_width(), d.hidden_padded);
    let mut w_ih = AlignedBuf::zeros(gw * in_size, WEIGHT_GRADS)?;
    let mut w_hh = AlignedBuf::zeros(gw * d.out, WEIGHT_GRADS)?;
    let w_hr_len = if dproj.is_some() {
        d.out_padded * d.hidden
    } else {
        0
    };
    let mut w_hr = AlignedBuf::zeros(w_hr_len, WEIGHT_GRADS)?;
    let mut biases = AlignedBuf::zeros(2 * gw, WEIGHT_GRADS)?;
    let h_prev = keep[2].as_slice();
    let mut products = vec![product(gw, in_size, dgi, gw, x, in_size, w_ih.as_mut_ptr())];
    if d.original_gru() {
        // The r, z rows multiply h; the n rows r ⊙ h (kept).
        products.push(product(
            2 * hp,
            d.out,
            dgh,
            gw,
            h_prev,
            d.out_padded,
            w_hh.as_mut_ptr(),
        ));
        // SAFETY: row 2·Hp of the gw × out buffer.
        let n_rows = unsafe { w_hh.as_mut_ptr().add(2 * hp * d.out) };
        products.push(product(
            hp,
            d.hidden,
            &dgh[2 * hp..],
            gw,
            keep[1].as_slice(),
            hp,
            n_rows,
        ));
    } else {
        products.push(product(
            gw,
            d.out,
            dgh,
            gw,
            h_prev,
            d.out_padded,
            w_hh.as_mut_ptr(),
        ));
    }
    if let Some(dproj) = dproj {
        // dW_hr[Hout × H] = dhᵀ · h_new.
        let h_new = keep[3].as_slice();
        products.push(product(
            d.out_padded,
            d.hidden,
            dproj,
            d.out_padded,
            h_new,
            hp,
            w_hr.as_mut_ptr(),
        ));
    }
    let sums = SharedPtr(biases.as_mut_ptr());
    workers.split(|w, threads| {
        for p in &products {
            p.run(rows, share(p.m, w, threads));
        }
        // Bias gradients: column sums, in row order (the same bits for any
        // thread count).
        let cols = share(gw, w, threads);
        for (offset, g) in [(0, dgi), (gw, dgh)] {
            // SAFETY: this task's columns of the 2 · gw sums.
            let out = unsafe { std::slice::from_raw_parts_mut(sums.at(offset + cols.start), cols.len()) };
            for row in g.chunks_exact(gw).take(rows) {
                for (s, &v) in out.iter_mut().zip(&row[cols.clone()]) {
                    *s += v;
                }
            }
        }
    });
    drop(products);
    // Padded gate rows back to PyTorch's rows.
    let unpad = |padded: &[f32], n: usize| -> Result<Vec<f32>> {
        let mut out = crate::memory::zeros(d.gates * d.hidden * n, || (WEIGHT_GRADS.into(), String::new()))?;
        for col in 0..gw {
            if let Some(row) = d.gate_row(col) {
                out[row * n..(row + 1) * n].copy_from_slice(&padded[col * n..(col + 1) * n]);
            }
        }
        Ok(out)
    };
    Ok(LayerGrads {
        w_ih: unpad(w_ih.as_slice(), in_size)?,
        w_hh: unpad(w_hh.as_slice(), d.out)?,
        b_ih: unpad(&biases.as_slice()[..gw], 1)?,
        b_hh: unpad(&biases.as_slice()[gw..], 1)?,
        w_hr: w_hr.as_slice()[..if dproj.is_some() { d.out * d.hidden } else { 0 }].to_vec(),
    })
}

/// `dX[row] (+)= dgi[row] · W_ih` for the given rows.
struct DxProduct<'a> {
    dims: &'a Dims,
    w_ih_t: &'a super::kernel::Panels,
    dgi: *const f32,
    dx: SharedPtr,
    dx_width: usize,
    accumulate: bool,
}

// SAFETY: dgi is only read; each task writes the dX rows of its own rows.
unsafe impl Sync for DxProduct<'_> {}

impl DxProduct<'_> {
    fn run(&self, rows: &[usize], lists: &mut RowLists) {
        let d = self.dims;
        let gw = d.gate_width();
        lists.a.clear();
        lists.out.clear();
        // SAFETY: every row index is below T·B.
        unsafe {
            lists.a.extend(rows.iter().map(|&r| self.dgi.add(r * gw)));
            lists
                .out
                .extend(rows.iter().map(|&r| self.dx.at(r * self.dx_width)));
        }
        let store = StoreRows {
            out: &lists.out,
            limit: self.dx_width,
            bias: std::ptr::null(),
            add: &[],
            accumulate: self.accumulate,
        };
        let ops = Operands {
            rows: &lists.a,
            k: gw,
            weights: self.w_ih_t,
            k_offset: 0,
            prefix: None,
        };
        dispatch!(d.isa, |s| {
            // SAFETY: each dgi row has gw floats, each dX row dx_width.
            unsafe { super::forward::plain_product(s, d, &ops, 0, 1, &store) }
        });
    }
}

/// One layer-direction's recurrence in reverse time.
struct BackwardRecurrence<'a> {
    dims: &'a Dims,
    panels: &'a BackwardPanels,
    reverse: bool,
    lengths: &'a [usize],
    layout: super::forward::RowLayout,
    /// The gradient of the layer's output, `[T·B, dy_width]`.
    dy: SharedPtr,
    dy_width: usize,
    dy_offset: usize,
    /// What the forward kept (see [`KeepPtrs`]).
    act: *const f32,
    extra: *const f32,
    h_prev: *const f32,
    /// Gate gradients, `[T·B, G·Hp]`: of the input projection and of the
    /// recurrent product (the same buffer but for a GRU).
    dgi: SharedPtr,
    dgh: SharedPtr,
    /// Projection: the gradient of the projected `h`, `[T·B, Hout_p]`.
    dproj: SharedPtr,
    h_n_grad: &'a [f32],
    c_n_grad: &'a [f32],
    c0: &'a [f32],
    grad_h0: SharedPtr,
    grad_c0: SharedPtr,
}

// SAFETY: tasks take disjoint batch rows; every buffer a task writes is
// indexed by its own rows (b or (t, b)).
unsafe impl Sync for BackwardRecurrence<'_> {}

/// Per batch row, the state gradients a backward task carries.
struct CarriedGrads {
    /// `dh` flowing into step `s` from later steps, `[B, Hout_p]`.
    dh: AlignedBuf,
    /// `dh` plus this step's output gradient, `[B, Hout_p]`.
    dh_total: AlignedBuf,
    /// `dh` before the projection (projection only), `[B, Hp]`.
    dh_new: AlignedBuf,
    dc: AlignedBuf,
    /// What reaches `h_{t-1}` without `W_hh` (GRU `z ⊙ dh`, ...), `[B, Hout_p]`.
    carry: AlignedBuf,
    /// Original GRU: the gradient of `r ⊙ h`, `[B, Hp]`.
    d_reset_h: AlignedBuf,
    /// `c0` padded, `[B, Hp]`.
    c0: AlignedBuf,
}

impl BackwardRecurrence<'_> {
    #[inline(always)]
    fn time(&self, step: usize, len: usize) -> usize {
        if self.reverse {
            len - 1 - step
        } else {
            step
        }
    }

    fn run(&self, batch_rows: std::ops::Range<usize>, lists: &mut RowLists) -> Result<()> {
        let d = self.dims;
        let n = batch_rows.len();
        let (out_p, hp) = (d.out_padded, d.hidden_padded);
        let zeros = |len: usize| AlignedBuf::zeros(len, BACKWARD);
        let mut g = CarriedGrads {
            dh: zeros(n * out_p)?,
            dh_total: zeros(n * out_p)?,
            dh_new: zeros(n * hp)?,
            dc: zeros(n * hp)?,
            carry: zeros(n * out_p)?,
            d_reset_h: zeros(n * hp)?,
            c0: zeros(n * hp)?,
        };
        for (i, b) in batch_rows.clone().enumerate() {
            g.dh.as_mut_slice()[i * out_p..][..d.out].copy_from_slice(&self.h_n_grad[b * d.out..][..d.out]);
            if !self.c_n_grad.is_empty() {
                g.dc.as_mut_slice()[i * hp..][..d.hidden]
                    .copy_from_slice(&self.c_n_grad[b * d.hidden..][..d.hidden]);
                g.c0.as_mut_slice()[i * hp..][..d.hidden]
                    .copy_from_slice(&self.c0[b * d.hidden..][..d.hidden]);
            }
        }
        dispatch!(d.isa, |s| {
            // SAFETY: the rows are this task's own (b - first < n) and every
            // buffer is sized for them.
            unsafe { self.run_with(s, batch_rows.clone(), &mut g, lists) }
        });
        for (i, b) in batch_rows.enumerate() {
            // SAFETY: grad_h0/grad_c0 point at this state's [B, ·] block.
            unsafe {
                let dh = &g.dh.as_slice()[i * out_p..][..d.out];
                std::ptr::copy_nonoverlapping(dh.as_ptr(), self.grad_h0.at(b * d.out), d.out);
                if !self.grad_c0.0.is_null() {
                    let dc = &g.dc.as_slice()[i * hp..][..d.hidden];
                    std::ptr::copy_nonoverlapping(dc.as_ptr(), self.grad_c0.at(b * d.hidden), d.hidden);
                }
            }
        }
        Ok(())
    }

    #[inline(always)]
    unsafe fn run_with<S: Simd>(
        &self,
        s: S,
        batch_rows: std::ops::Range<usize>,
        g: &mut CarriedGrads,
        lists: &mut RowLists,
    ) {
        let d = self.dims;
        let (out_p, hp, gw, lanes) = (d.out_padded, d.hidden_padded, d.gate_width(), S::LANES);
        let first = batch_rows.start;
        let max_len = batch_rows.clone().map(|b| self.lengths[b]).max().unwrap_or(0);
        let (dh, dh_total, dh_new, dc, carry, d_reset_h, c0) = (
            g.dh.as_mut_ptr(),
            g.dh_total.as_mut_ptr(),
            g.dh_new.as_mut_ptr(),
            g.dc.as_mut_ptr(),
            g.carry.as_mut_ptr(),
            g.d_reset_h.as_mut_ptr(),
            g.c0.as_ptr(),
        );
        for step in (0..max_len).rev() {
            lists.batch.clear();
            lists.row.clear();
            for b in batch_rows.clone() {
                let len = self.lengths[b];
                if len > step {
                    lists.batch.push(b - first);
                    lists.row.push(self.layout.row(self.time(step, len), b));
                }
            }
            // SAFETY (this block): i < n rows of the task's [n, ·] buffers;
            // row < T·B rows of the kept and gradient buffers.
            unsafe {
                // 1. dh_total = dh + this step's output gradient.
                for (&i, &row) in lists.batch.iter().zip(&lists.row) {
                    let dy = self.dy.at(row * self.dy_width + self.dy_offset);
                    let (src, dst) = (dh.add(i * out_p), dh_total.add(i * out_p));
                    for j in 0..d.out {
                        *dst.add(j) = *src.add(j) + *dy.add(j);
                    }
                    if !self.dproj.0.is_null() {
                        std::ptr::copy_nonoverlapping(dst, self.dproj.at(row * out_p), out_p);
                    }
                }
                // 2. Through the projection: dh_new = dh_total · W_hr.
                let dhn: *mut f32 = if let Some(w_hr_t) = &self.panels.w_hr_t {
                    lists.a.clear();
                    lists.out.clear();
                    lists
                        .a
                        .extend(lists.batch.iter().map(|&i| dh_total.add(i * out_p).cast_const()));
                    lists.out.extend(lists.batch.iter().map(|&i| dh_new.add(i * hp)));
                    let store = StoreRows {
                        out: &lists.out,
                        limit: hp,
                        bias: std::ptr::null(),
                        add: &[],
                        accumulate: false,
                    };
                    let ops = Operands {
                        rows: &lists.a,
                        k: d.out,
                        weights: w_hr_t,
                        k_offset: 0,
                        prefix: None,
                    };
                    super::forward::plain_product(s, d, &ops, 0, 1, &store);
                    dh_new
                } else {
                    dh_total
                };
                // 3. Gate gradients from the kept activations.
                let dhn_stride = if self.panels.w_hr_t.is_some() { hp } else { out_p };
                for (&i, &row) in lists.batch.iter().zip(&lists.row) {
                    let b = first + i;
                    let len = self.lengths[b];
                    let act = self.act.add(row * gw);
                    let dgi = self.dgi.at(row * gw);
                    let dgh = self.dgh.at(row * gw);
                    let dhn_row = dhn.add(i * dhn_stride);
                    let h_prev = self.h_prev.add(row * out_p);
                    let extra = self.extra.add(row * hp);
                    for u in (0..hp).step_by(lanes) {
                        let gate = |g: usize| s.load(act.add(g * hp + u));
                        let dh_u = s.load(dhn_row.add(u));
                        let one = s.splat(1.0);
                        match d.cell {
                            CellKind::Lstm => {
                                let (ig, fg, gg, og) = (gate(0), gate(1), gate(2), gate(3));
                                let c_t = s.load(extra.add(u));
                                let c_prev = if step == 0 {
                                    s.load(c0.add(i * hp + u))
                                } else {
                                    let prev = self.layout.row(self.time(step - 1, len), b);
                                    s.load(self.extra.add(prev * hp + u))
                                };
                                let tc = super::simd::tanh(s, c_t);
                                let dc_row = dc.add(i * hp + u);
                                // dc_total = dc + dh o (1 - tanh² c)
                                let dct = s.fma(s.mul(dh_u, og), s.sub(one, s.mul(tc, tc)), s.load(dc_row));
                                let sig_grad = |a| s.mul(a, s.sub(one, a));
                                s.store(dgi.add(u), s.mul(s.mul(dct, gg), sig_grad(ig)));
                                s.store(dgi.add(hp + u), s.mul(s.mul(dct, c_prev), sig_grad(fg)));
                                s.store(
                                    dgi.add(2 * hp + u),
                                    s.mul(s.mul(dct, ig), s.sub(one, s.mul(gg, gg))),
                                );
                                s.store(dgi.add(3 * hp + u), s.mul(s.mul(dh_u, tc), sig_grad(og)));
                                s.store(dc_row, s.mul(dct, fg));
                            }
                            CellKind::Gru => {
                                let (r, z, nn) = (gate(0), gate(1), gate(2));
                                let h = s.load(h_prev.add(u));
                                let dn = s.mul(s.mul(dh_u, s.sub(one, z)), s.sub(one, s.mul(nn, nn)));
                                let dz = s.mul(s.mul(dh_u, s.sub(h, nn)), s.mul(z, s.sub(one, z)));
                                s.store(dgi.add(hp + u), dz);
                                s.store(dgh.add(hp + u), dz);
                                s.store(dgi.add(2 * hp + u), dn);
                                if d.linear_before_reset {
                                    let gh_n = s.load(extra.add(u));
                                    let dr = s.mul(s.mul(dn, gh_n), s.mul(r, s.sub(one, r)));
                                    s.store(dgi.add(u), dr);
                                    s.store(dgh.add(u), dr);
                                    s.store(dgh.add(2 * hp + u), s.mul(dn, r));
                                } else {
                                    // r's gradient needs W_hnᵀ dn: below.
                                    s.store(dgh.add(2 * hp + u), dn);
                                }
                                s.store(carry.add(i * out_p + u), s.mul(dh_u, z));
                            }
                            CellKind::RnnTanh | CellKind::RnnRelu => {
                                let a = gate(0);
                                let slope = if d.cell == CellKind::RnnTanh {
                                    s.sub(one, s.mul(a, a))
                                } else {
                                    s.select_lt(s.zero(), a, one, s.zero())
                                };
                                s.store(dgi.add(u), s.mul(dh_u, slope));
                            }
                        }
                    }
                }
                // The original GRU's r: d(r ⊙ h) = dn · W_hn, then dr.
                let carry_rows = d.cell == CellKind::Gru;
                if d.original_gru() {
                    lists.a.clear();
                    lists.out.clear();
                    lists.a.extend(
                        lists
                            .row
                            .iter()
                            .map(|&row| self.dgh.at(row * gw + 2 * hp).cast_const()),
                    );
                    lists
                        .out
                        .extend(lists.batch.iter().map(|&i| d_reset_h.add(i * hp)));
                    let store = StoreRows {
                        out: &lists.out,
                        limit: hp,
                        bias: std::ptr::null(),
                        add: &[],
                        accumulate: false,
                    };
                    let ops = Operands {
                        rows: &lists.a,
                        k: hp,
                        weights: &self.panels.w_hh_t,
                        k_offset: 2 * hp,
                        prefix: None,
                    };
                    super::forward::plain_product(s, d, &ops, 0, 1, &store);
                    for (&i, &row) in lists.batch.iter().zip(&lists.row) {
                        let act = self.act.add(row * gw);
                        let h_prev = self.h_prev.add(row * out_p);
                        let one = s.splat(1.0);
                        for u in (0..hp).step_by(lanes) {
                            let r = s.load(act.add(u));
                            let drh = s.load(d_reset_h.add(i * hp + u));
                            let dr = s.mul(s.mul(drh, s.load(h_prev.add(u))), s.mul(r, s.sub(one, r)));
                            s.store(self.dgi.at(row * gw + u), dr);
                            s.store(self.dgh.at(row * gw + u), dr);
                            let c = carry.add(i * out_p + u);
                            s.store(c, s.fma(drh, r, s.load(c)));
                        }
                    }
                }
                // 4. dh_{t-1} = dgh · W_hh (+ what bypasses W_hh).
                let k = if d.original_gru() { 2 * hp } else { gw };
                lists.a.clear();
                lists.out.clear();
                lists.a2.clear();
                lists
                    .a
                    .extend(lists.row.iter().map(|&row| self.dgh.at(row * gw).cast_const()));
                lists.out.extend(lists.batch.iter().map(|&i| dh.add(i * out_p)));
                if carry_rows {
                    lists
                        .a2
                        .extend(lists.batch.iter().map(|&i| carry.add(i * out_p).cast_const()));
                }
                let store = StoreRows {
                    out: &lists.out,
                    limit: out_p,
                    bias: std::ptr::null(),
                    add: &lists.a2,
                    accumulate: false,
                };
                let ops = Operands {
                    rows: &lists.a,
                    k,
                    weights: &self.panels.w_hh_t,
                    k_offset: 0,
                    prefix: None,
                };
                match self.panels.w_hh_t.nv {
                    4 => gemm_rows::<S, 4, _>(
                        s,
                        d.isa.rows_per_tile(4),
                        &ops,
                        0..self.panels.w_hh_t.count,
                        &store,
                    ),
                    _ => gemm_rows::<S, 1, _>(
                        s,
                        d.isa.rows_per_tile(1),
                        &ops,
                        0..self.panels.w_hh_t.count,
                        &store,
                    ),
                }
            }
        }
    }
}
