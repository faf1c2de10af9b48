//! `shears bench engine`: runs shears' engine workloads and, in the same invocation, the
//! PyTorch reference script, then reports both and their ratios (markdown and JSON); the
//! `--onnx` models against ONNX Runtime are in `bench_onnx.rs`.

use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use shears::bench::{engine, EngineBenchConfig};

use crate::args::BenchEngineArgs;
use crate::commands::bad;
use crate::output::print_json;

/// Runs the benchmark; see the module docs.
pub fn run(a: BenchEngineArgs) -> Result<()> {
    anyhow::ensure!(
        a.rounds >= 1,
        "--rounds must be at least 1, got {}",
        a.rounds
    );
    if a.only_onnx && a.onnx.is_empty() {
        return Err(bad("--only-onnx: give the models with --onnx FILE..."));
    }
    let cmdline: Vec<String> = std::env::args().collect();
    let load_before = load_average();
    let builtin = if a.only_onnx {
        None
    } else {
        Some(builtin(&a)?)
    };
    let onnx = if a.onnx.is_empty() {
        None
    } else {
        Some(crate::bench_onnx::run(&a)?)
    };
    let load_after = load_average();
    if let Some(path) = &a.out {
        let mut md = String::new();
        md.push_str("# Engine benchmark: shears against PyTorch and ONNX Runtime (CPU)\n\n");
        md.push_str(&format!(
            "Command (run from the repository root):\n\n```\n{}\n```\n\n",
            cmdline.join(" ")
        ));
        md.push_str(&format!(
            "Load average (1, 5, 15 min) before: {load_before}; after: {load_after}. Machine: {} cores, `{}`.\n\n",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpu_model()
        ));
        if let Some(b) = &builtin {
            md.push_str(&b.md);
        }
        if let Some(o) = &onnx {
            md.push_str(&crate::bench_onnx::markdown(o, &a));
        }
        shears_io::write_atomic(path, |w| w.write_all(md.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        let mut v = builtin.map(|b| b.json).unwrap_or_else(|| json!({}));
        v["onnx"] = serde_json::to_value(&onnx)?;
        v["load_before"] = json!(load_before);
        v["load_after"] = json!(load_after);
        print_json(&v);
    } else {
        if let Some(b) = &builtin {
            print!("{}", b.text);
        }
        if let Some(o) = &onnx {
            print!("{}", crate::bench_onnx::text(o));
        }
    }
    Ok(())
}

/// The ResNet-20 and conv workloads against PyTorch, rendered.
struct Builtin {
    md: String,
    json: Value,
    text: String,
}

/// Runs the ResNet-20 and conv workloads (and the PyTorch script, if given).
fn builtin(a: &BenchEngineArgs) -> Result<Builtin> {
    let (threads, iters, warmup, rounds) = (a.threads, a.iters, a.warmup, a.rounds);
    let (torch_python, torch_script, as_json) = (&a.torch_python, &a.torch_script, a.json);
    if !as_json {
        eprintln!(
            "shears engine: {threads} threads, {rounds} rounds of {iters} timed iterations after {warmup} warm-up"
        );
    }
    let mut ours_runs = Vec::new();
    let mut theirs_runs = Vec::new();
    for round in 0..rounds {
        let ours = engine(&EngineBenchConfig {
            threads,
            batch: 128,
            iters,
            warmup,
        })?;
        ours_runs.push(serde_json::to_value(&ours)?);
        if let Some(py) = torch_python {
            if !as_json {
                eprintln!(
                    "round {}/{rounds}: pytorch {} {}",
                    round + 1,
                    py.display(),
                    torch_script.display()
                );
            }
            theirs_runs.push(torch_round(py, torch_script, threads, iters, warmup)?);
        }
    }
    let ours_v = median_runs(&ours_runs);
    let theirs: Option<Value> = (!theirs_runs.is_empty()).then(|| median_runs(&theirs_runs));
    let keys = [
        (
            "resnet20_infer_img_s",
            "ResNet-20 inference, images/s (batch 128)",
            true,
        ),
        (
            "resnet20_train_img_s",
            "ResNet-20 training step, images/s (batch 128)",
            true,
        ),
        ("conv_fwd_ms", "3x3 conv 128x64x32x32 forward, ms", false),
        ("conv_bwd_ms", "3x3 conv 128x64x32x32 backward, ms", false),
        (
            "peak_rss_mib",
            "peak resident memory of the process, MiB",
            false,
        ),
    ];
    let rows = compare(&keys, &ours_v, theirs.as_ref());
    // Best round per side: on a shared virtual machine the least disturbed run is the closest
    // estimate of what each engine can do; shown beside the medians, never instead of them.
    let ours_best = best_runs(&ours_runs, &keys);
    let theirs_best = (!theirs_runs.is_empty()).then(|| best_runs(&theirs_runs, &keys));
    let best_rows = compare(&keys, &ours_best, theirs_best.as_ref());
    let mut md = String::new();
    {
        md.push_str("## ResNet-20 and one conv layer against PyTorch\n\n");
        md.push_str(&format!(
            "Same machine, same run, {threads} threads for both; {rounds} alternating rounds (shears, then PyTorch), \
             each round the median of {iters} timed iterations after {warmup} warm-up; the table shows the median round \
             (peak memory: the largest). Ratio > 1 means shears is better (throughput: shears / PyTorch; time and memory: \
             PyTorch / shears).\n\n"
        ));
        md.push_str("Every round, as measured:\n\n| round | side | ");
        for (_, label, _) in keys {
            md.push_str(&format!("{label} | "));
        }
        md.push_str("\n|---|---|");
        md.push_str(&"---|".repeat(keys.len()));
        md.push('\n');
        for (i, (side, runs)) in [("shears", &ours_runs), ("PyTorch", &theirs_runs)]
            .iter()
            .flat_map(|(side, runs)| runs.iter().enumerate().map(move |(i, r)| (i, (side, r))))
        {
            md.push_str(&format!("| {} | {side} | ", i + 1));
            for (k, _, _) in keys {
                let v = runs.get(k).and_then(Value::as_f64);
                md.push_str(&format!(
                    "{} | ",
                    v.map(|x| format!("{x:.1}")).unwrap_or("-".into())
                ));
            }
            md.push('\n');
        }
        md.push('\n');
        if let Some(t) = &theirs {
            md.push_str(&format!(
                "PyTorch {} (`{}`).\n\n",
                t["version"].as_str().unwrap_or("?"),
                torch_script.display()
            ));
        }
        md.push_str(
            "Median round:\n\n| workload | shears | PyTorch | ratio |\n|---|---|---|---|\n",
        );
        let f = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
        for (title, rows) in [("", &rows), ("Best round of each side (fastest; peak memory still the largest):\n\n| workload | shears | PyTorch | ratio |\n|---|---|---|---|\n", &best_rows)] {
            md.push_str(if title.is_empty() { "" } else { "\n" });
            md.push_str(title);
            for (_, label, a, b, r) in rows {
                md.push_str(&format!(
                    "| {label} | {} | {} | {} |\n",
                    f(*a),
                    f(*b),
                    r.map(|x| format!("{x:.2}x")).unwrap_or("-".into())
                ));
            }
        }
        md.push('\n');
    }
    let json = json!({
            "shears": ours_v,
            "pytorch": theirs,
            "ratios": rows.iter().map(|(k, _, _, _, r)| (k.to_string(), *r)).collect::<std::collections::BTreeMap<_, _>>(),
            "shears_best": ours_best,
            "pytorch_best": theirs_best,
            "ratios_best": best_rows.iter().map(|(k, _, _, _, r)| (k.to_string(), *r)).collect::<std::collections::BTreeMap<_, _>>(),
            "shears_rounds": ours_runs,
            "pytorch_rounds": theirs_runs,
    });
    let mut text = String::new();
    {
        for (_, label, a, b, r) in rows.iter().chain(&best_rows) {
            text.push_str(&format!(
                "{label:<48} shears {:>9}  pytorch {:>9}  {}\n",
                a.map(|x| format!("{x:.1}")).unwrap_or("-".into()),
                b.map(|x| format!("{x:.1}")).unwrap_or("-".into()),
                r.map(|x| format!("{x:.2}x")).unwrap_or_default()
            ));
        }
    }
    Ok(Builtin { md, json, text })
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into())
}

/// One run of the PyTorch reference script; its last stdout line is a JSON object.
fn torch_round(
    py: &std::path::Path,
    script: &std::path::Path,
    threads: usize,
    iters: usize,
    warmup: usize,
) -> Result<Value> {
    let t = threads.to_string();
    let o = Command::new(py)
        .arg(script)
        .args([
            "--threads",
            &t,
            "--iters",
            &iters.to_string(),
            "--warmup",
            &warmup.to_string(),
        ])
        .env("OMP_NUM_THREADS", &t)
        .env("MKL_NUM_THREADS", &t)
        .output()
        .with_context(|| format!("running {}", py.display()))?;
    if !o.status.success() {
        anyhow::bail!(
            "the PyTorch reference failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let s = String::from_utf8_lossy(&o.stdout);
    let line = s.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("parsing PyTorch output {line:?}"))
}

/// Per numeric key, the median over rounds (peak memory: the maximum); other keys from the
/// first round.
fn median_runs(runs: &[Value]) -> Value {
    let mut out = runs[0].clone();
    if let Some(obj) = out.as_object_mut() {
        for (k, v) in obj.iter_mut() {
            let mut xs: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.get(k).and_then(Value::as_f64))
                .collect();
            if xs.len() != runs.len() || !v.is_number() {
                continue;
            }
            xs.sort_by(f64::total_cmp);
            let m = if k.contains("rss") {
                xs[xs.len() - 1]
            } else {
                xs[xs.len() / 2]
            };
            if let Some(n) = serde_json::Number::from_f64(m) {
                *v = Value::Number(n);
            }
        }
    }
    out
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// A benchmark key: JSON field, label, whether higher is better.
type Key = (&'static str, &'static str, bool);
/// A compared row: key, label, shears, PyTorch, ratio (> 1: shears better).
type Row = (
    &'static str,
    &'static str,
    Option<f64>,
    Option<f64>,
    Option<f64>,
);

fn compare(keys: &[Key], ours: &Value, theirs: Option<&Value>) -> Vec<Row> {
    keys.iter()
        .map(|&(k, label, higher_better)| {
            let a = ours.get(k).and_then(Value::as_f64);
            let b = theirs.and_then(|t| t.get(k)).and_then(Value::as_f64);
            // Ratio > 1 means shears is better: throughput ours/theirs, times theirs/ours.
            let ratio = match (a, b) {
                (Some(a), Some(b)) if a > 0.0 && b > 0.0 => {
                    Some(if higher_better { a / b } else { b / a })
                }
                _ => None,
            };
            (k, label, a, b, ratio)
        })
        .collect()
}

/// Per key, the best round (highest throughput, lowest time); peak memory the largest.
fn best_runs(runs: &[Value], keys: &[Key]) -> Value {
    let mut out = serde_json::Map::new();
    for &(k, _, higher_better) in keys {
        let xs = runs.iter().filter_map(|r| r.get(k).and_then(Value::as_f64));
        let v = if higher_better || k.contains("rss") {
            xs.fold(f64::NAN, f64::max)
        } else {
            xs.fold(f64::NAN, f64::min)
        };
        if let Some(n) = serde_json::Number::from_f64(v) {
            out.insert(k.into(), Value::Number(n));
        }
    }
    Value::Object(out)
}
