//! What the ICU examples share: PyTorch's `ICUTimeSeriesModel` (its LSTM
//! configuration and its MLP head) and a synthetic cohort of hourly vitals.
#![allow(dead_code)] // each example uses its own part

use rnn_kernels::cuda::{CudaDevice, CudaRnn, CudaTrainingState};
use rnn_kernels::reference;
use rnn_kernels::rng::SplitMix64;
use rnn_kernels::{Error, ForwardInput, ForwardOutput, Result, RnnConfig, Tensor, TensorFile, Weights};
use rnn_kernels::{GradOutputs, Gradients};

pub const FEATURES: usize = 6;
pub const HIDDEN: usize = 64;
pub const HEAD_HIDDEN: usize = 32;
pub const MAX_HOURS: usize = 48;

/// `nn.LSTM(6, 64, num_layers=2, batch_first=True, dropout=0.2)`.
pub fn lstm_config() -> RnnConfig {
    RnnConfig {
        num_layers: 2,
        batch_first: true,
        dropout: 0.2,
        ..RnnConfig::lstm(FEATURES, HIDDEN)
    }
}

/// `Linear(in, out)`: `y = W x + b` with `W` `[out, in]`.
pub struct Linear {
    pub weight: Tensor<f32>,
    pub bias: Tensor<f32>,
}

impl Linear {
    pub fn load(file: &TensorFile, name: &str, inputs: usize, outputs: usize) -> Result<Self> {
        let get = |part: &str, shape: Vec<usize>| -> Result<Tensor<f32>> {
            let full = format!("{name}.{part}");
            let t = file.float::<f32>(&full)?.ok_or_else(|| Error::Missing {
                tensor: full.clone(),
                context: "the ICU model's head".into(),
            })?;
            if t.shape() != shape.as_slice() {
                return Err(Error::Shape {
                    tensor: full,
                    expected: format!("{shape:?}"),
                    found: rnn_kernels::error::ShapeDisplay(t.shape().to_vec()),
                });
            }
            Ok(t)
        };
        Ok(Linear {
            weight: get("weight", vec![outputs, inputs])?,
            bias: get("bias", vec![outputs])?,
        })
    }

    /// PyTorch's default `nn.Linear` initialisation: uniform ±1/√in.
    pub fn random(inputs: usize, outputs: usize, rng: &mut SplitMix64) -> Self {
        let bound = 1.0 / (inputs as f64).sqrt();
        let mut draw = |n| (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect();
        Linear {
            weight: Tensor::new([outputs, inputs], draw(outputs * inputs)).unwrap(),
            bias: Tensor::new([outputs], draw(outputs)).unwrap(),
        }
    }

    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        self.weight
            .data()
            .chunks(x.len())
            .zip(self.bias.data())
            .map(|(row, b)| b + row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>())
            .collect()
    }

    /// Adds the gradients of `W` and `b` for input `x` and output gradient
    /// `dy` to `grad`, and returns the gradient of `x`.
    pub fn backward(&self, x: &[f32], dy: &[f32], grad: &mut Linear) -> Vec<f32> {
        let mut dx = vec![0.0; x.len()];
        let rows = self.weight.data().chunks(x.len());
        let grad_rows = grad.weight.data_mut().chunks_mut(x.len());
        for (((row, grad_row), &d), gb) in rows.zip(grad_rows).zip(dy).zip(grad.bias.data_mut()) {
            *gb += d;
            for ((g, &w), (&xv, dxv)) in grad_row.iter_mut().zip(row).zip(x.iter().zip(dx.iter_mut())) {
                *g += d * xv;
                *dxv += d * w;
            }
        }
        dx
    }

    pub fn zeros_like(&self) -> Linear {
        Linear {
            weight: Tensor::zeros(self.weight.shape()),
            bias: Tensor::zeros(self.bias.shape()),
        }
    }
}

/// `head = Sequential(Dropout, Linear(64, 32), ReLU, Linear(32, 1))`
/// (the dropout is not applied here: inference, and a small head in training).
pub struct Head {
    pub hidden: Linear,
    pub output: Linear,
}

impl Head {
    pub fn load(file: &TensorFile) -> Result<Self> {
        Ok(Head {
            hidden: Linear::load(file, "head.1", HIDDEN, HEAD_HIDDEN)?,
            output: Linear::load(file, "head.3", HEAD_HIDDEN, 1)?,
        })
    }

    pub fn random(rng: &mut SplitMix64) -> Self {
        Head {
            hidden: Linear::random(HIDDEN, HEAD_HIDDEN, rng),
            output: Linear::random(HEAD_HIDDEN, 1, rng),
        }
    }

    /// The logit for one patient's last hidden state, and the ReLU layer's input.
    pub fn logit(&self, h: &[f32]) -> (f32, Vec<f32>) {
        let pre = self.hidden.apply(h);
        let hidden: Vec<f32> = pre.iter().map(|v| v.max(0.0)).collect();
        (self.output.apply(&hidden)[0], pre)
    }

    /// The parameters under the names PyTorch's `state_dict` gives them.
    pub fn named(&self) -> [(&'static str, &Tensor<f32>); 4] {
        [
            ("head.1.weight", &self.hidden.weight),
            ("head.1.bias", &self.hidden.bias),
            ("head.3.weight", &self.output.weight),
            ("head.3.bias", &self.output.bias),
        ]
    }
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// A synthetic cohort: standardised hourly vitals `[B, 48, 6]` (heart rate,
/// systolic pressure, respiratory rate, SpO2, temperature, lactate), each
/// stay 12..=48 hours, about one patient in six deteriorating over the stay.
pub struct Cohort {
    pub vitals: Tensor<f32>,
    pub lengths: Vec<usize>,
    pub deteriorating: Vec<bool>,
}

pub fn synthetic_cohort(patients: usize, seed: u64) -> Cohort {
    const MEAN: [f64; FEATURES] = [85.0, 120.0, 18.0, 96.0, 37.0, 1.5];
    const STD: [f64; FEATURES] = [15.0, 20.0, 4.0, 3.0, 0.7, 1.0];
    // Per hour, for a deteriorating patient: tachycardia, falling pressure,
    // faster breathing, falling saturation, fever, rising lactate.
    const DRIFT: [f64; FEATURES] = [0.8, -0.9, 0.25, -0.15, 0.03, 0.08];
    let mut rng = SplitMix64::new(seed);
    let mut data = vec![0.0f32; patients * MAX_HOURS * FEATURES];
    let mut lengths = Vec::with_capacity(patients);
    let mut deteriorating = Vec::with_capacity(patients);
    for stay in data.chunks_mut(MAX_HOURS * FEATURES) {
        let hours = rng.int_inclusive(12, MAX_HOURS);
        let worsening = rng.next_f64() < 1.0 / 6.0;
        lengths.push(hours);
        deteriorating.push(worsening);
        let baseline: Vec<f64> = (0..FEATURES)
            .map(|f| MEAN[f] + 0.5 * STD[f] * rng.normal())
            .collect();
        // Rows past `hours` stay zero: padding, never read.
        for (hour, row) in stay.chunks_mut(FEATURES).take(hours).enumerate() {
            for (f, value) in row.iter_mut().enumerate() {
                let drift = if worsening { DRIFT[f] * hour as f64 } else { 0.0 };
                let raw = baseline[f] + drift + 0.3 * STD[f] * rng.normal();
                *value = ((raw - MEAN[f]) / STD[f]) as f32;
            }
        }
    }
    Cohort {
        vitals: Tensor::new([patients, MAX_HOURS, FEATURES], data).unwrap(),
        lengths,
        deteriorating,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

/// Where the LSTM runs: the CPU reference, or the GPU.
pub enum Backend {
    Cpu,
    Cuda(Box<CudaRnn>),
}

/// What a training forward keeps for its backward, on either backend.
pub enum TrainingState {
    Cpu(reference::Reserve<f32>),
    Cuda(Box<CudaTrainingState>),
}

impl Backend {
    /// The GPU if asked for (or if `auto` finds one), else the CPU, with a
    /// line saying which and why.
    pub fn choose(choice: DeviceChoice, lstm: &Weights<f32>) -> Result<(Backend, String)> {
        if choice == DeviceChoice::Cpu {
            return Ok((Backend::Cpu, "CPU reference, f32".into()));
        }
        match CudaDevice::new(0).and_then(|device| Ok((CudaRnn::new(&device, lstm)?, device))) {
            Ok((model, device)) => Ok((
                Backend::Cuda(Box::new(model)),
                format!("CUDA on {}, f32", device.name()),
            )),
            Err(e) if choice == DeviceChoice::Cuda => Err(e),
            Err(e) => Ok((Backend::Cpu, format!("CPU reference, f32 (no GPU: {e})"))),
        }
    }

    pub fn forward(
        &mut self,
        lstm: &Weights<f32>,
        args: &ForwardInput<'_, f32>,
    ) -> Result<ForwardOutput<f32>> {
        match self {
            Backend::Cpu => reference::forward(lstm, args),
            Backend::Cuda(model) => model.forward(args),
        }
    }

    pub fn forward_train(
        &mut self,
        lstm: &Weights<f32>,
        args: &ForwardInput<'_, f32>,
        seed: u64,
    ) -> Result<(ForwardOutput<f32>, TrainingState)> {
        Ok(match self {
            Backend::Cpu => {
                let (out, reserve) = reference::forward_train(lstm, args, Some(seed))?;
                (out, TrainingState::Cpu(reserve))
            }
            Backend::Cuda(model) => {
                let (out, state) = model.forward_train(args, Some(seed))?;
                (out, TrainingState::Cuda(Box::new(state)))
            }
        })
    }

    pub fn backward(
        &mut self,
        lstm: &Weights<f32>,
        args: &ForwardInput<'_, f32>,
        state: &TrainingState,
        grads: &GradOutputs<'_, f32>,
    ) -> Result<Gradients<f32>> {
        match (self, state) {
            (Backend::Cpu, TrainingState::Cpu(reserve)) => reference::backward(lstm, args, reserve, grads),
            (Backend::Cuda(model), TrainingState::Cuda(state)) => model.backward(state, grads),
            _ => Err(Error::Unsupported(
                "a training state from the other backend".into(),
            )),
        }
    }

    /// After an optimizer step on the host copy: the GPU's copy follows.
    pub fn sync_weights(&mut self, lstm: &Weights<f32>) -> Result<()> {
        match self {
            Backend::Cpu => Ok(()),
            Backend::Cuda(model) => model.set_weights(lstm),
        }
    }
}
