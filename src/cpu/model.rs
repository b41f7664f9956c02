//! [`CpuRnn`]: a network prepared for the fast CPU path (weights packed once,
//! threads started once, workspaces kept and reused), with the calls of
//! [`crate::reference`] and the same checks and errors.

use super::forward::{
    run_projections, run_recurrences, KeepPtrs, Projection, Recurrence, RowLayout, RowLists, Split, StatePtrs,
};
use super::kernel::AlignedBuf;
use super::packed::{Dims, PackedNetwork};
use super::simd::Isa;
use super::threads::{SharedPtr, Workers};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::sequence::{self, ForwardInput, ForwardOutput, State};
use crate::tensor::Tensor;
use crate::weights::Weights;
use crate::RnnConfig;
use std::sync::Mutex;

/// A recurrent network prepared for the fast CPU path, in f32.
///
/// Weights are packed into micro-kernel panels at construction, a thread
/// pool is started once, and every buffer a call needs is kept for the next
/// call of the same or a smaller size: [`CpuRnn::forward_into`] and
/// [`CpuRnn::step_into`] allocate nothing once a shape has been seen.
/// Results match [`crate::reference`] to f32 rounding (tested), and are
/// bitwise the same run to run for a given thread count.
///
/// ```
/// use rnn_kernels::cpu::CpuRnn;
/// use rnn_kernels::{ForwardInput, RnnConfig, State, Tensor, Weights};
///
/// let config = RnnConfig { num_layers: 2, ..RnnConfig::lstm(6, 64) };
/// let mut model = CpuRnn::new(&Weights::<f32>::random(config.clone(), 0)?)?;
/// let out = model.forward(&ForwardInput::new(&Tensor::zeros([48, 32, 6])))?;
/// assert_eq!(out.h_n.shape(), &[2, 32, 64]);
///
/// // 256 streams, one hour at a time, the state carried between calls.
/// let mut state = State::zeros(&config, 256);
/// let mut h = Tensor::zeros([256, 64]);
/// model.step_into(&Tensor::zeros([256, 6]), &mut state, &mut h)?;
/// # Ok::<(), rnn_kernels::Error>(())
/// ```
pub struct CpuRnn {
    pub(super) net: PackedNetwork,
    pub(super) workers: Workers,
    pub(super) ws: Workspace,
}

/// The buffers a call needs, grown on demand and kept.
#[derive(Default)]
pub(super) struct Workspace {
    /// The input projection, `[D, T·B, G·Hp]`.
    gi: Option<AlignedBuf>,
    /// Two layer outputs, `[T·B, D·Hout]`, alternating between layers.
    layer_out: [Option<AlignedBuf>; 2],
    /// Per direction: `h` ×2 `[B, Hout_p]`, then `c`, `h_new`, `r ⊙ h` `[B, Hp]`.
    states: Option<AlignedBuf>,
    /// The live rows `(t, b)` of the call.
    pub valid_rows: Vec<usize>,
    pub lengths: Vec<usize>,
    pub scratch: Vec<Mutex<RowLists>>,
}

fn grown(buf: &mut Option<AlignedBuf>, len: usize) -> &mut AlignedBuf {
    let buf = buf.get_or_insert_with(|| AlignedBuf::zeros(len));
    buf.ensure(len);
    buf
}

/// What the training forward keeps, for [`run_forward`] to fill.
pub(super) struct TrainingSink<'a> {
    /// Per layer-direction, what the recurrence keeps.
    pub keep: &'a [KeepPtrs],
    /// Per layer, where its output goes (`[T·B, D·Hout]`), in place of the
    /// workspace's buffers; the last layer's still goes to the caller's.
    pub outputs: &'a [SharedPtr],
    /// Per layer but the last: the next layer's input, made from the output
    /// (inter-layer dropout), or `None` to read the output itself.
    pub next_inputs: &'a mut dyn FnMut(usize) -> Option<*const f32>,
}

/// The arguments of one forward run, checked.
pub(super) struct Run<'a> {
    pub rows: RowLayout,
    pub input: &'a [f32],
    pub lengths: Option<&'a [usize]>,
    /// `[L·D, B, Hout]` and `[L·D, B, H]`, or null for zeros. Raw, because a
    /// step reads them from the buffers it writes `h_n`/`c_n` to.
    pub h0: *const f32,
    pub c0: *const f32,
    /// `[T·B, D·Hout]`, `[L·D, B, Hout]`, `[L·D, B, H]` (LSTM).
    pub output: *mut f32,
    pub h_n: *mut f32,
    pub c_n: *mut f32,
}

impl CpuRnn {
    /// Prepares `weights` (converted to f32) with one thread per core.
    pub fn new<T: Element>(weights: &Weights<T>) -> Result<Self> {
        Self::with_threads(weights, default_threads())
    }

    /// Prepares `weights` to run on `threads` threads (1: the caller's only).
    pub fn with_threads<T: Element>(weights: &Weights<T>, threads: usize) -> Result<Self> {
        Self::with_isa(weights, threads, Isa::detect())
    }

    /// Prepares `weights` for a given instruction set (for tests and
    /// comparisons; it must be one [`Isa::available`] lists).
    pub fn with_isa<T: Element>(weights: &Weights<T>, threads: usize, isa: Isa) -> Result<Self> {
        if !Isa::available().contains(&isa) {
            return Err(Error::Unsupported(format!("this CPU cannot run {isa}")));
        }
        weights.config().validate()?;
        Ok(CpuRnn {
            net: PackedNetwork::new(weights.cast(), isa),
            workers: Workers::new(threads)?,
            ws: Workspace::default(),
        })
    }

    pub fn config(&self) -> &RnnConfig {
        self.net.weights.config()
    }

    /// The f32 weights the model runs.
    pub fn weights(&self) -> &Weights<f32> {
        &self.net.weights
    }

    pub fn threads(&self) -> usize {
        self.workers.threads()
    }

    pub fn isa(&self) -> Isa {
        self.net.dims.isa
    }

    /// Replaces the weights (after an optimizer step, say): same
    /// configuration, repacked in place.
    pub fn set_weights<T: Element>(&mut self, weights: &Weights<T>) -> Result<()> {
        if weights.config() != self.config() {
            return Err(Error::Config(format!(
                "set_weights: the model is {}, the new weights are {}",
                crate::weights::describe(self.config()),
                crate::weights::describe(weights.config())
            )));
        }
        self.net = PackedNetwork::new(weights.cast(), self.net.dims.isa);
        Ok(())
    }

    /// Whole-sequence forward (inference), as [`crate::reference::forward`].
    pub fn forward(&mut self, args: &ForwardInput<'_, f32>) -> Result<ForwardOutput<f32>> {
        let mut out = self.empty_output(args)?;
        self.forward_into(args, &mut out)?;
        Ok(out)
    }

    /// Zero outputs shaped for `args`.
    pub(super) fn empty_output(&self, args: &ForwardInput<'_, f32>) -> Result<ForwardOutput<f32>> {
        let config = self.config();
        let dims = sequence::check_forward(config, args)?;
        let mut shape = args.input.shape().to_vec();
        shape[2] = config.output_width();
        Ok(ForwardOutput {
            output: Tensor::zeros(shape),
            h_n: Tensor::zeros(sequence::h_shape(config, dims.batch)),
            c_n: config
                .has_cell_state()
                .then(|| Tensor::zeros(sequence::c_shape(config, dims.batch))),
        })
    }

    /// Whole-sequence forward into caller-owned tensors of the output's
    /// shapes (every element is written); allocates nothing once a call of
    /// this size has been made.
    pub fn forward_into(&mut self, args: &ForwardInput<'_, f32>, out: &mut ForwardOutput<f32>) -> Result<()> {
        let run = self.checked_run(args, out)?;
        self.run_forward(&run, None);
        Ok(())
    }

    /// Checks `args` and `out` and points a [`Run`] at them.
    pub(super) fn checked_run<'a>(
        &self,
        args: &ForwardInput<'a, f32>,
        out: &mut ForwardOutput<f32>,
    ) -> Result<Run<'a>> {
        let config = self.config();
        let dims = sequence::check_forward(config, args)?;
        let mut out_shape = args.input.shape().to_vec();
        out_shape[2] = config.output_width();
        check_shape("output", out.output.shape(), &out_shape)?;
        check_shape("h_n", out.h_n.shape(), &sequence::h_shape(config, dims.batch))?;
        if let Some(c_n) = sequence::cell_state_arg(config, "c_n", out.c_n.as_ref(), true)? {
            check_shape("c_n", c_n.shape(), &sequence::c_shape(config, dims.batch))?;
        }
        Ok(Run {
            rows: RowLayout {
                seq_len: dims.seq_len,
                batch: dims.batch,
                batch_first: config.batch_first,
            },
            input: args.input.data(),
            lengths: args.lengths,
            h0: args.h0.map_or(std::ptr::null(), |h| h.data().as_ptr()),
            c0: args.c0.map_or(std::ptr::null(), |c| c.data().as_ptr()),
            output: out.output.data_mut().as_mut_ptr(),
            h_n: out.h_n.data_mut().as_mut_ptr(),
            c_n: out
                .c_n
                .as_mut()
                .map_or(std::ptr::null_mut(), |c| c.data_mut().as_mut_ptr()),
        })
    }

    /// Advances `B` streams by one step, as [`crate::reference::step`].
    pub fn step(&mut self, x: &Tensor<f32>, state: &mut State<f32>) -> Result<Tensor<f32>> {
        let batch = sequence::check_step(self.config(), x, state)?;
        let mut out = Tensor::zeros([batch, self.config().output_size()]);
        self.step_into(x, state, &mut out)?;
        Ok(out)
    }

    /// One step into a caller-owned `[B, Hout]` output; the state is updated
    /// in place. Allocates nothing once a step of this batch has been made.
    pub fn step_into(
        &mut self,
        x: &Tensor<f32>,
        state: &mut State<f32>,
        out: &mut Tensor<f32>,
    ) -> Result<()> {
        let config = self.config();
        let batch = sequence::check_step(config, x, state)?;
        check_shape("out", out.shape(), &[batch, config.output_size()])?;
        // The state is read as h0/c0 and written as h_n/c_n: each layer reads
        // its rows before it writes them.
        let h = state.h.data_mut().as_mut_ptr();
        let c = state
            .c
            .as_mut()
            .map_or(std::ptr::null_mut(), |c| c.data_mut().as_mut_ptr());
        let run = Run {
            rows: RowLayout {
                seq_len: 1,
                batch,
                batch_first: false,
            },
            input: x.data(),
            lengths: None,
            h0: h,
            c0: c,
            output: out.data_mut().as_mut_ptr(),
            h_n: h,
            c_n: c,
        };
        self.run_forward(&run, None);
        Ok(())
    }

    /// The forward pass on checked arguments; with `training`, also what
    /// backward needs.
    pub(super) fn run_forward(&mut self, run: &Run<'_>, mut training: Option<TrainingSink<'_>>) {
        let d = self.net.dims;
        let (rows, batch) = (run.rows.rows(), run.rows.batch);
        let threads = self.workers.threads();
        let ws = &mut self.ws;
        ws.prepare(&d, run, threads);
        let gate_width = d.gate_width();
        let gi = SharedPtr(grown(&mut ws.gi, d.dirs * rows * gate_width).as_mut_ptr());
        let state_len = state_floats(&d, batch);
        let states = grown(&mut ws.states, d.dirs * state_len);
        let out_width = d.out_width();
        let layer_out: [SharedPtr; 2] = if d.layers > 1 && training.is_none() {
            let a = SharedPtr(grown(&mut ws.layer_out[0], rows * out_width).as_mut_ptr());
            let b = SharedPtr(grown(&mut ws.layer_out[1], rows * out_width).as_mut_ptr());
            [a, b]
        } else {
            [SharedPtr::null(); 2]
        };
        let split = Split::choose(&d, threads, batch);
        let lengths = &ws.lengths[..];
        let (mut input, mut in_stride) = (run.input.as_ptr(), d.input_size);
        for layer in 0..d.layers {
            let last = layer + 1 == d.layers;
            let output = match &training {
                _ if last => SharedPtr(run.output),
                Some(sink) => sink.outputs[layer],
                None => layer_out[layer % 2],
            };
            // Rows past a sequence's end are never computed: they read as zero.
            if run.lengths.is_some() {
                for (b, &len) in lengths.iter().enumerate() {
                    for t in len..run.rows.seq_len {
                        // SAFETY: the row is below T·B rows of out_width floats.
                        unsafe {
                            std::ptr::write_bytes(output.at(run.rows.row(t, b) * out_width), 0, out_width)
                        };
                    }
                }
            }
            let projections: Vec<Projection<'_>> = (0..d.dirs)
                .map(|dir| Projection {
                    dims: &d,
                    layer: self.net.layer(layer, dir),
                    input,
                    in_stride,
                    // SAFETY: direction dir's [T·B, G·Hp] block of gi.
                    gi: SharedPtr(unsafe { gi.at(dir * rows * gate_width) }),
                })
                .collect();
            run_projections(&self.workers, &projections, &ws.valid_rows, &ws.scratch);

            let state_ptrs: Vec<StatePtrs> = (0..d.dirs)
                .map(|dir| {
                    let base = &mut states.as_mut_slice()[dir * state_len..(dir + 1) * state_len];
                    init_state(&d, run, layer * d.dirs + dir, base)
                })
                .collect();
            let runs: Vec<Recurrence<'_>> = (0..d.dirs)
                .map(|dir| Recurrence {
                    dims: &d,
                    layer: self.net.layer(layer, dir),
                    reverse: dir == 1,
                    lengths,
                    rows: run.rows,
                    gi: projections[dir].gi,
                    output,
                    out_width,
                    out_offset: dir * d.out,
                    state: state_ptrs[dir],
                    keep: training.as_ref().map(|t| t.keep[layer * d.dirs + dir]),
                })
                .collect();
            run_recurrences(&self.workers, split, &runs, &ws.scratch);
            for (dir, st) in state_ptrs.iter().enumerate() {
                final_state(&d, run, lengths, layer * d.dirs + dir, st);
            }

            input = output.0.cast_const();
            in_stride = out_width;
            if let (Some(sink), false) = (training.as_mut(), last) {
                if let Some(next) = (sink.next_inputs)(layer) {
                    input = next;
                }
            }
        }
    }
}

impl Workspace {
    /// Sizes the row lists and fills the lengths and live rows of `run`.
    fn prepare(&mut self, d: &Dims, run: &Run<'_>, threads: usize) {
        let (seq_len, batch) = (run.rows.seq_len, run.rows.batch);
        self.lengths.clear();
        match run.lengths {
            Some(l) => self.lengths.extend_from_slice(l),
            None => self.lengths.resize(batch, seq_len),
        }
        self.valid_rows.clear();
        for t in 0..seq_len {
            for (b, &len) in self.lengths.iter().enumerate() {
                if t < len {
                    self.valid_rows.push(run.rows.row(t, b));
                }
            }
        }
        // Row order within a projection does not matter; memory order helps.
        if run.rows.batch_first {
            self.valid_rows.sort_unstable();
        }
        let per_task = batch.max(self.valid_rows.len() / threads + 1);
        self.ensure_scratch(d.dirs * threads, per_task);
    }

    /// At least `tasks` row lists, each with room for `rows` rows.
    pub fn ensure_scratch(&mut self, tasks: usize, rows: usize) {
        while self.scratch.len() < tasks {
            self.scratch.push(Mutex::new(RowLists::default()));
        }
        for lists in &self.scratch {
            lists.lock().unwrap_or_else(|e| e.into_inner()).reserve(rows);
        }
    }
}

impl RowLists {
    /// Capacity for `n` rows in every list (so that a call allocates nothing).
    fn reserve(&mut self, n: usize) {
        self.batch.reserve(n);
        self.row.reserve(n);
        self.live.reserve(n);
        self.a.reserve(n);
        self.a2.reserve(n);
        self.out.reserve(n);
    }
}

/// Floats of one direction's state buffers for `batch` rows.
fn state_floats(d: &Dims, batch: usize) -> usize {
    batch * (2 * d.out_padded + 3 * d.hidden_padded)
}

/// Points a direction's state buffers into `base`, zeroed, with `h0`/`c0`
/// (state row `state`) in `h[0]` and `c`.
fn init_state(d: &Dims, run: &Run<'_>, state: usize, base: &mut [f32]) -> StatePtrs {
    let batch = run.rows.batch;
    let (out_p, hp) = (d.out_padded, d.hidden_padded);
    // Padded columns must be zero: see cells.rs.
    base.fill(0.0);
    let (h, rest) = base.split_at_mut(2 * batch * out_p);
    let (c, rest) = rest.split_at_mut(batch * hp);
    let (h_new, reset_h) = rest.split_at_mut(batch * hp);
    // SAFETY: h0/c0, when given, hold [L·D, B, Hout] / [L·D, B, H] floats
    // (checked by the caller), and do not overlap the workspace.
    unsafe {
        if !run.h0.is_null() {
            for b in 0..batch {
                let src = run.h0.add((state * batch + b) * d.out);
                std::ptr::copy_nonoverlapping(src, h[b * out_p..].as_mut_ptr(), d.out);
            }
        }
        if !run.c0.is_null() {
            for b in 0..batch {
                let src = run.c0.add((state * batch + b) * d.hidden);
                std::ptr::copy_nonoverlapping(src, c[b * hp..].as_mut_ptr(), d.hidden);
            }
        }
    }
    let (h0_buf, h1_buf) = h.split_at_mut(batch * out_p);
    StatePtrs {
        h: [SharedPtr(h0_buf.as_mut_ptr()), SharedPtr(h1_buf.as_mut_ptr())],
        c: SharedPtr(c.as_mut_ptr()),
        h_new: SharedPtr(h_new.as_mut_ptr()),
        reset_h: SharedPtr(reset_h.as_mut_ptr()),
    }
}

/// Each sequence's state after its own last step into `h_n`/`c_n` row `state`.
fn final_state(d: &Dims, run: &Run<'_>, lengths: &[usize], state: usize, st: &StatePtrs) {
    let batch = run.rows.batch;
    for (b, &len) in lengths.iter().enumerate() {
        // SAFETY: step len - 1 wrote h[len % 2]; h_n/c_n hold [L·D, B, ·].
        unsafe {
            let h = st.h[len % 2].at(b * d.out_padded);
            std::ptr::copy_nonoverlapping(h, run.h_n.add((state * batch + b) * d.out), d.out);
            if !run.c_n.is_null() {
                let c = st.c.at(b * d.hidden_padded);
                std::ptr::copy_nonoverlapping(c, run.c_n.add((state * batch + b) * d.hidden), d.hidden);
            }
        }
    }
}

fn check_shape(name: &str, found: &[usize], expected: &[usize]) -> Result<()> {
    if found != expected {
        return Err(Error::shape(name, format!("{expected:?}"), found));
    }
    Ok(())
}

/// One thread per core this process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
