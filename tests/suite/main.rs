//! One integration-test crate (so the build links one binary); each file covers one area.

mod common;
mod cuda;
mod data;
mod dist;
mod errors;
mod fixtures;
mod gpt;
mod gpt_example;
mod gpt_parallel;
mod gradcheck;
mod io;
mod mixed_precision;
mod nn;
mod ops;
mod optim;
