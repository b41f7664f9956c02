//! Memory sized by the caller's input (outputs, workspaces, reserves,
//! gradients, packed weights), allocated so that a request too large for
//! the machine is an error that names what needed it
//! ([`Error::OutOfMemory`]) instead of an abort of the process that asked:
//! a service that scores one absurd request keeps serving the next.

use crate::error::{Error, Result};
use std::alloc::{alloc_zeroed, Layout};

/// `count` zeros, or [`Error::OutOfMemory`] naming `what` and `detail`
/// (built only on failure). Fresh from the allocator (as `vec![0; n]` is):
/// large buffers are the OS's zero pages, not written here.
pub fn zeros<T: bytemuck::Zeroable>(count: usize, what: impl FnOnce() -> (String, String)) -> Result<Vec<T>> {
    let fail = |bytes: Option<usize>| {
        let (what, detail) = what();
        Error::out_of_memory(what, detail, bytes)
    };
    let Ok(layout) = Layout::array::<T>(count) else {
        return Err(fail(None));
    };
    if layout.size() == 0 {
        let mut v = Vec::new();
        v.resize_with(count, T::zeroed);
        return Ok(v);
    }
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return Err(fail(Some(layout.size())));
    }
    // SAFETY: `ptr` is a fresh allocation of the global allocator with
    // `T`'s layout for `count` elements, all zero bytes, which is a valid
    // `T` (Zeroable).
    Ok(unsafe { Vec::from_raw_parts(ptr, count, count) })
}

/// `count` copies of `value`, or [`Error::OutOfMemory`] as [`zeros`].
pub fn filled<T: Clone>(count: usize, value: T, what: impl FnOnce() -> (String, String)) -> Result<Vec<T>> {
    let mut v = Vec::new();
    reserve(&mut v, count, what)?;
    v.resize(count, value);
    Ok(v)
}

/// Room in `v` for `additional` more elements, or [`Error::OutOfMemory`] as
/// [`zeros`].
pub fn reserve<T>(v: &mut Vec<T>, additional: usize, what: impl FnOnce() -> (String, String)) -> Result<()> {
    v.try_reserve_exact(additional).map_err(|_| {
        let (what, detail) = what();
        let bytes = v
            .len()
            .checked_add(additional)
            .and_then(|n| n.checked_mul(std::mem::size_of::<T>()));
        Error::out_of_memory(what, detail, bytes)
    })
}

/// `bytes` as people read it: `38.1 GiB`, `512 KiB`, `17 bytes`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_read_them() {
        assert_eq!(human_bytes(17), "17 bytes");
        assert_eq!(human_bytes(512 * 1024), "512 KiB");
        assert_eq!(human_bytes(40_960_000_000), "38.1 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn a_request_no_machine_has_is_an_error_that_names_it() {
        let what = || ("the output".to_string(), "[10000000000000, 1024] f32".to_string());
        let err = zeros::<f32>(1 << 60, what).unwrap_err().to_string();
        assert!(err.starts_with("the output needs "), "{err}");
        assert!(err.contains("[10000000000000, 1024] f32"), "{err}");
        let err = filled(usize::MAX / 8, 1.0f64, what).unwrap_err().to_string();
        assert!(err.contains("the output"), "{err}");
        let v: Vec<u8> = zeros(3, what).unwrap();
        assert_eq!(v, [0, 0, 0]);
        let v: Vec<()> = zeros(3, what).unwrap();
        assert_eq!(v.len(), 3);
    }
}
