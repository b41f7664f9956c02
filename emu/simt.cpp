// The emulation's launcher: see simt.hpp.
#include "simt.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace rnn_emu {

thread_local ThreadState tls;
thread_local std::chrono::steady_clock::time_point spin_started;
thread_local bool spinning = false;

// Bytes past the end of each block's shared memory that must stay untouched.
constexpr size_t kGuard = 256;
constexpr unsigned char kGuardByte = 0xA5;
// Shared memory starts as NaN bytes: a kernel that reads what it never wrote
// produces NaN, which no comparison with the reference lets pass.
constexpr unsigned char kPoisonByte = 0xFF;

void spin_pause() {
    auto now = std::chrono::steady_clock::now();
    if (!spinning) {
        spinning = true;
        spin_started = now;
    } else if (now - spin_started > std::chrono::seconds(60)) {
        std::fprintf(stderr, "rnn_emu: block (%u,%u,%u) waited 60 s at a barrier: deadlock\n", tls.block_idx.x,
                     tls.block_idx.y, tls.block_idx.z);
        std::abort();
    }
    std::this_thread::yield();
}

void bad_shuffle() {
    std::fprintf(stderr, "rnn_emu: block (%u,%u,%u) thread %u: a shuffle that is not over a whole warp\n",
                 tls.block_idx.x, tls.block_idx.y, tls.block_idx.z, tls.thread_idx.x);
    std::abort();
}

namespace {

struct Block {
    Dim3 idx;
    std::vector<unsigned char> smem;
    std::unique_ptr<std::barrier<>> barrier;
    std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
    std::vector<float> shuffle_slots;
};

void run_blocks(const Launch& l, std::vector<Block>& blocks, void (*entry)(const void*), const void* params) {
    const unsigned threads = l.block[0] * l.block[1] * l.block[2];
    std::vector<std::thread> pool;
    pool.reserve(blocks.size() * threads);
    for (Block& block : blocks) {
        block.smem.assign(l.smem_bytes + kGuard, kPoisonByte);
        std::memset(block.smem.data() + l.smem_bytes, kGuardByte, kGuard);
        block.barrier = std::make_unique<std::barrier<>>(threads);
        if (threads % 32 == 0) {
            block.warp_barriers.clear();
            for (unsigned w = 0; w < threads / 32; ++w) block.warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
            block.shuffle_slots.assign(threads, 0.0f);
        }
        for (unsigned t = 0; t < threads; ++t) {
            pool.emplace_back([&l, &block, t, entry, params] {
                tls.thread_idx = {t, 0, 0};
                tls.block_idx = block.idx;
                tls.block_dim = {l.block[0], 1, 1};
                tls.grid_dim = {l.grid[0], l.grid[1], l.grid[2]};
                tls.block_barrier = block.barrier.get();
                tls.smem = block.smem.data();
                const bool whole_warps = !block.warp_barriers.empty();
                tls.warp_barrier = whole_warps ? block.warp_barriers[t / 32].get() : nullptr;
                tls.shuffle_slots = whole_warps ? block.shuffle_slots.data() : nullptr;
                entry(params);
            });
        }
    }
    for (auto& th : pool) th.join();
    for (const Block& block : blocks)
        for (size_t i = 0; i < kGuard; ++i)
            if (block.smem[l.smem_bytes + i] != kGuardByte) {
                std::fprintf(stderr, "rnn_emu: block (%u,%u,%u) wrote past its %llu bytes of shared memory\n",
                             block.idx.x, block.idx.y, block.idx.z, l.smem_bytes);
                std::abort();
            }
}

}  // namespace

void run(const Launch& l, void (*entry)(const void*), const void* params) {
    if (l.block[1] != 1 || l.block[2] != 1) {
        std::fprintf(stderr, "rnn_emu: only 1-D blocks are emulated\n");
        std::abort();
    }
    std::vector<Block> all;
    for (unsigned z = 0; z < l.grid[2]; ++z)
        for (unsigned y = 0; y < l.grid[1]; ++y)
            for (unsigned x = 0; x < l.grid[0]; ++x) all.push_back(Block{{x, y, z}, {}, nullptr, {}, {}});
    if (l.cooperative) {
        run_blocks(l, all, entry, params);  // co-resident, as a cooperative launch guarantees
    } else {
        // An ordinary launch promises no co-residency: run blocks one at a
        // time, so a kernel that waits for another block deadlocks here too.
        for (Block& block : all) {
            std::vector<Block> one;
            one.push_back(std::move(block));
            run_blocks(l, one, entry, params);
        }
    }
}

}  // namespace rnn_emu
