//! Recurrent networks (RNN, LSTM, GRU) with PyTorch's semantics and weight
//! layout: a CPU reference that matches `torch.nn.RNN` / `LSTM` / `GRU`, and
//! the two fast paths checked against it: [`cpu::CpuRnn`] and
//! [`cuda::CudaRnn`] (hand-written kernels, loaded at run time; a build
//! without nvcc has none).
//!
//! ```
//! use rnn_kernels::{reference, ForwardInput, RnnConfig, Tensor, Weights};
//!
//! let config = RnnConfig { num_layers: 2, ..RnnConfig::lstm(6, 64) };
//! let weights = Weights::<f32>::random(config, 0).unwrap();
//! let input = Tensor::zeros([48, 32, 6]); // [T, B, I]
//! let lengths = vec![48; 32];
//! let out = reference::forward(&weights, &ForwardInput::new(&input).lengths(&lengths)).unwrap();
//! assert_eq!(out.output.shape(), &[48, 32, 64]);
//! assert_eq!(out.h_n.shape(), &[2, 32, 64]);
//! ```

#![warn(missing_docs)]

/// The README's examples are compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod backend;
pub mod config;
pub mod cpu;
pub mod cuda;
pub mod dropout;
pub mod element;
pub mod error;
pub mod facts;
pub mod memory;
pub mod quant;
pub mod reference;
pub mod rng;
pub mod sequence;
pub mod state_file;
pub mod tensor;
pub mod tensor_file;
pub mod weights;

pub use config::{CellKind, RnnConfig};
pub use element::Element;
pub use error::{Error, Result};
pub use quant::Precision;
pub use sequence::{ForwardInput, ForwardOutput, GradOutputs, Gradients, State};
pub use tensor::Tensor;
pub use tensor_file::{StoredDtype, TensorFile};
pub use weights::Weights;
