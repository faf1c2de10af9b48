#!/usr/bin/env python3
"""The ONNX matrix (issue 14): every torchvision classification CNN family through shears.

For each family one model is built with random weights (BatchNorm statistics from a few
train-mode passes on random inputs, so they are not the identity), exported to ONNX (opset 17,
the TorchScript exporter, symbolic batch) and put through shears as a new user would:

1. `loads`   - `shears info MODEL.onnx --json` with no `--arch` and no preprocessing flags;
2. `run`     - `shears run` on a random batch equals ONNX Runtime (relative max difference,
               max |a-b| / max |b|, at most 1e-4);
3. `prune`   - `shears prune --criterion l1 --global --target-macs 0.5 --verify` passes;
4. `export`  - the pruned model exported to ONNX runs in ONNX Runtime and equals `shears run`
               on the pruned model (same tolerance).

Each step records its exit code, the first line of its error and its numbers. A step after a
failed one is skipped. Raw JSON per model and the table go to `--out` (markdown) and
`--out`.json. Never needed by the tests; run it with the benchmark venv:

    bench/.venv/bin/python bench/onnx_matrix.py --shears target/release/shears \
        --out docs/results/onnx_matrix.md
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOL = 1e-4

# (family, torchvision constructor, input side). 32x32 (CIFAR size) where the net allows it;
# nets whose downsampling or fixed pools need more get the smallest side that works (AlexNet
# and VGG: their adaptive pools export to ONNX only where the map divides into 6x6 / 7x7).
FAMILIES = [
    ("alexnet", "alexnet", 224),
    ("vgg", "vgg11_bn", 224),
    ("resnet", "resnet18", 32),
    ("resnext", "resnext50_32x4d", 32),
    ("wide_resnet", "wide_resnet50_2", 32),
    ("densenet", "densenet121", 32),
    ("squeezenet", "squeezenet1_1", 32),
    ("googlenet", "googlenet", 32),
    ("inception_v3", "inception_v3", 75),
    ("mobilenet_v2", "mobilenet_v2", 32),
    ("mobilenet_v3", "mobilenet_v3_small", 32),
    ("mnasnet", "mnasnet0_5", 32),
    ("shufflenet_v2", "shufflenet_v2_x0_5", 32),
    ("efficientnet", "efficientnet_b0", 32),
    ("efficientnet_v2", "efficientnet_v2_s", 32),
    ("regnet_x", "regnet_x_400mf", 32),
    ("regnet_y", "regnet_y_400mf", 32),
    ("convnext", "convnext_tiny", 32),
]


def build(ctor: str, side: int, seed: int):
    import torch
    import torchvision

    torch.manual_seed(seed)
    kwargs = {"weights": None}
    if ctor in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)
    m = getattr(torchvision.models, ctor)(**kwargs)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(8, 3, side, side))
    m.eval()
    return m


def export(m, side: int, path: Path):
    import torch

    torch.onnx.export(
        m,
        torch.randn(1, 3, side, side),
        str(path),
        opset_version=17,
        dynamo=False,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
    )


def ort_run(path: Path, x: np.ndarray, threads: int) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: x})[0]


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    denom = max(float(np.max(np.abs(b))), 1e-12)
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) / denom


def shears(exe: str, args: list, timeout: int = 1800) -> dict:
    t0 = time.time()
    p = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)
    out = {"rc": p.returncode, "seconds": round(time.time() - t0, 2)}
    if p.returncode != 0:
        err = [l for l in p.stderr.strip().splitlines() if l.strip()]
        out["error"] = err[-1] if err else "(no message)"
    else:
        try:
            out["json"] = json.loads(p.stdout)
        except json.JSONDecodeError:
            pass
    return out


def one_model(exe: str, family: str, ctor: str, side: int, work: Path, threads: int, seed: int):
    row = {"family": family, "model": ctor, "input": [3, side, side]}
    onnx_path = work / f"{ctor}.onnx"
    try:
        export(build(ctor, side, seed), side, onnx_path)
    except Exception as e:  # the exporter's failure is a row, not a crash
        row["export_error"] = f"{type(e).__name__}: {e}".splitlines()[0]
        return row
    th = ["--threads", str(threads)]

    info = shears(exe, ["info", str(onnx_path), "--json"])
    row["loads"] = info
    if info["rc"] != 0:
        return row

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 3, side, side)).astype(np.float32)
    x_path, y_path = work / "x.npy", work / f"{ctor}.y.npy"
    np.save(x_path, x)
    run = shears(exe, ["run", str(onnx_path), "--input", str(x_path), "--output", str(y_path), *th])
    if run["rc"] == 0:
        run["rel_diff_vs_ort"] = rel_diff(np.load(y_path), ort_run(onnx_path, x, threads))
        run["pass"] = run["rel_diff_vs_ort"] <= TOL
    row["run"] = run

    pruned = work / f"{ctor}.pruned.safetensors"
    prune = shears(
        exe,
        ["prune", str(onnx_path), "--criterion", "l1", "--global", "--target-macs", "0.5",
         "--verify", "--no-latency", "--json", "-o", str(pruned), *th],
    )
    row["prune"] = prune
    if prune["rc"] != 0:
        return row
    pruned_onnx = work / f"{ctor}.pruned.onnx"
    exp = shears(exe, ["export", str(pruned), "--onnx", str(pruned_onnx)])
    if exp["rc"] == 0:
        yp = work / f"{ctor}.pruned.y.npy"
        r2 = shears(exe, ["run", str(pruned), "--input", str(x_path), "--output", str(yp), *th])
        exp["run_rc"] = r2["rc"]
        if r2["rc"] == 0:
            try:
                exp["rel_diff_vs_ort"] = rel_diff(np.load(yp), ort_run(pruned_onnx, x, threads))
            except Exception as e:
                exp["ort_error"] = f"{type(e).__name__}: {e}".splitlines()[0]
                exp["rel_diff_vs_ort"] = float("inf")
            exp["pass"] = exp["rel_diff_vs_ort"] <= TOL
        else:
            exp["error"] = r2.get("error")
    row["export"] = exp
    return row


def mark(step) -> str:
    if step is None:
        return "-"
    if step.get("rc", 1) != 0:
        return "fail"
    return "pass" if step.get("pass", True) else "fail"


def prune_numbers(row) -> str:
    macs = ((row.get("prune") or {}).get("json") or {}).get("macs") or {}
    if macs.get("before") and macs.get("after"):
        return f"{macs['before'] / macs['after']:.2f}x"
    return ""


def first_error(row) -> str:
    if "export_error" in row:
        return "torch export: " + row["export_error"]
    for k in ("loads", "run", "prune", "export"):
        s = row.get(k)
        if s and s.get("rc", 0) != 0:
            return f"{k}: {s.get('error', '')}"
        if s and s.get("pass") is False:
            return f"{k}: rel diff {s.get('rel_diff_vs_ort'):.2e}"
    return ""


def table(rows) -> str:
    lines = [
        "| family | model | input | loads, no --arch | run = ORT | prune --verify | MACs cut | pruned ONNX = ORT | first failure |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = (r.get("run") or {}).get("rel_diff_vs_ort")
        run_cell = mark(r.get("run")) + (f" ({diff:.1e})" if diff is not None else "")
        lines.append(
            f"| {r['family']} | {r['model']} | {r['input'][1]}x{r['input'][2]} | {mark(r.get('loads'))} "
            f"| {run_cell} | {mark(r.get('prune'))} | {prune_numbers(r)} | {mark(r.get('export'))} "
            f"| {first_error(r).replace('|', '/')[:160]} |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shears", default="target/release/shears")
    ap.add_argument("--out", default="docs/results/onnx_matrix.md")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="families to run (default: all)")
    ap.add_argument(
        "--update",
        action="store_true",
        help="keep the rows of families not run from the existing JSON beside --out",
    )
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    fams = [f for f in FAMILIES if not a.only or f[0] in a.only]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for fam, ctor, side in fams:
            print(f"== {fam} ({ctor}, {side}x{side})", file=sys.stderr, flush=True)
            row = one_model(a.shears, fam, ctor, side, Path(d), a.threads, a.seed)
            print(f"   {first_error(row) or 'all steps pass'}", file=sys.stderr, flush=True)
            rows.append(row)
    import onnxruntime

    out = Path(a.out)
    old = Path(str(out) + ".json")
    if a.update and old.exists():
        ran = {r["family"] for r in rows}
        kept = {r["family"]: r for r in json.loads(old.read_text())["rows"] if r["family"] not in ran}
        kept.update({r["family"]: r for r in rows})
        rows = [kept[f[0]] for f in FAMILIES if f[0] in kept]
    meta = {
        "command": "bench/.venv/bin/python bench/onnx_matrix.py " + " ".join(sys.argv[1:]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": a.threads,
        "tolerance": TOL,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(out) + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    full = sum(
        1 for r in rows if all(mark(r.get(k)) == "pass" for k in ("loads", "run", "prune", "export"))
    )
    md = [
        "# ONNX matrix: torchvision CNN families through shears",
        "",
        f"Command: `{meta['command']}` ({meta['date_utc']} UTC, torch {meta['torch']}, "
        f"ONNX Runtime {meta['onnxruntime']}, {a.threads} threads). Raw JSON: `{out.name}.json`.",
        "",
        "Random weights (BN statistics from three train-mode passes), ONNX opset 17 (TorchScript "
        "exporter, symbolic batch). Steps: `shears info` with no `--arch`; `shears run` on 4 "
        f"random images against ONNX Runtime (relative max difference <= {TOL:g}); "
        "`shears prune --criterion l1 --global --target-macs 0.5 --verify`; the pruned model "
        "exported with `shears export --onnx`, run in ONNX Runtime and compared with `shears run` "
        "on the pruned model. A step after a failure is not run (`-`).",
        "",
        f"**{full} of {len(rows)} families pass every step.**",
        "",
        table(rows),
        "",
    ]
    out.write_text("\n".join(md))
    print(f"{full}/{len(rows)} pass all steps; wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
