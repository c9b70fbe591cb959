//! User mistakes are values, not panics: every one below must come back as `Err`, and the message must
//! name the op and what it was given (shapes, dtypes, dims, indices) so the failing line is obvious.

use munja::{DType, Device, Error, Result, Tensor};

fn t(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n).map(|i| i as f32 * 0.5 - 1.0).collect(), shape, Device::Cpu).unwrap()
}

fn t64(shape: &[usize]) -> Tensor {
    t(shape).to_dtype(DType::F64).unwrap()
}

fn idx(v: &[i64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape, Device::Cpu).unwrap()
}

/// Asserts `r` is an error whose message contains every needle; returns the message.
#[track_caller]
fn expect_err<T: std::fmt::Debug>(r: Result<T>, needles: &[&str]) -> String {
    let msg = match r {
        Ok(v) => panic!("expected an error mentioning {needles:?}, got Ok({v:?})"),
        Err(e) => e.to_string(),
    };
    for n in needles {
        assert!(msg.contains(n), "error message {msg:?} does not mention {n:?}");
    }
    msg
}

// ---- shape mismatches ----

#[test]
fn broadcasting_binary_ops_reject_incompatible_shapes() {
    let (a, b) = (t(&[2, 3]), t(&[4, 3]));
    expect_err(a.add(&b), &["add", "[2, 3]", "[4, 3]"]);
    expect_err(a.sub(&b), &["sub", "[2, 3]", "[4, 3]"]);
    expect_err(a.mul(&b), &["mul", "[2, 3]", "[4, 3]"]);
    expect_err(a.div(&b), &["div", "[2, 3]", "[4, 3]"]);
    expect_err(a.maximum(&b), &["maximum", "[2, 3]", "[4, 3]"]);
    expect_err(a.minimum(&b), &["minimum", "[2, 3]", "[4, 3]"]);
    expect_err(a.lt(&b), &["[2, 3]", "[4, 3]"]);
    // Trailing dims must agree even when the ranks differ.
    expect_err(t(&[2, 3, 4]).add(&t(&[3])), &["add", "[2, 3, 4]", "[3]"]);
}

#[test]
fn matmul_rejects_mismatched_shapes() {
    expect_err(t(&[2, 3]).matmul(&t(&[4, 5])), &["matmul", "[2, 3]", "[4, 5]"]);
    expect_err(t(&[2, 2, 3]).matmul(&t(&[3, 3, 5])), &["matmul", "[2]", "[3]"]);
    expect_err(t(&[3]).matmul(&t(&[4])), &["matmul"]);
    expect_err(t(&[2, 3]).matmul(&t(&[2])), &["matmul"]);
    expect_err(Tensor::scalar(1.0, DType::F32, Device::Cpu).unwrap().matmul(&t(&[2, 2])), &["matmul", "[]", "[2, 2]"]);
}

#[test]
fn cat_and_stack_reject_mismatched_shapes() {
    let (a, b) = (t(&[2, 3]), t(&[2, 4]));
    expect_err(Tensor::cat(&[&a, &b], 0), &["cat", "[2, 3]", "[2, 4]"]);
    expect_err(Tensor::cat(&[&a, &t(&[3])], 0), &["cat", "[2, 3]", "[3]"]);
    expect_err(Tensor::cat(&[], 0), &["cat"]);
    expect_err(Tensor::stack(&[&a, &t(&[3, 2])], 0), &["stack", "[2, 3]", "[3, 2]"]);
    expect_err(Tensor::stack(&[], 0), &["stack"]);
}

#[test]
fn reshape_and_expand_reject_impossible_shapes() {
    let x = t(&[2, 3]);
    expect_err(x.reshape([4, 2]), &["reshape", "[2, 3]", "[4, 2]"]);
    expect_err(x.reshape([5, -1]), &["reshape", "[2, 3]", "[5, -1]"]);
    expect_err(x.reshape([-1, -1]), &["reshape", "[-1, -1]"]);
    expect_err(x.reshape([-2, -3]), &["reshape", "[-2, -3]"]);
    expect_err(x.expand([4, 3]), &["expand", "[2, 3]", "[4, 3]"]);
    expect_err(x.expand([3]), &["expand", "[2, 3]", "[3]"]);
    expect_err(x.expand([-1, 2, 3]), &["expand", "[2, 3]"]);
    expect_err(x.squeeze(1), &["squeeze", "[2, 3]"]);
    expect_err(x.permute([1, 0, 2]), &["permute", "[1, 0, 2]"]);
    expect_err(x.permute([1, 1]), &["permute", "[1, 1]"]);
    expect_err(t(&[2, 3, 4]).t(), &["t()", "[2, 3, 4]"]);
    expect_err(t(&[3]).tril(0), &["tril", "[3]"]);
    expect_err(x.narrow(0, 1, 2), &["narrow", "[2, 3]"]);
    expect_err(x.narrow(1, usize::MAX, 2), &["narrow", "[2, 3]"]);
    expect_err(x.split(0, 0), &["split"]);
    expect_err(x.chunk(0, 0), &["chunk"]);
    expect_err(x.flatten(1, 0), &["flatten"]);
    expect_err(x.item(), &["item", "[2, 3]"]);
}

#[test]
fn norms_and_losses_reject_mismatched_shapes() {
    let x = t(&[2, 3]);
    expect_err(x.layer_norm(&[4], None, None, 1e-5), &["layer_norm", "[4]", "[2, 3]"]);
    expect_err(x.layer_norm(&[2, 2, 3], None, None, 1e-5), &["layer_norm", "[2, 2, 3]", "[2, 3]"]);
    expect_err(x.layer_norm(&[], None, None, 1e-5), &["layer_norm", "[]", "[2, 3]"]);
    expect_err(x.layer_norm(&[3], Some(&t(&[4])), None, 1e-5), &["layer_norm", "[4]", "[3]"]);
    expect_err(x.layer_norm(&[3], None, Some(&t(&[1, 3])), 1e-5), &["layer_norm", "[1, 3]", "[3]"]);
    expect_err(x.rms_norm(&[2], None, 1e-5), &["rms_norm", "[2]", "[2, 3]"]);
    expect_err(x.rms_norm(&[3], Some(&t(&[2])), 1e-5), &["rms_norm", "[2]", "[3]"]);

    let logits = t(&[4, 5]);
    expect_err(logits.cross_entropy(&idx(&[0, 1, 2], &[3]), -100), &["cross_entropy", "[4, 5]", "[3]"]);
    expect_err(logits.cross_entropy(&idx(&[0, 1, 2, 3], &[2, 2]), -100), &["cross_entropy", "[4, 5]", "[2, 2]"]);
    expect_err(logits.cross_entropy_per_row(&idx(&[0; 5], &[5]), -100), &["cross_entropy", "[4, 5]", "[5]"]);
    let s = Tensor::scalar(1.0, DType::F32, Device::Cpu).unwrap();
    expect_err(s.cross_entropy(&idx(&[0], &[]), -100), &["cross_entropy", "[]"]);
    // Zero classes cannot be scored, even when every target is ignored.
    expect_err(t(&[2, 0]).cross_entropy(&idx(&[-100, -100], &[2]), -100), &["cross_entropy", "[2, 0]"]);
    expect_err(x.mse_loss(&t(&[3, 2])), &["mse_loss", "[2, 3]", "[3, 2]"]);
}

#[test]
fn indexing_ops_reject_mismatched_shapes() {
    let x = t(&[3, 4]);
    expect_err(x.gather(1, &idx(&[0, 1, 2], &[3])), &["gather", "[3]", "[3, 4]"]);
    expect_err(x.gather(1, &idx(&[0; 8], &[4, 2])), &["gather", "[4, 2]", "[3, 4]"]);
    expect_err(x.scatter_add(1, &idx(&[0; 6], &[3, 2]), &t(&[3, 3])), &["scatter_add", "[3, 3]", "[3, 2]"]);
    expect_err(x.index_add(0, &idx(&[0, 1], &[2]), &t(&[3, 4])), &["index_add", "[3, 4]", "[2]"]);
    expect_err(x.index_add(1, &idx(&[0, 1], &[2]), &t(&[3, 3])), &["index_add", "[3, 3]", "[2]", "[3, 4]"]);
    expect_err(x.index_select(0, &idx(&[0, 1, 0, 1], &[2, 2])), &["index_select", "[2, 2]"]);
    expect_err(t(&[5]).embedding(&idx(&[0], &[1])), &["embedding", "[5]"]);
    let m = Tensor::ones(&[2], DType::U8, Device::Cpu).unwrap();
    expect_err(Tensor::where_cond(&m, &t(&[3]), &t(&[3])), &["where", "[2]", "[3]"]);
    let big = Tensor::ones(&[2, 3], DType::U8, Device::Cpu).unwrap();
    expect_err(t(&[3]).masked_fill(&big, 0.0), &["masked_fill", "[2, 3]", "[3]"]);
}

#[test]
fn autograd_calls_reject_bad_shapes() {
    let x = t(&[2, 3]).set_requires_grad(true);
    let y = x.mul_scalar(2.0).unwrap();
    expect_err(y.backward(), &["backward", "[2, 3]"]);
    expect_err(y.backward_with(&t(&[3, 2])), &["backward_with", "[3, 2]", "[2, 3]"]);
    expect_err(x.set_grad(Some(t(&[3]))), &["set_grad", "[3]", "[2, 3]"]);
    expect_err(x.set_grad(Some(t64(&[2, 3]))), &["set_grad", "f64", "f32"]);
    expect_err(x.assign(&t(&[6])), &["assign", "[6]", "[2, 3]"]);
    expect_err(x.assign(&t64(&[2, 3])), &["assign", "F32", "F64"]);
}

// ---- dtype mismatches ----

#[test]
fn mixed_float_dtypes_are_rejected() {
    let (a, b) = (t(&[2, 2]), t64(&[2, 2]));
    for (name, r) in [
        ("add", a.add(&b)),
        ("sub", a.sub(&b)),
        ("mul", a.mul(&b)),
        ("div", a.div(&b)),
        ("maximum", a.maximum(&b)),
        ("matmul", a.matmul(&b)),
        ("cat", Tensor::cat(&[&a, &b], 0)),
        ("compare", a.lt(&b)),
        ("mse_loss", a.mse_loss(&b)),
        ("layer_norm", a.layer_norm(&[2], Some(&t64(&[2])), None, 1e-5)),
        ("index_add", a.index_add(0, &idx(&[0, 1], &[2]), &b)),
        ("scatter_add", a.scatter_add(0, &idx(&[0; 4], &[2, 2]), &b)),
    ] {
        expect_err(r, &[name, "F32", "F64"]);
    }
    let m = Tensor::ones(&[2, 2], DType::U8, Device::Cpu).unwrap();
    expect_err(Tensor::where_cond(&m, &a, &b), &["where", "F32", "F64"]);
}

#[test]
fn masks_must_be_u8_and_indices_i64() {
    let x = t(&[2, 3]);
    let fmask = Tensor::ones(&[2, 3], DType::F32, Device::Cpu).unwrap();
    expect_err(Tensor::where_cond(&fmask, &x, &x), &["where", "U8", "F32"]);
    expect_err(x.masked_fill(&idx(&[1; 6], &[2, 3]), 0.0), &["where", "U8", "I64"]);

    let fidx = Tensor::from_vec(vec![0.0f32, 1.0], &[2], Device::Cpu).unwrap();
    let uidx = Tensor::from_vec(vec![0u8, 1], &[2], Device::Cpu).unwrap();
    expect_err(x.index_select(0, &fidx), &["index_select", "I64", "F32"]);
    expect_err(x.index_select(1, &uidx), &["index_select", "I64", "U8"]);
    expect_err(x.embedding(&fidx), &["embedding", "I64", "F32"]);
    expect_err(x.gather(1, &fidx.reshape([1, 2]).unwrap()), &["gather", "I64", "F32"]);
    expect_err(x.scatter_add(1, &uidx.reshape([1, 2]).unwrap(), &t(&[1, 2])), &["scatter_add", "I64", "U8"]);
    expect_err(x.index_add(0, &fidx, &x), &["index_add", "I64", "F32"]);
    expect_err(x.cross_entropy(&fidx, -100), &["cross_entropy", "I64", "F32"]);
}

#[test]
fn float_only_ops_reject_integer_tensors() {
    let i = idx(&[1, 2, 3, 4], &[2, 2]);
    let e = expect_err(i.exp(), &["exp", "I64"]);
    assert!(e.contains("float"), "{e}");
    expect_err(i.tanh(), &["tanh", "I64"]);
    expect_err(i.clamp(0.0, 1.0), &["clamp", "I64"]);
    expect_err(i.div(&i), &["div", "I64"]);
    let u = i.gt_scalar(2.0).unwrap();
    expect_err(u.mul(&u), &["mul", "U8"]);
    expect_err(i.matmul(&i), &["matmul", "I64"]);
    expect_err(i.softmax(-1), &["softmax", "I64"]);
    expect_err(i.layer_norm(&[2], None, None, 1e-5), &["layer_norm", "I64"]);
    expect_err(i.cross_entropy(&idx(&[0, 1], &[2]), -100), &["cross_entropy", "I64"]);
}

#[test]
fn to_vec_checks_the_element_type() {
    let x = t(&[2, 2]);
    expect_err(x.to_vec::<f64>(), &["to_vec", "F64", "F32"]);
    expect_err(x.to_vec::<i64>(), &["to_vec", "I64", "F32"]);
    expect_err(idx(&[1], &[1]).to_vec::<u8>(), &["to_vec", "U8", "I64"]);
    expect_err(x.to_ndarray::<munja::bf16>(), &["BF16", "F32"]);
    assert_eq!(x.to_vec::<f32>().unwrap().len(), 4);
}

// ---- bad dims ----

#[test]
fn dims_out_of_range_are_rejected() {
    let x = t(&[2, 3]);
    expect_err(x.sum(&[2], false), &["sum", "dimension 2", "rank 2"]);
    expect_err(x.sum(&[-3], false), &["sum", "dimension -3", "rank 2"]);
    expect_err(x.sum(&[0, 0], false), &["sum", "twice"]);
    expect_err(x.mean(&[5], true), &["mean", "5", "rank 2"]);
    expect_err(x.max(&[-3], false), &["max", "-3"]);
    expect_err(x.min(&[2], false), &["min", "2"]);
    expect_err(x.var(&[2], 1, false), &["var", "2"]);
    expect_err(x.argmax(2, false), &["argmax", "2"]);
    expect_err(x.argmax(-3, false), &["argmax", "-3"]);
    expect_err(x.softmax(2), &["softmax", "2", "rank 2"]);
    expect_err(x.log_softmax(-3), &["log_softmax", "-3", "rank 2"]);
    expect_err(x.transpose(0, 2), &["transpose", "2"]);
    expect_err(x.transpose(-3, 0), &["transpose", "-3"]);
    expect_err(x.narrow(2, 0, 1), &["narrow", "2"]);
    expect_err(x.squeeze(-3), &["squeeze", "-3"]);
    expect_err(x.unsqueeze(3), &["unsqueeze", "3", "rank 3"]);
    expect_err(x.unsqueeze(-4), &["unsqueeze", "-4"]);
    expect_err(x.permute([0, 2]), &["permute", "2"]);
    expect_err(x.flatten(0, 2), &["flatten", "2"]);
    expect_err(x.split(1, 2), &["split", "2"]);
    expect_err(x.chunk(2, -3), &["chunk", "-3"]);
    expect_err(x.dim(2), &["dim", "2"]);
    expect_err(Tensor::cat(&[&x, &x], 2), &["cat", "2"]);
    expect_err(Tensor::stack(&[&x, &x], 3), &["stack", "3", "rank 3"]);
    expect_err(Tensor::stack(&[&x, &x], -4), &["stack", "-4"]);
    let i = idx(&[0], &[1]);
    expect_err(x.index_select(2, &i), &["index_select", "2"]);
    expect_err(x.gather(-3, &idx(&[0], &[1, 1])), &["gather", "-3"]);
    expect_err(x.index_add(2, &i, &x), &["index_add", "2"]);
    // 0-d tensors have no dims at all.
    let s = Tensor::scalar(1.0, DType::F32, Device::Cpu).unwrap();
    expect_err(s.softmax(0), &["softmax", "rank 0"]);
    expect_err(s.argmax(0, false), &["argmax", "rank 0"]);
}

// ---- out-of-range indices ----

#[test]
fn out_of_range_indices_are_rejected() {
    let table = t(&[5, 3]);
    expect_err(table.embedding(&idx(&[0, 5], &[2])), &["embedding", "index 5", "size 5"]);
    expect_err(table.embedding(&idx(&[-1], &[1, 1])), &["embedding", "index -1", "size 5"]);
    expect_err(table.index_select(1, &idx(&[3], &[1])), &["index_select", "index 3", "size 3"]);
    let x = t(&[2, 4]);
    expect_err(x.gather(1, &idx(&[0, 4], &[1, 2])), &["gather", "index 4", "size 4"]);
    expect_err(x.gather(0, &idx(&[-1], &[1, 1])), &["gather", "index -1", "size 2"]);
    expect_err(x.scatter_add(1, &idx(&[7], &[1, 1]), &t(&[1, 1])), &["scatter_add", "index 7", "size 4"]);
    expect_err(x.index_add(0, &idx(&[2], &[1]), &t(&[1, 4])), &["index_add", "index 2", "size 2"]);
    let logits = t(&[3, 5]);
    expect_err(logits.cross_entropy(&idx(&[0, 5, 1], &[3]), -100), &["cross_entropy", "index 5", "size 5"]);
    expect_err(logits.cross_entropy(&idx(&[0, -1, 1], &[3]), -100), &["cross_entropy", "index -1", "size 5"]);
    expect_err(logits.cross_entropy_per_row(&idx(&[9, 0, 0], &[3]), 0), &["cross_entropy", "index 9"]);
    // The ignore index itself is fine even though it is out of range.
    assert!(logits.cross_entropy(&idx(&[0, -100, 4], &[3]), -100).is_ok());
}

// ---- creation, autograd and read-back ----

#[test]
fn from_vec_checks_the_element_count() {
    expect_err(Tensor::from_vec(vec![1.0f32; 5], &[2, 3], Device::Cpu), &["from_vec", "5 elements", "[2, 3]"]);
    expect_err(Tensor::from_slice(&[1i64, 2], &[3], Device::Cpu), &["from_vec", "2 elements", "[3]"]);
    expect_err(Tensor::from_vec(vec![1u8], &[0], Device::Cpu), &["from_vec", "[0]"]);
    expect_err(Tensor::from_vec(Vec::<f64>::new(), &[], Device::Cpu), &["from_vec", "[]"]);
}

#[test]
fn backward_needs_a_scalar_that_requires_grad() {
    let x = t(&[2, 3]).set_requires_grad(true);
    expect_err(x.mul_scalar(3.0).unwrap().backward(), &["backward", "one-element", "[2, 3]"]);
    let plain = t(&[2, 3]);
    expect_err(plain.sum_all().unwrap().backward(), &["backward", "does not require grad"]);
    expect_err(Tensor::zeros(&[0], DType::F32, Device::Cpu).unwrap().backward(), &["backward", "[0]"]);
}

#[test]
fn clamp_and_dropout_check_their_parameters() {
    let x = t(&[2, 3]);
    expect_err(x.clamp(2.0, 1.0), &["clamp", "2", "1"]);
    expect_err(x.dropout(1.5, true), &["dropout", "1.5"]);
    expect_err(x.dropout(-0.1, true), &["dropout", "-0.1"]);
    expect_err(x.dropout(f64::NAN, false), &["dropout", "NaN"]);
    expect_err(x.dropout_with(&mut munja::Generator::new(1), 2.0, true), &["dropout", "2"]);
    expect_err(Tensor::arange(0.0, 1.0, 0.0, DType::F32, Device::Cpu), &["arange", "step 0"]);
    expect_err(t(&[0, 3]).max(&[], false), &["max", "empty"]);
    expect_err(t(&[3, 0]).argmax(1, false), &["argmax", "empty"]);
    // The boundaries themselves are valid.
    assert!(x.dropout(0.0, true).is_ok() && x.dropout(1.0, true).is_ok() && x.clamp(1.0, 1.0).is_ok());
}

#[test]
fn cuda_without_a_device_is_an_error() {
    // On this machine there is no GPU (and the build may lack nvcc): either way the error names the device.
    if munja::cuda::is_available() {
        eprintln!("skipped: a CUDA device is present");
        return;
    }
    let cuda = Device::Cuda(0);
    let check = |r: Result<Tensor>| match r {
        Err(Error::DeviceUnavailable { device, .. }) => assert_eq!(device, cuda),
        other => panic!("expected DeviceUnavailable, got {other:?}"),
    };
    let msg = expect_err(Tensor::zeros(&[2, 2], DType::F32, cuda), &["not available"]);
    assert!(msg.contains("Cuda(0)"), "{msg}");
    check(Tensor::zeros(&[2, 2], DType::F32, cuda));
    check(Tensor::ones(&[3], DType::BF16, cuda));
    check(Tensor::full(&[1], 2.0, DType::F64, cuda));
    check(Tensor::scalar(2.0, DType::F32, cuda));
    check(Tensor::from_vec(vec![1.0f32, 2.0], &[2], cuda));
    check(Tensor::arange(0.0, 4.0, 1.0, DType::I64, cuda));
    check(Tensor::rand(&[2], DType::F32, cuda));
    check(Tensor::randn_with(&mut munja::Generator::new(3), &[2], DType::F32, cuda));
    check(t(&[2]).to_device(cuda));
    check(Tensor::causal_mask(3, cuda));
    // Moving to the CPU from the CPU is a no-op, not an error.
    assert!(t(&[2]).to_device(Device::Cpu).is_ok());
}
