//! The chips the stand-in can pose as (`RNN_EMU_DEVICE`), with the limits a
//! real driver reports for them and the occupancy rules it applies.

/// One GPU model's limits, as `cuDeviceGetAttribute` reports them.
#[derive(Clone, Copy, Debug)]
pub struct Chip {
    pub name: &'static str,
    /// Compute capability (major, minor); also which cubin of a fatbin runs.
    pub capability: (i32, i32),
    pub sm_count: i32,
    pub shared_per_sm: i32,
    /// The most shared memory (static + dynamic) one block may opt in to.
    pub shared_per_block_optin: i32,
    pub registers_per_sm: i32,
    pub threads_per_sm: i32,
    pub blocks_per_sm: i32,
    pub total_memory: usize,
    pub l2_bytes: i32,
    pub clock_khz: i32,
    pub memory_clock_khz: i32,
    pub memory_bus_bits: i32,
}

/// Shared memory the driver keeps per block (on sm_80 and newer).
pub const RESERVED_SHARED_PER_BLOCK: i32 = 1024;
/// Static + dynamic shared memory a block gets without opting in.
pub const DEFAULT_SHARED_PER_BLOCK: i32 = 48 * 1024;
pub const MAX_THREADS_PER_BLOCK: i32 = 1024;
pub const MAX_REGISTERS_PER_THREAD: i32 = 255;
pub const MAX_BLOCK_DIM: [i32; 3] = [1024, 1024, 64];
pub const MAX_GRID_DIM: [i32; 3] = [i32::MAX, 65535, 65535];
pub const WARP: i32 = 32;

const GIB: usize = 1 << 30;

pub const H200: Chip = Chip {
    name: "NVIDIA H200",
    capability: (9, 0),
    sm_count: 132,
    shared_per_sm: 228 * 1024,
    shared_per_block_optin: 227 * 1024,
    registers_per_sm: 65536,
    threads_per_sm: 2048,
    blocks_per_sm: 32,
    total_memory: 141 * GIB,
    l2_bytes: 60 * 1024 * 1024,
    clock_khz: 1_980_000,
    memory_clock_khz: 3_201_000,
    memory_bus_bits: 6144,
};

pub const H100: Chip = Chip {
    name: "NVIDIA H100 80GB HBM3",
    total_memory: 80 * GIB,
    l2_bytes: 50 * 1024 * 1024,
    memory_clock_khz: 2_619_000,
    memory_bus_bits: 5120,
    ..H200
};

pub const A100: Chip = Chip {
    name: "NVIDIA A100-SXM4-80GB",
    capability: (8, 0),
    sm_count: 108,
    shared_per_sm: 164 * 1024,
    shared_per_block_optin: 163 * 1024,
    total_memory: 80 * GIB,
    l2_bytes: 40 * 1024 * 1024,
    clock_khz: 1_410_000,
    memory_clock_khz: 1_593_000,
    memory_bus_bits: 5120,
    ..H200
};

pub const L4: Chip = Chip {
    name: "NVIDIA L4",
    capability: (8, 9),
    sm_count: 58,
    shared_per_sm: 100 * 1024,
    shared_per_block_optin: 99 * 1024,
    threads_per_sm: 1536,
    blocks_per_sm: 24,
    total_memory: 22 * GIB + 512 * 1024 * 1024,
    l2_bytes: 48 * 1024 * 1024,
    clock_khz: 2_040_000,
    memory_clock_khz: 6_251_000,
    memory_bus_bits: 192,
    ..H200
};

impl Chip {
    /// `RNN_EMU_DEVICE`: `h200` (the default), `h100`, `a100` or `l4`.
    pub fn from_env() -> Result<Chip, String> {
        match std::env::var("RNN_EMU_DEVICE").as_deref() {
            Err(_) | Ok("") | Ok("h200") => Ok(H200),
            Ok("h100") => Ok(H100),
            Ok("a100") => Ok(A100),
            Ok("l4") => Ok(L4),
            Ok(other) => Err(format!("RNN_EMU_DEVICE={other}: expected h200, h100, a100 or l4")),
        }
    }

    /// The cubin architecture the chip runs (90 for sm_90).
    pub fn arch(&self) -> u32 {
        (self.capability.0 * 10 + self.capability.1) as u32
    }

    /// Blocks of one kernel resident on one SM at once, as the driver's
    /// occupancy calculator counts them: the least of the block, warp,
    /// register and shared-memory limits. 0 when one block does not fit.
    pub fn blocks_per_sm(&self, threads: i32, registers: i32, shared_per_block: i32) -> i32 {
        if threads <= 0 || threads > MAX_THREADS_PER_BLOCK {
            return 0;
        }
        let warps = round_up(threads, WARP) / WARP;
        let by_threads = self.threads_per_sm / WARP / warps;
        let by_registers = (self.registers_per_sm / registers_per_warp(registers)) / warps;
        let by_shared = if shared_per_block > self.shared_per_block_optin {
            0
        } else {
            let per_block = round_up(shared_per_block + RESERVED_SHARED_PER_BLOCK, 128);
            self.shared_per_sm / per_block
        };
        self.blocks_per_sm
            .min(by_threads)
            .min(by_registers)
            .min(by_shared)
    }
}

/// Registers one warp holds: they are allocated per warp in units of 256.
pub fn registers_per_warp(registers_per_thread: i32) -> i32 {
    round_up(registers_per_thread.max(1) * WARP, 256)
}

fn round_up(x: i32, unit: i32) -> i32 {
    (x + unit - 1) / unit * unit
}
