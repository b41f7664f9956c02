//! Inter-layer dropout in training, as PyTorch applies it: on the output of
//! every layer but the last, each element zeroed with probability `p` and
//! the rest scaled by `1/(1-p)`.
//!
//! The mask comes from a counter-based generator: whether element
//! `(t, b, col)` of layer `l`'s output is kept is a pure function of
//! `(seed, l, (t*B + b)*W + col)`. Forward and backward (and the CPU and a
//! GPU) recompute the same mask without storing it, and a run is
//! reproducible from its seed. (PyTorch's own masks come from its RNG state,
//! so they cannot be matched bit for bit; the distribution is the same.)

/// SplitMix64's finaliser: a bijective 64-bit mix with full avalanche.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in `[0, 1)` for one element.
pub fn uniform(seed: u64, layer: usize, index: u64) -> f64 {
    let key = mix(seed ^ mix(layer as u64 ^ 0xD1B5_4A32_D192_ED03));
    (mix(key.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15))) >> 11) as f64
        * (1.0 / (1u64 << 53) as f64)
}

/// The factor element `index` of layer `layer`'s output is multiplied by:
/// 0 (dropped) or `1/(1-p)` (kept).
pub fn factor(p: f64, seed: u64, layer: usize, index: u64) -> f64 {
    if p >= 1.0 {
        0.0
    } else if p <= 0.0 || uniform(seed, layer, index) >= p {
        1.0 / (1.0 - p)
    } else {
        0.0
    }
}

/// The dropout of one training run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// The probability of dropping an element.
    pub p: f64,
    /// The seed the masks are drawn from.
    pub seed: u64,
}

impl Dropout {
    /// Multiplies a layer's output by its mask. The output is `[B, T, W]`
    /// when `batch_major`, else `[T, B, W]`; the mask's indices are
    /// time-major, `(t*B + b)*W + col`, whatever the storage.
    pub fn apply<T: crate::Element>(
        &self,
        layer: usize,
        data: &mut [T],
        seq_len: usize,
        batch: usize,
        width: usize,
        batch_major: bool,
    ) {
        for b in 0..batch {
            for t in 0..seq_len {
                let stored = if batch_major {
                    b * seq_len + t
                } else {
                    t * batch + b
                };
                self.apply_row(
                    layer,
                    (t, b),
                    batch,
                    width,
                    0,
                    &mut data[stored * width..][..width],
                );
            }
        }
    }

    /// Multiplies columns `first_col..` of row `(t, b)` of layer `layer`'s
    /// output (`width` wide, `batch` rows a step) by their mask factors.
    pub fn apply_row<T: crate::Element>(
        &self,
        layer: usize,
        (t, b): (usize, usize),
        batch: usize,
        width: usize,
        first_col: usize,
        values: &mut [T],
    ) {
        let base = ((t * batch + b) * width + first_col) as u64;
        for (col, v) in values.iter_mut().enumerate() {
            *v = *v * T::from_f64(factor(self.p, self.seed, layer, base + col as u64));
        }
    }
}
