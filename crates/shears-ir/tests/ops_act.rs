//! The activation op and ceil-mode pools: shapes, channel maps, checks and the JSON form.

use shears_ir::{Activation, ChannelMap, Graph, GraphBuilder, Op, Pool2d};

#[test]
fn activation_keeps_shape_and_links_channels() {
    let a = Op::Act(Activation::HardSwish);
    assert_eq!(a.output_shape(&[&[5, 3, 2]]).unwrap(), [5, 3, 2]);
    assert_eq!(a.output_shape(&[&[7]]).unwrap(), [7]);
    assert_eq!(a.channel_map(&[&[5, 3, 2]]), ChannelMap::Elementwise);
    assert_eq!(a.type_name(), "hard_swish");
    assert!(a.params().is_empty());
}

#[test]
fn activation_parameters_are_checked() {
    let bad = [
        Activation::Clip {
            min: Some(1.0),
            max: Some(0.0),
        },
        Activation::Clip {
            min: Some(f32::NAN),
            max: None,
        },
        Activation::Clip {
            min: None,
            max: Some(f32::INFINITY),
        },
        Activation::LeakyRelu { alpha: f32::NAN },
        Activation::HardSigmoid {
            alpha: f32::INFINITY,
            beta: 0.5,
        },
    ];
    for a in bad {
        let err = Op::Act(a).output_shape(&[&[2, 2, 2]]).unwrap_err();
        assert!(err.contains(a.name()), "{err}");
    }
    let unbounded = Activation::Clip {
        min: None,
        max: Some(6.0),
    };
    assert!(Op::Act(unbounded).check_config().is_ok());
}

#[test]
fn activations_round_trip_through_json() {
    let mut b = GraphBuilder::new();
    let mut x = b.input("x", &[2, 4, 4]).unwrap();
    for (i, a) in [
        Activation::Relu6,
        Activation::Clip {
            min: Some(-1.5),
            max: Some(2.0),
        },
        Activation::Clip {
            min: None,
            max: Some(3.0),
        },
        Activation::HardSwish,
        Activation::HardSigmoid {
            alpha: 0.2,
            beta: 0.5,
        },
        Activation::Sigmoid,
        Activation::Silu,
        Activation::Gelu { tanh: true },
        Activation::LeakyRelu { alpha: 0.01 },
    ]
    .into_iter()
    .enumerate()
    {
        x = b.add(format!("a{i}"), a, &[x]).unwrap();
    }
    let g = b.finish(&[x]).unwrap();
    let json = g.to_json();
    assert!(json.contains(r#""op":"act","kind":"hard_sigmoid","alpha":0.2,"beta":0.5"#));
    assert_eq!(Graph::from_json(&json).unwrap(), g);
}

/// Output sizes as PyTorch computes them (`torch.nn.MaxPool2d(k, s, p, ceil_mode=True)`).
#[test]
fn ceil_mode_output_sizes() {
    let len = |n: usize, k: usize, s: usize, p: usize, ceil: bool| {
        let pool = Pool2d::new(k, s).with_padding(p).with_ceil_mode(ceil);
        pool.output_hw(n, n).unwrap().0
    };
    // googlenet's stem: 112 -> 56, and 56 -> 28 (floor would give 55 and 27).
    assert_eq!(len(112, 3, 2, 0, true), 56);
    assert_eq!(len(112, 3, 2, 0, false), 55);
    assert_eq!(len(56, 3, 2, 0, true), 28);
    // 14 -> 7 with a 2x2 window: no partial window, same as floor.
    assert_eq!(len(14, 2, 2, 0, true), 7);
    // 5 + 2 padding, window 2, stride 2: a fourth window would start in the right padding,
    // so it is dropped (3, as floor).
    assert_eq!(len(5, 2, 2, 1, true), 3);
    // 6 + 2 padding, window 3, stride 2: ceil adds a window that starts in the image.
    assert_eq!(len(6, 3, 2, 1, false), 3);
    assert_eq!(len(6, 3, 2, 1, true), 4);
}

#[test]
fn ceil_mode_defaults_to_false_in_json() {
    let old = r#"{"kernel":[3,3],"stride":[2,2],"padding":[0,0,0,0],"count_include_pad":true}"#;
    let p: Pool2d = serde_json::from_str(old).unwrap();
    assert!(!p.ceil_mode);
}
