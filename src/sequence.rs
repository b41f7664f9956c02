//! What a forward call takes and returns, and the checks every backend runs
//! on it before touching memory. Shapes follow PyTorch (see the crate docs):
//! input `[T, B, I]` (`[B, T, I]` batch-first), `h0`/`h_n` `[L*D, B, Hout]`,
//! `c0`/`c_n` `[L*D, B, H]`, output `[T, B, D*Hout]` (or batch-first).

use crate::config::RnnConfig;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::weights::Weights;

/// The arguments of a whole-sequence forward call.
#[derive(Clone, Copy, Debug)]
pub struct ForwardInput<'a, T> {
    /// `[T, B, I]` (`[B, T, I]` batch-first).
    pub input: &'a Tensor<T>,
    /// Valid steps per sequence, each in `1..=T`, in any order. `None`: all `T`.
    pub lengths: Option<&'a [usize]>,
    /// Initial hidden state; `None` means zeros.
    pub h0: Option<&'a Tensor<T>>,
    /// Initial cell state (LSTM only); `None` means zeros.
    pub c0: Option<&'a Tensor<T>>,
}

impl<'a, T> ForwardInput<'a, T> {
    /// The input alone: every sequence `T` steps, initial states zero.
    pub fn new(input: &'a Tensor<T>) -> Self {
        ForwardInput {
            input,
            lengths: None,
            h0: None,
            c0: None,
        }
    }

    /// Valid steps per sequence.
    pub fn lengths(mut self, lengths: &'a [usize]) -> Self {
        self.lengths = Some(lengths);
        self
    }

    /// The initial hidden state, `[L·D, B, Hout]`.
    pub fn h0(mut self, h0: &'a Tensor<T>) -> Self {
        self.h0 = Some(h0);
        self
    }

    /// The initial cell state, `[L·D, B, H]` (LSTM).
    pub fn c0(mut self, c0: &'a Tensor<T>) -> Self {
        self.c0 = Some(c0);
        self
    }
}

/// The results of a whole-sequence forward call.
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardOutput<T> {
    /// `[T, B, D*Hout]` (or batch-first), zero at `t >= lengths[b]`.
    pub output: Tensor<T>,
    /// `[L*D, B, Hout]`: each sequence's state after its own last valid step.
    pub h_n: Tensor<T>,
    /// `[L*D, B, H]` for an LSTM, else `None`.
    pub c_n: Option<Tensor<T>>,
}

/// The recurrent state of `B` streams: what a stateful caller carries from
/// one step to the next.
#[derive(Clone, Debug, PartialEq)]
pub struct State<T> {
    /// `[L*D, B, Hout]`
    pub h: Tensor<T>,
    /// `[L*D, B, H]` for an LSTM, else `None`.
    pub c: Option<Tensor<T>>,
}

impl<T: Element> State<T> {
    /// The all-zero state PyTorch starts from when no `h0`/`c0` is given.
    pub fn zeros(config: &RnnConfig, batch: usize) -> Self {
        Self::try_zeros(config, batch).expect("memory for a state")
    }

    /// [`State::zeros`], or an error naming the state when its memory
    /// cannot be had (a batch sized by a caller's input).
    pub fn try_zeros(config: &RnnConfig, batch: usize) -> Result<Self> {
        Ok(State {
            h: Tensor::try_zeros(h_shape(config, batch)).map_err(|e| e.needed_by("the state's h"))?,
            c: match config.has_cell_state() {
                true => Some(
                    Tensor::try_zeros(c_shape(config, batch)).map_err(|e| e.needed_by("the state's c"))?,
                ),
                false => None,
            },
        })
    }
}

impl<T: Element> State<T> {
    /// Zeroes the state of streams `rows` in every layer and direction (a
    /// new patient in a bed, a new utterance in a stream): what
    /// [`State::zeros`] gives them. The other streams keep theirs.
    pub fn reset_rows(&mut self, rows: &[usize]) -> Result<()> {
        let shape = self.h.shape();
        if shape.len() != 3 {
            return Err(Error::shape("state.h", "[L*D, B, Hout]", shape));
        }
        let (states, batch) = (shape[0], shape[1]);
        if let Some(c) = self
            .c
            .as_ref()
            .filter(|c| c.shape().len() != 3 || c.shape()[..2] != shape[..2])
        {
            return Err(Error::shape(
                "state.c",
                format!("[{states}, {batch}, H]"),
                c.shape(),
            ));
        }
        if let Some(&bad) = rows.iter().find(|&&b| b >= batch) {
            return Err(Error::invalid(
                "rows",
                format!("stream {bad} is outside the state's {batch} streams"),
            ));
        }
        for tensor in std::iter::once(&mut self.h).chain(self.c.as_mut()) {
            let width = tensor.shape()[2];
            let data = tensor.data_mut();
            for state in 0..states {
                for &b in rows {
                    let start = (state * batch + b) * width;
                    data[start..start + width].fill(T::zero());
                }
            }
        }
        Ok(())
    }
}

/// The size of a forward call, read off its checked input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SequenceDims {
    /// `T`.
    pub seq_len: usize,
    /// `B`.
    pub batch: usize,
}

/// The shape of a forward call's `output`: the input's with `D·Hout` features.
pub fn output_shape(config: &RnnConfig, dims: SequenceDims) -> [usize; 3] {
    if config.batch_first {
        [dims.batch, dims.seq_len, config.output_width()]
    } else {
        [dims.seq_len, dims.batch, config.output_width()]
    }
}

/// Zero outputs of a forward call of `dims`, or an error naming the one
/// that memory could not hold.
pub fn try_output<T: Element>(config: &RnnConfig, dims: SequenceDims) -> Result<ForwardOutput<T>> {
    let zeros = |shape: [usize; 3], name: &str| Tensor::try_zeros(shape).map_err(|e| e.needed_by(name));
    Ok(ForwardOutput {
        output: zeros(output_shape(config, dims), "the output")?,
        h_n: zeros(h_shape(config, dims.batch), "h_n")?,
        c_n: match config.has_cell_state() {
            true => Some(zeros(c_shape(config, dims.batch), "c_n")?),
            false => None,
        },
    })
}

/// The shape of `h0` and `h_n`: `[L·D, B, Hout]`.
pub fn h_shape(config: &RnnConfig, batch: usize) -> [usize; 3] {
    [config.num_states(), batch, config.output_size()]
}

/// The shape of `c0` and `c_n`: `[L·D, B, H]`.
pub fn c_shape(config: &RnnConfig, batch: usize) -> [usize; 3] {
    [config.num_states(), batch, config.hidden_size]
}

/// Checks a forward call's arguments against `config`: every shape, every
/// length, and that `c0` is given only to an LSTM.
pub fn check_forward<T>(config: &RnnConfig, args: &ForwardInput<'_, T>) -> Result<SequenceDims>
where
    T: Copy,
{
    let shape = args.input.shape();
    // Formatted only for an error: a valid call allocates nothing.
    let expected = || {
        let i = config.input_size;
        if config.batch_first {
            (format!("[B, T, {i}]"), "[B, T, I]")
        } else {
            (format!("[T, B, {i}]"), "[T, B, I]")
        }
    };
    if shape.len() != 3 || shape[2] != config.input_size {
        let (expected, layout) = expected();
        return Err(Error::shape("input", format!("{expected} ({layout})"), shape));
    }
    let (seq_len, batch) = if config.batch_first {
        (shape[1], shape[0])
    } else {
        (shape[0], shape[1])
    };
    if seq_len == 0 || batch == 0 {
        return Err(Error::shape(
            "input",
            format!("{} with T >= 1 and B >= 1", expected().0),
            shape,
        ));
    }
    if let Some(lengths) = args.lengths {
        check_lengths(lengths, seq_len, batch)?;
    }
    if let Some(h0) = args.h0 {
        check_state_shape("h0", h0.shape(), h_shape(config, batch))?;
    }
    if let Some(c0) = cell_state_arg(config, "c0", args.c0, false)? {
        check_state_shape("c0", c0.shape(), c_shape(config, batch))?;
    }
    Ok(SequenceDims { seq_len, batch })
}

/// Checks a stateful step's arguments: `x` is `[B, I]` and `state` matches.
/// Returns `B`.
pub fn check_step<T: Copy>(config: &RnnConfig, x: &Tensor<T>, state: &State<T>) -> Result<usize> {
    if config.bidirectional {
        return Err(Error::Config(
            "a bidirectional network cannot advance one step at a time: its reverse direction needs the whole sequence"
                .into(),
        ));
    }
    let shape = x.shape();
    if shape.len() != 2 || shape[1] != config.input_size || shape[0] == 0 {
        return Err(Error::shape(
            "x",
            format!("[B, {}] with B >= 1", config.input_size),
            shape,
        ));
    }
    let batch = shape[0];
    // A state of another batch: the state is the long-lived one, so the
    // step's rows are what is off.
    if let [_, streams, _] = *state.h.shape() {
        if streams != batch {
            return Err(Error::shape(
                "x",
                format!(
                    "[{streams}, {}] (a row for each of the state's {streams} streams)",
                    config.input_size
                ),
                shape,
            ));
        }
    }
    check_state_shape("state.h", state.h.shape(), h_shape(config, batch))?;
    if let Some(c) = cell_state_arg(config, "state.c", state.c.as_ref(), true)? {
        check_state_shape("state.c", c.shape(), c_shape(config, batch))?;
    }
    Ok(batch)
}

/// Checks the gradients a backward pass receives against the forward's
/// dimensions: `grad_output` shaped like the output, `grad_h_n` like `h_n`,
/// `grad_c_n` like `c_n` and only for an LSTM.
pub fn check_grad_outputs<T: Copy>(
    config: &RnnConfig,
    dims: SequenceDims,
    grad_output: &Tensor<T>,
    grad_h_n: Option<&Tensor<T>>,
    grad_c_n: Option<&Tensor<T>>,
) -> Result<()> {
    let layout = if config.batch_first {
        "[B, T, D*Hout]"
    } else {
        "[T, B, D*Hout]"
    };
    let expected = output_shape(config, dims);
    if grad_output.shape() != expected {
        return Err(Error::shape(
            "grad_output",
            format!("{expected:?} ({layout})"),
            grad_output.shape(),
        ));
    }
    let h_shape = h_shape(config, dims.batch);
    if let Some(g) = grad_h_n.filter(|g| g.shape() != h_shape) {
        return Err(Error::shape("grad_h_n", format!("{h_shape:?}"), g.shape()));
    }
    let c_shape = c_shape(config, dims.batch);
    if let Some(g) = cell_state_arg(config, "grad_c_n", grad_c_n, false)?.filter(|g| g.shape() != c_shape) {
        return Err(Error::shape("grad_c_n", format!("{c_shape:?}"), g.shape()));
    }
    Ok(())
}

/// A cell-state argument (`c0`, `c_n`, ...) must be absent unless the cell
/// has one (an LSTM), and present for an LSTM when `required`. Returns it
/// when it is there to be checked further.
pub fn cell_state_arg<C>(
    config: &RnnConfig,
    name: &str,
    given: Option<C>,
    required: bool,
) -> Result<Option<C>> {
    match (given, config.has_cell_state()) {
        (Some(_), false) => Err(Error::invalid(
            name,
            format!("given, but a {} has no cell state", config.cell),
        )),
        (None, true) if required => Err(Error::Missing {
            tensor: name.into(),
            context: format!("a {} has a cell state", config.cell),
        }),
        (given, _) => Ok(given),
    }
}

fn check_state_shape(name: &str, found: &[usize], expected: [usize; 3]) -> Result<()> {
    if found != expected {
        return Err(Error::shape(name, format!("{expected:?} ([L*D, B, ...])"), found));
    }
    Ok(())
}

fn check_lengths(lengths: &[usize], seq_len: usize, batch: usize) -> Result<()> {
    if lengths.len() != batch {
        return Err(Error::shape(
            "lengths",
            format!("[{batch}] ([B])"),
            &[lengths.len()],
        ));
    }
    if let Some((b, &len)) = lengths.iter().enumerate().find(|(_, &l)| l == 0 || l > seq_len) {
        return Err(Error::invalid(
            "lengths",
            format!("lengths[{b}] = {len} is outside 1..={seq_len} (T = {seq_len})"),
        ));
    }
    Ok(())
}

/// Gradients of the loss with respect to the forward outputs.
#[derive(Clone, Copy, Debug)]
pub struct GradOutputs<'a, T> {
    /// Shape of `output`; entries at padded positions are ignored.
    pub output: &'a Tensor<T>,
    /// Shape of `h_n`; `None` means zeros.
    pub h_n: Option<&'a Tensor<T>>,
    /// Shape of `c_n` (LSTM only); `None` means zeros.
    pub c_n: Option<&'a Tensor<T>>,
}

/// Gradients of the loss with respect to every input of the forward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients<T> {
    /// Shape of `input`; zero at padded positions.
    pub input: Tensor<T>,
    /// Shape of `h0`.
    pub h0: Tensor<T>,
    /// LSTM only.
    pub c0: Option<Tensor<T>>,
    /// Every parameter's gradient, under its PyTorch name, in a `Weights`
    /// of the same configuration.
    pub weights: Weights<T>,
}
