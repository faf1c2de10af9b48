#!/usr/bin/env python3
"""Per-layer profile of one ONNX model: shears' engine (`shears run --profile --json`) beside
ONNX Runtime's own profiler (`SessionOptions.enable_profiling`), on the same file, batch and
threads, joined by layer, so every gap is named (issue 16).

shears' steps are named by their first node (a Conv for a fused Conv+BN+ReLU); ONNX Runtime's
kernels by their (possibly fused) node's ONNX name. Both are mapped to one layer key: the ONNX
node name, or for a node whose weight initializer is `<prefix>.weight`, that prefix (the name
shears gives it). Rows with no partner on the other side are ONNX Runtime's own layout
conversions or nodes one side fused into another.

    bench/.venv/bin/python bench/engine_profile.py --shears target/release/shears \
        --model /tmp/engine_models/resnet18.onnx --batch 128 --threads 2 --json-out P.json

Prints a markdown table (largest gap first) and writes the raw JSON. Never needed by the tests.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def layer_keys(model_path):
    """ONNX node name -> layer key (weight prefix or node name), and op type per key."""
    m = onnx.load(str(model_path), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    key, op = {}, {}
    for n in m.graph.node:
        k = n.name
        if len(n.input) > 1 and n.input[1] in inits and n.input[1].endswith(".weight"):
            k = n.input[1][: -len(".weight")]
        key[n.name] = k
        op[k] = n.op_type
    return key, op


def shears_profile(exe, model, x_path, batch, threads, runs):
    """Per layer key: mean ms per pass over `runs` profiled passes (after one warm-up)."""
    with tempfile.TemporaryDirectory() as d:
        y = Path(d) / "y.npy"
        cmd = [exe, "run", str(model), "--input", str(x_path), "-o", str(y), "--batch",
               str(batch), "--threads", str(threads), "--profile", "--json"]
        steps = defaultdict(float)
        info = {}
        for _ in range(runs):
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            p = json.loads(out)["profile"]
            for s in p["steps"]:
                steps[s["node"]] += s["seconds"] * 1e3 / runs
                info[s["node"]] = s
    return steps, info


def ort_profile(model, x, threads, runs):
    """Per ONNX node name: mean kernel ms per pass, its op, and the total wall ms per pass."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as d:
        so.profile_file_prefix = str(Path(d) / "ort")
        sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        sess.run(None, {name: x})
        walls = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, {name: x})
            walls.append((time.perf_counter() - t0) * 1e3)
        trace = json.load(open(sess.end_profiling()))
    kernels = defaultdict(float)
    ops = {}
    counts = defaultdict(int)
    for ev in trace:
        if ev.get("cat") != "Node" or not ev["name"].endswith("_kernel_time"):
            continue
        node = ev["name"][: -len("_kernel_time")]
        kernels[node] += ev["dur"] / 1e3
        counts[node] += 1
        ops[node] = ev.get("args", {}).get("op_name", "?")
    # The first (warm-up) run is in the trace too: average over all runs seen.
    per = {n: kernels[n] / counts[n] for n in kernels}
    return per, ops, statistics.median(walls)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shears", required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()

    key, onnx_op = layer_keys(a.model)
    sess = ort.InferenceSession(str(a.model), providers=["CPUExecutionProvider"])
    shape = [a.batch] + list(sess.get_inputs()[0].shape[1:])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        xp = Path(d) / "x.npy"
        np.save(xp, x)
        load_before = open("/proc/loadavg").read().split()[:3]
        ours, info = shears_profile(a.shears, a.model, xp, a.batch, a.threads, a.runs)
        theirs_raw, ort_ops, ort_wall = ort_profile(a.model, x, a.threads, a.runs)
        load_after = open("/proc/loadavg").read().split()[:3]

    theirs = defaultdict(float)
    theirs_op = {}
    for n, ms in theirs_raw.items():
        k = key.get(n, n)
        theirs[k] += ms
        theirs_op[k] = ort_ops[n]
    rows = []
    for k in set(ours) | set(theirs):
        s = info.get(k)
        rows.append({
            "layer": k,
            "shears_op": s["op"] + (f" [{s['algo']}]" if s and s.get("algo") else "") if s else None,
            "ort_op": theirs_op.get(k),
            "output": s["output"] if s else None,
            "input": s["inputs"][0] if s and s["inputs"] else None,
            "shears_ms": ours.get(k, 0.0),
            "ort_ms": theirs.get(k, 0.0),
        })
    for r in rows:
        r["gap_ms"] = r["shears_ms"] - r["ort_ms"]
    rows.sort(key=lambda r: -r["gap_ms"])
    tot_s = sum(ours.values())
    tot_o = sum(theirs.values())
    result = {
        "model": str(a.model), "batch": a.batch, "threads": a.threads, "runs": a.runs,
        "ort_version": ort.__version__, "load_before": load_before, "load_after": load_after,
        "shears_steps_ms": tot_s, "ort_kernels_ms": tot_o, "ort_wall_ms": ort_wall, "rows": rows,
    }
    if a.json_out:
        a.json_out.write_text(json.dumps(result, indent=1))
    dims = lambda v: "x".join(map(str, v)) if v else ""
    print(f"### {a.model.stem}, batch {a.batch}, {a.threads} threads\n")
    print(f"shears steps {tot_s:.2f} ms per pass; ONNX Runtime {ort.__version__} kernels "
          f"{tot_o:.2f} ms (wall {ort_wall:.2f} ms); load {' '.join(load_before)} -> "
          f"{' '.join(load_after)}. Largest gaps first (gap = shears ms - ONNX Runtime ms):\n")
    print("| layer | shears op | ONNX Runtime op | input | output | shears ms | ORT ms | gap ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows[: a.top]:
        print(f"| {r['layer']} | {r['shears_op'] or '-'} | {r['ort_op'] or '-'} | {dims(r['input'])} "
              f"| {dims(r['output'])} | {r['shears_ms']:.3f} | {r['ort_ms']:.3f} | {r['gap_ms']:+.3f} |")
    print()


if __name__ == "__main__":
    main()
