//! Hugging Face GPT-2 weights: reading and writing the `model.safetensors` layout of transformers'
//! `GPT2LMHeadModel`, so pretrained GPT-2 checkpoints fine-tune or evaluate in munja and munja's models
//! load back into transformers.
//!
//! The two layouts differ in one way: GPT-2's projections are `Conv1D` modules whose weights are stored
//! [in, out], where munja's Linear (and nanoGPT) use nn.Linear's [out, in]; those four weights per block are
//! transposed on the way in and out. The head is tied to `wte`, so `lm_head.weight` is ignored when present
//! and never written; the causal-mask buffers (`attn.bias`, `attn.masked_bias`) that older files carry are
//! ignored too. Names may carry the `transformer.` prefix (what `save_pretrained` writes) or not (the
//! original OpenAI conversion).

use super::gpt::{Gpt, GptConfig};
use crate::io::{load_safetensors, save_safetensors};
use crate::nn::Module;
use crate::{DType, Device, Error, Result, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

const PREFIX: &str = "transformer.";
const WEIGHTS_FILE: &str = "model.safetensors";
const CONFIG_FILE: &str = "config.json";
const GPT2_EOT: usize = 50256;

/// Whether a GPT-2 parameter is a Conv1D weight (stored [in, out] by Hugging Face).
fn is_conv1d(name: &str) -> bool {
    name.starts_with("h.")
        && [".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// Tensors of a transformers file that munja has no use for.
fn is_ignored(name: &str) -> bool {
    name == "lm_head.weight" || name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")
}

/// A directory means its `model.safetensors`.
fn weights_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(WEIGHTS_FILE)
    } else {
        path.to_path_buf()
    }
}

/// The integer value of `"key": 12` in a JSON text. transformers' config.json is flat for the keys
/// needed here, so a scan is enough and spares a JSON dependency.
fn json_usize(text: &str, key: &str) -> Option<usize> {
    let quoted = format!("\"{key}\"");
    let rest = &text[text.find(&quoted)? + quoted.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

impl Gpt {
    /// Loads a Hugging Face GPT-2 checkpoint (`model.safetensors`, or a directory holding one), with the
    /// number of heads taken from the file's metadata, else from a `config.json` beside it, else
    /// n_embd / 64 (GPT-2's head size). See `load_hf_with_n_head` to give it explicitly.
    pub fn load_hf(path: impl AsRef<Path>, dtype: DType, device: Device) -> Result<Gpt> {
        Gpt::load_hf_with_n_head(path, None, dtype, device)
    }

    /// `load_hf` with the number of heads given (`Some`) or found as `load_hf` does (`None`). The rest of
    /// the config comes from the tensors' shapes: n_layer from the `h.{i}` blocks, n_embd and the
    /// vocabulary from `wte`, block_size from `wpe`, biases from whether `ln_f.bias` exists. The vocabulary
    /// is kept as stored (50257 for GPT-2: no padding). Dropout is 0. A missing tensor or one of the wrong
    /// shape is an error naming it, and so is a tensor GPT-2 does not have.
    pub fn load_hf_with_n_head(
        path: impl AsRef<Path>,
        n_head: Option<usize>,
        dtype: DType,
        device: Device,
    ) -> Result<Gpt> {
        let path = weights_path(path.as_ref());
        let (tensors, metadata) = load_safetensors(&path)?;
        let mut found: HashMap<String, Tensor> = HashMap::new();
        for (name, t) in tensors {
            let name = name.strip_prefix(PREFIX).map(str::to_string).unwrap_or(name);
            if !is_ignored(&name) {
                found.insert(name, t);
            }
        }
        let shape_of = |name: &str| -> Result<Vec<usize>> {
            let t = found.get(name).ok_or_else(|| Error::file(&path, format!("tensor '{name}' is missing")))?;
            if t.rank() != 2 {
                return Err(Error::file(&path, format!("tensor '{name}' is {:?}, expected 2-D", t.dims())));
            }
            Ok(t.dims().to_vec())
        };
        let (wte, wpe) = (shape_of("wte.weight")?, shape_of("wpe.weight")?);
        let n_embd = wte[1];
        let n_layer = found
            .keys()
            .filter_map(|k| k.strip_prefix("h.")?.split('.').next()?.parse::<usize>().ok())
            .max()
            .map_or(0, |m| m + 1);
        let n_head = match n_head {
            Some(h) => h,
            None => Self::find_n_head(&path, &metadata, n_embd)?,
        };
        let config = GptConfig {
            vocab_size: wte[0],
            block_size: wpe[0],
            n_layer,
            n_head,
            n_embd,
            dropout: 0.0,
            bias: found.contains_key("ln_f.bias"),
        };
        config.validate().map_err(|e| Error::file(&path, format!("inferred config {config:?}: {e}")))?;
        let model = Gpt::zeroed(config, dtype, device)?;
        // Check every tensor before writing any, so a bad file leaves nothing half loaded.
        let mut plan = Vec::new();
        for (name, p) in model.named_parameters() {
            let src = found.remove(&name).ok_or_else(|| Error::file(&path, format!("tensor '{name}' is missing")))?;
            let conv = is_conv1d(&name);
            let want: Vec<usize> = if conv { p.dims().iter().rev().cloned().collect() } else { p.dims().to_vec() };
            if src.dims() != want.as_slice() {
                return Err(Error::file(
                    &path,
                    format!("tensor '{name}' is {:?} in the file, expected {want:?}", src.dims()),
                ));
            }
            if !src.dtype().is_float() {
                return Err(Error::file(&path, format!("tensor '{name}' is {}, expected floating point", src.dtype())));
            }
            let src = if conv { src.t()?.contiguous()? } else { src };
            plan.push((p, src));
        }
        let mut extra: Vec<&String> = found.keys().collect();
        extra.sort();
        if let Some(name) = extra.first() {
            return Err(Error::file(&path, format!("unexpected tensor '{name}': not part of a GPT-2 model")));
        }
        for (p, src) in plan {
            p.assign(&src.to_dtype(dtype)?.to_device(device)?)?;
        }
        Ok(model)
    }

    fn find_n_head(path: &Path, metadata: &BTreeMap<String, String>, n_embd: usize) -> Result<usize> {
        if let Some(v) = metadata.get("n_head") {
            return v.parse().map_err(|_| Error::file(path, format!("metadata n_head = '{v}' is not a number")));
        }
        let config = path.with_file_name(CONFIG_FILE);
        if let Ok(text) = std::fs::read_to_string(&config) {
            if let Some(h) = json_usize(&text, "n_head") {
                return Ok(h);
            }
        }
        if n_embd >= 64 && n_embd.is_multiple_of(64) {
            return Ok(n_embd / 64);
        }
        Err(Error::file(
            path,
            format!(
                "the number of heads is not in the file's metadata or a config.json beside it, and n_embd {n_embd} \
                 is not a multiple of GPT-2's head size 64: give n_head explicitly"
            ),
        ))
    }

    /// Saves the weights in Hugging Face's GPT-2 layout (Conv1D weights [in, out], `transformer.` names, no
    /// `lm_head.weight` since it is tied), with `n_head` in the metadata. Given a directory, writes
    /// `model.safetensors` and a `config.json` into it, so `GPT2LMHeadModel.from_pretrained(dir)` loads
    /// it; given a file path, writes that file alone. A model without biases gets zero biases, which
    /// GPT-2's layout requires and which change nothing.
    pub fn save_hf(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let dir = path.is_dir();
        let file = weights_path(path);
        let mut tensors = Vec::new();
        for (name, p) in self.named_parameters() {
            let t = if is_conv1d(&name) { p.t()? } else { p };
            tensors.push((format!("{PREFIX}{name}"), t));
        }
        if !self.config().bias {
            let c = self.config().n_embd;
            let mut zeros = |name: String, n: usize| -> Result<()> {
                tensors.push((format!("{PREFIX}{name}"), Tensor::zeros(&[n], self.dtype(), self.device())?));
                Ok(())
            };
            for i in 0..self.config().n_layer {
                zeros(format!("h.{i}.ln_1.bias"), c)?;
                zeros(format!("h.{i}.attn.c_attn.bias"), 3 * c)?;
                zeros(format!("h.{i}.attn.c_proj.bias"), c)?;
                zeros(format!("h.{i}.ln_2.bias"), c)?;
                zeros(format!("h.{i}.mlp.c_fc.bias"), 4 * c)?;
                zeros(format!("h.{i}.mlp.c_proj.bias"), c)?;
            }
            zeros("ln_f.bias".to_string(), c)?;
        }
        // transformers refuses safetensors files without format = "pt".
        let metadata: BTreeMap<String, String> =
            [("format", "pt".to_string()), ("n_head", self.config().n_head.to_string())]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        save_safetensors(&file, &tensors, &metadata)?;
        if dir {
            let json = self.hf_config_json();
            let config = path.join(CONFIG_FILE);
            // Atomic like the weights: a crash mid-save leaves the previous config.json whole.
            crate::io::atomic::write_atomically(&config, json.as_bytes())?;
        }
        Ok(())
    }

    /// A transformers `config.json` for this model (GPT2LMHeadModel, GELU tanh, LayerNorm eps 1e-5, tied
    /// head).
    pub fn hf_config_json(&self) -> String {
        let c = self.config();
        // GPT-2's <|endoftext|> when the vocabulary has it; transformers warns about an id outside it.
        let eot = if c.vocab_size > GPT2_EOT { GPT2_EOT.to_string() } else { "null".to_string() };
        format!(
            "{{\n  \"architectures\": [\"GPT2LMHeadModel\"],\n  \"model_type\": \"gpt2\",\n  \
             \"vocab_size\": {},\n  \"n_positions\": {},\n  \"n_ctx\": {},\n  \"n_embd\": {},\n  \"n_layer\": {},\n  \
             \"n_head\": {},\n  \"activation_function\": \"gelu_new\",\n  \"layer_norm_epsilon\": 1e-05,\n  \
             \"resid_pdrop\": {},\n  \"embd_pdrop\": {},\n  \"attn_pdrop\": {},\n  \"tie_word_embeddings\": true,\n  \"bos_token_id\": {eot},\n  \"eos_token_id\": {eot}\n}}\n",
            c.vocab_size, c.block_size, c.block_size, c.n_embd, c.n_layer, c.n_head, c.dropout, c.dropout, c.dropout
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_scan_reads_integers() {
        let text = "{\n  \"n_embd\": 768,\n  \"n_head\" : 12,\n  \"n_layer\": 12\n}";
        assert_eq!(json_usize(text, "n_head"), Some(12));
        assert_eq!(json_usize(text, "n_embd"), Some(768));
        assert_eq!(json_usize(text, "n_positions"), None);
    }

    #[test]
    fn conv1d_names() {
        assert!(is_conv1d("h.3.attn.c_attn.weight"));
        assert!(is_conv1d("h.0.mlp.c_proj.weight"));
        assert!(!is_conv1d("h.0.mlp.c_proj.bias"));
        assert!(!is_conv1d("wte.weight"));
        assert!(
            is_ignored("h.0.attn.bias") && is_ignored("h.1.attn.masked_bias") && !is_ignored("h.0.attn.c_attn.bias")
        );
    }
}
