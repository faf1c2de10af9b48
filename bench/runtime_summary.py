#!/usr/bin/env python3
"""Summarises `bench/runtime_bench.py`'s raw JSON (--out DIR) into markdown tables and
DIR/summary.json: ONNX Runtime speed-ups of the pruned models (from the one alternating timing
run per model), the issue-15 criteria checked on them, and the accuracy at equal latency."""

import argparse
import json
import statistics
from pathlib import Path

CONFIGS = ["macs05", "round16", "lat05"]


def load(p: Path):
    return json.loads(p.read_text()) if p.exists() else None


def speedups(timing, key, stat="median_ms"):
    """Speed-up of `key` over the original (its own pair's baseline) at each batch."""
    pair = timing["pairs"].get(key, {})
    return {b: r["original"][stat] / r[key][stat] for b, r in pair.items()}


def latency_rows(d: Path):
    rows = []
    for t in sorted(d.glob("*.timing.json")):
        m = t.name[: -len(".timing.json")]
        timing = load(t)
        row = {"model": m, "load": timing.get("load"), "configs": {}}
        for c in CONFIGS + ["torch_pruning"]:
            res = load(d / f"{m}.{c}.json") if c != "torch_pruning" else None
            sp = speedups(timing, c)
            if not sp:
                if res is not None:
                    row["configs"][c] = {"error": res.get("error")}
                continue
            e = {"speedup": sp, "speedup_min": speedups(timing, c, "min_ms")}
            if res is not None and "json" in res:
                j = res["json"]
                e["macs_kept"] = j["macs"]["kept"]
                e["guard"] = j.get("latency_guard")
                e["cmd"] = res["cmd"]
                lt = j.get("latency_target")
                if lt:
                    st = lt["steering"]
                    e["steering"] = {"met": st["met"], "steps": len(st["steps"]),
                                     "fraction": st["steps"][st["chosen"]]["fraction"]}
            if c == "torch_pruning":
                tp = load(d / f"{m}.torch_pruning.json")["json"]
                e["macs_kept"] = tp["macs_after"] / tp["macs_before"]
                # Its baseline is Torch-Pruning's own export of the original; that export
                # against ours (same weights) says how far the two exports differ.
                e["own_export_vs_ours"] = speedups(timing, "torch_pruning_original")
            row["configs"][c] = e
        rows.append(row)
    return rows


def criteria(rows, key="speedup"):
    out = {"statistic": "median" if key == "speedup" else "min"}
    ort = [(r["model"], c, e) for r in rows for c, e in r["configs"].items()
           if c in CONFIGS and key in e]
    out["slower_than_original"] = [(m, c, b, round(s, 3)) for m, c, e in ort
                                   for b, s in e[key].items() if s < 1.0]
    for b in ["1", "32"]:
        eff = [e[key][b] * e["macs_kept"] for r in rows
               for c, e in r["configs"].items() if c == "macs05" and key in e]
        out[f"macs05_median_speedup_over_macs_reduction_b{b}"] = (
            statistics.median(eff) if eff else None)
        fr = [(r["model"], round(1 / e[key][b], 3)) for r in rows
              for c, e in r["configs"].items() if c == "lat05" and key in e]
        out[f"lat05_fraction_b{b}"] = fr
        out[f"lat05_within_10pct_b{b}"] = sum(abs(f / 0.5 - 1) <= 0.1 for _, f in fr)
        out[f"lat05_models_b{b}"] = len(fr)
    return out


def fmt(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def latency_md(rows):
    lines = ["| model | run | MACs kept | b1 speed-up (median; min) | b32 speed-up (median; min) "
             "| median speed-up / MACs reduction (b1, b32) | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        for c in CONFIGS + ["torch_pruning"]:
            e = r["configs"].get(c)
            if e is None:
                continue
            if "speedup" not in e:
                lines.append(f"| {r['model']} | {c} | - | - | - | - | failed: {e.get('error')} |")
                continue
            k = e.get("macs_kept")
            s1, s32 = e["speedup"].get("1"), e["speedup"].get("32")
            m1, m32 = e["speedup_min"].get("1"), e["speedup_min"].get("32")
            eff = f"{fmt(s1 * k)}, {fmt(s32 * k)}" if k else "-"
            note = []
            if e.get("guard"):
                note.append("guard: " + e["guard"])
            if e.get("steering"):
                st = e["steering"]
                note.append(f"steered {st['steps']} steps, {st['fraction']:.3f} in-run, "
                            f"{'met' if st['met'] else 'NOT met'}")
            if c == "torch_pruning":
                o = e["own_export_vs_ours"]
                note.append(f"against Torch-Pruning's own export of the original (which runs "
                            f"{o['1']:.2f}x / {o['32']:.2f}x ours)")
            lines.append(f"| {r['model']} | {c} | {fmt(k, 3)} | {fmt(s1)}x; {fmt(m1)}x | "
                         f"{fmt(s32)}x; {fmt(m32)}x | "
                         f"{eff} | {'; '.join(note)} |")
    return "\n".join(lines)


def accuracy_rows(d: Path):
    rows = []
    for t in sorted(d.glob("*.acc_timing.json")):
        arch = t.name[: -len(".acc_timing.json")]
        timing = load(t)
        for via in ["tables", "uniform", "round16"]:
            res = load(d / f"{arch}.acc_{via}.json")
            if res is None or "json" not in res:
                rows.append({"model": arch, "via": via,
                             "error": None if res is None else res.get("error")})
                continue
            j = res["json"]
            casm = [load(d / f"{arch}.acc_{via}.casm{s}.json") for s in range(10)]
            casm = [c["json"]["accuracy"]["after_top1"] for c in casm if c and "json" in c]
            sp = speedups(timing, via)
            st = j["latency_target"]["steering"]
            rows.append({
                "model": arch, "via": via, "macs_kept": j["macs"]["kept"],
                "latency_kept": {b: 1 / s for b, s in sp.items()},
                "latency_kept_min": {b: 1 / s for b, s in
                                     speedups(timing, via, "min_ms").items()},
                "steering_met": st["met"],
                "steering_fraction": st["steps"][st["chosen"]]["fraction"],
                "before_top1": j["accuracy"]["before_top1"],
                "pruned_top1": j["accuracy"]["after_top1"],
                "casm_top1": casm,
            })
    return rows


def accuracy_md(rows):
    lines = ["| model | widths by | MACs kept | latency kept b1 / b32 (min; median) | in-run "
             "steering | test top-1 right after pruning | after CASM (mean ± std, seeds) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['via']} | failed: {r['error']} | | | |")
            continue
        c = r["casm_top1"]
        cs = (f"{statistics.mean(c):.2f} ± {statistics.stdev(c):.2f} ({len(c)})"
              if len(c) > 1 else (f"{c[0]:.2f} (1)" if c else "-"))
        lk, lm = r["latency_kept"], r["latency_kept_min"]
        lines.append(f"| {r['model']} | {r['via']} | {r['macs_kept']:.3f} | "
                     f"{fmt(lm.get('1'))} / {fmt(lm.get('32'))}; {fmt(lk.get('1'))} / "
                     f"{fmt(lk.get('32'))} | {r['steering_fraction']:.3f}, "
                     f"{'met' if r['steering_met'] else 'not met'} | "
                     f"{r['pruned_top1']:.2f} | {cs} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/results/runtime"))
    a = p.parse_args()
    lat = latency_rows(a.out)
    acc = accuracy_rows(a.out)
    crit = {"median": criteria(lat), "min": criteria(lat, "speedup_min")}
    (a.out / "summary.json").write_text(json.dumps(
        {"latency": lat, "criteria": crit, "accuracy": acc}, indent=1))
    print(latency_md(lat))
    print()
    print("criteria:", json.dumps(crit, indent=1))
    print()
    print(accuracy_md(acc))


if __name__ == "__main__":
    main()
