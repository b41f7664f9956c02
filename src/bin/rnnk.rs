//! `rnnk`: run a recurrent network saved from PyTorch on safetensors inputs.
//!
//! ```text
//! rnnk forward --model M.safetensors --input IN.safetensors --output OUT.safetensors
//!              [--device cpu|cuda] [--prefix P] [--precision f32|f64]
//! rnnk info --model M.safetensors [--prefix P]
//! ```
//! Errors print one line on stderr and exit with status 1 (2 for bad
//! arguments); an output file is written whole or not at all.

use clap::{Parser, Subcommand, ValueEnum};
use rnn_kernels::cuda::{CudaDevice, CudaRnn};
use rnn_kernels::tensor_file::{self, OwnedTensor, StoredDtype};
use rnn_kernels::weights::{describe, param_specs};
use rnn_kernels::{cpu, Element, Error, ForwardInput, ForwardOutput, Result, Tensor, TensorFile, Weights};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rnnk",
    version,
    about = "PyTorch-compatible RNN / LSTM / GRU inference"
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
    Forward {
        /// Weights by PyTorch names; `__metadata__` may hold `cell`,
        /// `batch_first` and `gru_linear_before_reset`.
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value_t = Device::Cpu)]
        device: Device,
        /// The module's name in a whole model's state_dict (e.g. `lstm`).
        #[arg(long)]
        prefix: Option<String>,
        /// Arithmetic precision: f64 on the CPU only (the output file is f32 either way).
        #[arg(long, value_enum, default_value_t = Precision::F32)]
        precision: Precision,
    },
    /// Print the configuration and parameters found in a model file.
    Info {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prefix: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Device {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
enum Precision {
    F32,
    F64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Forward {
            model,
            input,
            output,
            device,
            prefix,
            precision,
        } => forward(&model, &input, &output, device, prefix.as_deref(), precision),
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

fn forward(
    model: &PathBuf,
    input: &PathBuf,
    output: &PathBuf,
    device: Device,
    prefix: Option<&str>,
    precision: Precision,
) -> Result<()> {
    let weights = Weights::<f64>::load(model, prefix)?;
    let inputs = TensorFile::open(input)?;
    let tensors = match (device, precision) {
        (Device::Cpu, Precision::F32) => run::<f32>(&inputs, |args| cpu::forward(&weights.cast(), args))?,
        (Device::Cpu, Precision::F64) => run::<f64>(&inputs, |args| cpu::forward(&weights, args))?,
        (Device::Cuda, Precision::F32) => {
            let mut model = CudaRnn::new(&CudaDevice::new(0)?, &weights)?;
            run::<f32>(&inputs, |args| model.forward(args))?
        }
        (Device::Cuda, Precision::F64) => {
            return Err(Error::Unsupported(
                "--device cuda computes in f32: drop --precision f64".into(),
            ))
        }
    };
    tensor_file::write(output, &tensors, HashMap::new())
}

/// Reads the inputs as `T`, runs `forward` on them, and returns the output
/// tensors ready to be written in f32.
fn run<T: Element>(
    file: &TensorFile,
    forward: impl FnOnce(&ForwardInput<'_, T>) -> Result<ForwardOutput<T>>,
) -> Result<Vec<(String, OwnedTensor)>> {
    let input = file.float::<T>("input")?.ok_or_else(|| Error::Missing {
        tensor: "input".into(),
        context: format!("{} must hold the input sequence", file.path().display()),
    })?;
    let lengths = read_lengths(file)?;
    let h0 = file.float::<T>("h0")?;
    let c0 = file.float::<T>("c0")?;
    let args = ForwardInput {
        input: &input,
        lengths: lengths.as_deref(),
        h0: h0.as_ref(),
        c0: c0.as_ref(),
    };
    let result = forward(&args)?;
    let f32_tensor = |t: &Tensor<T>| OwnedTensor::float(t, StoredDtype::F32);
    let mut tensors = vec![
        ("output".to_string(), f32_tensor(&result.output)),
        ("h_n".to_string(), f32_tensor(&result.h_n)),
    ];
    if let Some(c_n) = &result.c_n {
        tensors.push(("c_n".to_string(), f32_tensor(c_n)));
    }
    Ok(tensors)
}

/// `lengths`: a 1-D i64 (or i32) tensor of positive values, if present.
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
