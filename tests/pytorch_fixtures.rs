//! The CPU reference against PyTorch itself (fixtures from tests/fixtures/generate.py).

mod common;

use common::{assert_close, case_files, Case};
use rnn_kernels::{reference, Tensor, TensorFile, Weights};

fn check_case<T: rnn_kernels::Element>(tol: f64) {
    for path in case_files() {
        let case = Case::<T>::load(&path);
        let result = reference::forward(&case.weights, &case.args()).unwrap();
        let what = |t: &str| format!("{} ({}) {t}", case.name, T::NAME);
        assert_close(&what("output"), &result.output, &case.output, tol);
        assert_close(&what("h_n"), &result.h_n, &case.h_n, tol);
        match (&result.c_n, &case.c_n) {
            (Some(got), Some(want)) => assert_close(&what("c_n"), got, want, tol),
            (None, None) => {}
            _ => panic!("{}: c_n present on one side only", case.name),
        }
    }
}

#[test]
fn f64_reference_matches_pytorch_to_rounding() {
    check_case::<f64>(1e-12);
}

#[test]
fn f32_reference_matches_pytorch_to_f32_precision() {
    check_case::<f32>(2e-5);
}

/// The seed model: a whole PyTorch `state_dict` (prefix `lstm.`) in f32,
/// with the head computed as the example computes it.
#[test]
fn icu_model_state_dict_loads_by_prefix_and_matches_pytorch() {
    let file = TensorFile::open(common::fixtures_dir().join("icu_model.safetensors")).unwrap();
    let weights = Weights::<f64>::from_tensor_file(&file, Some("lstm")).unwrap();
    let auto = Weights::<f64>::from_tensor_file(&file, None).unwrap();
    assert_eq!(
        weights, auto,
        "the only network in the file is found without a prefix"
    );
    let config = weights.config();
    assert_eq!(
        (config.num_layers, config.hidden_size, config.input_size),
        (2, 64, 6)
    );
    assert!(config.batch_first);

    let input = file.float::<f64>("input").unwrap().unwrap();
    let (_, lengths) = file.integer("lengths").unwrap().unwrap();
    let lengths: Vec<usize> = lengths.into_iter().map(|l| l as usize).collect();
    let out = reference::forward(
        &weights,
        &rnn_kernels::ForwardInput::new(&input).lengths(&lengths),
    )
    .unwrap();

    let batch = lengths.len();
    let last_layer = &out.h_n.data()[batch * 64..];
    let param = |n: &str| file.float::<f64>(n).unwrap().unwrap();
    let (w1, b1, w2, b2) = (
        param("head.1.weight"),
        param("head.1.bias"),
        param("head.3.weight"),
        param("head.3.bias"),
    );
    let probabilities: Vec<f64> = last_layer
        .chunks(64)
        .map(|h| {
            let hidden: Vec<f64> = (0..32)
                .map(|j| (b1.data()[j] + (0..64).map(|k| w1.data()[j * 64 + k] * h[k]).sum::<f64>()).max(0.0))
                .collect();
            let logit = b2.data()[0] + (0..32).map(|j| w2.data()[j] * hidden[j]).sum::<f64>();
            1.0 / (1.0 + (-logit).exp())
        })
        .collect();
    let expected = param("expected.probability");
    assert_close(
        "icu probability",
        &Tensor::new([batch], probabilities).unwrap(),
        &expected,
        1e-12,
    );
}
