//! The run's checkpoint, `<out>/checkpoint.safetensors`: the model (f32: a bf16 run's master weights) and
//! both optimizer groups as tensors
//! (through `munja::io::save_checkpoint`, which writes atomically: a crash mid-save leaves the previous
//! checkpoint as it was), and in the metadata the config, the step, the tokenizer, the data fingerprint and
//! both generator states.

use super::config::{meta, TrainConfig};
use super::corpus::{load_tokens, Tok};
use super::train::{Trainer, CHECKPOINT_FILE};
use munja::io::{load_checkpoint, load_safetensors, save_checkpoint};
use munja::models::{Gpt, GptConfig};
use munja::nn::Module;
use munja::{DType, Device, Error, Generator, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Names the layout of this program's checkpoints, so a file from elsewhere is refused clearly.
const FORMAT: &str = "munja-gpt-example/1";
const MODEL_PREFIX: &str = "model.";

fn generator_to_string(g: Generator) -> String {
    format!("{}:{}", g.seed, g.offset)
}

fn generator_from_meta(m: &BTreeMap<String, String>, key: &str) -> Result<Generator> {
    let s: String = meta(m, key)?;
    let parsed =
        s.split_once(':').and_then(|(a, b)| Some(Generator { seed: a.parse().ok()?, offset: b.parse().ok()? }));
    parsed.ok_or_else(|| Error::Invalid { op: "checkpoint", detail: format!("'{key}' = '{s}' is not seed:offset") })
}

/// Saves everything `resume` needs to continue after `t.step`.
pub fn save(t: &Trainer, path: &Path, elapsed_s: f64) -> Result<()> {
    let mut m = t.cfg.to_metadata();
    t.tok.to_metadata(&mut m);
    m.insert("format".into(), FORMAT.into());
    m.insert("run.step".into(), t.step.to_string());
    m.insert("run.elapsed_s".into(), elapsed_s.to_string());
    m.insert("rng.data".into(), generator_to_string(t.data_gen));
    m.insert("rng.default".into(), generator_to_string(munja::rng::default_state()));
    m.insert("data.fingerprint".into(), t.fingerprint.clone());
    m.insert("data.path".into(), t.data_path.display().to_string());
    save_checkpoint(path, t.weights(), &t.opt, &m)
}

/// The checkpoint file of run directory `dir` (or `dir` itself when it names a file).
pub fn checkpoint_file(dir: &Path) -> PathBuf {
    if dir.is_file() {
        dir.to_path_buf()
    } else {
        dir.join(CHECKPOINT_FILE)
    }
}

/// The metadata of a checkpoint, checked to be one of ours. Reading it reads (and so checks) the file.
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    if !path.exists() {
        return Err(Error::File {
            path: path.display().to_string(),
            detail: "no checkpoint here (train first, or point --resume/--out at a run directory)".into(),
        });
    }
    let (_, m) = load_safetensors(path)?;
    match m.get("format") {
        Some(f) if f == FORMAT => Ok(m),
        other => Err(Error::File {
            path: path.display().to_string(),
            detail: format!("not a checkpoint of this program (format {other:?}, expected {FORMAT:?})"),
        }),
    }
}

/// Rebuilds the run saved in `dir` on `device`, ready to continue from its step. The data is read from
/// `data`, or from where the run read it; either way it must be the token stream the run trained on.
pub fn resume(dir: &Path, data: Option<&Path>, device: Device) -> Result<Trainer> {
    let path = checkpoint_file(dir);
    let m = read_metadata(&path)?;
    let cfg = TrainConfig::from_metadata(&m)?;
    let tok = Tok::from_metadata(&m)?;
    let data = match data {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from(meta::<String>(&m, "data.path")?),
    };
    let tokens = load_tokens(&data, &tok)?;
    let mut t = Trainer::new(cfg, tok, tokens, device)?;
    t.data_path = data.clone();
    let want: String = meta(&m, "data.fingerprint")?;
    if t.fingerprint != want {
        return Err(Error::Invalid {
            op: "--resume",
            detail: format!(
                "{} is not the token stream this run trained on (fingerprint {} vs {want}): pass the run's --data",
                data.display(),
                t.fingerprint
            ),
        });
    }
    let weights = t.master.as_ref().unwrap_or(&t.model);
    load_checkpoint(&path, weights, &mut t.opt)?;
    // A bf16 run's working weights are its masters rounded, as they were when the checkpoint was saved.
    t.opt.sync_working()?;
    t.step = meta(&m, "run.step")?;
    t.elapsed_before_s = meta(&m, "run.elapsed_s")?;
    t.data_gen = generator_from_meta(&m, "rng.data")?;
    munja::rng::set_default_state(generator_from_meta(&m, "rng.default")?);
    Ok(t)
}

/// What sampling needs from a run directory: the model (in `dtype`, eval mode), its tokenizer and the
/// step it was saved at. Only the `model.` tensors are used; the optimizer state is left in the file.
pub fn load_for_inference(dir: &Path, dtype: DType, device: Device) -> Result<(Gpt, Tok, usize)> {
    let path = checkpoint_file(dir);
    let m = read_metadata(&path)?;
    let config = GptConfig::from_metadata(&m)?;
    let tok = Tok::from_metadata(&m)?;
    let (tensors, _) = load_safetensors(&path)?;
    let mut found: HashMap<String, munja::Tensor> =
        tensors.into_iter().filter_map(|(n, t)| Some((n.strip_prefix(MODEL_PREFIX)?.to_string(), t))).collect();
    let model = Gpt::new(config, dtype, device, &mut Generator::new(0))?;
    for (name, p) in model.named_parameters() {
        let src = found.remove(&name).ok_or_else(|| Error::File {
            path: path.display().to_string(),
            detail: format!("tensor '{MODEL_PREFIX}{name}' is missing"),
        })?;
        if src.dims() != p.dims() {
            return Err(Error::File {
                path: path.display().to_string(),
                detail: format!("tensor '{MODEL_PREFIX}{name}' is {:?}, the model's {:?}", src.dims(), p.dims()),
            });
        }
        p.assign(&src.to_dtype(dtype)?.to_device(device)?)?;
    }
    model.eval();
    Ok((model, tok, meta(&m, "run.step")?))
}
