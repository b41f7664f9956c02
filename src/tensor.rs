//! A minimal owned host tensor: a row-major buffer and its shape.
//!
//! The crate needs no more than this on the host: inputs and outputs cross the
//! API as `Tensor`s, and every layout question (time-major or batch-first) is
//! answered by the caller's configuration, not by strides.

use crate::element::Element;
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
/// A dense row-major tensor on the host.
pub struct Tensor<T> {
    shape: Vec<usize>,
    data: Vec<T>,
}

impl<T: Copy> Tensor<T> {
    /// A tensor over `data`, which must hold exactly `shape`'s element count.
    pub fn new(shape: impl Into<Vec<usize>>, data: Vec<T>) -> Result<Self> {
        let shape = shape.into();
        let Some(count) = element_count(&shape) else {
            return Err(Error::invalid(
                "tensor",
                format!("shape {shape:?} has more elements than memory can address"),
            ));
        };
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

    /// A tensor of `shape` with every element `value`.
    ///
    /// # Panics
    /// When `shape`'s element count overflows `usize`, as `vec![value; n]`
    /// would; [`Tensor::try_full`] returns an error instead.
    pub fn full(shape: impl Into<Vec<usize>>, value: T) -> Self {
        Self::try_full(shape, value).expect("a tensor shape whose element count fits in usize")
    }

    /// [`Tensor::full`], with an error for a shape whose element count
    /// overflows `usize` or whose memory cannot be allocated
    /// ([`Error::OutOfMemory`]).
    pub fn try_full(shape: impl Into<Vec<usize>>, value: T) -> Result<Self> {
        let shape = shape.into();
        let count = checked_count(&shape)?;
        let data = crate::memory::filled(count, value, || {
            let detail = format!("{shape:?}, {} bytes an element", std::mem::size_of::<T>());
            ("a tensor".to_string(), detail)
        })?;
        Ok(Tensor { shape, data })
    }

    /// Its dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Its elements, row-major.
    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// Its elements, row-major, to change in place.
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// Its elements, row-major, without a copy.
    pub fn into_data(self) -> Vec<T> {
        self.data
    }

    /// How many elements it has.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Swaps the first two axes: `[A, B, ...] -> [B, A, ...]`. This converts
    /// between time-major and batch-first layouts; a tensor of fewer than
    /// two axes is an error.
    pub fn swap_leading_axes(&self) -> Result<Self> {
        if self.shape.len() < 2 {
            return Err(Error::shape(
                "tensor",
                "[A, B, ...] (two axes or more)",
                &self.shape,
            ));
        }
        let (a, b) = (self.shape[0], self.shape[1]);
        let inner: usize = self.shape[2..].iter().product();
        let mut data = Vec::new();
        crate::memory::reserve(&mut data, self.data.len(), || {
            let detail = format!("{:?}, {} bytes an element", self.shape, std::mem::size_of::<T>());
            ("a transposed copy".to_string(), detail)
        })?;
        for j in 0..b {
            for i in 0..a {
                let start = (i * b + j) * inner;
                data.extend_from_slice(&self.data[start..start + inner]);
            }
        }
        let mut shape = self.shape.clone();
        shape.swap(0, 1);
        Ok(Tensor { shape, data })
    }
}

impl<T: Element> Tensor<T> {
    /// A tensor of zeros (panics as [`Tensor::full`] does).
    pub fn zeros(shape: impl Into<Vec<usize>>) -> Self {
        Self::full(shape, T::zero())
    }

    /// A tensor of zeros, or an error for a shape too large to address or
    /// to allocate ([`Error::OutOfMemory`], which [`Error::needed_by`]
    /// blames on the tensor the caller knows).
    pub fn try_zeros(shape: impl Into<Vec<usize>>) -> Result<Self> {
        let shape = shape.into();
        let count = checked_count(&shape)?;
        let data = crate::memory::zeros(count, || {
            ("a tensor".to_string(), format!("{shape:?} {}", T::NAME))
        })?;
        Ok(Tensor { shape, data })
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

/// The number of elements of `shape`, or an error when it overflows `usize`.
fn checked_count(shape: &[usize]) -> Result<usize> {
    element_count(shape).ok_or_else(|| {
        Error::invalid(
            "tensor",
            format!("shape {shape:?} has more elements than memory can address"),
        )
    })
}

/// The number of elements of `shape`, or `None` when it overflows `usize`.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}
