//! Progress bars on stderr for long loops (training epochs, evaluation, sweeps).
//!
//! Bars are drawn only when stderr is a terminal and progress is not disabled, so `--json` output
//! and CI logs stay clean; a plain line is printed at the end of each finished bar instead.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How much progress to show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verbosity {
    /// Bars (on a terminal) and summary lines.
    #[default]
    Normal,
    /// Nothing at all.
    Quiet,
}

/// A bar with a label, position, rate and ETA.
pub struct Progress {
    bar: ProgressBar,
    verbosity: Verbosity,
}

impl Progress {
    /// A bar over `len` steps labelled `label`.
    pub fn new(len: u64, label: &str, verbosity: Verbosity) -> Self {
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        if verbosity == Verbosity::Quiet {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
            )
            .expect("template is valid")
            .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        Progress { bar, verbosity }
    }

    /// Advances by `n` steps.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Sets the trailing message (loss, accuracy, ...).
    pub fn set_message(&self, msg: impl Into<String>) {
        self.bar.set_message(msg.into());
    }

    /// Finishes the bar and prints `summary` as a line on stderr.
    pub fn finish(&self, summary: &str) {
        self.bar.finish_and_clear();
        if self.verbosity != Verbosity::Quiet && !summary.is_empty() {
            eprintln!("{summary}");
        }
    }

    /// Prints a line above the bar.
    pub fn println(&self, line: &str) {
        if self.verbosity != Verbosity::Quiet {
            self.bar.suspend(|| eprintln!("{line}"));
        }
    }
}
