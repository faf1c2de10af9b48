#!/usr/bin/env python3
"""Torch-Pruning reference for `docs/results/prune.md`: the akamaster ResNet-56 (CIFAR-10,
option-A shortcuts) pruned with Torch-Pruning's MetaPruner and L1 magnitude importance to a
MACs target, on the same safetensors weights and the same test images as `shears prune`.

Run with the benchmark venv (torch, torch_pruning, safetensors):

    bench/.venv/bin/python bench/torch_prune.py --model ../shared/models/resnet56.safetensors \
        --data-dir ../shared/data --target-macs 0.5 --threads 2

Prints progress to stderr and ONE JSON object on the last line of stdout.

Option-A shortcut. akamaster's shortcut is a `LambdaLayer` computing
`F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))`: it doubles the channels with zero padding.
Torch-Pruning traces the autograd graph; `--shortcut lambda` builds that exact module so you
can see what Torch-Pruning does with it (it does not model the channel pad: see the md).
`--shortcut custom` (the default) builds a numerically identical module, `ShortcutA`, that
scatters input channel i to output channel `out_idx[i]` of `out_channels` zero channels, and
registers a Torch-Pruning pruner for it (`customized_pruners`), so Torch-Pruning treats it as a
leaf layer whose input and output channels are pruned independently, like a conv: pruning an
input channel leaves a zero output channel, pruning an output channel drops it. That is the
documented Torch-Pruning way to support a layer it cannot trace.

MACs are counted like shears counts them (conv and linear multiply-accumulates per image),
so the target means the same thing on both sides. Pruning follows Torch-Pruning's own
benchmark recipe (`benchmarks/main.py`, `progressive_pruning`): `iterative_steps=200`,
`pruning_ratio=1.0`, global ranking, step until the MACs target is met; the classifier is
ignored.
"""

import argparse
import copy
import json
import lzma
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

# The installed distribution's version: torch_pruning 1.6.1's own __version__ string still says
# 1.6.0, so ask the package metadata, which is what pip installed.
try:
    from importlib.metadata import version as _dist_version
    TP_VERSION = _dist_version("torch-pruning")
except Exception:  # pragma: no cover - metadata missing in odd installs
    TP_VERSION = tp.__version__
from safetensors.torch import load_file


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# akamaster ResNet-56 (pytorch_resnet_cifar10/resnet.py)


class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


EXPORTING = False


def export_onnx(model, path):
    """Exports `model` (1x3x32x32 input, dynamic batch) to ONNX at opset 17."""
    global EXPORTING
    EXPORTING = True
    try:
        torch.onnx.export(model, torch.randn(1, 3, 32, 32), str(path), opset_version=17,
                          dynamo=False, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})
    finally:
        EXPORTING = False


class ShortcutA(nn.Module):
    """Option-A shortcut as a channel scatter: out[:, out_idx[i]] = x[:, i, ::2, ::2], zeros
    elsewhere; out_idx[i] = -1 drops input channel i (its output slot was pruned)."""

    def __init__(self, in_channels, pad):
        super().__init__()
        self.out_channels = in_channels + 2 * pad
        self.register_buffer("out_idx", torch.arange(in_channels) + pad)

    def forward(self, x):
        x = x[:, :, ::2, ::2]
        if EXPORTING:
            # For ONNX export: a Gather over [x, one zero channel] (exports cleanly, no
            # ScatterND); the same values.
            src = torch.full((self.out_channels,), x.shape[1], dtype=torch.long)
            valid = self.out_idx >= 0
            src[self.out_idx[valid]] = torch.arange(len(self.out_idx))[valid]
            z = x.new_zeros(x.shape[0], 1, x.shape[2], x.shape[3])
            return torch.index_select(torch.cat([x, z], dim=1), 1, src)
        out = x.new_zeros(x.shape[0], self.out_channels, x.shape[2], x.shape[3])
        valid = self.out_idx >= 0
        if bool(valid.all()):
            out[:, self.out_idx] = x
        else:
            out[:, self.out_idx[valid]] = x[:, valid]
        return out


class ShortcutAPruner(tp.pruner.BasePruningFunc):
    TARGET_MODULES = (ShortcutA,)

    def prune_out_channels(self, layer, idxs):
        idxs = set(int(i) for i in idxs)
        keep_out = [c for c in range(layer.out_channels) if c not in idxs]
        new_pos = {c: k for k, c in enumerate(keep_out)}
        # Input channels that lose their output slot are no longer passed through; they stay
        # in the input (coupled to the previous stage) and are simply not read.
        mapped = [new_pos.get(o, -1) if o >= 0 else -1 for o in layer.out_idx.tolist()]
        layer.out_idx = torch.tensor(mapped, dtype=torch.long)
        layer.out_channels = len(keep_out)
        return layer

    def prune_in_channels(self, layer, idxs):
        idxs = set(int(i) for i in idxs)
        keep = [i for i in range(len(layer.out_idx)) if i not in idxs]
        layer.out_idx = layer.out_idx[keep]
        return layer

    def get_out_channels(self, layer):
        return layer.out_channels

    def get_in_channels(self, layer):
        return len(layer.out_idx)


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride, shortcut):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            pad = planes // 4
            if shortcut == "lambda":
                self.shortcut = LambdaLayer(
                    lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0)
                )
            else:
                self.shortcut = ShortcutA(in_planes, pad)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, n=9, num_classes=10, shortcut="custom"):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make(16, n, 1, shortcut)
        self.layer2 = self._make(32, n, 2, shortcut)
        self.layer3 = self._make(64, n, 2, shortcut)
        self.linear = nn.Linear(64, num_classes)

    def _make(self, planes, n, stride, shortcut):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s, shortcut))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


# --------------------------------------------------------------------------------------------
# data, MACs, accuracy, latency


def cifar10_test(data_dir, limit):
    raw = lzma.open(Path(data_dir) / "cifar-10" / "test_batch.bin.xz").read()
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3073)
    if limit:
        rec = rec[:limit]
    labels = torch.from_numpy(rec[:, 0].astype(np.int64))
    x = torch.from_numpy(rec[:, 1:].astype(np.float32).reshape(-1, 3, 32, 32)) / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std, labels


def macs_and_params(model):
    """Conv and linear MACs per image (as shears counts them) and trainable parameters."""
    macs = 0
    hooks = []

    def conv_hook(m, inp, out):
        nonlocal macs
        k = m.kernel_size[0] * m.kernel_size[1]
        macs += out.shape[1] * out.shape[2] * out.shape[3] * (m.in_channels // m.groups) * k

    def lin_hook(m, inp, out):
        nonlocal macs
        macs += m.in_features * m.out_features

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return macs, params


@torch.no_grad()
def accuracy(model, x, y, batch=500):
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += (model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item()
    return 100.0 * correct / len(x)


@torch.no_grad()
def compare_latency(a, b, batch, warmup, iters, block=10):
    """Median ms of a and b, timed in alternating blocks as shears does
    (`shears::report::compare_latency`): one untimed pass of a, `block` timed passes of a,
    the same for b, and again until each has `iters` timed passes."""
    a.eval()
    b.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=g) * 2 - 1
    for _ in range(warmup):
        a(x)
        b(x)
    ta, tb = [], []
    while len(ta) < iters:
        k = min(block, iters - len(ta))
        for m, ts in ((a, ta), (b, tb)):
            m(x)
            for _ in range(k):
                t0 = time.perf_counter()
                m(x)
                ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ta), statistics.median(tb)


# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--target-macs", type=float, default=0.5, help="fraction of MACs KEPT")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-limit", type=int, default=None, help="first N test images")
    ap.add_argument("--latency-iters", type=int, default=20, help="batch 64 (5x at batch 1)")
    ap.add_argument("--iterative-steps", type=int, default=200)
    ap.add_argument("--shortcut", choices=["custom", "lambda"], default="custom")
    ap.add_argument("--skip-before", action="store_true", help="do not evaluate the original")
    ap.add_argument("--onnx-out", help="also export the pruned model to this ONNX file")
    ap.add_argument("--onnx-original", help="also export the original model to this ONNX file")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ResNet(shortcut=args.shortcut)
    state = load_file(args.model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("out_idx", "num_batches_tracked"))]
    if missing or unexpected:
        raise SystemExit(f"weights do not bind: missing {missing}, unexpected {unexpected}")
    model.eval()
    original = copy.deepcopy(model)
    x, y = cifar10_test(args.data_dir, args.eval_limit)
    log(f"torch {torch.__version__}, torch_pruning {TP_VERSION}, {args.threads} threads")
    acc_before = None if args.skip_before else accuracy(model, x, y)
    macs0, params0 = macs_and_params(model)
    target = args.target_macs * macs0

    example = torch.randn(1, 3, 32, 32)
    imp = tp.importance.MagnitudeImportance(p=1)
    t0 = time.perf_counter()
    error = None
    try:
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=imp,
            global_pruning=True,
            pruning_ratio=1.0,
            iterative_steps=args.iterative_steps,
            ignored_layers=[model.linear],
            customized_pruners={ShortcutA: ShortcutAPruner()},
        )
        macs = macs0
        while macs > target and pruner.current_step < pruner.iterative_steps:
            pruner.step()
            macs, _ = macs_and_params(model)
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        error = f"{type(e).__name__}: {e}"
    prune_s = time.perf_counter() - t0
    if error is None:
        try:
            macs1, params1 = macs_and_params(model)
        except Exception as e:  # noqa: BLE001
            error = f"pruned model does not run: {type(e).__name__}: {e}"
    if error is not None:
        log("torch-pruning failed:", error)
        print(json.dumps({"ok": False, "error": error, "shortcut": args.shortcut,
                          "torch": torch.__version__, "torch_pruning": TP_VERSION,
                          "prune_s": prune_s, "acc_before": acc_before}))
        return
    acc_after = accuracy(model, x, y)
    if args.onnx_out:
        export_onnx(model, args.onnx_out)
    if args.onnx_original:
        export_onnx(original, args.onnx_original)
    lat = {}
    for batch, iters in [(1, 5 * args.latency_iters), (64, args.latency_iters)]:
        a, b = compare_latency(original, model, batch, 3, iters)
        lat[str(batch)] = {"before_ms": a, "after_ms": b, "speedup": a / b}
    out = {
        "ok": True,
        "shortcut": args.shortcut,
        "torch": torch.__version__,
        "torch_pruning": TP_VERSION,
        "threads": args.threads,
        "images": len(x),
        "acc_before": acc_before,
        "acc_after": acc_after,
        "macs_before": macs0,
        "macs_after": macs1,
        "params_before": params0,
        "params_after": params1,
        "steps": pruner.current_step,
        "prune_s": prune_s,
        "latency": lat,
    }
    log(json.dumps(out))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
