//! Choosing the device, and what the run summary needs to know about a GPU: its name (for the bf16 peak
//! that MFU is measured against) and the energy it draws. Both come from NVML through `nvidia-smi`, which
//! ships with the driver, so nothing is linked and a machine without one simply reports "not measured".

use munja::{DType, Device, Error, Result, Tensor};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// `auto`, `cpu`, `cuda` or `cuda:N`; `None` is auto.
pub fn parse_device(s: &str) -> Result<Option<Device>> {
    let bad = || Error::Invalid {
        op: "--device",
        detail: format!("'{s}' is not a device: use auto, cpu, cuda or cuda:N (N = 0, 1, ...)"),
    };
    match s.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(None),
        "cpu" => Ok(Some(Device::Cpu)),
        "cuda" => Ok(Some(Device::Cuda(0))),
        other => {
            let n = other.strip_prefix("cuda:").ok_or_else(bad)?;
            Ok(Some(Device::Cuda(n.parse().map_err(|_| bad())?)))
        }
    }
}

/// The requested device, checked by allocating on it; auto prefers the first GPU and falls back to the
/// CPU when there is none (or munja was built without its CUDA backend).
pub fn pick_device(requested: Option<Device>) -> Result<Device> {
    let works = |d: Device| Tensor::zeros(&[1], DType::F32, d).map(|_| ());
    match requested {
        Some(d) => works(d).map(|_| d),
        None => Ok(if works(Device::Cuda(0)).is_ok() { Device::Cuda(0) } else { Device::Cpu }),
    }
}

/// nvidia-smi's name for CUDA ordinal `index`. nvidia-smi numbers every GPU in the machine while CUDA
/// numbers only those in CUDA_VISIBLE_DEVICES, so the ordinal is translated through that list first.
fn smi_id(index: usize) -> String {
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(list) if !list.trim().is_empty() => {
            list.split(',').nth(index).map(|s| s.trim().to_string()).unwrap_or_else(|| index.to_string())
        }
        _ => index.to_string(),
    }
}

fn smi_query(index: usize, field: &str) -> Option<String> {
    let out = Command::new("nvidia-smi")
        .args([&format!("--query-gpu={field}"), "--format=csv,noheader,nounits", "-i", &smi_id(index)])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let line = text.lines().next()?.trim().to_string();
    (out.status.success() && !line.is_empty() && !line.contains("N/A") && !line.contains("Not Supported"))
        .then_some(line)
}

pub fn gpu_name(index: usize) -> Option<String> {
    smi_query(index, "name")
}

/// Dense bf16 tensor-core peak in FLOP/s for the cards the summary knows, by name.
pub fn bf16_peak_flops(name: &str) -> Option<f64> {
    let n = name.to_ascii_uppercase();
    if n.contains("H100") || n.contains("H200") {
        Some(989e12)
    } else if n.contains("A100") {
        Some(312e12)
    } else {
        None
    }
}

/// Energy the GPU draws while training, from NVML's board power readings: `nvidia-smi` streams one
/// reading every `SAMPLE_MS` and a thread integrates them over time (trapezoids). nvidia-smi has no query
/// field for NVML's cumulative energy counter, and on Ampere and newer each reading is already a
/// one-second average, so the integral is as good as the readings (NVML quotes ±5 W).
pub struct EnergyMeter {
    child: Child,
    state: Arc<Mutex<Integral>>,
}

const SAMPLE_MS: u32 = 200;

#[derive(Default)]
struct Integral {
    joules: f64,
    last: Option<(Instant, f64)>,
    samples: usize,
}

impl EnergyMeter {
    /// `None` when the device is not a GPU or nvidia-smi cannot be started.
    pub fn start(device: Device) -> Option<EnergyMeter> {
        let Device::Cuda(index) = device else { return None };
        let mut child = Command::new("nvidia-smi")
            .args([
                "--query-gpu=power.draw",
                "--format=csv,noheader,nounits",
                "-i",
                &smi_id(index),
                &format!("--loop-ms={SAMPLE_MS}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let stdout = child.stdout.take()?;
        let state = Arc::new(Mutex::new(Integral::default()));
        let sink = state.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // "[N/A]" or an error text: not a reading, so it adds nothing.
                let Ok(watts) = line.trim().parse::<f64>() else { continue };
                let now = Instant::now();
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((t0, w0)) = s.last {
                    s.joules += 0.5 * (w0 + watts) * now.duration_since(t0).as_secs_f64();
                }
                s.last = Some((now, watts));
                s.samples += 1;
            }
        });
        Some(EnergyMeter { child, state })
    }

    /// Stops sampling and returns the joules measured, if there were at least two readings.
    pub fn finish(mut self) -> Option<f64> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (s.samples >= 2).then_some(s.joules)
    }
}

impl Drop for EnergyMeter {
    fn drop(&mut self) {
        // Never leave the sampler running after the program is done with it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
