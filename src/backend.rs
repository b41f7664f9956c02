//! A prepared model on whichever device runs it: the fast CPU path or the
//! GPU, chosen once, with one set of calls for both. What the command-line
//! tools and the Python package hold.

use crate::cpu::{CpuReserve, CpuRnn};
use crate::cuda::{CudaDevice, CudaRnn, CudaTrainingState};
use crate::error::{Error, Result};
use crate::quant::Precision;
use crate::sequence::{ForwardInput, ForwardOutput, GradOutputs, Gradients, State};
use crate::{Element, RnnConfig, Tensor, Weights};
use std::fmt;

/// Where a model runs: `Auto` is the GPU when one works, else the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    /// Whichever works: a GPU, else the CPU.
    Auto,
    /// The fast CPU path.
    Cpu,
    /// The first GPU; an error where none works.
    Cuda,
}

impl std::str::FromStr for Device {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            _ => Err(Error::Config(format!(
                "unknown device {s:?}; expected auto, cpu or cuda"
            ))),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        })
    }
}

/// A model prepared on the CPU (weights packed, threads shared) or on the
/// GPU (weights uploaded, kernels loaded).
pub enum Backend {
    /// On the fast CPU path.
    Cpu(Box<CpuRnn>),
    /// On a GPU.
    Cuda(Box<CudaRnn>),
}

/// What a training forward keeps for its backward, on either backend.
pub enum TrainingState {
    /// The CPU path's reserve.
    Cpu(Box<CpuReserve>),
    /// The GPU path's reserve, on the device.
    Cuda(Box<CudaTrainingState>),
}

impl Backend {
    /// The GPU if asked for (or if `Auto` finds one), else the CPU, with a
    /// line saying which and why. `threads` (None: as many as the CPUs this
    /// process may use) is the CPU's: given, `Auto` means the CPU, and
    /// `Cuda` is an error.
    pub fn choose<T: Element>(
        device: Device,
        weights: &Weights<T>,
        threads: Option<usize>,
    ) -> Result<(Backend, String)> {
        Self::choose_in(device, weights, threads, Precision::F32)
    }

    /// [`Backend::choose`] in a given precision: int8 and f16 run on the
    /// CPU only (`Auto` then means the CPU, `Cuda` is an error).
    pub fn choose_in<T: Element>(
        device: Device,
        weights: &Weights<T>,
        threads: Option<usize>,
        precision: Precision,
    ) -> Result<(Backend, String)> {
        if threads == Some(0) {
            return Err(Error::Config("threads must be at least 1".into()));
        }
        if device == Device::Cuda && threads.is_some() {
            return Err(Error::Config(
                "threads applies to the CPU; the GPU runs without them".into(),
            ));
        }
        if device == Device::Cuda && precision != Precision::F32 {
            return Err(Error::Unsupported(format!(
                "{precision} runs on the CPU only; the GPU runs f32"
            )));
        }
        let cpu = |why: String| -> Result<(Backend, String)> {
            let threads = threads.unwrap_or_else(crate::cpu::default_threads);
            let model = CpuRnn::with_precision(weights, threads, precision)?;
            let line = format!(
                "CPU, {precision}, {} with {} threads{why}",
                model.kernels(),
                model.threads()
            );
            Ok((Backend::Cpu(Box::new(model)), line))
        };
        if device == Device::Cpu || threads.is_some() || precision != Precision::F32 {
            return cpu(String::new());
        }
        match CudaDevice::new(0).and_then(|gpu| Ok((CudaRnn::new(&gpu, weights)?, gpu))) {
            Ok((model, gpu)) => Ok((
                Backend::Cuda(Box::new(model)),
                format!("CUDA on {}, f32", gpu.name()),
            )),
            Err(e) if device == Device::Cuda => Err(e),
            Err(e) => cpu(format!(" (no GPU: {e})")),
        }
    }

    /// The network this model runs.
    pub fn config(&self) -> &RnnConfig {
        match self {
            Backend::Cpu(model) => model.config(),
            Backend::Cuda(model) => model.config(),
        }
    }

    /// The CPU threads a call may use (0 on the GPU).
    pub fn threads(&self) -> usize {
        match self {
            Backend::Cpu(model) => model.threads(),
            Backend::Cuda(_) => 0,
        }
    }

    /// Whether it runs on a GPU.
    pub fn is_cuda(&self) -> bool {
        matches!(self, Backend::Cuda(_))
    }

    /// PyTorch's forward: `output`, `h_n` and (LSTM) `c_n` for a whole sequence.
    pub fn forward(&mut self, args: &ForwardInput<'_, f32>) -> Result<ForwardOutput<f32>> {
        match self {
            Backend::Cpu(model) => model.forward(args),
            Backend::Cuda(model) => model.forward(args),
        }
    }

    /// One step of every stream into `out` (`[B, Hout]`, the last layer's
    /// new `h`); the state is updated in place.
    pub fn step_into(
        &mut self,
        x: &Tensor<f32>,
        state: &mut State<f32>,
        out: &mut Tensor<f32>,
    ) -> Result<()> {
        match self {
            Backend::Cpu(model) => model.step_into(x, state, out),
            Backend::Cuda(model) => {
                *out = model.step(x, state)?;
                Ok(())
            }
        }
    }

    /// One step of every stream; returns the last layer's new `h`.
    pub fn step(&mut self, x: &Tensor<f32>, state: &mut State<f32>) -> Result<Tensor<f32>> {
        match self {
            Backend::Cpu(model) => model.step(x, state),
            Backend::Cuda(model) => model.step(x, state),
        }
    }

    /// A forward that keeps what backward needs; `seed` draws the dropout
    /// masks (None: a fresh seed).
    pub fn forward_train(
        &mut self,
        args: &ForwardInput<'_, f32>,
        seed: Option<u64>,
    ) -> Result<(ForwardOutput<f32>, TrainingState)> {
        Ok(match self {
            Backend::Cpu(model) => {
                let (out, reserve) = model.forward_train(args, seed)?;
                (out, TrainingState::Cpu(Box::new(reserve)))
            }
            Backend::Cuda(model) => {
                let (out, state) = model.forward_train(args, seed)?;
                (out, TrainingState::Cuda(Box::new(state)))
            }
        })
    }

    /// Backward through the training forward that made `state`, with the
    /// gradients of its outputs: the gradients of its inputs and every weight.
    pub fn backward(
        &mut self,
        args: &ForwardInput<'_, f32>,
        state: &TrainingState,
        grads: &GradOutputs<'_, f32>,
    ) -> Result<Gradients<f32>> {
        match (self, state) {
            (Backend::Cpu(model), TrainingState::Cpu(reserve)) => model.backward(args, reserve, grads),
            (Backend::Cuda(model), TrainingState::Cuda(state)) => model.backward(state, grads),
            _ => Err(Error::Unsupported(
                "a training state from the other backend".into(),
            )),
        }
    }

    /// After an optimizer step on the host copy: the backend's copy follows.
    pub fn set_weights<T: Element>(&mut self, weights: &Weights<T>) -> Result<()> {
        match self {
            Backend::Cpu(model) => model.set_weights(weights),
            Backend::Cuda(model) => model.set_weights(weights),
        }
    }
}
