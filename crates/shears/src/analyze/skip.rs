//! Probes that start after the damaged conv (used by [`super::sweep::Prober`]).
//!
//! A channel-pruning probe zeroes some filters of a conv `d` (and, in exact fold mode, the
//! same channels of the batch norm after it). Those channels are then spatially constant from
//! `d` through the per-channel nodes that follow it (batch norm, ReLU) up to `p`, the value the
//! next channel-mixing node reads, and every other channel keeps its undamaged value. So the
//! damaged value at `p` is the cached undamaged one with the damaged channels overwritten by
//! their constants: `d` and its batch norm need not run at all (bit-identical to running them).
//!
//! A *delta* form that would also skip most of the next conv (by linearity,
//! `q' = q + conv(scale * W[:, S], c_S - p_S)` over the damaged channels only, added to its
//! cached output) was tried on ResNet-56: 3.5% fewer MACs, but no measurable time saved (a conv
//! over a few input channels runs far below the engine's usual efficiency, and the gather and
//! the add cost a pass each), and results no longer bit-exact; so it is not used.

use std::collections::HashMap;

use shears_ir::{Graph, NodeId, Op, ParamKind, Weights};

/// A damaged conv and the per-channel nodes after it (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chain {
    /// The conv whose filters a probe zeroes.
    pub d: NodeId,
    /// The last of the per-channel nodes after `d` (`d` itself when there are none). Every
    /// node from `d` to `p` sits right after the one before and is its only consumer; `p`'s
    /// undamaged value is what a probe along the chain reads from the cache besides the
    /// frontier of `d`.
    pub p: NodeId,
}

/// The chain starting at node `start`, when `start` is a conv (see [`Chain`]). `consumers`
/// lists each node's consumers; only nodes with `needed` set count.
pub(crate) fn chain_at(
    graph: &Graph,
    consumers: &[Vec<NodeId>],
    needed: &[bool],
    start: usize,
) -> Option<Chain> {
    if start >= graph.len() || !matches!(graph.node(NodeId(start)).op, Op::Conv2d(_)) {
        return None;
    }
    let outputs = graph.outputs();
    // The only needed consumer of `id`, when it is the next node and `id` is not an output.
    let next = |id: NodeId| -> Option<NodeId> {
        if outputs.contains(&id) {
            return None;
        }
        let mut cs = consumers[id.0].iter().filter(|c| needed[c.0]);
        match (cs.next(), cs.next()) {
            (Some(&c), None) if c.0 == id.0 + 1 => Some(c),
            _ => None,
        }
    };
    let d = NodeId(start);
    let mut p = d;
    while let Some(c) = next(p) {
        if !matches!(graph.node(c).op, Op::BatchNorm2d(_) | Op::Relu) {
            break;
        }
        p = c;
    }
    Some(Chain { d, p })
}

/// What a probe's damage does to a [`Chain`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChainDamage {
    /// The damaged channels, ascending: every one has an all-zero filter in `d`.
    pub chans: Vec<usize>,
}

/// The damaged channels of `chain` when the damage has the form the module docs describe:
/// inside the chain only whole channels change, and `d`'s filter of each is all zero. `None`
/// when it has another form (the probe then runs from the frontier of `d`).
pub(crate) fn chain_damage(
    graph: &Graph,
    chain: &Chain,
    owner: &HashMap<String, NodeId>,
    orig: &Weights,
    changed: &Weights,
) -> Option<ChainDamage> {
    let Op::Conv2d(conv) = &graph.node(chain.d).op else {
        return None;
    };
    let n_ch = conv.out_channels;
    let mut hit = vec![false; n_ch];
    for (name, t) in changed.iter() {
        let id = *owner.get(name)?;
        let o = orig.get(name)?;
        if o.shape() != t.shape() || o.data() == t.data() {
            continue;
        }
        if id.0 >= chain.d.0 && id.0 <= chain.p.0 {
            if o.shape().first() != Some(&n_ch) {
                return None;
            }
            let row = o.numel() / n_ch;
            for (c, h) in hit.iter_mut().enumerate() {
                let r = c * row..(c + 1) * row;
                if o.data()[r.clone()] != t.data()[r] {
                    *h = true;
                }
            }
        }
    }
    let chans: Vec<usize> = (0..n_ch).filter(|&c| hit[c]).collect();
    if chans.is_empty() {
        return None;
    }
    let wname = graph.node(chain.d).param_name(ParamKind::Weight);
    let w = changed.get(&wname).or_else(|| orig.get(&wname))?;
    let row = w.numel() / n_ch;
    if chans
        .iter()
        .any(|&c| w.data()[c * row..(c + 1) * row].iter().any(|&x| x != 0.0))
    {
        return None;
    }
    Some(ChainDamage { chans })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoo::{build, init_weights, Arch};

    fn chain(g: &Graph, name: &str) -> Option<Chain> {
        let needed = vec![true; g.len()];
        chain_at(g, &g.consumers(), &needed, g.find(name).unwrap().0)
    }

    #[test]
    fn chains_follow_per_channel_nodes_to_the_mixing_conv() {
        let g = build(Arch::ResNet20, &Arch::ResNet20.default_config()).unwrap();
        let id = |n: &str| g.find(n).unwrap();
        // A block's first conv: through bn1 and relu1, up to conv2.
        let c = chain(&g, "layer1.0.conv1").unwrap();
        assert_eq!((c.d, c.p), (id("layer1.0.conv1"), id("layer1.0.relu1")));
        // The stem: through its batch norm and ReLU (read by a conv and the residual add).
        assert_eq!(chain(&g, "conv1").unwrap().p, id("relu"));
        // A block's second conv stops at its batch norm (the add mixes branches).
        assert_eq!(chain(&g, "layer1.0.conv2").unwrap().p, id("layer1.0.bn2"));
        // Not a conv: no chain.
        assert!(chain(&g, "layer1.0.bn1").is_none());
    }

    #[test]
    fn only_zeroed_whole_filters_count_as_chain_damage() {
        let g = build(Arch::ResNet20, &Arch::ResNet20.default_config()).unwrap();
        let w = init_weights(&g, Some(Arch::ResNet20), 0);
        let owner: HashMap<String, NodeId> = g
            .param_specs()
            .into_iter()
            .map(|(id, name, _)| (name, id))
            .collect();
        let c = chain(&g, "layer1.0.conv1").unwrap();
        let name = "layer1.0.conv1.weight";
        let mut t = w.get(name).unwrap().clone();
        let row = t.numel() / 16;
        for ch in [3usize, 9] {
            t.data_mut()[ch * row..(ch + 1) * row].fill(0.0);
        }
        let mut changed = Weights::new();
        changed.insert(name, t.clone());
        // The batch norm of the same channels may change too; the mixing conv may not.
        let bn = "layer1.0.bn1.bias";
        let mut b = w.get(bn).unwrap().clone();
        b.data_mut()[3] = 0.0;
        b.data_mut()[9] = 0.0;
        changed.insert(bn, b);
        let d = chain_damage(&g, &c, &owner, &w, &changed).unwrap();
        assert_eq!(d, ChainDamage { chans: vec![3, 9] });
        // Damage after the chain is the suffix's business.
        let mut later = changed.clone();
        later.insert("layer1.0.bn2.weight", {
            let mut x = w.get("layer1.0.bn2.weight").unwrap().clone();
            x.data_mut()[0] += 1.0;
            x
        });
        assert_eq!(chain_damage(&g, &c, &owner, &w, &later), Some(d));
        // A channel whose batch norm changes but whose filter is not zero is not constant.
        let mut b2 = w.get(bn).unwrap().clone();
        b2.data_mut()[5] += 1.0;
        changed.insert(bn, b2);
        assert!(chain_damage(&g, &c, &owner, &w, &changed).is_none());
        // Scaled (not zeroed) filters are not chain damage either.
        let mut s = w.get(name).unwrap().clone();
        s.data_mut()[0] *= 2.0;
        let mut scaled = Weights::new();
        scaled.insert(name, s);
        assert!(chain_damage(&g, &c, &owner, &w, &scaled).is_none());
    }
}
