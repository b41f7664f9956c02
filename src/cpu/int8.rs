//! The int8 product of the fast CPU path (the scheme is `crate::quant`'s):
//! weights packed once as s8 codes with a scale and a code sum per column;
//! each product's rows quantized to u8, one scale and zero point per row,
//! at the start of their block; tiles summed in exact i32 (VPDPBUSD where
//! the CPU has it), the zero point taken out, dequantized, and handed to the
//! same epilogues as the f32 product.
//!
//! Panel layout: panel `p` holds `⌈K/4⌉` groups; group `g` holds the panel's
//! `NV` vectors, and vector `v` holds, for each of its `L` columns, the codes
//! of rows `4g .. 4g + 4` (64 bytes a zmm): one VPDPBUSD adds four products
//! per column. Codes past `K` are 0, so a row's padding bytes add nothing.

use super::kernel::AlignedBuf;
use super::simd::Simd;
use crate::error::Result;
use crate::quant::{self, ActivationScale};
use std::cell::{RefCell, RefMut};
use std::ops::Range;

/// The widest vector in f32 lanes (AVX-512): tiles size their buffers by it.
const MAX_LANES: usize = 16;

/// The tile kernel a machine runs, chosen once per packed matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DotKernel {
    /// VPDPBUSD on zmm (AVX512-VNNI), 16 columns a vector.
    Avx512Vnni,
    /// VPDPBUSD on ymm (AVX-VNNI), 8 columns a vector.
    AvxVnni,
    /// Plain integer arithmetic, any width: correct everywhere, fast nowhere.
    Portable,
}

impl DotKernel {
    /// The fastest kernel for vectors of `lanes` columns on this machine.
    pub fn choose(lanes: usize) -> DotKernel {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if lanes == 16 && has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                return DotKernel::Avx512Vnni;
            }
            if lanes == 8 && has!("avx2") && has!("avxvnni") {
                return DotKernel::AvxVnni;
            }
        }
        DotKernel::Portable
    }

    /// The name `rnnk info` prints.
    pub fn name(self) -> &'static str {
        match self {
            DotKernel::Avx512Vnni => "avx512-vnni",
            DotKernel::AvxVnni => "avx-vnni",
            DotKernel::Portable => "portable",
        }
    }
}

/// A `K × N` matrix in s8 codes, packed for the int8 tiles.
pub struct Int8Panels {
    /// Codes, `count × ⌈K/4⌉ × NV × L × 4` bytes.
    codes: AlignedBuf,
    /// Per column, in panel order (`(p·NV + v)·L + lane`): the scale and the code sum.
    scales: AlignedBuf,
    sums: Vec<i32>,
    /// K, and `⌈K/4⌉`.
    k: usize,
    groups: usize,
    nv: usize,
    lanes: usize,
    pub kernel: DotKernel,
}

impl Int8Panels {
    /// All-zero panels for `count` panels of `nv` vectors of `lanes` columns over `k` rows.
    pub fn zeros(k: usize, nv: usize, lanes: usize, count: usize) -> Result<Self> {
        if k > quant::INT8_MAX_K {
            return Err(crate::Error::Unsupported(format!(
                "int8 products take at most {} inputs, this one has {k}",
                quant::INT8_MAX_K
            )));
        }
        let groups = k.div_ceil(4);
        let columns = count * nv * lanes;
        Ok(Int8Panels {
            codes: AlignedBuf::zeros(groups * columns, "the packed weights")?,
            scales: AlignedBuf::zeros(columns, "the packed weights")?,
            sums: vec![0; columns],
            k,
            groups,
            nv,
            lanes,
            kernel: DotKernel::choose(lanes),
        })
    }

    /// Quantizes column `lane` of vector `v` of panel `p` (one weight row,
    /// `column[k]` its entry at row `k`) as `quant` defines it.
    pub fn set_column(&mut self, p: usize, v: usize, lane: usize, column: &[f32]) {
        let scale = quant::weight_scale(column);
        let index = (p * self.nv + v) * self.lanes + lane;
        let (groups, nv, lanes) = (self.groups, self.nv, self.lanes);
        let codes: &mut [i8] = bytemuck::cast_slice_mut(self.codes.as_mut_slice());
        let mut sum = 0;
        for (k, &w) in column.iter().enumerate() {
            let q = quant::quantize_weight(w, scale);
            sum += q as i32;
            codes[(((p * groups + k / 4) * nv + v) * lanes + lane) * 4 + k % 4] = q;
        }
        self.scales.as_mut_slice()[index] = scale;
        self.sums[index] = sum;
    }

    /// Bytes of codes, scales and sums.
    pub fn bytes(&self) -> usize {
        4 * self.codes.len() + 4 * self.scales.len() + 4 * self.sums.len()
    }

    fn panel_codes(&self, p: usize) -> *const i8 {
        let codes: &[i8] = bytemuck::cast_slice(self.codes.as_slice());
        codes[p * self.groups * self.nv * self.lanes * 4..].as_ptr()
    }

    fn panel_columns(&self, p: usize) -> usize {
        p * self.nv * self.lanes
    }
}

/// A product's rows in u8 codes, each with its scale and zero point.
#[derive(Default)]
struct QuantizedRows {
    /// `rows × stride` codes (`stride = 4·⌈K/4⌉`; the padding bytes are 0).
    codes: Vec<u8>,
    stride: usize,
    params: Vec<ActivationScale>,
}

thread_local! {
    /// Per thread: the current block's rows and its prefix rows, kept
    /// between calls (a warm product allocates nothing).
    static ROWS: RefCell<[QuantizedRows; 2]> = RefCell::default();
}

impl QuantizedRows {
    /// Quantizes `rows` (each `k` floats) as [`ActivationScale`] defines it:
    /// the same range, the same f32 operations, in vectors.
    ///
    /// # Safety
    /// Every pointer has `k` readable floats.
    #[inline(always)]
    unsafe fn fill<S: Simd>(&mut self, s: S, rows: &[*const f32], k: usize) {
        self.stride = k.div_ceil(4) * 4;
        let len = rows.len() * self.stride;
        if self.codes.len() < len {
            self.codes.resize(len, 0);
        }
        self.params.clear();
        let full = k / S::LANES * S::LANES;
        for (r, &row) in rows.iter().enumerate() {
            // SAFETY: `row` has k floats; full <= k.
            let (min, max) = unsafe { range(s, row, k, full) };
            let p = ActivationScale::from_range(min, max);
            let out = &mut self.codes[r * self.stride..(r + 1) * self.stride];
            let (inv, zero_point) = (s.splat(p.inv), s.splat(p.zero_point as f32));
            let (low, high) = (s.splat(0.0), s.splat(255.0));
            for i in (0..full).step_by(S::LANES) {
                // SAFETY: i + LANES <= full <= k <= out.len().
                unsafe {
                    let scaled = s.round(s.mul(s.load(row.add(i)), inv));
                    let code = s.min_keep_nan(high, s.max_keep_nan(low, s.add(scaled, zero_point)));
                    s.store_u8(out.as_mut_ptr().add(i), code);
                }
            }
            for (i, o) in out.iter_mut().enumerate().take(k).skip(full) {
                // SAFETY: i < k.
                *o = p.quantize(unsafe { *row.add(i) });
            }
            self.params.push(p);
        }
    }

    fn row(&self, r: usize) -> *const u8 {
        self.codes[r * self.stride..].as_ptr()
    }
}

/// The least and greatest of a row's `k` values (NaN if it holds one or an
/// infinity, which `ActivationScale::from_range` turns into a NaN scale).
///
/// # Safety
/// `row` has `k` readable floats; `full <= k` is a multiple of `S::LANES`.
#[inline(always)]
unsafe fn range<S: Simd>(s: S, row: *const f32, k: usize, full: usize) -> (f32, f32) {
    let (mut lo, mut hi, mut poison) = (s.zero(), s.zero(), s.zero());
    for i in (0..full).step_by(S::LANES) {
        // SAFETY: i + LANES <= full.
        let x = unsafe { s.load(row.add(i)) };
        // x·0 is NaN exactly where x is NaN or infinite.
        poison = s.add(poison, s.mul(x, s.zero()));
        lo = s.select_lt(x, lo, x, lo);
        hi = s.select_lt(hi, x, x, hi);
    }
    let (mut min, mut max) = s.min_max_lanes(lo, hi);
    let mut poisoned = s.any_nan(poison);
    for i in full..k {
        // SAFETY: i < k.
        let x = unsafe { *row.add(i) };
        poisoned |= !x.is_finite();
        min = min.min(x);
        max = max.max(x);
    }
    if poisoned {
        (f32::NAN, f32::NAN)
    } else {
        (min, max)
    }
}

/// A product's int8 operands (`main`, plus the fused input projection's
/// `prefix`) and the current block of their rows, quantized: the
/// [`super::kernel::gemm_rows`] driver quantizes each block once, then asks
/// for its tiles' sums.
pub struct Block<'a> {
    main: (&'a [*const f32], &'a Int8Panels),
    prefix: Option<(&'a [*const f32], &'a Int8Panels)>,
    /// This thread's buffers: the block's rows, then its prefix rows.
    rows: RefMut<'a, [QuantizedRows; 2]>,
}

impl<'a> Block<'a> {
    pub fn new(
        main: (&'a [*const f32], &'a Int8Panels),
        prefix: Option<(&'a [*const f32], &'a Int8Panels)>,
    ) -> Self {
        // The buffers are taken out of `with`'s closure, which would
        // otherwise hold the whole product: a closure is compiled apart from
        // the `#[target_feature]` entry, without its instructions.
        let cell: *const RefCell<[QuantizedRows; 2]> = ROWS.with(|cell| cell as *const _);
        // SAFETY: this thread's buffers live as long as the thread, and a
        // `Block` (its `RefMut` is not `Send`) never leaves it.
        let rows = unsafe { &*cell }.borrow_mut();
        Block { main, prefix, rows }
    }

    /// Quantizes rows `block` of the product (and of its prefix).
    ///
    /// # Safety
    /// Every row pointer has its matrix's `k` readable floats.
    #[inline(always)]
    pub unsafe fn quantize<S: Simd>(&mut self, s: S, block: Range<usize>) {
        let [quantized, quantized_prefix] = &mut *self.rows;
        // SAFETY: forwarded.
        unsafe {
            quantized.fill(s, &self.main.0[block.clone()], self.main.1.k);
            if let Some((rows, weights)) = self.prefix {
                quantized_prefix.fill(s, &rows[block], weights.k);
            }
        }
    }

    /// The dequantized sums of rows `local .. local + M` of the block and
    /// panel `panel`, prefix included, into `out`.
    ///
    /// # Safety
    /// Those rows were quantized; `panel` exists.
    #[inline(always)]
    pub unsafe fn sums<S: Simd, const M: usize, const NV: usize>(
        &self,
        s: S,
        local: usize,
        panel: usize,
        out: &mut [[S::V; NV]; M],
    ) {
        // SAFETY: forwarded.
        unsafe {
            dequantized::<S, M, NV>(s, (&self.rows[0], self.main.1), local, panel, out, false);
            if let Some((_, weights)) = self.prefix {
                dequantized::<S, M, NV>(s, (&self.rows[1], weights), local, panel, out, true);
            }
        }
    }
}

/// `(Σ q_a·q_w − zp·Σq_w) · (scale_a · scale_w)` for rows `local ..
/// local + M` of `rows` and the `NV` vectors of panel `panel`, as
/// `quant::dequantize` computes it: stored in `out`, or added to it.
///
/// # Safety
/// The rows exist in `rows`; the panel in `weights`.
#[inline(always)]
unsafe fn dequantized<S: Simd, const M: usize, const NV: usize>(
    s: S,
    (rows, weights): (&QuantizedRows, &Int8Panels),
    local: usize,
    panel: usize,
    out: &mut [[S::V; NV]; M],
    add: bool,
) {
    let mut a = [std::ptr::null::<u8>(); M];
    let mut zero_points = [0i32; M];
    for r in 0..M {
        a[r] = rows.row(local + r);
        zero_points[r] = rows.params[local + r].zero_point;
    }
    let column = weights.panel_columns(panel);
    let mut exact = [[[0i32; MAX_LANES]; NV]; M];
    let b = weights.panel_codes(panel);
    let code_sums = weights.sums[column..].as_ptr();
    // SAFETY: the rows have `groups·4` codes, the panel `groups·NV·L·4`,
    // the sums NV·L; each kernel runs only where `choose` found its ISA.
    unsafe {
        match weights.kernel {
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx512Vnni => {
                x86::avx512_vnni::<M, NV>(&a, weights.groups, b, &zero_points, code_sums, &mut exact)
            }
            #[cfg(target_arch = "x86_64")]
            DotKernel::AvxVnni => {
                x86::avx_vnni::<M, NV>(&a, weights.groups, b, &zero_points, code_sums, &mut exact)
            }
            _ => portable::<M, NV>(
                weights.lanes,
                &a,
                weights.groups,
                b,
                &zero_points,
                code_sums,
                &mut exact,
            ),
        }
    }
    let scales = weights.scales.as_slice()[column..].as_ptr();
    // Loops, not `array::from_fn`: a closure is compiled apart from the
    // `#[target_feature]` entry, and every vector operation in it would
    // become a call.
    for r in 0..M {
        let scale_a = s.splat(rows.params[local + r].scale);
        for v in 0..NV {
            // SAFETY: NV·L scales from `column`; `exact` holds L lanes a vector.
            unsafe {
                let scale = s.mul(scale_a, s.load(scales.add(v * S::LANES)));
                let sum = s.mul(s.load_i32(exact[r][v].as_ptr()), scale);
                out[r][v] = if add { s.add(out[r][v], sum) } else { sum };
            }
        }
    }
}

/// The tile's exact sums in plain integers: `out[r][v][lane] = Σ_k a[r][k]·b[k][v, lane] − zp[r]·sums[v·L + lane]`.
///
/// # Safety
/// Each `a[r]` has `4·groups` codes; `b` has `groups·NV·lanes·4`; `sums` has `NV·lanes`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // the indices are the layout's
unsafe fn portable<const M: usize, const NV: usize>(
    lanes: usize,
    a: &[*const u8; M],
    groups: usize,
    b: *const i8,
    zero_points: &[i32; M],
    sums: *const i32,
    out: &mut [[[i32; MAX_LANES]; NV]; M],
) {
    for r in 0..M {
        for v in 0..NV {
            for lane in 0..lanes {
                let mut sum = 0i32;
                for g in 0..groups {
                    for j in 0..4 {
                        // SAFETY: within the bounds above.
                        unsafe {
                            let x = *a[r].add(4 * g + j) as i32;
                            let w = *b.add(((g * NV + v) * lanes + lane) * 4 + j) as i32;
                            sum += x * w;
                        }
                    }
                }
                // SAFETY: v·lanes + lane < NV·lanes.
                out[r][v][lane] = sum - zero_points[r] * unsafe { *sums.add(v * lanes + lane) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::MAX_LANES;
    use std::arch::x86_64::*;

    /// A VPDPBUSD tile kernel for one vector width: [`super::portable`]
    /// with `M·NV` accumulators and, per group of four K rows, `NV` loads,
    /// `M` broadcasts and `M·NV` VPDPBUSDs, then the zero-point correction.
    macro_rules! vnni_tile {
        ($(#[$doc:meta])* $name:ident, $features:literal, $lanes:literal, $vector:ty,
         zero: $zero:ident, load: $load:ident, store: $store:ident, splat: $splat:ident,
         dot: $dot:ident, mul: $mul:ident, sub: $sub:ident) => {
            $(#[$doc])*
            #[target_feature(enable = $features)]
            pub unsafe fn $name<const M: usize, const NV: usize>(
                a: &[*const u8; M],
                groups: usize,
                b: *const i8,
                zero_points: &[i32; M],
                sums: *const i32,
                out: &mut [[[i32; MAX_LANES]; NV]; M],
            ) {
                const BYTES: usize = 4 * $lanes;
                let mut acc: [[$vector; NV]; M] = [[$zero(); NV]; M];
                for g in 0..groups {
                    // SAFETY: within the caller's bounds.
                    unsafe {
                        let bg = b.add(g * NV * BYTES);
                        let mut bv: [$vector; NV] = [$zero(); NV];
                        for (v, bv) in bv.iter_mut().enumerate() {
                            *bv = $load(bg.add(v * BYTES).cast());
                        }
                        for r in 0..M {
                            let x = $splat(a[r].add(4 * g).cast::<i32>().read_unaligned());
                            for v in 0..NV {
                                acc[r][v] = $dot(acc[r][v], x, bv[v]);
                            }
                        }
                    }
                }
                for r in 0..M {
                    let zp = $splat(zero_points[r]);
                    for v in 0..NV {
                        // SAFETY: NV·lanes sums; `out` holds at least `lanes` lanes a vector.
                        unsafe {
                            let correction = $mul(zp, $load(sums.add(v * $lanes).cast()));
                            $store(out[r][v].as_mut_ptr().cast(), $sub(acc[r][v], correction));
                        }
                    }
                }
            }
        };
    }

    vnni_tile!(
        /// On zmm (AVX512-VNNI): 16 columns a vector.
        ///
        /// # Safety
        /// As `portable` with 16 lanes, on a CPU with AVX-512F, BW and VNNI.
        avx512_vnni, "avx512f,avx512bw,avx512vnni", 16, __m512i,
        zero: _mm512_setzero_si512, load: _mm512_loadu_si512, store: _mm512_storeu_si512,
        splat: _mm512_set1_epi32, dot: _mm512_dpbusd_epi32, mul: _mm512_mullo_epi32,
        sub: _mm512_sub_epi32
    );

    vnni_tile!(
        /// On ymm (AVX-VNNI): 8 columns a vector.
        ///
        /// # Safety
        /// As `portable` with 8 lanes, on a CPU with AVX2 and AVX-VNNI.
        avx_vnni, "avx2,avxvnni", 8, __m256i,
        zero: _mm256_setzero_si256, load: _mm256_loadu_si256, store: _mm256_storeu_si256,
        splat: _mm256_set1_epi32, dot: _mm256_dpbusd_avx_epi32, mul: _mm256_mullo_epi32,
        sub: _mm256_sub_epi32
    );
}
