//! Neural-network layers.

mod module;

pub use module::{join, Module};
