//! The CUDA backend: the kernels of `kernels/` on a GPU, through cudarc's
//! driver API (loaded at run time: the crate links and runs without CUDA).

mod device;
// The launch planner and the kernel images are the crate's own: public only
// so that its tests (plan audits, the emulated kernels, the SASS checks)
// can reach them; hidden from the documentation and not part of the API.
#[doc(hidden)]
pub mod launch;
#[doc(hidden)]
pub mod module;
mod rnn;
mod train;

pub use device::CudaDevice;
pub use rnn::{CudaRnn, DeviceInput, DeviceOutput};
pub use train::{CudaTrainingState, DeviceGradOutputs, DeviceGradients};
