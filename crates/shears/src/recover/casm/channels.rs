//! Which original channel each channel of a pruned network is: how CASM pairs the pruned
//! network's feature maps with the original's.

use std::collections::BTreeMap;

use shears_ir::{Graph, NodeId, Op, ParamKind, Tensor, Weights};

use crate::Error;

/// For every node of `pruned`, the original channel index of each of its output channels (the
/// first axis of its per-sample shape), or `None` when it cannot be told.
///
/// Surgery slices weights without changing the kept values, so a conv or linear row of the
/// pruned network equals the original row at the kept input channels; rows are matched in
/// order (pruning keeps the channel order). Maps pass through BN, activations, pooling and
/// flatten; an add takes the map of any input that has one; channel shuffles and ranges map
/// through their sources.
pub fn channel_maps(
    original: &Graph,
    ow: &Weights,
    pruned: &Graph,
    pw: &Weights,
) -> Vec<Option<Vec<usize>>> {
    channel_maps_with(original, ow, pruned, pw, &BTreeMap::new())
}

/// Metadata key under which `shears prune` records [`kept_channels`] (JSON
/// `{"layer": [original index, ...]}`), so that recovery can match channels after it changed
/// the kept weights.
pub const META_CHANNELS: &str = "shears.channels";

/// The kept original output channels of every conv / linear layer of `pruned` that lost some,
/// by name. Call it right after surgery, while the kept weights still equal the original's.
pub fn kept_channels(
    original: &Graph,
    ow: &Weights,
    pruned: &Graph,
    pw: &Weights,
) -> BTreeMap<String, Vec<usize>> {
    let maps = channel_maps(original, ow, pruned, pw);
    pruned
        .ids()
        .filter(|&id| matches!(pruned.node(id).op, Op::Conv2d(_) | Op::Linear(_)))
        .filter_map(|id| {
            let name = &pruned.node(id).name;
            let o = original.find(name)?;
            let m = maps[id.0].clone()?;
            (m.len() < original.shape(o)[0]).then(|| (name.clone(), m))
        })
        .collect()
}

/// [`channel_maps`] taking the maps of the conv / linear layers listed in `known` (by name, as
/// [`kept_channels`] gives them) instead of matching their weights.
pub fn channel_maps_with(
    original: &Graph,
    ow: &Weights,
    pruned: &Graph,
    pw: &Weights,
    known: &BTreeMap<String, Vec<usize>>,
) -> Vec<Option<Vec<usize>>> {
    let mut maps: Vec<Option<Vec<usize>>> = Vec::with_capacity(pruned.len());
    for id in pruned.ids() {
        let node = pruned.node(id);
        let m = (|| {
            let oid = original.find(&node.name)?;
            let cp = *pruned.shape(id).first()?;
            let co = *original.shape(oid).first()?;
            if cp == co {
                return Some((0..cp).collect());
            }
            if matches!(node.op, Op::Conv2d(_) | Op::Linear(_)) {
                if let Some(k) = known.get(&node.name) {
                    if k.len() == cp && k.iter().all(|&c| c < co) {
                        return Some(k.clone());
                    }
                }
            }
            let in_map = |k: usize| node.inputs.get(k).and_then(|i| maps[i.0].clone());
            match &node.op {
                Op::Conv2d(c) if c.groups == 1 => match_rows(
                    ow.get(&weight(original, oid))?,
                    pw.get(&weight(pruned, id))?,
                    &in_map(0)?,
                ),
                Op::Conv2d(c) if c.groups == c.in_channels && c.groups == c.out_channels => {
                    in_map(0)
                }
                Op::Linear(_) => match_rows(
                    ow.get(&weight(original, oid))?,
                    pw.get(&weight(pruned, id))?,
                    &in_map(0)?,
                ),
                Op::Flatten => {
                    let s: usize = pruned.shape(node.inputs[0])[1..].iter().product();
                    Some(
                        in_map(0)?
                            .iter()
                            .flat_map(|&c| c * s..(c + 1) * s)
                            .collect(),
                    )
                }
                Op::Add => (0..node.inputs.len()).find_map(in_map),
                Op::Channel(ch) => {
                    // Pruned output `o` copies pruned input `src[o]`, whose original index
                    // the input's map gives; the original op says where that lands.
                    let Op::Channel(och) = &original.node(oid).op else {
                        return None;
                    };
                    let oin = original.shape(original.node(oid).inputs[0])[0];
                    let mut at = vec![None; oin];
                    for (o, &s) in och.sources(oin).iter().enumerate() {
                        at[s] = Some(o);
                    }
                    let im = in_map(0)?;
                    let cin = pruned.shape(node.inputs[0])[0];
                    ch.sources(cin).iter().map(|&s| at[*im.get(s)?]).collect()
                }
                Op::Concat => {
                    let mut out = Vec::new();
                    let mut off = 0;
                    for (k, i) in node.inputs.iter().enumerate() {
                        let oi = original.find(&pruned.node(*i).name)?;
                        out.extend(in_map(k)?.iter().map(|c| c + off));
                        off += original.shape(oi)[0];
                    }
                    Some(out)
                }
                Op::BatchNorm2d(_)
                | Op::Relu
                | Op::Act(_)
                | Op::MaxPool2d(_)
                | Op::AvgPool2d(_)
                | Op::GlobalAvgPool
                | Op::Dropout { .. }
                | Op::Identity => in_map(0),
                _ => None,
            }
        })();
        maps.push(m);
    }
    maps
}

pub(super) fn weight(g: &Graph, id: NodeId) -> String {
    g.node(id).param_name(ParamKind::Weight)
}

/// Matches the rows of `wp` (`[cp, in_p, k...]`) to rows of `wo` (`[co, in_o, k...]`) restricted
/// to the input columns `cols`, in order.
fn match_rows(wo: &Tensor, wp: &Tensor, cols: &[usize]) -> Option<Vec<usize>> {
    let (co, ino) = (wo.shape()[0], wo.shape()[1]);
    let (cp, inp) = (wp.shape()[0], wp.shape()[1]);
    if cols.len() != inp {
        return None;
    }
    let k: usize = wo.shape()[2..].iter().product();
    let (o, p) = (wo.data(), wp.data());
    let mut out = Vec::with_capacity(cp);
    let mut i = 0;
    for j in 0..cp {
        let prow = &p[j * inp * k..(j + 1) * inp * k];
        loop {
            if i >= co {
                return None;
            }
            let orow = &o[i * ino * k..(i + 1) * ino * k];
            let same = cols
                .iter()
                .enumerate()
                .all(|(a, &c)| orow[c * k..(c + 1) * k] == prow[a * k..(a + 1) * k]);
            i += 1;
            if same {
                out.push(i - 1);
                break;
            }
        }
    }
    Some(out)
}

/// Keeps the channels `map` of an `[N, C, rest...]` tensor.
pub(super) fn select_channels(t: &Tensor, map: &[usize]) -> Result<Tensor, Error> {
    let shape = t.shape();
    let (n, c) = (shape[0], shape[1]);
    if map.len() == c && map.iter().enumerate().all(|(a, &b)| a == b) {
        return Ok(t.clone());
    }
    let s: usize = shape[2..].iter().product();
    let d = t.data();
    let mut out = Vec::with_capacity(n * map.len() * s);
    for i in 0..n {
        for &ch in map {
            out.extend_from_slice(&d[(i * c + ch) * s..(i * c + ch + 1) * s]);
        }
    }
    let mut sh = shape.to_vec();
    sh[1] = map.len();
    Ok(Tensor::new(sh, out)?)
}
