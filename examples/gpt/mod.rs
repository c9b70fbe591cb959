//! The GPT example's program logic, kept apart from its command line so the integration tests
//! (tests/suite/gpt_example.rs) drive the same code the example runs.

pub mod checkpoint;
pub mod config;
pub mod corpus;
pub mod device;
pub mod groups;
pub mod metrics;
pub mod parallel;
pub mod plot;
pub mod report;
pub mod train;
