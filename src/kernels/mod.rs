//! Everything about the CUDA kernels that does not need a GPU: the parameter
//! structs they take, how weights are packed for them, how a forward pass is
//! split into launches. The CUDA backend ([`crate::cuda`]) executes these
//! plans on a device; the tests execute them on the host SIMT emulation.

pub mod layout;
pub mod params;
pub mod plan;
pub mod train;

pub use layout::WeightLayout;
pub use plan::{
    forward_steps, plan_pass, plan_recurrence, Blocking, DeviceLimits, ForwardBuffers, Launch, Pass,
    RecurrencePlan, Step, Strategy,
};
