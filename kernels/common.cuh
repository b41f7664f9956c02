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

// Adds one to a barrier counter with release semantics: every write this
// thread has made or seen (the whole CTA's, after a __syncthreads) is
// visible to whoever acquires the new count. No full fence is needed.
__device__ __forceinline__ void rnn_arrive_release(unsigned int* p) {
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" : : "l"(p) : "memory");
}

// An asynchronous 4-byte copy from global to shared memory (cp.async,
// LDGSTS): a thread issues many without waiting for any, then
// rnn_copy_async_wait() waits for its own. Through L1: only for data no
// other CTA writes during the launch (the weights).
__device__ __forceinline__ void rnn_copy_async(float* dst, const float* src) {
    const unsigned int to = static_cast<unsigned int>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" : : "r"(to), "l"(src) : "memory");
}
__device__ __forceinline__ void rnn_copy_async_wait() { asm volatile("cp.async.wait_all;" : : : "memory"); }

// The hardware's approximate reciprocal (MUFU.RCP: relative error < 2^-22).
__device__ __forceinline__ float rnn_rcp_approx(float y) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(y));
    return r;
}
#endif

// The logistic function. 1 + e^-x is at least 1 (or +inf, or NaN), where
// the approximate reciprocal and one Newton step are within an ulp of the
// division, without the IEEE division's out-of-range slow path (a call that
// splits the code around it); from 2^126 on, the reciprocal (0 at +inf) is
// the answer.
__device__ __forceinline__ float rnn_sigmoid(float x) {
    const float y = 1.0f + expf(-x);
    const float r = rnn_rcp_approx(y);
    return y < 0x1p126f ? fmaf(r, fmaf(-y, r, 1.0f), r) : r;
}

// Gates per hidden unit of an RNN_CELL_* kind.
__device__ __forceinline__ int rnn_cell_gates(int cell) {
    return cell == RNN_CELL_LSTM ? 4 : cell == RNN_CELL_GRU ? 3 : 1;
}

// Waits until `count` CTAs in all have arrived at `counter` (a counter that
// only grows during the launch: the caller passes epoch * ctas). Every
// global write the CTA made before is visible to the others after it.
// Thread 0 arrives with a release (ordered after the CTA's writes by the
// __syncthreads) and polls with acquire loads; the second __syncthreads
// orders the CTA's later reads after the acquire. Reads of other CTAs' data
// go to L2 (rnn_load_l2), never to a stale L1 line.
__device__ __forceinline__ void rnn_group_barrier(unsigned int* counter, unsigned int count) {
    __syncthreads();
    if (threadIdx.x == 0) {
        rnn_arrive_release(counter);
        while (rnn_load_acquire(counter) < count) rnn_spin_pause();
    }
    __syncthreads();
}

// Copies `rows` rows of `width` floats from src (row stride src_stride) to
// dst (row stride dst_stride) with the whole block, each thread keeping
// UNROLL loads in flight before it stores any: the copy takes
// ceil(rows·width / (UNROLL·blockDim.x)) memory round trips, not one per
// element. `load` reads one source float.
template <int UNROLL, typename Load>
__device__ __forceinline__ void rnn_copy_rows(float* dst, int dst_stride, const float* src, int src_stride, int rows,
                                              int width, Load&& load) {
    const int n = rows * width;
    for (int i0 = threadIdx.x; i0 < n; i0 += UNROLL * blockDim.x) {
        float v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = i0 + u * blockDim.x, r = i / width;
            if (i < n) v[u] = load(src + (long long)r * src_stride + (i - r * width));
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = i0 + u * blockDim.x, r = i / width;
            if (i < n) dst[r * dst_stride + (i - r * width)] = v[u];
        }
    }
}

// The SGEMM core of the input projection and of training's products: one
// 64×64 tile of outputs per block of RNN_GEMM_THREADS threads, each thread a
// 4×4 block summed in k order (deterministic; no tensor cores: f32 means
// f32), both operands staged k-major in dynamic shared memory of
// 2 · RNN_GEMM_TILE_K · (RNN_GEMM_TILE + RNN_GEMM_PAD) floats (plan.rs:
// gemm_launch). Grid (ceil(N / 64), ceil(M / 64)). a(m, k) and b(n, k) are
// called only in range; store(m, n, sum) gets each output in range.
#define RNN_GEMM_TILE 64
#define RNN_GEMM_TILE_K 16
#define RNN_GEMM_PAD 4
#define RNN_GEMM_THREADS 256

template <typename LoadA, typename LoadB, typename Store>
__device__ __forceinline__ void rnn_gemm_tile(int M, int N, int K, LoadA&& a, LoadB&& b, Store&& store) {
    RNN_DYNAMIC_SMEM(float, smem);
    const int stride = RNN_GEMM_TILE + RNN_GEMM_PAD;
    float* as = smem;                              // [TILE_K][stride]: A tile, k-major
    float* bs = smem + RNN_GEMM_TILE_K * stride;   // [TILE_K][stride]: B tile, k-major
    const int m0 = blockIdx.y * RNN_GEMM_TILE, n0 = blockIdx.x * RNN_GEMM_TILE;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += RNN_GEMM_TILE_K) {
        // Consecutive threads take consecutive k of one row.
        for (int i = threadIdx.x; i < RNN_GEMM_TILE * RNN_GEMM_TILE_K; i += RNN_GEMM_THREADS) {
            const int r = i / RNN_GEMM_TILE_K, kk = i % RNN_GEMM_TILE_K, k = k0 + kk;
            const int m = m0 + r, n = n0 + r;
            as[kk * stride + r] = (m < M && k < K) ? a(m, k) : 0.0f;
            bs[kk * stride + r] = (n < N && k < K) ? b(n, k) : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < RNN_GEMM_TILE_K; ++kk) {
            float av[4], bv[4];
            for (int i = 0; i < 4; ++i) av[i] = as[kk * stride + ty * 4 + i];
            for (int j = 0; j < 4; ++j) bv[j] = bs[kk * stride + tx * 4 + j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty * 4 + i;
        if (m >= M) continue;
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx * 4 + j;
            if (n < N) store(m, n, acc[i][j]);
        }
    }
}
