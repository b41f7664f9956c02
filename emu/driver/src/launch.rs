//! What a real driver checks before a launch, with its error codes, and
//! the launch itself on the SIMT emulation.

use crate::chip::{Chip, MAX_BLOCK_DIM, MAX_GRID_DIM, MAX_THREADS_PER_BLOCK};
use crate::state::Function;
use cudarc::driver::sys::CUresult;

/// A launch as the API gives it.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_shared: u32,
    pub cooperative: bool,
}

impl Geometry {
    pub fn threads(&self) -> u64 {
        self.block.iter().map(|&d| d as u64).product()
    }

    pub fn blocks(&self) -> u64 {
        self.grid.iter().map(|&d| d as u64).product()
    }
}

/// A refused launch: the driver's code, and why (the stand-in says).
pub type Refusal = (CUresult, String);

/// Refuses what the driver refuses, in the order it checks.
pub fn check(chip: &Chip, function: &Function, g: &Geometry) -> Result<(), Refusal> {
    let name = &function.image.name;
    let invalid = |why: String| Err((CUresult::CUDA_ERROR_INVALID_VALUE, format!("{name}: {why}")));
    for axis in 0..3 {
        if g.grid[axis] == 0 || g.grid[axis] as i64 > MAX_GRID_DIM[axis] as i64 {
            return invalid(format!(
                "grid {:?}: dimension {axis} must be 1..={}",
                g.grid, MAX_GRID_DIM[axis]
            ));
        }
        if g.block[axis] == 0 || g.block[axis] as i64 > MAX_BLOCK_DIM[axis] as i64 {
            return invalid(format!(
                "block {:?}: dimension {axis} must be 1..={}",
                g.block, MAX_BLOCK_DIM[axis]
            ));
        }
    }
    let threads = g.threads();
    if threads > MAX_THREADS_PER_BLOCK as u64 {
        return invalid(format!(
            "{threads} threads per block, above {MAX_THREADS_PER_BLOCK}"
        ));
    }
    if let Some(bounds) = function.image.max_threads {
        if threads > bounds as u64 {
            return invalid(format!(
                "{threads} threads per block, above its __launch_bounds__ of {bounds}"
            ));
        }
    }
    if g.dynamic_shared as i64 > function.max_dynamic_shared as i64 {
        return invalid(format!(
            "{} bytes of dynamic shared memory, above CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = {} \
             (set it to go above 48 KiB)",
            g.dynamic_shared, function.max_dynamic_shared
        ));
    }
    let shared = function.image.static_shared as i64 + g.dynamic_shared as i64;
    if shared > chip.shared_per_block_optin as i64 {
        return invalid(format!(
            "{shared} bytes of shared memory (static {} + dynamic {}), above the {} a block may have on {}",
            function.image.static_shared, g.dynamic_shared, chip.shared_per_block_optin, chip.name
        ));
    }
    let registers = function.image.registers as u64 * threads.next_multiple_of(32);
    if registers > chip.registers_per_sm as u64 {
        return Err((
            CUresult::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
            format!(
                "{name}: {threads} threads × {} registers needs {registers}, above the {} of an SM",
                function.image.registers, chip.registers_per_sm
            ),
        ));
    }
    if g.cooperative {
        let per_sm = chip.blocks_per_sm(threads as i32, function.image.registers, shared as i32);
        let resident = per_sm as u64 * chip.sm_count as u64;
        if g.blocks() > resident {
            return Err((
                CUresult::CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE,
                format!(
                    "{name}: a cooperative grid of {} blocks, but only {resident} can be resident \
                     ({per_sm} per SM × {} SMs with {threads} threads and {shared} bytes of shared memory)",
                    g.blocks(),
                    chip.sm_count
                ),
            ));
        }
    }
    Ok(())
}

/// Runs the kernel on the emulation, with its one parameter struct.
///
/// # Safety
/// `params` must point to the kernel's parameter struct; the device
/// pointers in it are host addresses the emulated threads dereference.
pub unsafe fn run(function: &Function, g: &Geometry, params: *const std::ffi::c_void) -> Result<(), Refusal> {
    if g.block[1] != 1 || g.block[2] != 1 {
        return Err((
            CUresult::CUDA_ERROR_NOT_SUPPORTED,
            format!(
                "{}: the emulation runs 1-D blocks only, not {:?}",
                function.image.name, g.block
            ),
        ));
    }
    let launch = rnn_kernels_emu::Launch {
        grid: g.grid,
        block: g.block,
        smem_bytes: g.dynamic_shared as u64,
        cooperative: g.cooperative as i32,
    };
    // SAFETY: as the caller vouches.
    unsafe { rnn_kernels_emu::launch(&function.image.name, &launch, params) }
        .map_err(|why| (CUresult::CUDA_ERROR_NOT_FOUND, why))
}
