//! The plots: admitted tokens per second over time against the quota, one line per strategy,
//! as SVG (plotters, SVG backend only; text is measured by plotters' own estimate, no fonts).

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

/// Seconds averaged into one point: fixed windows make per-second counts saw-toothed.
const BUCKET: u64 = 5;

/// One line: a strategy's name and its tokens admitted per second.
pub struct Line<'a> {
    pub name: &'a str,
    pub per_second: &'a BTreeMap<u64, u64>,
}

/// Draws `lines` and the quota (`quota_tps`) into `path`.
pub fn tokens_over_time(
    path: &Path,
    title: &str,
    quota_tps: f64,
    lines: &[Line<'_>],
) -> Result<(), Box<dyn std::error::Error>> {
    let end = lines
        .iter()
        .filter_map(|l| l.per_second.keys().next_back())
        .max()
        .map_or(BUCKET, |last| last + 1);
    let series: Vec<Vec<(f64, f64)>> = lines
        .iter()
        .map(|line| {
            (0..end.div_ceil(BUCKET))
                .map(|b| {
                    let sum: u64 = line
                        .per_second
                        .range(b * BUCKET..(b + 1) * BUCKET)
                        .map(|(_, t)| *t)
                        .sum();
                    ((b * BUCKET) as f64, sum as f64 / BUCKET as f64)
                })
                .collect()
        })
        .collect();
    let top = series
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold(quota_tps, f64::max)
        * 1.15;

    let root = SVGBackend::new(path, (800, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..end as f64, 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc(format!("seconds ({BUCKET} s averages)"))
        .y_desc("admitted tokens / s")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, quota_tps), (end as f64, quota_tps)],
            BLACK.stroke_width(1),
        ))?
        .label("TPM quota")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK));
    let palette = [
        RGBColor(150, 150, 150),
        RGBColor(214, 39, 40),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
    ];
    for (i, (line, points)) in lines.iter().zip(series).enumerate() {
        let color = palette[i % palette.len()];
        let width = if i + 1 == lines.len() { 3 } else { 1 };
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(width)))?
            .label(line.name)
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 18, y)], color.stroke_width(width))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
