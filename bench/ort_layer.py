#!/usr/bin/env python3
"""ONNX Runtime reference for `examples/dwconv_bench.rs`: the same depthwise layers as one-layer
ONNX models (Conv with group = channels, bias, then Relu: the fused forward shears times),
NCHW float32, timed with `InferenceSession.run` on a fixed intra-op thread count.

Prints one JSON object per layer and batch, named like the Rust bench's lines, with the median
and the minimum of the timed runs in milliseconds. ORT has no backward pass here: forward only.

Usage: python ort_layer.py [--threads 2] [--batch 1 128] [--runs 61]
Requires: onnxruntime, onnx, numpy (bench/.venv); never needed by the tests.
"""
import argparse
import json
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

# (channels, input side, kernel, stride), as LAYERS in examples/dwconv_bench.rs.
LAYERS = [
    (32, 16, 3, 1),
    (96, 16, 3, 2),
    (144, 8, 3, 1),
    (144, 8, 3, 2),
    (192, 4, 3, 1),
    (192, 4, 3, 2),
    (384, 2, 3, 1),
    (576, 2, 3, 1),
    (576, 2, 3, 2),
    (960, 1, 3, 1),
    (72, 8, 5, 2),
    (120, 4, 5, 1),
]


def layer_model(c, hw, k, s):
    """A one-layer depthwise Conv + Relu model with random weights (seed 0)."""
    rng = np.random.default_rng(0)
    w = rng.uniform(-1, 1, (c, 1, k, k)).astype(np.float32)
    b = rng.uniform(-0.1, 0.1, (c,)).astype(np.float32)
    p = k // 2
    oh = (hw + 2 * p - k) // s + 1
    conv = helper.make_node(
        "Conv", ["x", "w", "b"], ["c"], group=c, kernel_shape=[k, k], strides=[s, s],
        pads=[p, p, p, p],
    )
    relu = helper.make_node("Relu", ["c"], ["y"])
    graph = helper.make_graph(
        [conv, relu],
        "dw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", c, oh, oh])],
        initializer=[
            helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.flatten()),
            helper.make_tensor("b", TensorProto.FLOAT, b.shape, b),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 128])
    ap.add_argument("--runs", type=int, default=61)
    args = ap.parse_args()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    for n in args.batch:
        for c, hw, k, s in LAYERS:
            sess = ort.InferenceSession(
                layer_model(c, hw, k, s), opts, providers=["CPUExecutionProvider"]
            )
            x = np.random.default_rng(1).uniform(-1, 1, (n, c, hw, hw)).astype(np.float32)
            runs = 15 if n * c * hw * hw > 400_000 else args.runs
            for _ in range(3):
                sess.run(None, {"x": x})
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sess.run(None, {"x": x})
                times.append((time.perf_counter() - t0) * 1e3)
            print(json.dumps({
                "layer": f"dw{c}_{hw}x{hw}_k{k}_s{s}",
                "batch": n,
                "threads": args.threads,
                "pass": "forward",
                "ort_ms": round(statistics.median(times), 4),
                "ort_min_ms": round(min(times), 4),
                "runs": runs,
                "onnxruntime": ort.__version__,
            }), flush=True)


if __name__ == "__main__":
    main()
