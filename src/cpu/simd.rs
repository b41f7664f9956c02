//! The vector instructions the fast CPU path is written in, behind one trait
//! ([`Simd`]) with three implementations chosen at run time ([`Isa`]):
//! AVX-512F (16 lanes), AVX2 + FMA (8 lanes) and a portable fallback (8
//! lanes of plain arrays, which the compiler vectorises for the baseline
//! target: SSE2 on x86-64, NEON on aarch64).
//!
//! Every kernel is generic over `S: Simd` and `#[inline(always)]` down to the
//! instructions, and is entered through one `#[target_feature]` function per
//! ISA (see [`dispatch!`](crate::cpu::simd::dispatch)), so that the whole
//! inlined body is compiled for that ISA while the binary still runs on any
//! x86-64. A token of type `Avx512` or `Avx2` exists only after
//! [`Isa::detect`] has seen its features, which is what makes the intrinsic
//! calls inside sound.
//!
//! Also here: `exp`, `sigmoid` and `tanh` on vectors, accurate to a few ulp of
//! f32 (checked against libm over the whole range in the tests below).

/// The instruction set a prepared model runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F: 16 lanes, 32 vector registers.
    Avx512,
    /// AVX2 with FMA: 8 lanes, 16 vector registers.
    Avx2,
    /// Plain Rust arrays of 8 lanes, vectorised by the compiler for the
    /// baseline target.
    Portable,
}

impl Isa {
    /// The best instruction set this machine has, or the one `RNN_CPU_ISA`
    /// names (`avx512f`, `avx2` or `portable`) if this machine has it: for
    /// comparisons, and for tools without AVX-512 (valgrind).
    pub fn detect() -> Isa {
        let best = Self::best();
        let chosen = std::env::var("RNN_CPU_ISA").ok().and_then(|name| {
            [Isa::Avx512, Isa::Avx2, Isa::Portable]
                .into_iter()
                .find(|isa| isa.name().starts_with(name.as_str()) && !name.is_empty())
        });
        match chosen {
            Some(isa) if Self::runs(best, isa) => isa,
            _ => best,
        }
    }

    /// Whether a machine whose best is `best` can run `isa`.
    fn runs(best: Isa, isa: Isa) -> bool {
        let rank = |i: Isa| match i {
            Isa::Avx512 => 2,
            Isa::Avx2 => 1,
            Isa::Portable => 0,
        };
        rank(isa) <= rank(best)
    }

    fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if has_avx2_fma_f16c() {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every instruction set this machine can run, best first (tests run
    /// each of them).
    pub fn available() -> Vec<Isa> {
        let best = Isa::detect();
        [Isa::Avx512, Isa::Avx2, Isa::Portable]
            .into_iter()
            .skip_while(|&isa| isa != best)
            .collect()
    }

    /// Vector width in f32 lanes.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 | Isa::Portable => 8,
        }
    }

    /// Rows per micro-kernel tile for a panel of `nv` vectors: as many as the
    /// accumulators fit in the vector registers, leaving room for the panel's
    /// vectors and a broadcast.
    pub fn rows_per_tile(self, nv: usize) -> usize {
        let registers = match self {
            Isa::Avx512 => 32,
            Isa::Avx2 | Isa::Portable => 16,
        };
        ((registers - nv - 2) / nv).clamp(1, MAX_TILE_ROWS)
    }

    /// The name `rnnk info` and the benchmarks print.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512f",
            Isa::Avx2 => "avx2+fma",
            Isa::Portable => "portable",
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The most rows a micro-kernel tile has (the row-count dispatch covers 1..=8).
pub const MAX_TILE_ROWS: usize = 8;

/// Vector operations on `LANES` f32 lanes. Loads and stores are unaligned
/// and take raw pointers: the caller guarantees `LANES` readable (writable)
/// floats there.
pub trait Simd: Copy + Send + Sync + 'static {
    type V: Copy;
    const LANES: usize;

    fn splat(self, x: f32) -> Self::V;
    /// # Safety
    /// `p` points to `LANES` readable floats.
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// # Safety
    /// `p` points to `LANES` writable floats.
    unsafe fn store(self, p: *mut f32, v: Self::V);
    /// `LANES` f16 values (their bits), widened to f32 exactly.
    ///
    /// # Safety
    /// `p` points to `LANES` readable `u16`s.
    unsafe fn load_f16(self, p: *const u16) -> Self::V;
    /// `LANES` i32 values, converted to the nearest f32 (ties to even).
    ///
    /// # Safety
    /// `p` points to `LANES` readable `i32`s.
    unsafe fn load_i32(self, p: *const i32) -> Self::V;
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, fused where the ISA has it.
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `max(floor, x)`, but NaN in `x` stays NaN.
    fn max_keep_nan(self, floor: Self::V, x: Self::V) -> Self::V;
    /// `min(ceil, x)`, but NaN in `x` stays NaN.
    fn min_keep_nan(self, ceil: Self::V, x: Self::V) -> Self::V;
    /// Rounds to the nearest integer (ties to even).
    fn round(self, x: Self::V) -> Self::V;
    /// Per lane, `table[bits(t) mod 16]`.
    fn exp2_table(self, table: &[f32; 16], t: Self::V) -> Self::V;
    /// Per lane, `v · 2^n` with `n = bits(t) / 16` (`t` positive), by adding
    /// `n` to `v`'s exponent field: `v` and the result are normal floats.
    fn times_exp2_of(self, v: Self::V, t: Self::V) -> Self::V;
    /// Lane-wise `if a < b { yes } else { no }` (false for NaN).
    fn select_lt(self, a: Self::V, b: Self::V, yes: Self::V, no: Self::V) -> Self::V;
    /// The least lane of `lo` and the greatest of `hi` (neither holds NaN).
    fn min_max_lanes(self, lo: Self::V, hi: Self::V) -> (f32, f32);
    /// Whether any lane is NaN.
    fn any_nan(self, v: Self::V) -> bool;
    /// Stores the lanes as bytes: each an integer in `0..=255`, or NaN
    /// (stored as 0, as `NaN as u8` gives).
    ///
    /// # Safety
    /// `p` points to `LANES` writable bytes.
    unsafe fn store_u8(self, p: *mut u8, v: Self::V);

    /// Runs `f` compiled for this instruction set, as [`dispatch!`] runs its
    /// body: for a closure that another thread calls (a piece of a
    /// product), which is outside the `#[target_feature]` function that
    /// made `self`. Mark `f` `#[inline(always)]`: a call to it would be
    /// compiled without the instruction set, and every vector operation in
    /// it would become a function call.
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R;

    #[inline(always)]
    fn zero(self) -> Self::V {
        self.splat(0.0)
    }
}

// ---------------------------------------------------------------- math ----

/// Adding this to `y` (`|y| < 2^21`) rounds `y` to an integer `k` (ties to
/// even) and leaves `k + 8` in the low mantissa bits of the sum `t` (the
/// bits of 1.5·2^23 have nothing below bit 22). With `k + 8 = 16n + j`,
/// [`Simd::exp2_table`] reads `2^((j - 8)/16)` by `j` and
/// [`Simd::times_exp2_of`] multiplies by `2^n` by adding `n` (the bits of
/// `t` from bit 4 up, wrapping) to the exponent field: no float-to-int
/// conversion, no multiplication.
const ROUNDING_BIAS: f32 = 12_582_912.0 + 8.0;

/// `2^((j - 8)/16)` for `j` in `0..16`, rounded to f32 (so that arguments
/// near 0 take `j = 8`, where the value is exactly 1).
const EXP2_SIXTEENTHS: [f32; 16] = [
    0.70710677, 0.7384131, 0.7711054, 0.80524516, 0.8408964, 0.8781261, 0.91700405, 0.9576033, 1.0,
    1.0442737, 1.0905077, 1.1387886, 1.1892071, 1.2418578, 1.2968396, 1.3542556,
];

/// What rounding took off each of [`EXP2_SIXTEENTHS`], relative to it:
/// `(2^((j - 8)/16) - T[j]) / T[j]`.
const EXP2_SIXTEENTHS_ERROR: [f32; 16] = [
    1.7114271e-08,
    -3.0476834e-08,
    5.233334e-09,
    6.1075918e-09,
    -1.4719605e-08,
    -5.258795e-09,
    -6.1282597e-09,
    5.1406093e-09,
    0.0,
    4.628547e-08,
    -1.19921575e-08,
    4.7297824e-08,
    3.193418e-08,
    3.6210572e-08,
    -3.099072e-08,
    -7.475213e-09,
];

/// `ln 2 = LN2_HI + LN2_LO`, `LN2_HI` short enough that `k · LN2_HI / 32` is
/// exact for every `k` the clamps allow.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// `2^((j - 8)/16) · 2^n` for the `t` of [`ROUNDING_BIAS`].
#[inline(always)]
fn exp2_of_rounded<S: Simd>(s: S, t: S::V) -> S::V {
    s.times_exp2_of(s.exp2_table(&EXP2_SIXTEENTHS, t), t)
}

/// `x` clamped to `[low, high]` (NaN stays NaN), then `k`, `x · scale`
/// rounded to an integer, and `t = x · scale + ROUNDING_BIAS`, which
/// [`exp2_of_rounded`] and [`Simd::exp2_table`] read `2^(k/16)` from.
#[inline(always)]
fn clamp_and_round<S: Simd>(s: S, x: S::V, (low, high): (f32, f32), scale: f32) -> (S::V, S::V, S::V) {
    let x = s.max_keep_nan(s.splat(low), s.min_keep_nan(s.splat(high), x));
    let t = s.fma(x, s.splat(scale), s.splat(ROUNDING_BIAS));
    (x, t, s.sub(t, s.splat(ROUNDING_BIAS)))
}

/// The least argument [`sigmoid`] takes (below it, e^-x would overflow).
const SIGMOID_FLOOR: f32 = -88.37;

/// `e^-x`, `x` clamped to `[floor, 87.3]` first (so the result is a normal
/// float, never inf; NaN stays NaN): `-x = k ln 2 / 16 + r`, `|r| <= ln 2 /
/// 32`, `e^-x = 2^(k/16) e^r` with `2^(k/16)` from the table and `e^r` to
/// 1e-8 from its cubic Taylor polynomial, by Horner in `q = -r` (so `x` is
/// never negated). The sigmoid built on it is within 4 ulp.
#[inline(always)]
fn exp_neg<S: Simd>(s: S, x: S::V, floor: f32) -> S::V {
    let (x, t, k) = clamp_and_round(s, x, (floor, 87.3), -16.0 * std::f32::consts::LOG2_E);
    // q = x + k ln 2 / 16 = -r
    let q = s.fma(k, s.splat(LN2_HI / 16.0), x);
    let q = s.fma(k, s.splat(LN2_LO / 16.0), q);
    // e^r = 1 - q + q²/2 - q³/6
    let mut p = s.splat(-1.0 / 6.0);
    for c in [0.5, -1.0, 1.0] {
        p = s.fma(p, q, s.splat(c));
    }
    s.mul(p, exp2_of_rounded(s, t))
}

/// `e^(2x) - 1`, accurate near 0, `x` clamped to `[-10, 10]` (where `tanh`
/// is ±1 in f32, and the quotients below cannot overflow): `2x = k ln 2 /
/// 16 + 2h`, `|h| <= ln 2 / 64`, `e^(2h) - 1 = h (2 + 2h + 4h²/3 + 2h³/3)`
/// to 2e-9, then `T (e^(2h) - 1) + (T - 1)` with `T = 2^(k/16)` (its
/// rounding error added back: near 0 the difference `T - 1` is what is left).
#[inline(always)]
fn expm1_twice<S: Simd>(s: S, x: S::V) -> S::V {
    let (x, t, k) = clamp_and_round(s, x, (-10.0, 10.0), 32.0 * std::f32::consts::LOG2_E);
    // h = x - k ln 2 / 32
    let h = s.fma(k, s.splat(-LN2_HI / 32.0), x);
    let h = s.fma(k, s.splat(-LN2_LO / 32.0), h);
    let mut p = s.splat(2.0 / 3.0);
    for c in [4.0 / 3.0, 2.0, 2.0] {
        p = s.fma(p, h, s.splat(c));
    }
    let em1 = s.add(s.mul(p, h), s.exp2_table(&EXP2_SIXTEENTHS_ERROR, t));
    let scale = exp2_of_rounded(s, t);
    s.fma(em1, scale, s.sub(scale, s.splat(1.0)))
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid<S: Simd>(s: S, x: S::V) -> S::V {
    let one = s.splat(1.0);
    s.div(one, s.add(one, exp_neg(s, x, SIGMOID_FLOOR)))
}

/// `tanh x = (e^(2x) - 1) / (e^(2x) + 1)`: accurate to a few ulp over the
/// whole range (near 0 through `expm1_twice`, ±1 beyond ±10).
#[inline(always)]
pub fn tanh<S: Simd>(s: S, x: S::V) -> S::V {
    let (numerator, denominator) = tanh_fraction(s, x);
    s.div(numerator, denominator)
}

/// `1 + e^-a`, the denominator of `σ(a)`, for products `σ(a) · tanh(b)`
/// made with one division (the LSTM's): `a` is clamped below at -40, so
/// that the product of two denominators stays finite (`σ(-40)` is 4e-18).
#[inline(always)]
pub fn sigmoid_denominator<S: Simd>(s: S, a: S::V) -> S::V {
    s.add(s.splat(1.0), exp_neg(s, a, -40.0))
}

/// `tanh b` as a fraction, `(e^(2b) - 1, e^(2b) + 1)`.
#[inline(always)]
pub fn tanh_fraction<S: Simd>(s: S, b: S::V) -> (S::V, S::V) {
    let e = expm1_twice(s, b);
    (e, s.add(e, s.splat(2.0)))
}

// ------------------------------------------------------------ portable ----

/// Plain arrays of 8 lanes; the compiler vectorises the loops.
#[derive(Clone, Copy, Debug)]
pub struct Portable;

const PORTABLE_LANES: usize = 8;
type Lanes = [f32; PORTABLE_LANES];

#[inline(always)]
fn lanewise(a: Lanes, b: Lanes, f: impl Fn(f32, f32) -> f32) -> Lanes {
    std::array::from_fn(|i| f(a[i], b[i]))
}

impl Simd for Portable {
    #[inline(always)]
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R {
        f()
    }
    type V = Lanes;
    const LANES: usize = PORTABLE_LANES;

    #[inline(always)]
    fn splat(self, x: f32) -> Lanes {
        [x; PORTABLE_LANES]
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> Lanes {
        // SAFETY: the caller guarantees LANES readable floats at p.
        unsafe { p.cast::<Lanes>().read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: Lanes) {
        // SAFETY: the caller guarantees LANES writable floats at p.
        unsafe { p.cast::<Lanes>().write_unaligned(v) }
    }
    #[inline(always)]
    unsafe fn load_f16(self, p: *const u16) -> Lanes {
        // SAFETY: the caller guarantees LANES readable u16s at p.
        let bits = unsafe { p.cast::<[u16; PORTABLE_LANES]>().read_unaligned() };
        bits.map(|b| half::f16::from_bits(b).to_f32())
    }
    #[inline(always)]
    unsafe fn load_i32(self, p: *const i32) -> Lanes {
        // SAFETY: the caller guarantees LANES readable i32s at p.
        unsafe { p.cast::<[i32; PORTABLE_LANES]>().read_unaligned() }.map(|v| v as f32)
    }
    #[inline(always)]
    fn add(self, a: Lanes, b: Lanes) -> Lanes {
        lanewise(a, b, |x, y| x + y)
    }
    #[inline(always)]
    fn sub(self, a: Lanes, b: Lanes) -> Lanes {
        lanewise(a, b, |x, y| x - y)
    }
    #[inline(always)]
    fn mul(self, a: Lanes, b: Lanes) -> Lanes {
        lanewise(a, b, |x, y| x * y)
    }
    #[inline(always)]
    fn div(self, a: Lanes, b: Lanes) -> Lanes {
        lanewise(a, b, |x, y| x / y)
    }
    #[inline(always)]
    fn fma(self, a: Lanes, b: Lanes, c: Lanes) -> Lanes {
        // Unfused: a library call per lane would cost more than it brings.
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    fn max_keep_nan(self, floor: Lanes, x: Lanes) -> Lanes {
        lanewise(floor, x, |f, x| if x < f { f } else { x })
    }
    #[inline(always)]
    fn min_keep_nan(self, ceil: Lanes, x: Lanes) -> Lanes {
        lanewise(ceil, x, |c, x| if x > c { c } else { x })
    }
    #[inline(always)]
    fn round(self, x: Lanes) -> Lanes {
        x.map(f32::round_ties_even)
    }
    #[inline(always)]
    fn exp2_table(self, table: &[f32; 16], t: Lanes) -> Lanes {
        t.map(|t| table[(t.to_bits() % 16) as usize])
    }
    #[inline(always)]
    fn times_exp2_of(self, v: Lanes, t: Lanes) -> Lanes {
        std::array::from_fn(|i| f32::from_bits(v[i].to_bits().wrapping_add((t[i].to_bits() >> 4) << 23)))
    }
    #[inline(always)]
    fn select_lt(self, a: Lanes, b: Lanes, yes: Lanes, no: Lanes) -> Lanes {
        std::array::from_fn(|i| if a[i] < b[i] { yes[i] } else { no[i] })
    }
    #[inline(always)]
    fn min_max_lanes(self, lo: Lanes, hi: Lanes) -> (f32, f32) {
        (
            lo.into_iter().fold(f32::INFINITY, f32::min),
            hi.into_iter().fold(f32::NEG_INFINITY, f32::max),
        )
    }
    #[inline(always)]
    fn any_nan(self, v: Lanes) -> bool {
        v.iter().any(|x| x.is_nan())
    }
    #[inline(always)]
    unsafe fn store_u8(self, p: *mut u8, v: Lanes) {
        // SAFETY: the caller guarantees LANES writable bytes at p.
        unsafe {
            p.cast::<[u8; PORTABLE_LANES]>()
                .write_unaligned(v.map(|x| x as u8))
        }
    }
}

// ------------------------------------------------------------- x86-64 ----

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Simd;
    use std::arch::x86_64::*;

    /// AVX-512F. Only [`super::Isa::avx512_token`] makes one, after detection.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx512(pub(super) ());

    /// AVX2, FMA and F16C. Only [`super::Isa::avx2_token`] makes one, after detection.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx2(pub(super) ());

    /// `impl Simd` for one x86 vector width. The operations that are the
    /// same instruction at every width are written here once, from the
    /// width's intrinsics; those that differ (the reductions, the
    /// comparisons, the narrowing stores) come in `specific`.
    ///
    /// SAFETY (every intrinsic call): a token value exists only when the CPU
    /// has the width's features (`Isa::avx512_token`, `Isa::avx2_token`),
    /// and these methods are inlined into the `#[target_feature]` entry
    /// points that `run` leads to.
    macro_rules! x86_simd {
        ($token:ident, $vector:ty, $lanes:literal, run: $run:ident,
         set1: $set1:ident, loadu: $loadu:ident, storeu: $storeu:ident,
         load_int: $load_int:ident, int_to_float: $int_to_float:ident,
         add: $add:ident, sub: $sub:ident, mul: $mul:ident, div: $div:ident, fmadd: $fmadd:ident,
         max: $max:ident, min: $min:ident,
         float_as_int: $float_as_int:ident, shift_left_int: $shift_left_int:ident,
         shift_right_int: $shift_right_int:ident, add_int: $add_int:ident,
         int_as_float: $int_as_float:ident,
         specific: { $($specific:tt)* }) => {
            impl Simd for $token {
                type V = $vector;
                const LANES: usize = $lanes;

                #[inline(always)]
                fn vectorize<R>(self, f: impl FnOnce() -> R) -> R {
                    super::$run(
                        self,
                        #[inline(always)]
                        |_| f(),
                    )
                }

                #[inline(always)]
                fn splat(self, x: f32) -> $vector {
                    unsafe { $set1(x) }
                }
                #[inline(always)]
                unsafe fn load(self, p: *const f32) -> $vector {
                    unsafe { $loadu(p) }
                }
                #[inline(always)]
                unsafe fn store(self, p: *mut f32, v: $vector) {
                    unsafe { $storeu(p, v) }
                }
                #[inline(always)]
                unsafe fn load_i32(self, p: *const i32) -> $vector {
                    unsafe { $int_to_float($load_int(p.cast())) }
                }
                #[inline(always)]
                fn add(self, a: $vector, b: $vector) -> $vector {
                    unsafe { $add(a, b) }
                }
                #[inline(always)]
                fn sub(self, a: $vector, b: $vector) -> $vector {
                    unsafe { $sub(a, b) }
                }
                #[inline(always)]
                fn mul(self, a: $vector, b: $vector) -> $vector {
                    unsafe { $mul(a, b) }
                }
                #[inline(always)]
                fn div(self, a: $vector, b: $vector) -> $vector {
                    unsafe { $div(a, b) }
                }
                #[inline(always)]
                fn fma(self, a: $vector, b: $vector, c: $vector) -> $vector {
                    unsafe { $fmadd(a, b, c) }
                }
                #[inline(always)]
                fn max_keep_nan(self, floor: $vector, x: $vector) -> $vector {
                    // MAXPS returns its second operand when either is NaN.
                    unsafe { $max(floor, x) }
                }
                #[inline(always)]
                fn min_keep_nan(self, ceil: $vector, x: $vector) -> $vector {
                    unsafe { $min(ceil, x) }
                }
                #[inline(always)]
                fn times_exp2_of(self, v: $vector, t: $vector) -> $vector {
                    unsafe {
                        let n = $shift_left_int::<23>($shift_right_int::<4>($float_as_int(t)));
                        $int_as_float($add_int($float_as_int(v), n))
                    }
                }

                $($specific)*
            }
        };
    }

    x86_simd!(
        Avx512, __m512, 16, run: run_avx512,
        set1: _mm512_set1_ps, loadu: _mm512_loadu_ps, storeu: _mm512_storeu_ps,
        load_int: _mm512_loadu_si512, int_to_float: _mm512_cvtepi32_ps,
        add: _mm512_add_ps, sub: _mm512_sub_ps, mul: _mm512_mul_ps, div: _mm512_div_ps,
        fmadd: _mm512_fmadd_ps, max: _mm512_max_ps, min: _mm512_min_ps,
        float_as_int: _mm512_castps_si512, shift_left_int: _mm512_slli_epi32,
        shift_right_int: _mm512_srli_epi32, add_int: _mm512_add_epi32,
        int_as_float: _mm512_castsi512_ps,
        specific: {
            #[inline(always)]
            unsafe fn load_f16(self, p: *const u16) -> __m512 {
                unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
            }
            #[inline(always)]
            fn exp2_table(self, table: &[f32; 16], t: __m512) -> __m512 {
                unsafe { _mm512_permutexvar_ps(_mm512_castps_si512(t), _mm512_loadu_ps(table.as_ptr())) }
            }
            #[inline(always)]
            fn round(self, x: __m512) -> __m512 {
                unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x) }
            }
            #[inline(always)]
            fn select_lt(self, a: __m512, b: __m512, yes: __m512, no: __m512) -> __m512 {
                unsafe { _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b), no, yes) }
            }
            #[inline(always)]
            fn min_max_lanes(self, lo: __m512, hi: __m512) -> (f32, f32) {
                unsafe { (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi)) }
            }
            #[inline(always)]
            fn any_nan(self, v: __m512) -> bool {
                unsafe { _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v) != 0 }
            }
            #[inline(always)]
            unsafe fn store_u8(self, p: *mut u8, v: __m512) {
                // NaN truncates to 0x8000_0000, whose low byte is 0.
                unsafe { _mm_storeu_si128(p.cast(), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v))) }
            }
        }
    );

    x86_simd!(
        Avx2, __m256, 8, run: run_avx2,
        set1: _mm256_set1_ps, loadu: _mm256_loadu_ps, storeu: _mm256_storeu_ps,
        load_int: _mm256_loadu_si256, int_to_float: _mm256_cvtepi32_ps,
        add: _mm256_add_ps, sub: _mm256_sub_ps, mul: _mm256_mul_ps, div: _mm256_div_ps,
        fmadd: _mm256_fmadd_ps, max: _mm256_max_ps, min: _mm256_min_ps,
        float_as_int: _mm256_castps_si256, shift_left_int: _mm256_slli_epi32,
        shift_right_int: _mm256_srli_epi32, add_int: _mm256_add_epi32,
        int_as_float: _mm256_castsi256_ps,
        specific: {
            #[inline(always)]
            unsafe fn load_f16(self, p: *const u16) -> __m256 {
                unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
            }
            #[inline(always)]
            fn exp2_table(self, table: &[f32; 16], t: __m256) -> __m256 {
                // Two 8-entry lookups by the low three bits, chosen by bit 3.
                unsafe {
                    let index = _mm256_castps_si256(t);
                    let low = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table.as_ptr()), index);
                    let high = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table.as_ptr().add(8)), index);
                    _mm256_blendv_ps(low, high, _mm256_castsi256_ps(_mm256_slli_epi32::<28>(index)))
                }
            }
            #[inline(always)]
            fn round(self, x: __m256) -> __m256 {
                unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x) }
            }
            #[inline(always)]
            fn select_lt(self, a: __m256, b: __m256, yes: __m256, no: __m256) -> __m256 {
                unsafe { _mm256_blendv_ps(no, yes, _mm256_cmp_ps::<_CMP_LT_OQ>(a, b)) }
            }
            #[inline(always)]
            fn min_max_lanes(self, lo: __m256, hi: __m256) -> (f32, f32) {
                unsafe {
                    // Halve the vector three times: 8 lanes, 4, 2, 1.
                    let lo = _mm_min_ps(_mm256_castps256_ps128(lo), _mm256_extractf128_ps::<1>(lo));
                    let hi = _mm_max_ps(_mm256_castps256_ps128(hi), _mm256_extractf128_ps::<1>(hi));
                    let lo = _mm_min_ps(lo, _mm_movehl_ps(lo, lo));
                    let hi = _mm_max_ps(hi, _mm_movehl_ps(hi, hi));
                    let lo = _mm_min_ss(lo, _mm_movehdup_ps(lo));
                    let hi = _mm_max_ss(hi, _mm_movehdup_ps(hi));
                    (_mm_cvtss_f32(lo), _mm_cvtss_f32(hi))
                }
            }
            #[inline(always)]
            fn any_nan(self, v: __m256) -> bool {
                unsafe { _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v)) != 0 }
            }
            #[inline(always)]
            unsafe fn store_u8(self, p: *mut u8, v: __m256) {
                unsafe {
                    // NaN truncates to i32::MIN, which the unsigned saturating packs make 0.
                    let words = _mm256_packus_epi32(_mm256_cvttps_epi32(v), _mm256_setzero_si256());
                    let bytes = _mm256_packus_epi16(words, _mm256_setzero_si256());
                    // Bytes 0..4 of each 128-bit half hold lanes 0..4 and 4..8.
                    let low = _mm_cvtsi128_si32(_mm256_castsi256_si128(bytes)) as u32;
                    let high = _mm_cvtsi128_si32(_mm256_extracti128_si256::<1>(bytes)) as u32;
                    p.cast::<u64>()
                        .write_unaligned(u64::from(low) | u64::from(high) << 32);
                }
            }
        }
    );
}

/// Runs `$body` with `$s` bound to the token of `$isa`, inside a function
/// compiled for that ISA (`#[target_feature]`), so that everything the body
/// inlines uses its instructions. The body is a closure (it may capture), and
/// must only call `#[inline(always)]` code on its hot path.
macro_rules! dispatch {
    ($isa:expr, |$s:ident| $body:expr) => {{
        match $isa {
            #[cfg(target_arch = "x86_64")]
            $crate::cpu::simd::Isa::Avx512 => {
                let token = $crate::cpu::simd::Isa::avx512_token();
                $crate::cpu::simd::run_avx512(
                    token,
                    #[inline(always)]
                    |$s| $body,
                )
            }
            #[cfg(target_arch = "x86_64")]
            $crate::cpu::simd::Isa::Avx2 => {
                let token = $crate::cpu::simd::Isa::avx2_token();
                $crate::cpu::simd::run_avx2(
                    token,
                    #[inline(always)]
                    |$s| $body,
                )
            }
            _ => {
                let $s = $crate::cpu::simd::Portable;
                $body
            }
        }
    }};
}
pub(crate) use dispatch;

/// The AVX-512 entry point of [`dispatch!`]: `f`, inlined, compiled for AVX-512F.
///
/// # Safety
/// The CPU has AVX-512F (which the token proves).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn with_avx512<R>(s: Avx512, f: impl FnOnce(Avx512) -> R) -> R {
    f(s)
}

/// The AVX2 entry point of [`dispatch!`]: `f`, inlined, compiled for AVX2, FMA and F16C.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C (which the token proves).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn with_avx2<R>(s: Avx2, f: impl FnOnce(Avx2) -> R) -> R {
    f(s)
}

/// [`with_avx512`], made safe by its token.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn run_avx512<R>(s: Avx512, f: impl FnOnce(Avx512) -> R) -> R {
    // SAFETY: an Avx512 token exists only on a CPU with AVX-512F.
    unsafe { with_avx512(s, f) }
}

/// [`with_avx2`], made safe by its token.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn run_avx2<R>(s: Avx2, f: impl FnOnce(Avx2) -> R) -> R {
    // SAFETY: an Avx2 token exists only on a CPU with AVX2, FMA and F16C.
    unsafe { with_avx2(s, f) }
}

/// What the `Avx2` token needs (every CPU with AVX2 and FMA has F16C).
#[cfg(target_arch = "x86_64")]
fn has_avx2_fma_f16c() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

#[cfg(target_arch = "x86_64")]
impl Isa {
    /// The AVX-512 token; panics unless this machine has AVX-512F (it is
    /// only asked for after [`Isa::detect`] chose it).
    pub(crate) fn avx512_token() -> Avx512 {
        assert!(
            std::arch::is_x86_feature_detected!("avx512f"),
            "AVX-512F is not available"
        );
        Avx512(())
    }

    /// The AVX2 token; panics unless this machine has AVX2, FMA and F16C.
    pub(crate) fn avx2_token() -> Avx2 {
        assert!(has_avx2_fma_f16c(), "AVX2, FMA and F16C are not available");
        Avx2(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `f` applied to every value of `xs` (a multiple of 16 long), a vector at a time.
    fn map<F: Fn(Isa, &[f32], &mut [f32])>(isa: Isa, xs: &[f32], f: F) -> Vec<f32> {
        let mut out = vec![0.0; xs.len()];
        f(isa, xs, &mut out);
        out
    }

    /// A math function applied a vector at a time (see `vector_fn!`).
    type VectorFn = fn(Isa, &[f32], &mut [f32]);

    macro_rules! vector_fn {
        ($name:ident, $math:ident) => {
            fn $name(isa: Isa, xs: &[f32], out: &mut [f32]) {
                assert!(xs.len() == out.len() && xs.len() % 16 == 0);
                dispatch!(isa, |s| {
                    for (x, o) in xs
                        .chunks_exact(isa.lanes())
                        .zip(out.chunks_exact_mut(isa.lanes()))
                    {
                        // SAFETY: each chunk holds exactly one vector.
                        unsafe { s.store(o.as_mut_ptr(), $math(s, s.load(x.as_ptr()))) };
                    }
                })
            }
        };
    }
    fn exp_neg_everywhere<S: Simd>(s: S, x: S::V) -> S::V {
        exp_neg(s, x, SIGMOID_FLOOR)
    }
    /// `σ(x) tanh(x / 2)` as the LSTM makes it, with one division: two
    /// arguments from one grid (halving is exact).
    fn sigmoid_times_tanh_of<S: Simd>(s: S, x: S::V) -> S::V {
        let (numerator, denominator) = tanh_fraction(s, s.mul(x, s.splat(0.5)));
        s.div(numerator, s.mul(sigmoid_denominator(s, x), denominator))
    }
    vector_fn!(vexp_neg, exp_neg_everywhere);
    vector_fn!(vsigmoid, sigmoid);
    vector_fn!(vtanh, tanh);
    vector_fn!(vexpm1_twice, expm1_twice);
    vector_fn!(vsigmoid_times_tanh, sigmoid_times_tanh_of);

    /// The distance between two floats in units in the last place.
    fn ulps(a: f32, b: f32) -> u32 {
        let key = |x: f32| {
            let bits = x.to_bits() as i32;
            if bits < 0 {
                i32::MIN.wrapping_sub(bits)
            } else {
                bits
            }
        };
        if a == b {
            0
        } else {
            key(a).abs_diff(key(b))
        }
    }

    fn grid() -> Vec<f32> {
        let mut xs: Vec<f32> = (0..20_000).map(|i| -100.0 + i as f32 * 0.01).collect();
        xs.extend((0..4_000).map(|i| (i as f32 - 2_000.0) * 1e-4));
        xs.extend([
            0.0,
            -0.0,
            0.625,
            -0.625,
            0.624_999_9,
            1e-30,
            -1e-30,
            88.0,
            -88.0,
            200.0,
            -200.0,
        ]);
        xs.resize(xs.len().next_multiple_of(16), 0.5);
        xs
    }

    #[test]
    fn vector_math_matches_libm_on_every_isa() {
        let xs = grid();
        for isa in Isa::available() {
            let (exps, sigmoids, tanhs) = (
                map(isa, &xs, vexp_neg),
                map(isa, &xs, vsigmoid),
                map(isa, &xs, vtanh),
            );
            let products = map(isa, &xs, vsigmoid_times_tanh);
            for (i, &x) in xs.iter().enumerate() {
                let x64 = f64::from(x);
                if (-88.0..87.0).contains(&x) {
                    let want = (-x64).exp() as f32;
                    assert!(
                        ulps(exps[i], want) <= 2,
                        "{isa}: exp(-{x}) = {} vs {want}",
                        exps[i]
                    );
                }
                let want = (x64 / 2.0).tanh() / (1.0 + (-x64).exp());
                assert!(
                    ulps(products[i], want as f32) <= 6 || (f64::from(products[i]) - want).abs() < 1e-17,
                    "{isa}: sigmoid({x}) tanh({x} / 2) = {} vs {want}",
                    products[i]
                );
                let want = (1.0 / (1.0 + (-x64).exp())) as f32;
                let tiny = (f64::from(sigmoids[i]) - f64::from(want)).abs() < 1e-37;
                assert!(
                    ulps(sigmoids[i], want) <= 4 || tiny,
                    "{isa}: sigmoid({x}) = {} vs {want}",
                    sigmoids[i]
                );
                let want = x64.tanh() as f32;
                assert!(
                    ulps(tanhs[i], want) <= 4,
                    "{isa}: tanh({x}) = {} vs {want}",
                    tanhs[i]
                );
            }
            let expm1s = map(isa, &xs, vexpm1_twice);
            for (i, &x) in xs.iter().enumerate() {
                if (-10.0..=10.0).contains(&x) {
                    let want = (2.0 * f64::from(x)).exp_m1() as f32;
                    assert!(
                        ulps(expm1s[i], want) <= 3,
                        "{isa}: expm1(2·{x}) = {} vs {want}",
                        expm1s[i]
                    );
                }
            }
            let nan = [f32::NAN; 16];
            let functions: [(VectorFn, &str); 5] = [
                (vsigmoid, "sigmoid"),
                (vtanh, "tanh"),
                (vexp_neg, "exp(-x)"),
                (vexpm1_twice, "expm1(2x)"),
                (vsigmoid_times_tanh, "sigmoid(x) tanh(x / 2)"),
            ];
            for (function, name) in functions {
                assert!(
                    map(isa, &nan, function).iter().all(|v| v.is_nan()),
                    "{isa}: {name} of NaN"
                );
            }
        }
    }
}
