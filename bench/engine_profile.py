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
    """ONNX node name -> layer key (weight prefix or node name, as shears names nodes), and
    output tensor name -> the key of the node producing it."""
    m = onnx.load(str(model_path), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    key, by_output = {}, {}
    for n in m.graph.node:
        k = n.name
        if len(n.input) > 1 and n.input[1] in inits and n.input[1].endswith(".weight"):
            k = n.input[1][: -len(".weight")]
        key[n.name] = k
        for o in n.output:
            by_output[o] = k
    return key, by_output


def ort_key(name, key, by_output):
    """The layer key of an ONNX Runtime kernel: its node's name, or after the NCHWc layout
    transform (`<output tensor>_nchwc`) the producer of that tensor (for a fused Conv+ReLU,
    the ReLU); ORT's own nodes (layout reorders) keep their names."""
    if name in key:
        return key[name]
    base = name[: -len("_nchwc")] if name.endswith("_nchwc") else name
    return by_output.get(base, key.get(base, name))


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
                k = block(s["node"])
                steps[k] += s["seconds"] * 1e3 / runs
                info.setdefault(k, {})[s["node"]] = s
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
    kernels = defaultdict(list)
    ops = {}
    for ev in trace:
        if ev.get("cat") != "Node" or not ev["name"].endswith("_kernel_time"):
            continue
        node = ev["name"][: -len("_kernel_time")]
        kernels[node].append(ev["dur"] / 1e3)
        ops[node] = ev.get("args", {}).get("op_name", "?")
    # The first (warm-up) run is in the trace too: drop each kernel's first call.
    per = {n: statistics.mean(v[1:] or v) for n, v in kernels.items()}
    return per, ops, statistics.median(walls)


def block(name):
    """The module a layer belongs to, as a dotted path of at most two parts: shears' names
    (`layer1.0.conv1`, from the weight names) and the exporter's scope names
    (`/layer1/layer1.0/conv1/Conv`: the first scope with a dot) both give `layer1.0`; `/conv1/Conv`
    gives `conv1`; ONNX Runtime's layout reorders are one bucket. The two engines fuse
    differently (shears puts a residual add into one conv of a block, ONNX Runtime maybe into
    the other), so the times are compared per block: the sum of its layers on each side."""
    if name.startswith("Reorder"):
        return "(ONNX Runtime layout reorders)"
    if name.startswith("/"):
        scopes = name.strip("/").split("/")[:-1] or [name.strip("/")]
        name = next((c for c in scopes if "." in c), scopes[0])
    return ".".join(name.split(".")[:2])


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

    key, by_output = layer_keys(a.model)
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
        k = block(ort_key(n, key, by_output))
        theirs[k] += ms
        theirs_op.setdefault(k, set()).add(ort_ops[n])
    rows = []
    for k in set(ours) | set(theirs):
        steps = list(info.get(k, {}).values())
        rows.append({
            "block": k,
            "shears_steps": [
                {"node": st["node"], "op": st["op"], "algo": st.get("algo"),
                 "input": st["inputs"][0] if st["inputs"] else None, "output": st["output"],
                 "ms": st["seconds"] * 1e3 / max(st["calls"], 1)}
                for st in steps
            ],
            "ort_ops": sorted(theirs_op.get(k, [])),
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
    print("| block | shears steps (op [algo] input -> output) | ONNX Runtime ops | shears ms "
          "| ORT ms | gap ms |")
    print("|---|---|---|---|---|---|")
    for r in rows[: a.top]:
        desc = "; ".join(
            f"{st['op']}" + (f" [{st['algo']}]" if st["algo"] else "")
            + f" {dims(st['input'])}->{dims(st['output'])}"
            for st in r["shears_steps"]
        )
        print(f"| {r['block']} | {desc or '-'} | {', '.join(r['ort_ops']) or '-'} "
              f"| {r['shears_ms']:.3f} | {r['ort_ms']:.3f} | {r['gap_ms']:+.3f} |")
    print()


if __name__ == "__main__":
    main()
