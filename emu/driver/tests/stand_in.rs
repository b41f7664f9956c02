//! The stand-in refuses what a real driver refuses, with its error codes,
//! and finds memory faults. These call its entry points directly (the
//! library is also an rlib), with the crate's real fatbins.
#![cfg_attr(not(rnn_kernels_built), allow(dead_code, unused_imports))]

use cudarc::driver::sys::{CUdevice_attribute as A, CUfunction, CUfunction_attribute as F, CUresult};
use rnnk_cuda_stand_in::*;
use std::ffi::{c_void, CString};
use std::sync::Mutex;

/// The driver is one per process: tests take turns.
static TURN: Mutex<()> = Mutex::new(());

/// `kernels/params.h`'s PermuteParams: dst[j, i, :] = src[i, j, :].
#[repr(C)]
struct PermuteParams {
    src: u64,
    dst: u64,
    a: i32,
    b: i32,
    width: i32,
    pad: i32,
}

fn ok(r: CUresult) {
    assert_eq!(r, CUresult::CUDA_SUCCESS);
}

/// A fresh context, current on this thread, with every fatbin loaded.
struct Session {
    functions: Vec<(String, CUfunction)>,
}

impl Session {
    fn new() -> Session {
        unsafe {
            ok(cuInit(0));
            let mut context = std::ptr::null_mut();
            ok(cuDevicePrimaryCtxRetain(&mut context, 0));
            ok(cuDevicePrimaryCtxReset_v2(0));
            ok(cuCtxSetCurrent(context));
            let mut functions = Vec::new();
            for (_, fatbin, names) in rnn_kernels::cuda::module::fatbins() {
                let mut module = std::ptr::null_mut();
                ok(cuModuleLoadData(&mut module, fatbin.as_ptr() as *const c_void));
                for name in names.iter() {
                    let mut f = std::ptr::null_mut();
                    let c = CString::new(*name).unwrap();
                    ok(cuModuleGetFunction(&mut f, module, c.as_ptr()));
                    functions.push((name.to_string(), f));
                }
            }
            Session { functions }
        }
    }

    fn function(&self, name: &str) -> CUfunction {
        self.functions.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn alloc(&self, bytes: usize) -> u64 {
        let mut p = 0;
        ok(unsafe { cuMemAlloc_v2(&mut p, bytes) });
        p
    }

    fn upload(&self, values: &[f32]) -> u64 {
        let p = self.alloc(std::mem::size_of_val(values));
        ok(unsafe { cuMemcpyHtoD_v2(p, values.as_ptr() as *const c_void, std::mem::size_of_val(values)) });
        p
    }

    fn download(&self, p: u64, n: usize) -> Result<Vec<f32>, CUresult> {
        let mut out = vec![0f32; n];
        let r = unsafe { cuMemcpyDtoH_v2(out.as_mut_ptr() as *mut c_void, p, 4 * n) };
        if r == CUresult::CUDA_SUCCESS {
            Ok(out)
        } else {
            Err(r)
        }
    }

    /// Launches rnn_permute_f32 over an [a, b, width] tensor.
    fn permute(
        &self,
        src: u64,
        dst: u64,
        dims: [i32; 3],
        grid: [u32; 3],
        threads: u32,
        shared: u32,
    ) -> CUresult {
        let mut params = PermuteParams {
            src,
            dst,
            a: dims[0],
            b: dims[1],
            width: dims[2],
            pad: 0,
        };
        let mut args = [&mut params as *mut PermuteParams as *mut c_void];
        unsafe {
            cuLaunchKernel(
                self.function("rnn_permute_f32"),
                grid[0],
                grid[1],
                grid[2],
                threads,
                1,
                1,
                shared,
                std::ptr::null_mut(),
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        unsafe {
            cuDevicePrimaryCtxReset_v2(0);
            cuDevicePrimaryCtxRelease_v2(0);
        }
    }
}

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
#[cfg_attr(
    not(rnn_kernels_built),
    ignore = "needs the CUDA kernels: build with nvcc (scripts/install-nvcc)"
)]
fn a_valid_launch_runs_and_fresh_memory_is_nan() {
    let _turn = turn();
    let s = Session::new();
    let src: Vec<f32> = (0..24).map(|i| i as f32).collect();
    let (src_dev, dst) = (s.upload(&src), s.alloc(24 * 4));
    assert!(
        s.download(dst, 24).unwrap().iter().all(|v| v.is_nan()),
        "fresh memory must read as NaN"
    );
    ok(s.permute(src_dev, dst, [2, 3, 4], [2, 1, 1], 64, 0));
    ok(unsafe { cuCtxSynchronize() });
    let got = s.download(dst, 24).unwrap();
    // dst[j, i, w] = src[i, j, w] for src [2, 3, 4].
    assert_eq!(got[4], src[3 * 4]);
    assert_eq!(got[(2 * 2 + 1) * 4 + 3], src[(3 + 2) * 4 + 3]);
}

#[test]
#[cfg_attr(
    not(rnn_kernels_built),
    ignore = "needs the CUDA kernels: build with nvcc (scripts/install-nvcc)"
)]
fn launches_over_the_limits_are_refused() {
    let _turn = turn();
    let s = Session::new();
    let (src, dst) = (s.alloc(64), s.alloc(64));
    let bad = CUresult::CUDA_ERROR_INVALID_VALUE;
    // Above the kernels' __launch_bounds__(512), and above 1,024.
    assert_eq!(s.permute(src, dst, [4, 4, 1], [1, 1, 1], 513, 0), bad);
    assert_eq!(s.permute(src, dst, [4, 4, 1], [1, 1, 1], 1025, 0), bad);
    // grid.y and grid.z are at most 65,535.
    assert_eq!(s.permute(src, dst, [4, 4, 1], [1, 65536, 1], 32, 0), bad);
    assert_eq!(s.permute(src, dst, [4, 4, 1], [1, 1, 65536], 32, 0), bad);
    // The registers of 512 threads of the LSTM recurrence fit one block per
    // SM; a cooperative grid of more than 132 blocks cannot be resident.
    let lstm = s.function("rnn_recurrence_lstm_f32");
    let mut blocks = 0;
    ok(unsafe { cuOccupancyMaxActiveBlocksPerMultiprocessor(&mut blocks, lstm, 512, 0) });
    assert_eq!(blocks, 1);
    let mut sms = 0;
    ok(unsafe { cuDeviceGetAttribute(&mut sms, A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT as i32, 0) });
    let mut params = [0u8; 168];
    let mut args = [params.as_mut_ptr() as *mut c_void];
    let r = unsafe {
        cuLaunchCooperativeKernel(
            lstm,
            sms as u32 + 1,
            1,
            1,
            512,
            1,
            1,
            0,
            std::ptr::null_mut(),
            args.as_mut_ptr(),
        )
    };
    assert_eq!(r, CUresult::CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE);
    // Nothing was launched: the context is still good.
    ok(unsafe { cuCtxSynchronize() });
}

#[test]
#[cfg_attr(
    not(rnn_kernels_built),
    ignore = "needs the CUDA kernels: build with nvcc (scripts/install-nvcc)"
)]
fn shared_memory_above_48_kib_needs_the_attribute() {
    let _turn = turn();
    let s = Session::new();
    let (src, dst) = (s.upload(&[1.0; 16]), s.alloc(64));
    let f = s.function("rnn_permute_f32");
    let attribute = F::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES as i32;
    let mut static_shared = 0;
    ok(unsafe {
        cuFuncGetAttribute(
            &mut static_shared,
            F::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES as i32,
            f,
        )
    });
    assert_eq!(
        static_shared, 1024,
        "sm_90 cubins declare 1 KiB of static shared memory"
    );
    let mut default = 0;
    ok(unsafe { cuFuncGetAttribute(&mut default, attribute, f) });
    assert_eq!(default, 48 * 1024 - static_shared);
    let big = 100 * 1024;
    assert_eq!(
        s.permute(src, dst, [4, 4, 1], [1, 1, 1], 32, big),
        CUresult::CUDA_ERROR_INVALID_VALUE
    );
    // At most the opt-in limit less the static shared memory may be allowed.
    let mut opt_in = 0;
    ok(unsafe {
        cuDeviceGetAttribute(
            &mut opt_in,
            A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN as i32,
            0,
        )
    });
    assert_eq!(opt_in, 227 * 1024);
    assert_eq!(
        unsafe { cuFuncSetAttribute(f, attribute, opt_in) },
        CUresult::CUDA_ERROR_INVALID_VALUE
    );
    ok(unsafe { cuFuncSetAttribute(f, attribute, opt_in - static_shared) });
    ok(s.permute(src, dst, [4, 4, 1], [1, 1, 1], 32, big));
    assert_eq!(
        s.permute(
            src,
            dst,
            [4, 4, 1],
            [1, 1, 1],
            32,
            (opt_in - static_shared + 1) as u32
        ),
        CUresult::CUDA_ERROR_INVALID_VALUE
    );
    ok(unsafe { cuCtxSynchronize() });
    assert_eq!(s.download(dst, 16).unwrap(), vec![1.0; 16]);
}

#[test]
#[cfg_attr(
    not(rnn_kernels_built),
    ignore = "needs the CUDA kernels: build with nvcc (scripts/install-nvcc)"
)]
fn an_out_of_bounds_read_poisons_the_context() {
    let _turn = turn();
    let s = Session::new();
    // src holds 4 floats; the kernel reads 4 096, far past its page.
    let (src, dst) = (s.upload(&[1.0; 4]), s.alloc(4096 * 4));
    ok(s.permute(src, dst, [64, 64, 1], [4, 1, 1], 256, 0));
    assert_eq!(
        unsafe { cuCtxSynchronize() },
        CUresult::CUDA_ERROR_ILLEGAL_ADDRESS
    );
    // Sticky, as on hardware: every later call fails too.
    let mut p = 0;
    assert_eq!(
        unsafe { cuMemAlloc_v2(&mut p, 16) },
        CUresult::CUDA_ERROR_ILLEGAL_ADDRESS
    );
    assert_eq!(s.download(dst, 4), Err(CUresult::CUDA_ERROR_ILLEGAL_ADDRESS));
    // A reset clears it.
    ok(unsafe { cuDevicePrimaryCtxReset_v2(0) });
    ok(unsafe { cuMemAlloc_v2(&mut p, 16) });
}

#[test]
#[cfg_attr(
    not(rnn_kernels_built),
    ignore = "needs the CUDA kernels: build with nvcc (scripts/install-nvcc)"
)]
fn a_write_just_past_an_allocation_is_found() {
    let _turn = turn();
    let s = Session::new();
    // dst holds 3 floats; a [1, 1, 4] permute writes a fourth, inside the
    // allocation's 256-byte alignment, where no guard page is.
    let (src, dst) = (s.upload(&[1.0; 4]), s.alloc(12));
    ok(s.permute(src, dst, [1, 1, 4], [1, 1, 1], 32, 0));
    assert_eq!(
        unsafe { cuCtxSynchronize() },
        CUresult::CUDA_ERROR_ILLEGAL_ADDRESS
    );
}

#[test]
#[cfg_attr(
    not(rnn_kernels_built),
    ignore = "needs the CUDA kernels: build with nvcc (scripts/install-nvcc)"
)]
fn host_calls_are_checked() {
    let _turn = turn();
    let s = Session::new();
    let p = s.alloc(16);
    let data = [0u8; 32];
    // A copy past the allocation, a free of a pointer that is not one.
    assert_eq!(
        unsafe { cuMemcpyHtoD_v2(p, data.as_ptr() as *const c_void, 32) },
        CUresult::CUDA_ERROR_INVALID_VALUE
    );
    assert_eq!(unsafe { cuMemFree_v2(p + 4) }, CUresult::CUDA_ERROR_INVALID_VALUE);
    assert_eq!(
        unsafe { cuMemAlloc_v2(&mut 0, 0) },
        CUresult::CUDA_ERROR_INVALID_VALUE
    );
    ok(unsafe { cuMemFree_v2(p) });
    assert_eq!(unsafe { cuMemFree_v2(p) }, CUresult::CUDA_ERROR_INVALID_VALUE);
    // Without a current context, nothing is allocated.
    let other = std::thread::spawn(|| unsafe { cuMemAlloc_v2(&mut 0, 16) });
    assert_eq!(other.join().unwrap(), CUresult::CUDA_ERROR_INVALID_CONTEXT);
    // A destroyed stream is not a stream.
    let mut stream = std::ptr::null_mut();
    ok(unsafe { cuStreamCreate(&mut stream, 0) });
    ok(unsafe { cuStreamDestroy_v2(stream) });
    assert_eq!(
        unsafe { cuStreamSynchronize(stream) },
        CUresult::CUDA_ERROR_INVALID_HANDLE
    );
}

#[test]
#[cfg_attr(
    not(rnn_kernels_built),
    ignore = "needs the CUDA kernels: build with nvcc (scripts/install-nvcc)"
)]
fn register_counts_are_the_cubins() {
    let _turn = turn();
    let s = Session::new();
    // ptxas' report for sm_90, kernel by kernel.
    let mut current = None;
    let mut checked = 0;
    for line in rnn_kernels::cuda::module::ptxas_report().lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let (name, tail) = rest.split_once('\'').unwrap();
            current = tail.contains("'sm_90'").then(|| name.to_string());
        } else if let (Some(name), Some(rest)) = (&current, line.split("Used ").nth(1)) {
            let registers: i32 = rest.split_whitespace().next().unwrap().parse().unwrap();
            let mut got = 0;
            ok(unsafe {
                cuFuncGetAttribute(&mut got, F::CU_FUNC_ATTRIBUTE_NUM_REGS as i32, s.function(name))
            });
            assert_eq!(got, registers, "{name}");
            checked += 1;
            current = None;
        }
    }
    assert_eq!(checked, s.functions.len(), "every kernel checked");
}

#[test]
#[cfg_attr(
    not(rnn_kernels_built),
    ignore = "needs the CUDA kernels: build with nvcc (scripts/install-nvcc)"
)]
fn captures_record_launches_and_refuse_synchronous_calls() {
    use cudarc::driver::sys::CUstreamCaptureStatus as Status;
    let _turn = turn();
    let s = Session::new();
    let src: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let (src_dev, dst) = (s.upload(&src), s.alloc(32));
    let mut stream = std::ptr::null_mut();
    ok(unsafe { cuStreamCreate(&mut stream, 1) });
    // Captured, not run: dst stays NaN until the graph is launched.
    ok(unsafe { cuStreamBeginCapture_v2(stream, 1) });
    let mut params = PermuteParams {
        src: src_dev,
        dst,
        a: 2,
        b: 4,
        width: 1,
        pad: 0,
    };
    let mut args = [&mut params as *mut PermuteParams as *mut c_void];
    let permute = s.function("rnn_permute_f32");
    let launch = |args: &mut [*mut c_void; 1]| unsafe {
        cuLaunchKernel(
            permute,
            1,
            1,
            1,
            32,
            1,
            1,
            0,
            stream,
            args.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    };
    ok(launch(&mut args));
    // The graph keeps the parameters as they were when captured.
    // SAFETY: args[0] is `params`, still alive.
    unsafe { (*(args[0] as *mut PermuteParams)).dst = 0 };
    let mut graph = std::ptr::null_mut();
    ok(unsafe { cuStreamEndCapture(stream, &mut graph) });
    assert!(s.download(dst, 8).unwrap().iter().all(|v| v.is_nan()));
    let mut exec = std::ptr::null_mut();
    ok(unsafe { cuGraphInstantiateWithFlags(&mut exec, graph, 0) });
    ok(unsafe { cuGraphLaunch(exec, stream) });
    ok(unsafe { cuStreamSynchronize(stream) });
    assert_eq!(
        s.download(dst, 8).unwrap(),
        vec![0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]
    );
    // A synchronous allocation during a global-mode capture invalidates it.
    ok(unsafe { cuStreamBeginCapture_v2(stream, 0) });
    assert_eq!(
        unsafe { cuMemAlloc_v2(&mut 0, 16) },
        CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
    );
    let mut status = Status::CU_STREAM_CAPTURE_STATUS_NONE;
    ok(unsafe { cuStreamIsCapturing(stream, &mut status) });
    assert_eq!(status, Status::CU_STREAM_CAPTURE_STATUS_INVALIDATED);
    assert_eq!(
        unsafe { cuStreamEndCapture(stream, &mut graph) },
        CUresult::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
    );
    assert!(graph.is_null());
    // Neither the default stream nor a stream's synchronisation is captured.
    assert_eq!(
        unsafe { cuStreamBeginCapture_v2(std::ptr::null_mut(), 0) },
        CUresult::CUDA_ERROR_INVALID_VALUE
    );
    ok(unsafe { cuStreamBeginCapture_v2(stream, 2) });
    assert_eq!(
        unsafe { cuStreamSynchronize(stream) },
        CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
    );
}

/// Stream capture's rules about events and the legacy stream, as the
/// driver enforces them: each violation is refused with the driver's code
/// and invalidates the capture (ending it then fails).
#[test]
#[cfg_attr(
    not(rnn_kernels_built),
    ignore = "needs the CUDA kernels: build with nvcc (scripts/install-nvcc)"
)]
fn captures_are_isolated_from_outside_events_and_the_legacy_stream() {
    use cudarc::driver::sys::{CUevent, CUgraph, CUstream, CUstreamCaptureStatus as Status};
    let _turn = turn();
    let s = Session::new();
    let dst = s.alloc(16);
    let stream = |flags: u32| {
        let mut h: CUstream = std::ptr::null_mut();
        ok(unsafe { cuStreamCreate(&mut h, flags) });
        h
    };
    let event = || {
        let mut e: CUevent = std::ptr::null_mut();
        ok(unsafe { cuEventCreate(&mut e, 0) });
        e
    };
    let status = |h: CUstream| {
        let mut now = Status::CU_STREAM_CAPTURE_STATUS_NONE;
        ok(unsafe { cuStreamIsCapturing(h, &mut now) });
        now
    };
    let end = |h: CUstream| {
        let mut graph: CUgraph = std::ptr::null_mut();
        let r = unsafe { cuStreamEndCapture(h, &mut graph) };
        assert_eq!(r == CUresult::CUDA_SUCCESS, !graph.is_null());
        r
    };
    let invalidated = |h: CUstream| {
        assert_eq!(status(h), Status::CU_STREAM_CAPTURE_STATUS_INVALIDATED);
        assert_eq!(end(h), CUresult::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    };
    let (a, b) = (stream(1), stream(1));
    let (outside, inside) = (event(), event());
    ok(unsafe { cuEventRecord(outside, b) });

    // A wait on an event recorded outside the capture would make the graph
    // depend on work outside it.
    ok(unsafe { cuStreamBeginCapture_v2(a, 1) });
    assert_eq!(
        unsafe { cuStreamWaitEvent(a, outside, 0) },
        CUresult::CUDA_ERROR_STREAM_CAPTURE_ISOLATION
    );
    invalidated(a);
    // Unless it asks for an external wait node.
    ok(unsafe { cuStreamBeginCapture_v2(a, 1) });
    ok(unsafe { cuStreamWaitEvent(a, outside, 1) });
    ok(end(a));

    // Recorded and waited on in the same capture: allowed. The event then
    // belongs to the graph: the host may not query it, nor another stream
    // wait on it, until it is recorded again outside a capture.
    ok(unsafe { cuStreamBeginCapture_v2(a, 1) });
    ok(unsafe { cuEventRecord(inside, a) });
    ok(unsafe { cuStreamWaitEvent(a, inside, 0) });
    assert_eq!(
        unsafe { cuEventQuery(inside) },
        CUresult::CUDA_ERROR_CAPTURED_EVENT
    );
    ok(end(a));
    assert_eq!(
        unsafe { cuEventSynchronize(inside) },
        CUresult::CUDA_ERROR_CAPTURED_EVENT
    );
    assert_eq!(
        unsafe { cuStreamWaitEvent(b, inside, 0) },
        CUresult::CUDA_ERROR_CAPTURED_EVENT
    );
    ok(unsafe { cuEventRecord(inside, b) });
    ok(unsafe { cuEventQuery(inside) });
    ok(unsafe { cuStreamWaitEvent(a, inside, 0) });

    // A wait that would merge two captures invalidates both.
    ok(unsafe { cuStreamBeginCapture_v2(a, 2) });
    ok(unsafe { cuStreamBeginCapture_v2(b, 2) });
    ok(unsafe { cuEventRecord(inside, b) });
    assert_eq!(
        unsafe { cuStreamWaitEvent(a, inside, 0) },
        CUresult::CUDA_ERROR_STREAM_CAPTURE_MERGE
    );
    invalidated(a);
    invalidated(b);
    ok(unsafe { cuEventRecord(inside, b) });

    // The legacy default stream synchronises with every blocking stream:
    // using it while one is captured is refused and invalidates the capture.
    // A non-blocking stream's capture does not mind it.
    let blocking = stream(0);
    ok(unsafe { cuStreamBeginCapture_v2(blocking, 2) });
    assert_eq!(
        unsafe { cuMemsetD32Async(dst, 0, 4, std::ptr::null_mut()) },
        CUresult::CUDA_ERROR_STREAM_CAPTURE_IMPLICIT
    );
    invalidated(blocking);
    ok(unsafe { cuStreamBeginCapture_v2(a, 2) });
    ok(unsafe { cuMemsetD32Async(dst, 0, 4, std::ptr::null_mut()) });
    ok(end(a));
    assert_eq!(s.download(dst, 4).unwrap(), vec![0.0; 4]);
}
