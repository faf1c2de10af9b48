//! CASM: layer-wise reconstruction of a pruned network (methods §4.3).

use std::collections::BTreeMap;
use std::time::Instant;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use shears_data::Dataset;
use shears_engine::{
    mse, Adam, AdamConfig, BackwardOptions, ForwardRequest, Mode, Network, Optimizer,
};
use shears_ir::{Graph, GraphBuilder, NodeId, Op, ParamKind, Tensor, Weights};

use super::sample_batches;
use crate::progress::{Progress, Verbosity};
use crate::zoo::Preprocess;
use crate::Error;

/// How CASM approximates each small model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CasmVariant {
    /// Adam on the MSE, training the pruned layer, the BN affine parameters between and the
    /// next layer (methods §4.3 step 5).
    Gradient,
    /// Closed-form ridge least-squares refit of the next layer's weight and bias from the
    /// pruned activations at its input to the original network's output of that layer
    /// (convolutions through im2col rows, at most [`CasmConfig::ls_max_rows`] of them; grouped
    /// convolutions are skipped). The pruned layer itself is not changed. With fewer samples
    /// (rows) than inputs of the next layer the fit interpolates `D_s` and relies on the
    /// ridge to generalise.
    LeastSquares,
}

/// What a small model whose output feeds a residual add (a block's last conv and BN) is fit
/// to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ResidualTarget {
    /// The original network's branch output (methods §4.3 for ResNet blocks): exact when the
    /// shortcut is unchanged, but errors already in the pruned residual stream pass through.
    Branch,
    /// The original network's block output (the add) minus what the pruned network's shortcut
    /// now carries, so the branch also absorbs the error that earlier layers left in the
    /// residual stream (methods §4.3 step 4: "later layers absorb earlier errors"). Equal to
    /// `Branch` when the shortcut is unchanged.
    Block,
}

/// CASM settings. [`CasmConfig::default`] gives the proposed defaults of methods §4.4 (500
/// samples, 5 epochs per layer, batch 128) except for the learning rate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CasmConfig {
    /// Images of the sample set `D_s` (a seeded class-balanced subset of the dataset).
    pub samples: usize,
    /// Adam epochs over `D_s` per small model (`E_l`).
    pub epochs_per_layer: usize,
    /// Peak Adam learning rate, cosine-annealed to 0 over each layer's steps. Default 3e-3:
    /// on ResNet-20 with half of every block's inner channels removed (500 samples, 5 epochs
    /// per layer) it gave 79.2% on 2,000 CIFAR-10 test images, against 68.9% with the 1e-3 of
    /// methods §4.4 and 70.1% with 1e-2.
    pub lr: f32,
    /// Images per batch.
    pub batch_size: usize,
    /// Seed of the sample subset and the batch order.
    pub seed: u64,
    /// Gradient training or closed-form refit.
    pub variant: CasmVariant,
    /// Whether the gradient variant trains the pruned layer itself (and the BN affine
    /// parameters between); false trains only the next layer. Default true.
    pub train_first: bool,
    /// Also reconstruct layers that lost no channels (a fixed point when nothing was pruned).
    /// Default false.
    pub include_unpruned: bool,
    /// Also refit, as a small model of its own (the layer and, for the gradient variant, its
    /// BN), every conv or linear layer that lost input channels but is not the next layer of
    /// a pruned one, e.g. the readers of a pruned residual stream and the classifier after it;
    /// with least squares, also a pruned layer that lost input channels, before its pair.
    /// Default true.
    pub refit_inputs: bool,
    /// Ridge added to the diagonal of the normal equations, relative to their mean diagonal.
    /// Default 1e-6.
    pub ridge: f64,
    /// Most im2col rows (output positions) used by the least-squares refit of a convolution.
    /// Default 50,000.
    pub ls_max_rows: usize,
    /// The target of a small model that ends at a residual add; default
    /// [`ResidualTarget::Block`].
    pub residual_target: ResidualTarget,
    /// The kept original output channels of pruned conv / linear layers ([`kept_channels`],
    /// recorded by `shears prune` under [`META_CHANNELS`]); layers not listed are matched by
    /// their weights, which fails once a recovery has changed them. Default empty.
    #[serde(skip)]
    pub kept_channels: BTreeMap<String, Vec<usize>>,
    /// Progress display (a bar over the layers); default quiet.
    #[serde(skip)]
    pub verbosity: Verbosity,
}

impl Default for CasmConfig {
    fn default() -> Self {
        CasmConfig {
            samples: 500,
            epochs_per_layer: 5,
            lr: 3e-3,
            batch_size: 128,
            seed: 0,
            variant: CasmVariant::Gradient,
            train_first: true,
            include_unpruned: false,
            refit_inputs: true,
            ridge: 1e-6,
            ls_max_rows: 50_000,
            residual_target: ResidualTarget::Block,
            kept_channels: BTreeMap::new(),
            verbosity: Verbosity::Quiet,
        }
    }
}

/// What CASM did to one small model.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CasmLayer {
    /// The pruned layer `l`.
    pub layer: String,
    /// The next conv or linear layer `l+1` (empty when skipped before finding it).
    pub next: String,
    /// The node whose original output is the target: the chain's last node (the next layer's
    /// BN when it has one) for the gradient variant, the next layer itself for least squares.
    pub target: String,
    /// Reconstruction MSE on `D_s` before.
    pub initial_mse: f64,
    /// Reconstruction MSE on `D_s` after (the best weights seen, so never above `initial_mse`).
    pub final_mse: f64,
    /// Epochs trained (0 for the least-squares variant or an exact start).
    pub epochs: usize,
    /// Wall-clock seconds, data collection included.
    pub seconds: f64,
    /// Why the layer was not reconstructed, if it was not.
    pub skipped: Option<String>,
}

/// The result of [`casm()`].
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CasmReport {
    /// One entry per pruned conv / linear layer, input to output.
    pub layers: Vec<CasmLayer>,
    /// Images in `D_s`.
    pub samples: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The small model of one layer: the chain of nodes of the pruned graph from `layer` to
/// `target`.
struct Chain {
    path: Vec<NodeId>,
    next: NodeId,
}

/// Recovers a pruned network with CASM (methods §4.3) and returns its new weights.
///
/// `original` and `pruned` are the network before and after pruning; nodes are matched by
/// name. Layers are processed in topological order. For each conv or linear layer `L` that lost
/// output channels (every one with [`CasmConfig::include_unpruned`]), the small model is `L`,
/// the single-consumer chain of BN, ReLU, pooling, flatten, dropout and identity nodes after it,
/// and the next conv or linear `L'` (plus `L'`'s BN when that is its only consumer). Its input
/// `X_l` is what the pruned network, with the layers recovered so far, produces at `L`'s input;
/// its target is the original network's output of the chain's last node (pre-activation),
/// restricted to the channels the pruned network kept (found by [`channel_maps`]). In a
/// residual block the chain `conv1 → bn1 → relu1 → conv2 → bn2` ends before the add, so the
/// target is the branch output; layers whose output feeds several nodes (the residual stream)
/// or an add are reported as skipped as pairs, and the layers reading their output (the next
/// blocks' first convs, the classifier) are refit one by one instead
/// ([`CasmConfig::refit_inputs`]).
///
/// Both variants keep the best weights seen (the start included), so the reported
/// reconstruction error never rises; a layer whose starting error is already below
/// `1e-12` times the target's mean square is left unchanged. BN running statistics are never
/// changed (the small model runs in eval mode).
pub fn casm(
    original: (&Graph, &Weights),
    pruned: (&Graph, &Weights),
    ds: &Dataset,
    pre: &Preprocess,
    cfg: &CasmConfig,
) -> Result<(Weights, CasmReport), Error> {
    let start = Instant::now();
    if cfg.batch_size == 0 || cfg.samples == 0 {
        return Err(Error::invalid(
            "CASM needs a positive batch size and sample count",
        ));
    }
    let (og, ow) = original;
    let (pg, pw) = pruned;
    let mut cur_w = pw.clone();
    let net = Network::new(pg.clone(), &cur_w)?;
    let maps = channel_maps_with(og, ow, pg, pw, &cfg.kept_channels);
    let batches = sample_batches(&net, ds, pre, cfg.samples, cfg.batch_size, cfg.seed)?;
    drop(net);
    let inputs: Vec<Tensor> = batches.into_iter().map(|(x, _)| x).collect();
    let mut col = Collector {
        og,
        ow,
        pg,
        inputs: &inputs,
        pfront: None,
        ofront: None,
    };
    let samples = inputs.iter().map(|x| x.shape()[0]).sum();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xCA5A);
    let mut layers = Vec::new();
    // Layers already refit as the next layer of a small model.
    let mut refit = vec![false; pg.len()];
    let n_layers = pg
        .ids()
        .filter(|&id| matches!(pg.node(id).op, Op::Conv2d(_) | Op::Linear(_)))
        .count();
    let bar = Progress::new(n_layers as u64, "casm", cfg.verbosity);
    for id in pg.ids() {
        let node = pg.node(id);
        if !matches!(node.op, Op::Conv2d(_) | Op::Linear(_)) {
            continue;
        }
        bar.inc(1);
        bar.set_message(node.name.clone());
        let Some(oid) = og.find(&node.name) else {
            continue;
        };
        let lost_out = pg.shape(id)[0] < og.shape(oid)[0];
        let lost_in = pg.shape(node.inputs[0])[0] < og.shape(og.node(oid).inputs[0])[0];
        // A layer that only lost input channels (e.g. a reader of a pruned residual stream)
        // is its own small model; so is, for least squares, a pruned layer that also lost
        // inputs, before its pair with the next layer.
        let single = cfg.refit_inputs
            && lost_in
            && !refit[id.0]
            && (!lost_out || cfg.variant == CasmVariant::LeastSquares);
        if single {
            let chain = single_chain(pg, id, cfg.variant);
            layers.push(run_chain(
                &mut col, &chain, &maps, cfg, &mut rng, &mut cur_w,
            )?);
            refit[id.0] = true;
        }
        if !lost_out && !cfg.include_unpruned {
            continue;
        }
        match find_chain(pg, id) {
            Err(why) => layers.push(CasmLayer {
                layer: node.name.clone(),
                next: String::new(),
                target: String::new(),
                initial_mse: 0.0,
                final_mse: 0.0,
                epochs: 0,
                seconds: 0.0,
                skipped: Some(why),
            }),
            Ok(chain) => {
                layers.push(run_chain(
                    &mut col, &chain, &maps, cfg, &mut rng, &mut cur_w,
                )?);
                refit[chain.next.0] = true;
            }
        }
    }
    bar.finish("");
    Ok((
        cur_w,
        CasmReport {
            layers,
            samples,
            seconds: start.elapsed().as_secs_f64(),
        },
    ))
}

/// The small model of `layer` alone (with its BN for the gradient variant, when that is its
/// only consumer).
fn single_chain(g: &Graph, layer: NodeId, variant: CasmVariant) -> Chain {
    let mut path = vec![layer];
    let cons = &g.consumers()[layer.0];
    if variant == CasmVariant::Gradient
        && cons.len() == 1
        && matches!(g.node(cons[0]).op, Op::BatchNorm2d(_))
    {
        path.push(cons[0]);
    }
    Chain { path, next: layer }
}

/// Reconstructs one small model and reports it.
#[allow(clippy::too_many_arguments)]
fn run_chain(
    col: &mut Collector,
    chain: &Chain,
    maps: &[Option<Vec<usize>>],
    cfg: &CasmConfig,
    rng: &mut ChaCha8Rng,
    cur_w: &mut Weights,
) -> Result<CasmLayer, Error> {
    let t0 = Instant::now();
    let pg = col.pg;
    let target = match cfg.variant {
        CasmVariant::Gradient => *chain.path.last().expect("a chain has nodes"),
        CasmVariant::LeastSquares => chain.next,
    };
    let mut rep = CasmLayer {
        layer: pg.node(chain.path[0]).name.clone(),
        next: pg.node(chain.next).name.clone(),
        target: pg.node(target).name.clone(),
        initial_mse: 0.0,
        final_mse: 0.0,
        epochs: 0,
        seconds: 0.0,
        skipped: None,
    };
    if let Err(e) = reconstruct(col, chain, maps, cfg, rng, cur_w, &mut rep) {
        match e {
            Skip::Why(why) => rep.skipped = Some(why),
            Skip::Err(e) => return Err(e),
        }
    }
    // The chain may have changed its nodes' weights: a cached pruned activation downstream
    // of its first node is stale.
    if col
        .pfront
        .as_ref()
        .is_some_and(|(id, _)| *id >= chain.path[0])
    {
        col.pfront = None;
    }
    rep.seconds = t0.elapsed().as_secs_f64();
    Ok(rep)
}

/// Computes the small models' inputs (from the pruned network with the weights recovered so
/// far) and targets (from the original network) for every sample batch, incrementally: each
/// pass runs a copy of the graph truncated at the nodes it captures, and is fed, besides the
/// images, the activations it captured last time (a *frontier*), so only the nodes between the
/// frontier and the captures are computed. Over a whole network the collection then costs
/// about one forward pass of each network instead of one per small model.
struct Collector<'a> {
    og: &'a Graph,
    ow: &'a Weights,
    pg: &'a Graph,
    inputs: &'a [Tensor],
    /// Pruned-network activations at a node, valid for the current weights.
    pfront: Option<(NodeId, Vec<Tensor>)>,
    /// Original-network activations at a node.
    ofront: Option<(NodeId, Vec<Tensor>)>,
}

impl Collector<'_> {
    /// The pruned network's activations at `node` with the weights `w`, one per batch.
    fn pruned_at(&mut self, w: &Weights, node: NodeId) -> Result<Vec<Tensor>, Error> {
        if let Some((id, vals)) = &self.pfront {
            if *id == node {
                return Ok(vals.clone());
            }
        }
        let mut caps = run_prefix(self.pg, w, self.inputs, self.pfront.as_ref(), &[node])?;
        let vals = caps.pop().expect("one capture");
        self.pfront = Some((node, vals.clone()));
        Ok(vals)
    }

    /// The pruned network's activations at `node` with the weights `w`, computed from the
    /// frontier without moving it.
    fn pruned_peek(&self, w: &Weights, node: NodeId) -> Result<Vec<Tensor>, Error> {
        if let Some((id, vals)) = &self.pfront {
            if *id == node {
                return Ok(vals.clone());
            }
        }
        let mut caps = run_prefix(self.pg, w, self.inputs, self.pfront.as_ref(), &[node])?;
        Ok(caps.pop().expect("one capture"))
    }

    /// The original network's activations at `target`, one per batch; also moves the
    /// frontier to `front` (the original node matching the small model's input) when given.
    fn original_at(&mut self, target: NodeId, front: Option<NodeId>) -> Result<Vec<Tensor>, Error> {
        let mut capture = vec![target];
        if let Some(f) = front.filter(|&f| f != target) {
            capture.push(f);
        }
        let mut caps = run_prefix(
            self.og,
            self.ow,
            self.inputs,
            self.ofront.as_ref(),
            &capture,
        )?;
        if capture.len() == 2 {
            let f = caps.pop().expect("two captures");
            if self.ofront.as_ref().is_none_or(|(id, _)| *id <= capture[1]) {
                self.ofront = Some((capture[1], f));
            }
        }
        Ok(caps.pop().expect("one capture"))
    }
}

/// Runs `g` with weights `w`, truncated after the last of `capture`, on every batch of
/// `inputs` (fed to the graph input), also feeding `front` when it lies before the end; returns
/// the captured activations per capture node and batch.
fn run_prefix(
    g: &Graph,
    w: &Weights,
    inputs: &[Tensor],
    front: Option<&(NodeId, Vec<Tensor>)>,
    capture: &[NodeId],
) -> Result<Vec<Vec<Tensor>>, Error> {
    let last = capture
        .iter()
        .map(|c| c.0)
        .max()
        .expect("something to capture");
    let tg = Graph::new(g.nodes()[..=last].to_vec(), vec![NodeId(last)])?;
    let mut tw = Weights::new();
    for (_, name, _) in tg.param_specs() {
        let t = w
            .get(&name)
            .ok_or_else(|| Error::invalid(format!("weights lack {name}")))?;
        tw.insert(name, t.clone());
    }
    let mut net = Network::new(tg, &tw)?;
    let input = *net
        .graph()
        .inputs()
        .first()
        .ok_or_else(|| Error::invalid("the graph has no input"))?;
    let front = front.filter(|(id, _)| id.0 < last && *id != input);
    let mut out: Vec<Vec<Tensor>> = vec![Vec::with_capacity(inputs.len()); capture.len()];
    for (b, x) in inputs.iter().enumerate() {
        let mut req = ForwardRequest::new(Mode::Eval)
            .with_feed(input, x)
            .with_capture(capture);
        if let Some((id, vals)) = front {
            req = req.with_feed(*id, &vals[b]);
        }
        let mut res = net.run(&req)?;
        for (k, c) in capture.iter().enumerate() {
            let t = res
                .captured
                .remove(c)
                .or_else(|| (c.0 == last).then(|| res.outputs[0].clone()))
                .expect("the engine returns every capture");
            out[k].push(t);
        }
    }
    Ok(out)
}

enum Skip {
    Why(String),
    Err(Error),
}

impl<E: Into<Error>> From<E> for Skip {
    fn from(e: E) -> Self {
        Skip::Err(e.into())
    }
}

/// Finds the small model after `layer` in `g`.
fn find_chain(g: &Graph, layer: NodeId) -> Result<Chain, String> {
    let consumers = g.consumers();
    let mut path = vec![layer];
    let mut cur = layer;
    let next = loop {
        let cons = &consumers[cur.0];
        if cons.len() != 1 {
            return Err(format!(
                "{} feeds {} nodes (no single next layer)",
                g.node(cur).name,
                cons.len()
            ));
        }
        let n = cons[0];
        let node = g.node(n);
        if node.inputs.len() != 1 {
            return Err(format!("{} has {} inputs", node.name, node.inputs.len()));
        }
        path.push(n);
        match &node.op {
            Op::Conv2d(_) | Op::Linear(_) => break n,
            Op::BatchNorm2d(_)
            | Op::Relu
            | Op::Act(_)
            | Op::MaxPool2d(_)
            | Op::AvgPool2d(_)
            | Op::GlobalAvgPool
            | Op::Flatten
            | Op::Dropout { .. }
            | Op::Identity => cur = n,
            op => {
                return Err(format!(
                    "{} ({}) is between {} and the next layer",
                    node.name,
                    op_name(op),
                    g.node(layer).name
                ))
            }
        }
    };
    let cons = &consumers[next.0];
    if cons.len() == 1 && matches!(g.node(cons[0]).op, Op::BatchNorm2d(_)) {
        path.push(cons[0]);
    }
    Ok(Chain { path, next })
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Add => "add",
        Op::Concat => "concat",
        Op::ShortcutA(_) => "shortcut",
        Op::Input { .. } => "input",
        _ => "op",
    }
}

/// Builds the small model of `chain` with the weights of `w`.
fn small_model(pg: &Graph, chain: &Chain, w: &Weights) -> Result<Network, Error> {
    let first = chain.path[0];
    let in_id = pg.node(first).inputs[0];
    let mut b = GraphBuilder::new();
    let mut prev = b.input("casm.input", pg.shape(in_id))?;
    for &id in &chain.path {
        let node = pg.node(id);
        prev = b.add(node.name.clone(), node.op.clone(), &[prev])?;
    }
    let g = b.finish(&[prev])?;
    let mut sw = Weights::new();
    for (_, name, _) in g.param_specs() {
        let t = w
            .get(&name)
            .ok_or_else(|| Error::invalid(format!("pruned weights lack {name}")))?;
        sw.insert(name, t.clone());
    }
    Ok(Network::new(g, &sw)?)
}

/// Mean over `D_s` of the squared error of `small` against `targets`.
fn dataset_mse(small: &mut Network, xs: &[Tensor], ys: &[Tensor]) -> Result<f64, Error> {
    let (mut sum, mut count) = (0.0f64, 0usize);
    for (x, y) in xs.iter().zip(ys) {
        let out = small.forward(x, Mode::Eval)?;
        for (a, b) in out.data().iter().zip(y.data()) {
            let d = *a as f64 - *b as f64;
            sum += d * d;
        }
        count += y.numel();
    }
    Ok(sum / count.max(1) as f64)
}

#[allow(clippy::too_many_arguments)]
fn reconstruct(
    col: &mut Collector,
    chain: &Chain,
    maps: &[Option<Vec<usize>>],
    cfg: &CasmConfig,
    rng: &mut ChaCha8Rng,
    cur_w: &mut Weights,
    rep: &mut CasmLayer,
) -> Result<(), Skip> {
    let (og, pg) = (col.og, col.pg);
    let target = *chain.path.last().expect("a chain has nodes");
    let lsq = cfg.variant == CasmVariant::LeastSquares;
    // The least-squares refit targets the next layer's own output (before its BN).
    let tnode = if lsq { chain.next } else { target };
    let tname = &pg.node(tnode).name;
    let Some(map) = maps[tnode.0].clone() else {
        return Err(Skip::Why(format!(
            "cannot tell which channels of {tname} were kept"
        )));
    };
    let otarget = og
        .find(tname)
        .ok_or_else(|| Skip::Why(format!("{tname} is not in the original graph")))?;
    let in_id = pg.node(chain.path[0]).inputs[0];
    let xs = col.pruned_at(cur_w, in_id)?;
    let ys = col
        .original_at(otarget, og.find(&pg.node(in_id).name))?
        .iter()
        .map(|y| select_channels(y, &map))
        .collect::<Result<Vec<_>, _>>()?;
    let ys = if cfg.residual_target == ResidualTarget::Block {
        match block_target(col, chain, maps, cur_w, tnode)? {
            Some(block) => block,
            None => ys,
        }
    } else {
        ys
    };
    let mut small = small_model(pg, chain, cur_w)?;
    if lsq {
        return least_squares(&mut small, pg, chain, &xs, &ys, cfg, rng, cur_w, rep);
    }
    let init = dataset_mse(&mut small, &xs, &ys)?;
    rep.initial_mse = init;
    rep.final_mse = init;
    if init <= 1e-12 * mean_square(&ys).max(f64::MIN_POSITIVE) || cfg.epochs_per_layer == 0 {
        return Ok(());
    }
    if !cfg.train_first {
        let names: Vec<String> = chain.path[..chain.path.len() - 1]
            .iter()
            .take_while(|&&id| id != chain.next)
            .flat_map(|&id| {
                [ParamKind::Weight, ParamKind::Bias]
                    .into_iter()
                    .map(move |k| pg.node(id).param_name(k))
            })
            .filter(|n| small.params().get(n).is_some())
            .collect();
        small.freeze(names.iter().map(String::as_str))?;
    }
    let mut best = small.weights();
    let mut best_loss = init;
    let mut opt = Adam::new(AdamConfig::new(cfg.lr))?;
    let steps = cfg.epochs_per_layer * xs.len();
    let mut step = 0usize;
    let mut order: Vec<usize> = (0..xs.len()).collect();
    for _ in 0..cfg.epochs_per_layer {
        for i in (1..order.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        for &b in &order {
            let lr =
                0.5 * cfg.lr * (1.0 + (std::f32::consts::PI * step as f32 / steps as f32).cos());
            opt.set_lr(lr);
            step += 1;
            let out = small.forward_recorded(&xs[b], Mode::Eval)?;
            let (_, grad) = mse(&out, &ys[b])?;
            let mut grads = small.backward(&grad, &BackwardOptions::new())?;
            small.step(&mut opt, &mut grads)?;
        }
        rep.epochs += 1;
        let l = dataset_mse(&mut small, &xs, &ys)?;
        if l < best_loss {
            best_loss = l;
            best = small.weights();
        }
    }
    rep.final_mse = best_loss;
    if best_loss < init {
        for (name, t) in best.iter() {
            if !name.ends_with("running_mean") && !name.ends_with("running_var") {
                cur_w.insert(name.clone(), t.clone());
            }
        }
    }
    Ok(())
}

/// The [`ResidualTarget::Block`] target of a small model whose next layer (through its BN, if
/// any) feeds a two-input residual add: the original add output at the kept channels minus
/// the pruned network's other add input (its shortcut), taken back through the BN when
/// `tnode` is the next layer itself (least squares). `None` when the chain does not end at an
/// add, or the channels of the add cannot be matched.
fn block_target(
    col: &mut Collector,
    chain: &Chain,
    maps: &[Option<Vec<usize>>],
    cur_w: &Weights,
    tnode: NodeId,
) -> Result<Option<Vec<Tensor>>, Skip> {
    let (og, pg) = (col.og, col.pg);
    let cons = pg.consumers();
    let sole = |id: NodeId| (cons[id.0].len() == 1).then(|| cons[id.0][0]);
    let next = chain.next;
    let bn = sole(next).filter(|&b| matches!(pg.node(b).op, Op::BatchNorm2d(_)));
    let end = bn.unwrap_or(next);
    let Some(add) = sole(end) else {
        return Ok(None);
    };
    let add_node = pg.node(add);
    if !matches!(add_node.op, Op::Add) || add_node.inputs.len() != 2 {
        return Ok(None);
    }
    if tnode != end && tnode != next {
        return Ok(None);
    }
    let other = if add_node.inputs[0] == end {
        add_node.inputs[1]
    } else {
        add_node.inputs[0]
    };
    let (Some(map), Some(oadd)) = (maps[add.0].clone(), og.find(&add_node.name)) else {
        return Ok(None);
    };
    let oys = col.original_at(oadd, None)?;
    let shortcut = col.pruned_peek(cur_w, other)?;
    let mut out = Vec::with_capacity(oys.len());
    for (y, s) in oys.iter().zip(&shortcut) {
        let mut t = select_channels(y, &map)?;
        if t.shape() != s.shape() {
            return Ok(None);
        }
        for (a, b) in t.data_mut().iter_mut().zip(s.data()) {
            *a -= *b;
        }
        out.push(t);
    }
    if tnode == end {
        return Ok(Some(out));
    }
    // Back through the BN (eval mode, a per-channel affine map): x = (y - beta) / scale + mean.
    let bn = bn.expect("tnode is next and end is its BN");
    let node = pg.node(bn);
    let Op::BatchNorm2d(b) = &node.op else {
        unreachable!("checked above")
    };
    let get = |k: ParamKind| {
        cur_w
            .get(&node.param_name(k))
            .map(|t| t.data().to_vec())
            .ok_or_else(|| Error::invalid(format!("pruned weights lack {}", node.param_name(k))))
    };
    let (gamma, beta) = (get(ParamKind::Weight)?, get(ParamKind::Bias)?);
    let (mean, var) = (get(ParamKind::RunningMean)?, get(ParamKind::RunningVar)?);
    for t in &mut out {
        let shape = t.shape().to_vec();
        let (n, c) = (shape[0], shape[1]);
        let s: usize = shape[2..].iter().product();
        let d = t.data_mut();
        for i in 0..n {
            for ch in 0..c {
                let scale = gamma[ch] / (var[ch] + b.eps).sqrt();
                let seg = &mut d[(i * c + ch) * s..(i * c + ch + 1) * s];
                if scale.abs() < 1e-12 {
                    // The channel's conv output does not reach the add: any target will do.
                    seg.fill(mean[ch]);
                } else {
                    for v in seg {
                        *v = (*v - beta[ch]) / scale + mean[ch];
                    }
                }
            }
        }
    }
    Ok(Some(out))
}

mod channels;
mod least_squares;

use channels::select_channels;
pub use channels::{channel_maps, channel_maps_with, kept_channels, META_CHANNELS};
use least_squares::{least_squares, mean_square};
