//! `rnnk`: run a recurrent network saved from PyTorch on safetensors inputs.
//!
//! ```text
//! rnnk forward  --model M --input IN --output OUT [--batch-first] [--cell C] [--gru-original]
//!               [--device auto|cpu|cuda] [--prefix P] [--precision f32|f64|int8|f16]
//! rnnk backward (as forward) [--dropout-seed S]
//! rnnk info --model M [--prefix P] [--batch-first] [--cell C] [--gru-original]
//! ```
//! Errors print one line on stderr and exit with status 1 (2 for bad
//! arguments, 130 when interrupted); nothing is computed before the output
//! is known not to be the model or the input, and an output file is written
//! whole or not at all (see `tensor_file`).

// The commands' doc comments are clap's --help text, shapes like [T,B,I]
// written for a terminal, not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links)]

use clap::{Args, Parser, Subcommand, ValueEnum};
use rnn_kernels::cpu::{default_threads, CpuRnn};
use rnn_kernels::cuda::{CudaDevice, CudaRnn};
use rnn_kernels::facts::{load_weights, ModelFacts};
use rnn_kernels::tensor_file::{self, OwnedTensor, StoredDtype};
use rnn_kernels::weights::{describe, network_prefix, param_specs};
use rnn_kernels::{
    reference, CellKind, Element, Error, ForwardInput, ForwardOutput, Result, RnnConfig, Tensor, TensorFile,
    Weights,
};
use rnn_kernels::{GradOutputs, Gradients};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rnnk",
    version,
    about = "PyTorch-compatible RNN / LSTM / GRU forward and backward"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole-sequence forward pass.
    ///
    /// The input file holds `input` [T,B,I] (or [B,T,I] when batch-first),
    /// and optionally `lengths` i64 [B], `h0` [L*D,B,Hout] and `c0` [L*D,B,H].
    /// The output file gets `output`, `h_n` and, for an LSTM, `c_n`, in f32.
    Forward(Run),
    /// Run a training forward pass and backpropagate through it.
    ///
    /// The input file holds what `forward` takes plus `grad_output` (the
    /// shape of `output`) and optionally `grad_h_n` and `grad_c_n`. The output
    /// file gets `output`, `h_n`, `c_n` (LSTM), `grad_input`, `grad_h0`,
    /// `grad_c0` (LSTM) and `grad.<name>` for every parameter, in f32.
    Backward {
        #[command(flatten)]
        run: Run,
        /// Apply the model's inter-layer dropout with masks from this seed
        /// (without it, dropout is off).
        #[arg(long)]
        dropout_seed: Option<u64>,
    },
    /// Print how a model file will be read: the configuration, the
    /// tensors used (with their stored dtypes), and those ignored.
    Info {
        /// A safetensors file with the weights (a whole model's state_dict will do).
        #[arg(long)]
        model: PathBuf,
        /// The module's name in a whole model's state_dict (e.g. `lstm`).
        #[arg(long)]
        prefix: Option<String>,
        #[command(flatten)]
        facts: Facts,
    },
}

/// What a `state_dict` does not record, for the caller to say.
#[derive(Args, Clone, Copy)]
struct Facts {
    /// Inputs and outputs are [B, T, ·] (PyTorch's batch_first=True), not [T, B, ·].
    #[arg(long)]
    batch_first: bool,
    /// The cell, where the weights' shapes cannot tell (rnn_tanh or rnn_relu).
    #[arg(long, value_enum)]
    cell: Option<Cell>,
    /// A GRU in the original formulation (Cho et al.; ONNX linear_before_reset=0), not PyTorch's.
    #[arg(long)]
    gru_original: bool,
}

#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
enum Cell {
    Lstm,
    Gru,
    RnnTanh,
    RnnRelu,
}

impl Facts {
    /// The flags as the library takes them: a flag not given says nothing.
    fn model_facts(self) -> ModelFacts {
        ModelFacts {
            batch_first: self.batch_first.then_some(true),
            cell: self.cell.map(Cell::kind),
            gru_original: self.gru_original.then_some(true),
            dropout: None,
        }
    }
}

impl Cell {
    fn kind(self) -> CellKind {
        match self {
            Cell::Lstm => CellKind::Lstm,
            Cell::Gru => CellKind::Gru,
            Cell::RnnTanh => CellKind::RnnTanh,
            Cell::RnnRelu => CellKind::RnnRelu,
        }
    }
}

#[derive(Args)]
struct Run {
    /// Weights by PyTorch names (a whole model's state_dict will do, with
    /// --prefix); `__metadata__` may hold cell, batch_first and
    /// gru_linear_before_reset.
    #[arg(long)]
    model: PathBuf,
    /// The inputs (see the command's description for the tensor names).
    #[arg(long)]
    input: PathBuf,
    /// Where the results go (never the model or the input file).
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    facts: Facts,
    /// Where to run: the GPU if there is one, else the CPU (auto); the CPU
    /// (the fast path in f32, the reference in f64); or the GPU.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// The module's name in a whole model's state_dict (e.g. `lstm`).
    #[arg(long)]
    prefix: Option<String>,
    /// Arithmetic precision: f64 runs the reference; int8 (s8 weights, u8
    /// activations per row and step) and f16 (f16 weights, f32 arithmetic)
    /// run the fast CPU path for inference. All but f32 run on the CPU; the
    /// output file is f32 either way.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Device {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Precision {
    F32,
    F64,
    Int8,
    F16,
}

impl Precision {
    /// The fast CPU path's format for this precision (None: the f64 reference).
    fn cpu_format(self) -> Option<rnn_kernels::Precision> {
        match self {
            Precision::F32 => Some(rnn_kernels::Precision::F32),
            Precision::F64 => None,
            Precision::Int8 => Some(rnn_kernels::Precision::Int8),
            Precision::F16 => Some(rnn_kernels::Precision::F16),
        }
    }
}

/// Where a run goes: `auto` is the GPU when there is one and the run is f32.
enum Backend {
    Cpu,
    Cuda(Box<CudaRnn>),
}

fn backend(device: Device, precision: Precision, weights: &Weights<f64>) -> Result<Backend> {
    match (device, precision) {
        (Device::Cpu, _) | (Device::Auto, Precision::F64 | Precision::Int8 | Precision::F16) => {
            Ok(Backend::Cpu)
        }
        (Device::Cuda, Precision::F64 | Precision::Int8 | Precision::F16) => Err(not_f32_on_cuda(precision)),
        (_, Precision::F32) => match CudaDevice::new(0).and_then(|d| CudaRnn::new(&d, weights)) {
            Ok(model) => Ok(Backend::Cuda(Box::new(model))),
            Err(e) if device == Device::Cuda => Err(e),
            Err(_) => Ok(Backend::Cpu),
        },
    }
}

fn main() -> ExitCode {
    // An interrupted write leaves no temporary file behind.
    let _ = ctrlc::set_handler(|| {
        tensor_file::remove_temporaries();
        eprintln!("rnnk: interrupted");
        std::process::exit(130);
    });
    let result = match Cli::parse().command {
        Command::Forward(run) => forward(&run),
        Command::Backward { run, dropout_seed } => backward(&run, dropout_seed),
        Command::Info { model, prefix, facts } => info(&model, prefix.as_deref(), facts),
    };
    match result {
        Ok(notes) => {
            for note in notes {
                eprintln!("rnnk: note: {note}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rnnk: error: {e}");
            ExitCode::FAILURE
        }
    }
}

type Outputs = Vec<(String, OwnedTensor)>;

/// What a run could not know, said after it succeeded.
type Notes = Vec<String>;

/// The model's weights as the run will use them: the file's configuration
/// with the caller's facts applied (a fact that contradicts the file's
/// metadata is an error), and notes on what neither said.
fn load_model(path: &Path, prefix: Option<&str>, facts: Facts) -> Result<(Weights<f64>, TensorFile, Notes)> {
    let file = TensorFile::open(path)?;
    let (weights, assumed) = load_weights::<f64>(&file, prefix, &facts.model_facts())?;
    let mut notes = Vec::new();
    if assumed.batch_first {
        notes.push(format!(
            "{} does not record batch_first: the input was read as [T, B, I] (give --batch-first for [B, T, I])",
            path.display()
        ));
    }
    if assumed.nonlinearity {
        notes.push(format!(
            "{} does not record the nonlinearity: tanh was used (give --cell rnn_relu for ReLU)",
            path.display()
        ));
    }
    Ok((weights, file, notes))
}

/// The tensors an input file may hold for `command`.
const FORWARD_INPUTS: [&str; 4] = ["input", "lengths", "h0", "c0"];
const BACKWARD_INPUTS: [&str; 7] = [
    "input",
    "lengths",
    "h0",
    "c0",
    "grad_output",
    "grad_h_n",
    "grad_c_n",
];

/// Opens the input file and refuses any tensor `command` does not take (a
/// misspelled `lenghts` would otherwise silently mean "no lengths").
fn open_input(path: &Path, command: &str, allowed: &[&str]) -> Result<TensorFile> {
    let file = TensorFile::open(path)?;
    if let Some(extra) = file.names()?.into_iter().find(|n| !allowed.contains(&n.as_str())) {
        return Err(Error::invalid(
            extra,
            format!(
                "is not an input of rnnk {command}; {} may hold only {}",
                path.display(),
                allowed.join(", ")
            ),
        ));
    }
    Ok(file)
}

/// The model, the input and the output's safety, checked before any work.
fn prepare(run: &Run, command: &str, allowed: &[&str]) -> Result<(Weights<f64>, TensorFile, Notes)> {
    tensor_file::refuse_overwrite(&run.output, &[&run.model, &run.input])?;
    let (weights, _, notes) = load_model(&run.model, run.prefix.as_deref(), run.facts)?;
    let input = open_input(&run.input, command, allowed)?;
    Ok((weights, input, notes))
}

fn forward(run: &Run) -> Result<Notes> {
    let (weights, file, notes) = prepare(run, "forward", &FORWARD_INPUTS)?;
    let tensors = match (
        backend(run.device, run.precision, &weights)?,
        run.precision.cpu_format(),
    ) {
        (Backend::Cpu, Some(format)) => {
            let mut model = CpuRnn::with_precision(&weights, default_threads(), format)?;
            let inputs = Inputs::<f32>::read(&file)?;
            forward_outputs(&model.forward(&inputs.args())?)?
        }
        (Backend::Cpu, None) => {
            let inputs = Inputs::<f64>::read(&file)?;
            forward_outputs(&reference::forward(&weights, &inputs.args())?)?
        }
        (Backend::Cuda(mut model), _) => {
            let inputs = Inputs::<f32>::read(&file)?;
            forward_outputs(&model.forward(&inputs.args())?)?
        }
    };
    tensor_file::write(&run.output, &tensors, HashMap::new())?;
    Ok(notes)
}

fn backward(run: &Run, dropout_seed: Option<u64>) -> Result<Notes> {
    if matches!(run.precision, Precision::Int8 | Precision::F16) {
        return Err(Error::Unsupported(
            "int8 and f16 are for inference: backward runs in f32 or f64".into(),
        ));
    }
    let (weights, file, notes) = prepare(run, "backward", &BACKWARD_INPUTS)?;
    let tensors = match (backend(run.device, run.precision, &weights)?, run.precision) {
        (Backend::Cpu, Precision::F32) => {
            let mut model = CpuRnn::new(&weights)?;
            backward_with::<f32>(&file, |args, grads| {
                let (result, reserve) = model.forward_train(args, dropout_seed)?;
                Ok((result, model.backward(args, &reserve, grads)?))
            })?
        }
        (Backend::Cpu, Precision::F64) => backward_with::<f64>(&file, |args, grads| {
            let (result, reserve) = reference::forward_train(&weights, args, dropout_seed)?;
            Ok((result, reference::backward(&weights, args, &reserve, grads)?))
        })?,
        (Backend::Cuda(mut model), _) => backward_with::<f32>(&file, |args, grads| {
            let (result, state) = model.forward_train(args, dropout_seed)?;
            Ok((result, model.backward(&state, grads)?))
        })?,
        (Backend::Cpu, Precision::Int8 | Precision::F16) => unreachable!("refused above"),
    };
    tensor_file::write(&run.output, &tensors, HashMap::new())?;
    Ok(notes)
}

/// Reads the inputs and incoming gradients, runs `train` (a training forward
/// and its backward, on some device) and returns every output tensor.
fn backward_with<T: Element>(
    file: &TensorFile,
    train: impl FnOnce(&ForwardInput<'_, T>, &GradOutputs<'_, T>) -> Result<(ForwardOutput<T>, Gradients<T>)>,
) -> Result<Outputs> {
    let inputs = Inputs::<T>::read(file)?;
    let grad_output = required::<T>(file, "grad_output", "the gradient of output")?;
    let grad_h_n = file.float::<T>("grad_h_n")?;
    let grad_c_n = file.float::<T>("grad_c_n")?;
    let grads = GradOutputs {
        output: &grad_output,
        h_n: grad_h_n.as_ref(),
        c_n: grad_c_n.as_ref(),
    };
    let (result, gradients) = train(&inputs.args(), &grads)?;
    let mut tensors = forward_outputs(&result)?;
    tensors.push(f32_tensor("grad_input", &gradients.input)?);
    tensors.push(f32_tensor("grad_h0", &gradients.h0)?);
    if let Some(c0) = &gradients.c0 {
        tensors.push(f32_tensor("grad_c0", c0)?);
    }
    for (name, grad) in gradients.weights.named_parameters() {
        tensors.push(f32_tensor(&format!("grad.{name}"), grad)?);
    }
    Ok(tensors)
}

fn not_f32_on_cuda(precision: Precision) -> Error {
    let name = precision
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string());
    Error::Unsupported(format!(
        "--device cuda computes in f32: drop --precision {name}, or use --device cpu"
    ))
}

/// What a forward pass takes, read from the input file as `T`.
struct Inputs<T> {
    input: Tensor<T>,
    lengths: Option<Vec<usize>>,
    h0: Option<Tensor<T>>,
    c0: Option<Tensor<T>>,
}

impl<T: Element> Inputs<T> {
    fn read(file: &TensorFile) -> Result<Self> {
        Ok(Inputs {
            input: required(file, "input", "the input sequence")?,
            lengths: read_lengths(file)?,
            h0: file.float::<T>("h0")?,
            c0: file.float::<T>("c0")?,
        })
    }

    fn args(&self) -> ForwardInput<'_, T> {
        ForwardInput {
            input: &self.input,
            lengths: self.lengths.as_deref(),
            h0: self.h0.as_ref(),
            c0: self.c0.as_ref(),
        }
    }
}

fn required<T: Element>(file: &TensorFile, name: &str, what: &str) -> Result<Tensor<T>> {
    file.float::<T>(name)?.ok_or_else(|| Error::Missing {
        tensor: name.into(),
        context: format!("{} must hold {what}", file.path().display()),
    })
}

fn f32_tensor<T: Element>(name: &str, t: &Tensor<T>) -> Result<(String, OwnedTensor)> {
    Ok((
        name.to_string(),
        OwnedTensor::try_float(name, t, StoredDtype::F32)?,
    ))
}

fn forward_outputs<T: Element>(result: &ForwardOutput<T>) -> Result<Outputs> {
    let mut tensors = vec![
        f32_tensor("output", &result.output)?,
        f32_tensor("h_n", &result.h_n)?,
    ];
    if let Some(c_n) = &result.c_n {
        tensors.push(f32_tensor("c_n", c_n)?);
    }
    Ok(tensors)
}

/// `lengths`: a 1-D i64 (or i32) tensor of non-negative values, if present.
fn read_lengths(file: &TensorFile) -> Result<Option<Vec<usize>>> {
    let Some((shape, values)) = file.integer("lengths")? else {
        return Ok(None);
    };
    if shape.len() != 1 {
        return Err(Error::shape("lengths", "[B]", &shape));
    }
    values
        .iter()
        .enumerate()
        .map(|(b, &v)| {
            usize::try_from(v)
                .map_err(|_| Error::invalid("lengths", format!("lengths[{b}] = {v} is negative")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// How `forward` would read the model: the configuration, each tensor used
/// (with its stored dtype), and every other tensor of the file, ignored.
fn info(model: &Path, prefix: Option<&str>, facts: Facts) -> Result<Notes> {
    let (weights, file, notes) = load_model(model, prefix, facts)?;
    let config: &RnnConfig = weights.config();
    let prefix = network_prefix(&file, prefix)?;
    println!("{}", describe(config));
    println!(
        "reads input as {}; dropout={} (training only); {}",
        if config.batch_first {
            "[B, T, I] (batch-first)"
        } else {
            "[T, B, I] (time-major)"
        },
        config.dropout,
        match (config.cell, config.gru_linear_before_reset) {
            (CellKind::Gru, true) => "PyTorch's GRU (linear before reset)",
            (CellKind::Gru, false) => "the original GRU (reset before the recurrent product)",
            (CellKind::RnnTanh, _) => "nonlinearity tanh",
            (CellKind::RnnRelu, _) => "nonlinearity relu",
            (CellKind::Lstm, _) => "gates i, f, g, o",
        }
    );
    let mut used = Vec::new();
    println!("used:");
    for spec in param_specs(config) {
        let name = format!("{prefix}{}", spec.name);
        let dtype = file.stored_dtype(&name)?.unwrap_or_default();
        println!("  {name:<32} {:<16} {dtype}", format!("{:?}", spec.shape));
        used.push(name);
    }
    let sizes = [
        rnn_kernels::Precision::F32,
        rnn_kernels::Precision::Int8,
        rnn_kernels::Precision::F16,
    ]
    .into_iter()
    .map(|format| match CpuRnn::with_precision(&weights, 1, format) {
        Ok(model) => format!("{format} {:.1} KiB", model.weight_bytes() as f64 / 1024.0),
        Err(e) => format!("{format} not available ({e})"),
    })
    .collect::<Vec<_>>();
    println!(
        "packed for this CPU ({}), the weights take: {} (--precision)",
        rnn_kernels::cpu::Isa::detect(),
        sizes.join(", ")
    );
    let ignored: Vec<String> = file.names()?.into_iter().filter(|n| !used.contains(n)).collect();
    if !ignored.is_empty() {
        println!("ignored:");
        for name in ignored {
            let shape = file.shape(&name)?.unwrap_or_default();
            let dtype = file.stored_dtype(&name)?.unwrap_or_default();
            println!("  {name:<32} {:<16} {dtype}", format!("{shape:?}"));
        }
    }
    Ok(notes)
}
