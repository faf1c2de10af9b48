//! Dependency-free SVG charts for analysis reports: line charts (one line per series) and bar
//! charts (one bar per labelled value).
//!
//! The charts are plain SVG 1.1 text, so they open in any browser and render on GitHub. Files
//! are written atomically (temporary file, then rename).
//!
//! ```
//! use shears::analyze::plot::{BarChart, LineChart};
//! let svg = LineChart::new("Accuracy against r", "r", "accuracy (%)")
//!     .series("p = 1", vec![(0.1, 91.0), (0.5, 88.0), (0.9, 60.0)])
//!     .series("p = inf", vec![(0.1, 91.5), (0.5, 87.0), (0.9, 55.0)])
//!     .to_svg();
//! assert!(svg.starts_with("<svg") && svg.contains("p = inf"));
//! let bars = BarChart::new("Sensitiveness", "accuracy drop").bars(vec![("conv1".into(), 0.4)]);
//! assert!(bars.to_svg().contains("conv1"));
//! ```

use std::fmt::Write as _;
use std::path::Path;

use crate::Error;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
/// Colour-blind friendly palette (Okabe–Ito), then greys.
const PALETTE: [&str; 10] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000",
    "#777777", "#AAAAAA",
];

/// A line chart: one polyline with markers per series, a legend on the right.
#[derive(Debug, Clone)]
pub struct LineChart {
    title: String,
    x_label: String,
    y_label: String,
    series: Vec<(String, Vec<(f64, f64)>)>,
}

impl LineChart {
    /// A chart with a title and axis labels and no series yet.
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
        }
    }

    /// Add a series. Points with a non-finite coordinate are skipped when drawing.
    pub fn series(mut self, label: &str, points: Vec<(f64, f64)>) -> Self {
        self.series.push((label.into(), points));
        self
    }

    /// Render as SVG text.
    pub fn to_svg(&self) -> String {
        let pts = self
            .series
            .iter()
            .flat_map(|(_, p)| p.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for (x, y) in pts {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        let (xs, ys) = (Axis::new(x0, x1), Axis::new(y0, y1));
        let mut svg = frame(&self.title, &self.x_label, &self.y_label);
        axes(&mut svg, &xs, &ys, None);
        for (i, (label, points)) in self.series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let coords: Vec<(f64, f64)> = points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| (xs.px(x), ys.py(y)))
                .collect();
            let path: Vec<String> = coords
                .iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
            for (x, y) in &coords {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/>"#
                );
            }
            let ly = TOP + 10.0 + 20.0 * i as f64;
            let lx = WIDTH - RIGHT + 15.0;
            let _ = writeln!(
                svg,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}" font-size="12">{}</text>"#,
                lx + 20.0,
                lx + 26.0,
                ly + 4.0,
                escape(label)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }

    /// Write the SVG to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        super::sweep::write_atomic(path, &self.to_svg())
    }
}

/// A vertical bar chart: one bar per labelled value, labels rotated under the axis.
#[derive(Debug, Clone)]
pub struct BarChart {
    title: String,
    y_label: String,
    bars: Vec<(String, f64)>,
}

impl BarChart {
    /// A chart with a title and a value-axis label and no bars yet.
    pub fn new(title: &str, y_label: &str) -> Self {
        Self {
            title: title.into(),
            y_label: y_label.into(),
            bars: Vec::new(),
        }
    }

    /// Set the bars (label, value), drawn in the given order. Non-finite values draw no bar.
    pub fn bars(mut self, bars: Vec<(String, f64)>) -> Self {
        self.bars = bars;
        self
    }

    /// Render as SVG text.
    pub fn to_svg(&self) -> String {
        let finite = self.bars.iter().map(|b| b.1).filter(|v| v.is_finite());
        let lo = finite.clone().fold(0.0f64, f64::min);
        let hi = finite.fold(0.0f64, f64::max);
        let ys = Axis::new(lo, if hi > lo { hi } else { lo + 1.0 });
        let mut svg = frame(&self.title, "", &self.y_label);
        let n = self.bars.len().max(1);
        axes(&mut svg, &Axis::new(0.0, n as f64), &ys, Some(()));
        let slot = (WIDTH - LEFT - RIGHT) / n as f64;
        let zero = ys.py(0.0_f64.clamp(ys.lo, ys.hi));
        for (i, (label, v)) in self.bars.iter().enumerate() {
            let x = LEFT + slot * i as f64;
            if v.is_finite() {
                let y = ys.py(*v);
                let (top, h) = if y < zero {
                    (y, zero - y)
                } else {
                    (zero, y - zero)
                };
                let _ = writeln!(
                    svg,
                    r#"<rect x="{:.1}" y="{top:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {v}</title></rect>"#,
                    x + slot * 0.1,
                    slot * 0.8,
                    PALETTE[0],
                    escape(label)
                );
            }
            let (tx, ty) = (x + slot * 0.5, HEIGHT - BOTTOM + 12.0);
            let _ = writeln!(
                svg,
                r#"<text x="{tx:.1}" y="{ty:.1}" font-size="{}" text-anchor="end" transform="rotate(-60 {tx:.1} {ty:.1})">{}</text>"#,
                if n > 40 { 7 } else { 10 },
                escape(label)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }

    /// Write the SVG to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        super::sweep::write_atomic(path, &self.to_svg())
    }
}

/// A linear axis with "nice" tick steps.
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
}

impl Axis {
    fn new(lo: f64, hi: f64) -> Self {
        let (lo, hi) = if hi > lo {
            (lo, hi)
        } else {
            (lo - 0.5, hi + 0.5)
        };
        let raw = (hi - lo) / 6.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * mag);
        Self {
            lo: (lo / step).floor() * step,
            hi: (hi / step).ceil() * step,
            step,
        }
    }

    fn ticks(&self) -> Vec<f64> {
        let n = ((self.hi - self.lo) / self.step).round() as usize;
        (0..=n.min(50))
            .map(|i| self.lo + self.step * i as f64)
            .collect()
    }

    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.lo) / (self.hi - self.lo) * (WIDTH - LEFT - RIGHT)
    }

    fn py(&self, y: f64) -> f64 {
        HEIGHT - BOTTOM - (y - self.lo) / (self.hi - self.lo) * (HEIGHT - TOP - BOTTOM)
    }
}

fn frame(title: &str, x_label: &str, y_label: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        escape(title)
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" font-size="13" text-anchor="middle">{}</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 12.0,
        escape(x_label)
    );
    let (yx, yy) = (18.0, (TOP + HEIGHT - BOTTOM) / 2.0);
    let _ = writeln!(
        s,
        r#"<text x="{yx}" y="{yy}" font-size="13" text-anchor="middle" transform="rotate(-90 {yx} {yy})">{}</text>"#,
        escape(y_label)
    );
    s
}

/// Grid, ticks and tick labels; `categorical` suppresses x tick labels (bar charts).
fn axes(s: &mut String, xs: &Axis, ys: &Axis, categorical: Option<()>) {
    for y in ys.ticks() {
        let py = ys.py(y);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            tick_label(y, ys.step)
        );
    }
    if categorical.is_none() {
        for x in xs.ticks() {
            let px = xs.px(x);
            let _ = writeln!(
                s,
                r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{}" stroke="#e5e5e5"/><text x="{px:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"##,
                HEIGHT - BOTTOM,
                HEIGHT - BOTTOM + 16.0,
                tick_label(x, xs.step)
            );
        }
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        WIDTH - LEFT - RIGHT,
        HEIGHT - TOP - BOTTOM
    );
}

fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize + 1
    };
    format!("{v:.decimals$}")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_covers_range_with_nice_steps() {
        let a = Axis::new(0.13, 0.91);
        assert!(a.lo <= 0.13 && a.hi >= 0.91);
        assert!(a.ticks().len() >= 4 && a.ticks().len() <= 12);
        let flat = Axis::new(5.0, 5.0);
        assert!(flat.hi > flat.lo);
    }

    #[test]
    fn non_finite_points_and_labels_are_safe() {
        let svg = LineChart::new("a<b", "x", "y")
            .series("s&t", vec![(0.0, f64::NAN), (1.0, 2.0), (2.0, 3.0)])
            .to_svg();
        assert!(svg.contains("a&lt;b") && svg.contains("s&amp;t"));
        assert!(!svg.contains("NaN"));
        let empty = LineChart::new("t", "x", "y").to_svg();
        assert!(empty.ends_with("</svg>\n"));
        let bars = BarChart::new("t", "y")
            .bars(vec![("a".into(), -1.0), ("b".into(), f64::INFINITY)])
            .to_svg();
        assert!(bars.contains("<rect x=") && !bars.contains("inf"));
    }
}
