//! Backpropagation through time on the CPU, checked three ways: against
//! PyTorch autograd (fixtures), against central finite differences in f64,
//! and by the identity that a varlen batch's gradients are the sums over its
//! sequences run alone. Plus inter-layer dropout's properties.

mod common;

use common::{assert_close, case_files, random_tensor, varied_configs, Case};
use rnn_kernels::reference;
use rnn_kernels::rng::SplitMix64;
use rnn_kernels::{Element, ForwardInput, RnnConfig, State, Tensor, TensorFile, Weights};
use rnn_kernels::{GradOutputs, Gradients};

/// A fixture's incoming gradients and autograd's answers.
struct GradCase<T> {
    case: Case<T>,
    grad_output: Tensor<T>,
    grad_h_n: Tensor<T>,
    grad_c_n: Option<Tensor<T>>,
    file: TensorFile,
}

impl<T: Element> GradCase<T> {
    fn load(path: &std::path::Path) -> Self {
        let file = TensorFile::open(path).unwrap();
        let get = |n: &str| file.float::<T>(n).unwrap();
        GradCase {
            case: Case::load(path),
            grad_output: get("grad_output").unwrap(),
            grad_h_n: get("grad_h_n").unwrap(),
            grad_c_n: get("grad_c_n"),
            file,
        }
    }

    fn run(&self) -> Gradients<T> {
        let args = self.case.args();
        let (_, reserve) = reference::forward_train(&self.case.weights, &args, None).unwrap();
        let grads = GradOutputs {
            output: &self.grad_output,
            h_n: Some(&self.grad_h_n),
            c_n: self.grad_c_n.as_ref(),
        };
        reference::backward(&self.case.weights, &args, &reserve, &grads).unwrap()
    }

    fn check(&self, got: &Gradients<T>, tol: f64) {
        let name = &self.case.name;
        let expect = |n: &str| {
            self.file
                .float::<f64>(n)
                .unwrap()
                .unwrap_or_else(|| panic!("{name}: {n}"))
        };
        assert_close(
            &format!("{name} grad_input"),
            &got.input,
            &expect("expected.grad_input"),
            tol,
        );
        assert_close(
            &format!("{name} grad_h0"),
            &got.h0,
            &expect("expected.grad_h0"),
            tol,
        );
        if let Some(c0) = &got.c0 {
            assert_close(&format!("{name} grad_c0"), c0, &expect("expected.grad_c0"), tol);
        }
        let params = got.weights.named_parameters();
        assert!(!params.is_empty());
        for (param, grad) in params {
            assert_close(
                &format!("{name} grad.{param}"),
                grad,
                &expect(&format!("expected.grad/{param}")),
                tol,
            );
        }
    }
}

#[test]
fn f64_gradients_match_pytorch_autograd() {
    for path in case_files() {
        let case = GradCase::<f64>::load(&path);
        case.check(&case.run(), 1e-9);
    }
}

#[test]
fn f32_gradients_match_pytorch_autograd_to_f32_precision() {
    for path in case_files() {
        let case = GradCase::<f32>::load(&path);
        case.check(&case.run(), 1e-4);
    }
}

/// A scalar loss of the forward pass and its analytic gradients, for the
/// finite-difference and decomposition checks.
struct Problem {
    weights: Weights<f64>,
    input: Tensor<f64>,
    lengths: Vec<usize>,
    state: State<f64>,
    grad_output: Tensor<f64>,
    grad_h_n: Tensor<f64>,
    grad_c_n: Option<Tensor<f64>>,
    dropout_seed: Option<u64>,
}

impl Problem {
    fn new(config: RnnConfig, seq_len: usize, lengths: Vec<usize>, seed: u64) -> Problem {
        let batch = lengths.len();
        let weights = Weights::<f64>::random(config.clone(), seed).unwrap();
        let mut rng = SplitMix64::new(seed + 7);
        let in_shape = if config.batch_first {
            [batch, seq_len, config.input_size]
        } else {
            [seq_len, batch, config.input_size]
        };
        let out_shape = if config.batch_first {
            [batch, seq_len, config.output_width()]
        } else {
            [seq_len, batch, config.output_width()]
        };
        let mut state = State::zeros(&config, batch);
        state.h = random_tensor(state.h.shape(), &mut rng);
        state.c = state.c.map(|c| random_tensor(c.shape(), &mut rng));
        Problem {
            input: random_tensor(&in_shape, &mut rng),
            grad_output: random_tensor(&out_shape, &mut rng),
            grad_h_n: random_tensor(state.h.shape(), &mut rng),
            grad_c_n: state.c.as_ref().map(|c| random_tensor(c.shape(), &mut rng)),
            weights,
            lengths,
            state,
            dropout_seed: None,
        }
    }

    fn args(&self) -> ForwardInput<'_, f64> {
        ForwardInput {
            input: &self.input,
            lengths: Some(&self.lengths),
            h0: Some(&self.state.h),
            c0: self.state.c.as_ref(),
        }
    }

    fn loss(&self, weights: &Weights<f64>, input: &Tensor<f64>, state: &State<f64>) -> f64 {
        let args = ForwardInput {
            input,
            lengths: Some(&self.lengths),
            h0: Some(&state.h),
            c0: state.c.as_ref(),
        };
        let (out, _) = reference::forward_train(weights, &args, self.dropout_seed).unwrap();
        let dot =
            |a: &Tensor<f64>, b: &Tensor<f64>| a.data().iter().zip(b.data()).map(|(x, y)| x * y).sum::<f64>();
        dot(&out.output, &self.grad_output)
            + dot(&out.h_n, &self.grad_h_n)
            + out
                .c_n
                .as_ref()
                .zip(self.grad_c_n.as_ref())
                .map_or(0.0, |(c, g)| dot(c, g))
    }

    fn gradients(&self) -> Gradients<f64> {
        let (_, reserve) = reference::forward_train(&self.weights, &self.args(), self.dropout_seed).unwrap();
        let grads = GradOutputs {
            output: &self.grad_output,
            h_n: Some(&self.grad_h_n),
            c_n: self.grad_c_n.as_ref(),
        };
        reference::backward(&self.weights, &self.args(), &reserve, &grads).unwrap()
    }
}

/// Central differences of the loss against the analytic gradient, for a
/// spread of elements of every parameter, the input and the initial state.
fn check_finite_differences(problem: &Problem, what: &str) {
    let analytic = problem.gradients();
    let eps = 1e-6;
    let check = |label: &str, analytic: f64, perturbed: &dyn Fn(f64) -> f64| {
        let numeric = (perturbed(eps) - perturbed(-eps)) / (2.0 * eps);
        let tol = 1e-6 * (1.0 + numeric.abs());
        assert!(
            (numeric - analytic).abs() <= tol,
            "{what} {label}: analytic {analytic}, numeric {numeric}"
        );
    };
    let named: Vec<(String, Tensor<f64>)> = problem
        .weights
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.clone()))
        .collect();
    let grad_named = analytic.weights.named_parameters();
    for (k, (name, tensor)) in named.iter().enumerate() {
        for i in sample_indices(tensor.len()) {
            let perturbed = |delta: f64| {
                let mut changed = named.clone();
                changed[k].1.data_mut()[i] += delta;
                let weights =
                    Weights::from_named(problem.weights.config().clone(), changed.into_iter().collect())
                        .unwrap();
                problem.loss(&weights, &problem.input, &problem.state)
            };
            check(&format!("{name}[{i}]"), grad_named[k].1.data()[i], &perturbed);
        }
    }
    for i in sample_indices(problem.input.len()) {
        let perturbed = |delta: f64| {
            let mut input = problem.input.clone();
            input.data_mut()[i] += delta;
            problem.loss(&problem.weights, &input, &problem.state)
        };
        check(&format!("input[{i}]"), analytic.input.data()[i], &perturbed);
    }
    for i in sample_indices(problem.state.h.len()) {
        let perturbed = |delta: f64| {
            let mut state = problem.state.clone();
            state.h.data_mut()[i] += delta;
            problem.loss(&problem.weights, &problem.input, &state)
        };
        check(&format!("h0[{i}]"), analytic.h0.data()[i], &perturbed);
    }
    if let (Some(c), Some(gc)) = (&problem.state.c, &analytic.c0) {
        for i in sample_indices(c.len()) {
            let perturbed = |delta: f64| {
                let mut state = problem.state.clone();
                state.c.as_mut().unwrap().data_mut()[i] += delta;
                problem.loss(&problem.weights, &problem.input, &state)
            };
            check(&format!("c0[{i}]"), gc.data()[i], &perturbed);
        }
    }
}

/// Up to 7 indices spread over `0..len`, ends included.
fn sample_indices(len: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..7).map(|k| k * (len - 1) / 6).collect();
    v.dedup();
    v
}

#[test]
fn gradients_match_central_finite_differences() {
    for (k, config) in varied_configs().into_iter().enumerate() {
        let problem = Problem::new(config, 4, vec![4, 1, 3], 40 + k as u64);
        check_finite_differences(&problem, &format!("config {k}"));
    }
}

#[test]
fn gradients_through_dropout_match_finite_differences() {
    let configs = [
        RnnConfig {
            num_layers: 3,
            dropout: 0.4,
            ..RnnConfig::lstm(3, 4)
        },
        RnnConfig {
            num_layers: 2,
            dropout: 0.5,
            bidirectional: true,
            ..RnnConfig::gru(2, 3)
        },
    ];
    for (k, config) in configs.into_iter().enumerate() {
        let mut problem = Problem::new(config, 4, vec![2, 4], 60 + k as u64);
        problem.dropout_seed = Some(99);
        check_finite_differences(&problem, &format!("dropout config {k}"));
    }
}

/// The gradients of a varlen batch are the sums over its sequences run
/// alone (weights), or each sequence's own (input, initial state).
#[test]
fn batch_gradients_are_the_sum_over_sequences_run_alone() {
    for (k, config) in varied_configs().into_iter().enumerate() {
        let lengths = vec![3, 5, 1];
        let problem = Problem::new(config.clone(), 5, lengths.clone(), 80 + k as u64);
        let whole = problem.gradients();
        let mut summed: Vec<Tensor<f64>> = whole
            .weights
            .named_parameters()
            .iter()
            .map(|(_, t)| Tensor::zeros(t.shape()))
            .collect();
        for (b, &len) in lengths.iter().enumerate() {
            let t_axis = usize::from(config.batch_first);
            let pick = |t: &Tensor<f64>, time: usize| select_row(t, 1 - t_axis, b, time);
            let alone = Problem {
                weights: problem.weights.clone(),
                input: pick(&problem.input, len),
                lengths: vec![len],
                state: State {
                    h: select_row(&problem.state.h, 1, b, problem.state.h.shape()[0]),
                    c: problem
                        .state
                        .c
                        .as_ref()
                        .map(|c| select_row(c, 1, b, c.shape()[0])),
                },
                grad_output: pick(&problem.grad_output, len),
                grad_h_n: select_row(&problem.grad_h_n, 1, b, problem.grad_h_n.shape()[0]),
                grad_c_n: problem
                    .grad_c_n
                    .as_ref()
                    .map(|c| select_row(c, 1, b, c.shape()[0])),
                dropout_seed: None,
            };
            let g = alone.gradients();
            for (acc, (_, t)) in summed.iter_mut().zip(g.weights.named_parameters()) {
                for (a, v) in acc.data_mut().iter_mut().zip(t.data()) {
                    *a += v;
                }
            }
            assert_close(
                &format!("config {k} row {b} grad_input"),
                &g.input,
                &pick(&whole.input, len),
                1e-12,
            );
            assert_close(
                &format!("config {k} row {b} grad_h0"),
                &g.h0,
                &select_row(&whole.h0, 1, b, whole.h0.shape()[0]),
                1e-12,
            );
            // Padded positions get no gradient.
            let padding = select_row(&whole.input, 1 - t_axis, b, problem.input.shape()[t_axis]);
            let pad_values: Vec<f64> = (len..5)
                .flat_map(|t| {
                    let w = config.input_size;
                    let start = t * w;
                    padding.data()[start..start + w].to_vec()
                })
                .collect();
            assert!(
                pad_values.iter().all(|&v| v == 0.0),
                "config {k} row {b}: gradient at padding"
            );
        }
        for ((name, want), got) in whole.weights.named_parameters().into_iter().zip(&summed) {
            assert_close(&format!("config {k} grad.{name}"), got, want, 1e-11);
        }
    }
}

/// Row `b` along `batch_axis` (0 or 1) and the first `time` entries along
/// the other leading axis of a 3-D tensor.
fn select_row(t: &Tensor<f64>, batch_axis: usize, b: usize, time: usize) -> Tensor<f64> {
    let s = t.shape();
    let w = s[2];
    let mut data = Vec::new();
    for i in 0..s[0] {
        for j in 0..s[1] {
            let (bi, ti) = if batch_axis == 1 { (j, i) } else { (i, j) };
            if bi == b && ti < time {
                data.extend_from_slice(&t.data()[(i * s[1] + j) * w..(i * s[1] + j + 1) * w]);
            }
        }
    }
    let mut shape = s.to_vec();
    shape[batch_axis] = 1;
    shape[1 - batch_axis] = time;
    Tensor::new(shape, data).unwrap()
}

#[test]
fn dropout_is_reproducible_scaled_and_off_without_a_seed() {
    let config = RnnConfig {
        num_layers: 3,
        dropout: 0.3,
        ..RnnConfig::lstm(4, 16)
    };
    let weights = Weights::<f64>::random(config.clone(), 1).unwrap();
    let mut rng = SplitMix64::new(2);
    let input: Tensor<f64> = random_tensor(&[6, 5, 4], &mut rng);
    let args = ForwardInput::new(&input);
    let plain = reference::forward(&weights, &args).unwrap();
    let (no_seed, _) = reference::forward_train(&weights, &args, None).unwrap();
    assert_eq!(no_seed, plain, "no seed: no dropout");
    let (a, reserve) = reference::forward_train(&weights, &args, Some(5)).unwrap();
    let (b, _) = reference::forward_train(&weights, &args, Some(5)).unwrap();
    let (c, _) = reference::forward_train(&weights, &args, Some(6)).unwrap();
    assert_eq!(a, b, "same seed, same masks");
    assert_ne!(a.output, c.output, "another seed, other masks");
    assert_ne!(a.output, plain.output);
    assert!(reserve.dropout().is_some());

    // The mask keeps about 1 - p of the elements, scaled by 1/(1-p).
    let n = 200_000u64;
    let kept: Vec<f64> = (0..n)
        .map(|i| rnn_kernels::dropout::factor(0.3, 5, 1, i))
        .collect();
    let fraction = kept.iter().filter(|&&f| f > 0.0).count() as f64 / n as f64;
    assert!((fraction - 0.7).abs() < 0.005, "kept {fraction}");
    assert!(kept.iter().all(|&f| f == 0.0 || (f - 1.0 / 0.7).abs() < 1e-15));
    assert!((0..1000).all(|i| rnn_kernels::dropout::factor(1.0, 5, 0, i) == 0.0));
    assert!((0..1000).all(|i| rnn_kernels::dropout::factor(0.0, 5, 0, i) == 1.0));
}

/// Dropout between layers equals running the layers one at a time and
/// masking in between by hand.
#[test]
fn dropout_applies_between_layers_only() {
    let config = RnnConfig {
        num_layers: 2,
        dropout: 0.5,
        batch_first: true,
        ..RnnConfig::gru(3, 5)
    };
    let weights = Weights::<f64>::random(config.clone(), 3).unwrap();
    let mut rng = SplitMix64::new(4);
    let input: Tensor<f64> = random_tensor(&[2, 4, 3], &mut rng);
    let (trained, _) = reference::forward_train(&weights, &ForwardInput::new(&input), Some(11)).unwrap();

    let split = |layer: usize, input_size: usize| {
        let cfg = RnnConfig {
            num_layers: 1,
            dropout: 0.0,
            ..RnnConfig {
                input_size,
                ..config.clone()
            }
        };
        let named = weights
            .named_parameters()
            .into_iter()
            .filter_map(|(n, t)| {
                n.strip_suffix(&format!("_l{layer}"))
                    .map(|base| (format!("{base}_l0"), t.clone()))
            })
            .collect();
        Weights::from_named(cfg, named).unwrap()
    };
    let first = reference::forward(&split(0, 3), &ForwardInput::new(&input)).unwrap();
    let mut between = first.output.clone(); // [B, T, H] batch-first
    for b in 0..2 {
        for t in 0..4 {
            for col in 0..5 {
                let index = ((t * 2 + b) * 5 + col) as u64;
                between.data_mut()[(b * 4 + t) * 5 + col] *= rnn_kernels::dropout::factor(0.5, 11, 0, index);
            }
        }
    }
    let second = reference::forward(&split(1, 5), &ForwardInput::new(&between)).unwrap();
    assert_close("dropout output", &trained.output, &second.output, 1e-14);
}

#[test]
fn backward_rejects_mismatched_gradients_and_reserves() {
    let config = RnnConfig {
        num_layers: 2,
        ..RnnConfig::lstm(3, 4)
    };
    let weights = Weights::<f64>::random(config, 0).unwrap();
    let input = Tensor::<f64>::zeros([5, 2, 3]);
    let args = ForwardInput::new(&input);
    let (_, reserve) = reference::forward_train(&weights, &args, None).unwrap();
    let good = Tensor::<f64>::zeros([5, 2, 4]);
    let err = |grads: GradOutputs<'_, f64>, reserve| {
        reference::backward(&weights, &args, reserve, &grads)
            .unwrap_err()
            .to_string()
    };

    let wrong = Tensor::<f64>::zeros([5, 2, 5]);
    let e = err(
        GradOutputs {
            output: &wrong,
            h_n: None,
            c_n: None,
        },
        &reserve,
    );
    assert!(
        e.contains("grad_output") && e.contains("[5, 2, 4]") && e.contains("[5, 2, 5]"),
        "{e}"
    );
    let h = Tensor::<f64>::zeros([1, 2, 4]);
    let e = err(
        GradOutputs {
            output: &good,
            h_n: Some(&h),
            c_n: None,
        },
        &reserve,
    );
    assert!(e.contains("grad_h_n") && e.contains("[2, 2, 4]"), "{e}");
    let other_input = Tensor::<f64>::zeros([4, 2, 3]);
    let (_, other) = reference::forward_train(&weights, &ForwardInput::new(&other_input), None).unwrap();
    let e = err(
        GradOutputs {
            output: &good,
            h_n: None,
            c_n: None,
        },
        &other,
    );
    assert!(e.contains("reserve"), "{e}");
}
