//! The seed model: PyTorch's `ICUTimeSeriesModel`, scoring ICU stays.
//!
//! A batch-first LSTM reads hourly vitals, and the last layer's last hidden
//! state goes through Linear → ReLU → Linear(·, 1) → sigmoid to give each
//! patient's probability of in-hospital death.
//!
//! ```text
//! icu_mortality --model M.safetensors --input C.safetensors --output P.safetensors [--device auto|cpu|cuda] [--precision f32|int8|f16]
//! icu_mortality [--model M.safetensors] [--patients N] [--seed S] [--device ...]     # synthetic demo
//! ```
//! - `--model`: the whole model saved with
//!   `safetensors.torch.save_file(model.state_dict(), path)`: the LSTM under
//!   `lstm.*`, the head under `head.1.*` and `head.3.*`. The number of
//!   vitals, the hidden size and the number of layers come from the file.
//! - `--input`: `vitals` f32 `[B, T, F]` and, optionally, `lengths` i64 `[B]`
//!   (hours per stay, as `pack_padded_sequence(vitals, lengths,
//!   batch_first=True, enforce_sorted=False)` takes them).
//! - `--output`: `logit` and `prob` f32 `[B, 1]`, written whole or not at all.
//!
//! `auto` (the default) runs the LSTM on the GPU when there is one, else on
//! the fast CPU path; the head is a few thousand flops and stays on the CPU.
//! `--precision int8` (s8 weights, u8 activations per stay and hour) or
//! `f16` (f16 weights) runs the LSTM on the CPU in that format (README,
//! "Reduced precision"); on the clinical fixtures no decision changes.
//! Without `--input` it scores a synthetic cohort whose outcomes are known,
//! with the model `train_icu` trained on another synthetic cohort
//! (`examples/models/icu_trained.safetensors`, unless `--model` is given),
//! and prints its AUROC and calibration beside the backend and the time.

mod clinical;

use clap::Parser;
use clinical::{
    auroc, last_hidden, mortality_labels, synthetic_cohort, Cohort, IcuModel, Runtime, Work, FEATURES,
};
use rnn_kernels::{Error, ForwardInput, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Score ICU stays with PyTorch's ICUTimeSeriesModel")]
struct Args {
    /// The whole PyTorch model's state_dict as safetensors (lstm.*, head.1.*, head.3.*).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A cohort to score: vitals [B, T, F] f32, and optionally lengths [B] i64.
    #[arg(long, requires = "output")]
    input: Option<PathBuf>,
    /// Where the scores go (logit and prob, [B, 1] f32).
    #[arg(long, requires = "input")]
    output: Option<PathBuf>,
    /// Synthetic demo (no --input): how many patients.
    #[arg(long, default_value_t = 512)]
    patients: usize,
    /// Synthetic demo: the cohort's seed (the trained model saw seed 7's).
    #[arg(long, default_value_t = 2024)]
    seed: u64,
    #[command(flatten)]
    run: Runtime,
}

/// The demo's model when no `--model` is given: `train_icu` with its
/// defaults (examples/models/README.md says how it was made).
const TRAINED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/models/icu_trained.safetensors"
);

/// Scores the cohort file `input` with the model file `model` into `output`.
fn score_file(model_path: &Path, input: &Path, output: &Path, run: Runtime) -> Result<()> {
    let model = IcuModel::load(model_path)?;
    let config = model.lstm.config().clone();
    let cohort = Cohort::load(input, config.input_size, None)?;
    let (mut backend, backend_line) = run.backend(&model.lstm)?;
    let out = backend.forward(&cohort.args())?;
    let logits = model.logits(last_hidden(&out, &config));
    clinical::write_scores(output, &logits, &[model_path, input])?;
    let hours: usize = cohort.lengths.iter().sum();
    println!(
        "scored {} stays ({hours} patient-hours) with {} + head → {}",
        cohort.batch(),
        rnn_kernels::weights::describe(&config),
        output.display()
    );
    println!("backend: {backend_line}");
    Ok(())
}

/// Scores a synthetic cohort and prints what a ward would see.
fn demo(args: &Args) -> Result<()> {
    if args.patients == 0 {
        return Err(Error::Config("--patients must be at least 1".into()));
    }
    let (model, source) = match &args.model {
        Some(path) => (IcuModel::load(path)?, format!("weights from {}", path.display())),
        None => (
            IcuModel::load(Path::new(TRAINED))?,
            "weights trained by train_icu (examples/models/icu_trained.safetensors)".into(),
        ),
    };
    let config = model.lstm.config().clone();
    if config.input_size != FEATURES {
        return Err(Error::Config(format!(
            "the synthetic cohort has {FEATURES} vitals, the model takes {}: score a cohort file with --input",
            config.input_size
        )));
    }
    let cohort = synthetic_cohort(args.patients, args.seed);
    let died = mortality_labels(&cohort, args.seed);
    let args_in = ForwardInput::new(&cohort.vitals).lengths(&cohort.lengths);
    let (mut backend, backend_line) = args.run.backend(&model.lstm)?;

    // The first call sizes the workspaces; time the second, as a service would run.
    backend.forward(&args_in)?;
    let start = Instant::now();
    let out = backend.forward(&args_in)?;
    let probabilities: Vec<f32> = model
        .logits(last_hidden(&out, &config))
        .into_iter()
        .map(clinical::sigmoid)
        .collect();
    let elapsed = start.elapsed();

    let mut sorted = probabilities.clone();
    sorted.sort_by(f32::total_cmp);
    let quantile = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let mean = probabilities.iter().sum::<f32>() / probabilities.len() as f32;
    let hours: usize = cohort.lengths.iter().sum();
    println!(
        "ICU mortality model: {} + MLP head, {source}",
        rnn_kernels::weights::describe(&config)
    );
    let deaths = died.iter().filter(|&&d| d > 0.5).count();
    println!(
        "cohort: {} synthetic patients, {hours} patient-hours (stays of 12..=48 h), {deaths} deaths",
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
    let caught = (probabilities.iter().zip(&died)).filter(|(&p, &d)| p >= 0.5 && d > 0.5);
    println!(
        "flagged (P >= 0.5): {flagged} of {}, {} of the {deaths} deaths",
        args.patients,
        caught.count()
    );
    if deaths > 0 && deaths < args.patients {
        println!("AUROC: {:.3}", auroc(&probabilities, &died));
    }
    println!("calibration: {}", calibration(&probabilities, &died));
    let mut ranked: Vec<usize> = (0..probabilities.len()).collect();
    ranked.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
    let top: Vec<String> = ranked
        .iter()
        .take(5)
        .map(|&p| format!("#{p} ({} h): {:.3}", cohort.lengths[p], probabilities[p]))
        .collect();
    println!("highest risk: {}", top.join(", "));
    println!("backend: {backend_line}");
    println!(
        "time: {:.2} ms for the whole cohort ({:.1} µs per patient){}",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / args.patients as f64,
        if backend.is_cuda() {
            ", copies to and from the GPU included"
        } else {
            ""
        }
    );
    Ok(())
}

/// Predicted against observed mortality: over the cohort, then by fifths of
/// predicted risk (lowest first).
fn calibration(probabilities: &[f32], died: &[f32]) -> String {
    let mean = |rows: &[usize], values: &[f32]| {
        rows.iter().map(|&r| f64::from(values[r])).sum::<f64>() / rows.len() as f64
    };
    let mut ranked: Vec<usize> = (0..probabilities.len()).collect();
    ranked.sort_by(|&a, &b| probabilities[a].total_cmp(&probabilities[b]));
    let fifths: Vec<String> = (0..5)
        .map(|k| &ranked[k * ranked.len() / 5..(k + 1) * ranked.len() / 5])
        .filter(|rows| !rows.is_empty())
        .map(|rows| format!("{:.2}→{:.2}", mean(rows, probabilities), mean(rows, died)))
        .collect();
    format!(
        "predicted {:.3}, observed {:.3}; by fifth of risk (predicted→observed) {}",
        mean(&ranked, probabilities),
        mean(&ranked, died),
        fifths.join("  ")
    )
}

fn run(args: Args) -> Result<()> {
    match Work::from_options(
        args.model.as_deref(),
        args.input.as_deref(),
        args.output.as_deref(),
    )? {
        Work::Score { model, input, output } => score_file(model, input, output, args.run),
        Work::Demo => demo(&args),
    }
}

fn main() -> ExitCode {
    clinical::exit("icu_mortality", run(Args::parse()))
}
