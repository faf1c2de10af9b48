//! Zoo graphs against the shared checkpoints' sidecars, published parameter and MAC counts,
//! JSON round trips, weight initialisation and config validation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use shears::zoo::{
    build, init_weights, Arch, InitScheme, Preprocess, VggHead, ZooConfig, ZooError,
};
use shears_ir::{Graph, Op, ParamKind};

/// The shared data folder: `$SHEARS_SHARED`, else the first `<ancestor>/shared` or
/// `<ancestor>/../shared` above this crate that holds `models/`.
fn shared_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SHEARS_SHARED") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for a in manifest.ancestors() {
        for cand in [a.join("shared"), a.join("..").join("shared")] {
            if cand.join("models").is_dir() {
                return cand;
            }
        }
    }
    panic!(
        "no shared/ folder with models/ above {}; set SHEARS_SHARED",
        manifest.display()
    )
}

/// The zoo architecture of a shared model, by its sidecar name.
fn arch_of_shared(name: &str) -> Arch {
    if name.starts_with("mnist_lenet5") {
        return Arch::LeNet5;
    }
    name.parse()
        .unwrap_or_else(|e| panic!("shared model {name:?} has no zoo arch: {e}"))
}

fn sidecars() -> Vec<(String, Value)> {
    let dir = shared_dir().join("models");
    let mut v = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read shared/models") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let json: Value = serde_json::from_str(&text).unwrap();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            v.push((name, json));
        }
    }
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn default_graph(arch: Arch) -> Graph {
    build(arch, &arch.default_config()).unwrap_or_else(|e| panic!("{arch}: {e}"))
}

fn spec_map(g: &Graph) -> BTreeMap<String, Vec<usize>> {
    g.param_specs()
        .into_iter()
        .map(|(_, name, spec)| (name, spec.shape))
        .collect()
}

fn output_shape(g: &Graph) -> Vec<usize> {
    g.shape(g.outputs()[0]).to_vec()
}

#[test]
fn sidecar_tensors_match_exactly() {
    let cars = sidecars();
    assert!(
        cars.len() >= 7,
        "expected the 7 shared sidecars, found {}",
        cars.len()
    );
    for (name, json) in &cars {
        let arch = arch_of_shared(name);
        let g = default_graph(arch);
        let expected: BTreeMap<String, Vec<usize>> = json["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                assert_eq!(t["dtype"], "F32");
                let shape = t["shape"].as_array().unwrap();
                let shape = shape.iter().map(|d| d.as_u64().unwrap() as usize).collect();
                (t["name"].as_str().unwrap().to_string(), shape)
            })
            .collect();
        assert_eq!(spec_map(&g), expected, "{name}: tensor names and shapes");
        assert_eq!(
            g.n_params(),
            json["num_parameters"].as_u64().unwrap(),
            "{name}: params"
        );
        let buffers = json["num_bn_running_stat_values"].as_u64().unwrap();
        assert_eq!(g.n_buffers(), buffers, "{name}: BN running statistics");
        assert_eq!(output_shape(&g), [10], "{name}: logits");
    }
}

#[test]
fn sidecar_preprocessing_matches() {
    for (name, json) in &sidecars() {
        let arch = arch_of_shared(name);
        let p = arch.preprocessing();
        let floats = |v: &Value| -> Vec<f32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        };
        assert_eq!(p.mean, floats(&json["input"]["mean"]), "{name}: mean");
        assert_eq!(p.std, floats(&json["input"]["std"]), "{name}: std");
        let text = json["input"]["preprocessing"].as_str().unwrap();
        let expected_scale = if text.contains("/ 255") {
            1.0 / 255.0
        } else {
            1.0
        };
        assert_eq!(p.scale, expected_scale, "{name}: scale ({text})");
        assert_eq!(p.mean.len(), arch.default_config().in_channels, "{name}");
        assert_eq!(
            arch.dataset_hint(),
            json["dataset"].as_str().unwrap().replace('-', "")
        );
    }
}

#[test]
fn mlperf_uses_keras_conventions() {
    let g = default_graph(Arch::MlperfResNet8);
    let conv = |name: &str| match &g.node(g.find(name).unwrap()).op {
        Op::Conv2d(c) => c.clone(),
        op => panic!("{name} is {op:?}"),
    };
    assert_eq!(conv("conv2d_1").padding, [1, 1, 1, 1]);
    assert_eq!(conv("conv2d_3").padding, [0, 0, 1, 1]);
    assert_eq!(conv("conv2d_3").stride, [2, 2]);
    assert_eq!(conv("conv2d_6").padding, [0, 0, 1, 1]);
    for shortcut in ["conv2d_5", "conv2d_8"] {
        let c = conv(shortcut);
        assert_eq!(
            (c.kernel, c.stride, c.padding, c.bias),
            ([1, 1], [2, 2], [0; 4], true)
        );
    }
    for n in g.nodes() {
        if let Op::BatchNorm2d(b) = &n.op {
            assert_eq!(b.eps, 1e-3, "{}", n.name);
        }
    }
    // The 1x1 shortcut of stage 2 reads the stage-1 output, not the stage-2 branch.
    let short = g.node(g.find("conv2d_5").unwrap());
    assert_eq!(g.node(short.inputs[0]).name, "activation_2");
    assert_eq!(g.shape(g.find("average_pooling2d").unwrap()), &[64, 1, 1]);
}

#[test]
fn cifar_resnet_shortcuts_are_option_a() {
    let g = default_graph(Arch::ResNet56);
    let shortcuts: Vec<_> = g
        .nodes()
        .iter()
        .filter_map(|n| match &n.op {
            Op::ShortcutA(s) => Some((n.name.as_str(), s.stride, s.pad_before, s.pad_after)),
            _ => None,
        })
        .collect();
    assert_eq!(
        shortcuts,
        [
            ("layer2.0.shortcut", 2, 8, 8),
            ("layer3.0.shortcut", 2, 16, 16)
        ]
    );
    assert_eq!(g.shape(g.find("layer3.8.relu2").unwrap()), &[64, 8, 8]);
    assert_eq!(g.macs(), 125_485_696);
}

#[test]
fn published_parameter_counts() {
    let count = |arch: Arch, f: &dyn Fn(&mut ZooConfig)| {
        let mut cfg = arch.default_config();
        f(&mut cfg);
        build(arch, &cfg).unwrap().n_params()
    };
    let same = |_: &mut ZooConfig| {};
    let imagenet_vgg = |c: &mut ZooConfig| {
        c.vgg_head = VggHead::ImageNet;
        c.input_hw = (224, 224);
        c.num_classes = 1000;
    };
    assert_eq!(count(Arch::ResNet18, &same), 11_689_512);
    assert_eq!(count(Arch::ResNet34, &same), 21_797_672);
    assert_eq!(count(Arch::ResNet50, &same), 25_557_032);
    assert_eq!(count(Arch::DenseNet121, &same), 7_978_856);
    // torchvision vgg11_bn / vgg13_bn / vgg16_bn / vgg19_bn.
    assert_eq!(count(Arch::Vgg11, &imagenet_vgg), 132_868_840);
    assert_eq!(count(Arch::Vgg13, &imagenet_vgg), 133_053_736);
    assert_eq!(count(Arch::Vgg16, &imagenet_vgg), 138_365_992);
    assert_eq!(count(Arch::Vgg19, &imagenet_vgg), 143_678_248);
    // CIFAR forms: 14,710,464 conv + 8,448 BN parameters and a 512 -> 10 classifier.
    assert_eq!(count(Arch::Vgg16, &same), 14_728_266);
    // akamaster README: ResNet-110 has 1.7M parameters.
    assert_eq!(count(Arch::ResNet110, &same), 1_727_962);
    // Huang et al. report 0.8M for DenseNet-BC (L=100, k=12).
    let bc = count(Arch::DenseNetBcCifar, &same);
    assert_eq!(bc, 769_162);
    assert!((bc as f64 / 0.8e6 - 1.0).abs() < 0.05);
    assert_eq!(
        count(Arch::Conv4, &same),
        32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 64 * 64 * 9 + 2 * 192 + 3136 * 10 + 10
    );
}

#[test]
fn resnet18_macs_match_torchvision() {
    let macs = default_graph(Arch::ResNet18).macs();
    // torchvision lists 1.81 GFLOPS, which counts multiply-accumulates.
    assert!(
        (macs as f64 / 1.814e9 - 1.0).abs() < 0.01,
        "resnet18 MACs {macs}"
    );
    assert_eq!(macs, 1_814_073_344);
}

#[test]
fn every_graph_round_trips_through_json() {
    for &arch in Arch::all() {
        let g = default_graph(arch);
        let back = Graph::from_json(&g.to_json()).unwrap();
        assert_eq!(back, g, "{arch}");
    }
    let mut cfg = Arch::Vgg19.default_config();
    cfg.vgg_head = VggHead::ImageNet;
    let g = build(Arch::Vgg19, &cfg).unwrap();
    assert_eq!(Graph::from_json(&g.to_json_pretty()).unwrap(), g);
}

#[test]
fn output_shapes() {
    for &arch in Arch::all() {
        let g = default_graph(arch);
        let expected = if arch.dataset_hint() == "imagenet" {
            1000
        } else {
            10
        };
        assert_eq!(output_shape(&g), [expected], "{arch}");
        assert_eq!(g.inputs().len(), 1);
        let cfg = arch.default_config();
        let (h, w) = cfg.input_hw;
        assert_eq!(g.shape(g.inputs()[0]), &[cfg.in_channels, h, w], "{arch}");
        let mut cfg = arch.default_config();
        cfg.num_classes = 7;
        assert_eq!(output_shape(&build(arch, &cfg).unwrap()), [7], "{arch}");
    }
}

#[test]
fn small_input_stems_for_cifar() {
    for arch in [Arch::ResNet18, Arch::ResNet50, Arch::DenseNet121] {
        let mut cfg = arch.default_config();
        cfg.small_input_stem = true;
        cfg.input_hw = (32, 32);
        cfg.num_classes = 10;
        let g = build(arch, &cfg).unwrap();
        assert_eq!(output_shape(&g), [10], "{arch}");
        assert!(
            g.find("maxpool").is_none() && g.find("features.pool0").is_none(),
            "{arch}"
        );
        let stem = g
            .param_specs()
            .into_iter()
            .find(|(_, n, _)| n.ends_with("conv0.weight") || n == "conv1.weight");
        assert_eq!(stem.unwrap().2.shape, [64, 3, 3, 3], "{arch}");
    }
    let mut cfg = Arch::ResNet18.default_config();
    cfg.small_input_stem = true;
    cfg.input_hw = (32, 32);
    let g = build(Arch::ResNet18, &cfg).unwrap();
    assert_eq!(g.shape(g.find("layer4.1.relu").unwrap()), &[512, 4, 4]);
    // The standard stem on a 32x32 input ends in a 1x1 map.
    cfg.small_input_stem = false;
    let g = build(Arch::ResNet18, &cfg).unwrap();
    assert_eq!(g.shape(g.find("layer4.1.relu").unwrap()), &[512, 1, 1]);
}

#[test]
fn torchvision_names() {
    let names = spec_map(&default_graph(Arch::ResNet50));
    for n in [
        "conv1.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.conv3.weight",
        "fc.bias",
    ] {
        assert!(names.contains_key(n), "resnet50 lacks {n}");
    }
    assert_eq!(names["layer2.0.conv2.weight"], [128, 128, 3, 3]);
    assert_eq!(names["layer4.2.bn3.running_var"], [2048]);
    let names = spec_map(&default_graph(Arch::DenseNet121));
    assert_eq!(
        names["features.denseblock1.denselayer1.conv1.weight"],
        [128, 64, 1, 1]
    );
    assert_eq!(
        names["features.denseblock4.denselayer16.conv2.weight"],
        [32, 128, 3, 3]
    );
    assert_eq!(names["features.transition3.conv.weight"], [512, 1024, 1, 1]);
    assert_eq!(names["features.norm5.weight"], [1024]);
    assert_eq!(names["classifier.weight"], [1000, 1024]);
    let names = spec_map(&default_graph(Arch::Vgg16));
    assert_eq!(names["features.0.bias"], [64]);
    assert_eq!(names["features.40.weight"], [512, 512, 3, 3]);
    assert_eq!(names["classifier.weight"], [10, 512]);
    let mut cfg = Arch::Vgg16.default_config();
    cfg.vgg_head = VggHead::ImageNet;
    let names = spec_map(&build(Arch::Vgg16, &cfg).unwrap());
    assert_eq!(names["classifier.0.weight"], [4096, 512]);
    assert_eq!(names["classifier.6.weight"], [10, 4096]);
    let names = spec_map(&default_graph(Arch::Conv4));
    let convs: Vec<_> = names
        .keys()
        .filter(|n| n.ends_with(".weight"))
        .cloned()
        .collect();
    assert_eq!(
        convs,
        [
            "classifier.weight",
            "features.0.weight",
            "features.1.weight",
            "features.10.weight"
        ]
        .into_iter()
        .chain([
            "features.11.weight",
            "features.3.weight",
            "features.4.weight"
        ])
        .chain(["features.7.weight", "features.8.weight"])
        .collect::<Vec<_>>()
    );
    assert_eq!(names["classifier.weight"], [10, 3136]);
    let g = default_graph(Arch::DenseNetBcCifar);
    assert_eq!(spec_map(&g)["classifier.weight"], [10, 342]);
    assert_eq!(
        g.shape(g.find("features.transition2.pool").unwrap()),
        &[150, 8, 8]
    );
}

#[test]
fn names_parse_and_print() {
    for &arch in Arch::all() {
        assert_eq!(arch.to_string().parse::<Arch>().unwrap(), arch);
        let json = serde_json::to_string(&arch).unwrap();
        assert_eq!(serde_json::from_str::<Arch>(&json).unwrap(), arch);
    }
    let alias = |s: &str| s.parse::<Arch>().unwrap();
    assert_eq!(alias("densenet-bc"), Arch::DenseNetBcCifar);
    assert_eq!(alias("densenet_bc_cifar"), Arch::DenseNetBcCifar);
    assert_eq!(alias("mnist_lenet5"), Arch::LeNet5);
    assert_eq!(alias("resnet8"), Arch::MlperfResNet8);
    assert_eq!(alias("ResNet56"), Arch::ResNet56);
    assert_eq!(alias("vgg16_bn"), Arch::Vgg16);
    match "resnet7".parse::<Arch>() {
        Err(e @ ZooError::UnknownArch { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("resnet7") && msg.contains("resnet20") && msg.contains("conv4"));
        }
        other => panic!("expected UnknownArch, got {other:?}"),
    }
    assert_eq!(Arch::all().len(), 17);
}

#[test]
fn preprocess_serialises() {
    let p = Arch::ResNet20.preprocessing();
    let back: Preprocess = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
    assert_eq!(Arch::MlperfResNet8.preprocessing().scale, 1.0);
    assert_eq!(Arch::Conv4.preprocessing().mean.len(), 1);
}

#[test]
fn invalid_configs_are_errors_naming_the_arch() {
    for &arch in Arch::all() {
        let mut cfg = arch.default_config();
        cfg.num_classes = 0;
        match build(arch, &cfg) {
            Err(
                e @ ZooError::InvalidConfig {
                    field: "num_classes",
                    ..
                },
            ) => {
                assert!(e.to_string().contains(&arch.to_string()), "{e}");
            }
            other => panic!("{arch}: expected InvalidConfig, got {other:?}"),
        }
        let mut cfg = arch.default_config();
        cfg.in_channels = 0;
        assert!(
            matches!(build(arch, &cfg), Err(ZooError::InvalidConfig { .. })),
            "{arch}"
        );
        let mut cfg = arch.default_config();
        cfg.input_hw = (3, 64);
        match build(arch, &cfg) {
            Err(e @ ZooError::InputTooSmall { .. }) => {
                assert!(
                    e.to_string().contains(&arch.to_string()) && e.to_string().contains("3x64")
                );
            }
            other => panic!("{arch}: expected InputTooSmall, got {other:?}"),
        }
    }
    // Every accepted size builds: the minimum is exact enough that the IR never rejects it.
    for &arch in Arch::all() {
        let mut cfg = arch.default_config();
        for side in 1..=40 {
            cfg.input_hw = (side, side + 1);
            match build(arch, &cfg) {
                Ok(_) | Err(ZooError::InputTooSmall { .. }) => {}
                Err(e) => panic!("{arch} at {side}: {e}"),
            }
        }
    }
    let mut cfg = Arch::Vgg11.default_config();
    cfg.vgg_head = VggHead::ImageNet;
    cfg.dropout = 1.0;
    assert!(matches!(
        build(Arch::Vgg11, &cfg),
        Err(ZooError::InvalidConfig {
            arch: Arch::Vgg11,
            field: "dropout",
            ..
        })
    ));
}

/// Mean and standard deviation of a tensor's elements.
fn stats(x: &[f32]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[test]
fn init_weights_is_deterministic_and_complete() {
    for arch in [
        Arch::ResNet20,
        Arch::MlperfResNet8,
        Arch::LeNet5,
        Arch::Conv4,
        Arch::DenseNetBcCifar,
    ] {
        let g = default_graph(arch);
        let w = init_weights(&g, Some(arch), 1);
        assert_eq!(w, init_weights(&g, Some(arch), 1), "{arch}: same seed");
        let other = init_weights(&g, Some(arch), 2);
        assert_ne!(w, other, "{arch}: different seeds");
        let specs = g.param_specs();
        assert_eq!(w.len(), specs.len(), "{arch}");
        for (id, name, spec) in &specs {
            let t = w
                .get(name)
                .unwrap_or_else(|| panic!("{arch}: {name} missing"));
            assert_eq!(t.shape(), spec.shape.as_slice(), "{arch}: {name}");
            assert!(t.data().iter().all(|v| v.is_finite()), "{arch}: {name}");
            let bn = matches!(g.node(*id).op, Op::BatchNorm2d(_));
            match spec.kind {
                ParamKind::RunningVar => assert!(t.data().iter().all(|&v| v == 1.0)),
                ParamKind::RunningMean => assert!(t.data().iter().all(|&v| v == 0.0)),
                ParamKind::Weight if bn => assert!(t.data().iter().all(|&v| v == 1.0)),
                ParamKind::Bias if bn => assert!(t.data().iter().all(|&v| v == 0.0)),
                ParamKind::Weight => {
                    assert_ne!(t.data(), other.get(name).unwrap().data(), "{arch}: {name}")
                }
                ParamKind::Bias => {}
            }
        }
    }
    // No hint: PyTorch layer defaults.
    let g = default_graph(Arch::LeNet5);
    assert_eq!(
        init_weights(&g, None, 3),
        init_weights(&g, Some(Arch::LeNet5), 3)
    );
}

#[test]
fn init_distributions_follow_the_reference_code() {
    let std_of = |w: &shears_ir::Weights, name: &str| stats(w.get(name).unwrap().data());
    let close = |got: f64, want: f64, what: &str| {
        assert!(
            (got / want - 1.0).abs() < 0.05,
            "{what}: std {got}, expected {want}"
        );
    };
    // akamaster: kaiming_normal fan_in on convs (64*9 = 576) and the linear layer (64).
    let g = default_graph(Arch::ResNet56);
    let w = init_weights(&g, Some(Arch::ResNet56), 0);
    close(
        std_of(&w, "layer3.0.conv2.weight").1,
        (2.0f64 / 576.0).sqrt(),
        "resnet56 conv",
    );
    let (mean, _) = std_of(&w, "layer3.0.conv2.weight");
    assert!(mean.abs() < 0.005, "resnet56 conv mean {mean}");
    // torchvision ResNet: fan_out (512*9); fc torch default uniform(±1/sqrt(512)).
    let g = default_graph(Arch::ResNet18);
    let w = init_weights(&g, Some(Arch::ResNet18), 0);
    close(
        std_of(&w, "layer4.1.conv2.weight").1,
        (2.0f64 / 4608.0).sqrt(),
        "resnet18 conv",
    );
    let fc = w.get("fc.weight").unwrap().data();
    let bound = 1.0 / 512f32.sqrt();
    assert!(fc.iter().all(|v| v.abs() <= bound));
    close(stats(fc).1, bound as f64 / 3f64.sqrt(), "resnet18 fc");
    // torchvision VGG: linear normal(0, 0.01), biases 0.
    let g = default_graph(Arch::Vgg11);
    let w = init_weights(&g, Some(Arch::Vgg11), 0);
    close(
        std_of(&w, "features.25.weight").1,
        (2.0f64 / 4608.0).sqrt(),
        "vgg conv",
    );
    assert!(w
        .get("features.0.bias")
        .unwrap()
        .data()
        .iter()
        .all(|&v| v == 0.0));
    assert!(w
        .get("classifier.bias")
        .unwrap()
        .data()
        .iter()
        .all(|&v| v == 0.0));
    let g = build(
        Arch::Vgg11,
        &ZooConfig {
            vgg_head: VggHead::ImageNet,
            ..Arch::Vgg11.default_config()
        },
    );
    let w = shears::zoo::init_weights_with(&g.unwrap(), InitScheme::TorchvisionVgg, 0);
    close(std_of(&w, "classifier.3.weight").1, 0.01, "vgg linear");
    // Keras he_normal: truncated at 2 sigma, variance 2 / fan_in (32*9 for conv2d_4).
    let g = default_graph(Arch::MlperfResNet8);
    let w = init_weights(&g, Some(Arch::MlperfResNet8), 0);
    let k = w.get("conv2d_4.weight").unwrap().data();
    let sigma = (2.0f64 / 288.0).sqrt() / 0.879_625_661;
    assert!(k.iter().all(|&v| (v as f64).abs() <= 2.0 * sigma + 1e-6));
    close(stats(k).1, (2.0f64 / 288.0).sqrt(), "keras he_normal");
    assert!(w
        .get("conv2d_4.bias")
        .unwrap()
        .data()
        .iter()
        .all(|&v| v == 0.0));
    // torchvision DenseNet: kaiming_normal fan_in, classifier bias 0.
    let g = default_graph(Arch::DenseNetBcCifar);
    let w = init_weights(&g, Some(Arch::DenseNetBcCifar), 0);
    close(
        std_of(&w, "features.denseblock3.denselayer16.conv2.weight").1,
        (2.0f64 / 432.0).sqrt(),
        "densenet conv",
    );
    assert!(w
        .get("classifier.bias")
        .unwrap()
        .data()
        .iter()
        .all(|&v| v == 0.0));
}
