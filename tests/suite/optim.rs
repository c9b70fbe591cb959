//! Optimizers against their update formulas written out by hand in f64, state save/restore, gradient
//! clipping and learning-rate schedules.

use munja::nn::{Linear, Module};
use munja::optim::{
    clip_grad_norm, Adam, AdamConfig, AdamW, Constant, LrSchedule, Optimizer, Sgd, SgdConfig, WarmupCosine,
};
use munja::{DType, Device, Generator, Result, Tensor};

const CPU: Device = Device::Cpu;

fn f64s(v: &[f64]) -> Result<Tensor> {
    Tensor::from_slice(v, &[v.len()], CPU)
}

fn param(v: &[f64]) -> Result<Tensor> {
    Ok(f64s(v)?.set_requires_grad(true))
}

fn assert_close(got: &Tensor, want: &[f64], tol: f64, what: &str) -> Result<()> {
    let g = got.to_vec_f64()?;
    assert_eq!(g.len(), want.len(), "{what}: length");
    for (i, (a, b)) in g.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol * b.abs().max(1.0), "{what}[{i}]: got {a}, want {b}");
    }
    Ok(())
}

/// Gradients for three steps of a three-element parameter.
const GRADS: [[f64; 3]; 3] = [[0.5, -1.0, 2.0], [-0.3, 0.8, 0.1], [1.5, 0.2, -0.7]];
const P0: [f64; 3] = [1.0, -2.0, 3.0];

/// Runs `steps` steps of `opt` on `p`, setting GRADS[i] as the gradient before step i.
fn run(opt: &mut dyn Optimizer, p: &Tensor, steps: usize) -> Result<()> {
    for g in GRADS.iter().take(steps) {
        p.set_grad(Some(f64s(g)?))?;
        opt.step()?;
    }
    Ok(())
}

/// PyTorch's SGD, by hand.
fn sgd_reference(c: SgdConfig, steps: usize) -> Vec<f64> {
    let mut p = P0.to_vec();
    let mut buf: Option<Vec<f64>> = None;
    for g in GRADS.iter().take(steps) {
        let d: Vec<f64> = g.iter().zip(&p).map(|(g, p)| g + c.weight_decay * p).collect();
        let step = if c.momentum != 0.0 {
            let b = match buf {
                None => d.clone(),
                Some(b) => b.iter().zip(&d).map(|(b, d)| c.momentum * b + (1.0 - c.dampening) * d).collect(),
            };
            let s = if c.nesterov { d.iter().zip(&b).map(|(d, b)| d + c.momentum * b).collect() } else { b.clone() };
            buf = Some(b);
            s
        } else {
            d
        };
        p = p.iter().zip(&step).map(|(p, s)| p - c.lr * s).collect();
    }
    p
}

/// PyTorch's Adam (decoupled = false) or AdamW (true), by hand.
fn adam_reference(c: AdamConfig, decoupled: bool, steps: usize) -> Vec<f64> {
    let (b1, b2) = c.betas;
    let mut p = P0.to_vec();
    let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
    for (t, g) in GRADS.iter().take(steps).enumerate() {
        let t = (t + 1) as i32;
        for i in 0..3 {
            let mut gi = g[i];
            if decoupled {
                p[i] *= 1.0 - c.lr * c.weight_decay;
            } else {
                gi += c.weight_decay * p[i];
            }
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            let m_hat = m[i] / (1.0 - b1.powi(t));
            let v_hat = v[i] / (1.0 - b2.powi(t));
            p[i] -= c.lr * m_hat / (v_hat.sqrt() + c.eps);
        }
    }
    p
}

#[test]
fn configs_default_to_pytorch() {
    let s = SgdConfig::default();
    assert_eq!((s.lr, s.momentum, s.dampening, s.weight_decay, s.nesterov), (1e-3, 0.0, 0.0, 0.0, false));
    let a = AdamConfig::default();
    assert_eq!((a.lr, a.betas, a.eps, a.weight_decay), (1e-3, (0.9, 0.999), 1e-8, 0.0));
    assert_eq!(AdamConfig::adamw().weight_decay, 0.01);
    assert_eq!(AdamConfig { weight_decay: 0.0, ..AdamConfig::adamw() }, a);
}

#[test]
fn sgd_matches_the_formula_in_every_mode() -> Result<()> {
    let modes = [
        ("plain", SgdConfig { lr: 0.1, ..Default::default() }),
        ("weight decay", SgdConfig { lr: 0.1, weight_decay: 0.05, ..Default::default() }),
        ("momentum", SgdConfig { lr: 0.1, momentum: 0.9, dampening: 0.2, ..Default::default() }),
        ("nesterov", SgdConfig { lr: 0.05, momentum: 0.8, nesterov: true, weight_decay: 0.01, ..Default::default() }),
    ];
    for (name, c) in modes {
        for steps in [1, 3] {
            let p = param(&P0)?;
            let mut opt = Sgd::new(vec![("p".into(), p.clone())], c)?;
            run(&mut opt, &p, steps)?;
            assert_close(&p, &sgd_reference(c, steps), 1e-14, &format!("sgd {name}, {steps} steps"))?;
            assert_eq!(opt.step_count(), steps as u64);
        }
    }
    Ok(())
}

#[test]
fn adam_and_adamw_match_the_formula() -> Result<()> {
    let adam_cfgs = [
        AdamConfig { lr: 0.01, ..Default::default() },
        AdamConfig { lr: 0.02, betas: (0.8, 0.95), eps: 1e-6, weight_decay: 0.1 },
    ];
    for c in adam_cfgs {
        for steps in [1, 3] {
            let p = param(&P0)?;
            let mut opt = Adam::new(vec![("p".into(), p.clone())], c)?;
            run(&mut opt, &p, steps)?;
            assert_close(&p, &adam_reference(c, false, steps), 1e-13, &format!("adam {c:?}, {steps} steps"))?;

            let q = param(&P0)?;
            let cw = AdamConfig { weight_decay: 0.1, ..c };
            let mut opt = AdamW::new(vec![("q".into(), q.clone())], cw)?;
            run(&mut opt, &q, steps)?;
            assert_close(&q, &adam_reference(cw, true, steps), 1e-13, &format!("adamw {cw:?}, {steps} steps"))?;
        }
    }
    // L2 and decoupled decay give different results, so the two code paths are really distinct.
    let c = AdamConfig { lr: 0.1, weight_decay: 0.5, ..Default::default() };
    assert!((adam_reference(c, true, 3)[0] - adam_reference(c, false, 3)[0]).abs() > 1e-3);
    Ok(())
}

#[test]
fn f32_parameters_update_like_f64_within_rounding() -> Result<()> {
    let p = Tensor::from_vec(P0.iter().map(|&v| v as f32).collect(), &[3], CPU)?.set_requires_grad(true);
    let c = AdamConfig { lr: 0.01, ..AdamConfig::adamw() };
    let mut opt = AdamW::new(vec![("p".into(), p.clone())], c)?;
    for g in &GRADS {
        p.set_grad(Some(Tensor::from_vec(g.iter().map(|&v| v as f32).collect(), &[3], CPU)?))?;
        opt.step()?;
    }
    assert_eq!(p.dtype(), DType::F32);
    assert_close(&p, &adam_reference(c, true, 3), 1e-6, "f32 adamw")
}

#[test]
fn parameters_without_gradients_are_skipped() -> Result<()> {
    let (a, b) = (param(&P0)?, param(&[7.0, 8.0])?);
    let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
    let mut adam = Adam::new(params.clone(), AdamConfig { lr: 0.1, ..Default::default() })?;
    let mut sgd = Sgd::new(params, SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() })?;
    for opt in [&mut adam as &mut dyn Optimizer, &mut sgd] {
        a.set_grad(Some(f64s(&GRADS[0])?))?;
        opt.step()?;
        assert_eq!(b.to_vec_f64()?, [7.0, 8.0]);
    }
    // No state is made for b either.
    let names: Vec<String> = sgd.state_tensors()?.into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["step", "a.momentum_buffer"]);
    adam.zero_grad();
    assert!(a.grad().is_none());
    Ok(())
}

#[test]
fn tied_parameters_are_updated_once() -> Result<()> {
    let p = param(&P0)?;
    let c = SgdConfig { lr: 0.1, ..Default::default() };
    let mut opt = Sgd::new(vec![("a".into(), p.clone()), ("b".into(), p.clone())], c)?;
    run(&mut opt, &p, 1)?;
    assert_close(&p, &sgd_reference(c, 1), 1e-15, "tied")?;
    let other = param(&P0)?;
    assert!(Sgd::new(vec![("a".into(), p), ("a".into(), other)], c).is_err(), "two tensors, one name");
    Ok(())
}

#[test]
fn parameter_views_are_updated_in_place_without_touching_the_rest() -> Result<()> {
    // A view into a larger buffer (not a leaf, but an optimizer can be handed one) takes the dense-copy path.
    let base = f64s(&[10.0, 1.0, -2.0, 3.0, 20.0])?;
    let view = base.narrow(0, 1, 3)?;
    view.set_grad(Some(f64s(&GRADS[0])?))?;
    let c = SgdConfig { lr: 0.1, ..Default::default() };
    Sgd::new(vec![("v".into(), view.clone())], c)?.step()?;
    let want = sgd_reference(c, 1);
    assert_close(&base, &[10.0, want[0], want[1], want[2], 20.0], 1e-15, "narrowed view")?;
    Ok(())
}

#[test]
fn invalid_configs_and_dtypes_are_errors() -> Result<()> {
    let ps = || -> Result<Vec<(String, Tensor)>> { Ok(vec![("p".into(), param(&P0)?)]) };
    let bad_sgd = [
        SgdConfig { lr: -1.0, ..Default::default() },
        SgdConfig { nesterov: true, ..Default::default() },
        SgdConfig { momentum: 0.9, dampening: 0.1, nesterov: true, ..Default::default() },
        SgdConfig { weight_decay: f64::NAN, ..Default::default() },
    ];
    for c in bad_sgd {
        assert!(Sgd::new(ps()?, c).is_err(), "{c:?}");
    }
    let bad_adam = [
        AdamConfig { betas: (1.0, 0.999), ..Default::default() },
        AdamConfig { betas: (0.9, -0.1), ..Default::default() },
        AdamConfig { eps: -1e-8, ..Default::default() },
        AdamConfig { lr: f64::INFINITY, ..Default::default() },
    ];
    for c in bad_adam {
        assert!(Adam::new(ps()?, c).is_err() && AdamW::new(ps()?, c).is_err(), "{c:?}");
    }
    let b = Tensor::zeros(&[3], DType::BF16, CPU)?.set_requires_grad(true);
    let err = Adam::new(vec![("w".into(), b)], AdamConfig::default()).expect_err("bf16 params");
    assert!(err.to_string().contains("'w'"), "{err}");
    Ok(())
}

#[test]
fn lr_can_be_read_and_changed() -> Result<()> {
    let p = param(&P0)?;
    let mut opt = Sgd::new(vec![("p".into(), p.clone())], SgdConfig { lr: 0.5, ..Default::default() })?;
    assert_eq!(opt.lr(), 0.5);
    opt.set_lr(0.1);
    assert_eq!(opt.lr(), 0.1);
    run(&mut opt, &p, 1)?;
    assert_close(&p, &sgd_reference(SgdConfig { lr: 0.1, ..Default::default() }, 1), 1e-15, "after set_lr")
}

/// Trains two copies for `first` steps on one, saves and restores the state into a fresh optimizer over
/// an identical copy of the parameter, then checks both give bit-identical further steps.
fn roundtrip(make: &dyn Fn(Tensor) -> Result<Box<dyn Optimizer>>) -> Result<()> {
    let p = param(&P0)?;
    let mut a = make(p.clone())?;
    run(a.as_mut(), &p, 2)?;
    let saved = a.state_tensors()?;
    let q = param(&p.to_vec_f64()?)?;
    let mut b = make(q.clone())?;
    b.load_state_tensors(&saved)?;
    // The saved list is a snapshot: further steps on `a` must not change it.
    let before: Vec<Vec<f64>> = saved.iter().map(|(_, t)| t.to_vec_f64()).collect::<Result<_>>()?;
    for (opt, t) in [(&mut a, &p), (&mut b, &q)] {
        t.set_grad(Some(f64s(&GRADS[2])?))?;
        opt.step()?;
    }
    assert_eq!(p.to_vec::<f64>()?, q.to_vec::<f64>()?, "restored state gives the same step");
    let after: Vec<Vec<f64>> = saved.iter().map(|(_, t)| t.to_vec_f64()).collect::<Result<_>>()?;
    assert_eq!(before, after, "state_tensors returns copies");
    Ok(())
}

#[test]
fn state_roundtrip_gives_identical_subsequent_steps() -> Result<()> {
    let c = AdamConfig { lr: 0.05, weight_decay: 0.1, ..Default::default() };
    roundtrip(&|p| Ok(Box::new(Adam::new(vec![("w".into(), p)], c)?)))?;
    roundtrip(&|p| Ok(Box::new(AdamW::new(vec![("w".into(), p)], c)?)))?;
    let s = SgdConfig { lr: 0.1, momentum: 0.9, dampening: 0.3, ..Default::default() };
    roundtrip(&|p| Ok(Box::new(Sgd::new(vec![("w".into(), p)], s)?)))?;
    Ok(())
}

#[test]
fn restored_state_differs_from_fresh_state() -> Result<()> {
    // Guards the roundtrip test: with the state dropped, the third step would differ.
    let c = AdamConfig { lr: 0.05, ..Default::default() };
    let p = param(&P0)?;
    let mut a = Adam::new(vec![("w".into(), p.clone())], c)?;
    run(&mut a, &p, 2)?;
    let q = param(&p.to_vec_f64()?)?;
    let mut fresh = Adam::new(vec![("w".into(), q.clone())], c)?;
    for (opt, t) in [(&mut a, &p), (&mut fresh, &q)] {
        t.set_grad(Some(f64s(&GRADS[2])?))?;
        opt.step()?;
    }
    assert_ne!(p.to_vec::<f64>()?, q.to_vec::<f64>()?);
    Ok(())
}

#[test]
fn state_names_and_step_are_saved() -> Result<()> {
    let p = param(&P0)?;
    let mut opt = Adam::new(vec![("layer.weight".into(), p.clone())], AdamConfig::default())?;
    run(&mut opt, &p, 3)?;
    let st = opt.state_tensors()?;
    let names: Vec<&str> = st.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["step", "layer.weight.exp_avg", "layer.weight.exp_avg_sq"]);
    assert_eq!(st[0].1.item()?, 3.0);
    assert_eq!(st[0].1.dtype(), DType::I64);
    let q = param(&P0)?;
    let mut other = Adam::new(vec![("layer.weight".into(), q)], AdamConfig::default())?;
    other.load_state_tensors(&st)?;
    assert_eq!(other.step_count(), 3);
    Ok(())
}

#[test]
fn bad_state_is_an_error_naming_the_entry_and_changes_nothing() -> Result<()> {
    let p = param(&P0)?;
    let mut src = Adam::new(vec![("w".into(), p.clone())], AdamConfig::default())?;
    run(&mut src, &p, 2)?;
    let good = src.state_tensors()?;
    let mut dst = Adam::new(vec![("w".into(), param(&P0)?)], AdamConfig::default())?;

    let without = |name: &str| good.iter().filter(|(n, _)| n != name).cloned().collect::<Vec<_>>();
    let replaced = |name: &str, t: Tensor| {
        good.iter().map(|(n, v)| (n.clone(), if n == name { t.clone() } else { v.clone() })).collect::<Vec<_>>()
    };
    let cases = vec![
        ("w.exp_avg", without("w.exp_avg")),
        ("w.exp_avg_sq", without("w.exp_avg_sq")),
        ("step", without("step")),
        ("w.exp_avg", replaced("w.exp_avg", f64s(&[1.0, 2.0])?)),
        ("w.exp_avg_sq", replaced("w.exp_avg_sq", Tensor::zeros(&[3], DType::F32, CPU)?)),
        ("step", replaced("step", Tensor::scalar(-1.0, DType::F64, CPU)?)),
        ("extra.exp_avg", [good.clone(), vec![("extra.exp_avg".to_string(), f64s(&[0.0])?)]].concat()),
    ];
    for (name, state) in cases {
        let err = dst.load_state_tensors(&state).err().unwrap_or_else(|| panic!("accepted bad '{name}'"));
        assert!(err.to_string().contains(&format!("'{name}'")), "error does not name '{name}': {err}");
        assert_eq!(dst.step_count(), 0, "a failed load changed the optimizer");
    }
    // SGD with momentum: a mis-shaped buffer is caught too.
    let mut sgd = Sgd::new(vec![("w".into(), param(&P0)?)], SgdConfig { momentum: 0.9, ..Default::default() })?;
    let bad =
        vec![("step".to_string(), Tensor::scalar(1.0, DType::I64, CPU)?), ("w.momentum_buffer".into(), f64s(&[1.0])?)];
    let err = sgd.load_state_tensors(&bad).expect_err("mis-shaped buffer");
    assert!(err.to_string().contains("'w.momentum_buffer'"), "{err}");
    Ok(())
}

#[test]
fn clip_grad_norm_scales_by_the_global_norm() -> Result<()> {
    let (a, b, none) = (param(&[0.0, 0.0])?, param(&[0.0])?, param(&[1.0])?);
    let set = || -> Result<()> {
        a.set_grad(Some(f64s(&[3.0, 4.0])?))?;
        b.set_grad(Some(f64s(&[12.0])?))
    };
    set()?;
    let params = [a.clone(), b.clone(), none.clone()];
    let norm = clip_grad_norm(&params, 20.0)?;
    assert!((norm - 13.0).abs() < 1e-12, "norm {norm}");
    assert_eq!(a.grad().unwrap().to_vec_f64()?, [3.0, 4.0], "below max_norm nothing changes");

    let norm = clip_grad_norm(&params, 6.5)?;
    assert!((norm - 13.0).abs() < 1e-12, "returns the norm before clipping");
    let s = 6.5 / (13.0 + 1e-6);
    assert_close(&a.grad().unwrap(), &[3.0 * s, 4.0 * s], 1e-14, "a")?;
    assert_close(&b.grad().unwrap(), &[12.0 * s], 1e-14, "b")?;
    assert!(none.grad().is_none());
    assert!((clip_grad_norm(&params, 100.0)? - 6.5).abs() < 1e-5, "norm after clipping is max_norm");

    // f32 gradients, a parameter listed twice counts once, no gradients gives 0, bad max_norm is an error.
    let f = Tensor::zeros(&[2], DType::F32, CPU)?.set_requires_grad(true);
    f.set_grad(Some(Tensor::from_vec(vec![6.0f32, 8.0], &[2], CPU)?))?;
    assert!((clip_grad_norm(&[f.clone(), f.clone()], 1.0)? - 10.0).abs() < 1e-6);
    assert!((f.grad().unwrap().to_vec_f64()?[0] - 0.6).abs() < 1e-6);
    assert_eq!(clip_grad_norm(std::slice::from_ref(&none), 1.0)?, 0.0);
    assert!(clip_grad_norm(&params, -1.0).is_err());
    assert!(clip_grad_norm(&params, f64::NAN).is_err());

    // Mixed dtypes and a non-contiguous gradient: the norm is the f64 norm of the values as stored.
    let mut g = Generator::new(3);
    let grads = [
        Tensor::randn_with(&mut g, &[5, 7], DType::F32, CPU)?.transpose(0, 1)?,
        Tensor::randn_with(&mut g, &[100], DType::BF16, CPU)?,
        Tensor::randn_with(&mut g, &[9], DType::F64, CPU)?,
        Tensor::randn_with(&mut g, &[0], DType::F16, CPU)?,
    ];
    let want = grads.iter().flat_map(|t| t.to_vec_f64().unwrap()).map(|v| v * v).sum::<f64>().sqrt();
    let ps: Vec<Tensor> = grads
        .iter()
        .map(|t| {
            let p = Tensor::zeros(t.dims(), t.dtype(), CPU).unwrap().set_requires_grad(true);
            p.set_grad(Some(t.clone())).unwrap();
            p
        })
        .collect();
    let norm = clip_grad_norm(&ps, 1e9)?;
    assert!((norm - want).abs() < 1e-6 * want, "norm {norm}, want {want}");
    Ok(())
}

#[test]
fn warmup_cosine_hits_known_values() {
    let s = WarmupCosine { max_lr: 6e-4, min_lr: 6e-5, warmup_steps: 10, total_steps: 110 };
    let close = |step: usize, want: f64| {
        let got = s.lr_at(step);
        assert!((got - want).abs() < 1e-15, "step {step}: {got}, want {want}");
    };
    close(0, 6e-5); // (0+1)/10 · max
    close(4, 3e-4);
    close(9, 6e-4);
    close(10, 6e-4); // cosine starts at max
    close(60, 6e-5 + 0.5 * (6e-4 - 6e-5)); // half way
    close(35, 6e-5 + 0.5 * (1.0 + (std::f64::consts::PI * 0.25).cos()) * (6e-4 - 6e-5));
    close(110, 6e-5);
    close(10_000, 6e-5);
    // Monotone decay after warmup.
    assert!((10..110).all(|i| s.lr_at(i + 1) <= s.lr_at(i)));
    // No warmup and total <= warmup are handled without dividing by zero.
    let n = WarmupCosine { max_lr: 1.0, min_lr: 0.0, warmup_steps: 0, total_steps: 0 };
    assert_eq!(n.lr_at(0), 0.0);
    let w = WarmupCosine { max_lr: 1.0, min_lr: 0.1, warmup_steps: 5, total_steps: 5 };
    assert_eq!((w.lr_at(4), w.lr_at(5)), (1.0, 0.1));
    assert_eq!(Constant(0.3).lr_at(12345), 0.3);
}

#[test]
fn adam_trains_a_linear_regression() -> Result<()> {
    // End to end: module parameters, backward, step, zero_grad.
    let lin = Linear::new(2, 1, true, DType::F32, CPU, &mut Generator::new(0))?;
    let x = Tensor::randn_with(&mut Generator::new(1), &[64, 2], DType::F32, CPU)?;
    let y = x.matmul(&Tensor::from_vec(vec![2.0f32, -3.0], &[2, 1], CPU)?)?.add_scalar(0.5)?;
    let mut opt = Adam::new(lin.named_parameters(), AdamConfig { lr: 0.05, ..Default::default() })?;
    let mut last = f64::INFINITY;
    for _ in 0..300 {
        opt.zero_grad();
        let loss = lin.forward(&x)?.mse_loss(&y)?;
        last = loss.item()?;
        loss.backward()?;
        opt.step()?;
    }
    assert!(last < 1e-3, "loss {last}");
    assert_close(&lin.weight, &[2.0, -3.0], 0.02, "learned weight")
}

/// An optimizer over named parameters, as a test builds each one under comparison.
type MakeOptimizer = dyn Fn(Vec<(String, Tensor)>) -> Result<Box<dyn Optimizer>>;

/// Parameters that a batched step must still update exactly once and exactly as alone: two views into one
/// buffer (not dense: they run one at a time), two parameters given one gradient tensor (read twice in one
/// batch), an f32 parameter beside the f64 ones with its gradient at an offset in a bigger buffer, one
/// without a gradient (left alone), and one whose first gradient comes at the second step (its state
/// starts while the others' is under way).
fn assert_batched_steps_match_single_ones(make_opt: &MakeOptimizer) -> Result<()> {
    let mut g = Generator::new(7);
    let shared = Tensor::randn_with(&mut g, &[10], DType::F64, CPU)?;
    let make = |gen: &mut Generator| -> Result<Vec<Tensor>> {
        let shared = shared.mul_scalar(1.0)?; // a buffer of its own for each run
        let fresh = |gen: &mut Generator, n: usize, dt: DType| {
            Ok::<_, munja::Error>(Tensor::randn_with(gen, &[n], dt, CPU)?.set_requires_grad(true))
        };
        Ok(vec![
            shared.narrow(0, 0, 4)?.detach().set_requires_grad(true),
            shared.narrow(0, 4, 6)?.detach().set_requires_grad(true),
            fresh(gen, 5, DType::F64)?,
            fresh(gen, 5, DType::F64)?,
            fresh(gen, 300, DType::F32)?,
            fresh(gen, 3, DType::F64)?,
            fresh(gen, 7, DType::F64)?,
        ])
    };
    let (together, alone) = (make(&mut Generator::new(1))?, make(&mut Generator::new(1))?);
    let named = |ps: &[Tensor]| ps.iter().enumerate().map(|(i, p)| (format!("p{i}"), p.clone())).collect::<Vec<_>>();
    let mut opt = make_opt(named(&together))?;
    let mut singles: Vec<Box<dyn Optimizer>> =
        alone.iter().map(|p| make_opt(vec![("p".to_string(), p.clone())])).collect::<Result<_>>()?;
    for step in 0..3 {
        let common = Tensor::randn_with(&mut g, &[5], DType::F64, CPU)?;
        for (i, (a, b)) in together.iter().zip(&alone).enumerate() {
            if i == 5 || (i == 6 && step == 0) {
                continue; // no gradient
            }
            let grad = match i {
                2 | 3 => common.clone(),
                // A run at an offset in a bigger buffer, as data-parallel gradients sit in their bucket.
                4 => Tensor::randn_with(&mut g, &[400], DType::F32, CPU)?.narrow(0, 7, 300)?,
                _ => Tensor::randn_with(&mut g, a.dims(), a.dtype(), CPU)?,
            };
            a.set_grad(Some(grad.clone()))?;
            b.set_grad(Some(grad.mul_scalar(1.0)?))?; // a buffer of its own
        }
        opt.step()?;
        for s in singles.iter_mut() {
            s.step()?;
        }
        for (i, (a, b)) in together.iter().zip(&alone).enumerate() {
            assert_eq!(a.to_vec_f64()?, b.to_vec_f64()?, "step {step}: parameter {i}");
        }
    }
    Ok(())
}

#[test]
fn adam_step_updates_each_parameter_as_if_alone_whatever_shares_its_buffers() -> Result<()> {
    let cfg = AdamConfig { lr: 0.05, betas: (0.9, 0.99), eps: 1e-8, weight_decay: 0.1 };
    assert_batched_steps_match_single_ones(&move |ps| Ok(Box::new(AdamW::new(ps, cfg)?)))
}

#[test]
fn sgd_step_updates_each_parameter_as_if_alone_whatever_shares_its_buffers() -> Result<()> {
    let momentum = SgdConfig { lr: 0.05, momentum: 0.9, dampening: 0.1, weight_decay: 0.01, nesterov: false };
    let nesterov = SgdConfig { dampening: 0.0, nesterov: true, ..momentum };
    let plain = SgdConfig { momentum: 0.0, dampening: 0.0, ..momentum };
    for cfg in [momentum, nesterov, plain] {
        assert_batched_steps_match_single_ones(&move |ps| Ok(Box::new(Sgd::new(ps, cfg)?)))?;
    }
    Ok(())
}

/// The deferred form leaves the norm a tensor (f64, one element) on the gradients' device, scales what
/// `clip_grad_norm` scales, never writes into a gradient buffer the caller still holds, and is None without
/// gradients. A norm a hair over max_norm (within the 1e-6) is clipped, as PyTorch's clamped coefficient is.
#[test]
fn clip_grad_norm_deferred_returns_the_norm_as_a_tensor_and_leaves_held_gradients_alone() -> Result<()> {
    use munja::optim::clip_grad_norm_deferred;
    let (a, b) = (param(&[0.0, 0.0])?, param(&[0.0])?);
    let held = f64s(&[3.0, 4.0])?;
    a.set_grad(Some(held.clone()))?;
    b.set_grad(Some(f64s(&[12.0])?))?;
    let norm = clip_grad_norm_deferred(&[a.clone(), b.clone()], 6.5)?.expect("gradients");
    assert_eq!((norm.dims().to_vec(), norm.dtype(), norm.device()), (vec![], DType::F64, CPU));
    assert!((norm.item()? - 13.0).abs() < 1e-12);
    let s = 6.5 / (13.0 + 1e-6);
    assert_close(&a.grad().unwrap(), &[3.0 * s, 4.0 * s], 1e-14, "a")?;
    assert_eq!(held.to_vec_f64()?, [3.0, 4.0], "the caller's tensor is not scaled in place");
    assert!(clip_grad_norm_deferred(&[param(&[1.0])?], 1.0)?.is_none());

    let c = param(&[0.0])?;
    c.set_grad(Some(f64s(&[1.0 + 5e-7])?))?;
    clip_grad_norm(std::slice::from_ref(&c), 1.0)?;
    let want = (1.0 + 5e-7) * (1.0 / (1.0 + 5e-7 + 1e-6));
    assert_eq!(c.grad().unwrap().to_vec_f64()?, [want]);
    Ok(())
}
