//! The threads the fast CPU path runs on: one pool per process, shared by
//! every prepared model, in which no thread ever waits for a thread that is
//! not running.
//!
//! Work comes as *regions*: `pieces` closures' worth of work (`task(p)` for
//! `p` in `0..pieces`) that the calling thread posts and then works on
//! itself. Idle workers claim the pieces the caller has not; the caller,
//! done with its own, claims whatever is still unclaimed. So a worker that
//! the OS has descheduled (two models, two processes or a container's quota
//! on fewer cores than threads) costs nothing unless it has already started
//! a piece: the caller does its share instead of spinning through its time
//! slice at a barrier. Before this, two processes of two threads each on two
//! cores ran a streaming step 400× slower than one alone.
//!
//! Which thread runs a piece never changes a number: every piece computes
//! the same elements the same way whoever runs it.
//!
//! Waiting spins only while spinning pays ([`Spin`]): an idle worker spins
//! for [`IDLE_SPIN`] after its last piece (the next layer or step of a
//! stream comes microseconds later, and a futex wake-up costs about as much
//! as a small step on the VMs this was measured on), a caller waiting for a
//! claimed piece spins for about twice the time its own piece took; and
//! either stops at once when it notices it was itself descheduled (the
//! machine has more runnable threads than cores, and spinning takes a core
//! from a thread with work). Then it sleeps on a futex.
//!
//! Helping only pays when the helper has a core of its own. A caller runs
//! its regions alone when as many callers as there are cores are running
//! at once (models called from several threads of the process), and the
//! whole pool does for a while when most recent regions gained little from
//! their helpers ([`Pacing`]: other processes have the cores). Measured on
//! 2 vCPUs (`cargo bench --bench contention`), two copies of a two-thread
//! model, as threads or processes, now take about twice their time alone
//! each, the fair share.

use super::openmp::{self, Placement};
use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next region before it sleeps.
pub const IDLE_SPIN: Duration = Duration::from_millis(2);

/// A gap this long between two looks at the clock in a spin means the
/// spinning thread was descheduled.
const PREEMPTED: Duration = Duration::from_micros(50);

/// A caller waiting for claimed pieces spins at least this long.
const MIN_WAIT_SPIN: Duration = Duration::from_micros(20);

/// A region its helpers made less than this much faster than its caller
/// alone would have been is a miss (see [`Pacing`]).
const MIN_GAIN: f64 = 0.2;

/// The first and the longest time regions run solo after helpers stopped paying.
const SOLO_MIN: Duration = Duration::from_millis(1);
const SOLO_MAX: Duration = Duration::from_millis(64);

/// Regions in flight at once (more callers than this run theirs alone).
const SLOTS: usize = 16;

/// Pieces of one region: one bit each in [`Slot::claimed`].
const MAX_PIECES: usize = 64;

/// A prepared model's share of the process's pool: its calls run on at most
/// `threads` threads, the caller's included.
pub struct Workers {
    threads: usize,
}

impl Workers {
    /// A model's handle on the pool, starting workers so that the pool has
    /// at least `threads - 1` of them.
    pub fn new(threads: usize) -> crate::Result<Self> {
        let threads = threads.clamp(1, MAX_PIECES);
        POOL.grow(threads - 1)?;
        Ok(Workers { threads })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `task(i)` for every `i` in `0..count` and returns when all are
    /// done. The tasks form `min(count, threads)` pieces, piece `p` taking
    /// tasks `p`, `p + pieces`, ... in order (so the tasks of one call
    /// should be of a size); the caller runs piece 0 and whatever no worker
    /// has claimed. Inside `OpenMp::scope` a host's OpenMP team runs the
    /// pieces instead (`openmp.rs`).
    pub fn run(&self, count: usize, task: impl Fn(usize) + Sync) {
        let pieces = count.min(self.threads);
        let crowded = POOL.enter();
        let piece = |p: usize| (p..count).step_by(pieces).for_each(&task);
        let helped = pieces > 1 && !crowded.0;
        match openmp::placement() {
            Placement::Pool if helped => POOL.region(pieces, &piece),
            Placement::Team(runtime) if helped => runtime.region(pieces, &piece),
            _ => (0..count).for_each(&task),
        }
    }

    /// Runs `work(p, pieces)` for every `p` in `0..pieces`, where `pieces`
    /// is the model's thread count: each a share of one product, say.
    pub fn split(&self, work: impl Fn(usize, usize) + Sync) {
        let pieces = self.threads;
        self.run(pieces, |p| work(p, pieces));
    }
}

/// A region's closure, its lifetime erased: [`Pool::region`] does not
/// return before every piece that was claimed has finished.
type Task = *const (dyn Fn(usize) + Sync);

/// One region in flight, on its own cache lines.
#[repr(align(128))]
struct Slot {
    /// Taken by a caller for one region at a time.
    busy: AtomicBool,
    /// Bit `p` set: piece `p` is claimed (bits from `pieces` up are set when
    /// the region is posted). All ones: nothing to claim.
    claimed: AtomicU64,
    /// Pieces finished: the caller waits for it to reach `pieces`.
    done: AtomicU32,
    /// The caller sleeps on `done`: the last piece must wake it.
    caller_asleep: AtomicBool,
    panicked: AtomicBool,
    /// Written by the caller before `claimed` posts the region, and read by
    /// whoever claims a piece of it.
    task: UnsafeCell<(Task, usize)>,
}

// SAFETY: `task` is written only by the slot's owner while no piece can be
// claimed (before `claimed` is posted with Release), and read only after a
// successful claim (Acquire), until `done` says the piece is finished.
unsafe impl Sync for Slot {}

/// The pool's shared words, each group on cache lines of its own: a
/// caller writes some of them for every region while idle workers spin on
/// others, and a line both write and read would bounce between cores.
struct Pool {
    slots: [Slot; SLOTS],
    /// Bumped for every region posted: what idle workers watch and sleep on.
    posted: Line<AtomicU32>,
    /// Workers asleep on `posted` (read by callers as they post).
    sleepers: Line<AtomicU32>,
    /// Workers started (they run for the life of the process).
    started: Mutex<usize>,
    /// Index of the next slot a caller looks at first.
    next_slot: AtomicUsize,
    pacing: Pacing,
    /// Threads inside [`Workers::run`] now, on their own work.
    callers: Line<AtomicUsize>,
}

/// A value on cache lines of its own.
#[repr(align(128))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

static POOL: Pool = Pool {
    slots: [const { Slot::new() }; SLOTS],
    posted: Line(AtomicU32::new(0)),
    sleepers: Line(AtomicU32::new(0)),
    started: Mutex::new(0),
    next_slot: AtomicUsize::new(0),
    pacing: Pacing {
        misses: Line(AtomicU32::new(0)),
        solo_until: Line(AtomicU64::new(0)),
        solo_ns: AtomicU64::new(SOLO_MIN.as_nanos() as u64),
    },
    callers: Line(AtomicUsize::new(0)),
};

/// A caller inside [`Workers::run`]; `.0`: every core already has a caller
/// (the process runs as many models at once as it may use cores, each
/// calling from its own thread), so a worker could only help one caller by
/// taking a core from another: run alone.
struct Caller(bool);

impl Drop for Caller {
    fn drop(&mut self) {
        POOL.callers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Slot {
    const fn new() -> Slot {
        let nothing: *const (dyn Fn(usize) + Sync) = &|_: usize| {};
        Slot {
            busy: AtomicBool::new(false),
            claimed: AtomicU64::new(u64::MAX),
            done: AtomicU32::new(0),
            caller_asleep: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            task: UnsafeCell::new((nothing, 0)),
        }
    }

    /// Claims an unclaimed piece, `preferred` if it is free; None when none is.
    fn claim(&self, preferred: usize) -> Option<usize> {
        let mut claimed = self.claimed.load(Ordering::Relaxed);
        loop {
            if claimed == u64::MAX {
                return None;
            }
            let free = !claimed;
            let piece = if preferred < MAX_PIECES && free & (1 << preferred) != 0 {
                preferred
            } else {
                free.trailing_zeros() as usize
            };
            // A stale `claimed` (an earlier region of this slot) fails here,
            // or equals the current word, whose region's piece it then is.
            match self.claimed.compare_exchange_weak(
                claimed,
                claimed | (1 << piece),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(piece),
                Err(now) => claimed = now,
            }
        }
    }

    /// Runs claimed piece `piece`, then counts it done (after which the
    /// region may end: nothing of it is touched again).
    fn run_piece(&self, piece: usize) {
        // SAFETY: the claim (Acquire) saw the post that wrote `task`, which
        // stays until `done` counts this piece.
        let (task, pieces) = unsafe { *self.task.get() };
        // SAFETY: the closure outlives the region (see `Task`).
        let task = unsafe { &*task };
        if catch_unwind(AssertUnwindSafe(|| task(piece))).is_err() {
            self.panicked.store(true, Ordering::Relaxed);
        }
        let done = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        if done as usize == pieces && self.caller_asleep.load(Ordering::SeqCst) {
            atomic_wait::wake_one(&self.done);
        }
    }
}

impl Pool {
    /// Starts workers until there are `workers`.
    fn grow(&'static self, workers: usize) -> crate::Result<()> {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        while *started < workers {
            let index = *started + 1;
            // The worker says when it runs: what a thread's start allocates
            // is then over before the model's first call (whose pieces the
            // caller may otherwise take while the thread is still starting).
            let (running, has_started) = std::sync::mpsc::sync_channel(1);
            std::thread::Builder::new()
                .name(format!("rnn-cpu-{index}"))
                .spawn(move || {
                    let _ = running.send(());
                    self.work(index)
                })
                .map_err(|e| crate::Error::Unsupported(format!("cannot start CPU thread {index}: {e}")))?;
            let _ = has_started.recv();
            *started += 1;
        }
        Ok(())
    }

    /// Runs `task(p)` for `p` in `0..pieces` (2 ≤ pieces ≤ 64), the caller
    /// taking piece 0 and every piece no worker has claimed.
    fn region(&self, pieces: usize, task: &(dyn Fn(usize) + Sync)) {
        debug_assert!((2..=MAX_PIECES).contains(&pieces));
        let start = Instant::now();
        if self.pacing.solo(start) {
            return (0..pieces).for_each(task);
        }
        let Some(slot) = self.take_slot() else {
            return (0..pieces).for_each(task);
        };
        // SAFETY: only the lifetime is erased: this function does not return
        // (nor unwind) before every claimed piece is done.
        let erased: Task = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Task>(task) };
        // SAFETY: no piece of this slot can be claimed (`claimed` is all ones).
        unsafe { *slot.task.get() = (erased, pieces) };
        slot.done.store(0, Ordering::Relaxed);
        slot.panicked.store(false, Ordering::Relaxed);
        let unused = if pieces == MAX_PIECES {
            0
        } else {
            u64::MAX << pieces
        };
        slot.claimed.store(unused | 1, Ordering::Release);
        self.posted.fetch_add(1, Ordering::SeqCst);
        let asleep = self.sleepers.load(Ordering::SeqCst);
        for _ in 0..asleep.min(pieces as u32 - 1) {
            atomic_wait::wake_one(&*self.posted);
        }

        // The caller's pieces: 0, then any still unclaimed. The first panic
        // is the one it passes on.
        let mut panic = None;
        let mut ran = 0;
        let mut piece = Some(0);
        while let Some(p) = piece {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| task(p))) {
                panic.get_or_insert(payload);
            }
            ran += 1;
            piece = slot.claim(0);
        }
        // The caller's own time per piece (its post included).
        let own_piece = start.elapsed() / ran;
        let done = slot.done.fetch_add(ran, Ordering::AcqRel) + ran;
        if done as usize != pieces {
            wait_for_pieces(slot, pieces as u32, own_piece);
        }
        let panicked = slot.panicked.load(Ordering::Relaxed);
        slot.busy.store(false, Ordering::Release);
        self.pacing.record(start, own_piece * pieces as u32);
        if let Some(payload) = panic {
            resume_unwind(payload);
        }
        if panicked {
            panic!("a CPU worker thread panicked");
        }
    }

    /// Counts the calling thread among the callers until the guard drops.
    fn enter(&self) -> Caller {
        static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let cores = *CORES.get_or_init(crate::cpu::default_threads);
        Caller(self.callers.fetch_add(1, Ordering::Relaxed) + 1 >= cores)
    }

    /// A free slot, taken; None when every slot is in use.
    /// The calling thread takes the slot it took last time if it is free
    /// (so a stream of regions from one caller stays on one cache line the
    /// workers already look at first), else the next free one.
    fn take_slot(&self) -> Option<&Slot> {
        thread_local! {
            static LAST: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
        }
        let first = LAST
            .with(|last| last.get())
            .unwrap_or_else(|| self.next_slot.fetch_add(1, Ordering::Relaxed) % SLOTS);
        let taken = (0..SLOTS).map(|i| (first + i) % SLOTS).find(|&i| {
            let busy = &self.slots[i].busy;
            !busy.load(Ordering::Relaxed)
                && busy
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
        })?;
        LAST.with(|last| last.set(Some(taken)));
        Some(&self.slots[taken])
    }

    /// A worker's life: claim pieces of posted regions; when there are none,
    /// spin a while, then sleep until the next post.
    fn work(&self, index: usize) -> ! {
        let mut last = index % SLOTS;
        loop {
            let seen = self.posted.load(Ordering::SeqCst);
            if self.claim_and_run(index, &mut last) {
                continue;
            }
            let mut spin = Spin::new(IDLE_SPIN);
            while self.posted.load(Ordering::Relaxed) == seen
                && spin.keep_going()
                && !self.pacing.solo(spin.last)
            {}
            if self.posted.load(Ordering::SeqCst) == seen {
                self.sleepers.fetch_add(1, Ordering::SeqCst);
                atomic_wait::wait(&self.posted, seen);
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Claims and runs one piece of any posted region; false when there is none.
    /// Looks first where it last found work (`last`, updated).
    fn claim_and_run(&self, index: usize, last: &mut usize) -> bool {
        for i in 0..SLOTS {
            let at = (*last + i) % SLOTS;
            let slot = &self.slots[at];
            if let Some(piece) = slot.claim(index) {
                *last = at;
                slot.run_piece(piece);
                return true;
            }
        }
        false
    }
}

/// Whether helpers pay. A region whose wall time was not at least
/// [`MIN_GAIN`] below its caller's estimate of running every piece alone is
/// a miss: its helpers were descheduled before they claimed a piece, or
/// while they ran one (or were asleep, and woke too late). When most recent
/// regions miss, the machine has more runnable threads than cores, and
/// helping only moves time between threads: every region then runs on its
/// caller alone (and idle workers sleep) for a while — [`SOLO_MIN`], then
/// twice as long each time it happens again, up to [`SOLO_MAX`], and back
/// to the minimum once regions are helped again. The regions of the first
/// [`WAKE_GRACE`] after a solo period (or the pool's start) are not
/// counted: the workers are waking up.
struct Pacing {
    /// The share of misses over the last ~16 regions, a moving average
    /// scaled to 2^16 (written by callers after every region).
    misses: Line<AtomicU32>,
    /// While the clock (ns since [`epoch`]) is below this, regions run solo
    /// (read by spinning workers).
    solo_until: Line<AtomicU64>,
    /// How long the next solo period lasts.
    solo_ns: AtomicU64,
}

const ONE: u32 = 1 << 16;

/// The average misses start from after a solo period.
const AFTER_SOLO: u32 = ONE / 4;

impl Pacing {
    /// Whether regions started at `now` run on their caller alone.
    fn solo(&self, now: Instant) -> bool {
        nanos(now) < self.solo_until.load(Ordering::Relaxed)
    }

    /// Counts a region begun at `start` that the caller alone would have
    /// run in about `alone`. A region weighs by that length (one to eight
    /// [`REGION_UNIT`]s: not by its wall time, which one stall of the VM
    /// makes long), so that the average covers about the last 16 units of
    /// work as much as the last 16 regions: a few missed long regions turn
    /// the pool solo as surely as many short ones, and a rare stall of a
    /// short one does not.
    fn record(&self, start: Instant, alone: Duration) {
        if nanos(start) < self.solo_until.load(Ordering::Relaxed) + WAKE_GRACE.as_nanos() as u64 {
            return;
        }
        let now = Instant::now();
        let wall = now - start;
        let miss = wall.as_secs_f64() > (1.0 - MIN_GAIN) * alone.as_secs_f64();
        let weight = (alone.as_nanos() / REGION_UNIT.as_nanos()).clamp(1, 8) as u32;
        let old = self.misses.load(Ordering::Relaxed);
        let new = old - old / 16 * weight + if miss { ONE / 16 * weight } else { 0 };
        self.misses.store(new, Ordering::Relaxed);
        if new > ONE / 2 {
            let solo = self.solo_ns.load(Ordering::Relaxed);
            self.solo_until.store(nanos(now) + solo, Ordering::Relaxed);
            self.solo_ns
                .store((2 * solo).min(SOLO_MAX.as_nanos() as u64), Ordering::Relaxed);
            // A probe after the solo period starts in doubt: a few misses
            // end it, and only many hits reset the period to its minimum.
            self.misses.store(AFTER_SOLO, Ordering::Relaxed);
        } else if !miss && new < ONE / 8 {
            // Back to the shortest solo period only after helped regions
            // for as long as the last solo period: a lucky probe (the
            // helper happened to have a core) is not a free machine.
            let solo = self.solo_ns.load(Ordering::Relaxed);
            if nanos(now) > self.solo_until.load(Ordering::Relaxed) + solo {
                self.solo_ns.store(SOLO_MIN.as_nanos() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// After a solo period the workers are asleep: the regions of this long
/// after it (their wake-up) are not counted.
const WAKE_GRACE: Duration = Duration::from_millis(1);

/// The time a region of the shortest kind takes (a step of a small layer):
/// the unit [`Pacing`] weighs regions in.
const REGION_UNIT: Duration = Duration::from_micros(10);

/// Nanoseconds from the first time the pool looked at the clock to `t`.
fn nanos(t: Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    t.saturating_duration_since(*EPOCH.get_or_init(Instant::now))
        .as_nanos() as u64
}

/// The caller's wait for pieces that workers claimed: spin for about twice
/// its own piece's time (a claimed piece that takes much longer has lost
/// its core), then sleep until the last piece wakes it.
fn wait_for_pieces(slot: &Slot, pieces: u32, own_piece: Duration) {
    let mut spin = Spin::new((2 * own_piece).max(MIN_WAIT_SPIN));
    while slot.done.load(Ordering::Acquire) != pieces {
        if !spin.keep_going() {
            slot.caller_asleep.store(true, Ordering::SeqCst);
            loop {
                let done = slot.done.load(Ordering::SeqCst);
                if done == pieces {
                    break;
                }
                atomic_wait::wait(&slot.done, done);
            }
            slot.caller_asleep.store(false, Ordering::Relaxed);
            return;
        }
    }
}

/// Spinning that stops when it stops paying: after its budget, or as soon as
/// the spinning thread notices that it was descheduled (the clock jumped
/// between two looks), which means more threads want to run than there are
/// cores. How it spins costs the *other* threads: on the 2-vCPU VMs this was
/// measured on, a `sched_yield` loop and a tight PAUSE loop (which the
/// hypervisor's pause-loop exiting turns into VM exits) each slowed the busy
/// thread by half, so it puts ~200 cycles of arithmetic between PAUSEs.
pub struct Spin {
    start: Instant,
    /// When it last looked at the clock.
    pub last: Instant,
    budget: Duration,
    spins: u32,
}

impl Spin {
    pub fn new(budget: Duration) -> Spin {
        let now = Instant::now();
        Spin {
            start: now,
            last: now,
            budget,
            spins: 0,
        }
    }

    /// Waits a little (a few hundred cycles); false when the thread should
    /// sleep instead.
    pub fn keep_going(&mut self) -> bool {
        self.spins = self.spins.wrapping_add(1);
        if self.spins.is_multiple_of(16) {
            let now = Instant::now();
            if now - self.last > PREEMPTED || now - self.start > self.budget {
                return false;
            }
            self.last = now;
        }
        // A dependent chain the compiler cannot drop: ~200 cycles.
        let mut x = std::hint::black_box(self.spins);
        for _ in 0..64 {
            x = x.wrapping_mul(0x9E37_79B9).rotate_left(5);
        }
        std::hint::black_box(x);
        std::hint::spin_loop();
        true
    }
}

/// A raw pointer that may cross threads: the code that shares one makes
/// sure the threads touch disjoint elements (or only read).
#[derive(Clone, Copy, Debug)]
pub struct SharedPtr(pub *mut f32);

// SAFETY: a SharedPtr is only dereferenced where its users partition the
// elements between threads (each is written by one thread, and read after
// the region that wrote it has ended), as each use documents.
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
    fn run_covers_every_task_once() {
        for threads in [1, 2, 3, 4] {
            let workers = Workers::new(threads).unwrap();
            for count in [0, 1, 2, 5, 37, 200] {
                let hits: Vec<AtomicUsize> = (0..count).map(|_| AtomicUsize::new(0)).collect();
                workers.run(hits.len(), |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn a_region_sees_what_came_before_and_its_caller_sees_every_piece() {
        let workers = Workers::new(3).unwrap();
        let mut values = vec![0u64; 3000];
        let len = values.len();
        for round in 1..=200u64 {
            let shared = SharedU64(values.as_mut_ptr());
            workers.split(|p, n| {
                for i in crate::cpu::forward::share(len, p, n) {
                    // SAFETY: pieces write disjoint elements of `values`.
                    unsafe { *shared.at(i) += round };
                }
            });
            let expected: u64 = (1..=round).sum();
            assert!(values.iter().all(|&v| v == expected), "round {round}");
        }
    }

    #[derive(Clone, Copy)]
    struct SharedU64(*mut u64);
    // SAFETY: pieces write disjoint elements.
    unsafe impl Sync for SharedU64 {}

    impl SharedU64 {
        fn at(&self, i: usize) -> *mut u64 {
            // SAFETY: the caller stays within the vector.
            unsafe { self.0.add(i) }
        }
    }

    #[test]
    fn regions_from_many_callers_at_once_all_finish() {
        let workers = Workers::new(2).unwrap();
        let total = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..2 * SLOTS {
                scope.spawn(|| {
                    for _ in 0..100 {
                        workers.run(4, |_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 2 * SLOTS * 100 * 2 * 2);
    }

    #[test]
    fn a_panicking_piece_is_the_callers_panic_and_the_pool_lives_on() {
        let workers = Workers::new(2).unwrap();
        for _ in 0..20 {
            let result = catch_unwind(AssertUnwindSafe(|| {
                workers.run(2, |i| {
                    if i == 1 {
                        panic!("piece 1");
                    }
                })
            }));
            assert!(result.is_err());
        }
        let hits = AtomicUsize::new(0);
        workers.run(2, |_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }
}
