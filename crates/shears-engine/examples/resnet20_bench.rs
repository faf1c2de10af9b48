//! Times ResNet-20 (CIFAR, option-A shortcuts) at batch 128: inference images/s and training
//! steps (forward + cross-entropy + backward + SGD with momentum) images/s.
//!
//! `cargo run --release -p shears-engine --example resnet20_bench [threads] [steps]`

use std::time::Instant;

use shears_engine::{cross_entropy, BackwardOptions, Mode, Network, Sgd, SgdConfig};
use shears_ir::{
    BatchNorm2d, Conv2d, Graph, GraphBuilder, Linear, NodeId, Op, ShortcutA, Tensor, Weights,
};

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
}

/// CPU time of the whole process (all threads), seconds: on a machine shared with other jobs,
/// CPU time / threads estimates the wall time on idle cores.
fn cpu_secs() -> f64 {
    let mut t = Timespec { sec: 0, nsec: 0 };
    // SAFETY: plain libc call with a valid out pointer; 2 is CLOCK_PROCESS_CPUTIME_ID on Linux.
    unsafe { clock_gettime(2, &mut t) };
    t.sec as f64 + t.nsec as f64 * 1e-9
}

fn block(
    b: &mut GraphBuilder,
    name: &str,
    x: NodeId,
    cin: usize,
    cout: usize,
    stride: usize,
) -> NodeId {
    let c1 = b
        .add(
            format!("{name}.conv1"),
            Conv2d::new(cin, cout, 3)
                .with_stride(stride)
                .with_padding(1),
            &[x],
        )
        .unwrap();
    let b1 = b
        .add(format!("{name}.bn1"), BatchNorm2d::new(cout), &[c1])
        .unwrap();
    let r1 = b.add(format!("{name}.relu1"), Op::Relu, &[b1]).unwrap();
    let c2 = b
        .add(
            format!("{name}.conv2"),
            Conv2d::new(cout, cout, 3).with_padding(1),
            &[r1],
        )
        .unwrap();
    let b2 = b
        .add(format!("{name}.bn2"), BatchNorm2d::new(cout), &[c2])
        .unwrap();
    let sc = if stride != 1 || cin != cout {
        let pad = (cout - cin) / 2;
        b.add(
            format!("{name}.shortcut"),
            ShortcutA {
                stride,
                pad_before: pad,
                pad_after: pad,
            },
            &[x],
        )
        .unwrap()
    } else {
        x
    };
    let a = b.add(format!("{name}.add"), Op::Add, &[b2, sc]).unwrap();
    b.add(format!("{name}.relu2"), Op::Relu, &[a]).unwrap()
}

fn resnet20() -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[3, 32, 32]).unwrap();
    let c = b
        .add("conv1", Conv2d::new(3, 16, 3).with_padding(1), &[x])
        .unwrap();
    let bn = b.add("bn1", BatchNorm2d::new(16), &[c]).unwrap();
    let mut h = b.add("relu", Op::Relu, &[bn]).unwrap();
    let mut cin = 16;
    for (li, cout) in [16, 32, 64].into_iter().enumerate() {
        for k in 0..3 {
            let stride = if k == 0 && li > 0 { 2 } else { 1 };
            h = block(
                &mut b,
                &format!("layer{}.{k}", li + 1),
                h,
                cin,
                cout,
                stride,
            );
            cin = cout;
        }
    }
    let p = b.add("avgpool", Op::GlobalAvgPool, &[h]).unwrap();
    let fc = b
        .add(
            "linear",
            Linear {
                in_features: 64,
                out_features: 10,
                bias: true,
            },
            &[p],
        )
        .unwrap();
    b.finish(&[fc]).unwrap()
}

fn weights(g: &Graph) -> Weights {
    let mut s = 12345u64;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let mut w = Weights::new();
    for (_, name, spec) in g.param_specs() {
        let n: usize = spec.shape.iter().product();
        let fan: usize = spec.shape[1..].iter().product::<usize>().max(1);
        let data: Vec<f32> =
            if name.ends_with("running_var") || (name.contains("bn") && name.ends_with("weight")) {
                vec![1.0; n]
            } else if name.ends_with("running_mean") || name.ends_with("bias") {
                vec![0.0; n]
            } else {
                (0..n).map(|_| next() * (6.0 / fan as f32).sqrt()).collect()
            };
        w.insert(name, Tensor::new(spec.shape.clone(), data).unwrap());
    }
    w
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let n = 128;
    let g = resnet20();
    println!("resnet20: {} params, {} MACs/image", g.n_params(), g.macs());
    let mut net = Network::new(g.clone(), &weights(&g)).unwrap();
    net.set_threads(Some(threads)).unwrap();
    let x = Tensor::new(
        vec![n, 3, 32, 32],
        (0..n * 3 * 1024)
            .map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5)
            .collect(),
    )
    .unwrap();
    let labels: Vec<usize> = (0..n).map(|i| i % 10).collect();
    net.forward(&x, Mode::Eval).unwrap();
    let t = Instant::now();
    let c = cpu_secs();
    for _ in 0..steps {
        net.forward(&x, Mode::Eval).unwrap();
    }
    let dt = t.elapsed().as_secs_f64() / steps as f64;
    let dc = (cpu_secs() - c) / steps as f64 / threads as f64;
    println!(
        "inference: {:.1} ms/batch, {:.0} img/s ({threads} threads); cpu time / threads {:.1} ms = {:.0} img/s",
        dt * 1e3,
        n as f64 / dt,
        dc * 1e3,
        n as f64 / dc
    );
    let mut opt = Sgd::new(
        SgdConfig::new(0.01)
            .with_momentum(0.9)
            .with_weight_decay(5e-4),
    )
    .unwrap();
    let mut train_step = |net: &mut Network| {
        let out = net.forward_train(&x).unwrap();
        let (loss, dl) = cross_entropy(&out, &labels, 0.0).unwrap();
        let mut grads = net.backward(&dl, &BackwardOptions::new()).unwrap();
        net.step(&mut opt, &mut grads).unwrap();
        loss
    };
    train_step(&mut net);
    net.set_profiling(true);
    train_step(&mut net);
    net.forward(&x, Mode::Eval).unwrap();
    for (label, secs, calls) in &net.profile().unwrap().entries {
        println!("  {label:<28} {:>8.1} ms  ({calls} calls)", secs * 1e3);
    }
    net.set_profiling(false);
    let t = Instant::now();
    let c = cpu_secs();
    let mut loss = 0.0;
    for _ in 0..steps {
        loss = train_step(&mut net);
    }
    let dt = t.elapsed().as_secs_f64() / steps as f64;
    let dc = (cpu_secs() - c) / steps as f64 / threads as f64;
    println!(
        "training: {:.1} ms/step, {:.0} img/s ({threads} threads); cpu time / threads {:.1} ms = {:.0} img/s; last loss {loss:.3}",
        dt * 1e3,
        n as f64 / dt,
        dc * 1e3,
        n as f64 / dc
    );
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(l) = status.lines().find(|l| l.starts_with("VmHWM")) {
            println!(
                "peak resident memory: {}",
                l.trim_start_matches("VmHWM:").trim()
            );
        }
    }
}
