//! Activation functions as parameter-free modules, so they can sit in a `Sequential`.

use super::Module;
use crate::{Result, Tensor};

macro_rules! activation {
    ($(#[$doc:meta])* $name:ident, $method:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name;

        impl Module for $name {
            fn forward(&self, x: &Tensor) -> Result<Tensor> {
                x.$method()
            }
            fn visit_parameters(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Tensor)) {}
        }
    };
}

activation!(
    /// max(x, 0).
    Relu, relu
);
activation!(
    /// GELU with the tanh approximation (GPT-2's `gelu_new`, PyTorch's `GELU(approximate="tanh")`).
    Gelu, gelu
);
activation!(
    /// Exact GELU, x·Φ(x) (PyTorch's default `nn.GELU()`).
    GeluErf, gelu_erf
);
activation!(
    /// tanh(x).
    Tanh, tanh
);
activation!(
    /// 1/(1 + e^−x).
    Sigmoid, sigmoid
);
activation!(
    /// x·sigmoid(x), also called swish.
    Silu, silu
);
