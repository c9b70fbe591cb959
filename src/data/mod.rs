//! Text data for language models: tokenizers (character level, GPT-2 BPE), an in-memory train/val token
//! stream batched as random windows, and memory-mapped token shards in llm.c's `.bin` layout.

mod dataset;
mod shards;
mod tokenizer;

pub use dataset::{Split, TextDataset};
pub use shards::{write_shard, ShardPosition, TokenShard, TokenShards, SHARD_HEADER_BYTES, SHARD_MAGIC, SHARD_VERSION};
pub use tokenizer::{CharTokenizer, Gpt2Tokenizer, Tokenizer};
