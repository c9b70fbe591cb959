//! Plumbing shared by the optimizers: checking the parameter list, running a fused kernel on a parameter
//! in place, and reading saved state back by name with errors that name the offending entry.

use crate::backend::Storage;
use crate::shape::Layout;
use crate::{DType, Device, Error, Result, Tensor};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

/// Drops repeated handles to one tensor (tied weights are listed once per name but must be updated
/// once, as PyTorch's `named_parameters` does), and rejects what the fused kernels cannot update.
pub(crate) fn check_params(op: &'static str, params: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    let (mut ids, mut names) = (HashSet::new(), HashSet::new());
    let mut out = Vec::with_capacity(params.len());
    for (name, p) in params {
        if !ids.insert(p.id()) {
            continue;
        }
        if !names.insert(name.clone()) {
            return Err(Error::invalid(op, format!("two different parameters are both named '{name}'")));
        }
        if !matches!(p.dtype(), DType::F32 | DType::F64) {
            return Err(Error::invalid(
                op,
                format!("parameter '{name}' is {}; the fused updates support f32 and f64 parameters", p.dtype()),
            ));
        }
        out.push((name, p));
    }
    Ok(out)
}

pub(crate) fn check_hyper(op: &'static str, name: &str, v: f64, ok: bool) -> Result<()> {
    if ok && v.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid(op, format!("invalid {name}: {v}")))
    }
}

/// A deep copy as a fresh contiguous leaf: state handed out or taken in must not alias live buffers.
pub(crate) fn snapshot(t: &Tensor) -> Result<Tensor> {
    let s = t.storage().copy_strided(t.layout())?;
    Ok(Tensor::from_parts(Arc::new(RwLock::new(s)), Layout::contiguous(t.dims()), true))
}

/// Gradient `g` must have parameter `p`'s shape, dtype and device.
pub(crate) fn check_grad(op: &'static str, name: &str, p: &Tensor, g: &Tensor) -> Result<()> {
    if g.dims() != p.dims() || g.dtype() != p.dtype() || g.device() != p.device() {
        return Err(Error::shape(
            op,
            format!(
                "gradient of '{name}' is {:?} {} on {}, the parameter {:?} {} on {}",
                g.dims(),
                g.dtype(),
                g.device(),
                p.dims(),
                p.dtype(),
                p.device()
            ),
        ));
    }
    Ok(())
}

/// Parameters whose fused updates can run together, as one list per device (`Storage::adam_update_many`):
/// what they write dense, what they read contiguous (a run at an offset, as data-parallel gradients in
/// their bucket are), and no buffer that one member writes shared with any other tensor of the batch,
/// since the batch holds all their locks at once and a buffer locked twice would deadlock. A parameter
/// that does not qualify runs alone through `update_in_place`.
#[derive(Default)]
pub(crate) struct Batch {
    writes: HashSet<usize>,
    reads: HashSet<usize>,
}

impl Batch {
    /// Admits a parameter whose update writes `writes` and reads `reads`, if it qualifies.
    pub(crate) fn admit(&mut self, writes: &[&Tensor], reads: &[&Tensor]) -> bool {
        let key = |t: &Tensor| Arc::as_ptr(t.storage_arc()) as usize;
        let mut w: Vec<usize> = writes.iter().map(|t| key(t)).collect();
        let r: Vec<usize> = reads.iter().map(|t| key(t)).collect();
        w.sort_unstable();
        let distinct = w.windows(2).all(|p| p[0] != p[1]);
        let dense = writes.iter().all(|t| is_dense(t)) && reads.iter().all(|t| t.is_contiguous());
        let clashes = w.iter().any(|k| self.writes.contains(k) || self.reads.contains(k) || r.contains(k))
            || r.iter().any(|k| self.writes.contains(k));
        if !distinct || !dense || clashes {
            return false;
        }
        self.writes.extend(w);
        self.reads.extend(r);
        true
    }
}

/// Calls `f` with each of `ts` made contiguous as a (storage, first element, length) run, the form the
/// list ops of `Storage` take, holding the storages' read locks meanwhile.
pub(crate) fn with_runs<R>(ts: &[Tensor], f: impl FnOnce(&[(&Storage, usize, usize)]) -> Result<R>) -> Result<R> {
    let runs = ts.iter().map(|t| t.contiguous()).collect::<Result<Vec<_>>>()?;
    let guards: Vec<_> = runs.iter().map(|t| t.storage()).collect();
    let parts: Vec<_> = runs.iter().zip(&guards).map(|(t, s)| (&**s, t.layout().offset(), t.numel())).collect();
    f(&parts)
}

/// Appends `item` to `device`'s list in `lists`: a batch's parameters, one list per device in the order
/// the devices first appear.
pub(crate) fn push_on_device<T>(lists: &mut Vec<(Device, Vec<T>)>, device: Device, item: T) {
    match lists.iter_mut().find(|(d, _)| *d == device) {
        Some((_, list)) => list.push(item),
        None => lists.push((device, vec![item])),
    }
}

/// True when the view covers its whole storage row-major, which is what the fused kernels walk.
fn is_dense(t: &Tensor) -> bool {
    t.is_contiguous() && t.layout().offset() == 0 && t.storage().len() == t.numel()
}

/// Runs `kernel(param_storage, grad_storage)` on parameter `p` in place. A parameter that is a view into
/// a larger buffer is updated through a dense copy and written back, so the kernel never touches
/// elements outside the view.
pub(crate) fn update_in_place(
    op: &'static str,
    name: &str,
    p: &Tensor,
    g: &Tensor,
    kernel: impl FnOnce(&mut Storage, &Storage) -> Result<()>,
) -> Result<()> {
    check_grad(op, name, p, g)?;
    // A gradient sharing the parameter's buffer would deadlock (read and write lock on one storage).
    let g = if is_dense(g) && !Arc::ptr_eq(g.storage_arc(), p.storage_arc()) { g.clone() } else { snapshot(g)? };
    if is_dense(p) {
        return kernel(&mut p.storage_mut(), &g.storage());
    }
    let dense = snapshot(p)?;
    kernel(&mut dense.storage_mut(), &g.storage())?;
    p.assign(&dense)
}

/// The `step` entry of a state list.
pub(crate) fn step_tensor(step: u64) -> Result<Tensor> {
    Tensor::scalar(step as f64, DType::I64, Device::Cpu)
}

/// Looks saved state up by name, checks it against the parameter it belongs to, and at the end rejects
/// entries nobody asked for (a renamed model or a checkpoint from another optimizer).
pub(crate) struct StateReader<'a> {
    op: &'static str,
    entries: HashMap<&'a str, &'a Tensor>,
    used: HashSet<&'a str>,
}

impl<'a> StateReader<'a> {
    pub fn new(op: &'static str, saved: &'a [(String, Tensor)]) -> Result<Self> {
        let mut entries = HashMap::with_capacity(saved.len());
        for (name, t) in saved {
            if entries.insert(name.as_str(), t).is_some() {
                return Err(Error::invalid(op, format!("optimizer state entry '{name}' appears twice")));
            }
        }
        Ok(StateReader { op, entries, used: HashSet::new() })
    }

    /// The saved step count.
    pub fn step(&mut self) -> Result<u64> {
        let t = self.entry("step").ok_or_else(|| self.missing("step"))?;
        let v = if t.numel() == 1 { t.item()? } else { f64::NAN };
        if !(v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(63)) {
            return Err(Error::invalid(
                self.op,
                format!(
                    "optimizer state entry 'step' must be one non-negative integer, got {:?} {}",
                    t.dims(),
                    t.dtype()
                ),
            ));
        }
        Ok(v as u64)
    }

    /// A copy of entry `name` on `like`'s device, which must match `like`'s shape and dtype.
    pub fn optional(&mut self, name: &str, like: &Tensor) -> Result<Option<Tensor>> {
        let Some(t) = self.entry(name) else { return Ok(None) };
        if t.dims() != like.dims() || t.dtype() != like.dtype() {
            return Err(Error::shape(
                self.op,
                format!(
                    "optimizer state entry '{name}' is {:?} {}, expected {:?} {}",
                    t.dims(),
                    t.dtype(),
                    like.dims(),
                    like.dtype()
                ),
            ));
        }
        Ok(Some(snapshot(&t.detach().to_device(like.device())?)?))
    }

    /// Like `optional`, but a missing entry is an error naming it.
    pub fn required(&mut self, name: &str, like: &Tensor) -> Result<Tensor> {
        self.optional(name, like)?.ok_or_else(|| self.missing(name))
    }

    /// Errors on the first entry (in name order) that no lookup used.
    pub fn finish(self) -> Result<()> {
        let mut extra: Vec<&str> = self.entries.keys().filter(|k| !self.used.contains(*k)).copied().collect();
        extra.sort_unstable();
        match extra.first() {
            None => Ok(()),
            Some(name) => Err(Error::invalid(
                self.op,
                format!("unexpected optimizer state entry '{name}' (no parameter of this optimizer owns it)"),
            )),
        }
    }

    fn entry(&mut self, name: &str) -> Option<&'a Tensor> {
        let (&key, &t) = self.entries.get_key_value(name)?;
        self.used.insert(key);
        Some(t)
    }

    fn missing(&self, name: &str) -> Error {
        Error::invalid(self.op, format!("optimizer state entry '{name}' is missing"))
    }
}
