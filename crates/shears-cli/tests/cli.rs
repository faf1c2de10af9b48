//! The `shears` binary as users run it: one JSON object with `--json`, exit code 2 and a message
//! naming the file or value on bad input, models that reload without `--arch`.

mod common;

use common::{fails_with_2, json_of, model, shared, shears};

#[test]
fn info_reports_resnet56_params_and_macs() {
    let v = json_of(&shears(&[
        "info",
        &model("resnet56.safetensors"),
        "--arch",
        "resnet56",
        "--json",
    ]));
    assert_eq!(v["summary"]["params"], 853_018);
    assert_eq!(v["summary"]["macs"], 125_485_696u64);
    assert_eq!(v["summary"]["output"], serde_json::json!([10]));
    let human = shears(&[
        "info",
        &model("original/resnet56-4bfd9763.th"),
        "--arch",
        "resnet56",
    ]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("853,018") && text.contains("125,485,696"),
        "{text}"
    );
}

#[test]
fn bad_input_exits_2_naming_what_is_wrong() {
    fails_with_2(
        &shears(&[
            "info",
            "/nonexistent/model.safetensors",
            "--arch",
            "resnet20",
        ]),
        "/nonexistent/model.safetensors",
    );
    fails_with_2(
        &shears(&[
            "info",
            &model("resnet20.safetensors"),
            "--arch",
            "resnet9000",
        ]),
        "resnet9000",
    );
    fails_with_2(&shears(&["info", &model("resnet20.safetensors")]), "--arch");
    // Weights of one architecture bound to another: the message names a tensor.
    fails_with_2(
        &shears(&["info", &model("resnet20.safetensors"), "--arch", "resnet32"]),
        "layer1.3",
    );
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(model("resnet20.safetensors")).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    fails_with_2(
        &shears(&["info", cut.to_str().unwrap(), "--arch", "resnet20"]),
        "cut.safetensors",
    );
    let th = std::fs::read(model("original/resnet20-12fca82f.th")).unwrap();
    let cut_th = dir.path().join("cut.th");
    std::fs::write(&cut_th, &th[..th.len() - 1000]).unwrap();
    fails_with_2(
        &shears(&["info", cut_th.to_str().unwrap(), "--arch", "resnet20"]),
        "cut.th",
    );
    let data = shared().join("data");
    fails_with_2(
        &shears(&[
            "eval",
            &model("resnet20.safetensors"),
            "--arch",
            "resnet20",
            "--data",
            "imagenet-1k",
            "--data-dir",
            data.to_str().unwrap(),
        ]),
        "imagenet-1k",
    );
    fails_with_2(
        &shears(&[
            "eval",
            &model("resnet20.safetensors"),
            "--arch",
            "resnet20",
            "--data",
            "cifar10",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ]),
        "cifar",
    );
}

#[test]
fn eval_json_is_one_object_and_adapts_mnist_to_a_cifar_network() {
    let data = shared().join("data");
    let v = json_of(&shears(&[
        "eval",
        &model("mnist_lenet5_clntrained.safetensors"),
        "--arch",
        "lenet5",
        "--data",
        "mnist",
        "--data-dir",
        data.to_str().unwrap(),
        "--limit",
        "1000",
        "--json",
    ]));
    assert_eq!(v["result"]["images"], 1000);
    assert!(v["result"]["top1"].as_f64().unwrap() > 97.0);
    // A CIFAR network on 28x28 grey digits: the input is padded and repeated to RGB.
    let v = json_of(&shears(&[
        "eval",
        &model("resnet20.safetensors"),
        "--arch",
        "resnet20",
        "--data",
        "fashion-mnist",
        "--data-dir",
        data.to_str().unwrap(),
        "--limit",
        "100",
        "--json",
    ]));
    let adapted = v["result"]["adapted"].to_string();
    assert!(
        adapted.contains("grey to rgb") && adapted.contains("32x32"),
        "{adapted}"
    );
}

#[test]
fn train_checkpoints_resumes_and_saves_a_self_describing_model() {
    let data = shared().join("data");
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let out = dir.path().join("lenet.safetensors");
    let common = [
        "train",
        "--arch",
        "lenet5",
        "--data",
        "mnist",
        "--data-dir",
        data.to_str().unwrap(),
        "--limit",
        "512",
        "--val-limit",
        "200",
        "--batch-size",
        "64",
        "--optimizer",
        "adam",
        "--lr",
        "0.001",
        "--weight-decay",
        "0",
        "--checkpoint-dir",
        ck.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--json",
    ];
    let mut a: Vec<&str> = common.to_vec();
    a.extend(["--epochs", "1"]);
    let v = json_of(&shears(&a));
    assert_eq!(v["report"]["epochs"].as_array().unwrap().len(), 1);
    assert!(ck.join("checkpoint.safetensors").exists());
    let mut b: Vec<&str> = common.to_vec();
    b.extend(["--epochs", "2", "--resume"]);
    let v = json_of(&shears(&b));
    assert_eq!(v["report"]["resumed_from"], 1);
    assert_eq!(v["report"]["epochs"].as_array().unwrap().len(), 2);
    // Reloads with no --arch: the graph and preprocessing travel in the file.
    let e = json_of(&shears(&[
        "eval",
        out.to_str().unwrap(),
        "--data",
        "mnist",
        "--data-dir",
        data.to_str().unwrap(),
        "--limit",
        "200",
        "--json",
    ]));
    assert!(e["result"]["top1"].as_f64().unwrap() > 50.0, "{e}");
    let i = json_of(&shears(&["info", out.to_str().unwrap(), "--json"]));
    assert_eq!(i["summary"]["params"], 648_226);
}

/// `--vgg-head imagenet` builds torchvision's three-layer head; `--time-budget` stops training
/// at a wall-clock limit (and must be positive).
#[test]
fn train_a_vgg_with_the_imagenet_head_under_a_time_budget() {
    let data = shared().join("data");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vgg.safetensors");
    let args = |budget: &'static str| -> Vec<String> {
        [
            "train",
            "--arch",
            "vgg11",
            "--vgg-head",
            "imagenet",
            "--data",
            "cifar10",
            "--data-dir",
            data.to_str().unwrap(),
            "--limit",
            "256",
            "--val-limit",
            "20",
            "--batch-size",
            "16",
            "--epochs",
            "50",
            "--time-budget",
            budget,
            "-o",
            out.to_str().unwrap(),
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let bad: Vec<String> = args("0");
    fails_with_2(
        &shears(&bad.iter().map(String::as_str).collect::<Vec<_>>()),
        "--time-budget 0",
    );
    // --vgg-head on a model that is not a VGG is an error, not silently ignored.
    let mut not_vgg = args("1.5");
    not_vgg[2] = "lenet5".into();
    fails_with_2(
        &shears(&not_vgg.iter().map(String::as_str).collect::<Vec<_>>()),
        "--vgg-head",
    );
    let ok: Vec<String> = args("1.5");
    let v = json_of(&shears(&ok.iter().map(String::as_str).collect::<Vec<_>>()));
    assert_eq!(v["report"]["stopped_by_budget"], true, "{v}");
    assert!(v["report"]["epochs"].as_array().unwrap().len() < 50);
    let i = json_of(&shears(&["info", out.to_str().unwrap(), "--json"]));
    assert_eq!(i["summary"]["params"], 28_149_514, "{i}");
}

#[test]
fn data_verify_checks_the_shared_mnist() {
    let data = shared().join("data");
    let v = json_of(&shears(&[
        "data",
        "verify",
        "mnist",
        "--data-dir",
        data.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(v["ok"], true);
}

#[test]
fn demo_trains_and_reports_on_a_subset() {
    let data = shared().join("data");
    let v = json_of(&shears(&[
        "demo",
        "--data-dir",
        data.to_str().unwrap(),
        "--limit",
        "3000",
        "--json",
    ]));
    assert_eq!(v["train_images"], 3000);
    let top1 = |k: &str| v[k]["top1"].as_f64().unwrap();
    assert!(top1("eval") > 85.0, "{v}");
    assert!(v["latency_b1"]["median_ms"].as_f64().unwrap() > 0.0);
    // The sensitivity sweep chose the ratios on the validation hold-out.
    assert_eq!(v["sensitivity_split"], "val");
    assert!(v["sensitivity_probes"].as_u64().unwrap() > 0);
    assert!(!v["ratios"].as_object().unwrap().is_empty());
    // Pruning removed about half the MACs for real (a smaller dense model), and CASM
    // reconstructed layers without losing what pruning kept.
    let stages = v["stages"].as_array().unwrap();
    let macs = |i: usize| stages[i]["macs"].as_f64().unwrap();
    assert!(
        (macs(1) / macs(0) - 0.5).abs() < 0.05,
        "pruned MACs {} of {}",
        macs(1),
        macs(0)
    );
    assert!(stages[1]["params"].as_u64() < stages[0]["params"].as_u64());
    assert!(top1("pruned_eval") > 50.0, "{v}");
    assert!(!v["casm"]["layers"].as_array().unwrap().is_empty());
    assert!(top1("recovered_eval") >= top1("pruned_eval") - 1.0, "{v}");
}

#[test]
fn sweep_time_both_interleaves_runs_and_agrees() {
    let data = shared().join("data");
    let out = tempfile::tempdir().unwrap();
    let v = json_of(&shears(&[
        "analyze",
        "sweep",
        &model("resnet20.safetensors"),
        "--arch",
        "resnet20",
        "--data",
        "cifar10",
        "--data-dir",
        data.to_str().unwrap(),
        "--images",
        "40",
        "--batch",
        "20",
        "--ratios",
        "0.25,0.5",
        "--only",
        "layer2.1.conv1,layer3.0.conv1",
        "--time-both",
        "--time-runs",
        "2",
        "--out",
        out.path().to_str().unwrap(),
        "--json",
    ]));
    // With no --split, the probes are measured on the validation hold-out, never on test.
    assert_eq!(v["split"], "val", "{}", v["data"]);
    assert_eq!(v["result"]["split"], "val");
    let t = &v["timing"];
    assert_eq!(t["prefix_cache_seconds_runs"].as_array().unwrap().len(), 3);
    assert_eq!(
        t["no_prefix_cache_seconds_runs"].as_array().unwrap().len(),
        2
    );
    assert_eq!(
        t["no_prefix_cache_steal_seconds_runs"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(t["identical_results"], true);
    assert_eq!(t["repeat_identical"], true);
    assert!(t["macs_ratio"].as_f64().unwrap() > 1.0, "{t}");
    // --time-runs needs --time-both.
    let o = shears(&[
        "analyze",
        "sweep",
        &model("resnet20.safetensors"),
        "--time-runs",
        "2",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
}

/// `analyze sbpf` selects on the validation hold-out unless told otherwise, and says so; the
/// test split is taken only when asked for by name.
#[test]
fn sbpf_measures_on_the_validation_split_by_default() {
    let data = shared().join("data");
    let out = tempfile::tempdir().unwrap();
    let lenet = model("mnist_lenet5_clntrained.safetensors");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "analyze",
            "sbpf",
            &lenet,
            "--arch",
            "lenet5",
            "--data",
            "mnist",
            "--data-dir",
            data.to_str().unwrap(),
            "--images",
            "50",
            "--seeds",
            "1",
            "--speedup",
            "1.5",
            "--out",
            out.path().to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        json_of(&shears(&args))
    };
    let v = run(&[]);
    assert_eq!(v["split"], "val", "{}", v["data"]);
    assert_eq!(v["analysis"]["split"], "val");
    assert!(
        v["data"].as_str().unwrap().contains("mnist-val"),
        "{}",
        v["data"]
    );
    let v = run(&["--split", "test"]);
    assert_eq!(v["split"], "test");
    let o = shears(&[
        "analyze",
        "sbpf",
        &lenet,
        "--data",
        "mnist",
        "--split",
        "dev",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Issue 18 defect 6: `--threads 0` is bad input (exit 2), not a failure (exit 1).
#[test]
fn defect_threads_zero_exits_2() {
    let data = shared().join("data");
    let o = shears(&[
        "eval",
        &model("mnist_lenet5_clntrained.safetensors"),
        "--arch",
        "lenet5",
        "--data",
        "mnist",
        "--data-dir",
        data.to_str().unwrap(),
        "--threads",
        "0",
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("--threads 0"));
}

/// Issue 18 defect 6: `analyze sweep --out` naming an existing file exits 2 and leaves it.
#[test]
fn defect_sweep_out_existing_file_exits_2() {
    let data = shared().join("data");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("taken.txt");
    std::fs::write(&file, "keep me").unwrap();
    let o = shears(&[
        "analyze",
        "sweep",
        &model("mnist_lenet5_clntrained.safetensors"),
        "--arch",
        "lenet5",
        "--data",
        "mnist",
        "--data-dir",
        data.to_str().unwrap(),
        "--images",
        "20",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a directory"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

/// Issue 18 defect 8: `eval --limit 0` is refused instead of reporting 0.00%.
#[test]
fn defect_eval_limit_zero_exits_2() {
    let data = shared().join("data");
    let o = shears(&[
        "eval",
        &model("mnist_lenet5_clntrained.safetensors"),
        "--arch",
        "lenet5",
        "--data",
        "mnist",
        "--data-dir",
        data.to_str().unwrap(),
        "--limit",
        "0",
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Issue 18 defect 8: `train --resume` with an empty checkpoint directory says it starts from
/// scratch instead of doing so silently; without `--checkpoint-dir` it is refused.
#[test]
fn defect_train_resume_empty_dir_says_so() {
    let data = shared().join("data");
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    let out = dir.path().join("m.safetensors");
    let args = |extra: &[&str]| {
        let mut v: Vec<String> = [
            "train",
            "--arch",
            "lenet5",
            "--data",
            "mnist",
            "--data-dir",
            data.to_str().unwrap(),
            "--epochs",
            "1",
            "--limit",
            "200",
            "--val-limit",
            "100",
            "--resume",
            "-o",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let a = args(&["--checkpoint-dir", ck.to_str().unwrap()]);
    let o = shears(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no checkpoint"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let a = args(&[]);
    let o = shears(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
