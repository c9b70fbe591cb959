//! Text data (`munja::data`): tokenizer round trips, the train/val split and seeded random windows, and
//! llm.c token shards (reading, validation errors, sequential and random batching, resuming).

use crate::gpt::Scratch;
use munja::data::{
    write_shard, CharTokenizer, Gpt2Tokenizer, ShardPosition, Split, TextDataset, TokenShard, TokenShards, Tokenizer,
    SHARD_MAGIC,
};
use munja::{Device, Error, Generator, Result};

const CPU: Device = Device::Cpu;

#[test]
fn char_tokenizer_round_trips_and_rejects_unknown_characters() -> Result<()> {
    let corpus = "First Citizen:\nBefore we proceed any further, hear me speak.\n";
    let tok = CharTokenizer::from_corpus(corpus)?;
    let mut chars: Vec<char> = corpus.chars().collect();
    chars.sort();
    chars.dedup();
    assert_eq!(tok.chars(), chars.as_slice());
    assert_eq!(tok.vocab_size(), chars.len());
    let ids = tok.encode("hear me")?;
    assert_eq!(tok.decode(&ids), "hear me");
    assert_eq!(tok.encode("\n")?, vec![0], "the newline sorts first");
    let err = tok.encode("hear Z").unwrap_err().to_string();
    assert!(err.contains("'Z'") && err.contains("position 5"), "{err}");
    assert_eq!(tok.decode(&[999]), "\u{FFFD}");
    assert!(CharTokenizer::from_corpus("").is_err());
    // Through the trait object, as a training program holds it.
    let dynamic: &dyn Tokenizer = &tok;
    assert_eq!(dynamic.decode(&dynamic.encode("speak.")?), "speak.");
    Ok(())
}

#[test]
fn char_tokenizer_json_keeps_every_character() -> Result<()> {
    let tok = CharTokenizer::from_corpus("a\"b\\c\n\t\r\u{1}é中🦀 /")?;
    let json = tok.to_json();
    assert!(json.starts_with('"') && json.ends_with('"') && !json.contains('\n'), "{json}");
    assert_eq!(CharTokenizer::from_json(&json)?, tok);
    // Escapes another JSON writer might use: \/ and a surrogate pair for the crab.
    let other = CharTokenizer::from_json(r#""\u0041\/\ud83e\udd80""#)?;
    assert_eq!(other.chars(), ['A', '/', '🦀']);
    for bad in ["abc", "\"a", "\"\\q\"", "\"aa\"", "\"\"", "\"\\ud83e\""] {
        assert!(CharTokenizer::from_json(bad).is_err(), "{bad} should not parse");
    }
    Ok(())
}

#[test]
fn gpt2_tokenizer_matches_known_ids() -> Result<()> {
    let tok = Gpt2Tokenizer::new()?;
    assert_eq!(tok.encode("Hello world")?, vec![15496, 995]);
    assert_eq!(tok.vocab_size(), 50257);
    let text = "To be, or not to be: that is the question.\n  Ünïcödé 🦀";
    assert_eq!(tok.decode(&tok.encode(text)?), text);
    assert_eq!(tok.decode(&[Gpt2Tokenizer::EOT]), "<|endoftext|>");
    // Padded-vocabulary ids and a cut multi-byte character decode lossily instead of failing.
    assert_eq!(tok.decode(&[15496, 50300]), "Hello\u{FFFD}");
    let crab = tok.encode("🦀")?;
    assert!(crab.len() > 1, "the crab is several byte tokens: {crab:?}");
    assert!(tok.decode(&crab[..1]).contains('\u{FFFD}'));
    Ok(())
}

#[test]
fn dataset_splits_90_10_and_batches_reproducibly() -> Result<()> {
    let tokens: Vec<u32> = (0..1000).collect();
    let ds = TextDataset::from_tokens(tokens.clone(), 0.1)?;
    assert_eq!(ds.tokens(Split::Train), &tokens[..900]);
    assert_eq!(ds.tokens(Split::Val), &tokens[900..]);
    let mut g = Generator::new(7);
    let (x, y) = ds.batch(Split::Train, 4, 16, &mut g, CPU)?;
    assert_eq!(x.dims(), &[4, 16]);
    let (xv, yv) = (x.to_vec::<i64>()?, y.to_vec::<i64>()?);
    for r in 0..4 {
        let row = &xv[r * 16..(r + 1) * 16];
        // Consecutive tokens, the targets shifted by one, inside the training part.
        assert!(row.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(&yv[r * 16..(r + 1) * 16], row.iter().map(|v| v + 1).collect::<Vec<_>>().as_slice());
        assert!(row[15] + 1 < 900);
    }
    // Same generator state, same batch; the state after a batch continues the sequence (resume).
    let mut a = Generator::new(7);
    let (xa, _) = ds.batch(Split::Train, 4, 16, &mut a, CPU)?;
    assert_eq!(xa.to_vec::<i64>()?, xv);
    let saved = a;
    let (n1, _) = ds.batch(Split::Train, 4, 16, &mut a, CPU)?;
    let mut resumed = saved;
    let (n2, _) = ds.batch(Split::Train, 4, 16, &mut resumed, CPU)?;
    assert_eq!(n1.to_vec::<i64>()?, n2.to_vec::<i64>()?);
    assert_ne!(n1.to_vec::<i64>()?, xv, "the generator moved on");
    let (xv2, _) = ds.batch(Split::Val, 2, 99, &mut g, CPU)?;
    assert!(xv2.to_vec::<i64>()?.iter().all(|&t| t >= 900));
    assert!(ds.batch(Split::Val, 2, 100, &mut g, CPU).is_err(), "100 val tokens cannot fill a window of 101");
    assert!(TextDataset::from_tokens(tokens.as_slice(), 1.0).is_err());
    assert!(TextDataset::from_tokens(Vec::new(), 0.1).is_err());
    Ok(())
}

#[test]
fn shards_read_llm_c_layout() -> Result<()> {
    let dir = Scratch::new("shards");
    let path = dir.path("train_000000.bin");
    let tokens: Vec<u32> = (0..300).map(|i| (i * 211) % 50257).collect();
    write_shard(&path, &tokens)?;
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(bytes.len(), 1024 + 600);
    assert_eq!(i32::from_le_bytes(bytes[0..4].try_into().unwrap()), SHARD_MAGIC);
    assert_eq!(i32::from_le_bytes(bytes[8..12].try_into().unwrap()), 300);
    assert_eq!(u16::from_le_bytes([bytes[1026], bytes[1027]]), 211);
    let shard = TokenShard::open(&path)?;
    assert_eq!(shard.len(), 300);
    assert_eq!(shard.to_vec(), tokens);
    assert!(write_shard(dir.path("big.bin"), &[70000]).is_err(), "uint16 tokens only");
    Ok(())
}

#[test]
fn bad_shards_are_errors_naming_the_file() -> Result<()> {
    let dir = Scratch::new("badshards");
    let good = dir.path("good.bin");
    write_shard(&good, &[1, 2, 3, 4, 5])?;
    let bytes = std::fs::read(&good).expect("read");
    let check = |name: &str, data: &[u8], want: &str| {
        let p = dir.path(name);
        std::fs::write(&p, data).expect("write");
        let err = TokenShard::open(&p).unwrap_err();
        assert!(matches!(err, Error::File { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(name) && msg.contains(want), "{msg}");
    };
    let mut magic = bytes.clone();
    magic[0] ^= 1;
    check("magic.bin", &magic, "magic");
    let mut version = bytes.clone();
    version[4] = 2;
    check("version.bin", &version, "version");
    check("truncated.bin", &bytes[..bytes.len() - 1], "truncated");
    check("long.bin", &[bytes.as_slice(), &[0, 0]].concat(), "longer");
    check("header.bin", &bytes[..100], "header");
    let err = TokenShard::open(dir.path("absent.bin")).unwrap_err().to_string();
    assert!(err.contains("absent.bin"), "{err}");
    // One bad file among good ones fails the whole set at open time.
    assert!(TokenShards::open(&[good, dir.path("truncated.bin")]).is_err());
    Ok(())
}

#[test]
fn shards_batch_sequentially_across_files_and_resume() -> Result<()> {
    let dir = Scratch::new("seq");
    // Three shards: 0..40, 100..110 (too short for a batch), 200..250.
    write_shard(dir.path("d_000.bin"), &(0..40).collect::<Vec<_>>())?;
    write_shard(dir.path("d_001.bin"), &(100..110).collect::<Vec<_>>())?;
    write_shard(dir.path("d_002.bin"), &(200..250).collect::<Vec<_>>())?;
    write_shard(dir.path("other.bin"), &[7])?;
    let pattern = dir.path("d_*.bin");
    let mut shards = TokenShards::open_pattern(pattern.to_str().unwrap())?;
    assert_eq!(shards.shards().len(), 3);
    assert_eq!(shards.num_tokens(), 100);
    let firsts = |s: &mut TokenShards| -> Result<(Vec<i64>, Vec<i64>)> {
        let (x, y) = s.next_batch(2, 8, CPU)?;
        Ok((x.to_vec::<i64>()?, y.to_vec::<i64>()?))
    };
    // B·T = 16: shard 0 gives windows at 0 and 16 (33 tokens needed at 16 of 40: fits), then shard 2.
    let (x, y) = firsts(&mut shards)?;
    assert_eq!(x, (0..16).collect::<Vec<_>>());
    assert_eq!(y, (1..17).collect::<Vec<_>>());
    assert_eq!(firsts(&mut shards)?.0, (16..32).collect::<Vec<_>>());
    let at = shards.position();
    assert_eq!(at, ShardPosition { shard: 0, offset: 32 });
    let third = firsts(&mut shards)?.0;
    assert_eq!(third, (200..216).collect::<Vec<_>>(), "the short shard is skipped");
    assert_eq!(firsts(&mut shards)?.0, (216..232).collect::<Vec<_>>());
    assert_eq!(firsts(&mut shards)?.0, (232..248).collect::<Vec<_>>(), "49 of 50 tokens: still fits");
    assert_eq!(firsts(&mut shards)?.0, (0..16).collect::<Vec<_>>(), "wraps to the first shard");
    shards.set_position(at)?;
    assert_eq!(firsts(&mut shards)?.0, third, "resumes where it was");
    assert!(shards.set_position(ShardPosition { shard: 3, offset: 0 }).is_err());
    assert!(shards.next_batch(4, 16, CPU).is_err(), "no shard holds 65 tokens");
    assert_eq!(shards.to_vec().len(), 100);
    assert!(TokenShards::open_pattern(dir.path("none_*.bin").to_str().unwrap()).is_err());
    Ok(())
}

#[test]
fn shards_random_windows_are_seeded_and_stay_inside_one_shard() -> Result<()> {
    let dir = Scratch::new("rand");
    write_shard(dir.path("a.bin"), &(0..30).collect::<Vec<_>>())?;
    write_shard(dir.path("b.bin"), &(1000..1030).collect::<Vec<_>>())?;
    let shards = TokenShards::open(&[dir.path("a.bin"), dir.path("b.bin")])?;
    let (x, y) = shards.random_batch(64, 5, &mut Generator::new(3), CPU)?;
    let (xv, yv) = (x.to_vec::<i64>()?, y.to_vec::<i64>()?);
    let mut seen = [false; 2];
    for r in 0..64 {
        let row = &xv[r * 5..r * 5 + 5];
        assert!(row.windows(2).all(|w| w[1] == w[0] + 1), "a window crosses shards: {row:?}");
        assert_eq!(yv[r * 5 + 4], row[4] + 1);
        seen[(row[0] >= 1000) as usize] = true;
    }
    assert_eq!(seen, [true, true], "both shards are drawn from");
    let (x2, _) = shards.random_batch(64, 5, &mut Generator::new(3), CPU)?;
    assert_eq!(x2.to_vec::<i64>()?, xv);
    assert!(shards.random_batch(1, 30, &mut Generator::new(0), CPU).is_err());
    Ok(())
}
