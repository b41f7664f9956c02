//! Regions on a host program's OpenMP team instead of the crate's pool.
//!
//! A process that already runs an OpenMP pool (PyTorch's CPU operators run
//! on libgomp) and calls this crate between its operators has two pools on
//! one set of cores. libgomp's idle threads spin for milliseconds after
//! each of its regions (`GOMP_SPINCOUNT`, 300,000 pauses by default), so
//! the crate's helper finds no free core: measured on 2 vCPUs, an icu
//! training step through `rnn_kernels.torch` at two threads took 8.4 ms
//! against 3.4 ms for the same calls with nothing else in the process.
//! Scoped with [`OpenMp::scope`], the calling thread's regions run on the
//! host's team instead: the very threads that were spinning take the pieces.
//!
//! Pieces are claimed from a counter, so a team thread that arrives late
//! finds them done, and which thread runs a piece never changes a number.
//! Regions posted from inside a piece run on their poster alone (OpenMP
//! would not nest them either).

use crate::error::{Error, Result};
use std::cell::Cell;
#[cfg(unix)]
use std::ffi::CString;
use std::ffi::{c_uint, c_void};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// `GOMP_parallel(fn, data, num_threads, flags)`: GCC's entry point for a
/// parallel region (libgomp since GCC 4.9; LLVM's and Intel's runtimes
/// export it too). It returns when every team thread has finished `fn`.
type GompParallel = unsafe extern "C" fn(unsafe extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);

/// An OpenMP runtime that the process has loaded.
pub struct OpenMp {
    path: String,
    parallel: GompParallel,
}

thread_local! {
    /// The runtime this thread's regions go to ([`OpenMp::scope`]).
    static SCOPED: Cell<Option<&'static OpenMp>> = const { Cell::new(None) };
    /// Set while this thread runs a piece of a region on a team.
    static IN_PIECE: Cell<bool> = const { Cell::new(false) };
}

impl OpenMp {
    /// The runtime at `path` (as the process loaded it: `/proc/self/maps`
    /// names it), found among the loaded libraries, never loaded anew: its
    /// team is only worth joining if the process already runs one.
    pub fn loaded(path: &str) -> Result<&'static OpenMp> {
        // Runtimes found so far, for the life of the process (a handful at most).
        static FOUND: Mutex<Vec<&'static OpenMp>> = Mutex::new(Vec::new());
        let mut found = FOUND.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&known) = found.iter().find(|r| r.path == path) {
            return Ok(known);
        }
        let runtime: &'static OpenMp = Box::leak(Box::new(OpenMp {
            path: path.to_owned(),
            parallel: gomp_parallel(path)?,
        }));
        found.push(runtime);
        Ok(runtime)
    }

    /// The library's path, as given to [`OpenMp::loaded`].
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Runs `f` with the regions this thread posts (the crate's CPU calls
    /// made inside it) on this runtime's team.
    pub fn scope<R>(&'static self, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<&'static OpenMp>);
        impl Drop for Restore {
            fn drop(&mut self) {
                SCOPED.with(|s| s.set(self.0));
            }
        }
        let _restore = Restore(SCOPED.with(|s| s.replace(Some(self))));
        f()
    }

    /// Runs `task(p)` for `p` in `0..pieces` on a team of `pieces` threads,
    /// the caller among them; returns when all are done, passing on the
    /// first panic.
    pub(super) fn region(&self, pieces: usize, task: &(dyn Fn(usize) + Sync)) {
        struct Region<'a> {
            task: &'a (dyn Fn(usize) + Sync),
            pieces: usize,
            next: AtomicUsize,
            panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
        }
        /// Every team thread's body: claim pieces until none is left.
        unsafe extern "C" fn body(data: *mut c_void) {
            // SAFETY: `data` is the `Region` below, alive until GOMP_parallel returns.
            let region = unsafe { &*(data as *const Region) };
            let outer = IN_PIECE.with(|f| f.replace(true));
            loop {
                let piece = region.next.fetch_add(1, Ordering::Relaxed);
                if piece >= region.pieces {
                    break;
                }
                // No unwinding through the runtime's C frames.
                if let Err(payload) = catch_unwind(AssertUnwindSafe(|| (region.task)(piece))) {
                    let mut first = region.panic.lock().unwrap_or_else(|e| e.into_inner());
                    first.get_or_insert(payload);
                }
            }
            IN_PIECE.with(|f| f.set(outer));
        }
        let region = Region {
            task,
            pieces,
            next: AtomicUsize::new(0),
            panic: Mutex::new(None),
        };
        // SAFETY: `body` never unwinds and reads `region` only until it
        // returns; GOMP_parallel returns after every thread's `body` has.
        unsafe {
            (self.parallel)(body, &region as *const Region as *mut c_void, pieces as c_uint, 0);
        }
        if let Some(payload) = region.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
            resume_unwind(payload);
        }
    }
}

/// `GOMP_parallel` of the library at `path`, if the process has loaded it.
#[cfg(unix)]
fn gomp_parallel(path: &str) -> Result<GompParallel> {
    let invalid = |why: &str| Error::invalid("openmp", format!("{path}: {why}"));
    let name = CString::new(path).map_err(|_| invalid("a path with a NUL byte"))?;
    // SAFETY: RTLD_NOLOAD only looks the library up; the handle is never
    // closed, so the library (already loaded) and its symbol stay.
    unsafe {
        let handle = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return Err(invalid("not a library this process has loaded"));
        }
        let symbol = libc::dlsym(handle, c"GOMP_parallel".as_ptr());
        if symbol.is_null() {
            return Err(invalid("has no GOMP_parallel: not an OpenMP runtime"));
        }
        Ok(std::mem::transmute::<*mut c_void, GompParallel>(symbol))
    }
}

#[cfg(not(unix))]
fn gomp_parallel(path: &str) -> Result<GompParallel> {
    Err(Error::Unsupported(format!(
        "openmp: {path}: joining a loaded OpenMP runtime needs dlopen (Unix)"
    )))
}

/// Where a region posted by this thread runs.
pub(super) enum Placement {
    /// On the crate's pool.
    Pool,
    /// On this thread alone: it is running a piece of a team's region.
    Alone,
    /// On an OpenMP runtime's team.
    Team(&'static OpenMp),
}

pub(super) fn placement() -> Placement {
    if IN_PIECE.with(Cell::get) {
        return Placement::Alone;
    }
    SCOPED.with(Cell::get).map_or(Placement::Pool, Placement::Team)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::cpu::threads::Workers;
    use std::collections::HashSet;
    use std::thread::ThreadId;

    /// One test at a time: two callers at once on two cores run their
    /// regions alone (the pool's crowding rule), and no team would help.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    /// The system's libgomp, loaded as a host program would have; None
    /// (the test says so and passes) where the machine has none.
    fn system_libgomp() -> Option<&'static OpenMp> {
        // SAFETY: loading a shared library that has no constructors with
        // requirements on us; it stays loaded for the process.
        let handle = unsafe { libc::dlopen(c"libgomp.so.1".as_ptr(), libc::RTLD_NOW) };
        if handle.is_null() {
            eprintln!("no libgomp.so.1 on this machine: the OpenMP team is not tested");
            return None;
        }
        Some(OpenMp::loaded("libgomp.so.1").expect("libgomp.so.1 has GOMP_parallel"))
    }

    #[test]
    fn refuses_what_is_not_a_loaded_runtime() {
        let err = OpenMp::loaded("/nonexistent/libgomp.so.1").err().unwrap();
        assert!(
            err.to_string().contains("not a library this process has loaded"),
            "{err}"
        );
        // libc is loaded, and is no OpenMP runtime.
        let err = OpenMp::loaded("libc.so.6").err().unwrap();
        assert!(err.to_string().contains("no GOMP_parallel"), "{err}");
    }

    #[test]
    fn regions_run_every_piece_once_on_the_team() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let Some(runtime) = system_libgomp() else { return };
        let workers = Workers::new(2).unwrap();
        let caller = std::thread::current().id();
        let mut helpers: HashSet<ThreadId> = HashSet::new();
        runtime.scope(|| {
            for round in 0..200 {
                let hits: Vec<AtomicUsize> = (0..7).map(|_| AtomicUsize::new(0)).collect();
                let threads = Mutex::new(HashSet::new());
                let task = |i: usize| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                    threads.lock().unwrap().insert(std::thread::current().id());
                    // Long enough for the team's other thread to take a piece.
                    let t = std::time::Instant::now();
                    while t.elapsed() < std::time::Duration::from_micros(50) {}
                };
                // Through the pool's entry point, and (so that other tests'
                // callers, which make the pool run regions alone, cannot
                // hide the team) straight on the team.
                match round % 2 {
                    0 => workers.run(hits.len(), task),
                    _ => runtime.region(hits.len(), &task),
                }
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                helpers.extend(threads.into_inner().unwrap());
            }
        });
        helpers.remove(&caller);
        assert!(!helpers.is_empty(), "no team thread ever ran a piece");
        // Out of the scope, regions are the pool's again.
        assert!(matches!(placement(), Placement::Pool));
    }

    #[test]
    fn panics_and_nested_regions() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let Some(runtime) = system_libgomp() else { return };
        let workers = Workers::new(2).unwrap();
        runtime.scope(|| {
            let caught = catch_unwind(AssertUnwindSafe(|| {
                workers.run(4, |i| assert!(i != 2, "piece 2 fails"));
            }));
            let payload = caught.expect_err("the piece's panic reaches the caller");
            assert_eq!(payload.downcast_ref::<&str>(), Some(&"piece 2 fails"));
            // A region inside a piece runs on that piece's thread.
            let inner = AtomicUsize::new(0);
            workers.run(2, |_| {
                let me = std::thread::current().id();
                workers.run(3, |_| {
                    assert_eq!(std::thread::current().id(), me);
                    inner.fetch_add(1, Ordering::Relaxed);
                });
            });
            assert_eq!(inner.load(Ordering::Relaxed), 6);
        });
    }
}
