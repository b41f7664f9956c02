//! A record of the driver calls a thread makes, for tests that count what
//! a host path costs (a steady-state `step_device` should be its launches
//! and nothing else). Per thread, so that tests running side by side do not
//! see each other's calls. Reached from a test through `dlsym`, since the
//! process loads the stand-in as its `libcuda.so`.

use std::cell::RefCell;
use std::ffi::{c_char, c_int};

thread_local! {
    /// `Some` while this thread records.
    static RECORD: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Notes one entry point's call, if this thread records.
pub(crate) fn note(name: &str) {
    RECORD.with(|r| {
        if let Some(calls) = r.borrow_mut().as_mut() {
            calls.push(name.to_string());
        }
    });
}

/// Starts recording this thread's calls afresh (`on` ≠ 0) or stops (0).
#[no_mangle]
pub extern "C" fn rnnkStandInRecordCalls(on: c_int) {
    RECORD.with(|r| *r.borrow_mut() = (on != 0).then(Vec::new));
}

/// The calls recorded on this thread so far, one name per line, written to
/// `buf` (`capacity` bytes, NUL-terminated) when they fit. Returns the bytes
/// the whole record needs, NUL included: call again with that much room
/// when it is more than `capacity`.
///
/// # Safety
/// `buf` is null or points to `capacity` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rnnkStandInRecordedCalls(buf: *mut c_char, capacity: usize) -> usize {
    let text = RECORD.with(|r| r.borrow().as_ref().map(|c| c.join("\n")).unwrap_or_default());
    let needed = text.len() + 1;
    if !buf.is_null() && needed <= capacity {
        // SAFETY: `needed` bytes fit in the caller's buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf as *mut u8, text.len());
            *buf.add(text.len()) = 0;
        }
    }
    needed
}
