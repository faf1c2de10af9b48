#!/usr/bin/env python3
"""PyTorch reference for `shears bench engine` (same workload, same machine, same run).

Workloads, all float32 on the CPU with a fixed thread count:
  * ResNet-20 (CIFAR, option-A shortcuts) at batch 128: eval-mode inference images/s and
    training-step images/s (forward, cross-entropy, backward, SGD momentum step).
  * One 3x3 convolution, input 128x64x32x32, 64->64 filters, padding 1: forward ms and
    backward ms (input and weight gradients).
Prints one JSON object on stdout. Peak resident memory is the process high-water mark.

Usage: python torch_engine.py --threads 2 [--iters 10] [--warmup 3] [--weights resnet20.safetensors]
Requires: torch (CPU build). `pip install torch` in bench/.venv; never needed by the tests.
"""
import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or cin != planes) else 0
        self.stride = stride

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.pad:
            sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        else:
            sc = x
        return F.relu(out + sc)


class ResNetCifar(nn.Module):
    def __init__(self, n=3, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for planes, stride in [(16, 1), (32, 2), (64, 2)]:
            blocks = []
            for i in range(n):
                blocks.append(Block(cin, planes, stride if i == 0 else 1))
                cin = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(x)


def timeit(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--weights", default=None, help="optional resnet20.safetensors")
    ap.add_argument("--only", choices=["all", "resnet", "conv"], default="all")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    res = {"framework": "pytorch", "version": torch.__version__, "threads": args.threads,
           "batch": args.batch, "iters": args.iters, "warmup": args.warmup}

    if args.only in ("all", "resnet"):
        model = ResNetCifar()
        if args.weights:
            from safetensors.torch import load_file
            model.load_state_dict(load_file(args.weights))
        x = torch.randn(args.batch, 3, 32, 32)
        y = torch.randint(0, 10, (args.batch,))
        model.eval()
        with torch.no_grad():
            t = timeit(lambda: model(x), args.iters, args.warmup)
        res["resnet20_infer_ms"] = t * 1e3
        res["resnet20_infer_img_s"] = args.batch / t
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

        t = timeit(step, args.iters, args.warmup)
        res["resnet20_train_ms"] = t * 1e3
        res["resnet20_train_img_s"] = args.batch / t

    if args.only in ("all", "conv"):
        conv = nn.Conv2d(64, 64, 3, 1, 1, bias=False)
        xc = torch.randn(128, 64, 32, 32, requires_grad=True)
        with torch.no_grad():
            res["conv_fwd_ms"] = timeit(lambda: conv(xc), args.iters, args.warmup) * 1e3
        out = conv(xc)
        g = torch.randn_like(out)

        def bwd():
            xc.grad = None
            conv.weight.grad = None
            torch.autograd.grad(out, [xc, conv.weight], g, retain_graph=True)

        res["conv_bwd_ms"] = timeit(bwd, args.iters, args.warmup) * 1e3

    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps(res))


if __name__ == "__main__":
    main()
