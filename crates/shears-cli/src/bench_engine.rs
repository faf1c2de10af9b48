//! `shears bench engine`: runs shears' engine workloads and, in the same invocation, the
//! PyTorch reference script, then reports both and their ratios (markdown and JSON).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use shears::bench::{engine, EngineBenchConfig};

use crate::output::print_json;

/// Runs the benchmark; see the module docs.
pub fn run(
    threads: usize,
    iters: usize,
    warmup: usize,
    torch_python: Option<PathBuf>,
    torch_script: PathBuf,
    out: Option<PathBuf>,
    as_json: bool,
) -> Result<()> {
    let cmdline: Vec<String> = std::env::args().collect();
    if !as_json {
        eprintln!(
            "shears engine: {threads} threads, {iters} timed iterations after {warmup} warm-up"
        );
    }
    let ours = engine(&EngineBenchConfig {
        threads,
        batch: 128,
        iters,
        warmup,
    })?;
    let ours_v = serde_json::to_value(&ours)?;
    let theirs: Option<Value> = match &torch_python {
        Some(py) => {
            if !as_json {
                eprintln!("pytorch: {} {}", py.display(), torch_script.display());
            }
            let t = threads.to_string();
            let o = Command::new(py)
                .arg(&torch_script)
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
            Some(
                serde_json::from_str(line)
                    .with_context(|| format!("parsing PyTorch output {line:?}"))?,
            )
        }
        None => None,
    };
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
    let mut rows = Vec::new();
    for (k, label, higher_better) in keys {
        let a = ours_v.get(k).and_then(Value::as_f64);
        let b = theirs
            .as_ref()
            .and_then(|t| t.get(k))
            .and_then(Value::as_f64);
        // Ratio > 1 means shears is better: throughput ours/theirs, times theirs/ours.
        let ratio = match (a, b) {
            (Some(a), Some(b)) if a > 0.0 && b > 0.0 => {
                Some(if higher_better { a / b } else { b / a })
            }
            _ => None,
        };
        rows.push((k, label, a, b, ratio));
    }
    if let Some(path) = &out {
        let mut md = String::new();
        md.push_str("# Engine benchmark: shears against PyTorch (CPU)\n\n");
        md.push_str(&format!(
            "Command (run from the repository root):\n\n```\n{}\n```\n\n",
            cmdline.join(" ")
        ));
        md.push_str(&format!(
            "Same machine, same run, {threads} threads for both; medians of {iters} timed iterations after {warmup} warm-up. \
             Ratio > 1 means shears is better (throughput: shears / PyTorch; time and memory: PyTorch / shears).\n\n"
        ));
        if let Some(t) = &theirs {
            md.push_str(&format!(
                "PyTorch {} (`{}`).\n\n",
                t["version"].as_str().unwrap_or("?"),
                torch_script.display()
            ));
        }
        md.push_str("| workload | shears | PyTorch | ratio |\n|---|---|---|---|\n");
        let f = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
        for (_, label, a, b, r) in &rows {
            md.push_str(&format!(
                "| {label} | {} | {} | {} |\n",
                f(*a),
                f(*b),
                r.map(|x| format!("{x:.2}x")).unwrap_or("-".into())
            ));
        }
        md.push_str(&format!(
            "\nMachine: {} cores, `{}`.\n",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpu_model()
        ));
        std::fs::write(path, md).with_context(|| format!("writing {}", path.display()))?;
    }
    if as_json {
        print_json(
            &json!({"shears": ours_v, "pytorch": theirs, "ratios": rows.iter().map(|(k, _, _, _, r)| (k.to_string(), *r)).collect::<std::collections::BTreeMap<_, _>>()}),
        );
    } else {
        for (_, label, a, b, r) in &rows {
            println!(
                "{label:<48} shears {:>9}  pytorch {:>9}  {}",
                a.map(|x| format!("{x:.1}")).unwrap_or("-".into()),
                b.map(|x| format!("{x:.1}")).unwrap_or("-".into()),
                r.map(|x| format!("{x:.2}x")).unwrap_or_default()
            );
        }
    }
    Ok(())
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
