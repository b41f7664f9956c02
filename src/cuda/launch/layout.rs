//! How the weights sit in one device buffer: per layer, both directions of
//! each parameter next to each other, so that one input-projection launch
//! reads `W_ih` of both directions as one `[D*G*H, in]` matrix and the
//! recurrence finds direction `d` at a fixed stride.

use crate::config::RnnConfig;
use crate::element::Element;
use crate::error::Result;
use crate::tensor::Tensor;
use crate::weights::{ParamKind, Weights};

/// Offsets (in elements) of one layer's parameters in the packed buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerOffsets {
    /// `[D, G*H, in]`
    pub w_ih: usize,
    /// `[D, G*H]`, if the network has biases
    pub b_ih: Option<usize>,
    /// `[D, G*H, Hout]`
    pub w_hh: usize,
    /// `[D, G*H]`, if the network has biases
    pub b_hh: Option<usize>,
    /// `[D, Hout, H]`, if the LSTM projects
    pub w_hr: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightLayout {
    pub layers: Vec<LayerOffsets>,
    pub len: usize,
}

impl WeightLayout {
    pub fn new(config: &RnnConfig) -> Self {
        let (d, rows, hout, h) = (
            config.num_directions(),
            config.gates() * config.hidden_size,
            config.output_size(),
            config.hidden_size,
        );
        let mut len = 0;
        let mut take = |n: usize| {
            let at = len;
            len += n;
            at
        };
        let layers = (0..config.num_layers)
            .map(|l| LayerOffsets {
                w_ih: take(d * rows * config.layer_input_size(l)),
                b_ih: config.bias.then(|| take(d * rows)),
                w_hh: take(d * rows * hout),
                b_hh: config.bias.then(|| take(d * rows)),
                w_hr: (config.proj_size > 0).then(|| take(d * hout * h)),
            })
            .collect();
        WeightLayout { layers, len }
    }

    /// The weights packed in this layout, as f32.
    pub fn pack<T: Element>(&self, weights: &Weights<T>) -> Vec<f32> {
        let config = weights.config();
        let mut packed = vec![0.0f32; self.len];
        let mut put = |offset: usize, direction: usize, data: &[T]| {
            let at = offset + direction * data.len();
            for (dst, src) in packed[at..at + data.len()].iter_mut().zip(data) {
                *dst = src.as_f64() as f32;
            }
        };
        for (l, offsets) in self.layers.iter().enumerate() {
            for d in 0..config.num_directions() {
                let w = weights.layer_in_range(l, d);
                put(offsets.w_ih, d, w.weight_ih.data());
                put(offsets.w_hh, d, w.weight_hh.data());
                if let (Some(o), Some(b)) = (offsets.b_ih, &w.bias_ih) {
                    put(o, d, b.data());
                }
                if let (Some(o), Some(b)) = (offsets.b_hh, &w.bias_hh) {
                    put(o, d, b.data());
                }
                if let (Some(o), Some(p)) = (offsets.w_hr, &w.weight_hr) {
                    put(o, d, p.data());
                }
            }
        }
        packed
    }

    /// Weights (or their gradients) from a buffer packed in this layout.
    pub fn unpack(&self, config: &RnnConfig, packed: &[f32]) -> Result<Weights<f32>> {
        Weights::from_fn(config.clone(), |spec| {
            let offsets = &self.layers[spec.layer];
            let base = match spec.kind {
                ParamKind::WeightIh => Some(offsets.w_ih),
                ParamKind::WeightHh => Some(offsets.w_hh),
                ParamKind::BiasIh => offsets.b_ih,
                ParamKind::BiasHh => offsets.b_hh,
                ParamKind::WeightHr => offsets.w_hr,
            }
            .expect("the layout has every parameter of its configuration");
            let count: usize = spec.shape.iter().product();
            let at = base + spec.direction * count;
            Tensor::new(spec.shape.clone(), packed[at..at + count].to_vec())
        })
    }
}
