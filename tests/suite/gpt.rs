//! The GPT model (`munja::models::gpt`): loss, logits and every parameter gradient against a PyTorch
//! nanoGPT-style fixture; Hugging Face GPT-2 weights loaded and evaluated against transformers' loss, and
//! saved back; KV-cache sampling against uncached sampling; checkpoints; configs and init.
//!
//! Fixtures come from tests/fixtures/make_gpt_fixtures.py (torch 2.11, transformers 5.24, CPU).

use crate::common::rel_err;
use munja::data::CharTokenizer;
use munja::io::{load_checkpoint, load_safetensors, save_checkpoint, save_safetensors};
use munja::models::gpt::{pad_vocab, Gpt, GptConfig};
use munja::nn::Module;
use munja::optim::{AdamConfig, AdamW, Optimizer};
use munja::{DType, Device, Error, Generator, Result, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

const CPU: Device = Device::Cpu;

/// A fresh empty directory for one test, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("munja-gpt-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch dir");
        Scratch(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture(name: &str) -> (BTreeMap<String, Tensor>, BTreeMap<String, String>) {
    let path = format!("{}/tests/fixtures/{name}.safetensors", env!("CARGO_MANIFEST_DIR"));
    let (t, m) = load_safetensors(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    (t.into_iter().collect(), m)
}

fn fixture_path(name: &str) -> String {
    format!("{}/tests/fixtures/{name}.safetensors", env!("CARGO_MANIFEST_DIR"))
}

/// The configuration of the PyTorch fixture model.
fn tiny_config() -> GptConfig {
    GptConfig { vocab_size: 11, block_size: 8, n_layer: 2, n_head: 2, n_embd: 16, dropout: 0.0, bias: true }
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) -> Result<f64> {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let e = rel_err(got, want)?;
    assert!(e <= tol, "{what}: relative error {e:.3e} above {tol:.0e}");
    Ok(e)
}

fn ids(v: &[i64], shape: &[usize]) -> Result<Tensor> {
    Tensor::from_slice(v, shape, CPU)
}

#[test]
fn tiny_gpt_matches_pytorch_loss_logits_and_every_gradient() -> Result<()> {
    let (fx, _) = fixture("gpt_tiny");
    let model = Gpt::new(tiny_config(), DType::F32, CPU, &mut Generator::new(0))?;
    // The fixture's parameter names are torch's named_parameters(): the same set, so names match exactly.
    let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
    let want_names: Vec<String> = fx.keys().filter_map(|k| k.strip_prefix("init.")).map(str::to_string).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, want_names, "parameter names differ from the PyTorch model's");
    for (n, p) in model.named_parameters() {
        p.assign(&fx[&format!("init.{n}")])?;
    }
    let logits = model.forward(&fx["ids"])?;
    assert_close("logits", &logits, &fx["logits"], 1e-5)?;
    let short = model.forward(&fx["short.ids"])?;
    assert_close("short.logits", &short, &fx["short.logits"], 1e-5)?;
    let loss = model.loss(&fx["ids"], &fx["targets"])?;
    let (got, want) = (loss.item()?, fx["loss"].item()?);
    assert!(((got - want) / want).abs() < 1e-6, "loss {got} vs torch {want}");
    loss.backward()?;
    let mut worst = 0f64;
    for (n, p) in model.named_parameters() {
        let g = p.grad().unwrap_or_else(|| panic!("{n} got no gradient"));
        let e = assert_close(&format!("grad.{n}"), &g, &fx[&format!("grad.{n}")], 1e-4)?;
        worst = worst.max(e);
    }
    println!("tiny GPT: worst gradient relative error {worst:.2e}");
    assert!(worst < 1e-5, "worst gradient relative error {worst:.2e} (aim: 1e-5)");
    Ok(())
}

#[test]
fn hf_gpt2_eval_matches_transformers() -> Result<()> {
    let (fx, meta) = fixture("gpt_hf_tiny_eval");
    let n_head: usize = meta["n_head"].parse().expect("n_head metadata");
    let model = Gpt::load_hf_with_n_head(fixture_path("gpt_hf_tiny"), Some(n_head), DType::F32, CPU)?;
    let c = model.config();
    assert_eq!((c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd), (97, 16, 2, 2, 16));
    assert!(c.bias && c.dropout == 0.0);
    let tokens: Vec<u32> = fx["tokens"].to_vec::<i64>()?.into_iter().map(|t| t as u32).collect();
    let window0 = ids(&fx["tokens"].to_vec::<i64>()?[..16], &[1, 16])?;
    let logits = model.forward(&window0)?.squeeze(0)?;
    assert_close("window0.logits", &logits, &fx["window0.logits"], 1e-5)?;
    let want = fx["loss"].item()?;
    for batch in [1, 2, 5, 8] {
        let got = model.eval_stream(&tokens, batch)?;
        let e = ((got - want) / want).abs();
        assert!(e < 1e-5, "batch {batch}: eval loss {got} vs transformers {want} (rel {e:.2e})");
    }
    // Too short for one window: an error, not a NaN.
    assert!(matches!(model.eval_stream(&tokens[..16], 4), Err(Error::Invalid { .. })));
    Ok(())
}

#[test]
fn hf_n_head_needs_a_source_when_the_width_is_not_a_multiple_of_64() {
    let err = Gpt::load_hf(fixture_path("gpt_hf_tiny"), DType::F32, CPU).unwrap_err();
    assert!(err.to_string().contains("n_head"), "{err}");
}

#[test]
fn hf_save_load_round_trip_and_transformers_layout() -> Result<()> {
    let dir = Scratch::new("hf-roundtrip");
    let model = Gpt::load_hf_with_n_head(fixture_path("gpt_hf_tiny"), Some(2), DType::F32, CPU)?;
    let file = dir.path("saved.safetensors");
    model.save_hf(&file)?;
    // The layout: Conv1D weights [in, out], the transformer. prefix, no lm_head, format = pt.
    let (tensors, meta) = load_safetensors(&file)?;
    let saved: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    let (orig, _) = load_safetensors(fixture_path("gpt_hf_tiny"))?;
    assert_eq!(saved.len(), orig.len());
    for (name, t) in &orig {
        assert_eq!(saved[name].to_vec::<f32>()?, t.to_vec::<f32>()?, "{name} differs from the transformers file");
    }
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
    // n_head travels in the metadata, so loading needs no hint.
    let back = Gpt::load_hf(&file, DType::F32, CPU)?;
    assert_eq!(back.config(), model.config());
    for ((n, a), (_, b)) in model.named_parameters().into_iter().zip(back.named_parameters()) {
        assert_eq!(a.to_vec::<f32>()?, b.to_vec::<f32>()?, "{n}");
    }
    // A directory gets model.safetensors and config.json, from which n_head is read.
    let sub = dir.path("hf");
    std::fs::create_dir(&sub).expect("mkdir");
    model.save_hf(&sub)?;
    let json = std::fs::read_to_string(sub.join("config.json")).expect("config.json");
    assert!(json.contains("\"n_head\": 2") && json.contains("\"GPT2LMHeadModel\""), "{json}");
    let again = Gpt::load_hf(&sub, DType::F64, CPU)?;
    assert_eq!(again.config(), model.config());
    assert_eq!(again.dtype(), DType::F64);
    Ok(())
}

#[test]
fn hf_load_accepts_unprefixed_names_and_mask_buffers() -> Result<()> {
    // The original OpenAI conversion: no transformer. prefix, attn.bias mask buffers, an lm_head copy.
    let dir = Scratch::new("hf-legacy");
    let (tensors, _) = load_safetensors(fixture_path("gpt_hf_tiny"))?;
    let mut legacy: Vec<(String, Tensor)> =
        tensors.into_iter().map(|(n, t)| (n.trim_start_matches("transformer.").to_string(), t)).collect();
    let mask = Tensor::ones(&[1, 1, 16, 16], DType::F32, CPU)?.tril(0)?;
    for i in 0..2 {
        legacy.push((format!("h.{i}.attn.bias"), mask.clone()));
        legacy.push((format!("h.{i}.attn.masked_bias"), Tensor::scalar(-1e4, DType::F32, CPU)?));
    }
    let wte = legacy.iter().find(|(n, _)| n == "wte.weight").expect("wte").1.clone();
    legacy.push(("lm_head.weight".into(), wte));
    let file = dir.path("legacy.safetensors");
    save_safetensors(&file, &legacy, &BTreeMap::new())?;
    let a = Gpt::load_hf_with_n_head(&file, Some(2), DType::F32, CPU)?;
    let b = Gpt::load_hf_with_n_head(fixture_path("gpt_hf_tiny"), Some(2), DType::F32, CPU)?;
    for ((n, x), (_, y)) in a.named_parameters().into_iter().zip(b.named_parameters()) {
        assert_eq!(x.to_vec::<f32>()?, y.to_vec::<f32>()?, "{n}");
    }
    Ok(())
}

#[test]
fn hf_load_names_a_missing_or_misshapen_tensor() -> Result<()> {
    let dir = Scratch::new("hf-errors");
    let (tensors, _) = load_safetensors(fixture_path("gpt_hf_tiny"))?;
    type Named = Vec<(String, Tensor)>;
    let write = |name: &str, edit: &dyn Fn(&mut Named)| -> Result<PathBuf> {
        let mut t = tensors.clone();
        edit(&mut t);
        let p = dir.path(name);
        save_safetensors(&p, &t, &BTreeMap::new())?;
        Ok(p)
    };
    let missing = write("missing.safetensors", &|t| t.retain(|(n, _)| n != "transformer.h.1.mlp.c_fc.bias"))?;
    let err = Gpt::load_hf_with_n_head(&missing, Some(2), DType::F32, CPU).unwrap_err().to_string();
    assert!(err.contains("h.1.mlp.c_fc.bias") && err.contains("missing"), "{err}");
    let bad = write("shape.safetensors", &|t| {
        let e = t.iter_mut().find(|(n, _)| n == "transformer.h.0.attn.c_proj.weight").expect("present");
        e.1 = Tensor::zeros(&[16, 15], DType::F32, CPU).expect("zeros");
    })?;
    let err = Gpt::load_hf_with_n_head(&bad, Some(2), DType::F32, CPU).unwrap_err().to_string();
    assert!(err.contains("h.0.attn.c_proj.weight") && err.contains("[16, 15]"), "{err}");
    let extra = write("extra.safetensors", &|t| {
        t.push(("transformer.h.0.attn.rotary".into(), Tensor::zeros(&[2], DType::F32, CPU).expect("zeros")))
    })?;
    let err = Gpt::load_hf_with_n_head(&extra, Some(2), DType::F32, CPU).unwrap_err().to_string();
    assert!(err.contains("h.0.attn.rotary"), "{err}");
    let err = Gpt::load_hf(dir.path("absent.safetensors"), DType::F32, CPU).unwrap_err().to_string();
    assert!(err.contains("absent.safetensors"), "{err}");
    Ok(())
}

fn small_model(dtype: DType, block_size: usize, seed: u64) -> Result<Gpt> {
    let cfg = GptConfig { vocab_size: 23, block_size, n_layer: 2, n_head: 4, n_embd: 32, dropout: 0.1, bias: true };
    let model = Gpt::new(cfg, dtype, CPU, &mut Generator::new(seed))?;
    // GPT-2's init makes a flat distribution; larger weights give the sampler peaked, distinct logits.
    for (n, p) in model.named_parameters() {
        if n.ends_with("weight") && !n.contains("ln") {
            p.assign(&p.mul_scalar(20.0)?.detach())?;
        }
    }
    Ok(model)
}

#[test]
fn kv_cache_generation_equals_uncached_generation() -> Result<()> {
    // Context 8 with a 3-token prompt and 20 new tokens: the cache fills up and is rebuilt many times.
    let model = small_model(DType::F32, 8, 7)?;
    let prompt = [1u32, 5, 2];
    let cached = model.generate(&prompt, 20, 0.0, None, &mut Generator::new(1))?;
    let uncached = model.generate_uncached(&prompt, 20, 0.0, None, &mut Generator::new(1))?;
    assert_eq!(cached.len(), 23);
    assert_eq!(&cached[..3], &prompt);
    assert_eq!(cached, uncached, "greedy");
    assert!(cached[3..].iter().any(|&t| t != cached[3]), "the model should not emit one token only: {cached:?}");
    for (t, k) in [(1.0, None), (0.8, Some(5)), (1.0, Some(1))] {
        let a = model.generate(&prompt, 20, t, k, &mut Generator::new(9))?;
        let b = model.generate_uncached(&prompt, 20, t, k, &mut Generator::new(9))?;
        assert_eq!(a, b, "temperature {t}, top_k {k:?}");
    }
    // top_k = 1 is greedy.
    assert_eq!(model.generate(&prompt, 20, 1.0, Some(1), &mut Generator::new(3))?, cached);
    // A prompt longer than the context is cropped to its last block_size tokens.
    let long: Vec<u32> = (0..12).map(|i| i % 23).collect();
    let a = model.generate(&long, 5, 0.0, None, &mut Generator::new(0))?;
    let b = model.generate_uncached(&long, 5, 0.0, None, &mut Generator::new(0))?;
    assert_eq!(a, b);
    // Sampling never changes the training mode nor records a graph.
    assert!(model.is_training());
    Ok(())
}

#[test]
fn generation_rejects_bad_arguments() -> Result<()> {
    let model = small_model(DType::F32, 8, 1)?;
    let mut g = Generator::new(0);
    assert!(model.generate(&[], 3, 1.0, None, &mut g).is_err());
    assert!(model.generate(&[1], 3, -1.0, None, &mut g).is_err());
    assert!(model.generate(&[1], 3, 1.0, Some(0), &mut g).is_err());
    assert!(matches!(model.generate(&[99], 3, 1.0, None, &mut g), Err(Error::Index { .. })));
    assert_eq!(model.generate(&[4, 2], 0, 1.0, None, &mut g)?, vec![4, 2]);
    Ok(())
}

#[test]
fn forward_checks_its_input() -> Result<()> {
    let model = small_model(DType::F32, 8, 1)?;
    let err = model.forward(&ids(&[0; 9], &[1, 9])?).unwrap_err();
    assert!(err.to_string().contains("block_size"), "{err}");
    assert!(matches!(model.forward(&Tensor::zeros(&[1, 4], DType::F32, CPU)?), Err(Error::DType { .. })));
    assert!(model.forward(&ids(&[0; 4], &[4])?).is_err());
    Ok(())
}

#[test]
fn dropout_follows_the_training_mode() -> Result<()> {
    let model = small_model(DType::F32, 8, 2)?;
    let x = ids(&[1, 2, 3, 4, 5, 6], &[2, 3])?;
    model.eval();
    let (a, b) = (model.forward(&x)?, model.forward(&x)?);
    assert_eq!(a.to_vec::<f32>()?, b.to_vec::<f32>()?, "eval mode is deterministic");
    model.train();
    let c = model.forward(&x)?;
    assert_ne!(a.to_vec::<f32>()?, c.to_vec::<f32>()?, "dropout 0.1 is active in training mode");
    Ok(())
}

#[test]
fn checkpoint_round_trip_restores_model_config_and_tokenizer() -> Result<()> {
    let dir = Scratch::new("ckpt");
    let tok = CharTokenizer::from_corpus("hello, world\n\"quoted\"\t\\ ünï")?;
    let mut cfg = GptConfig::preset("char-tiny")?;
    cfg.vocab_size = tok.vocab_size();
    cfg.block_size = 16;
    cfg.n_layer = 2;
    let model = Gpt::new(cfg.clone(), DType::F32, CPU, &mut Generator::new(5))?;
    let mut opt = AdamW::new(model.named_parameters(), AdamConfig::adamw())?;
    let x = ids(&tok.encode("hello, w")?.iter().map(|&t| t as i64).collect::<Vec<_>>(), &[1, 8])?;
    let y = ids(&tok.encode("ello, wo")?.iter().map(|&t| t as i64).collect::<Vec<_>>(), &[1, 8])?;
    model.loss(&x, &y)?.backward()?;
    opt.step()?;
    let mut meta = cfg.to_metadata();
    meta.insert(CharTokenizer::METADATA_KEY.into(), tok.to_json());
    let path = dir.path("ckpt.safetensors");
    save_checkpoint(&path, &model, &opt, &meta)?;

    let (_, file_meta) = load_safetensors(&path)?;
    let cfg2 = GptConfig::from_metadata(&file_meta)?;
    assert_eq!(cfg2, cfg);
    let tok2 = CharTokenizer::from_json(&file_meta[CharTokenizer::METADATA_KEY])?;
    assert_eq!(tok2, tok);
    let fresh = Gpt::new(cfg2, DType::F32, CPU, &mut Generator::new(6))?;
    let mut opt2 = AdamW::new(fresh.named_parameters(), AdamConfig::adamw())?;
    load_checkpoint(&path, &fresh, &mut opt2)?;
    for ((n, a), (_, b)) in model.named_parameters().into_iter().zip(fresh.named_parameters()) {
        assert_eq!(a.to_vec::<f32>()?, b.to_vec::<f32>()?, "{n}");
    }
    model.eval();
    fresh.eval();
    assert_eq!(model.forward(&x)?.to_vec::<f32>()?, fresh.forward(&x)?.to_vec::<f32>()?);
    Ok(())
}

#[test]
fn presets_and_config_validation() -> Result<()> {
    let p = |n: &str| GptConfig::preset(n).expect("known preset");
    let t = p("char-tiny");
    assert_eq!((t.n_layer, t.n_head, t.n_embd, t.block_size, t.vocab_size, t.dropout), (4, 4, 128, 64, 0, 0.0));
    let s = p("shakespeare-char");
    assert_eq!((s.n_layer, s.n_head, s.n_embd, s.block_size, s.dropout), (6, 6, 384, 256, 0.2));
    let g = p("gpt2");
    assert_eq!((g.n_layer, g.n_head, g.n_embd, g.block_size, g.vocab_size), (12, 12, 768, 1024, 50304));
    assert_eq!(g.vocab_size % 64, 0);
    let m = p("gpt2-medium");
    assert_eq!((m.n_layer, m.n_head, m.n_embd, m.vocab_size), (24, 16, 1024, 50304));
    assert_eq!(pad_vocab(50257, 64), 50304);
    let err = GptConfig::preset("gpt5").unwrap_err().to_string();
    for name in GptConfig::PRESETS {
        assert!(err.contains(name), "{err}");
    }
    // The character presets need a vocabulary before a model is built.
    let err = Gpt::new(t.clone(), DType::F32, CPU, &mut Generator::new(0)).unwrap_err().to_string();
    assert!(err.contains("vocab_size"), "{err}");
    let bad = GptConfig { vocab_size: 10, n_head: 3, ..t.clone() };
    assert!(Gpt::new(bad, DType::F32, CPU, &mut Generator::new(0)).is_err());
    let bad = GptConfig { vocab_size: 10, dropout: 1.0, ..t.clone() };
    assert!(bad.validate().is_err());
    assert!(Gpt::new(GptConfig { vocab_size: 10, ..t }, DType::I64, CPU, &mut Generator::new(0)).is_err());
    let mut meta = g.to_metadata();
    assert_eq!(GptConfig::from_metadata(&meta)?, g);
    meta.remove("gpt.n_head");
    assert!(GptConfig::from_metadata(&meta).unwrap_err().to_string().contains("gpt.n_head"));
    Ok(())
}

#[test]
fn gpt2_init_names_and_sizes() -> Result<()> {
    let cfg =
        GptConfig { vocab_size: 512, block_size: 64, n_layer: 4, n_head: 4, n_embd: 128, dropout: 0.0, bias: true };
    let model = Gpt::new(cfg.clone(), DType::F32, CPU, &mut Generator::new(42))?;
    let params = model.named_parameters();
    let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(&names[..4], ["wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.0.ln_1.bias"]);
    assert_eq!(names.len(), 2 + 12 * 4 + 2);
    assert!(names.contains(&"h.3.attn.c_attn.weight") && names.contains(&"ln_f.bias"));
    assert!(!names.iter().any(|n| n.contains("lm_head")), "the head is tied, not a parameter");
    let std = |t: &Tensor| -> Result<f64> {
        let v = t.to_vec_f64()?;
        let m = v.iter().sum::<f64>() / v.len() as f64;
        Ok((v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt())
    };
    let get = |n: &str| params.iter().find(|(k, _)| k == n).expect(n).1.clone();
    assert!((std(&get("wte.weight"))? - 0.02).abs() < 1e-3);
    assert!((std(&get("h.1.attn.c_attn.weight"))? - 0.02).abs() < 1e-3);
    let resid = 0.02 / (8f64).sqrt();
    assert!((std(&get("h.2.mlp.c_proj.weight"))? - resid).abs() < 5e-4);
    assert!((std(&get("h.0.attn.c_proj.weight"))? - resid).abs() < 5e-4);
    assert!(get("h.0.mlp.c_fc.bias").to_vec::<f32>()?.iter().all(|&v| v == 0.0));
    assert!(get("ln_f.weight").to_vec::<f32>()?.iter().all(|&v| v == 1.0));
    assert_eq!(get("h.0.attn.c_attn.weight").dims(), &[384, 128]);
    // Parameters: embeddings + 12C² + 13C per block + the final LayerNorm.
    let (c, l) = (128usize, 4usize);
    let n = 512 * c + 64 * c + l * (12 * c * c + 13 * c) + 2 * c;
    assert_eq!(model.num_params(), n);
    assert_eq!(model.flops_per_token(), (6 * (n - 64 * c) + 12 * l * c * 64) as f64);
    // Same seed, same model.
    let again = Gpt::new(cfg, DType::F32, CPU, &mut Generator::new(42))?;
    assert_eq!(again.wte.weight.to_vec::<f32>()?, model.wte.weight.to_vec::<f32>()?);
    Ok(())
}

#[test]
fn bias_free_model_trains_and_saves_for_transformers() -> Result<()> {
    let dir = Scratch::new("nobias");
    let cfg = GptConfig { vocab_size: 13, block_size: 8, n_layer: 1, n_head: 2, n_embd: 8, dropout: 0.0, bias: false };
    let model = Gpt::new(cfg, DType::F32, CPU, &mut Generator::new(3))?;
    assert!(!model.named_parameters().iter().any(|(n, _)| n.ends_with("bias")));
    let x = ids(&[1, 2, 3, 4], &[1, 4])?;
    let y = ids(&[2, 3, 4, -1], &[1, 4])?;
    model.loss(&x, &y)?.backward()?;
    assert!(model.parameters().iter().all(|p| p.grad().is_some()));
    // transformers' GPT-2 always has biases: they are written as zeros, which change nothing.
    let file = dir.path("m.safetensors");
    model.save_hf(&file)?;
    let back = Gpt::load_hf(&file, DType::F32, CPU)?;
    assert!(back.config().bias);
    model.eval();
    let e = rel_err(&back.forward(&x)?, &model.forward(&x)?)?;
    assert!(e < 1e-6, "{e}");
    Ok(())
}

#[test]
fn runs_in_bf16_and_f64() -> Result<()> {
    let x = ids(&[1, 2, 3, 4, 5, 6], &[2, 3])?;
    let y = ids(&[2, 3, 4, 5, 6, 7], &[2, 3])?;
    let reference = small_model(DType::F64, 8, 4)?;
    reference.eval();
    let want = reference.loss(&x, &y)?.item()?;
    for dtype in [DType::BF16, DType::F32] {
        let model = small_model(dtype, 8, 4)?;
        model.eval();
        let loss = model.loss(&x, &y)?;
        // A half-precision model's loss is reduced in f32.
        assert_eq!(loss.dtype(), DType::F32);
        let got = loss.item()?;
        let tol = if dtype == DType::BF16 { 5e-2 } else { 1e-5 };
        assert!(((got - want) / want).abs() < tol, "{dtype}: loss {got} vs f64 {want}");
        loss.backward()?;
        assert!(model.wte.weight.grad().expect("grad").to_vec_f64()?.iter().all(|v| v.is_finite()));
        assert_eq!(model.generate(&[1, 2], 4, 1.0, Some(3), &mut Generator::new(0))?.len(), 6);
    }
    Ok(())
}
