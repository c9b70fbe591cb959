//! `<out>/loss.png`: train and validation loss against the step. plotters is built without a font
//! backend (no system font libraries to install), so tick labels and the legend are drawn with a small
//! stroke font of our own: a few line segments per glyph.

use super::metrics::Record;
use munja::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

const W: u32 = 900;
const H: u32 = 520;
const LEFT: i32 = 80;
const RIGHT: i32 = 30;
const TOP: i32 = 40;
const BOTTOM: i32 = 50;
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(214, 39, 40);
const AXIS: RGBColor = RGBColor(60, 60, 60);
const GRID: RGBColor = RGBColor(225, 225, 225);

/// Strokes of a glyph on a 4×6 grid (y down), one polyline per stroke.
fn glyph(c: char) -> &'static [&'static [(i32, i32)]] {
    match c.to_ascii_uppercase() {
        '0' => &[&[(0, 0), (4, 0), (4, 6), (0, 6), (0, 0)], &[(4, 0), (0, 6)]],
        '1' => &[&[(1, 1), (2, 0), (2, 6)], &[(1, 6), (3, 6)]],
        '2' => &[&[(0, 0), (4, 0), (4, 3), (0, 3), (0, 6), (4, 6)]],
        '3' => &[&[(0, 0), (4, 0), (4, 6), (0, 6)], &[(0, 3), (4, 3)]],
        '4' => &[&[(0, 0), (0, 3), (4, 3)], &[(4, 0), (4, 6)]],
        '5' | 'S' => &[&[(4, 0), (0, 0), (0, 3), (4, 3), (4, 6), (0, 6)]],
        '6' => &[&[(4, 0), (0, 0), (0, 6), (4, 6), (4, 3), (0, 3)]],
        '7' => &[&[(0, 0), (4, 0), (4, 6)]],
        '8' => &[&[(0, 0), (4, 0), (4, 6), (0, 6), (0, 0)], &[(0, 3), (4, 3)]],
        '9' => &[&[(4, 3), (0, 3), (0, 0), (4, 0), (4, 6), (0, 6)]],
        '.' => &[&[(2, 5), (2, 6)]],
        '-' => &[&[(0, 3), (4, 3)]],
        'A' => &[&[(0, 6), (0, 0), (4, 0), (4, 6)], &[(0, 3), (4, 3)]],
        'E' => &[&[(4, 0), (0, 0), (0, 6), (4, 6)], &[(0, 3), (3, 3)]],
        'I' => &[&[(2, 0), (2, 6)], &[(1, 0), (3, 0)], &[(1, 6), (3, 6)]],
        'L' => &[&[(0, 0), (0, 6), (4, 6)]],
        'N' => &[&[(0, 6), (0, 0), (4, 6), (4, 0)]],
        'O' => &[&[(0, 0), (4, 0), (4, 6), (0, 6), (0, 0)]],
        'P' => &[&[(0, 6), (0, 0), (4, 0), (4, 3), (0, 3)]],
        'R' => &[&[(0, 6), (0, 0), (4, 0), (4, 3), (0, 3), (4, 6)]],
        'T' => &[&[(0, 0), (4, 0)], &[(2, 0), (2, 6)]],
        'V' => &[&[(0, 0), (2, 6), (4, 0)]],
        _ => &[],
    }
}

/// Width in pixels of `text` at `scale` pixels per grid unit.
fn text_width(text: &str, scale: i32) -> i32 {
    (text.chars().count() as i32 * 6 - 2) * scale
}

fn draw_text<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    text: &str,
    (x, y): (i32, i32),
    scale: i32,
    color: RGBColor,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    for (i, c) in text.chars().enumerate() {
        let x0 = x + i as i32 * 6 * scale;
        for stroke in glyph(c) {
            let pts: Vec<(i32, i32)> = stroke.iter().map(|&(gx, gy)| (x0 + gx * scale, y + gy * scale)).collect();
            area.draw(&PathElement::new(pts, color.stroke_width(1)))?;
        }
    }
    Ok(())
}

/// Round tick positions covering [lo, hi]: steps of 1, 2 or 5 times a power of ten, about `n` of them.
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let raw = (hi - lo).max(1e-12) / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(t);
        t += step;
    }
    out
}

/// A tick label with as many decimals as the tick step needs.
fn label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10().floor()) as usize };
    format!("{v:.decimals$}")
}

/// Draws the curves of `records` to `path` (PNG). Does nothing for fewer than one record.
pub fn plot_losses(path: &Path, records: &[Record]) -> Result<()> {
    let to_err = |e: String| Error::File { path: path.display().to_string(), detail: format!("loss plot: {e}") };
    draw(path, records).map_err(to_err)
}

fn draw(path: &Path, records: &[Record]) -> std::result::Result<(), String> {
    let finite: Vec<f64> = records.iter().flat_map(|r| [r.train_loss, r.val_loss]).filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return Ok(());
    }
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let (x_lo, x_hi) = (0.0, records.iter().map(|r| r.step).max().unwrap_or(1).max(1) as f64);
    let lo = finite.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.05).max(0.01);
    let (y_lo, y_hi) = (lo - pad, hi + pad);
    let (px0, px1, py0, py1) = (LEFT, W as i32 - RIGHT, H as i32 - BOTTOM, TOP);
    let sx = |x: f64| px0 + ((x - x_lo) / (x_hi - x_lo) * (px1 - px0) as f64).round() as i32;
    let sy = |y: f64| py0 + ((y - y_lo) / (y_hi - y_lo) * (py1 - py0) as f64).round() as i32;

    let yt = ticks(y_lo, y_hi, 6);
    let y_step = if yt.len() > 1 { yt[1] - yt[0] } else { 1.0 };
    for &t in &yt {
        root.draw(&PathElement::new(vec![(px0, sy(t)), (px1, sy(t))], GRID.stroke_width(1))).map_err(e)?;
        let text = label(t, y_step);
        draw_text(&root, &text, (px0 - 10 - text_width(&text, 2), sy(t) - 6), 2, AXIS).map_err(e)?;
    }
    let xt = ticks(x_lo, x_hi, 8);
    let x_step = if xt.len() > 1 { xt[1] - xt[0] } else { 1.0 };
    for &t in &xt {
        root.draw(&PathElement::new(vec![(sx(t), py0), (sx(t), py0 + 5)], AXIS.stroke_width(1))).map_err(e)?;
        let text = label(t, x_step);
        draw_text(&root, &text, (sx(t) - text_width(&text, 2) / 2, py0 + 10), 2, AXIS).map_err(e)?;
    }
    root.draw(&PathElement::new(vec![(px0, py1), (px0, py0), (px1, py0)], AXIS.stroke_width(2))).map_err(e)?;
    draw_text(&root, "STEP", ((px0 + px1) / 2 - text_width("STEP", 2) / 2, py0 + 32), 2, AXIS).map_err(e)?;
    draw_text(&root, "LOSS", (10, 12), 2, AXIS).map_err(e)?;

    for (color, pick) in [(TRAIN, 0), (VAL, 1)] {
        let pts: Vec<(i32, i32)> = records
            .iter()
            .map(|r| (r.step as f64, if pick == 0 { r.train_loss } else { r.val_loss }))
            .filter(|(_, y)| y.is_finite())
            .map(|(x, y)| (sx(x), sy(y)))
            .collect();
        root.draw(&PathElement::new(pts.clone(), color.stroke_width(2))).map_err(e)?;
        for p in pts {
            root.draw(&Circle::new(p, 3, color.filled())).map_err(e)?;
        }
    }
    // Legend, top right.
    for (i, (name, color)) in [("TRAIN", TRAIN), ("VAL", VAL)].into_iter().enumerate() {
        let y = TOP + 10 + i as i32 * 22;
        let x = px1 - 130;
        root.draw(&PathElement::new(vec![(x, y + 6), (x + 30, y + 6)], color.stroke_width(3))).map_err(e)?;
        draw_text(&root, name, (x + 40, y), 2, color).map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}
