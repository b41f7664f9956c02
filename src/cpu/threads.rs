//! The threads a prepared CPU model runs on: started once with the model,
//! and kept spinning for a while after each job, so that the next job (the
//! next layer, the next step of a stream) starts in well under a
//! microsecond. A pool whose idle workers sleep at once (rayon's) paid
//! ~100 µs per wake-up on the 2-vCPU VMs this was measured on, as long as a
//! whole icu layer: half the two-thread calls ran at one-thread speed. ONNX
//! Runtime's pool spins between operators for the same reason.
//!
//! Workers spin for [`SPIN`] after a job, then park; a parked pool wakes on
//! the next job at the OS's price. Jobs are broadcasts: every worker runs
//! the same closure with its index, the caller being worker 0.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
pub const SPIN: Duration = Duration::from_millis(2);

/// The model's threads: none beyond the caller's when `threads == 1`.
pub struct Workers {
    threads: usize,
    shared: Arc<Shared>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

/// A job's closure, its lifetime erased: [`Workers::broadcast`] does not
/// return before every worker is done with it.
type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped for each job; a worker runs a job when it sees a new value.
    generation: AtomicU64,
    job: Mutex<Option<SendJob>>,
    /// Workers (not counting the caller) still running the current job.
    remaining: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    parked: AtomicUsize,
    park_lock: Mutex<()>,
    wake: Condvar,
}

struct SendJob(Job);
// SAFETY: the closure is Sync and outlives every use (see `Job`).
unsafe impl Send for SendJob {}

impl Workers {
    pub fn new(threads: usize) -> crate::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: Mutex::new(None),
            remaining: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            parked: AtomicUsize::new(0),
            park_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut handles = Vec::with_capacity(threads - 1);
        for index in 1..threads {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("rnn-cpu-{index}"))
                .spawn(move || worker(&shared, index))
                .map_err(|e| crate::Error::Unsupported(format!("cannot start {threads} CPU threads: {e}")))?;
            handles.push(handle);
        }
        Ok(Workers {
            threads,
            shared,
            handles,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `task(i)` for `i` in `0..count` on the workers and returns when
    /// all are done. Worker `w` takes tasks `w`, `w + threads`, ...: the
    /// tasks of one call are of a size.
    pub fn run(&self, count: usize, task: impl Fn(usize) + Sync) {
        if count <= 1 || self.threads == 1 {
            return (0..count).for_each(task);
        }
        self.each(&|w| (w..count).step_by(self.threads).for_each(&task));
    }

    /// Runs `work(worker, barrier)` on every thread at once (`worker` in
    /// `0..threads`), with a barrier they all share.
    pub fn broadcast(&self, work: impl Fn(usize, &SpinBarrier) + Sync) {
        let barrier = SpinBarrier::new(self.threads);
        if self.threads == 1 {
            return work(0, &barrier);
        }
        self.each(&|w| work(w, &barrier));
    }

    /// Runs `job(w)` on every worker `w`, the caller being worker 0.
    fn each(&self, job: &(dyn Fn(usize) + Sync)) {
        let shared = &*self.shared;
        // SAFETY: only the lifetime is erased; this function does not return
        // (nor unwind) before `remaining` is 0, after which no worker touches
        // the job again.
        let erased: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(job) };
        *shared.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(SendJob(erased));
        shared.remaining.store(self.threads - 1, Ordering::SeqCst);
        shared.generation.fetch_add(1, Ordering::SeqCst);
        if shared.parked.load(Ordering::SeqCst) > 0 {
            let _guard = shared.park_lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
        let mut backoff = Backoff::new();
        while shared.remaining.load(Ordering::Acquire) != 0 {
            backoff.snooze();
        }
        if let Err(panic) = mine {
            resume_unwind(panic);
        }
        if shared.panicked.swap(false, Ordering::AcqRel) {
            panic!("a CPU worker thread panicked");
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let shared = &*self.shared;
        shared.shutdown.store(true, Ordering::SeqCst);
        shared.generation.fetch_add(1, Ordering::SeqCst);
        {
            let _guard = shared.park_lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

/// Waiting by spinning for up to [`YIELD_AFTER`], then `yield` (for a machine
/// with more runnable threads than cores). How a VM guest waits costs the
/// *other* threads: on the 2-vCPU VMs this was measured on, a waiting
/// thread's `sched_yield` loop, and a tight PAUSE loop (which the
/// hypervisor's pause-loop exiting turns into VM exits), each slowed the
/// busy thread by half. So the spin puts ~200 cycles of arithmetic between
/// PAUSEs, more than a hypervisor counts as one pause loop.
pub struct Backoff {
    start: Option<Instant>,
    spins: u32,
}

/// How long a waiting thread spins before it starts yielding.
pub const YIELD_AFTER: Duration = Duration::from_millis(1);

impl Backoff {
    pub fn new() -> Self {
        Backoff {
            start: None,
            spins: 0,
        }
    }

    /// Waits a little (a few hundred cycles).
    pub fn snooze(&mut self) {
        self.spins = self.spins.wrapping_add(1);
        if self.spins.is_multiple_of(256) {
            let start = *self.start.get_or_insert_with(Instant::now);
            if start.elapsed() > YIELD_AFTER {
                std::thread::yield_now();
                return;
            }
        }
        // A dependent chain the compiler cannot drop: ~200 cycles.
        let mut x = std::hint::black_box(self.spins);
        for _ in 0..64 {
            x = x.wrapping_mul(0x9E37_79B9).rotate_left(5);
        }
        std::hint::black_box(x);
        std::hint::spin_loop();
    }

    /// Time since the first check (zero before it).
    fn waited(&self) -> Duration {
        self.start.map_or(Duration::ZERO, |s| s.elapsed())
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

fn worker(shared: &Shared, index: usize) {
    let mut seen = 0;
    loop {
        // Wait for a new job: spin for SPIN, then park.
        let mut backoff = Backoff::new();
        loop {
            let generation = shared.generation.load(Ordering::Acquire);
            if generation != seen {
                seen = generation;
                break;
            }
            if backoff.waited() > SPIN {
                let guard = shared.park_lock.lock().unwrap_or_else(|e| e.into_inner());
                shared.parked.fetch_add(1, Ordering::SeqCst);
                let mut guard = guard;
                while shared.generation.load(Ordering::SeqCst) == seen {
                    guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                shared.parked.fetch_sub(1, Ordering::SeqCst);
                backoff = Backoff::new();
                continue;
            }
            backoff.snooze();
        }
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        let job = shared
            .job
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|j| j.0);
        if let Some(job) = job {
            // SAFETY: the job outlives this call (see `Job`).
            let job = unsafe { &*job };
            if catch_unwind(AssertUnwindSafe(|| job(index))).is_err() {
                shared.panicked.store(true, Ordering::Release);
            }
        }
        shared.remaining.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A reusable barrier for `count` threads that spins (see [`Backoff`])
/// instead of sleeping: a step of a small recurrence takes microseconds, a
/// futex wake-up about as long.
pub struct SpinBarrier {
    count: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    pub fn new(count: usize) -> Self {
        SpinBarrier {
            count,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    /// Waits until all `count` threads have called `wait` (once each per
    /// round). Everything written before `wait` is visible after it.
    pub fn wait(&self) {
        if self.count == 1 {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.count {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut backoff = Backoff::new();
        while self.generation.load(Ordering::Acquire) == generation {
            backoff.snooze();
        }
    }
}

/// A raw pointer that may cross threads: the code that shares one makes
/// sure the threads touch disjoint elements (or only read).
#[derive(Clone, Copy, Debug)]
pub struct SharedPtr(pub *mut f32);

// SAFETY: a SharedPtr is only dereferenced where its users partition the
// elements between threads (each is written by one thread, and read after
// a barrier or a join), as each use documents.
unsafe impl Send for SharedPtr {}
unsafe impl Sync for SharedPtr {}

impl SharedPtr {
    pub fn null() -> Self {
        SharedPtr(std::ptr::null_mut())
    }

    /// The element `offset` floats on.
    ///
    /// # Safety
    /// Within the allocation the pointer came from.
    #[inline(always)]
    pub unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: the caller keeps the offset in bounds.
        unsafe { self.0.add(offset) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_barrier_orders_rounds_of_every_thread() {
        let workers = Workers::new(3).unwrap();
        let counter = AtomicUsize::new(0);
        let seen = std::sync::Mutex::new(Vec::new());
        workers.broadcast(|_, barrier| {
            for round in 0..200 {
                counter.fetch_add(1, Ordering::Relaxed);
                barrier.wait();
                // Every thread has added its 1 for this round.
                seen.lock()
                    .unwrap()
                    .push(counter.load(Ordering::Relaxed) >= 3 * (round + 1));
                barrier.wait();
            }
        });
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), 600);
        assert!(seen.iter().all(|&ok| ok));
    }

    #[test]
    fn run_covers_every_task_once() {
        for threads in [1, 2, 4] {
            let workers = Workers::new(threads).unwrap();
            let hits: Vec<AtomicUsize> = (0..37).map(|_| AtomicUsize::new(0)).collect();
            workers.run(hits.len(), |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }
}
