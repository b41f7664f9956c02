//! One timestep of one cell for one batch row: the formulas of DESIGN §2,
//! written once, used by every CPU entry point.

// Gate math reads several gate blocks at one hidden unit `j`; an index says
// that more plainly than zipped iterators.
#![allow(clippy::needless_range_loop)]

use crate::config::{CellKind, RnnConfig};
use crate::element::Element;
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

/// Reusable buffers for [`CellStep::advance`], sized once per layer.
pub(crate) struct Scratch<T> {
    /// `W_ih x + b_ih`, `[G*H]`
    gi: Vec<T>,
    /// `W_hh h + b_hh`, `[G*H]`
    gh: Vec<T>,
    /// The new hidden state before projection, `[H]`
    h_new: Vec<T>,
    /// `r ⊙ h` for the original GRU, `[H]`
    reset_h: Vec<T>,
}

/// One layer-direction's weights with the configuration they need.
pub(crate) struct CellStep<'w, T> {
    cell: CellKind,
    hidden: usize,
    linear_before_reset: bool,
    weights: &'w LayerWeights<T>,
}

impl<'w, T: Element> CellStep<'w, T> {
    pub(crate) fn new(config: &RnnConfig, weights: &'w LayerWeights<T>) -> Self {
        CellStep {
            cell: config.cell,
            hidden: config.hidden_size,
            linear_before_reset: config.gru_linear_before_reset,
            weights,
        }
    }

    /// `G*H`: the rows of the gate products.
    pub(crate) fn rows(&self) -> usize {
        self.cell.gates() * self.hidden
    }

    pub(crate) fn scratch(&self) -> Scratch<T> {
        let rows = self.rows();
        Scratch {
            gi: vec![T::zero(); rows],
            gh: vec![T::zero(); rows],
            h_new: vec![T::zero(); self.hidden],
            reset_h: vec![T::zero(); self.hidden],
        }
    }

    /// Advances one row by one step: reads `x` (`[in]`), updates `h`
    /// (`[Hout]`) and, for an LSTM, `c` (`[H]`) in place.
    pub(crate) fn advance(&self, x: &[T], h: &mut [T], c: &mut [T], s: &mut Scratch<T>) {
        let w = self.weights;
        let hn = self.hidden;
        let b_ih = w.bias_ih.as_ref().map(|b| b.data());
        let b_hh = w.bias_hh.as_ref().map(|b| b.data());
        affine(w.weight_ih.data(), x, b_ih, &mut s.gi);
        match self.cell {
            CellKind::RnnTanh | CellKind::RnnRelu => {
                affine(w.weight_hh.data(), h, b_hh, &mut s.gh);
                for (j, out) in h.iter_mut().enumerate() {
                    let pre = s.gi[j] + s.gh[j];
                    *out = if self.cell == CellKind::RnnTanh {
                        pre.tanh()
                    } else {
                        pre.max(T::zero())
                    };
                }
            }
            CellKind::Lstm => {
                affine(w.weight_hh.data(), h, b_hh, &mut s.gh);
                let pre = |gate: usize, j: usize| s.gi[gate * hn + j] + s.gh[gate * hn + j];
                for j in 0..hn {
                    let i = pre(0, j).sigmoid();
                    let f = pre(1, j).sigmoid();
                    let g = pre(2, j).tanh();
                    let o = pre(3, j).sigmoid();
                    c[j] = f * c[j] + i * g;
                    s.h_new[j] = o * c[j].tanh();
                }
                match &w.weight_hr {
                    Some(w_hr) => affine(w_hr.data(), &s.h_new, None, h),
                    None => h.copy_from_slice(&s.h_new),
                }
            }
            CellKind::Gru => {
                let w_hh = w.weight_hh.data();
                if self.linear_before_reset {
                    affine(w_hh, h, b_hh, &mut s.gh);
                } else {
                    // r and z first; the candidate's product needs r.
                    affine(
                        &w_hh[..2 * hn * hn],
                        h,
                        b_hh.map(|b| &b[..2 * hn]),
                        &mut s.gh[..2 * hn],
                    );
                }
                for j in 0..hn {
                    let r = (s.gi[j] + s.gh[j]).sigmoid();
                    s.reset_h[j] = r * h[j];
                    // z is kept in h_new until the candidate is known.
                    s.h_new[j] = (s.gi[hn + j] + s.gh[hn + j]).sigmoid();
                    if self.linear_before_reset {
                        s.gh[2 * hn + j] = r * s.gh[2 * hn + j];
                    }
                }
                if !self.linear_before_reset {
                    affine(
                        &w_hh[2 * hn * hn..],
                        &s.reset_h,
                        b_hh.map(|b| &b[2 * hn..]),
                        &mut s.gh[2 * hn..],
                    );
                }
                for j in 0..hn {
                    let z = s.h_new[j];
                    let n = (s.gi[2 * hn + j] + s.gh[2 * hn + j]).tanh();
                    h[j] = (T::one() - z) * n + z * h[j];
                }
            }
        }
    }
}
