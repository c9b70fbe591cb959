//! Seeded random numbers. Philox4x32-10 is counter-based: element i of a draw depends only on (seed,
//! offset + i), so a CPU and a GPU kernel produce the same numbers, draws parallelise without shared state,
//! and a generator is saved and restored as two integers.

use std::sync::Mutex;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Ten rounds of Philox4x32 on a 128-bit counter with a 64-bit key.
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for _ in 0..10 {
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        c = [((p1 >> 32) as u32) ^ c[1] ^ k[0], p1 as u32, ((p0 >> 32) as u32) ^ c[3] ^ k[1], p0 as u32];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// Four uniform u32 for block `block` of the stream (seed, offset).
#[inline]
pub fn philox_block(seed: u64, block: u64) -> [u32; 4] {
    philox4x32([block as u32, (block >> 32) as u32, 0, 0], [seed as u32, (seed >> 32) as u32])
}

/// A uniform float in [0, 1) from 24 random bits (exactly representable in f32).
#[inline]
pub fn u32_to_unit(x: u32) -> f32 {
    (x >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// A seeded generator: a seed and how many blocks of four numbers have been used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generator {
    pub seed: u64,
    /// The next unused Philox block.
    pub offset: u64,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Generator { seed, offset: 0 }
    }
    /// Reserves blocks for `n` numbers and returns the first block index.
    pub fn advance(&mut self, n: usize) -> u64 {
        let start = self.offset;
        self.offset += n.div_ceil(4) as u64;
        start
    }
    /// `n` uniform numbers in [0, 1).
    pub fn uniform(&mut self, n: usize) -> Vec<f32> {
        let start = self.advance(n);
        uniform_from(self.seed, start, n)
    }
    /// `n` standard normal numbers (Box-Muller on pairs of uniforms).
    pub fn normal(&mut self, n: usize) -> Vec<f64> {
        let start = self.advance(2 * n);
        normal_from(self.seed, start, n)
    }
    /// A uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        let b = philox_block(self.seed, self.advance(4));
        let x = ((b[0] as u64) << 32) | b[1] as u64;
        x % n.max(1)
    }
    /// A seeded Fisher-Yates permutation of 0..n.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            p.swap(i, j);
        }
        p
    }
}

/// Uniform [0,1) numbers i..i+n of the stream starting at `block`.
pub fn uniform_from(seed: u64, block: u64, n: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(4 * 1024).enumerate().for_each(|(ci, chunk)| {
        let base = block + (ci * 1024) as u64;
        for (j, quad) in chunk.chunks_mut(4).enumerate() {
            let r = philox_block(seed, base + j as u64);
            for (o, x) in quad.iter_mut().zip(r) {
                *o = u32_to_unit(x);
            }
        }
    });
    out
}

/// Standard normals from pairs of uniforms of the stream starting at `block`.
pub fn normal_from(seed: u64, block: u64, n: usize) -> Vec<f64> {
    use rayon::prelude::*;
    let mut out = vec![0f64; n];
    out.par_chunks_mut(2 * 1024).enumerate().for_each(|(ci, chunk)| {
        let base = block + (ci * 1024) as u64;
        for (j, pair) in chunk.chunks_mut(2).enumerate() {
            let r = philox_block(seed, base + j as u64);
            // Use the full 64 bits of two words so the normals are good in f64 too; 1 - u keeps ln finite.
            let u1 = 1.0 - (((r[0] as u64) << 21 ^ (r[1] as u64 >> 11)) as f64) * (1.0 / (1u64 << 53) as f64);
            let u2 = (((r[2] as u64) << 21 ^ (r[3] as u64 >> 11)) as f64) * (1.0 / (1u64 << 53) as f64);
            let rad = (-2.0 * u1.ln()).sqrt();
            let theta = 2.0 * std::f64::consts::PI * u2;
            pair[0] = rad * theta.cos();
            if pair.len() > 1 {
                pair[1] = rad * theta.sin();
            }
        }
    });
    out
}

static DEFAULT: Mutex<Generator> = Mutex::new(Generator { seed: 0x5EED, offset: 0 });

/// Seeds the process-wide default generator used by `rand`, `randn`, dropout and initialisers.
pub fn manual_seed(seed: u64) {
    *DEFAULT.lock().unwrap_or_else(|e| e.into_inner()) = Generator::new(seed);
}

/// The default generator's state, to save with a checkpoint.
pub fn default_state() -> Generator {
    *DEFAULT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Restores the default generator's state from a checkpoint.
pub fn set_default_state(g: Generator) {
    *DEFAULT.lock().unwrap_or_else(|e| e.into_inner()) = g;
}

/// Runs `f` with the default generator.
pub fn with_default<R>(f: impl FnOnce(&mut Generator) -> R) -> R {
    f(&mut DEFAULT.lock().unwrap_or_else(|e| e.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_matches_the_random123_known_answer() {
        // Known-answer vector from the Random123 distribution (kat_vectors, philox4x32_10, all zeros).
        assert_eq!(philox4x32([0; 4], [0; 2]), [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
        assert_eq!(
            philox4x32([0xffff_ffff; 4], [0xffff_ffff; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
    }

    #[test]
    fn uniform_is_in_range_and_roughly_uniform() {
        let v = Generator::new(1).uniform(100_000);
        assert!(v.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn normal_has_unit_variance() {
        let v = Generator::new(2).normal(100_001);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.02, "mean {mean} var {var}");
    }
}
