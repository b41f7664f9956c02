//! A small seeded generator (SplitMix64) for weight initialisation, test data
//! and synthetic examples. Its stream is fixed by this file, not by a crate
//! version, so a seed means the same numbers forever.

#[derive(Clone, Debug)]
/// The SplitMix64 generator (Steele, Lea and Flood, 2014).
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// Where the generator is: `SplitMix64::new(g.state())` continues as `g` does.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform between `a` and `b`, in either order: `[min, max)`.
    pub fn uniform(&mut self, a: f64, b: f64) -> f64 {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        low + (high - low) * self.next_f64()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // in (0, 1]: ln is finite
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Uniform integer between `a` and `b` inclusive, in either order.
    pub fn int_inclusive(&mut self, a: usize, b: usize) -> usize {
        let (low, high) = (a.min(b), a.max(b));
        match (high - low).checked_add(1) {
            Some(span) => low + (self.next_u64() % span as u64) as usize,
            None => self.next_u64() as usize, // the whole range of usize
        }
    }
}
