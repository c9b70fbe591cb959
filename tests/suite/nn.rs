//! Layers, containers and initialisers: parameter names and shapes, forward passes against the same
//! arithmetic written out by hand in f64, train/eval switching, and initialiser statistics.

use crate::common::rel_err;
use munja::nn::{
    init, Dropout, Embedding, Gelu, GeluErf, LayerNorm, Linear, Module, Relu, RmsNorm, Sequential, Sigmoid, Silu, Tanh,
};
use munja::{DType, Device, Error, Generator, Result, Tensor};

const CPU: Device = Device::Cpu;

fn names(m: &dyn Module) -> Vec<String> {
    m.named_parameters().into_iter().map(|(n, _)| n).collect()
}

/// (mean, population std) of a tensor's elements.
fn stats(t: &Tensor) -> Result<(f64, f64)> {
    let v = t.to_vec_f64()?;
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    Ok((mean, var.sqrt()))
}

fn randn(shape: &[usize], seed: u64) -> Result<Tensor> {
    Tensor::randn_with(&mut Generator::new(seed), shape, DType::F32, CPU)
}

/// y[r, o] = Σ_k x[r, k]·w[o, k] + b[o] in f64.
fn manual_linear(x: &[f64], w: &[f64], b: Option<&[f64]>, inf: usize, outf: usize) -> Vec<f64> {
    let rows = x.len() / inf;
    let mut y = vec![0.0; rows * outf];
    for r in 0..rows {
        for o in 0..outf {
            let dot: f64 = (0..inf).map(|k| x[r * inf + k] * w[o * inf + k]).sum();
            y[r * outf + o] = dot + b.map_or(0.0, |b| b[o]);
        }
    }
    y
}

#[test]
fn linear_has_named_parameters_of_pytorch_shape() -> Result<()> {
    let mut g = Generator::new(0);
    let lin = Linear::new(4, 3, true, DType::F32, CPU, &mut g)?;
    assert_eq!(names(&lin), ["weight", "bias"]);
    assert_eq!(lin.weight.dims(), &[3, 4]);
    assert_eq!(lin.bias.as_ref().unwrap().dims(), &[3]);
    assert_eq!(lin.num_parameters(), 15);
    let nb = Linear::new(4, 3, false, DType::F32, CPU, &mut g)?;
    assert_eq!(names(&nb), ["weight"]);
    assert_eq!(nb.num_parameters(), 12);
    Ok(())
}

#[test]
fn every_layer_parameter_requires_grad() -> Result<()> {
    let mut g = Generator::new(0);
    let layers: Vec<Box<dyn Module>> = vec![
        Box::new(Linear::new(3, 2, true, DType::F32, CPU, &mut g)?),
        Box::new(Embedding::new(5, 3, DType::F32, CPU, &mut g)?),
        Box::new(LayerNorm::new(3, 1e-5, DType::F32, CPU)?),
        Box::new(LayerNorm::no_bias(3, 1e-5, DType::F32, CPU)?),
        Box::new(RmsNorm::new(3, 1e-6, DType::F32, CPU)?),
    ];
    let mut count = 0;
    for l in &layers {
        for (n, p) in l.named_parameters() {
            assert!(p.requires_grad() && p.is_leaf(), "{n} is not a trainable leaf");
            count += 1;
        }
    }
    assert_eq!(count, 7);
    Ok(())
}

#[test]
fn linear_init_is_pytorch_default_uniform() -> Result<()> {
    let lin = Linear::new(256, 128, true, DType::F32, CPU, &mut Generator::new(3))?;
    let bound = 1.0 / 16.0;
    for (n, p) in lin.named_parameters() {
        let v = p.to_vec_f64()?;
        assert!(v.iter().all(|x| x.abs() <= bound), "{n} leaves U(-1/sqrt(in), 1/sqrt(in))");
    }
    let (mean, std) = stats(&lin.weight)?;
    assert!(mean.abs() < 2e-3, "weight mean {mean}");
    assert!((std - bound / 3f64.sqrt()).abs() < 1e-3, "weight std {std}");
    Ok(())
}

#[test]
fn linear_forward_matches_manual_matmul() -> Result<()> {
    let lin = Linear::new(4, 3, true, DType::F64, CPU, &mut Generator::new(1))?;
    let x = Tensor::randn_with(&mut Generator::new(2), &[2, 5, 4], DType::F64, CPU)?;
    let y = lin.forward(&x)?;
    assert_eq!(y.dims(), &[2, 5, 3]);
    let (w, b) = (lin.weight.to_vec_f64()?, lin.bias.as_ref().unwrap().to_vec_f64()?);
    let want = manual_linear(&x.to_vec_f64()?, &w, Some(&b), 4, 3);
    assert!(rel_err(&y, &Tensor::from_vec(want, &[2, 5, 3], CPU)?)? < 1e-12);

    // A single vector keeps its rank; without bias nothing is added.
    let nb = Linear::new(4, 3, false, DType::F64, CPU, &mut Generator::new(1))?;
    let v = Tensor::from_vec(vec![1.0, -2.0, 0.5, 3.0], &[4], CPU)?;
    let yv = nb.forward(&v)?;
    assert_eq!(yv.dims(), &[3]);
    let want = manual_linear(&v.to_vec_f64()?, &nb.weight.to_vec_f64()?, None, 4, 3);
    assert!(rel_err(&yv, &Tensor::from_vec(want, &[3], CPU)?)? < 1e-12);
    Ok(())
}

#[test]
fn linear_backward_reaches_weight_and_bias() -> Result<()> {
    let lin = Linear::new(3, 2, true, DType::F64, CPU, &mut Generator::new(1))?;
    let x = Tensor::randn_with(&mut Generator::new(5), &[4, 3], DType::F64, CPU)?;
    lin.forward(&x)?.sum_all()?.backward()?;
    // d/dW Σ y = Σ_rows x (each output row), d/db = number of rows.
    let colsum = x.sum(&[0], false)?.to_vec_f64()?;
    let gw = lin.weight.grad().expect("weight grad").to_vec_f64()?;
    for o in 0..2 {
        for k in 0..3 {
            assert!((gw[o * 3 + k] - colsum[k]).abs() < 1e-12);
        }
    }
    assert_eq!(lin.bias.as_ref().unwrap().grad().expect("bias grad").to_vec_f64()?, [4.0, 4.0]);
    Ok(())
}

#[test]
fn linear_rejects_input_of_wrong_width() -> Result<()> {
    let lin = Linear::new(4, 3, true, DType::F32, CPU, &mut Generator::new(0))?;
    let err = lin.forward(&randn(&[2, 5], 0)?).expect_err("width 5 into in_features 4");
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    assert!(err.to_string().contains("in_features = 4"), "{err}");
    assert!(lin.forward(&Tensor::scalar(1.0, DType::F32, CPU)?).is_err());
    Ok(())
}

#[test]
fn layers_are_reproducible_from_their_seed() -> Result<()> {
    let a = Linear::new(8, 8, true, DType::F32, CPU, &mut Generator::new(42))?;
    let b = Linear::new(8, 8, true, DType::F32, CPU, &mut Generator::new(42))?;
    let c = Linear::new(8, 8, true, DType::F32, CPU, &mut Generator::new(43))?;
    assert_eq!(a.weight.to_vec::<f32>()?, b.weight.to_vec::<f32>()?);
    assert_eq!(a.bias.as_ref().unwrap().to_vec::<f32>()?, b.bias.as_ref().unwrap().to_vec::<f32>()?);
    assert_ne!(a.weight.to_vec::<f32>()?, c.weight.to_vec::<f32>()?);
    // The generator advances, so two layers drawn from one generator differ.
    let mut g = Generator::new(42);
    let (d, e) = (Embedding::new(4, 4, DType::F32, CPU, &mut g)?, Embedding::new(4, 4, DType::F32, CPU, &mut g)?);
    assert_ne!(d.weight.to_vec::<f32>()?, e.weight.to_vec::<f32>()?);
    Ok(())
}

#[test]
fn embedding_looks_up_rows_for_ids_of_any_shape() -> Result<()> {
    let emb = Embedding::new(10, 4, DType::F32, CPU, &mut Generator::new(0))?;
    assert_eq!(names(&emb), ["weight"]);
    let ids = Tensor::from_vec(vec![3i64, 0, 9, 3, 7, 1], &[2, 3], CPU)?;
    let y = emb.forward(&ids)?;
    assert_eq!(y.dims(), &[2, 3, 4]);
    let (w, y) = (emb.weight.to_vec::<f32>()?, y.to_vec::<f32>()?);
    for (i, id) in [3usize, 0, 9, 3, 7, 1].into_iter().enumerate() {
        assert_eq!(y[i * 4..i * 4 + 4], w[id * 4..id * 4 + 4], "row {i}");
    }
    assert!(emb.forward(&Tensor::from_vec(vec![1.0f32], &[1], CPU)?).is_err(), "float ids are an error");
    let big = Embedding::new(512, 512, DType::F32, CPU, &mut Generator::new(1))?;
    let (mean, std) = stats(&big.weight)?;
    assert!(mean.abs() < 5e-3 && (std - 1.0).abs() < 5e-3, "N(0,1) init: mean {mean} std {std}");
    Ok(())
}

#[test]
fn layer_norm_and_rms_norm_match_their_formulas() -> Result<()> {
    let ln = LayerNorm::new(5, 1e-5, DType::F64, CPU)?;
    assert_eq!(names(&ln), ["weight", "bias"]);
    assert_eq!(ln.weight.to_vec_f64()?, [1.0; 5]);
    assert_eq!(ln.bias.as_ref().unwrap().to_vec_f64()?, [0.0; 5]);
    assert_eq!(names(&LayerNorm::no_bias(5, 1e-5, DType::F64, CPU)?), ["weight"]);
    // Non-trivial affine parameters, so the test sees them used.
    ln.weight.assign(&Tensor::from_vec(vec![1.0, 2.0, -1.0, 0.5, 3.0], &[5], CPU)?)?;
    ln.bias.as_ref().unwrap().assign(&Tensor::from_vec(vec![0.1, 0.0, -0.2, 1.0, 0.3], &[5], CPU)?)?;
    let rms = RmsNorm::new(5, 1e-6, DType::F64, CPU)?;
    assert_eq!(names(&rms), ["weight"]);
    rms.weight.assign(&Tensor::from_vec(vec![0.5, 1.0, 2.0, -1.0, 1.5], &[5], CPU)?)?;

    let x = Tensor::randn_with(&mut Generator::new(9), &[3, 5], DType::F64, CPU)?;
    let (xv, w, b) = (x.to_vec_f64()?, ln.weight.to_vec_f64()?, ln.bias.as_ref().unwrap().to_vec_f64()?);
    let rw = rms.weight.to_vec_f64()?;
    let (mut want_ln, mut want_rms) = (vec![], vec![]);
    for row in xv.chunks(5) {
        let mean = row.iter().sum::<f64>() / 5.0;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 5.0;
        let ms = row.iter().map(|v| v * v).sum::<f64>() / 5.0;
        for k in 0..5 {
            want_ln.push((row[k] - mean) / (var + 1e-5).sqrt() * w[k] + b[k]);
            want_rms.push(row[k] / (ms + 1e-6).sqrt() * rw[k]);
        }
    }
    assert!(rel_err(&ln.forward(&x)?, &Tensor::from_vec(want_ln, &[3, 5], CPU)?)? < 1e-10);
    assert!(rel_err(&rms.forward(&x)?, &Tensor::from_vec(want_rms, &[3, 5], CPU)?)? < 1e-10);
    assert!(ln.forward(&Tensor::zeros(&[3, 4], DType::F64, CPU)?).is_err(), "wrong width");
    Ok(())
}

#[test]
fn dropout_drops_in_training_and_is_identity_in_eval() -> Result<()> {
    munja::manual_seed(11);
    let d = Dropout::new(0.25)?;
    assert!(d.is_training(), "modules start in training mode");
    let x = Tensor::ones(&[20_000], DType::F32, CPU)?;
    let y = d.forward(&x)?.to_vec::<f32>()?;
    let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
    assert!((zeros - 0.25).abs() < 0.02, "dropped fraction {zeros}");
    assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6), "kept elements scale by 1/(1-p)");
    d.eval();
    assert!(!d.is_training());
    assert_eq!(d.forward(&x)?.to_vec::<f32>()?, x.to_vec::<f32>()?);
    d.train();
    assert!(d.forward(&x)?.to_vec::<f32>()?.contains(&0.0));
    for bad in [-0.1, 1.5, f64::NAN] {
        assert!(Dropout::new(bad).is_err(), "p = {bad}");
    }
    Ok(())
}

#[test]
fn dropout_keeps_exactly_where_the_generators_uniform_draw_reaches_p() -> Result<()> {
    // The mask is the generator's uniform draw (the same one Tensor::rand_with makes) compared with p,
    // in every float dtype, and the generator ends where that draw leaves it.
    for dt in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        let x = Tensor::randn_with(&mut Generator::new(3), &[4, 501], dt, CPU)?;
        let (mut g, mut h) = (Generator::new(21), Generator::new(21));
        let y = x.dropout_with(&mut g, 0.3, true)?;
        let u = Tensor::rand_with(&mut h, &[4, 501], dt, CPU)?;
        let (y, u, x) = (y.to_vec_f64()?, u.to_vec_f64()?, x.to_vec_f64()?);
        let p = Tensor::scalar(0.3, dt, CPU)?.to_vec_f64()?[0];
        let scale = Tensor::scalar(1.0 / 0.7, dt, CPU)?.to_vec_f64()?[0];
        for i in 0..y.len() {
            let want = if u[i] >= p { x[i] * scale } else { 0.0 };
            assert!((y[i] - want).abs() <= 1e-2 * want.abs(), "{dt} element {i}: {} vs {want}", y[i]);
            assert_eq!(
                y[i] == 0.0,
                u[i] < p || x[i] == 0.0,
                "{dt} element {i}: kept where u < p or dropped where u >= p"
            );
        }
        assert_eq!(g.uniform(1), h.uniform(1), "{dt}: the generators must stand at the same place");
    }
    Ok(())
}

/// A scalar function to check an activation against.
type Scalar = Box<dyn Fn(f64) -> f64>;

#[test]
fn activations_apply_their_functions() -> Result<()> {
    let x = Tensor::from_vec(vec![-2.0f64, -0.5, 0.0, 0.7, 3.0], &[5], CPU)?;
    let xv = x.to_vec_f64()?;
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let gelu_tanh =
        |v: f64| 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh());
    let cases: Vec<(&str, Box<dyn Module>, Scalar)> = vec![
        ("relu", Box::new(Relu), Box::new(|v: f64| v.max(0.0))),
        ("tanh", Box::new(Tanh), Box::new(|v: f64| v.tanh())),
        ("sigmoid", Box::new(Sigmoid), Box::new(sig)),
        ("silu", Box::new(Silu), Box::new(move |v: f64| v * sig(v))),
        ("gelu", Box::new(Gelu), Box::new(gelu_tanh)),
        ("gelu_erf", Box::new(GeluErf), Box::new(|v: f64| 0.5 * v * (1.0 + libm_erf(v / 2f64.sqrt())))),
    ];
    for (name, m, f) in cases {
        assert!(m.named_parameters().is_empty());
        let got = m.forward(&x)?.to_vec_f64()?;
        for (g, v) in got.iter().zip(&xv) {
            assert!((g - f(*v)).abs() < 1e-6, "{name}({v}) = {g}, want {}", f(*v));
        }
    }
    Ok(())
}

/// erf by its Abramowitz–Stegun 7.1.26 approximation (|error| < 1.5e-7), enough to tell exact GELU from
/// the tanh form (they differ by ~1e-4 here).
fn libm_erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let y = 1.0 - poly * (-x * x).exp();
    if x >= 0.0 {
        y
    } else {
        -y
    }
}

#[test]
fn sequential_names_children_by_position_and_chains_forward() -> Result<()> {
    let mut g = Generator::new(0);
    let l0 = Linear::new(4, 8, true, DType::F64, CPU, &mut g)?;
    let l2 = Linear::new(8, 2, true, DType::F64, CPU, &mut g)?;
    let (w0, b0) = (l0.weight.to_vec_f64()?, l0.bias.as_ref().unwrap().to_vec_f64()?);
    let (w2, b2) = (l2.weight.to_vec_f64()?, l2.bias.as_ref().unwrap().to_vec_f64()?);
    let seq = Sequential::new().push(l0).push(Relu).push(l2);
    assert_eq!(seq.len(), 3);
    assert_eq!(names(&seq), ["0.weight", "0.bias", "2.weight", "2.bias"]);
    assert_eq!(seq.num_parameters(), 4 * 8 + 8 + 8 * 2 + 2);

    let x = Tensor::randn_with(&mut Generator::new(1), &[3, 4], DType::F64, CPU)?;
    let h: Vec<f64> = manual_linear(&x.to_vec_f64()?, &w0, Some(&b0), 4, 8).into_iter().map(|v| v.max(0.0)).collect();
    let want = manual_linear(&h, &w2, Some(&b2), 8, 2);
    assert!(rel_err(&seq.forward(&x)?, &Tensor::from_vec(want, &[3, 2], CPU)?)? < 1e-12);

    let nested = Sequential::new().push(Relu).push(seq);
    assert_eq!(names(&nested), ["1.0.weight", "1.0.bias", "1.2.weight", "1.2.bias"]);
    assert_eq!(names(&Sequential::new()), Vec::<String>::new());
    Ok(())
}

#[test]
fn sequential_forwards_train_and_eval_to_children() -> Result<()> {
    munja::manual_seed(5);
    let seq = Sequential::new().push(Relu).push(Sequential::new().push(Dropout::new(0.5)?));
    let x = Tensor::ones(&[1000], DType::F32, CPU)?;
    assert!(seq.forward(&x)?.to_vec::<f32>()?.contains(&0.0), "training by default");
    seq.eval();
    assert_eq!(seq.forward(&x)?.to_vec::<f32>()?, vec![1.0; 1000]);
    seq.train();
    assert!(seq.forward(&x)?.to_vec::<f32>()?.contains(&0.0));
    Ok(())
}

#[test]
fn normal_and_uniform_have_the_requested_statistics() -> Result<()> {
    let t = Tensor::zeros(&[500, 400], DType::F32, CPU)?;
    init::normal_(&t, 0.5, 2.0, &mut Generator::new(1))?;
    let (m, s) = stats(&t)?;
    assert!((m - 0.5).abs() < 0.02 && (s - 2.0).abs() < 0.02, "normal: mean {m} std {s}");

    init::uniform_(&t, -3.0, 1.0, &mut Generator::new(2))?;
    let v = t.to_vec_f64()?;
    assert!(v.iter().all(|&x| (-3.0..1.0).contains(&x)));
    let (m, s) = stats(&t)?;
    assert!((m + 1.0).abs() < 0.01 && (s - 4.0 / 12f64.sqrt()).abs() < 0.01, "uniform: mean {m} std {s}");

    init::zeros_(&t)?;
    assert!(t.to_vec_f64()?.iter().all(|&x| x == 0.0));
    init::ones_(&t)?;
    assert!(t.to_vec_f64()?.iter().all(|&x| x == 1.0));
    init::constant_(&t, -0.25)?;
    assert!(t.to_vec_f64()?.iter().all(|&x| x == -0.25));
    Ok(())
}

#[test]
fn kaiming_and_xavier_use_pytorch_fans() -> Result<()> {
    assert_eq!(init::fan_in_and_fan_out(&[16, 8, 3, 3])?, (72, 144));
    assert_eq!(init::fan_in_and_fan_out(&[300, 200])?, (200, 300));
    assert!(init::fan_in_and_fan_out(&[7]).is_err());

    let t = Tensor::zeros(&[600, 400], DType::F32, CPU)?;
    let check_uniform = |t: &Tensor, bound: f64, what: &str| -> Result<()> {
        let v = t.to_vec_f64()?;
        assert!(v.iter().all(|x| x.abs() <= bound), "{what} exceeds bound {bound}");
        let (m, s) = stats(t)?;
        assert!(m.abs() < bound * 0.01 && (s / (bound / 3f64.sqrt()) - 1.0).abs() < 0.01, "{what}: {m} {s}");
        Ok(())
    };
    let check_normal = |t: &Tensor, std: f64, what: &str| -> Result<()> {
        let (m, s) = stats(t)?;
        assert!(m.abs() < std * 0.01 && (s / std - 1.0).abs() < 0.01, "{what}: mean {m} std {s} want {std}");
        Ok(())
    };
    let mut g = Generator::new(3);
    init::kaiming_uniform_(&t, 0.0, &mut g)?;
    check_uniform(&t, (6.0 / 400.0f64).sqrt(), "kaiming_uniform_ a=0")?;
    init::kaiming_uniform_(&t, 5f64.sqrt(), &mut g)?;
    check_uniform(&t, 1.0 / 20.0, "kaiming_uniform_ a=sqrt(5)")?;
    init::kaiming_normal_(&t, &mut g)?;
    check_normal(&t, (2.0 / 400.0f64).sqrt(), "kaiming_normal_")?;
    init::xavier_uniform_(&t, 2.0, &mut g)?;
    check_uniform(&t, 2.0 * (6.0 / 1000.0f64).sqrt(), "xavier_uniform_")?;
    init::xavier_normal_(&t, 0.5, &mut g)?;
    check_normal(&t, 0.5 * (2.0 / 1000.0f64).sqrt(), "xavier_normal_")?;
    Ok(())
}

#[test]
fn initialisers_are_seeded_and_check_their_input() -> Result<()> {
    let draw = |seed: u64| -> Result<Vec<f32>> {
        let t = Tensor::zeros(&[64, 32], DType::F32, CPU)?;
        init::xavier_uniform_(&t, 1.0, &mut Generator::new(seed))?;
        t.to_vec::<f32>()
    };
    assert_eq!(draw(1)?, draw(1)?);
    assert_ne!(draw(1)?, draw(2)?);

    // bf16 gets the nearest bf16 of the f64 draw.
    let b = Tensor::zeros(&[1000], DType::BF16, CPU)?;
    init::normal_(&b, 0.0, 1.0, &mut Generator::new(4))?;
    let f = Tensor::zeros(&[1000], DType::F64, CPU)?;
    init::normal_(&f, 0.0, 1.0, &mut Generator::new(4))?;
    assert_eq!(b.to_vec_f64()?, f.to_dtype(DType::BF16)?.to_vec_f64()?);

    let mut g = Generator::new(0);
    assert!(init::normal_(&Tensor::zeros(&[4], DType::I64, CPU)?, 0.0, 1.0, &mut g).is_err());
    assert!(init::normal_(&f, 0.0, -1.0, &mut g).is_err());
    assert!(init::uniform_(&f, 1.0, 0.0, &mut g).is_err());
    assert!(init::kaiming_uniform_(&f, 0.0, &mut g).is_err(), "1-D has no fan");
    assert!(init::xavier_normal_(&Tensor::zeros(&[0, 0], DType::F32, CPU)?, 1.0, &mut g).is_err());
    Ok(())
}

#[test]
fn bf16_linear_runs() -> Result<()> {
    let lin = Linear::new(8, 4, true, DType::BF16, CPU, &mut Generator::new(0))?;
    let x = Tensor::randn_with(&mut Generator::new(1), &[2, 8], DType::BF16, CPU)?;
    let y = lin.forward(&x)?;
    assert_eq!((y.dims(), y.dtype()), (&[2usize, 4][..], DType::BF16));
    let (w, b) = (lin.weight.to_vec_f64()?, lin.bias.as_ref().unwrap().to_vec_f64()?);
    let want = manual_linear(&x.to_vec_f64()?, &w, Some(&b), 8, 4);
    assert!(rel_err(&y, &Tensor::from_vec(want, &[2, 4], CPU)?)? < 1e-2);
    Ok(())
}
