//! The fast CPU backend: what users without a GPU run ([`CpuRnn`]).
//!
//! The reference ([`crate::reference`]) is written for clarity; this path is
//! written for speed and checked against it. Where its time goes, per layer
//! and direction (DESIGN §3):
//! - the input projection of all `T·B` rows at once, one product with the
//!   bias folded in (`forward.rs`); or, for a single step and for LSTM and
//!   RNN layers whose weights stay in L2, summed into each step's product
//!   (`FusedInput`);
//! - per step, one product of the live rows' `h_{t-1}` with `W_hh`, the gate
//!   math fused into its epilogue while the sums are in registers
//!   (`kernel.rs`, `cells.rs`);
//! - weights packed once into the micro-kernel's panels (`packed.rs`);
//! - SIMD chosen at run time: AVX-512F, AVX2 + FMA, or portable (`simd.rs`);
//! - a thread pool started once, batch rows split so that threads never
//!   wait for each other, units split with a barrier when the batch is
//!   too small for that (`threads.rs`); or, inside [`OpenMp::scope`], a
//!   host program's OpenMP team (`openmp.rs`).

mod cells;
mod forward;
mod int8;
mod kernel;
mod model;
mod openmp;
mod packed;
mod simd;
mod threads;
mod train;

pub use model::{default_threads, CpuRnn};
pub use openmp::OpenMp;
pub use simd::Isa;
pub use train::CpuReserve;
