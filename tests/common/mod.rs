//! Helpers shared by the integration tests: the PyTorch fixtures and tolerant comparisons.
#![allow(dead_code)] // each test binary uses its own subset

use rnn_kernels::{Element, Tensor, TensorFile, Weights};
use std::path::{Path, PathBuf};

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every per-case fixture written by `tests/fixtures/generate.py` (all but the ICU model).
pub fn case_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .filter(|p| !p.file_stem().unwrap().to_string_lossy().starts_with("icu_"))
        .collect();
    files.sort();
    // The generator writes 19 cases; fewer means fixtures went missing.
    assert!(
        files.len() >= 19,
        "expected at least 19 fixture cases, found {}",
        files.len()
    );
    files
}

pub fn case_name(path: &Path) -> String {
    path.file_stem().unwrap().to_string_lossy().into_owned()
}

/// One fixture case read as `T`.
pub struct Case<T> {
    pub name: String,
    pub weights: Weights<T>,
    pub input: Tensor<T>,
    pub lengths: Option<Vec<usize>>,
    pub h0: Option<Tensor<T>>,
    pub c0: Option<Tensor<T>>,
    pub output: Tensor<f64>,
    pub h_n: Tensor<f64>,
    pub c_n: Option<Tensor<f64>>,
}

impl<T: Element> Case<T> {
    pub fn load(path: &Path) -> Self {
        let file = TensorFile::open(path).unwrap();
        let name = case_name(path);
        let get = |n: &str| file.float::<T>(n).unwrap();
        let expect = |n: &str| {
            file.float::<f64>(n)
                .unwrap()
                .unwrap_or_else(|| panic!("{name}: {n}"))
        };
        Case {
            weights: Weights::from_tensor_file(&file, None).unwrap(),
            input: get("input").unwrap(),
            lengths: file
                .integer("lengths")
                .unwrap()
                .map(|(_, v)| v.into_iter().map(|l| l as usize).collect()),
            h0: get("h0"),
            c0: get("c0"),
            output: expect("expected.output"),
            h_n: expect("expected.h_n"),
            c_n: file.float::<f64>("expected.c_n").unwrap(),
            name,
        }
    }

    pub fn args(&self) -> rnn_kernels::ForwardInput<'_, T> {
        rnn_kernels::ForwardInput {
            input: &self.input,
            lengths: self.lengths.as_deref(),
            h0: self.h0.as_ref(),
            c0: self.c0.as_ref(),
        }
    }
}

/// Asserts `actual` is within `tol` of `expected` (absolute), naming the
/// first offending element; NaN never passes.
#[track_caller]
pub fn assert_close<A: Element, B: Element>(what: &str, actual: &Tensor<A>, expected: &Tensor<B>, tol: f64) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shapes differ");
    let bad = actual
        .data()
        .iter()
        .zip(expected.data())
        .enumerate()
        .find(|(_, (a, e))| {
            let diff = (a.as_f64() - e.as_f64()).abs();
            diff.is_nan() || diff > tol
        });
    if let Some((i, (a, e))) = bad {
        panic!(
            "{what}: element {i} is {a}, expected {e} (tolerance {tol}; max abs diff {:e})",
            actual.max_abs_diff(expected)
        );
    }
}
