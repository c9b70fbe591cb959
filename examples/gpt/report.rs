//! The end-of-run summary: throughput, and on a GPU the model FLOPs utilisation against the card's dense
//! bf16 peak and the energy NVML counted. Nothing is estimated: what cannot be measured says so.

use super::device::{bf16_peak_flops, gpu_name};
use super::train::si;
use munja::Device;

pub struct RunReport {
    pub device: Device,
    pub steps_done: usize,
    pub final_val_loss: Option<f64>,
    /// The lowest validation loss of this session's evaluations and its step.
    pub best_val_loss: Option<(f64, usize)>,
    pub wall_s: f64,
    pub train_s: f64,
    pub tokens: usize,
    pub flops_per_token: f64,
    /// Joules the GPUs drew during the session, when NVML could be read on all of them.
    pub energy_j: Option<f64>,
    /// Processes (GPUs) that trained together; tokens and energy are their totals.
    pub world: usize,
    /// munja's own kernel launches per training step this session (evaluations included; cuBLASLt not).
    pub launches_per_step: f64,
}

/// "4m 58.2s".
pub fn duration(s: f64) -> String {
    if s >= 60.0 {
        format!("{}m {:.1}s", (s / 60.0).floor(), s % 60.0)
    } else {
        format!("{s:.1}s")
    }
}

impl RunReport {
    /// The summary's lines.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec!["run summary".to_string()];
        if self.world > 1 {
            out.push(format!("  devices        {} processes, rank 0 on {}", self.world, self.device));
        } else {
            out.push(format!("  device         {}", self.device));
        }
        out.push(format!("  steps          {} ({} tokens this session)", self.steps_done, si(self.tokens as f64)));
        if let Some(v) = self.final_val_loss {
            out.push(format!("  final val loss {v:.4}"));
        }
        if let Some((v, step)) = self.best_val_loss {
            out.push(format!("  best val loss  {v:.4} at step {step} (of this session's evaluations)"));
        }
        out.push(format!("  wall time      {} ({} in training steps)", duration(self.wall_s), duration(self.train_s)));
        let tok_s = self.tokens as f64 / self.train_s.max(1e-9);
        out.push(format!("  throughput     {} tokens/s (training steps only)", si(tok_s)));
        match self.device {
            Device::Cuda(i) => {
                let achieved = self.flops_per_token * tok_s;
                let name = gpu_name(i);
                // Against the peak of every GPU in the job (rank 0's card stands for all of them).
                match name.as_deref().and_then(bf16_peak_flops).map(|p| p * self.world as f64) {
                    Some(peak) => out.push(format!(
                        "  MFU            {:.1}% ({:.1} TFLOP/s of {}× the {}'s {:.0} TFLOP/s dense bf16 peak)",
                        100.0 * achieved / peak,
                        achieved / 1e12,
                        self.world,
                        name.as_deref().unwrap_or("GPU"),
                        peak / 1e12 / self.world as f64
                    )),
                    None => out.push(format!(
                        "  MFU            not computed ({:.2} TFLOP/s achieved; no known bf16 peak for {})",
                        achieved / 1e12,
                        name.as_deref().unwrap_or("this GPU (nvidia-smi did not answer)")
                    )),
                }
            }
            Device::Cpu => out.push("  MFU            not computed on the CPU (no reference peak)".into()),
        }
        if let Device::Cuda(_) = self.device {
            // Each launch costs the host a few µs: with many short kernels that, not the GPU, sets the pace.
            out.push(format!(
                "  launches       {:.0} munja kernels per step (evaluations included)",
                self.launches_per_step
            ));
        }
        match self.energy_j {
            Some(j) => out.push(format!(
                "  energy         {:.2} kJ over the session, {:.3} J per 1k tokens (NVML board power, integrated)",
                j / 1e3,
                j / (self.tokens.max(1) as f64 / 1e3)
            )),
            None => out.push("  energy         not measured (NVML not available)".into()),
        }
        out
    }
}
