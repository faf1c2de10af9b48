//! Broadcasting elementwise arithmetic: [`Binary`], the configuration of [`Op::Binary`].
//!
//! Two operands of equal rank combine axis by axis: on every axis their sizes are equal or one
//! of them is 1 (that operand is repeated along the axis), NumPy-style but without rank
//! promotion. The per-sample forms this serves are the ones CNNs use: a `[C, 1, 1]` scale or
//! shift of a `[C, H, W]` map (squeeze-excitation, ConvNeXt's layer scale), a `[1, 1, 1]`
//! scalar, and equal shapes. An operand may be a constant, held as the node's `weight`
//! parameter (trained like any weight, and cut with its channel group when pruning); it may
//! broadcast over channels, but the computed input must then have the output's channels.
//!
//! [`Op::Binary`]: crate::Op::Binary

use serde::{Deserialize, Serialize};

/// The arithmetic of a [`Binary`] op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryKind {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b`.
    Div,
}

impl BinaryKind {
    /// `add`, `sub`, `mul` or `div`.
    pub fn name(self) -> &'static str {
        match self {
            BinaryKind::Add => "add",
            BinaryKind::Sub => "sub",
            BinaryKind::Mul => "mul",
            BinaryKind::Div => "div",
        }
    }

    /// `a op b` in f64 (the reference the kernels and the pruning constants use).
    pub fn apply(self, a: f64, b: f64) -> f64 {
        match self {
            BinaryKind::Add => a + b,
            BinaryKind::Sub => a - b,
            BinaryKind::Mul => a * b,
            BinaryKind::Div => a / b,
        }
    }
}

/// A constant operand of a [`Binary`] op, held as the node's `weight` parameter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConstOperand {
    /// Per-sample shape, of the input's rank; each axis equals the output's or is 1. The
    /// channel axis (the first) equals the output's or is 1.
    pub shape: Vec<usize>,
    /// Whether the constant is the left operand (`c - x`, `c / x`); otherwise it is the right
    /// one (`x - c`, `x / c`).
    #[serde(default)]
    pub left: bool,
}

/// Broadcasting elementwise arithmetic of two operands: equal-rank shapes, each axis equal or
/// 1; a constant operand may broadcast onto the input but not widen it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binary {
    /// The arithmetic.
    pub kind: BinaryKind,
    /// The constant operand, if any: the node then has one input. Without it the node has two
    /// inputs, the left and the right operand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constant: Option<ConstOperand>,
}

impl Binary {
    /// Two computed operands.
    pub fn new(kind: BinaryKind) -> Self {
        Binary {
            kind,
            constant: None,
        }
    }

    /// One computed operand and a constant of per-sample `shape`, on the left when `left`.
    pub fn with_constant(kind: BinaryKind, shape: Vec<usize>, left: bool) -> Self {
        Binary {
            kind,
            constant: Some(ConstOperand { shape, left }),
        }
    }

    /// Number of computed inputs (1 with a constant operand, else 2).
    pub fn n_inputs(&self) -> usize {
        if self.constant.is_some() {
            1
        } else {
            2
        }
    }

    /// The `(left, right)` operand shapes given the computed inputs' shapes.
    pub fn operand_shapes<'a>(&'a self, inputs: &[&'a [usize]]) -> (&'a [usize], &'a [usize]) {
        match &self.constant {
            Some(c) if c.left => (&c.shape, inputs[0]),
            Some(c) => (inputs[0], &c.shape),
            None => (inputs[0], inputs[1]),
        }
    }

    /// The output shape for the computed inputs' shapes, or what is wrong.
    pub fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        if let Some(c) = &self.constant {
            if c.shape.is_empty() || c.shape.contains(&0) {
                return Err(format!(
                    "constant operand shape {:?} must be non-empty with no zero axis",
                    c.shape
                ));
            }
        }
        let (a, b) = self.operand_shapes(inputs);
        let out = broadcast_shape(a, b)
            .map_err(|e| format!("{} operands do not broadcast: {e}", self.kind.name()))?;
        if self.constant.is_some() && out != inputs[0] {
            return Err(format!(
                "constant operand {b:?} widens the input {:?} to {out:?}; a constant may only \
                 broadcast onto the input",
                inputs[0],
                b = self
                    .constant
                    .as_ref()
                    .map(|c| c.shape.as_slice())
                    .unwrap_or(&[]),
            ));
        }
        Ok(out)
    }

    /// For each computed input, whether it has one channel that the output (of more channels)
    /// repeats over its channel axis (never the input of a node with a constant operand).
    pub fn channel_broadcast(&self, inputs: &[&[usize]]) -> Vec<bool> {
        if self.constant.is_some() {
            return vec![false];
        }
        let c = inputs.iter().map(|s| s[0]).max().unwrap_or(0);
        inputs.iter().map(|s| s[0] == 1 && c > 1).collect()
    }
}

/// The shape two operands of equal rank broadcast to: per axis the larger size, where the other
/// is equal or 1.
///
/// ```
/// use shears_ir::broadcast_shape;
/// assert_eq!(broadcast_shape(&[8, 4, 4], &[8, 1, 1]).unwrap(), vec![8, 4, 4]);
/// assert_eq!(broadcast_shape(&[1, 1, 1], &[3, 2, 2]).unwrap(), vec![3, 2, 2]);
/// assert!(broadcast_shape(&[8, 4, 4], &[4, 1, 1]).is_err());
/// assert!(broadcast_shape(&[8], &[8, 1, 1]).is_err());
/// ```
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    if a.len() != b.len() {
        return Err(format!("ranks of {a:?} and {b:?} differ"));
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| match (x, y) {
            _ if x == y => Ok(x),
            (1, _) => Ok(y),
            (_, 1) => Ok(x),
            _ => Err(format!(
                "{a:?} and {b:?} differ on an axis where neither is 1"
            )),
        })
        .collect()
}
