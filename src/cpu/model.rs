//! [`CpuRnn`]: a network prepared for the fast CPU path (weights packed once,
//! threads started once, workspaces kept and reused), with the calls of
//! [`crate::reference`] and the same checks and errors.

use super::forward::{
    run_layers, FusedInput, KeepPtrs, LayerPass, Layers, Projection, Recurrence, RowLayout, RowLists, Split,
    StatePtrs, TaskLists,
};
use super::kernel::AlignedBuf;
use super::packed::{Dims, PackedNetwork};
use super::simd::Isa;
use super::threads::{SharedPtr, Workers};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::quant::Precision;
use crate::sequence::{self, ForwardInput, ForwardOutput, State};
use crate::tensor::Tensor;
use crate::weights::Weights;
use crate::RnnConfig;

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
    pub lengths: Vec<usize>,
    pub scratch: Vec<TaskLists>,
    /// Backward's buffers.
    pub train: super::train::TrainScratch,
}

/// `buf`, at least `len` floats long; `what` names it if memory is short.
fn grown<'a>(buf: &'a mut Option<AlignedBuf>, len: usize, what: &str) -> Result<&'a mut AlignedBuf> {
    let buf = buf.get_or_insert_with(AlignedBuf::default);
    buf.ensure(len, what)?;
    Ok(buf)
}

/// What the training forward keeps, for [`CpuRnn::run_forward`] to fill.
pub(super) struct TrainingSink<'a> {
    /// Per layer-direction, what the recurrence keeps.
    pub keep: &'a [KeepPtrs],
    /// Per layer but the last, where its output goes (`[T·B, D·Hout]`), in
    /// place of the workspace's buffers.
    pub outputs: &'a [SharedPtr],
    /// With inter-layer dropout: per layer but the last, the next layer's
    /// input (the output times its mask).
    pub dropout: Option<(crate::dropout::Dropout, &'a [SharedPtr])>,
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

// SAFETY: the workers only read the pointers to build each task's
// `LayerPass`, which writes through them to the rows it owns (see there).
unsafe impl Sync for Run<'_> {}

impl CpuRnn {
    /// Prepares `weights` (converted to f32) with one thread per core this
    /// process may use ([`default_threads`]).
    pub fn new<T: Element>(weights: &Weights<T>) -> Result<Self> {
        Self::with_threads(weights, default_threads())
    }

    /// Prepares `weights` to run on `threads` threads (1: the caller's only;
    /// at most 64). The threads are the process's pool, shared by every
    /// model: a second model adds no threads unless it asks for more.
    pub fn with_threads<T: Element>(weights: &Weights<T>, threads: usize) -> Result<Self> {
        Self::with_isa(weights, threads, Isa::detect())
    }

    /// Prepares `weights` for a given instruction set (for tests and
    /// comparisons; it must be one [`Isa::available`] lists).
    pub fn with_isa<T: Element>(weights: &Weights<T>, threads: usize, isa: Isa) -> Result<Self> {
        Self::prepare(weights, threads, isa, Precision::F32)
    }

    /// Prepares `weights` for inference in a reduced precision ([`crate::quant`]):
    /// int8 (s8 weights per output row, u8 activations per batch row and
    /// step) or f16 weights. Results match
    /// [`crate::reference::forward_quantized`] to f32 rounding; the model
    /// keeps only its packed weights (an int8 model's take about a quarter
    /// of f32's), so training it is an error. [`Precision::F32`] is
    /// [`CpuRnn::with_threads`].
    ///
    /// ```
    /// use rnn_kernels::cpu::CpuRnn;
    /// use rnn_kernels::{reference, ForwardInput, Precision, RnnConfig, Tensor, Weights};
    ///
    /// let weights = Weights::<f32>::random(RnnConfig { num_layers: 2, ..RnnConfig::lstm(6, 64) }, 0)?;
    /// let mut model = CpuRnn::with_precision(&weights, 1, Precision::Int8)?;
    /// let input = Tensor::full(&[48, 32, 6], 0.5);
    /// let args = ForwardInput::new(&input);
    /// let fast = model.forward(&args)?;
    /// let exact = reference::forward_quantized(&weights, Precision::Int8, &args)?;
    /// // The same codes and integer sums; the gate math rounds apart by an
    /// // ulp, which can move a code by one over a long sequence.
    /// assert!(fast.output.max_abs_diff(&exact.output) < 2e-3);
    /// # Ok::<(), rnn_kernels::Error>(())
    /// ```
    pub fn with_precision<T: Element>(
        weights: &Weights<T>,
        threads: usize,
        precision: Precision,
    ) -> Result<Self> {
        Self::prepare(weights, threads, Isa::detect(), precision)
    }

    /// Prepares `weights` for `isa` in `precision`.
    pub fn prepare<T: Element>(
        weights: &Weights<T>,
        threads: usize,
        isa: Isa,
        precision: Precision,
    ) -> Result<Self> {
        if !Isa::available().contains(&isa) {
            return Err(Error::Unsupported(format!("this CPU cannot run {isa}")));
        }
        weights.config().validate()?;
        Ok(CpuRnn {
            net: PackedNetwork::new(weights.cast(), isa, precision)?,
            workers: Workers::new(threads)?,
            ws: Workspace::default(),
        })
    }

    /// The network this model runs.
    pub fn config(&self) -> &RnnConfig {
        &self.net.config
    }

    /// The f32 weights an f32 model runs (`None` for a reduced-precision
    /// model, which keeps only its packed weights).
    pub fn weights(&self) -> Option<&Weights<f32>> {
        self.net.weights.as_ref()
    }

    /// The format the model's weights are stored in and computed with.
    pub fn precision(&self) -> Precision {
        self.net.dims.precision
    }

    /// What runs the model's products: the instruction set, and for int8
    /// the integer kernel (`avx512f, int8 avx512-vnni`).
    pub fn kernels(&self) -> String {
        let int8 = self.net.layers[0].w_hh.int8_kernel();
        match int8 {
            Some(kernel) => format!("{}, int8 {}", self.isa(), kernel.name()),
            None => self.isa().to_string(),
        }
    }

    /// Bytes the model's packed weights take in memory (scales and biases included).
    pub fn weight_bytes(&self) -> usize {
        self.net.weight_bytes()
    }

    /// The most threads one call uses.
    pub fn threads(&self) -> usize {
        self.workers.threads()
    }

    /// The instruction set its kernels were chosen for.
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
        self.net = PackedNetwork::new(weights.cast(), self.net.dims.isa, self.net.dims.precision)?;
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
        sequence::try_output(config, dims)
    }

    /// Whole-sequence forward into caller-owned tensors of the output's
    /// shapes (every element is written); allocates nothing once a call of
    /// this size has been made.
    pub fn forward_into(&mut self, args: &ForwardInput<'_, f32>, out: &mut ForwardOutput<f32>) -> Result<()> {
        let run = self.checked_run(args, out)?;
        self.run_forward(&run, None)
    }

    /// Checks `args` and `out` and points a [`Run`] at them.
    pub(super) fn checked_run<'a>(
        &self,
        args: &ForwardInput<'a, f32>,
        out: &mut ForwardOutput<f32>,
    ) -> Result<Run<'a>> {
        let config = self.config();
        let dims = sequence::check_forward(config, args)?;
        check_shape(
            "output",
            out.output.shape(),
            &sequence::output_shape(config, dims),
        )?;
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
        let mut out =
            Tensor::try_zeros([batch, self.config().output_size()]).map_err(|e| e.needed_by("the output"))?;
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
        self.run_forward(&run, None)
    }

    /// The forward pass on checked arguments; with `training`, also what
    /// backward needs. One job on the workers (see `forward.rs`).
    pub(super) fn run_forward(&mut self, run: &Run<'_>, training: Option<TrainingSink<'_>>) -> Result<()> {
        let d = self.net.dims;
        let (rows, batch) = (run.rows.rows(), run.rows.batch);
        let threads = self.workers.threads();
        let ws = &mut self.ws;
        ws.prepare(&d, run, threads);
        let gate_width = d.gate_width();
        let split = Split::choose(&d, threads, batch);
        // The weights a layer-direction's steps sum its projection with,
        // where that pays (packed here, on the caller's thread, if new).
        let fuses = |layer: usize| {
            FusedInput::pays(
                &d,
                d.layer_input(layer),
                run.rows.seq_len,
                split.rows_per_task(batch),
            )
        };
        for (layer, dir) in (0..d.layers).flat_map(|l| (0..d.dirs).map(move |dir| (l, dir))) {
            if fuses(layer) {
                let net = &self.net;
                if let Some(weights) = &net.weights {
                    net.layer(layer, dir)
                        .prepare_step_panels(&d, weights.layer_in_range(layer, dir))?;
                }
            }
        }
        let fused_weights = |layer: usize, dir: usize| {
            fuses(layer)
                .then(|| self.net.layer(layer, dir).w_ih_in_step_panels(&d))
                .flatten()
        };
        // Only the layers that project apart need gi.
        let gi_steps = (0..d.layers)
            .filter(|&layer| fused_weights(layer, 0).is_none())
            .map(|layer| gi_steps(&d, layer, split.rows_per_task(batch), run.rows.seq_len))
            .max()
            .unwrap_or(0);
        let gi_rows = gi_steps * batch;
        let gi_len = d.dirs * gi_rows * gate_width;
        let gi = SharedPtr(grown(&mut ws.gi, gi_len, "the input projection's workspace")?.as_mut_ptr());
        let state_len = state_floats(&d, batch);
        let states =
            SharedPtr(grown(&mut ws.states, d.dirs * state_len, "the state workspace")?.as_mut_ptr());
        let out_width = d.out_width();
        let layer_out: [SharedPtr; 2] = if d.layers > 1 && training.is_none() {
            let what = "the layer outputs' workspace";
            let a = SharedPtr(grown(&mut ws.layer_out[0], rows * out_width, what)?.as_mut_ptr());
            let b = SharedPtr(grown(&mut ws.layer_out[1], rows * out_width, what)?.as_mut_ptr());
            [a, b]
        } else {
            [SharedPtr::null(); 2]
        };
        let lengths = &ws.lengths[..];
        let (h_len, c_len) = (batch * d.out, batch * d.hidden);
        let output = |layer: usize| match &training {
            _ if layer + 1 == d.layers => SharedPtr(run.output),
            Some(sink) => sink.outputs[layer],
            None => layer_out[layer % 2],
        };
        let dropout = |layer: usize| {
            training
                .as_ref()
                .and_then(|t| t.dropout)
                .filter(|_| layer + 1 < d.layers)
                .map(|(dropout, dropped)| (dropout, layer, dropped[layer]))
        };
        // Layer `layer`'s input and its row stride: the call's, or the
        // previous layer's output (after its dropout, when training).
        let input = |layer: usize| match layer.checked_sub(1) {
            None => (run.input.as_ptr(), d.input_size),
            Some(below) => match dropout(below) {
                Some((_, _, next)) => (next.0.cast_const(), out_width),
                None => (output(below).0.cast_const(), out_width),
            },
        };
        // Built where each task needs it, so that a call allocates nothing.
        let pass = |layer: usize, dir: usize| {
            let state = layer * d.dirs + dir;
            let packed = self.net.layer(layer, dir);
            let (input, in_stride) = input(layer);
            // SAFETY: direction dir's blocks of gi and of the states.
            let (gi, base) = unsafe { (gi.at(dir * gi_rows * gate_width), states.at(dir * state_len)) };
            let offset = |p: *const f32, len: usize| {
                if p.is_null() {
                    p
                } else {
                    // SAFETY: h0/c0 (checked) and h_n/c_n hold L·D state rows of len floats.
                    unsafe { p.add(state * len) }
                }
            };
            let c_n = offset(run.c_n, c_len).cast_mut();
            let mut state_buffers = state_ptrs(&d, batch, base);
            if !c_n.is_null() && d.c_in_c_n() {
                state_buffers.c = SharedPtr(c_n);
            }
            LayerPass {
                projection: Projection {
                    dims: &self.net.dims,
                    layer: packed,
                    input,
                    in_stride,
                    gi: SharedPtr(gi),
                },
                recurrence: Recurrence {
                    dims: &self.net.dims,
                    layer: packed,
                    reverse: dir == 1,
                    lengths,
                    rows: run.rows,
                    gi: SharedPtr(gi),
                    gi_steps,
                    output: output(layer),
                    out_width,
                    out_offset: dir * d.out,
                    state: state_buffers,
                    h0: offset(run.h0, h_len),
                    keep: training.as_ref().map(|t| t.keep[state]),
                    fused_input: fused_weights(layer, dir).map(|weights| FusedInput {
                        input,
                        in_stride,
                        weights,
                    }),
                },
                c0: offset(run.c0, c_len),
                // SAFETY: h_n/c_n (checked) hold L·D state rows.
                h_n: unsafe { run.h_n.add(state * h_len) },
                c_n,
                dropout: dropout(layer),
            }
        };
        let layers = Layers {
            count: d.layers,
            dirs: d.dirs,
            batch,
            pass: &pass,
        };
        run_layers(&self.workers, split, &layers, &ws.scratch);
        Ok(())
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
        let per_task = batch.max(seq_len * batch / threads + 1);
        self.ensure_scratch(d.dirs * threads, per_task);
    }

    /// At least `tasks` row lists, each with room for `rows` rows.
    pub fn ensure_scratch(&mut self, tasks: usize, rows: usize) {
        while self.scratch.len() < tasks {
            self.scratch.push(TaskLists::default());
        }
        for lists in &self.scratch {
            lists.lock().reserve(rows);
        }
    }
}

impl RowLists {
    /// Capacity for `n` rows in every list (so that a call allocates nothing).
    /// Emptied first: `reserve` counts from the length the last call left.
    fn reserve(&mut self, n: usize) {
        self.clear();
        self.batch.reserve(n);
        self.row.reserve(n);
        self.live.reserve(n);
        self.a.reserve(n);
        self.a2.reserve(n);
        self.out.reserve(n);
        self.x.reserve(n);
    }
}

/// How many steps of the input projection `gi` holds at a time. One whole
/// projection of `long` (T = 1000) is 32 MB a task, written and read back
/// through DRAM: 15% of its time. A narrow layer (`in + Hout < 512`) whose
/// whole projection would not stay in the caches projects a stretch of steps
/// at a time into a ring that stays in L2. Otherwise all steps at once: a
/// wide layer's products are compute-bound (and a stretch would read its
/// weights once per step), and a small one's fit in cache anyway (and one
/// large projection has less overhead than many small ones).
fn gi_steps(d: &Dims, layer: usize, rows_per_task: usize, seq_len: usize) -> usize {
    const RING_BYTES: usize = 512 << 10;
    const CACHED_BYTES: usize = 8 << 20;
    let per_step = rows_per_task.max(1) * d.gate_width() * 4;
    if d.layer_input(layer) + d.out >= 512 || per_step * seq_len <= CACHED_BYTES {
        return seq_len;
    }
    (RING_BYTES / per_step).clamp(1, seq_len)
}

/// Floats of one direction's state buffers for `batch` rows.
fn state_floats(d: &Dims, batch: usize) -> usize {
    batch * (2 * d.out_padded + 3 * d.hidden_padded)
}

/// A direction's state buffers, laid out from `base` (see [`state_floats`]).
fn state_ptrs(d: &Dims, batch: usize, base: *mut f32) -> StatePtrs {
    let (h, c) = (batch * d.out_padded, batch * d.hidden_padded);
    // SAFETY: base has state_floats(d, batch) floats.
    unsafe {
        StatePtrs {
            h: [SharedPtr(base), SharedPtr(base.add(h))],
            c: SharedPtr(base.add(2 * h)),
            h_new: SharedPtr(base.add(2 * h + c)),
            reset_h: SharedPtr(base.add(2 * h + 2 * c)),
        }
    }
}

fn check_shape(name: &str, found: &[usize], expected: &[usize]) -> Result<()> {
    if found != expected {
        return Err(Error::shape(name, format!("{expected:?}"), found));
    }
    Ok(())
}

/// One thread per core this process may use: the CPUs of its affinity
/// mask (`taskset`, a container's cpuset), fewer when a cgroup's CPU quota
/// allows less (`docker --cpus=1.5` gives 1), as
/// [`std::thread::available_parallelism`] reads them.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
