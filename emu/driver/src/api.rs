//! The driver entry points cudarc loads, by their exported names.
//!
//! Each checks its arguments and handles as the driver does and returns
//! the driver's error code; none panics across the C boundary.

#![allow(non_snake_case, clippy::missing_safety_doc)]

use crate::chip::{self, Chip};
use crate::cubin::{self, ImageError};
use crate::launch::{self, Geometry};
use crate::memory;
use crate::refuse;
use crate::state::{self, Capture, Driver, Event, Function, Op, Outcome, CURRENT, PRIMARY_CONTEXT};
use cudarc::driver::sys::{
    CUcontext, CUdevice, CUdevice_attribute as A, CUdeviceptr, CUevent, CUfunction,
    CUfunction_attribute as F, CUgraph, CUgraphExec, CUmodule, CUresult, CUstream, CUstreamCaptureStatus,
};
use std::ffi::{c_char, c_int, c_uchar, c_uint, c_void, CStr};
use std::time::Instant;

const DRIVER_VERSION: c_int = 13000;

fn trace_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("RNN_EMU_TRACE").is_ok_and(|v| v == "1"))
}

/// Runs one entry point's body: a panic inside becomes `CUDA_ERROR_UNKNOWN`
/// (never an unwind into C), `RNN_EMU_TRACE=1` shows the call, and a
/// thread that records its calls ([`crate::calls`]) notes it.
fn api(name: &str, body: impl FnOnce() -> Outcome) -> CUresult {
    crate::calls::note(name);
    let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(Ok(())) => CUresult::CUDA_SUCCESS,
        Ok(Err(code)) => code,
        Err(_) => {
            refuse(&format!("{name} panicked"));
            CUresult::CUDA_ERROR_UNKNOWN
        }
    };
    if trace_on() {
        eprintln!("rnn-kernels CUDA stand-in: {name} -> {result:?}");
    }
    result
}

fn invalid(why: String) -> CUresult {
    refuse(&why);
    CUresult::CUDA_ERROR_INVALID_VALUE
}

/// Writes an out-parameter, or `CUDA_ERROR_INVALID_VALUE` for a null one.
unsafe fn put<T>(out: *mut T, value: T) -> Outcome {
    if out.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-null, and the caller's out-parameter.
    unsafe { out.write(value) };
    Ok(())
}

fn device(ordinal: CUdevice) -> Outcome {
    if ordinal == 0 {
        Ok(())
    } else {
        Err(CUresult::CUDA_ERROR_INVALID_DEVICE)
    }
}

// ---- initialisation and the device ----

#[no_mangle]
pub unsafe extern "C" fn cuInit(flags: c_uint) -> CUresult {
    api("cuInit", || {
        if flags != 0 {
            return Err(invalid(format!("cuInit flags must be 0, not {flags}")));
        }
        state::init()
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CUresult {
    api("cuDriverGetVersion", || unsafe { put(version, DRIVER_VERSION) })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    api("cuDeviceGetCount", || {
        state::with(|_| Ok(()))?;
        unsafe { put(count, 1) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(out: *mut CUdevice, ordinal: c_int) -> CUresult {
    api("cuDeviceGet", || {
        state::with(|_| device(ordinal))?;
        unsafe { put(out, ordinal) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    api("cuDeviceGetName", || {
        let chip = state::with(|d| device(dev).map(|_| d.chip))?;
        if name.is_null() || len <= 0 {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let full = format!("{} (rnn-kernels stand-in)", chip.name);
        let bytes = &full.as_bytes()[..full.len().min(len as usize - 1)];
        // SAFETY: the caller's buffer of `len` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), name as *mut u8, bytes.len());
            *name.add(bytes.len()) = 0;
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    api("cuDeviceTotalMem", || {
        let chip = state::with(|d| device(dev).map(|_| d.chip))?;
        unsafe { put(bytes, chip.total_memory) }
    })
}

/// What `cuDeviceGetAttribute` reports for `attribute` on `chip`.
fn device_attribute(chip: &Chip, attribute: c_int) -> Option<c_int> {
    let table: &[(A, c_int)] = &[
        (
            A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK,
            chip::MAX_THREADS_PER_BLOCK,
        ),
        (A::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X, chip::MAX_BLOCK_DIM[0]),
        (A::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y, chip::MAX_BLOCK_DIM[1]),
        (A::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z, chip::MAX_BLOCK_DIM[2]),
        (A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X, chip::MAX_GRID_DIM[0]),
        (A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y, chip::MAX_GRID_DIM[1]),
        (A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z, chip::MAX_GRID_DIM[2]),
        (
            A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK,
            chip::DEFAULT_SHARED_PER_BLOCK,
        ),
        (
            A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            chip.shared_per_block_optin,
        ),
        (
            A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR,
            chip.shared_per_sm,
        ),
        (
            A::CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK,
            chip::RESERVED_SHARED_PER_BLOCK,
        ),
        (A::CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY, 65536),
        (A::CU_DEVICE_ATTRIBUTE_WARP_SIZE, chip::WARP),
        (A::CU_DEVICE_ATTRIBUTE_MAX_PITCH, i32::MAX),
        (
            A::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK,
            chip.registers_per_sm,
        ),
        (
            A::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR,
            chip.registers_per_sm,
        ),
        (A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE, chip.clock_khz),
        (A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, chip.memory_clock_khz),
        (
            A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH,
            chip.memory_bus_bits,
        ),
        (A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, chip.l2_bytes),
        (A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, chip.sm_count),
        (
            A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR,
            chip.threads_per_sm,
        ),
        (
            A::CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR,
            chip.blocks_per_sm,
        ),
        (A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, chip.capability.0),
        (A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, chip.capability.1),
        (A::CU_DEVICE_ATTRIBUTE_INTEGRATED, 0),
        (A::CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS, 1),
        (A::CU_DEVICE_ATTRIBUTE_ECC_ENABLED, 1),
        (A::CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING, 1),
        (A::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH, 1),
        (A::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED, 1),
        (A::CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY, 1),
        (A::CU_DEVICE_ATTRIBUTE_COMPUTE_MODE, 0),
        (A::CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT, 3),
        (A::CU_DEVICE_ATTRIBUTE_STREAM_PRIORITIES_SUPPORTED, 1),
        (A::CU_DEVICE_ATTRIBUTE_GLOBAL_L1_CACHE_SUPPORTED, 1),
        (A::CU_DEVICE_ATTRIBUTE_LOCAL_L1_CACHE_SUPPORTED, 1),
        (A::CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY, 1),
        (A::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, 0x19),
        (A::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, 0),
        (A::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, 0),
    ];
    table
        .iter()
        .find(|(a, _)| *a as c_int == attribute)
        .map(|&(_, v)| v)
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    value: *mut c_int,
    attribute: c_int,
    dev: CUdevice,
) -> CUresult {
    api("cuDeviceGetAttribute", || {
        let chip = state::with(|d| device(dev).map(|_| d.chip))?;
        let v = device_attribute(&chip, attribute)
            .ok_or_else(|| invalid(format!("device attribute {attribute} is not modelled")))?;
        unsafe { put(value, v) }
    })
}

// ---- contexts ----

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(out: *mut CUcontext, dev: CUdevice) -> CUresult {
    api("cuDevicePrimaryCtxRetain", || {
        state::with(|d| {
            device(dev)?;
            if out.is_null() {
                return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
            }
            d.retain();
            Ok(())
        })?;
        unsafe { put(out, PRIMARY_CONTEXT as CUcontext) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    api("cuDevicePrimaryCtxRelease", || {
        state::with(|d| {
            device(dev)?;
            d.release()
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) -> CUresult {
    api("cuDevicePrimaryCtxReset", || {
        state::with(|d| {
            device(dev)?;
            d.reset();
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCurrent(context: CUcontext) -> CUresult {
    api("cuCtxSetCurrent", || {
        let handle = context as usize;
        state::with(|d| {
            if handle != 0 && (handle != PRIMARY_CONTEXT || d.context.is_none()) {
                return Err(CUresult::CUDA_ERROR_INVALID_CONTEXT);
            }
            CURRENT.with(|c| c.set(handle));
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(out: *mut CUcontext) -> CUresult {
    api("cuCtxGetCurrent", || {
        let current = state::with(|d| {
            // A destroyed context is no longer current.
            let c = CURRENT.with(|c| c.get());
            Ok(if d.context.is_some() { c } else { 0 })
        })?;
        unsafe { put(out, current as CUcontext) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(out: *mut CUdevice) -> CUresult {
    api("cuCtxGetDevice", || {
        state::with(|d| d.current().map(|_| ()))?;
        unsafe { put(out, 0) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    api("cuCtxSynchronize", || {
        state::with(|d| d.current()?.refuse_during_capture("cuCtxSynchronize"))
    })
}

// ---- memory ----

fn allocate(d: &mut Driver, bytes: usize) -> Outcome<CUdeviceptr> {
    if bytes == 0 {
        return Err(invalid("cuMemAlloc of 0 bytes".into()));
    }
    if d.arena.bytes_live.saturating_add(bytes) > d.chip.total_memory {
        return Err(CUresult::CUDA_ERROR_OUT_OF_MEMORY);
    }
    d.arena
        .allocate(bytes)
        .map(|p| p as CUdeviceptr)
        .ok_or(CUresult::CUDA_ERROR_OUT_OF_MEMORY)
}

fn free(d: &mut Driver, ptr: CUdeviceptr) -> Outcome {
    if d.arena.free(ptr as usize) {
        Ok(())
    } else {
        Err(invalid(format!(
            "free of {ptr:#x}, which is not the start of a live allocation"
        )))
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(out: *mut CUdeviceptr, bytes: usize) -> CUresult {
    api("cuMemAlloc", || {
        let p = state::with(|d| {
            d.current()?.refuse_during_capture("cuMemAlloc")?;
            allocate(d, bytes)
        })?;
        unsafe { put(out, p) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(out: *mut CUdeviceptr, bytes: usize, stream: CUstream) -> CUresult {
    api("cuMemAllocAsync", || {
        let p = state::with(|d| {
            let context = d.current()?;
            context.use_stream(stream as usize, "cuMemAllocAsync")?;
            // Graph memory nodes are not modelled.
            context.refuse_in_capture(stream as usize, "cuMemAllocAsync")?;
            allocate(d, bytes)
        })?;
        unsafe { put(out, p) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(ptr: CUdeviceptr) -> CUresult {
    api("cuMemFree", || {
        state::with(|d| {
            d.live()?.refuse_during_capture("cuMemFree")?;
            free(d, ptr)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeAsync(ptr: CUdeviceptr, stream: CUstream) -> CUresult {
    api("cuMemFreeAsync", || {
        state::with(|d| {
            let context = d.live()?;
            context.use_stream(stream as usize, "cuMemFreeAsync")?;
            context.refuse_in_capture(stream as usize, "cuMemFreeAsync")?;
            free(d, ptr)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    api("cuMemGetInfo", || {
        let (used, all) = state::with(|d| {
            d.current()?;
            Ok((d.arena.bytes_live, d.chip.total_memory))
        })?;
        unsafe {
            put(free, all - used.min(all))?;
            put(total, all)
        }
    })
}

/// Checks that `[ptr, ptr + bytes)` is device memory someone allocated.
fn device_range(d: &Driver, what: &str, ptr: CUdeviceptr, bytes: usize) -> Outcome<*mut u8> {
    match d.arena.find(ptr as usize, bytes) {
        Some(_) => Ok(ptr as *mut u8),
        None => Err(invalid(format!(
            "{what}: {bytes} bytes at {ptr:#x} are not inside one allocation"
        ))),
    }
}

/// One copy between host and device memory, checked: `to_device` copies
/// `host` → `dev`.
fn copy(
    stream: Option<CUstream>,
    what: &str,
    dev: CUdeviceptr,
    host: *mut u8,
    bytes: usize,
    to_device: bool,
) -> Outcome {
    state::with(|d| {
        let context = d.live()?;
        match stream {
            // Copies of pageable host memory are not captured.
            Some(s) => {
                context.use_stream(s as usize, what)?;
                context.refuse_in_capture(s as usize, what)?;
            }
            None => d.current()?.refuse_during_capture(what)?,
        }
        if bytes == 0 {
            return Ok(());
        }
        if host.is_null() {
            return Err(invalid(format!("{what}: null host pointer")));
        }
        let device = device_range(d, what, dev, bytes)?;
        // SAFETY: the device range is inside a live allocation; the host
        // range is the caller's.
        unsafe {
            if to_device {
                std::ptr::copy(host, device, bytes)
            } else {
                std::ptr::copy(device, host, bytes)
            }
        };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(dst: CUdeviceptr, src: *const c_void, bytes: usize) -> CUresult {
    api("cuMemcpyHtoD", || {
        copy(None, "cuMemcpyHtoD", dst, src as *mut u8, bytes, true)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    bytes: usize,
    stream: CUstream,
) -> CUresult {
    api("cuMemcpyHtoDAsync", || {
        copy(
            Some(stream),
            "cuMemcpyHtoDAsync",
            dst,
            src as *mut u8,
            bytes,
            true,
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, bytes: usize) -> CUresult {
    api("cuMemcpyDtoH", || {
        copy(None, "cuMemcpyDtoH", src, dst as *mut u8, bytes, false)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: CUdeviceptr,
    bytes: usize,
    stream: CUstream,
) -> CUresult {
    api("cuMemcpyDtoHAsync", || {
        copy(
            Some(stream),
            "cuMemcpyDtoHAsync",
            src,
            dst as *mut u8,
            bytes,
            false,
        )
    })
}

fn copy_on_device(
    stream: Option<CUstream>,
    what: &str,
    dst: CUdeviceptr,
    src: CUdeviceptr,
    bytes: usize,
) -> Outcome {
    state::with(|d| {
        let op = Op::Copy { dst, src, bytes };
        // Checked when issued, as when run.
        check_op(d, &op)?;
        if !submit(d, stream, what, &op)? {
            run_op(d, &op)?;
        }
        Ok(())
    })
}

/// Checks the stream of an asynchronous operation (`None`: a synchronous
/// call), and records `op` instead if the stream is being captured:
/// whether it was recorded.
fn submit(d: &mut Driver, stream: Option<CUstream>, what: &str, op: &Op) -> Outcome<bool> {
    let context = d.live()?;
    match stream {
        Some(s) => {
            context.use_stream(s as usize, what)?;
            if let Some(capture) = context.capture(s as usize) {
                capture.ops.push(op.clone());
                return Ok(true);
            }
        }
        None => d.current()?.refuse_during_capture(what)?,
    }
    Ok(false)
}

/// Checks a copy's or fill's device ranges.
fn check_op(d: &Driver, op: &Op) -> Outcome {
    match op {
        Op::Copy { dst, src, bytes } if *bytes > 0 => {
            device_range(d, "cuMemcpyDtoD", *dst, *bytes)?;
            device_range(d, "cuMemcpyDtoD", *src, *bytes)?;
        }
        Op::Fill { dst, pattern, count } if *count > 0 => {
            if !(*dst as usize).is_multiple_of(pattern.len()) {
                return Err(invalid(format!(
                    "cuMemset: {dst:#x} is not {}-byte aligned",
                    pattern.len()
                )));
            }
            let bytes = count
                .checked_mul(pattern.len())
                .ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)?;
            device_range(d, "cuMemset", *dst, bytes)?;
        }
        _ => {}
    }
    Ok(())
}

/// Runs a copy, fill or event record (a kernel runs through `run_kernel`).
fn run_op(d: &mut Driver, op: &Op) -> Outcome {
    check_op(d, op)?;
    if matches!(op, Op::Copy { bytes: 0, .. } | Op::Fill { count: 0, .. }) {
        return Ok(());
    }
    match op {
        Op::Copy { dst, src, bytes } => {
            // SAFETY: both ranges are inside live allocations (checked).
            unsafe { std::ptr::copy(*src as *const u8, *dst as *mut u8, *bytes) };
        }
        Op::Fill { dst, pattern, count } => {
            // SAFETY: inside a live allocation (checked).
            let target = unsafe { std::slice::from_raw_parts_mut(*dst as *mut u8, count * pattern.len()) };
            for chunk in target.chunks_exact_mut(pattern.len()) {
                chunk.copy_from_slice(pattern);
            }
        }
        Op::Record { event } => {
            let e = d
                .live()?
                .events
                .get_mut(event)
                .ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)?;
            e.recorded = Some(Instant::now());
        }
        Op::Launch { .. } => unreachable!("kernels run through run_kernel"),
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, bytes: usize) -> CUresult {
    api("cuMemcpyDtoD", || {
        copy_on_device(None, "cuMemcpyDtoD", dst, src, bytes)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    bytes: usize,
    stream: CUstream,
) -> CUresult {
    api("cuMemcpyDtoDAsync", || {
        copy_on_device(Some(stream), "cuMemcpyDtoDAsync", dst, src, bytes)
    })
}

/// Fills `count` elements of `pattern` (1 or 4 bytes) at `dst`.
fn fill(stream: Option<CUstream>, what: &str, dst: CUdeviceptr, pattern: &[u8], count: usize) -> Outcome {
    state::with(|d| {
        let op = Op::Fill {
            dst,
            pattern: pattern.to_vec(),
            count,
        };
        check_op(d, &op)?;
        if !submit(d, stream, what, &op)? {
            run_op(d, &op)?;
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8_v2(dst: CUdeviceptr, value: c_uchar, count: usize) -> CUresult {
    api("cuMemsetD8", || fill(None, "cuMemsetD8", dst, &[value], count))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8Async(
    dst: CUdeviceptr,
    value: c_uchar,
    count: usize,
    stream: CUstream,
) -> CUresult {
    api("cuMemsetD8Async", || {
        fill(Some(stream), "cuMemsetD8Async", dst, &[value], count)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32_v2(dst: CUdeviceptr, value: c_uint, count: usize) -> CUresult {
    api("cuMemsetD32", || {
        fill(None, "cuMemsetD32", dst, &value.to_le_bytes(), count)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32Async(
    dst: CUdeviceptr,
    value: c_uint,
    count: usize,
    stream: CUstream,
) -> CUresult {
    api("cuMemsetD32Async", || {
        fill(Some(stream), "cuMemsetD32Async", dst, &value.to_le_bytes(), count)
    })
}

// ---- streams and events ----

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(out: *mut CUstream, flags: c_uint) -> CUresult {
    api("cuStreamCreate", || {
        // CU_STREAM_DEFAULT or CU_STREAM_NON_BLOCKING.
        if flags > 1 {
            return Err(invalid(format!("cuStreamCreate flags {flags}")));
        }
        let handle = state::with(|d| {
            d.current()?;
            let h = d.handle();
            // CU_STREAM_DEFAULT (0) streams synchronise with the legacy stream.
            d.current()?.streams.insert(h, flags == 0);
            Ok(h)
        })?;
        unsafe { put(out, handle as CUstream) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreateWithPriority(
    out: *mut CUstream,
    flags: c_uint,
    _priority: c_int,
) -> CUresult {
    unsafe { cuStreamCreate(out, flags) }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy_v2(stream: CUstream) -> CUresult {
    api("cuStreamDestroy", || {
        state::with(|d| {
            let context = d.live()?;
            if context.streams.remove(&(stream as usize)).is_some() {
                Ok(())
            } else {
                Err(CUresult::CUDA_ERROR_INVALID_HANDLE)
            }
        })
    })
}

/// Stream operations ran when issued: waiting is only checking (and is
/// refused on a stream being captured).
fn wait_for_stream(stream: CUstream, what: &str) -> Outcome {
    state::with(|d| {
        let context = d.live()?;
        context.use_stream(stream as usize, what)?;
        context.refuse_in_capture(stream as usize, what)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(stream: CUstream) -> CUresult {
    api("cuStreamSynchronize", || {
        wait_for_stream(stream, "cuStreamSynchronize")
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamQuery(stream: CUstream) -> CUresult {
    api("cuStreamQuery", || wait_for_stream(stream, "cuStreamQuery"))
}

/// `cuStreamWaitEvent`'s flag that makes a capture hold an external wait node.
const CU_EVENT_WAIT_EXTERNAL: c_uint = 1;

/// Stream capture's isolation rule: a stream being captured may wait only
/// on events recorded in the same capture (or, with
/// CU_EVENT_WAIT_EXTERNAL, on any event); any other wait would make the
/// graph depend on work outside it, so the driver invalidates the capture
/// and refuses the call. Outside capture, an event last recorded in a
/// capture belongs to that graph and cannot be waited on.
#[no_mangle]
pub unsafe extern "C" fn cuStreamWaitEvent(stream: CUstream, event: CUevent, flags: c_uint) -> CUresult {
    api("cuStreamWaitEvent", || {
        if flags & !CU_EVENT_WAIT_EXTERNAL != 0 {
            return Err(invalid(format!("cuStreamWaitEvent flags {flags}")));
        }
        state::with(|d| {
            let context = d.live()?;
            context.use_stream(stream as usize, "cuStreamWaitEvent")?;
            let captured_in = context
                .events
                .get(&(event as usize))
                .ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)?
                .captured_in;
            let Some(capture) = context.capture(stream as usize) else {
                return match captured_in {
                    None => Ok(()),
                    Some(id) => match context.capture_by_id(id) {
                        // Joining a second stream to a capture (a fork) is legal
                        // on the driver; the stand-in captures one stream.
                        Some(capture) => {
                            capture.invalidated = true;
                            refuse("cuStreamWaitEvent: joining another stream to a capture is not modelled");
                            Err(CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
                        }
                        None => {
                            refuse("cuStreamWaitEvent on an event last recorded in a (now ended) capture");
                            Err(CUresult::CUDA_ERROR_CAPTURED_EVENT)
                        }
                    },
                };
            };
            if captured_in == Some(capture.id) || flags & CU_EVENT_WAIT_EXTERNAL != 0 {
                return Ok(());
            }
            capture.invalidated = true;
            let merging = captured_in.and_then(|id| context.capture_by_id(id));
            if let Some(other) = merging {
                other.invalidated = true;
                refuse("cuStreamWaitEvent would merge two captures");
                return Err(CUresult::CUDA_ERROR_STREAM_CAPTURE_MERGE);
            }
            refuse(&format!(
                "cuStreamWaitEvent in a capture on an event {}: the capture is invalidated",
                if captured_in.is_some() {
                    "recorded in another capture"
                } else {
                    "recorded outside it (CU_EVENT_WAIT_EXTERNAL not given)"
                }
            ));
            Err(CUresult::CUDA_ERROR_STREAM_CAPTURE_ISOLATION)
        })
    })
}

const CU_EVENT_DISABLE_TIMING: c_uint = 2;

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(out: *mut CUevent, flags: c_uint) -> CUresult {
    api("cuEventCreate", || {
        if flags & !0x7 != 0 {
            return Err(invalid(format!("cuEventCreate flags {flags}")));
        }
        let handle = state::with(|d| {
            d.current()?;
            let h = d.handle();
            d.current()?.events.insert(
                h,
                Event {
                    timing: flags & CU_EVENT_DISABLE_TIMING == 0,
                    recorded: None,
                    captured_in: None,
                },
            );
            Ok(h)
        })?;
        unsafe { put(out, handle as CUevent) }
    })
}

/// Runs `f` on an event that the host may look at: one last recorded in a
/// capture belongs to its graph and is refused (CUDA_ERROR_CAPTURED_EVENT).
fn with_event<T>(event: CUevent, what: &str, f: impl FnOnce(&mut Event) -> Outcome<T>) -> Outcome<T> {
    state::with(|d| {
        let context = d.live()?;
        let e = context
            .events
            .get_mut(&(event as usize))
            .ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)?;
        if e.captured_in.is_some() {
            refuse(&format!("{what} on an event last recorded in a capture"));
            return Err(CUresult::CUDA_ERROR_CAPTURED_EVENT);
        }
        f(e)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(event: CUevent, stream: CUstream) -> CUresult {
    api("cuEventRecord", || {
        state::with(|d| {
            let context = d.live()?;
            if !context.events.contains_key(&(event as usize)) {
                return Err(CUresult::CUDA_ERROR_INVALID_HANDLE);
            }
            context.use_stream(stream as usize, "cuEventRecord")?;
            // In a capture, a record adds no node: it marks a point of the
            // graph that waits in the same capture may depend on.
            let capture = context.capture(stream as usize).map(|c| c.id);
            let e = context.events.get_mut(&(event as usize)).expect("checked above");
            e.captured_in = capture;
            if capture.is_none() {
                run_op(
                    d,
                    &Op::Record {
                        event: event as usize,
                    },
                )?;
            }
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(event: CUevent) -> CUresult {
    api("cuEventSynchronize", || {
        with_event(event, "cuEventSynchronize", |_| Ok(()))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventQuery(event: CUevent) -> CUresult {
    api("cuEventQuery", || with_event(event, "cuEventQuery", |_| Ok(())))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, start: CUevent, end: CUevent) -> CUresult {
    api("cuEventElapsedTime", || {
        let time = |event| {
            with_event(event, "cuEventElapsedTime", |e| match (e.timing, e.recorded) {
                (true, Some(t)) => Ok(t),
                _ => Err(CUresult::CUDA_ERROR_INVALID_HANDLE),
            })
        };
        let (a, b) = (time(start)?, time(end)?);
        let elapsed = if b >= a {
            (b - a).as_secs_f64()
        } else {
            -(a - b).as_secs_f64()
        };
        unsafe { put(ms, (elapsed * 1e3) as f32) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime_v2(ms: *mut f32, start: CUevent, end: CUevent) -> CUresult {
    unsafe { cuEventElapsedTime(ms, start, end) }
}

#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(event: CUevent) -> CUresult {
    api("cuEventDestroy", || {
        state::with(|d| {
            d.live()?
                .events
                .remove(&(event as usize))
                .map(|_| ())
                .ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)
        })
    })
}

// ---- modules and functions ----

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(out: *mut CUmodule, image: *const c_void) -> CUresult {
    api("cuModuleLoadData", || {
        if image.is_null() || out.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let handle = state::with(|d| {
            d.current()?;
            // SAFETY: the caller's image; its headers give its length.
            let kernels =
                unsafe { cubin::read_image(image as *const u8, d.chip.arch()) }.map_err(|e| match e {
                    ImageError::Invalid(why) => {
                        refuse(&format!("cuModuleLoadData: {why}"));
                        CUresult::CUDA_ERROR_INVALID_IMAGE
                    }
                    ImageError::NoBinaryFor(arch) => {
                        refuse(&format!("cuModuleLoadData: no cubin for sm_{arch} in the image"));
                        CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU
                    }
                })?;
            let module = d.handle();
            let handles: Vec<usize> = kernels.iter().map(|_| d.handle()).collect();
            let context = d.current()?;
            for (image, &h) in kernels.into_iter().zip(&handles) {
                context.functions.insert(h, Function::new(module, image));
            }
            context.modules.insert(module, handles);
            Ok(module)
        })?;
        unsafe { put(out, handle as CUmodule) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleUnload(module: CUmodule) -> CUresult {
    api("cuModuleUnload", || {
        state::with(|d| {
            let context = d.live()?;
            let functions = context
                .modules
                .remove(&(module as usize))
                .ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)?;
            for f in functions {
                context.functions.remove(&f);
            }
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(
    out: *mut CUfunction,
    module: CUmodule,
    name: *const c_char,
) -> CUresult {
    api("cuModuleGetFunction", || {
        if name.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: a C string from the caller.
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
        let handle = state::with(|d| {
            let context = d.live()?;
            let functions = context
                .modules
                .get(&(module as usize))
                .ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)?;
            functions
                .iter()
                .copied()
                .find(|h| context.functions[h].image.name == name)
                .ok_or(CUresult::CUDA_ERROR_NOT_FOUND)
        })?;
        if !rnn_kernels_emu::kernel_names().any(|k| k == name) {
            refuse(&format!("{name} is in the module but has no emulated twin"));
            return Err(CUresult::CUDA_ERROR_NOT_SUPPORTED);
        }
        unsafe { put(out, handle as CUfunction) }
    })
}

fn with_function<T>(function: CUfunction, f: impl FnOnce(&Chip, &mut Function) -> Outcome<T>) -> Outcome<T> {
    state::with(|d| {
        let chip = d.chip;
        let context = d.live()?;
        let function = context
            .functions
            .get_mut(&(function as usize))
            .ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)?;
        f(&chip, function)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncGetAttribute(
    value: *mut c_int,
    attribute: c_int,
    function: CUfunction,
) -> CUresult {
    api("cuFuncGetAttribute", || {
        let v = with_function(function, |chip, f| {
            let arch = chip.arch() as c_int;
            let table: &[(F, c_int)] = &[
                (F::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, f.max_threads(chip)),
                (F::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, f.image.static_shared),
                (F::CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES, 0),
                (F::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES, 0),
                (F::CU_FUNC_ATTRIBUTE_NUM_REGS, f.image.registers),
                (F::CU_FUNC_ATTRIBUTE_PTX_VERSION, arch),
                (F::CU_FUNC_ATTRIBUTE_BINARY_VERSION, arch),
                (F::CU_FUNC_ATTRIBUTE_CACHE_MODE_CA, 0),
                (
                    F::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    f.max_dynamic_shared,
                ),
                (F::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, f.carveout),
            ];
            table
                .iter()
                .find(|(a, _)| *a as c_int == attribute)
                .map(|&(_, v)| v)
                .ok_or_else(|| invalid(format!("function attribute {attribute} is not modelled")))
        })?;
        unsafe { put(value, v) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncSetAttribute(
    function: CUfunction,
    attribute: c_int,
    value: c_int,
) -> CUresult {
    api("cuFuncSetAttribute", || {
        with_function(function, |chip, f| {
            if attribute == F::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES as c_int {
                let most = chip.shared_per_block_optin - f.image.static_shared;
                if !(0..=most).contains(&value) {
                    return Err(invalid(format!(
                        "{}: MAX_DYNAMIC_SHARED_SIZE_BYTES = {value}, but at most {most} is allowed \
                         ({} opt-in less {} static)",
                        f.image.name, chip.shared_per_block_optin, f.image.static_shared
                    )));
                }
                f.max_dynamic_shared = value;
                Ok(())
            } else if attribute == F::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT as c_int {
                if !(-1..=100).contains(&value) {
                    return Err(invalid(format!("shared memory carveout {value}")));
                }
                f.carveout = value;
                Ok(())
            } else {
                Err(invalid(format!("function attribute {attribute} cannot be set")))
            }
        })
    })
}

fn occupancy(out: *mut c_int, function: CUfunction, threads: c_int, dynamic_shared: usize) -> Outcome {
    let blocks = with_function(function, |chip, f| {
        if threads <= 0 {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        if threads > f.max_threads(chip) {
            return Ok(0);
        }
        let shared = f.image.static_shared as i64 + dynamic_shared.min(i32::MAX as usize) as i64;
        let shared = shared.min(i32::MAX as i64) as i32;
        Ok(chip.blocks_per_sm(threads, f.image.registers, shared))
    })?;
    unsafe { put(out, blocks) }
}

#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessor(
    out: *mut c_int,
    function: CUfunction,
    threads: c_int,
    dynamic_shared: usize,
) -> CUresult {
    api("cuOccupancyMaxActiveBlocksPerMultiprocessor", || {
        occupancy(out, function, threads, dynamic_shared)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
    out: *mut c_int,
    function: CUfunction,
    threads: c_int,
    dynamic_shared: usize,
    flags: c_uint,
) -> CUresult {
    api("cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags", || {
        if flags > 1 {
            return Err(invalid(format!("occupancy flags {flags}")));
        }
        occupancy(out, function, threads, dynamic_shared)
    })
}

// ---- launches ----

#[allow(clippy::too_many_arguments)]
unsafe fn launch_kernel(
    function: CUfunction,
    geometry: Geometry,
    stream: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> Outcome {
    let (kernel, chip) = state::with(|d| {
        let chip = d.chip;
        let context = d.current()?;
        context.use_stream(stream as usize, "a kernel launch")?;
        let f = context
            .functions
            .get(&(function as usize))
            .ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)?;
        Ok((f.clone(), chip))
    })?;
    if !extra.is_null() {
        return Err(invalid(format!(
            "{}: `extra` launch parameters are not modelled",
            kernel.image.name
        )));
    }
    // SAFETY: the caller's parameter array; every kernel takes one struct.
    if params.is_null() || unsafe { (*params).is_null() } {
        return Err(invalid(format!("{}: no kernel parameters", kernel.image.name)));
    }
    launch::check(&chip, &kernel, &geometry).map_err(|(code, why)| {
        refuse(&format!("launch refused: {why}"));
        code
    })?;
    // SAFETY: params[0] is the kernel's parameter struct, as cudarc passes it.
    let params = unsafe { *params } as *const u8;
    let captured = state::with(|d| {
        let Some(capture) = d.live()?.capture(stream as usize) else {
            return Ok(false);
        };
        // A graph keeps the parameters as they were at capture.
        let Some(bytes) = kernel.image.param_bytes else {
            capture.invalidated = true;
            refuse(&format!(
                "{}: the cubin does not give its parameter size",
                kernel.image.name
            ));
            return Err(CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        };
        // SAFETY: the parameter struct is `bytes` long, as the cubin says.
        let params = unsafe { std::slice::from_raw_parts(params, bytes as usize) }.to_vec();
        capture.ops.push(Op::Launch {
            function: function as usize,
            geometry,
            params,
        });
        Ok(true)
    })?;
    if captured {
        return Ok(());
    }
    // SAFETY: as above.
    unsafe { run_kernel(&kernel, &geometry, params as *const c_void) }
}

/// Runs a checked launch on the emulation. A fault is reported as hardware
/// reports it: the launch returns, and the context is poisoned for every
/// later call.
///
/// # Safety
/// `params` points to the kernel's parameter struct.
unsafe fn run_kernel(kernel: &Function, geometry: &Geometry, params: *const c_void) -> Outcome {
    // SAFETY: as the caller vouches.
    unsafe { launch::run(kernel, geometry, params) }.map_err(|(code, why)| {
        refuse(&why);
        code
    })?;
    state::with(|d| {
        let fault = memory::take_faults()
            .map(|(count, at)| format!("{count} access(es) outside every allocation, the first at {at:#x}"))
            .or_else(|| {
                d.arena
                    .find_padding_write()
                    .map(|at| format!("a write at {at:#x}, just outside an allocation"))
            });
        if let (Some(why), Some(context)) = (fault, d.context.as_mut()) {
            refuse(&format!(
                "{}: {why}: CUDA_ERROR_ILLEGAL_ADDRESS",
                kernel.image.name
            ));
            context.poisoned = Some(CUresult::CUDA_ERROR_ILLEGAL_ADDRESS);
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    function: CUfunction,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    shared: c_uint,
    stream: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    let geometry = Geometry {
        grid: [grid_x, grid_y, grid_z],
        block: [block_x, block_y, block_z],
        dynamic_shared: shared,
        cooperative: false,
    };
    api("cuLaunchKernel", || unsafe {
        launch_kernel(function, geometry, stream, params, extra)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchCooperativeKernel(
    function: CUfunction,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    shared: c_uint,
    stream: CUstream,
    params: *mut *mut c_void,
) -> CUresult {
    let geometry = Geometry {
        grid: [grid_x, grid_y, grid_z],
        block: [block_x, block_y, block_z],
        dynamic_shared: shared,
        cooperative: true,
    };
    api("cuLaunchCooperativeKernel", || unsafe {
        launch_kernel(function, geometry, stream, params, std::ptr::null_mut())
    })
}

// ---- stream capture and graphs ----

const CU_STREAM_CAPTURE_MODE_RELAXED: u32 = 2;

#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCapture_v2(stream: CUstream, mode: c_uint) -> CUresult {
    api("cuStreamBeginCapture", || {
        state::with(|d| {
            let context = d.current()?;
            let s = stream as usize;
            context.check_stream(s)?;
            if state::BUILT_IN_STREAMS.contains(&s) {
                return Err(invalid("the default stream cannot be captured".into()));
            }
            if mode > CU_STREAM_CAPTURE_MODE_RELAXED {
                return Err(invalid(format!("capture mode {mode}")));
            }
            if context.captures.contains_key(&s) {
                return Err(CUresult::CUDA_ERROR_ILLEGAL_STATE);
            }
            let blocking = context.streams.get(&s).copied().unwrap_or(false);
            let id = d.handle();
            d.current()?.captures.insert(
                s,
                Capture {
                    id,
                    mode,
                    blocking,
                    thread: std::thread::current().id(),
                    ops: Vec::new(),
                    invalidated: false,
                },
            );
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamEndCapture(stream: CUstream, out: *mut CUgraph) -> CUresult {
    api("cuStreamEndCapture", || {
        if out.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let graph = state::with(|d| {
            let context = d.live()?;
            let capture = context
                .captures
                .remove(&(stream as usize))
                .ok_or(CUresult::CUDA_ERROR_ILLEGAL_STATE)?;
            if capture.invalidated {
                return Err(CUresult::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
            }
            let h = d.handle();
            d.live()?.graphs.insert(h, capture.ops);
            Ok(h)
        });
        let graph = match graph {
            Ok(g) => g,
            Err(e) => {
                // SAFETY: checked non-null above.
                unsafe { *out = std::ptr::null_mut() };
                return Err(e);
            }
        };
        unsafe { put(out, graph as CUgraph) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamIsCapturing(
    stream: CUstream,
    status: *mut CUstreamCaptureStatus,
) -> CUresult {
    api("cuStreamIsCapturing", || {
        let now = state::with(|d| {
            let context = d.live()?;
            context.check_stream(stream as usize)?;
            Ok(match context.capture(stream as usize) {
                None => CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE,
                Some(c) if c.invalidated => CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_INVALIDATED,
                Some(_) => CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE,
            })
        })?;
        unsafe { put(status, now) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiateWithFlags(
    out: *mut CUgraphExec,
    graph: CUgraph,
    _flags: u64,
) -> CUresult {
    api("cuGraphInstantiate", || {
        let exec = state::with(|d| {
            let ops = d
                .live()?
                .graphs
                .get(&(graph as usize))
                .cloned()
                .ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)?;
            let h = d.handle();
            d.live()?.executables.insert(h, ops);
            Ok(h)
        })?;
        unsafe { put(out, exec as CUgraphExec) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch(exec: CUgraphExec, stream: CUstream) -> CUresult {
    api("cuGraphLaunch", || {
        let ops = state::with(|d| {
            let context = d.live()?;
            context.use_stream(stream as usize, "cuGraphLaunch")?;
            context.refuse_in_capture(stream as usize, "cuGraphLaunch")?;
            context
                .executables
                .get(&(exec as usize))
                .cloned()
                .ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)
        })?;
        // The graph's operations, in capture order, on this stream.
        for op in &ops {
            match op {
                Op::Launch {
                    function,
                    geometry,
                    params,
                } => {
                    let kernel = state::with(|d| {
                        d.live()?
                            .functions
                            .get(function)
                            .cloned()
                            .ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)
                    })?;
                    // SAFETY: the parameter bytes captured for this kernel.
                    unsafe { run_kernel(&kernel, geometry, params.as_ptr() as *const c_void) }?;
                }
                other => state::with(|d| run_op(d, other))?,
            }
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphUpload(exec: CUgraphExec, stream: CUstream) -> CUresult {
    api("cuGraphUpload", || {
        state::with(|d| {
            let context = d.live()?;
            context.check_stream(stream as usize)?;
            context
                .executables
                .get(&(exec as usize))
                .map(|_| ())
                .ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphExecDestroy(exec: CUgraphExec) -> CUresult {
    api("cuGraphExecDestroy", || {
        state::with(|d| {
            d.live()?
                .executables
                .remove(&(exec as usize))
                .map(|_| ())
                .ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphDestroy(graph: CUgraph) -> CUresult {
    api("cuGraphDestroy", || {
        state::with(|d| {
            d.live()?
                .graphs
                .remove(&(graph as usize))
                .map(|_| ())
                .ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)
        })
    })
}

// ---- errors ----

/// The name and description of each code the stand-in returns.
const ERRORS: &[ErrorEntry] = &[
    (CUresult::CUDA_SUCCESS, c"CUDA_SUCCESS", c"no error"),
    (
        CUresult::CUDA_ERROR_INVALID_VALUE,
        c"CUDA_ERROR_INVALID_VALUE",
        c"invalid argument",
    ),
    (
        CUresult::CUDA_ERROR_OUT_OF_MEMORY,
        c"CUDA_ERROR_OUT_OF_MEMORY",
        c"out of memory",
    ),
    (
        CUresult::CUDA_ERROR_NOT_INITIALIZED,
        c"CUDA_ERROR_NOT_INITIALIZED",
        c"initialization error",
    ),
    (
        CUresult::CUDA_ERROR_NO_DEVICE,
        c"CUDA_ERROR_NO_DEVICE",
        c"no CUDA-capable device is detected",
    ),
    (
        CUresult::CUDA_ERROR_INVALID_DEVICE,
        c"CUDA_ERROR_INVALID_DEVICE",
        c"invalid device ordinal",
    ),
    (
        CUresult::CUDA_ERROR_INVALID_IMAGE,
        c"CUDA_ERROR_INVALID_IMAGE",
        c"device kernel image is invalid",
    ),
    (
        CUresult::CUDA_ERROR_INVALID_CONTEXT,
        c"CUDA_ERROR_INVALID_CONTEXT",
        c"invalid device context",
    ),
    (
        CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU,
        c"CUDA_ERROR_NO_BINARY_FOR_GPU",
        c"no kernel image is available for execution on the device",
    ),
    (
        CUresult::CUDA_ERROR_INVALID_HANDLE,
        c"CUDA_ERROR_INVALID_HANDLE",
        c"invalid resource handle",
    ),
    (
        CUresult::CUDA_ERROR_NOT_FOUND,
        c"CUDA_ERROR_NOT_FOUND",
        c"named symbol not found",
    ),
    (
        CUresult::CUDA_ERROR_NOT_READY,
        c"CUDA_ERROR_NOT_READY",
        c"device not ready",
    ),
    (
        CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
        c"CUDA_ERROR_ILLEGAL_ADDRESS",
        c"an illegal memory access was encountered",
    ),
    (
        CUresult::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
        c"CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
        c"too many resources requested for launch",
    ),
    (
        CUresult::CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE,
        c"CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE",
        c"too many blocks in cooperative launch",
    ),
    (
        CUresult::CUDA_ERROR_NOT_SUPPORTED,
        c"CUDA_ERROR_NOT_SUPPORTED",
        c"operation not supported",
    ),
    (
        CUresult::CUDA_ERROR_UNKNOWN,
        c"CUDA_ERROR_UNKNOWN",
        c"unknown error",
    ),
];

type ErrorEntry = (CUresult, &'static CStr, &'static CStr);

fn error_text(
    code: CUresult,
    text: *mut *const c_char,
    pick: fn(&'static ErrorEntry) -> &'static CStr,
) -> CUresult {
    match ERRORS.iter().find(|e| e.0 == code) {
        Some(entry) if !text.is_null() => {
            // SAFETY: the caller's out-parameter; the strings are static.
            unsafe { *text = pick(entry).as_ptr() };
            CUresult::CUDA_SUCCESS
        }
        _ => CUresult::CUDA_ERROR_INVALID_VALUE,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(code: CUresult, name: *mut *const c_char) -> CUresult {
    error_text(code, name, |e| e.1)
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(code: CUresult, text: *mut *const c_char) -> CUresult {
    error_text(code, text, |e| e.2)
}
