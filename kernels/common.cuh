// What every kernel file includes: the portability layer that lets the same
// source compile with nvcc for the GPU and with a C++ compiler for the host
// SIMT emulation that tests run in CI (emu/simt.hpp), plus small device
// helpers.
#pragma once

#include "params.h"

#ifdef RNN_HOST_EMULATION
#include "simt.hpp"
#else
#include <cuda_runtime.h>

// A kernel entry point: `extern "C"` so Rust finds it by name, taking its
// parameter struct by value. At most RNN_MAX_THREADS threads per block
// (plan.rs never launches more), which lets ptxas use up to 128 registers
// per thread: with 1024 it is capped at 64, and the LSTM recurrence spills.
#define RNN_KERNEL(name, Params) extern "C" __global__ void __launch_bounds__(RNN_MAX_THREADS) name(const Params p)
// A persistent kernel (one launch for all timesteps, few CTAs per SM): tell
// ptxas that one resident block is enough. Without it ptxas targets two and
// caps the forward recurrence at 64 registers, where its accumulators spill.
#define RNN_PERSISTENT_KERNEL(name, Params) \
    extern "C" __global__ void __launch_bounds__(RNN_MAX_THREADS, 1) name(const Params p)

// The dynamic shared memory of the block.
#define RNN_DYNAMIC_SMEM(type, name) extern __shared__ __align__(16) unsigned char rnn_smem_[]; \
    type* name = reinterpret_cast<type*>(rnn_smem_)

// A load that bypasses L1: data written by other CTAs during this launch.
__device__ __forceinline__ float rnn_load_l2(const float* p) { return __ldcg(p); }

__device__ __forceinline__ unsigned int rnn_load_acquire(const unsigned int* p) {
    unsigned int v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void rnn_spin_pause() { __nanosleep(20); }
#endif

__device__ __forceinline__ float rnn_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Gates per hidden unit of an RNN_CELL_* kind.
__device__ __forceinline__ int rnn_cell_gates(int cell) {
    return cell == RNN_CELL_LSTM ? 4 : cell == RNN_CELL_GRU ? 3 : 1;
}

// Waits until `count` CTAs in all have arrived at `counter` (a counter that
// only grows during the launch: the caller passes epoch * ctas). Every
// global write the CTA made before is visible to the others after it.
__device__ __forceinline__ void rnn_group_barrier(unsigned int* counter, unsigned int count) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(counter, 1u);
        while (rnn_load_acquire(counter) < count) rnn_spin_pause();
        __threadfence();
    }
    __syncthreads();
}
