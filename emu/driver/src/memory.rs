//! Device memory: host memory carved from one reserved address range, so
//! that a kernel's stray access is found, as the hardware's MMU finds it.
//!
//! Every allocation ends at the end of its own pages and is followed by an
//! unmapped guard page; addresses are never reused. A kernel that touches
//! the guard, or any freed or never-allocated address in the range, takes a
//! SIGSEGV there: the handler counts the fault, maps that page so the thread
//! can finish, and the launch's context is poisoned with
//! `CUDA_ERROR_ILLEGAL_ADDRESS`. The bytes between the page start and the
//! allocation, and the alignment tail after it, are filled with 0xFF and
//! checked after every launch, so writes there are found too (reads of them
//! give NaN). Fresh allocations are 0xFF bytes: NaN, never zeros.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

const PAGE: usize = 4096;
/// cuMemAlloc's alignment.
pub const ALIGN: usize = 256;
pub const FILL: u8 = 0xFF;

/// The reserved range; the fault handler reads it without locks.
static RANGE_START: AtomicUsize = AtomicUsize::new(0);
static RANGE_END: AtomicUsize = AtomicUsize::new(0);
/// Faults taken in the range since the last `take_faults`, and the first address.
static FAULTS: AtomicUsize = AtomicUsize::new(0);
static FIRST_FAULT: AtomicUsize = AtomicUsize::new(0);
static PREVIOUS_HANDLER: OnceLock<libc::sigaction> = OnceLock::new();

#[derive(Clone, Copy, Debug)]
pub struct Allocation {
    pub ptr: usize,
    pub size: usize,
    map_start: usize,
    map_len: usize,
}

impl Allocation {
    fn slack(&self) -> [(usize, usize); 2] {
        let tail = self.ptr + self.size;
        [(self.map_start, self.ptr), (tail, self.map_start + self.map_len)]
    }
}

/// All device memory of the process.
pub struct Arena {
    next: usize,
    end: usize,
    live: BTreeMap<usize, Allocation>,
    pub bytes_live: usize,
}

impl Arena {
    /// Reserves the address range (no memory is committed) and installs
    /// the fault handler.
    pub fn new() -> Result<Arena, String> {
        let mut length: usize = 1 << 40;
        let start = loop {
            // SAFETY: a fresh private reservation, inaccessible until mapped.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    length,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                break p as usize;
            }
            if length <= 1 << 32 {
                return Err("could not reserve address space for device memory".into());
            }
            length /= 2;
        };
        RANGE_START.store(start, Ordering::SeqCst);
        RANGE_END.store(start + length, Ordering::SeqCst);
        install_fault_handler();
        Ok(Arena {
            // A guard page before the first allocation too.
            next: start + PAGE,
            end: start + length,
            live: BTreeMap::new(),
            bytes_live: 0,
        })
    }

    /// A fresh allocation of `size` bytes (> 0), filled with 0xFF.
    pub fn allocate(&mut self, size: usize) -> Option<usize> {
        let rounded = size.checked_next_multiple_of(ALIGN)?;
        let map_len = rounded.checked_next_multiple_of(PAGE)?;
        let map_start = self.next;
        if map_start.checked_add(map_len + PAGE)? > self.end {
            return None;
        }
        // SAFETY: inside our reservation, not in use.
        let ok =
            unsafe { libc::mprotect(map_start as *mut _, map_len, libc::PROT_READ | libc::PROT_WRITE) } == 0;
        if !ok {
            return None;
        }
        // SAFETY: just mapped read-write.
        unsafe { std::ptr::write_bytes(map_start as *mut u8, FILL, map_len) };
        let ptr = map_start + map_len - rounded;
        self.next = map_start + map_len + PAGE;
        self.live.insert(
            ptr,
            Allocation {
                ptr,
                size,
                map_start,
                map_len,
            },
        );
        self.bytes_live += size;
        Some(ptr)
    }

    /// Frees the allocation that starts at `ptr`; its addresses stay
    /// unmapped, so a later use faults.
    pub fn free(&mut self, ptr: usize) -> bool {
        let Some(a) = self.live.remove(&ptr) else {
            return false;
        };
        self.bytes_live -= a.size;
        unmap(a.map_start, a.map_len);
        true
    }

    /// Frees everything (a context reset), and unmaps pages faults mapped.
    pub fn reset(&mut self) {
        for a in std::mem::take(&mut self.live).into_values() {
            unmap(a.map_start, a.map_len);
        }
        self.bytes_live = 0;
        let start = RANGE_START.load(Ordering::SeqCst);
        unmap(start, self.next - start);
    }

    /// The allocation holding all of `[ptr, ptr + len)`, if one does.
    pub fn find(&self, ptr: usize, len: usize) -> Option<Allocation> {
        let (_, a) = self.live.range(..=ptr).next_back()?;
        (ptr.checked_add(len)? <= a.ptr + a.size).then_some(*a)
    }

    /// An allocation whose padding (outside its bytes, inside its pages)
    /// was written: where, if any.
    pub fn find_padding_write(&self) -> Option<usize> {
        self.live.values().find_map(|a| {
            a.slack().iter().find_map(|&(from, to)| {
                // SAFETY: mapped pages of a live allocation.
                let bytes = unsafe { std::slice::from_raw_parts(from as *const u8, to - from) };
                bytes.iter().position(|&b| b != FILL).map(|i| from + i)
            })
        })
    }
}

fn unmap(start: usize, len: usize) {
    // SAFETY: inside our reservation; nothing of ours refers to it any more.
    unsafe {
        libc::mprotect(start as *mut _, len, libc::PROT_NONE);
        libc::madvise(start as *mut _, len, libc::MADV_DONTNEED);
    }
}

/// Faults taken since the last call: (count, first address).
pub fn take_faults() -> Option<(usize, usize)> {
    let count = FAULTS.swap(0, Ordering::SeqCst);
    let first = FIRST_FAULT.swap(0, Ordering::SeqCst);
    (count > 0).then_some((count, first))
}

fn install_fault_handler() {
    PREVIOUS_HANDLER.get_or_init(|| {
        // SAFETY: plain sigaction calls with zeroed, then filled, structs.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fault as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGSEGV, &action, &mut previous);
            previous
        }
    });
}

/// SIGSEGV: inside the device range, a device fault (count it, map the
/// page, let the thread go on); anywhere else, whoever handled it before.
extern "C" fn on_fault(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo to an SA_SIGINFO handler.
    let address = unsafe { (*info).si_addr() } as usize;
    let (start, end) = (
        RANGE_START.load(Ordering::SeqCst),
        RANGE_END.load(Ordering::SeqCst),
    );
    if (start..end).contains(&address) {
        FAULTS.fetch_add(1, Ordering::SeqCst);
        let _ = FIRST_FAULT.compare_exchange(0, address, Ordering::SeqCst, Ordering::SeqCst);
        let page = address & !(PAGE - 1);
        // SAFETY: a page of our reservation; mprotect is a plain syscall.
        unsafe { libc::mprotect(page as *mut _, PAGE, libc::PROT_READ | libc::PROT_WRITE) };
        return;
    }
    let previous = PREVIOUS_HANDLER.get().copied();
    // SAFETY: hands the signal on as the previous handler expects it, or
    // restores the default action so the faulting access crashes.
    unsafe {
        match previous {
            Some(p) if p.sa_sigaction != libc::SIG_DFL && p.sa_sigaction != libc::SIG_IGN => {
                if p.sa_flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(p.sa_sigaction);
                    f(signal, info, context);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(p.sa_sigaction);
                    f(signal);
                }
            }
            _ => {
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
            }
        }
    }
}
