//! The CUDA backend: the kernels of `kernels/` on a GPU, through cudarc's
//! driver API (loaded at run time: the crate links and runs without CUDA).

mod device;
pub mod launch;
pub mod module;
mod rnn;
mod train;

pub use device::CudaDevice;
pub use rnn::{CudaRnn, DeviceInput, DeviceOutput};
pub use train::{CudaTrainingState, DeviceGradOutputs, DeviceGradients};
