//! Training checkpoints: model parameters and optimizer state in one safetensors file, with string
//! metadata (step, config, data position) for the caller.

use super::format::{load_safetensors, save_safetensors};
use super::module::{apply, plan_assign};
use crate::nn::Module;
use crate::optim::Optimizer;
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const MODEL: &str = "model.";
const OPTIM: &str = "optim.";

/// Saves `model`'s parameters as `model.<name>`, the optimizer's state as `optim.<name>` and `extra` as
/// the file's metadata, atomically.
pub fn save_checkpoint(
    path: impl AsRef<Path>,
    model: &dyn Module,
    optimizer: &dyn Optimizer,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    let mut tensors: Vec<_> = model.named_parameters().into_iter().map(|(n, t)| (format!("{MODEL}{n}"), t)).collect();
    tensors.extend(optimizer.state_tensors()?.into_iter().map(|(n, t)| (format!("{OPTIM}{n}"), t)));
    save_safetensors(path, &tensors, extra)
}

/// Restores a checkpoint written by `save_checkpoint` into `model` and `optimizer` and returns its
/// metadata. Every parameter and state entry must match; nothing is changed unless all of them do.
pub fn load_checkpoint(
    path: impl AsRef<Path>,
    model: &dyn Module,
    optimizer: &mut dyn Optimizer,
) -> Result<BTreeMap<String, String>> {
    let path = path.as_ref();
    let (tensors, metadata) = load_safetensors(path)?;
    let (mut params, mut state) = (HashMap::new(), Vec::new());
    for (name, t) in tensors {
        if let Some(n) = name.strip_prefix(MODEL) {
            params.insert(n.to_string(), t);
        } else if let Some(n) = name.strip_prefix(OPTIM) {
            state.push((n.to_string(), t));
        } else {
            return Err(Error::file(path, format!("unexpected tensor '{name}': not a model. or optim. entry")));
        }
    }
    let plan = plan_assign(path, model, params, true)?;
    optimizer.load_state_tensors(&state).map_err(|e| Error::file(path, format!("optimizer state: {e}")))?;
    apply(plan)?;
    Ok(metadata)
}
