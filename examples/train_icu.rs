//! Trains the seed's ICU mortality model end to end: the 2-layer LSTM
//! through this crate's training forward and backward (with inter-layer
//! dropout), the small head and an Adam optimizer written out here, on a
//! synthetic cohort whose labels depend on how the vitals evolve.
//!
//! ```text
//! cargo run --release --example train_icu [-- --patients 1536 --epochs 8 --out trained_icu.safetensors]
//! ```
//! Prints the loss per epoch with a progress bar, the held-out AUROC, and
//! saves the trained model under PyTorch's names, loadable with
//! `model.load_state_dict(safetensors.torch.load_file(path))`.

mod clinical;

use clap::Parser;
use clinical::{Backend, Device, Head, Synthetic, HIDDEN, ICU_HEAD};
use rnn_kernels::rng::SplitMix64;
use rnn_kernels::tensor_file::{self, OwnedTensor, StoredDtype};
use rnn_kernels::weights::config_metadata;
use rnn_kernels::GradOutputs;
use rnn_kernels::{Error, ForwardInput, Result, Tensor, Weights};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1536)]
    patients: usize,
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 3e-3)]
    lr: f32,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Where to save the trained model (PyTorch names, f32).
    #[arg(long, default_value = "trained_icu.safetensors")]
    out: PathBuf,
    #[arg(long, default_value_t = Device::Auto)]
    device: Device,
}

/// Adam (Kingma & Ba), as `torch.optim.Adam` with default betas and eps.
struct Adam {
    lr: f32,
    step: i32,
    moments: Vec<(Vec<f32>, Vec<f32>)>,
}

impl Adam {
    fn new(lr: f32) -> Self {
        Adam {
            lr,
            step: 0,
            moments: Vec::new(),
        }
    }

    /// One update of every parameter from its gradient, in a fixed order.
    fn update(&mut self, params: Vec<&mut Tensor<f32>>, grads: Vec<&Tensor<f32>>) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        self.step += 1;
        if self.moments.is_empty() {
            self.moments = params
                .iter()
                .map(|p| (vec![0.0; p.len()], vec![0.0; p.len()]))
                .collect();
        }
        let (c1, c2) = (1.0 - B1.powi(self.step), 1.0 - B2.powi(self.step));
        for ((p, g), (m, v)) in params.into_iter().zip(grads).zip(&mut self.moments) {
            for (((w, &g), m), v) in p
                .data_mut()
                .iter_mut()
                .zip(g.data())
                .zip(m.iter_mut())
                .zip(v.iter_mut())
            {
                *m = B1 * *m + (1.0 - B1) * g;
                *v = B2 * *v + (1.0 - B2) * g * g;
                *w -= self.lr * (*m / c1) / ((*v / c2).sqrt() + 1e-8);
            }
        }
    }
}

/// Rows `rows` of a `[B, T, F]` tensor.
fn gather(t: &Tensor<f32>, rows: &[usize]) -> Tensor<f32> {
    let row_len = t.shape()[1] * t.shape()[2];
    let data = rows
        .iter()
        .flat_map(|&r| t.data()[r * row_len..(r + 1) * row_len].iter().copied())
        .collect();
    Tensor::new([rows.len(), t.shape()[1], t.shape()[2]], data).unwrap()
}

struct Model {
    lstm: Weights<f32>,
    head: Head,
    backend: Backend,
}

impl Model {
    /// Probabilities of `rows` of the cohort (inference: no dropout).
    fn predict(&mut self, cohort: &Synthetic, rows: &[usize]) -> Result<Vec<f32>> {
        let vitals = gather(&cohort.vitals, rows);
        let lengths: Vec<usize> = rows.iter().map(|&r| cohort.lengths[r]).collect();
        let out = self
            .backend
            .forward(&ForwardInput::new(&vitals).lengths(&lengths))?;
        let last = &out.h_n.data()[rows.len() * HIDDEN..];
        Ok(last
            .chunks(HIDDEN)
            .map(|h| clinical::sigmoid(self.head.logit(h).0))
            .collect())
    }

    /// One minibatch: forward with dropout, mean binary cross-entropy,
    /// backward through head and LSTM, one Adam step. Returns the loss.
    fn train_step(
        &mut self,
        cohort: &Synthetic,
        y: &[f32],
        rows: &[usize],
        adam: &mut Adam,
        seed: u64,
    ) -> Result<f32> {
        let vitals = gather(&cohort.vitals, rows);
        let lengths: Vec<usize> = rows.iter().map(|&r| cohort.lengths[r]).collect();
        let args = ForwardInput::new(&vitals).lengths(&lengths);
        let (out, state) = self.backend.forward_train(&args, Some(seed))?;
        let batch = rows.len();
        let mut grad_h_n = Tensor::<f32>::zeros(out.h_n.shape());
        let (mut g_hidden, mut g_output) = (self.head.hidden.zeros_like(), self.head.output.zeros_like());
        let mut loss = 0.0;
        for (b, &row) in rows.iter().enumerate() {
            let h = &out.h_n.data()[(batch + b) * HIDDEN..(batch + b + 1) * HIDDEN]; // h_n[-1]
            let (logit, pre) = self.head.logit(h);
            let p = clinical::sigmoid(logit);
            loss -= y[row] * p.max(1e-7).ln() + (1.0 - y[row]) * (1.0 - p).max(1e-7).ln();
            let d_logit = (p - y[row]) / batch as f32;
            let relu: Vec<f32> = pre.iter().map(|v| v.max(0.0)).collect();
            let d_relu = self.head.output.backward(&relu, &[d_logit], &mut g_output);
            let d_pre: Vec<f32> = d_relu
                .iter()
                .zip(&pre)
                .map(|(d, &z)| if z > 0.0 { *d } else { 0.0 })
                .collect();
            let d_h = self.head.hidden.backward(h, &d_pre, &mut g_hidden);
            grad_h_n.data_mut()[(batch + b) * HIDDEN..(batch + b + 1) * HIDDEN].copy_from_slice(&d_h);
        }
        let zero_output = Tensor::zeros(out.output.shape()); // the loss reads only h_n[-1]
        let grads = GradOutputs {
            output: &zero_output,
            h_n: Some(&grad_h_n),
            c_n: None,
        };
        let lstm_grads = self.backend.backward(&args, &state, &grads)?.weights;

        let head = &mut self.head;
        let mut params: Vec<&mut Tensor<f32>> = self
            .lstm
            .named_parameters_mut()
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        params.extend([
            &mut head.hidden.weight,
            &mut head.hidden.bias,
            &mut head.output.weight,
            &mut head.output.bias,
        ]);
        let mut grads: Vec<&Tensor<f32>> = lstm_grads
            .named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        grads.extend([&g_hidden.weight, &g_hidden.bias, &g_output.weight, &g_output.bias]);
        adam.update(params, grads);
        self.backend.set_weights(&self.lstm)?;
        Ok(loss / batch as f32)
    }

    /// Saves under the names of PyTorch's `ICUTimeSeriesModel.state_dict()`.
    fn save(&self, path: &PathBuf) -> Result<()> {
        let mut tensors: Vec<(String, OwnedTensor)> = self
            .lstm
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (format!("lstm.{n}"), OwnedTensor::float(t, StoredDtype::F32)))
            .collect();
        tensors.extend(
            self.head
                .named()
                .map(|(n, t)| (n, OwnedTensor::float(t, StoredDtype::F32))),
        );
        // The configuration (batch_first above all) for rnnk; PyTorch ignores it.
        let mut metadata = config_metadata(self.lstm.config());
        metadata.insert("format".into(), "pt".into());
        tensor_file::write(path, &tensors, metadata)
    }
}

fn progress(epoch: usize, done: usize, total: usize, loss: f32) {
    const WIDTH: usize = 30;
    let filled = WIDTH * done / total;
    eprint!(
        "\repoch {epoch:>2} [{}{}] {done:>3}/{total} loss {loss:.4}",
        "=".repeat(filled),
        " ".repeat(WIDTH - filled)
    );
    let _ = std::io::stderr().flush();
}

fn run(args: Args) -> Result<()> {
    if args.patients < 20 || args.batch == 0 || args.epochs == 0 {
        return Err(Error::Config(
            "need --patients >= 20, --batch >= 1 and --epochs >= 1".into(),
        ));
    }
    let cohort = clinical::synthetic_cohort(args.patients, args.seed);
    let y = clinical::mortality_labels(&cohort, args.seed);
    let split = args.patients * 4 / 5;
    let (train, held_out): (Vec<usize>, Vec<usize>) =
        ((0..split).collect(), (split..args.patients).collect());
    let positives = y.iter().filter(|&&v| v > 0.5).count();
    println!(
        "cohort: {} synthetic patients ({positives} deaths), {} to train, {} held out",
        args.patients,
        train.len(),
        held_out.len()
    );
    let mut rng = SplitMix64::new(args.seed);
    let lstm = Weights::random(clinical::lstm_config(), args.seed)?;
    let (backend, backend_line) = Backend::choose(args.device, &lstm, None)?;
    println!("backend: {backend_line}");
    let mut model = Model {
        lstm,
        head: Head::random(HIDDEN, 32, ICU_HEAD, &mut rng),
        backend,
    };
    let mut adam = Adam::new(args.lr);
    let start = Instant::now();
    let mut order = train.clone();
    let mut step = 0u64;
    for epoch in 1..=args.epochs {
        // Fisher-Yates shuffle of the training rows.
        for i in (1..order.len()).rev() {
            order.swap(i, rng.int_inclusive(0, i));
        }
        let batches: Vec<&[usize]> = order.chunks(args.batch).collect();
        let mut total = 0.0;
        for (k, rows) in batches.iter().enumerate() {
            step += 1;
            total += model.train_step(
                &cohort,
                &y,
                rows,
                &mut adam,
                args.seed.wrapping_mul(1_000_003) + step,
            )?;
            progress(epoch, k + 1, batches.len(), total / (k + 1) as f32);
        }
        let scores = model.predict(&cohort, &held_out)?;
        let held_labels: Vec<f32> = held_out.iter().map(|&r| y[r]).collect();
        eprintln!();
        println!(
            "epoch {epoch:>2}: train loss {:.4}, held-out AUROC {:.3} ({:.1} s)",
            total / batches.len() as f32,
            clinical::auroc(&scores, &held_labels),
            start.elapsed().as_secs_f64()
        );
    }
    model.save(&args.out)?;
    println!(
        "saved {} (load in PyTorch: model.load_state_dict(safetensors.torch.load_file(path)))",
        args.out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    clinical::exit("train_icu", run(Args::parse()))
}
