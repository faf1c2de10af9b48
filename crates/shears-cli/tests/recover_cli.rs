//! `shears recover bn|casm|finetune` through the built binary: accuracy before and after,
//! self-describing outputs with their recovery history, fine-tuning checkpoints and resume,
//! exit code 2 naming the value at fault.

mod common;

use std::path::Path;

use common::{data, fails_with_2, json_of, model, shears};
use serde_json::Value;

/// LeNet-5 with half of every group's channels removed by L1, written by `shears prune`.
fn pruned_lenet(dir: &Path) -> String {
    let out = dir.join("lenet_pruned.safetensors");
    let o = out.to_str().unwrap();
    json_of(&shears(&[
        "prune",
        &model("mnist_lenet5_clntrained.safetensors"),
        "--arch",
        "lenet5",
        "--criterion",
        "l1",
        "--ratio",
        "0.5",
        "--data",
        "mnist",
        "--data-dir",
        &data(),
        "--eval-limit",
        "200",
        "--no-latency",
        "-o",
        o,
        "--json",
    ]));
    o.to_string()
}

#[test]
fn casm_recovers_a_pruned_lenet_and_the_output_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let pruned = pruned_lenet(dir.path());
    let out = dir.path().join("casm.safetensors");
    let v = json_of(&shears(&[
        "recover",
        "casm",
        &pruned,
        "--original",
        &model("mnist_lenet5_clntrained.safetensors"),
        "--original-arch",
        "lenet5",
        "--data-dir",
        &data(),
        "--samples",
        "300",
        "--epochs-per-layer",
        "3",
        "--batch-size",
        "50",
        "--eval-limit",
        "1000",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]));
    let acc = &v["accuracy"];
    let (before, after) = (
        acc["before_top1"].as_f64().unwrap(),
        acc["after_top1"].as_f64().unwrap(),
    );
    assert_eq!(acc["test_images"], 1000);
    assert_eq!(acc["dataset"], "mnist");
    assert!(after > before, "CASM did not help: {before} -> {after}");
    assert!(acc["recovery_seconds"].as_f64().unwrap() > 0.0);
    for l in v["details"]["casm"]["layers"].as_array().unwrap() {
        if l["skipped"].is_null() {
            assert!(
                l["final_mse"].as_f64().unwrap() <= l["initial_mse"].as_f64().unwrap(),
                "{l}"
            );
        }
    }
    // Self-describing: reloads with no --arch and no --data, gives the reported accuracy.
    let e = json_of(&shears(&[
        "eval",
        out.to_str().unwrap(),
        "--data",
        "mnist",
        "--data-dir",
        &data(),
        "--limit",
        "1000",
        "--json",
    ]));
    assert_eq!(e["result"]["top1"].as_f64().unwrap(), after);
    // Chaining keeps the history: least squares on the CASM output, then shows two steps.
    let out2 = dir.path().join("casm2.safetensors");
    let v2 = json_of(&shears(&[
        "recover",
        "casm",
        out.to_str().unwrap(),
        "--original",
        &model("mnist_lenet5_clntrained.safetensors"),
        "--original-arch",
        "lenet5",
        "--data-dir",
        &data(),
        "--variant",
        "lstsq",
        "--samples",
        "300",
        "--eval-limit",
        "200",
        "--skip-before-eval",
        "-o",
        out2.to_str().unwrap(),
        "--json",
    ]));
    assert!(v2["accuracy"]["before_top1"].is_null());
    let i = json_of(&shears(&["info", out2.to_str().unwrap(), "--json"]));
    assert!(i["summary"]["params"].as_u64().unwrap() < 648_226);
}

#[test]
fn finetune_resumes_to_the_same_model_as_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let pruned = pruned_lenet(dir.path());
    let teacher = model("mnist_lenet5_clntrained.safetensors");
    let data_dir = data();
    let run = |extra: &[&str], out: &Path| -> Value {
        let mut a = vec![
            "recover",
            "finetune",
            &pruned,
            "--teacher",
            &teacher,
            "--teacher-arch",
            "lenet5",
            "--data-dir",
            &data_dir,
        ];
        let tail = [
            "--limit",
            "640",
            "--batch-size",
            "64",
            "--epochs",
            "2",
            "--val-limit",
            "100",
            "--eval-limit",
            "300",
            "--skip-before-eval",
            "-o",
            out.to_str().unwrap(),
            "--json",
        ];
        a.extend(tail);
        a.extend(extra);
        json_of(&shears(&a))
    };
    let whole = run(&[], &dir.path().join("whole.safetensors"));
    let ck = dir.path().join("ck");
    let ck_s = ck.to_str().unwrap();
    let part = dir.path().join("part.safetensors");
    let first = run(&["--checkpoint-dir", ck_s, "--stop-after", "1"], &part);
    assert_eq!(
        first["details"]["finetune"]["epochs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(ck.join("checkpoint.safetensors").exists());
    let resumed = run(&["--checkpoint-dir", ck_s, "--resume"], &part);
    assert_eq!(resumed["details"]["finetune"]["resumed_from"], 1);
    assert_eq!(
        resumed["details"]["finetune"]["epochs"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Same weights: the same loss to the last bit on the same images.
    assert_eq!(
        whole["accuracy"]["after_loss"], resumed["accuracy"]["after_loss"],
        "resumed run differs"
    );
    // The curve starts before training and has a point after each epoch.
    let curve = whole["details"]["finetune"]["curve"].as_array().unwrap();
    assert_eq!(curve.len(), 3, "{curve:?}");
    assert_eq!(curve[0]["batches"], 0);
    // A checkpoint of another configuration is refused, naming the file.
    let o = shears(&[
        "recover",
        "finetune",
        &pruned,
        "--data-dir",
        &data(),
        "--limit",
        "640",
        "--batch-size",
        "32",
        "--epochs",
        "2",
        "--checkpoint-dir",
        ck_s,
        "--resume",
        "--skip-before-eval",
        "-o",
        part.to_str().unwrap(),
    ]);
    fails_with_2(&o, "checkpoint.safetensors");
}

#[test]
fn bn_recalibration_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    // ResNet-20 with 30% of each group removed: recalibrating its BN statistics helps.
    let pruned = dir.path().join("r20.safetensors");
    json_of(&shears(&[
        "prune",
        &model("resnet20.safetensors"),
        "--arch",
        "resnet20",
        "--criterion",
        "l1",
        "--ratio",
        "0.3",
        "--data",
        "cifar10",
        "--data-dir",
        &data(),
        "--eval-limit",
        "100",
        "--no-latency",
        "-o",
        pruned.to_str().unwrap(),
        "--json",
    ]));
    let out = dir.path().join("bn.safetensors");
    let v = json_of(&shears(&[
        "recover",
        "bn",
        pruned.to_str().unwrap(),
        "--data-dir",
        &data(),
        "--samples",
        "500",
        "--eval-limit",
        "500",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]));
    let acc = &v["accuracy"];
    let (before, after) = (
        acc["before_top1"].as_f64().unwrap(),
        acc["after_top1"].as_f64().unwrap(),
    );
    assert_eq!(v["details"]["bn"]["layers"], 19);
    assert!(after > before, "BN recalibration: {before} -> {after}");
    let p = pruned.to_str().unwrap();
    let o = out.to_str().unwrap();
    fails_with_2(
        &shears(&[
            "recover",
            "bn",
            p,
            "--data-dir",
            &data(),
            "--samples",
            "0",
            "-o",
            o,
        ]),
        "--samples",
    );
    fails_with_2(
        &shears(&["recover", "bn", "/nonexistent/p.safetensors", "-o", o]),
        "/nonexistent/p.safetensors",
    );
    // The original must be the model PRUNED was cut from.
    fails_with_2(
        &shears(&[
            "recover",
            "casm",
            p,
            "--original",
            &model("mnist_lenet5_clntrained.safetensors"),
            "--original-arch",
            "lenet5",
            "--data-dir",
            &data(),
            "-o",
            o,
        ]),
        "mnist_lenet5_clntrained.safetensors",
    );
    fails_with_2(
        &shears(&[
            "recover",
            "finetune",
            p,
            "--data-dir",
            &data(),
            "--time-budget=-3",
            "-o",
            o,
        ]),
        "--time-budget",
    );
}
