//! The seed model: PyTorch's `ICUTimeSeriesModel`, scoring ICU stays.
//!
//! A 2-layer LSTM reads hourly vitals (6 features), and the last layer's last
//! hidden state goes through Linear(64, 32) → ReLU → Linear(32, 1) → sigmoid
//! to give each patient's probability of in-hospital death.
//!
//! ```text
//! cargo run --release --example icu_mortality [-- --model icu.safetensors] [--patients N] [--seed S]
//!                                                [--device auto|cpu|cuda]
//! ```
//! `auto` (the default) runs the LSTM on the GPU when there is one, else on
//! the CPU reference; the head is a few thousand flops and stays on the CPU.
//! `--model` takes the whole PyTorch model saved with
//! `safetensors.torch.save_file(model.state_dict(), path)`: the LSTM under
//! `lstm.*` and the head under `head.1.*` and `head.3.*`. Without it the
//! weights are random (seeded), which shows the plumbing, not a prediction.

use clap::Parser;
use rnn_kernels::cuda::{CudaDevice, CudaRnn};
use rnn_kernels::rng::SplitMix64;
use rnn_kernels::{cpu, Error, ForwardInput, Result, RnnConfig, Tensor, TensorFile, Weights};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

const FEATURES: usize = 6;
const HIDDEN: usize = 64;
const HEAD_HIDDEN: usize = 32;
const MAX_HOURS: usize = 48;

#[derive(Parser)]
struct Args {
    /// The whole PyTorch model's state_dict as safetensors.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value_t = 512)]
    patients: usize,
    #[arg(long, default_value_t = 2024)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

/// Where the LSTM runs.
enum Backend {
    Cpu,
    Cuda(Box<CudaRnn>),
}

impl Backend {
    /// The GPU if asked for (or if `auto` finds one), else the CPU, with a
    /// line saying which and why.
    fn choose(choice: DeviceChoice, lstm: &Weights<f32>) -> Result<(Backend, String)> {
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
}

/// `Linear(in, out)`: `y = W x + b` with `W` `[out, in]`.
struct Linear {
    weight: Tensor<f32>,
    bias: Tensor<f32>,
}

impl Linear {
    fn load(file: &TensorFile, name: &str, inputs: usize, outputs: usize) -> Result<Self> {
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
    fn random(inputs: usize, outputs: usize, rng: &mut SplitMix64) -> Self {
        let bound = 1.0 / (inputs as f64).sqrt();
        let mut draw = |n| (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect();
        Linear {
            weight: Tensor::new([outputs, inputs], draw(outputs * inputs)).unwrap(),
            bias: Tensor::new([outputs], draw(outputs)).unwrap(),
        }
    }

    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let inputs = x.len();
        self.weight
            .data()
            .chunks(inputs)
            .zip(self.bias.data())
            .map(|(row, b)| b + row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>())
            .collect()
    }
}

struct Model {
    lstm: Weights<f32>,
    hidden: Linear,
    output: Linear,
}

impl Model {
    fn load(path: &PathBuf) -> Result<Self> {
        let file = TensorFile::open(path)?;
        let mut lstm = Weights::<f32>::from_tensor_file(&file, Some("lstm"))?;
        let config = lstm.config().clone();
        let expected = RnnConfig {
            num_layers: 2,
            ..RnnConfig::lstm(FEATURES, HIDDEN)
        };
        if (
            config.cell,
            config.input_size,
            config.hidden_size,
            config.num_layers,
            config.bidirectional,
        ) != (
            expected.cell,
            expected.input_size,
            expected.hidden_size,
            expected.num_layers,
            false,
        ) {
            return Err(Error::Config(format!(
                "{} holds {}, but the ICU model is a 2-layer unidirectional lstm(6, 64)",
                path.display(),
                rnn_kernels::weights::describe(&config)
            )));
        }
        // The model was built with batch_first=True; the weights don't record it.
        if !config.batch_first {
            let named = lstm
                .named_parameters()
                .into_iter()
                .map(|(n, t)| (n, t.clone()))
                .collect();
            lstm = Weights::from_named(
                RnnConfig {
                    batch_first: true,
                    ..config
                },
                named,
            )?;
        }
        Ok(Model {
            lstm,
            hidden: Linear::load(&file, "head.1", HIDDEN, HEAD_HIDDEN)?,
            output: Linear::load(&file, "head.3", HEAD_HIDDEN, 1)?,
        })
    }

    fn random(seed: u64) -> Self {
        let config = RnnConfig {
            num_layers: 2,
            batch_first: true,
            ..RnnConfig::lstm(FEATURES, HIDDEN)
        };
        let mut rng = SplitMix64::new(seed ^ 0x4EAD);
        Model {
            lstm: Weights::random(config, seed).expect("a valid configuration"),
            hidden: Linear::random(HIDDEN, HEAD_HIDDEN, &mut rng),
            output: Linear::random(HEAD_HIDDEN, 1, &mut rng),
        }
    }

    /// Probabilities for `vitals` `[B, T, 6]` with `lengths` hours each.
    fn predict(&self, backend: &mut Backend, vitals: &Tensor<f32>, lengths: &[usize]) -> Result<Vec<f32>> {
        let args = ForwardInput::new(vitals).lengths(lengths);
        let out = match backend {
            Backend::Cpu => cpu::forward(&self.lstm, &args)?,
            Backend::Cuda(model) => model.forward(&args)?,
        };
        let batch = lengths.len();
        let last_layer = &out.h_n.data()[batch * HIDDEN..]; // h_n[-1]
        Ok(last_layer
            .chunks(HIDDEN)
            .map(|h| {
                let hidden: Vec<f32> = self.hidden.apply(h).into_iter().map(|v| v.max(0.0)).collect();
                let logit = self.output.apply(&hidden)[0];
                1.0 / (1.0 + (-logit).exp())
            })
            .collect())
    }
}

/// Hourly vitals, standardised as a training pipeline would feed them:
/// heart rate, systolic pressure, respiratory rate, SpO2, temperature,
/// lactate. About one patient in six deteriorates over the stay.
fn synthetic_cohort(patients: usize, seed: u64) -> (Tensor<f32>, Vec<usize>) {
    const MEAN: [f64; FEATURES] = [85.0, 120.0, 18.0, 96.0, 37.0, 1.5];
    const STD: [f64; FEATURES] = [15.0, 20.0, 4.0, 3.0, 0.7, 1.0];
    // Per hour, for a deteriorating patient: tachycardia, falling pressure,
    // faster breathing, falling saturation, fever, rising lactate.
    const DRIFT: [f64; FEATURES] = [0.8, -0.9, 0.25, -0.15, 0.03, 0.08];
    let mut rng = SplitMix64::new(seed);
    let mut data = vec![0.0f32; patients * MAX_HOURS * FEATURES];
    let mut lengths = Vec::with_capacity(patients);
    for stay in data.chunks_mut(MAX_HOURS * FEATURES) {
        let hours = rng.int_inclusive(12, MAX_HOURS);
        lengths.push(hours);
        let deteriorating = rng.next_f64() < 1.0 / 6.0;
        let baseline: Vec<f64> = (0..FEATURES)
            .map(|f| MEAN[f] + 0.5 * STD[f] * rng.normal())
            .collect();
        // Rows past `hours` stay zero: padding, never read.
        for (hour, row) in stay.chunks_mut(FEATURES).take(hours).enumerate() {
            for (f, value) in row.iter_mut().enumerate() {
                let drift = if deteriorating {
                    DRIFT[f] * hour as f64
                } else {
                    0.0
                };
                let raw = baseline[f] + drift + 0.3 * STD[f] * rng.normal();
                *value = ((raw - MEAN[f]) / STD[f]) as f32;
            }
        }
    }
    (
        Tensor::new([patients, MAX_HOURS, FEATURES], data).unwrap(),
        lengths,
    )
}

fn run(args: Args) -> Result<()> {
    if args.patients == 0 {
        return Err(Error::Config("--patients must be at least 1".into()));
    }
    let (model, source) = match &args.model {
        Some(path) => (Model::load(path)?, format!("weights from {}", path.display())),
        None => (
            Model::random(args.seed),
            format!("random weights (seed {})", args.seed),
        ),
    };
    let (vitals, lengths) = synthetic_cohort(args.patients, args.seed);
    let (mut backend, backend_line) = Backend::choose(args.device, &model.lstm)?;

    // The first call sizes the GPU's workspace; time the second, as a service would run.
    model.predict(&mut backend, &vitals, &lengths)?;
    let start = Instant::now();
    let probabilities = model.predict(&mut backend, &vitals, &lengths)?;
    let elapsed = start.elapsed();

    let mut sorted = probabilities.clone();
    sorted.sort_by(f32::total_cmp);
    let quantile = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let mean = probabilities.iter().sum::<f32>() / probabilities.len() as f32;
    let hours: usize = lengths.iter().sum();

    println!("ICU mortality model: 2-layer LSTM(6 → 64) + MLP head, {source}");
    println!(
        "cohort: {} synthetic patients, {hours} patient-hours (stays of 12..=48 h)",
        args.patients
    );
    println!(
        "P(death): mean {mean:.3}  min {:.3}  p25 {:.3}  median {:.3}  p75 {:.3}  max {:.3}",
        sorted[0],
        quantile(0.25),
        quantile(0.5),
        quantile(0.75),
        sorted[sorted.len() - 1]
    );
    let flagged = probabilities.iter().filter(|&&p| p >= 0.5).count();
    println!("flagged (P >= 0.5): {flagged} of {}", args.patients);
    let mut ranked: Vec<usize> = (0..probabilities.len()).collect();
    ranked.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
    let top: Vec<String> = ranked
        .iter()
        .take(5)
        .map(|&p| format!("#{p} ({} h): {:.3}", lengths[p], probabilities[p]))
        .collect();
    println!("highest risk: {}", top.join(", "));
    println!("backend: {backend_line}");
    println!(
        "time: {:.2} ms for the whole cohort ({:.1} µs per patient){}",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / args.patients as f64,
        if matches!(backend, Backend::Cuda(_)) {
            ", copies to and from the GPU included"
        } else {
            ""
        }
    );
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("icu_mortality: error: {e}");
            ExitCode::FAILURE
        }
    }
}
