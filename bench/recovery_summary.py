#!/usr/bin/env python3
"""Collects the JSON that `shears recover` and `shears eval` wrote for docs/results/recovery.md
into one summary table and one time-to-accuracy chart description.

    python3 bench/recovery_summary.py RUN_DIR OUT_DIR

RUN_DIR holds `<name>.json` files, each the `--json` output of one `shears recover` run
(`sbpf_ls500.json`, `ft60.json`, ...). Writes OUT_DIR/summary.json (name -> top-1, recovery
seconds, load average, test images) and two chart descriptions, OUT_DIR/time_to_accuracy.json
(the first 10 minutes) and OUT_DIR/time_to_accuracy_60min.json, which
`cargo run -p shears --example plot_json -- CHART.json OUT.svg` draws.
Nothing here measures anything: every number is read from the runs' own JSON.
"""

import json
import os
import sys


def load(run_dir, name):
    path = os.path.join(run_dir, name + ".json")
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    with open(path) as f:
        return json.load(f)


def summary(run_dir):
    out = {}
    for fname in sorted(os.listdir(run_dir)):
        if not fname.endswith(".json"):
            continue
        name = fname[:-5]
        d = load(run_dir, name)
        acc = d.get("accuracy") if isinstance(d, dict) else None
        if not acc or "after_top1" not in acc:
            continue
        out[name] = {
            "top1": acc["after_top1"],
            "recovery_seconds": acc.get("recovery_seconds"),
            "load_average": acc.get("load_average"),
            "test_images": acc.get("test_images"),
        }
    return out


def casm_series(s, label, names, start_top1):
    pts = [[0.0, start_top1]]
    for n in names:
        if n in s:
            pts.append([s[n]["recovery_seconds"], s[n]["top1"]])
    return {"label": label, "points": pts}


def curve(run_dir, name, offset=0.0):
    d = load(run_dir, name)
    if d is None:
        return []
    c = d["details"]["finetune"]["curve"]
    return [[offset + p["seconds"], p["val_top1"]] for p in c]


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    run_dir, out_dir = sys.argv[1], sys.argv[2]
    s = summary(run_dir)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(s, f, indent=1, sort_keys=True)
    pruned = load(run_dir, "prune_sbpf")
    start = pruned["accuracy"]["after_top1"] if pruned else 0.0
    series = [
        casm_series(s, "CASM least squares (500/1k/5k samples)",
                    ["sbpf_ls500", "sbpf_ls1000", "sbpf_ls5000"], start),
        casm_series(s, "CASM gradient (500/1k samples)",
                    ["sbpf_grad500", "sbpf_grad1000"], start),
    ]
    ft = curve(run_dir, "ft_sbpf_600")
    if ft:
        series.append({"label": "fine-tuning + distillation", "points": ft})
    # The CASM runs that produced the 60-minute run's starting point.
    casm_t = sum(s[n]["recovery_seconds"] for n in ["ft60_casm_ls500", "ft60_casm_grad1000"]
                 if n in s)
    ft60 = curve(run_dir, "ft60", casm_t)
    if ft60:
        series.append({"label": "CASM (LS 500 + gradient 1k), then fine-tuning",
                       "points": [[0.0, start]] + ft60})
    first = [{"label": x["label"], "points": [p for p in x["points"] if p[0] <= 600.0]}
             for x in series]
    for name, title, ss in [
        ("time_to_accuracy", "the first 10 minutes", first),
        ("time_to_accuracy_60min", "the 60-minute run", series[2:]),
    ]:
        chart = {
            "title": "ResNet-56, CIFAR-10, 2x fewer MACs (SBPF ratios): recovery, " + title,
            "x_label": "recovery time (s, 2 cores)",
            "y_label": "top-1 (%)",
            "series": ss,
        }
        with open(os.path.join(out_dir, name + ".json"), "w") as f:
            json.dump(chart, f, indent=1)


if __name__ == "__main__":
    main()
