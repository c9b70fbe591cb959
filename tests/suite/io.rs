//! Files: safetensors roundtrips for every dtype, reading PyTorch-written files, atomic replacement, clear
//! errors for missing, truncated and corrupt files, module weights and training checkpoints.

use munja::io::{load_checkpoint, load_module, load_safetensors, save_checkpoint, save_module, save_safetensors};
use munja::nn::{Linear, Module, Relu, Sequential};
use munja::optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
use munja::{bf16, f16, DType, Device, Error, Generator, Result, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const CPU: Device = Device::Cpu;

/// A fresh empty directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("munja-io-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch dir");
        Scratch(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// Names in the directory, sorted, so leftover temporary files show up.
    fn listing(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .expect("listing scratch dir")
            .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn get<'a>(ts: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &ts.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no tensor {name}")).1
}

fn mlp(seed: u64) -> Result<Sequential> {
    let mut g = Generator::new(seed);
    Ok(Sequential::new().push(Linear::new(3, 5, true, DType::F32, CPU, &mut g)?).push(Relu).push(Linear::new(
        5,
        2,
        true,
        DType::F32,
        CPU,
        &mut g,
    )?))
}

fn same_params(a: &dyn Module, b: &dyn Module) -> Result<bool> {
    let (pa, pb) = (a.named_parameters(), b.named_parameters());
    for ((na, ta), (nb, tb)) in pa.iter().zip(&pb) {
        if na != nb || ta.to_vec::<f32>()? != tb.to_vec::<f32>()? {
            return Ok(false);
        }
    }
    Ok(pa.len() == pb.len())
}

#[test]
fn every_dtype_roundtrips_exactly() -> Result<()> {
    let dir = Scratch::new("roundtrip");
    let path = dir.path("all.safetensors");
    let wide = Tensor::from_vec((0..6).map(|i| i as f32 * 1.25 - 3.0).collect(), &[2, 3], CPU)?;
    let tensors = vec![
        ("f32".to_string(), wide.clone()),
        ("f64".into(), Tensor::from_vec(vec![1.0 / 3.0, -1e300, f64::MIN_POSITIVE], &[3], CPU)?),
        ("bf16".into(), Tensor::from_vec([1.5f32, -0.007, 300.0, 0.1].map(bf16::from_f32).to_vec(), &[2, 2], CPU)?),
        ("f16".into(), Tensor::from_vec([0.5f32, -65504.0, 1e-4].map(f16::from_f32).to_vec(), &[3, 1], CPU)?),
        ("i64".into(), Tensor::from_vec(vec![i64::MIN, -1, 0, (1 << 53) + 1, i64::MAX], &[5], CPU)?),
        ("u8".into(), Tensor::from_vec(vec![0u8, 1, 255, 7], &[2, 1, 2], CPU)?),
        ("scalar".into(), Tensor::scalar(-2.5, DType::F32, CPU)?),
        ("empty".into(), Tensor::zeros(&[0, 4], DType::F32, CPU)?),
        // A transposed view is saved as its logical (row-major) values.
        ("transposed".into(), wide.t()?),
    ];
    let m = meta(&[("step", "1200"), ("note", "ünïcode ok")]);
    save_safetensors(&path, &tensors, &m)?;
    let (back, m2) = load_safetensors(&path)?;
    assert_eq!(m2, m);
    let mut want_names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    want_names.sort();
    assert_eq!(back.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), want_names, "sorted by name");
    for (name, t) in &tensors {
        let b = get(&back, name);
        assert_eq!((b.dims(), b.dtype(), b.device()), (t.dims(), t.dtype(), CPU), "{name}");
        let same = match t.dtype() {
            DType::F32 => b.to_vec::<f32>()? == t.to_vec::<f32>()?,
            DType::F64 => b.to_vec::<f64>()? == t.to_vec::<f64>()?,
            DType::BF16 => b.to_vec::<bf16>()? == t.to_vec::<bf16>()?,
            DType::F16 => b.to_vec::<f16>()? == t.to_vec::<f16>()?,
            DType::I64 => b.to_vec::<i64>()? == t.to_vec::<i64>()?,
            DType::U8 => b.to_vec::<u8>()? == t.to_vec::<u8>()?,
        };
        assert!(same, "{name} changed in the roundtrip");
    }
    assert_eq!(get(&back, "transposed").to_vec::<f32>()?, [-3.0, 0.75, -1.75, 2.0, -0.5, 3.25]);
    // Loaded tensors are independent leaves.
    assert!(get(&back, "f32").is_leaf() && !get(&back, "f32").requires_grad());
    // Empty metadata stays empty.
    save_safetensors(&path, &tensors[..1], &BTreeMap::new())?;
    assert!(load_safetensors(&path)?.1.is_empty());
    Ok(())
}

#[test]
fn files_written_by_pytorch_load_with_exact_values() -> Result<()> {
    // tests/fixtures/io_torch.safetensors comes from tests/fixtures/make_io_fixture.py
    // (safetensors.torch.save_file, torch 2.11).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/io_torch.safetensors");
    let (ts, m) = load_safetensors(&path)?;
    assert_eq!(m, meta(&[("writer", "torch"), ("format", "pt")]));
    let names: Vec<&str> = ts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["bf16_vector", "cube", "f32_matrix", "i64_vector", "scalar"]);

    let f = get(&ts, "f32_matrix");
    assert_eq!((f.dims(), f.dtype()), (&[2usize, 3][..], DType::F32));
    assert_eq!(f.to_vec::<f32>()?, [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]);
    let b = get(&ts, "bf16_vector");
    assert_eq!((b.dims(), b.dtype()), (&[4usize][..], DType::BF16));
    assert_eq!(b.to_vec::<bf16>()?, [1.5f32, -2.25, 0.125, 3072.0].map(bf16::from_f32));
    let i = get(&ts, "i64_vector");
    assert_eq!(i.dtype(), DType::I64);
    assert_eq!(i.to_vec::<i64>()?, [0, -7, (1 << 40) + 3, -(1 << 62)]);
    let s = get(&ts, "scalar");
    assert_eq!((s.dims(), s.dtype(), s.item()?), (&[][..], DType::F32, 3.25));
    let c = get(&ts, "cube");
    assert_eq!(c.dims(), &[2, 2, 3]);
    assert_eq!(c.to_vec::<f32>()?, (0..12).map(|v| v as f32 - 5.5).collect::<Vec<_>>());
    Ok(())
}

#[test]
fn missing_truncated_and_corrupt_files_are_errors_naming_the_path() -> Result<()> {
    let dir = Scratch::new("corrupt");
    let missing = dir.path("nope.safetensors");
    let err = load_safetensors(&missing).expect_err("missing file");
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.safetensors"), "{err}");

    let good = dir.path("good.safetensors");
    let t = Tensor::from_vec(vec![1.0f32; 64], &[8, 8], CPU)?;
    save_safetensors(&good, &[("w".into(), t)], &BTreeMap::new())?;
    let bytes = std::fs::read(&good).expect("reading back");

    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut bad_json = bytes.clone();
    bad_json[8] = b'#';
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("short", bytes[..5].to_vec()),
        ("truncated_header", bytes[..8 + header_len / 2].to_vec()),
        ("truncated_data", bytes[..bytes.len() - 3].to_vec()),
        ("trailing_bytes", [bytes.clone(), vec![0; 4]].concat()),
        ("huge_header_len", [u64::MAX.to_le_bytes().to_vec(), bytes[8..].to_vec()].concat()),
        ("bad_json", bad_json),
        ("not_safetensors", b"PK\x03\x04 this is a zip file, not tensors".to_vec()),
    ];
    for (name, data) in cases {
        let p = dir.path(&format!("{name}.safetensors"));
        std::fs::write(&p, data).expect("writing a corrupt file");
        let err = load_safetensors(&p).err().unwrap_or_else(|| panic!("{name} loaded"));
        assert!(matches!(err, Error::File { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains(&format!("{name}.safetensors")), "{name}: {err}");
    }

    // A dtype munja does not hold (I32) is named.
    let header = br#"{"ints":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut raw = (header.len() as u64).to_le_bytes().to_vec();
    raw.extend_from_slice(header);
    raw.extend_from_slice(&[0; 8]);
    let p = dir.path("i32.safetensors");
    std::fs::write(&p, raw).expect("writing");
    let err = load_safetensors(&p).expect_err("I32 is not supported");
    assert!(err.to_string().contains("'ints'") && err.to_string().contains("I32"), "{err}");
    Ok(())
}

#[test]
fn invalid_tensor_names_are_rejected_before_anything_is_written() -> Result<()> {
    let dir = Scratch::new("names");
    let path = dir.path("m.safetensors");
    let t = Tensor::zeros(&[2], DType::F32, CPU)?;
    save_safetensors(&path, &[("old".into(), t.clone())], &BTreeMap::new())?;
    let before = std::fs::read(&path).expect("read");
    for bad in [vec![("a".to_string(), t.clone()), ("a".into(), t.clone())], vec![("__metadata__".into(), t.clone())]] {
        let err = save_safetensors(&path, &bad, &BTreeMap::new()).expect_err("bad names");
        assert!(err.to_string().contains("m.safetensors"), "{err}");
        assert_eq!(std::fs::read(&path).expect("read"), before, "previous file changed");
    }
    assert_eq!(dir.listing(), ["m.safetensors"], "no temporary file left behind");
    Ok(())
}

#[test]
fn overwriting_replaces_the_file_and_leaves_no_temporary_files() -> Result<()> {
    let dir = Scratch::new("overwrite");
    let path = dir.path("ckpt.safetensors");
    for v in [1.0, 2.0, 3.0] {
        save_safetensors(&path, &[("v".into(), Tensor::full(&[100], v, DType::F32, CPU)?)], &BTreeMap::new())?;
        assert_eq!(get(&load_safetensors(&path)?.0, "v").to_vec_f64()?, vec![v; 100]);
    }
    assert_eq!(dir.listing(), ["ckpt.safetensors"]);
    Ok(())
}

#[test]
fn a_failed_rename_cleans_up_its_temporary_file() -> Result<()> {
    // The destination is a non-empty directory: everything is written, then the rename fails.
    let dir = Scratch::new("rename");
    let target = dir.path("taken");
    std::fs::create_dir(&target).expect("mkdir");
    std::fs::write(target.join("keep"), b"x").expect("write");
    let err = save_safetensors(&target, &[("v".into(), Tensor::zeros(&[4], DType::F32, CPU)?)], &BTreeMap::new())
        .expect_err("cannot replace a directory");
    assert!(err.to_string().contains("taken"), "{err}");
    assert_eq!(dir.listing(), ["taken"], "temporary file left behind");
    assert!(target.join("keep").exists());
    Ok(())
}

const CHILD_ENV: &str = "MUNJA_ATOMIC_CHILD_PATH";

/// Helper for `a_failed_write_leaves_the_previous_file_intact`, run by it in a child process with a file
/// size limit; ignored in normal runs (it does nothing without the environment variable).
#[test]
#[ignore = "run by a_failed_write_leaves_the_previous_file_intact in a child process"]
fn atomic_write_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else { return };
    // 4 MiB of data, far above the limit the parent set, so the write fails part way through.
    let big = Tensor::zeros(&[1 << 20], DType::F32, CPU).expect("tensor");
    let err = save_safetensors(&path, &[("big".into(), big)], &BTreeMap::new()).expect_err("write must fail");
    println!("child error: {err}");
    assert!(err.to_string().contains(".tmp"), "the failure is in the temporary file: {err}");
}

#[test]
fn a_failed_write_leaves_the_previous_file_intact() -> Result<()> {
    // A real mid-write failure that also works as root (where a read-only directory does not stop
    // writes): the child process runs under `ulimit -f` with SIGXFSZ ignored, so writing past the limit
    // fails with EFBIG after part of the temporary file is on disk.
    let dir = Scratch::new("fsize");
    let path = dir.path("ckpt.safetensors");
    save_safetensors(&path, &[("old".into(), Tensor::full(&[16], 7.0, DType::F32, CPU)?)], &BTreeMap::new())?;
    let before = std::fs::read(&path).expect("read");
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' XFSZ; ulimit -f 64 && exec "$0" --exact io::atomic_write_child --ignored --nocapture"#)
        .arg(&exe)
        .env(CHILD_ENV, &path)
        .output()
        .expect("running the child");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && log.contains("1 passed"), "child failed:\n{log}");
    assert!(log.contains("child error"), "child did not attempt the write:\n{log}");
    assert_eq!(std::fs::read(&path).expect("read"), before, "previous file was changed");
    assert_eq!(dir.listing(), ["ckpt.safetensors"], "temporary file left behind");
    assert_eq!(get(&load_safetensors(&path)?.0, "old").to_vec_f64()?, vec![7.0; 16]);
    Ok(())
}

#[test]
fn module_weights_roundtrip_by_name() -> Result<()> {
    let dir = Scratch::new("module");
    let path = dir.path("mlp.safetensors");
    let (a, b) = (mlp(1)?, mlp(2)?);
    assert!(!same_params(&a, &b)?);
    save_module(&a, &path)?;
    let names: Vec<String> = load_safetensors(&path)?.0.into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["0.bias", "0.weight", "2.bias", "2.weight"]);
    load_module(&b, &path, true)?;
    assert!(same_params(&a, &b)?);
    let x = Tensor::randn_with(&mut Generator::new(3), &[4, 3], DType::F32, CPU)?;
    assert_eq!(a.forward(&x)?.to_vec::<f32>()?, b.forward(&x)?.to_vec::<f32>()?);
    // Parameters stay trainable leaves after loading.
    assert!(b.parameters().iter().all(|p| p.requires_grad() && p.is_leaf()));
    Ok(())
}

#[test]
fn load_module_errors_name_the_tensor_and_load_nothing() -> Result<()> {
    let dir = Scratch::new("module_errors");
    let model = mlp(1)?;
    let snapshot = |m: &dyn Module| -> Result<Vec<Vec<f32>>> { m.parameters().iter().map(|p| p.to_vec()).collect() };
    let before = snapshot(&model)?;
    let file = |name: &str, ts: Vec<(String, Tensor)>| -> Result<PathBuf> {
        let p = dir.path(name);
        save_safetensors(&p, &ts, &BTreeMap::new())?;
        Ok(p)
    };
    let good = mlp(5)?.named_parameters();
    let without = |n: &str| good.iter().filter(|(k, _)| k != n).cloned().collect::<Vec<_>>();
    let replaced = |n: &str, t: Tensor| {
        good.iter().map(|(k, v)| (k.clone(), if k == n { t.clone() } else { v.clone() })).collect()
    };
    let cases = vec![
        ("missing", "'2.weight'", file("missing.safetensors", without("2.weight"))?),
        ("shape", "'0.bias'", file("shape.safetensors", replaced("0.bias", Tensor::zeros(&[6], DType::F32, CPU)?))?),
        ("dtype", "'2.bias'", file("dtype.safetensors", replaced("2.bias", Tensor::zeros(&[2], DType::F64, CPU)?))?),
    ];
    for (what, name, path) in cases {
        for strict in [true, false] {
            let err = load_module(&model, &path, strict).err().unwrap_or_else(|| panic!("{what} loaded"));
            assert!(err.to_string().contains(name), "{what}: {err}");
            assert!(err.to_string().contains(path.file_name().unwrap().to_str().unwrap()), "{what}: {err}");
        }
        assert_eq!(snapshot(&model)?, before, "{what}: a failed load changed the model");
    }
    let extra = [good.clone(), vec![("head.weight".to_string(), Tensor::zeros(&[1], DType::F32, CPU)?)]].concat();
    let path = file("extra.safetensors", extra)?;
    let err = load_module(&model, &path, true).expect_err("strict rejects unexpected names");
    assert!(err.to_string().contains("'head.weight'"), "{err}");
    assert_eq!(snapshot(&model)?, before);
    load_module(&model, &path, false)?;
    assert!(same_params(&model, &mlp(5)?)?, "non-strict ignores the extra tensor and loads the rest");
    Ok(())
}

fn train_steps(model: &dyn Module, opt: &mut dyn Optimizer, steps: usize) -> Result<()> {
    let x = Tensor::randn_with(&mut Generator::new(10), &[8, 3], DType::F32, CPU)?;
    let y = Tensor::randn_with(&mut Generator::new(11), &[8, 2], DType::F32, CPU)?;
    for _ in 0..steps {
        opt.zero_grad();
        model.forward(&x)?.mse_loss(&y)?.backward()?;
        opt.step()?;
    }
    Ok(())
}

#[test]
fn checkpoints_restore_model_optimizer_and_metadata() -> Result<()> {
    let dir = Scratch::new("checkpoint");
    let path = dir.path("ckpt.safetensors");
    let cfg = AdamConfig { lr: 0.01, ..AdamConfig::adamw() };
    let a = mlp(1)?;
    let mut oa = Adam::new(a.named_parameters(), cfg)?;
    train_steps(&a, &mut oa, 3)?;
    let extra = meta(&[("step", "3"), ("config", "{\"n_layer\": 2}")]);
    save_checkpoint(&path, &a, &oa, &extra)?;

    let names: Vec<String> = load_safetensors(&path)?.0.into_iter().map(|(n, _)| n).collect();
    for n in ["model.0.weight", "model.2.bias", "optim.step", "optim.0.weight.exp_avg", "optim.2.bias.exp_avg_sq"] {
        assert!(names.iter().any(|k| k == n), "{n} not in {names:?}");
    }

    let b = mlp(2)?;
    let mut ob = Adam::new(b.named_parameters(), cfg)?;
    assert_eq!(load_checkpoint(&path, &b, &mut ob)?, extra);
    assert!(same_params(&a, &b)?);
    assert_eq!(ob.step_count(), 3);
    // Training on from the checkpoint is bit-identical to training on without stopping.
    train_steps(&a, &mut oa, 2)?;
    train_steps(&b, &mut ob, 2)?;
    assert!(same_params(&a, &b)?, "resumed training diverged");
    Ok(())
}

#[test]
fn a_checkpoint_from_another_optimizer_or_model_is_rejected_whole() -> Result<()> {
    let dir = Scratch::new("checkpoint_errors");
    let path = dir.path("ckpt.safetensors");
    let a = mlp(1)?;
    let mut sgd = Sgd::new(a.named_parameters(), SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() })?;
    train_steps(&a, &mut sgd, 1)?;
    save_checkpoint(&path, &a, &sgd, &BTreeMap::new())?;

    // SGD state into Adam: the missing Adam entry is named, and the model is untouched.
    let b = mlp(2)?;
    let before: Vec<Vec<f32>> = b.parameters().iter().map(|p| p.to_vec()).collect::<Result<_>>()?;
    let mut adam = Adam::new(b.named_parameters(), AdamConfig::default())?;
    let err = load_checkpoint(&path, &b, &mut adam).expect_err("wrong optimizer");
    assert!(err.to_string().contains("exp_avg") && err.to_string().contains("ckpt.safetensors"), "{err}");
    let after: Vec<Vec<f32>> = b.parameters().iter().map(|p| p.to_vec()).collect::<Result<_>>()?;
    assert_eq!(before, after, "model changed by a failed checkpoint load");

    // A model with another layer size: the tensor is named.
    let mut g = Generator::new(0);
    let wider = Sequential::new().push(Linear::new(3, 6, true, DType::F32, CPU, &mut g)?);
    let mut o = Sgd::new(wider.named_parameters(), SgdConfig::default())?;
    let err = load_checkpoint(&path, &wider, &mut o).expect_err("wrong model");
    assert!(err.to_string().contains("'0.weight'"), "{err}");
    Ok(())
}
