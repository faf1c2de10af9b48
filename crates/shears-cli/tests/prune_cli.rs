//! `shears prune`, `shears info --groups` and `shears export` through the built binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn shears(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shears"))
        .args(args)
        .output()
        .expect("the shears binary runs")
}

/// `shared/` (models and data): `$SHEARS_SHARED`, else the first `<ancestor>/shared` or
/// `<ancestor>/../shared` holding `models/`.
fn shared_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SHEARS_SHARED") {
        return PathBuf::from(d);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for a in manifest.ancestors() {
        for cand in [a.join("shared"), a.join("..").join("shared")] {
            if cand.join("models").is_dir() {
                return cand;
            }
        }
    }
    panic!("no shared/ folder with models/; set SHEARS_SHARED")
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn prune_resnet20_to_half_the_macs_verifies_reloads_and_replays() {
    let shared = shared_dir();
    let model = shared.join("models/resnet20.safetensors");
    let data = shared.join("data");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r20.safetensors");
    let plan = dir.path().join("plan.json");
    let r = json_of(&shears(&[
        "prune",
        s(&model),
        "--arch",
        "resnet20",
        "--criterion",
        "l1",
        "--global",
        "--target-macs",
        "0.5",
        "--data",
        "cifar10",
        "--data-dir",
        s(&data),
        "--eval-limit",
        "500",
        "--verify",
        "--latency-iters",
        "2",
        "--plan-out",
        s(&plan),
        "-o",
        s(&out),
        "--json",
    ]));
    let kept = r["macs"]["kept"].as_f64().unwrap();
    assert!((kept - 0.5).abs() <= 0.5 * 0.02, "MACs kept {kept}");
    assert_eq!(r["fold"], "exact");
    assert_eq!(r["verification"]["passed"], true);
    assert!(
        r["verification"]["result"]["max_abs_diff"]
            .as_f64()
            .unwrap()
            <= 1e-4
    );
    assert_eq!(r["accuracy"]["images"], 500);
    let before = r["accuracy"]["before_top1"].as_f64().unwrap(); // evaluated by default
    let after = r["accuracy"]["after_top1"].as_f64().unwrap();
    assert!(before > 85.0, "{before}");
    let lat = r["latency"].as_array().unwrap();
    assert_eq!(lat.len(), 2);
    assert_eq!(lat[1]["batch"], 32);
    assert!(lat[0]["before"]["median_ms"].as_f64().unwrap() > 0.0);
    let layers = r["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 20); // 19 convs and the classifier
    assert!(r["groups"].as_array().unwrap().len() >= 10);

    // The pruned model reloads with no --arch and gives the accuracy reported.
    let e = json_of(&shears(&[
        "eval",
        s(&out),
        "--data",
        "cifar10",
        "--data-dir",
        s(&data),
        "--limit",
        "500",
        "--json",
    ]));
    assert_eq!(e["result"]["top1"].as_f64().unwrap(), after);
    assert_eq!(e["macs"], r["macs"]["after"]);

    // Replaying the plan writes the same file, byte for byte.
    let again = dir.path().join("again.safetensors");
    json_of(&shears(&[
        "prune",
        s(&model),
        "--arch",
        "resnet20",
        "--plan-in",
        s(&plan),
        "--data",
        "cifar10",
        "--data-dir",
        s(&data),
        "--eval-limit",
        "10",
        "--no-latency",
        "-o",
        s(&again),
        "--json",
    ]));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());

    // The plan is for ResNet-20: ResNet-32 refuses it.
    let o = shears(&[
        "prune",
        "zoo:resnet32",
        "--plan-in",
        s(&plan),
        "--no-latency",
        "-o",
        s(&dir.path().join("x.safetensors")),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("plan was made for graph"));
}

#[test]
fn bad_prune_input_exits_2_naming_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    for (args, want) in [
        (vec!["--criterion", "l1", "--ratio", "1.0"], "--ratio 1"),
        (
            vec!["--criterion", "l1", "--target-macs", "0"],
            "--target-macs 0",
        ),
        (
            vec!["--criterion", "l1", "--speedup", "0.5"],
            "--speedup 0.5",
        ),
        (
            vec!["--criterion", "l1", "--ratio", "0.2", "--ignore", "nope"],
            "\"nope\"",
        ),
        (vec!["--criterion", "bn", "--ratio", "0.2"], "no batch norm"),
        (vec!["--criterion", "taylor", "--ratio", "0.2"], "--data"),
        (vec!["--criterion", "l1"], "how much"),
    ] {
        let mut full = vec!["prune", "zoo:lenet5", "--no-latency", "-o", s(&out)];
        full.extend(args.iter().copied());
        let o = shears(&full);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!out.exists());
    }
}

#[test]
fn info_groups_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let g = json_of(&shears(&["info", "zoo:resnet20", "--groups", "--json"]));
    assert_eq!(g["n_groups"], 14);
    assert_eq!(g["n_prunable"], 12);
    let g1 = &g["groups"][1];
    assert_eq!(g1["root"], "conv1");
    assert_eq!(g1["size"], 16);
    assert_eq!(g1["members"][0]["role"], "out");
    assert_eq!(g["groups"][13]["prunable"], false);
    let text = shears(&["info", "zoo:lenet5", "--groups"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("group 2 (conv2): 64 channels"));

    // Prune LeNet-5 (random inputs for --verify), then export the result.
    let pruned = dir.path().join("lenet.safetensors");
    let r = json_of(&shears(&[
        "prune",
        "zoo:lenet5",
        "--criterion",
        "fpgm",
        "--ratio",
        "0.5",
        "--verify",
        "--no-latency",
        "-o",
        s(&pruned),
        "--json",
    ]));
    assert_eq!(r["verification"]["passed"], true);
    let onnx = dir.path().join("lenet.onnx");
    let copy = dir.path().join("copy.safetensors");
    let e = json_of(&shears(&[
        "export",
        s(&pruned),
        "--onnx",
        s(&onnx),
        "--batch",
        "1",
        "--safetensors",
        s(&copy),
        "--json",
    ]));
    assert_eq!(e["params"], r["params"]["after"]);
    assert!(onnx.exists() && copy.exists());
    let i = json_of(&shears(&["info", s(&onnx), "--arch", "lenet5", "--json"]));
    assert_eq!(i["summary"]["params"], r["params"]["after"]);
    let o = shears(&[
        "export",
        s(&pruned),
        "--batch",
        "2",
        "--safetensors",
        s(&copy),
    ]);
    assert_eq!(o.status.code(), Some(2));
}
