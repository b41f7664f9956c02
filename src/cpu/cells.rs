//! The epilogues of the fast path's products: what happens to a tile row's
//! sums while they are still in registers. One per cell for the forward step
//! (DESIGN §2's formulas, the same as `reference/cell.rs`, on `L` hidden
//! units at a time), and one general store for every other product.
//!
//! Column spaces are padded: each gate block of `G·Hp` gate columns is `Hp`
//! wide (`H` rounded up to the vector width), and so is every state row.
//! Padded units have zero weights, zero bias and a zero state, so they stay
//! exactly zero and never feed a real unit.

use super::kernel::Epilogue;
use super::simd::{sigmoid, sigmoid_denominator, tanh, tanh_fraction, Simd};

/// Where one live row of a recurrent step reads and writes.
#[derive(Clone, Copy, Debug)]
pub struct LiveRow {
    /// This step's input projection, bias folded in, `[G·Hp]`.
    pub gi: *const f32,
    /// `h_{t-1}`, `[Hout_p]`: also the product's row.
    pub h_prev: *const f32,
    /// The new `h` (before the projection, when there is one), `[Hp]`.
    pub h_next: *mut f32,
    /// LSTM: the cell state, updated in place. Original GRU: `z`. `[Hp]`.
    pub state: *mut f32,
    /// Original GRU: `r ⊙ h_{t-1}`, the second product's row, `[Hp]`.
    pub reset_h: *mut f32,
    /// Training only, else null: the gate activations, `[G·Hp]`.
    pub act: *mut f32,
    /// Training only, else null: LSTM `c_t`; GRU `W_hn h + b_hn`. `[Hp]`.
    pub extra: *mut f32,
}

// SAFETY: the pointers of a LiveRow address rows of buffers that a step
// partitions between threads (each column of each row is written by one
// thread), as forward.rs documents.
unsafe impl Send for LiveRow {}
unsafe impl Sync for LiveRow {}

/// LSTM step, gate panels (`i, f, g, o` for `L` units):
/// `c' = σ(f)c + σ(i)tanh(g)`, `h' = σ(o)tanh(c')`.
pub struct LstmStep<'a> {
    pub rows: &'a [LiveRow],
    pub hidden_padded: usize,
}

impl<S: Simd> Epilogue<S, 4> for LstmStep<'_> {
    #[inline(always)]
    unsafe fn apply(&self, s: S, row: usize, panel: usize, acc: &[S::V; 4]) {
        let r = &self.rows[row];
        let (u, hp) = (panel * S::LANES, self.hidden_padded);
        // SAFETY: the row's buffers are [G·Hp] / [Hp] wide and u + L <= Hp.
        unsafe {
            let pre = |g: usize| s.add(acc[g], s.load(r.gi.add(g * hp + u)));
            // σ(i) tanh(g) and σ(o) tanh(c') with one division each:
            // σ(a) tanh(b) = (e^2b - 1) / ((1 + e^-a)(e^2b + 1)).
            let (i_den, (g_num, g_den)) = (sigmoid_denominator(s, pre(0)), tanh_fraction(s, pre(2)));
            let f = sigmoid(s, pre(1));
            let c = s.fma(f, s.load(r.state.add(u)), s.div(g_num, s.mul(i_den, g_den)));
            s.store(r.state.add(u), c);
            let (o_den, (c_num, c_den)) = (sigmoid_denominator(s, pre(3)), tanh_fraction(s, c));
            s.store(r.h_next.add(u), s.div(c_num, s.mul(o_den, c_den)));
            if !r.act.is_null() {
                // Training: the activations for the backward pass, from the same terms.
                let one = s.splat(1.0);
                let activations = [s.div(one, i_den), f, s.div(g_num, g_den), s.div(one, o_den)];
                for (gate, v) in activations.into_iter().enumerate() {
                    s.store(r.act.add(gate * hp + u), v);
                }
                s.store(r.extra.add(u), c);
            }
        }
    }
}

/// GRU step (linear before reset, PyTorch's), gate panels (`r, z, n`):
/// `n = tanh(gi_n + r ⊙ (W_hn h + b_hn))`, `h' = (1 - z) n + z h`.
pub struct GruStep<'a> {
    pub rows: &'a [LiveRow],
    pub hidden_padded: usize,
    /// `b_hn`, `[Hp]`.
    pub b_hn: *const f32,
}

// SAFETY: `b_hn` is only read (the rows: see LiveRow).
unsafe impl Sync for GruStep<'_> {}

impl<S: Simd> Epilogue<S, 3> for GruStep<'_> {
    #[inline(always)]
    unsafe fn apply(&self, s: S, row: usize, panel: usize, acc: &[S::V; 3]) {
        let r = &self.rows[row];
        let (u, hp) = (panel * S::LANES, self.hidden_padded);
        // SAFETY: as for LstmStep.
        unsafe {
            let reset = sigmoid(s, s.add(acc[0], s.load(r.gi.add(u))));
            let update = sigmoid(s, s.add(acc[1], s.load(r.gi.add(hp + u))));
            let gh_n = s.add(acc[2], s.load(self.b_hn.add(u)));
            let n = tanh(s, s.fma(reset, gh_n, s.load(r.gi.add(2 * hp + u))));
            let h = s.load(r.h_prev.add(u));
            s.store(r.h_next.add(u), s.fma(update, s.sub(h, n), n));
            if !r.act.is_null() {
                s.store(r.act.add(u), reset);
                s.store(r.act.add(hp + u), update);
                s.store(r.act.add(2 * hp + u), n);
                s.store(r.extra.add(u), gh_n);
            }
        }
    }
}

/// Original GRU, first product: gate panels of `r, z` only. Keeps `z` and
/// writes `r ⊙ h`, the row of the second product.
pub struct GruOriginalGates<'a> {
    pub rows: &'a [LiveRow],
    pub hidden_padded: usize,
}

impl<S: Simd> Epilogue<S, 2> for GruOriginalGates<'_> {
    #[inline(always)]
    unsafe fn apply(&self, s: S, row: usize, panel: usize, acc: &[S::V; 2]) {
        let r = &self.rows[row];
        let (u, hp) = (panel * S::LANES, self.hidden_padded);
        // SAFETY: as for LstmStep.
        unsafe {
            let reset = sigmoid(s, s.add(acc[0], s.load(r.gi.add(u))));
            let update = sigmoid(s, s.add(acc[1], s.load(r.gi.add(hp + u))));
            s.store(r.state.add(u), update);
            let reset_h = s.mul(reset, s.load(r.h_prev.add(u)));
            s.store(r.reset_h.add(u), reset_h);
            if !r.act.is_null() {
                s.store(r.act.add(u), reset);
                s.store(r.act.add(hp + u), update);
                s.store(r.extra.add(u), reset_h);
            }
        }
    }
}

/// Original GRU, second product (`W_hn (r ⊙ h)`, plain panels over units):
/// `n = tanh(gi_n + W_hn (r ⊙ h) + b_hn)` (both biases in `gi_n`),
/// `h' = (1 - z) n + z h`.
pub struct GruOriginalCandidate<'a> {
    pub rows: &'a [LiveRow],
    pub hidden_padded: usize,
}

impl<S: Simd, const NV: usize> Epilogue<S, NV> for GruOriginalCandidate<'_> {
    #[inline(always)]
    unsafe fn apply(&self, s: S, row: usize, panel: usize, acc: &[S::V; NV]) {
        let r = &self.rows[row];
        let hp = self.hidden_padded;
        for (v, &sum) in acc.iter().enumerate() {
            let u = (panel * NV + v) * S::LANES;
            if u >= hp {
                break;
            }
            // SAFETY: u + L <= Hp, within every [Hp] row and the n block.
            unsafe {
                let n = tanh(s, s.add(sum, s.load(r.gi.add(2 * hp + u))));
                let update = s.load(r.state.add(u));
                let h = s.load(r.h_prev.add(u));
                s.store(r.h_next.add(u), s.fma(update, s.sub(h, n), n));
                if !r.act.is_null() {
                    s.store(r.act.add(2 * hp + u), n);
                }
            }
        }
    }
}

/// Vanilla RNN step, plain panels over units: `h' = tanh(pre)` or `relu(pre)`.
pub struct RnnStep<'a> {
    pub rows: &'a [LiveRow],
    pub hidden_padded: usize,
    pub relu: bool,
}

impl<S: Simd, const NV: usize> Epilogue<S, NV> for RnnStep<'_> {
    #[inline(always)]
    unsafe fn apply(&self, s: S, row: usize, panel: usize, acc: &[S::V; NV]) {
        let r = &self.rows[row];
        for (v, &sum) in acc.iter().enumerate() {
            let u = (panel * NV + v) * S::LANES;
            if u >= self.hidden_padded {
                break;
            }
            // SAFETY: u + L <= Hp.
            unsafe {
                let pre = s.add(sum, s.load(r.gi.add(u)));
                let h = if self.relu {
                    s.max_keep_nan(s.zero(), pre)
                } else {
                    tanh(s, pre)
                };
                s.store(r.h_next.add(u), h);
                if !r.act.is_null() {
                    s.store(r.act.add(u), h);
                }
            }
        }
    }
}

/// The general epilogue of plain panels: `out[row][col] = (bias[col]) +
/// (add[row][col]) + (out[row][col] if accumulating) + sum`, for the columns
/// below `limit` (a partial last vector is stored lane by lane, so `out`
/// rows need only `limit` floats).
pub struct StoreRows<'a> {
    pub out: &'a [*mut f32],
    pub limit: usize,
    /// Per column, `[limit]` or more (null: none).
    pub bias: *const f32,
    /// Per row, `[limit]` or more (empty: none).
    pub add: &'a [*const f32],
    pub accumulate: bool,
}

// SAFETY: the pieces of a product share its epilogue and write disjoint
// panels (columns) of its rows; `bias` and `add` are only read.
unsafe impl Sync for StoreRows<'_> {}

impl<S: Simd, const NV: usize> Epilogue<S, NV> for StoreRows<'_> {
    #[inline(always)]
    unsafe fn apply(&self, s: S, row: usize, panel: usize, acc: &[S::V; NV]) {
        let out = self.out[row];
        for (v, &sum) in acc.iter().enumerate() {
            let col = (panel * NV + v) * S::LANES;
            if col >= self.limit {
                break;
            }
            let full = col + S::LANES <= self.limit;
            // SAFETY: full vectors lie below `limit`; a partial one is read
            // and written lane by lane below `limit` only.
            unsafe {
                let load = |p: *const f32| {
                    if full {
                        s.load(p)
                    } else {
                        load_partial(s, p, self.limit - col)
                    }
                };
                let mut value = sum;
                if !self.bias.is_null() {
                    value = s.add(value, load(self.bias.add(col)));
                }
                if !self.add.is_empty() {
                    value = s.add(value, load(self.add[row].add(col)));
                }
                if self.accumulate {
                    value = s.add(value, load(out.add(col)));
                }
                if full {
                    s.store(out.add(col), value);
                } else {
                    store_partial(s, out.add(col), value, self.limit - col);
                }
            }
        }
    }
}

/// The first `n < LANES` floats at `p` in a vector (the rest zero).
///
/// # Safety
/// `p` points to `n` readable floats.
#[inline(always)]
unsafe fn load_partial<S: Simd>(s: S, p: *const f32, n: usize) -> S::V {
    let mut lanes = [0.0f32; 16];
    // SAFETY: n floats readable at p; lanes holds 16 >= LANES.
    unsafe {
        std::ptr::copy_nonoverlapping(p, lanes.as_mut_ptr(), n);
        s.load(lanes.as_ptr())
    }
}

/// Stores the first `n < LANES` lanes of `v` at `p`.
///
/// # Safety
/// `p` points to `n` writable floats.
#[inline(always)]
unsafe fn store_partial<S: Simd>(s: S, p: *mut f32, v: S::V, n: usize) {
    let mut lanes = [0.0f32; 16];
    // SAFETY: lanes holds 16 >= LANES; n floats writable at p.
    unsafe {
        s.store(lanes.as_mut_ptr(), v);
        std::ptr::copy_nonoverlapping(lanes.as_ptr(), p, n);
    }
}
