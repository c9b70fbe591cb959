//! Token shards in llm.c's `.bin` layout, memory-mapped: a header of 256 little-endian int32 (magic
//! 20240520, version 1, token count), then the tokens as little-endian uint16. Shards that llm.c's data
//! scripts wrote (FineWeb, TinyStories, ...) train here unchanged, and a corpus larger than memory costs
//! only address space: the OS pages in the windows a batch reads.

use super::dataset::windows_to_batch;
use crate::{Device, Error, Generator, Result, Tensor};
use memmap2::Mmap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The first int32 of every llm.c token shard.
pub const SHARD_MAGIC: i32 = 20240520;
/// The shard format version this reader understands.
pub const SHARD_VERSION: i32 = 1;
/// The header size in bytes (256 int32).
pub const SHARD_HEADER_BYTES: usize = 1024;

/// One memory-mapped shard, validated when opened.
#[derive(Debug)]
pub struct TokenShard {
    path: PathBuf,
    map: Mmap,
    len: usize,
}

impl TokenShard {
    /// Opens and checks a shard: a file shorter than the header, a wrong magic or version, or a size
    /// other than header + 2 bytes per token (a truncated or overlong file) is an error naming the file.
    pub fn open(path: impl AsRef<Path>) -> Result<TokenShard> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if size < SHARD_HEADER_BYTES as u64 {
            return Err(Error::file(
                path,
                format!("{size} bytes is shorter than the {SHARD_HEADER_BYTES}-byte header of an llm.c token shard"),
            ));
        }
        // SAFETY: the map is read-only and we hold it for the shard's lifetime. Another process truncating
        // or rewriting the file meanwhile would change what we read (the usual caveat of memory maps);
        // training data is not written while it is read.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = |i: usize| i32::from_le_bytes(map[4 * i..4 * i + 4].try_into().expect("4 bytes"));
        if header(0) != SHARD_MAGIC {
            return Err(Error::file(
                path,
                format!("bad magic number {} (expected {SHARD_MAGIC}): not an llm.c token shard", header(0)),
            ));
        }
        if header(1) != SHARD_VERSION {
            return Err(Error::file(
                path,
                format!("unsupported shard version {} (expected {SHARD_VERSION})", header(1)),
            ));
        }
        let count = header(2);
        if count < 0 {
            return Err(Error::file(path, format!("negative token count {count} in the header")));
        }
        let len = count as usize;
        let expected = SHARD_HEADER_BYTES as u64 + 2 * len as u64;
        if size != expected {
            let what = if size < expected { "truncated" } else { "longer than its header says" };
            return Err(Error::file(
                path,
                format!("{what}: the header promises {len} tokens ({expected} bytes) but the file has {size} bytes"),
            ));
        }
        Ok(TokenShard { path: path.to_path_buf(), map, len })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens start..start+n (within bounds: callers check).
    fn read(&self, start: usize, n: usize) -> Vec<u32> {
        let bytes = &self.map[SHARD_HEADER_BYTES + 2 * start..SHARD_HEADER_BYTES + 2 * (start + n)];
        bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32).collect()
    }

    /// Every token, e.g. to evaluate a model on a whole validation shard.
    pub fn to_vec(&self) -> Vec<u32> {
        self.read(0, self.len)
    }
}

/// Writes `tokens` as an llm.c shard (atomically enough for tests and tools: one write call). Tokens must
/// fit in uint16, as GPT-2's vocabulary does.
pub fn write_shard(path: impl AsRef<Path>, tokens: &[u32]) -> Result<()> {
    let path = path.as_ref();
    if let Some(&t) = tokens.iter().find(|&&t| t > u16::MAX as u32) {
        return Err(Error::file(path, format!("token {t} does not fit the shard's uint16 tokens")));
    }
    let count = i32::try_from(tokens.len())
        .map_err(|_| Error::file(path, format!("{} tokens exceed a shard's int32 count", tokens.len())))?;
    let mut bytes = Vec::with_capacity(SHARD_HEADER_BYTES + 2 * tokens.len());
    for v in [SHARD_MAGIC, SHARD_VERSION, count] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes.resize(SHARD_HEADER_BYTES, 0);
    for &t in tokens {
        bytes.extend_from_slice(&(t as u16).to_le_bytes());
    }
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Where sequential batching stands: the shard and the token offset of the next batch. Saved with a
/// checkpoint, it resumes the data stream exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardPosition {
    pub shard: usize,
    pub offset: usize,
}

/// `*` matches any run of characters (none included); everything else matches itself.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return pattern == name;
    }
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// A sequence of shards read as one corpus: sequentially (llm.c's loader: consecutive B·T windows,
/// moving to the next shard when the current one cannot fill a batch, wrapping after the last) or as
/// random windows.
#[derive(Debug)]
pub struct TokenShards {
    shards: Vec<TokenShard>,
    pos: ShardPosition,
}

impl TokenShards {
    /// Opens the shards in the order given; every one is validated up front, so a bad file fails at
    /// startup rather than hours into training.
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<TokenShards> {
        if paths.is_empty() {
            return Err(Error::invalid("TokenShards::open", "no shard files given"));
        }
        let shards = paths.iter().map(TokenShard::open).collect::<Result<Vec<_>>>()?;
        Ok(TokenShards { shards, pos: ShardPosition::default() })
    }

    /// Opens the files matching `pattern` in name order, where the file-name part may hold `*` wildcards
    /// (as llm.c's `fineweb_train_*.bin`); a pattern without `*` is a single file.
    pub fn open_pattern(pattern: &str) -> Result<TokenShards> {
        if !pattern.contains('*') {
            return TokenShards::open(&[pattern]);
        }
        let p = Path::new(pattern);
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if dir.to_string_lossy().contains('*') {
            return Err(Error::file(pattern, "only the file name may hold '*' wildcards, not the directory"));
        }
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            if let Some(n) = entry.file_name().to_str() {
                if wildcard_match(name, n) {
                    paths.push(entry.path());
                }
            }
        }
        if paths.is_empty() {
            return Err(Error::file(pattern, "no files match"));
        }
        paths.sort();
        TokenShards::open(&paths)
    }

    pub fn shards(&self) -> &[TokenShard] {
        &self.shards
    }
    /// The total number of tokens over every shard.
    pub fn num_tokens(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }
    /// Every token of every shard, concatenated in order (for evaluation on a small validation set).
    pub fn to_vec(&self) -> Vec<u32> {
        self.shards.iter().flat_map(|s| s.to_vec()).collect()
    }

    /// Where the next `next_batch` reads.
    pub fn position(&self) -> ShardPosition {
        self.pos
    }
    /// Resumes sequential batching at a saved position.
    pub fn set_position(&mut self, pos: ShardPosition) -> Result<()> {
        match self.shards.get(pos.shard) {
            Some(s) if pos.offset <= s.len() => {
                self.pos = pos;
                Ok(())
            }
            _ => Err(Error::invalid(
                "TokenShards::set_position",
                format!("{pos:?} is outside the {} shards opened", self.shards.len()),
            )),
        }
    }
    /// Back to the first token of the first shard.
    pub fn reset(&mut self) {
        self.pos = ShardPosition::default();
    }

    fn check_sizes(op: &'static str, batch_size: usize, block_size: usize) -> Result<()> {
        if batch_size == 0 || block_size == 0 {
            return Err(Error::invalid(op, "batch_size and block_size must be positive"));
        }
        Ok(())
    }

    /// The next batch in order: batch_size consecutive windows of block_size tokens from the current
    /// position (B·T + 1 tokens, the targets shifted by one), then the position advances by B·T. A shard
    /// with fewer than B·T + 1 tokens left is skipped for the start of the next one; after the last shard
    /// it wraps to the first. Returns x and y, I64 [batch_size, block_size].
    pub fn next_batch(&mut self, batch_size: usize, block_size: usize, device: Device) -> Result<(Tensor, Tensor)> {
        const OP: &str = "TokenShards::next_batch";
        Self::check_sizes(OP, batch_size, block_size)?;
        let span = batch_size * block_size;
        for _ in 0..=self.shards.len() {
            let shard = &self.shards[self.pos.shard];
            if self.pos.offset + span < shard.len() {
                let base = self.pos.offset;
                self.pos.offset += span;
                let windows = (0..batch_size).map(|i| shard.read(base + i * block_size, block_size + 1));
                return windows_to_batch(windows, batch_size, block_size, device);
            }
            self.pos = ShardPosition { shard: (self.pos.shard + 1) % self.shards.len(), offset: 0 };
        }
        Err(Error::invalid(OP, format!("no shard holds batch_size × block_size + 1 = {} tokens", span + 1)))
    }

    /// batch_size windows at random positions over all shards (each window inside one shard, every
    /// possible window equally likely), drawn from `gen`. Does not move the sequential position.
    pub fn random_batch(
        &self,
        batch_size: usize,
        block_size: usize,
        gen: &mut Generator,
        device: Device,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "TokenShards::random_batch";
        Self::check_sizes(OP, batch_size, block_size)?;
        // Window starts per shard: a window needs block_size + 1 tokens.
        let counts: Vec<u64> = self.shards.iter().map(|s| s.len().saturating_sub(block_size) as u64).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Err(Error::invalid(
                OP,
                format!("no shard holds one window of block_size + 1 = {} tokens", block_size + 1),
            ));
        }
        let mut picks = Vec::with_capacity(batch_size);
        for _ in 0..batch_size {
            let mut r = gen.below(total);
            let mut shard = 0;
            while r >= counts[shard] {
                r -= counts[shard];
                shard += 1;
            }
            picks.push((shard, r as usize));
        }
        let windows = picks.into_iter().map(|(shard, start)| self.shards[shard].read(start, block_size + 1));
        windows_to_batch(windows, batch_size, block_size, device)
    }
}

#[cfg(test)]
mod tests {
    use super::wildcard_match;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("fineweb_train_*.bin", "fineweb_train_000001.bin"));
        assert!(!wildcard_match("fineweb_train_*.bin", "fineweb_val_000000.bin"));
        assert!(wildcard_match("*", "x"));
        assert!(wildcard_match("a*b*c", "a12b34c"));
        assert!(!wildcard_match("a*b*c", "acb"));
        assert!(!wildcard_match("ab*ba", "aba"));
        assert!(wildcard_match("x.bin", "x.bin"));
    }
}
