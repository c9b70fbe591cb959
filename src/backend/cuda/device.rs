//! One CUDA device: its context, its one stream, the loaded kernels and the caching allocator. Created on
//! first use and kept in a process-wide table, so every tensor on `Device::Cuda(i)` shares them.

use super::alloc::Allocator;
use super::module::{Func, Module, NO_NVCC};
use crate::{Device, Error, Result};
use cudarc::driver::{result, sys, CudaContext, CudaEvent, CudaStream};
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

pub(crate) struct CudaDevice {
    pub(crate) ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Module,
    pub(crate) alloc: Allocator,
    pub(crate) blas: Mutex<Option<super::blas::Lt>>,
}

static DEVICES: OnceLock<Mutex<Vec<Option<Arc<CudaDevice>>>>> = OnceLock::new();
static KERNEL_LAUNCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many of munja's own kernels have been launched, over all devices, since the process began (cuBLASLt
/// matmuls, copies and NCCL not included). Launches per step say how much host work a step is: a loop
/// whose kernels are shorter than their launch cost leaves the GPU idle.
pub fn kernel_launches() -> usize {
    KERNEL_LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

fn unavailable(device: Device, detail: impl Into<String>) -> Error {
    Error::DeviceUnavailable { op: "cuda", device, detail: detail.into() }
}

/// Whether libcuda can be loaded (false on machines without an NVIDIA driver). Probed once.
fn driver_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only tries to dlopen libcuda.
    *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() })
}

/// How many CUDA devices the driver sees (0 without a driver or without kernels built in).
pub fn device_count() -> usize {
    if super::FATBIN.is_empty() || !driver_present() {
        return 0;
    }
    CudaContext::device_count().map(|n| n.max(0) as usize).unwrap_or(0)
}

/// True when `Device::Cuda(0)` can be used.
pub fn is_available() -> bool {
    device_count() > 0
}

/// Waits for all work queued on `device` (a no-op for the CPU). For timing and tests; ops never need it.
pub fn synchronize(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(i) => CudaDevice::get(i)?.sync(),
    }
}

impl CudaDevice {
    /// The device with this ordinal, created (context, stream, kernels) on first use.
    pub(crate) fn get(ordinal: usize) -> Result<Arc<CudaDevice>> {
        let table = DEVICES.get_or_init(|| Mutex::new(Vec::new()));
        let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Some(d)) = t.get(ordinal) {
            return Ok(d.clone());
        }
        let device = Device::Cuda(ordinal);
        if super::FATBIN.is_empty() {
            return Err(unavailable(device, NO_NVCC));
        }
        if !driver_present() {
            return Err(unavailable(device, "the CUDA driver (libcuda.so) was not found on this machine"));
        }
        let n = CudaContext::device_count().map_err(|e| unavailable(device, format!("{e:?}")))?;
        if ordinal >= n.max(0) as usize {
            return Err(unavailable(device, format!("the driver sees {n} CUDA device(s)")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| unavailable(device, format!("{e:?}")))?;
        // SAFETY: munja never uses cudarc's CudaSlice, whose cross-stream tracking the events serve.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| unavailable(device, format!("{e:?}")))?;
        ctx.bind_to_thread().map_err(|e| unavailable(device, format!("{e:?}")))?;
        let module =
            Module::load(device, compute_capability(&ctx).map_err(|e| unavailable(device, format!("{e:?}")))?)?;
        let d =
            Arc::new(CudaDevice { ordinal, ctx, stream, module, alloc: Allocator::default(), blas: Mutex::new(None) });
        if t.len() <= ordinal {
            t.resize(ordinal + 1, None);
        }
        t[ordinal] = Some(d.clone());
        Ok(d)
    }

    pub(crate) fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }

    /// Which kernel build this device loaded (images.rs), in words.
    pub(crate) fn kernel_image(&self) -> &str {
        &self.module.image
    }

    pub(crate) fn err(&self, op: &'static str, e: impl std::fmt::Debug) -> Error {
        Error::DeviceUnavailable { op, device: self.device(), detail: format!("{e:?}") }
    }

    /// Makes this device's context current on the calling thread (cheap when it already is).
    pub(crate) fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| self.err("cuda", e))
    }

    pub(crate) fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// The stream every op of this device is enqueued on.
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// A second stream on this device, for work that should overlap the ops (collectives).
    pub(crate) fn new_side_stream(&self) -> Result<Arc<CudaStream>> {
        self.ctx.new_stream().map_err(|e| self.err("new stream", e))
    }

    pub(crate) fn sync(&self) -> Result<()> {
        self.bind()?;
        self.stream.synchronize().map_err(|e| self.err("synchronize", e))
    }

    pub(crate) fn func(&self, name: &'static str) -> Result<Func> {
        self.module.func(name, self.device())
    }

    /// How many blocks of `threads` threads of kernel `name`, each with `shared` bytes of dynamic shared
    /// memory (allowed first with `allow_dynamic_shared` when over 48 KiB), the whole device holds at once
    /// (SMs × blocks per SM, from the driver's occupancy calculator): the grid of a kernel whose blocks
    /// loop over the work. Host-side only; no synchronisation.
    pub(crate) fn resident_blocks(&self, name: &'static str, threads: u32, shared: usize) -> Result<usize> {
        let f = self.func(name)?;
        let sm_attr = sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
        // SAFETY: `f` is a loaded function of this device's module; the attribute query has no side effects.
        let (per_sm, sms) = unsafe {
            (
                result::occupancy::max_active_block_per_multiprocessor(f.0, threads as i32, shared),
                result::device::get_attribute(self.ctx.cu_device(), sm_attr),
            )
        };
        let per_sm = per_sm.map_err(|e| self.err(name, e))?;
        let sms = sms.map_err(|e| self.err(name, e))?;
        Ok((per_sm.max(1) as usize) * (sms.max(1) as usize))
    }

    /// The static shared memory of kernel `name` (its `__shared__` arrays), in bytes.
    fn static_shared(&self, name: &'static str) -> Result<usize> {
        let f = self.func(name)?;
        let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES;
        // SAFETY: an attribute query of a loaded function; no side effects.
        let fixed = unsafe { result::function::get_function_attribute(f.0, attr) }.map_err(|e| self.err(name, e))?;
        Ok(fixed.max(0) as usize)
    }

    /// The most dynamic shared memory one block of kernel `name` may take on this device: the opt-in
    /// limit per block (227 KiB on an H100, 163 KiB on an A100) less the kernel's static shared memory.
    pub(crate) fn max_dynamic_shared(&self, name: &'static str) -> Result<usize> {
        let optin = sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN;
        // SAFETY: an attribute query of this device; no side effects.
        let limit =
            unsafe { result::device::get_attribute(self.ctx.cu_device(), optin) }.map_err(|e| self.err(name, e))?;
        Ok((limit.max(0) as usize).saturating_sub(self.static_shared(name)?))
    }

    /// Lets kernel `name` launch with `shared` bytes of dynamic shared memory. Without opting in, a
    /// block's static and dynamic shared memory together may not pass 48 KiB: a launch past that fails
    /// with CUDA_ERROR_INVALID_VALUE (a 48 KiB ring beside a reduction's 128-byte scratch did, on an
    /// H200). Host-side only.
    pub(crate) fn allow_dynamic_shared(&self, name: &'static str, shared: usize) -> Result<()> {
        if !needs_shared_opt_in(shared, self.static_shared(name)?) {
            return Ok(());
        }
        let f = self.func(name)?;
        let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        // SAFETY: sets a launch limit of a loaded function of this device; callers keep `shared` within
        // `max_dynamic_shared`.
        unsafe { result::function::set_function_attribute(f.0, attr, shared as i32) }.map_err(|e| self.err(name, e))
    }

    /// Enqueues kernel `name` on the stream. `args` point at values laid out as the kernel's parameters.
    pub(crate) fn launch(
        &self,
        name: &'static str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        args: &mut [*mut c_void],
    ) -> Result<()> {
        self.launch_shared(name, grid, block, 0, args)
    }

    /// `launch` with `shared` bytes of dynamic shared memory per block.
    pub(crate) fn launch_shared(
        &self,
        name: &'static str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared: u32,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        let f = self.func(name)?;
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        KERNEL_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        super::profile::timed(self, name, || {
            // SAFETY: the caller passes arguments matching the kernel's signature (see the launch! macro uses).
            unsafe { result::launch_kernel(f.0, grid, block, shared, self.cu_stream(), args) }
                .map_err(|e| self.err(name, e))
        })
    }
}

/// Launches a kernel with arguments given as Rust values whose layout matches the C parameters
/// (u64 for pointers, i64 for int64_t, i32 for int, f64 for double, `Strided` for the view struct).
macro_rules! launch {
    ($dev:expr, $name:expr, $grid:expr, $block:expr; $($arg:expr),* $(,)?) => {{
        $dev.launch($name, $grid, $block, &mut [$((&$arg) as *const _ as *mut ::std::ffi::c_void),*])
    }};
}
pub(crate) use launch;

/// `launch!` with bytes of dynamic shared memory per block after the block shape.
macro_rules! launch_shared {
    ($dev:expr, $name:expr, $grid:expr, $block:expr, $shared:expr; $($arg:expr),* $(,)?) => {{
        $dev.launch_shared($name, $grid, $block, $shared, &mut [$((&$arg) as *const _ as *mut ::std::ffi::c_void),*])
    }};
}
pub(crate) use launch_shared;

/// The device's compute capability, (major, minor).
fn compute_capability(ctx: &CudaContext) -> std::result::Result<(u32, u32), cudarc::driver::DriverError> {
    use sys::CUdevice_attribute::{
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR as MAJOR, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR as MINOR,
    };
    // SAFETY: attribute queries of a device the context was made for; no side effects.
    unsafe {
        let major = result::device::get_attribute(ctx.cu_device(), MAJOR)?;
        let minor = result::device::get_attribute(ctx.cu_device(), MINOR)?;
        Ok((major.max(0) as u32, minor.max(0) as u32))
    }
}

/// Which kernel build `device` loaded: "nvcc 13.0 fatbin (...) for a CUDA 13.0 driver" or "NVRTC 12.8
/// cubin sm_90 for a CUDA 12.4 driver" (see `kernel_image_for`).
pub fn kernel_image(device: Device) -> Result<String> {
    let Device::Cuda(i) = device else {
        return Err(Error::invalid("kernel_image", "the CPU runs no CUDA kernels"));
    };
    Ok(CudaDevice::get(i)?.kernel_image().to_string())
}

/// Milliseconds between two events recorded on one stream, once both have completed. Through the
/// original cuEventElapsedTime, which every driver exports (drivers keep each entry point they ever had):
/// cudarc built for CUDA 13 calls cuEventElapsedTime_v2, which drivers before CUDA 12.8 lack (cudarc then
/// panics looking it up), and its bindings for CUDA 13 leave the original out.
pub fn event_elapsed_ms(start: &CudaEvent, end: &CudaEvent) -> std::result::Result<f32, cudarc::driver::DriverError> {
    type Elapsed = unsafe extern "C" fn(*mut f32, sys::CUevent, sys::CUevent) -> sys::CUresult;
    static ELAPSED: OnceLock<Option<Elapsed>> = OnceLock::new();
    // SAFETY: the driver's entry point of this name has this signature (cuda.h); events exist only with a
    // driver loaded.
    let elapsed =
        ELAPSED.get_or_init(|| unsafe { sys::culib().get::<Elapsed>(b"cuEventElapsedTime").ok().map(|f| *f) });
    let elapsed = elapsed.ok_or(cudarc::driver::DriverError(sys::CUresult::CUDA_ERROR_NOT_FOUND))?;
    start.synchronize()?;
    end.synchronize()?;
    let mut ms = 0f32;
    // SAFETY: both events are live, recorded and complete (synchronised above).
    unsafe { elapsed(&mut ms, start.cu_event(), end.cu_event()) }.result()?;
    Ok(ms)
}

/// Shared memory a block may take without opting in (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES),
/// static and dynamic together, on every GPU since Volta.
const DEFAULT_SHARED_PER_BLOCK: usize = 48 * 1024;

/// Whether `dynamic` bytes of dynamic shared memory beside `fixed` bytes of static shared memory need
/// the kernel's opt-in before a launch.
pub(crate) fn needs_shared_opt_in(dynamic: usize, fixed: usize) -> bool {
    dynamic + fixed > DEFAULT_SHARED_PER_BLOCK
}

/// A 1-D grid of `threads`-wide blocks covering `n` elements, capped for grid-stride loops.
pub(crate) fn grid_for(n: usize, threads: u32) -> (u32, u32, u32) {
    let blocks = n.div_ceil(threads as usize).clamp(1, 65_535 * 8);
    (blocks as u32, 1, 1)
}

/// Milliseconds of device time taken by the work `f` enqueues on `device`'s stream, measured with CUDA
/// events (waits for that work). For benchmarks.
pub fn time_ms(device: Device, mut f: impl FnMut() -> Result<()>) -> Result<f32> {
    let Device::Cuda(i) = device else {
        return Err(Error::invalid("time_ms", "CUDA event timing needs a CUDA device"));
    };
    let d = CudaDevice::get(i)?;
    d.bind()?;
    let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let start = d.stream.record_event(flags).map_err(|e| d.err("time_ms", e))?;
    f()?;
    let end = d.stream.record_event(flags).map_err(|e| d.err("time_ms", e))?;
    end.synchronize().map_err(|e| d.err("time_ms", e))?;
    event_elapsed_ms(&start, &end).map_err(|e| d.err("time_ms", e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn static_shared_memory_counts_toward_the_opt_in_limit() {
        use super::needs_shared_opt_in;
        assert!(!needs_shared_opt_in(48 * 1024, 0));
        // A three-stage ring of 16 KiB rows beside a block reduction's scratch: the H200 refused it.
        assert!(needs_shared_opt_in(48 * 1024, 128));
        assert!(needs_shared_opt_in(48 * 1024 + 1, 0));
        assert!(!needs_shared_opt_in(0, 256));
    }
}
