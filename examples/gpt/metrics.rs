//! `<out>/metrics.jsonl`: one flat JSON object of numbers per evaluation, appended as the run goes so a
//! crashed or preempted run keeps its history, and read back for the loss plot.

use munja::{Error, Result};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record {
    pub step: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub lr: f64,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

/// JSON has no NaN or infinity: a diverged loss is written as null (and read back as NaN).
fn number(v: f64) -> String {
    if v.is_finite() {
        v.to_string()
    } else {
        "null".into()
    }
}

impl Record {
    pub fn to_json(self) -> String {
        format!(
            "{{\"step\":{},\"train_loss\":{},\"val_loss\":{},\"lr\":{},\"tokens_per_s\":{},\"elapsed_s\":{}}}",
            self.step,
            number(self.train_loss),
            number(self.val_loss),
            number(self.lr),
            number(self.tokens_per_s),
            number(self.elapsed_s)
        )
    }

    /// Parses a line written by `to_json`; anything else is `None`.
    pub fn from_json(line: &str) -> Option<Record> {
        let body = line.trim().strip_prefix('{')?.strip_suffix('}')?;
        let mut r = Record { step: 0, train_loss: 0.0, val_loss: 0.0, lr: 0.0, tokens_per_s: 0.0, elapsed_s: 0.0 };
        let mut seen = 0;
        for field in body.split(',') {
            let (k, v) = field.split_once(':')?;
            let v = v.trim();
            let x = if v == "null" { f64::NAN } else { v.parse().ok()? };
            match k.trim().trim_matches('"') {
                "step" => r.step = v.parse().ok()?,
                "train_loss" => r.train_loss = x,
                "val_loss" => r.val_loss = x,
                "lr" => r.lr = x,
                "tokens_per_s" => r.tokens_per_s = x,
                "elapsed_s" => r.elapsed_s = x,
                _ => continue,
            }
            seen += 1;
        }
        (seen == 6).then_some(r)
    }
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Io { path: path.display().to_string(), source: e }
}

pub fn append(path: &Path, r: &Record) -> Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(path).map_err(|e| io_err(path, e))?;
    writeln!(f, "{}", r.to_json()).map_err(|e| io_err(path, e))
}

/// Every record of the file (none when it does not exist), skipping lines that do not parse, such as a
/// last line cut short by a crash.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().filter_map(Record::from_json).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(path, e)),
    }
}

/// Drops the records after `step`: a resumed run recomputes them from its checkpoint, and keeping the
/// lines a stopped run wrote past its last checkpoint would list those steps twice.
pub fn truncate_after(path: &Path, step: usize) -> Result<()> {
    let kept: String = read(path)?.iter().filter(|r| r.step <= step).map(|r| r.to_json() + "\n").collect();
    if path.exists() {
        fs::write(path, kept).map_err(|e| io_err(path, e))?;
    }
    Ok(())
}
