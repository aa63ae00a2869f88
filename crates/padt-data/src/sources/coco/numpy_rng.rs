//! numpy's legacy global random generator (`np.random.seed`, `np.random.shuffle`,
//! `np.random.rand`), reproduced draw for draw.
//!
//! `process_coco.py` shuffles the category order with `np.random.shuffle` and draws the
//! prompt-drop decision with `np.random.rand(1)`. Both go through numpy's legacy
//! `RandomState`: an MT19937 seeded with the reference `init_genrand` routine, a
//! Fisher-Yates shuffle whose index `j` comes from the masked rejection sampler
//! (`random_interval`), and 53-bit doubles built from two 32-bit outputs.

/// Number of 32-bit words in the MT19937 state.
const STATE_LEN: usize = 624;
const MIDDLE: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// numpy's legacy `RandomState` (the MT19937 bit generator plus the legacy draw routines).
#[derive(Clone)]
pub struct LegacyRandomState {
    key: [u32; STATE_LEN],
    pos: usize,
}

impl std::fmt::Debug for LegacyRandomState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyRandomState")
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl LegacyRandomState {
    /// `np.random.seed(seed)` / `np.random.RandomState(seed)` for an integer seed.
    pub fn new(seed: u32) -> LegacyRandomState {
        let mut key = [0u32; STATE_LEN];
        let mut s = seed;
        for (pos, slot) in key.iter_mut().enumerate() {
            *slot = s;
            s = 1_812_433_253u32
                .wrapping_mul(s ^ (s >> 30))
                .wrapping_add(pos as u32 + 1);
        }
        LegacyRandomState {
            key,
            pos: STATE_LEN,
        }
    }

    /// Regenerates the whole state block (the MT19937 "twist").
    fn generate(&mut self) {
        let mix = |a: u32, b: u32, c: u32| {
            let y = (a & UPPER_MASK) | (b & LOWER_MASK);
            c ^ (y >> 1) ^ if y & 1 == 1 { MATRIX_A } else { 0 }
        };
        for i in 0..STATE_LEN - MIDDLE {
            self.key[i] = mix(self.key[i], self.key[i + 1], self.key[i + MIDDLE]);
        }
        for i in STATE_LEN - MIDDLE..STATE_LEN - 1 {
            self.key[i] = mix(
                self.key[i],
                self.key[i + 1],
                self.key[i + MIDDLE - STATE_LEN],
            );
        }
        self.key[STATE_LEN - 1] = mix(self.key[STATE_LEN - 1], self.key[0], self.key[MIDDLE - 1]);
        self.pos = 0;
    }

    /// The next tempered 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.pos == STATE_LEN {
            self.generate();
        }
        let mut y = self.key[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Two outputs, high word first (numpy's `next_uint64` for MT19937).
    pub fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        (hi << 32) | self.next_u32() as u64
    }

    /// A double in `[0, 1)` with 53 random bits (`np.random.rand()` / `random_sample`).
    pub fn random_sample(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// A uniform integer in `[0, max]` by masked rejection (numpy's legacy `random_interval`).
    pub fn random_interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> shift;
        }
        if max <= u32::MAX as u64 {
            loop {
                let value = self.next_u32() as u64 & mask;
                if value <= max {
                    return value;
                }
            }
        } else {
            loop {
                let value = self.next_u64() & mask;
                if value <= max {
                    return value;
                }
            }
        }
    }

    /// `RandomState.shuffle` of a 1-D array, in place: for `i` from `n-1` down to 1 swap
    /// `x[i]` with `x[random_interval(i)]`.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.random_interval(i as u64) as usize;
            x.swap(i, j);
        }
    }
}
