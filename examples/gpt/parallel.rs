//! Data parallelism for the GPT example. Started by `munja-run`, torchrun or `srun` (their variables say
//! how many processes there are), each process trains on its own random windows and `Ddp` averages the
//! gradients during backward; `--zero1` shards the AdamW state instead (the groups then reduce-scatter the
//! gradients themselves). Rank 0 prints, writes the metrics, the plot and the checkpoints; every rank
//! evaluates the same batches, so no evaluation needs communication. A stop signal on any rank stops all
//! of them after the same step, because the flag is agreed on by an all-reduce each step.

use munja::dist::{Ddp, DdpConfig, DistConfig, ProcessGroup, ReduceOp};
use munja::nn::Module;
use munja::{cuda, Device, Error, Generator, Result, Tensor};

/// The tensors `Ddp` synchronises, without the model that owns them: hooks live on the parameter
/// tensors, so the trainer keeps its `Gpt` as it is.
pub struct Weights(pub Vec<(String, Tensor)>);

impl Module for Weights {
    fn forward(&self, _x: &Tensor) -> Result<Tensor> {
        Err(Error::Invalid { op: "Weights", detail: "holds weights only; call the model".into() })
    }
    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        for (name, t) in &self.0 {
            f(&munja::nn::join(prefix, name), t);
        }
    }
}

pub struct Parallel {
    pub pg: ProcessGroup,
    pub ddp: Ddp<Weights>,
    pub zero1: bool,
}

impl Parallel {
    pub fn world(&self) -> usize {
        self.pg.world_size()
    }
    /// True on any rank's flag: a signal that reached one rank stops every rank at the same step.
    pub fn any(&self, flag: bool) -> Result<bool> {
        if self.world() == 1 {
            return Ok(flag);
        }
        let t = Tensor::from_vec(vec![flag as u8 as f32], &[1], Device::Cpu)?;
        self.pg.all_reduce(&t, ReduceOp::Sum)?;
        Ok(t.item()? > 0.0)
    }
    /// The sum of `v` over the ranks.
    pub fn sum(&self, v: f64) -> Result<f64> {
        let t = Tensor::from_vec(vec![v], &[1], Device::Cpu)?;
        self.pg.all_reduce(&t, ReduceOp::Sum)?;
        t.item()
    }
}

/// The GPU this process should use for `cuda`/`auto`: its local rank's, or the only one it can see (a
/// scheduler that binds one GPU per task shows each task its own as device 0).
pub fn local_gpu() -> Result<Device> {
    let local = DistConfig::from_env()?.map_or(0, |c| c.local_rank);
    let visible = cuda::device_count();
    Ok(Device::Cuda(if visible == 1 { 0 } else { local }))
}

/// Rank `rank`'s own copy of a random stream at the same position: rank 0 keeps the stream itself, so a
/// one-process run draws what it always drew, and every rank draws the same count per step, so the
/// positions stay equal and a checkpoint's (rank 0's) position serves every rank on resume.
pub fn rank_stream(g: Generator, rank: usize) -> Generator {
    if rank == 0 {
        return g;
    }
    Generator { seed: super::train::mix(g.seed ^ super::train::mix(0xDA7A_0000 + rank as u64)), offset: g.offset }
}

/// Sets up gradient synchronisation over `pg` for weights `working` (and `master`, the f32 copies of a
/// bf16 run, which are broadcast too so every replica starts from rank 0's numbers).
pub fn attach(
    pg: &ProcessGroup,
    working: Vec<(String, Tensor)>,
    master: Option<&[(String, Tensor)]>,
    zero1: bool,
) -> Result<Parallel> {
    for (_, p) in master.unwrap_or(&[]) {
        pg.broadcast(p, 0)?;
    }
    let config = DdpConfig { sync_gradients: !zero1, ..DdpConfig::default() };
    let ddp = Ddp::with_config(Weights(working), pg, config)?;
    Ok(Parallel { pg: pg.clone(), ddp, zero1 })
}
