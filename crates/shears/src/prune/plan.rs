//! Pruning plans: which channels of which group to remove, as replayable JSON.

use serde::{Deserialize, Serialize};
use shears_ir::Graph;

use super::depgraph::DepGraph;
use super::error::{PruneError, Result};
use super::mask::FoldMode;

/// The plan format version this code writes and reads.
pub const PLAN_VERSION: u32 = 1;

/// A pruning plan: per group, the channels to remove.
///
/// Plans are plain JSON (serde). Applying the same plan to the same graph and weights gives
/// bit-identical weights; applying it to another graph fails with
/// [`PruneError::FingerprintMismatch`].
///
/// ```
/// use shears::prune::{Plan, PlanGroup};
/// use shears::zoo::{build, Arch};
/// let g = build(Arch::LeNet5, &Arch::LeNet5.default_config()).unwrap();
/// let mut plan = Plan::empty(&g);
/// plan.groups.push(PlanGroup { group_id: 1, root: "conv1".into(), removed: vec![0, 5] });
/// let back = Plan::from_json(&plan.to_json()).unwrap();
/// assert_eq!(back, plan);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Format version ([`PLAN_VERSION`]).
    pub version: u32,
    /// [`fingerprint`] of the graph the plan was made for.
    pub graph_fingerprint: String,
    /// Name of the criterion that scored the channels (`"manual"` when made by hand).
    pub criterion: String,
    /// How surgery folds the constants of removed channels, and so what the masked reference
    /// model is ([`FoldMode`]; default exact). Part of the plan so that a replay gives the same
    /// weights.
    #[serde(default)]
    pub fold: FoldMode,
    /// The allocation configuration and what it achieved (free-form, for the record).
    #[serde(default)]
    pub config: serde_json::Value,
    /// Groups that lose channels, by group id. Groups not listed keep all their channels.
    pub groups: Vec<PlanGroup>,
}

/// The channels one group loses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanGroup {
    /// The group id ([`super::Group::id`]).
    pub group_id: usize,
    /// Name of the group's root node (checked on replay).
    pub root: String,
    /// Removed channels: root indices, strictly increasing.
    pub removed: Vec<usize>,
}

/// A stable fingerprint of a graph: FNV-1a (64 bit) of its JSON form, as `fnv1a64:<hex>`.
pub fn fingerprint(graph: &Graph) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in graph.to_json().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("fnv1a64:{h:016x}")
}

impl Plan {
    /// A plan for `graph` that removes nothing.
    pub fn empty(graph: &Graph) -> Plan {
        Plan {
            version: PLAN_VERSION,
            graph_fingerprint: fingerprint(graph),
            criterion: "manual".into(),
            fold: FoldMode::Exact,
            config: serde_json::Value::Null,
            groups: Vec::new(),
        }
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plan serialisation cannot fail: plain data")
    }

    /// Parses a plan from JSON.
    pub fn from_json(s: &str) -> Result<Plan> {
        serde_json::from_str(s)
            .map_err(|e| PruneError::Plan(format!("cannot parse plan json: {e}")))
    }

    /// Total number of removed channels.
    pub fn n_removed(&self) -> usize {
        self.groups.iter().map(|g| g.removed.len()).sum()
    }

    /// Whether the plan removes nothing.
    pub fn is_empty(&self) -> bool {
        self.n_removed() == 0
    }

    /// Checks the plan against `graph` and its groups: fingerprint, version, group ids, roots,
    /// indices (in range, strictly increasing), prunability, and that no group loses all its
    /// channels.
    pub fn check(&self, graph: &Graph, dg: &DepGraph) -> Result<()> {
        self.resolve(graph, dg).map(|_| ())
    }

    /// Validates and returns, per group id, the removed flags of its channels.
    pub(crate) fn resolve(&self, graph: &Graph, dg: &DepGraph) -> Result<Removal> {
        if self.version != PLAN_VERSION {
            return Err(PruneError::Plan(format!(
                "plan version {} is not supported (this build reads version {PLAN_VERSION})",
                self.version
            )));
        }
        let fp = fingerprint(graph);
        if self.graph_fingerprint != fp {
            return Err(PruneError::FingerprintMismatch {
                plan: self.graph_fingerprint.clone(),
                graph: fp,
            });
        }
        let mut removed: Vec<Vec<bool>> = dg.groups().iter().map(|g| vec![false; g.size]).collect();
        let mut seen = vec![false; dg.groups().len()];
        for pg in &self.groups {
            let g = dg.group(pg.group_id).ok_or_else(|| {
                PruneError::Plan(format!(
                    "group {} does not exist (the graph has {} groups)",
                    pg.group_id,
                    dg.groups().len()
                ))
            })?;
            let root = &graph.node(g.root).name;
            if *root != pg.root {
                return Err(PruneError::Plan(format!(
                    "group {} has root {root:?}, the plan says {:?}",
                    pg.group_id, pg.root
                )));
            }
            if std::mem::replace(&mut seen[g.id], true) {
                return Err(PruneError::Plan(format!(
                    "group {} ({root}) is listed twice",
                    g.id
                )));
            }
            if pg.removed.is_empty() {
                continue;
            }
            if !g.prunable {
                return Err(PruneError::Plan(format!(
                    "group {} ({root}) is not prunable: {}",
                    g.id,
                    g.why_not.as_deref().unwrap_or("unknown reason")
                )));
            }
            if !pg.removed.windows(2).all(|w| w[0] < w[1]) {
                return Err(PruneError::Plan(format!(
                    "group {} ({root}): removed indices must be strictly increasing",
                    g.id
                )));
            }
            if let Some(&bad) = pg.removed.iter().find(|&&i| i >= g.size) {
                return Err(PruneError::Plan(format!(
                    "group {} ({root}): removed index {bad} is out of range (the group has {} \
                     channels)",
                    g.id, g.size
                )));
            }
            if pg.removed.len() >= g.size {
                return Err(PruneError::Plan(format!(
                    "group {} ({root}): removing all {} channels is not allowed",
                    g.id, g.size
                )));
            }
            for &i in &pg.removed {
                removed[g.id][i] = true;
            }
        }
        Ok(Removal { removed })
    }
}

/// Per group, which channels are removed (a validated plan).
#[derive(Clone, Debug)]
pub(crate) struct Removal {
    pub(crate) removed: Vec<Vec<bool>>,
}

impl Removal {
    /// Nothing removed.
    pub(crate) fn none(dg: &DepGraph) -> Removal {
        Removal {
            removed: dg.groups().iter().map(|g| vec![false; g.size]).collect(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.removed.iter().all(|g| g.iter().all(|&x| !x))
    }

    pub(crate) fn contains(&self, ch: super::depgraph::Channel) -> bool {
        self.removed[ch.group][ch.idx]
    }

    /// The removed root indices of one group.
    pub(crate) fn of(&self, group: usize) -> Vec<usize> {
        self.removed[group]
            .iter()
            .enumerate()
            .filter(|(_, &x)| x)
            .map(|(i, _)| i)
            .collect()
    }
}
