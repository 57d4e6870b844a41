//! The SVG chart: pending tickets on each arm's server over time, heavy-load phases shaded.
//!
//! Drawn with plotters' SVG backend and its built-in text layout, so it needs no system fonts.

use anyhow::anyhow;
use plotters::prelude::*;

use crate::arm::ArmId;
use crate::experiment::Outcome;

fn colour(id: ArmId) -> RGBColor {
    match id {
        ArmId::Allow => RGBColor(214, 39, 40),
        ArmId::Forbid => RGBColor(31, 119, 180),
        ArmId::ForbidDeadline => RGBColor(44, 160, 44),
        ArmId::ForbidNoDeadline => RGBColor(255, 127, 14),
        ArmId::Replace => RGBColor(148, 103, 189),
        ArmId::Wait => RGBColor(140, 86, 75),
        ArmId::ForbidKilled => RGBColor(23, 190, 207),
        ArmId::PostgresFenced => RGBColor(188, 189, 34),
        ArmId::PostgresUnfenced => RGBColor(227, 119, 194),
    }
}

/// Samples as a step line: a gauge holds its value until the next sample.
fn steps(samples: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut points = Vec::with_capacity(samples.len() * 2);
    for pair in samples.windows(2) {
        points.push(pair[0]);
        points.push((pair[1].0, pair[0].1));
    }
    if let Some(last) = samples.last() {
        points.push(*last);
    }
    points
}

/// The chart as an SVG document.
pub fn pending_svg(outcome: &Outcome) -> anyhow::Result<String> {
    let err = |e: &dyn std::fmt::Display| anyhow!("cannot draw the chart: {e}");
    let x_end = outcome
        .arms
        .iter()
        .flat_map(|a| a.samples.last().map(|s| s.at))
        .fold(outcome.params.span.as_secs_f64(), f64::max)
        .ceil();
    let y_top = outcome
        .arms
        .iter()
        .flat_map(|a| a.samples.iter().map(|s| s.scrape.pending))
        .fold(1.0, f64::max)
        + 1.0;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Tickets pending on each policy's server",
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..x_end, 0f64..y_top)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("seconds since the first slot")
            .y_desc("pending tickets")
            .y_labels(label_count(y_top))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(|e| err(&e))?;

        let shade = RGBColor(225, 225, 225);
        for (index, (on, off)) in outcome.heavy_phases().into_iter().enumerate() {
            let area = chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(on.max(0.0), 0.0), (off.min(x_end), y_top)],
                    shade.filled(),
                )))
                .map_err(|e| err(&e))?;
            if index == 0 {
                area.label("heavy load").legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 20, y + 5)], shade.filled())
                });
            }
        }

        // Wider lines first, so a line drawn later on the same values stays visible inside it.
        let count = outcome.arms.len();
        for (index, arm) in outcome.arms.iter().enumerate() {
            let colour = colour(arm.arm.id);
            let width = u32::try_from(2 + 2 * (count - 1 - index)).unwrap_or(2);
            let points: Vec<(f64, f64)> = arm
                .samples
                .iter()
                .filter(|s| s.at >= 0.0)
                .map(|s| (s.at, s.scrape.pending))
                .collect();
            chart
                .draw_series(LineSeries::new(steps(&points), colour.stroke_width(width)))
                .map_err(|e| err(&e))?
                .label(arm.arm.label())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// One label per whole ticket up to `y_top`, at most 15.
fn label_count(y_top: f64) -> usize {
    // Clamped first, so the cast can neither wrap nor cut.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "clamped to 0..=14 just before"
    )]
    let whole = y_top.clamp(0.0, 14.0) as usize;
    whole + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gauge_holds_until_the_next_sample() {
        assert_eq!(
            steps(&[(0.0, 1.0), (1.0, 3.0)]),
            vec![(0.0, 1.0), (1.0, 1.0), (1.0, 3.0)]
        );
        assert!(steps(&[]).is_empty());
    }
}
