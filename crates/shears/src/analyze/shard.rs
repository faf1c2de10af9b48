//! Analyses as shards: which probes of a sweep or an SBPF run one machine of N computes.
//!
//! A [`Shard`] `I/N` (`0 <= I < N`) owns a deterministic part of a probe grid. The grid's
//! probes get an estimated cost each, and [`partition`] balances them over the N shards by
//! *longest processing time first*: probes in decreasing cost (ties by grid position) go one by
//! one to the shard with the least cost so far (ties to the lowest index). Every shard computes
//! the same partition from the same settings, so no coordinator is needed; [`super::merge`]
//! combines the shards' files into exactly the one-machine result.
//!
//! **Cost model.** A sweep or SBPF probe damages one group and, with prefix caching, runs only
//! the network from the group's first damaged node ([`super::sweep::group_start`]) onwards, so
//! its cost per image is the MACs of that suffix ([`suffix_macs`]). A probe that skips its
//! damaged conv starts one conv later; the prefix walk and the baseline cost each shard at most
//! one forward pass more, the same for every shard, so they do not change the balance. The
//! partition does not depend on `--no-prefix-cache` (it must be the same for every shard);
//! without prefix caching every probe costs one full pass and any partition with equal counts
//! is balanced, which LPT on suffix costs comes close to.
//!
//! **Where the shard comes from** ([`resolve`]): `--shard I/N` when given; otherwise a Slurm
//! job array (`SLURM_ARRAY_TASK_ID` with `SLURM_ARRAY_TASK_COUNT`, or with the array's
//! `SLURM_ARRAY_TASK_MIN`/`MAX` and `STEP`); otherwise a Kubernetes Indexed Job
//! (`JOB_COMPLETION_INDEX`, with the shard count given by `--shards N`). The choice records its
//! source for the report.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use shears_ir::Graph;

/// What can go wrong choosing, partitioning or merging shards.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// A shard spec (`--shard I/N`, `--shards N`) is malformed or out of range.
    #[error("{flag} {value:?}: {why}")]
    BadSpec {
        /// The flag.
        flag: String,
        /// The value given.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// An environment variable that chooses the shard is malformed or out of range.
    #[error("environment variable {var}={value:?}: {why}")]
    BadEnv {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// A shard file cannot be read, is not a shard file, or does not match the others.
    #[error("shard file {}: {what}", path.display())]
    File {
        /// The shard file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A shard of the set has no file.
    #[error(
        "shard {index}/{count} is missing: no {} under {searched}",
        super::merge::RECORD_FILE
    )]
    Missing {
        /// Its index.
        index: usize,
        /// The shard count.
        count: usize,
        /// The directories searched.
        searched: String,
    },
    /// Two files claim the same shard.
    #[error("shard {index}/{count} appears twice: {} and {}", first.display(), second.display())]
    Duplicate {
        /// Its index.
        index: usize,
        /// The shard count.
        count: usize,
        /// The first file.
        first: PathBuf,
        /// The second file.
        second: PathBuf,
    },
    /// Nothing to merge.
    #[error(
        "no shard files under {searched} (looked for DIR/{} and DIR/shard-*-of-*/{})",
        super::merge::RECORD_FILE,
        super::merge::RECORD_FILE
    )]
    Empty {
        /// The directories searched.
        searched: String,
    },
}

/// One shard of N: `index` in `0..count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This shard, from 0.
    pub index: usize,
    /// Number of shards, at least 1.
    pub count: usize,
}

impl Shard {
    /// Shard `index` of `count`; errors name the values (`flag` names their origin).
    pub fn new(index: usize, count: usize, flag: &str) -> Result<Self, ShardError> {
        let bad = |why: String| ShardError::BadSpec {
            flag: flag.to_string(),
            value: format!("{index}/{count}"),
            why,
        };
        if count == 0 {
            return Err(bad("the shard count must be at least 1".into()));
        }
        if index >= count {
            return Err(bad(format!(
                "the shard index {index} must be below the count {count} (shards are 0..{})",
                count - 1
            )));
        }
        Ok(Shard { index, count })
    }

    /// The directory a shard writes under `--out`: `shard-0002-of-0004`.
    pub fn dir_name(&self) -> String {
        format!("shard-{:04}-of-{:04}", self.index, self.count)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    /// `I/N`, e.g. `2/4`.
    fn from_str(s: &str) -> Result<Self, ShardError> {
        let bad = |why: &str| ShardError::BadSpec {
            flag: "--shard".into(),
            value: s.to_string(),
            why: why.to_string(),
        };
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| bad("expected I/N, e.g. 2/4 (shard 2 of 0..3)"))?;
        let i: usize = i
            .trim()
            .parse()
            .map_err(|_| bad("the index I of I/N is not a non-negative integer"))?;
        let n: usize = n
            .trim()
            .parse()
            .map_err(|_| bad("the count N of I/N is not a non-negative integer"))?;
        Shard::new(i, n, "--shard").map_err(|e| match e {
            ShardError::BadSpec { why, .. } => bad(&why),
            e => e,
        })
    }
}

/// Where a shard was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardSource {
    /// `--shard I/N` on the command line.
    Flag,
    /// A Slurm job array (`SLURM_ARRAY_TASK_*`).
    Slurm,
    /// A Kubernetes Indexed Job (`JOB_COMPLETION_INDEX` and `--shards N`).
    Kubernetes,
}

impl ShardSource {
    /// `flag`, `slurm` or `kubernetes` (as in the JSON reports).
    pub fn name(self) -> &'static str {
        match self {
            ShardSource::Flag => "flag",
            ShardSource::Slurm => "slurm",
            ShardSource::Kubernetes => "kubernetes",
        }
    }
}

/// A shard and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardChoice {
    /// The shard.
    pub shard: Shard,
    /// Its source.
    pub source: ShardSource,
    /// The values it was read from, e.g. `SLURM_ARRAY_TASK_ID=2, SLURM_ARRAY_TASK_COUNT=4`.
    pub detail: String,
}

fn env_number(
    env: &dyn Fn(&str) -> Option<String>,
    var: &str,
) -> Result<Option<usize>, ShardError> {
    match env(var) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<usize>()
            .map(Some)
            .map_err(|_| ShardError::BadEnv {
                var: var.to_string(),
                value: v.clone(),
                why: "not a non-negative integer".into(),
            }),
    }
}

/// The shard of this process: `flag` (`--shard I/N`) when given, else a Slurm array task,
/// else a Kubernetes Indexed Job's `JOB_COMPLETION_INDEX` with `shards` (`--shards N`); `None`
/// when none applies. `env` reads an environment variable (`std::env::var(..).ok()` in the
/// binary). `--shards N` given beside `--shard I/N` or a Slurm array must agree with their
/// count; given alone, it is an error. Every error names the value.
pub fn resolve(
    flag: Option<Shard>,
    shards: Option<usize>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ShardChoice>, ShardError> {
    let check_count = |s: Shard, from: &str| -> Result<Shard, ShardError> {
        match shards {
            Some(n) if n != s.count => Err(ShardError::BadSpec {
                flag: "--shards".into(),
                value: n.to_string(),
                why: format!("{from} says {} shards", s.count),
            }),
            _ => Ok(s),
        }
    };
    if let Some(s) = flag {
        let s = check_count(s, &format!("--shard {s}"))?;
        return Ok(Some(ShardChoice {
            shard: s,
            source: ShardSource::Flag,
            detail: format!("--shard {s}"),
        }));
    }
    if let Some(n) = shards {
        if n == 0 {
            return Err(ShardError::BadSpec {
                flag: "--shards".into(),
                value: "0".into(),
                why: "the shard count must be at least 1".into(),
            });
        }
    }
    if let Some(id) = env_number(env, "SLURM_ARRAY_TASK_ID")? {
        let s = slurm_shard(id, env)?;
        let detail = [
            "SLURM_ARRAY_TASK_ID",
            "SLURM_ARRAY_TASK_COUNT",
            "SLURM_ARRAY_TASK_MIN",
            "SLURM_ARRAY_TASK_MAX",
            "SLURM_ARRAY_TASK_STEP",
        ]
        .iter()
        .filter_map(|v| env(v).map(|x| format!("{v}={}", x.trim())))
        .collect::<Vec<_>>()
        .join(", ");
        let s = check_count(s, &detail)?;
        return Ok(Some(ShardChoice {
            shard: s,
            source: ShardSource::Slurm,
            detail,
        }));
    }
    if let Some(idx) = env_number(env, "JOB_COMPLETION_INDEX")? {
        let Some(n) = shards else {
            return Err(ShardError::BadEnv {
                var: "JOB_COMPLETION_INDEX".into(),
                value: idx.to_string(),
                why: "a Kubernetes Indexed Job shard needs the shard count: pass --shards N \
                      (the Job's completions)"
                    .into(),
            });
        };
        if idx >= n {
            return Err(ShardError::BadEnv {
                var: "JOB_COMPLETION_INDEX".into(),
                value: idx.to_string(),
                why: format!("the index must be below --shards {n}"),
            });
        }
        return Ok(Some(ShardChoice {
            shard: Shard {
                index: idx,
                count: n,
            },
            source: ShardSource::Kubernetes,
            detail: format!("JOB_COMPLETION_INDEX={idx}, --shards {n}"),
        }));
    }
    if let Some(n) = shards {
        return Err(ShardError::BadSpec {
            flag: "--shards".into(),
            value: n.to_string(),
            why: "no shard index: give --shard I/N, or run in a Slurm array \
                  (SLURM_ARRAY_TASK_ID) or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX)"
                .into(),
        });
    }
    Ok(None)
}

/// The shard of Slurm array task `id`: the tasks are `MIN, MIN + STEP, ..., MAX` (MIN 0 and
/// STEP 1 when unset) and their count is `SLURM_ARRAY_TASK_COUNT` or follows from MIN, MAX
/// and STEP.
fn slurm_shard(id: usize, env: &dyn Fn(&str) -> Option<String>) -> Result<Shard, ShardError> {
    let min = env_number(env, "SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
    let step = env_number(env, "SLURM_ARRAY_TASK_STEP")?.unwrap_or(1);
    let bad = |var: &str, value: usize, why: String| ShardError::BadEnv {
        var: var.to_string(),
        value: value.to_string(),
        why,
    };
    if step == 0 {
        return Err(bad("SLURM_ARRAY_TASK_STEP", 0, "must be at least 1".into()));
    }
    let count = match env_number(env, "SLURM_ARRAY_TASK_COUNT")? {
        Some(c) => c,
        None => match env_number(env, "SLURM_ARRAY_TASK_MAX")? {
            Some(max) if max >= min => (max - min) / step + 1,
            Some(max) => {
                return Err(bad(
                    "SLURM_ARRAY_TASK_MAX",
                    max,
                    format!("below SLURM_ARRAY_TASK_MIN={min}"),
                ))
            }
            None => {
                return Err(bad(
                    "SLURM_ARRAY_TASK_ID",
                    id,
                    "the shard count is unknown: SLURM_ARRAY_TASK_COUNT and \
                     SLURM_ARRAY_TASK_MAX are unset"
                        .into(),
                ))
            }
        },
    };
    if count == 0 {
        return Err(bad(
            "SLURM_ARRAY_TASK_COUNT",
            0,
            "must be at least 1".into(),
        ));
    }
    if id < min || !(id - min).is_multiple_of(step) {
        return Err(bad(
            "SLURM_ARRAY_TASK_ID",
            id,
            format!("not a task of the array (SLURM_ARRAY_TASK_MIN={min}, STEP={step})"),
        ));
    }
    let index = (id - min) / step;
    if index >= count {
        return Err(bad(
            "SLURM_ARRAY_TASK_ID",
            id,
            format!(
                "out of range: task index {index} of an array of {count} \
                 (SLURM_ARRAY_TASK_MIN={min}, STEP={step})"
            ),
        ));
    }
    Ok(Shard { index, count })
}

/// The shard owning each probe: longest processing time first over `costs` (see the module
/// docs). Deterministic: equal costs go in grid order, equal loads to the lowest shard.
pub fn partition(costs: &[u64], count: usize) -> Vec<usize> {
    assert!(count > 0, "a partition needs at least one shard");
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by(|&a, &b| costs[b].cmp(&costs[a]).then(a.cmp(&b)));
    let mut load = vec![0u128; count];
    let mut owner = vec![0usize; costs.len()];
    for i in order {
        let s = (0..count).min_by_key(|&s| (load[s], s)).expect("count > 0");
        owner[i] = s;
        load[s] += u128::from(costs[i]);
    }
    owner
}

/// The probes of a grid that one shard owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    owned: Vec<bool>,
    /// Estimated cost of the owned probes (in the unit of the costs given).
    pub cost: u64,
    /// Estimated cost of the whole grid.
    pub total_cost: u64,
}

impl Assignment {
    /// The probes `shard` owns among probes of `costs` (every probe with no shard).
    pub fn new(costs: &[u64], shard: Option<Shard>) -> Self {
        let owned: Vec<bool> = match shard {
            None => vec![true; costs.len()],
            Some(s) => partition(costs, s.count)
                .into_iter()
                .map(|o| o == s.index)
                .collect(),
        };
        let cost = costs
            .iter()
            .zip(&owned)
            .filter(|(_, &o)| o)
            .map(|(c, _)| c)
            .sum();
        Assignment {
            owned,
            cost,
            total_cost: costs.iter().sum(),
        }
    }

    /// Whether probe `i` (its position in the grid) is this shard's.
    pub fn owns(&self, i: usize) -> bool {
        self.owned[i]
    }

    /// Probes owned.
    pub fn len(&self) -> usize {
        self.owned.iter().filter(|&&o| o).count()
    }

    /// Whether the shard owns no probe.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Probes in the grid.
    pub fn total(&self) -> usize {
        self.owned.len()
    }
}

/// How a shard's probes were chosen, for its report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardReport {
    /// The shard and its source.
    pub choice: ShardChoice,
    /// Probes this shard owns.
    pub probes: usize,
    /// Probes in the whole grid.
    pub probes_total: usize,
    /// Estimated cost of its probes (sweep and SBPF: MACs per image, summed, see the module
    /// docs; LSA: features kept, summed over its heads).
    pub estimated_cost: u64,
    /// Estimated cost of the whole grid.
    pub estimated_cost_total: u64,
}

impl ShardReport {
    /// The report of `choice` owning `a`.
    pub fn new(choice: ShardChoice, a: &Assignment) -> Self {
        ShardReport {
            choice,
            probes: a.len(),
            probes_total: a.total(),
            estimated_cost: a.cost,
            estimated_cost_total: a.total_cost,
        }
    }
}

/// `out[i]`: MACs per image of the nodes at index `i` or later that the graph's outputs need
/// (what a probe starting at node `i` runs); `out[graph.len()]` is 0.
pub fn suffix_macs(graph: &Graph) -> Vec<u64> {
    let mut needed = vec![false; graph.len()];
    let mut stack = graph.outputs().to_vec();
    while let Some(v) = stack.pop() {
        if !needed[v.0] {
            needed[v.0] = true;
            stack.extend_from_slice(&graph.node(v).inputs);
        }
    }
    let mut out = vec![0u64; graph.len() + 1];
    for i in (0..graph.len()).rev() {
        let own = if needed[i] {
            graph.node_macs(shears_ir::NodeId(i))
        } else {
            0
        };
        out[i] = out[i + 1] + own;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn parses_i_of_n_and_refuses_bad_values_naming_them() {
        assert_eq!(
            "2/4".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 4 }
        );
        assert_eq!(
            Shard { index: 2, count: 4 }.dir_name(),
            "shard-0002-of-0004"
        );
        for bad in ["4/4", "0/0", "x/4", "2", "-1/4", "1/y"] {
            let e = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn flag_then_slurm_then_kubernetes() {
        let none = env_of(&[]);
        assert_eq!(resolve(None, None, &none).unwrap(), None);
        let f = Shard { index: 1, count: 3 };
        let c = resolve(Some(f), None, &env_of(&[("SLURM_ARRAY_TASK_ID", "0")])).unwrap();
        assert_eq!(c.unwrap().source, ShardSource::Flag);
        let slurm = env_of(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        let c = resolve(None, None, &slurm).unwrap().unwrap();
        assert_eq!(
            (c.shard, c.source),
            (Shard { index: 2, count: 4 }, ShardSource::Slurm)
        );
        assert!(c.detail.contains("SLURM_ARRAY_TASK_ID=2"), "{}", c.detail);
        // An array 1-7:2 has tasks 1, 3, 5, 7.
        let stepped = env_of(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "7"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
        ]);
        let c = resolve(None, None, &stepped).unwrap().unwrap();
        assert_eq!(c.shard, Shard { index: 2, count: 4 });
        let k8s = env_of(&[("JOB_COMPLETION_INDEX", "3")]);
        let c = resolve(None, Some(8), &k8s).unwrap().unwrap();
        assert_eq!(
            (c.shard, c.source),
            (Shard { index: 3, count: 8 }, ShardSource::Kubernetes)
        );
    }

    #[test]
    fn bad_environments_name_the_variable_and_value() {
        type Case<'a> = (Vec<(&'a str, &'a str)>, Option<usize>, &'a str);
        let cases: Vec<Case> = vec![
            (
                vec![("SLURM_ARRAY_TASK_ID", "x")],
                None,
                "SLURM_ARRAY_TASK_ID=\"x\"",
            ),
            (
                vec![
                    ("SLURM_ARRAY_TASK_ID", "4"),
                    ("SLURM_ARRAY_TASK_COUNT", "4"),
                ],
                None,
                "SLURM_ARRAY_TASK_ID=\"4\"",
            ),
            (
                vec![("SLURM_ARRAY_TASK_ID", "1")],
                None,
                "SLURM_ARRAY_TASK_ID",
            ),
            (vec![("JOB_COMPLETION_INDEX", "3")], None, "--shards N"),
            (
                vec![("JOB_COMPLETION_INDEX", "8")],
                Some(8),
                "JOB_COMPLETION_INDEX=\"8\"",
            ),
            (
                vec![("JOB_COMPLETION_INDEX", "1")],
                Some(0),
                "--shards \"0\"",
            ),
            (vec![], Some(4), "--shards \"4\""),
        ];
        for (vars, shards, needle) in cases {
            let e = resolve(None, shards, &env_of(&vars))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{vars:?}: {e}");
        }
        let e = resolve(Some(Shard { index: 0, count: 2 }), Some(3), &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--shards \"3\""), "{e}");
    }

    #[test]
    fn partition_covers_every_probe_once_and_balances_costs() {
        let costs: Vec<u64> = (0..45).map(|i| 1000 + (i * 7919 % 97) * 50).collect();
        for n in [1, 2, 3, 4, 7, 45, 60] {
            let owner = partition(&costs, n);
            assert!(owner.iter().all(|&o| o < n));
            let assigned: Vec<Assignment> = (0..n)
                .map(|i| Assignment::new(&costs, Some(Shard { index: i, count: n })))
                .collect();
            for p in 0..costs.len() {
                assert_eq!(assigned.iter().filter(|a| a.owns(p)).count(), 1);
            }
            let loads: Vec<u64> = assigned.iter().map(|a| a.cost).collect();
            let (lo, hi) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
            // LPT: the spread is at most the largest single probe.
            assert!(hi - lo <= *costs.iter().max().unwrap(), "{n}: {loads:?}");
            assert_eq!(partition(&costs, n), owner, "deterministic");
        }
        let all = Assignment::new(&costs, None);
        assert_eq!((all.len(), all.total()), (45, 45));
    }
}
