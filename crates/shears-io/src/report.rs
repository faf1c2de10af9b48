//! What a load matched, and what it did not.

use std::collections::hash_map::{Entry, HashMap};
use std::fmt::Write as _;

use shears_ir::{Graph, Tensor, Weights};

use crate::{IoError, Remap};

/// How many names of each list [`LoadReport::summary`] spells out.
const SHOWN: usize = 5;

/// The outcome of matching loaded tensors to a graph's parameters (see
/// [`crate::bind_weights`]). Strict loading turns a report that is not clean into
/// [`crate::IoError::Load`]; lenient loading hands it back beside the weights.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Graph parameters that received a tensor, in graph order.
    pub applied: Vec<String>,
    /// Graph parameters no tensor was found for, in graph order.
    pub missing: Vec<String>,
    /// Loaded tensors (named as in the file, before remapping) the graph has no slot for.
    pub unexpected: Vec<String>,
    /// Graph parameters whose tensor has the wrong shape: `(name, expected, found)`.
    pub shape_mismatch: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Tensors deliberately not loaded, with the reason (integer buffers such as
    /// `num_batches_tracked`, non-float dtypes). These do not make a report unclean.
    pub skipped: Vec<(String, String)>,
}

impl LoadReport {
    /// Whether nothing is missing, unexpected or mismatched.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shape_mismatch.is_empty()
    }

    /// One line: counts per category, each with its first few names.
    ///
    /// ```
    /// let mut r = shears_io::LoadReport::default();
    /// r.applied.push("fc.weight".into());
    /// r.missing.push("fc.bias".into());
    /// assert_eq!(r.summary(), "1 applied; 1 missing (fc.bias)");
    /// ```
    pub fn summary(&self) -> String {
        let mut s = format!("{} applied", self.applied.len());
        let mut section = |label: &str, names: Vec<String>| {
            if names.is_empty() {
                return;
            }
            let _ = write!(s, "; {} {label} (", names.len());
            s.push_str(
                &names
                    .iter()
                    .take(SHOWN)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            if names.len() > SHOWN {
                let _ = write!(s, ", ... and {} more", names.len() - SHOWN);
            }
            s.push(')');
        };
        section("missing", self.missing.clone());
        section("unexpected", self.unexpected.clone());
        section(
            "with the wrong shape",
            self.shape_mismatch
                .iter()
                .map(|(n, e, f)| format!("{n}: expected {e:?}, found {f:?}"))
                .collect(),
        );
        section(
            "skipped",
            self.skipped
                .iter()
                .map(|(n, why)| format!("{n}: {why}"))
                .collect(),
        );
        s
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

/// Compares `weights` with the parameters `graph` expects, by exact name (no remapping).
///
/// ```
/// use shears_ir::{GraphBuilder, Linear, Tensor, Weights};
/// let mut b = GraphBuilder::new();
/// let x = b.input("x", &[4]).unwrap();
/// let fc = b.add("fc", Linear { in_features: 4, out_features: 2, bias: true }, &[x]).unwrap();
/// let g = b.finish(&[fc]).unwrap();
/// let mut w = Weights::new();
/// w.insert("fc.weight", Tensor::zeros(&[2, 4]));
/// w.insert("fc.bias", Tensor::zeros(&[3]));
/// let r = shears_io::check_weights(&g, &w);
/// assert_eq!(r.applied, ["fc.weight"]);
/// assert_eq!(r.shape_mismatch, [("fc.bias".to_string(), vec![2], vec![3])]);
/// ```
pub fn check_weights(graph: &Graph, weights: &Weights) -> LoadReport {
    let mut r = LoadReport::default();
    let specs = graph.param_specs();
    for (_, name, spec) in &specs {
        match weights.get(name) {
            None => r.missing.push(name.clone()),
            Some(t) if t.shape() != spec.shape.as_slice() => {
                r.shape_mismatch
                    .push((name.clone(), spec.shape.clone(), t.shape().to_vec()))
            }
            Some(_) => r.applied.push(name.clone()),
        }
    }
    let expected: std::collections::HashSet<&str> =
        specs.iter().map(|(_, n, _)| n.as_str()).collect();
    r.unexpected = weights
        .names()
        .filter(|n| !expected.contains(n.as_str()))
        .cloned()
        .collect();
    r
}

/// What to do when loaded tensors and graph parameters disagree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strictness {
    /// Any missing, unexpected or wrongly shaped tensor is an error (the default).
    #[default]
    Strict,
    /// Load what matches and report the rest; missing parameters are simply absent.
    Lenient,
}

/// Matches loaded tensors to `graph.param_specs()` after renaming them with `remap`.
///
/// Tensors named `*num_batches_tracked` (PyTorch's batch-norm step counter) are dropped into
/// [`LoadReport::skipped`]. When two loaded names map to the same parameter, the second is
/// reported as unexpected. Strict: anything missing, unexpected or mismatched is
/// [`IoError::Load`] naming `origin` and the first few offending tensors. Lenient: the
/// matching tensors (keyed by graph parameter name) and the report.
///
/// ```
/// use shears_io::{bind_weights, Remap, RemapRule, Strictness};
/// use shears_ir::{GraphBuilder, Linear, Tensor, Weights};
/// let mut b = GraphBuilder::new();
/// let x = b.input("x", &[4]).unwrap();
/// let fc = b.add("fc", Linear { in_features: 4, out_features: 2, bias: true }, &[x]).unwrap();
/// let g = b.finish(&[fc]).unwrap();
/// let mut w = Weights::new();
/// w.insert("module.fc.weight", Tensor::zeros(&[2, 4]));
/// let remap = Remap::new().with_rule(RemapRule::StripPrefix("module.".into()));
/// assert!(bind_weights(&g, w.clone(), &remap, Strictness::Strict, "mem").is_err());
/// let (bound, report) = bind_weights(&g, w, &remap, Strictness::Lenient, "mem").unwrap();
/// assert!(bound.contains("fc.weight"));
/// assert_eq!(report.missing, ["fc.bias"]);
/// ```
pub fn bind_weights(
    graph: &Graph,
    loaded: Weights,
    remap: &Remap,
    strictness: Strictness,
    origin: &str,
) -> Result<(Weights, LoadReport), IoError> {
    let mut report = LoadReport::default();
    let mut by_target: HashMap<String, (String, Tensor)> = HashMap::new();
    for (name, t) in loaded {
        if name.ends_with("num_batches_tracked") {
            report
                .skipped
                .push((name, "batch-norm step counter, unused by shears".into()));
            continue;
        }
        let target = remap.apply(&name);
        match by_target.entry(target) {
            Entry::Occupied(_) => report.unexpected.push(name),
            Entry::Vacant(e) => {
                e.insert((name, t));
            }
        }
    }
    let mut out = Weights::new();
    for (_, pname, spec) in graph.param_specs() {
        match by_target.remove(&pname) {
            None => report.missing.push(pname),
            Some((_, t)) if t.shape() != spec.shape.as_slice() => {
                report
                    .shape_mismatch
                    .push((pname, spec.shape, t.shape().to_vec()))
            }
            Some((_, t)) => {
                report.applied.push(pname.clone());
                out.insert(pname, t);
            }
        }
    }
    report
        .unexpected
        .extend(by_target.into_values().map(|(orig, _)| orig));
    report.unexpected.sort();
    if strictness == Strictness::Strict && !report.is_clean() {
        return Err(IoError::Load {
            origin: origin.to_string(),
            report: Box::new(report),
        });
    }
    Ok((out, report))
}
