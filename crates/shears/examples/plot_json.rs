//! Draws a line chart described in JSON as SVG with [`shears::analyze::plot::LineChart`].
//!
//! ```sh
//! cargo run -p shears --example plot_json -- CHART.json OUT.svg
//! ```
//!
//! `CHART.json`: `{"title": "...", "x_label": "...", "y_label": "...",
//! "series": [{"label": "...", "points": [[x, y], ...]}, ...]}`. Used for the time-to-accuracy
//! curves of `docs/results/recovery.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Deserialize;
use shears::analyze::plot::LineChart;

#[derive(Deserialize)]
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
}

#[derive(Deserialize)]
struct Chart {
    title: String,
    x_label: String,
    y_label: String,
    series: Vec<Series>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: plot_json CHART.json OUT.svg");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(input) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {input}: {e}");
            return ExitCode::from(2);
        }
    };
    let chart: Chart = match serde_json::from_str(&text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {input}: not a chart description: {e}");
            return ExitCode::from(2);
        }
    };
    let mut lc = LineChart::new(&chart.title, &chart.x_label, &chart.y_label);
    for s in chart.series {
        lc = lc.series(&s.label, s.points);
    }
    if let Err(e) = lc.save(&PathBuf::from(output)) {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
