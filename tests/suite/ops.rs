//! Forward values that the gradient checks do not pin: view semantics, shape bookkeeping, masks, casts,
//! half-precision agreement, seeded randomness, printing, ndarray interop, NaN and overflow behaviour,
//! and empty tensors.

use crate::common::rel_err;
use munja::{bf16, f16, DType, Device, Generator, Tensor};
use ndarray::{ArrayD, IxDyn};

const CPU: Device = Device::Cpu;

fn f32s(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape, CPU).unwrap()
}

fn i64s(v: &[i64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape, CPU).unwrap()
}

/// 0, 1, 2, ... as f32 in the given shape.
fn iota(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::arange(0.0, n as f64, 1.0, DType::F32, CPU).unwrap().reshape(shape).unwrap()
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.to_vec_f64().unwrap()
}

fn u8s(t: &Tensor) -> Vec<u8> {
    assert_eq!(t.dtype(), DType::U8);
    t.to_vec::<u8>().unwrap()
}

// ---- views ----

#[test]
fn narrow_and_transpose_share_storage_with_their_base() {
    let x = iota(&[3, 4]);
    // A narrowed view writes through to the base tensor.
    let rows = x.narrow(0, 1, 2).unwrap();
    assert_eq!(rows.dims(), &[2, 4]);
    rows.assign(&Tensor::full(&[2, 4], -1.0, DType::F32, CPU).unwrap()).unwrap();
    assert_eq!(vals(&x), [0., 1., 2., 3., -1., -1., -1., -1., -1., -1., -1., -1.]);

    // A transposed view is non-contiguous with swapped strides, reads in its own logical order, and
    // writes through too.
    let x = iota(&[3, 4]);
    let tr = x.t().unwrap();
    assert_eq!((tr.dims(), tr.strides(), tr.is_contiguous()), (&[4usize, 3][..], &[1usize, 4][..], false));
    assert_eq!(vals(&tr), [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
    tr.narrow(0, 2, 1).unwrap().assign(&Tensor::full(&[1, 3], 70.0, DType::F32, CPU).unwrap()).unwrap();
    assert_eq!(vals(&x), [0., 1., 70., 3., 4., 5., 70., 7., 8., 9., 70., 11.]);

    // Narrowing a column gives a strided view of the same storage.
    let col = x.narrow(1, 1, 1).unwrap();
    assert_eq!((col.strides(), col.is_contiguous()), (&[4usize, 1][..], false));
    col.assign(&Tensor::zeros(&[3, 1], DType::F32, CPU).unwrap()).unwrap();
    assert_eq!(vals(&x), [0., 0., 70., 3., 4., 0., 70., 7., 8., 0., 70., 11.]);
}

#[test]
fn contiguous_copies_only_when_it_must() {
    let x = iota(&[2, 3]);
    // contiguous() of a non-contiguous view is a fresh copy: writing to it leaves the base alone.
    let c = x.t().unwrap().contiguous().unwrap();
    assert!(c.is_contiguous());
    assert_eq!((c.dims(), c.strides()), (&[3usize, 2][..], &[2usize, 1][..]));
    assert_eq!(vals(&c), [0., 3., 1., 4., 2., 5.]);
    c.assign(&Tensor::zeros(&[3, 2], DType::F32, CPU).unwrap()).unwrap();
    assert_eq!(vals(&x), [0., 1., 2., 3., 4., 5.]);
    // A narrowed row view is contiguous but offset, so contiguous() copies it to a tensor of its own.
    let r = x.narrow(0, 1, 1).unwrap();
    let rc = r.contiguous().unwrap();
    rc.assign(&Tensor::ones(&[1, 3], DType::F32, CPU).unwrap()).unwrap();
    assert_eq!(vals(&x), [0., 1., 2., 3., 4., 5.]);
    // contiguous() of an already contiguous tensor is the same tensor (as in PyTorch): no copy.
    let same = x.contiguous().unwrap();
    same.assign(&Tensor::full(&[2, 3], 9.0, DType::F32, CPU).unwrap()).unwrap();
    assert_eq!(vals(&x), [9.; 6]);
}

#[test]
fn reshape_expand_permute_are_views_when_possible() {
    let x = iota(&[2, 3]);
    // Reshaping contiguous data is a view.
    x.reshape([6]).unwrap().narrow(0, 5, 1).unwrap().assign(&f32s(&[50.0], &[1])).unwrap();
    assert_eq!(vals(&x)[5], 50.0);
    // Reshaping a transposed view must copy (its elements are not in row-major order).
    let r = x.t().unwrap().reshape([-1]).unwrap();
    assert_eq!(vals(&r), [0., 3., 1., 4., 2., 50.]);
    r.assign(&Tensor::zeros(&[6], DType::F32, CPU).unwrap()).unwrap();
    assert_eq!(vals(&x), [0., 1., 2., 3., 4., 50.]);
    // expand repeats with stride 0; permute/unsqueeze/squeeze rearrange strides.
    let e = f32s(&[1.0, 2.0, 3.0], &[3, 1]).expand([3, 4]).unwrap();
    assert_eq!((e.dims(), e.strides()), (&[3usize, 4][..], &[1usize, 0][..]));
    assert_eq!(vals(&e), [1., 1., 1., 1., 2., 2., 2., 2., 3., 3., 3., 3.]);
    let e2 = f32s(&[1.0, 2.0], &[2]).expand([3, -1]).unwrap();
    assert_eq!((e2.dims(), vals(&e2)), (&[3usize, 2][..], vec![1., 2., 1., 2., 1., 2.]));
    let p = iota(&[2, 3, 4]).permute([2, 0, 1]).unwrap();
    assert_eq!((p.dims(), p.strides()), (&[4usize, 2, 3][..], &[1usize, 12, 4][..]));
    assert_eq!(vals(&p)[..6], [0., 4., 8., 12., 16., 20.]);
    let u = iota(&[2, 3]).unsqueeze(1).unwrap();
    assert_eq!(u.dims(), &[2, 1, 3]);
    assert_eq!(u.squeeze(1).unwrap().dims(), &[2, 3]);
    assert_eq!(iota(&[2, 3]).unsqueeze(-1).unwrap().dims(), &[2, 3, 1]);
    assert_eq!(iota(&[2, 3, 4]).flatten(0, 1).unwrap().dims(), &[6, 4]);
    assert_eq!(iota(&[2, 3, 4]).transpose(0, -1).unwrap().dims(), &[4, 3, 2]);
}

#[test]
fn reshape_infers_one_dim() {
    let x = iota(&[2, 3, 4]);
    assert_eq!(x.reshape([-1, 4]).unwrap().dims(), &[6, 4]);
    assert_eq!(x.reshape([4, -1]).unwrap().dims(), &[4, 6]);
    assert_eq!(x.reshape([2, -1, 2]).unwrap().dims(), &[2, 6, 2]);
    assert_eq!(x.reshape([-1]).unwrap().dims(), &[24]);
    assert_eq!(x.reshape(vec![3i64, -1]).unwrap().dims(), &[3, 8]);
    assert_eq!(vals(&x.reshape([-1, 4]).unwrap()), vals(&x));
    let one = f32s(&[5.0], &[1, 1]);
    assert_eq!(one.reshape([-1]).unwrap().dims(), &[1]);
    assert_eq!(one.reshape(Vec::<usize>::new()).unwrap().dims(), &[] as &[usize]);
    let empty = Tensor::zeros(&[0, 4], DType::F32, CPU).unwrap();
    assert_eq!(empty.reshape([2, 0, 2]).unwrap().dims(), &[2, 0, 2]);
    assert_eq!(empty.reshape([2, -1]).unwrap().dims(), &[2, 0]);
    // Next to a zero-sized dim a -1 could be anything, so it is refused (as torch does).
    assert!(empty.reshape([0, -1]).is_err());
}

#[test]
fn split_and_chunk_sizes() {
    let x = iota(&[7, 2]);
    let sizes = |ps: &[Tensor], d: usize| ps.iter().map(|p| p.dims()[d]).collect::<Vec<_>>();
    assert_eq!(sizes(&x.split(3, 0).unwrap(), 0), [3, 3, 1]);
    assert_eq!(sizes(&x.split(7, 0).unwrap(), 0), [7]);
    assert_eq!(sizes(&x.split(10, 0).unwrap(), 0), [7]);
    assert_eq!(sizes(&x.split(1, 1).unwrap(), 1), [1, 1]);
    // torch.chunk: pieces of ceil(n / chunks), so there may be fewer pieces than asked for.
    assert_eq!(sizes(&x.chunk(3, 0).unwrap(), 0), [3, 3, 1]);
    assert_eq!(sizes(&x.chunk(2, 0).unwrap(), 0), [4, 3]);
    assert_eq!(sizes(&x.chunk(7, 0).unwrap(), 0), [1; 7]);
    assert_eq!(sizes(&x.chunk(10, 0).unwrap(), 0), [1; 7]);
    assert_eq!(sizes(&iota(&[6]).chunk(4, 0).unwrap(), 0), [2, 2, 2]);
    assert_eq!(sizes(&iota(&[6]).chunk(3, -1).unwrap(), 0), [2, 2, 2]);
    // The pieces are the right elements, in order.
    let pieces = x.split(3, 0).unwrap();
    assert_eq!(vals(&pieces[1]), [6., 7., 8., 9., 10., 11.]);
    assert_eq!(vals(&pieces[2]), [12., 13.]);
    let cols = x.chunk(2, 1).unwrap();
    assert_eq!(vals(&cols[1]), [1., 3., 5., 7., 9., 11., 13.]);
    let refs: Vec<&Tensor> = pieces.iter().collect();
    assert_eq!(vals(&Tensor::cat(&refs, 0).unwrap()), vals(&x));
}

#[test]
fn cat_and_stack_values() {
    let (a, b) = (iota(&[2, 2]), f32s(&[10.0, 11.0], &[2, 1]));
    assert_eq!(vals(&Tensor::cat(&[&a, &b], 1).unwrap()), [0., 1., 10., 2., 3., 11.]);
    assert_eq!(vals(&Tensor::cat(&[&a.t().unwrap(), &a], 0).unwrap()), [0., 2., 1., 3., 0., 1., 2., 3.]);
    let s = Tensor::stack(&[&a, &a.mul_scalar(2.0).unwrap()], 2).unwrap();
    assert_eq!(s.dims(), &[2, 2, 2]);
    assert_eq!(vals(&s), [0., 0., 1., 2., 2., 4., 3., 6.]);
}

#[test]
fn causal_mask_and_tril() {
    let m = Tensor::causal_mask(4, CPU).unwrap();
    assert_eq!(m.dims(), &[4, 4]);
    assert_eq!(u8s(&m), [1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1]);
    let ones = Tensor::ones(&[3, 4], DType::F32, CPU).unwrap();
    assert_eq!(vals(&ones.tril(0).unwrap()), [1., 0., 0., 0., 1., 1., 0., 0., 1., 1., 1., 0.]);
    assert_eq!(vals(&ones.tril(1).unwrap()), [1., 1., 0., 0., 1., 1., 1., 0., 1., 1., 1., 1.]);
    assert_eq!(vals(&ones.tril(-1).unwrap()), [0., 0., 0., 0., 1., 0., 0., 0., 1., 1., 0., 0.]);
    assert_eq!(vals(&ones.tril(-5).unwrap()), [0.; 12]);
    // Batched: the mask applies to the last two dims of every matrix.
    let b = iota(&[2, 2, 2]).add_scalar(1.0).unwrap().tril(0).unwrap();
    assert_eq!(vals(&b), [1., 0., 3., 4., 5., 0., 7., 8.]);
    // Integer tensors and views keep their dtype and logical layout.
    let i = i64s(&[1, 2, 3, 4], &[2, 2]).t().unwrap().tril(0).unwrap();
    assert_eq!(i.to_vec::<i64>().unwrap(), [1, 0, 2, 4]);
    // The mask matches tril of ones.
    let t = Tensor::ones(&[4, 4], DType::U8, CPU).unwrap().tril(0).unwrap();
    assert_eq!(u8s(&t), u8s(&m));
}

#[test]
fn argmax_picks_the_first_maximum() {
    let x = f32s(&[1.0, 3.0, 3.0, 2.0, 5.0, 5.0, 1.0, 0.0], &[2, 4]);
    let a = x.argmax(1, false).unwrap();
    assert_eq!((a.dtype(), a.dims()), (DType::I64, &[2usize][..]));
    assert_eq!(a.to_vec::<i64>().unwrap(), [1, 0]);
    assert_eq!(x.argmax(0, false).unwrap().to_vec::<i64>().unwrap(), [1, 1, 0, 0]);
    assert_eq!(x.argmax(-1, true).unwrap().dims(), &[2, 1]);
    // On a transposed view the answer follows the view's logical order.
    assert_eq!(x.t().unwrap().argmax(0, false).unwrap().to_vec::<i64>().unwrap(), [1, 0]);
    // All equal: the first; -inf entries are fine; NaN counts as the maximum, as in PyTorch.
    assert_eq!(f32s(&[2.0; 5], &[5]).argmax(0, false).unwrap().to_vec::<i64>().unwrap(), [0]);
    let inf = f32s(&[f32::NEG_INFINITY, f32::NEG_INFINITY], &[2]);
    assert_eq!(inf.argmax(0, false).unwrap().to_vec::<i64>().unwrap(), [0]);
    let nan = f32s(&[1.0, f32::NAN, 9.0], &[3]);
    assert_eq!(nan.argmax(0, false).unwrap().to_vec::<i64>().unwrap(), [1]);
    assert_eq!(i64s(&[3, 7, 7], &[3]).argmax(0, false).unwrap().to_vec::<i64>().unwrap(), [1]);
}

#[test]
fn comparisons_and_where() {
    let a = f32s(&[1.0, 2.0, 3.0], &[3]);
    let b = f32s(&[2.0, 2.0, 2.0, 0.0, 5.0, 3.0], &[2, 3]);
    assert_eq!(u8s(&a.eq(&b).unwrap()), [0, 1, 0, 0, 0, 1]);
    assert_eq!(u8s(&a.ne(&b).unwrap()), [1, 0, 1, 1, 1, 0]);
    assert_eq!(u8s(&a.lt(&b).unwrap()), [1, 0, 0, 0, 1, 0]);
    assert_eq!(u8s(&a.le(&b).unwrap()), [1, 1, 0, 0, 1, 1]);
    assert_eq!(u8s(&a.gt(&b).unwrap()), [0, 0, 1, 1, 0, 0]);
    assert_eq!(u8s(&a.ge(&b).unwrap()), [0, 1, 1, 1, 0, 1]);
    assert_eq!(a.lt(&b).unwrap().dims(), &[2, 3]);
    assert_eq!(u8s(&a.eq_scalar(2.0).unwrap()), [0, 1, 0]);
    assert_eq!(u8s(&a.ne_scalar(2.0).unwrap()), [1, 0, 1]);
    assert_eq!(u8s(&a.lt_scalar(2.0).unwrap()), [1, 0, 0]);
    assert_eq!(u8s(&a.le_scalar(2.0).unwrap()), [1, 1, 0]);
    assert_eq!(u8s(&a.gt_scalar(2.0).unwrap()), [0, 0, 1]);
    assert_eq!(u8s(&a.ge_scalar(2.0).unwrap()), [0, 1, 1]);
    // NaN compares false except for !=.
    let n = f32s(&[f32::NAN], &[1]);
    assert_eq!(
        (u8s(&n.eq(&n).unwrap()), u8s(&n.ne(&n).unwrap()), u8s(&n.ge(&n).unwrap())),
        (vec![0], vec![1], vec![0])
    );
    // Integers compare exactly, beyond f32's integer range.
    let big = i64s(&[(1 << 40) + 1, -3], &[2]);
    assert_eq!(u8s(&big.gt(&i64s(&[1 << 40, -3], &[2])).unwrap()), [1, 0]);

    // where: mask [2,1] picks rows, broadcast against a [3] row and a 0-d scalar.
    let m = Tensor::from_vec(vec![1u8, 0], &[2, 1], CPU).unwrap();
    let s = Tensor::scalar(-1.0, DType::F32, CPU).unwrap();
    let w = Tensor::where_cond(&m, &a, &s).unwrap();
    assert_eq!((w.dims(), vals(&w)), (&[2usize, 3][..], vec![1., 2., 3., -1., -1., -1.]));
    let w2 = Tensor::where_cond(&a.gt_scalar(1.5).unwrap(), &b, &a).unwrap();
    assert_eq!(vals(&w2), [1., 2., 2., 1., 5., 3.]);
    // Any non-zero mask byte means true.
    let m3 = Tensor::from_vec(vec![0u8, 7, 255], &[3], CPU).unwrap();
    assert_eq!(vals(&Tensor::where_cond(&m3, &a, &s).unwrap()), [-1., 2., 3.]);
    assert_eq!(vals(&b.masked_fill(&a.eq_scalar(2.0).unwrap(), 0.5).unwrap()), [2., 0.5, 2., 0., 0.5, 3.]);
    let i = Tensor::where_cond(&m, &i64s(&[1, 2], &[2]), &i64s(&[-5], &[1])).unwrap();
    assert_eq!(i.to_vec::<i64>().unwrap(), [1, 2, -5, -5]);
}

// ---- dtypes ----

#[test]
fn every_cast_round_trips_values_all_dtypes_hold() {
    // Small non-negative integers fit exactly in every dtype, so any cast chain must return them unchanged.
    let base = [0.0, 1.0, 2.0, 3.0, 100.0, 255.0];
    let all = [DType::F32, DType::F64, DType::BF16, DType::F16, DType::I64, DType::U8];
    for src in all {
        let x = Tensor::from_vec(base.to_vec(), &[2, 3], CPU).unwrap().to_dtype(src).unwrap();
        assert_eq!(x.dtype(), src);
        for dst in all {
            let y = x.to_dtype(dst).unwrap();
            assert_eq!((y.dtype(), y.dims()), (dst, &[2usize, 3][..]), "{src} -> {dst}");
            assert_eq!(vals(&y), base, "{src} -> {dst}");
            let back = y.to_dtype(src).unwrap();
            assert_eq!(vals(&back), base, "{src} -> {dst} -> {src}");
            // A transposed view casts in its logical order.
            let t = x.t().unwrap().to_dtype(dst).unwrap();
            assert_eq!(vals(&t), [0., 3., 1., 100., 2., 255.], "{src} view -> {dst}");
        }
    }
}

#[test]
fn float_casts_round_to_nearest_even() {
    // bf16 keeps 8 significant bits: 1 + 2^-8 is a tie that rounds to even (1.0); 1 + 3·2^-8 rounds up.
    let x = f32s(&[1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), -(1.0 + 3.0 * 2f32.powi(-8)), 3.0e38], &[4]);
    let b = x.to_dtype(DType::BF16).unwrap().to_vec::<bf16>().unwrap();
    assert_eq!(b[..3], [bf16::from_f32(1.0), bf16::from_f32(1.015625), bf16::from_f32(-1.015625)]);
    assert!(b[3].is_finite() && (b[3].to_f64() - 3.0e38).abs() < 3.0e38 * 4e-3);
    // f16 keeps 11 bits and overflows to infinity above 65504.
    let h = f32s(&[1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11), 70000.0, -70000.0, 65504.0], &[5]);
    let hv = h.to_dtype(DType::F16).unwrap().to_vec::<f16>().unwrap();
    assert_eq!(hv[0], f16::from_f32(1.0));
    assert_eq!(hv[1].to_f32(), 1.0 + 2f32.powi(-9));
    assert_eq!((hv[2], hv[3], hv[4].to_f32()), (f16::INFINITY, f16::NEG_INFINITY, 65504.0));
    // f64 -> bf16 rounds to nearest too (ties are left alone: like PyTorch, munja may round via f32).
    let d = Tensor::from_vec(vec![1.0 + 2f64.powi(-6), 1.0 + 2f64.powi(-7) + 2f64.powi(-9)], &[2], CPU).unwrap();
    assert_eq!(d.to_dtype(DType::BF16).unwrap().to_vec_f64().unwrap(), [1.015625, 1.0078125]);
    // f64 -> f32 rounds to nearest.
    let d32 = Tensor::from_vec(vec![0.1f64, 1.0 / 3.0], &[2], CPU).unwrap().to_dtype(DType::F32).unwrap();
    assert_eq!(d32.to_vec::<f32>().unwrap(), [0.1f32, 1.0 / 3.0]);
    // Widening is exact.
    let bv = Tensor::from_vec(vec![bf16::from_f32(1.015625), bf16::from_f32(-0.0078125)], &[2], CPU).unwrap();
    assert_eq!(bv.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap(), [1.015625, -0.0078125]);
    assert_eq!(bv.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap(), [1.015625, -0.0078125]);
    // NaN and infinities survive float casts.
    let special = f32s(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY], &[3]);
    for dt in [DType::F64, DType::BF16, DType::F16] {
        let v = vals(&special.to_dtype(dt).unwrap());
        assert!(v[0].is_nan() && v[1] == f64::INFINITY && v[2] == f64::NEG_INFINITY, "{dt}: {v:?}");
    }
}

#[test]
fn integer_casts_truncate_toward_zero() {
    let x = f32s(&[2.7, -2.7, 0.5, -0.5, 1e10], &[5]);
    assert_eq!(x.to_dtype(DType::I64).unwrap().to_vec::<i64>().unwrap(), [2, -2, 0, 0, 10_000_000_000]);
    let y = f32s(&[0.0, 1.0, 2.9, 255.0], &[4]);
    assert_eq!(y.to_dtype(DType::U8).unwrap().to_vec::<u8>().unwrap(), [0, 1, 2, 255]);
    let i = i64s(&[-3, 0, 1 << 24], &[3]);
    assert_eq!(i.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap(), [-3.0, 0.0, 16_777_216.0]);
    assert_eq!(i.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap(), [-3.0, 0.0, 16_777_216.0]);
    let m = f32s(&[0.5, 2.0], &[2]).gt_scalar(1.0).unwrap();
    assert_eq!(m.to_dtype(DType::I64).unwrap().to_vec::<i64>().unwrap(), [0, 1]);
    assert_eq!(m.to_dtype(DType::BF16).unwrap().to_vec_f64().unwrap(), [0.0, 1.0]);
}

/// The input rounded to `dt`, and the same values in f32 as the reference input.
fn pair(x: &Tensor, dt: DType) -> (Tensor, Tensor) {
    let h = x.to_dtype(dt).unwrap();
    let r = h.to_dtype(DType::F32).unwrap();
    (h, r)
}

#[test]
fn half_precision_ops_agree_with_f32() {
    let mut g = Generator::new(77);
    let x = Tensor::randn_with(&mut g, &[8, 16], DType::F32, CPU).unwrap();
    let w = Tensor::randn_with(&mut g, &[16, 12], DType::F32, CPU).unwrap();
    let gamma = Tensor::randn_with(&mut g, &[16], DType::F32, CPU).unwrap();
    let beta = Tensor::randn_with(&mut g, &[16], DType::F32, CPU).unwrap();
    let pos = Tensor::rand_with(&mut g, &[8, 16], DType::F32, CPU).unwrap().add_scalar(0.5).unwrap();
    let targets = i64s(&[0, 3, 15, 7, 7, 1, 9, 12], &[8]);
    for dt in [DType::BF16, DType::F16] {
        let (xh, xr) = pair(&x, dt);
        let (wh, wr) = pair(&w, dt);
        let (gh, gr) = pair(&gamma, dt);
        let (bh, br) = pair(&beta, dt);
        let (ph, pr) = pair(&pos, dt);
        let check = |name: &str, half: munja::Tensor, full: munja::Tensor| {
            assert_eq!(half.dtype(), dt, "{name} in {dt} changed dtype");
            let e = rel_err(&half.to_dtype(DType::F32).unwrap(), &full).unwrap();
            assert!(e < 1e-2, "{name} in {dt}: relative error {e}");
        };
        check("softmax", xh.softmax(-1).unwrap(), xr.softmax(-1).unwrap());
        check("log_softmax", xh.log_softmax(0).unwrap(), xr.log_softmax(0).unwrap());
        check(
            "layer_norm",
            xh.layer_norm(&[16], Some(&gh), Some(&bh), 1e-5).unwrap(),
            xr.layer_norm(&[16], Some(&gr), Some(&br), 1e-5).unwrap(),
        );
        check("rms_norm", xh.rms_norm(&[16], Some(&gh), 1e-5).unwrap(), xr.rms_norm(&[16], Some(&gr), 1e-5).unwrap());
        check("matmul", xh.matmul(&wh).unwrap(), xr.matmul(&wr).unwrap());
        check(
            "matmul transposed",
            wh.t().unwrap().matmul(&xh.t().unwrap()).unwrap(),
            wr.t().unwrap().matmul(&xr.t().unwrap()).unwrap(),
        );
        check("gelu", xh.gelu().unwrap(), xr.gelu().unwrap());
        check("gelu_erf", xh.gelu_erf().unwrap(), xr.gelu_erf().unwrap());
        check("cross_entropy", xh.cross_entropy(&targets, -100).unwrap(), xr.cross_entropy(&targets, -100).unwrap());
        check("sum dim", ph.sum(&[1], false).unwrap(), pr.sum(&[1], false).unwrap());
        check("sum all", ph.sum_all().unwrap(), pr.sum_all().unwrap());
        check("mean", ph.mean(&[0], true).unwrap(), pr.mean(&[0], true).unwrap());
        // Long reductions accumulate in f32 or wider: 4096 ones sum to exactly 4096, which a half-precision
        // accumulator (stuck at 256 for bf16, 2048 for f16) would not reach.
        let ones = Tensor::ones(&[4096], dt, CPU).unwrap();
        assert_eq!(ones.sum_all().unwrap().item().unwrap(), 4096.0, "{dt} sum");
        let dot = ones.reshape([1, 4096]).unwrap().matmul(&ones.reshape([4096, 1]).unwrap()).unwrap();
        assert_eq!(dot.item().unwrap(), 4096.0, "{dt} matmul accumulation");
    }
}

// ---- randomness ----

#[test]
fn seeded_generators_are_reproducible() {
    let draw = |seed: u64, dt: DType| {
        let mut g = Generator::new(seed);
        let a = Tensor::rand_with(&mut g, &[100], dt, CPU).unwrap().to_vec_f64().unwrap();
        let b = Tensor::randn_with(&mut g, &[100], dt, CPU).unwrap().to_vec_f64().unwrap();
        (a, b)
    };
    let (a1, b1) = draw(42, DType::F64);
    let (a2, b2) = draw(42, DType::F64);
    assert_eq!((&a1, &b1), (&a2, &b2), "same seed, different numbers");
    let (a3, b3) = draw(43, DType::F64);
    assert!(a1 != a3 && b1 != b3, "different seeds gave the same numbers");
    // Consecutive draws from one generator continue the stream instead of repeating it.
    let mut g = Generator::new(42);
    let first = Tensor::rand_with(&mut g, &[5], DType::F32, CPU).unwrap().to_vec::<f32>().unwrap();
    let second = Tensor::rand_with(&mut g, &[5], DType::F32, CPU).unwrap().to_vec::<f32>().unwrap();
    assert_ne!(first, second);
    assert_eq!(g.offset, 4, "5 numbers use two blocks of four, twice");
    // The dtype only changes the rounding of the same stream.
    let (a32, b32) = draw(42, DType::F32);
    assert!(a32.iter().zip(&a1).all(|(p, q)| *p == *q as f32 as f64));
    assert!(b32.iter().zip(&b1).all(|(p, q)| *p == *q as f32 as f64));
    // Uniform is in [0, 1); normal has roughly zero mean and unit variance.
    let u = Tensor::rand_with(&mut Generator::new(1), &[20_000], DType::F32, CPU).unwrap().to_vec_f64().unwrap();
    assert!(u.iter().all(|v| (0.0..1.0).contains(v)));
    // Also in half types, where about 1 in 500 draws rounds to 1.0 and must take the value below it.
    for dt in [DType::BF16, DType::F16] {
        let h = Tensor::rand_with(&mut Generator::new(1), &[20_000], dt, CPU).unwrap().to_vec_f64().unwrap();
        assert!(h.iter().all(|v| (0.0..1.0).contains(v)), "{dt} draw outside [0, 1)");
        let top = if dt == DType::BF16 { 0.99609375 } else { 0.99951171875 };
        assert!(h.contains(&top), "{dt}: no draw rounded up to the largest value below 1");
    }
    let n = Tensor::randn_with(&mut Generator::new(2), &[20_000], DType::F64, CPU).unwrap().to_vec_f64().unwrap();
    let mean = n.iter().sum::<f64>() / n.len() as f64;
    let var = n.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n.len() as f64;
    assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean}, variance {var}");
    // Dropout with a seeded generator draws the same mask.
    let x = Tensor::ones(&[64], DType::F32, CPU).unwrap();
    let d1 = x.dropout_with(&mut Generator::new(5), 0.5, true).unwrap();
    let d2 = x.dropout_with(&mut Generator::new(5), 0.5, true).unwrap();
    let d3 = x.dropout_with(&mut Generator::new(6), 0.5, true).unwrap();
    assert_eq!(vals(&d1), vals(&d2));
    assert_ne!(vals(&d1), vals(&d3));
}

#[test]
fn manual_seed_resets_the_default_generator() {
    // Other tests draw from the process-wide default generator concurrently, so one of our draws may
    // interleave with theirs; a handful of attempts makes that harmless while a broken manual_seed
    // still fails every time.
    let mut g = Generator::new(1234);
    let want_a = Tensor::rand_with(&mut g, &[16], DType::F32, CPU).unwrap().to_vec::<f32>().unwrap();
    let want_b = Tensor::randn_with(&mut g, &[16], DType::F32, CPU).unwrap().to_vec::<f32>().unwrap();
    let mut ok = false;
    for _ in 0..20 {
        munja::manual_seed(1234);
        let a = Tensor::rand(&[16], DType::F32, CPU).unwrap().to_vec::<f32>().unwrap();
        let b = Tensor::randn(&[16], DType::F32, CPU).unwrap().to_vec::<f32>().unwrap();
        if a == want_a && b == want_b {
            ok = true;
            break;
        }
    }
    assert!(ok, "manual_seed(1234) followed by rand/randn does not reproduce Generator::new(1234)");
    // Saving and restoring the default state replays the same numbers.
    let mut ok = false;
    for _ in 0..20 {
        let state = munja::rng::default_state();
        let a = Tensor::rand(&[8], DType::F32, CPU).unwrap().to_vec::<f32>().unwrap();
        munja::rng::set_default_state(state);
        let b = Tensor::rand(&[8], DType::F32, CPU).unwrap().to_vec::<f32>().unwrap();
        if a == b {
            ok = true;
            break;
        }
    }
    assert!(ok, "restoring the default generator's state does not replay its numbers");
}

// ---- printing ----

#[test]
fn display_of_small_tensors_is_exact() {
    let x = f32s(&[1.0, -2.5, 0.00002, 123456.0], &[2, 2]);
    assert_eq!(
        x.to_string(),
        "tensor([[1.0000, -2.5000],\n        [2.0000e-5, 1.2346e5]], shape=[2, 2], dtype=f32, device=cpu)"
    );
    assert_eq!(i64s(&[1, -2, 3], &[3]).to_string(), "tensor([1, -2, 3], shape=[3], dtype=i64, device=cpu)");
    let s = Tensor::scalar(3.5, DType::F64, CPU).unwrap();
    assert_eq!(s.to_string(), "tensor(3.5000, shape=[], dtype=f64, device=cpu)");
    assert_eq!(
        iota(&[2, 1, 2]).to_string(),
        "tensor([[[0.0000, 1.0000]],\n        [[2.0000, 3.0000]]], shape=[2, 1, 2], dtype=f32, device=cpu)"
    );
    let special = f32s(&[f32::NAN, f32::NEG_INFINITY, 0.0], &[3]);
    assert_eq!(special.to_string(), "tensor([NaN, -inf, 0.0000], shape=[3], dtype=f32, device=cpu)");
    let m = f32s(&[1.0, 3.0], &[2]).gt_scalar(2.0).unwrap();
    assert_eq!(m.to_string(), "tensor([0, 1], shape=[2], dtype=u8, device=cpu)");
    // A view prints its logical order.
    assert_eq!(
        iota(&[2, 2]).t().unwrap().to_string(),
        "tensor([[0.0000, 2.0000],\n        [1.0000, 3.0000]], shape=[2, 2], dtype=f32, device=cpu)"
    );
    let e = Tensor::zeros(&[0], DType::F32, CPU).unwrap();
    assert_eq!(e.to_string(), "tensor([], shape=[0], dtype=f32, device=cpu)");
    assert_eq!(format!("{:?}", iota(&[2, 3])), "Tensor[[2, 3], f32, cpu]");
}

#[test]
fn display_of_large_tensors_is_summarised() {
    let row = |r: usize| {
        let v = |c: usize| format!("{}.0000", r * 50 + c);
        format!("[{}, {}, {}, ..., {}, {}, {}]", v(0), v(1), v(2), v(47), v(48), v(49))
    };
    let body = [row(0), row(1), row(2), "...".to_string(), row(37), row(38), row(39)].join(",\n        ");
    let want = format!("tensor([{body}], shape=[40, 50], dtype=f32, device=cpu)");
    let x = iota(&[40, 50]);
    assert_eq!(x.to_string(), want);
    // Up to 1000 elements print in full; one more switches to the summary.
    let full = iota(&[1000]).to_string();
    assert!(!full.contains("...") && full.contains("999.0000"));
    let summary = iota(&[1001]).to_string();
    assert!(summary.starts_with("tensor([0.0000, 1.0000, 2.0000, ..., 998.0000, 999.0000, 1000.0000]"), "{summary}");
    assert!(summary.len() < 200);
}

// ---- ndarray ----

#[test]
fn ndarray_round_trip() {
    let a = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let t = Tensor::from_ndarray(&a).unwrap();
    assert_eq!((t.dims(), t.dtype()), (&[2usize, 3][..], DType::F32));
    assert_eq!(t.to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(t.to_ndarray::<f32>().unwrap(), a);
    // A transposed (column-major) array is read in its logical order.
    let at = a.t().to_owned();
    let tt = Tensor::from_ndarray(&a.t().into_owned()).unwrap();
    assert_eq!(tt.dims(), &[3, 2]);
    assert_eq!(tt.to_vec::<f32>().unwrap(), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    assert_eq!(tt.to_ndarray::<f32>().unwrap(), at);
    let view = Tensor::from_ndarray(&a.view().reversed_axes().to_owned()).unwrap();
    assert_eq!(view.to_ndarray::<f32>().unwrap(), at);
    // A strided tensor view converts in its logical order too.
    assert_eq!(t.t().unwrap().to_ndarray::<f32>().unwrap(), at);
    // Other element types and ranks.
    let i = ArrayD::from_shape_vec(IxDyn(&[2, 1, 2]), vec![1i64, -2, 3, i64::MAX]).unwrap();
    assert_eq!(Tensor::from_ndarray(&i).unwrap().to_ndarray::<i64>().unwrap(), i);
    let b = ArrayD::from_shape_vec(IxDyn(&[2]), vec![bf16::from_f32(0.5), bf16::from_f32(-3.0)]).unwrap();
    let bt = Tensor::from_ndarray(&b).unwrap();
    assert_eq!(bt.dtype(), DType::BF16);
    assert_eq!(bt.to_ndarray::<bf16>().unwrap(), b);
    let s = ArrayD::from_shape_vec(IxDyn(&[]), vec![2.5f64]).unwrap();
    let st = Tensor::from_ndarray(&s).unwrap();
    assert_eq!((st.dims(), st.item().unwrap()), (&[] as &[usize], 2.5));
    assert_eq!(st.to_ndarray::<f64>().unwrap(), s);
}

// ---- NaN, overflow and empties ----

#[test]
fn nan_propagates_through_max_min_maximum_minimum() {
    for pos in 0..4 {
        let mut v = vec![1.0f32, 5.0, -2.0, 3.0];
        v[pos] = f32::NAN;
        let x = f32s(&v, &[4]);
        assert!(x.max(&[], false).unwrap().item().unwrap().is_nan(), "max, NaN at {pos}");
        assert!(x.min(&[0], false).unwrap().item().unwrap().is_nan(), "min, NaN at {pos}");
    }
    // Per-row: only the row holding the NaN is NaN, along a contiguous and a strided reduced dim.
    let x = f32s(&[1.0, f32::NAN, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let rows = vals(&x.max(&[1], false).unwrap());
    assert!(rows[0].is_nan() && rows[1] == 6.0, "{rows:?}");
    let cols = vals(&x.t().unwrap().min(&[0], false).unwrap());
    assert!(cols[0].is_nan() && cols[1] == 4.0, "{cols:?}");
    let cols = vals(&x.max(&[0], true).unwrap());
    assert!(cols[0] == 4.0 && cols[1].is_nan() && cols[2] == 6.0, "{cols:?}");
    // Elementwise: a NaN on either side wins.
    let a = f32s(&[f32::NAN, 1.0, 2.0, f32::NAN], &[4]);
    let b = f32s(&[0.0, f32::NAN, 1.0, f32::NAN], &[4]);
    for r in [a.maximum(&b).unwrap(), b.maximum(&a).unwrap()] {
        let v = vals(&r);
        assert!(v[0].is_nan() && v[1].is_nan() && v[2] == 2.0 && v[3].is_nan(), "maximum {v:?}");
    }
    for r in [a.minimum(&b).unwrap(), b.minimum(&a).unwrap()] {
        let v = vals(&r);
        assert!(v[0].is_nan() && v[1].is_nan() && v[2] == 1.0 && v[3].is_nan(), "minimum {v:?}");
    }
    // Infinities are ordinary values.
    let inf = f32s(&[f32::NEG_INFINITY, f32::INFINITY], &[2]);
    assert_eq!(inf.max(&[], false).unwrap().item().unwrap(), f64::INFINITY);
    assert_eq!(inf.min(&[], false).unwrap().item().unwrap(), f64::NEG_INFINITY);
}

#[test]
fn causal_softmax_is_the_masked_softmax_and_rejects_vectors() {
    // Against masked_fill of the future keys with -inf then softmax: square, with cached positions ahead
    // of the queries, an offset past the last key (nothing masked), long rows, and every float dtype.
    for dt in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        for (t, s, off) in [(5usize, 5usize, 0usize), (3, 7, 4), (4, 4, 9), (2, 3000, 2998), (6, 40, 0)] {
            let x = Tensor::randn_with(&mut Generator::new(7), &[2, 3, t, s], dt, CPU).unwrap();
            let future: Vec<u8> = (0..t * s).map(|k| u8::from(k % s > k / s + off)).collect();
            let mask = Tensor::from_vec(future, &[t, s], CPU).unwrap();
            let want = x.masked_fill(&mask, f64::NEG_INFINITY).unwrap().softmax(-1).unwrap();
            let got = x.causal_softmax(off).unwrap();
            assert_eq!(got.dims(), want.dims());
            let tol = if matches!(dt, DType::BF16 | DType::F16) { 1e-2 } else { 1e-6 };
            let err = rel_err(&got.to_dtype(DType::F64).unwrap(), &want.to_dtype(DType::F64).unwrap()).unwrap();
            assert!(err < tol, "{dt} t={t} s={s} offset={off}: relative error {err}");
            // Masked entries are exactly 0.
            let v = vals(&got.to_dtype(DType::F32).unwrap());
            assert!((0..v.len()).filter(|&k| k % s > (k / s) % t + off).all(|k| v[k] == 0.0), "{dt} {t} {s} {off}");
        }
    }
    // A row whose visible scores are all -inf is NaN throughout, as the masked softmax gives.
    let x = f32s(&[f32::NEG_INFINITY, 1.0, 2.0, 3.0], &[2, 2]);
    let v = vals(&x.causal_softmax(0).unwrap());
    assert!(v[0].is_nan() && v[1].is_nan() && (v[2] + v[3] - 1.0).abs() < 1e-6, "{v:?}");
    assert!(f32s(&[1.0, 2.0], &[2]).causal_softmax(0).is_err());
}

#[test]
fn softmax_of_huge_logits_is_finite() {
    for dt in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        // Huge logits a step apart that the dtype represents exactly (bf16 spaces 1e4 by 64, f16 60000 by 32).
        let (big, u) = match dt {
            DType::BF16 => (9984.0, 64.0),
            DType::F16 => (60000.0, 32.0),
            _ => (1.0e4, 1.0),
        };
        let x = Tensor::from_vec(vec![big, big + u, big + 2.0 * u, -big, -big - u, -big - 2.0 * u], &[2, 3], CPU)
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        let x32 = x.to_dtype(DType::F32).unwrap();
        // Shifting every logit of a row leaves the softmax unchanged: compare with the shifted-to-zero row.
        let shifted = x32.sub(&x32.max(&[1], true).unwrap()).unwrap();
        for (name, got, want) in [
            ("softmax", x.softmax(-1).unwrap(), shifted.softmax(-1).unwrap()),
            ("log_softmax", x.log_softmax(-1).unwrap(), shifted.log_softmax(-1).unwrap()),
        ] {
            let v = vals(&got);
            assert!(v.iter().all(|p| p.is_finite()), "{name} {dt}: {v:?}");
            assert!(rel_err(&got.to_dtype(DType::F32).unwrap(), &want).unwrap() < 1e-2, "{name} {dt}: {v:?}");
        }
        let s = vals(&x.softmax(1).unwrap().sum(&[1], false).unwrap());
        assert!(s.iter().all(|p| (p - 1.0).abs() < 1e-2), "{dt} rows sum to {s:?}");
        let ce = x.cross_entropy(&i64s(&[0, 2], &[2]), -100).unwrap().item().unwrap();
        assert!(ce.is_finite() && ce > 0.0, "{dt} cross_entropy {ce}");
    }
    // Masked (-inf) entries get probability 0; the rest still normalise.
    let m = f32s(&[0.0, f32::NEG_INFINITY, 0.0], &[3]).softmax(0).unwrap();
    assert_eq!(vals(&m), [0.5, 0.0, 0.5]);
    // A fully masked row has no distribution: NaN, as in PyTorch.
    let all = f32s(&[f32::NEG_INFINITY; 2], &[2]).softmax(0).unwrap();
    assert!(vals(&all).iter().all(|p| p.is_nan()));
}

#[test]
fn empty_tensors_flow_through_ops() {
    let e = Tensor::zeros(&[0, 3], DType::F32, CPU).unwrap();
    assert_eq!((e.numel(), e.to_vec::<f32>().unwrap().len()), (0, 0));
    let s0 = e.sum(&[0], false).unwrap();
    assert_eq!((s0.dims(), vals(&s0)), (&[3usize][..], vec![0.0; 3]));
    let s1 = e.sum(&[1], false).unwrap();
    assert_eq!(s1.dims(), &[0]);
    assert_eq!(e.sum(&[1], true).unwrap().dims(), &[0, 1]);
    assert_eq!(e.sum_all().unwrap().item().unwrap(), 0.0);
    assert_eq!(e.t().unwrap().sum(&[0], false).unwrap().dims(), &[0]);
    assert_eq!(e.add(&f32s(&[1.0, 2.0, 3.0], &[3])).unwrap().dims(), &[0, 3]);
    assert_eq!(e.exp().unwrap().dims(), &[0, 3]);
    assert_eq!(e.matmul(&iota(&[3, 4])).unwrap().dims(), &[0, 4]);
    let (a0, b0) = (Tensor::zeros(&[2, 0], DType::F32, CPU).unwrap(), Tensor::zeros(&[0, 3], DType::F32, CPU).unwrap());
    let k0 = a0.matmul(&b0).unwrap();
    assert_eq!((k0.dims(), vals(&k0)), (&[2usize, 3][..], vec![0.0; 6]));
    assert_eq!(vals(&Tensor::cat(&[&e, &iota(&[1, 3])], 0).unwrap()), [0., 1., 2.]);
    assert_eq!(e.softmax(-1).unwrap().dims(), &[0, 3]);
    assert_eq!(e.layer_norm(&[3], None, None, 1e-5).unwrap().dims(), &[0, 3]);
    assert_eq!(e.reshape([3, 0]).unwrap().dims(), &[3, 0]);
    assert_eq!(iota(&[2, 3]).index_select(0, &i64s(&[], &[0])).unwrap().dims(), &[0, 3]);
    assert_eq!(iota(&[2, 3]).narrow(1, 3, 0).unwrap().dims(), &[2, 0]);
    assert!(e.split(2, 0).unwrap().is_empty());
    assert_eq!(Tensor::arange(0.0, 0.0, 1.0, DType::F32, CPU).unwrap().dims(), &[0]);
    assert_eq!(Tensor::causal_mask(0, CPU).unwrap().dims(), &[0, 0]);
    assert_eq!(e.to_dtype(DType::BF16).unwrap().dims(), &[0, 3]);
    assert_eq!(e.argmax(1, false).unwrap().dims(), &[0]);
}

#[test]
fn creation_functions() {
    assert_eq!(vals(&Tensor::arange(0.0, 1.0, 0.25, DType::F32, CPU).unwrap()), [0.0, 0.25, 0.5, 0.75]);
    assert_eq!(vals(&Tensor::arange(5.0, 0.0, -2.0, DType::I64, CPU).unwrap()), [5.0, 3.0, 1.0]);
    assert_eq!(vals(&Tensor::full(&[2, 2], 1.5, DType::BF16, CPU).unwrap()), [1.5; 4]);
    let x = f32s(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], &[2, 3]);
    assert_eq!((x.zeros_like().unwrap().dims(), vals(&x.ones_like().unwrap())), (&[2usize, 3][..], vec![1.0; 6]));
    assert_eq!(vals(&x.full_like(-2.0).unwrap()), [-2.0; 6]);
    assert!(x.is_leaf() && !x.requires_grad());
    assert_eq!((x.rank(), x.numel(), x.dim(-1).unwrap(), x.device()), (2, 6, 3, CPU));
    let s = Tensor::scalar(4.0, DType::I64, CPU).unwrap();
    assert_eq!((s.rank(), s.item().unwrap()), (0, 4.0));
}
