//! The host side of the row rings (`RowRing` in kernels/common.cuh): how many rows a block keeps in
//! flight in shared memory, and how much shared memory that takes.

use super::device::CudaDevice;
use crate::{DType, Result};

/// Most rows a block of the ring kernels keeps in shared memory (RING_STAGES in kernels/common.cuh).
const RING_STAGES: usize = 3;

/// Stages and bytes of dynamic shared memory for the row ring (RowRing in kernels/common.cuh) of kernel
/// `name`: `arrays` rows of n values per stage, each of `threads` threads holding ceil(packs / threads)
/// 16-byte packs; as many stages as the device lets one block have, up to RING_STAGES. None when not even
/// one stage fits (f64 rows of 8192 values on an A100 do not).
pub(crate) fn ring_plan(
    dev: &CudaDevice,
    name: &'static str,
    n: usize,
    dtype: DType,
    threads: u32,
    arrays: usize,
) -> Result<Option<(i32, usize)>> {
    let packs = n / (16 / dtype.size_in_bytes());
    let stage = arrays * packs.div_ceil(threads as usize) * threads as usize * 16;
    let stages = (dev.max_dynamic_shared(name)? / stage.max(1)).min(RING_STAGES);
    if stages == 0 {
        return Ok(None);
    }
    dev.allow_dynamic_shared(name, stages * stage)?;
    Ok(Some((stages as i32, stages * stage)))
}
