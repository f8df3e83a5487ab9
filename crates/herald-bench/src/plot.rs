//! `--plot file.png`: the latency distributions of a run as percentile
//! curves (HdrHistogram's classic layout: x = percentile on a log scale of
//! 1/(1-p), y = latency in ms), Herald's and the peer's in one picture.
//!
//! Lines are drawn with plotters' bitmap backend; text with the built-in
//! 8×8 bitmap font of `font8x8`, so no system font library is needed.
//!
//! Knows pictures, not how latencies were measured.

use std::path::Path;

use font8x8::legacy::BASIC_LEGACY;
use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 600;
/// Rightmost percentile shown: 99.999% (log10(1/(1-p)) = 5).
const NINES: f64 = 5.0;
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
];

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("drawing: {0}")]
    Draw(String),
    #[error("writing the PNG: {0}")]
    Png(#[from] png::EncodingError),
    #[error("writing the PNG: {0}")]
    Io(#[from] std::io::Error),
}

fn draw_err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError::Draw(format!("{e:?}"))
}

/// Draws `curves` (name, latencies in µs) under `title` into a PNG at `path`.
pub fn plot(
    path: &Path,
    title: &str,
    curves: &[(String, &Histogram<u64>)],
) -> Result<(), PlotError> {
    let mut buf = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        draw(&root, title, curves)?;
        root.present().map_err(draw_err)?;
    }
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&buf)?;
    writer.finish()?;
    Ok(())
}

/// The points of one curve: (nines, ms).
fn points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    h.iter_quantiles(10)
        .map(|v| {
            (
                v.quantile_iterated_to(),
                v.value_iterated_to() as f64 / 1000.0,
            )
        })
        .filter(|(q, _)| *q < 1.0)
        .map(|(q, ms)| ((1.0 / (1.0 - q)).log10().min(NINES), ms))
        .collect()
}

fn draw(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    curves: &[(String, &Histogram<u64>)],
) -> Result<(), PlotError> {
    let series: Vec<Vec<(f64, f64)>> = curves.iter().map(|(_, h)| points(h)).collect();
    let top = series
        .iter()
        .flatten()
        .map(|(_, y)| *y)
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.1;
    let (left, right, upper, lower) = (80, 30, 50, 60);
    let mut chart = ChartBuilder::on(root)
        .margin_left(left)
        .margin_right(right)
        .margin_top(upper)
        .margin_bottom(lower)
        .build_cartesian_2d(0f64..NINES, 0f64..top)
        .map_err(draw_err)?;
    let grid = RGBColor(220, 220, 220);
    let axis = RGBColor(60, 60, 60);
    for i in 0..=NINES as usize {
        let x = i as f64;
        chart
            .draw_series(LineSeries::new([(x, 0.0), (x, top)], grid))
            .map_err(draw_err)?;
        let (px, py) = chart.backend_coord(&(x, 0.0));
        let label = match i {
            0 => "0%".to_string(),
            1 => "90%".to_string(),
            n => format!("99.{}%", "9".repeat(n - 2)).replace("99.%", "99%"),
        };
        text(root, px - (label.len() as i32 * 4), py + 8, &label, axis, 1);
    }
    for i in 0..=5 {
        let y = top / 1.1 * i as f64 / 5.0;
        chart
            .draw_series(LineSeries::new([(0.0, y), (NINES, y)], grid))
            .map_err(draw_err)?;
        let (px, py) = chart.backend_coord(&(0.0, y));
        let label = if top < 10.0 {
            format!("{y:.2}")
        } else {
            format!("{y:.0}")
        };
        text(
            root,
            px - 8 - label.len() as i32 * 8,
            py - 4,
            &label,
            axis,
            1,
        );
    }
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (NINES, 0.0)], axis))
        .map_err(draw_err)?;
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (0.0, top)], axis))
        .map_err(draw_err)?;
    for (i, pts) in series.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(draw_err)?;
    }
    text(root, left, 12, title, BLACK, 2);
    text(
        root,
        (WIDTH / 2) as i32 - 80,
        HEIGHT as i32 - 22,
        "percentile",
        axis,
        1,
    );
    text(root, 8, upper - 18, "latency (ms)", axis, 1);
    for (i, (name, h)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let y = upper + 12 + i as i32 * 16;
        let x = left + 16;
        root.draw(&PathElement::new(
            vec![(x, y + 4), (x + 24, y + 4)],
            color.stroke_width(3),
        ))
        .map_err(draw_err)?;
        let label = format!(
            "{name}: p50 {:.2} p99 {:.2} p99.9 {:.2} ms",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.value_at_quantile(0.999) as f64 / 1000.0
        );
        text(root, x + 32, y, &label, BLACK, 1);
    }
    Ok(())
}

/// Draws ASCII `s` at pixel (x, y) with the 8×8 font, each dot `scale`
/// pixels wide.
fn text(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    x: i32,
    y: i32,
    s: &str,
    color: RGBColor,
    scale: i32,
) {
    for (i, ch) in s.chars().enumerate() {
        let glyph = BASIC_LEGACY
            .get(ch as usize)
            .copied()
            .unwrap_or(BASIC_LEGACY[usize::from(b'?')]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let px = x + (i as i32 * 8 + col) * scale + dx;
                        let py = y + row as i32 * scale + dy;
                        // Outside the picture: nothing to draw.
                        let _ = root.draw_pixel((px, py), &color);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png() {
        let mut h = super::super::stats::histogram();
        for v in 1..10_000u64 {
            h.record(v * 3).unwrap();
        }
        let dir = std::env::temp_dir().join(format!("herald-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.png");
        plot(&path, "test", &[("a".into(), &h), ("b".into(), &h)]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
