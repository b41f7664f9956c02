//! Runs the crate's CUDA kernels (`kernels/*.cu`) on the CPU: each CUDA
//! thread is a host thread, `__syncthreads` a barrier, and a cooperative
//! launch runs all its blocks at once. Tests use it to compare every kernel
//! with the CPU reference on machines without a GPU; it checks shared-memory
//! overruns, poisons uninitialised shared memory with NaN, and aborts a
//! launch that deadlocks.

use std::ffi::c_void;

/// A launch's geometry (mirrors `rnn_emu::Launch` in simt.hpp).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Launch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub smem_bytes: u64,
    /// All blocks run at once (they may wait for each other), as with
    /// `cuLaunchCooperativeKernel`; otherwise they run one at a time.
    pub cooperative: i32,
}

type EntryPoint = unsafe extern "C" fn(*const Launch, *const c_void);

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The names of every kernel entry point.
pub fn kernel_names() -> impl Iterator<Item = &'static str> {
    KERNELS.iter().map(|(name, _)| *name)
}

/// Runs kernel `name` with its parameter struct at `params`.
///
/// # Safety
/// `params` must point to the kernel's parameter struct, and every pointer
/// in it must be valid for what the kernel reads and writes (host memory).
pub unsafe fn launch(name: &str, launch: &Launch, params: *const c_void) -> Result<(), String> {
    let (_, entry) = KERNELS
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| format!("no emulated kernel named {name}"))?;
    if launch.block[0] == 0 || launch.block[0] > 1024 || launch.grid.contains(&0) {
        return Err(format!("invalid launch {launch:?}"));
    }
    // SAFETY: the caller vouches for params; the launch geometry was checked.
    unsafe { entry(launch, params) };
    Ok(())
}
