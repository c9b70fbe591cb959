//! The host side of the row rings (`RowRing` in kernels/common.cuh): how many rows a block keeps in
//! flight in shared memory, and how much shared memory that takes.

use super::device::CudaDevice;
use crate::{DType, Device, Result};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Most rows a block of the ring kernels keeps in shared memory (RING_STAGES in kernels/common.cuh).
const RING_STAGES: usize = 8;

/// Stages a ring gets at least (fitting permitting): the depth measured on an H200 for 4096-wide rows.
const MIN_STAGES: usize = 3;

/// Bytes a block should have in flight ahead of the row it computes. Rows of 8-16 KiB get the 3 stages
/// measured best for them; attention's 512-byte rows (a one-warp block each, at most 32 blocks an SM) got
/// 45% of copy bandwidth from 3 and get RING_STAGES.
const AHEAD_BYTES: usize = 16 * 1024;

/// The stages a ring of `stage`-byte slots gets before fitting: enough that the slots ahead of the one
/// computed hold AHEAD_BYTES, between MIN_STAGES and RING_STAGES.
fn default_stages(stage: usize) -> usize {
    (1 + AHEAD_BYTES.div_ceil(stage.max(1))).clamp(MIN_STAGES, RING_STAGES)
}

/// `MUNJA_RING_STAGES` (0 to RING_STAGES; read once), when set: every ring kernel's stages, capped by
/// what fits. 1 keeps no row in flight ahead of the one computed; 0 is the direct mode (no ring: a block
/// per row loading its row straight into registers, the GPU's block scheduler keeping rows in flight).
/// For comparing the modes on one GPU.
fn stages_override() -> Option<usize> {
    static STAGES: OnceLock<Option<usize>> = OnceLock::new();
    *STAGES.get_or_init(|| {
        std::env::var("MUNJA_RING_STAGES").ok().and_then(|v| v.trim().parse::<usize>().ok()).map(|s| s.min(RING_STAGES))
    })
}

/// Whether a ring kernel has the direct mode (stages 0), and whether it runs in it by default.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Direct {
    /// Compiled out of the kernel (`RowRing<T, ARRAYS, false>`): `MUNJA_RING_STAGES=0` gives it one stage.
    Never,
    /// The ring by default; the direct mode under `MUNJA_RING_STAGES=0`.
    Allowed,
    /// The direct mode unless `MUNJA_RING_STAGES` sets stages.
    Preferred,
}

impl Direct {
    /// `Preferred` when `prefer`, else `Allowed`.
    pub(crate) fn preferred_if(prefer: bool) -> Direct {
        if prefer {
            Direct::Preferred
        } else {
            Direct::Allowed
        }
    }
}

/// How many rows a ring kernel computes at once: its walk (`RowRing::walk` or `walk_pairs`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Walk {
    /// A row at a time, stages − 1 rows in flight ahead of it.
    Rows,
    /// Two rows per block reduction (`walk_pairs`): at least 2 stages, stages − 2 rows in flight ahead.
    Pairs,
}

impl Walk {
    fn rows_at_once(self) -> usize {
        match self {
            Walk::Rows => 1,
            Walk::Pairs => 2,
        }
    }
}

/// How a ring kernel launches: `stages` row slots taking `shared` bytes of dynamic shared memory per
/// block, and the `resident` blocks of that size the whole device holds at once (the most the kernel's
/// row walk can use). Stages 0 (direct mode): no shared memory; `blocks` then gives a block per row.
#[derive(Clone, Copy)]
pub(crate) struct RingPlan {
    pub(crate) stages: i32,
    pub(crate) shared: usize,
    pub(crate) resident: usize,
}

impl RingPlan {
    /// The grid of a kernel walking `rows` rows: the resident blocks, or in direct mode a block per row.
    pub(crate) fn blocks(&self, rows: usize) -> usize {
        if self.stages == 0 {
            rows.min(i32::MAX as usize)
        } else {
            self.resident.min(rows)
        }
    }
}

/// A ring kernel as its plan sees it: kernel `name` in `threads`-thread blocks, `arrays` rows of n values
/// per stage (x and g for a backward), its direct mode and its walk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct RingKernel {
    pub(crate) name: &'static str,
    pub(crate) threads: u32,
    pub(crate) arrays: usize,
    pub(crate) direct: Direct,
    pub(crate) walk: Walk,
}

impl RingKernel {
    /// Kernel `name` walking a row at a time.
    pub(crate) fn rows(name: &'static str, threads: u32, arrays: usize, direct: Direct) -> RingKernel {
        RingKernel { name, threads, arrays, direct, walk: Walk::Rows }
    }
}

/// The plan for the row ring (RowRing in kernels/common.cuh) of kernel `k` over rows of `n` values:
/// each thread holding ceil(packs / threads) 16-byte packs of each array per stage; `default_stages` of
/// them as far as the device lets one block have (one more for a pair walk, so as many rows stay in
/// flight); or the direct mode as `k.direct` says. None when not even the rows computed at once fit (f64
/// rows of 8192 values on an A100 do not).
///
/// A plan depends only on the device, the kernel, the block width, the slot size and the mode, and the
/// shared-memory opt-in it makes stays with the loaded kernel: plans are kept per process, so a launch
/// after the first asks the driver nothing (planning took about five attribute and occupancy queries).
pub(crate) fn ring_plan(dev: &CudaDevice, k: RingKernel, n: usize, dtype: DType) -> Result<Option<RingPlan>> {
    type Key = (Device, RingKernel, usize);
    static PLANS: OnceLock<Mutex<HashMap<Key, Option<RingPlan>>>> = OnceLock::new();
    let packs = n / (16 / dtype.size_in_bytes());
    let stage = k.arrays * packs.div_ceil(k.threads as usize) * k.threads as usize * 16;
    let key = (dev.device(), k, stage);
    let plans = PLANS.get_or_init(Default::default);
    if let Some(plan) = plans.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(*plan);
    }
    let plan = plan_ring(dev, k, stage)?;
    plans.lock().unwrap_or_else(|e| e.into_inner()).insert(key, plan);
    Ok(plan)
}

/// `ring_plan` for slots of `stage` bytes, asking the driver.
fn plan_ring(dev: &CudaDevice, k: RingKernel, stage: usize) -> Result<Option<RingPlan>> {
    let max_stages = walk_stages(planned_stages(stages_override(), k.direct, stage), k.walk);
    if max_stages == 0 {
        return Ok(Some(RingPlan { stages: 0, shared: 0, resident: dev.resident_blocks(k.name, k.threads, 0)? }));
    }
    let stages = (dev.max_dynamic_shared(k.name)? / stage.max(1)).min(max_stages);
    if stages < k.walk.rows_at_once() {
        return Ok(None);
    }
    let shared = stages * stage;
    dev.allow_dynamic_shared(k.name, shared)?;
    let resident = dev.resident_blocks(k.name, k.threads, shared)?;
    Ok(Some(RingPlan { stages: stages as i32, shared, resident }))
}

/// The stages asked for (before fitting): the `MUNJA_RING_STAGES` override if any, except that a kernel
/// without the direct mode gets one stage for 0; else the direct mode where preferred, else
/// `default_stages`.
fn planned_stages(overridden: Option<usize>, direct: Direct, stage: usize) -> usize {
    match (overridden, direct) {
        (Some(0), Direct::Never) => 1,
        (Some(s), _) => s,
        (None, Direct::Preferred) => 0,
        (None, _) => default_stages(stage),
    }
}

/// The stages of a `walk` from those planned for a row at a time: a pair walk keeps as many rows in
/// flight ahead of the rows it computes with one more stage, and needs at least 2. It has no direct mode:
/// asked for one (`MUNJA_RING_STAGES=0`), it gets 2 stages, neither row fetched ahead.
fn walk_stages(planned: usize, walk: Walk) -> usize {
    match walk {
        Walk::Rows => planned,
        Walk::Pairs => (planned + 1).max(2),
    }
}

#[cfg(test)]
mod tests {
    use super::{default_stages, planned_stages, walk_stages, Direct, Walk};

    #[test]
    fn direct_mode_only_where_the_kernel_has_it() {
        let stage = 16 * 1024;
        assert_eq!(planned_stages(None, Direct::Preferred, stage), 0);
        assert_eq!(planned_stages(None, Direct::Allowed, stage), 3);
        assert_eq!(planned_stages(None, Direct::Never, stage), 3);
        assert_eq!(planned_stages(Some(0), Direct::Allowed, stage), 0);
        assert_eq!(planned_stages(Some(0), Direct::Never, stage), 1);
        assert_eq!(planned_stages(Some(2), Direct::Preferred, stage), 2);
        assert_eq!(planned_stages(Some(2), Direct::Never, stage), 2);
    }

    #[test]
    fn pair_walks_keep_as_many_rows_in_flight() {
        assert_eq!(walk_stages(3, Walk::Rows), 3);
        assert_eq!(walk_stages(3, Walk::Pairs), 4);
        // MUNJA_RING_STAGES=0 or 1: no row ahead, but both rows of a pair.
        assert_eq!(walk_stages(planned_stages(Some(0), Direct::Never, 16 * 1024), Walk::Pairs), 2);
        assert_eq!(walk_stages(planned_stages(Some(0), Direct::Allowed, 16 * 1024), Walk::Pairs), 2);
        assert_eq!(walk_stages(1, Walk::Pairs), 2);
    }

    #[test]
    fn short_rows_get_deeper_rings() {
        // 4096-wide bf16 rows (8 KiB slots) and f32 rows of 16-32 KiB: the measured 3 stages.
        assert_eq!(default_stages(8 * 1024), 3);
        assert_eq!(default_stages(16 * 1024), 3);
        assert_eq!(default_stages(64 * 1024), 3);
        // 4 KiB slots: 4 ahead; attention's 512-byte rows: all RING_STAGES.
        assert_eq!(default_stages(4 * 1024), 5);
        assert_eq!(default_stages(512), super::RING_STAGES);
        assert_eq!(default_stages(0), super::RING_STAGES);
    }
}
