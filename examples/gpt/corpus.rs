//! The text a run trains or evaluates on, and the tokenizer that turns it into ids. The tokenizer travels
//! in the checkpoint's metadata, so sampling and resuming use exactly the ids the model was trained with.

use munja::data::{CharTokenizer, Gpt2Tokenizer, TokenShard, Tokenizer};
use munja::models::gpt::pad_vocab;
use munja::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

const KIND_KEY: &str = "tokenizer.kind";

pub enum Tok {
    Char(CharTokenizer),
    Gpt2(Gpt2Tokenizer),
}

impl Tok {
    /// `char` (vocabulary from `corpus`) or `gpt2`.
    pub fn new(kind: &str, corpus: Option<&str>) -> Result<Tok> {
        match kind {
            "char" => {
                let corpus = corpus.ok_or_else(|| Error::Invalid {
                    op: "--tokenizer",
                    detail: "a character-level tokenizer takes its vocabulary from a text file, not token shards"
                        .into(),
                })?;
                Ok(Tok::Char(CharTokenizer::from_corpus(corpus)?))
            }
            "gpt2" => Ok(Tok::Gpt2(Gpt2Tokenizer::new()?)),
            other => Err(Error::Invalid {
                op: "--tokenizer",
                detail: format!("unknown tokenizer '{other}': use char or gpt2"),
            }),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Tok::Char(_) => "char",
            Tok::Gpt2(_) => "gpt2",
        }
    }

    pub fn get(&self) -> &dyn Tokenizer {
        match self {
            Tok::Char(t) => t,
            Tok::Gpt2(t) => t,
        }
    }

    /// The embedding rows a model needs for this tokenizer: the exact count for characters; GPT-2's
    /// vocabulary padded to a multiple of 64, which the matmul kernels tile better (the padding ids
    /// never occur, so training pushes their logits down).
    pub fn model_vocab(&self) -> usize {
        match self {
            Tok::Char(t) => t.vocab_size(),
            Tok::Gpt2(t) => pad_vocab(t.vocab_size(), 64),
        }
    }

    pub fn to_metadata(&self, m: &mut BTreeMap<String, String>) {
        m.insert(KIND_KEY.into(), self.kind().into());
        if let Tok::Char(t) = self {
            m.insert(CharTokenizer::METADATA_KEY.into(), t.to_json());
        }
    }

    pub fn from_metadata(m: &BTreeMap<String, String>) -> Result<Tok> {
        let missing = |key: &str| Error::Invalid {
            op: "checkpoint",
            detail: format!("the checkpoint's metadata has no '{key}' (was it written by this program?)"),
        };
        match m.get(KIND_KEY).map(String::as_str) {
            Some("char") => {
                let json = m.get(CharTokenizer::METADATA_KEY).ok_or_else(|| missing(CharTokenizer::METADATA_KEY))?;
                Ok(Tok::Char(CharTokenizer::from_json(json)?))
            }
            Some(kind) => Tok::new(kind, None),
            None => Err(missing(KIND_KEY)),
        }
    }
}

/// Reads a text file, with an error that says which flag names it.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::File {
        path: path.display().to_string(),
        detail: format!("cannot read it: {e} (--data FILE picks another file)"),
    })?;
    String::from_utf8(bytes).map_err(|e| Error::File {
        path: path.display().to_string(),
        detail: format!(
            "not UTF-8 text (byte {}); pass a text file or a .bin token shard",
            e.utf8_error().valid_up_to()
        ),
    })
}

/// The token ids of `path` under `tok`: an llm.c `.bin` shard is read as GPT-2 ids directly, anything
/// else is read as text and encoded.
pub fn load_tokens(path: &Path, tok: &Tok) -> Result<Vec<u32>> {
    if path.extension().is_some_and(|e| e == "bin") {
        if !matches!(tok, Tok::Gpt2(_)) {
            return Err(Error::Invalid {
                op: "--data",
                detail: format!("{} is a token shard of GPT-2 ids: use --tokenizer gpt2", path.display()),
            });
        }
        return Ok(TokenShard::open(path)?.to_vec());
    }
    tok.get().encode(&read_text(path)?)
}

/// FNV-1a over the ids: a resumed run checks it trains on the same token stream as the run it continues.
pub fn fingerprint(tokens: &[u32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for t in tokens {
        for b in t.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}-{}", tokens.len())
}
