//! The charts of docs/performance.md, drawn as SVG from one run's report: throughput (onair and
//! the bare loop by broadcast count; onair by prefetch) and the distribution of schedule lateness.
//! Text is written as SVG `<text>` elements (no font files are read).

use std::ops::Range;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::{Report, Throughput, trim};
use crate::{scaled, thousands};

type Drawn = Result<(), Box<dyn std::error::Error>>;

/// A line of a panel: its label, its colour, its points.
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

const ONAIR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const BARE: RGBColor = RGBColor(0xff, 0x7f, 0x0e);

/// Two panels: events/s by broadcast count (onair, bare loop; prefetch 256), onair by prefetch.
pub fn throughput(report: &Report, path: &Path) -> Drawn {
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let top = report.throughput.iter().map(|point| point.events_per_second).fold(1.0, f64::max) * 1.15;
    let points = |side: &str, keep: &dyn Fn(&Throughput) -> Option<f64>| -> Vec<(f64, f64)> {
        let mut points: Vec<(f64, f64)> = report
            .throughput
            .iter()
            .filter(|point| point.side == side)
            .filter_map(|point| keep(point).map(|x| (x, point.events_per_second)))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points.dedup_by(|a, b| a.0 == b.0);
        points
    };
    let by_count = |point: &Throughput| (point.prefetch == 256).then_some(point.broadcasts as f64);
    let by_prefetch = |point: &Throughput| (point.broadcasts == 10).then_some(f64::from(point.prefetch));
    panel(
        &left,
        "events/s by broadcast count (prefetch 256)",
        ("broadcasts", 5.0..20_000.0),
        top,
        vec![("onair", ONAIR, points("onair", &by_count)), ("bare loop", BARE, points("bare loop", &by_count))],
    )?;
    panel(
        &right,
        "onair events/s by prefetch (10 broadcasts)",
        ("prefetch", 10.0..1_600.0),
        top,
        vec![("onair", ONAIR, points("onair", &by_prefetch))],
    )?;
    root.present()?;
    Ok(())
}

/// One panel of the throughput chart: lines with points over a logarithmic x axis.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    (x_desc, x_range): (&str, Range<f64>),
    top: f64,
    series: Vec<Series>,
) -> Drawn {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range.log_scale(), 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("events/s")
        .x_label_formatter(&|value| trim(*value))
        .y_label_formatter(&|value| trim(*value))
        .draw()?;
    for (label, color, points) in series {
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|point| Circle::new(point, 4, color.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw()?;
    Ok(())
}

/// A histogram of schedule lateness (fired) with p50 and p99 marked. The x axis ends a little past
/// the p99 (or just past the max); the max is written in the caption.
pub fn lateness(report: &Report, path: &Path) -> Drawn {
    let mut values = report.lateness_ms.clone();
    values.sort_by(f64::total_cmp);
    let at = |quantile: f64| values[((values.len() as f64 * quantile) as usize).min(values.len() - 1)];
    let (p50, p99, max) = (at(0.5), at(0.99), values[values.len() - 1]);
    let low = values[0].min(0.0);
    let high = (p99 * 1.5).max(p50 * 2.0).min(max * 1.05).max(low + 0.01);
    const BINS: usize = 50;
    let width = (high - low) / BINS as f64;
    let mut counts = [0u32; BINS];
    for value in values.iter().filter(|value| **value <= high) {
        let bin = (((value - low) / width) as usize).min(BINS - 1);
        counts[bin] += 1;
    }
    let tallest = f64::from(counts.iter().copied().max().unwrap_or(1)) * 1.15;

    let root = SVGBackend::new(path, (800, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "schedule lateness (fired), {} steps, {} armed: p50 {} ms, p99 {} ms, max {} ms",
                thousands(values.len()),
                thousands(scaled(100_000)),
                trim(p50),
                trim(p99),
                trim(max)
            ),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(low..high, 0f64..tallest)?;
    chart
        .configure_mesh()
        .x_desc("lateness (ms)")
        .y_desc("steps")
        .x_label_formatter(&|value| trim(*value))
        .y_label_formatter(&|value| trim(*value))
        .draw()?;
    chart.draw_series(counts.iter().enumerate().map(|(bin, count)| {
        let start = low + width * bin as f64;
        Rectangle::new([(start, 0.0), (start + width, f64::from(*count))], ONAIR.mix(0.6).filled())
    }))?;
    for (label, value, color) in [("p50", p50, BLACK), ("p99", p99, RED)] {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(value, 0.0), (value, tallest * 0.95)],
                color.stroke_width(2),
            )))?
            .label(format!("{label} {} ms", trim(value)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(std::iter::once(Text::new(
            label.to_string(),
            (value, tallest * 0.97),
            ("sans-serif", 14).into_font().color(&color),
        )))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
