//! A network's weights packed once for the micro-kernel, per layer and
//! direction, in the padded column spaces of `cells.rs`; and the sizes that
//! padding gives ([`Dims`]).
//!
//! | matrix | panels | K | columns |
//! |---|---|---|---|
//! | `W_ih` (input projection, all steps at once) | plain | `in` | `G·Hp` gate columns |
//! | `W_hh` (the step) | gates (LSTM, GRU), `r, z` gates (original GRU), plain (RNN) | `Hout` | `G·Hp` |
//! | `W_hn` (original GRU's second product) | plain | `H` | `Hp` |
//! | `W_hr` (LSTM projection) | plain | `H` | `Hout_p` |
//! | `W_ih` again (LSTM steps that fuse the projection; packed on first use) | gates | `in` | `G·Hp` |
//!
//! Backward needs the transposes (`W_ihᵀ`, `W_hhᵀ`, `W_hrᵀ`), packed on the
//! first backward from the forward panels.

use super::kernel::{AlignedBuf, Columns, Panels};
use super::simd::Isa;
use crate::config::{CellKind, RnnConfig};
use crate::error::Result;
use crate::quant::Precision;
use crate::weights::{LayerWeights, Weights};
use std::sync::OnceLock;

/// The sizes of a prepared network, padded to the ISA's vector width `L`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub isa: Isa,
    /// The weights' format (f32 for training).
    pub precision: Precision,
    pub lanes: usize,
    pub cell: CellKind,
    /// GRU: PyTorch's "linear before reset" (else the original GRU).
    pub linear_before_reset: bool,
    pub gates: usize,
    /// `H` and `Hp = ⌈H / L⌉·L`.
    pub hidden: usize,
    pub hidden_padded: usize,
    /// `Hout` and `Hout_p`.
    pub out: usize,
    pub out_padded: usize,
    pub dirs: usize,
    pub layers: usize,
    pub input_size: usize,
}

impl Dims {
    pub fn new(config: &RnnConfig, isa: Isa, precision: Precision) -> Self {
        let lanes = isa.lanes();
        Dims {
            isa,
            precision,
            lanes,
            cell: config.cell,
            linear_before_reset: config.gru_linear_before_reset,
            gates: config.gates(),
            hidden: config.hidden_size,
            hidden_padded: config.hidden_size.next_multiple_of(lanes),
            out: config.output_size(),
            out_padded: config.output_size().next_multiple_of(lanes),
            dirs: config.num_directions(),
            layers: config.num_layers,
            input_size: config.input_size,
        }
    }

    /// The rows of one micro-kernel tile of a step's product: a batch
    /// chunk smaller than this leaves the kernel's width idle.
    pub fn step_tile_rows(&self) -> usize {
        self.isa.rows_per_tile(self.gates.max(2))
    }

    /// `G·Hp`: the padded gate columns.
    pub fn gate_width(&self) -> usize {
        self.gates * self.hidden_padded
    }

    /// The width of one step of a layer's output, `D·Hout` (unpadded).
    pub fn out_width(&self) -> usize {
        self.dirs * self.out
    }

    pub fn layer_input(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input_size
        } else {
            self.out_width()
        }
    }

    pub fn projects(&self) -> bool {
        self.out != self.hidden
    }

    /// Whether a step's new `h` is written straight into its output row and
    /// the next step reads it there, instead of living in the state buffers
    /// and being copied to the output after every step. Needs rows without
    /// padding (the epilogue stores whole vectors of `Hp` units) and no
    /// projection (whose product writes `h`, not the cell).
    pub fn h_in_output(&self) -> bool {
        !self.projects() && self.out_padded == self.out
    }

    /// Whether the LSTM cell state can live in `c_n` itself (updated in
    /// place, step by step) instead of a padded buffer copied at the end.
    pub fn c_in_c_n(&self) -> bool {
        self.hidden_padded == self.hidden
    }

    pub fn original_gru(&self) -> bool {
        self.cell == CellKind::Gru && !self.linear_before_reset
    }

    /// The gate and unit of padded gate column `col`, or `None` for padding.
    pub fn gate_unit(&self, col: usize) -> Option<(usize, usize)> {
        let (gate, unit) = (col / self.hidden_padded, col % self.hidden_padded);
        (gate < self.gates && unit < self.hidden).then_some((gate, unit))
    }

    /// PyTorch's row of gate column `col` in `weight_ih`/`weight_hh`/biases.
    pub fn gate_row(&self, col: usize) -> Option<usize> {
        self.gate_unit(col).map(|(g, u)| g * self.hidden + u)
    }
}

/// Vectors per plain panel: 4, or 1 for a column space narrower than that.
fn plain_nv(width: usize, lanes: usize) -> usize {
    if width >= 4 * lanes {
        4
    } else {
        1
    }
}

/// Plain panels of a `K × width` matrix given by `value(k, col)` (`None`
/// past the real columns).
fn plain(dims: &Dims, k: usize, width: usize, value: impl Fn(usize, usize) -> Option<f32>) -> Result<Panels> {
    plain_as(dims.precision, dims, k, width, value)
}

/// [`plain`] in a given precision (backward's transposes are always f32).
fn plain_as(
    precision: Precision,
    dims: &Dims,
    k: usize,
    width: usize,
    value: impl Fn(usize, usize) -> Option<f32>,
) -> Result<Panels> {
    Panels::pack(
        precision,
        k,
        plain_nv(width, dims.lanes),
        dims.lanes,
        width,
        Columns::Plain,
        value,
    )
}

/// One layer-direction's weights, packed.
pub struct PackedLayer {
    pub in_size: usize,
    /// `W_ih`, plain over the gate columns: `x · W_ihᵀ`.
    pub w_ih: Panels,
    /// Per gate column: `b_ih + b_hh` (GRU's `n`: `b_in` only, `b_hn` is
    /// applied inside `r ⊙ (·)`), `[G·Hp]`.
    pub bias: AlignedBuf,
    /// GRU (linear before reset): `b_hn`, `[Hp]`.
    pub b_hn: AlignedBuf,
    /// `W_hh`: the step's product (original GRU: the `r, z` rows only).
    pub w_hh: Panels,
    /// Original GRU: `W_hn`, plain over units.
    pub w_hn: Option<Panels>,
    /// LSTM projection: `W_hr`, plain over `Hout_p`.
    pub w_hr: Option<Panels>,
    backward: OnceLock<BackwardPanels>,
    /// LSTM: `W_ih` in `W_hh`'s gate panels, for steps that fuse the input
    /// projection into the recurrent product; packed on first use.
    w_ih_gates: OnceLock<Panels>,
}

/// The transposed weights backward multiplies by.
pub struct BackwardPanels {
    /// `dgi · W_ih`: K = `G·Hp` gate columns, columns = `in`.
    pub w_ih_t: Panels,
    /// `dgh · W_hh`: K = `G·Hp`, columns = `Hout`.
    pub w_hh_t: Panels,
    /// `dh · W_hr`: K = `Hout`, columns = `H`.
    pub w_hr_t: Option<Panels>,
}

impl PackedLayer {
    pub fn new(dims: &Dims, w: &LayerWeights<f32>) -> Result<Self> {
        let in_size = w.weight_ih.shape()[1];
        let (hp, gate_width) = (dims.hidden_padded, dims.gate_width());
        let w_ih_data = w.weight_ih.data();
        let w_ih = plain(dims, in_size, gate_width, |k, col| {
            dims.gate_row(col).map(|row| w_ih_data[row * in_size + k])
        })?;

        let bias_of = |b: &Option<crate::Tensor<f32>>, row: usize| b.as_ref().map_or(0.0, |b| b.data()[row]);
        let mut bias = AlignedBuf::zeros(gate_width, "the packed weights")?;
        let mut b_hn = AlignedBuf::zeros(hp, "the packed weights")?;
        let gru_lbr = dims.cell == CellKind::Gru && dims.linear_before_reset;
        for col in 0..gate_width {
            let Some((gate, unit)) = dims.gate_unit(col) else {
                continue;
            };
            let row = gate * dims.hidden + unit;
            let recurrent = bias_of(&w.bias_hh, row);
            bias.as_mut_slice()[col] =
                bias_of(&w.bias_ih, row) + if gru_lbr && gate == 2 { 0.0 } else { recurrent };
            if gru_lbr && gate == 2 {
                b_hn.as_mut_slice()[unit] = recurrent;
            }
        }

        let k = dims.out;
        let w_hh_data = w.weight_hh.data();
        let hh = |k_index: usize, col: usize| dims.gate_row(col).map(|row| w_hh_data[row * k + k_index]);
        let gates = |nv: usize| {
            let columns = Columns::Gates { hidden_padded: hp };
            Panels::pack(dims.precision, k, nv, dims.lanes, nv * hp, columns, hh)
        };
        let (w_hh, w_hn) = match dims.cell {
            CellKind::Lstm => (gates(4)?, None),
            CellKind::Gru if dims.linear_before_reset => (gates(3)?, None),
            CellKind::Gru => {
                let n_rows = plain(dims, dims.hidden, hp, |k_index, unit| {
                    (unit < dims.hidden).then(|| w_hh_data[(2 * dims.hidden + unit) * k + k_index])
                })?;
                (gates(2)?, Some(n_rows))
            }
            CellKind::RnnTanh | CellKind::RnnRelu => (plain(dims, k, hp, hh)?, None),
        };
        let w_hr = w
            .weight_hr
            .as_ref()
            .map(|w_hr| {
                let data = w_hr.data();
                plain(dims, dims.hidden, dims.out_padded, |k_index, col| {
                    (col < dims.out).then(|| data[col * dims.hidden + k_index])
                })
            })
            .transpose()?;
        Ok(PackedLayer {
            in_size,
            w_ih,
            bias,
            b_hn,
            w_hh,
            w_hn,
            w_hr,
            backward: OnceLock::new(),
            w_ih_gates: OnceLock::new(),
        })
    }

    /// `W_ih` in the panels of `W_hh`, where the step's gate sums are
    /// `x · W_ihᵀ + h · W_hhᵀ` column by column (LSTM, RNN; not the GRU,
    /// whose `n` gate keeps the two apart), so that one product can sum both
    /// (see [`Operands::prefix`](super::kernel::Operands)). The RNN's plain
    /// `W_ih` already has `W_hh`'s panels; the LSTM's is packed on first use
    /// ([`PackedLayer::prepare_step_panels`], which the caller makes first).
    pub fn w_ih_in_step_panels(&self, dims: &Dims) -> Option<&Panels> {
        match dims.cell {
            CellKind::RnnTanh | CellKind::RnnRelu => Some(&self.w_ih),
            CellKind::Gru => None,
            CellKind::Lstm => Some(
                self.w_ih_gates
                    .get()
                    .expect("prepare_step_panels before a fused step"),
            ),
        }
    }

    /// Packs what [`PackedLayer::w_ih_in_step_panels`] returns, if it is
    /// not yet: on the calling thread, with an error when memory is short.
    pub fn prepare_step_panels(&self, dims: &Dims, w: &LayerWeights<f32>) -> Result<()> {
        if dims.cell != CellKind::Lstm || self.w_ih_gates.get().is_some() {
            return Ok(());
        }
        let data = w.weight_ih.data();
        let columns = Columns::Gates {
            hidden_padded: dims.hidden_padded,
        };
        let panels = Panels::pack(
            dims.precision,
            self.in_size,
            4,
            dims.lanes,
            dims.gate_width(),
            columns,
            |k, col| dims.gate_row(col).map(|row| data[row * self.in_size + k]),
        )?;
        let _ = self.w_ih_gates.set(panels);
        Ok(())
    }

    /// Bytes of every panel packed so far, scales and biases included.
    pub fn bytes(&self) -> usize {
        let panels = [
            Some(&self.w_ih),
            Some(&self.w_hh),
            self.w_hn.as_ref(),
            self.w_hr.as_ref(),
        ]
        .into_iter()
        .flatten()
        .chain(self.w_ih_gates.get())
        .map(Panels::bytes)
        .sum::<usize>();
        panels + 4 * (self.bias.len() + self.b_hn.len())
    }

    /// The transposes for backward ([`PackedLayer::prepare_backward`] first).
    pub fn backward(&self) -> &BackwardPanels {
        self.backward.get().expect("prepare_backward before backward")
    }

    /// Packs the transposes for backward from `w`, if they are not yet.
    pub fn prepare_backward(&self, dims: &Dims, w: &LayerWeights<f32>) -> Result<()> {
        if self.backward.get().is_some() {
            return Ok(());
        }
        let gate_width = dims.gate_width();
        let in_size = self.in_size;
        let (ih, hh) = (w.weight_ih.data(), w.weight_hh.data());
        let w_ih_t = plain_as(
            Precision::F32,
            dims,
            gate_width,
            in_size.next_multiple_of(dims.lanes),
            |k, col| {
                let row = dims.gate_row(k)?;
                (col < in_size).then(|| ih[row * in_size + col])
            },
        )?;
        let w_hh_t = plain_as(Precision::F32, dims, gate_width, dims.out_padded, |k, col| {
            let row = dims.gate_row(k)?;
            (col < dims.out).then(|| hh[row * dims.out + col])
        })?;
        let w_hr_t = w
            .weight_hr
            .as_ref()
            .map(|w_hr| {
                let data = w_hr.data();
                plain_as(Precision::F32, dims, dims.out, dims.hidden_padded, |k, col| {
                    (col < dims.hidden).then(|| data[k * dims.hidden + col])
                })
            })
            .transpose()?;
        let _ = self.backward.set(BackwardPanels {
            w_ih_t,
            w_hh_t,
            w_hr_t,
        });
        Ok(())
    }
}

/// Every layer-direction of a network, packed; an f32 network keeps the
/// weights they came from (for backward's transposes), a reduced-precision
/// one only its panels (an int8 model's weights then take a quarter of f32's).
pub struct PackedNetwork {
    pub dims: Dims,
    pub config: RnnConfig,
    /// f32 networks only.
    pub weights: Option<Weights<f32>>,
    pub layers: Vec<PackedLayer>,
}

impl PackedNetwork {
    pub fn new(weights: Weights<f32>, isa: Isa, precision: Precision) -> Result<Self> {
        let config = weights.config().clone();
        let dims = Dims::new(&config, isa, precision);
        // f16 packs what it runs: weights rounded once, checked for range.
        let weights = match precision {
            Precision::F16 => crate::quant::f16_weights(&weights)?,
            _ => weights,
        };
        let layers: Vec<PackedLayer> = (0..config.num_layers)
            .flat_map(|l| (0..dims.dirs).map(move |d| (l, d)))
            .map(|(l, d)| {
                let w = weights.layer_in_range(l, d);
                let layer = PackedLayer::new(&dims, w)?;
                // Without the f32 weights later, every panel is packed now.
                if precision != Precision::F32 {
                    layer.prepare_step_panels(&dims, w)?;
                }
                Ok(layer)
            })
            .collect::<Result<_>>()?;
        Ok(PackedNetwork {
            dims,
            config,
            weights: (precision == Precision::F32).then_some(weights),
            layers,
        })
    }

    /// Bytes the packed weights take (scales included).
    pub fn weight_bytes(&self) -> usize {
        self.layers.iter().map(PackedLayer::bytes).sum()
    }

    /// The f32 weights, for the paths only an f32 network has (training).
    pub fn f32_weights(&self) -> Result<&Weights<f32>> {
        self.weights.as_ref().ok_or_else(|| {
            crate::Error::Unsupported(format!(
                "this model runs in {}, for inference only; prepare an f32 model to train",
                self.dims.precision
            ))
        })
    }

    pub fn layer(&self, layer: usize, direction: usize) -> &PackedLayer {
        &self.layers[layer * self.dims.dirs + direction]
    }
}
