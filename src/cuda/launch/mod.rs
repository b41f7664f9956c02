//! Host-side launch planning for the CUDA kernels of `kernels/`: everything
//! that does not need a GPU — the parameter structs the kernels take, how
//! weights are packed for them, how a forward or backward pass is split into
//! launches. The rest of [`crate::cuda`] executes these plans on a device;
//! the tests execute them on the host SIMT emulation.

pub mod layout;
pub mod params;
pub mod plan;
pub mod train;

pub use layout::WeightLayout;
pub use plan::{
    forward_steps, plan_pass, plan_recurrence, Blocking, DeviceLimits, ForwardBuffers, Launch, Pass,
    RecurrencePlan, Step, Strategy,
};
