//! The floating-point types the CPU reference computes in (f32 and f64).

use num_traits::Float;
use std::fmt::{Debug, Display};

/// A real number type the reference path is generic over.
///
/// The reference computes in `f64` to serve as the oracle and in `f32` to
/// match what a GPU computes; storage in files may also be f16/bf16, which is
/// converted on load (see [`crate::tensor_file`]).
pub trait Element:
    Float + bytemuck::Pod + Default + Debug + Display + Send + Sync + std::iter::Sum + 'static
{
    /// The name used in messages and benchmark records.
    const NAME: &'static str;

    /// The nearest value of this type.
    fn from_f64(value: f64) -> Self;
    /// The exact value as an `f64`.
    fn as_f64(self) -> f64;

    /// `1 / (1 + e^-x)`, computed as PyTorch computes it.
    fn sigmoid(self) -> Self {
        Self::one() / (Self::one() + (-self).exp())
    }
}

impl Element for f32 {
    const NAME: &'static str = "f32";
    fn from_f64(value: f64) -> Self {
        value as f32
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Element for f64 {
    const NAME: &'static str = "f64";
    fn from_f64(value: f64) -> Self {
        value
    }
    fn as_f64(self) -> f64 {
        self
    }
}
