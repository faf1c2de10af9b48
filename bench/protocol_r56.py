#!/usr/bin/env python3
"""ResNet-56 at 2x fewer MACs under the evaluation protocol (issue 17).

Selection on the validation hold-out, never on test; several seeds; baselines over the same
groups at the same MACs with the same recovery. For each seed S:

1. `analyze sbpf` on 500 class-balanced validation images (subset seed S, damage seed S),
   ratios for 2x fewer MACs.
2. Four pruned models over the *same* block-internal groups (the groups SBPF scores), each
   within 1% of SBPF's MACs: SBPF ratios (L1 inside groups), uniform L1 (one ratio for every
   group, bisected on MACs), random channels (uniform ratios, `--criterion random --seed S`),
   global L1 (`--global --target-macs`, the other groups `--ignore`d).
3. The same recovery for each: CASM gradient with 1,000 training samples (seed S) and the
   learning rate chosen on the validation split (step 0: 1e-3, 3e-3, 1e-2 on seed 0's SBPF
   model, CIFAR-10 `val` accuracy).
4. Test accuracy right after pruning and after CASM (all 10,000 test images): reported only.

Only the Python standard library; runs the release CLI. Raw JSON of every step in --out;
`--md` writes the summary table (mean +- sample std over seeds).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

MODEL = ["../shared/models/resnet56.safetensors", "--arch", "resnet56"]


def sh(args, log):
    """Runs the CLI with --json, stores stdout in `log`, returns the parsed JSON."""
    if os.path.exists(log):
        with open(log) as f:
            return json.load(f)
    t = time.time()
    out = subprocess.run(args + ["--json"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(args)}\n{out.stderr[-3000:]}")
    v = json.loads(out.stdout)
    tmp = log + ".tmp"
    with open(tmp, "w") as f:
        json.dump(v, f, indent=1)
    os.replace(tmp, log)
    print(f"  {os.path.basename(log)}: {time.time() - t:.0f} s", flush=True)
    return v


def prune(a, extra, out, log):
    return sh([a.shears, "prune", *MODEL, *extra, "--data", "cifar10", "--data-dir", a.data,
               "--skip-before-eval", "--no-latency", "--verify", "-o", out], log)


def macs_of(v):
    return v["macs"]["after"]


def casm(a, pruned, seed, lr, out, log):
    return sh([a.shears, "recover", "casm", pruned, "--original", MODEL[0], "--original-arch",
               "resnet56", "--data-dir", a.data, "--variant", "gradient", "--samples",
               str(a.casm_samples), "--lr", str(lr), "--seed", str(seed), "--skip-before-eval",
               "-o", out], log)


def val_acc(a, model, log):
    return sh([a.shears, "eval", model, "--data", "cifar10", "--data-dir", a.data, "--split",
               "val"], log)["result"]["top1"]


def uniform_ratios(a, roots, target, d):
    """One ratio for every root, bisected so the MACs land within 1% of `target`."""
    lo, hi = 0.0, 0.95
    best = None
    for i in range(14):
        r = (lo + hi) / 2
        path = os.path.join(d, f"uniform_probe_{i}.json")
        with open(path, "w") as f:
            json.dump({k: r for k in roots}, f)
        v = sh([a.shears, "prune", *MODEL, "--criterion", "l1", "--ratios-from", path,
                "--no-latency", "-o", os.path.join(d, "probe.safetensors")],
               os.path.join(d, f"uniform_probe_{i}.out.json"))
        m = macs_of(v)
        best = (r, path, m) if best is None or abs(m - target) < abs(best[2] - target) else best
        if abs(m - target) / target < 0.005:
            break
        if m > target:
            lo = r
        else:
            hi = r
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shears", default="target/release/shears")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out", default="docs/results/protocol")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--casm-samples", type=int, default=1000)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    p.add_argument("--md", default=None)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    info = json.loads(subprocess.run([a.shears, "info", *MODEL, "--groups", "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    runs = {}
    lr = None
    for seed in a.seeds:
        d = os.path.join(a.out, f"seed{seed}")
        os.makedirs(d, exist_ok=True)
        print(f"seed {seed}", flush=True)
        sb = sh([a.shears, "analyze", "sbpf", *MODEL, "--data", "cifar10", "--data-dir", a.data,
                 "--images", "500", "--seeds", "3", "--seed", str(seed), "--subset-seed",
                 str(seed), "--speedup", "2", "--out", os.path.join(d, "sbpf")],
                os.path.join(d, "sbpf.json"))
        assert sb["split"] == "val", sb["split"]
        # The block-internal groups (each residual block's conv1 output channels): SBPF's
        # allocation cuts only these (it gives the residual trunks 0), so the baselines get
        # exactly these too; the trunk groups are `--ignore`d for global L1.
        roots = [g["root"] for g in sb["analysis"]["groups"]
                 if re.fullmatch(r"layer\d+\.\d+\.conv1", g["root"])]
        others = [g["root"] for g in info["groups"]
                  if g["prunable"] and g["root"] not in roots]
        m = {}
        m["sbpf"] = prune(a, ["--criterion", "l1", "--ratios-from",
                              os.path.join(d, "sbpf", "ratios.json")],
                          os.path.join(d, "sbpf.safetensors"), os.path.join(d, "prune_sbpf.json"))
        target = macs_of(m["sbpf"])
        r, path, _ = uniform_ratios(a, roots, target, d)
        m["uniform"] = prune(a, ["--criterion", "l1", "--ratios-from", path],
                             os.path.join(d, "uniform.safetensors"),
                             os.path.join(d, "prune_uniform.json"))
        m["random"] = prune(a, ["--criterion", "random", "--seed", str(seed), "--ratios-from",
                                path], os.path.join(d, "random.safetensors"),
                            os.path.join(d, "prune_random.json"))
        frac = target / m["sbpf"]["macs"]["before"]
        ignore = ["--ignore", ",".join(others)] if others else []
        m["global_l1"] = prune(a, ["--criterion", "l1", "--global", "--target-macs",
                                   f"{frac:.6f}", *ignore],
                               os.path.join(d, "global_l1.safetensors"),
                               os.path.join(d, "prune_global_l1.json"))
        if lr is None:
            scores = {}
            for cand in a.lrs:
                o = os.path.join(d, f"lr_{cand:g}.safetensors")
                casm(a, os.path.join(d, "sbpf.safetensors"), seed, cand, o,
                     os.path.join(d, f"casm_lr_{cand:g}.json"))
                scores[cand] = val_acc(a, o, os.path.join(d, f"val_lr_{cand:g}.json"))
            lr = max(a.lrs, key=lambda c: (scores[c], -c))
            runs["lr_choice"] = {"split": "val", "val_top1": {f"{k:g}": v for k, v in
                                                              scores.items()}, "chosen": lr}
            print(f"  CASM lr chosen on val: {lr:g} ({scores})", flush=True)
        for name, v in m.items():
            rec = casm(a, os.path.join(d, f"{name}.safetensors"), seed, lr,
                       os.path.join(d, f"{name}_casm.safetensors"),
                       os.path.join(d, f"casm_{name}.json"))
            runs.setdefault(name, []).append({
                "seed": seed,
                "macs": macs_of(v),
                "pruned_top1": v["accuracy"]["after_top1"],
                "casm_top1": rec["accuracy"]["after_top1"],
                "casm_seconds": rec["accuracy"]["recovery_seconds"],
                "sbpf_val_baseline": sb["analysis"]["baseline_accuracy"],
            })
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(runs, f, indent=1)
    if a.md:
        write_md(a, runs)


def ms(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def write_md(a, runs):
    rows = []
    for name in ["sbpf", "uniform", "random", "global_l1"]:
        rs = runs.get(name, [])
        if not rs:
            continue
        p = ms([r["pruned_top1"] for r in rs])
        c = ms([r["casm_top1"] for r in rs])
        mx = ms([125_485_696 / r["macs"] for r in rs])
        t = ms([r["casm_seconds"] for r in rs])
        rows.append(f"| {name} | {mx[0]:.3f}x | {p[0]:.2f} ± {p[1]:.2f} | {c[0]:.2f} ± {c[1]:.2f}"
                    f" | {t[0]:.0f} s | {len(rs)} |")
    with open(a.md, "w") as f:
        f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
