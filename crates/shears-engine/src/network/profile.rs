//! Per-op and per-step timing.

use std::collections::HashMap;

use serde::Serialize;
use shears_ir::NodeId;

use super::step::{step_label, Step};
use super::{Geo, Network};
use crate::kernels::conv::ConvAlgo;

/// Time spent per op type and direction, collected when profiling is on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// `(label, seconds, calls)` per label such as `"forward conv2d"`, in first-seen order.
    pub entries: Vec<(String, f64, usize)>,
    /// Per forward step and batch size, in first-run order: filled only by
    /// [`Network::set_profiling_per_step`].
    pub steps: Vec<StepTime>,
    /// Index into `steps` by the step's first node and batch size.
    step_index: HashMap<(NodeId, usize), usize>,
}

/// One forward step's time at one batch size: what ran, on which shapes, how long.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepTime {
    /// The step's op type, fused chains joined by `+` (`"conv2d+bn+relu"`).
    pub op: &'static str,
    /// The name of the step's first node.
    pub node: String,
    /// The name of the node whose value the step writes (its last node: the ReLU of a fused
    /// conv + ReLU).
    pub out_node: String,
    /// The shapes of the values the step reads, batch axis first (NCHW order).
    pub inputs: Vec<Vec<usize>>,
    /// The shape of the value it writes, batch axis first.
    pub output: Vec<usize>,
    /// The convolution algorithm of the step's first node, for conv steps.
    pub algo: Option<ConvAlgo>,
    /// Multiply-accumulates of the step's nodes per pass (`Graph::node_macs` times the batch).
    pub macs: u64,
    /// Total seconds over `calls` runs.
    pub seconds: f64,
    /// How many times it ran.
    pub calls: usize,
}

impl StepTime {
    /// Mean milliseconds per run.
    pub fn ms_per_call(&self) -> f64 {
        self.seconds * 1e3 / self.calls.max(1) as f64
    }
}

impl Profile {
    pub(super) fn add(&mut self, label: String, secs: f64) {
        match self.entries.iter_mut().find(|e| e.0 == label) {
            Some(e) => {
                e.1 += secs;
                e.2 += 1;
            }
            None => self.entries.push((label, secs, 1)),
        }
    }

    /// Adds `secs` to the entry of step `first` at batch `n`; `fresh` is the entry to
    /// create when there is none yet.
    fn add_step(&mut self, first: NodeId, n: usize, secs: f64, fresh: Option<StepTime>) {
        let i = match (self.step_index.get(&(first, n)), fresh) {
            (Some(&i), _) => i,
            (None, Some(t)) => {
                self.steps.push(t);
                self.step_index.insert((first, n), self.steps.len() - 1);
                self.steps.len() - 1
            }
            (None, None) => return,
        };
        self.steps[i].seconds += secs;
        self.steps[i].calls += 1;
    }

    /// Total seconds of the per-step entries.
    pub fn steps_seconds(&self) -> f64 {
        self.steps.iter().map(|s| s.seconds).sum()
    }
}

impl Network {
    /// Turns per-op timing on (resetting it) or off.
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(Profile::default);
        self.profile_steps = false;
    }

    /// Turns per-step timing on (resetting it) or off: like [`Network::set_profiling`], but
    /// every forward step is its own entry, labelled with its type and its first node's name,
    /// and [`Profile::steps`] records each step's shapes, algorithm and time.
    pub fn set_profiling_per_step(&mut self, on: bool) {
        self.profile = on.then(Profile::default);
        self.profile_steps = on;
    }

    /// The timings collected since profiling was turned on.
    pub fn profile(&self) -> Option<&Profile> {
        self.profile.as_ref()
    }

    /// Records `secs` for forward step `s` at batch `n` (profiling on).
    pub(super) fn record_step(&mut self, s: Step, n: usize, secs: f64) {
        let label = step_label(&self.graph, s);
        let first = s.first();
        if !self.profile_steps {
            if let Some(p) = self.profile.as_mut() {
                p.add(format!("forward {label}"), secs);
            }
            return;
        }
        let known = self
            .profile
            .as_ref()
            .is_some_and(|p| p.step_index.contains_key(&(first, n)));
        let fresh = (!known).then(|| self.step_time(s, n));
        let full = format!("forward {label} {}", self.graph.node(first).name);
        if let Some(p) = self.profile.as_mut() {
            p.add(full, secs);
            p.add_step(first, n, secs, fresh);
        }
    }

    /// A zero-time entry describing forward step `s` at batch `n`.
    fn step_time(&self, s: Step, n: usize) -> StepTime {
        let g = &self.graph;
        let first = s.first();
        let mut nodes = s.absorbed();
        nodes.push(s.out());
        let algo = match (s, &self.geo[first.0]) {
            (Step::ConvChain { .. }, _) => Some(ConvAlgo::ShiftedT),
            (_, Geo::Conv(c)) => Some(c.algo),
            _ => None,
        };
        StepTime {
            op: step_label(g, s),
            node: g.node(first).name.clone(),
            out_node: g.node(s.out()).name.clone(),
            inputs: s
                .inputs(g)
                .iter()
                .map(|&i| self.batch_shape(n, i))
                .collect(),
            output: self.batch_shape(n, s.out()),
            algo,
            macs: nodes.iter().map(|&id| g.node_macs(id)).sum::<u64>() * n as u64,
            seconds: 0.0,
            calls: 0,
        }
    }
}
