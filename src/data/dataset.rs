//! An in-memory token stream split into train and validation parts, batched as random windows (nanoGPT's
//! way of training on a small corpus such as tiny Shakespeare).

use crate::{Device, Error, Generator, Result, Tensor};

/// Which part of a dataset to draw from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Val,
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Val => "val",
        })
    }
}

/// Windows of `block_size` + 1 tokens as inputs x = window[..T] and targets y = window[1..], both I64
/// [batch_size, T].
pub(crate) fn windows_to_batch(
    windows: impl Iterator<Item = Vec<u32>>,
    batch_size: usize,
    block_size: usize,
    device: Device,
) -> Result<(Tensor, Tensor)> {
    let (mut x, mut y) = (Vec::with_capacity(batch_size * block_size), Vec::with_capacity(batch_size * block_size));
    for w in windows {
        x.extend(w[..block_size].iter().map(|&t| t as i64));
        y.extend(w[1..].iter().map(|&t| t as i64));
    }
    Ok((
        Tensor::from_vec(x, &[batch_size, block_size], device)?,
        Tensor::from_vec(y, &[batch_size, block_size], device)?,
    ))
}

/// A token stream cut once into a training part (the first tokens) and a validation part (the last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextDataset {
    train: Vec<u32>,
    val: Vec<u32>,
}

impl TextDataset {
    /// Splits `tokens`: the first (1 − val_fraction) for training, the rest for validation (0.1 gives
    /// nanoGPT's 90/10 split). Contiguous parts rather than shuffled windows, so no validation window
    /// overlaps a training one.
    pub fn from_tokens(tokens: impl Into<Vec<u32>>, val_fraction: f64) -> Result<TextDataset> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::invalid("TextDataset", format!("val_fraction {val_fraction} is outside [0, 1)")));
        }
        let mut train = tokens.into();
        if train.is_empty() {
            return Err(Error::invalid("TextDataset", "the token stream is empty"));
        }
        let n_train = (train.len() as f64 * (1.0 - val_fraction)) as usize;
        let val = train.split_off(n_train);
        Ok(TextDataset { train, val })
    }

    /// The tokens of one split.
    pub fn tokens(&self, split: Split) -> &[u32] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// `batch_size` windows drawn uniformly at random from `split`, each window's start from `gen` (one
    /// draw per row, so saving the generator with a checkpoint resumes the same sequence of batches).
    /// Returns inputs x and next-token targets y, both I64 [batch_size, block_size].
    pub fn batch(
        &self,
        split: Split,
        batch_size: usize,
        block_size: usize,
        gen: &mut Generator,
        device: Device,
    ) -> Result<(Tensor, Tensor)> {
        let data = self.tokens(split);
        if batch_size == 0 || block_size == 0 {
            return Err(Error::invalid("TextDataset::batch", "batch_size and block_size must be positive"));
        }
        if data.len() <= block_size {
            return Err(Error::invalid(
                "TextDataset::batch",
                format!(
                    "the {split} split has {} tokens, fewer than one window of block_size + 1 = {}",
                    data.len(),
                    block_size + 1
                ),
            ));
        }
        let n_starts = (data.len() - block_size) as u64;
        let starts: Vec<usize> = (0..batch_size).map(|_| gen.below(n_starts) as usize).collect();
        let windows = starts.into_iter().map(|s| data[s..s + block_size + 1].to_vec());
        windows_to_batch(windows, batch_size, block_size, device)
    }
}
