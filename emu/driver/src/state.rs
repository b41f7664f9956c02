//! The driver's state: one device (posing as the chip `RNN_EMU_DEVICE`
//! names), its primary context, and the handles the API gives out —
//! modules, functions, streams, events — each checked on every use.

use crate::chip::{Chip, DEFAULT_SHARED_PER_BLOCK};
use crate::cubin::KernelImage;
use crate::launch::Geometry;
use crate::memory::Arena;
use cudarc::driver::sys::CUresult;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

pub type Outcome<T = ()> = Result<T, CUresult>;

/// The primary context's handle (the stand-in has one device).
pub const PRIMARY_CONTEXT: usize = 0xC0_0000;
/// Stream handles that need no creating: the legacy default stream (0 and
/// CU_STREAM_LEGACY) and the per-thread default stream.
pub const BUILT_IN_STREAMS: [usize; 3] = [0, 1, 2];
/// The legacy default stream's handles (0 and CU_STREAM_LEGACY).
pub const LEGACY_STREAMS: [usize; 2] = [0, 1];

#[derive(Clone)]
pub struct Function {
    pub module: usize,
    pub image: KernelImage,
    pub max_dynamic_shared: i32,
    pub carveout: i32,
}

impl Function {
    pub fn new(module: usize, image: KernelImage) -> Function {
        let max_dynamic_shared = DEFAULT_SHARED_PER_BLOCK - image.static_shared;
        Function {
            module,
            image,
            max_dynamic_shared,
            carveout: -1,
        }
    }

    /// What `CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK` reports: the launch
    /// bounds, 1,024, and what the registers allow, whichever is least.
    pub fn max_threads(&self, chip: &Chip) -> i32 {
        let by_bounds = self
            .image
            .max_threads
            .unwrap_or(crate::chip::MAX_THREADS_PER_BLOCK);
        let by_registers =
            chip.registers_per_sm / crate::chip::registers_per_warp(self.image.registers) * crate::chip::WARP;
        by_bounds
            .min(crate::chip::MAX_THREADS_PER_BLOCK)
            .min(by_registers)
    }
}

pub struct Event {
    pub timing: bool,
    pub recorded: Option<Instant>,
    /// The capture (its id) this event was last recorded in, if it was
    /// recorded on a stream being captured: such an event belongs to that
    /// capture's graph, and the driver refuses to query it or wait on it
    /// from outside.
    pub captured_in: Option<usize>,
}

/// A stream operation, as a capture records it and a graph replays it.
#[derive(Clone)]
pub enum Op {
    /// A kernel with a copy of its parameter struct, taken at capture.
    Launch {
        function: usize,
        geometry: Geometry,
        params: Vec<u8>,
    },
    Fill {
        dst: u64,
        pattern: Vec<u8>,
        count: usize,
    },
    Copy {
        dst: u64,
        src: u64,
        bytes: usize,
    },
    Record {
        event: usize,
    },
}

/// A stream being captured into a graph.
pub struct Capture {
    /// Unique among the context's captures, ended ones included.
    pub id: usize,
    /// CU_STREAM_CAPTURE_MODE_GLOBAL (0), THREAD_LOCAL (1) or RELAXED (2).
    pub mode: u32,
    /// Whether the captured stream synchronises with the legacy default
    /// stream (it was created without CU_STREAM_NON_BLOCKING).
    pub blocking: bool,
    pub thread: std::thread::ThreadId,
    pub ops: Vec<Op>,
    /// An operation the capture cannot hold was attempted: ending it fails.
    pub invalidated: bool,
}

/// The live primary context and everything made in it.
pub struct Context {
    pub retains: u32,
    pub modules: HashMap<usize, Vec<usize>>,
    pub functions: HashMap<usize, Function>,
    /// The created streams, each with whether it is blocking (synchronises
    /// with the legacy default stream).
    pub streams: HashMap<usize, bool>,
    pub events: HashMap<usize, Event>,
    pub captures: HashMap<usize, Capture>,
    pub graphs: HashMap<usize, Vec<Op>>,
    pub executables: HashMap<usize, Vec<Op>>,
    /// A sticky error (an illegal address): every later call returns it,
    /// until the context is reset, as on hardware.
    pub poisoned: Option<CUresult>,
}

impl Context {
    fn new() -> Context {
        Context {
            retains: 0,
            modules: HashMap::new(),
            functions: HashMap::new(),
            streams: HashMap::new(),
            events: HashMap::new(),
            captures: HashMap::new(),
            graphs: HashMap::new(),
            executables: HashMap::new(),
            poisoned: None,
        }
    }

    /// The capture `stream` is in, if any.
    pub fn capture(&mut self, stream: usize) -> Option<&mut Capture> {
        self.captures.get_mut(&stream)
    }

    /// A call that would synchronise with the device, or allocate, while a
    /// capture that forbids it is under way: the capture is invalidated and
    /// the call refused, as the driver does.
    pub fn refuse_during_capture(&mut self, what: &str) -> Outcome {
        let me = std::thread::current().id();
        let forbidding = self
            .captures
            .values_mut()
            .find(|c| c.mode == 0 || (c.mode == 1 && c.thread == me));
        match forbidding {
            Some(capture) => {
                capture.invalidated = true;
                crate::refuse(&format!("{what} while a stream is being captured"));
                Err(CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
            }
            None => Ok(()),
        }
    }

    /// An operation a capture of `stream` cannot hold: if it is capturing,
    /// the capture is invalidated and the call refused.
    pub fn refuse_in_capture(&mut self, stream: usize, what: &str) -> Outcome {
        match self.capture(stream) {
            Some(capture) => {
                capture.invalidated = true;
                crate::refuse(&format!("{what} cannot be captured into a graph here"));
                Err(CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
            }
            None => Ok(()),
        }
    }

    pub fn check_stream(&self, stream: usize) -> Outcome {
        if BUILT_IN_STREAMS.contains(&stream) || self.streams.contains_key(&stream) {
            Ok(())
        } else {
            Err(CUresult::CUDA_ERROR_INVALID_HANDLE)
        }
    }

    /// Checks a stream that work is about to be issued on, or waited for.
    /// The legacy default stream synchronises with every blocking stream,
    /// so using it while one is being captured would make the capture
    /// depend on work outside it: the driver invalidates the capture and
    /// refuses the call.
    pub fn use_stream(&mut self, stream: usize, what: &str) -> Outcome {
        self.check_stream(stream)?;
        if !LEGACY_STREAMS.contains(&stream) {
            return Ok(());
        }
        match self.captures.values_mut().find(|c| c.blocking) {
            Some(capture) => {
                capture.invalidated = true;
                crate::refuse(&format!(
                    "{what} on the legacy default stream while a blocking stream is being captured"
                ));
                Err(CUresult::CUDA_ERROR_STREAM_CAPTURE_IMPLICIT)
            }
            None => Ok(()),
        }
    }

    /// The active capture whose id is `id`, if it has not ended.
    pub fn capture_by_id(&mut self, id: usize) -> Option<&mut Capture> {
        self.captures.values_mut().find(|c| c.id == id)
    }
}

pub struct Driver {
    pub chip: Chip,
    pub arena: Arena,
    /// `Some` while the primary context is retained.
    pub context: Option<Context>,
    next_handle: usize,
}

impl Driver {
    pub fn handle(&mut self) -> usize {
        self.next_handle += 0x10;
        self.next_handle
    }

    /// The context, if it is current on this thread, alive and not poisoned.
    pub fn current(&mut self) -> Outcome<&mut Context> {
        if CURRENT.with(Cell::get) != PRIMARY_CONTEXT {
            return Err(CUresult::CUDA_ERROR_INVALID_CONTEXT);
        }
        self.live()
    }

    /// The context, current or not, if it is alive and not poisoned.
    pub fn live(&mut self) -> Outcome<&mut Context> {
        let context = self
            .context
            .as_mut()
            .ok_or(CUresult::CUDA_ERROR_INVALID_CONTEXT)?;
        match context.poisoned {
            Some(error) => Err(error),
            None => Ok(context),
        }
    }

    pub fn retain(&mut self) {
        self.context.get_or_insert_with(Context::new).retains += 1;
    }

    /// Drops one retain; the last one destroys the context and its memory.
    pub fn release(&mut self) -> Outcome {
        let context = self
            .context
            .as_mut()
            .ok_or(CUresult::CUDA_ERROR_INVALID_CONTEXT)?;
        context.retains -= 1;
        if context.retains == 0 {
            self.reset();
        }
        Ok(())
    }

    /// Destroys the context's objects and memory, and its sticky error.
    pub fn reset(&mut self) {
        self.arena.reset();
        if let Some(context) = self.context.as_mut() {
            let retains = context.retains;
            *context = Context::new();
            context.retains = retains;
            if retains == 0 {
                self.context = None;
            }
        }
    }
}

thread_local! {
    /// The context current on this thread (0: none).
    pub static CURRENT: Cell<usize> = const { Cell::new(0) };
}

static DRIVER: Mutex<Option<Driver>> = Mutex::new(None);

/// `cuInit`: the device and memory, once.
pub fn init() -> Outcome {
    let mut guard = lock();
    if guard.is_none() {
        let chip = Chip::from_env().map_err(|why| {
            crate::refuse(&why);
            CUresult::CUDA_ERROR_NO_DEVICE
        })?;
        let arena = Arena::new().map_err(|why| {
            crate::refuse(&why);
            CUresult::CUDA_ERROR_OUT_OF_MEMORY
        })?;
        *guard = Some(Driver {
            chip,
            arena,
            context: None,
            next_handle: 0x1000,
        });
    }
    Ok(())
}

pub fn lock() -> MutexGuard<'static, Option<Driver>> {
    DRIVER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on the initialised driver (`CUDA_ERROR_NOT_INITIALIZED` before `cuInit`).
pub fn with<T>(f: impl FnOnce(&mut Driver) -> Outcome<T>) -> Outcome<T> {
    let mut guard = lock();
    let driver = guard.as_mut().ok_or(CUresult::CUDA_ERROR_NOT_INITIALIZED)?;
    f(driver)
}
