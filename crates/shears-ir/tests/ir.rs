//! Graph construction, validation, patches and the JSON form.

use shears_ir::{
    BatchNorm2d, ChannelMap, Conv2d, Graph, GraphBuilder, IrError, Linear, Node, NodeId, Op, Patch,
    ShortcutA, Tensor, Wire,
};

/// conv-bn-relu, a residual block with an option-A shortcut, concat, flatten, linear.
fn small() -> (Graph, Vec<NodeId>) {
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[3, 8, 8]).unwrap();
    let c1 = b
        .add("conv1", Conv2d::new(3, 4, 3).with_padding(1), &[x])
        .unwrap();
    let bn = b.add("bn1", BatchNorm2d::new(4), &[c1]).unwrap();
    let r = b.add("relu1", Op::Relu, &[bn]).unwrap();
    let c2 = b
        .add(
            "conv2",
            Conv2d::new(4, 8, 3).with_padding(1).with_stride(2),
            &[r],
        )
        .unwrap();
    let sc = b
        .add(
            "shortcut",
            ShortcutA {
                stride: 2,
                pad_before: 2,
                pad_after: 2,
            },
            &[r],
        )
        .unwrap();
    let add = b.add("add", Op::Add, &[c2, sc]).unwrap();
    let cat = b.add("cat", Op::Concat, &[add, sc]).unwrap();
    let f = b.add("flatten", Op::Flatten, &[cat]).unwrap();
    let fc = b
        .add(
            "fc",
            Linear {
                in_features: 16 * 16,
                out_features: 5,
                bias: true,
            },
            &[f],
        )
        .unwrap();
    let g = b.finish(&[fc]).unwrap();
    (g, vec![x, c1, bn, r, c2, sc, add, cat, f, fc])
}

#[test]
fn shapes_params_and_macs() {
    let (g, ids) = small();
    assert_eq!(g.shape(ids[4]), &[8, 4, 4]);
    assert_eq!(g.shape(ids[5]), &[8, 4, 4]);
    assert_eq!(g.shape(ids[7]), &[16, 4, 4]);
    assert_eq!(g.shape(ids[8]), &[256]);
    assert_eq!(g.n_params(), (4 * 27 + 8) + (8 * 4 * 9) + (256 * 5 + 5));
    assert_eq!(g.n_buffers(), 8);
    assert_eq!(g.macs(), (4 * 64 * 27 + 8 * 16 * 36 + 256 * 5) as u64);
    let names: Vec<String> = g.param_specs().into_iter().map(|(_, n, _)| n).collect();
    assert_eq!(
        names,
        [
            "conv1.weight",
            "bn1.weight",
            "bn1.bias",
            "bn1.running_mean",
            "bn1.running_var",
            "conv2.weight",
            "fc.weight",
            "fc.bias"
        ]
    );
}

#[test]
fn channel_maps() {
    let (g, ids) = small();
    let map = |i: NodeId| g.node(i).op.channel_map(&g.input_shapes(i));
    assert_eq!(map(ids[0]), ChannelMap::Source);
    assert_eq!(map(ids[1]), ChannelMap::Transform { groups: 1 });
    assert_eq!(map(ids[2]), ChannelMap::Elementwise);
    assert_eq!(
        map(ids[5]),
        ChannelMap::Pad {
            offset: 2,
            out_channels: 8
        }
    );
    assert_eq!(map(ids[6]), ChannelMap::Elementwise);
    assert_eq!(
        map(ids[7]),
        ChannelMap::Concat {
            offsets: vec![0, 8]
        }
    );
    assert_eq!(map(ids[8]), ChannelMap::Flatten { per_channel: 16 });
}

#[test]
fn json_round_trip() {
    let (g, _) = small();
    let back = Graph::from_json(&g.to_json()).unwrap();
    assert_eq!(g, back);
    let back = Graph::from_json(&g.to_json_pretty()).unwrap();
    assert_eq!(g, back);
}

#[test]
fn json_rejects_bad_graphs() {
    let (g, _) = small();
    let bad = g.to_json().replace(
        "\"in_channels\":4,\"out_channels\":8",
        "\"in_channels\":5,\"out_channels\":8",
    );
    match Graph::from_json(&bad) {
        Err(IrError::Node { node, .. }) => assert_eq!(node, "conv2"),
        other => panic!("expected a node error naming conv2, got {other:?}"),
    }
    assert!(matches!(
        Graph::from_json("{not json"),
        Err(IrError::Json(_))
    ));
    let wrong_format = g.to_json().replace("shears-graph/1", "shears-graph/99");
    assert!(matches!(
        Graph::from_json(&wrong_format),
        Err(IrError::Json(_))
    ));
    let unknown_op = g.to_json().replace("\"op\":\"relu\"", "\"op\":\"gelu\"");
    assert!(matches!(
        Graph::from_json(&unknown_op),
        Err(IrError::Json(_))
    ));
}

#[test]
fn builder_errors_name_the_node() {
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[3, 8, 8]).unwrap();
    let e = b.add("c", Conv2d::new(4, 8, 3), &[x]).unwrap_err();
    assert!(e.to_string().contains("\"c\""), "{e}");
    assert!(e.to_string().contains("4 input channels"), "{e}");
    let e = b.add("big", Conv2d::new(3, 8, 9), &[x]).unwrap_err();
    assert!(e.to_string().contains("does not fit"), "{e}");
    let e = b
        .add("g", Conv2d::new(3, 8, 3).with_groups(2), &[x])
        .unwrap_err();
    assert!(e.to_string().contains("groups"), "{e}");
    b.add("r", Op::Relu, &[x]).unwrap();
    let e = b.add("r", Op::Relu, &[x]).unwrap_err();
    assert!(e.to_string().contains("duplicate"), "{e}");
    let e = b.add("a", Op::Add, &[x]).unwrap_err();
    assert!(e.to_string().contains("at least 2"), "{e}");
    let e = b
        .add(
            "l",
            Linear {
                in_features: 5,
                out_features: 2,
                bias: false,
            },
            &[x],
        )
        .unwrap_err();
    assert!(e.to_string().contains("linear"), "{e}");
    let e = b.add("d", Op::Dropout { p: 1.5 }, &[x]).unwrap_err();
    assert!(e.to_string().contains("dropout"), "{e}");
}

#[test]
fn graph_new_rejects_out_of_order_inputs() {
    let nodes = vec![
        Node {
            name: "r".into(),
            op: Op::Relu,
            inputs: vec![NodeId(1)],
        },
        Node {
            name: "input".into(),
            op: Op::Input { shape: vec![2] },
            inputs: vec![],
        },
    ];
    let e = Graph::new(nodes, vec![NodeId(0)]).unwrap_err();
    assert!(e.to_string().contains("topological"), "{e}");
}

#[test]
fn empty_patch_is_identity() {
    let (g, _) = small();
    let p = Patch::new("nothing");
    assert!(p.is_empty());
    let out = p.apply(&g).unwrap();
    assert_eq!(out.graph, g);
    assert!(out
        .old_to_new
        .iter()
        .enumerate()
        .all(|(i, n)| *n == Some(NodeId(i))));
}

#[test]
fn patch_shrinks_a_channel_group() {
    // Remove one output channel of conv1: conv1, bn1 and conv2's input change together.
    let (g, ids) = small();
    let mut p = Patch::new("group conv1");
    p.replace_op(ids[1], Conv2d::new(3, 3, 3).with_padding(1));
    p.replace_op(ids[2], BatchNorm2d::new(3));
    p.replace_op(ids[4], Conv2d::new(3, 8, 3).with_padding(1).with_stride(2));
    // The shortcut pads 3 channels to 8: 2 before, 3 after.
    p.replace_op(
        ids[5],
        ShortcutA {
            stride: 2,
            pad_before: 2,
            pad_after: 3,
        },
    );
    let out = p.apply(&g).unwrap();
    assert_eq!(out.graph.shape(ids[3]), &[3, 8, 8]);
    assert_eq!(out.graph.shape(ids[7]), &[16, 4, 4]);
    // Forgetting a member is caught and the error carries the label and the node.
    let mut bad = Patch::new("group conv1 (incomplete)");
    bad.replace_op(ids[1], Conv2d::new(3, 3, 3).with_padding(1));
    let e = bad.apply(&g).unwrap_err().to_string();
    assert!(
        e.contains("group conv1 (incomplete)") && e.contains("bn1"),
        "{e}"
    );
}

#[test]
fn patch_inserts_and_removes_nodes() {
    let (g, ids) = small();
    // Insert an identity after relu1 and feed conv2 from it; then remove bn1 by shunting.
    let mut p = Patch::new("insert");
    let id = p.add_node("relu1.id", Op::Identity, &[Wire::Old(ids[3])]);
    p.set_inputs(ids[4], &[id]);
    let out = p.apply(&g).unwrap();
    let new_id = out.added[0];
    let conv2 = out.old_to_new[ids[4].0].unwrap();
    assert_eq!(out.graph.node(conv2).inputs, vec![new_id]);
    assert!(new_id < conv2);

    let mut p = Patch::new("drop bn1");
    p.shunt(ids[2], ids[1]).remove(ids[2]);
    let out = p.apply(&g).unwrap();
    assert_eq!(out.graph.len(), g.len() - 1);
    assert_eq!(out.old_to_new[ids[2].0], None);
    assert!(out.graph.find("bn1").is_none());

    let mut p = Patch::new("dangling");
    p.remove(ids[2]);
    let e = p.apply(&g).unwrap_err().to_string();
    assert!(e.contains("removed"), "{e}");
}

#[test]
fn patch_detects_cycles() {
    let (g, ids) = small();
    let mut p = Patch::new("cycle");
    p.set_inputs(ids[1], &[Wire::Old(ids[3])]);
    let e = p.apply(&g).unwrap_err().to_string();
    assert!(e.contains("cycle"), "{e}");
}

#[test]
fn tensor_checks_size() {
    assert!(Tensor::new(vec![2, 3], vec![0.0; 6]).is_ok());
    assert!(matches!(
        Tensor::new(vec![2, 3], vec![0.0; 5]),
        Err(IrError::TensorSize { .. })
    ));
}

#[test]
fn hostile_sizes_are_errors_not_panics() {
    // Found by the ONNX work: a crafted graph whose flatten overflows usize.
    let mut b = GraphBuilder::new();
    let big = 1usize << 32;
    assert!(b.input("input", &[big, big, big]).is_err());
    let x = b.input("input", &[3, 8, 8]).unwrap();
    let huge = usize::MAX / 2;
    assert!(b
        .add(
            "c",
            Conv2d::new(3, 4, 3).with_padding4([huge, huge, huge, huge]),
            &[x]
        )
        .is_err());
    assert!(b.add("w", Conv2d::new(3, 1 << 40, 3), &[x]).is_err());
    assert!(b
        .add(
            "l",
            Linear {
                in_features: 192,
                out_features: 1 << 40,
                bias: true
            },
            &[x]
        )
        .is_err());
    let (g, _) = small();
    let bad = g.to_json().replace(
        "\"shape\":[3,8,8]",
        "\"shape\":[4294967296,4294967296,4294967296]",
    );
    assert!(Graph::from_json(&bad).is_err());
    let bad = g
        .to_json()
        .replace("\"stride\":[2,2]", &format!("\"stride\":[{huge},{huge}]"));
    let _ = Graph::from_json(&bad); // any result but a panic
}

#[test]
fn binary_ops_broadcast_and_map_channels() {
    use shears_ir::{Binary, BinaryKind};
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[8, 5, 5]).unwrap();
    let pool = shears_ir::Pool2d::new(5, 1);
    let s = b.add("squeeze", Op::AvgPool2d(pool), &[x]).unwrap();
    let m = b
        .add("scale", Binary::new(BinaryKind::Mul), &[x, s])
        .unwrap();
    let att = b.add("att", Conv2d::new(8, 1, 1), &[m]).unwrap();
    let a = b
        .add("attend", Binary::new(BinaryKind::Mul), &[att, m])
        .unwrap();
    let gamma = Binary::with_constant(BinaryKind::Mul, vec![8, 1, 1], false);
    let k = b.add("gamma", gamma, &[a]).unwrap();
    let inv = Binary::with_constant(BinaryKind::Div, vec![1, 1, 1], true);
    let d = b.add("inv", inv, &[k]).unwrap();
    let g = b.finish(&[d]).unwrap();
    assert_eq!(g.shape(s), &[8, 1, 1]);
    assert_eq!(g.shape(m), &[8, 5, 5]);
    assert_eq!(g.shape(a), &[8, 5, 5], "the one-channel map broadcasts");
    assert_eq!(g.n_params(), 8 + 8 + 1);
    let map = |i: NodeId| g.node(i).op.channel_map(&g.input_shapes(i));
    assert_eq!(map(m), ChannelMap::Elementwise);
    assert_eq!(
        map(a),
        ChannelMap::Broadcast {
            channel_broadcast: vec![true, false]
        }
    );
    assert_eq!(map(k), ChannelMap::Elementwise);
    let names: Vec<String> = g.param_specs().into_iter().map(|(_, n, _)| n).collect();
    assert_eq!(names, ["att.weight", "gamma.weight", "inv.weight"]);
    let json = g.to_json();
    assert!(
        json.contains(r#""op":"binary","kind":"div","constant":{"shape":[1,1,1],"left":true}"#),
        "{json}"
    );
    assert_eq!(Graph::from_json(&json).unwrap(), g);

    // Shapes that do not broadcast, and constants that would widen the input, name the node.
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[8, 5, 5]).unwrap();
    let y = b.input("other", &[4, 1, 1]).unwrap();
    let err = b
        .add("bad", Binary::new(BinaryKind::Add), &[x, y])
        .unwrap_err();
    assert!(
        matches!(&err, IrError::Node { node, .. } if node == "bad"),
        "{err}"
    );
    let z = b.input("plane", &[1, 5, 5]).unwrap();
    let wide = Binary::with_constant(BinaryKind::Mul, vec![8, 5, 5], false);
    let err = b.add("wide", wide, &[z]).unwrap_err();
    assert!(err.to_string().contains("widen"), "{err}");
    let flat = Binary::with_constant(BinaryKind::Mul, vec![8], false);
    assert!(b.add("rank", flat, &[x]).is_err());
}
