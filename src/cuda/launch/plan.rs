//! Launch planning: how to split a recurrence across CTAs on a given device,
//! how big the workspace is, and the sequence of launches a forward pass
//! makes. All of it is plain data, so the CUDA backend and the host
//! emulation (tests) execute the very same plan.

use super::layout::WeightLayout;
use super::params::{
    cell_code, exchange_floats, DropoutParams, GatherParams, GemmParams, PermuteParams, ProjectionParams,
    RecurrenceBackwardParams, RecurrenceParams,
};
use crate::config::{CellKind, RnnConfig};
use crate::error::{Error, Result};

/// What the planner needs to know about the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    pub sm_count: usize,
    /// The most dynamic shared memory one block may use: the opt-in maximum
    /// less the kernels' static shared memory.
    pub max_smem_per_block: usize,
    pub max_threads_per_block: usize,
}

/// Blocks of `kernel` with `threads` threads and `smem` bytes of dynamic
/// shared memory that fit on one SM at once (the driver's occupancy query;
/// its failure is an error, never "nothing fits").
pub type Occupancy<'a> = &'a dyn Fn(&'static str, usize, usize) -> Result<usize>;

/// Which recurrence a plan is for: the forward, or its backpropagation
/// (recurrence_backward.cu), which splits the same way but keeps other
/// things in shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward,
    Backward,
}

impl Pass {
    pub fn kernel(self, cell: CellKind) -> &'static str {
        match (self, cell) {
            (Pass::Forward, CellKind::RnnTanh) => "rnn_recurrence_tanh_f32",
            (Pass::Forward, CellKind::RnnRelu) => "rnn_recurrence_relu_f32",
            (Pass::Forward, CellKind::Lstm) => "rnn_recurrence_lstm_f32",
            (Pass::Forward, CellKind::Gru) => "rnn_recurrence_gru_f32",
            (Pass::Backward, CellKind::RnnTanh) => "rnn_recurrence_backward_tanh_f32",
            (Pass::Backward, CellKind::RnnRelu) => "rnn_recurrence_backward_relu_f32",
            (Pass::Backward, CellKind::Lstm) => "rnn_recurrence_backward_lstm_f32",
            (Pass::Backward, CellKind::Gru) => "rnn_recurrence_backward_gru_f32",
        }
    }

    /// Shared memory of one CTA, as the kernel lays it out.
    fn smem(self, config: &RnnConfig, split: &Split, bt: usize, blocking: Blocking) -> usize {
        match self {
            Pass::Forward => recurrence_smem(config, split, bt, blocking),
            Pass::Backward => {
                let Split {
                    upc, opc, in_smem, ..
                } = *split;
                let (gh, ho) = (config.gates() * config.hidden_size, config.output_size());
                let projecting = config.proj_size > 0;
                let hpc = if projecting { opc } else { upc };
                let weights = if in_smem {
                    hpc * (gh + 1) + if projecting { upc * (ho + 1) } else { 0 }
                } else {
                    0
                };
                4 * (weights + bt * (gh.max(ho) + 1) + bt * hpc + 5 * bt * upc + bt)
            }
        }
    }
}

pub const PROJECTION_KERNEL: &str = "rnn_input_projection_f32";

/// A launch of a kernel built on `rnn_gemm_tile` (common.cuh): a block of
/// 256 threads per 64×64 tile of the `rows × cols` output, with that
/// function's shared memory (2 · 16 · (64 + 4) floats).
pub(crate) fn gemm_launch(
    kernel: &'static str,
    rows: usize,
    cols: usize,
    params: KernelParams,
) -> Result<Step> {
    const TILE: usize = 64;
    let row_tiles = rows.div_ceil(TILE);
    if row_tiles > 65_535 {
        return Err(Error::Unsupported(format!(
            "{kernel}: a product of {rows} rows exceeds one launch"
        )));
    }
    Ok(Step::Launch(Launch {
        kernel,
        grid: [cols.div_ceil(TILE).max(1) as u32, row_tiles.max(1) as u32, 1],
        block: 256,
        smem_bytes: 2 * 16 * (TILE as u32 + 4) * 4,
        cooperative: false,
        params,
    }))
}

/// `RNN_MAX_ROWS_PER_THREAD` in params.h.
pub const MAX_ROWS_PER_THREAD: usize = 4;

/// How the threads of a forward CTA share its per-step dot products
/// (recurrence.cu): `k_lanes` lanes split each product's length and add
/// their sums by warp shuffles (shorter dependent chains, and coalesced rows
/// when weights come from L2); each lane group computes `rows_per_thread`
/// batch rows at once, so every weight it loads serves that many FMAs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocking {
    pub k_lanes: usize,
    pub rows_per_thread: usize,
}

impl Blocking {
    /// One lane per product, one row per thread (the backward kernel's split).
    pub const NONE: Blocking = Blocking {
        k_lanes: 1,
        rows_per_thread: 1,
    };

    /// The planner's choice for a CTA of `units` units (or projected outputs)
    /// and `batch_tile` rows, whose products are `width` long: as many rows
    /// per thread as the tile has (up to 4), then lanes while the block has
    /// room for them and each lane keeps 16 or more terms (the shuffles add
    /// log2(lanes) steps per sum). Weights read from L2 take lanes up to a
    /// warp regardless, so that a warp's loads are whole rows.
    pub fn choose(units: usize, batch_tile: usize, width: usize, weights_in_smem: bool) -> Blocking {
        let rows_per_thread = [4, 2, 1].into_iter().find(|&r| r <= batch_tile).unwrap_or(1);
        let items = batch_tile.div_ceil(rows_per_thread) * units;
        let mut k_lanes = 1;
        while k_lanes < 32
            && width >= 16 * 2 * k_lanes
            && (!weights_in_smem || items * 2 * k_lanes <= MAX_THREADS)
        {
            k_lanes *= 2;
        }
        Blocking {
            k_lanes,
            rows_per_thread,
        }
    }

    /// Floats between weight rows of `len` in shared memory: a row of a
    /// lane group whose lanes read consecutive floats; the `32 / k_lanes`
    /// groups of a warp, on consecutive rows, hit distinct banks when the
    /// stride is an odd multiple of `k_lanes` (any stride, for a whole warp).
    pub fn weight_stride(self, len: usize) -> usize {
        if self.k_lanes >= 32 {
            return len.max(1);
        }
        let multiple = len.div_ceil(self.k_lanes).max(1);
        (multiple | 1) * self.k_lanes
    }
}

/// How one layer's recurrence is split (see kernels/recurrence.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecurrencePlan {
    pub kernel: &'static str,
    pub ctas_per_group: usize,
    pub units_per_cta: usize,
    pub outputs_per_cta: usize,
    pub batch_tile: usize,
    pub tiles: usize,
    pub weights_in_smem: bool,
    /// The forward's lanes and rows per product ([`Blocking::NONE`] for the backward).
    pub blocking: Blocking,
    pub threads: usize,
    pub smem_bytes: usize,
}

impl RecurrencePlan {
    /// Groups (direction, batch tile), each with its own exchange buffers and barrier.
    pub fn groups(&self, config: &RnnConfig) -> usize {
        config.num_directions() * self.tiles
    }

    /// A group of several CTAs waits at barriers: it must be co-resident.
    pub fn cooperative(&self) -> bool {
        self.ctas_per_group > 1
    }

    /// This forward plan with another blocking (to compare blockings on a
    /// GPU, and to run each kernel path in emulation); threads and shared
    /// memory follow. The caller checks that it still fits the device.
    pub fn with_blocking(&self, config: &RnnConfig, blocking: Blocking) -> Result<RecurrencePlan> {
        let Blocking {
            k_lanes,
            rows_per_thread,
        } = blocking;
        // The kernel's shuffles and row cases (recurrence.cu) know no others.
        if !(k_lanes.is_power_of_two()
            && k_lanes <= 32
            && [1, 2, MAX_ROWS_PER_THREAD].contains(&rows_per_thread))
        {
            return Err(Error::Config(format!(
                "{blocking:?}: k_lanes must be 1, 2, 4, 8, 16 or 32 and rows_per_thread 1, 2 or {MAX_ROWS_PER_THREAD}"
            )));
        }
        let split = Split {
            n: self.ctas_per_group,
            upc: self.units_per_cta,
            opc: self.outputs_per_cta,
            in_smem: self.weights_in_smem,
        };
        Ok(RecurrencePlan {
            blocking,
            threads: recurrence_threads(&split, self.batch_tile, blocking),
            smem_bytes: Pass::Forward.smem(config, &split, self.batch_tile, blocking),
            ..*self
        })
    }
}

/// Shared memory of one CTA, as recurrence.cu lays it out. A group of one
/// CTA (`n == 1`) keeps its exchange buffers there; larger groups stage the
/// exchanged vector.
fn recurrence_smem(config: &RnnConfig, split: &Split, bt: usize, blocking: Blocking) -> usize {
    let Split { n, upc, opc, in_smem } = *split;
    let (g, h, ho) = (config.gates(), config.hidden_size, config.output_size());
    let weights = if in_smem {
        g * upc * blocking.weight_stride(ho) + opc * blocking.weight_stride(h)
    } else {
        0
    };
    let vectors = if n == 1 {
        exchange_floats(bt, h, ho)
    } else {
        bt * (h + 1)
    };
    4 * (weights + vectors + 3 * bt * upc + bt)
}

/// `RNN_MAX_THREADS` in params.h: the kernels' `__launch_bounds__`.
pub const MAX_THREADS: usize = 512;

/// One thread per lane of each (row block, unit) item, up to MAX_THREADS
/// (more items loop); whole warps, because the kernel's shuffles need them.
fn recurrence_threads(split: &Split, bt: usize, blocking: Blocking) -> usize {
    let items = split.upc.max(split.opc) * bt.div_ceil(blocking.rows_per_thread);
    (items * blocking.k_lanes)
        .next_multiple_of(32)
        .clamp(64, MAX_THREADS)
}

/// How to split a recurrence: the planner's choice, or one forced (to
/// compare strategies on a GPU, and to test every path in emulation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Each CTA's slice of `W_hh` in shared memory for the whole sequence,
    /// with the fewest CTAs per group that hold it (fewer CTAs, cheaper
    /// barriers); when no split fits on chip, `W_hh` read from L2 every step
    /// by as many CTAs as fit (up to one unit per warp lane).
    Auto,
    /// `ctas_per_group` CTAs per group, weights in shared memory.
    OnChip { ctas_per_group: usize },
    /// `ctas_per_group` CTAs per group, weights read from L2 every step.
    OffChip { ctas_per_group: usize },
}

/// Splits one layer's recurrence over the device (see [`Strategy`]).
pub fn plan_recurrence(
    config: &RnnConfig,
    batch: usize,
    limits: &DeviceLimits,
    occupancy: Occupancy<'_>,
    strategy: Strategy,
) -> Result<RecurrencePlan> {
    plan_pass(Pass::Forward, config, batch, limits, occupancy, strategy)
}

/// Splits a recurrence's forward or backward pass over the device.
pub fn plan_pass(
    pass: Pass,
    config: &RnnConfig,
    batch: usize,
    limits: &DeviceLimits,
    occupancy: Occupancy<'_>,
    strategy: Strategy,
) -> Result<RecurrencePlan> {
    let h = config.hidden_size;
    let split = |requested: usize, in_smem: bool| -> Result<Option<RecurrencePlan>> {
        let upc = h.div_ceil(requested);
        // The grid has h / upc CTAs (rounded up), which can be fewer than
        // requested (4 units in 3 CTAs: 2, 2, 0): the projected outputs are
        // shared among the CTAs that exist, or some are never computed.
        let n = h.div_ceil(upc);
        let opc = if config.proj_size > 0 {
            config.output_size().div_ceil(n)
        } else {
            0
        };
        let split = Split { n, upc, opc, in_smem };
        fit_batch(pass, config, batch, limits, occupancy, split)
    };
    // Requests that give the same units per CTA give the same split: ask
    // about each split once (64 for H = 1024, not 1024).
    let first =
        |requests: &mut dyn Iterator<Item = usize>, in_smem: bool| -> Result<Option<RecurrencePlan>> {
            let mut last_upc = 0;
            for n in requests {
                let upc = h.div_ceil(n);
                if upc == last_upc {
                    continue;
                }
                last_upc = upc;
                if let Some(plan) = split(n, in_smem)? {
                    return Ok(Some(plan));
                }
            }
            Ok(None)
        };
    let plan = match strategy {
        Strategy::Auto => match first(&mut (1..=h), true)? {
            Some(plan) => Some(plan),
            None => first(&mut (1..=h.div_ceil(32)).rev(), false)?,
        },
        Strategy::OnChip { ctas_per_group } => split(ctas_per_group.clamp(1, h), true)?,
        Strategy::OffChip { ctas_per_group } => split(ctas_per_group.clamp(1, h), false)?,
    };
    plan.ok_or_else(|| {
        Error::Unsupported(format!(
            "hidden_size {h}: no {strategy:?} split of the recurrence fits this device \
             ({} bytes of shared memory per block, {} SMs)",
            limits.max_smem_per_block, limits.sm_count
        ))
    })
}

/// `n` CTAs per group, each with `upc` units and `opc` projected outputs.
#[derive(Clone, Copy)]
struct Split {
    n: usize,
    upc: usize,
    opc: usize,
    in_smem: bool,
}

/// The smallest batch tile (the most parallel split) for a split that fits
/// in shared memory and, when groups wait at barriers, on the device.
fn fit_batch(
    pass: Pass,
    config: &RnnConfig,
    batch: usize,
    limits: &DeviceLimits,
    occupancy: Occupancy<'_>,
    split: Split,
) -> Result<Option<RecurrencePlan>> {
    let Split { n, upc, opc, in_smem } = split;
    let kernel = pass.kernel(config.cell);
    let dirs = config.num_directions();
    let mut fallback = None;
    let mut last_tiles = 0;
    for bt in 1..=batch {
        // A larger tile with as many tiles needs more of the SM and fits no
        // better: the smallest tile for each tile count is the one to try.
        let tiles = batch.div_ceil(bt);
        if tiles == last_tiles {
            continue;
        }
        last_tiles = tiles;
        let blocking = match pass {
            // Phase 1's products are HO long, the second phase's H: the shorter decides.
            Pass::Forward => Blocking::choose(
                upc.max(opc),
                bt,
                config.output_size().min(config.hidden_size),
                in_smem,
            ),
            Pass::Backward => Blocking::NONE,
        };
        let smem = pass.smem(config, &split, bt, blocking);
        if smem > limits.max_smem_per_block {
            break;
        }
        let threads = recurrence_threads(&split, bt, blocking).min(limits.max_threads_per_block);
        let plan = RecurrencePlan {
            kernel,
            ctas_per_group: n,
            units_per_cta: upc,
            outputs_per_cta: opc,
            batch_tile: bt,
            tiles,
            weights_in_smem: in_smem,
            blocking,
            threads,
            smem_bytes: smem,
        };
        let resident = limits.sm_count * occupancy(kernel, threads, smem)?;
        if n * dirs * tiles <= resident {
            return Ok(Some(plan));
        }
        // One CTA per group never waits for another: it runs in waves if it must.
        if n == 1 && resident > 0 {
            fallback = Some(plan);
        }
    }
    Ok(fallback)
}

/// The recurrence kernels count a group's barrier arrivals in a 32-bit
/// counter (`rnn_group_barrier`): one barrier before the first step, and per
/// step one forward (two with a second phase: the LSTM projection, the
/// original GRU) and up to three backward, each counted once per CTA of the
/// group. A sequence long enough to pass 2^31 arrivals is refused with a
/// clear error instead of a barrier that stops waiting.
pub fn check_barrier_count(
    pass: Pass,
    config: &RnnConfig,
    plan: &RecurrencePlan,
    seq_len: usize,
) -> Result<()> {
    let ctas = plan.ctas_per_group;
    if ctas <= 1 {
        return Ok(()); // one CTA a group synchronises with __syncthreads
    }
    let two_phase = config.proj_size > 0 || (config.cell == CellKind::Gru && !config.gru_linear_before_reset);
    let per_step = match pass {
        Pass::Forward => 1 + usize::from(two_phase),
        Pass::Backward => 3,
    };
    let limit = (1usize << 31) / ctas;
    let barriers = (seq_len as u128) * per_step as u128 + 1;
    if barriers >= limit as u128 {
        return Err(Error::Unsupported(format!(
            "T = {seq_len}: with {ctas} CTAs a group, the recurrence would count more barrier arrivals than \
             its 32-bit counter holds; at most {} steps a call (split the sequence, carrying h_n/c_n as the \
             next call's h0/c0)",
            (limit - 2) / per_step
        )));
    }
    Ok(())
}

/// Regions of the one workspace buffer, in 4-byte words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkspaceLayout {
    /// `[T*B, D*G*H]`: the input projection of the current layer.
    pub projection: usize,
    /// Two `[T, B, D*Hout]` buffers for the outputs of the layers before the last.
    pub layer_outputs: [usize; 2],
    /// Per group, the recurrence's exchange buffers.
    pub exchange: usize,
    /// Per group, one u32 barrier counter on a 128-byte line of its own
    /// ([`BARRIER_STRIDE`](super::params::BARRIER_STRIDE) words).
    pub barrier: usize,
    /// `[B]` i32 lengths, for callers that pass them from the host.
    pub lengths: usize,
    pub words: usize,
}

/// Takes `groups` barrier counters, each on a 128-byte line of its own,
/// from a workspace allocator (`take(n)`: the offset of `n` more words).
pub(crate) fn take_lines(take: &mut impl FnMut(usize) -> usize, groups: usize) -> usize {
    let stride = super::params::BARRIER_STRIDE;
    let at = take(0);
    let start = at.next_multiple_of(stride);
    take(start - at);
    take(groups * stride)
}

impl WorkspaceLayout {
    pub fn new(config: &RnnConfig, plan: &RecurrencePlan, seq_len: usize, batch: usize) -> Self {
        let rows = seq_len * batch;
        let mut words = 0;
        let mut take = |n: usize| {
            let at = words;
            words += n;
            at
        };
        let between_layers = if config.num_layers > 1 {
            rows * config.output_width()
        } else {
            0
        };
        let second = if config.num_layers > 2 { between_layers } else { 0 };
        let projection = take(rows * config.num_directions() * config.gates() * config.hidden_size);
        let layer_outputs = [take(between_layers), take(second)];
        let groups = plan.groups(config);
        let exchange =
            take(groups * exchange_floats(plan.batch_tile, config.hidden_size, config.output_size()));
        let barrier = take_lines(&mut take, groups);
        let lengths = take(batch);
        WorkspaceLayout {
            projection,
            layer_outputs,
            exchange,
            barrier,
            lengths,
            words,
        }
    }
}

/// Device addresses of everything a forward pass touches; 0 for an absent
/// optional tensor. Shapes as in [`crate::sequence`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardBuffers {
    pub input: u64,
    /// i32 `[B]`
    pub lengths: u64,
    pub h0: u64,
    pub c0: u64,
    pub output: u64,
    pub h_n: u64,
    pub c_n: u64,
    /// The weights packed by [`WeightLayout`].
    pub weights: u64,
    /// [`WorkspaceLayout::words`] 4-byte words.
    pub workspace: u64,
}

/// The kernel parameters of one launch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelParams {
    Projection(ProjectionParams),
    Recurrence(RecurrenceParams),
    RecurrenceBackward(RecurrenceBackwardParams),
    Gemm(GemmParams),
    Gather(GatherParams),
    Permute(PermuteParams),
    Dropout(DropoutParams),
}

impl KernelParams {
    /// The parameter struct itself, for launchers that pass it by address.
    pub fn as_ptr(&self) -> *const std::ffi::c_void {
        match self {
            KernelParams::Projection(p) => p as *const _ as *const _,
            KernelParams::Recurrence(p) => p as *const _ as *const _,
            KernelParams::RecurrenceBackward(p) => p as *const _ as *const _,
            KernelParams::Gemm(p) => p as *const _ as *const _,
            KernelParams::Gather(p) => p as *const _ as *const _,
            KernelParams::Permute(p) => p as *const _ as *const _,
            KernelParams::Dropout(p) => p as *const _ as *const _,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Launch {
    pub kernel: &'static str,
    pub grid: [u32; 3],
    pub block: u32,
    pub smem_bytes: u32,
    pub cooperative: bool,
    pub params: KernelParams,
}

/// One thing a forward pass does on the stream, in order.
// A step list is built and read once per call: boxing the launches would
// only add an allocation per launch.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Step {
    /// Set `count` 4-byte words at `addr` to the bits `value`.
    FillWords {
        addr: u64,
        count: usize,
        value: u32,
    },
    Launch(Launch),
}

/// The address `offset` 4-byte words past `base`.
pub(crate) fn word(base: u64, offset: usize) -> u64 {
    base + 4 * offset as u64
}

/// [`word`] of an optional buffer: null (0) stays null.
pub(crate) fn optional_word(base: u64, offset: usize) -> u64 {
    if base == 0 {
        0
    } else {
        word(base, offset)
    }
}

/// A size as the kernels' `int`, or an error naming it.
pub(crate) fn to_i32(what: &str, value: usize) -> Result<i32> {
    i32::try_from(value)
        .map_err(|_| Error::Unsupported(format!("{what} = {value} exceeds what the kernels index")))
}

/// The launches of a whole forward pass: per layer, the input projection for
/// all timesteps, then the persistent recurrence.
pub fn forward_steps(
    config: &RnnConfig,
    plan: &RecurrencePlan,
    weights: &WeightLayout,
    seq_len: usize,
    batch: usize,
    buffers: &ForwardBuffers,
) -> Result<Vec<Step>> {
    check_barrier_count(Pass::Forward, config, plan, seq_len)?;
    let ws = WorkspaceLayout::new(config, plan, seq_len, batch);
    let ws_word = |offset: usize| word(buffers.workspace, offset);
    let mut steps = Vec::new();
    for l in 0..config.num_layers {
        let last = l + 1 == config.num_layers;
        let layer = LayerLaunch {
            layer: l,
            x: if l == 0 {
                buffers.input
            } else {
                ws_word(ws.layer_outputs[(l - 1) % 2])
            },
            x_batch_first: l == 0 && config.batch_first,
            y: if last {
                buffers.output
            } else {
                ws_word(ws.layer_outputs[l % 2])
            },
            y_batch_first: last && config.batch_first,
            projection: ws_word(ws.projection),
            exchange: ws_word(ws.exchange),
            barrier: ws_word(ws.barrier),
            reserve: 0,
        };
        steps.extend(forward_layer_launches(
            config, plan, weights, seq_len, batch, &layer, buffers,
        )?);
    }
    Ok(steps)
}

/// Where one layer's forward reads and writes (device addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerLaunch {
    pub layer: usize,
    /// The layer's input, `[T, B, in]` or batch-first.
    pub x: u64,
    pub x_batch_first: bool,
    /// The layer's output, `[T, B, D*Hout]` or batch-first.
    pub y: u64,
    pub y_batch_first: bool,
    /// `[T*B, D*G*H]` workspace for the input projection.
    pub projection: u64,
    pub exchange: u64,
    pub barrier: u64,
    /// Training: where the recurrence keeps its gate activations; else 0.
    pub reserve: u64,
}

/// One layer's launches: the input projection, zeroing the barriers (only
/// groups of several CTAs use them: one fewer stream operation per layer for
/// the latency-bound shapes), the recurrence. Initial and final states,
/// lengths and weights come from `buffers` (the layer's slices are found
/// here).
pub(crate) fn forward_layer_launches(
    config: &RnnConfig,
    plan: &RecurrencePlan,
    weights: &WeightLayout,
    seq_len: usize,
    batch: usize,
    layer: &LayerLaunch,
    buffers: &ForwardBuffers,
) -> Result<Vec<Step>> {
    let (dirs, h, ho, g) = (
        config.num_directions(),
        config.hidden_size,
        config.output_size(),
        config.gates(),
    );
    let rows = seq_len * batch;
    let cols = dirs * g * h;
    let l = layer.layer;
    let offsets = weights.layers[l];
    let projection = gemm_launch(
        PROJECTION_KERNEL,
        rows,
        cols,
        KernelParams::Projection(ProjectionParams {
            x: layer.x,
            w: word(buffers.weights, offsets.w_ih),
            bias: offsets.b_ih.map_or(0, |o| word(buffers.weights, o)),
            y: layer.projection,
            rows: to_i32("T*B", rows)?,
            cols: to_i32("D*G*H", cols)?,
            depth: to_i32("input width", config.layer_input_size(l))?,
            seq_len: to_i32("T", seq_len)?,
            batch: to_i32("B", batch)?,
            x_batch_first: i32::from(layer.x_batch_first),
        }),
    )?;
    let zero_barriers = plan.cooperative().then_some(Step::FillWords {
        addr: layer.barrier,
        count: plan.groups(config) * super::params::BARRIER_STRIDE,
        value: 0,
    });
    let state = l * dirs * batch;
    let recurrence = Step::Launch(Launch {
        kernel: plan.kernel,
        grid: [plan.ctas_per_group as u32, plan.tiles as u32, dirs as u32],
        block: plan.threads as u32,
        smem_bytes: plan.smem_bytes as u32,
        cooperative: plan.cooperative(),
        params: KernelParams::Recurrence(RecurrenceParams {
            xp: layer.projection,
            w_hh: word(buffers.weights, offsets.w_hh),
            b_hh: offsets.b_hh.map_or(0, |o| word(buffers.weights, o)),
            w_hr: offsets.w_hr.map_or(0, |o| word(buffers.weights, o)),
            h0: optional_word(buffers.h0, state * ho),
            c0: optional_word(buffers.c0, state * h),
            lengths: buffers.lengths,
            y: layer.y,
            h_n: word(buffers.h_n, state * ho),
            c_n: optional_word(buffers.c_n, state * h),
            exchange: layer.exchange,
            barrier: layer.barrier,
            reserve: layer.reserve,
            seq_len: seq_len as i32,
            batch: batch as i32,
            hidden: h as i32,
            out_size: ho as i32,
            cell: cell_code(config.cell),
            linear_before_reset: i32::from(config.gru_linear_before_reset),
            y_batch_first: i32::from(layer.y_batch_first),
            ctas_per_group: plan.ctas_per_group as i32,
            units_per_cta: plan.units_per_cta as i32,
            outputs_per_cta: plan.outputs_per_cta as i32,
            batch_tile: plan.batch_tile as i32,
            weights_in_smem: i32::from(plan.weights_in_smem),
            k_lanes: plan.blocking.k_lanes as i32,
            rows_per_thread: plan.blocking.rows_per_thread as i32,
            w_stride: plan.blocking.weight_stride(ho) as i32,
            w2_stride: plan.blocking.weight_stride(h) as i32,
        }),
    });
    Ok([Some(projection), zero_barriers, Some(recurrence)]
        .into_iter()
        .flatten()
        .collect())
}
