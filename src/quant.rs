//! Reduced-precision inference: the formats a prepared CPU model can run in
//! ([`Precision`]) and the exact definition of each scheme.
//!
//! Every function here is the scheme itself, written once in scalar f32:
//! the reference ([`crate::reference::forward_quantized`]) computes with
//! these, and the fast path ([`crate::cpu::CpuRnn::with_precision`]) must
//! produce the same integers and the same scales (its vector code performs
//! the same f32 operations in the same order), so that the two agree to f32
//! rounding of the gate math alone.
//!
//! **int8** (weights and activations in 8 bits, dynamic):
//! - weights: s8, symmetric, one scale per output row (each row of `W_ih`,
//!   `W_hh`, `W_hr`): `scale = max|w| / 127`, `q = round(w / scale)`;
//! - activations (`x_t`, `h_{t-1}`, and the inputs of the original GRU's
//!   second product and the LSTM's projection): u8, asymmetric, one scale
//!   and zero point **per batch row and step**, over the row's range with
//!   zero included, all 8 bits: a row's result never depends on the other
//!   rows, on the thread count or on the lengths of other sequences;
//! - products: exact `i32` sums of `u8 × s8`, the zero point removed with
//!   the weight row's sum, then `(Σ − zp·Σw) · (scale_a · scale_w)` in f32;
//!   bias, gates and the cell state stay f32.
//!
//! **f16**: weights rounded to the nearest f16 (stored in 16 bits by the
//! fast path), all arithmetic f32.
//!
//! Rounding is to nearest, ties to even, everywhere.

use crate::error::{Error, Result};
use crate::weights::{param_name, LayerWeights, ParamKind, Weights};
use std::fmt;
use std::str::FromStr;

/// The number format a prepared model stores its weights in and computes with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 weights and arithmetic: PyTorch's results to f32 rounding.
    #[default]
    F32,
    /// s8 weights per output row, u8 activations per batch row and step,
    /// i32 products, f32 gates and cell state (inference only).
    Int8,
    /// f16 weights, f32 arithmetic (inference only).
    F16,
}

impl Precision {
    /// Every format, in the order tools list them.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Int8, Precision::F16];

    /// The name used on the command line and in benchmark records.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
            Precision::F16 => "f16",
        }
    }

    /// Bytes one weight takes in a prepared model (scales aside).
    pub fn weight_bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::Int8 => 1,
            Precision::F16 => 2,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| Error::Config(format!("unknown precision {s:?}; expected one of f32, int8, f16")))
    }
}

/// The largest inner dimension an int8 product takes: beyond it the `i32`
/// sums (`K · 255 · 127`, twice with the zero-point correction) could overflow.
pub const INT8_MAX_K: usize = 32768;

/// The scale of one weight row: `max|w| / 127`; 1 for an all-zero row; NaN
/// when the row holds a NaN or an infinity (its products are then NaN, as
/// f32's would be).
pub fn weight_scale(row: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    for &w in row {
        if !w.is_finite() {
            return f32::NAN;
        }
        amax = amax.max(w.abs());
    }
    if amax == 0.0 {
        1.0
    } else {
        amax / 127.0
    }
}

/// One weight in s8 under its row's `scale`: `round(w / scale)` in ±127 (0 under a NaN scale).
pub fn quantize_weight(w: f32, scale: f32) -> i8 {
    if scale.is_nan() {
        return 0;
    }
    (w / scale).round_ties_even().clamp(-127.0, 127.0) as i8
}

/// The u8 quantization of one activation row: `q = clamp(round(a · inv) + zero_point, 0, 255)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActivationScale {
    /// What one step of `q` is worth: `(hi − lo) / 255`.
    pub scale: f32,
    /// `1 / scale`, rounded once: the quantizer multiplies by it.
    pub inv: f32,
    /// The `q` that stands for 0.
    pub zero_point: i32,
}

impl ActivationScale {
    /// The parameters for a row whose least and greatest values are `min`
    /// and `max` (NaN if the row holds one). The range always includes 0,
    /// so that 0 (padding, a zero state) is exact. A row of zeros (or of
    /// values below f32's normal range) gets scale 1; a row with a NaN or an
    /// infinity gets a NaN scale (its products are NaN), with `inv` and the
    /// zero point 0 so that its codes are all 0.
    pub fn from_range(min: f32, max: f32) -> Self {
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        let scale = (hi - lo) / 255.0;
        if min.is_nan() || max.is_nan() || !scale.is_finite() {
            return ActivationScale {
                scale: f32::NAN,
                inv: 0.0,
                zero_point: 0,
            };
        }
        if scale < f32::MIN_POSITIVE {
            return ActivationScale {
                scale: 1.0,
                inv: 1.0,
                zero_point: 0,
            };
        }
        let inv = 1.0 / scale;
        let zero_point = (-lo * inv).round_ties_even().clamp(0.0, 255.0) as i32;
        ActivationScale {
            scale,
            inv,
            zero_point,
        }
    }

    /// The parameters of `row` (NaN-aware: see [`ActivationScale::from_range`]).
    pub fn of(row: &[f32]) -> Self {
        let (mut min, mut max) = (0.0f32, 0.0f32);
        for &a in row {
            if a.is_nan() {
                return Self::from_range(f32::NAN, f32::NAN);
            }
            min = min.min(a);
            max = max.max(a);
        }
        Self::from_range(min, max)
    }

    /// One activation's code.
    #[inline(always)]
    pub fn quantize(&self, a: f32) -> u8 {
        code(a * self.inv, self.zero_point as f32)
    }
}

/// `clamp(round(scaled) + zero_point, 0, 255)` as a byte (NaN gives 0). The
/// fast path computes the same f32 value in vectors and stores it with
/// `Simd::store_u8`, which makes the same byte of it (NaN included).
#[inline(always)]
pub fn code(scaled: f32, zero_point: f32) -> u8 {
    (scaled.round_ties_even() + zero_point).clamp(0.0, 255.0) as u8
}

/// A product's value from its exact integer sum: `Σ q_a·q_w` over the row
/// (`sum`), the activation row's zero point, the weight row's code sum and
/// both scales.
#[inline(always)]
pub fn dequantize(
    sum: i32,
    zero_point: i32,
    weight_sum: i32,
    activation_scale: f32,
    weight_scale: f32,
) -> f32 {
    (sum - zero_point * weight_sum) as f32 * (activation_scale * weight_scale)
}

/// A matrix in s8, one scale per row, with each row's code sum.
#[derive(Clone, Debug)]
pub struct Int8Matrix {
    /// Rows: the outputs.
    pub rows: usize,
    /// Columns: the inner dimension K.
    pub cols: usize,
    /// `[rows, cols]`, row-major like the f32 matrix.
    pub codes: Vec<i8>,
    /// Per row.
    pub scales: Vec<f32>,
    /// Per row: `Σ_k codes[row, k]`.
    pub sums: Vec<i32>,
}

impl Int8Matrix {
    /// Quantizes a row-major `[rows, cols]` f32 matrix; `what` names it in errors.
    pub fn quantize(w: &[f32], rows: usize, cols: usize, what: &str) -> Result<Self> {
        debug_assert_eq!(w.len(), rows * cols);
        if cols > INT8_MAX_K {
            return Err(Error::Unsupported(format!(
                "{what}: int8 products take at most {INT8_MAX_K} inputs, this one has {cols}"
            )));
        }
        let mut codes = Vec::with_capacity(rows * cols);
        let mut scales = Vec::with_capacity(rows);
        let mut sums = Vec::with_capacity(rows);
        for row in w.chunks_exact(cols.max(1)).take(rows) {
            let scale = weight_scale(row);
            let start = codes.len();
            codes.extend(row.iter().map(|&x| quantize_weight(x, scale)));
            sums.push(codes[start..].iter().map(|&q| q as i32).sum());
            scales.push(scale);
        }
        Ok(Int8Matrix {
            rows,
            cols,
            codes,
            scales,
            sums,
        })
    }

    /// Row `r`'s codes.
    pub fn row(&self, r: usize) -> &[i8] {
        &self.codes[r * self.cols..(r + 1) * self.cols]
    }

    /// `out[r] = bias[r] + dequantize(Σ_k q_x[k] · codes[r, k])` for the
    /// rows `rows` of this matrix, `x` quantized as one activation row.
    pub fn affine(&self, x: &[f32], rows: std::ops::Range<usize>, bias: Option<&[f32]>, out: &mut [f32]) {
        debug_assert_eq!(x.len(), self.cols);
        let p = ActivationScale::of(x);
        let qx: Vec<u8> = x.iter().map(|&a| p.quantize(a)).collect();
        for (i, r) in rows.enumerate() {
            let sum: i32 = qx
                .iter()
                .zip(self.row(r))
                .map(|(&a, &w)| a as i32 * w as i32)
                .sum();
            let value = dequantize(sum, p.zero_point, self.sums[r], p.scale, self.scales[r]);
            out[i] = bias.map_or(0.0, |b| b[i]) + value;
        }
    }
}

/// One layer-direction's matrices in int8.
#[derive(Clone, Debug)]
pub struct Int8Layer {
    /// `W_ih`, `[G·H, in]`.
    pub w_ih: Int8Matrix,
    /// `W_hh`, `[G·H, Hout]`.
    pub w_hh: Int8Matrix,
    /// LSTM projection `W_hr`, `[Hout, H]`.
    pub w_hr: Option<Int8Matrix>,
}

impl Int8Layer {
    /// Quantizes one layer-direction's weights (biases stay f32).
    pub fn new(w: &LayerWeights<f32>, layer: usize, direction: usize) -> Result<Self> {
        let matrix = |t: &crate::Tensor<f32>, kind: ParamKind| {
            let shape = t.shape();
            Int8Matrix::quantize(t.data(), shape[0], shape[1], &param_name(kind, layer, direction))
        };
        Ok(Int8Layer {
            w_ih: matrix(&w.weight_ih, ParamKind::WeightIh)?,
            w_hh: matrix(&w.weight_hh, ParamKind::WeightHh)?,
            w_hr: w
                .weight_hr
                .as_ref()
                .map(|t| matrix(t, ParamKind::WeightHr))
                .transpose()?,
        })
    }

    /// Every layer-direction of `weights`, in the order of [`Weights::layer`]
    /// (layer-major, then direction).
    pub fn all(weights: &Weights<f32>) -> Result<Vec<Int8Layer>> {
        let config = weights.config();
        let mut layers = Vec::new();
        for layer in 0..config.num_layers {
            for direction in 0..config.num_directions() {
                layers.push(Int8Layer::new(
                    weights.layer(layer, direction)?,
                    layer,
                    direction,
                )?);
            }
        }
        Ok(layers)
    }
}

/// `w` rounded to the nearest f16, as an f32; an error names the weight
/// when it is beyond f16's range (it would become infinite).
pub fn round_to_f16(w: f32, what: impl FnOnce() -> String) -> Result<f32> {
    let rounded = half::f16::from_f32(w).to_f32();
    if rounded.is_infinite() && w.is_finite() {
        return Err(Error::Unsupported(format!(
            "{}: {w} is beyond f16's range (±65504); use f32 or int8",
            what()
        )));
    }
    Ok(rounded)
}

/// `weights` with every weight matrix rounded to f16 (biases stay f32): the
/// values an f16 model computes with.
pub fn f16_weights(weights: &Weights<f32>) -> Result<Weights<f32>> {
    let mut rounded = weights.clone();
    for (name, tensor) in rounded.named_parameters_mut() {
        if !name.starts_with("weight_") {
            continue;
        }
        for (i, w) in tensor.data_mut().iter_mut().enumerate() {
            *w = round_to_f16(*w, || format!("{name}[{i}]"))?;
        }
    }
    Ok(rounded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_names_round_trip() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        let err = "bf8".parse::<Precision>().unwrap_err().to_string();
        assert!(err.contains("bf8") && err.contains("int8"), "{err}");
    }

    #[test]
    fn activation_codes_cover_the_row_and_keep_zero_exact() {
        let row = [-1.0f32, -0.25, 0.0, 0.5, 3.0];
        let p = ActivationScale::of(&row);
        assert_eq!(p.scale, 4.0 / 255.0);
        let codes: Vec<u8> = row.iter().map(|&a| p.quantize(a)).collect();
        assert_eq!(codes[0], 0);
        assert_eq!(codes[4], 255);
        assert_eq!(codes[2] as i32, p.zero_point);
        for (&a, &q) in row.iter().zip(&codes) {
            let back = (q as i32 - p.zero_point) as f32 * p.scale;
            assert!((back - a).abs() <= p.scale / 2.0 + 1e-6, "{a} -> {q} -> {back}");
        }
        // All positive: the range still starts at 0.
        let p = ActivationScale::of(&[0.5, 1.0]);
        assert_eq!(p.zero_point, 0);
    }

    #[test]
    fn degenerate_rows_are_defined() {
        let zeros = ActivationScale::of(&[0.0; 8]);
        assert_eq!((zeros.scale, zeros.zero_point), (1.0, 0));
        assert_eq!(zeros.quantize(0.0), 0);
        let nan = ActivationScale::of(&[1.0, f32::NAN]);
        assert!(nan.scale.is_nan());
        assert_eq!(nan.quantize(1.0), 0);
        assert!(dequantize(5, 0, 3, nan.scale, 0.1).is_nan());
        assert!(ActivationScale::of(&[f32::INFINITY]).scale.is_nan());
        assert!(weight_scale(&[1.0, f32::NAN]).is_nan());
        assert_eq!(weight_scale(&[0.0, -0.0]), 1.0);
    }

    #[test]
    fn weight_rows_are_symmetric_per_row() {
        let w = [0.5f32, -1.27, 0.01, 2.54, 0.0, -2.54];
        let m = Int8Matrix::quantize(&w, 2, 3, "w").unwrap();
        assert_eq!(m.row(0), &[50, -127, 1]);
        assert_eq!(m.row(1), &[127, 0, -127]);
        assert_eq!(m.sums, vec![-76, 0]);
        assert_eq!(m.scales, vec![1.27 / 127.0, 2.54 / 127.0]);
    }

    #[test]
    fn an_int8_affine_is_close_to_f32() {
        let (rows, cols) = (5, 37);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let x: Vec<f32> = (0..cols).map(|i| ((i * 31) % 17) as f32 / 8.0 - 0.7).collect();
        let m = Int8Matrix::quantize(&w, rows, cols, "w").unwrap();
        let bias = [0.5f32; 5];
        let mut out = [0.0f32; 5];
        m.affine(&x, 0..rows, Some(&bias), &mut out);
        for r in 0..rows {
            let exact: f32 = 0.5
                + w[r * cols..(r + 1) * cols]
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| a * b)
                    .sum::<f32>();
            assert!((out[r] - exact).abs() < 0.05, "row {r}: {} vs {exact}", out[r]);
        }
    }

    #[test]
    fn f16_rounding_names_a_weight_out_of_range() {
        assert_eq!(round_to_f16(1.0 + 1e-4, String::new).unwrap(), 1.0);
        let err = round_to_f16(1e6, || "weight_hh_l0[3]".into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("weight_hh_l0[3]") && err.contains("65504"), "{err}");
    }
}
