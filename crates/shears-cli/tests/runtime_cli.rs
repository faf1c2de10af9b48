//! `shears prune --runtime ...` through the built binary: a missing ONNX Runtime is bad input
//! naming what was looked for, and (with a library) the report names the runtime and gives
//! the speed-up at batch 1 and at --latency-batch.

use std::process::{Command, Output};

use serde_json::Value;

fn shears(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shears"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("the shears binary runs")
}

fn prune_lenet(extra: &[&str], env: &[(&str, &str)]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.safetensors");
    let mut args = vec![
        "prune",
        "zoo:lenet5",
        "--criterion",
        "l1",
        "--ratio",
        "0.5",
        "--threads",
        "1",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (shears(&args, env), dir)
}

#[test]
fn a_missing_ort_library_exits_2_naming_the_path() {
    let (o, _d) = prune_lenet(
        &[
            "--runtime",
            "onnxruntime",
            "--ort-lib",
            "/nonexistent/libonnxruntime.so",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent/libonnxruntime.so"), "{err}");
    assert!(err.contains("--ort-lib"), "{err}");
    // The same through the environment variable.
    let (o, _d) = prune_lenet(
        &["--runtime", "onnxruntime"],
        &[("ORT_DYLIB_PATH", "/nonexistent/env/libonnxruntime.so")],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent/env/libonnxruntime.so"), "{err}");
    assert!(err.contains("ORT_DYLIB_PATH"), "{err}");
}

#[test]
fn a_file_that_is_not_a_library_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not a shared library").unwrap();
    let (o, _d) = prune_lenet(
        &[
            "--runtime",
            "onnxruntime",
            "--ort-lib",
            fake.to_str().unwrap(),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(fake.to_str().unwrap()), "{err}");
}

#[test]
fn shears_runtime_reports_batch_1_and_the_latency_batch() {
    let (o, _d) = prune_lenet(
        &["--latency-budget", "0.05", "--latency-batch", "8", "--json"],
        &[],
    );
    let r: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(r["runtime"]["name"], "shears");
    assert_eq!(r["runtime"]["threads"], 1);
    let lat = r["latency"].as_array().unwrap();
    let batches: Vec<u64> = lat.iter().map(|l| l["batch"].as_u64().unwrap()).collect();
    assert_eq!(batches, [1, 8]);
    for l in lat {
        assert!(l["before"]["iters"].as_u64().unwrap() >= 3);
        assert!(l["speedup"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn onnxruntime_runtime_reports_its_version_and_speedups() {
    let required = std::env::var_os("SHEARS_ORT_REQUIRED").is_some_and(|v| !v.is_empty());
    if std::env::var_os("ORT_DYLIB_PATH").is_none() && !required {
        eprintln!("skipped: ORT_DYLIB_PATH is not set (no ONNX Runtime library to test)");
        return;
    }
    let (o, _d) = prune_lenet(
        &[
            "--runtime",
            "onnxruntime",
            "--latency-budget",
            "0.05",
            "--verify",
            "--json",
        ],
        &[],
    );
    let r: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(r["runtime"]["name"], "onnxruntime");
    assert!(r["runtime"]["version"].as_str().unwrap().starts_with("1."));
    assert!(r["runtime"]["library"].is_string());
    let lat = r["latency"].as_array().unwrap();
    assert_eq!(lat.len(), 2);
    assert_eq!(lat[1]["batch"], 32);
}

fn prune_lenet_latency(extra: &[&str]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.safetensors");
    let cache = dir.path().join("cache");
    let mut args = vec![
        "prune",
        "zoo:lenet5",
        "--criterion",
        "l1",
        "--threads",
        "1",
        "--target-latency",
        "0.6",
        "--latency-budget",
        "0.05",
        "--table-budget",
        "0.002",
        "--latency-batch",
        "4",
        "--latency-cache",
        cache.to_str().unwrap(),
        "--json",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (shears(&args, &[]), dir)
}

/// `--target-latency` is steered on measurements: every step is a pruned model timed against
/// the original at batch 1 and --latency-batch, the reported step is the closest of them, and
/// the knob of each way (`tables`, `uniform`, `macs`) is recorded.
#[test]
fn target_latency_is_steered_on_measured_steps() {
    for via in ["tables", "uniform", "macs"] {
        let (o, _d) = prune_lenet_latency(&["--latency-via", via, "--latency-steps", "3"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{via}: {err}");
        let r: Value = serde_json::from_slice(&o.stdout).unwrap();
        let st = &r["latency_target"]["steering"];
        assert_eq!(st["by"], via);
        assert_eq!(st["keep"], 0.6);
        let steps = st["steps"].as_array().unwrap();
        assert!((1..=3).contains(&steps.len()), "{via}: {st}");
        let err_of = |s: &Value| (s["fraction"].as_f64().unwrap() / 0.6 - 1.0).abs();
        let chosen = &steps[st["chosen"].as_u64().unwrap() as usize];
        for s in steps {
            let batches: Vec<u64> = s["measured"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m[0].as_u64().unwrap())
                .collect();
            assert_eq!(batches, [1, 4], "{via}");
            assert!(err_of(chosen) <= err_of(s), "{via}: {st}");
        }
        assert_eq!(st["met"], err_of(chosen) <= 0.05, "{via}: {st}");
        assert_eq!(
            r["latency_target"]["allocation"].is_object(),
            via == "tables",
            "{via}"
        );
        // The model kept is the chosen step's: fewer MACs than the original.
        assert!(
            r["macs"]["kept"].as_f64().unwrap() < 1.0,
            "{via}: {}",
            r["macs"]
        );
    }
}

#[test]
fn bad_steering_settings_exit_2() {
    for (flag, value) in [("--latency-tolerance", "0"), ("--latency-steps", "0")] {
        let (o, _d) = prune_lenet_latency(&[flag, value]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(flag), "{err}");
    }
}
