//! Layer normalisation over channels (issue 14, ConvNeXt): forward against the f64 NCHW
//! reference and backward (input, weight, bias) against its central finite differences, alone
//! and inside a ConvNeXt block.

mod common;

use common::{check_graph, random_weights, Rng};
use shears_engine::{BackwardOptions, ForwardRequest, Gradients, Mode, Network};
use shears_ir::{Activation, Binary, BinaryKind, Conv2d, GraphBuilder, LayerNorm, Op, Tensor};

fn single(shape: &[usize], op: impl Into<Op>) -> shears_ir::Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", shape).unwrap();
    let y = b.add("op", op, &[x]).unwrap();
    b.finish(&[y]).unwrap()
}

#[test]
fn layer_norm_on_a_feature_map() {
    let g = single(&[5, 4, 3], LayerNorm::new(5).with_eps(1e-3));
    check_graph(&g, 2, Mode::Eval, 31);
}

#[test]
fn layer_norm_on_a_vector_in_train_mode() {
    // Train mode changes nothing: the statistics are always the pixel's own.
    check_graph(&single(&[7], LayerNorm::new(7)), 3, Mode::Train, 32);
}

/// A ConvNeXt block at small size: depthwise conv, layer norm, 1x1 conv to 4C, GELU, 1x1 conv
/// back, layer scale, residual add.
fn cn_block(c: usize, side: usize) -> shears_ir::Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[c, side, side]).unwrap();
    let dw = Conv2d::new(c, c, 3)
        .with_padding(1)
        .with_groups(c)
        .with_bias(true);
    let d = b.add("dw", dw, &[x]).unwrap();
    let ln = b.add("ln", LayerNorm::new(c).with_eps(1e-6), &[d]).unwrap();
    let up = b
        .add("pw1", Conv2d::new(c, 4 * c, 1).with_bias(true), &[ln])
        .unwrap();
    let act = b
        .add("gelu", Activation::Gelu { tanh: false }, &[up])
        .unwrap();
    let down = b
        .add("pw2", Conv2d::new(4 * c, c, 1).with_bias(true), &[act])
        .unwrap();
    let scale = Binary::with_constant(BinaryKind::Mul, vec![c, 1, 1], true);
    let s = b.add("scale", scale, &[down]).unwrap();
    let y = b.add("res", Op::Add, &[s, x]).unwrap();
    b.finish(&[y]).unwrap()
}

#[test]
fn convnext_block_forward_and_backward() {
    check_graph(&cn_block(3, 4), 2, Mode::Eval, 33);
}

/// Outputs and parameter gradients of a ConvNeXt block on 24 images with `threads` threads.
fn block_with_threads(threads: usize) -> (Tensor, Gradients) {
    let g = cn_block(8, 6);
    let mut rng = Rng(35);
    let w = random_weights(&g, &mut rng);
    let x = rng.tensor(&[24, 8, 6, 6]);
    let mut net = Network::new(g.clone(), &w).unwrap();
    net.set_threads(Some(threads)).unwrap();
    let req = ForwardRequest::new(Mode::Eval)
        .recording()
        .with_feed(g.inputs()[0], &x);
    let out = net.run(&req).unwrap().outputs.remove(0);
    let seed = rng.tensor(out.shape());
    let grads = net
        .backward_from(&[(g.outputs()[0], &seed)], &BackwardOptions::new())
        .unwrap();
    (out, grads)
}

#[test]
fn layer_norm_is_deterministic_across_thread_counts() {
    let (o1, g1) = block_with_threads(1);
    assert!(g1.params.contains("ln.weight") && g1.params.contains("ln.bias"));
    for threads in [2, 3] {
        let (o, g) = block_with_threads(threads);
        assert_eq!(o, o1, "{threads} threads");
        assert_eq!(g.params, g1.params, "{threads} threads");
    }
}
