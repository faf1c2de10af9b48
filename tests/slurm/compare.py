#!/usr/bin/env python3
"""Compares a merged sharded analysis with the one-machine run of the same settings.

Usage: compare.py ONE_DIR MERGED_DIR

The report JSON (sweep.json, sbpf.json or lsa.json) must be equal apart from the fields that
measure the run rather than the result: wall-clock seconds (`seconds`, `feature_seconds`,
`timing`), the prober's work counters (`stats`: each shard walks its own prefix and scores its
own baseline), the load average, and `files` (paths under each run's own directory). Every
other file the one-machine run wrote (CSV, ratio files, SVG plots) must be equal byte for byte,
except the one-machine run's probe cache. Exit 0 when equal, 1 with the differences otherwise.
"""
import json
import os
import sys

IGNORED = {"seconds", "stats", "load_average", "timing", "feature_seconds", "files"}
NOT_OUTPUTS = {"sweep_cache.json"}


def diff(a, b, path, out):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in IGNORED:
                continue
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'merged' if k in b else 'one-machine'}")
            else:
                diff(a[k], b[k], f"{path}/{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: {len(a)} items against {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}/{i}", out)
    elif a != b or type(a) is not type(b):
        out.append(f"{path}: {a!r} (one machine) != {b!r} (merged)")


def main():
    one, merged = sys.argv[1], sys.argv[2]
    problems = []
    files = sorted(f for f in os.listdir(one) if os.path.isfile(os.path.join(one, f)))
    reports = [f for f in files if f in ("sweep.json", "sbpf.json", "lsa.json")]
    if not reports:
        problems.append(f"{one} has no sweep.json, sbpf.json or lsa.json")
    compared = 0
    for f in files:
        if f in NOT_OUTPUTS:
            continue
        p, q = os.path.join(one, f), os.path.join(merged, f)
        if not os.path.isfile(q):
            problems.append(f"{q} is missing")
            continue
        if f in reports:
            with open(p) as fa, open(q) as fb:
                diff(json.load(fa), json.load(fb), f, problems)
        else:
            with open(p, "rb") as fa, open(q, "rb") as fb:
                if fa.read() != fb.read():
                    problems.append(f"{f}: the bytes differ")
        compared += 1
    for x in problems:
        print("DIFFERS:", x)
    if problems:
        return 1
    print(f"equal: {compared} files ({', '.join(f for f in files if f not in NOT_OUTPUTS)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
