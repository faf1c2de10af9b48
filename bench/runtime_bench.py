#!/usr/bin/env python3
"""Issue 15 benchmark: pruned models in ONNX Runtime (`docs/results/runtime.md`).

Two parts, both writing raw JSON under --out (a step whose JSON exists is not redone):

`latency` - for ResNet-56 (the shared trained weights) and torchvision CNNs (random weights,
BN statistics from three training-mode passes, exported to ONNX at 32x32 like
`bench/onnx_matrix.py`), `shears prune --runtime onnxruntime` with
  macs05     --global --target-macs 0.5            (the never-slower guard on)
  round16    --global --target-macs 0.5 --round-to 16
  lat05      --target-latency 0.5                   (tables, steered on measurements)
each exported to ONNX, then one timing run per model in the onnxruntime Python package (the
same 1.32 library), 2 intra-op threads: every pruned model against the original, one pair of
sessions at a time, in alternating warm blocks, --budget seconds each per batch size, batch 1
and 32, median and minimum. For ResNet-56 the run also times Torch-Pruning's pruned ResNet-56
(against its own export of the original, which is also timed against ours) (`bench/torch_prune.py --target-macs 0.5
--onnx-out`, its own original exported beside it).

`accuracy` - ResNet-56 and ResNet-20 (trained, CIFAR-10) at equal measured latency: the same
`--target-latency` (--acc-keep, default 0.7) reached three ways (`--latency-via tables`, `uniform`, `macs --global
--round-to 16`), L1 scores; CIFAR-10 test accuracy (10,000 images) right after pruning and
after CASM (gradient variant, 1,000 training samples, lr 3e-3 as chosen on the validation
split in `docs/results/protocol.md`, seeds 0..S-1); the pruned models' latency is timed in
the same alternating ORT run as the original.

    bench/.venv/bin/python bench/runtime_bench.py --shears target/release/shears \
        --ort-lib "$ORT_DYLIB_PATH" --part latency --out docs/results/runtime
"""

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TORCHVISION = ["resnet18", "mnasnet0_5", "densenet121", "squeezenet1_1", "mobilenet_v2",
               "efficientnet_b0", "regnet_x_400mf"]
CONFIGS = {
    "macs05": ["--global", "--target-macs", "0.5"],
    "round16": ["--global", "--target-macs", "0.5", "--round-to", "16"],
    "lat05": ["--target-latency", "0.5"],
}
VIA = {
    "tables": ["--latency-via", "tables"],
    "uniform": ["--latency-via", "uniform"],
    "round16": ["--latency-via", "macs", "--global", "--round-to", "16"],
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def cached_json(path: Path, make):
    if path.exists():
        return json.loads(path.read_text())
    v = make()
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(v, indent=1))
    os.replace(tmp, path)
    return v


def sh(args, timeout=3600):
    t = time.time()
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    out = {"cmd": " ".join(map(str, args)), "rc": p.returncode,
           "seconds": round(time.time() - t, 1)}
    if p.returncode != 0:
        out["error"] = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "?"
        log("  FAILED:", out["error"])
        return out
    try:
        out["json"] = json.loads(p.stdout)
    except json.JSONDecodeError:
        pass
    out["stderr_tail"] = p.stderr.strip().splitlines()[-12:]
    return out


def ort_session(path, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def time_models(paths: dict, side: int, batches, budget: float, threads: int):
    """Median ms per model and batch: every model in alternating warm blocks of about a tenth
    of the budget, until each has used the budget (at least 5 passes)."""
    sess = {k: ort_session(p, threads) for k, p in paths.items()}
    out = {}
    rng = np.random.default_rng(0)
    for b in batches:
        x = rng.uniform(-1, 1, (b, 3, side, side)).astype(np.float32)
        runs = {}
        for k, s in sess.items():
            name = s.get_inputs()[0].name
            runs[k] = (lambda s=s, name=name: s.run(None, {name: x}))
            for _ in range(2):
                runs[k]()
        # Block size from one timed pass.
        block = {}
        for k, r in runs.items():
            t = time.perf_counter()
            r()
            dt = time.perf_counter() - t
            block[k] = max(1, min(50, int(0.1 * budget / max(dt, 1e-6))))
        ts = {k: [] for k in runs}
        while not all(sum(v) >= budget and len(v) >= 5 for v in ts.values()):
            for k, r in runs.items():
                if sum(ts[k]) >= budget and len(ts[k]) >= 5:
                    continue
                r()
                for _ in range(block[k]):
                    t = time.perf_counter()
                    r()
                    ts[k].append(time.perf_counter() - t)
        out[str(b)] = {k: {"median_ms": 1e3 * statistics.median(v),
                           "min_ms": 1e3 * min(v), "passes": len(v)} for k, v in ts.items()}
    return out


def time_pairs(paths: dict, side: int, batches, budget: float, threads: int,
               baseline="original"):
    """Each model against the baseline, one pair at a time (only those two sessions open, as
    a deployment has one: idle sessions' spinning worker threads would disturb the timed one),
    in alternating warm blocks. Returns {model: {batch: {baseline: ms, model: ms}}}."""
    out = {}
    for k, p in paths.items():
        if k == baseline:
            continue
        # Torch-Pruning's model against its own export of the original; that export, like
        # every other file, against ours.
        base = paths["torch_pruning_original"] if k == "torch_pruning" else paths[baseline]
        out[k] = time_models({"original": base, k: p}, side, batches, budget, threads)
    return out


def export_torchvision(ctor: str, path: Path, seed=0):
    import onnx_matrix as om

    if not path.exists():
        om.export(om.build(ctor, 32, seed), 32, path)


def latency_part(a, out: Path):
    work = out / "models"
    work.mkdir(parents=True, exist_ok=True)
    common = ["--criterion", "l1", "--threads", "2", "--runtime", "onnxruntime",
              "--latency-batch", "32", "--latency-budget", str(a.budget), "--verify", "--json",
              "--latency-cache", str(out / "cache")]
    if a.ort_lib:
        common += ["--ort-lib", a.ort_lib]
    models = a.models or ["resnet56", *TORCHVISION]
    for m in models:
        log(f"== {m}")
        if m == "resnet56":
            src = ["../shared/models/resnet56.safetensors", "--arch", "resnet56"]
            orig = work / "resnet56.onnx"
            if not orig.exists():
                subprocess.run([a.shears, "export", *src, "--onnx", str(orig)], check=True)
        else:
            orig = work / f"{m}.onnx"
            export_torchvision(m, orig)
            src = [str(orig)]
        paths = {"original": orig}
        runs = {}
        for name, extra in CONFIGS.items():
            st = work / f"{m}.{name}.safetensors"
            def run(extra=extra, st=st):
                r = sh([a.shears, "prune", *src, *common, *extra, "-o", str(st)])
                best = re.search(r"unreachable: the best achievable is ([0-9.]+)",
                                 r.get("error", ""))
                if best and "--target-macs" in extra:
                    # --round-to 16 cannot reach 0.5 on some models: the smallest it can.
                    f = f"{math.ceil(float(best.group(1)) * 100) / 100:.2f}"
                    log(f"  retrying with --target-macs {f}")
                    i = extra.index("--target-macs")
                    r = sh([a.shears, "prune", *src, *common, *extra[:i + 1], f,
                            *extra[i + 2:], "-o", str(st)])
                return r

            res = cached_json(out / f"{m}.{name}.json", run)
            runs[name] = res
            if res.get("rc") == 0:
                onnx = work / f"{m}.{name}.onnx"
                if not onnx.exists() or onnx.stat().st_mtime < st.stat().st_mtime:
                    subprocess.run([a.shears, "export", str(st), "--onnx", str(onnx)],
                                   check=True, capture_output=True)
                paths[name] = onnx
        if m == "resnet56" and not a.no_tp:
            tp = work / "resnet56.tp.onnx"
            tp_orig = work / "resnet56.tp_original.onnx"
            cached_json(out / "resnet56.torch_pruning.json", lambda: sh(
                [sys.executable, str(HERE / "torch_prune.py"), "--model",
                 "../shared/models/resnet56.safetensors", "--data-dir", a.data,
                 "--target-macs", "0.5", "--threads", "2", "--eval-limit", "1000",
                 "--latency-iters", "1", "--onnx-out", str(tp), "--onnx-original",
                 str(tp_orig)]))
            if tp.exists():
                paths["torch_pruning"] = tp
                paths["torch_pruning_original"] = tp_orig
        timing = cached_json(out / f"{m}.timing.json", lambda: {
            "model": m, "threads": 2, "budget_s": a.budget, "load": os.getloadavg(),
            "ort": __import__("onnxruntime").__version__,
            "files": {k: str(v) for k, v in paths.items()},
            "pairs": time_pairs(paths, 32, [1, 32], a.budget, 2)})
        log(json.dumps({k: {b: round(r["original"]["min_ms"] / r[k]["min_ms"], 2)
                            for b, r in pair.items()} for k, pair in timing["pairs"].items()}))


def accuracy_part(a, out: Path):
    work = out / "models"
    work.mkdir(parents=True, exist_ok=True)
    for arch in a.acc_models:
        src = [f"../shared/models/{arch}.safetensors", "--arch", arch]
        orig = work / f"{arch}.onnx"
        if not orig.exists():
            subprocess.run([a.shears, "export", *src, "--onnx", str(orig)], check=True)
        paths = {"original": orig}
        for via, extra in VIA.items():
            st = work / f"{arch}.acc_{via}.safetensors"
            res = cached_json(out / f"{arch}.acc_{via}.json", lambda: sh(
                [a.shears, "prune", *src, "--criterion", "l1", "--threads", "2",
                 "--runtime", "onnxruntime", "--latency-batch", "32", "--latency-budget",
                 str(a.budget), "--target-latency", str(a.acc_keep), *extra, "--latency-cache",
                 str(out / "cache"), "--data", "cifar10", "--data-dir", a.data, "--verify",
                 "--json", "-o", str(st)] + (["--ort-lib", a.ort_lib] if a.ort_lib else [])))
            if res.get("rc") != 0:
                continue
            onnx = work / f"{arch}.acc_{via}.onnx"
            if not onnx.exists() or onnx.stat().st_mtime < st.stat().st_mtime:
                subprocess.run([a.shears, "export", str(st), "--onnx", str(onnx)], check=True,
                               capture_output=True)
            paths[via] = onnx
            for seed in range(a.seeds):
                rec = work / f"{arch}.acc_{via}.casm{seed}.safetensors"
                cached_json(out / f"{arch}.acc_{via}.casm{seed}.json", lambda: sh(
                    [a.shears, "recover", "casm", str(st), "--original", src[0],
                     "--original-arch", arch, "--data", "cifar10", "--data-dir", a.data,
                     "--variant", "gradient", "--samples", "1000", "--lr", "3e-3", "--seed",
                     str(seed), "--skip-before-eval", "--threads", "2", "--json", "--output",
                     str(rec)]))
        cached_json(out / f"{arch}.acc_timing.json", lambda: {
            "model": arch, "threads": 2, "budget_s": a.budget, "load": os.getloadavg(),
            "files": {k: str(v) for k, v in paths.items()},
            "pairs": time_pairs(paths, 32, [1, 32], a.budget, 2)})


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shears", default="target/release/shears")
    p.add_argument("--ort-lib", default=os.environ.get("ORT_DYLIB_PATH"))
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out", type=Path, default=Path("docs/results/runtime"))
    p.add_argument("--part", choices=["latency", "accuracy"], required=True)
    p.add_argument("--models", nargs="*", help="latency part: models (default all)")
    p.add_argument("--acc-models", nargs="*", default=["resnet56", "resnet20"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--acc-keep", type=float, default=0.7,
                   help="accuracy part: --target-latency (fraction of the latency kept)")
    p.add_argument("--budget", type=float, default=3.0, help="seconds per model and batch")
    p.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    (latency_part if a.part == "latency" else accuracy_part)(a, a.out)


if __name__ == "__main__":
    main()
