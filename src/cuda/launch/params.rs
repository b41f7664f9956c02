//! Rust mirrors of `kernels/params.h`, field for field. Pointers are device
//! addresses (`u64`); on the host emulation they are host addresses.

/// `y[M, N] = x[M, K] · w[N, K]ᵀ + bias[N]` (see `ProjectionParams` in params.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProjectionParams {
    pub x: u64,
    pub w: u64,
    pub bias: u64,
    pub y: u64,
    pub rows: i32,
    pub cols: i32,
    pub depth: i32,
    pub seq_len: i32,
    pub batch: i32,
    pub x_batch_first: i32,
}

/// One layer's persistent recurrence (see `RecurrenceParams` in params.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecurrenceParams {
    pub xp: u64,
    pub w_hh: u64,
    pub b_hh: u64,
    pub w_hr: u64,
    pub h0: u64,
    pub c0: u64,
    pub lengths: u64,
    pub y: u64,
    pub h_n: u64,
    pub c_n: u64,
    pub exchange: u64,
    pub barrier: u64,
    pub reserve: u64,
    pub seq_len: i32,
    pub batch: i32,
    pub hidden: i32,
    pub out_size: i32,
    pub cell: i32,
    pub linear_before_reset: i32,
    pub y_batch_first: i32,
    pub ctas_per_group: i32,
    pub units_per_cta: i32,
    pub outputs_per_cta: i32,
    pub batch_tile: i32,
    pub weights_in_smem: i32,
    pub k_lanes: i32,
    pub rows_per_thread: i32,
    pub w_stride: i32,
    pub w2_stride: i32,
}

// The same sizes params.h asserts.
const _: () = assert!(std::mem::size_of::<ProjectionParams>() == 56);
const _: () = assert!(std::mem::size_of::<RecurrenceParams>() == 168);

/// `RNN_CELL_*` in params.h.
pub fn cell_code(cell: crate::CellKind) -> i32 {
    match cell {
        crate::CellKind::RnnTanh => 0,
        crate::CellKind::RnnRelu => 1,
        crate::CellKind::Lstm => 2,
        crate::CellKind::Gru => 3,
    }
}

/// `RNN_BARRIER_STRIDE` in params.h: words from one group's barrier counter
/// to the next (a 128-byte line each; the first starts a line).
pub const BARRIER_STRIDE: usize = 32;

/// `RNN_EXCHANGE_FLOATS` in params.h: exchange floats per group.
pub fn exchange_floats(batch_tile: usize, hidden: usize, out_size: usize) -> usize {
    batch_tile * (2 * out_size + hidden)
}

/// Backpropagation through one layer's recurrence (see params.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecurrenceBackwardParams {
    pub w_hh: u64,
    pub w_hr: u64,
    pub reserve: u64,
    pub y: u64,
    pub h0: u64,
    pub c0: u64,
    pub lengths: u64,
    pub dy: u64,
    pub dh_n: u64,
    pub dc_n: u64,
    pub d_gi: u64,
    pub d_gh: u64,
    pub d_h: u64,
    pub dh0: u64,
    pub dc0: u64,
    pub exchange: u64,
    pub barrier: u64,
    pub seq_len: i32,
    pub batch: i32,
    pub hidden: i32,
    pub out_size: i32,
    pub cell: i32,
    pub linear_before_reset: i32,
    pub y_batch_first: i32,
    pub ctas_per_group: i32,
    pub units_per_cta: i32,
    pub outputs_per_cta: i32,
    pub batch_tile: i32,
    pub weights_in_smem: i32,
}

/// `C(m, n) [+]= Σ_k A(m, k) B(k, n)` with arbitrary strides (see params.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GemmParams {
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub a_m: i64,
    pub a_k: i64,
    pub b_k: i64,
    pub b_n: i64,
    pub c_m: i64,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub accumulate: i32,
}

/// `RNN_GATHER_*` in params.h.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gather {
    HPrev = 0,
    ResetH = 1,
    HFull = 2,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatherParams {
    pub y: u64,
    pub h0: u64,
    pub reserve: u64,
    pub lengths: u64,
    pub out: u64,
    pub seq_len: i32,
    pub batch: i32,
    pub hidden: i32,
    pub out_size: i32,
    pub dirs: i32,
    pub cell: i32,
    pub what: i32,
    pub pad_: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PermuteParams {
    pub src: u64,
    pub dst: u64,
    pub a: i32,
    pub b: i32,
    pub width: i32,
    pub pad_: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DropoutParams {
    pub src: u64,
    pub dst: u64,
    pub p: f64,
    pub seed: u64,
    pub layer: i32,
    pub seq_len: i32,
    pub batch: i32,
    pub width: i32,
}

const _: () = assert!(std::mem::size_of::<RecurrenceBackwardParams>() == 184);
const _: () = assert!(std::mem::size_of::<GemmParams>() == 80);
const _: () = assert!(std::mem::size_of::<GatherParams>() == 72);
const _: () = assert!(std::mem::size_of::<PermuteParams>() == 32);
const _: () = assert!(std::mem::size_of::<DropoutParams>() == 48);

/// `RNN_BACKWARD_EXCHANGE_FLOATS` in params.h.
pub fn backward_exchange_floats(
    batch_tile: usize,
    gate_rows: usize,
    hidden: usize,
    out_size: usize,
) -> usize {
    2 * batch_tile * (gate_rows + out_size + hidden)
}
