//! Trains a GPT on text with munja: by default a 0.8M-parameter character-level model (`char-tiny`) on
//! tiny Shakespeare, in about five minutes on two CPU cores, ending with its validation loss and a sample.
//!
//!     cargo run --release --example gpt
//!     cargo run --release --example gpt -- --resume runs/gpt              # continue a stopped run
//!     cargo run --release --example gpt -- --dtype bf16                   # bf16 with f32 master weights
//!     cargo run --release --example gpt -- --sample --prompt "ROMEO:"      # sample from runs/gpt
//!     cargo run --release --example gpt -- --init-from-hf gpt2/model.safetensors --eval-only --data FILE
//!
//! AdamW (decay on weight matrices only) with linear warmup and cosine decay; train/val loss every
//! --eval-interval steps into <out>/metrics.jsonl; <out>/loss.png at the end; a checkpoint (model, both
//! optimizer groups, step, generator states, tokenizer, config) every --checkpoint-interval steps, at the
//! end, and on SIGINT/SIGTERM, after which the program exits 0. `--resume` continues bit for bit on the
//! CPU. Run with --help for every flag.

#[path = "gpt/cli.rs"]
mod cli;
#[path = "gpt/commands.rs"]
mod commands;
#[path = "gpt/mod.rs"]
mod gpt;

use clap::Parser;

fn main() {
    let args = cli::Args::parse();
    let result = if args.eval_only {
        commands::eval_only(&args)
    } else if args.sample {
        commands::sample(&args)
    } else {
        commands::train(&args)
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
