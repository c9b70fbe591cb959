//! Parity with PyTorch through committed fixtures (tests/fixtures/*.safetensors, written by
//! tests/fixtures/make_fixtures.py with torch 2.11 on the CPU). Each op case holds the inputs, torch's
//! output, a random upstream gradient `gy` and torch's input gradients from `backward(out, gy)`, in f32 and
//! usually bf16; munja runs the same op and must match within a whole-tensor relative error
//! ‖munja − torch‖/‖torch‖ of 1e-5 (f32) or 1e-2 (bf16). Masks and indices must match exactly.
//!
//! Every case of a file is checked before the test fails, so one run reports all mismatches; and every
//! tensor in a file must be read by its test, so a fixture case cannot sit there untested.

use crate::common::rel_err;
use munja::io::load_safetensors;
use munja::nn::{LayerNorm, Linear, Module};
use munja::optim::{Adam, AdamConfig, AdamW, Optimizer, Sgd, SgdConfig};
use munja::{DType, Device, Result, Tensor};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

const F32_TOL: f64 = 1e-5;
const BF16_TOL: f64 = 1e-2;

// ---- fixture files ----

/// One fixture file read through `munja::io::load_safetensors`, with the bookkeeping behind `finish`.
struct Fixture {
    name: String,
    tensors: BTreeMap<String, Tensor>,
    used: RefCell<BTreeSet<String>>,
    failures: RefCell<Vec<String>>,
}

impl Fixture {
    fn load(name: &str) -> Fixture {
        let path = format!("{}/tests/fixtures/{name}.safetensors", env!("CARGO_MANIFEST_DIR"));
        let (tensors, _) = load_safetensors(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        Fixture {
            name: name.to_string(),
            tensors: tensors.into_iter().collect(),
            used: RefCell::default(),
            failures: RefCell::default(),
        }
    }

    fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// The names after `prefix` of the tensors whose key starts with it, sorted.
    fn names_under(&self, prefix: &str) -> Vec<String> {
        self.tensors.keys().filter_map(|k| k.strip_prefix(prefix)).map(str::to_string).collect()
    }

    /// A fresh leaf copy of tensor `key`: optimizers update parameters in place, and two training runs
    /// from the same initial parameters must not share storage.
    fn get(&self, key: &str) -> Tensor {
        let t = self.tensors.get(key).unwrap_or_else(|| panic!("{}.safetensors has no tensor {key}", self.name));
        self.used.borrow_mut().insert(key.to_string());
        let copy = t.zeros_like().and_then(|c| c.assign(t).map(|_| c));
        copy.unwrap_or_else(|e| panic!("copying {key}: {e}"))
    }

    fn fail(&self, msg: String) {
        self.failures.borrow_mut().push(msg);
    }

    /// Records a failure unless `got` matches `want` (same shape and dtype; exact for masks and indices,
    /// else relative error within `tol`).
    fn compare(&self, what: &str, got: &Tensor, want: &Tensor, tol: f64) -> Result<()> {
        if got.dims() != want.dims() || got.dtype() != want.dtype() {
            self.fail(format!("{what}: got {:?} {}, want {:?} {}", got.dims(), got.dtype(), want.dims(), want.dtype()));
            return Ok(());
        }
        if !want.dtype().is_float() {
            let (g, w) = (got.to_vec_f64()?, want.to_vec_f64()?);
            if g != w {
                self.fail(format!("{what}: got {g:?}, want {w:?}"));
            }
            return Ok(());
        }
        let e = rel_err(got, want)?;
        // Shown with --nocapture: the margin of every comparison, not just the failing ones.
        println!("{}: {what}: {e:.2e}", self.name);
        if e.is_nan() || e > tol {
            self.fail(format!("{what}: relative error {e:.3e} > {tol:.0e}"));
        }
        Ok(())
    }

    /// Panics listing every recorded failure, and any tensor of the file no check read.
    fn finish(self) {
        let used = self.used.borrow();
        let unused: Vec<&String> = self.tensors.keys().filter(|k| !used.contains(*k)).collect();
        let failures = self.failures.borrow();
        assert!(
            failures.is_empty() && unused.is_empty(),
            "{}.safetensors: {} mismatch(es) against PyTorch:\n  {}\nunchecked fixture tensors: {unused:?}",
            self.name,
            failures.len(),
            failures.join("\n  ")
        );
    }
}

fn tol_for(dtype: &str) -> f64 {
    if dtype == "bf16" {
        BF16_TOL
    } else {
        F32_TOL
    }
}

/// Checks one op case in f32 and, when the fixture has it, bf16: forward outputs against `out` (or
/// `out.i`), then the input gradients after backpropagating `gy` (or each `gy.i` in turn, accumulating)
/// against `grad.<input>`. Inputs require a gradient exactly when torch stored one for them. An error from
/// munja is recorded as that case's failure, so the other cases still run.
fn check(fx: &Fixture, case: &str, inputs: &[&str], op: impl Fn(&[Tensor]) -> Result<Vec<Tensor>>) {
    for dt in ["f32", "bf16"] {
        let p = format!("{case}.{dt}");
        if !fx.has(&format!("{p}.in.{}", inputs[0])) {
            assert!(dt != "f32", "{}.safetensors has no case {case}", fx.name);
            continue;
        }
        if let Err(e) = check_dtype(fx, &p, tol_for(dt), inputs, &op) {
            fx.fail(format!("{p}: munja returned an error: {e}"));
        }
    }
}

/// `check` for one dtype, the keys under prefix `p`.
fn check_dtype(
    fx: &Fixture,
    p: &str,
    tol: f64,
    inputs: &[&str],
    op: &impl Fn(&[Tensor]) -> Result<Vec<Tensor>>,
) -> Result<()> {
    let xs: Vec<Tensor> = inputs
        .iter()
        .map(|n| {
            let t = fx.get(&format!("{p}.in.{n}"));
            let wants_grad = fx.has(&format!("{p}.grad.{n}"));
            t.set_requires_grad(wants_grad)
        })
        .collect();
    let outs = op(&xs)?;
    let single = outs.len() == 1 && fx.has(&format!("{p}.out"));
    if !single && fx.has(&format!("{p}.out.{}", outs.len())) {
        fx.fail(format!("{p}: torch gave more than the {} outputs munja gave", outs.len()));
    }
    let key = |base: &str, i: usize| if single { format!("{p}.{base}") } else { format!("{p}.{base}.{i}") };
    for (i, o) in outs.iter().enumerate() {
        fx.compare(&format!("{p} output {i}"), o, &fx.get(&key("out", i)), tol)?;
    }
    if !outs[0].dtype().is_float() {
        return Ok(());
    }
    for (i, o) in outs.iter().enumerate() {
        o.backward_with(&fx.get(&key("gy", i)))?;
    }
    for (n, x) in inputs.iter().zip(&xs) {
        let k = format!("{p}.grad.{n}");
        if !fx.has(&k) {
            continue;
        }
        match x.grad() {
            Some(g) => fx.compare(&format!("{p} grad of {n}"), &g, &fx.get(&k), tol)?,
            None => fx.fail(format!("{p}: no gradient reached {n}")),
        }
    }
    Ok(())
}

/// `check` for an op with one output.
fn check1(fx: &Fixture, case: &str, inputs: &[&str], op: impl Fn(&[Tensor]) -> Result<Tensor>) {
    check(fx, case, inputs, |x| Ok(vec![op(x)?]))
}

// ---- op families ----

#[test]
fn elementwise() {
    let fx = Fixture::load("elementwise");
    let ab = &["a", "b"];
    check1(&fx, "add", ab, |x| x[0].add(&x[1]));
    check1(&fx, "sub", ab, |x| x[0].sub(&x[1]));
    check1(&fx, "mul", ab, |x| x[0].mul(&x[1]));
    check1(&fx, "div", ab, |x| x[0].div(&x[1]));
    check1(&fx, "mul_same", ab, |x| x[0].mul(&x[1]));
    type Unary = fn(&Tensor) -> Result<Tensor>;
    let unary: [(&str, Unary); 17] = [
        ("neg", |x| x.neg()),
        ("exp", |x| x.exp()),
        ("log", |x| x.log()),
        ("sqrt", |x| x.sqrt()),
        ("rsqrt", |x| x.rsqrt()),
        ("reciprocal", |x| x.recip()),
        ("pow3", |x| x.powf(3.0)),
        ("pow2_5", |x| x.powf(2.5)),
        ("pow_m1_5", |x| x.powf(-1.5)),
        ("abs", |x| x.abs()),
        ("tanh", |x| x.tanh()),
        ("sigmoid", |x| x.sigmoid()),
        ("relu", |x| x.relu()),
        ("gelu_tanh", |x| x.gelu()),
        ("gelu_erf", |x| x.gelu_erf()),
        ("silu", |x| x.silu()),
        ("clamp", |x| x.clamp(-0.5, 0.7)),
    ];
    for (case, f) in unary {
        check1(&fx, case, &["x"], |x| f(&x[0]));
    }
    check1(&fx, "maximum", ab, |x| x[0].maximum(&x[1]));
    check1(&fx, "minimum", ab, |x| x[0].minimum(&x[1]));
    check1(&fx, "eq", ab, |x| x[0].eq(&x[1]));
    check1(&fx, "lt", ab, |x| x[0].lt(&x[1]));
    check1(&fx, "ge", ab, |x| x[0].ge(&x[1]));
    check1(&fx, "where", &["mask", "a", "b"], |x| Tensor::where_cond(&x[0], &x[1], &x[2]));
    check1(&fx, "masked_fill", &["x", "mask"], |x| x[0].masked_fill(&x[1], 3.5));
    fx.finish();
}

#[test]
fn reduce() {
    let fx = Fixture::load("reduce");
    let x = &["x"];
    check1(&fx, "sum_d1", x, |x| x[0].sum(&[1], false));
    check1(&fx, "sum_d02_keep", x, |x| x[0].sum(&[0, 2], true));
    check1(&fx, "sum_all", x, |x| x[0].sum_all());
    check1(&fx, "mean_d1", x, |x| x[0].mean(&[1], false));
    check1(&fx, "mean_d02_keep", x, |x| x[0].mean(&[0, 2], true));
    check1(&fx, "mean_all", x, |x| x[0].mean_all());
    check1(&fx, "amax_d1", x, |x| x[0].max(&[1], false));
    check1(&fx, "amin_dm1_keep", x, |x| x[0].min(&[-1], true));
    check1(&fx, "amax_ties_d02_keep", x, |x| x[0].max(&[0, 2], true));
    check1(&fx, "amin_ties_d12", x, |x| x[0].min(&[1, 2], false));
    check1(&fx, "argmax_d1", x, |x| x[0].argmax(1, false));
    check1(&fx, "argmax_dm1_keep", x, |x| x[0].argmax(-1, true));
    check1(&fx, "var_d1", x, |x| x[0].var(&[1], 1, false));
    check1(&fx, "var_d02_keep", x, |x| x[0].var(&[0, 2], 1, true));
    fx.finish();
}

#[test]
fn matmul() {
    let fx = Fixture::load("matmul");
    let ab = &["a", "b"];
    check1(&fx, "mm", ab, |x| x[0].matmul(&x[1]));
    check1(&fx, "bmm", ab, |x| x[0].matmul(&x[1]));
    check1(&fx, "bcast", ab, |x| x[0].matmul(&x[1]));
    check1(&fx, "bt", ab, |x| x[0].matmul(&x[1].t()?));
    check1(&fx, "at", ab, |x| x[0].t()?.matmul(&x[1]));
    check1(&fx, "bmm_bt", ab, |x| x[0].matmul(&x[1].transpose(-1, -2)?));
    fx.finish();
}

#[test]
fn softmax() {
    let fx = Fixture::load("softmax");
    check1(&fx, "softmax_mid", &["x"], |x| x[0].softmax(1));
    check1(&fx, "softmax_last", &["x"], |x| x[0].softmax(-1));
    check1(&fx, "log_softmax_mid", &["x"], |x| x[0].log_softmax(1));
    check1(&fx, "log_softmax_last", &["x"], |x| x[0].log_softmax(-1));
    fx.finish();
}

#[test]
fn loss() {
    let fx = Fixture::load("loss");
    check1(&fx, "cross_entropy", &["logits", "t"], |x| x[0].cross_entropy(&x[1], -100));
    check1(&fx, "cross_entropy_3d", &["logits", "t"], |x| x[0].cross_entropy(&x[1], -100));
    check1(&fx, "mse_loss", &["x", "y"], |x| x[0].mse_loss(&x[1]));
    fx.finish();
}

#[test]
fn norm() {
    let fx = Fixture::load("norm");
    let xwb = &["x", "w", "b"];
    check1(&fx, "layer_norm", xwb, |x| x[0].layer_norm(&[8], Some(&x[1]), Some(&x[2]), 1e-5));
    check1(&fx, "layer_norm_2d", xwb, |x| x[0].layer_norm(&[3, 8], Some(&x[1]), Some(&x[2]), 1e-5));
    check1(&fx, "rms_norm", &["x", "w"], |x| x[0].rms_norm(&[8], Some(&x[1]), 1e-6));
    fx.finish();
}

#[test]
fn index() {
    let fx = Fixture::load("index");
    check1(&fx, "embedding", &["table", "ids"], |x| x[0].embedding(&x[1]));
    check1(&fx, "gather_d1", &["x", "idx"], |x| x[0].gather(1, &x[1]));
    check1(&fx, "gather_d0", &["x", "idx"], |x| x[0].gather(0, &x[1]));
    check1(&fx, "scatter_add", &["x", "idx", "src"], |x| x[0].scatter_add(1, &x[1], &x[2]));
    check1(&fx, "index_add", &["x", "idx", "src"], |x| x[0].index_add(0, &x[1], &x[2]));
    check1(&fx, "index_select", &["x", "idx"], |x| x[0].index_select(1, &x[1]));
    fx.finish();
}

#[test]
fn shape() {
    let fx = Fixture::load("shape");
    check1(&fx, "cat_d1", &["a", "b"], |x| Tensor::cat(&[&x[0], &x[1]], 1));
    check1(&fx, "cat3_d0", &["a", "b", "c"], |x| Tensor::cat(&[&x[0], &x[1], &x[2]], 0));
    check1(&fx, "stack_d1", &["a", "b", "c"], |x| Tensor::stack(&[&x[0], &x[1], &x[2]], 1));
    check(&fx, "split", &["x"], |x| x[0].split(3, 0));
    check(&fx, "chunk", &["x"], |x| x[0].chunk(3, 1));
    check1(&fx, "narrow", &["x"], |x| x[0].narrow(1, 2, 3));
    check1(&fx, "permute", &["x"], |x| x[0].permute([2, 0, 1])?.contiguous());
    check1(&fx, "tril", &["x"], |x| x[0].tril(0));
    check1(&fx, "tril_m1", &["x"], |x| x[0].tril(-1));
    check1(&fx, "tril_b_p1", &["x"], |x| x[0].tril(1));
    fx.finish();
}

// ---- training ----

/// The parameters stored as `init.<name>`, as fresh leaves that require a gradient, with their names.
fn init_params(fx: &Fixture) -> Vec<(String, Tensor)> {
    let names = fx.names_under("init.");
    assert!(!names.is_empty(), "{}.safetensors has no init.* parameters", fx.name);
    names.into_iter().map(|n| (n.clone(), fx.get(&format!("init.{n}")).set_requires_grad(true))).collect()
}

fn param<'a>(params: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &params.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no parameter {name}")).1
}

/// Runs `steps` training steps (zero_grad, forward, backward, step) and checks against the fixture under
/// `prefix`: each step's loss (relative error of that loss), the gradients after the first backward
/// (`grad1.<name>`), and the parameters after the last step (`final.<name>`), each seen through
/// `final_view` (munja's and torch's alike) before comparing.
fn train_and_check(
    fx: &Fixture,
    prefix: &str,
    params: &[(String, Tensor)],
    opt: &mut dyn Optimizer,
    steps: usize,
    final_view: &dyn Fn(&str, &Tensor) -> Result<Tensor>,
    loss_fn: impl Fn(&[(String, Tensor)]) -> Result<Tensor>,
) -> Result<()> {
    let want = fx.get(&format!("{prefix}losses")).to_vec_f64()?;
    assert_eq!(want.len(), steps, "{prefix}losses holds {} steps", want.len());
    for (step, want) in want.iter().enumerate() {
        opt.zero_grad();
        let loss = loss_fn(params)?;
        let got = loss.item()?;
        let e = (got - want).abs() / want.abs();
        println!("{}: {prefix}loss at step {}: {got} vs {want}: {e:.2e}", fx.name, step + 1);
        if e.is_nan() || e > F32_TOL {
            fx.fail(format!("{prefix}loss at step {}: munja {got}, torch {want}: relative error {e:.3e}", step + 1));
        }
        loss.backward()?;
        if step == 0 {
            for (n, p) in params {
                match p.grad() {
                    Some(g) => fx.compare(
                        &format!("{prefix}step-1 grad of {n}"),
                        &g,
                        &fx.get(&format!("{prefix}grad1.{n}")),
                        F32_TOL,
                    )?,
                    None => fx.fail(format!("{prefix}step 1: no gradient reached {n}")),
                }
            }
        }
        opt.step()?;
    }
    for (n, p) in params {
        let want = fx.get(&format!("{prefix}final.{n}"));
        fx.compare(&format!("{prefix}final {n}"), &final_view(n, p)?, &final_view(n, &want)?, F32_TOL)?;
    }
    Ok(())
}

/// A 12-16-16-4 ReLU MLP with cross-entropy, 5 steps of Adam and, from the same start, 5 of SGD with
/// momentum and weight decay.
#[test]
fn mlp_training() -> Result<()> {
    let fx = Fixture::load("mlp");
    let (x, y) = (fx.get("x"), fx.get("y"));
    let forward = |p: &[(String, Tensor)]| -> Result<Tensor> {
        let layer = |i: usize| Linear {
            weight: param(p, &format!("w{i}")).clone(),
            bias: Some(param(p, &format!("b{i}")).clone()),
        };
        let h = layer(1).forward(&x)?.relu()?;
        let h = layer(2).forward(&h)?.relu()?;
        layer(3).forward(&h)?.cross_entropy(&y, -100)
    };
    let params = init_params(&fx);
    let mut adam = Adam::new(params.clone(), AdamConfig { lr: 1e-2, ..AdamConfig::default() })?;
    train_and_check(&fx, "adam.", &params, &mut adam, 5, &|_, t| Ok(t.clone()), forward)?;
    let params = init_params(&fx);
    let sgd_config = SgdConfig { lr: 0.05, momentum: 0.9, dampening: 0.0, weight_decay: 1e-4, nesterov: false };
    let mut sgd = Sgd::new(params.clone(), sgd_config)?;
    train_and_check(&fx, "sgd.", &params, &mut sgd, 5, &|_, t| Ok(t.clone()), forward)?;
    fx.finish();
    Ok(())
}

/// A pre-LN transformer block (causal self-attention with a fused QKV projection, then a GELU MLP) over
/// token and position embeddings, a final LayerNorm and a linear head, cross-entropy with ignored
/// targets; 3 steps of AdamW. Built from munja's Linear and LayerNorm with the fixture's parameters.
#[test]
fn transformer_training() -> Result<()> {
    const B: usize = 2;
    const T: usize = 8;
    const D: usize = 16;
    const H: usize = 2;
    const HD: usize = D / H;
    let fx = Fixture::load("transformer");
    let (ids, targets) = (fx.get("ids"), fx.get("targets"));
    // 1 where a query must not see a key (above the diagonal), as torch's `tril(ones) == 0`.
    let future = Tensor::ones(&[T, T], DType::F32, Device::Cpu)?.tril(0)?.eq_scalar(0.0)?;
    let forward = |p: &[(String, Tensor)]| -> Result<Tensor> {
        let lin = |x: &Tensor, n: &str| {
            let l =
                Linear { weight: param(p, &format!("{n}.w")).clone(), bias: Some(param(p, &format!("{n}.b")).clone()) };
            l.forward(x)
        };
        let ln = |x: &Tensor, n: &str| {
            let l = LayerNorm {
                weight: param(p, &format!("{n}.w")).clone(),
                bias: Some(param(p, &format!("{n}.b")).clone()),
                eps: 1e-5,
            };
            l.forward(x)
        };
        let h = param(p, "wte").embedding(&ids)?.add(param(p, "wpe"))?;
        let qkv = lin(&ln(&h, "ln1")?, "qkv")?.split(D, -1)?;
        let heads = |t: &Tensor| t.reshape([B, T, H, HD])?.transpose(1, 2);
        let (q, k, v) = (heads(&qkv[0])?, heads(&qkv[1])?, heads(&qkv[2])?);
        let att = q.matmul(&k.transpose(-2, -1)?)?.mul_scalar(1.0 / (HD as f64).sqrt())?;
        let att = att.masked_fill(&future, f64::NEG_INFINITY)?.softmax(-1)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape([B, T, D])?;
        let h = h.add(&lin(&y, "proj")?)?;
        let h = h.add(&lin(&lin(&ln(&h, "ln2")?, "fc")?.gelu()?, "fc2")?)?;
        lin(&ln(&h, "lnf")?, "head")?.cross_entropy(&targets, -100)
    };
    let params = init_params(&fx);
    let config = AdamConfig { lr: 1e-2, betas: (0.9, 0.95), eps: 1e-8, weight_decay: 0.1 };
    let mut opt = AdamW::new(params.clone(), config)?;
    // The key third of the QKV bias gets no gradient: q·(k + b) = q·k + q·b adds the same amount to a
    // query's scores over every key, which softmax ignores. Its computed gradient is rounding noise (about
    // 1e-10 in torch, against 1e-2 for the query and value biases), and Adam divides by the gradient's
    // own scale, so that noise moves those 16 biases by up to 2e-3 in 3 steps, differently in every
    // implementation (5e-3 relative error over the whole bias). The final key bias is therefore left out;
    // the rest of qkv.b is compared like every other parameter, and the step-1 gradient of all of qkv.b
    // (noise included) is compared in full.
    let final_view = |name: &str, t: &Tensor| -> Result<Tensor> {
        if name != "qkv.b" {
            return Ok(t.clone());
        }
        Tensor::cat(&[&t.narrow(0, 0, D)?, &t.narrow(0, 2 * D, D)?], 0)
    };
    train_and_check(&fx, "", &params, &mut opt, 3, &final_view, forward)?;
    fx.finish();
    Ok(())
}
