//! Where a channel forced to zero is exactly zero: the static analysis that lets gates and
//! other activations with `f(0) != 0` (sigmoid, hard sigmoid) be pruned exactly.
//!
//! In [`super::FoldMode::Exact`] a removed channel whose constant cannot be folded exactly is
//! *forced to zero* in the masked model ([`super::mask`]): its producers' weights and biases,
//! its batch norms' `gamma` and `beta`, and its constant-operand slices are zeroed. The channel
//! is then exactly 0 at those nodes, and downstream it is the constant the ops make of 0:
//! `f(0)` after an activation `f` (0.5 after a sigmoid), `0 * g = 0` after a product with any
//! finite factor (an SE gate), the sum of the branches after an `Add`. A constant is foldable
//! wherever the channel meets a linear layer or an unpadded conv, whatever its value; three
//! consumers need the forced channel to be exactly 0 there:
//!
//! - a zero-padded (non-depthwise) conv: at the border the masked model sees a nonzero
//!   constant over fewer taps than a folded bias;
//! - an average pool that counts its zero padding: the value shrinks at the border;
//! - a binary op whose other operand varies (a channel broadcast, a constant that varies over
//!   the map): `x_c * v` is a constant only when `x_c = 0`.
//!
//! `forced_zero` computes, per node and output slot, whether the slot is exactly 0 when its
//! channel is forced, from the ops alone (independent of the weights, like the dependency
//! graph), and `blockers` lists the slots where a forced channel reaches one of those three
//! consumers without being provably 0, with the node responsible. The dependency graph makes
//! those channels' groups non-prunable ([`super::depgraph`]); every other group is pruned
//! exactly, however many sigmoids its channels cross.

use std::collections::BTreeMap;

use shears_ir::{BinaryKind, Graph, NodeId, Op};

use super::depgraph::{is_depthwise, operand_classes, OperandClass};
use super::mask::conv_reads_padding;

/// A slot's value when its channel is forced to zero: exactly 0, or not provably 0 because of
/// a node (an activation with `f(0) != 0`, a graph input, a shared or varying operand).
pub(crate) type Zero = Option<NodeId>;

/// Per node and output slot (the channel axis, or a vector's features): `None` where the slot
/// is exactly 0 when its channel is forced to zero, `Some(node)` where it is not provably 0,
/// with the node that made it so.
pub(crate) fn forced_zero(graph: &Graph) -> Vec<Vec<Zero>> {
    let mut zero: Vec<Vec<Zero>> = Vec::with_capacity(graph.len());
    for id in graph.ids() {
        let node = graph.node(id);
        let c = graph.shape(id)[0];
        let input = |k: usize| -> &Vec<Zero> { &zero[node.inputs[k].0] };
        let z: Vec<Zero> = match &node.op {
            Op::Input { .. } => vec![Some(id); c],
            // A forced channel's producers: weights, bias, BN gamma and beta are zeroed.
            Op::Conv2d(_) | Op::Linear(_) | Op::BatchNorm2d(_) => vec![None; c],
            Op::Act(a) if !a.keeps_zero() => vec![Some(id); c],
            Op::Relu
            | Op::Act(_)
            | Op::MaxPool2d(_)
            | Op::AvgPool2d(_)
            | Op::GlobalAvgPool
            | Op::Dropout { .. }
            | Op::Identity => input(0).clone(),
            Op::Flatten => {
                let per = c / input(0).len().max(1);
                input(0)
                    .iter()
                    .flat_map(|&x| std::iter::repeat_n(x, per))
                    .collect()
            }
            Op::Add => (0..c)
                .map(|s| (0..node.inputs.len()).find_map(|k| input(k)[s]))
                .collect(),
            Op::Concat => (0..node.inputs.len())
                .flat_map(|k| input(k).iter().copied())
                .collect(),
            Op::ShortcutA(s) => {
                let mut v = vec![None; s.pad_before];
                v.extend_from_slice(input(0));
                v.extend(std::iter::repeat_n(None, s.pad_after));
                v
            }
            Op::Binary(b) => binary_zero(graph, id, b, &zero),
            // A gather: output slot o is input slot sources[o].
            Op::Channel(ch) => ch
                .sources(input(0).len())
                .into_iter()
                .map(|src| input(0)[src])
                .collect(),
            // Normalised over all channels: nothing is provably 0 after it (its channels are
            // never removed anyway, see depgraph).
            Op::LayerNorm(_) => vec![Some(id); c],
        };
        debug_assert_eq!(z.len(), c, "zeros follow the shapes of {:?}", node.name);
        zero.push(z);
    }
    zero
}

/// [`forced_zero`] at a binary op's output: a product is 0 when either factor is, a sum or
/// difference when both terms are, a quotient when its numerator is. A constant operand that
/// follows the channels is zeroed with a forced channel (except as a divisor); a shared one
/// is not, and a varying operand is not 0.
fn binary_zero(graph: &Graph, id: NodeId, b: &shears_ir::Binary, zero: &[Vec<Zero>]) -> Vec<Zero> {
    let node = graph.node(id);
    let c = graph.shape(id)[0];
    let (lc, rc) = operand_classes(b, &graph.input_shapes(id));
    let (li, ri) = match &b.constant {
        Some(k) if k.left => (None, Some(0)),
        Some(_) => (Some(0), None),
        None => (Some(0), Some(1)),
    };
    let follows = b.constant.as_ref().is_some_and(|k| k.shape[0] == c);
    let operand = |class: OperandClass, inp: Option<usize>, divisor: bool, s: usize| -> Zero {
        match (class, inp) {
            (OperandClass::Removed, Some(k)) => zero[node.inputs[k].0][s],
            (OperandClass::Fixed, None) if follows && !divisor => None,
            _ => Some(id),
        }
    };
    (0..c)
        .map(|s| {
            let l = operand(lc, li, false, s);
            let r = operand(rc, ri, b.kind == BinaryKind::Div, s);
            match b.kind {
                BinaryKind::Mul => l.and(r),
                BinaryKind::Add | BinaryKind::Sub => l.or(r),
                BinaryKind::Div => l,
            }
        })
        .collect()
}

/// Slots where a forced channel must be exactly 0 but is not provably 0, for one consumer and
/// one cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Blocker {
    /// `(node, slot)`: the output slots concerned.
    pub(crate) slots: Vec<(NodeId, usize)>,
    /// Why, naming the consumer and the node that makes the slots nonzero.
    pub(crate) why: String,
}

/// The slots where a channel forced to zero reaches a zero-padded conv, a padding-counting
/// average pool or a varying binary operand while not provably 0 (see the module docs), one
/// [`Blocker`] per consumer and cause.
pub(crate) fn blockers(graph: &Graph, zero: &[Vec<Zero>]) -> Vec<Blocker> {
    let mut found: BTreeMap<(NodeId, NodeId), Vec<(NodeId, usize)>> = BTreeMap::new();
    for id in graph.ids() {
        let node = graph.node(id);
        let removed_input = match &node.op {
            Op::Conv2d(cv) => (!is_depthwise(&node.op)
                && conv_reads_padding(cv, graph.input_shapes(id)[0], graph.shape(id)))
            .then_some(0),
            Op::AvgPool2d(p) => {
                (p.count_include_pad && p.padding.iter().any(|&x| x > 0)).then_some(0)
            }
            // Sums with a varying operand are blocked anyway (depgraph::binary_blocker).
            Op::Binary(b) if matches!(b.kind, BinaryKind::Mul | BinaryKind::Div) => {
                match operand_classes(b, &graph.input_shapes(id)) {
                    (OperandClass::Removed, OperandClass::Varying) => Some(0),
                    (OperandClass::Varying, OperandClass::Removed) => {
                        Some(usize::from(b.constant.is_none()))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let Some(k) = removed_input else { continue };
        let inp = node.inputs[k];
        for (slot, z) in zero[inp.0].iter().enumerate() {
            if let Some(cause) = *z {
                found.entry((id, cause)).or_default().push((inp, slot));
            }
        }
    }
    found
        .into_iter()
        .map(|((consumer, cause), slots)| Blocker {
            slots,
            why: reason(graph, consumer, cause),
        })
        .collect()
}

/// `"its channels reach zero-padded conv \"head\" past sigmoid \"se.gate\", which maps 0
/// to a nonzero value, so ..."`.
fn reason(graph: &Graph, consumer: NodeId, cause: NodeId) -> String {
    let node = graph.node(consumer);
    let what = match &node.op {
        Op::Conv2d(_) => "zero-padded conv",
        Op::AvgPool2d(_) => "average pool counting its padding",
        _ => "binary op with a varying operand",
    };
    let c = graph.node(cause);
    let because = match &c.op {
        Op::Act(a) => format!(
            "past {} {:?}, which maps 0 to a nonzero value",
            a.name(),
            c.name
        ),
        Op::Input { .. } => format!("from graph input {:?}", c.name),
        op => format!(
            "past {} {:?}, whose other operand is not zeroed with them",
            op.type_name(),
            c.name
        ),
    };
    format!(
        "its channels reach {what} {:?} {because}, so a removed channel could be neither \
         folded exactly there nor forced to zero",
        node.name
    )
}
