//! GPU benchmark: munja's kernels against the hardware's ceilings measured in the same run.
//!
//! Memory-bound ops (add, softmax, layer_norm fwd/bwd, cross-entropy fwd/bwd, AdamW, the embedding
//! backward) are reported in GB/s of the fewest bytes each op must move, against a device-to-device copy;
//! matmuls (bf16 4096³ and 8192³, f32 4096³) in TFLOP/s against cuBLAS called directly on the same shapes and data. Every timing is the
//! median of many CUDA-event-timed runs after a warm-up, on random data, and every result is checked
//! against a float64 CPU reference (on sampled rows / entries for the big ones).
//!
//! Prints one `RESULT|op|shape|time_us|value|unit|pct_of_ceiling|check` line per measurement, which
//! scripts/gpu-suite.sh turns into its summary table. Without a GPU it says so and exits 0.
//!
//!     cargo run --release --example gpu_bench

use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{sys::CUevent_flags::CU_EVENT_DEFAULT, CudaContext};
use munja::{cuda, AdamParams, DType, Device, Generator, Result, Tensor};

const WARMUP: usize = 5;
const RUNS: usize = 30;

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median milliseconds of `f` on device `d` over RUNS event-timed runs after WARMUP.
fn time(d: Device, mut f: impl FnMut() -> Result<()>) -> Result<f32> {
    for _ in 0..WARMUP {
        f()?;
    }
    let mut ts = vec![];
    for _ in 0..RUNS {
        ts.push(cuda::time_ms(d, &mut f)?);
    }
    Ok(median(ts))
}

fn report(op: &str, shape: &str, ms: f32, value: f64, unit: &str, ceiling: f64, check: &str) {
    println!("RESULT|{op}|{shape}|{:.1}|{value:.1}|{unit}|{:.0}|{check}", ms * 1000.0, 100.0 * value / ceiling);
}

fn randn(seed: u64, shape: &[usize], dt: DType, d: Device) -> Result<Tensor> {
    Tensor::randn_with(&mut Generator::new(seed), shape, dt, d)
}

/// max |a − b| / max |b| over the elements (f64).
fn rel_max(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (x, y) = (a.to_vec_f64()?, b.to_vec_f64()?);
    let num = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
    let den = y.iter().map(|q| q.abs()).fold(0.0, f64::max);
    Ok(if den == 0.0 { num } else { num / den })
}

/// "ok" or "FAIL(err)" for a check against a tolerance.
fn verdict(err: f64, tol: f64) -> String {
    if err <= tol {
        format!("ok({err:.1e})")
    } else {
        format!("FAIL({err:.1e})")
    }
}

/// The first `rows` rows of a GPU tensor, on the CPU in f64.
fn head(t: &Tensor, rows: usize) -> Result<Tensor> {
    t.narrow(0, 0, rows)?.to_device(Device::Cpu)?.to_dtype(DType::F64)
}

fn main() -> Result<()> {
    if !cuda::is_available() {
        let why = Tensor::zeros(&[1], DType::F32, Device::Cuda(0)).err().map(|e| e.to_string()).unwrap_or_default();
        println!("no GPU: {why}");
        return Ok(());
    }
    cuda::set_tf32(false);
    let d = Device::Cuda(0);
    println!("kernels: {}", cuda::kernel_image(d)?);
    let gb = |bytes: f64, ms: f32| bytes / (ms as f64 * 1e-3) / 1e9;

    // ---- ceiling: device-to-device copy of 1 GiB (bytes read + written) ----
    let ctx = CudaContext::new(0).expect("context");
    let stream = ctx.new_stream().expect("stream");
    let n_copy = 1usize << 28;
    let src = stream
        .clone_htod(&Tensor::rand(&[1 << 20], DType::F32, Device::Cpu)?.to_vec::<f32>()?.repeat(256))
        .expect("htod");
    let mut dst = stream.alloc_zeros::<f32>(n_copy).expect("alloc");
    let time_raw = |f: &mut dyn FnMut()| -> f32 {
        for _ in 0..WARMUP {
            f();
        }
        let mut ts = vec![];
        for _ in 0..RUNS {
            let a = stream.record_event(Some(CU_EVENT_DEFAULT)).expect("event");
            f();
            let b = stream.record_event(Some(CU_EVENT_DEFAULT)).expect("event");
            b.synchronize().expect("sync");
            ts.push(cuda::event_elapsed_ms(&a, &b).expect("elapsed"));
        }
        median(ts)
    };
    let ms = time_raw(&mut || stream.memcpy_dtod(&src, &mut dst).expect("copy"));
    let copy_gbs = gb(2.0 * 4.0 * n_copy as f64, ms);
    report("d2d copy (ceiling)", "1 GiB", ms, copy_gbs, "GB/s", copy_gbs, "-");
    drop((src, dst));

    // ---- elementwise add ----
    let n = 1usize << 26;
    let (a, b) = (randn(1, &[n], DType::F32, d)?, randn(2, &[n], DType::F32, d)?);
    let ms = time(d, || a.add(&b).map(|_| ()))?;
    let c = a.add(&b)?;
    let r = head(&a.reshape(&[n / 1024, 1024][..])?, 64)?.add(&head(&b.reshape(&[n / 1024, 1024][..])?, 64)?)?;
    let chk = verdict(rel_max(&head(&c.reshape(&[n / 1024, 1024][..])?, 64)?, &r)?, 1e-6);
    report("add f32", "2^26", ms, gb(12.0 * n as f64, ms), "GB/s", copy_gbs, &chk);
    let (ab, bb) = (a.to_dtype(DType::BF16)?, b.to_dtype(DType::BF16)?);
    let ms = time(d, || ab.add(&bb).map(|_| ()))?;
    report("add bf16", "2^26", ms, gb(6.0 * n as f64, ms), "GB/s", copy_gbs, "-");
    drop((a, b, c, ab, bb));

    // ---- broadcast bias add [16384, 4096] + [4096], and a transposing copy (strided paths) ----
    let (r, c) = (16_384usize, 4096usize);
    let x = randn(13, &[r, c], DType::F32, d)?;
    let bias = randn(14, &[c], DType::F32, d)?;
    let ms = time(d, || x.add(&bias).map(|_| ()))?;
    let y = x.add(&bias)?;
    let yr = head(&x, 16)?.add(&bias.to_device(Device::Cpu)?.to_dtype(DType::F64)?)?;
    let chk = verdict(rel_max(&head(&y, 16)?, &yr)?, 1e-6);
    report(
        "add bias f32 (broadcast)",
        &format!("{r}x{c}+{c}"),
        ms,
        gb(8.0 * (r * c) as f64, ms),
        "GB/s",
        copy_gbs,
        &chk,
    );
    let ms = time(d, || x.t()?.contiguous().map(|_| ()))?;
    let xt = x.t()?.contiguous()?;
    let chk = verdict(
        rel_max(
            &head(&xt, 16)?,
            &x.narrow(1, 0, 16)?.to_device(Device::Cpu)?.to_dtype(DType::F64)?.t()?.contiguous()?,
        )?,
        0.0,
    );
    report("transpose copy f32", &format!("{r}x{c}"), ms, gb(8.0 * (r * c) as f64, ms), "GB/s", copy_gbs, &chk);
    // Attention's head split: [b, t, h, d] -> [b, h, t, d] with d = 64 contiguous (16-byte pack copies).
    let (hb, ht, hh, hd) = (64usize, 1024usize, 16usize, 64usize);
    let hx = x.reshape(&[hb, ht, hh, hd][..])?;
    let ms = time(d, || hx.transpose(1, 2)?.contiguous().map(|_| ()))?;
    let hy = hx.transpose(1, 2)?.contiguous()?;
    let want = hx.narrow(0, 0, 1)?.to_device(Device::Cpu)?.to_dtype(DType::F64)?.transpose(1, 2)?.contiguous()?;
    let chk = verdict(rel_max(&hy.narrow(0, 0, 1)?.to_device(Device::Cpu)?.to_dtype(DType::F64)?, &want)?, 0.0);
    let shape = format!("{hb}x{ht}x{hh}x{hd}");
    report("head split copy f32", &shape, ms, gb(8.0 * (r * c) as f64, ms), "GB/s", copy_gbs, &chk);
    drop((x, bias, y, xt, hx, hy));

    // ---- softmax, layer norm: [16384, 4096] ----
    let (rows, cols) = (16_384usize, 4096usize);
    let sh = format!("{rows}x{cols}");
    for dt in [DType::F32, DType::BF16] {
        let es = dt.size_in_bytes() as f64;
        let nb = (rows * cols) as f64 * es;
        let tol = if dt == DType::F32 { 1e-5 } else { 1e-2 };
        let x = randn(3, &[rows, cols], dt, d)?;
        let ms = time(d, || x.softmax(-1).map(|_| ()))?;
        let chk = verdict(rel_max(&head(&x.softmax(-1)?, 32)?, &head(&x, 32)?.softmax(-1)?)?, tol);
        report(&format!("softmax {dt}"), &sh, ms, gb(2.0 * nb, ms), "GB/s", copy_gbs, &chk);

        let w = randn(4, &[cols], dt, d)?;
        let bias = randn(5, &[cols], dt, d)?;
        let ms = time(d, || x.layer_norm(&[cols], Some(&w), Some(&bias), 1e-5).map(|_| ()))?;
        let y = x.layer_norm(&[cols], Some(&w), Some(&bias), 1e-5)?;
        let cpu = |t: &Tensor| t.to_device(Device::Cpu).and_then(|t| t.to_dtype(DType::F64));
        let yr = head(&x, 32)?.layer_norm(&[cols], Some(&cpu(&w)?), Some(&cpu(&bias)?), 1e-5)?;
        let chk = verdict(rel_max(&head(&y, 32)?, &yr)?, tol * 10.0);
        report(&format!("layer_norm fwd {dt}"), &sh, ms, gb(2.0 * nb, ms), "GB/s", copy_gbs, &chk);

        // Backward: dx, dw, db from x, g (and the saved stats).
        let xg = x.detach().set_requires_grad(true);
        let wg = w.detach().set_requires_grad(true);
        let bg = bias.detach().set_requires_grad(true);
        let g = randn(6, &[rows, cols], dt, d)?;
        let ms = time(d, || {
            // Fresh gradients each run (accumulating would add an extra pass).
            for t in [&xg, &wg, &bg] {
                t.zero_grad();
            }
            let y = xg.layer_norm(&[cols], Some(&wg), Some(&bg), 1e-5)?;
            y.backward_with(&g)
        })?;
        let ms_fwd = time(d, || xg.layer_norm(&[cols], Some(&wg), Some(&bg), 1e-5).map(|_| ()))?;
        let bwd = (ms - ms_fwd).max(1e-3);
        report(&format!("layer_norm bwd {dt}"), &sh, bwd, gb(3.0 * nb, bwd), "GB/s", copy_gbs, "-");
    }

    // ---- attention's softmax at the GPT's shape: [64, 6, 256, 256] bf16 scores (50 MB) ----
    // Short rows, one 256-wide row per block; under 64 MiB, so outside the bar's sizes, reported for the
    // GPT step. Causal forward: reads the visible half of each matrix, writes all of it.
    let (ab, ah, at) = (64usize, 6usize, 256usize);
    let scores = randn(30, &[ab, ah, at, at], DType::BF16, d)?;
    let nb = (ab * ah * at * at) as f64 * 2.0;
    let visible = nb * (at + 1) as f64 / (2 * at) as f64;
    let shape = format!("{ab}x{ah}x{at}x{at}");
    let ms = time(d, || scores.causal_softmax(0).map(|_| ()))?;
    let p = scores.causal_softmax(0)?;
    let first =
        |t: &Tensor| t.narrow(0, 0, 1).and_then(|t| t.to_device(Device::Cpu)).and_then(|t| t.to_dtype(DType::F64));
    let chk = verdict(rel_max(&first(&p)?, &first(&scores)?.causal_softmax(0)?)?, 1e-2);
    report("causal softmax fwd bf16", &shape, ms, gb(visible + nb, ms), "GB/s", copy_gbs, &chk);
    let sg = scores.detach().set_requires_grad(true);
    let g = randn(31, &[ab, ah, at, at], DType::BF16, d)?;
    let ms = time(d, || {
        sg.zero_grad();
        sg.causal_softmax(0)?.backward_with(&g)
    })?;
    let ms_fwd = time(d, || sg.causal_softmax(0).map(|_| ()))?;
    let bwd = (ms - ms_fwd).max(1e-3);
    report("softmax bwd bf16", &shape, bwd, gb(3.0 * nb, bwd), "GB/s", copy_gbs, "-");
    drop((scores, p, sg, g));

    // ---- cross-entropy from logits: [4096, 50257] ----
    let (nr, nc) = (4096usize, 50_257usize);
    for dt in [DType::F32, DType::BF16] {
        let es = dt.size_in_bytes() as f64;
        let x = randn(7, &[nr, nc], dt, d)?;
        let t: Vec<i64> = (0..nr).map(|i| ((i * 7919) % nc) as i64).collect();
        let t = Tensor::from_vec(t, &[nr], d)?;
        let ms = time(d, || x.cross_entropy_per_row(&t, -100).map(|_| ()))?;
        let l = x.cross_entropy_per_row(&t, -100)?;
        let lr = head(&x, 16)?.cross_entropy_per_row(&t.narrow(0, 0, 16)?.to_device(Device::Cpu)?, -100)?;
        let chk = verdict(
            rel_max(&l.narrow(0, 0, 16)?.to_device(Device::Cpu)?.to_dtype(DType::F64)?, &lr)?,
            if dt == DType::F32 { 1e-5 } else { 1e-2 },
        );
        report(
            &format!("cross_entropy fwd {dt}"),
            &format!("{nr}x{nc}"),
            ms,
            gb((nr * nc) as f64 * es, ms),
            "GB/s",
            copy_gbs,
            &chk,
        );
        let xg = x.detach().set_requires_grad(true);
        let ms_all = time(d, || {
            xg.zero_grad();
            xg.cross_entropy(&t, -100)?.backward()
        })?;
        let ms_f = time(d, || xg.cross_entropy(&t, -100).map(|_| ()))?;
        let bwd = (ms_all - ms_f).max(1e-3);
        report(
            &format!("cross_entropy bwd {dt}"),
            &format!("{nr}x{nc}"),
            bwd,
            gb(2.0 * (nr * nc) as f64 * es, bwd),
            "GB/s",
            copy_gbs,
            "-",
        );
    }

    // ---- AdamW, 2^26 f32 parameters: reads p, g, m, v; writes p, m, v ----
    let n = 1usize << 26;
    let p = randn(8, &[n], DType::F32, d)?;
    let g = randn(9, &[n], DType::F32, d)?;
    let (m, v) = (Tensor::zeros(&[n], DType::F32, d)?, Tensor::zeros(&[n], DType::F32, d)?);
    let h = AdamParams { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, decoupled: true, step: 1 };
    // Correctness first (one step from a known state), then timing.
    let p0 = head(&p.reshape(&[n / 1024, 1024][..])?, 16)?;
    let g0 = head(&g.reshape(&[n / 1024, 1024][..])?, 16)?;
    p.adam_update_(&g, &m, &v, h)?;
    let (pc, mc, vc) = (p0.contiguous()?.affine(1.0, 0.0)?, p0.zeros_like()?, p0.zeros_like()?);
    pc.adam_update_(&g0.affine(1.0, 0.0)?, &mc, &vc, h)?;
    let chk = verdict(rel_max(&head(&p.reshape(&[n / 1024, 1024][..])?, 16)?, &pc)?, 1e-6);
    let ms = time(d, || p.adam_update_(&g, &m, &v, AdamParams { step: 2, ..h }))?;
    report("adamw f32", "2^26", ms, gb(28.0 * n as f64, ms), "GB/s", copy_gbs, &chk);
    drop((p, g, m, v));

    // ---- embedding backward (the table's gradient: a batch's rows added into zeros), token ids as text
    // has them: one id takes a large share (the space of a character vocabulary ~15% of the tokens).
    // Autograd's backward minus the forward, as layer_norm's. Reads the rows' gradients and writes the
    // table's once: 25 MB for the character vocabulary, 205 MB for GPT-2's. Beside that streaming, a sort
    // of the ids (kernels/index.cu), whose few small launches weigh most on the small table. ----
    for (vocab, width, hot) in [(65usize, 384usize, 0.15f64), (50_257, 768, 0.04)] {
        let n = 16_384usize;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let ids: Vec<i64> = (0..n)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                if u < hot {
                    0
                } else {
                    ((u - hot) / (1.0 - hot) * vocab as f64) as i64 % vocab as i64
                }
            })
            .collect();
        let ids = Tensor::from_vec(ids, &[n], Device::Cpu)?;
        let g = randn(20, &[n, width], DType::F32, d)?;
        let table = randn(21, &[vocab, width], DType::F32, d)?.set_requires_grad(true);
        let idg = ids.to_device(d)?;
        let step = || {
            table.zero_grad();
            table.embedding(&idg)?.backward_with(&g)
        };
        step()?;
        let rows = vocab.min(64);
        let got = head(&table.grad().expect("the table's gradient"), rows)?;
        let want = Tensor::zeros(&[vocab, width], DType::F64, Device::Cpu)?.index_add(
            0,
            &ids,
            &g.to_device(Device::Cpu)?.to_dtype(DType::F64)?,
        )?;
        let chk = verdict(rel_max(&got, &want.narrow(0, 0, rows)?)?, 1e-6);
        let ms = time(d, step)?;
        let ms_fwd = time(d, || table.embedding(&idg).map(drop))?;
        let bwd = (ms - ms_fwd).max(1e-3);
        let bytes = 4.0 * (n * width + vocab * width) as f64;
        let shape = format!("{n} ids into {vocab}x{width}, {:.0}% one id", hot * 100.0);
        report("embedding bwd f32", &shape, bwd, gb(bytes, bwd), "GB/s", copy_gbs, &chk);
    }

    // ---- matmul: munja (cuBLASLt) vs cuBLAS directly, same shapes and data ----
    let blas = CudaBlas::new(stream.clone()).expect("cublas");
    for (dt, s) in [(DType::BF16, 4096usize), (DType::BF16, 8192), (DType::F32, 4096), (DType::F32, 8192)] {
        let a = randn(10, &[s, s], dt, d)?.mul_scalar(0.1)?;
        let b = randn(11, &[s, s], dt, d)?.mul_scalar(0.1)?;
        let flops = 2.0 * (s as f64).powi(3);
        let ms = time(d, || a.matmul(&b).map(|_| ()))?;
        let c = a.matmul(&b)?;
        // Sampled entries against f64 dot products on the CPU.
        let (ah, bh, ch) = (a.to_vec_f64()?, b.to_vec_f64()?, c.to_vec_f64()?);
        let mut g = Generator::new(12);
        let mut err: f64 = 0.0;
        let mut scale: f64 = 0.0;
        for _ in 0..64 {
            let (i, j) = (g.below(s as u64) as usize, g.below(s as u64) as usize);
            let r: f64 = (0..s).map(|k| ah[i * s + k] * bh[k * s + j]).sum();
            err = err.max((ch[i * s + j] - r).abs());
            scale = scale.max(r.abs());
        }
        let chk = verdict(err / scale.max(1e-30), if dt == DType::F32 { 1e-5 } else { 2e-2 });
        // cuBLAS on the same data: row-major C = A·B as column-major Cᵀ = Bᵀ·Aᵀ.
        let cublas_ms = match dt {
            DType::BF16 => {
                let (ad, bd) = (
                    stream.clone_htod(&a.to_vec::<half::bf16>()?).unwrap(),
                    stream.clone_htod(&b.to_vec::<half::bf16>()?).unwrap(),
                );
                let mut cd = stream.alloc_zeros::<half::bf16>(s * s).unwrap();
                let cfg = GemmConfig {
                    transa: cublasOperation_t::CUBLAS_OP_N,
                    transb: cublasOperation_t::CUBLAS_OP_N,
                    m: s as i32,
                    n: s as i32,
                    k: s as i32,
                    alpha: half::bf16::ONE,
                    lda: s as i32,
                    ldb: s as i32,
                    beta: half::bf16::ZERO,
                    ldc: s as i32,
                };
                // SAFETY: buffers hold s×s elements each.
                time_raw(&mut || unsafe { blas.gemm(cfg, &bd, &ad, &mut cd) }.expect("gemm"))
            }
            _ => {
                let (ad, bd) =
                    (stream.clone_htod(&a.to_vec::<f32>()?).unwrap(), stream.clone_htod(&b.to_vec::<f32>()?).unwrap());
                let mut cd = stream.alloc_zeros::<f32>(s * s).unwrap();
                let cfg = GemmConfig {
                    transa: cublasOperation_t::CUBLAS_OP_N,
                    transb: cublasOperation_t::CUBLAS_OP_N,
                    m: s as i32,
                    n: s as i32,
                    k: s as i32,
                    alpha: 1.0f32,
                    lda: s as i32,
                    ldb: s as i32,
                    beta: 0.0f32,
                    ldc: s as i32,
                };
                // SAFETY: as above.
                time_raw(&mut || unsafe { blas.gemm(cfg, &bd, &ad, &mut cd) }.expect("gemm"))
            }
        };
        let tf = flops / (ms as f64 * 1e-3) / 1e12;
        let tf_ref = flops / (cublas_ms as f64 * 1e-3) / 1e12;
        report(&format!("cuBLAS matmul {dt} (ceiling)"), &format!("{s}^3"), cublas_ms, tf_ref, "TFLOP/s", tf_ref, "-");
        report(&format!("matmul {dt}"), &format!("{s}^3"), ms, tf, "TFLOP/s", tf_ref, &chk);
    }
    println!("driver allocations: {}", cuda::driver_allocations());
    Ok(())
}
