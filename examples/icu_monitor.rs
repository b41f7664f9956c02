//! A bedside monitor: the ICU model scoring a ward one hour at a time.
//!
//! A ward of N beds (default 1,000) receives one vitals vector per occupied
//! bed per hour. Each hour the monitor advances every bed's LSTM state by one
//! step (the crate's step API: the state stays where it is, on the CPU or the
//! GPU, and only the new hour goes in) and scores it through the head.
//! Patients are admitted to empty beds and discharged at random; a bed's
//! state is zeroed on admission. Empty beds are stepped with the rest (their
//! rows are a few percent of the work and are reset before they are used):
//! one call per hour for the whole ward.
//!
//! ```text
//! icu_monitor [--model M.safetensors] [--beds N] [--hours H] [--threshold P] [--device auto|cpu|cuda] [--precision f32|int8|f16]
//! icu_monitor --model M.safetensors --input C.safetensors --output P.safetensors   # replay recorded stays
//! icu_monitor ... --state ward.safetensors   # the ward's state kept in a file, resumed on restart
//! ```
//! It prints, per hour, the occupied beds, admissions and discharges, the
//! beds whose probability is at or above `--threshold` (the alerts), and how
//! long scoring the whole ward took (the step and the heads); then the
//! median and 99th percentile of that latency over the hours after the
//! first (which sizes the buffers). The ward starts 85% full; the patients
//! already there are scored from the hour the monitor starts (their earlier
//! hours were not seen). With random weights (no `--model`) every score is
//! near 0.5: train one first (`train_icu`) for alerts that mean something.
//!
//! With `--input`, it replays a cohort file (as `icu_mortality` takes it)
//! hour by hour instead, and writes each stay's score after its last hour:
//! the same numbers `icu_mortality` gives for the whole stays at once.
//!
//! With `--state FILE`, the ward outlives the process: after every hour the
//! monitor writes every bed's LSTM state, which stay holds which bed and
//! its hour (and where the simulation's generator is, or which cohort is
//! being replayed and the scores so far) to FILE, whole or not at all (a
//! synced temporary renamed over it); started again with the same
//! arguments, it resumes after the last hour written, and the scores are
//! those of a run that never stopped. A FILE of another model, ward size or
//! cohort is refused.

mod clinical;

use clap::Parser;
use clinical::{Backend, Cohort, IcuModel, Patient, Runtime, FEATURES};
use rnn_kernels::rng::SplitMix64;
use rnn_kernels::state_file::Extra;
use rnn_kernels::tensor_file::{self, OwnedTensor, TensorFile};
use rnn_kernels::{Error, Result, State, StoredDtype, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Score an ICU ward hour by hour with the ICU model's step API")]
struct Args {
    /// The whole PyTorch model's state_dict (lstm.*, head.1.*, head.3.*); random weights without it.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Beds in the ward.
    #[arg(long, default_value_t = 1000)]
    beds: usize,
    /// Hours to simulate.
    #[arg(long, default_value_t = 48)]
    hours: usize,
    /// Alert when a bed's probability is at least this.
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// Seed of the simulated ward (and of the random weights).
    #[arg(long, default_value_t = 2024)]
    seed: u64,
    /// Replay a cohort file (vitals [B, T, F], optionally lengths [B]) hour by hour.
    #[arg(long, requires = "output", requires = "model")]
    input: Option<PathBuf>,
    /// With --input: where each stay's score after its last hour goes (logit, prob [B, 1]).
    #[arg(long, requires = "input")]
    output: Option<PathBuf>,
    #[command(flatten)]
    run: Runtime,
    /// Keep the ward's state in this file after every hour, and resume from it on start.
    #[arg(long)]
    state: Option<PathBuf>,
}

/// A patient in a bed: who, how long they have been in, and when they leave.
struct Stay {
    patient: Patient,
    hour: usize,
    leaves_after: usize,
}

/// The ward's LSTM state and the buffers of one hour, reused every hour.
struct Ward {
    model: IcuModel,
    backend: Backend,
    state: State<f32>,
    vitals: Tensor<f32>,
    h: Tensor<f32>,
}

impl Ward {
    fn new(model: IcuModel, backend: Backend, beds: usize) -> Self {
        let config = model.lstm.config().clone();
        Ward {
            state: State::zeros(&config, beds),
            vitals: Tensor::zeros([beds, config.input_size]),
            h: Tensor::zeros([beds, config.output_size()]),
            model,
            backend,
        }
    }

    /// Advances every bed by the hour in `self.vitals`; returns each bed's logit.
    fn hour(&mut self) -> Result<Vec<f32>> {
        self.backend
            .step_into(&self.vitals, &mut self.state, &mut self.h)?;
        Ok(self.model.logits(self.h.data()))
    }

    /// Writes the ward's LSTM state and `extra` to `path`.
    fn save(&self, path: &Path, extra: Extra) -> Result<()> {
        self.state.save(path, &self.model.lstm, extra)
    }

    /// The ward's LSTM state from `path`, if it exists (then also the file,
    /// for what the monitor kept beside it); it must be of this ward's size.
    fn resume(&mut self, path: &Path) -> Result<Option<TensorFile>> {
        tensor_file::remove_stale_temporaries(path)?;
        if !path.exists() {
            return Ok(None);
        }
        let (state, file) = State::load(path, &self.model.lstm)?;
        let (beds, found) = (self.state.h.shape()[1], state.h.shape()[1]);
        if found != beds {
            return Err(Error::file(
                path,
                format!("holds a ward of {found} beds, this one has {beds}"),
            ));
        }
        self.state = state;
        Ok(Some(file))
    }
}

/// A number the monitor kept in its state file's metadata.
fn kept<T: std::str::FromStr>(file: &TensorFile, key: &str) -> Result<T> {
    let metadata = file.metadata()?;
    metadata.get(key).and_then(|v| v.parse().ok()).ok_or_else(|| {
        Error::file(
            file.path(),
            format!("has no {key}: not a state this monitor wrote"),
        )
    })
}

/// A tensor the monitor kept in its state file, of `shape`.
fn kept_tensor<T: rnn_kernels::Element>(file: &TensorFile, name: &str, shape: &[usize]) -> Result<Tensor<T>> {
    let tensor = file.float::<T>(name)?.ok_or_else(|| Error::Missing {
        tensor: name.into(),
        context: format!("{} is not a state this monitor wrote", file.path().display()),
    })?;
    if tensor.shape() != shape {
        return Err(Error::shape(name, format!("{shape:?}"), tensor.shape()));
    }
    Ok(tensor)
}

/// Numbers per bed in the simulated ward's state file: occupied, the
/// stay's hour, the hour it leaves after, then the patient.
const BED_COLUMNS: usize = 3 + 1 + FEATURES;

fn beds_tensor(beds: &[Option<Stay>]) -> Tensor<f64> {
    let mut data = Vec::with_capacity(beds.len() * BED_COLUMNS);
    for bed in beds {
        match bed {
            Some(stay) => {
                data.extend([1.0, stay.hour as f64, stay.leaves_after as f64]);
                data.extend(stay.patient.to_row());
            }
            None => data.extend([0.0; BED_COLUMNS]),
        }
    }
    Tensor::new([beds.len(), BED_COLUMNS], data).expect("a row per bed")
}

fn beds_from(tensor: &Tensor<f64>) -> Vec<Option<Stay>> {
    tensor
        .data()
        .chunks_exact(BED_COLUMNS)
        .map(|row| {
            (row[0] != 0.0).then(|| Stay {
                hour: row[1] as usize,
                leaves_after: row[2] as usize,
                patient: Patient::from_row(&row[3..]),
            })
        })
        .collect()
}

/// The simulated ward: `--beds` beds over `--hours` hours.
fn simulate(args: &Args) -> Result<()> {
    if args.beds == 0 || args.hours == 0 {
        return Err(Error::Config("--beds and --hours must be at least 1".into()));
    }
    let (model, source) = match &args.model {
        Some(path) => (IcuModel::load(path)?, format!("weights from {}", path.display())),
        None => (
            IcuModel::random(args.seed),
            format!("random weights (seed {})", args.seed),
        ),
    };
    let features = model.lstm.config().input_size;
    if features != FEATURES {
        return Err(Error::Config(format!(
            "the simulated ward measures {FEATURES} vitals, the model takes {features}: replay a cohort file with --input"
        )));
    }
    let (backend, backend_line) = args.run.backend(&model.lstm)?;
    println!(
        "ward of {} beds, {} hours; {} + head, {source}; {backend_line}",
        args.beds,
        args.hours,
        rnn_kernels::weights::describe(model.lstm.config())
    );
    let mut ward = Ward::new(model, backend, args.beds);
    let mut rng = SplitMix64::new(args.seed ^ 0xBED5);
    let admit = |rng: &mut SplitMix64| Stay {
        patient: Patient::admit(rng),
        hour: 0,
        leaves_after: rng.int_inclusive(12, 96),
    };
    // The ward starts 85% full, with patients part-way through their stays.
    let mut beds: Vec<Option<Stay>> = (0..args.beds)
        .map(|_| {
            (rng.next_f64() < 0.85).then(|| {
                let mut stay = admit(&mut rng);
                stay.hour = rng.int_inclusive(0, stay.leaves_after - 1);
                stay
            })
        })
        .collect();
    let mut first_hour = 0;
    if let Some(file) = args.state.as_ref().map(|p| ward.resume(p)).transpose()?.flatten() {
        first_hour = kept(&file, "ward.next_hour")?;
        rng = SplitMix64::new(kept(&file, "ward.rng")?);
        beds = beds_from(&kept_tensor(&file, "ward.beds", &[args.beds, BED_COLUMNS])?);
        println!(
            "resumed from {} after hour {}",
            file.path().display(),
            first_hour as i64 - 1
        );
    }
    println!("hour  occupied  admitted  discharged  alerts  latency");
    let mut latencies = Vec::with_capacity(args.hours);
    for hour in first_hour..args.hours {
        let (mut admitted, mut discharged, mut fresh) = (0, 0, Vec::new());
        for (b, bed) in beds.iter_mut().enumerate() {
            if bed.as_ref().is_some_and(|s| s.hour >= s.leaves_after) {
                *bed = None;
                discharged += 1;
            }
            if bed.is_none() && rng.next_f64() < 0.3 {
                *bed = Some(admit(&mut rng));
                fresh.push(b);
                admitted += 1;
            }
        }
        // A new patient's LSTM starts from zero (hours before the first
        // patient arrived leave nothing behind either).
        ward.state.reset_rows(&fresh)?;
        for (b, bed) in beds.iter().enumerate() {
            let row = &mut ward.vitals.data_mut()[b * FEATURES..(b + 1) * FEATURES];
            match bed {
                Some(stay) => stay.patient.vitals(stay.hour, &mut rng, row),
                None => row.fill(0.0),
            }
        }
        let start = Instant::now();
        let logits = ward.hour()?;
        let elapsed = start.elapsed();
        latencies.push(elapsed.as_secs_f64() * 1e3);
        let occupied = beds.iter().filter(|b| b.is_some()).count();
        let alerts = beds
            .iter()
            .zip(&logits)
            .filter(|(bed, &logit)| bed.is_some() && clinical::sigmoid(logit) >= args.threshold)
            .count();
        println!(
            "{hour:>4}  {occupied:>8}  {admitted:>8}  {discharged:>10}  {alerts:>6}  {:>7.3} ms",
            elapsed.as_secs_f64() * 1e3
        );
        for stay in beds.iter_mut().flatten() {
            stay.hour += 1;
        }
        if let Some(path) = &args.state {
            let extra = Extra {
                tensors: vec![(
                    "ward.beds".into(),
                    OwnedTensor::try_float("ward.beds", &beds_tensor(&beds), StoredDtype::F64)?,
                )],
                metadata: HashMap::from([
                    ("ward.next_hour".to_string(), (hour + 1).to_string()),
                    ("ward.rng".to_string(), rng.state().to_string()),
                ]),
            };
            ward.save(path, extra)?;
        }
    }
    if latencies.is_empty() {
        println!("the ward's {} hours were all done before this start", args.hours);
        return Ok(());
    }
    // The first hour sizes the buffers; the percentiles are of the hours a
    // running monitor sees.
    let first = latencies[0];
    let mut steady = if latencies.len() > 1 {
        latencies[1..].to_vec()
    } else {
        latencies
    };
    steady.sort_by(f64::total_cmp);
    let pick = |q: f64| steady[((steady.len() - 1) as f64 * q).round() as usize];
    println!(
        "scoring the ward ({} beds): p50 {:.3} ms, p99 {:.3} ms per hour (the first hour, which sizes the buffers: {first:.3} ms)",
        args.beds,
        pick(0.5),
        pick(0.99)
    );
    Ok(())
}

/// Replays the stays of a cohort file hour by hour; each stay's score is
/// taken after its own last hour.
fn replay(model_path: &Path, input: &Path, output: &Path, run: Runtime, state: Option<&Path>) -> Result<()> {
    tensor_file::refuse_overwrite(output, &[model_path, input])?;
    // A run killed while writing the scores left their temporary behind.
    tensor_file::remove_stale_temporaries(output)?;
    let model = IcuModel::load(model_path)?;
    let features = model.lstm.config().input_size;
    let cohort = Cohort::load(input, features, None)?;
    let (batch, hours) = (cohort.batch(), cohort.vitals.shape()[1]);
    let (backend, backend_line) = run.backend(&model.lstm)?;
    let mut ward = Ward::new(model, backend, batch);
    let mut logits = vec![0.0f32; batch];
    let cohort_id = cohort_fingerprint(&cohort);
    let mut first_hour = 0;
    if let Some(file) = state.map(|p| ward.resume(p)).transpose()?.flatten() {
        let kept_id: String = kept(&file, "replay.cohort")?;
        if kept_id != cohort_id {
            return Err(Error::file(
                file.path(),
                format!(
                    "is the state of replaying another cohort than {}",
                    input.display()
                ),
            ));
        }
        first_hour = kept(&file, "replay.next_hour")?;
        logits = kept_tensor::<f32>(&file, "replay.logits", &[batch])?.into_data();
    }
    for hour in first_hour..hours {
        for b in 0..batch {
            let src = &cohort.vitals.data()[(b * hours + hour) * features..][..features];
            ward.vitals.data_mut()[b * features..(b + 1) * features].copy_from_slice(src);
        }
        let now = ward.hour()?;
        for (b, &len) in cohort.lengths.iter().enumerate() {
            if len == hour + 1 {
                logits[b] = now[b];
            }
        }
        if let Some(path) = state {
            let scores = Tensor::new([batch], logits.clone())?;
            let extra = Extra {
                tensors: vec![(
                    "replay.logits".into(),
                    OwnedTensor::try_float("replay.logits", &scores, StoredDtype::F32)?,
                )],
                metadata: HashMap::from([
                    ("replay.next_hour".to_string(), (hour + 1).to_string()),
                    ("replay.cohort".to_string(), cohort_id.clone()),
                ]),
            };
            ward.save(path, extra)?;
        }
    }
    clinical::write_scores(output, &logits, &[model_path, input])?;
    println!(
        "replayed {batch} stays hour by hour ({hours} steps) → {}; backend: {backend_line}",
        output.display()
    );
    Ok(())
}

/// Which cohort a replay's state belongs to: its vitals and lengths, hashed.
fn cohort_fingerprint(cohort: &Cohort) -> String {
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    let words = cohort.vitals.data().iter().map(|v| u64::from(v.to_bits()));
    let shape = cohort.vitals.shape().iter().map(|&d| d as u64);
    for word in shape.chain(words).chain(cohort.lengths.iter().map(|&l| l as u64)) {
        for byte in word.to_le_bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    format!("{hash:016x}")
}

fn run(args: Args) -> Result<()> {
    if let Some(state) = &args.state {
        let inputs: Vec<&Path> = [&args.model, &args.input]
            .into_iter()
            .flatten()
            .map(|p| p.as_path())
            .collect();
        tensor_file::refuse_overwrite(state, &inputs)?;
    }
    match (&args.model, &args.input, &args.output) {
        (Some(model), Some(input), Some(output)) => {
            replay(model, input, output, args.run, args.state.as_deref())
        }
        _ => simulate(&args),
    }
}

fn main() -> ExitCode {
    clinical::exit("icu_monitor", run(Args::parse()))
}
