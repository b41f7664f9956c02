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

mod icu;

use clap::Parser;
use icu::{Backend, DeviceChoice, Head, FEATURES, HIDDEN};
use rnn_kernels::rng::SplitMix64;
use rnn_kernels::{Error, ForwardInput, Result, RnnConfig, Tensor, TensorFile, Weights};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

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

struct Model {
    lstm: Weights<f32>,
    head: Head,
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
            head: Head::load(&file)?,
        })
    }

    fn random(seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed ^ 0x4EAD);
        Model {
            lstm: Weights::random(icu::lstm_config(), seed).expect("a valid configuration"),
            head: Head::random(&mut rng),
        }
    }

    /// Probabilities for `vitals` `[B, T, 6]` with `lengths` hours each.
    fn predict(&self, backend: &mut Backend, vitals: &Tensor<f32>, lengths: &[usize]) -> Result<Vec<f32>> {
        let out = backend.forward(&self.lstm, &ForwardInput::new(vitals).lengths(lengths))?;
        let batch = lengths.len();
        let last_layer = &out.h_n.data()[batch * HIDDEN..]; // h_n[-1]
        Ok(last_layer
            .chunks(HIDDEN)
            .map(|h| {
                let (logit, _) = self.head.logit(h);
                icu::sigmoid(logit)
            })
            .collect())
    }
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
    let cohort = icu::synthetic_cohort(args.patients, args.seed);
    let (vitals, lengths) = (cohort.vitals, cohort.lengths);
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
