//! A CUDA device with the crate's kernels loaded: the context, the function
//! table, and the limits the planner sizes launches by.

use super::module;
use crate::cuda::launch::DeviceLimits;
use crate::error::{Error, Result};
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, DriverError};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Wraps a driver error with what was being done.
/// A failed device allocation: [`Error::OutOfMemory`] when the device is
/// out of memory, else the driver's error.
pub(crate) fn device_alloc_err(
    what: &str,
    detail: String,
    bytes: usize,
) -> impl FnOnce(DriverError) -> Error + '_ {
    move |e| match e.0 {
        cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
            Error::out_of_memory(what, detail, Some(bytes))
        }
        _ => Error::Cuda(format!("allocating {what}: {e}")),
    }
}

pub(crate) fn cuda_err(context: impl std::fmt::Display) -> impl FnOnce(DriverError) -> Error {
    move |e| Error::Cuda(format!("{context}: {e}"))
}

/// One GPU with the kernels loaded. Cheap to share (`Arc`); each model makes
/// its own stream on it.
///
/// Work is ordered by streams, not tracked per buffer: buffers made through
/// this device's context (or a model's stream) carry no events, so a call
/// costs only its launches and can be captured into a CUDA graph. A caller
/// that fills or reads a buffer on another stream than the model's orders
/// the two streams itself (an event, or a synchronisation), and keeps the
/// buffer alive until the model's stream is done with it — as with cuDNN.
pub struct CudaDevice {
    context: Arc<CudaContext>,
    functions: HashMap<String, CudaFunction>,
    limits: DeviceLimits,
    name: String,
    compute_capability: (i32, i32),
    /// Occupancy answers by (kernel, threads, dynamic shared bytes): the
    /// planner asks about the same launch shapes again and again.
    occupancy: Mutex<HashMap<(&'static str, usize, usize), usize>>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("name", &self.name)
            .field("compute_capability", &self.compute_capability)
            .field("limits", &self.limits)
            .finish()
    }
}

impl CudaDevice {
    /// Opens GPU `ordinal` and loads the kernels. Fails with a clear error
    /// when this build has no kernels, when there is no driver (no
    /// `libcuda.so`), or when there is no such GPU.
    pub fn new(ordinal: usize) -> Result<Arc<Self>> {
        if !module::kernels_built() {
            return Err(Error::Unsupported(
                "this build of rnn-kernels has no CUDA kernels: nvcc was not found when it was compiled. \
                 Run scripts/install-nvcc (or set NVCC / CUDA_HOME) and rebuild"
                    .into(),
            ));
        }
        // cudarc panics when it cannot load the driver library: ask first.
        // SAFETY: only probes for the library.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::Unsupported(
                "no CUDA driver found (libcuda.so could not be loaded): is there an NVIDIA GPU and driver?"
                    .into(),
            ));
        }
        let count = CudaContext::device_count().map_err(cuda_err("counting CUDA devices"))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::Unsupported(format!(
                "no CUDA device {ordinal}: {count} found"
            )));
        }
        let context =
            CudaContext::new(ordinal).map_err(cuda_err(format!("opening CUDA device {ordinal}")))?;
        // No event tracking: with it (the default once a context has two
        // streams), cudarc waits on and records an event for every buffer at
        // every use — about 16 driver calls per step — and inside a CUDA-graph
        // capture those waits on events recorded outside it break the
        // capture's isolation. Every model orders its work on its own stream
        // instead, as cuDNN does (see [`CudaDevice`]).
        // SAFETY: no buffer exists on this context object yet; the crate
        // allocates, uses and frees its buffers on one model's stream, and
        // the ordering of callers' buffers is the callers' (documented).
        unsafe { context.disable_event_tracking() };
        let name = context.name().map_err(cuda_err("reading the device name"))?;
        let compute_capability = context
            .compute_capability()
            .map_err(cuda_err("reading compute capability"))?;
        if compute_capability.0 < 8 {
            return Err(Error::Unsupported(format!(
                "{name} is sm_{}{}; the kernels need sm_80 (Ampere) or newer",
                compute_capability.0, compute_capability.1
            )));
        }
        let attribute = |a: CUdevice_attribute| {
            context
                .attribute(a)
                .map(|v| v.max(0) as usize)
                .map_err(cuda_err(format!("reading {a:?}")))
        };
        let opt_in = attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        let mut functions = HashMap::new();
        let mut most_static = 0;
        for (file, fatbin, entry_points) in module::fatbins() {
            let loaded = context
                .load_module(Ptx::from_binary(fatbin.to_vec()))
                .map_err(cuda_err(format!("loading kernels/{file}.cu for {name}")))?;
            for kernel in entry_points.iter() {
                let function = loaded
                    .load_function(kernel)
                    .map_err(cuda_err(format!("finding kernel {kernel}")))?;
                // Allow all the dynamic shared memory the driver allows above
                // 48 KiB: the opt-in maximum less the function's static shared
                // memory (1 KiB in every sm_90 cubin), not the whole opt-in.
                let fixed = function
                    .shared_size_bytes()
                    .map_err(cuda_err(format!("reading {kernel}'s static shared memory")))?
                    .max(0) as usize;
                most_static = most_static.max(fixed);
                function
                    .set_attribute(
                        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        opt_in.saturating_sub(fixed) as i32,
                    )
                    .map_err(cuda_err(format!("raising {kernel}'s shared memory limit")))?;
                functions.insert(kernel.to_string(), function);
            }
        }
        let limits = DeviceLimits {
            sm_count: attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            // What every kernel may ask for.
            max_smem_per_block: opt_in.saturating_sub(most_static),
            max_threads_per_block: attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
        };
        Ok(Arc::new(CudaDevice {
            context,
            functions,
            limits,
            name,
            compute_capability,
            occupancy: Mutex::new(HashMap::new()),
        }))
    }

    /// The device's name, as the driver gives it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `(major, minor)`: 9.0 for an H100 or H200.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// What the launch planner needs to know of the device.
    pub fn limits(&self) -> &DeviceLimits {
        &self.limits
    }

    /// cudarc's context, for callers that allocate device memory for a model.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.context
    }

    /// A new stream on this device.
    pub fn new_stream(&self) -> Result<Arc<CudaStream>> {
        self.context.new_stream().map_err(cuda_err("creating a stream"))
    }

    pub(crate) fn function(&self, kernel: &str) -> Result<&CudaFunction> {
        self.functions
            .get(kernel)
            .ok_or_else(|| Error::Cuda(format!("kernel {kernel} is not in the loaded modules")))
    }

    /// Makes this device's context current on the calling thread (a model
    /// may move to another thread; cudarc binds it for most calls, not all).
    pub(crate) fn bind(&self) -> Result<()> {
        self.context
            .bind_to_thread()
            .map_err(cuda_err("making the CUDA context current"))
    }

    /// Blocks of `kernel` that fit on one SM with this launch shape; each
    /// shape is asked of the driver once. A failed query is an error, not
    /// "nothing fits".
    pub(crate) fn occupancy(&self, kernel: &'static str, threads: usize, smem: usize) -> Result<usize> {
        let key = (kernel, threads, smem);
        if let Some(&n) = self.occupancy.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(n);
        }
        let function = self.function(kernel)?;
        self.bind()?;
        let n = function
            .occupancy_max_active_blocks_per_multiprocessor(threads as u32, smem, None)
            .map_err(cuda_err(format!(
                "occupancy of {kernel} with {threads} threads and {smem} bytes of shared memory"
            )))? as usize;
        self.occupancy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, n);
        Ok(n)
    }
}
