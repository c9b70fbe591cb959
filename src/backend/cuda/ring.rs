//! The host side of the row rings (`RowRing` in kernels/common.cuh): how many rows a block keeps in
//! flight in shared memory, and how much shared memory that takes.

use super::device::CudaDevice;
use crate::{DType, Result};

/// Most rows a block of the ring kernels keeps in shared memory (RING_STAGES in kernels/common.cuh).
const RING_STAGES: usize = 3;

/// RING_STAGES, or fewer through `MUNJA_RING_STAGES` (1 to 3; read once): 1 keeps no row in flight ahead
/// of the one computed, which is how the ring kernels compare with plain row-per-block loading on one GPU.
fn max_stages() -> usize {
    static STAGES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *STAGES.get_or_init(|| {
        std::env::var("MUNJA_RING_STAGES")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map_or(RING_STAGES, |s| s.clamp(1, RING_STAGES))
    })
}

/// How a ring kernel launches: `stages` row slots taking `shared` bytes of dynamic shared memory per
/// block, and the `resident` blocks of that size the whole device holds at once (the most the kernel's
/// row walk can use).
pub(crate) struct RingPlan {
    pub(crate) stages: i32,
    pub(crate) shared: usize,
    pub(crate) resident: usize,
}

/// The plan for the row ring (RowRing in kernels/common.cuh) of kernel `name` in `threads`-thread
/// blocks: `arrays` rows of n values per stage, each thread holding ceil(packs / threads) 16-byte packs;
/// as many stages as the device lets one block have, up to `max_stages()`. None when not even one stage
/// fits (f64 rows of 8192 values on an A100 do not).
pub(crate) fn ring_plan(
    dev: &CudaDevice,
    name: &'static str,
    n: usize,
    dtype: DType,
    threads: u32,
    arrays: usize,
) -> Result<Option<RingPlan>> {
    let packs = n / (16 / dtype.size_in_bytes());
    let stage = arrays * packs.div_ceil(threads as usize) * threads as usize * 16;
    let stages = (dev.max_dynamic_shared(name)? / stage.max(1)).min(max_stages());
    if stages == 0 {
        return Ok(None);
    }
    let shared = stages * stage;
    dev.allow_dynamic_shared(name, shared)?;
    let resident = dev.resident_blocks(name, threads, shared)?;
    Ok(Some(RingPlan { stages: stages as i32, shared, resident }))
}
