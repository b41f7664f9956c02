//! `rnnk`: run a recurrent network saved from PyTorch on safetensors inputs.
//!
//! ```text
//! rnnk forward  --model M --input IN --output OUT [--device auto|cpu|cuda] [--prefix P] [--precision f32|f64]
//! rnnk backward --model M --input IN --output OUT [--device auto|cpu|cuda] [--prefix P] [--precision f32|f64]
//!               [--dropout-seed S]
//! rnnk info --model M [--prefix P]
//! ```
//! Errors print one line on stderr and exit with status 1 (2 for bad
//! arguments); an output file is written whole or not at all.

use clap::{Args, Parser, Subcommand, ValueEnum};
use rnn_kernels::cpu::CpuRnn;
use rnn_kernels::cuda::{CudaDevice, CudaRnn};
use rnn_kernels::tensor_file::{self, OwnedTensor, StoredDtype};
use rnn_kernels::weights::{describe, param_specs};
use rnn_kernels::{
    reference, Element, Error, ForwardInput, ForwardOutput, Result, Tensor, TensorFile, Weights,
};
use rnn_kernels::{GradOutputs, Gradients};
use std::collections::HashMap;
use std::path::PathBuf;
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
    /// Print the configuration and parameters found in a model file.
    Info {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prefix: Option<String>,
    },
}

#[derive(Args)]
struct Run {
    /// Weights by PyTorch names; `__metadata__` may hold `cell`,
    /// `batch_first` and `gru_linear_before_reset`.
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    output: PathBuf,
    /// Where to run: the GPU if there is one, else the CPU (auto); the CPU
    /// (the fast path in f32, the reference in f64); or the GPU.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// The module's name in a whole model's state_dict (e.g. `lstm`).
    #[arg(long)]
    prefix: Option<String>,
    /// Arithmetic precision: f64 runs the reference, on the CPU (the output file is f32 either way).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Device {
    Auto,
    Cpu,
    Cuda,
}

/// Where a run goes: `auto` is the GPU when there is one and the run is f32.
enum Backend {
    Cpu,
    Cuda(Box<CudaRnn>),
}

fn backend(device: Device, precision: Precision, weights: &Weights<f64>) -> Result<Backend> {
    match (device, precision) {
        (Device::Cpu, _) | (Device::Auto, Precision::F64) => Ok(Backend::Cpu),
        (Device::Cuda, Precision::F64) => Err(f64_on_cuda()),
        (_, Precision::F32) => match CudaDevice::new(0).and_then(|d| CudaRnn::new(&d, weights)) {
            Ok(model) => Ok(Backend::Cuda(Box::new(model))),
            Err(e) if device == Device::Cuda => Err(e),
            Err(_) => Ok(Backend::Cpu),
        },
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Precision {
    F32,
    F64,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Forward(run) => forward(&run),
        Command::Backward { run, dropout_seed } => backward(&run, dropout_seed),
        Command::Info { model, prefix } => info(&model, prefix.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rnnk: error: {e}");
            ExitCode::FAILURE
        }
    }
}

type Outputs = Vec<(String, OwnedTensor)>;

fn forward(run: &Run) -> Result<()> {
    let weights = Weights::<f64>::load(&run.model, run.prefix.as_deref())?;
    let file = TensorFile::open(&run.input)?;
    let tensors = match (backend(run.device, run.precision, &weights)?, run.precision) {
        (Backend::Cpu, Precision::F32) => {
            let mut model = CpuRnn::new(&weights)?;
            let inputs = Inputs::<f32>::read(&file)?;
            forward_outputs(&model.forward(&inputs.args())?)
        }
        (Backend::Cpu, Precision::F64) => {
            let inputs = Inputs::<f64>::read(&file)?;
            forward_outputs(&reference::forward(&weights, &inputs.args())?)
        }
        (Backend::Cuda(mut model), _) => {
            let inputs = Inputs::<f32>::read(&file)?;
            forward_outputs(&model.forward(&inputs.args())?)
        }
    };
    tensor_file::write(&run.output, &tensors, HashMap::new())
}

fn backward(run: &Run, dropout_seed: Option<u64>) -> Result<()> {
    let weights = Weights::<f64>::load(&run.model, run.prefix.as_deref())?;
    let file = TensorFile::open(&run.input)?;
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
    };
    tensor_file::write(&run.output, &tensors, HashMap::new())
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
    let mut tensors = forward_outputs(&result);
    tensors.push(f32_tensor("grad_input", &gradients.input));
    tensors.push(f32_tensor("grad_h0", &gradients.h0));
    if let Some(c0) = &gradients.c0 {
        tensors.push(f32_tensor("grad_c0", c0));
    }
    for (name, grad) in gradients.weights.named_parameters() {
        tensors.push(f32_tensor(&format!("grad.{name}"), grad));
    }
    Ok(tensors)
}

fn f64_on_cuda() -> Error {
    Error::Unsupported("--device cuda computes in f32: drop --precision f64".into())
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

fn f32_tensor<T: Element>(name: &str, t: &Tensor<T>) -> (String, OwnedTensor) {
    (name.to_string(), OwnedTensor::float(t, StoredDtype::F32))
}

fn forward_outputs<T: Element>(result: &ForwardOutput<T>) -> Outputs {
    let mut tensors = vec![
        f32_tensor("output", &result.output),
        f32_tensor("h_n", &result.h_n),
    ];
    if let Some(c_n) = &result.c_n {
        tensors.push(f32_tensor("c_n", c_n));
    }
    tensors
}

/// `lengths`: a 1-D i64 (or i32) tensor of non-negative values, if present.
fn read_lengths(file: &TensorFile) -> Result<Option<Vec<usize>>> {
    let Some((shape, values)) = file.integer("lengths")? else {
        return Ok(None);
    };
    if shape.len() != 1 {
        return Err(Error::Shape {
            tensor: "lengths".into(),
            expected: "[B]".into(),
            found: rnn_kernels::error::ShapeDisplay(shape),
        });
    }
    values
        .iter()
        .enumerate()
        .map(|(b, &v)| {
            usize::try_from(v).map_err(|_| Error::Invalid {
                tensor: "lengths".into(),
                message: format!("lengths[{b}] = {v} is negative"),
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn info(model: &PathBuf, prefix: Option<&str>) -> Result<()> {
    let weights = Weights::<f64>::load(model, prefix)?;
    let config = weights.config();
    println!("{}", describe(config));
    println!(
        "batch_first={} dropout={} gru_linear_before_reset={}",
        config.batch_first, config.dropout, config.gru_linear_before_reset
    );
    for spec in param_specs(config) {
        println!("  {:<24} {:?}", spec.name, spec.shape);
    }
    Ok(())
}
