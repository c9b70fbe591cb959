//! `DistributedSampler`: each rank's disjoint share of a dataset's indices for one epoch, like PyTorch's.
//! Every rank shuffles the same permutation (same seed and epoch), pads it by repeating its start so it
//! divides evenly, and takes every world-size-th index from its rank on: the shares are disjoint, cover
//! the dataset, and have equal lengths, so ranks run the same number of steps and no collective waits on
//! a rank that ran out of data.

use crate::rng::Generator;
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct DistributedSampler {
    len: usize,
    rank: usize,
    world_size: usize,
    shuffle: bool,
    seed: u64,
    drop_last: bool,
}

impl DistributedSampler {
    /// Shares of `len` items for `rank` of `world_size`, shuffled per epoch from `seed`.
    pub fn new(len: usize, rank: usize, world_size: usize, seed: u64) -> Result<DistributedSampler> {
        if world_size == 0 || rank >= world_size {
            return Err(Error::invalid(
                "DistributedSampler",
                format!("rank {rank} is not below world size {world_size}"),
            ));
        }
        Ok(DistributedSampler { len, rank, world_size, shuffle: true, seed, drop_last: false })
    }
    /// Keeps the dataset order (evaluation).
    pub fn without_shuffle(mut self) -> Self {
        self.shuffle = false;
        self
    }
    /// Drops the tail that does not divide evenly instead of repeating items to pad it.
    pub fn drop_last(mut self) -> Self {
        self.drop_last = true;
        self
    }

    /// How many indices each rank gets per epoch.
    pub fn num_samples(&self) -> usize {
        if self.drop_last {
            self.len / self.world_size
        } else {
            self.len.div_ceil(self.world_size)
        }
    }

    /// This rank's indices for `epoch`.
    pub fn indices(&self, epoch: u64) -> Vec<usize> {
        // The counter-based generator gives every rank the same permutation for a seed and epoch.
        let mut order: Vec<usize> = if self.shuffle {
            Generator::new(self.seed.wrapping_add(epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15))).permutation(self.len)
        } else {
            (0..self.len).collect()
        };
        let total = self.num_samples() * self.world_size;
        if total > order.len() && !order.is_empty() {
            let pad: Vec<usize> = order.iter().cycle().take(total - order.len()).copied().collect();
            order.extend(pad);
        }
        order.truncate(total);
        order.into_iter().skip(self.rank).step_by(self.world_size).collect()
    }
}
