#!/usr/bin/env python3
"""Exports the torchvision models of the engine benchmark (issue 16) to ONNX, as
`bench/onnx_matrix.py` builds them: random weights, BatchNorm statistics from a few train-mode
passes, opset 17, the TorchScript exporter, symbolic batch, 32x32 input. Never downloads.

    bench/.venv/bin/python bench/engine_models.py --out /tmp/engine_models

Then `shears bench engine --only-onnx --onnx /tmp/engine_models/*.onnx ...` (see
docs/results/engine.md for the full command).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_matrix import build, export  # noqa: E402

MODELS = [
    "resnet18",
    "densenet121",
    "mnasnet0_5",
    "mobilenet_v2",
    "efficientnet_b0",
    "squeezenet1_1",
    "regnet_x_400mf",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--side", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=None)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for name in a.only or MODELS:
        path = a.out / f"{name}.onnx"
        export(build(name, a.side, a.seed), a.side, path)
        print(path)


if __name__ == "__main__":
    main()
