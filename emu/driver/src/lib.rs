//! A stand-in for the CUDA driver (`libcuda.so`) that runs the crate's
//! kernels on the host SIMT emulation (`rnn-kernels-emu`), so that every
//! CI run executes the crate's real CUDA host code — cudarc's dynamic
//! loading, device setup, planning, launches, copies — against a device
//! that refuses what a real driver refuses, with the same error codes.
//!
//! - Device memory is host memory with guard pages ([`memory`]): an access
//!   outside every allocation poisons the context with
//!   `CUDA_ERROR_ILLEGAL_ADDRESS`; fresh memory is 0xFF bytes (NaN).
//! - Modules are the crate's fatbins: each kernel's registers, static shared
//!   memory and launch bounds come from the real sm_XX cubin in them
//!   ([`cubin`]), and launches are checked against them and the chip's
//!   limits ([`launch`], [`chip`]: H200 by default, `RNN_EMU_DEVICE=h100`,
//!   `a100` or `l4`).
//! - Every stream operation runs when it is issued, in order; events time
//!   on the host clock.
//!
//! `RNN_EMU_TRACE=1` prints every call; a thread can record its own
//! ([`calls`]). Refusals always say why on stderr.

pub mod api;
pub mod calls;
pub mod chip;
pub mod cubin;
pub mod launch;
pub mod memory;
pub mod state;

/// Says on stderr why a call is refused (the error code alone rarely does).
pub(crate) fn refuse(why: &str) {
    eprintln!("rnn-kernels CUDA stand-in: {why}");
}

pub use api::*;
