//! What a recurrent network is: the arguments of PyTorch's `nn.RNN`,
//! `nn.LSTM` and `nn.GRU`, validated the way PyTorch validates them, plus the
//! one switch PyTorch lacks (the original GRU).

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// The recurrent cell. Gate order follows PyTorch: LSTM `i, f, g, o`; GRU `r, z, n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CellKind {
    /// `h' = tanh(W_ih x + b_ih + W_hh h + b_hh)`
    RnnTanh,
    /// `h' = relu(W_ih x + b_ih + W_hh h + b_hh)`
    RnnRelu,
    /// `nn.LSTM`.
    Lstm,
    /// `nn.GRU`.
    Gru,
}

impl CellKind {
    /// Gates per hidden unit: the row count of `weight_ih` is `gates() * hidden_size`.
    pub fn gates(self) -> usize {
        match self {
            CellKind::RnnTanh | CellKind::RnnRelu => 1,
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }

    /// The name used in safetensors metadata and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            CellKind::RnnTanh => "rnn_tanh",
            CellKind::RnnRelu => "rnn_relu",
            CellKind::Lstm => "lstm",
            CellKind::Gru => "gru",
        }
    }

    /// Every cell, in the order tests and benchmarks list them.
    pub const ALL: [CellKind; 4] = [
        CellKind::RnnTanh,
        CellKind::RnnRelu,
        CellKind::Lstm,
        CellKind::Gru,
    ];
}

impl fmt::Display for CellKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CellKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        CellKind::ALL
            .into_iter()
            .find(|cell| cell.name() == s)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown cell {s:?}; expected one of lstm, gru, rnn_tanh, rnn_relu"
                ))
            })
    }
}

/// A recurrent network's configuration, with PyTorch's argument names and defaults.
///
/// Build one from a constructor and struct update syntax:
/// ```
/// use rnn_kernels::RnnConfig;
/// let config = RnnConfig { num_layers: 2, ..RnnConfig::lstm(6, 64) };
/// config.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RnnConfig {
    /// Which cell.
    pub cell: CellKind,
    /// Features per step of the input (`I`).
    pub input_size: usize,
    /// Features of the hidden state (`H`).
    pub hidden_size: usize,
    /// Stacked layers (`L`), each reading the previous one's output.
    pub num_layers: usize,
    /// Whether the layers have `bias_ih` and `bias_hh`.
    pub bias: bool,
    /// Input and output are `[B, T, *]` instead of `[T, B, *]`. States stay `[L*D, B, *]`.
    pub batch_first: bool,
    /// Dropout on each layer's output but the last, in training only.
    pub dropout: f64,
    /// Whether each layer runs both directions (`D = 2`), outputs concatenated.
    pub bidirectional: bool,
    /// LSTM projection size; 0 means no projection (PyTorch's default).
    pub proj_size: usize,
    /// GRU only. `true` (PyTorch and cuDNN): `n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))`.
    /// `false` (the original GRU of Cho et al., ONNX `linear_before_reset=0`):
    /// `n = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn)`.
    pub gru_linear_before_reset: bool,
}

impl RnnConfig {
    /// A one-layer unidirectional network with PyTorch's defaults.
    pub fn new(cell: CellKind, input_size: usize, hidden_size: usize) -> Self {
        RnnConfig {
            cell,
            input_size,
            hidden_size,
            num_layers: 1,
            bias: true,
            batch_first: false,
            dropout: 0.0,
            bidirectional: false,
            proj_size: 0,
            gru_linear_before_reset: true,
        }
    }

    /// One LSTM layer with PyTorch's defaults (bias, no projection, not batch-first).
    pub fn lstm(input_size: usize, hidden_size: usize) -> Self {
        Self::new(CellKind::Lstm, input_size, hidden_size)
    }

    /// One GRU layer with PyTorch's defaults.
    pub fn gru(input_size: usize, hidden_size: usize) -> Self {
        Self::new(CellKind::Gru, input_size, hidden_size)
    }

    /// One `nn.RNN` layer with tanh, PyTorch's defaults.
    pub fn rnn_tanh(input_size: usize, hidden_size: usize) -> Self {
        Self::new(CellKind::RnnTanh, input_size, hidden_size)
    }

    /// One `nn.RNN` layer with ReLU, PyTorch's defaults otherwise.
    pub fn rnn_relu(input_size: usize, hidden_size: usize) -> Self {
        Self::new(CellKind::RnnRelu, input_size, hidden_size)
    }

    /// Checks every rule PyTorch's constructors check, and a few they should.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::Config(msg));
        if self.input_size == 0 {
            return fail("input_size must be positive".into());
        }
        if self.hidden_size == 0 {
            return fail("hidden_size must be positive".into());
        }
        if self.num_layers == 0 {
            return fail("num_layers must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.dropout) {
            return fail(format!(
                "dropout must be a probability in [0, 1], got {}",
                self.dropout
            ));
        }
        if self.proj_size > 0 {
            if self.cell != CellKind::Lstm {
                return fail(format!("proj_size is supported only by lstm, not {}", self.cell));
            }
            if self.proj_size >= self.hidden_size {
                return fail(format!(
                    "proj_size ({}) must be smaller than hidden_size ({})",
                    self.proj_size, self.hidden_size
                ));
            }
        }
        if !self.gru_linear_before_reset && self.cell != CellKind::Gru {
            return fail(format!(
                "gru_linear_before_reset = false selects the original GRU and does not apply to {}",
                self.cell
            ));
        }
        Ok(())
    }

    /// `G`: gates per hidden unit.
    pub fn gates(&self) -> usize {
        self.cell.gates()
    }

    /// `D`: 2 if bidirectional, else 1.
    pub fn num_directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    /// `Hout`: the width of `h` (the projection size when projecting, else `H`).
    pub fn output_size(&self) -> usize {
        if self.proj_size > 0 {
            self.proj_size
        } else {
            self.hidden_size
        }
    }

    /// The width of one timestep of the output: `D * Hout`.
    pub fn output_width(&self) -> usize {
        self.num_directions() * self.output_size()
    }

    /// The number of `(layer, direction)` states: `L * D`.
    pub fn num_states(&self) -> usize {
        self.num_layers * self.num_directions()
    }

    /// The input width of layer `layer`: `input_size` for the first, `D * Hout` after.
    pub fn layer_input_size(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input_size
        } else {
            self.output_width()
        }
    }

    /// Whether this network carries a cell state `c` (LSTM only).
    pub fn has_cell_state(&self) -> bool {
        self.cell == CellKind::Lstm
    }
}
