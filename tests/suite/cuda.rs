//! The CUDA backend against the CPU backend: every op family and its backward on fresh random inputs
//! (f32 ≤ 1e-5 relative with TF32 off, bf16/f16 ≤ 1e-2, f64 ≤ 1e-10), a 100-step MLP training loop with no
//! driver allocation after its first step, and errors (out of memory, mixed devices).
//!
//! Without a GPU each device test prints "skipped: no CUDA device" and passes; with MUNJA_REQUIRE_GPU=1 it
//! fails instead. The fatbin and register-spill checks run everywhere (they need only the build).

use super::common::rel_err;
use munja::{cuda, AdamParams, DType, Device, Error, Generator, Result, SgdParams, Tensor};

const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::BF16, DType::F16];

/// Device 0, or None (after saying why) when there is no usable GPU and none is required.
fn gpu() -> Option<Device> {
    if dry_run() {
        return Some(Device::Cpu);
    }
    if cuda::is_available() {
        cuda::set_tf32(false);
        return Some(Device::Cuda(0));
    }
    let why = Tensor::zeros(&[1], DType::F32, Device::Cuda(0)).err().map(|e| e.to_string()).unwrap_or_default();
    if std::env::var("MUNJA_REQUIRE_GPU").is_ok_and(|v| v == "1") {
        panic!("MUNJA_REQUIRE_GPU=1 but no CUDA device is usable: {why}");
    }
    println!("skipped: no CUDA device");
    None
}

/// MUNJA_CUDA_TESTS_ON_CPU=1 runs the device tests with the CPU standing in for the GPU: it checks the
/// tests themselves on machines without one (every comparison is then CPU against CPU).
fn dry_run() -> bool {
    std::env::var("MUNJA_CUDA_TESTS_ON_CPU").is_ok_and(|v| v == "1")
}

fn tol(d: DType) -> f64 {
    match d {
        DType::F64 => 1e-10,
        DType::F32 => 1e-5,
        _ => 1e-2,
    }
}

/// Random normal CPU tensor (seeded per call site) of `dtype`.
fn randn(seed: u64, shape: &[usize], dtype: DType) -> Tensor {
    Tensor::randn_with(&mut Generator::new(seed), shape, DType::F64, Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
        .detach()
}

/// A detached copy of `t` on `d` (in a dry run, an independent CPU copy).
/// |t| + 0.5: a safe divisor.
fn pos(t: Tensor) -> Tensor {
    t.abs().unwrap().add_scalar(0.5).unwrap().detach()
}

fn on(t: &Tensor, d: Device) -> Tensor {
    if d == Device::Cpu {
        let v = t.to_vec_f64().unwrap();
        return Tensor::from_vec(v, t.dims(), d).unwrap().to_dtype(t.dtype()).unwrap().detach();
    }
    t.to_device(d).unwrap().detach()
}

/// Asserts the GPU result matches the CPU one within `tol`.
#[track_caller]
fn close(what: &str, gpu: &Tensor, cpu: &Tensor, tol: f64) {
    assert_eq!(gpu.dims(), cpu.dims(), "{what}: shapes");
    assert_eq!(gpu.dtype(), cpu.dtype(), "{what}: dtypes");
    assert!(dry_run() || gpu.device() != Device::Cpu, "{what}: result left the GPU");
    let g = gpu.to_device(Device::Cpu).unwrap();
    let e = rel_err(&g, cpu).unwrap();
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

fn grad(t: &Tensor) -> Tensor {
    t.grad().expect("gradient")
}

// ---------------------------------------------------------------- CPU-only: build artefacts

/// ELF images inside the fatbin: (SM number, bytes).
fn cubins(fatbin: &[u8]) -> Vec<(u32, &[u8])> {
    let rd16 = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let rd32 = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let rd64 = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let mut out = vec![];
    let mut i = 0;
    while let Some(p) = fatbin[i..].windows(4).position(|w| w == b"\x7fELF") {
        let s = i + p;
        let b = &fatbin[s..];
        if b.len() > 0x40 && b[4] == 2 {
            let flags = rd32(b, 0x30);
            // CUDA ELF ABI: the SM is in bits 8..16 of e_flags (low byte in the older ABI 0x33).
            let sm = if b[7] == 0x33 { flags & 0xff } else { (flags >> 8) & 0xff };
            let end =
                (rd64(b, 0x28) + rd16(b, 0x3C) * rd16(b, 0x3A)).max(rd64(b, 0x20) + rd16(b, 0x38) * rd16(b, 0x36));
            out.push((sm, &b[..end.min(b.len())]));
            i = s + end.max(4);
        } else {
            i = s + 4;
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The names of `kernel_names()` missing from a cubin.
fn missing_kernels(cubin: &[u8]) -> Vec<String> {
    cuda::kernel_names().into_iter().filter(|n| !contains(cubin, format!("{n}\0").as_bytes())).collect()
}

#[test]
fn fatbin_has_every_kernel_for_sm80_and_sm90() {
    if cuda::FATBIN.is_empty() {
        assert!(std::env::var("MUNJA_REQUIRE_GPU").is_err(), "built without nvcc");
        println!("skipped: built without nvcc");
        return;
    }
    let images = cubins(cuda::FATBIN);
    for sm in [80, 90] {
        let img = images.iter().find(|(s, _)| *s == sm).unwrap_or_else(|| panic!("no sm_{sm} cubin in the fatbin"));
        let missing = missing_kernels(img.1);
        assert!(missing.is_empty(), "sm_{sm} lacks {missing:?}");
    }
    // The PTX for newer GPUs is there too (compressed, so only its presence is checked).
    assert!(contains(cuda::FATBIN, b"compute_80") || images.len() >= 2);
}

/// The CUDA 12 build (NVRTC 12 cubins, for drivers older than the nvcc that built the fatbin) holds every
/// kernel for sm_80 and sm_90. Where MUNJA_CUDA12_HOME is set (CI sets it), a CUDA 13 nvcc's build must
/// have one.
#[test]
fn cuda12_build_has_every_kernel_for_sm80_and_sm90() {
    if cuda::CUDA12_CUBINS.is_empty() {
        let expected = cuda::FATBIN_TOOLKIT.0 >= 13 && std::env::var_os("MUNJA_CUDA12_HOME").is_some();
        assert!(!expected, "nvcc {:?} with MUNJA_CUDA12_HOME set, but no CUDA 12 build", cuda::FATBIN_TOOLKIT);
        println!("skipped: no CUDA 12 build (nvcc {:?})", cuda::FATBIN_TOOLKIT);
        return;
    }
    assert_eq!(cuda::CUDA12_TOOLKIT.0, 12, "the CUDA 12 build came from NVRTC {:?}", cuda::CUDA12_TOOLKIT);
    for sm in ["80", "90"] {
        let (_, cubin) = cuda::CUDA12_CUBINS.iter().find(|(a, _)| *a == sm).unwrap_or_else(|| panic!("no sm_{sm}"));
        // A cubin of its own (not a fatbin), for that architecture.
        let images = cubins(cubin);
        assert_eq!(images.len(), 1, "sm_{sm}: {} ELF images", images.len());
        assert_eq!(images[0].0, sm.parse::<u32>().unwrap(), "sm_{sm}: the ELF says sm_{}", images[0].0);
        let missing = missing_kernels(cubin);
        assert!(missing.is_empty(), "CUDA 12 sm_{sm} lacks {missing:?}");
    }
}

/// The ptxas reports of the builds there are: nvcc's, and NVRTC 12's.
fn ptxas_reports() -> Vec<(&'static str, &'static str)> {
    [("nvcc", cuda::PTXAS_REPORT), ("cuda12", cuda::CUDA12_PTXAS_REPORT)]
        .into_iter()
        .filter(|(_, r)| !r.is_empty())
        .collect()
}

#[test]
fn no_kernel_spills_registers_or_uses_local_memory() {
    if cuda::PTXAS_REPORT.is_empty() {
        println!("skipped: built without nvcc");
        return;
    }
    for (build, report) in ptxas_reports() {
        // ptxas -v: "Compiling entry function 'NAME' for 'sm_XX'" ... "N bytes stack frame, S bytes spill stores, L bytes spill loads"
        let mut current = String::new();
        let mut bad = vec![];
        let mut seen = 0;
        for line in report.lines() {
            if let Some(rest) = line.split("Compiling entry function '").nth(1) {
                current = rest.replace("' for '", " @ ").trim_end_matches('\'').to_string();
                seen += 1;
            }
            if line.contains("spill stores") {
                let num = |key: &str| -> u64 {
                    let i = line.find(key).unwrap();
                    line[..i].trim_end().rsplit([' ', ',']).next().unwrap_or("0").parse().unwrap_or(u64::MAX)
                };
                // A stack frame means local memory: only the Philox normal kernels may have one (the f64
                // sin/cos argument reduction keeps a small local array on its rare slow path).
                let stack_ok = num("bytes stack frame") == 0 || current.starts_with("normal_");
                if num("bytes spill stores") != 0 || num("bytes spill loads") != 0 || !stack_ok {
                    bad.push(format!("{current}: {}", line.trim()));
                }
            }
        }
        assert!(seen >= cuda::kernel_names().len(), "{build}: report lists only {seen} kernels");
        assert!(bad.is_empty(), "{build}: kernels spill registers:\n{}", bad.join("\n"));
    }
}

/// The kernels the host may launch with 1024 threads per block (a block per row of up to any length, and the
/// index sort) must use at most 64 registers, or the launch fails on the GPU ("too many resources").
#[test]
fn kernels_launched_with_1024_threads_fit_the_register_file() {
    if cuda::PTXAS_REPORT.is_empty() {
        println!("skipped: built without nvcc");
        return;
    }
    let wide = [
        "softmax_",
        "softmax_backward_",
        "norm_forward_",
        "norm_backward_x_",
        "cross_entropy_",
        "sort_rank",
        "sort_base",
    ];
    // Families whose names extend these but launch fewer threads (register-cached rows: at most 256).
    let narrow = ["softmax_rows_", "softmax_backward_rows_", "norm_forward_rows_", "norm_backward_x_rows_"];
    for (build, report) in ptxas_reports() {
        let (mut current, mut bad, mut checked) = (String::new(), vec![], 0);
        for line in report.lines() {
            if let Some(rest) = line.split("Compiling entry function '").nth(1) {
                current = rest.split('\'').next().unwrap_or("").to_string();
            }
            let Some(used) = line.split("Used ").nth(1).and_then(|r| r.split(' ').next()?.parse::<u32>().ok()) else {
                continue;
            };
            if wide.iter().any(|p| current.starts_with(p)) && !narrow.iter().any(|p| current.starts_with(p)) {
                checked += 1;
                if used > 64 {
                    bad.push(format!("{current}: {used} registers"));
                }
            }
        }
        assert!(checked >= 2 * 22, "{build}: found only {checked} of the 1024-thread kernels in the ptxas report");
        assert!(
            bad.is_empty(),
            "{build}: kernels launched with 1024 threads use more than 64 registers:\n{}",
            bad.join("\n")
        );
    }
}

#[test]
fn without_a_device_cuda_is_a_clear_err() {
    if cuda::is_available() {
        return;
    }
    let e = Tensor::zeros(&[2], DType::F32, Device::Cuda(0)).unwrap_err();
    assert!(matches!(e, Error::DeviceUnavailable { .. }), "{e}");
    if cuda::FATBIN.is_empty() {
        assert!(e.to_string().contains("munja was built without nvcc"), "{e}");
    }
}

/// Under a real CUDA 12 driver library (scripts/check-cuda12-driver.sh puts Debian's libcuda 535, CUDA
/// 12.2, on LD_LIBRARY_PATH and sets MUNJA_EXPECT_DRIVER=12.2): munja reads the driver's version, would
/// load the CUDA 12 build on an A100 and an H100, and without a GPU says so as an `Err`, not a panic.
#[test]
fn a_cuda12_driver_gets_the_cuda12_build() {
    let Ok(expected) = std::env::var("MUNJA_EXPECT_DRIVER") else {
        println!("skipped: MUNJA_EXPECT_DRIVER is not set (scripts/check-cuda12-driver.sh sets it)");
        return;
    };
    let version = cuda::driver_version().expect("no CUDA driver found");
    assert_eq!(format!("{}.{}", version.0, version.1), expected, "driver version");
    if cuda::FATBIN.is_empty() {
        println!("built without nvcc: only the driver version is checked");
        return;
    }
    for (cc, arch) in [((8, 0), "sm_80"), ((9, 0), "sm_90"), ((8, 6), "sm_80")] {
        let image = cuda::kernel_image_for(cc).unwrap_or_else(|e| panic!("compute capability {cc:?}: {e}"));
        let t = cuda::CUDA12_TOOLKIT;
        let want = if cuda::FATBIN_TOOLKIT.0 > version.0 {
            format!("NVRTC {}.{} cubin {arch}", t.0, t.1)
        } else {
            "nvcc".into()
        };
        assert!(image.contains(&want), "compute capability {cc:?} loads {image}, not {want}");
    }
    if !cuda::is_available() {
        let e = Tensor::zeros(&[2], DType::F32, Device::Cuda(0)).unwrap_err();
        assert!(matches!(e, Error::DeviceUnavailable { .. }), "{e}");
        let mut timed = || Ok(());
        assert!(cuda::time_ms(Device::Cuda(0), &mut timed).is_err(), "timing without a device");
    }
}

// ---------------------------------------------------------------- device tests

#[test]
fn unary_ops_match_cpu() {
    let Some(d) = gpu() else { return };
    type F = fn(&Tensor) -> Result<Tensor>;
    let ops: Vec<(&str, F, bool)> = vec![
        ("neg", |t| t.neg(), false),
        ("exp", |t| t.exp(), false),
        ("log", |t| t.log(), true),
        ("sqrt", |t| t.sqrt(), true),
        ("rsqrt", |t| t.rsqrt(), true),
        ("recip", |t| t.recip(), true),
        ("abs", |t| t.abs(), false),
        ("tanh", |t| t.tanh(), false),
        ("sigmoid", |t| t.sigmoid(), false),
        ("relu", |t| t.relu(), false),
        ("gelu", |t| t.gelu(), false),
        ("gelu_erf", |t| t.gelu_erf(), false),
        ("silu", |t| t.silu(), false),
        ("powf", |t| t.powf(1.7), true),
        ("clamp", |t| t.clamp(-0.5, 0.7), false),
        ("affine", |t| t.affine(1.5, -0.25), false),
    ];
    for dt in FLOATS {
        // A transposed (strided) view and a contiguous one with an odd length (vector tail).
        let base = randn(1, &[67, 33], dt);
        for (name, f, positive) in &ops {
            let x = if *positive { base.abs().unwrap().add_scalar(0.1).unwrap() } else { base.clone() };
            for (view, xc) in [("t", x.t().unwrap()), ("contig", x.clone())] {
                let xg = on(&x, d);
                let xg = if view == "t" { xg.t().unwrap() } else { xg };
                close(&format!("{name} {dt} {view}"), &f(&xg).unwrap(), &f(&xc).unwrap(), tol(dt));
            }
        }
    }
}

#[test]
fn unary_backward_matches_cpu() {
    let Some(d) = gpu() else { return };
    for dt in [DType::F32, DType::F64] {
        let x = randn(2, &[40, 50], dt).set_requires_grad(true);
        let xg = on(&x, d).set_requires_grad(true);
        let f = |t: &Tensor| {
            t.gelu()?.add(&t.silu()?)?.add(&t.tanh()?)?.add(&t.clamp(-0.5, 0.5)?)?.mul(&t.sigmoid()?)?.sum_all()
        };
        f(&x).unwrap().backward().unwrap();
        f(&xg).unwrap().backward().unwrap();
        close(&format!("unary grads {dt}"), &grad(&xg), &grad(&x), tol(dt));
    }
}

#[test]
fn binary_ops_broadcast_like_cpu() {
    let Some(d) = gpu() else { return };
    for dt in FLOATS {
        let a = randn(3, &[5, 1, 37], dt);
        let b = randn(4, &[4, 37], dt);
        let (ag, bg) = (on(&a, d), on(&b, d));
        type F = fn(&Tensor, &Tensor) -> Result<Tensor>;
        let ops: [(&str, F); 6] = [
            ("add", |x, y| x.add(y)),
            ("sub", |x, y| x.sub(y)),
            ("mul", |x, y| x.mul(y)),
            ("div", |x, y| x.div(y)),
            ("maximum", |x, y| x.maximum(y)),
            ("minimum", |x, y| x.minimum(y)),
        ];
        for (name, f) in ops {
            close(&format!("{name} {dt}"), &f(&ag, &bg).unwrap(), &f(&a, &b).unwrap(), tol(dt));
            // Broadcasts with a long last dim (the row-walking kernel): bias, column, transposed operand.
            let (p, q) = (randn(61, &[64, 300], dt), pos(randn(62, &[300], dt)));
            close(&format!("{name} {dt} bias"), &f(&on(&p, d), &on(&q, d)).unwrap(), &f(&p, &q).unwrap(), tol(dt));
            let (p, q) = (randn(63, &[300, 1], dt), pos(randn(64, &[300, 200], dt)));
            close(&format!("{name} {dt} column"), &f(&on(&p, d), &on(&q, d)).unwrap(), &f(&p, &q).unwrap(), tol(dt));
            let (p, q) = (randn(65, &[200, 300], dt), pos(randn(66, &[200], dt)));
            let (pt, pgt) = (p.t().unwrap(), on(&p, d).t().unwrap());
            close(&format!("{name} {dt} transposed"), &f(&pgt, &on(&q, d)).unwrap(), &f(&pt, &q).unwrap(), tol(dt));
            // Same shape, contiguous fast path (1000 elements: a vector body and a tail).
            let (p, q) = (randn(5, &[1000], dt), randn(6, &[1000], dt));
            close(
                &format!("{name} {dt} contiguous"),
                &f(&on(&p, d), &on(&q, d)).unwrap(),
                &f(&p, &q).unwrap(),
                tol(dt),
            );
        }
    }
    let i = Tensor::from_vec((0..24i64).collect(), &[4, 6], Device::Cpu).unwrap();
    let j = Tensor::from_vec(vec![3i64, -2, 7, 100, 0, 1], &[6], Device::Cpu).unwrap();
    let r = on(&i, d).add(&on(&j, d)).unwrap().mul(&on(&j, d)).unwrap();
    assert_eq!(r.to_vec::<i64>().unwrap(), i.add(&j).unwrap().mul(&j).unwrap().to_vec::<i64>().unwrap());
}

#[test]
fn binary_backward_reduces_broadcast_dims() {
    let Some(d) = gpu() else { return };
    let a = randn(7, &[6, 1, 9], DType::F32).set_requires_grad(true);
    let b = randn(8, &[5, 9], DType::F32).set_requires_grad(true);
    let (ag, bg) = (on(&a, d).set_requires_grad(true), on(&b, d).set_requires_grad(true));
    let f = |x: &Tensor, y: &Tensor| x.mul(y)?.add(&x.div(&y.abs()?.add_scalar(1.0)?)?)?.sum_all();
    f(&a, &b).unwrap().backward().unwrap();
    f(&ag, &bg).unwrap().backward().unwrap();
    close("mul/div grad a", &grad(&ag), &grad(&a), 1e-5);
    close("mul/div grad b", &grad(&bg), &grad(&b), 1e-5);
}

#[test]
fn compare_where_and_masked_fill_match_cpu() {
    let Some(d) = gpu() else { return };
    for dt in [DType::F32, DType::BF16, DType::F64, DType::I64] {
        let a = randn(9, &[8, 16], DType::F64).mul_scalar(3.0).unwrap().to_dtype(dt).unwrap();
        let b = randn(10, &[16], DType::F64).mul_scalar(3.0).unwrap().to_dtype(dt).unwrap();
        let (ag, bg) = (on(&a, d), on(&b, d));
        for (c, cg) in [(a.lt(&b), ag.lt(&bg)), (a.ge(&b), ag.ge(&bg)), (a.eq(&a), ag.eq(&ag)), (a.ne(&b), ag.ne(&bg))]
        {
            let (c, cg) = (c.unwrap(), cg.unwrap());
            assert_eq!(cg.to_vec::<u8>().unwrap(), c.to_vec::<u8>().unwrap(), "compare {dt}");
        }
        let m = a.gt(&b).unwrap();
        let mg = on(&m, d);
        let w = Tensor::where_cond(&m, &a, &b.unsqueeze(0).unwrap().expand(&[8usize, 16][..]).unwrap()).unwrap();
        let wg = Tensor::where_cond(&mg, &ag, &bg.unsqueeze(0).unwrap().expand(&[8usize, 16][..]).unwrap()).unwrap();
        assert_eq!(wg.to_vec_f64().unwrap(), w.to_vec_f64().unwrap(), "where {dt}");
    }
    let x = randn(11, &[4, 4], DType::F32);
    let m = x.gt_scalar(0.0).unwrap();
    close("masked_fill", &on(&x, d).masked_fill(&on(&m, d), -1e4).unwrap(), &x.masked_fill(&m, -1e4).unwrap(), 0.0);
}

#[test]
fn casts_and_strided_copies_match_cpu() {
    let Some(d) = gpu() else { return };
    let all = [DType::F32, DType::F64, DType::BF16, DType::F16, DType::I64, DType::U8];
    let src = randn(12, &[6, 7, 5], DType::F64).mul_scalar(40.0).unwrap();
    for s in all {
        let x = src.to_dtype(s).unwrap();
        let xg = on(&x, d);
        for t in all {
            let (c, cg) = (
                x.permute(&[2usize, 0, 1][..]).unwrap().to_dtype(t).unwrap(),
                xg.permute(&[2usize, 0, 1][..]).unwrap().to_dtype(t).unwrap(),
            );
            assert_eq!(cg.to_vec_f64().unwrap(), c.to_vec_f64().unwrap(), "cast {s} -> {t}");
        }
        // contiguous() of a narrowed, permuted view; and cat (copy_into at offsets).
        let v = x.narrow(1, 2, 4).unwrap().transpose(0, 2).unwrap();
        let vg = xg.narrow(1, 2, 4).unwrap().transpose(0, 2).unwrap();
        assert_eq!(vg.contiguous().unwrap().to_vec_f64().unwrap(), v.contiguous().unwrap().to_vec_f64().unwrap());
        // Batched transposes larger than one 32x32 tile, with partial edge tiles (the tiled copy).
        let big = randn(13, &[3, 40, 70], DType::F64).mul_scalar(40.0).unwrap().to_dtype(s).unwrap();
        let bigg = on(&big, d);
        for (d0, d1) in [(1isize, 2isize), (0, 2)] {
            let (v, vg) = (big.transpose(d0, d1).unwrap(), bigg.transpose(d0, d1).unwrap());
            assert_eq!(vg.contiguous().unwrap().to_vec_f64().unwrap(), v.contiguous().unwrap().to_vec_f64().unwrap());
        }
        // Attention's head split and merge: rows of 16 contiguous elements (16-byte pack copies), and a
        // cat along the last dim (each part a slice of wider rows).
        let heads = randn(14, &[2, 5, 3, 16], DType::F64).mul_scalar(40.0).unwrap().to_dtype(s).unwrap();
        let (hv, hvg) = (heads.transpose(1, 2).unwrap(), on(&heads, d).transpose(1, 2).unwrap());
        assert_eq!(hvg.contiguous().unwrap().to_vec_f64().unwrap(), hv.contiguous().unwrap().to_vec_f64().unwrap());
        let (hc, hcg) =
            (Tensor::cat(&[&heads, &heads], 3).unwrap(), Tensor::cat(&[&on(&heads, d), &on(&heads, d)], 3).unwrap());
        assert_eq!(hcg.to_vec_f64().unwrap(), hc.to_vec_f64().unwrap(), "cat on the last dim {s}");
        let c = Tensor::cat(&[&x, &x.narrow(0, 1, 3).unwrap()], 0).unwrap();
        let cg = Tensor::cat(&[&xg, &xg.narrow(0, 1, 3).unwrap()], 0).unwrap();
        assert_eq!(cg.to_vec_f64().unwrap(), c.to_vec_f64().unwrap(), "cat {s}");
    }
}

#[test]
fn reductions_match_cpu() {
    let Some(d) = gpu() else { return };
    for dt in FLOATS {
        let x = randn(13, &[9, 130, 17], dt);
        let xg = on(&x, d);
        for dims in [vec![2isize], vec![1], vec![0], vec![0, 2], vec![1, 2], vec![0, 1, 2]] {
            close(
                &format!("sum {dims:?} {dt}"),
                &xg.sum(&dims, false).unwrap(),
                &x.sum(&dims, false).unwrap(),
                tol(dt),
            );
            close(&format!("max {dims:?} {dt}"), &xg.max(&dims, true).unwrap(), &x.max(&dims, true).unwrap(), 0.0);
            close(&format!("min {dims:?} {dt}"), &xg.min(&dims, false).unwrap(), &x.min(&dims, false).unwrap(), 0.0);
        }
        for dim in 0..3 {
            let (a, ag) = (x.argmax(dim, false).unwrap(), xg.argmax(dim, false).unwrap());
            assert_eq!(ag.to_vec::<i64>().unwrap(), a.to_vec::<i64>().unwrap(), "argmax {dim} {dt}");
        }
    }
    // One long row spread over many blocks, and a wide sum over a short dim.
    let big = randn(14, &[3_000_001], DType::F32);
    close("sum_all 3M", &on(&big, d).sum_all().unwrap(), &big.sum_all().unwrap(), 1e-5);
    let wide = randn(15, &[3, 200_000], DType::F32);
    close("sum over 3 rows", &on(&wide, d).sum(&[0], false).unwrap(), &wide.sum(&[0], false).unwrap(), 1e-5);
    let m = randn(16, &[64, 64], DType::F32).gt_scalar(0.0).unwrap();
    assert_eq!(on(&m, d).count_nonzero().unwrap().item().unwrap(), m.count_nonzero().unwrap().item().unwrap());
    // mean/var backward.
    let x = randn(17, &[12, 40], DType::F32).set_requires_grad(true);
    let xg = on(&x, d).set_requires_grad(true);
    let f = |t: &Tensor| t.var(&[1], 1, false)?.add(&t.mean(&[1], false)?)?.add(&t.max(&[1], false)?)?.sum_all();
    f(&x).unwrap().backward().unwrap();
    f(&xg).unwrap().backward().unwrap();
    close("reduce grads", &grad(&xg), &grad(&x), 1e-5);
}

#[test]
fn softmax_and_log_softmax_match_cpu_with_grads() {
    let Some(d) = gpu() else { return };
    for dt in FLOATS {
        for n in [10usize, 1000, 50_257] {
            let x = randn(18, &[7, n], dt).mul_scalar(3.0).unwrap().detach().set_requires_grad(true);
            let xg = on(&x, d).set_requires_grad(true);
            let w = randn(19, &[7, n], dt);
            let wg = on(&w, d);
            let (s, sg) = (x.softmax(-1).unwrap(), xg.softmax(-1).unwrap());
            close(&format!("softmax {dt} n={n}"), &sg, &s, tol(dt));
            let (l, lg) = (x.log_softmax(-1).unwrap(), xg.log_softmax(-1).unwrap());
            close(&format!("log_softmax {dt} n={n}"), &lg, &l, tol(dt));
            s.mul(&w).unwrap().add(&l.mul(&w).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            sg.mul(&wg).unwrap().add(&lg.mul(&wg).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            close(&format!("softmax grad {dt} n={n}"), &grad(&xg), &grad(&x), tol(dt) * 10.0);
        }
    }
    // The causal softmax: register-cached rows (n = 64) and long rows (the online kernel), queries after
    // cached keys (offset > 0), with its gradient; 40 × 256 × 256 scores are more rows than the GPU holds
    // blocks (32 per SM at this width), so each block walks several through its ring.
    for dt in FLOATS {
        for (t, n, off) in [(64usize, 64usize, 0usize), (5, 9000, 8995), (16, 300, 3), (256, 256, 0)] {
            let b = if t == 256 { 40 } else { 3 };
            let x = randn(21, &[b, t, n], dt).mul_scalar(3.0).unwrap().detach().set_requires_grad(true);
            let xg = on(&x, d).set_requires_grad(true);
            let w = randn(22, &[b, t, n], dt);
            let (s, sg) = (x.causal_softmax(off).unwrap(), xg.causal_softmax(off).unwrap());
            close(&format!("causal_softmax {dt} t={t} n={n} offset={off}"), &sg, &s, tol(dt));
            s.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
            sg.mul(&on(&w, d)).unwrap().sum_all().unwrap().backward().unwrap();
            close(&format!("causal_softmax grad {dt} t={t} n={n}"), &grad(&xg), &grad(&x), tol(dt) * 10.0);
        }
    }
    // Softmax over a non-last dim (a strided view) and a fully masked row (NaN, as on the CPU).
    let x = randn(20, &[6, 5, 4], DType::F32);
    close("softmax dim 1", &on(&x, d).softmax(1).unwrap(), &x.softmax(1).unwrap(), 1e-5);
    let m = Tensor::full(&[2, 8], f64::NEG_INFINITY, DType::F32, d).unwrap().softmax(-1).unwrap();
    assert!(m.to_vec::<f32>().unwrap().iter().all(|v| v.is_nan()));
}

#[test]
fn layer_norm_and_rms_norm_match_cpu_with_grads() {
    let Some(d) = gpu() else { return };
    // 9000 rows of 256: more rows than the GPU holds blocks of the forward (32 per SM), so each block
    // walks several rows through its ring of rows in flight, as in training.
    for dt in FLOATS {
        for (rows, n) in [(33usize, 64usize), (33, 768), (33, 2048), (33, 4099), (9000, 256)] {
            let x = randn(21, &[rows, n], dt).add_scalar(0.5).unwrap().detach().set_requires_grad(true);
            let w = randn(22, &[n], dt).set_requires_grad(true);
            let b = randn(23, &[n], dt).set_requires_grad(true);
            let g = randn(24, &[rows, n], dt);
            let (xg, wg, bg) = (
                on(&x, d).set_requires_grad(true),
                on(&w, d).set_requires_grad(true),
                on(&b, d).set_requires_grad(true),
            );
            let gg = on(&g, d);
            let y = x.layer_norm(&[n], Some(&w), Some(&b), 1e-5).unwrap();
            let yg = xg.layer_norm(&[n], Some(&wg), Some(&bg), 1e-5).unwrap();
            close(&format!("layer_norm {dt} {n}"), &yg, &y, tol(dt));
            let r = x.rms_norm(&[n], Some(&w), 1e-6).unwrap();
            let rg = xg.rms_norm(&[n], Some(&wg), 1e-6).unwrap();
            close(&format!("rms_norm {dt} {n}"), &rg, &r, tol(dt));
            y.add(&r).unwrap().mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            yg.add(&rg).unwrap().mul(&gg).unwrap().sum_all().unwrap().backward().unwrap();
            let t = tol(dt) * if dt == DType::F32 { 10.0 } else { 1.0 };
            close(&format!("norm grad x {dt} {n}"), &grad(&xg), &grad(&x), t);
            close(&format!("norm grad w {dt} {n}"), &grad(&wg), &grad(&w), t);
            close(&format!("norm grad b {dt} {n}"), &grad(&bg), &grad(&b), t);
        }
    }
}

#[test]
fn cross_entropy_matches_cpu_with_grads() {
    let Some(d) = gpu() else { return };
    for dt in FLOATS {
        for c in [10usize, 50_257] {
            let x = randn(25, &[19, c], dt).mul_scalar(2.0).unwrap().detach().set_requires_grad(true);
            let xg = on(&x, d).set_requires_grad(true);
            let mut t: Vec<i64> = (0..19).map(|i| ((i * 7919) % c) as i64).collect();
            t[3] = -100;
            let t = Tensor::from_vec(t, &[19], Device::Cpu).unwrap();
            let tg = on(&t, d);
            let (l, lg) = (x.cross_entropy(&t, -100).unwrap(), xg.cross_entropy(&tg, -100).unwrap());
            close(&format!("cross_entropy {dt} C={c}"), &lg, &l, tol(dt));
            l.backward().unwrap();
            lg.backward().unwrap();
            close(&format!("cross_entropy grad {dt} C={c}"), &grad(&xg), &grad(&x), tol(dt));
        }
    }
}

#[test]
fn matmul_matches_cpu_for_layouts_and_dtypes() {
    let Some(d) = gpu() else { return };
    for dt in FLOATS {
        let t = if dt == DType::F32 { 1e-5 } else { tol(dt) };
        // Plain, transposed operands (used in place), batched, broadcast batch, odd sizes.
        let a = randn(26, &[3, 37, 64], dt);
        let b = randn(27, &[3, 64, 29], dt);
        let (ag, bg) = (on(&a, d), on(&b, d));
        close(&format!("bmm {dt}"), &ag.matmul(&bg).unwrap(), &a.matmul(&b).unwrap(), t);
        let (at, bt) = (randn(28, &[64, 37], dt), randn(29, &[29, 64], dt));
        let (atg, btg) = (on(&at, d), on(&bt, d));
        close(
            &format!("AᵀBᵀ {dt}"),
            &atg.t().unwrap().matmul(&btg.t().unwrap()).unwrap(),
            &at.t().unwrap().matmul(&bt.t().unwrap()).unwrap(),
            t,
        );
        let w = randn(30, &[64, 29], dt);
        close(&format!("broadcast rhs {dt}"), &ag.matmul(&on(&w, d)).unwrap(), &a.matmul(&w).unwrap(), t);
        let v = randn(31, &[64], dt);
        close(&format!("matvec {dt}"), &ag.matmul(&on(&v, d)).unwrap(), &a.matmul(&v).unwrap(), t);
        // Non-unit strides in both matrix dims force a copy.
        let s = randn(32, &[74, 64], dt);
        let sv = s
            .narrow(0, 0, 74)
            .unwrap()
            .reshape(&[37usize, 2, 64][..])
            .unwrap()
            .narrow(1, 0, 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let svg = on(&s, d).reshape(&[37usize, 2, 64][..]).unwrap().narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
        close(&format!("strided lhs {dt}"), &svg.matmul(&on(&w, d)).unwrap(), &sv.matmul(&w).unwrap(), t);
    }
    // Backward through a 2-layer product, f32 strict.
    let a = randn(33, &[16, 48], DType::F32).set_requires_grad(true);
    let b = randn(34, &[48, 24], DType::F32).set_requires_grad(true);
    let (ag, bg) = (on(&a, d).set_requires_grad(true), on(&b, d).set_requires_grad(true));
    a.matmul(&b).unwrap().tanh().unwrap().sum_all().unwrap().backward().unwrap();
    ag.matmul(&bg).unwrap().tanh().unwrap().sum_all().unwrap().backward().unwrap();
    close("matmul grad a", &grad(&ag), &grad(&a), 1e-5);
    close("matmul grad b", &grad(&bg), &grad(&b), 1e-5);
    // TF32 opt-in stays close (≈1e-3).
    cuda::set_tf32(true);
    let (p, q) = (randn(35, &[256, 256], DType::F32), randn(36, &[256, 256], DType::F32));
    close("tf32 matmul", &on(&p, d).matmul(&on(&q, d)).unwrap(), &p.matmul(&q).unwrap(), 1e-2);
    cuda::set_tf32(false);
}

#[test]
fn indexing_matches_cpu_with_grads() {
    let Some(d) = gpu() else { return };
    for dt in [DType::F32, DType::BF16, DType::F64] {
        let table = randn(37, &[50, 24], dt).set_requires_grad(true);
        let tg = on(&table, d).set_requires_grad(true);
        let ids = Tensor::from_vec(vec![3i64, 7, 3, 49, 0, 7, 7, 12], &[2, 4], Device::Cpu).unwrap();
        let idg = on(&ids, d);
        let (e, eg) = (table.embedding(&ids).unwrap(), tg.embedding(&idg).unwrap());
        close(&format!("embedding {dt}"), &eg, &e, 0.0);
        let w = randn(38, &[2, 4, 24], dt);
        e.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        eg.mul(&on(&w, d)).unwrap().sum_all().unwrap().backward().unwrap();
        close(&format!("embedding grad (index_add) {dt}"), &grad(&tg), &grad(&table), tol(dt));
        // A batch's worth of ids (past 256: the sorted index_add), some rows hit hundreds of times.
        let many: Vec<i64> = (0..3000).map(|i| ((i * 7919) % 61 % 50) as i64).collect();
        let many = Tensor::from_vec(many, &[30, 100], Device::Cpu).unwrap();
        let table2 = randn(44, &[50, 24], dt).set_requires_grad(true);
        let tg2 = on(&table2, d).set_requires_grad(true);
        let w2 = randn(45, &[30, 100, 24], dt);
        table2.embedding(&many).unwrap().mul(&w2).unwrap().sum_all().unwrap().backward().unwrap();
        tg2.embedding(&on(&many, d)).unwrap().mul(&on(&w2, d)).unwrap().sum_all().unwrap().backward().unwrap();
        close(&format!("embedding grad, 3000 ids (sorted index_add) {dt}"), &grad(&tg2), &grad(&table2), tol(dt));
        // 5000 ids, 60% of them one id (its sources span most of the sum's 64-position segments, beside
        // rows inside one segment), rows wider than a block of the sum (300 columns).
        let skewed: Vec<i64> = (0..5000).map(|i| if i % 5 < 3 { 7 } else { ((i * 7919) % 53 % 50) as i64 }).collect();
        let skewed = Tensor::from_vec(skewed, &[5000], Device::Cpu).unwrap();
        let table3 = randn(46, &[50, 300], dt).set_requires_grad(true);
        let tg3 = on(&table3, d).set_requires_grad(true);
        let w3 = randn(47, &[5000, 300], dt);
        table3.embedding(&skewed).unwrap().mul(&w3).unwrap().sum_all().unwrap().backward().unwrap();
        tg3.embedding(&on(&skewed, d)).unwrap().mul(&on(&w3, d)).unwrap().sum_all().unwrap().backward().unwrap();
        close(&format!("embedding grad, 5000 skewed ids {dt}"), &grad(&tg3), &grad(&table3), tol(dt));
        // A large vocabulary few ids name, as GPT-2's: the sorted path stores the named rows and zeroes the
        // others in memory it does not clear first, here what a freed tensor of the same size left behind
        // (the caching allocator hands its block back).
        let sparse: Vec<i64> = (0..600).map(|i| ((i * 7919) % 4000) as i64).collect();
        let sparse = Tensor::from_vec(sparse, &[600], Device::Cpu).unwrap();
        let table4 = randn(50, &[4000, 40], dt).set_requires_grad(true);
        let tg4 = on(&table4, d).set_requires_grad(true);
        let w4 = randn(51, &[600, 40], dt);
        table4.embedding(&sparse).unwrap().mul(&w4).unwrap().sum_all().unwrap().backward().unwrap();
        drop(on(&randn(52, &[4000, 40], dt), d));
        tg4.embedding(&on(&sparse, d)).unwrap().mul(&on(&w4, d)).unwrap().sum_all().unwrap().backward().unwrap();
        close(&format!("embedding grad, 600 ids into 4000 rows {dt}"), &grad(&tg4), &grad(&table4), tol(dt));

        let x = randn(39, &[6, 9], dt).set_requires_grad(true);
        let xg = on(&x, d).set_requires_grad(true);
        let gi = Tensor::from_vec((0..18).map(|i| (i * 5 % 9) as i64).collect(), &[6, 3], Device::Cpu).unwrap();
        let (g, gg) = (x.gather(1, &gi).unwrap(), xg.gather(1, &on(&gi, d)).unwrap());
        close(&format!("gather {dt}"), &gg, &g, 0.0);
        g.sum_all().unwrap().backward().unwrap();
        gg.sum_all().unwrap().backward().unwrap();
        close(&format!("gather grad (scatter_add) {dt}"), &grad(&xg), &grad(&x), tol(dt));
        let src = randn(40, &[6, 3], dt);
        close(
            &format!("scatter_add dim 0 {dt}"),
            &on(&x, d).detach().scatter_add(0, &on(&gi.remainder6(), d), &on(&src, d)).unwrap(),
            &x.detach().scatter_add(0, &gi.remainder6(), &src).unwrap(),
            tol(dt),
        );
        // ~500 sources per destination: bf16 must add in f32 and round once, as the CPU does.
        let many = Tensor::from_vec((0..2000).map(|i| (i % 4) as i64).collect(), &[2000], Device::Cpu).unwrap();
        let (base, vals) = (randn(42, &[4], dt), randn(43, &[2000], dt));
        close(
            &format!("scatter_add 2000 into 4 {dt}"),
            &on(&base, d).scatter_add(0, &on(&many, d), &on(&vals, d)).unwrap(),
            &base.scatter_add(0, &many, &vals).unwrap(),
            tol(dt),
        );
        let sel = Tensor::from_vec(vec![5i64, 0, 5], &[3], Device::Cpu).unwrap();
        close(
            &format!("index_select dim 0 {dt}"),
            &xg.index_select(0, &on(&sel, d)).unwrap(),
            &x.index_select(0, &sel).unwrap(),
            0.0,
        );
        let s2 = randn(41, &[6, 3], dt);
        close(
            &format!("index_add dim 1 {dt}"),
            &on(&x, d).detach().index_add(1, &on(&sel, d), &on(&s2, d)).unwrap(),
            &x.detach().index_add(1, &sel, &s2).unwrap(),
            tol(dt),
        );
        // Past 256 indices onto a table that is not zeros: the sorted path from a copy of the table (the
        // embedding backward above starts from zeros instead).
        let ids: Vec<i64> = (0..3000).map(|i| ((i * 7919) % 61 % 50) as i64).collect();
        let ids = Tensor::from_vec(ids, &[3000], Device::Cpu).unwrap();
        let (tb, rows) = (randn(48, &[50, 24], dt), randn(49, &[3000, 24], dt));
        close(
            &format!("index_add 3000 ids onto a table {dt}"),
            &on(&tb, d).index_add(0, &on(&ids, d), &on(&rows, d)).unwrap(),
            &tb.index_add(0, &ids, &rows).unwrap(),
            tol(dt),
        );
    }
}

/// Row indices in 0..6 (for scatter along dim 0 of a [6, 9] tensor).
trait Rem6 {
    fn remainder6(&self) -> Tensor;
}
impl Rem6 for Tensor {
    fn remainder6(&self) -> Tensor {
        let v: Vec<i64> = self.to_vec::<i64>().unwrap().iter().map(|x| x % 6).collect();
        Tensor::from_vec(v, self.dims(), Device::Cpu).unwrap()
    }
}

#[test]
fn random_streams_are_identical_to_cpu() {
    let Some(d) = gpu() else { return };
    for dt in FLOATS {
        for n in [1usize, 7, 4096 + 3] {
            let (u, ug) = (
                Tensor::rand_with(&mut Generator::new(42), &[n], dt, Device::Cpu).unwrap(),
                Tensor::rand_with(&mut Generator::new(42), &[n], dt, d).unwrap(),
            );
            assert_eq!(ug.to_vec_f64().unwrap(), u.to_vec_f64().unwrap(), "uniform {dt} n={n}");
            let (z, zg) = (
                Tensor::randn_with(&mut Generator::new(43), &[n], dt, Device::Cpu).unwrap(),
                Tensor::randn_with(&mut Generator::new(43), &[n], dt, d).unwrap(),
            );
            // Box-Muller in f64 with the device's log/cos/sin: equal to the last bit or two.
            // (bf16/f16: an element whose f64 value sits on a rounding boundary may round one ulp apart.)
            let t = match dt {
                DType::F64 => 1e-14,
                DType::F32 => 1e-7,
                _ => 2e-3,
            };
            close(&format!("normal {dt} n={n}"), &zg, &z, t);
        }
    }
}

#[test]
fn dropout_is_identical_to_cpu_forward_and_backward() {
    let Some(d) = gpu() else { return };
    // The GPU applies the draw in one kernel each way (no mask in memory), the CPU keeps a mask: a
    // contiguous input and a transposed one, and the backward of a sum (a broadcast, non-contiguous
    // gradient) and of a weighted sum (a contiguous one).
    for dt in FLOATS {
        for (p, transposed) in [(0.2, false), (0.5, false), (0.2, true)] {
            let x = randn(71, &[3, 1000 + 3], dt);
            let w = randn(72, &[1000 + 3, 3], dt);
            let run = |dev: Device| {
                let xd = on(&x, dev).set_requires_grad(true);
                let input = if transposed { xd.transpose(0, 1).unwrap() } else { xd.clone() };
                let y = input.dropout_with(&mut Generator::new(9), p, true).unwrap();
                let loss = if transposed { y.mul(&on(&w, dev)).unwrap().sum_all() } else { y.sum_all() };
                loss.unwrap().backward().unwrap();
                (y.to_vec_f64().unwrap(), xd.grad().unwrap().to_vec_f64().unwrap())
            };
            let ((y, gx), (yg, gxg)) = (run(Device::Cpu), run(d));
            let dt = format!("{dt}{}", if transposed { " (transposed)" } else { "" });
            // The same Philox draws, roundings and products: equal bit for bit, not just close.
            assert_eq!(yg, y, "dropout {dt} p={p} forward");
            assert_eq!(gxg, gx, "dropout {dt} p={p} backward");
            let dropped = gx.iter().filter(|&&v| v == 0.0).count() as f64 / gx.len() as f64;
            assert!((dropped - p).abs() < 0.05, "dropout {dt} p={p}: {dropped} dropped");
        }
    }
}

fn adam(step: u64, decoupled: bool) -> AdamParams {
    AdamParams { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, decoupled, step }
}

#[test]
fn fused_optimizers_match_cpu() {
    let Some(d) = gpu() else { return };
    for dt in [DType::F32, DType::F64] {
        for decoupled in [false, true] {
            let p = randn(44, &[1000], dt);
            let (m, v) =
                (Tensor::zeros(&[1000], dt, Device::Cpu).unwrap(), Tensor::zeros(&[1000], dt, Device::Cpu).unwrap());
            let (pg, mg, vg) = (on(&p, d), on(&m, d), on(&v, d));
            for step in 1..=5 {
                let g = randn(45 + step, &[1000], dt);
                p.adam_update_(&g, &m, &v, adam(step, decoupled)).unwrap();
                pg.adam_update_(&on(&g, d), &mg, &vg, adam(step, decoupled)).unwrap();
            }
            close(&format!("adam {dt} decoupled={decoupled}"), &pg, &p, tol(dt));
            close(&format!("adam v {dt}"), &vg, &v, tol(dt));
        }
        let p = randn(50, &[777], dt);
        let b = Tensor::zeros(&[777], dt, Device::Cpu).unwrap();
        let (pg, bg) = (on(&p, d), on(&b, d));
        for step in 0..4 {
            let h = SgdParams {
                lr: 0.1,
                momentum: 0.9,
                dampening: 0.1,
                weight_decay: 1e-4,
                nesterov: step % 2 == 1,
                first_step: step == 0,
            };
            let g = randn(51 + step, &[777], dt);
            p.sgd_update_(&g, Some(&b), h).unwrap();
            pg.sgd_update_(&on(&g, d), Some(&bg), h).unwrap();
            p.sgd_update_(&g, None, h).unwrap();
            pg.sgd_update_(&on(&g, d), None, h).unwrap();
        }
        close(&format!("sgd {dt}"), &pg, &p, tol(dt));
    }
}

#[test]
fn clip_grad_norm_matches_cpu_over_many_gradients() {
    // 70 gradients: f32 ones of sizes from 1 to 300000 (several 65536-element chunks; more than the 32
    // tensors of one launch), bf16 and f64 ones, an empty one, and a transposed (non-contiguous) one.
    let Some(d) = gpu() else { return };
    let mut params = vec![];
    for i in 0..70usize {
        let dt = [DType::F32, DType::F32, DType::BF16, DType::F64][i % 4];
        let n = [1usize, 300_000, 70_000, 0, 1000, 65_536][i % 6] + i;
        params.push(randn(60 + i as u64, &[n], dt));
    }
    params.push(randn(200, &[300, 700], DType::F32).transpose(0, 1).unwrap());
    params.push(randn(201, &[0], DType::F32));
    let cpu: Vec<Tensor> = params.iter().map(|g| Tensor::zeros(g.dims(), g.dtype(), Device::Cpu).unwrap()).collect();
    let dev: Vec<Tensor> = cpu.iter().map(|p| on(p, d).set_requires_grad(true)).collect();
    let cpu: Vec<Tensor> = cpu.into_iter().map(|p| p.set_requires_grad(true)).collect();
    for ((p, pg), g) in cpu.iter().zip(&dev).zip(&params) {
        p.set_grad(Some(g.clone())).unwrap();
        pg.set_grad(Some(on(g, d))).unwrap();
    }
    let norm = munja::optim::clip_grad_norm(&cpu, 1.0).unwrap();
    let norm_gpu = munja::optim::clip_grad_norm(&dev, 1.0).unwrap();
    assert!((norm_gpu - norm).abs() <= 1e-9 * norm, "global norm: GPU {norm_gpu}, CPU {norm}");
    for (p, pg) in cpu.iter().zip(&dev) {
        close("clipped gradient", &grad(pg), &grad(p), tol(p.dtype()));
    }
}

/// 40 parameters of one optimizer (two list launches of f32, one of f64), one spanning three chunks of
/// the list kernel, one a view into a shared buffer (updated alone), one whose gradient sits at an offset
/// in a bigger buffer and one whose first gradient comes at the second step, against the same steps of
/// the optimizer `make_opt` builds on the CPU.
fn many_parameters_match_cpu(what: &str, make_opt: &dyn Fn(Vec<(String, Tensor)>) -> Box<dyn munja::optim::Optimizer>) {
    let Some(d) = gpu() else { return };
    let mut start: Vec<Tensor> =
        (0..38).map(|i| randn(200 + i, &[(i as usize * 613) % 3000 + 1], DType::F32)).collect();
    start.push(randn(300, &[150_000], DType::F32));
    start.push(randn(301, &[77], DType::F64));
    let make = |dev: Device| {
        let mut ps: Vec<Tensor> = start.iter().map(|t| on(t, dev).set_requires_grad(true)).collect();
        // A view at an offset in a bigger buffer: not dense, so it runs alone.
        ps[5] = on(&start[5], dev).narrow(0, 0, start[5].dims()[0] / 2).unwrap().detach().set_requires_grad(true);
        let named = ps.iter().enumerate().map(|(i, p)| (format!("p{i}"), p.clone())).collect();
        (ps, make_opt(named))
    };
    let ((cpu, mut cpu_opt), (dev, mut dev_opt)) = (make(Device::Cpu), make(d));
    for step in 0..3u64 {
        for (i, (p, pg)) in cpu.iter().zip(&dev).enumerate() {
            if i == 11 && step == 0 {
                continue;
            }
            // Parameter 7's gradient is a run at an offset in a bigger buffer, as in a data-parallel bucket.
            let n = p.numel();
            let big = randn(400 + 50 * step + i as u64, &[n + 5], p.dtype());
            p.set_grad(Some(big.narrow(0, 5, n).unwrap().reshape(p.dims()).unwrap())).unwrap();
            let on_dev = on(&big, d);
            let g = if i == 7 {
                on_dev.narrow(0, 5, n).unwrap()
            } else {
                on_dev.narrow(0, 5, n).unwrap().contiguous().unwrap()
            };
            pg.set_grad(Some(g.reshape(p.dims()).unwrap())).unwrap();
        }
        cpu_opt.step().unwrap();
        dev_opt.step().unwrap();
        for (i, (p, pg)) in cpu.iter().zip(&dev).enumerate() {
            close(&format!("{what} step {step} parameter {i}"), pg, p, tol(p.dtype()));
        }
    }
}

#[test]
fn adamw_over_many_parameters_matches_cpu() {
    use munja::optim::{AdamConfig, AdamW};
    let cfg = AdamConfig { lr: 0.02, betas: (0.9, 0.98), eps: 1e-8, weight_decay: 0.05 };
    many_parameters_match_cpu("adamw", &|ps| Box::new(AdamW::new(ps, cfg).unwrap()));
}

#[test]
fn sgd_over_many_parameters_matches_cpu() {
    use munja::optim::{Sgd, SgdConfig};
    let momentum = SgdConfig { lr: 0.05, momentum: 0.9, dampening: 0.1, weight_decay: 0.01, nesterov: false };
    for (what, cfg) in [
        ("sgd momentum", momentum),
        ("sgd nesterov", SgdConfig { dampening: 0.0, nesterov: true, ..momentum }),
        ("sgd plain", SgdConfig { momentum: 0.0, dampening: 0.0, ..momentum }),
    ] {
        many_parameters_match_cpu(what, &|ps| Box::new(Sgd::new(ps, cfg).unwrap()));
    }
}

#[test]
fn mixed_precision_steps_match_cpu_and_round_the_masters_in_place() {
    // bf16 and f16 working weights on the GPU: after each step each is its master rounded (one cast kernel
    // straight into the weight), and the masters follow the CPU run of the same steps.
    let Some(d) = gpu() else { return };
    use munja::optim::{AdamConfig, AdamW, MixedPrecision, Optimizer};
    let cfg = AdamConfig { lr: 0.05, betas: (0.9, 0.99), eps: 1e-8, weight_decay: 0.1 };
    let start = [randn(80, &[300, 17], DType::BF16), randn(81, &[33], DType::F16), randn(82, &[8], DType::BF16)];
    let make = |dev: Device| {
        let ps: Vec<Tensor> = start.iter().map(|t| on(t, dev).set_requires_grad(true)).collect();
        let named = ps.iter().enumerate().map(|(i, p)| (format!("p{i}"), p.clone())).collect();
        (ps.clone(), MixedPrecision::new(named, |m| AdamW::new(m, cfg)).unwrap())
    };
    let ((cpu, mut cpu_opt), (gpu_ps, mut gpu_opt)) = (make(Device::Cpu), make(d));
    for step in 0..3u64 {
        for (i, (p, pg)) in cpu.iter().zip(&gpu_ps).enumerate() {
            let g = randn(90 + 3 * step + i as u64, p.dims(), p.dtype());
            p.set_grad(Some(g.clone())).unwrap();
            pg.set_grad(Some(on(&g, d))).unwrap();
        }
        cpu_opt.step().unwrap();
        gpu_opt.step().unwrap();
        for ((pg, m), (p, mc)) in
            gpu_ps.iter().zip(gpu_opt.master_parameters()).zip(cpu.iter().zip(cpu_opt.master_parameters()))
        {
            let rounded = m.to_dtype(pg.dtype()).unwrap();
            assert_eq!(
                pg.to_vec_f64().unwrap(),
                rounded.to_vec_f64().unwrap(),
                "step {step}: working != master rounded"
            );
            close(&format!("master step {step}"), &m, &mc, 1e-5);
            close(&format!("working step {step}"), pg, p, 1e-2);
        }
        gpu_opt.zero_grad();
        cpu_opt.zero_grad();
    }
}

/// The MNIST-MLP shape (784-512-512-10, batch 128), Adam through the fused update.
fn mlp_losses(device: Device, steps: usize, mut after_step: impl FnMut(usize)) -> Vec<f64> {
    let mut g = Generator::new(7);
    let init = |g: &mut Generator, shape: &[usize], fan_in: usize| {
        Tensor::randn_with(g, shape, DType::F32, Device::Cpu)
            .unwrap()
            .mul_scalar((1.0 / fan_in as f64).sqrt())
            .unwrap()
            .to_device(device)
            .unwrap()
            .detach()
            .set_requires_grad(true)
    };
    let params = vec![
        init(&mut g, &[784, 512], 784),
        Tensor::zeros(&[512], DType::F32, device).unwrap().set_requires_grad(true),
        init(&mut g, &[512, 512], 512),
        Tensor::zeros(&[512], DType::F32, device).unwrap().set_requires_grad(true),
        init(&mut g, &[512, 10], 512),
        Tensor::zeros(&[10], DType::F32, device).unwrap().set_requires_grad(true),
    ];
    let state: Vec<(Tensor, Tensor)> =
        params.iter().map(|p| (p.zeros_like().unwrap(), p.zeros_like().unwrap())).collect();
    let x = Tensor::rand_with(&mut g, &[128, 784], DType::F32, device).unwrap();
    let y: Vec<i64> = (0..128).map(|i| (i * 31 % 10) as i64).collect();
    let y = Tensor::from_vec(y, &[128], device).unwrap();
    let mut losses = vec![];
    let mut pending = vec![];
    for step in 1..=steps {
        for p in &params {
            p.zero_grad();
        }
        let h = x.matmul(&params[0]).unwrap().add(&params[1]).unwrap().relu().unwrap();
        let h = h.matmul(&params[2]).unwrap().add(&params[3]).unwrap().relu().unwrap();
        let logits = h.matmul(&params[4]).unwrap().add(&params[5]).unwrap();
        let loss = logits.cross_entropy(&y, -100).unwrap();
        loss.backward().unwrap();
        for (p, (m, v)) in params.iter().zip(&state) {
            let gr = p.grad().unwrap();
            p.adam_update_(&gr, m, v, AdamParams { decoupled: true, ..adam(step as u64, true) }).unwrap();
        }
        // Read losses back only at the end (reading syncs; the steady loop must not need it).
        pending.push(loss.detach());
        after_step(step);
    }
    for l in pending {
        losses.push(l.item().unwrap());
    }
    losses
}

#[test]
fn mlp_training_loop_learns_like_the_cpu() {
    let Some(d) = gpu() else { return };
    let losses = mlp_losses(d, 100, |_| {});
    assert!(losses[99] < losses[0] * 0.5, "loss did not fall: {} -> {}", losses[0], losses[99]);
    // The same loop on the CPU gives the same losses for the first steps (Adam's normalisation amplifies
    // last-bit differences of the gradients, so the agreement loosens a little per step).
    let cpu = mlp_losses(Device::Cpu, 5, |_| {});
    for (i, (a, b)) in losses.iter().zip(&cpu).enumerate() {
        assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "step {}: gpu {a} cpu {b}", i + 1);
    }
}

#[test]
fn mlp_training_loop_allocates_nothing_after_step_one() {
    let Some(d) = gpu() else { return };
    let mut after_first = 0;
    let mut counts = vec![];
    mlp_losses_dropping(d, 100, &mut |step| {
        if step == 1 {
            after_first = cuda::driver_allocations();
        }
        counts.push(cuda::driver_allocations());
    });
    assert_eq!(cuda::driver_allocations(), after_first, "driver allocations after each step: {counts:?}");
}

/// The same loop keeping nothing alive between steps; reads the loss only at the last step.
fn mlp_losses_dropping(device: Device, steps: usize, cb: &mut dyn FnMut(usize)) -> Vec<f64> {
    let mut g = Generator::new(7);
    let dims = [(784usize, 512usize), (512, 512), (512, 10)];
    let mut params = vec![];
    for (i, o) in dims {
        params.push(
            Tensor::randn_with(&mut g, &[i, o], DType::F32, device)
                .unwrap()
                .mul_scalar((1.0 / i as f64).sqrt())
                .unwrap()
                .detach()
                .set_requires_grad(true),
        );
        params.push(Tensor::zeros(&[o], DType::F32, device).unwrap().set_requires_grad(true));
    }
    let state: Vec<(Tensor, Tensor)> =
        params.iter().map(|p| (p.zeros_like().unwrap(), p.zeros_like().unwrap())).collect();
    let x = Tensor::rand_with(&mut g, &[128, 784], DType::F32, device).unwrap();
    let y = Tensor::from_vec((0..128).map(|i| (i * 31 % 10) as i64).collect(), &[128], device).unwrap();
    let mut last = 0.0;
    for step in 1..=steps {
        for p in &params {
            p.zero_grad();
        }
        let mut h = x.clone();
        for l in 0..3 {
            h = h.matmul(&params[2 * l]).unwrap().add(&params[2 * l + 1]).unwrap();
            if l < 2 {
                h = h.relu().unwrap();
            }
        }
        let loss = h.cross_entropy(&y, -100).unwrap();
        loss.backward().unwrap();
        for (p, (m, v)) in params.iter().zip(&state) {
            p.adam_update_(&p.grad().unwrap(), m, v, adam(step as u64, true)).unwrap();
        }
        if step == steps {
            last = loss.item().unwrap();
        }
        cb(step);
    }
    vec![last]
}

#[test]
fn out_of_memory_is_an_err() {
    let Some(d) = gpu() else { return };
    if dry_run() {
        return;
    }
    let e = Tensor::zeros(&[1 << 40], DType::F32, d).unwrap_err();
    assert!(matches!(e, Error::OutOfMemory { requested, .. } if requested == 4 << 40), "{e}");
    // The device still works afterwards.
    assert_eq!(Tensor::ones(&[3], DType::F32, d).unwrap().sum_all().unwrap().item().unwrap(), 3.0);
}

#[test]
fn mixing_devices_is_an_err_not_a_panic() {
    let Some(d) = gpu() else { return };
    if dry_run() {
        return;
    }
    let a = Tensor::ones(&[4], DType::F32, d).unwrap();
    let b = Tensor::ones(&[4], DType::F32, Device::Cpu).unwrap();
    assert!(matches!(a.add(&b).unwrap_err(), Error::Device { .. }));
    assert!(matches!(b.matmul(&a.reshape(&[4usize, 1][..]).unwrap()).unwrap_err(), Error::Device { .. }));
    let t = Tensor::from_vec(vec![1i64], &[1], Device::Cpu).unwrap();
    assert!(a.reshape(&[1usize, 4][..]).unwrap().cross_entropy(&t, -100).is_err());
}

/// A two-layer perceptron on `d`, for the data-parallel tests.
fn mlp(d: Device, seed: u64) -> Result<munja::nn::Sequential> {
    let mut g = Generator::new(seed);
    Ok(munja::nn::Sequential::new()
        .push(munja::nn::Linear::new(24, 64, true, DType::F32, d, &mut g)?)
        .push(munja::nn::Tanh)
        .push(munja::nn::Linear::new(64, 5, true, DType::F32, d, &mut g)?))
}

#[test]
fn nccl_collectives_ddp_and_zero1_at_world_size_one() -> Result<()> {
    use munja::dist::{Ddp, DdpConfig, ProcessGroup, ReduceOp, Zero1};
    use munja::nn::Module;
    use munja::optim::{AdamConfig, AdamW, Optimizer};
    let Some(d) = gpu() else { return Ok(()) };
    let pg = ProcessGroup::single(d)?;
    if d != Device::Cpu && std::env::var("MUNJA_REQUIRE_GPU").is_ok_and(|v| v == "1") {
        assert!(pg.uses_nccl(), "libnccl did not load on this GPU machine");
    }
    // One rank: every collective must hand back its input (through ncclAllReduce & co on a GPU).
    for dtype in [DType::F32, DType::BF16] {
        let x = randn(1, &[37, 5], dtype);
        let t = on(&x, d);
        pg.all_reduce(&t, ReduceOp::Sum)?;
        pg.all_reduce(&t, ReduceOp::Avg)?;
        pg.broadcast(&t, 0)?;
        close(&format!("all_reduce/broadcast {dtype}"), &t, &x, 0.0);
        close(&format!("all_gather {dtype}"), &pg.all_gather(&t)?.reshape(&[37, 5][..])?, &x, 0.0);
        close(&format!("reduce_scatter {dtype}"), &pg.reduce_scatter(&t, ReduceOp::Avg)?, &x, 0.0);
    }
    // Ddp with several buckets gives the gradients of plain backward.
    let (x, y) = (on(&randn(2, &[16, 24], DType::F32), d), on(&randn(3, &[16, 5], DType::F32), d));
    let plain = mlp(d, 9)?;
    let ddp = Ddp::with_config(mlp(d, 9)?, &pg, DdpConfig { bucket_bytes: 1024, sync_gradients: true })?;
    assert!(ddp.bucket_bytes().len() >= 2);
    plain.forward(&x)?.mse_loss(&y)?.backward()?;
    ddp.forward(&x)?.mse_loss(&y)?.backward()?;
    for ((n, a), (_, b)) in plain.named_parameters().iter().zip(ddp.named_parameters()) {
        close(&format!("Ddp grad {n}"), &grad(&b), &grad(a), 0.0);
    }
    // ZeRO-1 around AdamW takes the steps AdamW takes.
    let (reference, sharded) = (mlp(d, 4)?, mlp(d, 4)?);
    let config = AdamConfig { lr: 1e-2, ..AdamConfig::adamw() };
    let mut a = AdamW::new(reference.named_parameters(), config)?;
    let mut z = Zero1::new(&pg, sharded.named_parameters(), |p| AdamW::new(p, config))?;
    for _ in 0..3 {
        for (m, o) in [(&reference, &mut a as &mut dyn Optimizer), (&sharded, &mut z as &mut dyn Optimizer)] {
            o.zero_grad();
            m.forward(&x)?.mse_loss(&y)?.backward()?;
            o.step()?;
        }
    }
    for ((n, p), (_, q)) in reference.named_parameters().iter().zip(sharded.named_parameters()) {
        close(&format!("Zero1 {n}"), &q, p, 1e-6);
    }
    Ok(())
}

#[test]
fn profiler_times_each_kernel_and_matmul_by_name() {
    let Some(d) = gpu() else { return };
    let a = on(&randn(61, &[256, 512], DType::F32), d);
    let b = on(&randn(62, &[512, 128], DType::F32), d);
    cuda::profile_start();
    let mut c = a.matmul(&b).unwrap();
    for _ in 0..3 {
        c = c.add(&c).unwrap();
    }
    let profile = cuda::profile_stop().unwrap();
    // Stopped: later work is not recorded.
    a.matmul(&b).unwrap().to_vec_f64().unwrap();
    if d == Device::Cpu {
        assert!(profile.kernels.is_empty(), "the CPU records no kernels: {profile:?}");
        return;
    }
    let calls = |name: &str| profile.kernels.iter().find(|k| k.name == name).map_or(0, |k| k.calls);
    assert_eq!(calls("cublasLt matmul f32"), 1, "{profile:?}");
    assert_eq!(calls("binary_f32"), 3, "{profile:?}");
    assert_eq!(profile.calls(), 4, "{profile:?}");
    assert!(profile.kernels.iter().all(|k| k.total_ms > 0.0 && k.total_ms < 1e3), "{profile:?}");
    let table = profile.table(1, 1);
    assert!(table.contains("(1 other kernels)") && table.contains("total GPU time"), "{table}");
}

#[test]
fn profile_table_gives_per_step_figures_and_sums_the_rest() {
    let k = |name, calls, total_ms| cuda::KernelTime { name, calls, total_ms };
    let p = cuda::Profile { kernels: vec![k("big", 20, 30.0), k("mid", 10, 8.0), k("small", 4, 2.0)] };
    assert_eq!((p.total_ms(), p.calls()), (40.0, 34));
    // Per step over 10 steps: big is 3 ms and 2 calls a step, 1500 µs per call, 75% of the time.
    let t = p.table(1, 10);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 4, "{t}");
    let cells = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(cells(lines[1]), ["3.000", "75.0", "2.0", "1500.0", "big"], "{t}");
    assert_eq!(cells(lines[2]), ["1.000", "25.0", "1.4", "(2", "other", "kernels)"], "{t}");
    assert_eq!(cells(lines[3]), ["4.000", "100.0", "3.4", "total", "GPU", "time"], "{t}");
}
