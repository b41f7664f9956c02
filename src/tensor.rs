//! A minimal owned host tensor: a row-major buffer and its shape.
//!
//! The crate needs no more than this on the host: inputs and outputs cross the
//! API as `Tensor`s, and every layout question (time-major or batch-first) is
//! answered by the caller's configuration, not by strides.

use crate::element::Element;
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T> {
    shape: Vec<usize>,
    data: Vec<T>,
}

impl<T: Copy> Tensor<T> {
    /// A tensor over `data`, which must hold exactly `shape`'s element count.
    pub fn new(shape: impl Into<Vec<usize>>, data: Vec<T>) -> Result<Self> {
        let shape = shape.into();
        let count: usize = shape.iter().product();
        if count != data.len() {
            return Err(Error::invalid(
                "tensor",
                format!(
                    "shape {shape:?} holds {count} elements, but {} were given",
                    data.len()
                ),
            ));
        }
        Ok(Tensor { shape, data })
    }

    pub fn full(shape: impl Into<Vec<usize>>, value: T) -> Self {
        let shape = shape.into();
        let count = shape.iter().product();
        Tensor {
            shape,
            data: vec![value; count],
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[T] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }

    pub fn into_data(self) -> Vec<T> {
        self.data
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Swaps the first two axes: `[A, B, ...] -> [B, A, ...]`. This converts
    /// between time-major and batch-first layouts.
    pub fn swap_leading_axes(&self) -> Self {
        assert!(self.shape.len() >= 2, "swap_leading_axes needs two axes");
        let (a, b) = (self.shape[0], self.shape[1]);
        let inner: usize = self.shape[2..].iter().product();
        let mut data = Vec::with_capacity(self.data.len());
        for j in 0..b {
            for i in 0..a {
                let start = (i * b + j) * inner;
                data.extend_from_slice(&self.data[start..start + inner]);
            }
        }
        let mut shape = self.shape.clone();
        shape.swap(0, 1);
        Tensor { shape, data }
    }
}

impl<T: Element> Tensor<T> {
    pub fn zeros(shape: impl Into<Vec<usize>>) -> Self {
        Self::full(shape, T::zero())
    }

    /// Converts every element to another float type (through f64).
    pub fn cast<U: Element>(&self) -> Tensor<U> {
        Tensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(|v| U::from_f64(v.as_f64())).collect(),
        }
    }

    /// The largest absolute difference to `other`, or infinity when the shapes
    /// differ or either side holds a NaN (so NaN never passes a tolerance).
    pub fn max_abs_diff<U: Element>(&self, other: &Tensor<U>) -> f64 {
        if self.shape != other.shape {
            return f64::INFINITY;
        }
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| {
                let d = (a.as_f64() - b.as_f64()).abs();
                if d.is_nan() {
                    f64::INFINITY
                } else {
                    d
                }
            })
            .fold(0.0, f64::max)
    }
}
