//! Saving a module's parameters and loading them back by name.

use super::format::{load_safetensors, save_safetensors};
use crate::nn::Module;
use crate::{Error, Result, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Saves every parameter of `module` under its hierarchical name (`0.weight`, `h.1.attn.bias`).
pub fn save_module(module: &dyn Module, path: impl AsRef<Path>) -> Result<()> {
    save_safetensors(path, &module.named_parameters(), &BTreeMap::new())
}

/// Loads parameters saved by `save_module` (or by PyTorch under the same names) into `module` in place.
/// Every parameter must be in the file with its shape and dtype; with `strict`, the file must also hold
/// nothing else. Nothing is written unless every check passes.
pub fn load_module(module: &dyn Module, path: impl AsRef<Path>, strict: bool) -> Result<()> {
    let path = path.as_ref();
    let (tensors, _) = load_safetensors(path)?;
    let plan = plan_assign(path, module, tensors.into_iter().collect(), strict)?;
    apply(plan)
}

/// Pairs each parameter with its tensor from the file, checking names, shapes and dtypes.
pub(crate) fn plan_assign(
    path: &Path,
    module: &dyn Module,
    mut found: HashMap<String, Tensor>,
    strict: bool,
) -> Result<Vec<(Tensor, Tensor)>> {
    let params = module.named_parameters();
    let mut plan = Vec::with_capacity(params.len());
    for (name, p) in &params {
        // A tied parameter listed under two names may use its entry twice, so look up without removing.
        let src = found.get(name).ok_or_else(|| Error::file(path, format!("tensor '{name}' is missing")))?;
        if src.dims() != p.dims() || src.dtype() != p.dtype() {
            return Err(Error::file(
                path,
                format!(
                    "tensor '{name}' is {:?} {} in the file but {:?} {} in the model",
                    src.dims(),
                    src.dtype(),
                    p.dims(),
                    p.dtype()
                ),
            ));
        }
        plan.push((p.clone(), src.clone()));
    }
    if strict {
        for (name, _) in &params {
            found.remove(name);
        }
        let mut extra: Vec<&String> = found.keys().collect();
        extra.sort();
        if let Some(name) = extra.first() {
            return Err(Error::file(path, format!("unexpected tensor '{name}' (the model has no such parameter)")));
        }
    }
    Ok(plan)
}

/// Copies each source into its parameter (moving it to the parameter's device).
pub(crate) fn apply(plan: Vec<(Tensor, Tensor)>) -> Result<()> {
    for (dst, src) in plan {
        dst.assign(&src.to_device(dst.device())?)?;
    }
    Ok(())
}
