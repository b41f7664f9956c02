//! The one matrix-product micro-kernel of the fast CPU path, the panel
//! format it reads weights in, and the driver that walks tiles of rows and
//! panels and hands each tile's sums, still in registers, to an epilogue.
//!
//! A product here is `rows × K` activations (each row anywhere in memory:
//! rows are given as pointers, so a step can take the live rows of a
//! variable-length batch, each at its own time index, without gathering
//! them) times a `K × N` weight matrix packed once into panels of `NV`
//! vectors (`NV · LANES` columns) × `K` rows. A tile is `M` rows by one
//! panel: `M · NV` accumulators (6 × 4 zmm on AVX-512), and per `k` one
//! broadcast of each row's `a[k]` and `NV` loads of the panel's row `k`:
//! `M · NV` FMAs for `M + NV` loads.
//!
//! The epilogue runs on each tile row's `NV` sums before they leave the
//! registers: the gate nonlinearities and the cell update of a recurrent
//! step, a bias add and a store for the input projection, and so on (see
//! `cells.rs`). Nothing writes a gate tensor only to read it back.

use super::int8::{self, Int8Panels};
use super::simd::{Simd, MAX_TILE_ROWS};
use crate::error::Result;
use crate::quant::Precision;
use std::ops::Range;

/// A 64-byte-aligned, zero-filled f32 buffer (a cache line per 16 floats).
#[derive(Default)]
pub struct AlignedBuf {
    lines: Vec<Line>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

// SAFETY: sixteen f32 zeros are all zero bytes.
unsafe impl bytemuck::Zeroable for Line {}

impl AlignedBuf {
    /// `len` zeros; `what` names the buffer in an out-of-memory error.
    pub fn zeros(len: usize, what: &str) -> Result<Self> {
        let lines =
            crate::memory::zeros::<Line>(len.div_ceil(16), || (what.to_string(), format!("{len} f32")))?;
        Ok(AlignedBuf { lines, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Grows to at least `len` floats (zero-filled); never shrinks.
    pub fn ensure(&mut self, len: usize, what: &str) -> Result<()> {
        if len > self.len {
            *self = AlignedBuf::zeros(len, what)?;
        }
        Ok(())
    }

    /// Makes the length `len`: within the allocation, the contents stay as
    /// they are (the caller rewrites what it needs); past it, a fresh
    /// zero-filled allocation.
    pub fn resize(&mut self, len: usize, what: &str) -> Result<()> {
        if len > 16 * self.lines.len() {
            *self = AlignedBuf::zeros(len, what)?;
        } else {
            self.len = len;
        }
        Ok(())
    }

    /// Zeroes `rows`-many-float rows `which` (row `r` at `r * width`).
    pub fn zero_rows(&mut self, width: usize, which: impl Iterator<Item = usize>) {
        let data = self.as_mut_slice();
        for r in which {
            data[r * width..(r + 1) * width].fill(0.0);
        }
    }

    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: `Line` is `repr(C)` over `[f32; 16]`, so the lines are
        // `16 * lines.len() >= len` contiguous, initialised floats.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }

    pub fn as_ptr(&self) -> *const f32 {
        self.lines.as_ptr().cast()
    }

    pub fn as_mut_ptr(&mut self) -> *mut f32 {
        self.lines.as_mut_ptr().cast()
    }
}

/// How a packed matrix's columns are laid out in the (padded) column space
/// its products write: where vector `v` of panel `p` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Columns {
    /// Gate-interleaved: panel `p` holds units `p·L .. p·L + L` of every gate,
    /// vector `v` being gate `v`, whose block starts at `v · hidden_padded`.
    /// One panel gives all gates of `L` hidden units: the cell update can
    /// run in the epilogue.
    Gates { hidden_padded: usize },
    /// Consecutive: vector `v` of panel `p` starts at `(p · NV + v) · L`.
    Plain,
}

/// A `K × N` matrix packed for the micro-kernel: `count` panels, each `k`
/// rows of `nv · lanes` entries, row after row (int8: see [`Int8Panels`]).
pub struct Panels {
    data: PanelData,
    pub k: usize,
    pub nv: usize,
    pub lanes: usize,
    pub count: usize,
}

/// The entries of a packed matrix, in the model's precision.
enum PanelData {
    F32(AlignedBuf),
    /// f16 bits, two to a float of the buffer, in the f32 layout.
    F16(AlignedBuf),
    Int8(Int8Panels),
}

impl Panels {
    /// Packs a matrix whose padded column space is `width` wide (a multiple
    /// of `lanes`), in `precision`. `value(k, col)` is the entry at row `k`
    /// and padded column `col`, or `None` for padding (packed as 0).
    pub fn pack(
        precision: Precision,
        k: usize,
        nv: usize,
        lanes: usize,
        width: usize,
        columns: Columns,
        value: impl Fn(usize, usize) -> Option<f32>,
    ) -> Result<Self> {
        debug_assert_eq!(width % lanes, 0);
        let count = match columns {
            Columns::Gates { hidden_padded } => hidden_padded / lanes,
            Columns::Plain => width.div_ceil(nv * lanes),
        };
        let each_column = |f: &mut dyn FnMut(usize, usize, usize, usize)| {
            for_each_column(count, nv, lanes, width, columns, f)
        };
        let row = nv * lanes;
        let len = count * k * row;
        let data = match precision {
            Precision::F32 => {
                let mut data = AlignedBuf::zeros(len, "the packed weights")?;
                let out = data.as_mut_slice();
                each_column(&mut |p, v, lane, col| {
                    for kk in 0..k {
                        if let Some(x) = value(kk, col) {
                            out[(p * k + kk) * row + v * lanes + lane] = x;
                        }
                    }
                });
                PanelData::F32(data)
            }
            Precision::F16 => {
                let mut data = AlignedBuf::zeros(len.div_ceil(2), "the packed weights")?;
                let out: &mut [u16] = bytemuck::cast_slice_mut(data.as_mut_slice());
                each_column(&mut |p, v, lane, col| {
                    for kk in 0..k {
                        if let Some(x) = value(kk, col) {
                            out[(p * k + kk) * row + v * lanes + lane] = half::f16::from_f32(x).to_bits();
                        }
                    }
                });
                PanelData::F16(data)
            }
            Precision::Int8 => {
                let mut panels = Int8Panels::zeros(k, nv, lanes, count)?;
                let mut column = Vec::with_capacity(k);
                each_column(&mut |p, v, lane, col| {
                    column.clear();
                    column.extend((0..k).map(|kk| value(kk, col).unwrap_or(0.0)));
                    panels.set_column(p, v, lane, &column);
                });
                PanelData::Int8(panels)
            }
        };
        Ok(Panels {
            data,
            k,
            nv,
            lanes,
            count,
        })
    }

    /// The precision the entries are stored in.
    pub fn precision(&self) -> Precision {
        match self.data {
            PanelData::F32(_) => Precision::F32,
            PanelData::F16(_) => Precision::F16,
            PanelData::Int8(_) => Precision::Int8,
        }
    }

    /// The first float of panel `p` (f32 panels only).
    pub fn panel(&self, p: usize) -> *const f32 {
        debug_assert!(p < self.count);
        match &self.data {
            PanelData::F32(data) => data.as_slice()[p * self.panel_len()..].as_ptr(),
            _ => panic!("an f32 panel of {} weights", self.precision()),
        }
    }

    /// The first f16 of panel `p` (f16 panels only).
    fn panel_f16(&self, p: usize) -> *const u16 {
        debug_assert!(p < self.count);
        match &self.data {
            PanelData::F16(data) => {
                let bits: &[u16] = bytemuck::cast_slice(data.as_slice());
                bits[p * self.panel_len()..].as_ptr()
            }
            _ => panic!("an f16 panel of {} weights", self.precision()),
        }
    }

    /// The int8 tile kernel (int8 panels only).
    pub fn int8_kernel(&self) -> Option<int8::DotKernel> {
        match &self.data {
            PanelData::Int8(panels) => Some(panels.kernel),
            _ => None,
        }
    }

    /// Entries per panel.
    pub fn panel_len(&self) -> usize {
        self.k * self.nv * self.lanes
    }

    /// Bytes the packed entries take (with their scales, for int8).
    pub fn bytes(&self) -> usize {
        match &self.data {
            PanelData::F32(data) => 4 * data.len(),
            PanelData::F16(data) => 4 * data.len(),
            PanelData::Int8(panels) => panels.bytes(),
        }
    }
}

/// Calls `f(p, v, lane, col)` for every real column `col` (below `width`):
/// lane `lane` of vector `v` of panel `p`.
fn for_each_column(
    count: usize,
    nv: usize,
    lanes: usize,
    width: usize,
    columns: Columns,
    f: &mut dyn FnMut(usize, usize, usize, usize),
) {
    for p in 0..count {
        for v in 0..nv {
            let start = column_start(columns, lanes, nv, p, v);
            for lane in (0..lanes).filter(|lane| start + lane < width) {
                f(p, v, lane, start + lane);
            }
        }
    }
}

fn column_start(columns: Columns, lanes: usize, nv: usize, p: usize, v: usize) -> usize {
    match columns {
        Columns::Gates { hidden_padded } => v * hidden_padded + p * lanes,
        Columns::Plain => (p * nv + v) * lanes,
    }
}

/// An entry type of packed weights, widened to f32 vectors by the product.
trait PanelEntry: Copy {
    /// The first entry of panel `p` of `panels` (stored in this type).
    fn panel(panels: &Panels, p: usize) -> *const Self;
    /// # Safety
    /// `p` points to `S::LANES` readable entries.
    unsafe fn load<S: Simd>(s: S, p: *const Self) -> S::V;
}

impl PanelEntry for f32 {
    fn panel(panels: &Panels, p: usize) -> *const f32 {
        panels.panel(p)
    }
    #[inline(always)]
    unsafe fn load<S: Simd>(s: S, p: *const f32) -> S::V {
        // SAFETY: forwarded.
        unsafe { s.load(p) }
    }
}

impl PanelEntry for u16 {
    fn panel(panels: &Panels, p: usize) -> *const u16 {
        panels.panel_f16(p)
    }
    #[inline(always)]
    unsafe fn load<S: Simd>(s: S, p: *const u16) -> S::V {
        // SAFETY: forwarded.
        unsafe { s.load_f16(p) }
    }
}

/// What happens to a tile row's sums: `acc` holds `Σ_k a[row][k] · B[k][..]`
/// for the `NV` vectors of panel `panel`.
pub trait Epilogue<S: Simd, const NV: usize> {
    /// # Safety
    /// `row` indexes the rows the product was given and `panel` one of its
    /// panels; the epilogue's own pointers are valid for them.
    unsafe fn apply(&self, s: S, row: usize, panel: usize, acc: &[S::V; NV]);
}

/// Adds `Σ_{kk < k} a[r][kk] · b[kk][v·L ..]` to `acc`, for the `M` rows of
/// a tile and the `NV` vectors of one panel row.
///
/// # Safety
/// Each `a[r]` points to `k` readable floats; `b` to `k · NV · LANES`.
#[inline(always)]
unsafe fn product<S: Simd, const M: usize, const NV: usize, W: PanelEntry>(
    s: S,
    acc: &mut [[S::V; NV]; M],
    a: &[*const f32; M],
    k: usize,
    b: *const W,
) {
    let row = NV * S::LANES;
    for kk in 0..k {
        // SAFETY: kk < k, within the caller's bounds.
        unsafe {
            let bk = b.add(kk * row);
            let bv: [S::V; NV] = std::array::from_fn(|v| W::load(s, bk.add(v * S::LANES)));
            for r in 0..M {
                let x = s.splat(*a[r].add(kk));
                for v in 0..NV {
                    acc[r][v] = s.fma(x, bv[v], acc[r][v]);
                }
            }
        }
    }
}

/// The sums of one f32 or f16 tile: rows `first .. first + M` of `ops`
/// times panel `p` (the prefix's rows times the prefix's panel `p` first).
///
/// # Safety
/// As [`product`], for these rows; `p < count` and `k_offset + k <= k`.
#[inline(always)]
unsafe fn float_tile<S: Simd, const M: usize, const NV: usize, W: PanelEntry>(
    s: S,
    ops: &Operands<'_>,
    first: usize,
    p: usize,
    sums: &mut [[S::V; NV]; M],
) {
    let mut acc = [[s.zero(); NV]; M];
    // SAFETY: forwarded from the caller.
    unsafe {
        if let Some(prefix) = &ops.prefix {
            let a: [*const f32; M] = std::array::from_fn(|r| prefix.rows[first + r]);
            product::<S, M, NV, W>(s, &mut acc, &a, prefix.k, W::panel(prefix.weights, p));
        }
        let a: [*const f32; M] = std::array::from_fn(|r| ops.rows[first + r]);
        let b = W::panel(ops.weights, p).add(ops.k_offset * NV * S::LANES);
        product::<S, M, NV, W>(s, &mut acc, &a, ops.k, b);
    }
    *sums = acc;
}

/// The rows of one product, and the weights they multiply.
pub struct Operands<'a> {
    /// One pointer per row, each to `k` readable floats.
    pub rows: &'a [*const f32],
    pub k: usize,
    pub weights: &'a Panels,
    /// Skip this many packed rows of every panel (a product over a slice
    /// of K: the weights' rows `k_offset .. k_offset + k`).
    pub k_offset: usize,
    /// A second product summed into the same accumulators first: other
    /// rows times other weights with the same panels of columns (a step's
    /// input projection fused into its recurrent product).
    pub prefix: Option<Prefix<'a>>,
}

// SAFETY: the row pointers are only read, by every piece of a product.
unsafe impl Sync for Operands<'_> {}

/// The first part of a two-part product: `rows[r] · weights` over all `k`.
pub struct Prefix<'a> {
    /// One pointer per row of the product, each to `k` readable floats.
    pub rows: &'a [*const f32],
    pub k: usize,
    /// Panels of the same columns as the product's weights (same `nv`, lanes, count).
    pub weights: &'a Panels,
}

/// Rows per block of the row loop: enough that a block's activations stay
/// in L2 while every panel passes over them.
pub(super) const BLOCK_BYTES: usize = 192 * 1024;

/// For every panel in `panels` and every row, the epilogue on
/// `Σ_k rows[r][k] · W[k][panel]`, in the weights' precision. Rows go in
/// blocks (activations stay in L2; int8 quantizes a block's rows once),
/// panels within a block (a panel stays in L1/L2 across the block's tiles),
/// tiles of up to `mr` rows within a panel.
///
/// A tile's sums are computed for its row count `M` (a compile-time
/// constant: the accumulators live in registers), the epilogue then runs
/// on them row by row in a loop: one copy of the gate math per epilogue,
/// not one per precision and row count.
///
/// # Safety
/// Every row pointer has `k` readable floats; `k_offset + k <= weights.k`;
/// `panels` are within `weights.count`; the epilogue is valid for every
/// (row, panel) pair.
#[inline(always)]
pub unsafe fn gemm_rows<S: Simd, const NV: usize, E: Epilogue<S, NV>>(
    s: S,
    mr: usize,
    ops: &Operands<'_>,
    panels: Range<usize>,
    epilogue: &E,
) {
    let w = ops.weights;
    debug_assert_eq!(w.nv, NV);
    debug_assert_eq!(w.lanes, S::LANES);
    debug_assert!(ops.k_offset + ops.k <= w.k);
    debug_assert!((1..=MAX_TILE_ROWS).contains(&mr));
    let prefix_k = ops.prefix.as_ref().map_or(0, |prefix| {
        let pw = prefix.weights;
        debug_assert!(pw.nv == NV && pw.lanes == S::LANES && pw.count == w.count && pw.k == prefix.k);
        debug_assert!(pw.precision() == w.precision());
        debug_assert_eq!(prefix.rows.len(), ops.rows.len());
        prefix.k
    });
    let mut int8_block = match &w.data {
        PanelData::Int8(main) => {
            debug_assert!(ops.k_offset == 0 && ops.k == w.k);
            let prefix = ops.prefix.as_ref().map(|prefix| match &prefix.weights.data {
                PanelData::Int8(panels) => (prefix.rows, panels),
                _ => unreachable!("a prefix in the product's precision"),
            });
            Some(int8::Block::new((ops.rows, main), prefix))
        }
        _ => None,
    };
    let n = ops.rows.len();
    let block = (BLOCK_BYTES / (4 * (ops.k + prefix_k).max(1))).max(mr) / mr * mr;
    // The tile's sums, between its product and the epilogue's loop.
    let mut sums = [[s.zero(); NV]; MAX_TILE_ROWS];
    let mut start = 0;
    while start < n {
        let end = n.min(start + block);
        if let Some(int8_block) = &mut int8_block {
            // SAFETY: the caller's rows have their k floats each.
            unsafe { int8_block.quantize(s, start..end) };
        }
        for p in panels.clone() {
            let mut first = start;
            while first < end {
                let m = mr.min(end - first);
                let tile = Tile {
                    ops,
                    int8: int8_block.as_ref(),
                    first,
                    local: first - start,
                    panel: p,
                };
                // SAFETY: rows first..first + m exist; the rest is the caller's contract.
                unsafe {
                    match m {
                        1 => tile.sums::<S, 1, NV>(s, &mut sums),
                        2 => tile.sums::<S, 2, NV>(s, &mut sums),
                        3 => tile.sums::<S, 3, NV>(s, &mut sums),
                        4 => tile.sums::<S, 4, NV>(s, &mut sums),
                        5 => tile.sums::<S, 5, NV>(s, &mut sums),
                        6 => tile.sums::<S, 6, NV>(s, &mut sums),
                        7 => tile.sums::<S, 7, NV>(s, &mut sums),
                        _ => tile.sums::<S, 8, NV>(s, &mut sums),
                    }
                    for (r, acc) in sums[..m].iter().enumerate() {
                        epilogue.apply(s, first + r, p, acc);
                    }
                }
                first += m;
            }
        }
        start = end;
    }
}

/// One tile of a product: rows `first ..` (`local ..` within their block) of panel `panel`.
struct Tile<'a> {
    ops: &'a Operands<'a>,
    /// The block's quantized rows, for int8 weights.
    int8: Option<&'a int8::Block<'a>>,
    first: usize,
    local: usize,
    panel: usize,
}

impl Tile<'_> {
    /// The tile's `M` rows of sums into `sums[..M]`, in the weights' precision.
    ///
    /// # Safety
    /// As [`gemm_rows`], for rows `first .. first + M` and this panel.
    #[inline(always)]
    unsafe fn sums<S: Simd, const M: usize, const NV: usize>(
        &self,
        s: S,
        sums: &mut [[S::V; NV]; MAX_TILE_ROWS],
    ) {
        let out = sums.first_chunk_mut::<M>().expect("M <= MAX_TILE_ROWS");
        let (ops, p) = (self.ops, self.panel);
        // SAFETY: forwarded from the caller.
        unsafe {
            match &ops.weights.data {
                PanelData::F32(_) => float_tile::<S, M, NV, f32>(s, ops, self.first, p, out),
                PanelData::F16(_) => float_tile::<S, M, NV, u16>(s, ops, self.first, p, out),
                PanelData::Int8(_) => {
                    let block = self.int8.expect("int8 weights have their quantized block");
                    block.sums::<S, M, NV>(s, self.local, p, out)
                }
            }
        }
    }
}
