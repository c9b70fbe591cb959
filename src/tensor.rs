//! The `Tensor` handle: a shared storage, a layout (view) into it, and autograd bookkeeping. Cloning a
//! Tensor clones a handle, not the data.

use crate::autograd::{GradHook, Node};
use crate::backend::cpu::CpuStorage;
use crate::backend::Storage;
use crate::dtype::Element;
use crate::shape::Layout;
use crate::{DType, Device, Error, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

pub(crate) struct TensorImpl {
    id: usize,
    storage: Arc<RwLock<Storage>>,
    layout: Layout,
    dtype: DType,
    device: Device,
    requires_grad: AtomicBool,
    /// True for tensors made by the user (parameters, inputs); false for op results.
    is_leaf: bool,
    node: Mutex<Option<crate::autograd::Node>>,
    grad: Mutex<Option<Tensor>>,
    grad_hooks: Mutex<Vec<Arc<GradHook>>>,
}

/// An n-dimensional array on a device, with reverse-mode autograd.
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<TensorImpl>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Tensor {
    /// A tensor over `storage` seen through `layout`. Op results are non-leaves.
    pub(crate) fn from_parts(storage: Arc<RwLock<Storage>>, layout: Layout, is_leaf: bool) -> Tensor {
        crate::backend::cpu::tune_allocator_once();
        let (dtype, device) = {
            let s = storage.read().unwrap_or_else(|e| e.into_inner());
            (s.dtype(), s.device())
        };
        Tensor(Arc::new(TensorImpl {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            storage,
            layout,
            dtype,
            device,
            requires_grad: AtomicBool::new(false),
            is_leaf,
            node: Mutex::new(None),
            grad: Mutex::new(None),
            grad_hooks: Mutex::new(Vec::new()),
        }))
    }

    /// A fresh contiguous op result.
    pub(crate) fn from_storage(storage: Storage, shape: &[usize]) -> Tensor {
        Tensor::from_parts(Arc::new(RwLock::new(storage)), Layout::contiguous(shape), false)
    }

    /// A view of the same storage with another layout (an op result: non-leaf).
    pub(crate) fn view_with(&self, layout: Layout) -> Tensor {
        Tensor::from_parts(self.0.storage.clone(), layout, false)
    }

    pub(crate) fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.0.storage.read().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn storage_mut(&self) -> RwLockWriteGuard<'_, Storage> {
        self.0.storage.write().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn storage_arc(&self) -> &Arc<RwLock<Storage>> {
        &self.0.storage
    }
    pub(crate) fn layout(&self) -> &Layout {
        &self.0.layout
    }

    // ---- creation ----

    /// A tensor from a Vec of elements in row-major order.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize], device: Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if data.len() != n {
            return Err(Error::shape(
                "from_vec",
                format!("{} elements cannot fill shape {shape:?} ({n} elements)", data.len()),
            ));
        }
        let s = Storage::from_cpu(T::into_storage(data), device)?;
        Ok(Tensor::from_parts(Arc::new(RwLock::new(s)), Layout::contiguous(shape), true))
    }
    /// A tensor copied from a slice.
    pub fn from_slice<T: Element>(data: &[T], shape: &[usize], device: Device) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape, device)
    }
    /// A 0-dimensional tensor.
    pub fn scalar(value: f64, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(&[], value, dtype, device)
    }
    pub fn full(shape: &[usize], value: f64, dtype: DType, device: Device) -> Result<Tensor> {
        let n = shape.iter().product();
        let s = Storage::full(device, dtype, n, value)?;
        Ok(Tensor::from_parts(Arc::new(RwLock::new(s)), Layout::contiguous(shape), true))
    }
    pub fn zeros(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(shape, 0.0, dtype, device)
    }
    pub fn ones(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(shape, 1.0, dtype, device)
    }
    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros(self.dims(), self.dtype(), self.device())
    }
    pub fn ones_like(&self) -> Result<Tensor> {
        Tensor::ones(self.dims(), self.dtype(), self.device())
    }
    pub fn full_like(&self, value: f64) -> Result<Tensor> {
        Tensor::full(self.dims(), value, self.dtype(), self.device())
    }
    /// start, start+step, ... below `end`, as a 1-D tensor.
    pub fn arange(start: f64, end: f64, step: f64, dtype: DType, device: Device) -> Result<Tensor> {
        if step == 0.0 || !((end - start) / step).is_finite() {
            return Err(Error::invalid("arange", format!("step {step} cannot go from {start} to {end}")));
        }
        let n = ((end - start) / step).ceil().max(0.0) as usize;
        let v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
        let s = Storage::from_cpu(CpuStorage::from_f64s(dtype, &v), device)?;
        Ok(Tensor::from_parts(Arc::new(RwLock::new(s)), Layout::contiguous(&[n]), true))
    }
    /// Uniform [0, 1) numbers from the default generator (see `manual_seed`).
    pub fn rand(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        crate::rng::with_default(|g| Tensor::rand_with(g, shape, dtype, device))
    }
    /// Standard normal numbers from the default generator.
    pub fn randn(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        crate::rng::with_default(|g| Tensor::randn_with(g, shape, dtype, device))
    }
    /// Uniform [0, 1) numbers from an explicit generator.
    pub fn rand_with(g: &mut crate::Generator, shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let block = g.advance(n);
        let s = Storage::uniform(device, dtype, n, g.seed, block)?;
        Ok(Tensor::from_parts(Arc::new(RwLock::new(s)), Layout::contiguous(shape), true))
    }
    /// Standard normal numbers from an explicit generator.
    pub fn randn_with(g: &mut crate::Generator, shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let block = g.advance(2 * n);
        let s = Storage::normal(device, dtype, n, g.seed, block)?;
        Ok(Tensor::from_parts(Arc::new(RwLock::new(s)), Layout::contiguous(shape), true))
    }

    // ---- properties ----

    pub fn id(&self) -> usize {
        self.0.id
    }
    pub fn dims(&self) -> &[usize] {
        self.0.layout.shape()
    }
    /// The size of one dim (negative counts from the end).
    pub fn dim(&self, d: isize) -> Result<usize> {
        Ok(self.dims()[crate::shape::resolve_dim("dim", d, self.rank())?])
    }
    pub fn rank(&self) -> usize {
        self.0.layout.rank()
    }
    pub fn numel(&self) -> usize {
        self.0.layout.numel()
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn device(&self) -> Device {
        self.0.device
    }
    pub fn strides(&self) -> &[usize] {
        self.0.layout.strides()
    }
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }

    // ---- autograd ----

    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad.load(Ordering::Relaxed)
    }
    /// Marks a leaf tensor as a parameter whose gradient `backward` accumulates. Returns the same handle.
    pub fn set_requires_grad(self, on: bool) -> Tensor {
        self.0.requires_grad.store(on, Ordering::Relaxed);
        self
    }
    pub fn is_leaf(&self) -> bool {
        self.0.is_leaf
    }
    /// The accumulated gradient of a leaf, if any backward has reached it since the last `zero_grad`.
    pub fn grad(&self) -> Option<Tensor> {
        lock(&self.0.grad).clone()
    }
    /// Clears the accumulated gradient.
    pub fn zero_grad(&self) {
        *lock(&self.0.grad) = None;
    }
    /// Replaces the accumulated gradient (used by gradient clipping and data-parallel averaging).
    pub fn set_grad(&self, g: Option<Tensor>) -> Result<()> {
        if let Some(g) = &g {
            if g.device() != self.device() {
                return Err(Error::Device { op: "set_grad", a: self.device(), b: g.device() });
            }
            if g.dims() != self.dims() || g.dtype() != self.dtype() {
                return Err(Error::shape(
                    "set_grad",
                    format!("gradient {:?} {} for a tensor {:?} {}", g.dims(), g.dtype(), self.dims(), self.dtype()),
                ));
            }
        }
        *lock(&self.0.grad) = g;
        Ok(())
    }
    pub(crate) fn accumulate_grad(&self, g: &Tensor) -> Result<()> {
        let mut slot = lock(&self.0.grad);
        let new = match slot.take() {
            Some(prev) => prev.add(g)?,
            None => g.detach().contiguous()?,
        };
        *slot = Some(new.detach());
        Ok(())
    }
    /// The same data with no autograd history; gradients do not flow through it.
    pub fn detach(&self) -> Tensor {
        Tensor::from_parts(self.0.storage.clone(), self.0.layout.clone(), true)
    }
    /// Registers `hook` to run each time a backward pass has accumulated this leaf's gradient for that
    /// pass; it sees the leaf (read `grad()`). Only leaves that require a gradient take hooks.
    pub fn register_post_accumulate_grad_hook(&self, hook: Arc<GradHook>) -> Result<()> {
        if !self.is_leaf() || !self.requires_grad() {
            return Err(Error::invalid(
                "register_post_accumulate_grad_hook",
                format!("{self:?} is not a leaf that requires grad; hooks go on parameters"),
            ));
        }
        lock(&self.0.grad_hooks).push(hook);
        Ok(())
    }
    pub(crate) fn grad_hooks(&self) -> Vec<Arc<GradHook>> {
        lock(&self.0.grad_hooks).clone()
    }
    pub(crate) fn attach_node(&self, node: Node) {
        self.0.requires_grad.store(true, Ordering::Relaxed);
        *lock(&self.0.node) = Some(node);
    }
    pub(crate) fn take_node(&self) -> Option<Node> {
        lock(&self.0.node).take()
    }
    pub(crate) fn node_inputs(&self) -> Vec<Tensor> {
        lock(&self.0.node).as_ref().map(|n| n.inputs.clone()).unwrap_or_default()
    }
    /// Backpropagates from a one-element tensor (a loss), accumulating gradients on leaves that require
    /// them. The graph behind this tensor is freed.
    pub fn backward(&self) -> Result<()> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "backward",
                format!(
                    "backward() needs a one-element tensor (a loss), got shape {:?}; use backward_with",
                    self.dims()
                ),
            ));
        }
        let g = self.ones_like()?;
        crate::autograd::backward(self, g)
    }
    /// Backpropagates with an explicit output gradient of this tensor's shape.
    pub fn backward_with(&self, grad: &Tensor) -> Result<()> {
        if grad.dims() != self.dims() {
            return Err(Error::shape(
                "backward_with",
                format!("gradient shape {:?} differs from tensor shape {:?}", grad.dims(), self.dims()),
            ));
        }
        crate::autograd::backward(self, grad.detach())
    }

    // ---- read-back ----

    /// The elements in row-major order. The dtype must match `T`.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if self.dtype() != T::DTYPE {
            return Err(Error::DType { op: "to_vec", expected: T::DTYPE, got: self.dtype() });
        }
        let c = self.storage().copy_strided(self.layout())?.to_cpu()?;
        Ok(T::slice(&c).expect("dtype checked").to_vec())
    }
    /// The elements converted to f64, whatever the dtype.
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        self.to_dtype(DType::F64)?.to_vec::<f64>()
    }
    /// The value of a one-element tensor as f64.
    pub fn item(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!("item() needs a one-element tensor, got shape {:?}", self.dims()),
            ));
        }
        Ok(self.to_vec_f64()?[0])
    }
    /// A contiguous CPU copy of the elements.
    pub(crate) fn to_cpu_storage(&self) -> Result<CpuStorage> {
        self.storage().copy_strided(self.layout())?.to_cpu()
    }

    /// Overwrites this tensor's elements in place with `src` (same shape, dtype and device), recording no
    /// history: loading checkpoints, initialisers, parameter broadcasts.
    pub fn assign(&self, src: &Tensor) -> Result<()> {
        self.check_assign(src)?;
        if src.dtype() != self.dtype() {
            return Err(Error::DType { op: "assign", expected: self.dtype(), got: src.dtype() });
        }
        if Arc::ptr_eq(self.storage_arc(), src.storage_arc()) {
            let copy = src.storage().copy_strided(src.layout())?;
            return self.storage_mut().copy_into(self.layout(), &copy, &Layout::contiguous(src.dims()));
        }
        let s = src.storage();
        self.storage_mut().copy_into(self.layout(), &s, src.layout())
    }

    /// `assign` from a tensor of another dtype, converting (rounding) as `to_dtype` does, without the
    /// intermediate tensor: the mixed-precision optimizer's re-rounding of working weights.
    pub(crate) fn assign_cast(&self, src: &Tensor) -> Result<()> {
        self.check_assign(src)?;
        if src.dtype() == self.dtype() || Arc::ptr_eq(self.storage_arc(), src.storage_arc()) {
            return self.assign(&src.to_dtype(self.dtype())?);
        }
        let s = src.storage();
        self.storage_mut().cast_into(self.layout(), &s, src.layout())
    }

    /// What every assignment needs: the same shape, on the same device.
    fn check_assign(&self, src: &Tensor) -> Result<()> {
        if src.dims() != self.dims() {
            return Err(Error::shape(
                "assign",
                format!("source shape {:?} differs from destination {:?}", src.dims(), self.dims()),
            ));
        }
        if src.device() != self.device() {
            return Err(Error::Device { op: "assign", a: self.device(), b: src.device() });
        }
        Ok(())
    }

    /// Moves (copies) the tensor to another device; gradients flow back.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let s = Storage::from_cpu(self.to_cpu_storage()?, device)?;
        let out = Tensor::from_storage(s, self.dims());
        let src = self.device();
        Ok(crate::autograd::record(out, "to_device", &[self], move |g| Ok(vec![Some(g.to_device(src)?)])))
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor[{:?}, {}, {}]", self.dims(), self.dtype(), self.device())
    }
}
