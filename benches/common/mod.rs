#![allow(dead_code)] // each bench uses a part of it
//! What the benches share: the shapes of `../shared/gpu/shapes.json`, their
//! inputs from a fixed seed, and percentiles.

use rnn_kernels::rng::SplitMix64;
use rnn_kernels::{CellKind, RnnConfig, Tensor};
use serde_json::Value;
use std::path::PathBuf;

/// One entry of shapes.json.
pub struct Shape {
    pub name: String,
    pub config: RnnConfig,
    pub batch: usize,
    pub seq_len: usize,
    pub lengths: Option<Vec<usize>>,
    pub step: bool,
}

impl Shape {
    pub fn parse(v: &Value) -> Shape {
        let int = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("shape field {k}")) as usize;
        let cell: CellKind = v["cell"].as_str().unwrap().parse().unwrap();
        let config = RnnConfig {
            num_layers: int("layers"),
            bidirectional: v["bidirectional"].as_bool().unwrap_or(false),
            ..RnnConfig::new(cell, int("input"), int("hidden"))
        };
        let (batch, seq_len) = (int("batch"), int("seq"));
        // Varlen shapes carry the lengths every anchor uses (DESIGN §5).
        let lengths = v["lengths"].as_str().map(|spec| {
            let list = v["lengths_list"]
                .as_array()
                .unwrap_or_else(|| panic!("shape with lengths {spec:?} has no lengths_list"));
            let lengths: Vec<usize> = list
                .iter()
                .map(|l| l.as_u64().expect("a length") as usize)
                .collect();
            assert_eq!(lengths.len(), batch, "lengths_list has one length per sequence");
            lengths
        });
        Shape {
            name: v["name"].as_str().unwrap().to_string(),
            config,
            batch,
            seq_len,
            lengths,
            step: v["step"].as_bool().unwrap_or(false),
        }
    }

    /// Multiply-adds of one call, ×2 for flops.
    pub fn flops(&self) -> u64 {
        let c = &self.config;
        let per_step: usize = (0..c.num_layers)
            .map(|l| {
                c.num_directions() * c.gates() * c.hidden_size * (c.layer_input_size(l) + c.output_size())
            })
            .sum();
        2 * (per_step * self.batch * self.seq_len) as u64
    }
}

pub fn shapes_path() -> PathBuf {
    if let Ok(p) = std::env::var("RNN_SHAPES") {
        return p.into();
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    [
        manifest.join("../shared/gpu/shapes.json"),
        manifest.join(".gpu/shapes.json"),
        "shapes.json".into(),
    ]
    .into_iter()
    .find(|p| p.exists())
    .expect("shapes.json: set RNN_SHAPES, or keep ../shared beside the crate")
}

/// The shapes of shapes.json, or those `RNN_BENCH_SHAPES=name,name` names.
pub fn load_shapes() -> Vec<Shape> {
    let text = std::fs::read_to_string(shapes_path()).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let all: Vec<Shape> = doc["shapes"]
        .as_array()
        .unwrap()
        .iter()
        .map(Shape::parse)
        .collect();
    let Ok(spec) = std::env::var("RNN_BENCH_SHAPES") else {
        return all;
    };
    let wanted: Vec<&str> = spec.split(',').map(str::trim).collect();
    for name in &wanted {
        if !all.iter().any(|s| s.name == *name) {
            let known: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
            panic!("RNN_BENCH_SHAPES: no shape {name:?}; shapes.json has {known:?}");
        }
    }
    all.into_iter()
        .filter(|s| wanted.contains(&s.name.as_str()))
        .collect()
}

/// A shape's input `[T, B, I]`, from a fixed seed.
pub fn shape_input(shape: &Shape, seed: u64) -> Tensor<f32> {
    let mut rng = SplitMix64::new(seed);
    let count = shape.seq_len * shape.batch * shape.config.input_size;
    Tensor::new(
        [shape.seq_len, shape.batch, shape.config.input_size],
        random(&mut rng, count),
    )
    .unwrap()
}

pub fn random(rng: &mut SplitMix64, count: usize) -> Vec<f32> {
    (0..count).map(|_| rng.normal() as f32).collect()
}

pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
