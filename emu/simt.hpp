// A small SIMT emulation, so that kernels/*.cu compile as C++ and run on the
// CPU in CI. Each CUDA thread is a fiber (its own stack, switched in user
// space): a block's fibers share one host thread, __syncthreads is a barrier
// they yield at, and a cooperative launch spreads its blocks over one host
// thread per core, with real atomics for the grid-level barrier between
// them. A launch of tens of thousands of CUDA threads costs a few host
// threads. It is a test harness (catching indexing, bounds and
// synchronisation bugs on machines without a GPU), not a product feature.
//
// Supported: what the kernels use and nothing more: 1-D blocks, dynamic
// shared memory only, and __shfl_xor_sync over whole warps (a barrier per
// warp; blocks whose size is not a multiple of 32 may not shuffle).
#pragma once

#include <algorithm>
#include <atomic>
#include <math.h>

using std::max;
using std::min;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)

namespace rnn_emu {

struct Dim3 {
    unsigned x, y, z;
};

// A launch as Rust describes it (emu/src/lib.rs mirrors this).
struct Launch {
    unsigned grid[3];
    unsigned block[3];
    unsigned long long smem_bytes;
    int cooperative;  // 1: all blocks run at once (they may wait for each other)
};

// A barrier among fibers that share one host thread: the waiting ones yield.
struct FiberBarrier {
    unsigned count = 0, arrived = 0, generation = 0;
    void arrive_and_wait();
};

struct ThreadState {
    Dim3 thread_idx, block_idx, block_dim, grid_dim;
    FiberBarrier* block_barrier;
    unsigned char* smem;
    FiberBarrier* warp_barrier;  // this thread's warp, for shuffles
    float* shuffle_slots;        // one per thread of the block
    // Deadlock watch: barriers opened and threads finished in this launch,
    // the count this thread last saw, and since when (seconds) it has spun
    // without seeing it move.
    std::atomic<unsigned long long>* progress;
    unsigned long long seen_progress;
    double spin_started;
};

// The CUDA thread running on this host thread.
extern thread_local ThreadState* tls;

void run(const Launch& launch, void (*entry)(const void*), const void* params);

// Called in spin loops: lets the other CUDA threads run, and aborts a launch
// that waits forever (a barrier some block never reaches) instead of
// hanging CI.
void spin_pause();

// Aborts: a shuffle this emulation does not model.
[[noreturn]] void bad_shuffle();

}  // namespace rnn_emu

#define threadIdx (rnn_emu::tls->thread_idx)
#define blockIdx (rnn_emu::tls->block_idx)
#define blockDim (rnn_emu::tls->block_dim)
#define gridDim (rnn_emu::tls->grid_dim)

inline void __syncthreads() { rnn_emu::tls->block_barrier->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    return std::atomic_ref<unsigned int>(*p).fetch_add(v, std::memory_order_acq_rel);
}

// Every lane of the warp must call it (mask = all lanes), as the kernels do.
inline float __shfl_xor_sync(unsigned mask, float value, int lane_mask) {
    rnn_emu::ThreadState& t = *rnn_emu::tls;
    if (mask != 0xffffffffu || t.warp_barrier == nullptr || lane_mask < 0 || lane_mask > 31) rnn_emu::bad_shuffle();
    const unsigned self = t.thread_idx.x;
    float* slots = t.shuffle_slots;
    rnn_emu::FiberBarrier* warp = t.warp_barrier;
    slots[self] = value;
    warp->arrive_and_wait();
    const float other = slots[(self & ~31u) | ((self & 31u) ^ (unsigned)lane_mask)];
    warp->arrive_and_wait();  // nobody overwrites a slot before its reader read it
    return other;
}

inline float rnn_load_l2(const float* p) { return *p; }
inline unsigned int rnn_load_acquire(const unsigned int* p) {
    return std::atomic_ref<unsigned int>(*const_cast<unsigned int*>(p)).load(std::memory_order_acquire);
}
inline void rnn_spin_pause() { rnn_emu::spin_pause(); }
inline void rnn_arrive_release(unsigned int* p) {
    std::atomic_ref<unsigned int>(*p).fetch_add(1u, std::memory_order_release);
}
// cp.async's effect, at once; waiting is then nothing.
inline void rnn_copy_async(float* dst, const float* src) { *dst = *src; }
inline void rnn_copy_async_wait() {}
inline float rnn_rcp_approx(float y) { return 1.0f / y; }

#define RNN_KERNEL(name, Params)                                                              \
    static void name##_body(const Params& p);                                                 \
    static void name##_entry(const void* params) { name##_body(*static_cast<const Params*>(params)); } \
    extern "C" void rnn_emu_##name(const rnn_emu::Launch* launch, const void* params) {       \
        rnn_emu::run(*launch, name##_entry, params);                                          \
    }                                                                                         \
    static void name##_body(const Params& p)

#define RNN_PERSISTENT_KERNEL(name, Params) RNN_KERNEL(name, Params)

#define RNN_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(rnn_emu::tls->smem)
