//! A stream's state saved and loaded (`State::save`, `State::load`): bit
//! for bit, with the caller's own tensors and keys beside it, and refused
//! for any other model.

mod common;

use common::{random_tensor, temp_dir};
use rnn_kernels::cpu::CpuRnn;
use rnn_kernels::rng::SplitMix64;
use rnn_kernels::state_file::Extra;
use rnn_kernels::tensor_file::OwnedTensor;
use rnn_kernels::{RnnConfig, State, StoredDtype, Tensor, TensorFile, Weights};
use std::collections::HashMap;

fn stepped(config: &RnnConfig, weights: &Weights<f32>, steps: usize, seed: u64) -> State<f32> {
    let mut model = CpuRnn::with_threads(weights, 2).unwrap();
    let mut state = State::zeros(config, 5);
    let mut rng = SplitMix64::new(seed);
    for _ in 0..steps {
        let x = random_tensor::<f32>(&[5, config.input_size], &mut rng);
        model.step(&x, &mut state).unwrap();
    }
    state
}

#[test]
fn a_saved_state_resumes_bit_for_bit() {
    let dir = temp_dir("state", "resume");
    let configs = [
        RnnConfig {
            num_layers: 2,
            ..RnnConfig::lstm(6, 33)
        },
        RnnConfig {
            num_layers: 3,
            ..RnnConfig::gru(4, 7)
        },
        RnnConfig {
            proj_size: 3,
            ..RnnConfig::lstm(2, 9)
        },
    ];
    for config in configs {
        let weights = Weights::<f32>::random(config.clone(), 1).unwrap();
        let path = dir.join("state.safetensors");
        // Ten steps in one go, or five, a save, a load and five more.
        let whole = {
            let mut model = CpuRnn::with_threads(&weights, 1).unwrap();
            let mut state = State::zeros(&config, 5);
            let mut rng = SplitMix64::new(2);
            for step in 0..10 {
                if step == 5 {
                    state.save(&path, &weights, Extra::default()).unwrap();
                    let (loaded, _) = State::<f32>::load(&path, &weights).unwrap();
                    assert_eq!(loaded, state);
                    state = loaded;
                    model = CpuRnn::with_threads(&weights, 1).unwrap();
                }
                let x = random_tensor::<f32>(&[5, config.input_size], &mut rng);
                model.step(&x, &mut state).unwrap();
            }
            state
        };
        let mut straight = State::zeros(&config, 5);
        let mut model = CpuRnn::with_threads(&weights, 1).unwrap();
        let mut rng = SplitMix64::new(2);
        for _ in 0..10 {
            let x = random_tensor::<f32>(&[5, config.input_size], &mut rng);
            model.step(&x, &mut straight).unwrap();
        }
        assert_eq!(whole, straight, "{config:?}");
        // f64 states round trip exactly too.
        let state64 = State::<f64> {
            h: whole.h.cast(),
            c: whole.c.as_ref().map(Tensor::cast),
        };
        state64.save(&path, &weights, Extra::default()).unwrap();
        assert_eq!(State::<f64>::load(&path, &weights).unwrap().0, state64);
    }
}

#[test]
fn the_callers_tensors_and_keys_come_back() {
    let dir = temp_dir("state", "extra");
    let config = RnnConfig::lstm(3, 4);
    let weights = Weights::<f32>::random(config.clone(), 1).unwrap();
    let state = stepped(&config, &weights, 3, 4);
    let beds = Tensor::new([5, 2], (0..10).map(f64::from).collect()).unwrap();
    let extra = Extra {
        tensors: vec![("ward.beds".into(), OwnedTensor::float(&beds, StoredDtype::F64))],
        metadata: HashMap::from([("ward.hour".to_string(), "17".to_string())]),
    };
    let path = dir.join("ward.safetensors");
    state.save(&path, &weights, extra).unwrap();
    let (loaded, file) = State::<f32>::load(&path, &weights).unwrap();
    assert_eq!(loaded, state);
    assert_eq!(file.float::<f64>("ward.beds").unwrap().unwrap(), beds);
    assert_eq!(file.metadata().unwrap()["ward.hour"], "17");
    // The state's own names are the state's.
    let clash = Extra {
        tensors: vec![("h".into(), OwnedTensor::float(&beds, StoredDtype::F64))],
        ..Extra::default()
    };
    assert!(state.save(&path, &weights, clash).is_err());
    let clash = Extra {
        metadata: HashMap::from([("rnn_kernels.model".to_string(), "x".to_string())]),
        ..Extra::default()
    };
    assert!(state.save(&path, &weights, clash).is_err());
}

#[test]
fn a_state_of_another_model_is_refused_with_its_reason() {
    let dir = temp_dir("state", "refused");
    let config = RnnConfig::lstm(3, 4);
    let weights = Weights::<f32>::random(config.clone(), 1).unwrap();
    let path = dir.join("state.safetensors");
    stepped(&config, &weights, 2, 1)
        .save(&path, &weights, Extra::default())
        .unwrap();
    let message = |w: &Weights<f32>| State::<f32>::load(&path, w).unwrap_err().to_string();
    let bigger = Weights::<f32>::random(RnnConfig::lstm(3, 5), 1).unwrap();
    let m = message(&bigger);
    assert!(
        m.contains("holds the state of lstm input_size=3 hidden_size=4"),
        "{m}"
    );
    assert!(
        m.contains("not of this model (lstm input_size=3 hidden_size=5"),
        "{m}"
    );
    let retrained = Weights::<f32>::random(config.clone(), 2).unwrap();
    assert!(message(&retrained).contains("with other weights"));
    // The same weights in f64 are the same model.
    let same: Weights<f64> = weights.cast();
    assert!(State::<f32>::load(&path, &same).is_ok());
    // Not a state file at all, or one with a tensor cut short.
    let weights_file = dir.join("weights.safetensors");
    weights.save(&weights_file, StoredDtype::F32, None).unwrap();
    let m = State::<f32>::load(&weights_file, &weights)
        .unwrap_err()
        .to_string();
    assert!(m.contains("is not a state file"), "{m}");
    let file = TensorFile::open(&path).unwrap();
    let h = file.float::<f32>("h").unwrap().unwrap();
    let short = Tensor::new([1, 2, 4], h.data()[..8].to_vec()).unwrap();
    let mut metadata = file.metadata().unwrap();
    metadata.insert("x".into(), "y".into());
    let tensors = [
        ("h".to_string(), OwnedTensor::float(&short, StoredDtype::F32)),
        (
            "c".to_string(),
            OwnedTensor::float(&file.float::<f32>("c").unwrap().unwrap(), StoredDtype::F32),
        ),
    ];
    rnn_kernels::tensor_file::write(&path, &tensors, metadata).unwrap();
    let m = State::<f32>::load(&path, &weights).unwrap_err().to_string();
    assert!(
        m.contains("state.c: expected shape [1, 2, 4], found [1, 5, 4]"),
        "{m}"
    );
}
