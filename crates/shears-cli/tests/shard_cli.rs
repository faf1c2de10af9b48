//! Issue 19: `analyze sweep`/`sbpf`/`lsa` as shards (`--shard I/N`, Slurm array and Kubernetes
//! Indexed Job variables) and `analyze merge`: the merged shards write exactly what the
//! one-machine run writes; bad shard values and broken shard sets exit 2 naming the value or
//! the file.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{data, fails_with_2, json_of, model};
use serde_json::Value;

const SHARD_VARS: [&str; 6] = [
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_STEP",
    "JOB_COMPLETION_INDEX",
];

/// Runs the binary with exactly the shard variables in `env` (none inherited).
fn shears_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shears"));
    for v in SHARD_VARS {
        c.env_remove(v);
    }
    c.args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

fn sweep_args(out: &Path) -> Vec<String> {
    let mut v: Vec<String> = [
        "analyze",
        "sweep",
        &model("resnet20.safetensors"),
        "--arch",
        "resnet20",
        "--data",
        "cifar10",
        "--data-dir",
        &data(),
        // The test split is one file: the fastest to load (what is measured does not matter).
        "--split",
        "test",
        "--images",
        "40",
        "--batch",
        "20",
        "--ratios",
        "0.25,0.5",
        "--max-loss-increase",
        "0.1",
        "--speedup",
        "1.2",
        "--json",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(out.to_str().unwrap().to_string());
    v
}

fn sbpf_args(out: &Path) -> Vec<String> {
    let mut v: Vec<String> = [
        "analyze",
        "sbpf",
        &model("mnist_lenet5_clntrained.safetensors"),
        "--arch",
        "lenet5",
        "--data",
        "mnist",
        "--data-dir",
        &data(),
        "--split",
        "test",
        "--images",
        "50",
        "--seeds",
        "2",
        "--delta",
        "0.25,0.5",
        "--speedup",
        "1.5",
        "--json",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(out.to_str().unwrap().to_string());
    v
}

fn run(args: &[String], extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
    a.extend_from_slice(extra);
    shears_env(&a, env)
}

/// `v` without the fields that measure the run (seconds, work counters, load average).
fn without_timings(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for k in [
                    "seconds",
                    "feature_seconds",
                    "stats",
                    "load_average",
                    "timing",
                    "files",
                ] {
                    m.remove(k);
                }
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

/// Every file `one` holds (but the probe cache) is in `merged`: the report JSON equal apart
/// from timings, the rest byte for byte. Returns the files compared.
fn assert_same_outputs(one: &Path, merged: &Path, report: &str) -> Vec<String> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(one).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if !e.path().is_file() || name == "sweep_cache.json" {
            continue;
        }
        let a = std::fs::read(e.path()).unwrap();
        let b = std::fs::read(merged.join(&name))
            .unwrap_or_else(|_| panic!("{name} is missing from the merged output"));
        if name == report {
            let (va, vb): (Value, Value) = (
                serde_json::from_slice(&a).unwrap(),
                serde_json::from_slice(&b).unwrap(),
            );
            assert_eq!(without_timings(va), without_timings(vb), "{name}");
        } else {
            assert!(a == b, "{name} differs");
        }
        names.push(name);
    }
    names.sort();
    names
}

#[test]
fn sweep_shards_merge_to_the_unsharded_run() {
    let dir = tempfile::tempdir().unwrap();
    let (one, sharded) = (dir.path().join("one"), dir.path().join("sharded"));
    json_of(&run(&sweep_args(&one), &[], &[]));
    let mut owned = 0;
    let mut total = 0;
    for i in 0..3 {
        let spec = format!("{i}/3");
        let v = json_of(&run(&sweep_args(&sharded), &["--shard", &spec], &[]));
        assert_eq!(v["shard"]["choice"]["source"], "flag", "{v}");
        owned += v["shard"]["probes"].as_u64().unwrap();
        total = v["shard"]["probes_total"].as_u64().unwrap();
        assert!(sharded
            .join(format!("shard-{i:04}-of-0003"))
            .join("sweep_cache.json")
            .is_file());
    }
    assert_eq!(owned, total, "the shards' probes cover the grid once");
    // A shard's cache is its own.
    let cache = dir.path().join("shared_cache.json");
    fails_with_2(
        &run(
            &sweep_args(&sharded),
            &["--shard", "0/3", "--cache", cache.to_str().unwrap()],
            &[],
        ),
        "--cache",
    );
    let v = json_of(&shears_env(
        &["analyze", "merge", sharded.to_str().unwrap(), "--json"],
        &[],
    ));
    assert_eq!(v["result"]["complete"], true);
    let files = assert_same_outputs(&one, &sharded, "sweep.json");
    for f in [
        "ratios_loss.json",
        "ratios_macs.json",
        "sweep.csv",
        "sweep.json",
    ] {
        assert!(files.contains(&f.to_string()), "{files:?}");
    }
    assert!(files.iter().any(|f| f.ends_with(".svg")), "{files:?}");
    // A rerun of a finished shard resumes from its cache: nothing computed again.
    let v = json_of(&run(&sweep_args(&sharded), &["--shard", "1/3"], &[]));
    let rec: Value =
        serde_json::from_str(&std::fs::read_to_string(v["record"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(
        rec["payload"]["result"]["computed"], 0,
        "{}",
        rec["payload"]["result"]
    );
}

/// SBPF shards taken from a Slurm array's variables merge to the one-machine analysis,
/// allocation and ratios included.
#[test]
fn sbpf_slurm_shards_merge_to_the_unsharded_run() {
    let dir = tempfile::tempdir().unwrap();
    let (one, sharded) = (dir.path().join("one"), dir.path().join("sharded"));
    json_of(&run(&sbpf_args(&one), &[], &[]));
    // An array 1-5:2 has tasks 1, 3, 5.
    for id in ["1", "3", "5"] {
        let env = [
            ("SLURM_ARRAY_TASK_ID", id),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "5"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
        ];
        let v = json_of(&run(&sbpf_args(&sharded), &[], &env));
        assert_eq!(v["shard"]["choice"]["source"], "slurm", "{v}");
        assert_eq!(v["shard"]["choice"]["shard"]["count"], 3);
        assert!(
            v["shard"]["choice"]["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("SLURM_ARRAY_TASK_ID={id}")),
            "{v}"
        );
    }
    json_of(&shears_env(
        &["analyze", "merge", sharded.to_str().unwrap(), "--json"],
        &[],
    ));
    let files = assert_same_outputs(&one, &sharded, "sbpf.json");
    assert!(files.contains(&"ratios.json".to_string()), "{files:?}");
}

#[test]
fn kubernetes_index_and_shard_counts_are_honoured_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k8s");
    let v = json_of(&run(
        &sbpf_args(&out),
        &["--shards", "4"],
        &[("JOB_COMPLETION_INDEX", "2")],
    ));
    assert_eq!(v["shard"]["choice"]["source"], "kubernetes", "{v}");
    assert_eq!(v["shard"]["choice"]["shard"]["index"], 2);
    assert!(out.join("shard-0002-of-0004").join("shard.json").is_file());
    // The Slurm count: SLURM_ARRAY_TASK_COUNT.
    let v = json_of(&run(
        &sbpf_args(&out),
        &[],
        &[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ],
    ));
    assert_eq!(v["shard"]["choice"]["shard"]["index"], 3);
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let bad: Vec<Case> = vec![
        (vec!["--shard", "4/4"], vec![], "4/4"),
        (vec!["--shard", "0/0"], vec![], "0/0"),
        (vec!["--shard", "one/4"], vec![], "one/4"),
        (
            vec![],
            vec![("JOB_COMPLETION_INDEX", "1")],
            "JOB_COMPLETION_INDEX",
        ),
        (
            vec!["--shards", "4"],
            vec![("JOB_COMPLETION_INDEX", "4")],
            "JOB_COMPLETION_INDEX=\"4\"",
        ),
        (
            vec!["--shards", "0"],
            vec![("JOB_COMPLETION_INDEX", "0")],
            "--shards \"0\"",
        ),
        (
            vec![],
            vec![
                ("SLURM_ARRAY_TASK_ID", "4"),
                ("SLURM_ARRAY_TASK_COUNT", "4"),
            ],
            "SLURM_ARRAY_TASK_ID=\"4\"",
        ),
        (
            vec![],
            vec![("SLURM_ARRAY_TASK_ID", "x1")],
            "SLURM_ARRAY_TASK_ID=\"x1\"",
        ),
        (vec!["--shards", "3"], vec![], "--shards \"3\""),
    ];
    for (flags, env, needle) in bad {
        fails_with_2(&run(&sbpf_args(&out), &flags, &env), needle);
    }
}

#[test]
fn merge_refuses_missing_duplicate_and_mismatched_shards_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let sharded = dir.path().join("sharded");
    for i in 0..2 {
        let spec = format!("{i}/2");
        json_of(&run(&sweep_args(&sharded), &["--shard", &spec], &[]));
    }
    let s = sharded.to_str().unwrap();
    // Missing: only shard 0's directory given.
    let s0 = sharded.join("shard-0000-of-0002");
    let out = dir.path().join("merged");
    let o = out.to_str().unwrap();
    fails_with_2(
        &shears_env(&["analyze", "merge", s0.to_str().unwrap(), "--out", o], &[]),
        "shard 1/2 is missing",
    );
    // Duplicated: shard 0 given twice (its directory and a copy of it).
    let copy = dir.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(s0.join("shard.json"), copy.join("shard.json")).unwrap();
    fails_with_2(
        &shears_env(
            &["analyze", "merge", s, copy.to_str().unwrap(), "--out", o],
            &[],
        ),
        &copy.join("shard.json").display().to_string(),
    );
    // Mismatched settings: shard 1 swept other ratios.
    let other = dir.path().join("other");
    let mut args = sweep_args(&other);
    let at = args.iter().position(|a| a == "0.25,0.5").unwrap();
    args[at] = "0.25,0.75".into();
    json_of(&run(&args, &["--shard", "1/2"], &[]));
    let o1 = other.join("shard-0001-of-0002");
    let e = shears_env(
        &[
            "analyze",
            "merge",
            s0.to_str().unwrap(),
            o1.to_str().unwrap(),
            "--out",
            o,
        ],
        &[],
    );
    fails_with_2(&e, &o1.join("shard.json").display().to_string());
    fails_with_2(&e, "ratio");
    // Another shard count.
    let three = dir.path().join("three");
    json_of(&run(&sweep_args(&three), &["--shard", "1/3"], &[]));
    let t1 = three.join("shard-0001-of-0003");
    fails_with_2(
        &shears_env(
            &[
                "analyze",
                "merge",
                s0.to_str().unwrap(),
                t1.to_str().unwrap(),
                "--out",
                o,
            ],
            &[],
        ),
        "shard_count",
    );
    // Not a shard file.
    std::fs::write(copy.join("shard.json"), "{}").unwrap();
    fails_with_2(
        &shears_env(
            &["analyze", "merge", copy.to_str().unwrap(), "--out", o],
            &[],
        ),
        "not a shears shard file",
    );
    // The complete set still merges.
    json_of(&shears_env(&["analyze", "merge", s, "--json"], &[]));
}

/// LSA study shards taken from a Kubernetes Indexed Job's index merge to the one-machine study
/// (grid, summaries, plots).
#[test]
fn lsa_kubernetes_shards_merge_to_the_unsharded_run() {
    let dir = tempfile::tempdir().unwrap();
    let (one, sharded) = (dir.path().join("one"), dir.path().join("sharded"));
    let lenet = model("mnist_lenet5_clntrained.safetensors");
    let d = data();
    let args = |out: &Path| -> Vec<String> {
        [
            "analyze",
            "lsa",
            &lenet,
            "--arch",
            "lenet5",
            "--data",
            "mnist",
            "--data-dir",
            &d,
            "--train-images",
            "200",
            "--val-images",
            "100",
            "--test-images",
            "100",
            "--lsa-samples",
            "50",
            "--p",
            "1,inf",
            "--ratios",
            "0.2,0.5",
            "--seeds",
            "2",
            "--epochs",
            "2",
            "--threads",
            "1",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    json_of(&run(&args(&one), &[], &[]));
    let mut owned = 0;
    for i in ["0", "1", "2"] {
        let v = json_of(&run(
            &args(&sharded),
            &["--shards", "3"],
            &[("JOB_COMPLETION_INDEX", i)],
        ));
        assert_eq!(v["analysis"], "lsa");
        assert_eq!(v["shard"]["choice"]["source"], "kubernetes", "{v}");
        owned += v["shard"]["probes"].as_u64().unwrap();
    }
    // 2 seeds x (1 unpruned + 4 selections x 2 ratios).
    assert_eq!(owned, 18);
    json_of(&shears_env(
        &["analyze", "merge", sharded.to_str().unwrap(), "--json"],
        &[],
    ));
    let files = assert_same_outputs(&one, &sharded, "lsa.json");
    assert_eq!(files.len(), 5, "{files:?}");
}
