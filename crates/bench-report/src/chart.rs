//! PNG charts: one per suite and unit, a group of bars per figure (one bar per contender, its
//! median) with a whisker from the smallest to the largest round.

use std::path::{Path, PathBuf};
use std::sync::Once;

use backstop_bench_report::{ReportError, Summary};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const FONT: &str = "sans-serif";

/// The DejaVu font embedded in the binary: no system font library is needed.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // cannot fail for this well-formed font; if it did, text would be missing, not wrong
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// An axis label: 12k, 1.5M, 0.25.
fn compact(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn chart_error(e: impl std::fmt::Display) -> ReportError {
    ReportError::Invalid(format!("drawing a chart: {e}"))
}

fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' => out.push(c.to_ascii_lowercase()),
            'µ' => out.push('u'),
            _ if !out.ends_with('-') => out.push('-'),
            _ => {}
        }
    }
    out.trim_matches('-').to_string()
}

fn first_seen<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// Draws every chart into `dir`; returns (suite, file) pairs in drawing order.
pub fn render_all(
    summaries: &[Summary],
    dir: &Path,
) -> Result<Vec<(String, PathBuf)>, ReportError> {
    register_font();
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let mut out = Vec::new();
    let pairs: Vec<(&str, &str)> = {
        let mut v: Vec<(&str, &str)> = Vec::new();
        for s in summaries {
            let p = (s.suite.as_str(), s.unit.as_str());
            if !v.contains(&p) {
                v.push(p);
            }
        }
        v
    };
    for (suite, unit) in pairs {
        let group: Vec<&Summary> = summaries
            .iter()
            .filter(|s| s.suite == suite && s.unit == unit)
            .collect();
        let path = dir.join(format!("bench-{}-{}.png", slug(suite), slug(unit)));
        draw(&path, &format!("{suite} ({unit})"), unit, &group)?;
        out.push((suite.to_string(), path));
    }
    Ok(out)
}

fn draw(path: &Path, title: &str, unit: &str, group: &[&Summary]) -> Result<(), ReportError> {
    let metrics = first_seen(group.iter().map(|s| s.metric.as_str()));
    let contenders = first_seen(group.iter().map(|s| s.contender.as_str()));
    let top = group.iter().map(|s| s.max).fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let width = (220 + 150 * metrics.len() as u32 * contenders.len().max(2) as u32 / 2).max(640);

    let root = BitMapBackend::new(path, (width, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..metrics.len() as f64, 0f64..top)
        .map_err(chart_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .y_desc(unit)
        .y_label_formatter(&|v| compact(*v))
        .label_style((FONT, 14))
        .draw()
        .map_err(chart_error)?;

    let slot = 0.8 / contenders.len() as f64;
    for (ci, contender) in contenders.iter().enumerate() {
        let color = Palette99::pick(ci).to_rgba();
        let bars: Vec<(f64, &Summary)> = metrics
            .iter()
            .enumerate()
            .filter_map(|(mi, m)| {
                group
                    .iter()
                    .find(|s| s.metric == *m && s.contender == *contender)
                    .map(|s| (mi as f64 + 0.1 + slot * ci as f64, *s))
            })
            .collect();
        chart
            .draw_series(bars.iter().map(|(x, s)| {
                Rectangle::new([(*x, 0.0), (*x + slot * 0.9, s.median)], color.filled())
            }))
            .map_err(chart_error)?
            .label(*contender)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        chart
            .draw_series(bars.iter().map(|(x, s)| {
                let c = *x + slot * 0.45;
                PathElement::new(vec![(c, s.min), (c, s.max)], BLACK.stroke_width(2))
            }))
            .map_err(chart_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(chart_error)?;

    // the figures' names under their groups of bars
    let style = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (mi, m) in metrics.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(mi as f64 + 0.5, 0.0));
        root.draw(&Text::new(m.to_string(), (px, py + 10), style.clone()))
            .map_err(chart_error)?;
    }
    root.present().map_err(chart_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_file_names() {
        assert_eq!(slug("µs/msg"), "us-msg");
        assert_eq!(slug("Real Pulsar"), "real-pulsar");
        assert_eq!(slug("msg/s"), "msg-s");
    }

    #[test]
    fn draws_a_png() {
        let dir = std::env::temp_dir().join(format!("bench-chart-{}", std::process::id()));
        let s = |metric: &str, contender: &str, v: f64| Summary {
            suite: "pulsar".into(),
            metric: metric.into(),
            contender: contender.into(),
            unit: "msg/s".into(),
            median: v,
            min: v * 0.9,
            max: v * 1.1,
            rounds: 3,
        };
        let sums = vec![
            s("produce", "bare pulsar crate", 20_000.0),
            s("produce", "backstop", 19_000.0),
            s("consume", "bare pulsar crate", 30_000.0),
            s("consume", "backstop", 29_000.0),
        ];
        let files = render_all(&sums, &dir).unwrap();
        assert_eq!(files.len(), 1);
        let bytes = std::fs::read(&files[0].1).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
