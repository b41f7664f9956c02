//! The threads a prepared CPU model runs on: a persistent pool (rayon) owned
//! by the model, so that no call spawns threads, and a spinning barrier for
//! the one split that synchronises every step (units split across threads
//! when the batch is too small to split rows).
//!
//! The pool is the model's own: the barrier needs all of its workers at once,
//! which a pool shared with other work could not promise.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The model's threads: none beyond the caller's when `threads == 1`.
pub struct Workers {
    pool: Option<rayon::ThreadPool>,
    threads: usize,
}

impl Workers {
    pub fn new(threads: usize) -> crate::Result<Self> {
        let threads = threads.max(1);
        let pool = if threads == 1 {
            None
        } else {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("rnn-cpu-{i}"))
                .build()
                .map_err(|e| crate::Error::Unsupported(format!("cannot start {threads} CPU threads: {e}")))?;
            Some(pool)
        };
        Ok(Workers { pool, threads })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `task(i)` for `i` in `0..count`, in parallel when there are
    /// threads, and returns when all are done.
    pub fn run(&self, count: usize, task: impl Fn(usize) + Sync) {
        match &self.pool {
            Some(pool) if count > 1 => pool.scope(|scope| {
                let task = &task;
                for i in 0..count {
                    scope.spawn(move |_| task(i));
                }
            }),
            _ => (0..count).for_each(task),
        }
    }

    /// Runs `work(worker, barrier)` on every thread at once (`worker` in
    /// `0..threads`), with a barrier they all share.
    pub fn broadcast(&self, work: impl Fn(usize, &SpinBarrier) + Sync) {
        let barrier = SpinBarrier::new(self.threads);
        match &self.pool {
            Some(pool) => {
                pool.broadcast(|ctx| work(ctx.index(), &barrier));
            }
            None => work(0, &barrier),
        }
    }

    /// Runs `f` inside the pool (so that rayon-parallel code in `f`, such as
    /// the `gemm` crate's, uses these threads).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }
}

/// A reusable barrier for `count` threads that spins (then yields, so that an
/// oversubscribed machine still makes progress) instead of sleeping: a step
/// of a small recurrence takes microseconds, a futex wake-up about as long.
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
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if spins < 4096 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
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
