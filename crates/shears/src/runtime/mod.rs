//! Runtimes a model is timed in: shears' own engine, or ONNX Runtime (what users deploy).
//!
//! A [`Runtime`] prepares a graph with its weights into a [`Prepared`] model that runs
//! batches; [`compare()`] times two prepared models (before and after pruning) in alternating
//! warm blocks under a time budget, and [`measure`] times one. ONNX Runtime is a shared
//! library loaded at run time ([`onnxruntime`]): shears builds and runs without it, and only
//! [`Runtime::open`] of [`RuntimeKind::OnnxRuntime`] needs it.
//!
//! ```
//! use shears::runtime::{measure, Budget, Runtime, RuntimeKind};
//! use shears::zoo::{build, init_weights, Arch};
//! let g = build(Arch::LeNet5, &Arch::LeNet5.default_config()).unwrap();
//! let w = init_weights(&g, Some(Arch::LeNet5), 0);
//! let rt = Runtime::open(RuntimeKind::Shears, Some(1), None).unwrap();
//! let mut m = rt.prepare(&g, &w).unwrap();
//! let lat = measure(&mut m, &g, 2, &Budget::seconds(0.05)).unwrap();
//! assert_eq!(lat.batch, 2);
//! assert!(lat.iters >= Budget::MIN_PASSES);
//! ```

pub mod compare;
pub mod error;
pub mod latency_alloc;
pub mod onnxruntime;
pub mod shears;
pub mod steer;
pub mod table;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use shears_ir::{Graph, Tensor, Weights};

pub use compare::{compare, measure, Budget};
pub use error::RuntimeError;
pub use latency_alloc::{allocate_latency, latency_strategy, LatencyAllocation};
pub use onnxruntime::{OrtLibrary, OrtModel};
pub use shears::ShearsModel;
pub use steer::{
    latency_kept, steer_latency, SteerBy, SteerConfig, SteerInputs, SteerStep, Steered, Steering,
};
pub use table::{tables_for, LatencyTables, LayerShape, TableKey};

use crate::Error;

/// Which runtime a model is timed in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// shears' own engine ([`shears_engine::Network`]).
    #[default]
    Shears,
    /// ONNX Runtime's CPU execution provider.
    OnnxRuntime,
}

impl RuntimeKind {
    /// The name on the command line and in reports: `shears` or `onnxruntime`.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Shears => "shears",
            RuntimeKind::OnnxRuntime => "onnxruntime",
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RuntimeKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "shears" => Ok(RuntimeKind::Shears),
            "onnxruntime" | "ort" => Ok(RuntimeKind::OnnxRuntime),
            _ => Err(Error::invalid(format!(
                "unknown runtime {s:?}: expected shears or onnxruntime"
            ))),
        }
    }
}

/// A runtime ready to prepare models: its kind, version and thread count.
#[derive(Clone, Debug)]
pub struct Runtime {
    kind: RuntimeKind,
    threads: usize,
    ort: Option<OrtLibrary>,
}

impl Runtime {
    /// Opens a runtime on `threads` worker threads (`None`: shears' engine uses every core,
    /// ONNX Runtime 2). ONNX Runtime is loaded from `ort_lib`, else `$ORT_DYLIB_PATH`, else
    /// the dynamic linker's search path; failing that the error names each place looked at.
    pub fn open(
        kind: RuntimeKind,
        threads: Option<usize>,
        ort_lib: Option<&Path>,
    ) -> Result<Runtime, Error> {
        if threads == Some(0) {
            return Err(Error::invalid("threads 0: run on at least one thread"));
        }
        match kind {
            RuntimeKind::Shears => Ok(Runtime {
                kind,
                threads: shears::threads_of(threads)?,
                ort: None,
            }),
            RuntimeKind::OnnxRuntime => Ok(Runtime {
                kind,
                threads: threads.unwrap_or(2),
                ort: Some(OrtLibrary::load(ort_lib)?),
            }),
        }
    }

    /// The runtime's kind.
    pub fn kind(&self) -> RuntimeKind {
        self.kind
    }

    /// Worker threads (ONNX Runtime: intra-op threads; inter-op is always 1).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The runtime's version: shears' crate version, or the ONNX Runtime library's.
    pub fn version(&self) -> String {
        match &self.ort {
            Some(lib) => lib.version.clone(),
            None => env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// The ONNX Runtime library in use, if this is ONNX Runtime.
    pub fn library(&self) -> Option<&OrtLibrary> {
        self.ort.as_ref()
    }

    /// Prepares `graph` with `weights` to run in this runtime.
    pub fn prepare(&self, graph: &Graph, weights: &Weights) -> Result<Prepared, Error> {
        Ok(match &self.ort {
            Some(lib) => Prepared::OnnxRuntime(OrtModel::new(lib, graph, weights, self.threads)?),
            None => Prepared::Shears(Box::new(ShearsModel::new(graph, weights, self.threads)?)),
        })
    }
}

/// A model prepared for one runtime.
#[derive(Debug)]
pub enum Prepared {
    /// In shears' engine.
    Shears(Box<ShearsModel>),
    /// In an ONNX Runtime session.
    OnnxRuntime(OrtModel),
}

impl Prepared {
    /// Runs a batch in eval mode and returns the output.
    pub fn run(&mut self, x: &Tensor) -> Result<Tensor, Error> {
        match self {
            Prepared::Shears(m) => m.run(x),
            Prepared::OnnxRuntime(m) => m.run(x),
        }
    }
}
