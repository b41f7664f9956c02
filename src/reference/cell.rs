//! One timestep of one cell for one batch row: the formulas of DESIGN §2,
//! written once. [`CellStep::activations`] computes everything a step
//! produces; the forward pass applies it ([`CellStep::advance`]) and the
//! backward pass differentiates it ([`CellStep::backward`]).

// Gate math reads several gate blocks at one hidden unit `j`; an index says
// that more plainly than zipped iterators.
#![allow(clippy::needless_range_loop)]

use crate::config::{CellKind, RnnConfig};
use crate::element::Element;
use crate::quant::Int8Layer;
use crate::weights::LayerWeights;

/// `out[r] = bias[r] + Σ_k w[r, k] * x[k]` for a row-major `w` of `out.len()` rows.
pub(crate) fn affine<T: Element>(w: &[T], x: &[T], bias: Option<&[T]>, out: &mut [T]) {
    let cols = x.len();
    debug_assert_eq!(w.len(), out.len() * cols);
    for (r, (o, row)) in out.iter_mut().zip(w.chunks_exact(cols)).enumerate() {
        let b = bias.map_or(T::zero(), |b| b[r]);
        *o = b + dot(row, x);
    }
}

/// `out[k] += Σ_r w[r, k] * v[r]`: the transposed product, for gradients.
pub(crate) fn affine_transposed_add<T: Element>(w: &[T], v: &[T], out: &mut [T]) {
    let cols = out.len();
    for (row, &vr) in w.chunks_exact(cols).zip(v) {
        for (o, &wk) in out.iter_mut().zip(row) {
            *o = *o + wk * vr;
        }
    }
}

/// `w[r, k] += v[r] * x[k]`: an outer-product update, for weight gradients.
pub(crate) fn outer_add<T: Element>(w: &mut [T], v: &[T], x: &[T]) {
    for (row, &vr) in w.chunks_exact_mut(x.len()).zip(v) {
        for (wk, &xk) in row.iter_mut().zip(x) {
            *wk = *wk + vr * xk;
        }
    }
}

/// A dot product with four independent partial sums, so that the compiler can
/// keep several multiply-adds in flight (the order is fixed: results are
/// deterministic).
fn dot<T: Element>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 4];
    let (a4, a_rest) = a.split_at(a.len() / 4 * 4);
    let (b4, b_rest) = b.split_at(a4.len());
    for (ca, cb) in a4.chunks_exact(4).zip(b4.chunks_exact(4)) {
        for i in 0..4 {
            acc[i] = acc[i] + ca[i] * cb[i];
        }
    }
    let tail: T = a_rest.iter().zip(b_rest).map(|(&x, &y)| x * y).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// What one step computes, kept for the state update and for backward.
pub(crate) struct Scratch<T> {
    /// `W_ih x + b_ih`, `[G*H]`
    gi: Vec<T>,
    /// `W_hh h + b_hh`, `[G*H]` (original GRU: the `n` rows use `r ⊙ h`)
    gh: Vec<T>,
    /// Gate activations, `[G*H]`: LSTM `i, f, g, o`; GRU `r, z, n`; RNN `h'`.
    act: Vec<T>,
    /// LSTM: the new cell state `c'`, `[H]`
    c_new: Vec<T>,
    /// The new hidden state before any projection, `[H]`
    h_new: Vec<T>,
    /// Original GRU: `r ⊙ h`, `[H]`
    reset_h: Vec<T>,
    /// Backward: gradients of the pre-activations, `[G*H]` each.
    d_gi: Vec<T>,
    d_gh: Vec<T>,
    /// Backward: gradient of `h_new` (after the projection's transpose), `[H]`
    d_h_new: Vec<T>,
}

/// Gradients of one layer-direction's parameters, in their PyTorch shapes.
pub(crate) struct ParamGrads<T> {
    pub w_ih: Vec<T>,
    pub w_hh: Vec<T>,
    pub b_ih: Vec<T>,
    pub b_hh: Vec<T>,
    pub w_hr: Vec<T>,
}

/// One layer-direction's weights with the configuration they need.
pub(crate) struct CellStep<'w, T> {
    cell: CellKind,
    hidden: usize,
    linear_before_reset: bool,
    weights: &'w LayerWeights<T>,
    /// The int8 scheme's matrices: products then quantize their input row
    /// and sum in integers (`crate::quant`); biases and gates stay as they are.
    int8: Option<&'w Int8Layer>,
}

/// Which weight matrix a product multiplies by.
#[derive(Clone, Copy)]
enum Matrix {
    Ih,
    Hh,
    Hr,
}

impl<'w, T: Element> CellStep<'w, T> {
    pub(crate) fn new(config: &RnnConfig, weights: &'w LayerWeights<T>) -> Self {
        CellStep {
            cell: config.cell,
            hidden: config.hidden_size,
            linear_before_reset: config.gru_linear_before_reset,
            weights,
            int8: None,
        }
    }

    /// The same step under the int8 scheme.
    pub(crate) fn int8(mut self, layer: Option<&'w Int8Layer>) -> Self {
        self.int8 = layer;
        self
    }

    /// `out = bias + W[rows] · x` for the given matrix's rows `rows`: in
    /// `T`, or under the int8 scheme when the step has one.
    fn product(&self, m: Matrix, rows: std::ops::Range<usize>, x: &[T], bias: Option<&[T]>, out: &mut [T]) {
        let w = self.weights;
        let Some(q) = self.int8 else {
            let f = match m {
                Matrix::Ih => &w.weight_ih,
                Matrix::Hh => &w.weight_hh,
                Matrix::Hr => w.weight_hr.as_ref().expect("a projecting layer has W_hr"),
            };
            let cols = x.len();
            return affine(&f.data()[rows.start * cols..rows.end * cols], x, bias, out);
        };
        let q = match m {
            Matrix::Ih => &q.w_ih,
            Matrix::Hh => &q.w_hh,
            Matrix::Hr => q.w_hr.as_ref().expect("a projecting layer has W_hr"),
        };
        let x32: Vec<f32> = x.iter().map(|v| v.as_f64() as f32).collect();
        let b32: Option<Vec<f32>> = bias.map(|b| b.iter().map(|v| v.as_f64() as f32).collect());
        let mut o32 = vec![0.0f32; out.len()];
        q.affine(&x32, rows, b32.as_deref(), &mut o32);
        for (o, v) in out.iter_mut().zip(o32) {
            *o = T::from_f64(v as f64);
        }
    }

    /// `G*H`: the rows of the gate products.
    pub(crate) fn rows(&self) -> usize {
        self.cell.gates() * self.hidden
    }

    pub(crate) fn scratch(&self) -> Scratch<T> {
        let (rows, h) = (self.rows(), self.hidden);
        let zeros = |n| vec![T::zero(); n];
        Scratch {
            gi: zeros(rows),
            gh: zeros(rows),
            act: zeros(rows),
            c_new: zeros(h),
            h_new: zeros(h),
            reset_h: zeros(h),
            d_gi: zeros(rows),
            d_gh: zeros(rows),
            d_h_new: zeros(h),
        }
    }

    pub(crate) fn param_grads(&self) -> ParamGrads<T> {
        let w = self.weights;
        let zeros = |t: Option<&crate::Tensor<T>>| vec![T::zero(); t.map_or(0, |t| t.len())];
        ParamGrads {
            w_ih: zeros(Some(&w.weight_ih)),
            w_hh: zeros(Some(&w.weight_hh)),
            b_ih: zeros(w.bias_ih.as_ref()),
            b_hh: zeros(w.bias_hh.as_ref()),
            w_hr: zeros(w.weight_hr.as_ref()),
        }
    }

    /// Computes one step from `x` (`[in]`), `h` (`[Hout]`) and, for an LSTM,
    /// `c` (`[H]`) into `s`, without changing the state.
    pub(crate) fn activations(&self, x: &[T], h: &[T], c: &[T], s: &mut Scratch<T>) {
        let w = self.weights;
        let hn = self.hidden;
        let b_ih = w.bias_ih.as_ref().map(|b| b.data());
        let b_hh = w.bias_hh.as_ref().map(|b| b.data());
        let rows = self.rows();
        self.product(Matrix::Ih, 0..rows, x, b_ih, &mut s.gi);
        match self.cell {
            CellKind::RnnTanh | CellKind::RnnRelu => {
                self.product(Matrix::Hh, 0..rows, h, b_hh, &mut s.gh);
                for j in 0..hn {
                    let pre = s.gi[j] + s.gh[j];
                    s.act[j] = if self.cell == CellKind::RnnTanh {
                        pre.tanh()
                    } else {
                        pre.max(T::zero())
                    };
                    s.h_new[j] = s.act[j];
                }
            }
            CellKind::Lstm => {
                self.product(Matrix::Hh, 0..rows, h, b_hh, &mut s.gh);
                for gate in 0..4 {
                    for j in 0..hn {
                        let pre = s.gi[gate * hn + j] + s.gh[gate * hn + j];
                        s.act[gate * hn + j] = if gate == 2 { pre.tanh() } else { pre.sigmoid() };
                    }
                }
                for j in 0..hn {
                    let (i, f, g, o) = (s.act[j], s.act[hn + j], s.act[2 * hn + j], s.act[3 * hn + j]);
                    s.c_new[j] = f * c[j] + i * g;
                    s.h_new[j] = o * s.c_new[j].tanh();
                }
            }
            CellKind::Gru => {
                if self.linear_before_reset {
                    self.product(Matrix::Hh, 0..rows, h, b_hh, &mut s.gh);
                } else {
                    // r and z first; the candidate's product needs r.
                    self.product(
                        Matrix::Hh,
                        0..2 * hn,
                        h,
                        b_hh.map(|b| &b[..2 * hn]),
                        &mut s.gh[..2 * hn],
                    );
                }
                for j in 0..2 * hn {
                    s.act[j] = (s.gi[j] + s.gh[j]).sigmoid();
                }
                if !self.linear_before_reset {
                    for j in 0..hn {
                        s.reset_h[j] = s.act[j] * h[j];
                    }
                    self.product(
                        Matrix::Hh,
                        2 * hn..rows,
                        &s.reset_h,
                        b_hh.map(|b| &b[2 * hn..]),
                        &mut s.gh[2 * hn..],
                    );
                }
                for j in 0..hn {
                    let (r, z) = (s.act[j], s.act[hn + j]);
                    let recurrent = if self.linear_before_reset {
                        r * s.gh[2 * hn + j]
                    } else {
                        s.gh[2 * hn + j]
                    };
                    let n = (s.gi[2 * hn + j] + recurrent).tanh();
                    s.act[2 * hn + j] = n;
                    s.h_new[j] = (T::one() - z) * n + z * h[j];
                }
            }
        }
    }

    /// Advances one row by one step: reads `x` (`[in]`), updates `h`
    /// (`[Hout]`) and, for an LSTM, `c` (`[H]`) in place.
    pub(crate) fn advance(&self, x: &[T], h: &mut [T], c: &mut [T], s: &mut Scratch<T>) {
        self.activations(x, h, c, s);
        if self.cell == CellKind::Lstm {
            c.copy_from_slice(&s.c_new);
        }
        match &self.weights.weight_hr {
            Some(_) => self.product(Matrix::Hr, 0..h.len(), &s.h_new, None, h),
            None => h.copy_from_slice(&s.h_new),
        }
    }

    /// Backpropagates one step. Given the step's inputs (`x`, `h_prev`,
    /// `c_prev`) and the gradients of its outputs (`dh` `[Hout]`, `dc` `[H]`),
    /// adds the gradients of `x` to `dx` and of the parameters to `grads`,
    /// and replaces `dh`, `dc` with the gradients of `h_prev`, `c_prev`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward(
        &self,
        x: &[T],
        h_prev: &[T],
        c_prev: &[T],
        dh: &mut [T],
        dc: &mut [T],
        dx: &mut [T],
        grads: &mut ParamGrads<T>,
        s: &mut Scratch<T>,
    ) {
        let w = self.weights;
        let hn = self.hidden;
        let one = T::one();
        self.activations(x, h_prev, c_prev, s);
        // Through the projection: h = W_hr h_new.
        match &w.weight_hr {
            Some(w_hr) => {
                outer_add(&mut grads.w_hr, dh, &s.h_new);
                s.d_h_new.iter_mut().for_each(|v| *v = T::zero());
                affine_transposed_add(w_hr.data(), dh, &mut s.d_h_new);
            }
            None => s.d_h_new.copy_from_slice(dh),
        }
        let dhn = &s.d_h_new;
        // d_gi, d_gh: gradients of the input and recurrent pre-activations;
        // `direct`: the part of dh_prev that bypasses W_hh (GRU's z ⊙ h).
        let mut direct_z = false;
        match self.cell {
            CellKind::RnnTanh | CellKind::RnnRelu => {
                for j in 0..hn {
                    let a = s.act[j];
                    let slope = if self.cell == CellKind::RnnTanh {
                        one - a * a
                    } else if a > T::zero() {
                        one
                    } else {
                        T::zero()
                    };
                    s.d_gi[j] = dhn[j] * slope;
                }
                s.d_gh.copy_from_slice(&s.d_gi);
            }
            CellKind::Lstm => {
                for j in 0..hn {
                    let (i, f, g, o) = (s.act[j], s.act[hn + j], s.act[2 * hn + j], s.act[3 * hn + j]);
                    let tc = s.c_new[j].tanh();
                    let dc_total = dc[j] + dhn[j] * o * (one - tc * tc);
                    s.d_gi[j] = dc_total * g * i * (one - i);
                    s.d_gi[hn + j] = dc_total * c_prev[j] * f * (one - f);
                    s.d_gi[2 * hn + j] = dc_total * i * (one - g * g);
                    s.d_gi[3 * hn + j] = dhn[j] * tc * o * (one - o);
                    dc[j] = dc_total * f;
                }
                s.d_gh.copy_from_slice(&s.d_gi);
            }
            CellKind::Gru => {
                direct_z = true;
                for j in 0..hn {
                    let (r, z, n) = (s.act[j], s.act[hn + j], s.act[2 * hn + j]);
                    let dn_pre = dhn[j] * (one - z) * (one - n * n);
                    let dz_pre = dhn[j] * (h_prev[j] - n) * z * (one - z);
                    s.d_gi[hn + j] = dz_pre;
                    s.d_gi[2 * hn + j] = dn_pre;
                    if self.linear_before_reset {
                        // n = tanh(gi_n + r ⊙ gh_n): gh_n is W_hn h + b_hn.
                        s.d_gi[j] = dn_pre * s.gh[2 * hn + j] * r * (one - r);
                        s.d_gh[2 * hn + j] = dn_pre * r;
                    } else {
                        s.d_gh[2 * hn + j] = dn_pre; // r's gradient needs W_hnᵀ dn: below
                    }
                    s.d_gh[hn + j] = dz_pre;
                }
                if !self.linear_before_reset {
                    // n = tanh(gi_n + W_hn (r ⊙ h) + b_hn): d(r ⊙ h) = W_hnᵀ dn.
                    let w_hn = &w.weight_hh.data()[2 * hn * hn..];
                    s.reset_h.iter_mut().for_each(|v| *v = T::zero());
                    affine_transposed_add(w_hn, &s.d_gh[2 * hn..], &mut s.reset_h);
                    for j in 0..hn {
                        let r = s.act[j];
                        s.d_gi[j] = s.reset_h[j] * h_prev[j] * r * (one - r);
                    }
                }
                for j in 0..hn {
                    s.d_gh[j] = s.d_gi[j];
                }
            }
        }

        // Parameter gradients and dx.
        outer_add(&mut grads.w_ih, &s.d_gi, x);
        affine_transposed_add(w.weight_ih.data(), &s.d_gi, dx);
        if !grads.b_ih.is_empty() {
            add(&mut grads.b_ih, &s.d_gi);
            add(&mut grads.b_hh, &s.d_gh);
        }
        let w_hh = w.weight_hh.data();
        let original_gru = self.cell == CellKind::Gru && !self.linear_before_reset;
        let mut dh_prev = vec![T::zero(); h_prev.len()];
        if original_gru {
            // The r and z rows saw h; the n rows saw r ⊙ h (recomputed here).
            outer_add(&mut grads.w_hh[..2 * hn * hn], &s.d_gh[..2 * hn], h_prev);
            affine_transposed_add(&w_hh[..2 * hn * hn], &s.d_gh[..2 * hn], &mut dh_prev);
            let rh: Vec<T> = (0..hn).map(|j| s.act[j] * h_prev[j]).collect();
            outer_add(&mut grads.w_hh[2 * hn * hn..], &s.d_gh[2 * hn..], &rh);
            for j in 0..hn {
                dh_prev[j] = dh_prev[j] + s.reset_h[j] * s.act[j];
            }
        } else {
            outer_add(&mut grads.w_hh, &s.d_gh, h_prev);
            affine_transposed_add(w_hh, &s.d_gh, &mut dh_prev);
        }
        if direct_z {
            for j in 0..hn {
                dh_prev[j] = dh_prev[j] + dhn[j] * s.act[hn + j];
            }
        }
        dh.copy_from_slice(&dh_prev);
    }
}

fn add<T: Element>(acc: &mut [T], v: &[T]) {
    for (a, &b) in acc.iter_mut().zip(v) {
        *a = *a + b;
    }
}
