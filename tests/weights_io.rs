//! Weights: PyTorch names, safetensors round trips in every dtype, inference
//! of the configuration from a state_dict, and the errors a wrong file gets.

mod common;

use rnn_kernels::tensor_file::{self, OwnedTensor};
use rnn_kernels::weights::{config_metadata, param_specs};
use rnn_kernels::{CellKind, Error, RnnConfig, StoredDtype, Tensor, TensorFile, Weights};
use std::collections::HashMap;
use std::path::PathBuf;

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rnnk-weights-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Writes `weights` under `prefix` with the given metadata (none: shapes only).
fn write_raw(path: &PathBuf, weights: &Weights<f64>, prefix: &str, metadata: HashMap<String, String>) {
    let tensors: Vec<(String, OwnedTensor)> = weights
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (format!("{prefix}{n}"), OwnedTensor::float(t, StoredDtype::F32)))
        .collect();
    tensor_file::write(path, &tensors, metadata).unwrap();
}

#[test]
fn names_and_shapes_follow_pytorch() {
    let config = RnnConfig {
        num_layers: 2,
        bidirectional: true,
        proj_size: 3,
        ..RnnConfig::lstm(5, 8)
    };
    let names: Vec<(String, Vec<usize>)> = param_specs(&config)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect();
    // PyTorch: [(n, tuple(p.shape)) for n, p in nn.LSTM(5, 8, 2, bidirectional=True, proj_size=3).named_parameters()]
    let expected = [
        ("weight_ih_l0", vec![32, 5]),
        ("weight_hh_l0", vec![32, 3]),
        ("bias_ih_l0", vec![32]),
        ("bias_hh_l0", vec![32]),
        ("weight_hr_l0", vec![3, 8]),
        ("weight_ih_l0_reverse", vec![32, 5]),
        ("weight_hh_l0_reverse", vec![32, 3]),
        ("bias_ih_l0_reverse", vec![32]),
        ("bias_hh_l0_reverse", vec![32]),
        ("weight_hr_l0_reverse", vec![3, 8]),
        ("weight_ih_l1", vec![32, 6]),
        ("weight_hh_l1", vec![32, 3]),
        ("bias_ih_l1", vec![32]),
        ("bias_hh_l1", vec![32]),
        ("weight_hr_l1", vec![3, 8]),
        ("weight_ih_l1_reverse", vec![32, 6]),
        ("weight_hh_l1_reverse", vec![32, 3]),
        ("bias_ih_l1_reverse", vec![32]),
        ("bias_hh_l1_reverse", vec![32]),
        ("weight_hr_l1_reverse", vec![3, 8]),
    ];
    let expected: Vec<(String, Vec<usize>)> = expected.into_iter().map(|(n, s)| (n.to_string(), s)).collect();
    assert_eq!(names, expected);
}

#[test]
fn round_trip_in_every_dtype_with_and_without_prefix() {
    for config in common::varied_configs() {
        let weights = Weights::<f64>::random(config.clone(), 3).unwrap();
        for (dtype, tol) in [
            (StoredDtype::F64, 0.0),
            (StoredDtype::F32, 1e-7),
            (StoredDtype::BF16, 4e-3),
            (StoredDtype::F16, 5e-4),
        ] {
            for prefix in [None, Some("encoder.rnn")] {
                let path = temp_path("round_trip.safetensors");
                weights.save(&path, dtype, prefix).unwrap();
                let loaded = Weights::<f64>::load(&path, prefix).unwrap();
                assert_eq!(loaded.config(), &config, "{dtype:?} {prefix:?}");
                for ((name, a), (_, b)) in loaded
                    .named_parameters()
                    .into_iter()
                    .zip(weights.named_parameters())
                {
                    let diff = a.max_abs_diff(b);
                    assert!(diff <= tol, "{name} in {dtype:?}: {diff}");
                }
            }
        }
    }
}

#[test]
fn random_init_is_seeded_and_bounded_like_pytorch() {
    let config = RnnConfig {
        num_layers: 2,
        ..RnnConfig::gru(3, 16)
    };
    let a = Weights::<f32>::random(config.clone(), 42).unwrap();
    assert_eq!(a, Weights::<f32>::random(config.clone(), 42).unwrap());
    assert_ne!(a, Weights::<f32>::random(config, 43).unwrap());
    let bound = 1.0 / 4.0; // 1/sqrt(16)
    for (name, t) in a.named_parameters() {
        assert!(t.data().iter().all(|v| v.abs() <= bound), "{name}");
        let spread = t.data().iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(
            spread > 0.8 * bound,
            "{name} should fill ±1/√H, max |w| = {spread}"
        );
    }
}

#[test]
fn configuration_is_inferred_from_names_and_shapes_alone() {
    let cases = [
        RnnConfig {
            num_layers: 3,
            bidirectional: true,
            ..RnnConfig::gru(4, 5)
        },
        RnnConfig {
            num_layers: 2,
            proj_size: 2,
            bias: false,
            ..RnnConfig::lstm(3, 6)
        },
        RnnConfig::rnn_tanh(1, 1),
    ];
    for config in cases {
        let path = temp_path("inferred.safetensors");
        write_raw(
            &path,
            &Weights::random(config.clone(), 0).unwrap(),
            "model.rnn.",
            HashMap::new(),
        );
        let loaded = Weights::<f32>::load(&path, None).unwrap();
        assert_eq!(loaded.config(), &config);
    }
}

#[test]
fn metadata_supplies_what_shapes_cannot_tell() {
    let config = RnnConfig {
        batch_first: true,
        dropout: 0.25,
        ..RnnConfig::rnn_relu(2, 3)
    };
    let path = temp_path("metadata.safetensors");
    let weights = Weights::<f64>::random(config.clone(), 0).unwrap();
    let meta = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    write_raw(
        &path,
        &weights,
        "",
        meta(&[("cell", "rnn_relu"), ("batch_first", "true"), ("dropout", "0.25")]),
    );
    assert_eq!(Weights::<f64>::load(&path, None).unwrap().config(), &config);

    let gru = RnnConfig {
        gru_linear_before_reset: false,
        ..RnnConfig::gru(2, 3)
    };
    write_raw(
        &path,
        &Weights::random(gru.clone(), 0).unwrap(),
        "",
        meta(&[("gru_linear_before_reset", "false")]),
    );
    assert_eq!(Weights::<f64>::load(&path, None).unwrap().config(), &gru);

    // Everything `save` writes reads back to the same configuration.
    assert_eq!(
        config_metadata(&config).get("cell").map(String::as_str),
        Some("rnn_relu")
    );
}

fn load_err(path: &PathBuf, prefix: Option<&str>) -> String {
    Weights::<f32>::load(path, prefix).unwrap_err().to_string()
}

#[test]
fn wrong_files_get_errors_that_name_the_tensor_and_shapes() {
    let config = RnnConfig {
        num_layers: 2,
        ..RnnConfig::lstm(3, 4)
    };
    let weights = Weights::<f64>::random(config, 0).unwrap();
    let named: Vec<(String, Tensor<f64>)> = weights
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.clone()))
        .collect();
    let path = temp_path("broken.safetensors");
    let write = |tensors: Vec<(String, Tensor<f64>)>, meta: &[(&str, &str)]| {
        let owned: Vec<_> = tensors
            .iter()
            .map(|(n, t)| (n.clone(), OwnedTensor::float(t, StoredDtype::F32)))
            .collect();
        let meta = meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        tensor_file::write(&path, &owned, meta).unwrap();
    };

    // A missing parameter.
    write(
        named.iter().filter(|(n, _)| n != "bias_hh_l1").cloned().collect(),
        &[],
    );
    let err = load_err(&path, None);
    assert!(err.contains("bias_hh_l1") && err.contains("missing"), "{err}");

    // A parameter of the wrong shape.
    let mut wrong = named.clone();
    let slot = wrong.iter().position(|(n, _)| n == "weight_ih_l1").unwrap();
    wrong[slot].1 = Tensor::zeros([16, 5]); // should be [16, 4]
    write(wrong, &[]);
    let err = load_err(&path, None);
    assert!(
        err.contains("weight_ih_l1") && err.contains("[16, 4]") && err.contains("[16, 5]"),
        "{err}"
    );

    // A parameter the configuration does not have.
    let mut extra = named.clone();
    extra.push(("weight_hr_l1".into(), Tensor::zeros([2, 4])));
    write(extra, &[]);
    assert!(load_err(&path, None).contains("weight_hr_l1"));

    // Metadata that contradicts the tensors.
    write(named.clone(), &[("num_layers", "3")]);
    assert!(load_err(&path, None).contains("num_layers"));
    write(named.clone(), &[("cell", "gru")]);
    assert!(load_err(&path, None).contains("cell = gru"));
    write(named.clone(), &[("batch_first", "yes")]);
    assert!(load_err(&path, None).contains("batch_first"));

    // Gate rows that fit no cell.
    let mut odd = named.clone();
    odd[0].1 = Tensor::zeros([10, 3]);
    write(odd, &[]);
    assert!(load_err(&path, None).contains("weight_ih_l0"));

    // Two networks and no prefix; a prefix that names none.
    let mut two: Vec<_> = named
        .iter()
        .map(|(n, t)| (format!("enc.{n}"), t.clone()))
        .collect();
    two.extend(named.iter().map(|(n, t)| (format!("dec.{n}"), t.clone())));
    write(two, &[]);
    assert!(load_err(&path, None).contains("several"));
    assert!(Weights::<f32>::load(&path, Some("dec")).is_ok());
    assert!(load_err(&path, Some("nope")).contains("nope.weight_ih_l0"));

    // Not a safetensors file at all, and no file.
    std::fs::write(&path, b"definitely not safetensors").unwrap();
    assert!(load_err(&path, None).contains("not a valid safetensors file"));
    assert!(load_err(&temp_path("absent.safetensors"), None).contains("absent.safetensors"));
}

#[test]
fn invalid_configurations_say_what_is_wrong() {
    let check = |config: RnnConfig, needle: &str| {
        let err = config.validate().unwrap_err();
        assert!(matches!(err, Error::Config(_)));
        assert!(err.to_string().contains(needle), "{err} should mention {needle}");
        assert!(Weights::<f32>::random(config, 0).is_err());
    };
    check(
        RnnConfig {
            proj_size: 8,
            ..RnnConfig::lstm(3, 8)
        },
        "proj_size (8) must be smaller than hidden_size (8)",
    );
    check(
        RnnConfig {
            proj_size: 2,
            ..RnnConfig::gru(3, 8)
        },
        "proj_size is supported only by lstm",
    );
    check(RnnConfig::lstm(0, 8), "input_size");
    check(RnnConfig::gru(3, 0), "hidden_size");
    check(
        RnnConfig {
            num_layers: 0,
            ..RnnConfig::rnn_tanh(3, 4)
        },
        "num_layers",
    );
    check(
        RnnConfig {
            dropout: 1.5,
            ..RnnConfig::lstm(3, 4)
        },
        "dropout",
    );
    check(
        RnnConfig {
            dropout: f64::NAN,
            ..RnnConfig::lstm(3, 4)
        },
        "dropout",
    );
    check(
        RnnConfig {
            gru_linear_before_reset: false,
            ..RnnConfig::lstm(3, 4)
        },
        "original GRU",
    );
    assert_eq!("gru".parse::<CellKind>().unwrap(), CellKind::Gru);
    assert!("transformer".parse::<CellKind>().is_err());
}

#[test]
fn integer_and_float_tensors_read_back_with_dtype_errors() {
    let path = temp_path("mixed.safetensors");
    let floats = Tensor::new([2, 2], vec![1.0f64, -2.0, 3.5, 0.25]).unwrap();
    let tensors = vec![
        ("x".to_string(), OwnedTensor::float(&floats, StoredDtype::BF16)),
        ("n".to_string(), OwnedTensor::i64(vec![3], &[1, 2, 3])),
    ];
    tensor_file::write(&path, &tensors, HashMap::new()).unwrap();
    let file = TensorFile::open(&path).unwrap();
    assert_eq!(
        file.float::<f32>("x").unwrap().unwrap().data(),
        &[1.0, -2.0, 3.5, 0.25]
    );
    assert_eq!(file.integer("n").unwrap().unwrap(), (vec![3], vec![1, 2, 3]));
    assert!(file
        .float::<f32>("n")
        .unwrap_err()
        .to_string()
        .contains("not a float type"));
    assert!(file
        .integer("x")
        .unwrap_err()
        .to_string()
        .contains("not an integer type"));
    assert!(file.float::<f32>("absent").unwrap().is_none());
}

#[test]
fn mutable_parameters_come_in_pytorch_order_and_update_in_place() {
    let config = RnnConfig {
        num_layers: 2,
        bidirectional: true,
        proj_size: 2,
        ..RnnConfig::lstm(3, 4)
    };
    let mut weights = Weights::<f64>::random(config, 1).unwrap();
    let names: Vec<String> = weights.named_parameters().into_iter().map(|(n, _)| n).collect();
    let mut_names: Vec<String> = weights
        .named_parameters_mut()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, mut_names);
    for (_, t) in weights.named_parameters_mut() {
        t.data_mut().iter_mut().for_each(|v| *v = 0.5);
    }
    assert!(weights
        .named_parameters()
        .iter()
        .all(|(_, t)| t.data().iter().all(|&v| v == 0.5)));
}

/// Damaged files give errors, never panics: every truncation point of the
/// header and many single-byte corruptions of a real fixture.
#[test]
fn damaged_files_are_errors_not_panics() {
    let original = std::fs::read(common::fixtures_dir().join("lstm_proj_l2_bi_varlen.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let path = temp_path("damaged.safetensors");
    let mut rng = rnn_kernels::rng::SplitMix64::new(9);
    let mut variants: Vec<Vec<u8>> = (0..8 + header_len)
        .step_by(7)
        .map(|n| original[..n].to_vec())
        .collect();
    for _ in 0..300 {
        let mut bytes = original.clone();
        let at = rng.int_inclusive(0, 8 + header_len - 1);
        bytes[at] = rng.next_u64() as u8;
        variants.push(bytes);
    }
    for bytes in variants {
        std::fs::write(&path, &bytes).unwrap();
        let outcome = std::panic::catch_unwind(|| {
            let Ok(file) = TensorFile::open(&path) else { return };
            let _ = Weights::<f32>::from_tensor_file(&file, None);
            for name in file.names().unwrap_or_default() {
                let _ = file.float::<f64>(&name);
                let _ = file.integer(&name);
            }
        });
        assert!(outcome.is_ok(), "a damaged file made the loader panic");
    }
}
