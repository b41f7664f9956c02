//! The forward pass of the fast CPU path, one layer at a time:
//!
//! 1. the input projection of every live row `(t, b)` of every direction at
//!    once (one product over `T·B` rows, bias folded in), into `gi`;
//! 2. per direction, the recurrence: per step one product of the live rows'
//!    `h_{t-1}` with `W_hh` and the gate math in its epilogue (plus the
//!    second product of the original GRU, or the LSTM's projection).
//!
//! Where it pays ([`FusedInput::pays`]: one step, or narrow LSTM and RNN
//! layers), step 1 is skipped and each step's product sums `x · W_ihᵀ` too.
//!
//! Rows are the caller's: `(t, b)` is row `t·B + b` (time-major) or
//! `b·T + t` (batch-first), of the input, of `gi` and of the output alike,
//! so no layout is ever converted. A sequence of length `len` stops after
//! step `len - 1`; its rows past the end are never computed and read as zero.
//!
//! Threads: a whole forward call runs on the model's share of the process's
//! pool (`threads.rs`). Each direction's batch rows split into chunks, and a
//! chunk is one task that projects, runs and finishes its own rows in every
//! layer: no thread waits for another except where the two directions of a
//! layer meet, and the rows a task projects are the rows it then reads (a
//! split by time would move half of `gi` between cores). When the batch is
//! too small to split (stream_b1, B = 4), the calling thread runs the steps
//! and every product is a region whose pieces are shares of its panels
//! (hidden units), taken by whichever threads are running.

use super::cells::{GruOriginalCandidate, GruOriginalGates, GruStep, LiveRow, LstmStep, RnnStep, StoreRows};
use super::kernel::{gemm_rows, Epilogue, Operands, Panels, Prefix};
use super::packed::{Dims, PackedLayer};
use super::simd::{dispatch, Simd};
use super::threads::{SharedPtr, Workers};
use crate::config::CellKind;
use crate::dropout::Dropout;
use std::ops::Range;
use std::sync::Mutex;

/// Where row `(t, b)` of a `T × B` call lives.
#[derive(Clone, Copy, Debug)]
pub struct RowLayout {
    pub seq_len: usize,
    pub batch: usize,
    pub batch_first: bool,
}

impl RowLayout {
    #[inline(always)]
    pub fn row(&self, t: usize, b: usize) -> usize {
        if self.batch_first {
            b * self.seq_len + t
        } else {
            t * self.batch + b
        }
    }

    pub fn rows(&self) -> usize {
        self.seq_len * self.batch
    }
}

/// Part `i` of `n` of `0..count`, contiguous, sizes differing by at most one.
pub fn share(count: usize, i: usize, n: usize) -> Range<usize> {
    count * i / n..count * (i + 1) / n
}

/// The row lists one task builds for its products, reused across calls.
#[derive(Default)]
pub struct RowLists {
    /// The live rows' batch index `b` and row index `(t, b)`.
    pub batch: Vec<usize>,
    pub row: Vec<usize>,
    pub live: Vec<LiveRow>,
    pub a: Vec<*const f32>,
    pub a2: Vec<*const f32>,
    pub out: Vec<*mut f32>,
    /// The live rows' layer input, when the step fuses its projection.
    pub x: Vec<*const f32>,
}

// SAFETY: the pointers are only dereferenced during the call that filled
// the lists, by the task that filled them or by the pieces of its products
// (which read the rows and write disjoint columns).
unsafe impl Send for RowLists {}
unsafe impl Sync for RowLists {}

/// Who runs a task's products: the task's thread alone, or all of the
/// model's threads, each a share of the product's panels.
#[derive(Clone, Copy)]
pub enum Team<'w> {
    Alone,
    All(&'w Workers),
}

impl Team<'_> {
    /// Runs `work(share, shares)` for every share, each compiled for `s`'s
    /// instruction set, and returns when all are done. Mark `work`
    /// `#[inline(always)]` (see [`Simd::vectorize`]).
    #[inline(always)]
    pub fn split<S: Simd>(self, s: S, work: impl Fn(usize, usize) + Sync) {
        match self {
            Team::Alone => work(0, 1),
            Team::All(workers) => workers.split(
                #[inline(always)]
                |i, n| {
                    s.vectorize(
                        #[inline(always)]
                        || work(i, n),
                    )
                },
            ),
        }
    }
}

impl RowLists {
    pub(super) fn clear(&mut self) {
        self.batch.clear();
        self.row.clear();
        self.live.clear();
        self.a.clear();
        self.a2.clear();
        self.out.clear();
        self.x.clear();
    }
}

/// One list per task; a task locks its own (never contended). Each on its
/// own cache lines: the lists' lengths change on every push, and two cores
/// writing one line run at half speed.
pub type Scratch = [TaskLists];

#[repr(align(128))]
#[derive(Default)]
pub struct TaskLists(Mutex<RowLists>);

impl TaskLists {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, RowLists> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the training forward keeps per layer-direction (null: inference).
#[derive(Clone, Copy, Debug)]
pub struct KeepPtrs {
    /// Gate activations, `[rows, G·Hp]`.
    pub act: SharedPtr,
    /// LSTM `c_t`; GRU `W_hn h + b_hn`; original GRU `r ⊙ h`: `[rows, Hp]`.
    pub extra: SharedPtr,
    /// `h_{t-1}` of every live row, `[rows, Hout_p]`.
    pub h_prev: SharedPtr,
    /// LSTM projection: `h` before the projection, `[rows, Hp]`.
    pub h_new: SharedPtr,
}

/// The per-direction state buffers of a recurrence, each `[B, ·]`.
#[derive(Clone, Copy, Debug)]
pub struct StatePtrs {
    /// Two `h` buffers, `[B, Hout_p]` each: step `s` reads `h[s % 2]`, writes
    /// the other; only `h[0]`, for a zero `h0`, where `Dims::h_in_output`.
    pub h: [SharedPtr; 2],
    /// LSTM `c` (`c_n` itself where `Dims::c_in_c_n`); original GRU `z`: `[B, Hp]`.
    pub c: SharedPtr,
    /// LSTM projection: `h` before the projection, `[B, Hp]`.
    pub h_new: SharedPtr,
    /// Original GRU: `r ⊙ h`, `[B, Hp]`.
    pub reset_h: SharedPtr,
}

/// One layer in one direction, over the rows its caller gives it.
pub struct Recurrence<'a> {
    pub dims: &'a Dims,
    pub layer: &'a PackedLayer,
    pub reverse: bool,
    pub lengths: &'a [usize],
    pub rows: RowLayout,
    /// This direction's input projection, `[gi_steps · B, G·Hp]`: processing
    /// step `s` of batch row `b` in slot `(s % gi_steps) · B + b` (a ring of
    /// `gi_steps` steps, refilled by the caller before each stretch).
    pub gi: SharedPtr,
    pub gi_steps: usize,
    /// The layer's output, `[rows, out_width]`; this direction writes
    /// columns `out_offset .. out_offset + Hout`.
    pub output: SharedPtr,
    pub out_width: usize,
    pub out_offset: usize,
    pub state: StatePtrs,
    /// This state's rows of `h0` (null: zeros), `[B, Hout]`.
    pub h0: *const f32,
    pub keep: Option<KeepPtrs>,
    /// The input projection summed into each step's product instead of
    /// read from `gi` (then unused): see [`FusedInput`].
    pub fused_input: Option<FusedInput<'a>>,
}

/// A layer's input projection fused into each step's recurrent product: the
/// product's accumulators take `x · W_ihᵀ` and then `h · W_hhᵀ`, and the
/// epilogue adds the bias where it would add `gi`. This skips the round
/// trip of `gi` through memory (`G·Hp` floats written and read per row and
/// step) and a product of its own per stretch, at the price of reading
/// `W_ih` once per step instead of once per stretch: see [`FusedInput::pays`].
#[derive(Clone, Copy)]
pub struct FusedInput<'a> {
    /// Row `r` of the layer input is at `input + r · in_stride`.
    pub input: *const f32,
    pub in_stride: usize,
    /// `W_ih` in `W_hh`'s panels (`PackedLayer::w_ih_in_step_panels`).
    pub weights: &'a Panels,
}

/// At most this many bytes of `W_ih` and `W_hh` together for a fused layer
/// over several steps: both are read at every step, and must stay in L2.
const FUSED_WEIGHTS_BYTES: usize = 512 * 1024;

impl FusedInput<'_> {
    /// Whether a layer with `in_size` inputs, run for `seq_len` steps with
    /// `rows` batch rows per task, is faster with its projection fused.
    /// Always for one step (streaming). Over several, when both weight
    /// matrices stay in L2 and a task has a full tile of rows, so that the
    /// product stays bound by FMAs, not by reading `W_ih` again (measured on
    /// AVX-512, 1 thread: icu 905 → 826 µs, long 13.1 → 12.3 µs a step;
    /// large, whose weights are 32 MB, 881 → 1,068 ms; xl_b4 at B = 4,
    /// 60 → 149 ms).
    pub fn pays(d: &Dims, in_size: usize, seq_len: usize, rows: usize) -> bool {
        let weights_bytes = (in_size + d.out) * d.gate_width() * d.precision.weight_bytes();
        seq_len == 1 || (weights_bytes <= FUSED_WEIGHTS_BYTES && rows >= d.step_tile_rows())
    }
}

// SAFETY: a Recurrence only holds pointers (SharedPtr) into buffers whose
// rows (or, in the unit split, columns) its tasks partition.
unsafe impl Sync for Recurrence<'_> {}

/// Below this many multiply-adds per step, splitting a step's units across
/// threads costs more in barriers than it saves.
const UNIT_SPLIT_MIN_WORK: usize = 1 << 15;

impl Recurrence<'_> {
    /// The slot of processing step `step` of batch row `b` in `gi`.
    #[inline(always)]
    pub fn gi_slot(&self, step: usize, b: usize) -> usize {
        (step % self.gi_steps) * self.rows.batch + b
    }

    /// This direction's columns of output row `row`.
    ///
    /// # Safety
    /// `row` < T·B.
    #[inline(always)]
    unsafe fn output_row(&self, row: usize) -> *mut f32 {
        // SAFETY: the output holds T·B rows of out_width floats.
        unsafe { self.output.at(row * self.out_width + self.out_offset) }
    }

    /// Where `h` lives in the output rows: batch row `b`'s output row of
    /// processing step `step` (of its `len`).
    ///
    /// # Safety
    /// `b` < B and `step` < `len` ≤ T.
    #[inline(always)]
    unsafe fn step_output(&self, step: usize, b: usize, len: usize) -> *mut f32 {
        // SAFETY: (time, b) is a row of the call.
        unsafe { self.output_row(self.rows.row(self.time(step, len), b)) }
    }

    /// Whether step 0 reads `h0` where the caller keeps it: only where `h`
    /// lives in the output rows (the state buffers are padded otherwise),
    /// and not for zeros.
    fn reads_h0_in_place(&self) -> bool {
        self.dims.h_in_output() && !self.h0.is_null()
    }

    /// Processing step `step` of a row of length `len` is time `time(step, len)`.
    #[inline(always)]
    pub fn time(&self, step: usize, len: usize) -> usize {
        if self.reverse {
            len - 1 - step
        } else {
            step
        }
    }

    /// Runs batch rows `batch_rows` over processing steps `steps` (those of
    /// them each row has), every product by `team`.
    pub fn run(&self, batch_rows: Range<usize>, steps: Range<usize>, team: Team<'_>, lists: &mut RowLists) {
        dispatch!(self.dims.isa, |s| {
            // SAFETY: the caller gives disjoint batch rows to concurrent
            // calls; the buffers are sized for `rows` by the workspace.
            unsafe { self.run_with(s, batch_rows, steps, team, lists) }
        })
    }

    #[inline(always)]
    unsafe fn run_with<S: Simd>(
        &self,
        s: S,
        batch_rows: Range<usize>,
        steps: Range<usize>,
        team: Team<'_>,
        lists: &mut RowLists,
    ) {
        let d = self.dims;
        let (hp, out_p) = (d.hidden_padded, d.out_padded);
        let max_len = batch_rows.clone().map(|b| self.lengths[b]).max().unwrap_or(0);
        let st = self.state;
        for step in steps.start..steps.end.min(max_len) {
            // SAFETY (every `at` below): b < B and row < T·B index rows of
            // buffers the workspace sized [B, ·] and [T·B, ·].
            unsafe {
                self.gather_live_rows(step, batch_rows.clone(), lists);
                self.step_products(s, lists, team);
                if d.projects() {
                    let w_hr = self.layer.w_hr.as_ref().expect("a projecting layer has W_hr");
                    let next = 1 - step % 2;
                    lists.a2.clear();
                    lists.a2.extend(lists.live.iter().map(|r| r.h_next.cast_const()));
                    lists.out.clear();
                    lists
                        .out
                        .extend(lists.batch.iter().map(|&b| st.h[next].at(b * out_p)));
                    let store = StoreRows {
                        out: &lists.out,
                        limit: out_p,
                        bias: std::ptr::null(),
                        add: &[],
                        accumulate: false,
                    };
                    let ops = Operands {
                        rows: &lists.a2,
                        k: d.hidden,
                        weights: w_hr,
                        k_offset: 0,
                        prefix: None,
                    };
                    team.split(
                        s,
                        #[inline(always)]
                        |i, n| plain_product(s, d, &ops, i, n, &store),
                    );
                    if let Some(keep) = self.keep {
                        for (&b, &row) in lists.batch.iter().zip(&lists.row) {
                            std::ptr::copy_nonoverlapping(st.h_new.at(b * hp), keep.h_new.at(row * hp), hp);
                        }
                    }
                }
                if !d.h_in_output() {
                    // The new h of the live rows, to the output.
                    let next = 1 - step % 2;
                    for (&b, &row) in lists.batch.iter().zip(&lists.row) {
                        std::ptr::copy_nonoverlapping(st.h[next].at(b * out_p), self.output_row(row), d.out);
                    }
                }
            }
        }
    }

    /// Lists the rows of `batch_rows` that live at processing step `step`:
    /// where each reads and writes, and the product's operands.
    ///
    /// # Safety
    /// As [`Recurrence::run_with`].
    #[inline(always)]
    unsafe fn gather_live_rows(&self, step: usize, batch_rows: Range<usize>, lists: &mut RowLists) {
        let d = self.dims;
        let (hp, out_p, gate_width) = (d.hidden_padded, d.out_padded, d.gate_width());
        let (cur, next) = (step % 2, 1 - step % 2);
        let st = self.state;
        lists.clear();
        // SAFETY: as the caller's.
        unsafe {
            for b in batch_rows {
                let len = self.lengths[b];
                if len <= step {
                    continue;
                }
                let row = self.rows.row(self.time(step, len), b);
                let h_prev = match step {
                    0 if self.reads_h0_in_place() => self.h0.add(b * d.out),
                    1.. if d.h_in_output() => self.step_output(step - 1, b, len),
                    _ => st.h[cur].at(b * out_p),
                };
                let keep = self.keep;
                let gi = match self.fused_input {
                    Some(fused) => {
                        lists.x.push(fused.input.add(row * fused.in_stride));
                        self.layer.bias.as_ptr()
                    }
                    None => self.gi.at(self.gi_slot(step, b) * gate_width).cast_const(),
                };
                lists.live.push(LiveRow {
                    gi,
                    h_prev,
                    h_next: if d.projects() {
                        st.h_new.at(b * hp)
                    } else if d.h_in_output() {
                        self.output_row(row)
                    } else {
                        st.h[next].at(b * out_p)
                    },
                    state: st.c.at(b * hp),
                    reset_h: st.reset_h.at(b * hp),
                    act: keep.map_or(std::ptr::null_mut(), |k| k.act.at(row * gate_width)),
                    extra: keep.map_or(std::ptr::null_mut(), |k| k.extra.at(row * hp)),
                });
                lists.a.push(h_prev);
                lists.batch.push(b);
                lists.row.push(row);
                if let Some(keep) = keep {
                    std::ptr::copy_nonoverlapping(h_prev, keep.h_prev.at(row * out_p), d.out);
                }
            }
        }
    }

    /// The step's product(s) with `W_hh` and the cell's epilogue.
    #[inline(always)]
    unsafe fn step_products<S: Simd>(&self, s: S, lists: &mut RowLists, team: Team<'_>) {
        let d = self.dims;
        let layer = self.layer;
        let ops = Operands {
            rows: &lists.a,
            k: d.out,
            weights: &layer.w_hh,
            k_offset: 0,
            prefix: self.fused_input.map(|fused| Prefix {
                rows: &lists.x,
                k: layer.in_size,
                weights: fused.weights,
            }),
        };
        let hp = d.hidden_padded;
        let rows = &lists.live[..];
        let panels = |i: usize, n: usize| share(layer.w_hh.count, i, n);
        // SAFETY: forwarded from run_with.
        unsafe {
            match d.cell {
                CellKind::Lstm => {
                    let epilogue = LstmStep {
                        rows,
                        hidden_padded: hp,
                    };
                    let mr = d.isa.rows_per_tile(4);
                    team.split(
                        s,
                        #[inline(always)]
                        |i, n| gemm_rows::<S, 4, _>(s, mr, &ops, panels(i, n), &epilogue),
                    );
                }
                CellKind::Gru if d.linear_before_reset => {
                    let epilogue = GruStep {
                        rows,
                        hidden_padded: hp,
                        b_hn: layer.b_hn.as_ptr(),
                    };
                    let mr = d.isa.rows_per_tile(3);
                    team.split(
                        s,
                        #[inline(always)]
                        |i, n| gemm_rows::<S, 3, _>(s, mr, &ops, panels(i, n), &epilogue),
                    );
                }
                CellKind::Gru => {
                    let gates = GruOriginalGates {
                        rows,
                        hidden_padded: hp,
                    };
                    let mr = d.isa.rows_per_tile(2);
                    team.split(
                        s,
                        #[inline(always)]
                        |i, n| gemm_rows::<S, 2, _>(s, mr, &ops, panels(i, n), &gates),
                    );
                    let w_hn = layer.w_hn.as_ref().expect("the original GRU has W_hn");
                    lists.a2.clear();
                    lists.a2.extend(rows.iter().map(|r| r.reset_h.cast_const()));
                    let ops = Operands {
                        rows: &lists.a2,
                        k: d.hidden,
                        weights: w_hn,
                        k_offset: 0,
                        prefix: None,
                    };
                    let candidate = GruOriginalCandidate {
                        rows,
                        hidden_padded: hp,
                    };
                    team.split(
                        s,
                        #[inline(always)]
                        |i, n| plain_product(s, d, &ops, i, n, &candidate),
                    );
                }
                CellKind::RnnTanh | CellKind::RnnRelu => {
                    let epilogue = RnnStep {
                        rows,
                        hidden_padded: hp,
                        relu: d.cell == CellKind::RnnRelu,
                    };
                    team.split(
                        s,
                        #[inline(always)]
                        |i, n| plain_product(s, d, &ops, i, n, &epilogue),
                    );
                }
            }
        }
    }
}

/// A product with plain panels of 1 or 4 vectors, share `share` of `shares` of them.
///
/// # Safety
/// As [`gemm_rows`].
#[inline(always)]
pub unsafe fn plain_product<S: Simd, E: Epilogue<S, 1> + Epilogue<S, 4>>(
    s: S,
    d: &Dims,
    ops: &Operands<'_>,
    share_index: usize,
    shares: usize,
    epilogue: &E,
) {
    let panels = share(ops.weights.count, share_index, shares);
    // SAFETY: forwarded.
    unsafe {
        match ops.weights.nv {
            4 => gemm_rows::<S, 4, E>(s, d.isa.rows_per_tile(4), ops, panels, epilogue),
            _ => gemm_rows::<S, 1, E>(s, d.isa.rows_per_tile(1), ops, panels, epilogue),
        }
    }
}

/// How a layer's recurrences share the threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Each direction's batch rows in `chunks` independent tasks.
    Rows { chunks: usize },
    /// One direction, every thread a share of every step's units.
    Units,
}

impl Split {
    /// The batch rows one task of this split holds.
    pub fn rows_per_task(&self, batch: usize) -> usize {
        match *self {
            Split::Rows { chunks } => batch.div_ceil(chunks),
            Split::Units => batch,
        }
    }

    /// The split for `batch` rows of a layer whose step multiplies `k`-wide rows by `gate_width` columns.
    pub fn choose(d: &Dims, threads: usize, batch: usize) -> Split {
        if threads <= 1 {
            return Split::Rows { chunks: 1 };
        }
        let mr = d.step_tile_rows();
        let step_work = batch * d.out * d.gate_width();
        if d.dirs == 1 && batch < 2 * mr && step_work >= UNIT_SPLIT_MIN_WORK {
            return Split::Units;
        }
        let per_direction = (threads / d.dirs).max(1);
        // A chunk of fewer than a tile's rows wastes the kernel's width, and a
        // tiny step is not worth a task.
        let by_rows = batch.div_ceil(mr).max(1);
        let by_work = (batch * d.out * d.gate_width() / UNIT_SPLIT_MIN_WORK).max(1);
        Split::Rows {
            chunks: per_direction.min(by_rows).min(by_work),
        }
    }
}

/// A forward call's layers: `pass(layer, dir)` for each layer and direction.
pub struct Layers<'p, 'a> {
    pub count: usize,
    pub dirs: usize,
    pub batch: usize,
    pub pass: &'p (dyn Fn(usize, usize) -> LayerPass<'a> + Sync),
}

/// Runs a forward call's layers on `workers` with `split`.
pub fn run_layers(workers: &Workers, split: Split, layers: &Layers<'_, '_>, scratch: &Scratch) {
    let (batch, dirs) = (layers.batch, layers.dirs);
    match split {
        // With one direction a task reads only what it wrote itself: one
        // task runs its rows through every layer.
        Split::Rows { chunks } if dirs == 1 => workers.run(chunks, |task| {
            let mut lists = scratch[task].lock();
            for layer in 0..layers.count {
                (layers.pass)(layer, 0).run_rows(share(batch, task, chunks), &mut lists);
            }
        }),
        // The next layer's rows read both directions' outputs: a region a layer.
        Split::Rows { chunks } => {
            for layer in 0..layers.count {
                workers.run(dirs * chunks, |task| {
                    let pass = (layers.pass)(layer, task / chunks);
                    pass.run_rows(share(batch, task % chunks, chunks), &mut scratch[task].lock());
                });
            }
        }
        Split::Units => {
            let mut lists = scratch[0].lock();
            let team = Team::All(workers);
            for layer in 0..layers.count {
                for dir in 0..dirs {
                    let pass = (layers.pass)(layer, dir);
                    pass.begin(0..batch);
                    for steps in pass.stretches(0..batch) {
                        if pass.recurrence.fused_input.is_none() {
                            pass.project(0..batch, steps.clone(), team, &mut lists);
                        }
                        pass.recurrence.run(0..batch, steps, team, &mut lists);
                    }
                    pass.finish(0..batch);
                }
            }
        }
    }
}

/// One layer-direction of a forward call: its projection, its recurrence,
/// and where its state comes from and goes.
pub struct LayerPass<'a> {
    pub projection: Projection<'a>,
    pub recurrence: Recurrence<'a>,
    /// This state's rows of `c0` (null: zeros), `[B, H]` (`h0`: the recurrence's).
    pub c0: *const f32,
    /// This state's rows of `h_n`/`c_n` (`c_n` null: none).
    pub h_n: *mut f32,
    pub c_n: *mut f32,
    /// Training with dropout: the next layer's input (`[T·B, D·Hout]`),
    /// this direction's columns of the output times layer `layer`'s mask.
    pub dropout: Option<(Dropout, usize, SharedPtr)>,
}

// SAFETY: as Recurrence and Projection: tasks take disjoint batch rows, or
// (unit split) the calling thread runs the steps and the pieces of each
// product take disjoint panels.
unsafe impl Sync for LayerPass<'_> {}

impl LayerPass<'_> {
    /// All of this layer-direction for batch rows `rows`, as one task.
    pub fn run_rows(&self, rows: Range<usize>, lists: &mut RowLists) {
        self.begin(rows.clone());
        for steps in self.stretches(rows.clone()) {
            if self.recurrence.fused_input.is_none() {
                self.project(rows.clone(), steps.clone(), Team::Alone, lists);
            }
            self.recurrence.run(rows.clone(), steps, Team::Alone, lists);
        }
        self.finish(rows);
    }

    /// The stretches of processing steps whose projections fit `gi`'s ring
    /// (all of them at once for a fused layer).
    pub fn stretches(&self, rows: Range<usize>) -> impl Iterator<Item = Range<usize>> {
        let r = &self.recurrence;
        let max_len = rows.map(|b| r.lengths[b]).max().unwrap_or(0);
        // A fused layer has no gi (its ring may be empty): one stretch.
        let chunk = if r.fused_input.is_some() {
            max_len.max(1)
        } else {
            r.gi_steps
        };
        (0..max_len.div_ceil(chunk)).map(move |i| i * chunk..((i + 1) * chunk).min(max_len))
    }

    /// Zeroes the outputs of `rows` past their ends, and loads their state.
    pub fn begin(&self, rows: Range<usize>) {
        let r = &self.recurrence;
        let d = r.dims;
        let (out_p, hp) = (d.out_padded, d.hidden_padded);
        let st = r.state;
        for b in rows {
            // SAFETY: b < B and every row index below T·B, within the
            // buffers the caller sized; h0/c0 hold [B, Hout] / [B, H].
            unsafe {
                for t in r.lengths[b]..r.rows.seq_len {
                    let out = r.output.at(r.rows.row(t, b) * r.out_width + r.out_offset);
                    std::ptr::write_bytes(out, 0, d.out);
                }
                // The given state or zeros; padded columns zero (see cells.rs).
                if !r.reads_h0_in_place() {
                    load_row(r.h0, b, d.out, st.h[0].at(b * out_p), out_p);
                }
                load_row(self.c0, b, d.hidden, st.c.at(b * hp), hp);
            }
        }
    }

    /// Projects processing steps `steps` of batch rows `rows` (those each
    /// row has) into their `gi` slots, the product by `team`.
    pub fn project(&self, rows: Range<usize>, steps: Range<usize>, team: Team<'_>, lists: &mut RowLists) {
        let r = &self.recurrence;
        let live = rows.flat_map(|b| {
            let len = r.lengths[b];
            (steps.start..steps.end.min(len)).map(move |s| (r.rows.row(r.time(s, len), b), r.gi_slot(s, b)))
        });
        self.projection.run(live, team, lists);
    }

    /// Each row's state after its own last step to `h_n`/`c_n`, and the
    /// dropout of its outputs for the next layer.
    pub fn finish(&self, rows: Range<usize>) {
        let r = &self.recurrence;
        let d = r.dims;
        let st = r.state;
        for b in rows {
            let len = r.lengths[b];
            // SAFETY: step len - 1 wrote h[len % 2] (or its output row, at
            // time(len - 1)); h_n/c_n hold [B, ·].
            unsafe {
                let h_last = if d.h_in_output() {
                    r.step_output(len - 1, b, len)
                } else {
                    st.h[len % 2].at(b * d.out_padded)
                };
                std::ptr::copy_nonoverlapping(h_last, self.h_n.add(b * d.out), d.out);
                if !self.c_n.is_null() {
                    copy_row(st.c.at(b * d.hidden_padded), self.c_n.add(b * d.hidden), d.hidden);
                }
                if let Some((dropout, layer, next)) = self.dropout {
                    for t in 0..r.rows.seq_len {
                        let offset = r.rows.row(t, b) * r.out_width + r.out_offset;
                        let dst = std::slice::from_raw_parts_mut(next.at(offset), d.out);
                        std::ptr::copy_nonoverlapping(r.output.at(offset), dst.as_mut_ptr(), d.out);
                        dropout.apply_row(layer, (t, b), r.rows.batch, r.out_width, r.out_offset, dst);
                    }
                }
            }
        }
    }
}

/// Row `b` of `src` (`[B, width]`; null: zeros) into `dst`, zero-padded to
/// `padded` floats.
///
/// # Safety
/// `src` (unless null) holds row `b` of `width` floats; `dst` has `padded`
/// writable floats.
#[inline(always)]
unsafe fn load_row(src: *const f32, b: usize, width: usize, dst: *mut f32, padded: usize) {
    // SAFETY: as the contract says.
    unsafe {
        let zeros_from = if src.is_null() {
            0
        } else {
            copy_row(src.add(b * width), dst, width);
            width
        };
        std::ptr::write_bytes(dst.add(zeros_from), 0, padded - zeros_from);
    }
}

/// Copies `width` floats, unless `dst` is `src` (a state that lives in the
/// caller's buffer, `State::c` read and written by a step, say).
///
/// # Safety
/// `src` and `dst` are the same row or rows that do not overlap.
#[inline(always)]
unsafe fn copy_row(src: *const f32, dst: *mut f32, width: usize) {
    if !std::ptr::eq(src, dst) {
        // SAFETY: as the contract says.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, width) }
    }
}

/// The input projection of one direction: `gi[row] = x[row] · W_ihᵀ + bias`.
pub struct Projection<'a> {
    pub dims: &'a Dims,
    pub layer: &'a PackedLayer,
    /// Row `r` of the layer input is at `input + r · in_stride`.
    pub input: *const f32,
    pub in_stride: usize,
    pub gi: SharedPtr,
}

// SAFETY: the input is only read; each task writes the gi rows (or panels)
// of its own share.
unsafe impl Sync for Projection<'_> {}

impl Projection<'_> {
    /// Projects input rows into `gi` slots (`(row, slot)` pairs), the
    /// product by `team`.
    pub fn run(&self, rows: impl Iterator<Item = (usize, usize)>, team: Team<'_>, lists: &mut RowLists) {
        let d = self.dims;
        let gate_width = d.gate_width();
        lists.clear();
        for (row, slot) in rows {
            // SAFETY: every row index is below T·B rows of the input, every
            // slot within gi's ring.
            unsafe {
                lists.a.push(self.input.add(row * self.in_stride));
                lists.out.push(self.gi.at(slot * gate_width));
            }
        }
        let store = StoreRows {
            out: &lists.out,
            limit: gate_width,
            bias: self.layer.bias.as_ptr(),
            add: &[],
            accumulate: false,
        };
        let ops = Operands {
            rows: &lists.a,
            k: self.layer.in_size,
            weights: &self.layer.w_ih,
            k_offset: 0,
            prefix: None,
        };
        dispatch!(d.isa, |s| {
            // SAFETY: each row pointer has in_size floats; each gi row gate_width.
            team.split(
                s,
                #[inline(always)]
                |i, n| unsafe { plain_product(s, d, &ops, i, n, &store) },
            )
        });
    }
}
