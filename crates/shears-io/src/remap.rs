//! Renaming loaded tensors to the names a graph expects.

use shears_ir::Graph;

/// The prefix `nn.DataParallel` adds to every key of a PyTorch state dict.
const DATA_PARALLEL_PREFIX: &str = "module.";

/// One renaming step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemapRule {
    /// Removes the prefix from names that start with it; other names are unchanged.
    StripPrefix(String),
    /// Replaces every occurrence of the substring `from` with `to` (an empty `from` does
    /// nothing).
    Replace {
        /// Substring to find.
        from: String,
        /// Its replacement.
        to: String,
    },
    /// Puts the prefix in front of every name.
    AddPrefix(String),
}

impl RemapRule {
    fn apply(&self, name: &str) -> String {
        match self {
            RemapRule::StripPrefix(p) => name.strip_prefix(p.as_str()).unwrap_or(name).to_string(),
            RemapRule::Replace { from, .. } if from.is_empty() => name.to_string(),
            RemapRule::Replace { from, to } => name.replace(from.as_str(), to),
            RemapRule::AddPrefix(p) => format!("{p}{name}"),
        }
    }
}

/// An ordered list of [`RemapRule`]s applied to every loaded tensor name; the empty list is
/// the identity.
///
/// ```
/// use shears_io::{Remap, RemapRule};
/// let r = Remap::new()
///     .with_rule(RemapRule::StripPrefix("module.".into()))
///     .with_rule(RemapRule::Replace { from: "fc".into(), to: "linear".into() });
/// assert_eq!(r.apply("module.fc.weight"), "linear.weight");
/// assert_eq!(r.apply("conv1.weight"), "conv1.weight");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Remap {
    rules: Vec<RemapRule>,
}

impl Remap {
    /// The identity remap.
    pub fn new() -> Self {
        Self::default()
    }

    /// A remap applying `rules` in order.
    pub fn from_rules(rules: Vec<RemapRule>) -> Self {
        Remap { rules }
    }

    /// Appends a rule.
    pub fn with_rule(mut self, rule: RemapRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// The rules, in application order.
    pub fn rules(&self) -> &[RemapRule] {
        &self.rules
    }

    /// Whether this remap changes nothing.
    pub fn is_identity(&self) -> bool {
        self.rules.is_empty()
    }

    /// Applies every rule in order to `name`.
    pub fn apply(&self, name: &str) -> String {
        self.rules.iter().fold(name.to_string(), |n, r| r.apply(&n))
    }

    /// Guesses the remap for tensors called `names` loaded into `graph`: strips the
    /// `module.` prefix of `nn.DataParallel` checkpoints when every name carries it and more
    /// of the graph's parameters match after stripping than before. Otherwise the identity.
    ///
    /// ```
    /// use shears_io::{Remap, RemapRule};
    /// use shears_ir::{GraphBuilder, Linear};
    /// let mut b = GraphBuilder::new();
    /// let x = b.input("x", &[4]).unwrap();
    /// let fc = b.add("fc", Linear { in_features: 4, out_features: 2, bias: false }, &[x]).unwrap();
    /// let g = b.finish(&[fc]).unwrap();
    /// let r = Remap::auto_for(&g, ["module.fc.weight"]);
    /// assert_eq!(r.rules(), [RemapRule::StripPrefix("module.".into())]);
    /// assert!(Remap::auto_for(&g, ["fc.weight"]).is_identity());
    /// ```
    pub fn auto_for<I, S>(graph: &Graph, names: I) -> Remap
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let expected: std::collections::HashSet<String> =
            graph.param_specs().into_iter().map(|(_, n, _)| n).collect();
        let (mut all_prefixed, mut any, mut before, mut after) = (true, false, 0usize, 0usize);
        for n in names {
            let n = n.as_ref();
            any = true;
            before += usize::from(expected.contains(n));
            match n.strip_prefix(DATA_PARALLEL_PREFIX) {
                Some(s) => after += usize::from(expected.contains(s)),
                None => all_prefixed = false,
            }
        }
        if any && all_prefixed && after > before {
            Remap::new().with_rule(RemapRule::StripPrefix(DATA_PARALLEL_PREFIX.into()))
        } else {
            Remap::new()
        }
    }
}
