//! What the clinical examples share: the two PyTorch models they run, as
//! their `state_dict`s name them, with every size read from the file; the
//! cohort file they score and the score file they write; where the LSTM
//! runs; and a synthetic cohort for the demos.
//!
//! - `ICUTimeSeriesModel`: `lstm = LSTM(F, H, num_layers=L, batch_first=True)`,
//!   `head = Sequential(Dropout, Linear(H, 32), ReLU, Linear(32, 1))` on the
//!   last layer's last hidden state (`lstm.*`, `head.1.*`, `head.3.*`).
//! - The hybrid model: the same LSTM over vitals, `text_proj = Linear(E, H)`
//!   on a note embedding (a BERT-style encoder's [CLS] vector: E = 768, or
//!   384 for the small sentence encoders), and `head = Sequential(Linear(2H,
//!   64), ReLU, Dropout, Linear(64, 1))` on `cat([h_n[-1], text_proj(e)])`
//!   (`lstm.*`, `text_proj.*`, `head.0.*`, `head.3.*`).
//!
//! The heads are a few thousand flops a patient and run on the CPU; the LSTM
//! runs on the chosen backend.
#![allow(dead_code)] // each example uses its own part

pub use rnn_kernels::backend::{Backend, Device};
use rnn_kernels::error::ShapeDisplay;
use rnn_kernels::facts::{load_weights, ModelFacts};
use rnn_kernels::rng::SplitMix64;
use rnn_kernels::tensor_file::{self, OwnedTensor, StoredDtype};
use rnn_kernels::{
    CellKind, Error, ForwardInput, ForwardOutput, Precision, Result, RnnConfig, Tensor, TensorFile, Weights,
};

use std::collections::HashMap;
use std::path::Path;

/// Where the LSTM runs and in which arithmetic: each example's `--device`
/// and `--precision`.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct Runtime {
    /// Where the LSTM runs: the GPU if there is one (auto), the CPU, or the GPU.
    #[arg(long, default_value_t = Device::Auto)]
    pub device: Device,
    /// The LSTM's arithmetic: f32; int8 (s8 weights, u8 activations per
    /// row and step) or f16 weights, both for inference on the CPU.
    #[arg(long, default_value_t = Precision::F32)]
    pub precision: Precision,
}

impl Runtime {
    /// The backend for `lstm`, and the line saying which it is.
    pub fn backend(&self, lstm: &Weights<f32>) -> Result<(Backend, String)> {
        Backend::choose_in(self.device, lstm, None, self.precision)
    }
}

/// The seed model's sizes, for the synthetic demos.
pub const FEATURES: usize = 6;
pub const HIDDEN: usize = 64;
pub const MAX_HOURS: usize = 48;

fn shape_error(tensor: &str, expected: String, found: &[usize]) -> Error {
    Error::Shape {
        tensor: tensor.into(),
        expected,
        found: ShapeDisplay(found.to_vec()),
    }
}

/// `Linear(in, out)`: `y = W x + b` with `W` `[out, in]`.
pub struct Linear {
    pub weight: Tensor<f32>,
    pub bias: Tensor<f32>,
}

impl Linear {
    /// `name.weight` and `name.bias` from `file`, whatever their sizes
    /// (checked against each other; the caller checks them against the
    /// rest of the model).
    pub fn load(file: &TensorFile, name: &str) -> Result<Self> {
        let get = |part: &str| -> Result<Tensor<f32>> {
            let full = format!("{name}.{part}");
            file.float::<f32>(&full)?.ok_or_else(|| Error::Missing {
                tensor: full,
                context: format!("{} must hold the model's {name} layer", file.path().display()),
            })
        };
        let (weight, bias) = (get("weight")?, get("bias")?);
        if weight.shape().len() != 2 {
            return Err(shape_error(
                &format!("{name}.weight"),
                "[out, in]".into(),
                weight.shape(),
            ));
        }
        if bias.shape() != [weight.shape()[0]] {
            let expected = format!("[{}] (one per row of {name}.weight)", weight.shape()[0]);
            return Err(shape_error(&format!("{name}.bias"), expected, bias.shape()));
        }
        Ok(Linear { weight, bias })
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

    pub fn inputs(&self) -> usize {
        self.weight.shape()[1]
    }

    pub fn outputs(&self) -> usize {
        self.weight.shape()[0]
    }

    /// Checks that this layer takes `inputs` and gives `outputs` values
    /// (`why` says where the sizes come from, for the message).
    pub fn expect(&self, name: &str, inputs: usize, outputs: usize, why: &str) -> Result<()> {
        if self.weight.shape() != [outputs, inputs] {
            let expected = format!("[{outputs}, {inputs}] ({why})");
            return Err(shape_error(
                &format!("{name}.weight"),
                expected,
                self.weight.shape(),
            ));
        }
        Ok(())
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

/// A head `Linear → ReLU → Linear(·, 1)` (its dropouts are inference's
/// identity), with the names its layers have in the `state_dict`.
pub struct Head {
    pub hidden: Linear,
    pub output: Linear,
    pub names: [&'static str; 2],
}

impl Head {
    /// Loads `names[0]` and `names[1]` and checks that the head takes
    /// `inputs` values (`why`) and gives one logit.
    pub fn load(file: &TensorFile, names: [&'static str; 2], inputs: usize, why: &str) -> Result<Self> {
        let hidden = Linear::load(file, names[0])?;
        hidden.expect(names[0], inputs, hidden.outputs(), why)?;
        let output = Linear::load(file, names[1])?;
        let why = format!("in = {}'s {} outputs; one logit", names[0], hidden.outputs());
        output.expect(names[1], hidden.outputs(), 1, &why)?;
        Ok(Head {
            hidden,
            output,
            names,
        })
    }

    pub fn random(inputs: usize, width: usize, names: [&'static str; 2], rng: &mut SplitMix64) -> Self {
        Head {
            hidden: Linear::random(inputs, width, rng),
            output: Linear::random(width, 1, rng),
            names,
        }
    }

    /// The logit for one patient's features, and the ReLU layer's input.
    pub fn logit(&self, x: &[f32]) -> (f32, Vec<f32>) {
        let pre = self.hidden.apply(x);
        let hidden: Vec<f32> = pre.iter().map(|v| v.max(0.0)).collect();
        (self.output.apply(&hidden)[0], pre)
    }

    /// The parameters under their `state_dict` names.
    pub fn named(&self) -> [(String, &Tensor<f32>); 4] {
        let [a, b] = self.names;
        [
            (format!("{a}.weight"), &self.hidden.weight),
            (format!("{a}.bias"), &self.hidden.bias),
            (format!("{b}.weight"), &self.output.weight),
            (format!("{b}.bias"), &self.output.bias),
        ]
    }
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The model's LSTM under `lstm.*`, checked to be what these models use (an
/// LSTM, unidirectional, no projection) and made batch-first (the models
/// were built with `batch_first=True`, which a `state_dict` does not record).
pub fn load_lstm(file: &TensorFile) -> Result<Weights<f32>> {
    let facts = ModelFacts {
        batch_first: Some(true),
        ..ModelFacts::default()
    };
    let (lstm, _) = load_weights::<f32>(file, Some("lstm"), &facts)?;
    let config = lstm.config();
    if config.cell != CellKind::Lstm || config.bidirectional || config.proj_size > 0 {
        return Err(Error::Config(format!(
            "{}: lstm.* holds {}, but these models run a unidirectional LSTM without projection",
            file.path().display(),
            rnn_kernels::weights::describe(config)
        )));
    }
    Ok(lstm)
}

/// PyTorch's `ICUTimeSeriesModel`.
pub struct IcuModel {
    pub lstm: Weights<f32>,
    pub head: Head,
}

pub const ICU_HEAD: [&str; 2] = ["head.1", "head.3"];

impl IcuModel {
    pub fn load(path: &Path) -> Result<Self> {
        let file = TensorFile::open(path)?;
        let lstm = load_lstm(&file)?;
        let hidden = lstm.config().hidden_size;
        let head = Head::load(
            &file,
            ICU_HEAD,
            hidden,
            &format!("in = the LSTM's hidden size {hidden}"),
        )?;
        Ok(IcuModel { lstm, head })
    }

    /// The seed's model (2-layer LSTM(6, 64), head 64 → 32 → 1) with
    /// PyTorch's initialisation from `seed`.
    pub fn random(seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed ^ 0x4EAD);
        IcuModel {
            lstm: Weights::random(lstm_config(), seed).expect("a valid configuration"),
            head: Head::random(HIDDEN, 32, ICU_HEAD, &mut rng),
        }
    }

    /// Logits for the last layer's last hidden states `h` (`[B, H]`).
    pub fn logits(&self, h: &[f32]) -> Vec<f32> {
        let hidden = self.lstm.config().hidden_size;
        h.chunks(hidden).map(|h| self.head.logit(h).0).collect()
    }
}

/// The hybrid vitals + note-embedding model.
pub struct HybridModel {
    pub lstm: Weights<f32>,
    pub text_proj: Linear,
    pub head: Head,
}

pub const HYBRID_HEAD: [&str; 2] = ["head.0", "head.3"];

impl HybridModel {
    pub fn load(path: &Path) -> Result<Self> {
        let file = TensorFile::open(path)?;
        let lstm = load_lstm(&file)?;
        let hidden = lstm.config().hidden_size;
        let text_proj = Linear::load(&file, "text_proj")?;
        let why = format!("out = the LSTM's hidden size {hidden}");
        text_proj.expect("text_proj", text_proj.inputs(), hidden, &why)?;
        let why = format!("in = the LSTM's hidden size and text_proj's outputs, 2 × {hidden}");
        let head = Head::load(&file, HYBRID_HEAD, 2 * hidden, &why)?;
        Ok(HybridModel {
            lstm,
            text_proj,
            head,
        })
    }

    /// The seed's sizes with a BERT-sized embedding (`embed`), random weights.
    pub fn random(embed: usize, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed ^ 0x7E47);
        let config = RnnConfig {
            dropout: 0.0,
            ..lstm_config()
        };
        HybridModel {
            lstm: Weights::random(config, seed).expect("a valid configuration"),
            text_proj: Linear::random(embed, HIDDEN, &mut rng),
            head: Head::random(2 * HIDDEN, 64, HYBRID_HEAD, &mut rng),
        }
    }

    pub fn embed_size(&self) -> usize {
        self.text_proj.inputs()
    }

    /// Logits for the last hidden states `h` (`[B, H]`) and the note
    /// embeddings `text` (`[B, E]`).
    pub fn logits(&self, h: &[f32], text: &[f32]) -> Vec<f32> {
        let hidden = self.lstm.config().hidden_size;
        h.chunks(hidden)
            .zip(text.chunks(self.embed_size()))
            .map(|(h, e)| {
                let mut features = h.to_vec();
                features.extend(self.text_proj.apply(e));
                self.head.logit(&features).0
            })
            .collect()
    }
}

/// `nn.LSTM(6, 64, num_layers=2, batch_first=True, dropout=0.2)`.
pub fn lstm_config() -> RnnConfig {
    RnnConfig {
        num_layers: 2,
        batch_first: true,
        dropout: 0.2,
        ..RnnConfig::lstm(FEATURES, HIDDEN)
    }
}

/// A cohort to score: `vitals` `[B, T, F]` (batch-first, as the PyTorch
/// models take it), `lengths` (what `pack_padded_sequence(vitals, lengths,
/// batch_first=True, enforce_sorted=False)` means; all `T` when absent) and,
/// for the hybrid model, `text_embed` `[B, E]`.
pub struct Cohort {
    pub vitals: Tensor<f32>,
    pub lengths: Vec<usize>,
    pub text_embed: Option<Tensor<f32>>,
}

impl Cohort {
    /// Reads and checks a cohort file for a model of `features` vitals (and
    /// an embedding of `embed` values, for the hybrid model). Every tensor
    /// the file holds must be one of these: a misspelled `lenghts` is an
    /// error, not silently "no lengths".
    pub fn load(path: &Path, features: usize, embed: Option<usize>) -> Result<Self> {
        let file = TensorFile::open(path)?;
        let mut allowed = vec!["vitals", "lengths"];
        if embed.is_some() {
            allowed.push("text_embed");
        }
        if let Some(extra) = file.names()?.into_iter().find(|n| !allowed.contains(&n.as_str())) {
            return Err(Error::invalid(
                extra,
                format!(
                    "is not a cohort tensor; {} may hold only {}",
                    path.display(),
                    allowed.join(", ")
                ),
            ));
        }
        let vitals = file.float::<f32>("vitals")?.ok_or_else(|| Error::Missing {
            tensor: "vitals".into(),
            context: format!(
                "{} must hold the hourly vitals [B, T, {features}]",
                path.display()
            ),
        })?;
        let shape = vitals.shape().to_vec();
        if shape.len() != 3 || shape[2] != features || shape[0] == 0 || shape[1] == 0 {
            let expected = format!("[B, T, {features}] with B, T >= 1 (the model takes {features} vitals)");
            return Err(shape_error("vitals", expected, &shape));
        }
        let (batch, hours) = (shape[0], shape[1]);
        let lengths = match file.integer("lengths")? {
            None => vec![hours; batch],
            Some((lshape, values)) => {
                if lshape != [batch] {
                    return Err(shape_error(
                        "lengths",
                        format!("[{batch}] (one per stay in vitals)"),
                        &lshape,
                    ));
                }
                values
                    .iter()
                    .enumerate()
                    .map(|(b, &v)| match usize::try_from(v) {
                        Ok(len) if (1..=hours).contains(&len) => Ok(len),
                        _ => Err(Error::invalid(
                            "lengths",
                            format!("lengths[{b}] = {v} is outside 1..={hours} (T = {hours})"),
                        )),
                    })
                    .collect::<Result<_>>()?
            }
        };
        let text_embed = match embed {
            None => None,
            Some(e) => {
                let text = file.float::<f32>("text_embed")?.ok_or_else(|| Error::Missing {
                    tensor: "text_embed".into(),
                    context: format!("{} must hold each stay's note embedding [B, {e}]", path.display()),
                })?;
                if text.shape() != [batch, e] {
                    let expected = format!("[{batch}, {e}] (one per stay; the model's text_proj takes {e})");
                    return Err(shape_error("text_embed", expected, text.shape()));
                }
                Some(text)
            }
        };
        Ok(Cohort {
            vitals,
            lengths,
            text_embed,
        })
    }

    pub fn batch(&self) -> usize {
        self.lengths.len()
    }

    pub fn args(&self) -> ForwardInput<'_, f32> {
        ForwardInput::new(&self.vitals).lengths(&self.lengths)
    }
}

/// An example's exit: success, or its error as one line on stderr and
/// status 1 (never a panic's backtrace).
pub fn exit(example: &str, result: Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{example}: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What a scoring example was asked to do.
pub enum Work<'a> {
    /// Score the cohort `input` with `model` into `output`.
    Score {
        model: &'a Path,
        input: &'a Path,
        output: &'a Path,
    },
    /// The synthetic demo (with `model`'s weights, if given).
    Demo,
}

impl<'a> Work<'a> {
    /// From the `--model`, `--input` and `--output` options (clap makes
    /// `--input` and `--output` require each other).
    pub fn from_options(
        model: Option<&'a Path>,
        input: Option<&'a Path>,
        output: Option<&'a Path>,
    ) -> Result<Self> {
        match (model, input, output) {
            (Some(model), Some(input), Some(output)) => Ok(Work::Score { model, input, output }),
            (None, Some(_), _) => Err(Error::Config(
                "--input needs --model: the model file gives the sizes the cohort must have".into(),
            )),
            _ => Ok(Work::Demo),
        }
    }
}

/// Writes `logit` and `prob` (`[B, 1]` each) to `path`, whole or not at
/// all, refusing to write over any of `inputs`.
pub fn write_scores(path: &Path, logits: &[f32], inputs: &[&Path]) -> Result<()> {
    tensor_file::refuse_overwrite(path, inputs)?;
    let batch = logits.len();
    let logit = Tensor::new([batch, 1], logits.to_vec())?;
    let prob = Tensor::new([batch, 1], logits.iter().map(|&l| sigmoid(l)).collect())?;
    let tensors = vec![
        ("logit".to_string(), OwnedTensor::float(&logit, StoredDtype::F32)),
        ("prob".to_string(), OwnedTensor::float(&prob, StoredDtype::F32)),
    ];
    tensor_file::write(path, &tensors, HashMap::new())
}

/// A synthetic cohort: standardised hourly vitals `[B, 48, 6]` (heart rate,
/// systolic pressure, respiratory rate, SpO2, temperature, lactate), each
/// stay 12..=48 hours, about one patient in six deteriorating over the stay.
pub struct Synthetic {
    pub vitals: Tensor<f32>,
    pub lengths: Vec<usize>,
    pub deteriorating: Vec<bool>,
}

const MEAN: [f64; FEATURES] = [85.0, 120.0, 18.0, 96.0, 37.0, 1.5];
const STD: [f64; FEATURES] = [15.0, 20.0, 4.0, 3.0, 0.7, 1.0];
// Per hour, for a deteriorating patient: tachycardia, falling pressure,
// faster breathing, falling saturation, fever, rising lactate.
const DRIFT: [f64; FEATURES] = [0.8, -0.9, 0.25, -0.15, 0.03, 0.08];

/// One synthetic patient: a baseline, and a drift if they deteriorate.
#[derive(Clone, Debug)]
pub struct Patient {
    baseline: [f64; FEATURES],
    pub deteriorating: bool,
}

impl Patient {
    pub fn admit(rng: &mut SplitMix64) -> Self {
        let deteriorating = rng.next_f64() < 1.0 / 6.0;
        Patient {
            baseline: std::array::from_fn(|f| MEAN[f] + 0.5 * STD[f] * rng.normal()),
            deteriorating,
        }
    }

    /// The patient as numbers (for a monitor's state file): the
    /// deterioration flag, then the baseline vitals.
    pub fn to_row(&self) -> [f64; 1 + FEATURES] {
        std::array::from_fn(|i| match i {
            0 => f64::from(u8::from(self.deteriorating)),
            i => self.baseline[i - 1],
        })
    }

    /// The patient [`Patient::to_row`] wrote.
    pub fn from_row(row: &[f64]) -> Self {
        Patient {
            deteriorating: row[0] != 0.0,
            baseline: std::array::from_fn(|f| row[1 + f]),
        }
    }

    /// The standardised vitals of hour `hour` of the stay.
    pub fn vitals(&self, hour: usize, rng: &mut SplitMix64, out: &mut [f32]) {
        for (f, value) in out.iter_mut().enumerate() {
            let drift = if self.deteriorating {
                DRIFT[f] * hour as f64
            } else {
                0.0
            };
            let raw = self.baseline[f] + drift + 0.3 * STD[f] * rng.normal();
            *value = ((raw - MEAN[f]) / STD[f]) as f32;
        }
    }
}

pub fn synthetic_cohort(patients: usize, seed: u64) -> Synthetic {
    let mut rng = SplitMix64::new(seed);
    let mut data = vec![0.0f32; patients * MAX_HOURS * FEATURES];
    let mut lengths = Vec::with_capacity(patients);
    let mut deteriorating = Vec::with_capacity(patients);
    for stay in data.chunks_mut(MAX_HOURS * FEATURES) {
        let hours = rng.int_inclusive(12, MAX_HOURS);
        let patient = Patient::admit(&mut rng);
        lengths.push(hours);
        deteriorating.push(patient.deteriorating);
        // Rows past `hours` stay zero: padding, never read.
        for (hour, row) in stay.chunks_mut(FEATURES).take(hours).enumerate() {
            patient.vitals(hour, &mut rng, row);
        }
    }
    Synthetic {
        vitals: Tensor::new([patients, MAX_HOURS, FEATURES], data).unwrap(),
        lengths,
        deteriorating,
    }
}

/// Who dies in a synthetic cohort: deteriorating patients far more often
/// (80% against 6%), drawn from `seed` (the cohort's own, as `train_icu`
/// and `icu_mortality` both draw them).
pub fn mortality_labels(cohort: &Synthetic, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed ^ 0x1AB);
    cohort
        .deteriorating
        .iter()
        .map(|&worse| f32::from(u8::from(rng.next_f64() < if worse { 0.8 } else { 0.06 })))
        .collect()
}

/// The probability that a death scores above a survivor (labels 0 or 1).
pub fn auroc(scores: &[f32], labels: &[f32]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut positives) = (0.0, 0.0);
    for (rank, &i) in order.iter().enumerate() {
        if labels[i] > 0.5 {
            rank_sum += (rank + 1) as f64;
            positives += 1.0;
        }
    }
    let negatives = scores.len() as f64 - positives;
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// Synthetic note embeddings `[B, E]`: noise, with a shared "concerning
/// note" direction added for the patients who deteriorate.
pub fn synthetic_notes(deteriorating: &[bool], embed: usize, seed: u64) -> Tensor<f32> {
    let mut rng = SplitMix64::new(seed ^ 0x4074);
    let concern: Vec<f64> = (0..embed).map(|_| rng.normal()).collect();
    let data = deteriorating
        .iter()
        .flat_map(|&worse| {
            let noise: Vec<f64> = (0..embed).map(|_| rng.normal()).collect();
            noise
                .into_iter()
                .zip(&concern)
                .map(move |(n, c)| (n + if worse { 0.5 * c } else { 0.0 }) as f32)
        })
        .collect();
    Tensor::new([deteriorating.len(), embed], data).unwrap()
}

/// Each stay's last layer's state after its own last hour: `h_n[-1]`, `[B, H]`.
pub fn last_hidden<'a>(out: &'a ForwardOutput<f32>, config: &RnnConfig) -> &'a [f32] {
    let rows = out.h_n.shape()[1] * config.output_size();
    let data = out.h_n.data();
    &data[data.len() - rows..]
}
