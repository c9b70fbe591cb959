//! Reading and writing safetensors files (the format of Hugging Face and `safetensors.torch`), through
//! the `safetensors` crate.

use super::atomic::write_atomically;
use crate::backend::cpu::CpuStorage;
use crate::backend::Storage;
use crate::shape::Layout;
use crate::{DType, Error, Result, Tensor};
use ::safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

fn to_st(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::I64 => Dtype::I64,
        DType::U8 => Dtype::U8,
    }
}

fn from_st(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::BF16 => DType::BF16,
        Dtype::F16 => DType::F16,
        Dtype::I64 => DType::I64,
        // PyTorch saves bool tensors as BOOL bytes of 0/1: the same bytes as a munja U8 mask.
        Dtype::U8 | Dtype::BOOL => DType::U8,
        _ => return None,
    })
}

/// A tensor handed to the serializer, converted to bytes only when the serializer reaches it, so at most
/// one tensor's bytes exist beside the output buffer.
struct LazyView<'a> {
    tensor: &'a Tensor,
    /// Where a failed conversion is reported: `View::data` cannot return an error.
    failure: &'a Mutex<Option<Error>>,
}

impl View for LazyView<'_> {
    fn dtype(&self) -> Dtype {
        to_st(self.tensor.dtype())
    }
    fn shape(&self) -> &[usize] {
        self.tensor.dims()
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self.tensor.to_cpu_storage() {
            Ok(s) => Cow::Owned(s.to_le_bytes()),
            Err(e) => {
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Cow::Owned(vec![0; self.data_len()])
            }
        }
    }
    fn data_len(&self) -> usize {
        self.tensor.numel() * self.tensor.dtype().size_in_bytes()
    }
}

/// Saves named tensors (any dtype, any device, any layout) and string metadata to a safetensors file. The
/// file is replaced atomically: a failed save leaves any previous file at `path` as it was.
pub fn save_safetensors(
    path: impl AsRef<Path>,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let mut names = HashSet::new();
    for (name, _) in tensors {
        if name == "__metadata__" {
            return Err(Error::file(path, "'__metadata__' is reserved by the format and cannot name a tensor"));
        }
        if !names.insert(name.as_str()) {
            return Err(Error::file(path, format!("tensor name '{name}' appears twice")));
        }
    }
    let failure = Mutex::new(None);
    let views = tensors.iter().map(|(n, t)| (n.as_str(), LazyView { tensor: t, failure: &failure }));
    let info = if metadata.is_empty() {
        None
    } else {
        Some(metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>())
    };
    let bytes = ::safetensors::serialize(views, info).map_err(|e| Error::file(path, e.to_string()))?;
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    write_atomically(path, &bytes)
}

/// Loads every tensor of a safetensors file onto the CPU (sorted by name) with the file's metadata.
/// Errors name the path: a missing file, a truncated or corrupt one, or a dtype munja cannot hold.
#[allow(clippy::type_complexity)]
pub fn load_safetensors(path: impl AsRef<Path>) -> Result<(Vec<(String, Tensor)>, BTreeMap<String, String>)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::file(path, format!("not a valid safetensors file (corrupt or truncated): {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| Error::file(path, e.to_string()))?;
    let metadata: BTreeMap<String, String> =
        header.metadata().as_ref().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.tensors() {
        let dtype = from_st(view.dtype()).ok_or_else(|| {
            Error::file(path, format!("tensor '{name}' has dtype {}, which munja does not support", view.dtype()))
        })?;
        let cpu = CpuStorage::from_le_bytes(dtype, view.data());
        let storage = Arc::new(RwLock::new(Storage::Cpu(cpu)));
        out.push((name, Tensor::from_parts(storage, Layout::contiguous(view.shape()), true)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, metadata))
}
