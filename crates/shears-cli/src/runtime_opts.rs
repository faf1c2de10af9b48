//! The flags that say where latency is measured and budgeted: `--runtime`, `--ort-lib`,
//! `--latency-budget`, `--latency-batch`, `--latency-cache` and `--target-latency`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use shears::runtime::{Budget, Runtime, RuntimeKind};

use crate::commands::bad;

/// `--runtime`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuntimeArg {
    /// shears' own engine.
    Shears,
    /// ONNX Runtime (CPU), loaded from --ort-lib or $ORT_DYLIB_PATH.
    Onnxruntime,
}

impl From<RuntimeArg> for RuntimeKind {
    fn from(r: RuntimeArg) -> Self {
        match r {
            RuntimeArg::Shears => RuntimeKind::Shears,
            RuntimeArg::Onnxruntime => RuntimeKind::OnnxRuntime,
        }
    }
}

/// `--latency-via`: what `--target-latency` steers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LatencyViaArg {
    /// Per-group widths from the runtime's measured latency tables (most importance kept per
    /// millisecond), their amount steered on measurements.
    Tables,
    /// One uniform ratio for every group, steered on measurements (a baseline).
    Uniform,
    /// A MACs target allocated as --global/--round-to say, steered on measurements (a
    /// baseline: e.g. --latency-via macs --global --round-to 16).
    Macs,
}

/// Runtime and latency flags of `shears prune`.
#[derive(Args, Debug, Clone)]
pub struct RuntimeOpts {
    /// The runtime latency is measured (and --target-latency budgeted) in: shears' engine or
    /// ONNX Runtime (intra-op threads = --threads, default 2; inter-op 1; all graph
    /// optimisations).
    #[arg(long, value_enum, default_value_t = RuntimeArg::Shears)]
    pub runtime: RuntimeArg,
    /// The ONNX Runtime shared library (libonnxruntime.so*, e.g. from the `onnxruntime` Python
    /// wheel's capi/ folder); default $ORT_DYLIB_PATH, else the dynamic linker's search path.
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Seconds of timed runs per model and batch size (after warm-up; before and after in
    /// alternating blocks); the median is reported.
    #[arg(long, value_name = "SECONDS", default_value_t = 3.0)]
    pub latency_budget: f64,
    /// The larger batch size latency is measured at (besides batch 1).
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub latency_batch: usize,
    /// Fraction of the original latency KEPT, in (0, 1], in --runtime at --latency-batch:
    /// each group's width is chosen from the runtime's measured latency tables to keep the
    /// most importance under it (0.5 halves the latency).
    #[arg(long, value_name = "F")]
    pub target_latency: Option<f64>,
    /// Where latency tables are cached (default $XDG_CACHE_HOME/shears, else
    /// ~/.cache/shears); keyed by runtime and version, CPU model, threads and batch.
    #[arg(long, value_name = "DIR")]
    pub latency_cache: Option<PathBuf>,
    /// --target-latency: how the widths are chosen (the measured latency is steered to the
    /// target in every case).
    #[arg(long, value_enum, default_value_t = LatencyViaArg::Tables)]
    pub latency_via: LatencyViaArg,
    /// --target-latency: accepted relative error of the measured latency fraction (the
    /// geometric mean over batch 1 and --latency-batch); steering stops within it.
    #[arg(long, value_name = "F", default_value_t = 0.05)]
    pub latency_tolerance: f64,
    /// --target-latency: at most this many allocate-prune-measure steering steps.
    #[arg(long, value_name = "N", default_value_t = 6)]
    pub latency_steps: usize,
    /// Seconds of timed runs per width when building latency tables.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.05)]
    pub table_budget: f64,
}

impl RuntimeOpts {
    /// Opens the runtime asked for; a missing ONNX Runtime library is bad input naming the
    /// paths looked at.
    pub fn open(&self, threads: Option<usize>) -> Result<Runtime> {
        Ok(Runtime::open(
            self.runtime.into(),
            threads,
            self.ort_lib.as_deref(),
        )?)
    }

    /// The latency budget, `max_passes` capping the timed runs per model (`None`: no cap).
    pub fn budget(&self, max_passes: Option<usize>) -> Result<Budget> {
        let s = self.latency_budget;
        if !(s.is_finite() && s > 0.0) {
            return Err(bad(format!(
                "--latency-budget {s}: give a positive number of seconds"
            )));
        }
        if self.latency_batch == 0 {
            return Err(bad("--latency-batch 0: measure a batch of at least 1"));
        }
        Ok(Budget {
            max_passes,
            ..Budget::seconds(s)
        })
    }

    /// The budget per width of latency tables.
    pub fn table_budget(&self) -> Result<Budget> {
        let s = self.table_budget;
        if !(s.is_finite() && s > 0.0) {
            return Err(bad(format!(
                "--table-budget {s}: give a positive number of seconds"
            )));
        }
        Ok(Budget {
            warmup: 1,
            ..Budget::seconds(s)
        })
    }

    /// `--target-latency`, checked to be in (0, 1].
    pub fn target_latency(&self) -> Result<Option<f64>> {
        match self.target_latency {
            Some(f) if !(f > 0.0 && f <= 1.0) => Err(bad(format!(
                "--target-latency {f} is outside (0, 1]: it is the fraction of the latency \
                 KEPT (0.5 halves it)"
            ))),
            Some(_) if !(self.latency_tolerance > 0.0 && self.latency_tolerance < 1.0) => {
                Err(bad(format!(
                    "--latency-tolerance {} is outside (0, 1) (0.05: within 5%)",
                    self.latency_tolerance
                )))
            }
            Some(_) if self.latency_steps == 0 => Err(bad(
                "--latency-steps 0: steering needs at least one measured step",
            )),
            f => Ok(f),
        }
    }

    /// The latency-table cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.latency_cache
            .clone()
            .unwrap_or_else(shears::runtime::table::default_cache_dir)
    }
}
