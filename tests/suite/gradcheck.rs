//! Gradient checks: every differentiable op's backward rule against central finite differences in f64,
//! plus the autograd engine's bookkeeping (accumulation, no_grad, detach, freed graphs, flat memory).
//!
//! The checker reduces an op's output to a scalar with fixed random weights, L = Σ f(x)·w, so every
//! output element contributes with a different coefficient: a gradient routed to the wrong element or
//! summed with the wrong multiplicity cannot cancel out the way it could against a plain sum.

use munja::{no_grad, DType, Device, Generator, Result, Tensor};

/// Finite-difference step. With f64 and a central difference the truncation error is O(h²) ≈ 1e-12 and
/// the rounding error about eps·Σ|f·w|/h ≈ 1e-10·Σ|f·w|, both far below the tolerance.
const H: f64 = 1e-6;
/// Relative tolerance between the analytic and numerical gradient.
const RTOL: f64 = 1e-6;
/// Absolute floor per unit of Σ|f(x)·w|: the numerical derivative of a sum of large terms cannot resolve
/// differences below eps·Σ|f·w|/h, so the floor scales with the size of the terms.
const ATOL_PER_UNIT: f64 = 1e-8;

fn cpu_f64(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, Device::Cpu).unwrap()
}

/// Standard normal f64 values from a fixed seed.
fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn_with(&mut Generator::new(seed), shape, DType::F64, Device::Cpu).unwrap()
}

/// Uniform f64 values in [lo, hi) from a fixed seed.
fn uniform(shape: &[usize], lo: f64, hi: f64, seed: u64) -> Tensor {
    let u = Tensor::rand_with(&mut Generator::new(seed), shape, DType::F64, Device::Cpu).unwrap();
    cpu_f64(u.to_vec_f64().unwrap().iter().map(|x| lo + (hi - lo) * x).collect(), shape)
}

/// Normal values moved at least `gap` away from every kink, so a ±h step never crosses one.
fn avoiding(shape: &[usize], seed: u64, kinks: &[f64], gap: f64) -> Tensor {
    let v = randn(shape, seed).to_vec_f64().unwrap();
    let moved = v
        .into_iter()
        .map(|mut x| {
            while let Some(&k) = kinks.iter().find(|&&k| (x - k).abs() < gap) {
                x = if x >= k { k + 1.5 * gap } else { k - 1.5 * gap };
            }
            x
        })
        .collect();
    cpu_f64(moved, shape)
}

/// Values a shuffled 0.25 apart: no ties, so max/min/maximum have a unique, stable winner.
fn distinct(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let perm = Generator::new(seed).permutation(n);
    cpu_f64(perm.iter().map(|&p| (p as f64 - n as f64 / 2.0) * 0.25 + 0.03).collect(), shape)
}

fn i64s(v: &[i64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape, Device::Cpu).unwrap()
}

fn mask(v: &[u8], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape, Device::Cpu).unwrap()
}

/// Compares the analytic gradient of L = Σ f(inputs)·w with respect to every input against central
/// differences. Inputs must be f64; `f` may take views of them (transposes, narrows) to exercise
/// non-contiguous layouts. Returns a description of the first element that disagrees.
fn check_grads(inputs: &[&Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) -> std::result::Result<(), String> {
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.dims().to_vec()).collect();
    let mut vals: Vec<Vec<f64>> = inputs.iter().map(|t| t.to_vec_f64().unwrap()).collect();
    let make = |vals: &[Vec<f64>], grad: bool| -> Vec<Tensor> {
        vals.iter().zip(&shapes).map(|(v, s)| cpu_f64(v.clone(), s).set_requires_grad(grad)).collect()
    };
    let err = |e: munja::Error| e.to_string();

    let leaves = make(&vals, true);
    let out = f(&leaves).map_err(err)?;
    if out.dtype() != DType::F64 {
        return Err(format!("the function returned {} instead of f64", out.dtype()));
    }
    let w = randn(out.dims(), 0xC0FFEE);
    let terms: f64 = out.mul(&w).map_err(err)?.to_vec_f64().unwrap().iter().map(|t| t.abs()).sum();
    let atol = ATOL_PER_UNIT * terms.max(1.0);
    out.mul(&w).map_err(err)?.sum_all().map_err(err)?.backward().map_err(err)?;

    let loss_at = |vals: &[Vec<f64>]| -> Result<f64> {
        no_grad(|| {
            let ts = make(vals, false);
            f(&ts)?.mul(&w)?.sum_all()?.item()
        })
    };
    for (i, leaf) in leaves.iter().enumerate() {
        let analytic = match leaf.grad() {
            Some(g) => {
                if g.dims() != leaf.dims() || g.dtype() != DType::F64 {
                    return Err(format!("input {i}: gradient is {:?} {} for {:?}", g.dims(), g.dtype(), leaf.dims()));
                }
                g.to_vec_f64().unwrap()
            }
            // No gradient reached this input: it must not influence the output.
            None => vec![0.0; leaf.numel()],
        };
        for j in 0..vals[i].len() {
            let x0 = vals[i][j];
            vals[i][j] = x0 + H;
            let lp = loss_at(&vals).map_err(err)?;
            vals[i][j] = x0 - H;
            let lm = loss_at(&vals).map_err(err)?;
            vals[i][j] = x0;
            let numeric = (lp - lm) / (2.0 * H);
            let a = analytic[j];
            // Written so that a NaN on either side fails the check.
            let close = (a - numeric).abs() <= RTOL * a.abs().max(numeric.abs()) + atol;
            if !close {
                return Err(format!(
                    "input {i} {:?}, element {j}: analytic {a:.12e} vs numerical {numeric:.12e} (atol {atol:.1e})",
                    shapes[i]
                ));
            }
        }
    }
    Ok(())
}

#[track_caller]
fn gradcheck(name: &str, inputs: &[&Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    if let Err(e) = check_grads(inputs, f) {
        panic!("gradcheck {name}: {e}");
    }
}

/// A view of `t` that is not contiguous, asserted so a layout change in the library cannot silently turn
/// a non-contiguous check into a contiguous one.
fn noncontig(t: Tensor) -> Tensor {
    assert!(!t.is_contiguous(), "expected a non-contiguous view, got strides {:?}", t.strides());
    t
}

// ---- the checker itself ----

#[test]
fn checker_rejects_a_wrong_gradient() {
    // d/dx of x·stopgrad(x) is x analytically through autograd, but 2x numerically: the checker must see it.
    let x = randn(&[3, 2], 1);
    let r = check_grads(&[&x], |x| x[0].mul(&x[0].detach()));
    assert!(r.is_err(), "the checker accepted a gradient that is off by a factor of two");
    // And a function whose output ignores an input that the gradient claims it uses is caught too.
    assert!(check_grads(&[&x], |x| x[0].mul(&x[0])?.detach().add(&x[0].mul_scalar(0.0)?)).is_err());
}

#[test]
fn checker_rejects_an_op_without_a_graph() {
    let x = randn(&[2, 2], 2);
    assert!(check_grads(&[&x], |x| Ok(x[0].exp()?.detach())).is_err());
}

// ---- elementwise ----

#[test]
fn binary_arithmetic_same_shape() {
    let (a, b) = (randn(&[3, 4], 1), randn(&[3, 4], 2));
    let pos = uniform(&[3, 4], 0.5, 2.0, 3);
    gradcheck("add", &[&a, &b], |x| x[0].add(&x[1]));
    gradcheck("sub", &[&a, &b], |x| x[0].sub(&x[1]));
    gradcheck("mul", &[&a, &b], |x| x[0].mul(&x[1]));
    gradcheck("div", &[&a, &pos], |x| x[0].div(&x[1]));
}

#[test]
fn binary_arithmetic_broadcast() {
    // [3,1,4] with [2,4] broadcasts both operands; 0-d scalars on either side; [4] with [3,1].
    let pairs: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![3, 1, 4], vec![2, 4]),
        (vec![2, 4], vec![3, 1, 4]),
        (vec![3, 4], vec![]),
        (vec![], vec![3, 4]),
        (vec![4], vec![3, 1]),
        (vec![2, 3, 4], vec![3, 1]),
    ];
    for (i, (sa, sb)) in pairs.iter().enumerate() {
        let seed = 10 * i as u64;
        let (a, b) = (randn(sa, seed), randn(sb, seed + 1));
        let pos = uniform(sb, 0.5, 2.0, seed + 2);
        let tag = format!("{sa:?} with {sb:?}");
        gradcheck(&format!("add {tag}"), &[&a, &b], |x| x[0].add(&x[1]));
        gradcheck(&format!("sub {tag}"), &[&a, &b], |x| x[0].sub(&x[1]));
        gradcheck(&format!("mul {tag}"), &[&a, &b], |x| x[0].mul(&x[1]));
        gradcheck(&format!("div {tag}"), &[&a, &pos], |x| x[0].div(&x[1]));
    }
}

#[test]
fn binary_arithmetic_noncontiguous() {
    let a = randn(&[4, 3], 1); // used as its [3,4] transpose
    let b = randn(&[3, 6], 2); // used as a [3,4] window with row gaps
    let pos = uniform(&[3, 6], 0.5, 2.0, 3);
    let ta = |x: &Tensor| -> Result<Tensor> { Ok(noncontig(x.t()?)) };
    let nb = |x: &Tensor| -> Result<Tensor> { Ok(noncontig(x.narrow(1, 1, 4)?)) };
    gradcheck("add t+narrow", &[&a, &b], |x| ta(&x[0])?.add(&nb(&x[1])?));
    gradcheck("sub t-narrow", &[&a, &b], |x| ta(&x[0])?.sub(&nb(&x[1])?));
    gradcheck("mul t*narrow", &[&a, &b], |x| ta(&x[0])?.mul(&nb(&x[1])?));
    gradcheck("div t/narrow", &[&a, &pos], |x| ta(&x[0])?.div(&nb(&x[1])?));
    // A transposed operand broadcast against a row.
    let row = randn(&[4], 4);
    gradcheck("mul t*row", &[&a, &row], |x| ta(&x[0])?.mul(&x[1]));
    // Narrowing the leading dim gives a contiguous view with a storage offset.
    let c = randn(&[5, 4], 5);
    gradcheck("add offset view", &[&c, &randn(&[3, 4], 6)], |x| x[0].narrow(0, 2, 3)?.add(&x[1]));
}

#[test]
fn one_tensor_on_both_sides_accumulates_both_gradients() {
    let x = uniform(&[2, 3], 0.5, 2.0, 7);
    gradcheck("x*x", &[&x], |x| x[0].mul(&x[0]));
    gradcheck("x+x", &[&x], |x| x[0].add(&x[0]));
    gradcheck("x/(x+1)", &[&x], |x| x[0].div(&x[0].add_scalar(1.0)?));
    gradcheck("x - x.t().t()*x", &[&x], |x| x[0].sub(&x[0].t()?.t()?.mul(&x[0])?));
}

#[test]
fn unary_smooth() {
    let x = randn(&[3, 5], 11);
    type Op = fn(&Tensor) -> Result<Tensor>;
    let ops: [(&str, Op); 7] = [
        ("neg", |t| t.neg()),
        ("exp", |t| t.exp()),
        ("tanh", |t| t.tanh()),
        ("sigmoid", |t| t.sigmoid()),
        ("gelu", |t| t.gelu()),
        ("gelu_erf", |t| t.gelu_erf()),
        ("silu", |t| t.silu()),
    ];
    // Wider inputs reach the tails of the saturating functions.
    let wide = randn(&[5, 3], 12).mul_scalar(3.0).unwrap().detach();
    for (name, op) in ops {
        gradcheck(name, &[&x], |x| op(&x[0]));
        gradcheck(&format!("{name} wide, transposed"), &[&wide], |x| op(&noncontig(x[0].t()?)));
    }
}

#[test]
fn unary_positive_domain() {
    let x = uniform(&[3, 4], 0.5, 2.0, 13);
    let y = uniform(&[4, 3], 0.5, 2.0, 14);
    type Op = fn(&Tensor) -> Result<Tensor>;
    let ops: [(&str, Op); 7] = [
        ("log", |t| t.log()),
        ("sqrt", |t| t.sqrt()),
        ("rsqrt", |t| t.rsqrt()),
        ("recip", |t| t.recip()),
        ("powf 2.5", |t| t.powf(2.5)),
        ("powf -1.5", |t| t.powf(-1.5)),
        ("powf 0.5", |t| t.powf(0.5)),
    ];
    for (name, op) in ops {
        gradcheck(name, &[&x], |x| op(&x[0]));
        gradcheck(&format!("{name} transposed"), &[&y], |x| op(&noncontig(x[0].t()?)));
    }
    // Integer powers are defined for negative bases too.
    gradcheck("powf 3 (negative bases)", &[&randn(&[3, 4], 15)], |x| x[0].powf(3.0));
    gradcheck("powf 2 (negative bases)", &[&randn(&[3, 4], 16)], |x| x[0].powf(2.0));
}

#[test]
fn unary_with_kinks_away_from_the_kinks() {
    let x = avoiding(&[4, 5], 17, &[0.0], 0.05);
    gradcheck("relu", &[&x], |x| x[0].relu());
    gradcheck("abs", &[&x], |x| x[0].abs());
    gradcheck("relu transposed", &[&x], |x| noncontig(x[0].t()?).relu());
    gradcheck("abs transposed", &[&x], |x| noncontig(x[0].t()?).abs());
    // Some entries inside [-0.5, 0.5] (gradient 1) and some outside (gradient 0).
    let c = avoiding(&[4, 5], 18, &[-0.5, 0.5], 0.05);
    let v = c.to_vec_f64().unwrap();
    assert!(v.iter().any(|x| x.abs() < 0.5) && v.iter().any(|x| x.abs() > 0.5));
    gradcheck("clamp", &[&c], |x| x[0].clamp(-0.5, 0.5));
    gradcheck("clamp transposed", &[&c], |x| noncontig(x[0].t()?).clamp(-0.5, 0.5));
}

#[test]
fn affine_and_scalar_forms() {
    let x = randn(&[3, 4], 19);
    gradcheck("affine", &[&x], |x| x[0].affine(2.5, -1.0));
    gradcheck("add_scalar", &[&x], |x| x[0].add_scalar(3.0));
    gradcheck("sub_scalar", &[&x], |x| x[0].sub_scalar(3.0));
    gradcheck("mul_scalar", &[&x], |x| x[0].mul_scalar(-1.75));
    gradcheck("div_scalar", &[&x], |x| x[0].div_scalar(4.0));
    gradcheck("affine transposed", &[&x], |x| noncontig(x[0].t()?).affine(-0.5, 2.0));
}

#[test]
fn maximum_and_minimum() {
    let a = randn(&[3, 4], 20);
    // b differs from a by at least 0.1 everywhere, on both sides, so there are no ties.
    let d = avoiding(&[3, 4], 21, &[0.0], 0.1);
    let b = a.add(&d).unwrap().detach();
    gradcheck("maximum", &[&a, &b], |x| x[0].maximum(&x[1]));
    gradcheck("minimum", &[&a, &b], |x| x[0].minimum(&x[1]));
    // Broadcast against a row whose entries sit between the values.
    let m = distinct(&[3, 4], 22);
    let row = cpu_f64(vec![-0.1, 0.4, 0.9, -0.6], &[4]);
    gradcheck("maximum broadcast", &[&m, &row], |x| x[0].maximum(&x[1]));
    gradcheck("minimum broadcast", &[&m, &row], |x| x[0].minimum(&x[1]));
    let mt = distinct(&[4, 3], 23);
    gradcheck("maximum transposed", &[&mt, &row], |x| noncontig(x[0].t()?).maximum(&x[1]));
    gradcheck("minimum transposed", &[&mt, &row], |x| noncontig(x[0].t()?).minimum(&x[1]));
}

#[test]
fn where_cond_and_masked_fill() {
    let m = mask(&[1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1], &[3, 4]);
    let (a, b) = (randn(&[3, 4], 24), randn(&[3, 4], 25));
    gradcheck("where", &[&a, &b], |x| Tensor::where_cond(&m, &x[0], &x[1]));
    // Mask [3,1], on_true [3,4], on_false [4]: both branches are broadcast and their gradients summed back.
    let col = mask(&[1, 0, 1], &[3, 1]);
    gradcheck("where broadcast", &[&a, &randn(&[4], 26)], |x| Tensor::where_cond(&col, &x[0], &x[1]));
    gradcheck("where scalar branch", &[&a, &randn(&[], 27)], |x| Tensor::where_cond(&m, &x[0], &x[1]));
    gradcheck("where transposed", &[&randn(&[4, 3], 28), &b], |x| Tensor::where_cond(&m, &noncontig(x[0].t()?), &x[1]));
    gradcheck("masked_fill", &[&a], |x| x[0].masked_fill(&m, -2.0));
    let row = mask(&[0, 1, 1, 0], &[4]);
    gradcheck("masked_fill broadcast mask", &[&a], |x| x[0].masked_fill(&row, f64::NEG_INFINITY)?.exp());
}

// ---- reductions ----

#[test]
fn sum_and_mean_over_dims() {
    let x = randn(&[2, 3, 4], 30);
    let dim_sets: [&[isize]; 6] = [&[0], &[1], &[-1], &[0, 2], &[2, 0, 1], &[]];
    for dims in dim_sets {
        for keep in [false, true] {
            gradcheck(&format!("sum {dims:?} keepdim={keep}"), &[&x], |x| x[0].sum(dims, keep));
            gradcheck(&format!("mean {dims:?} keepdim={keep}"), &[&x], |x| x[0].mean(dims, keep));
            // The same reductions of a permuted (non-contiguous) view.
            gradcheck(&format!("sum permuted {dims:?} keepdim={keep}"), &[&x], |x| {
                noncontig(x[0].permute([2, 0, 1])?).sum(dims, keep)
            });
            gradcheck(&format!("mean permuted {dims:?} keepdim={keep}"), &[&x], |x| {
                noncontig(x[0].permute([1, 2, 0])?).mean(dims, keep)
            });
        }
    }
    gradcheck("sum_all", &[&x], |x| x[0].sum_all());
    gradcheck("mean_all", &[&x], |x| x[0].mean_all());
    gradcheck("sum of a narrowed view", &[&x], |x| noncontig(x[0].narrow(2, 1, 2)?).sum(&[1, 2], false));
}

#[test]
fn max_and_min_over_dims() {
    let x = distinct(&[3, 4, 5], 31);
    let dim_sets: [&[isize]; 5] = [&[1], &[-1], &[0, 2], &[0], &[]];
    for dims in dim_sets {
        for keep in [false, true] {
            gradcheck(&format!("max {dims:?} keepdim={keep}"), &[&x], |x| x[0].max(dims, keep));
            gradcheck(&format!("min {dims:?} keepdim={keep}"), &[&x], |x| x[0].min(dims, keep));
            gradcheck(&format!("max transposed {dims:?} keepdim={keep}"), &[&x], |x| {
                noncontig(x[0].transpose(0, 2)?).max(dims, keep)
            });
            gradcheck(&format!("min transposed {dims:?} keepdim={keep}"), &[&x], |x| {
                noncontig(x[0].transpose(0, 2)?).min(dims, keep)
            });
        }
    }
}

#[test]
fn variance_over_dims() {
    let x = randn(&[3, 4, 5], 32);
    gradcheck("var [1] unbiased", &[&x], |x| x[0].var(&[1], 1, false));
    gradcheck("var [0,2] biased keepdim", &[&x], |x| x[0].var(&[0, 2], 0, true));
    gradcheck("var all", &[&x], |x| x[0].var(&[], 1, false));
    gradcheck("var [-1] keepdim", &[&x], |x| x[0].var(&[-1], 1, true));
    gradcheck("var permuted", &[&x], |x| noncontig(x[0].permute([2, 1, 0])?).var(&[0], 1, false));
}

// ---- matmul ----

#[test]
fn matmul_2d_and_batched() {
    gradcheck("matmul 2-D", &[&randn(&[3, 4], 40), &randn(&[4, 5], 41)], |x| x[0].matmul(&x[1]));
    gradcheck("matmul batched", &[&randn(&[2, 3, 4], 42), &randn(&[2, 4, 5], 43)], |x| x[0].matmul(&x[1]));
    // Batch dims broadcast: [2,1] with [3] gives [2,3].
    gradcheck("matmul broadcast batch", &[&randn(&[2, 1, 3, 4], 44), &randn(&[3, 4, 5], 45)], |x| x[0].matmul(&x[1]));
    gradcheck("matmul 2-D @ batched", &[&randn(&[3, 4], 46), &randn(&[2, 4, 5], 47)], |x| x[0].matmul(&x[1]));
    gradcheck("matmul batched @ 2-D", &[&randn(&[2, 3, 4], 48), &randn(&[4, 5], 49)], |x| x[0].matmul(&x[1]));
}

#[test]
fn matmul_transposed_and_strided_operands() {
    let t = |x: &Tensor| -> Result<Tensor> { Ok(noncontig(x.t()?)) };
    gradcheck("a.t() @ b", &[&randn(&[4, 3], 50), &randn(&[4, 5], 51)], |x| t(&x[0])?.matmul(&x[1]));
    gradcheck("a @ b.t()", &[&randn(&[3, 4], 52), &randn(&[5, 4], 53)], |x| x[0].matmul(&t(&x[1])?));
    gradcheck("a.t() @ b.t()", &[&randn(&[4, 3], 54), &randn(&[5, 4], 55)], |x| t(&x[0])?.matmul(&t(&x[1])?));
    gradcheck("batched transpose(-1,-2)", &[&randn(&[2, 4, 3], 56), &randn(&[2, 5, 4], 57)], |x| {
        noncontig(x[0].transpose(-1, -2)?).matmul(&noncontig(x[1].transpose(1, 2)?))
    });
    gradcheck("narrowed operands", &[&randn(&[3, 6], 58), &randn(&[4, 7], 59)], |x| {
        noncontig(x[0].narrow(1, 2, 4)?).matmul(&noncontig(x[1].narrow(1, 1, 5)?))
    });
    gradcheck("batch-permuted operand", &[&randn(&[3, 2, 4], 60), &randn(&[2, 4, 5], 61)], |x| {
        noncontig(x[0].permute([1, 0, 2])?).matmul(&x[1])
    });
}

#[test]
fn matmul_with_vectors() {
    gradcheck("vector @ matrix", &[&randn(&[4], 62), &randn(&[4, 5], 63)], |x| x[0].matmul(&x[1]));
    gradcheck("matrix @ vector", &[&randn(&[3, 4], 64), &randn(&[4], 65)], |x| x[0].matmul(&x[1]));
    gradcheck("vector @ batched", &[&randn(&[4], 66), &randn(&[2, 4, 5], 67)], |x| x[0].matmul(&x[1]));
    gradcheck("batched @ vector", &[&randn(&[2, 3, 4], 68), &randn(&[4], 69)], |x| x[0].matmul(&x[1]));
}

#[test]
fn matmul_vector_dot_vector() {
    // torch.matmul of two 1-D tensors is their dot product, a 0-d tensor.
    let (a, b) = (randn(&[4], 70), randn(&[4], 71));
    let d = a.matmul(&b).expect("1-D @ 1-D is a dot product");
    assert_eq!(d.dims(), &[] as &[usize]);
    let want: f64 = a.to_vec_f64().unwrap().iter().zip(b.to_vec_f64().unwrap()).map(|(p, q)| p * q).sum();
    assert!((d.item().unwrap() - want).abs() < 1e-12);
    gradcheck("vector @ vector", &[&a, &b], |x| x[0].matmul(&x[1]));
}

// ---- softmax ----

#[test]
fn softmax_and_log_softmax_over_each_dim() {
    let x = randn(&[3, 4, 5], 80).mul_scalar(2.0).unwrap().detach();
    for dim in [0isize, 1, 2, -1, -2] {
        gradcheck(&format!("softmax dim {dim}"), &[&x], |x| x[0].softmax(dim));
        gradcheck(&format!("log_softmax dim {dim}"), &[&x], |x| x[0].log_softmax(dim));
        gradcheck(&format!("softmax permuted dim {dim}"), &[&x], |x| noncontig(x[0].permute([2, 0, 1])?).softmax(dim));
        gradcheck(&format!("log_softmax permuted dim {dim}"), &[&x], |x| {
            noncontig(x[0].permute([1, 2, 0])?).log_softmax(dim)
        });
    }
    let m = randn(&[4, 6], 81);
    gradcheck("softmax 2-D dim 0", &[&m], |x| x[0].softmax(0));
    gradcheck("log_softmax narrowed", &[&m], |x| noncontig(x[0].narrow(1, 1, 4)?).log_softmax(-1));
}

#[test]
fn causal_softmax_square_with_an_offset_and_transposed() {
    // Square scores (each query sees itself and earlier keys), queries after 2 cached positions, and a
    // non-contiguous view; the masked scores get exactly zero gradient.
    let x = randn(&[2, 4, 4], 82).mul_scalar(2.0).unwrap().detach();
    gradcheck("causal_softmax square", &[&x], |x| x[0].causal_softmax(0));
    let y = randn(&[3, 6], 83);
    gradcheck("causal_softmax offset 2", &[&y], |x| x[0].causal_softmax(2));
    gradcheck("causal_softmax transposed", &[&x], |x| noncontig(x[0].transpose(1, 2)?).causal_softmax(1));
}

// ---- losses ----

#[test]
fn cross_entropy_with_ignored_targets() {
    let logits = randn(&[6, 5], 90);
    let t = i64s(&[1, -100, 4, 0, -100, 2], &[6]);
    gradcheck("cross_entropy", &[&logits], |x| x[0].cross_entropy(&t, -100));
    gradcheck("cross_entropy_per_row", &[&logits], |x| x[0].cross_entropy_per_row(&t, -100));
    // The ignore index may be a valid class id.
    let t2 = i64s(&[2, 2, 0, 1, 3, 4], &[6]);
    gradcheck("cross_entropy ignore=2", &[&logits], |x| x[0].cross_entropy(&t2, 2));
    // Logits over [batch, time, classes] with targets [batch, time].
    let t3 = i64s(&[0, 3, -100, 1, 2, 2], &[2, 3]);
    gradcheck("cross_entropy 3-D", &[&randn(&[2, 3, 4], 91)], |x| x[0].cross_entropy(&t3, -100));
    gradcheck("cross_entropy_per_row 3-D", &[&randn(&[2, 3, 4], 92)], |x| x[0].cross_entropy_per_row(&t3, -100));
    // Transposed logits.
    let t4 = i64s(&[4, 0, 1, 3, 2, 1], &[6]);
    gradcheck("cross_entropy transposed", &[&randn(&[5, 6], 93)], |x| noncontig(x[0].t()?).cross_entropy(&t4, -100));
    // Every target ignored: the loss is 0 and so is the gradient.
    let none = i64s(&[-100; 6], &[6]);
    gradcheck("cross_entropy all ignored", &[&logits], |x| x[0].cross_entropy(&none, -100));
}

#[test]
fn mse_loss_gradient() {
    gradcheck("mse_loss", &[&randn(&[3, 4], 94), &randn(&[3, 4], 95)], |x| x[0].mse_loss(&x[1]));
    gradcheck("mse_loss transposed", &[&randn(&[4, 3], 96), &randn(&[3, 4], 97)], |x| {
        noncontig(x[0].t()?).mse_loss(&x[1])
    });
}

// ---- normalisation ----

#[test]
fn layer_norm_over_one_and_two_dims() {
    let eps = 1e-5;
    let x = randn(&[4, 6], 100);
    let (w, b) = (randn(&[6], 101), randn(&[6], 102));
    gradcheck("layer_norm w,b", &[&x, &w, &b], |x| x[0].layer_norm(&[6], Some(&x[1]), Some(&x[2]), eps));
    gradcheck("layer_norm w", &[&x, &w], |x| x[0].layer_norm(&[6], Some(&x[1]), None, eps));
    gradcheck("layer_norm b", &[&x, &b], |x| x[0].layer_norm(&[6], None, Some(&x[1]), eps));
    gradcheck("layer_norm plain", &[&x], |x| x[0].layer_norm(&[6], None, None, eps));
    let x3 = randn(&[2, 3, 4], 103);
    let (w2, b2) = (randn(&[3, 4], 104), randn(&[3, 4], 105));
    gradcheck("layer_norm 2 dims w,b", &[&x3, &w2, &b2], |x| x[0].layer_norm(&[3, 4], Some(&x[1]), Some(&x[2]), eps));
    gradcheck("layer_norm 2 dims plain", &[&x3], |x| x[0].layer_norm(&[3, 4], None, None, eps));
    // A transposed input, and transposed weight/bias views.
    gradcheck("layer_norm transposed", &[&randn(&[6, 4], 106), &w, &b], |x| {
        noncontig(x[0].t()?).layer_norm(&[6], Some(&x[1]), Some(&x[2]), eps)
    });
    gradcheck(
        "layer_norm transposed params",
        &[&randn(&[2, 4, 3], 107), &randn(&[4, 3], 108), &randn(&[4, 3], 109)],
        |x| {
            let (w, b) = (noncontig(x[1].t()?), noncontig(x[2].t()?));
            noncontig(x[0].transpose(1, 2)?).layer_norm(&[3, 4], Some(&w), Some(&b), eps)
        },
    );
}

#[test]
fn rms_norm_over_one_and_two_dims() {
    let eps = 1e-6;
    let x = randn(&[4, 6], 110);
    gradcheck("rms_norm w", &[&x, &randn(&[6], 111)], |x| x[0].rms_norm(&[6], Some(&x[1]), eps));
    gradcheck("rms_norm plain", &[&x], |x| x[0].rms_norm(&[6], None, eps));
    gradcheck("rms_norm 2 dims", &[&randn(&[2, 3, 4], 112), &randn(&[3, 4], 113)], |x| {
        x[0].rms_norm(&[3, 4], Some(&x[1]), eps)
    });
    gradcheck("rms_norm transposed", &[&randn(&[6, 4], 114), &randn(&[6], 115)], |x| {
        noncontig(x[0].t()?).rms_norm(&[6], Some(&x[1]), eps)
    });
}

// ---- indexing ----

#[test]
fn embedding_and_index_select_with_repeats() {
    let table = randn(&[5, 3], 120);
    let ids = i64s(&[0, 2, 2, 4, 0, 2], &[2, 3]);
    gradcheck("embedding", &[&table], |x| x[0].embedding(&ids));
    let idx = i64s(&[3, 1, 3, 3], &[4]);
    gradcheck("index_select dim 0", &[&table], |x| x[0].index_select(0, &idx.narrow(0, 1, 3)?));
    let cols = i64s(&[2, 0, 2], &[3]);
    gradcheck("index_select dim 1", &[&table], |x| x[0].index_select(1, &cols));
    gradcheck("index_select dim -1 transposed", &[&table], |x| noncontig(x[0].t()?).index_select(-1, &idx));
}

#[test]
fn gather_scatter_add_index_add() {
    let x = randn(&[3, 5], 121);
    let idx = i64s(&[4, 0, 4, 1, 2, 2, 2, 3, 0, 1, 1, 0], &[3, 4]);
    gradcheck("gather dim 1", &[&x], |x| x[0].gather(1, &idx));
    let idx0 = i64s(&[2, 0, 1, 1, 0, 0, 2, 2], &[2, 4]);
    gradcheck("gather dim 0", &[&x], |x| x[0].gather(0, &idx0));
    gradcheck("gather transposed", &[&randn(&[5, 3], 122)], |x| noncontig(x[0].t()?).gather(1, &idx));
    gradcheck("scatter_add dim 1", &[&x, &randn(&[3, 4], 123)], |x| x[0].scatter_add(1, &idx, &x[1]));
    gradcheck("scatter_add dim 0", &[&x, &randn(&[2, 4], 124)], |x| x[0].scatter_add(0, &idx0, &x[1]));
    let rows = i64s(&[1, 1, 3], &[3]);
    gradcheck("index_add dim 0", &[&randn(&[4, 3], 125), &randn(&[3, 3], 126)], |x| x[0].index_add(0, &rows, &x[1]));
    let cols = i64s(&[0, 2, 0, 0], &[4]);
    gradcheck("index_add dim 1", &[&randn(&[2, 3], 127), &randn(&[2, 4], 128)], |x| x[0].index_add(1, &cols, &x[1]));
}

// ---- shape ops ----

#[test]
fn cat_and_stack() {
    let (a, b, c) = (randn(&[2, 3], 130), randn(&[1, 3], 131), randn(&[4, 3], 132));
    gradcheck("cat dim 0", &[&a, &b, &c], |x| Tensor::cat(&[&x[0], &x[1], &x[2]], 0));
    let (d, e) = (randn(&[2, 1], 133), randn(&[2, 4], 134));
    gradcheck("cat dim -1", &[&a, &d, &e], |x| Tensor::cat(&[&x[0], &x[1], &x[2]], -1));
    gradcheck("cat of views", &[&randn(&[3, 2], 135), &randn(&[2, 5], 136)], |x| {
        Tensor::cat(&[&noncontig(x[0].t()?), &noncontig(x[1].narrow(1, 1, 3)?)], 1)
    });
    gradcheck("cat one input twice", &[&a], |x| Tensor::cat(&[&x[0], &x[0].mul_scalar(2.0)?], 0));
    let f = randn(&[2, 3], 137);
    for dim in [0isize, 1, 2, -1] {
        gradcheck(&format!("stack dim {dim}"), &[&a, &f], |x| Tensor::stack(&[&x[0], &x[1]], dim));
    }
}

#[test]
fn split_chunk_and_narrow() {
    let x = randn(&[7, 3], 140);
    // Weight the pieces differently so a gradient routed to the wrong piece shows up.
    gradcheck("split", &[&x], |x| {
        let p = x[0].split(3, 0)?;
        assert_eq!(p.len(), 3);
        Tensor::cat(&[&p[2].mul_scalar(3.0)?, &p[0], &p[1].mul_scalar(-2.0)?], 0)
    });
    gradcheck("chunk", &[&x], |x| {
        let p = x[0].chunk(2, 1)?;
        assert_eq!(p.len(), 2);
        p[0].sum(&[1], false)?.mul(&p[1].squeeze(1)?)
    });
    gradcheck("one split piece", &[&x], |x| x[0].split(2, 0)?[3].exp());
    gradcheck("narrow", &[&x], |x| x[0].narrow(0, 2, 4));
    gradcheck("narrow dim 1", &[&x], |x| x[0].narrow(1, 1, 2));
    gradcheck("narrow of narrow of transpose", &[&x], |x| x[0].t()?.narrow(1, 1, 5)?.narrow(0, 1, 2));
}

#[test]
fn reshape_permute_squeeze_expand_contiguous() {
    let x = randn(&[2, 3, 4], 150);
    gradcheck("reshape", &[&x], |x| x[0].reshape([4, -1]));
    gradcheck("reshape of a transposed view", &[&x], |x| noncontig(x[0].transpose(0, 2)?).reshape([-1]));
    gradcheck("flatten", &[&x], |x| x[0].flatten(1, 2));
    gradcheck("permute", &[&x], |x| x[0].permute([2, 0, 1]));
    gradcheck("transpose", &[&x], |x| x[0].transpose(0, -1));
    gradcheck("contiguous", &[&x], |x| noncontig(x[0].permute([1, 2, 0])?).contiguous());
    gradcheck("unsqueeze/squeeze", &[&x], |x| x[0].unsqueeze(1)?.mul_scalar(2.0)?.squeeze(1));
    gradcheck("unsqueeze at end", &[&x], |x| x[0].unsqueeze(-1));
    gradcheck("squeeze", &[&randn(&[3, 1, 2], 151)], |x| x[0].squeeze(1));
    gradcheck("expand", &[&randn(&[3, 1], 152)], |x| x[0].expand([2, 3, 4]));
    gradcheck("expand with -1", &[&randn(&[1, 4], 153)], |x| x[0].expand([3, -1]));
    gradcheck("expand then reduce", &[&randn(&[3, 1], 154)], |x| x[0].expand([3, 5])?.exp()?.sum(&[1], false));
}

#[test]
fn tril_gradient() {
    let x = randn(&[2, 3, 4], 160);
    for diag in [0i64, -1, 1] {
        gradcheck(&format!("tril {diag}"), &[&x], |x| x[0].tril(diag));
    }
    gradcheck("tril transposed", &[&randn(&[4, 3], 161)], |x| noncontig(x[0].t()?).tril(0));
}

// ---- dropout and dtype conversion ----

#[test]
fn dropout_gradient_is_the_mask_scale() {
    let p = 0.3;
    let x = avoiding(&[6, 7], 170, &[0.0], 0.1);
    // A fresh generator per call draws the same mask every time, so the op is a fixed linear map.
    gradcheck("dropout", &[&x], |x| x[0].dropout_with(&mut Generator::new(9), p, true));

    let leaf = x.clone().set_requires_grad(true);
    let out = leaf.dropout_with(&mut Generator::new(9), p, true).unwrap();
    let w = randn(&[6, 7], 171);
    out.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    let (xv, yv, wv) = (x.to_vec_f64().unwrap(), out.to_vec_f64().unwrap(), w.to_vec_f64().unwrap());
    let g = leaf.grad().unwrap().to_vec_f64().unwrap();
    let scale = 1.0 / (1.0 - p);
    let mut dropped = 0;
    for i in 0..xv.len() {
        // Every output is either dropped (0) or scaled by 1/(1-p); the gradient carries the same factor.
        let m = yv[i] / xv[i];
        assert!(m == 0.0 || (m - scale).abs() < 1e-12, "element {i}: factor {m}");
        assert!((g[i] - wv[i] * m).abs() < 1e-12, "element {i}: gradient {} for factor {m}", g[i]);
        dropped += (m == 0.0) as usize;
    }
    assert!(dropped > 0 && dropped < xv.len(), "{dropped} of {} dropped", xv.len());
    // Eval mode is the identity, gradient included.
    gradcheck("dropout eval", &[&x], |x| x[0].dropout_with(&mut Generator::new(9), p, false));
}

#[test]
fn to_dtype_gradient_is_converted_back() {
    // f64 -> f32: the gradient reaching x is the f32 output gradient widened back, exactly.
    let x = randn(&[3, 4], 180).set_requires_grad(true);
    let w = Tensor::randn_with(&mut Generator::new(181), &[3, 4], DType::F32, Device::Cpu).unwrap();
    let y = x.to_dtype(DType::F32).unwrap();
    assert_eq!(y.dtype(), DType::F32);
    y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    let g = x.grad().unwrap();
    assert_eq!(g.dtype(), DType::F64);
    assert_eq!(g.to_vec::<f64>().unwrap(), w.to_vec_f64().unwrap());

    // bf16 -> f32 -> bf16 round trips carry the gradient through both casts.
    let b =
        Tensor::randn_with(&mut Generator::new(182), &[5], DType::BF16, Device::Cpu).unwrap().set_requires_grad(true);
    let wf = Tensor::from_vec(vec![1.0f32, -2.0, 0.5, 4.0, -0.25], &[5], Device::Cpu).unwrap();
    b.to_dtype(DType::F32).unwrap().mul(&wf).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = b.grad().unwrap();
    assert_eq!(gb.dtype(), DType::BF16);
    assert_eq!(gb.to_vec_f64().unwrap(), vec![1.0, -2.0, 0.5, 4.0, -0.25]);

    // f32 -> f64: the f64 gradient is rounded to f32 on the way back.
    let x32 = Tensor::from_vec(vec![0.5f32, -1.5, 2.0], &[3], Device::Cpu).unwrap().set_requires_grad(true);
    let w64 = cpu_f64(vec![0.1, -1.0 / 3.0, 7.0], &[3]);
    x32.to_dtype(DType::F64).unwrap().mul(&w64).unwrap().sum_all().unwrap().backward().unwrap();
    let g32 = x32.grad().unwrap();
    assert_eq!(g32.dtype(), DType::F32);
    assert_eq!(g32.to_vec::<f32>().unwrap(), vec![0.1f32, -1.0 / 3.0, 7.0]);
}

// ---- autograd engine ----

#[test]
fn gradients_accumulate_until_zero_grad() {
    let x = cpu_f64(vec![1.0, 2.0, 3.0], &[3]).set_requires_grad(true);
    let loss = || x.mul(&x).unwrap().sum_all().unwrap();
    loss().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![2.0, 4.0, 6.0]);
    loss().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![4.0, 8.0, 12.0]);
    x.zero_grad();
    assert!(x.grad().is_none());
    x.mul_scalar(3.0).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![3.0, 3.0, 3.0]);
    // Gradients only land on leaves: intermediate results keep none.
    let h = x.mul_scalar(2.0).unwrap();
    h.sum_all().unwrap().backward().unwrap();
    assert!(h.grad().is_none());
    assert!(!h.is_leaf() && x.is_leaf());
}

#[test]
fn no_grad_records_nothing() {
    let x = randn(&[2, 2], 190).set_requires_grad(true);
    let y = no_grad(|| x.exp().unwrap().mul(&x).unwrap().sum_all().unwrap());
    assert!(!y.requires_grad());
    assert!(y.backward().is_err());
    assert!(x.grad().is_none());
    {
        let _guard = munja::NoGradGuard::new();
        assert!(!munja::is_grad_enabled());
        assert!(!x.mul(&x).unwrap().requires_grad());
    }
    assert!(munja::is_grad_enabled());
    // Nested no_grad restores the outer state, not unconditionally "on".
    no_grad(|| {
        no_grad(|| {});
        assert!(!munja::is_grad_enabled());
    });
    assert!(x.mul(&x).unwrap().requires_grad());
}

#[test]
fn detach_stops_gradients() {
    let x = cpu_f64(vec![1.0, -2.0, 3.0], &[3]).set_requires_grad(true);
    let d = x.detach();
    assert!(!d.requires_grad() && d.is_leaf());
    // d/dx of x·detach(x) is detach(x), not 2x.
    x.mul(&d).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![1.0, -2.0, 3.0]);
    // A detached intermediate cuts everything upstream of it.
    x.zero_grad();
    let h = x.exp().unwrap().detach();
    assert!(h.mul_scalar(2.0).unwrap().sum_all().unwrap().backward().is_err());
    assert!(x.grad().is_none());
}

#[test]
fn backward_through_a_freed_graph_is_an_error() {
    let x = randn(&[3], 200).set_requires_grad(true);
    let h = x.exp().unwrap();
    let loss = h.sum_all().unwrap();
    loss.backward().unwrap();
    let e = loss.backward().expect_err("second backward through the same graph");
    assert!(e.to_string().contains("freed"), "{e}");
    // Reusing the intermediate in a new graph reaches the freed part too.
    let e = h.mul(&h).unwrap().sum_all().unwrap().backward().expect_err("backward into a freed subgraph");
    assert!(e.to_string().contains("freed"), "{e}");
    // The first backward's gradient is intact and a fresh forward pass works again.
    let want: Vec<f64> = x.to_vec_f64().unwrap().iter().map(|v| v.exp()).collect();
    let got = x.grad().unwrap().to_vec_f64().unwrap();
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12));
    x.exp().unwrap().sum_all().unwrap().backward().unwrap();
}

/// Counts this thread's live heap bytes so the training-loop test can see whether each step leaves
/// something behind. Per thread, because the test harness runs other tests in parallel.
mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        // A const-initialised Cell has no destructor, so the allocator can touch it at any time.
        static LIVE: Cell<isize> = const { Cell::new(0) };
    }

    fn add(delta: isize) {
        let _ = LIVE.try_with(|c| c.set(c.get() + delta));
    }

    pub fn live_bytes() -> isize {
        LIVE.with(|c| c.get())
    }

    pub struct Counting;

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            // SAFETY: forwarded unchanged to the system allocator.
            let p = unsafe { System.alloc(l) };
            if !p.is_null() {
                add(l.size() as isize);
            }
            p
        }
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            // SAFETY: as above.
            let p = unsafe { System.alloc_zeroed(l) };
            if !p.is_null() {
                add(l.size() as isize);
            }
            p
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            // SAFETY: as above.
            unsafe { System.dealloc(p, l) };
            add(-(l.size() as isize));
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
            // SAFETY: as above.
            let q = unsafe { System.realloc(p, l, new) };
            if !q.is_null() {
                add(new as isize - l.size() as isize);
            }
            q
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;
}

#[test]
fn training_loop_memory_stays_flat() {
    // A two-layer MLP on a fixed batch, trained by hand with SGD. Small enough that every kernel runs on
    // this thread (below the parallel threshold), so this thread's live-byte count sees all of it.
    let mut g = Generator::new(210);
    let mk = |g: &mut Generator, s: &[usize], scale: f64| {
        Tensor::randn_with(g, s, DType::F32, Device::Cpu).unwrap().mul_scalar(scale).unwrap().detach()
    };
    let x = mk(&mut g, &[16, 8], 1.0);
    let targets = i64s(&(0..16).map(|i| i % 4).collect::<Vec<_>>(), &[16]);
    let params = [
        mk(&mut g, &[8, 16], 0.3).set_requires_grad(true),
        mk(&mut g, &[16], 0.0).set_requires_grad(true),
        mk(&mut g, &[16, 4], 0.3).set_requires_grad(true),
        mk(&mut g, &[4], 0.0).set_requires_grad(true),
    ];
    let step = || -> f64 {
        let h = x.matmul(&params[0]).unwrap().add(&params[1]).unwrap().gelu().unwrap();
        let logits =
            h.layer_norm(&[16], None, None, 1e-5).unwrap().matmul(&params[2]).unwrap().add(&params[3]).unwrap();
        let loss = logits.cross_entropy(&targets, -100).unwrap();
        loss.backward().unwrap();
        no_grad(|| {
            for p in &params {
                let g = p.grad().unwrap();
                p.assign(&p.sub(&g.mul_scalar(0.1).unwrap()).unwrap()).unwrap();
                p.zero_grad();
            }
        });
        loss.item().unwrap()
    };
    let first = step();
    // Warm up lazily sized buffers (gemm scratch space, thread-local caches) before measuring.
    for _ in 0..100 {
        step();
    }
    let before = heap::live_bytes();
    let mut last = first;
    for _ in 0..2000 {
        last = step();
    }
    let growth = heap::live_bytes() - before;
    // One step's graph holds well over 10 KB of activations and nodes; keeping even one per step would
    // grow by tens of megabytes. Allow a little slack for allocator-independent caches.
    assert!(growth < 64 * 1024, "live heap grew by {growth} bytes over 2000 steps");
    assert!(last < first * 0.5, "the loop did not train: loss {first} -> {last}");
}
