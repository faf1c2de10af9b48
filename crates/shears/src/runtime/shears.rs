//! shears' own engine as a runtime.

use shears_engine::{Mode, Network};
use shears_ir::{Graph, Tensor, Weights};

use crate::Error;

/// The threads shears' engine runs on for a `--threads` value (`None`: every core).
pub(crate) fn threads_of(threads: Option<usize>) -> Result<usize, Error> {
    Ok(match threads {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

/// A model in shears' engine, run in eval mode.
pub struct ShearsModel {
    net: Network,
}

impl std::fmt::Debug for ShearsModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShearsModel")
            .field("threads", &self.net.num_threads())
            .finish_non_exhaustive()
    }
}

impl ShearsModel {
    /// Builds the engine's network for `graph` with `weights` on `threads` threads.
    pub fn new(graph: &Graph, weights: &Weights, threads: usize) -> Result<ShearsModel, Error> {
        let mut net = Network::new(graph.clone(), weights)?;
        net.set_threads(Some(threads))?;
        Ok(ShearsModel { net })
    }

    /// Runs a batch in eval mode.
    pub fn run(&mut self, x: &Tensor) -> Result<Tensor, Error> {
        Ok(self.net.forward(x, Mode::Eval)?)
    }

    /// The engine's network.
    pub fn network(&mut self) -> &mut Network {
        &mut self.net
    }
}
