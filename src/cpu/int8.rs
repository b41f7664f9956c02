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
    /// VPMADDUBSW and VPMADDWD on zmm (AVX512-BW without VNNI).
    Avx512Bw,
    /// VPDPBUSD on ymm (AVX-VNNI), 8 columns a vector.
    AvxVnni,
    /// VPMADDUBSW and VPMADDWD on ymm (AVX2 without VNNI).
    Avx2,
    /// Plain integer arithmetic, any width: correct everywhere, fast nowhere.
    Portable,
}

impl DotKernel {
    /// The fastest kernel for vectors of `lanes` columns on this machine.
    pub fn choose(lanes: usize) -> DotKernel {
        Self::runnable(lanes)[0]
    }

    /// Every kernel this machine runs for vectors of `lanes` columns, fastest first.
    pub fn runnable(lanes: usize) -> Vec<DotKernel> {
        let mut kernels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx512bw = has!("avx512f") && has!("avx512bw");
            if lanes == 16 && avx512bw && has!("avx512vnni") {
                kernels.push(DotKernel::Avx512Vnni);
            }
            if lanes == 16 && avx512bw {
                kernels.push(DotKernel::Avx512Bw);
            }
            if lanes == 8 && has!("avx2") && has!("avxvnni") {
                kernels.push(DotKernel::AvxVnni);
            }
            if lanes == 8 && has!("avx2") {
                kernels.push(DotKernel::Avx2);
            }
        }
        kernels.push(DotKernel::Portable);
        kernels
    }

    /// The name `rnnk info` prints.
    pub fn name(self) -> &'static str {
        match self {
            DotKernel::Avx512Vnni => "avx512-vnni",
            DotKernel::Avx512Bw => "avx512bw",
            DotKernel::AvxVnni => "avx-vnni",
            DotKernel::Avx2 => "avx2",
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
    // the sums NV·L; `choose` found the kernel on this machine.
    unsafe {
        exact_sums::<M, NV>(
            weights.kernel,
            weights.lanes,
            (&a, weights.groups, b),
            (&zero_points, code_sums),
            &mut exact,
        )
    };
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

/// The tile's exact sums `Σ_k a[r][k]·b[k][v, lane] − zp[r]·sums[v·L + lane]`
/// by `kernel`, into the first `lanes` lanes of each `out[r][v]`.
///
/// # Safety
/// As [`portable`]'s; `kernel` is one of [`DotKernel::runnable`]`(lanes)`.
#[inline(always)]
unsafe fn exact_sums<const M: usize, const NV: usize>(
    kernel: DotKernel,
    lanes: usize,
    (a, groups, b): (&[*const u8; M], usize, *const i8),
    (zero_points, sums): (&[i32; M], *const i32),
    out: &mut [[[i32; MAX_LANES]; NV]; M],
) {
    // SAFETY: forwarded; each x86 kernel runs only where `runnable` found its ISA.
    unsafe {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx512Vnni => x86::avx512_vnni::<M, NV>(a, groups, b, zero_points, sums, out),
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx512Bw => x86::avx512_bw::<M, NV>(a, groups, b, zero_points, sums, out),
            #[cfg(target_arch = "x86_64")]
            DotKernel::AvxVnni => x86::avx_vnni::<M, NV>(a, groups, b, zero_points, sums, out),
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx2 => x86::avx2::<M, NV>(a, groups, b, zero_points, sums, out),
            _ => portable::<M, NV>(lanes, a, groups, b, zero_points, sums, out),
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

    /// A tile kernel for one vector width and one way to multiply bytes:
    /// [`super::portable`] with `M·NV` accumulators and, per group of four K
    /// rows, `NV` loads, `M` broadcasts (each made into `dot`'s operand
    /// once) and `M·NV` dots, then the zero-point correction. A dot adds
    /// `Σ (a − shift)·w` over the group's four codes; the correction takes
    /// `(zp − shift)·Σw` away, which leaves `Σ a·w − zp·Σw`. A width
    /// (`zmm` or `ymm`) names its vector type and integer intrinsics once.
    macro_rules! int8_tile {
        ($(#[$doc:meta])* $name:ident, $features:literal, zmm,
         operand: $operand:ident, dot: $dot:ident, shift: $shift:literal) => {
            int8_tile!($(#[$doc])* $name, $features, 16, __m512i,
                zero: _mm512_setzero_si512, load: _mm512_loadu_si512, store: _mm512_storeu_si512,
                splat: _mm512_set1_epi32, mul: _mm512_mullo_epi32, sub: _mm512_sub_epi32,
                operand: $operand, dot: $dot, shift: $shift);
        };
        ($(#[$doc:meta])* $name:ident, $features:literal, ymm,
         operand: $operand:ident, dot: $dot:ident, shift: $shift:literal) => {
            int8_tile!($(#[$doc])* $name, $features, 8, __m256i,
                zero: _mm256_setzero_si256, load: _mm256_loadu_si256, store: _mm256_storeu_si256,
                splat: _mm256_set1_epi32, mul: _mm256_mullo_epi32, sub: _mm256_sub_epi32,
                operand: $operand, dot: $dot, shift: $shift);
        };
        ($(#[$doc:meta])* $name:ident, $features:literal, $lanes:literal, $vector:ty,
         zero: $zero:ident, load: $load:ident, store: $store:ident, splat: $splat:ident,
         mul: $mul:ident, sub: $sub:ident, operand: $operand:ident, dot: $dot:ident,
         shift: $shift:literal) => {
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
                            let x = $operand($splat(a[r].add(4 * g).cast::<i32>().read_unaligned()));
                            for v in 0..NV {
                                acc[r][v] = $dot(acc[r][v], x, bv[v]);
                            }
                        }
                    }
                }
                for r in 0..M {
                    let zp = $splat(zero_points[r] - $shift);
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

    /// VPDPBUSD takes the broadcast codes as they are.
    #[inline(always)]
    fn as_is<T>(x: T) -> T {
        x
    }

    int8_tile!(
        /// On zmm with VPDPBUSD (AVX512-VNNI): 16 columns a vector.
        ///
        /// # Safety
        /// As `portable` with 16 lanes, on a CPU with AVX-512F, BW and VNNI.
        avx512_vnni, "avx512f,avx512bw,avx512vnni", zmm,
        operand: as_is, dot: _mm512_dpbusd_epi32, shift: 0
    );

    int8_tile!(
        /// On ymm with VPDPBUSD (AVX-VNNI): 8 columns a vector.
        ///
        /// # Safety
        /// As `portable` with 8 lanes, on a CPU with AVX2 and AVX-VNNI.
        avx_vnni, "avx2,avxvnni", ymm,
        operand: as_is, dot: _mm256_dpbusd_avx_epi32, shift: 0
    );

    // Without VNNI: VPMADDUBSW multiplies u8 by s8 and adds pairs into i16,
    // saturating; u8 codes could overflow a pair (2·255·127 > 32767). Shifted
    // to s8 (a − 128, magnitude ≤ 128) a pair stays within 2·128·127 = 32512,
    // so the kernels multiply |a − 128| by the weights carrying a − 128's
    // sign (weights are within ±127: their negation fits), then VPMADDWD by
    // ones adds the pairs into i32: exact, as VPDPBUSD is.

    /// A broadcast's codes shifted to s8: their magnitude, and the shifted
    /// codes whose signs the weights take.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn avx2_operand(x: __m256i) -> (__m256i, __m256i) {
        let shifted = _mm256_xor_si256(x, _mm256_set1_epi8(i8::MIN));
        (_mm256_abs_epi8(shifted), shifted)
    }

    /// `acc + Σ (a − 128)·w` over each lane's four codes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn avx2_dot(acc: __m256i, (magnitude, shifted): (__m256i, __m256i), w: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(w, shifted));
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// As [`avx2_operand`], the signs as a mask (AVX-512 has no VPSIGNB).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn avx512_bw_operand(x: __m512i) -> (__m512i, __mmask64) {
        let shifted = _mm512_xor_si512(x, _mm512_set1_epi8(i8::MIN));
        (_mm512_abs_epi8(shifted), _mm512_movepi8_mask(shifted))
    }

    /// As [`avx2_dot`] on zmm.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn avx512_bw_dot(acc: __m512i, (magnitude, negative): (__m512i, __mmask64), w: __m512i) -> __m512i {
        let signed = _mm512_mask_sub_epi8(w, negative, _mm512_setzero_si512(), w);
        let pairs = _mm512_maddubs_epi16(magnitude, signed);
        _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, _mm512_set1_epi16(1)))
    }

    int8_tile!(
        /// On zmm without VNNI (AVX512-BW): 16 columns a vector.
        ///
        /// # Safety
        /// As `portable` with 16 lanes, on a CPU with AVX-512F and BW.
        avx512_bw, "avx512f,avx512bw", zmm,
        operand: avx512_bw_operand, dot: avx512_bw_dot, shift: 128
    );

    int8_tile!(
        /// On ymm without VNNI (AVX2): 8 columns a vector.
        ///
        /// # Safety
        /// As `portable` with 8 lanes, on a CPU with AVX2.
        avx2, "avx2", ymm,
        operand: avx2_operand, dot: avx2_dot, shift: 128
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::rng::SplitMix64;

    /// A code in `low ..= high`, the ends three times in ten: the ends are
    /// where a 16-bit pair sum would saturate.
    fn code(rng: &mut SplitMix64, low: i32, high: i32) -> i32 {
        match rng.next_u64() % 10 {
            0 => low,
            1 | 2 => high,
            _ => low + (rng.next_u64() % (high - low + 1) as u64) as i32,
        }
    }

    /// Every kernel this machine runs gives the portable loop's sums, on
    /// random codes and on the extremes (u8 0 and 255, s8 ±127).
    fn kernels_agree<const M: usize, const NV: usize>(lanes: usize, groups: usize, rng: &mut SplitMix64) {
        let rows: Vec<Vec<u8>> = (0..M)
            .map(|_| (0..4 * groups).map(|_| code(rng, 0, 255) as u8).collect())
            .collect();
        let weights: Vec<i8> = (0..groups * NV * lanes * 4)
            .map(|_| code(rng, -127, 127) as i8)
            .collect();
        // Each column's code sum, as `Int8Panels::set_column` keeps it (the
        // kernels without VNNI rely on it being the true sum).
        let sums: Vec<i32> = (0..NV * lanes)
            .map(|column| {
                (0..4 * groups)
                    .map(|k| weights[((k / 4 * NV * lanes) + column) * 4 + k % 4] as i32)
                    .sum()
            })
            .collect();
        let zero_points: [i32; M] = std::array::from_fn(|_| code(rng, 0, 255));
        let a: [*const u8; M] = std::array::from_fn(|r| rows[r].as_ptr());
        let operands = (&a, groups, weights.as_ptr());
        let mut want = [[[0i32; MAX_LANES]; NV]; M];
        // SAFETY: the buffers have the sizes `portable` asks for.
        unsafe {
            portable::<M, NV>(
                lanes,
                &a,
                groups,
                weights.as_ptr(),
                &zero_points,
                sums.as_ptr(),
                &mut want,
            )
        };
        for kernel in DotKernel::runnable(lanes) {
            let mut got = [[[i32::MIN; MAX_LANES]; NV]; M];
            // SAFETY: as above; `runnable` lists what this machine runs.
            unsafe { exact_sums::<M, NV>(kernel, lanes, operands, (&zero_points, sums.as_ptr()), &mut got) };
            for r in 0..M {
                for v in 0..NV {
                    assert_eq!(
                        got[r][v][..lanes],
                        want[r][v][..lanes],
                        "{} with {M} rows, {NV} vectors, {groups} groups: row {r}, vector {v}",
                        kernel.name()
                    );
                }
            }
        }
    }

    #[test]
    fn every_kernel_gives_the_exact_integer_sums() {
        let mut rng = SplitMix64::new(2026);
        for lanes in [8, 16] {
            for groups in [1, 2, 17, 64] {
                kernels_agree::<1, 1>(lanes, groups, &mut rng);
                kernels_agree::<2, 4>(lanes, groups, &mut rng);
                kernels_agree::<3, 3>(lanes, groups, &mut rng);
                kernels_agree::<8, 2>(lanes, groups, &mut rng);
            }
        }
    }

    #[test]
    fn the_machine_runs_a_vector_kernel_where_it_can() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert_ne!(DotKernel::choose(8), DotKernel::Portable);
        }
        assert_eq!(DotKernel::runnable(4), [DotKernel::Portable]);
    }
}
