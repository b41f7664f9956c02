// The emulation's launcher: see simt.hpp. CUDA threads are fibers with
// their own stacks, switched by a few lines of assembly (x86-64 System V:
// the callee-saved registers, the stack pointer, and the FP control words).
#include "simt.hpp"

#include <sys/mman.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#if !defined(__x86_64__)
#error "the SIMT emulation switches fibers with x86-64 assembly"
#endif

// Under AddressSanitizer (RNN_EMU_SANITIZE=1), every switch is announced, so
// that ASan knows which stack is live and checks each fiber's accesses.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define RNN_EMU_ASAN 1
#else
#define RNN_EMU_ASAN 0
#endif

// rnn_emu_switch(save, load): saves this context's stack pointer in *save
// and resumes the one whose stack pointer is load.
asm(R"(
    .text
    .p2align 4
    .type rnn_emu_switch, @function
rnn_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size rnn_emu_switch, .-rnn_emu_switch

    .p2align 4
    .type rnn_emu_fiber_start, @function
rnn_emu_fiber_start:
    movq %rbx, %rdi
    callq *%r12
    ud2
    .size rnn_emu_fiber_start, .-rnn_emu_fiber_start
)");

extern "C" void rnn_emu_switch(void** save, void* load);
extern "C" void rnn_emu_fiber_start();

namespace rnn_emu {

thread_local ThreadState* tls = nullptr;

namespace {

// Bytes past the end of each block's shared memory that must stay untouched.
constexpr size_t kGuard = 256;
constexpr unsigned char kGuardByte = 0xA5;
// Shared memory starts as NaN bytes: a kernel that reads what it never wrote
// produces NaN, which no comparison with the reference lets pass.
constexpr unsigned char kPoisonByte = 0xFF;
// Each fiber's stack; its lowest bytes are a canary checked at the end.
constexpr size_t kStackBytes = (RNN_EMU_ASAN ? 256 : 64) * 1024;  // ASan's redzones need more
constexpr size_t kCanaryBytes = 64;
constexpr unsigned char kCanaryByte = 0x5A;
constexpr double kDeadlockSeconds = 60.0;

double seconds_now() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

struct Fiber {
    ThreadState state;
    void* sp = nullptr;
    void* stack_bottom = nullptr;
    void* fake_stack = nullptr;  // ASan's, while switched out
    bool done = false;
    void (*entry)(const void*) = nullptr;
    const void* params = nullptr;
};

// One host thread's fibers, run round-robin until all finish.
struct Scheduler {
    std::vector<Fiber*> fibers;
    void* home_sp = nullptr;  // the host thread's own context
    const void* home_bottom = nullptr;  // and its stack, for ASan
    size_t home_size = 0;
    void* home_fake_stack = nullptr;
    Fiber* running = nullptr;
    unsigned spins = 0;       // spin_pause calls since the host thread last yielded the core
};

thread_local Scheduler* scheduler = nullptr;

// Switches from the running fiber to the scheduler; `finished`: for good.
void to_scheduler(Fiber* f, bool finished) {
    Scheduler* s = scheduler;
#if RNN_EMU_ASAN
    __sanitizer_start_switch_fiber(finished ? nullptr : &f->fake_stack, s->home_bottom, s->home_size);
#else
    (void)finished;
#endif
    rnn_emu_switch(&f->sp, s->home_sp);
#if RNN_EMU_ASAN
    __sanitizer_finish_switch_fiber(f->fake_stack, nullptr, nullptr);
#endif
}

void fiber_main(Fiber* f) {
#if RNN_EMU_ASAN
    // The first entry: learn the scheduler's stack from the switch.
    __sanitizer_finish_switch_fiber(nullptr, &scheduler->home_bottom, &scheduler->home_size);
#endif
    f->entry(f->params);
    f->done = true;
    f->state.progress->fetch_add(1, std::memory_order_relaxed);
    to_scheduler(f, true);
    std::abort();  // a finished fiber is never resumed
}

// Back to the scheduler; it resumes this fiber on a later round.
void yield() { to_scheduler(scheduler->running, false); }

void run_fibers(Scheduler& s) {
    scheduler = &s;
    for (size_t live = s.fibers.size(); live > 0;) {
        live = 0;
        for (Fiber* f : s.fibers) {
            if (f->done) continue;
            s.running = f;
            tls = &f->state;
#if RNN_EMU_ASAN
            __sanitizer_start_switch_fiber(&s.home_fake_stack, f->stack_bottom, kStackBytes);
#endif
            rnn_emu_switch(&s.home_sp, f->sp);
#if RNN_EMU_ASAN
            __sanitizer_finish_switch_fiber(s.home_fake_stack, &s.home_bottom, &s.home_size);
#endif
            live += !f->done;
        }
    }
    tls = nullptr;
    scheduler = nullptr;
}

struct Block {
    Dim3 idx;
    std::vector<unsigned char> smem;
    FiberBarrier barrier;
    std::vector<FiberBarrier> warp_barriers;
    std::vector<float> shuffle_slots;
    std::vector<Fiber> fibers;
};

// Stacks for `count` fibers, with a canary at the bottom of each.
struct Stacks {
    unsigned char* base = nullptr;
    size_t bytes = 0;
    explicit Stacks(size_t count) : bytes(count * kStackBytes) {
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            std::fprintf(stderr, "rnn_emu: cannot map %zu fiber stacks\n", count);
            std::abort();
        }
        base = static_cast<unsigned char*>(p);
        for (size_t i = 0; i < count; ++i) std::memset(base + i * kStackBytes, kCanaryByte, kCanaryBytes);
    }
    ~Stacks() { munmap(base, bytes); }
    unsigned char* bottom(size_t i) const { return base + i * kStackBytes; }
    bool intact(size_t i) const {
        for (size_t b = 0; b < kCanaryBytes; ++b)
            if (bottom(i)[b] != kCanaryByte) return false;
        return true;
    }
};

// A fresh fiber context whose first switch enters fiber_main(f).
void* initial_stack(unsigned char* bottom, Fiber* f) {
    auto* top = reinterpret_cast<unsigned long long*>(bottom + kStackBytes);
    // After rnn_emu_switch pops 8 words and returns, %rsp is top - 8 words +
    // 8 words = 16-byte aligned at rnn_emu_fiber_start, which calls.
    unsigned long long* sp = top - 8;
    unsigned int mxcsr;
    unsigned short fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    sp[0] = (unsigned long long)mxcsr | ((unsigned long long)fpucw << 32);
    sp[1] = 0;                                                 // r15
    sp[2] = 0;                                                 // r14
    sp[3] = 0;                                                 // r13
    sp[4] = reinterpret_cast<unsigned long long>(&fiber_main);  // r12: what to call
    sp[5] = reinterpret_cast<unsigned long long>(f);            // rbx: its argument
    sp[6] = 0;                                                 // rbp
    sp[7] = reinterpret_cast<unsigned long long>(&rnn_emu_fiber_start);
    return sp;
}

void prepare(const Launch& l, Block& block, Stacks& stacks, size_t first_stack, void (*entry)(const void*),
             const void* params, std::atomic<unsigned long long>* progress) {
    const unsigned threads = l.block[0];
    block.smem.assign(l.smem_bytes + kGuard, kPoisonByte);
    std::memset(block.smem.data() + l.smem_bytes, kGuardByte, kGuard);
    block.barrier.count = threads;
    const bool whole_warps = threads % 32 == 0;
    if (whole_warps) {
        block.warp_barriers.assign(threads / 32, FiberBarrier{});
        for (auto& w : block.warp_barriers) w.count = 32;
        block.shuffle_slots.assign(threads, 0.0f);
    }
    block.fibers.assign(threads, Fiber{});
    for (unsigned t = 0; t < threads; ++t) {
        Fiber& f = block.fibers[t];
        f.entry = entry;
        f.params = params;
        f.state = ThreadState{};
        f.state.thread_idx = {t, 0, 0};
        f.state.block_idx = block.idx;
        f.state.block_dim = {l.block[0], 1, 1};
        f.state.grid_dim = {l.grid[0], l.grid[1], l.grid[2]};
        f.state.block_barrier = &block.barrier;
        f.state.smem = block.smem.data();
        f.state.warp_barrier = whole_warps ? &block.warp_barriers[t / 32] : nullptr;
        f.state.shuffle_slots = whole_warps ? block.shuffle_slots.data() : nullptr;
        f.state.progress = progress;
        f.state.seen_progress = ~0ull;
        f.stack_bottom = stacks.bottom(first_stack + t);
        f.sp = initial_stack(stacks.bottom(first_stack + t), &f);
    }
}

void check_block(const Launch& l, const Block& block, const Stacks& stacks, size_t first_stack) {
    for (size_t i = 0; i < kGuard; ++i)
        if (block.smem[l.smem_bytes + i] != kGuardByte) {
            std::fprintf(stderr, "rnn_emu: block (%u,%u,%u) wrote past its %llu bytes of shared memory\n",
                         block.idx.x, block.idx.y, block.idx.z, l.smem_bytes);
            std::abort();
        }
    for (size_t t = 0; t < block.fibers.size(); ++t)
        if (!stacks.intact(first_stack + t)) {
            std::fprintf(stderr, "rnn_emu: block (%u,%u,%u) thread %zu overflowed its %zu-byte stack\n",
                         block.idx.x, block.idx.y, block.idx.z, t, kStackBytes);
            std::abort();
        }
}

// Runs `blocks` at once, spread over one host thread per core (each
// block's fibers stay on one host thread).
void run_together(const Launch& l, std::vector<Block>& blocks, void (*entry)(const void*), const void* params) {
    const size_t threads = l.block[0];
    Stacks stacks(blocks.size() * threads);
    std::atomic<unsigned long long> progress{0};
    for (size_t b = 0; b < blocks.size(); ++b) prepare(l, blocks[b], stacks, b * threads, entry, params, &progress);
    const size_t hosts = std::max<size_t>(1, std::min<size_t>(blocks.size(), std::thread::hardware_concurrency()));
    std::vector<Scheduler> schedulers(hosts);
    for (size_t b = 0; b < blocks.size(); ++b)
        for (Fiber& f : blocks[b].fibers) schedulers[b % hosts].fibers.push_back(&f);
    std::vector<std::thread> pool;
    for (size_t h = 1; h < hosts; ++h) pool.emplace_back([&schedulers, h] { run_fibers(schedulers[h]); });
    run_fibers(schedulers[0]);
    for (auto& t : pool) t.join();
    for (size_t b = 0; b < blocks.size(); ++b) check_block(l, blocks[b], stacks, b * threads);
}

}  // namespace

void FiberBarrier::arrive_and_wait() {
    const unsigned g = generation;
    if (++arrived == count) {
        arrived = 0;
        ++generation;
        tls->progress->fetch_add(1, std::memory_order_relaxed);
        return;
    }
    while (generation == g) yield();
}

void spin_pause() {
    ThreadState& t = *tls;
    const double now = seconds_now();
    const unsigned long long seen = t.progress->load(std::memory_order_relaxed);
    if (t.seen_progress != seen) {
        t.seen_progress = seen;
        t.spin_started = now;
    } else if (now - t.spin_started > kDeadlockSeconds) {
        std::fprintf(stderr, "rnn_emu: block (%u,%u,%u) waited %.0f s at a barrier while nothing moved: deadlock\n", t.block_idx.x,
                     t.block_idx.y, t.block_idx.z, kDeadlockSeconds);
        std::abort();
    }
    yield();
    // Waiting on other host threads: now and then give them the core too.
    if (++scheduler->spins % 256 == 0) std::this_thread::yield();
}

void bad_shuffle() {
    std::fprintf(stderr, "rnn_emu: block (%u,%u,%u) thread %u: a shuffle that is not over a whole warp\n",
                 tls->block_idx.x, tls->block_idx.y, tls->block_idx.z, tls->thread_idx.x);
    std::abort();
}

void run(const Launch& l, void (*entry)(const void*), const void* params) {
    if (l.block[1] != 1 || l.block[2] != 1) {
        std::fprintf(stderr, "rnn_emu: only 1-D blocks are emulated\n");
        std::abort();
    }
    std::vector<Block> all;
    for (unsigned z = 0; z < l.grid[2]; ++z)
        for (unsigned y = 0; y < l.grid[1]; ++y)
            for (unsigned x = 0; x < l.grid[0]; ++x) {
                all.emplace_back();
                all.back().idx = {x, y, z};
            }
    if (l.cooperative) {
        run_together(l, all, entry, params);  // co-resident, as a cooperative launch guarantees
    } else {
        // An ordinary launch promises no co-residency: run blocks one at a
        // time, so a kernel that waits for another block deadlocks here too.
        for (Block& block : all) {
            std::vector<Block> one(1);
            one[0].idx = block.idx;
            run_together(l, one, entry, params);
        }
    }
}

}  // namespace rnn_emu
