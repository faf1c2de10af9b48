//! Dependency groups: which channel axes must be cut together.
//!
//! Every node output has a channel axis (the first axis; a `[F]` vector's features are its
//! channels), and each position on it is a *slot* `(node, index)`. Walking each node's
//! [`ChannelMap`] links slots that hold the same channel:
//!
//! - `Elementwise` (BN, ReLU, pools, global pool, dropout, identity, `Add`): output slot `i` is
//!   input slot `i` of every input, so `Add` couples all its branches;
//! - `Concat { offsets }`: output slot `offsets[k] + i` is slot `i` of input `k`;
//! - `Flatten { per_channel }`: output features `c * per_channel ..` are input channel `c`;
//! - `Pad { offset, .. }` (option-A shortcut): output slot `offset + i` is input slot `i`; the
//!   padded slots are constant zero and *originate* there;
//! - `Transform` (conv, linear): output slots originate at the layer; input and output are
//!   independent, except for a depthwise conv (`groups == in == out`), whose output `i` is
//!   linked to its input `i`;
//! - `Select { sources, tied }` ([`Op::Channel`]: channel shuffle, channel range): output
//!   slot `o` is input slot `sources[o]`; a shuffle moreover links the input slots of each
//!   `tied` set (position `j` of every group), so a removed channel leaves every group with
//!   the same positions and the shuffle over the kept channels is still a shuffle. In a
//!   ShuffleNetV2 stage this ties each unit's branch output to the pass-through half, so the
//!   trunk channels merge into coarser channels unit by unit;
//! - `Source` (graph input): slots originate there and are never prunable.
//! - `Broadcast` (a [`Op::Binary`] whose operand has one channel that every output channel
//!   reads): the other operand links elementwise; the broadcast operand links to nothing and is
//!   not prunable. A binary op whose result for a removed channel can neither be folded as a
//!   constant nor forced to zero blocks its channels: `Add` / `Sub` with such an operand or
//!   a constant shared by all channels, and `Div` by the channels.
//!
//! The linked slots form *channels* (union-find over slots): removing a channel removes every
//! slot it holds, and every edit that needs is expressible in the IR (conv / linear / BN
//! widths, and the option-A pad counts, since all zero-pad slots in front are alike, and so are
//! those behind). Channels are independent of each other: any subset can be removed.
//!
//! A [`Group`] bundles the channels that originate first (in topological order) at the same
//! node, its `root`. For a CIFAR ResNet with option-A shortcuts this gives one group per block's
//! `conv1` and, per stage, one *trunk* group: the stem `conv1` roots the 16 channels that run
//! through all three stages (in stage 2 at slots 8..24, in stage 3 at slots 24..40), the first
//! block of stage 2 roots the 16 channels that stage 2's shortcut pads with zeros (slots 0..8
//! and 24..32 of stage 2, 16..24 and 40..48 of stage 3), and stage 3's first block roots its 32
//! padded channels. Removing a stage-1 channel therefore also removes its continuation in stages
//! 2 and 3, which is exactly what the option-A shortcut requires (a shortcut cannot zero a slot
//! in the middle of its output).
//!
//! A group is *prunable* unless one of its channels reaches a graph input or a graph output
//! (the logits), or passes through a grouped convolution that is not depthwise (general grouped
//! convs, including depthwise with a channel multiplier, are excluded conservatively; whole
//! conv groups are not pruned), or meets a binary op that blocks it (above), or, forced to
//! zero, would not be zero where it must be: past an activation with `f(0) != 0` (a sigmoid
//! gate) and not multiplied back to zero, at a zero-padded conv, a padding-counting average
//! pool or a varying product ([`super::forced_zero`]). Channels that pass a sigmoid elsewhere
//! (a squeeze-excitation gate times its trunk, then an unpadded conv) are prunable.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use shears_ir::{ChannelMap, ChannelOp, Graph, NodeId, Op};

use super::error::{PruneError, Result};
use super::forced_zero;

/// How a group's channels touch a member node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Output channels of a conv or linear: weight axis 0 and the bias.
    OutChannels,
    /// Input channels of a conv or linear consumer: weight axis 1. After a `Flatten`, one
    /// channel is `per_channel` consecutive input features.
    InChannels,
    /// Channels of a batch norm: weight, bias, running mean and running variance.
    BnChannels,
    /// Channels of a depthwise conv (`groups == in == out`), whose input and output channel
    /// `i` are one channel: weight axis 0, the bias, and the group count.
    Depthwise,
    /// Zero-padded output slots of an option-A shortcut: removing them shrinks `pad_before` /
    /// `pad_after`.
    ShortcutPad,
    /// Channels of a [`Op::Binary`]'s constant operand (its `weight`, axis 0, and the shape the
    /// op records), e.g. ConvNeXt's layer scale `gamma * x`.
    Operand,
    /// Input channels of a channel range ([`shears_ir::ChannelOp::Slice`]): removing them
    /// moves its start and end.
    SliceInput,
}

impl Role {
    /// A short name for tables (`out`, `in`, `bn`, `depthwise`, `pad`).
    pub fn name(self) -> &'static str {
        match self {
            Role::OutChannels => "out",
            Role::InChannels => "in",
            Role::BnChannels => "bn",
            Role::Depthwise => "depthwise",
            Role::ShortcutPad => "pad",
            Role::Operand => "operand",
            Role::SliceInput => "slice",
        }
    }
}

/// One node touched by a group, with the index map from the group's channels to the node's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node.
    pub node: NodeId,
    /// How the group touches it.
    pub role: Role,
    /// `idxs[r]`: the indices on this member's axis (see [`Role`]) that hold the group's
    /// channel `r`; empty where channel `r` does not reach this member (e.g. the stage-1
    /// channels of a ResNet trunk group at a stage-2 shortcut's pad slots), several after a
    /// `Flatten`. Indices refer to the unpruned graph.
    pub idxs: Vec<Vec<usize>>,
}

impl Member {
    /// Number of indices over all channels.
    pub fn n_idxs(&self) -> usize {
        self.idxs.iter().map(Vec::len).sum()
    }
}

/// A set of channels that originate at the same node; each can be removed on its own, and
/// removing one edits every member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Index in [`DepGraph::groups`] (groups are ordered by root, in topological order).
    pub id: usize,
    /// The node where the group's channels originate: a conv / linear whose output channels
    /// (or some of them) define the group, a shortcut's zero padding, or a graph input.
    pub root: NodeId,
    /// Number of channels (root indices `0..size`, ordered by their index at the root).
    pub size: usize,
    /// Every conv, linear, BN, shortcut and constant operand the group touches, in
    /// topological order.
    pub members: Vec<Member>,
    /// Whether the group's channels may be removed.
    pub prunable: bool,
    /// Why not, when not prunable.
    pub why_not: Option<String>,
}

impl Group {
    /// The members with a given role.
    pub fn members_with(&self, role: Role) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |m| m.role == role)
    }
}

/// Which group channel an output slot of a node holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Channel {
    /// The group id.
    pub group: usize,
    /// The channel's root index within the group.
    pub idx: usize,
}

/// The dependency groups of a graph. Derived from the channel maps alone; no model is
/// special-cased.
#[derive(Clone, Debug)]
pub struct DepGraph {
    groups: Vec<Group>,
    channels: Vec<Vec<Channel>>,
}

struct UnionFind {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        UnionFind {
            parent: (0..n).collect(),
            size: vec![1; n],
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    fn union(&mut self, a: usize, b: usize) {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        if self.size[a] < self.size[b] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b] = a;
        self.size[a] += self.size[b];
    }
}

/// Whether a conv with these settings is depthwise in the sense the dependency analysis
/// supports: one input and one output channel per group.
pub(crate) fn is_depthwise(op: &Op) -> bool {
    matches!(op, Op::Conv2d(c) if c.groups > 1 && c.groups == c.in_channels && c.groups == c.out_channels)
}

impl DepGraph {
    /// Derives the groups of `graph`.
    ///
    /// ```
    /// use shears::prune::DepGraph;
    /// use shears::zoo::{build, Arch};
    /// let g = build(Arch::ResNet20, &Arch::ResNet20.default_config()).unwrap();
    /// let dg = DepGraph::build(&g).unwrap();
    /// // 9 block-internal groups and 3 trunk groups are prunable; the input and the logits are not.
    /// assert_eq!(dg.groups().iter().filter(|x| x.prunable).count(), 12);
    /// assert_eq!(dg.groups().len(), 14);
    /// ```
    pub fn build(graph: &Graph) -> Result<DepGraph> {
        let n_nodes = graph.len();
        let mut base = Vec::with_capacity(n_nodes + 1);
        let mut total = 0usize;
        for id in graph.ids() {
            base.push(total);
            total += graph.shape(id)[0];
        }
        base.push(total);
        let width = |id: NodeId| base[id.0 + 1] - base[id.0];
        let mut uf = UnionFind::new(total);
        let mut origin = vec![false; total];
        let mut reasons: Vec<String> = Vec::new();
        let mut blocked: Vec<Option<usize>> = vec![None; total];
        let block =
            |blocked: &mut Vec<Option<usize>>, range: std::ops::Range<usize>, why: usize| {
                for s in range {
                    blocked[s].get_or_insert(why);
                }
            };
        for id in graph.ids() {
            let node = graph.node(id);
            let in_shapes = graph.input_shapes(id);
            let b = base[id.0];
            let c = width(id);
            let check_width = |inp: NodeId, expect: usize| -> Result<()> {
                if width(inp) != expect {
                    return Err(PruneError::Invalid(format!(
                        "node {:?}: channel map links {expect} channels to input {:?} of {} channels",
                        node.name,
                        graph.node(inp).name,
                        width(inp)
                    )));
                }
                Ok(())
            };
            match node.op.channel_map(&in_shapes) {
                ChannelMap::Source => {
                    origin[b..b + c].fill(true);
                    reasons.push(format!("graph input {:?}", node.name));
                    block(&mut blocked, b..b + c, reasons.len() - 1);
                }
                ChannelMap::Transform { groups } => {
                    origin[b..b + c].fill(true);
                    if groups > 1 {
                        let inp = node.inputs[0];
                        if is_depthwise(&node.op) {
                            check_width(inp, c)?;
                            for i in 0..c {
                                uf.union(b + i, base[inp.0] + i);
                            }
                        } else {
                            reasons.push(format!(
                                "grouped conv {:?} (groups {groups}) is not supported",
                                node.name
                            ));
                            let why = reasons.len() - 1;
                            block(&mut blocked, b..b + c, why);
                            block(&mut blocked, base[inp.0]..base[inp.0 + 1], why);
                        }
                    }
                }
                ChannelMap::Elementwise => {
                    for &inp in &node.inputs {
                        check_width(inp, c)?;
                        for i in 0..c {
                            uf.union(b + i, base[inp.0] + i);
                        }
                    }
                }
                ChannelMap::Broadcast { channel_broadcast } => {
                    for (&inp, &bc) in node.inputs.iter().zip(&channel_broadcast) {
                        if bc {
                            reasons.push(format!(
                                "its one channel is broadcast over the channels of {:?}",
                                node.name
                            ));
                            block(
                                &mut blocked,
                                base[inp.0]..base[inp.0 + 1],
                                reasons.len() - 1,
                            );
                            continue;
                        }
                        check_width(inp, c)?;
                        for i in 0..c {
                            uf.union(b + i, base[inp.0] + i);
                        }
                    }
                }
                ChannelMap::Concat { offsets } => {
                    for (&inp, &off) in node.inputs.iter().zip(&offsets) {
                        for i in 0..width(inp) {
                            uf.union(b + off + i, base[inp.0] + i);
                        }
                    }
                }
                ChannelMap::Flatten { per_channel } => {
                    let inp = node.inputs[0];
                    check_width(inp, c / per_channel.max(1))?;
                    for ch in 0..width(inp) {
                        for j in 0..per_channel {
                            uf.union(b + ch * per_channel + j, base[inp.0] + ch);
                        }
                    }
                }
                ChannelMap::Select { sources, tied } => {
                    let inp = node.inputs[0];
                    let bi = base[inp.0];
                    if sources.len() != c || sources.iter().any(|&s| s >= width(inp)) {
                        return Err(PruneError::Invalid(format!(
                            "node {:?}: channel gather of {} channels does not fit {} input \
                             and {c} output channels",
                            node.name,
                            sources.len(),
                            width(inp)
                        )));
                    }
                    for (o, &s) in sources.iter().enumerate() {
                        uf.union(b + o, bi + s);
                    }
                    for set in &tied {
                        for pair in set.windows(2) {
                            uf.union(bi + pair[0], bi + pair[1]);
                        }
                    }
                }
                ChannelMap::Pad {
                    offset,
                    out_channels,
                } => {
                    let inp = node.inputs[0];
                    let ci = width(inp);
                    if out_channels != c || offset + ci > c {
                        return Err(PruneError::Invalid(format!(
                            "node {:?}: pad map (offset {offset}, {out_channels} channels) does \
                             not fit {ci} input and {c} output channels",
                            node.name
                        )));
                    }
                    origin[b..b + offset].fill(true);
                    origin[b + offset + ci..b + c].fill(true);
                    for i in 0..ci {
                        uf.union(b + offset + i, base[inp.0] + i);
                    }
                }
            }
        }
        for id in graph.ids() {
            let node = graph.node(id);
            if let Op::LayerNorm(_) = &node.op {
                reasons.push(format!(
                    "layer norm {:?} normalises each pixel over all its channels: removing one \
                     changes every other",
                    node.name
                ));
                block(&mut blocked, base[id.0]..base[id.0 + 1], reasons.len() - 1);
            }
            if let Op::Binary(bin) = &node.op {
                if let Some(why) = binary_blocker(bin, &graph.input_shapes(id)) {
                    reasons.push(format!("{:?} {why}", node.name));
                    block(&mut blocked, base[id.0]..base[id.0 + 1], reasons.len() - 1);
                }
            }
        }
        for bl in forced_zero::blockers(graph, &forced_zero::forced_zero(graph)) {
            reasons.push(bl.why);
            for (node, slot) in bl.slots {
                let s = base[node.0] + slot;
                block(&mut blocked, s..s + 1, reasons.len() - 1);
            }
        }
        for &o in graph.outputs() {
            reasons.push(format!("graph output {:?}", graph.node(o).name));
            block(&mut blocked, base[o.0]..base[o.0 + 1], reasons.len() - 1);
        }

        // Each union-find class is one channel. Key it by its first origin slot.
        let node_of = |s: usize| -> usize { base.partition_point(|&x| x <= s) - 1 };
        let mut class_key: Vec<usize> = vec![usize::MAX; total];
        let mut class_block: Vec<Option<usize>> = vec![None; total];
        let mut rep = vec![0usize; total];
        for s in 0..total {
            let r = uf.find(s);
            rep[s] = r;
            if origin[s] && s < class_key[r] {
                class_key[r] = s;
            }
            if let Some(w) = blocked[s] {
                if class_block[r].is_none() {
                    class_block[r] = Some(w);
                }
            }
        }
        // Classes in order of their key slot: slots are numbered node by node in topological
        // order, so this orders groups by root and channels by their index at the root.
        let mut keys: Vec<(usize, usize)> = (0..total)
            .filter(|&s| rep[s] == s)
            .map(|r| {
                assert!(
                    class_key[r] != usize::MAX,
                    "every channel has an origin: each linked slot traces back to a source, a \
                     transform output or a pad slot"
                );
                (class_key[r], r)
            })
            .collect();
        keys.sort_unstable();
        let mut class_channel: Vec<Channel> = vec![
            Channel {
                group: usize::MAX,
                idx: 0
            };
            total
        ];
        let mut groups: Vec<Group> = Vec::new();
        let mut last_root = usize::MAX;
        for &(key, r) in &keys {
            let root = node_of(key);
            if root != last_root {
                groups.push(Group {
                    id: groups.len(),
                    root: NodeId(root),
                    size: 0,
                    members: Vec::new(),
                    prunable: true,
                    why_not: None,
                });
                last_root = root;
            }
            let g = groups.last_mut().expect("a group was just pushed");
            class_channel[r] = Channel {
                group: g.id,
                idx: g.size,
            };
            g.size += 1;
            if let (Some(w), true) = (class_block[r], g.prunable) {
                g.prunable = false;
                g.why_not = Some(reasons[w].clone());
            }
        }
        let channels: Vec<Vec<Channel>> = graph
            .ids()
            .map(|id| {
                (base[id.0]..base[id.0 + 1])
                    .map(|s| class_channel[rep[s]])
                    .collect()
            })
            .collect();

        for id in graph.ids() {
            let node = graph.node(id);
            let mut found: BTreeMap<(usize, Role), Vec<Vec<usize>>> = BTreeMap::new();
            let mut add = |ch: Channel, role: Role, idx: usize, groups: &[Group]| {
                found
                    .entry((ch.group, role))
                    .or_insert_with(|| vec![Vec::new(); groups[ch.group].size])[ch.idx]
                    .push(idx);
            };
            match &node.op {
                Op::Conv2d(_) | Op::Linear(_) => {
                    let dw = is_depthwise(&node.op);
                    let role = if dw {
                        Role::Depthwise
                    } else {
                        Role::OutChannels
                    };
                    for (i, &ch) in channels[id.0].iter().enumerate() {
                        add(ch, role, i, &groups);
                    }
                    if !dw {
                        for (i, &ch) in channels[node.inputs[0].0].iter().enumerate() {
                            add(ch, Role::InChannels, i, &groups);
                        }
                    }
                }
                Op::BatchNorm2d(_) => {
                    for (i, &ch) in channels[id.0].iter().enumerate() {
                        add(ch, Role::BnChannels, i, &groups);
                    }
                }
                Op::Binary(bin) => {
                    let follows = bin
                        .constant
                        .as_ref()
                        .is_some_and(|k| k.shape[0] == width(id));
                    if follows {
                        for (i, &ch) in channels[id.0].iter().enumerate() {
                            add(ch, Role::Operand, i, &groups);
                        }
                    }
                }
                Op::Channel(ChannelOp::Slice { .. }) => {
                    for (i, &ch) in channels[node.inputs[0].0].iter().enumerate() {
                        add(ch, Role::SliceInput, i, &groups);
                    }
                }
                Op::ShortcutA(s) => {
                    let ci = width(node.inputs[0]);
                    for (i, &ch) in channels[id.0].iter().enumerate() {
                        if i < s.pad_before || i >= s.pad_before + ci {
                            add(ch, Role::ShortcutPad, i, &groups);
                        }
                    }
                }
                _ => {}
            }
            for ((g, role), idxs) in found {
                groups[g].members.push(Member {
                    node: id,
                    role,
                    idxs,
                });
            }
        }
        Ok(DepGraph { groups, channels })
    }

    /// All groups, ordered by root in topological order; `groups()[i].id == i`.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The group with id `id`, if any.
    pub fn group(&self, id: usize) -> Option<&Group> {
        self.groups.get(id)
    }

    /// The prunable groups.
    pub fn prunable(&self) -> impl Iterator<Item = &Group> {
        self.groups.iter().filter(|g| g.prunable)
    }

    /// For each output slot of `node` (its channel axis, or a vector's features), the group
    /// channel it holds.
    ///
    /// # Panics
    /// If `node` is not a node of the graph this was built from.
    pub fn channels(&self, node: NodeId) -> &[Channel] {
        &self.channels[node.0]
    }

    /// The groups whose root is the node named `name`.
    pub fn find_root<'a>(
        &'a self,
        graph: &'a Graph,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Group> + 'a {
        self.groups
            .iter()
            .filter(move |g| graph.node(g.root).name == name)
    }

    /// A human listing of the groups (`shears info --groups`): each group with its root, size
    /// and prunability, then its members with role, node, and the indices it maps to.
    ///
    /// ```
    /// use shears::prune::DepGraph;
    /// use shears::zoo::{build, Arch};
    /// let g = build(Arch::LeNet5, &Arch::LeNet5.default_config()).unwrap();
    /// let text = DepGraph::build(&g).unwrap().describe(&g);
    /// assert!(text.contains("group 2 (conv2): 64 channels"));
    /// assert!(text.contains("in   linear1  3136 idxs (49 per channel)"));
    /// ```
    pub fn describe(&self, graph: &Graph) -> String {
        let mut s = String::new();
        let n_prunable = self.prunable().count();
        let _ = writeln!(
            s,
            "{} groups, {} prunable, {} prunable channels",
            self.groups.len(),
            n_prunable,
            self.prunable().map(|g| g.size).sum::<usize>()
        );
        for g in &self.groups {
            let _ = write!(
                s,
                "group {} ({}): {} channels",
                g.id,
                graph.node(g.root).name,
                g.size
            );
            match &g.why_not {
                Some(w) => {
                    let _ = writeln!(s, ", not prunable: {w}");
                }
                None => {
                    let _ = writeln!(s);
                }
            }
            let name_w = g
                .members
                .iter()
                .map(|m| graph.node(m.node).name.len())
                .max()
                .unwrap_or(0);
            for m in &g.members {
                let _ = writeln!(
                    s,
                    "  {:<4} {:<name_w$}  {}",
                    m.role.name(),
                    graph.node(m.node).name,
                    describe_idxs(m)
                );
            }
        }
        s
    }
}

/// How one operand of a [`Op::Binary`] behaves when an output channel is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OperandClass {
    /// A computed input on the output's channels: the removed channel, constant in the masked
    /// model.
    Removed,
    /// A constant parameter that is uniform over H and W (`[C, 1, 1]`, `[1, 1, 1]`, `[F]`):
    /// a constant, per channel or shared.
    Fixed,
    /// Not a spatial constant: a computed input broadcast over channels, or a constant that
    /// varies over H and W.
    Varying,
}

/// The classes of a binary op's `(left, right)` operands given its computed inputs' shapes.
pub(crate) fn operand_classes(
    bin: &shears_ir::Binary,
    inputs: &[&[usize]],
) -> (OperandClass, OperandClass) {
    let computed = |broadcast: bool| {
        if broadcast {
            OperandClass::Varying
        } else {
            OperandClass::Removed
        }
    };
    match &bin.constant {
        Some(k) => {
            let kc = if k.shape[1..].iter().all(|&d| d == 1) {
                OperandClass::Fixed
            } else {
                OperandClass::Varying
            };
            if k.left {
                (kc, OperandClass::Removed)
            } else {
                (OperandClass::Removed, kc)
            }
        }
        None => {
            let bc = bin.channel_broadcast(inputs);
            (computed(bc[0]), computed(bc[1]))
        }
    }
}

/// Why the channels of a binary op cannot be removed, if they cannot: the masked model's value
/// of a removed channel must either be a spatial constant (folded downstream) or become exactly
/// 0 when the channel is forced to zero ([`super::mask`]).
///
/// - `Add` / `Sub` with an operand that is not a spatial constant (`x_c + v` varies), or with a
///   constant shared by all channels (a forced channel would be that constant, not 0);
/// - `Div` by a removed channel (a forced one would divide by 0).
///
/// `Mul` is always prunable: a removed channel times a varying operand is forced to zero.
pub(crate) fn binary_blocker(bin: &shears_ir::Binary, inputs: &[&[usize]]) -> Option<String> {
    use shears_ir::BinaryKind;
    let (l, r) = operand_classes(bin, inputs);
    let shared_const = bin
        .constant
        .as_ref()
        .is_some_and(|k| k.shape[0] == 1 && inputs[0][0] > 1);
    match bin.kind {
        BinaryKind::Add | BinaryKind::Sub
            if l == OperandClass::Varying || r == OperandClass::Varying =>
        {
            Some(format!(
                "{}s an operand that varies over the map or the channels",
                bin.kind.name()
            ))
        }
        BinaryKind::Add | BinaryKind::Sub if shared_const => Some(format!(
            "{}s a constant shared by all channels",
            bin.kind.name()
        )),
        BinaryKind::Div if r == OperandClass::Removed => {
            Some("divides by its channels".to_string())
        }
        _ => None,
    }
}

/// `"8..24"`, `"0..8, 24..32"`, or `"3136 idxs (49 per channel)"`.
fn describe_idxs(m: &Member) -> String {
    let present: Vec<&Vec<usize>> = m.idxs.iter().filter(|v| !v.is_empty()).collect();
    if present.iter().all(|v| v.len() == 1) {
        let mut flat: Vec<usize> = present.iter().map(|v| v[0]).collect();
        flat.sort_unstable();
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for x in flat {
            match runs.last_mut() {
                Some((_, end)) if *end == x => *end += 1,
                _ => runs.push((x, x + 1)),
            }
        }
        let shown: Vec<String> = runs
            .iter()
            .take(6)
            .map(|(a, b)| {
                if b - a == 1 {
                    a.to_string()
                } else {
                    format!("{a}..{b}")
                }
            })
            .collect();
        let more = if runs.len() > 6 {
            format!(", ... ({} runs)", runs.len())
        } else {
            String::new()
        };
        format!("{}{more}", shown.join(", "))
    } else {
        let per = present.first().map_or(0, |v| v.len());
        if present.iter().all(|v| v.len() == per) {
            format!("{} idxs ({per} per channel)", m.n_idxs())
        } else {
            format!("{} idxs", m.n_idxs())
        }
    }
}
