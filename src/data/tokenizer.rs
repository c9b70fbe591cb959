//! Tokenizers: a character-level one whose vocabulary comes from the corpus (and travels with the
//! checkpoint as a JSON string), and GPT-2's byte-level BPE through tiktoken-rs's bundled `r50k_base`
//! ranks, so nothing is downloaded.

use crate::{Error, Result};
use std::collections::HashMap;

/// What training and sampling need from a tokenizer.
pub trait Tokenizer: Send + Sync {
    /// Token ids of `text`; an error when the text holds something the vocabulary cannot express.
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// The text of `ids`. Never fails: ids outside the vocabulary (a padded model's extra tokens) and
    /// incomplete UTF-8 (a sample cut in the middle of a multi-byte character) become U+FFFD, so sampled
    /// text can always be shown.
    fn decode(&self, ids: &[u32]) -> String;
    /// The number of distinct token ids.
    fn vocab_size(&self) -> usize;
}

/// One token per character, the vocabulary being the sorted distinct characters of a corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharTokenizer {
    chars: Vec<char>,
    ids: HashMap<char, u32>,
}

impl CharTokenizer {
    /// The checkpoint metadata key under which training programs store `to_json()`.
    pub const METADATA_KEY: &'static str = "tokenizer.chars";

    /// The vocabulary of `corpus`: its distinct characters in code-point order.
    pub fn from_corpus(corpus: &str) -> Result<CharTokenizer> {
        let mut chars: Vec<char> = corpus.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        CharTokenizer::from_chars(chars)
    }

    /// A vocabulary of the given distinct characters; id i is the i-th character.
    pub fn from_chars(chars: Vec<char>) -> Result<CharTokenizer> {
        if chars.is_empty() {
            return Err(Error::invalid("CharTokenizer", "the vocabulary is empty (was the corpus empty?)"));
        }
        let mut ids = HashMap::with_capacity(chars.len());
        for (i, &c) in chars.iter().enumerate() {
            if ids.insert(c, i as u32).is_some() {
                return Err(Error::invalid(
                    "CharTokenizer",
                    format!("character {c:?} appears twice in the vocabulary"),
                ));
            }
        }
        Ok(CharTokenizer { chars, ids })
    }

    /// The vocabulary, in id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    pub fn vocab_size(&self) -> usize {
        self.chars.len()
    }

    /// One id per character; a character outside the vocabulary is an error naming it and its position.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .enumerate()
            .map(|(i, c)| {
                self.ids.get(&c).copied().ok_or_else(|| {
                    Error::invalid(
                        "CharTokenizer::encode",
                        format!(
                            "character {c:?} at position {i} is not in the vocabulary of {} characters",
                            self.chars.len()
                        ),
                    )
                })
            })
            .collect()
    }

    /// The characters of `ids`; an id outside the vocabulary becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter().map(|&i| self.chars.get(i as usize).copied().unwrap_or(char::REPLACEMENT_CHARACTER)).collect()
    }

    /// The vocabulary as one JSON string literal (the characters in id order), to store in a checkpoint's
    /// metadata so a sampler rebuilds exactly the ids the model was trained with.
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(self.chars.len() + 2);
        s.push('"');
        for &c in &self.chars {
            match c {
                '"' => s.push_str("\\\""),
                '\\' => s.push_str("\\\\"),
                '\n' => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                '\t' => s.push_str("\\t"),
                c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
                c => s.push(c),
            }
        }
        s.push('"');
        s
    }

    /// The tokenizer saved by `to_json`.
    pub fn from_json(json: &str) -> Result<CharTokenizer> {
        let bad = |detail: &str| Error::invalid("CharTokenizer::from_json", detail.to_string());
        let body = json
            .trim()
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .ok_or_else(|| bad("expected a JSON string literal"))?;
        let mut chars = Vec::new();
        let mut it = body.chars();
        while let Some(c) = it.next() {
            if c != '\\' {
                if c == '"' {
                    return Err(bad("unescaped quote inside the string"));
                }
                chars.push(c);
                continue;
            }
            let esc = it.next().ok_or_else(|| bad("the string ends inside an escape"))?;
            let c = match esc {
                '"' => '"',
                '\\' => '\\',
                '/' => '/',
                'n' => '\n',
                'r' => '\r',
                't' => '\t',
                'b' => '\u{8}',
                'f' => '\u{c}',
                'u' => {
                    let hex = |it: &mut std::str::Chars| -> Result<u32> {
                        let h: String = it.by_ref().take(4).collect();
                        u32::from_str_radix(&h, 16).map_err(|_| bad("bad \\u escape"))
                    };
                    let hi = hex(&mut it)?;
                    let code = if (0xD800..0xDC00).contains(&hi) {
                        // A UTF-16 surrogate pair: the low half follows as another \u escape.
                        if it.next() != Some('\\') || it.next() != Some('u') {
                            return Err(bad("unpaired surrogate in \\u escape"));
                        }
                        let lo = hex(&mut it)?;
                        if !(0xDC00..0xE000).contains(&lo) {
                            return Err(bad("unpaired surrogate in \\u escape"));
                        }
                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                    } else {
                        hi
                    };
                    char::from_u32(code).ok_or_else(|| bad("\\u escape is not a character"))?
                }
                _ => return Err(bad("unknown escape")),
            };
            chars.push(c);
        }
        CharTokenizer::from_chars(chars)
    }
}

impl Tokenizer for CharTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        CharTokenizer::encode(self, text)
    }
    fn decode(&self, ids: &[u32]) -> String {
        CharTokenizer::decode(self, ids)
    }
    fn vocab_size(&self) -> usize {
        CharTokenizer::vocab_size(self)
    }
}

/// GPT-2's byte-level BPE (`r50k_base`, 50257 tokens), bundled with tiktoken-rs.
pub struct Gpt2Tokenizer {
    bpe: tiktoken_rs::CoreBPE,
}

impl std::fmt::Debug for Gpt2Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gpt2Tokenizer(r50k_base)")
    }
}

impl Gpt2Tokenizer {
    /// `<|endoftext|>`, which llm.c and nanoGPT put before every document.
    pub const EOT: u32 = 50256;
    /// The vocabulary size (before any padding of the model's embedding).
    pub const VOCAB_SIZE: usize = 50257;

    /// Builds the encoder from the ranks compiled into tiktoken-rs (no network).
    pub fn new() -> Result<Gpt2Tokenizer> {
        let bpe = tiktoken_rs::r50k_base()
            .map_err(|e| Error::invalid("Gpt2Tokenizer", format!("building r50k_base failed: {e}")))?;
        Ok(Gpt2Tokenizer { bpe })
    }

    /// The BPE ids of `text`. Special-token text such as `<|endoftext|>` is encoded as ordinary text; use
    /// `EOT` to separate documents. Never fails (byte-level BPE covers every string).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.bpe.encode_ordinary(text))
    }

    /// The text of `ids`, lossily: unknown ids and invalid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            match self.bpe.decode_bytes(&[id]) {
                Ok(b) => bytes.extend_from_slice(&b),
                Err(_) => bytes.extend_from_slice(char::REPLACEMENT_CHARACTER.to_string().as_bytes()),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn vocab_size(&self) -> usize {
        Self::VOCAB_SIZE
    }
}

impl Tokenizer for Gpt2Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Gpt2Tokenizer::encode(self, text)
    }
    fn decode(&self, ids: &[u32]) -> String {
        Gpt2Tokenizer::decode(self, ids)
    }
    fn vocab_size(&self) -> usize {
        Gpt2Tokenizer::vocab_size(self)
    }
}
