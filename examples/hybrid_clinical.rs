//! The hybrid clinical model: hourly vitals through an LSTM, a clinical
//! note's embedding (a BERT-style encoder's [CLS] vector) projected to the
//! hidden size, both into one head.
//!
//! ```python
//! lstm = nn.LSTM(F, hidden, num_layers=2, batch_first=True)
//! text_proj = nn.Linear(E, hidden)
//! head = nn.Sequential(nn.Linear(2 * hidden, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 1))
//! logit = head(torch.cat([h_n[-1], text_proj(text_embed)], -1))
//! ```
//!
//! ```text
//! hybrid_clinical --model M.safetensors --input C.safetensors --output P.safetensors [--device auto|cpu|cuda] [--precision f32|int8|f16]
//! hybrid_clinical [--model M.safetensors] [--patients N] [--embed E] [--seed S]     # synthetic demo
//! ```
//! - `--model`: the `state_dict` (`lstm.*`, `text_proj.*`, `head.0.*`,
//!   `head.3.*`); F, E and the hidden size come from the file.
//! - `--input`: `vitals` f32 `[B, T, F]`, `text_embed` f32 `[B, E]`, and
//!   optionally `lengths` i64 `[B]`.
//! - `--output`: `logit` and `prob` f32 `[B, 1]`, written whole or not at all.
//!
//! Without `--input`, a synthetic cohort with synthetic note embeddings
//! (random weights unless `--model` is given).

mod clinical;

use clap::Parser;
use clinical::{
    last_hidden, synthetic_cohort, synthetic_notes, Cohort, HybridModel, Runtime, Work, FEATURES,
};
use rnn_kernels::{Error, ForwardInput, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Score ICU stays with the hybrid vitals + note-embedding model")]
struct Args {
    /// The model's state_dict as safetensors (lstm.*, text_proj.*, head.0.*, head.3.*).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A cohort to score: vitals [B, T, F] f32, text_embed [B, E] f32, optionally lengths [B] i64.
    #[arg(long, requires = "output")]
    input: Option<PathBuf>,
    /// Where the scores go (logit and prob, [B, 1] f32).
    #[arg(long, requires = "input")]
    output: Option<PathBuf>,
    /// Synthetic demo (no --input): how many patients.
    #[arg(long, default_value_t = 256)]
    patients: usize,
    /// Synthetic demo with random weights: the embedding size (768 for BERT, 384 for MiniLM).
    #[arg(long, default_value_t = 768)]
    embed: usize,
    /// Synthetic demo: the cohort's (and random weights') seed.
    #[arg(long, default_value_t = 2024)]
    seed: u64,
    #[command(flatten)]
    run: Runtime,
}

fn score_file(model_path: &Path, input: &Path, output: &Path, run: Runtime) -> Result<()> {
    let model = HybridModel::load(model_path)?;
    let config = model.lstm.config().clone();
    let cohort = Cohort::load(input, config.input_size, Some(model.embed_size()))?;
    let text = cohort.text_embed.as_ref().expect("checked by Cohort::load");
    let (mut backend, backend_line) = run.backend(&model.lstm)?;
    let out = backend.forward(&cohort.args())?;
    let logits = model.logits(last_hidden(&out, &config), text.data());
    clinical::write_scores(output, &logits, &[model_path, input])?;
    println!(
        "scored {} stays with {} + text_proj({} → {}) + head → {}",
        cohort.batch(),
        rnn_kernels::weights::describe(&config),
        model.embed_size(),
        config.hidden_size,
        output.display()
    );
    println!("backend: {backend_line}");
    Ok(())
}

fn demo(args: &Args) -> Result<()> {
    if args.patients == 0 || args.embed == 0 {
        return Err(Error::Config("--patients and --embed must be at least 1".into()));
    }
    let (model, source) = match &args.model {
        Some(path) => (
            HybridModel::load(path)?,
            format!("weights from {}", path.display()),
        ),
        None => (
            HybridModel::random(args.embed, args.seed),
            format!("random weights (seed {})", args.seed),
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
    let notes = synthetic_notes(&cohort.deteriorating, model.embed_size(), args.seed);
    let args_in = ForwardInput::new(&cohort.vitals).lengths(&cohort.lengths);
    let (mut backend, backend_line) = args.run.backend(&model.lstm)?;
    backend.forward(&args_in)?;
    let start = Instant::now();
    let out = backend.forward(&args_in)?;
    let logits = model.logits(last_hidden(&out, &config), notes.data());
    let elapsed = start.elapsed();
    let probabilities: Vec<f32> = logits.into_iter().map(clinical::sigmoid).collect();
    let mean = |keep: bool| {
        let picked: Vec<f32> = probabilities
            .iter()
            .zip(&cohort.deteriorating)
            .filter(|(_, &d)| d == keep)
            .map(|(&p, _)| p)
            .collect();
        picked.iter().sum::<f32>() / picked.len().max(1) as f32
    };
    println!(
        "hybrid model: {} + text_proj({} → {}) + head, {source}",
        rnn_kernels::weights::describe(&config),
        model.embed_size(),
        config.hidden_size
    );
    println!(
        "cohort: {} synthetic patients with a note embedding each",
        args.patients
    );
    println!(
        "mean P(death): {:.3} for the patients who deteriorate, {:.3} for the others",
        mean(true),
        mean(false)
    );
    println!("backend: {backend_line}");
    println!(
        "time: {:.2} ms for the whole cohort, heads included",
        elapsed.as_secs_f64() * 1e3
    );
    Ok(())
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
    clinical::exit("hybrid_clinical", run(Args::parse()))
}
